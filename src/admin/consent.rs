//! Admin consent: the link the customer's administrator opens (Microsoft's "Accept" / 承諾 page
//! for the company's app) and the redirect target that records the answer.
//!
//! The link is `{graph.login_url}/{tenant}/adminconsent?client_id=…&state=…&redirect_uri=…`
//! with `redirect_uri = {admin.public_url}/v1/consent/callback`. The state is 32 random bytes,
//! stored in Redis (only its SHA-256, `{prefix}:consent-state:{hash}`) for
//! `admin.consent_state_ttl_seconds` and usable once: it names the company the answer is for,
//! so the callback needs no bearer token.

use std::collections::HashMap;

use base64::Engine;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::credentials::Verification;
use super::input::is_guid;
use super::service::{Admin, AdminError};
use crate::tenants::{Company, ConsentRecord};

/// A consent link for the customer's administrator.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentLink {
    pub url: String,
    pub expires_at: Timestamp,
}

/// What the consent callback recorded.
#[derive(Debug, Clone, Serialize)]
pub struct ConsentOutcome {
    pub company: String,
    pub consent: ConsentRecord,
    pub verification: Option<Verification>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PendingConsent {
    company: String,
    client_id: String,
    tenant_id: String,
}

impl Admin {
    fn state_key(&self, state: &str) -> String {
        let hash = hex::encode(Sha256::digest(state.as_bytes()));
        crate::store::keys(&self.cfg).consent_state(&hash)
    }

    /// Where Microsoft sends the administrator back.
    pub fn consent_redirect_uri(&self) -> String {
        format!(
            "{}/v1/consent/callback",
            self.cfg.admin.public_url.trim_end_matches('/')
        )
    }

    /// A fresh consent link for the company's app.
    pub async fn consent_link(&self, company: &str) -> Result<ConsentLink, AdminError> {
        let c = self.load(company).await?;
        let Some(creds) = &c.credentials else {
            return Err(AdminError::Conflict {
                code: "no_credentials",
                message: "set the tenant ID and client ID before asking for consent".into(),
            });
        };
        let state =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let ttl = self.cfg.admin.consent_state_ttl_seconds;
        let pending = PendingConsent {
            company: company.to_string(),
            client_id: creds.client_id.clone(),
            tenant_id: creds.tenant_id.clone(),
        };
        let mut r = self.redis.clone();
        let _: () = redis::cmd("SET")
            .arg(self.state_key(&state))
            .arg(serde_json::to_string(&pending).expect("serializable"))
            .arg("EX")
            .arg(ttl)
            .query_async(&mut r)
            .await?;
        let mut url = url::Url::parse(&self.cfg.graph.login_url).expect("validated login_url");
        url.path_segments_mut()
            .expect("an http(s) URL has path segments")
            .pop_if_empty()
            .push(&creds.tenant_id)
            .push("adminconsent");
        url.query_pairs_mut()
            .append_pair("client_id", &creds.client_id)
            .append_pair("state", &state)
            .append_pair("redirect_uri", &self.consent_redirect_uri());
        tracing::info!(company, "admin: consent link issued");
        Ok(ConsentLink {
            url: url.to_string(),
            expires_at: Timestamp::now() + jiff::SignedDuration::from_secs(ttl as i64),
        })
    }

    /// Records what Microsoft's redirect says: `admin_consent=True&tenant=…&state=…` (granted)
    /// or `error=…&error_description=…&state=…` (refused). On a grant, the credentials are
    /// verified again (best effort) so the status shows the permissions at once.
    ///
    /// The state is bound to the credentials it was issued for: once the tenant or client ID
    /// changed, it is void (`consent_credentials_changed`). A grant's `tenant` must be the
    /// credentials' tenant: the GUID itself, or for a domain, the GUID it resolves to (the `tid`
    /// of the last verification, or of a token obtained now); else `consent_tenant_mismatch`.
    /// Refusals record nothing. Texts from the redirect are stored capped.
    pub async fn consent_callback(
        &self,
        params: &HashMap<String, String>,
    ) -> Result<ConsentOutcome, AdminError> {
        let invalid = |code: &'static str, message: &str| AdminError::Invalid {
            code,
            message: message.to_string(),
        };
        let state = params
            .get("state")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| invalid("invalid_state", "the answer carries no state"))?;
        let key = self.state_key(state);
        let mut r = self.redis.clone();
        // Read first, consume once the answer is accepted: a callback that cannot be checked
        // now (Microsoft unreachable) can be retried with the same link.
        let pending: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut r).await?;
        let expired = || {
            invalid(
                "consent_state_expired",
                "this consent link is unknown, already used or expired: ask for a new one",
            )
        };
        let pending: PendingConsent = pending
            .and_then(|p| serde_json::from_str(&p).ok())
            .ok_or_else(expired)?;
        let mut c = self.load(&pending.company).await?;
        let same_credentials = c.credentials.as_ref().is_some_and(|cur| {
            cur.tenant_id.eq_ignore_ascii_case(&pending.tenant_id)
                && cur.client_id.eq_ignore_ascii_case(&pending.client_id)
        });
        if !same_credentials {
            tracing::warn!(company = %c.id, "admin: consent answer for credentials that changed since its link was issued; refused");
            self.void_state(&key).await;
            return Err(AdminError::Conflict {
                code: "consent_credentials_changed",
                message: format!(
                    "this consent link was issued for tenant {} and client {}, and the company's credentials have changed since: nothing was recorded; ask for a new link",
                    pending.tenant_id, pending.client_id
                ),
            });
        }
        let granted = params
            .get("admin_consent")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let record = if granted {
            let tenant = params.get("tenant").map(|t| t.trim()).unwrap_or_default();
            let expected = self.tenant_guid_of(&c).await?;
            if !tenant.eq_ignore_ascii_case(&expected) {
                tracing::warn!(company = %c.id, tenant = %capped(tenant, MAX_TENANT), expected = %expected, "admin: consent granted in another tenant; refused");
                self.void_state(&key).await;
                return Err(AdminError::Conflict {
                    code: "consent_tenant_mismatch",
                    message: format!(
                        "consent was given in tenant {:?}, but the credentials name tenant {} ({expected}): nothing was recorded; consent as an administrator of that tenant",
                        capped(tenant, MAX_TENANT),
                        pending.tenant_id
                    ),
                });
            }
            ConsentRecord {
                granted: true,
                at: Timestamp::now(),
                tenant: Some(expected),
                error: None,
                error_description: None,
            }
        } else if let Some(error) = params.get("error") {
            ConsentRecord {
                granted: false,
                at: Timestamp::now(),
                tenant: params.get("tenant").map(|t| capped(t, MAX_TENANT)),
                error: Some(capped(error, MAX_ERROR_CODE)),
                error_description: params
                    .get("error_description")
                    .map(|d| capped(d, MAX_ERROR_DESCRIPTION)),
            }
        } else {
            return Err(invalid(
                "invalid_callback",
                "the answer is neither a grant (admin_consent=True) nor a refusal (error=…)",
            ));
        };
        // Single use: only the caller that takes the state records the answer.
        let taken: Option<String> = redis::cmd("GETDEL").arg(&key).query_async(&mut r).await?;
        if taken.is_none() {
            return Err(expired());
        }
        c.consent = Some(record.clone());
        self.directory.put_company(&c).await?;
        tracing::info!(company = %c.id, granted = record.granted, error = record.error.as_deref().unwrap_or("-"), "admin: consent answer recorded");
        let verification = if record.granted && c.credentials.is_some() {
            self.verify_credentials(&c.id).await.ok()
        } else {
            None
        };
        Ok(ConsentOutcome {
            company: c.id,
            consent: record,
            verification,
        })
    }

    /// Forgets a consent state (best effort: it expires anyway).
    async fn void_state(&self, key: &str) {
        let mut r = self.redis.clone();
        let _: Result<(), _> = redis::cmd("DEL").arg(key).query_async(&mut r).await;
    }

    /// The tenant GUID of the company's credentials: the tenant ID itself when it is a GUID;
    /// for a domain, the `tid` its last verification recorded, or that of a token obtained now.
    async fn tenant_guid_of(&self, c: &Company) -> Result<String, AdminError> {
        let creds = c.credentials.as_ref().ok_or_else(|| AdminError::Conflict {
            code: "no_credentials",
            message: "the company has no credentials".into(),
        })?;
        if is_guid(&creds.tenant_id) {
            return Ok(creds.tenant_id.to_ascii_lowercase());
        }
        if let Some(guid) = c.verification.as_ref().and_then(|v| v.tenant_guid.clone()) {
            return Ok(guid.to_ascii_lowercase());
        }
        match self.graph.fresh_token(&creds.credentials()).await {
            Ok(token) => token
                .tenant_id
                .filter(|t| is_guid(t))
                .map(|t| t.to_ascii_lowercase())
                .ok_or_else(|| AdminError::Conflict {
                    code: "consent_tenant_unconfirmed",
                    message: format!(
                        "Microsoft's token for tenant {} names no tenant GUID, so the consent cannot be matched to it: nothing was recorded",
                        creds.tenant_id
                    ),
                }),
            Err(e) if e.is_retryable() => Err(AdminError::Unavailable {
                message: format!(
                    "the tenant {} could not be resolved to its GUID to check the consent ({e}); open the same link again later",
                    creds.tenant_id
                ),
                retry_after: e.wait_hint(),
            }),
            Err(e) => Err(AdminError::Conflict {
                code: "consent_tenant_unconfirmed",
                message: format!(
                    "the tenant {} could not be resolved to its GUID to check the consent ({e}): verify the credentials, then open the same link again",
                    creds.tenant_id
                ),
            }),
        }
    }
}

/// Longest texts kept from a consent redirect (its query is the browser's, so anyone's).
const MAX_TENANT: usize = 100;
const MAX_ERROR_CODE: usize = 100;
const MAX_ERROR_DESCRIPTION: usize = 1000;

/// `s` cut to at most `max` characters (on a character boundary), marked `…` when cut.
pub(crate) fn capped(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((i, _)) => format!("{}…", &s[..i]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_capped_on_a_character_boundary() {
        assert_eq!(capped("abc", 3), "abc");
        assert_eq!(capped("abcd", 3), "abc…");
        assert_eq!(capped("同意しません", 2), "同意…");
        assert_eq!(capped(&"x".repeat(60_000), 1000).chars().count(), 1001);
    }
}
