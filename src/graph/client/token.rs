//! App-only tokens (client credentials, GRAPH.md §1): cached per company and credentials,
//! renewed `token_refresh_margin_seconds` early, one request in flight per company (single
//! flight), a transient renewal failure riding on the current token while it lasts.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use base64::Engine;
use serde_json::Value;
use tokio::time::Instant;

use super::{
    Credentials, GraphClient, header_pairs, is_success, new_client_request_id, parse_body,
    path_segment,
};
use crate::graph::error::{ErrorClass, GraphError, parse_retry_after};
use crate::secret::Secret;

/// An app-only access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub value: Secret,
    /// `expires_in` after the token request was sent.
    pub expires_at: Instant,
    /// The JWT payload's `roles` claim (decoded, not verified); empty if absent (no consent).
    pub roles: Vec<String>,
    /// The JWT payload's `tid` claim.
    pub tenant_id: Option<String>,
}

impl AccessToken {
    /// Whether `roles` holds `role` (case-insensitively).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TokenKey {
    company: String,
    tenant: String,
    client_id: String,
    secret_fingerprint: String,
}

/// One cached token and the lock its refreshes take (single flight).
#[derive(Default)]
pub(super) struct Slot {
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The token and when to renew it.
    token: Option<(Arc<AccessToken>, Instant)>,
    /// The last failed token request and when it ended (shared with the callers that waited).
    failure: Option<(Instant, GraphError)>,
}

/// `expires_in` as an integer, a float or a numeric string.
pub(super) fn expires_in_secs(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

/// The JWT payload (base64url, not verified), if the token is a JWT.
pub(super) fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

impl GraphClient {
    /// A token for this company, cached until `token_refresh_margin_seconds` (at most half the
    /// lifetime) before it expires. Concurrent callers for one company share one token request,
    /// and its failure. Errors have class `Credentials(..)` (an admin must fix them) or
    /// `Retryable` (throttled or unavailable token service, connection).
    pub async fn token(
        &self,
        company_id: &str,
        creds: &Credentials,
    ) -> Result<Arc<AccessToken>, GraphError> {
        self.token_replacing(company_id, creds, None).await
    }

    /// Fetches a fresh token, bypassing (and not filling) the cache: the admin "verify".
    pub async fn fresh_token(&self, creds: &Credentials) -> Result<AccessToken, GraphError> {
        self.fetch_token("-", creds).await.map(|(t, _)| t)
    }

    /// Drops the company's cached tokens; the next call requests a new one.
    pub fn forget_token(&self, company_id: &str) {
        self.tokens().retain(|k, _| k.company != company_id);
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Arc<Slot>>> {
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(&self, company_id: &str, creds: &Credentials) -> Arc<Slot> {
        let key = TokenKey {
            company: company_id.to_string(),
            tenant: creds.tenant_id.clone(),
            client_id: creds.client_id.clone(),
            secret_fingerprint: creds.client_secret.fingerprint(),
        };
        let mut tokens = self.tokens();
        if let Some(slot) = tokens.get(&key) {
            return slot.clone();
        }
        // New credentials for this company: its old tokens are of no more use.
        tokens.retain(|k, _| k.company != company_id);
        tokens.entry(key).or_default().clone()
    }

    /// [`GraphClient::token`], except that a cached token identical to `stale` (one Graph just
    /// refused) is replaced, once, however many callers saw it refused.
    pub(super) async fn token_replacing(
        &self,
        company_id: &str,
        creds: &Credentials,
        stale: Option<&Arc<AccessToken>>,
    ) -> Result<Arc<AccessToken>, GraphError> {
        let slot = self.slot(company_id, creds);
        let asked = Instant::now();
        let mut state = slot.state.lock().await;
        let now = Instant::now();
        if let Some((token, refresh_at)) = &state.token {
            let refused = stale.is_some_and(|s| Arc::ptr_eq(s, token));
            if !refused && now < *refresh_at {
                return Ok(token.clone());
            }
        }
        if let Some((ended, err)) = &state.failure
            && *ended >= asked
        {
            // Another caller's request failed while this one waited for it.
            return still_usable(&state, stale, err).ok_or_else(|| err.clone());
        }
        match self.fetch_token(company_id, creds).await {
            Ok((token, refresh_at)) => {
                let token = Arc::new(token);
                state.token = Some((token.clone(), refresh_at));
                state.failure = None;
                Ok(token)
            }
            Err(err) => {
                state.failure = Some((Instant::now(), err.clone()));
                if let Some(token) = still_usable(&state, stale, &err) {
                    tracing::warn!(
                        company = company_id,
                        error = %err,
                        "token renewal failed; using the current token until it expires"
                    );
                    return Ok(token);
                }
                state.token = None;
                Err(err)
            }
        }
    }

    /// `POST {login_url}/{tenant}/oauth2/v2.0/token` (client credentials). Returns the token
    /// and when to renew it.
    async fn fetch_token(
        &self,
        company_id: &str,
        creds: &Credentials,
    ) -> Result<(AccessToken, Instant), GraphError> {
        let secret = creds.client_secret.expose();
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.inner.login_url,
            path_segment(&creds.tenant_id)
        );
        let started = Instant::now();
        let sent = self
            .inner
            .http
            .post(&url)
            .header("client-request-id", new_client_request_id())
            .header("Accept", "application/json")
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", creds.client_id.as_str()),
                ("client_secret", secret),
                ("scope", self.inner.scope.as_str()),
            ])
            .send()
            .await;
        let fail = |mut e: GraphError| {
            e.redact(secret);
            tracing::debug!(
                company = company_id,
                tenant = %creds.tenant_id,
                client_id = %creds.client_id,
                secret = %creds.client_secret.fingerprint(),
                status = e.status,
                trace_id = e.request_id.as_deref().unwrap_or("-"),
                error = %e,
                "token request failed"
            );
            e
        };
        let resp = sent.map_err(|e| fail(GraphError::connection(&e)))?;
        let status = resp.status().as_u16();
        let headers = header_pairs(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| fail(GraphError::connection(&e)))?;
        let body = parse_body(&bytes);
        let access_token = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        let (true, Some(access_token)) = (is_success(status), access_token) else {
            let mut e = GraphError::from_token_response(status, &body);
            let retry_after = headers
                .iter()
                .find(|(k, _)| k == "retry-after")
                .and_then(|(_, v)| parse_retry_after(v, jiff::Timestamp::now()));
            e.retry_after = retry_after;
            if let ErrorClass::Retryable { after: None } = e.class {
                e.class = ErrorClass::Retryable { after: retry_after };
            }
            return Err(fail(e));
        };
        Ok(self.issued(company_id, creds, status, &body, access_token, started))
    }

    /// The token of a successful answer and when to renew it: `expires_in` after the request
    /// was sent, renewed `token_refresh_margin_seconds` (at most half its lifetime) early; its
    /// roles and tenant read from the JWT.
    fn issued(
        &self,
        company_id: &str,
        creds: &Credentials,
        status: u16,
        body: &Value,
        access_token: &str,
        started: Instant,
    ) -> (AccessToken, Instant) {
        let expires_in = body
            .get("expires_in")
            .and_then(expires_in_secs)
            .unwrap_or_else(|| {
                tracing::debug!(
                    company = company_id,
                    "token answer without expires_in; assuming 3599 s"
                );
                3599
            });
        let lifetime = Duration::from_secs(expires_in);
        let claims = jwt_claims(access_token);
        let roles: Vec<String> = claims
            .as_ref()
            .and_then(|c| c.get("roles"))
            .and_then(Value::as_array)
            .map(|roles| {
                roles
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let tenant_id = claims
            .as_ref()
            .and_then(|c| c.get("tid"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let expires_at = started + lifetime;
        let margin = self.inner.refresh_margin.min(lifetime / 2);
        tracing::debug!(
            company = company_id,
            tenant = %creds.tenant_id,
            client_id = %creds.client_id,
            secret = %creds.client_secret.fingerprint(),
            status,
            expires_in,
            roles = roles.len(),
            "token issued"
        );
        (
            AccessToken {
                value: Secret::new(access_token),
                expires_at,
                roles,
                tenant_id,
            },
            expires_at - margin,
        )
    }
}

/// After a transient renewal failure: the cached token, if Graph has not refused it and it is
/// valid for a while yet (renewal starts `token_refresh_margin_seconds` early for this).
fn still_usable(
    state: &SlotState,
    stale: Option<&Arc<AccessToken>>,
    err: &GraphError,
) -> Option<Arc<AccessToken>> {
    let (token, _) = state.token.as_ref()?;
    let usable = err.is_retryable()
        && !stale.is_some_and(|s| Arc::ptr_eq(s, token))
        && token.expires_at > Instant::now() + Duration::from_secs(5);
    usable.then(|| token.clone())
}
