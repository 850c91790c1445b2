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

use super::service::{Admin, AdminError, ConsentLink, ConsentOutcome};
use crate::tenants::ConsentRecord;

#[derive(Debug, Serialize, Deserialize)]
struct PendingConsent {
    company: String,
    client_id: String,
    tenant_id: String,
}

impl Admin {
    fn state_key(&self, state: &str) -> String {
        let hash = hex::encode(Sha256::digest(state.as_bytes()));
        format!("{}:consent-state:{hash}", self.cfg.redis.key_prefix)
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
        let mut r = self.redis.clone();
        let pending: Option<String> = redis::cmd("GETDEL")
            .arg(self.state_key(state))
            .query_async(&mut r)
            .await?;
        let pending: PendingConsent = pending
            .and_then(|p| serde_json::from_str(&p).ok())
            .ok_or_else(|| {
                invalid(
                    "consent_state_expired",
                    "this consent link is unknown, already used or expired: ask for a new one",
                )
            })?;
        let mut c = self.load(&pending.company).await?;
        let granted = params
            .get("admin_consent")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let record = if granted {
            let tenant = params.get("tenant").cloned();
            let mismatch = tenant.as_deref().is_some_and(|t| {
                uuid::Uuid::parse_str(&pending.tenant_id).is_ok()
                    && !t.eq_ignore_ascii_case(&pending.tenant_id)
            });
            ConsentRecord {
                granted: !mismatch,
                at: Timestamp::now(),
                error: mismatch.then(|| "tenant_mismatch".to_string()),
                error_description: mismatch.then(|| {
                    format!(
                        "consent was granted in tenant {}, but the credentials name tenant {}",
                        tenant.clone().unwrap_or_default(),
                        pending.tenant_id
                    )
                }),
                tenant,
            }
        } else if let Some(error) = params.get("error") {
            ConsentRecord {
                granted: false,
                at: Timestamp::now(),
                tenant: params.get("tenant").cloned(),
                error: Some(error.clone()),
                error_description: params.get("error_description").cloned(),
            }
        } else {
            return Err(invalid(
                "invalid_callback",
                "the answer is neither a grant (admin_consent=True) nor a refusal (error=…)",
            ));
        };
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
}
