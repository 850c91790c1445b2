//! Bearer-token authentication of the admin API. Tokens come from `admin.tokens`; a presented
//! token is compared with every configured one in constant time (SHA-256 of both sides,
//! compared with `subtle`, so neither the content nor the length of a token leaks through
//! timing). No token configured: every call is refused.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// The accepted tokens, kept only as digests.
#[derive(Clone)]
pub struct AdminTokens {
    digests: Arc<Vec<[u8; 32]>>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} configured)", self.digests.len())
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl AdminTokens {
    pub fn new(tokens: &[String]) -> AdminTokens {
        AdminTokens {
            digests: Arc::new(tokens.iter().map(|t| digest(t)).collect()),
        }
    }

    /// Whether `presented` is one of the tokens (every configured token is compared).
    pub fn accepts(&self, presented: &str) -> bool {
        let d = digest(presented);
        let mut ok = Choice::from(0);
        for t in self.digests.iter() {
            ok |= t.ct_eq(&d);
        }
        bool::from(ok)
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(req: &Request) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Middleware: 401 with a JSON error and `WWW-Authenticate: Bearer` unless the request carries
/// an accepted token.
pub async fn require_bearer(
    State(tokens): State<AdminTokens>,
    req: Request,
    next: Next,
) -> Response {
    match bearer(&req) {
        Some(t) if tokens.accepts(t) => next.run(req).await,
        presented => {
            let (code, message) = match presented {
                None => ("unauthorized", "a bearer token is required"),
                Some(_) => ("unauthorized", "the bearer token is not valid"),
            };
            tracing::info!(
                method = %req.method(),
                path = %req.uri().path(),
                token_present = presented.is_some(),
                "admin: refused an unauthenticated call"
            );
            let mut resp = super::errors::ApiError::new(StatusCode::UNAUTHORIZED, code, message)
                .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"outlook-sync admin\""),
            );
            resp
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_configured_tokens_are_accepted() {
        let t = AdminTokens::new(&["a-long-admin-token-1".into(), "another-token-2222".into()]);
        assert!(t.accepts("a-long-admin-token-1"));
        assert!(t.accepts("another-token-2222"));
        assert!(!t.accepts("a-long-admin-token-"));
        assert!(!t.accepts(""));
        assert!(!AdminTokens::new(&[]).accepts(""));
        assert!(!format!("{t:?}").contains("admin-token"));
    }
}
