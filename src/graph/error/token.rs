//! The token endpoint's refusals: why the company's credentials do not work ([`TokenProblem`]),
//! read from Microsoft's OAuth error body (`error`, `error_codes`, the AADSTS number).

use std::fmt;

use serde_json::Value;

use super::{ErrorClass, GraphError, first_line};

/// Why the token endpoint refused the company's credentials (GRAPH.md §1.4).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenProblem {
    /// AADSTS7000215: the client secret is wrong (often the secret's ID instead of its value).
    InvalidSecret,
    /// AADSTS7000222: the client secret has expired.
    ExpiredSecret,
    /// AADSTS700016: the application is not in the tenant (never consented there).
    AppNotInTenant,
    /// AADSTS90002 / 900023 (or `invalid_tenant`): the tenant does not exist or is malformed.
    TenantNotFound,
    /// AADSTS70011 / 700022 / 700023 (or `invalid_scope`): the scope is not valid.
    InvalidScope,
    /// Anything else the token endpoint refused with (`error_codes[0]` and the OAuth `error`).
    Other { code: Option<u64>, error: String },
}

impl TokenProblem {
    /// A stable, machine-readable code (`invalid_secret`, `expired_secret`,
    /// `app_not_in_tenant`, `tenant_not_found`, `invalid_scope`, `other`).
    pub fn code(&self) -> &'static str {
        match self {
            TokenProblem::InvalidSecret => "invalid_secret",
            TokenProblem::ExpiredSecret => "expired_secret",
            TokenProblem::AppNotInTenant => "app_not_in_tenant",
            TokenProblem::TenantNotFound => "tenant_not_found",
            TokenProblem::InvalidScope => "invalid_scope",
            TokenProblem::Other { .. } => "other",
        }
    }

    /// One sentence for an administrator.
    pub fn description(&self) -> &'static str {
        match self {
            TokenProblem::InvalidSecret => {
                "The client secret is invalid (enter the secret's value, not its ID)."
            }
            TokenProblem::ExpiredSecret => {
                "The client secret has expired: create a new one in the Azure portal."
            }
            TokenProblem::AppNotInTenant => {
                "The application was not found in the tenant (wrong client ID or tenant, or no admin consent)."
            }
            TokenProblem::TenantNotFound => "The tenant ID does not exist.",
            TokenProblem::InvalidScope => "The token scope was refused.",
            TokenProblem::Other { .. } => "The token endpoint refused the credentials.",
        }
    }
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProblem::Other {
                code: Some(code), ..
            } => write!(f, "other (AADSTS{code})"),
            TokenProblem::Other { code: None, error } => write!(f, "other ({error})"),
            p => f.write_str(p.code()),
        }
    }
}

/// OAuth `error` values (and this module's own token-endpoint codes), to tell token-endpoint
/// errors apart from Graph errors in `Display`.
pub(super) const OAUTH_ERRORS: &[&str] = &[
    "invalid_request",
    "invalid_grant",
    "unauthorized_client",
    "invalid_client",
    "unsupported_grant_type",
    "invalid_resource",
    "interaction_required",
    "temporarily_unavailable",
    "invalid_scope",
    "invalid_tenant",
    "access_denied",
    "server_error",
    "token_endpoint_error",
    "invalid_token_response",
];

impl GraphError {
    /// Classifies a token-endpoint failure (any status but a usable 200). The body is
    /// Microsoft's `{"error","error_description","error_codes":[..],"trace_id",..}`; anything
    /// else is tolerated.
    pub fn from_token_response(status: u16, body: &Value) -> GraphError {
        let error = body
            .get("error")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty());
        let description = body
            .get("error_description")
            .and_then(Value::as_str)
            .unwrap_or("");
        let aadsts = body
            .get("error_codes")
            .and_then(Value::as_array)
            .and_then(|codes| codes.first())
            .and_then(as_u64_lenient)
            .or_else(|| aadsts_in(description));
        let request_id = body
            .get("trace_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let mut message = first_line(description);
        if message.is_empty()
            && let Value::String(text) = body
        {
            message = first_line(text);
        }
        let code = match error {
            Some(e) => e.to_string(),
            None if (200..300).contains(&status) => "invalid_token_response".to_string(),
            None => "token_endpoint_error".to_string(),
        };
        if message.is_empty() && error.is_none() {
            message = if (200..300).contains(&status) {
                "the token endpoint's answer has no access_token".to_string()
            } else {
                format!("the token endpoint answered HTTP {status} without an OAuth error")
            };
        }
        let class = classify_token(status, error, aadsts);
        GraphError {
            status: Some(status),
            code,
            message,
            request_id,
            retry_after: None,
            aadsts,
            class,
        }
    }
}

/// A `Value` that may be a JSON number or a numeric string, as `u64`.
fn as_u64_lenient(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The AADSTS number at the start of an `error_description` ("AADSTS7000215: ...").
fn aadsts_in(description: &str) -> Option<u64> {
    let rest = description.trim_start().strip_prefix("AADSTS")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn classify_token(status: u16, error: Option<&str>, aadsts: Option<u64>) -> ErrorClass {
    let retry = ErrorClass::Retryable { after: None };
    match aadsts {
        Some(7000215) => return ErrorClass::Credentials(TokenProblem::InvalidSecret),
        Some(7000222) => return ErrorClass::Credentials(TokenProblem::ExpiredSecret),
        Some(700016) => return ErrorClass::Credentials(TokenProblem::AppNotInTenant),
        Some(90002 | 900023) => return ErrorClass::Credentials(TokenProblem::TenantNotFound),
        Some(70011 | 700022 | 700023) => {
            return ErrorClass::Credentials(TokenProblem::InvalidScope);
        }
        // Tenant throttling, transient, temporarily unavailable.
        Some(90055 | 90024 | 90006) => return retry,
        _ => {}
    }
    match error {
        Some("temporarily_unavailable" | "server_error") => return retry,
        Some("invalid_tenant") => return ErrorClass::Credentials(TokenProblem::TenantNotFound),
        Some("invalid_scope") => return ErrorClass::Credentials(TokenProblem::InvalidScope),
        _ => {}
    }
    if status == 408 || status == 429 || status >= 500 || (200..300).contains(&status) {
        // 5xx, throttling, or a 2xx without a usable token: transient (or a proxy in the way).
        return retry;
    }
    ErrorClass::Credentials(TokenProblem::Other {
        code: aadsts,
        error: error
            .map(str::to_string)
            .unwrap_or_else(|| format!("http_{status}")),
    })
}
