//! The audit of admin writes: every write under `/v1/companies/{company}` that succeeded is
//! recorded (`tenants::audit`) with its time, the name of the admin token that made it
//! ([`Actor`]), the company, the action (the method and the route) and a summary (the path and
//! query actually called, and the status). Bodies are never recorded, so no secret is.
//! `GET /v1/companies/{company}/audit` lists a company's entries, newest first.

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

use super::auth::Actor;
use super::service::Admin;
use crate::tenants::AuditLog;

/// Middleware (inside the bearer check): records each successful write to a company.
pub async fn record_writes(State(admin): State<Admin>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let Some(company) = company_of(req.uri().path()) else {
        return next.run(req).await;
    };
    let actor = req
        .extensions()
        .get::<Actor>()
        .map_or_else(|| "unknown".to_string(), |a| a.0.clone());
    let action = format!("{} {}", req.method(), route_of(req.uri().path()));
    let called = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_string(), |p| p.as_str().to_string());
    let method = req.method().clone();
    let resp = next.run(req).await;
    if resp.status().is_success() {
        let summary = format!("{method} {called} answered {}", resp.status().as_u16());
        let recorded = admin
            .directory()
            .record_audit(&actor, &company, &action, &summary)
            .await;
        if let Err(e) = recorded {
            tracing::warn!(company, action, token = actor, error = %e, "admin: the write happened but its audit entry was not recorded");
        }
    }
    resp
}

/// The company of a `/v1/companies/{company}/…` path (percent-decoded).
fn company_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/companies/")?;
    let raw = rest.split('/').next().filter(|c| !c.is_empty())?;
    Some(
        percent_encoding::percent_decode_str(raw)
            .decode_utf8_lossy()
            .into_owned(),
    )
}

/// The route of a company path, ids replaced by their names (`/v1/companies/{company}/users/{user}`).
fn route_of(path: &str) -> String {
    let mut parts: Vec<&str> = path.split('/').collect();
    // ["", "v1", "companies", company, rest…]
    if parts.len() > 3 {
        parts[3] = "{company}";
    }
    if parts.len() > 5 && parts[4] == "users" {
        parts[5] = "{user}";
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_company_is_read_from_the_path() {
        assert_eq!(
            super::company_of("/v1/companies/ac%20me/users/u-1").as_deref(),
            Some("ac me")
        );
        assert_eq!(
            super::company_of("/v1/companies/acme").as_deref(),
            Some("acme")
        );
        assert_eq!(super::company_of("/v1/companies"), None);
        assert_eq!(super::company_of("/v1/dlq/replay"), None);
        assert_eq!(
            super::route_of("/v1/companies/acme/users/u-1/verify"),
            "/v1/companies/{company}/users/{user}/verify"
        );
    }
}
