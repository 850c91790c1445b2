//! Bearer-token authentication of the admin API. Tokens come from `admin.tokens`; a presented
//! token is compared with every configured one in constant time (SHA-256 of both sides,
//! compared with `subtle`, so neither the content nor the length of a token leaks through
//! timing). No token configured: every call is refused. A token is configured as `name:token`
//! (or bare, named `token-N`); the name of the token that authenticated a call travels with the
//! request as [`Actor`], and the audit records it.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::{Choice, ConstantTimeEq};

/// The accepted tokens, kept only as digests, with their names.
#[derive(Clone)]
pub struct AdminTokens {
    digests: Arc<Vec<[u8; 32]>>,
    names: Arc<Vec<String>>,
}

/// The name of the admin token that authenticated the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AdminTokens({} configured)", self.digests.len())
    }
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl AdminTokens {
    /// `tokens` as `admin.tokens` holds them (`name:token` or bare).
    pub fn new(tokens: &[String]) -> AdminTokens {
        let parts: Vec<(String, &str)> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| crate::config::admin_token_parts(t, i))
            .collect();
        AdminTokens {
            digests: Arc::new(parts.iter().map(|(_, t)| digest(t)).collect()),
            names: Arc::new(parts.into_iter().map(|(n, _)| n).collect()),
        }
    }

    /// Whether `presented` is one of the tokens (every configured token is compared).
    pub fn accepts(&self, presented: &str) -> bool {
        self.name_of(presented).is_some()
    }

    /// The name of the token `presented` is, if any (every configured token is compared, and
    /// the match is selected without a branch on the secret).
    pub fn name_of(&self, presented: &str) -> Option<&str> {
        use subtle::ConditionallySelectable;
        let d = digest(presented);
        let mut ok = Choice::from(0);
        let mut at = 0u32;
        for (i, t) in self.digests.iter().enumerate() {
            let eq = t.ct_eq(&d);
            at.conditional_assign(&u32::try_from(i).unwrap_or(u32::MAX), eq);
            ok |= eq;
        }
        bool::from(ok).then(|| self.names[at as usize].as_str())
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
    let actor = bearer(&req)
        .and_then(|t| tokens.name_of(t))
        .map(str::to_string);
    if let Some(name) = actor {
        let mut req = req;
        req.extensions_mut().insert(Actor(name));
        return next.run(req).await;
    }
    let presented = bearer(&req);
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
    let mut resp =
        super::errors::ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"outlook-sync admin\""),
    );
    resp
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

    #[test]
    fn a_token_is_known_by_its_name_or_its_position() {
        let t = AdminTokens::new(&[
            "ops-alice:a-long-admin-token-1".into(),
            "another-token-2222".into(),
        ]);
        assert_eq!(t.name_of("a-long-admin-token-1"), Some("ops-alice"));
        assert_eq!(t.name_of("another-token-2222"), Some("token-2"));
        assert_eq!(t.name_of("ops-alice:a-long-admin-token-1"), None);
        assert_eq!(t.name_of("nope"), None);
    }
}
