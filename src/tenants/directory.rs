//! The tenant directory in Redis: companies (credentials, plan, enabled) and their linked users.
//!
//! Keys (`store::keys`): `company:{company}` (a JSON document; the client secret sealed with
//! AES-256-GCM, see [`crate::crypto`]), `companies` (the set of company ids) and
//! `users:{company}` (a hash of user id → JSON).

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::{
    Company, ConsentRecord, LinkedUser, Plan, StoredCredentials, UserStatus, VerificationRecord,
};
use crate::crypto::{CryptoError, KeyRing, Sealed};
use crate::secret::Secret;

/// The company as stored: the secret sealed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CompanyDoc {
    id: String,
    plan: Plan,
    #[serde(default)]
    options: Vec<String>,
    enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    credentials: Option<CredentialsDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    consent: Option<ConsentRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verification: Option<VerificationRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CredentialsDoc {
    tenant_id: String,
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<Sealed>,
    /// Plain text, as versions before encryption at rest stored it; read, never written.
    #[serde(default, skip_serializing)]
    client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set_at: Option<Timestamp>,
}

/// What the client secret of `company` is bound to when sealed.
fn secret_aad(company: &str) -> String {
    format!("outlook-sync/client-secret/v1/{company}")
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("{0}")]
    Crypto(#[from] CryptoError),
}

/// Reads and writes the directory.
#[derive(Clone)]
pub struct Directory {
    redis: crate::store::Redis,
    names: crate::store::Keys,
    keys: Arc<KeyRing>,
}

/// What [`Directory::reseal_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResealReport {
    pub companies: usize,
    pub resealed: usize,
    /// Companies whose secret could not be opened: (company, error).
    pub failed: Vec<(String, String)>,
}

impl Directory {
    /// A directory without encryption keys: it reads companies without credentials, and
    /// refuses to store a secret. Use [`Directory::from_config`] or [`Directory::with_keys`].
    pub fn new(redis: crate::store::Redis, keys: crate::store::Keys) -> Self {
        Self {
            redis,
            names: keys,
            keys: Arc::new(KeyRing::default()),
        }
    }

    /// The directory of a (validated) configuration: its key prefix and its secret keys.
    pub fn from_config(redis: crate::store::Redis, cfg: &crate::config::Config) -> Self {
        let keys =
            KeyRing::from_config(&cfg.secrets).expect("secrets.* are checked by Config::validate");
        Self::new(redis, crate::store::keys(cfg)).with_keys(Arc::new(keys))
    }

    pub fn with_keys(mut self, keys: Arc<KeyRing>) -> Self {
        self.keys = keys;
        self
    }

    fn company_key(&self, company: &str) -> String {
        self.names.company(company)
    }

    fn companies_key(&self) -> String {
        self.names.companies()
    }

    fn users_key(&self, company: &str) -> String {
        self.names.users(company)
    }

    async fn read_doc(&self, company: &str) -> Result<Option<CompanyDoc>, DirectoryError> {
        let key = self.company_key(company);
        let mut r = self.redis.clone();
        let doc: Option<String> = r.get(&key).await?;
        doc.map(|d| {
            serde_json::from_str(&d).map_err(|e| DirectoryError::Corrupt {
                key,
                message: e.to_string(),
            })
        })
        .transpose()
    }

    /// Stores the company, sealing its client secret with the active key. Fails with
    /// [`CryptoError::NoKey`] when it has a secret and no key is configured.
    pub async fn put_company(&self, c: &Company) -> Result<(), DirectoryError> {
        let credentials = match (&c.credentials, &c.credentials_error) {
            (Some(sc), _) => Some(CredentialsDoc {
                tenant_id: sc.tenant_id.clone(),
                client_id: sc.client_id.clone(),
                secret: Some(self.keys.seal(&sc.client_secret, &secret_aad(&c.id))?),
                client_secret: None,
                secret_expires_at: sc.secret_expires_at,
                set_at: sc.set_at,
            }),
            // Unreadable with today's keys: keep what is stored.
            (None, Some(_)) => self.read_doc(&c.id).await?.and_then(|d| d.credentials),
            (None, None) => None,
        };
        let doc = CompanyDoc {
            id: c.id.clone(),
            plan: c.plan,
            options: c.options.clone(),
            enabled: c.enabled,
            credentials,
            consent: c.consent.clone(),
            verification: c.verification.clone(),
        };
        let doc = serde_json::to_string(&doc).expect("serializable");
        let mut r = self.redis.clone();
        let _: () = redis::pipe()
            .set(self.company_key(&c.id), doc)
            .ignore()
            .sadd(self.companies_key(), &c.id)
            .ignore()
            .query_async(&mut r)
            .await?;
        Ok(())
    }

    /// The company, its client secret decrypted. Credentials the keys cannot open come back as
    /// `credentials: None` with `credentials_error` set (and a warning is logged).
    pub async fn company(&self, company: &str) -> Result<Option<Company>, DirectoryError> {
        let Some(doc) = self.read_doc(company).await? else {
            return Ok(None);
        };
        let mut credentials = None;
        let mut credentials_error = None;
        if let Some(cd) = doc.credentials {
            let secret = match (&cd.secret, &cd.client_secret) {
                (Some(sealed), _) => self
                    .keys
                    .open(sealed, &secret_aad(&doc.id))
                    .map(|s| (s, Some(sealed.key_id.clone()))),
                (None, Some(plain)) => Ok((Secret::new(plain.clone()), None)),
                (None, None) => Err(CryptoError::Corrupt("-".into())),
            };
            match secret {
                Ok((client_secret, key_id)) => {
                    credentials = Some(StoredCredentials {
                        tenant_id: cd.tenant_id,
                        client_id: cd.client_id,
                        client_secret,
                        secret_expires_at: cd.secret_expires_at,
                        key_id,
                        set_at: cd.set_at,
                    });
                }
                Err(e) => {
                    tracing::warn!(company, error = %e, "the company's client secret cannot be decrypted");
                    credentials_error = Some(e.to_string());
                }
            }
        }
        Ok(Some(Company {
            id: doc.id,
            plan: doc.plan,
            options: doc.options,
            enabled: doc.enabled,
            credentials,
            credentials_error,
            consent: doc.consent,
            verification: doc.verification,
        }))
    }

    /// Every company id written through this directory, sorted.
    pub async fn company_ids(&self) -> Result<Vec<String>, DirectoryError> {
        let mut r = self.redis.clone();
        let mut ids: Vec<String> = r.smembers(self.companies_key()).await?;
        ids.sort();
        Ok(ids)
    }

    pub async fn remove_company(&self, company: &str) -> Result<(), DirectoryError> {
        let mut r = self.redis.clone();
        let _: () = redis::pipe()
            .del(&[self.company_key(company), self.users_key(company)])
            .ignore()
            .srem(self.companies_key(), company)
            .ignore()
            .query_async(&mut r)
            .await?;
        Ok(())
    }

    /// Re-encrypts every stored secret sealed with a key other than the active one (or stored
    /// in plain text by an older version) with the active key.
    pub async fn reseal_all(&self) -> Result<ResealReport, DirectoryError> {
        let active = self
            .keys
            .active_key_id()
            .ok_or(CryptoError::NoKey)?
            .to_string();
        let mut report = ResealReport::default();
        for id in self.company_ids().await? {
            let Some(doc) = self.read_doc(&id).await? else {
                continue;
            };
            report.companies += 1;
            let Some(cd) = &doc.credentials else { continue };
            if cd.secret.as_ref().is_some_and(|s| s.key_id == active) {
                continue;
            }
            match self.company(&id).await? {
                Some(c) if c.credentials.is_some() => {
                    self.put_company(&c).await?;
                    report.resealed += 1;
                }
                Some(c) => report
                    .failed
                    .push((id, c.credentials_error.unwrap_or_default())),
                None => {}
            }
        }
        Ok(report)
    }

    pub async fn put_user(&self, company: &str, u: &LinkedUser) -> Result<(), DirectoryError> {
        let mut r = self.redis.clone();
        let _: () = r
            .hset(
                self.users_key(company),
                &u.user_id,
                serde_json::to_string(u).expect("serializable"),
            )
            .await?;
        Ok(())
    }

    /// Writes many users in one round trip.
    pub async fn put_users(
        &self,
        company: &str,
        users: &[LinkedUser],
    ) -> Result<(), DirectoryError> {
        if users.is_empty() {
            return Ok(());
        }
        let key = self.users_key(company);
        let mut pipe = redis::pipe();
        for u in users {
            pipe.hset(
                &key,
                &u.user_id,
                serde_json::to_string(u).expect("serializable"),
            )
            .ignore();
        }
        let mut r = self.redis.clone();
        pipe.query_async::<()>(&mut r).await?;
        Ok(())
    }

    pub async fn remove_user(&self, company: &str, user_id: &str) -> Result<bool, DirectoryError> {
        let mut r = self.redis.clone();
        let n: u32 = r.hdel(self.users_key(company), user_id).await?;
        Ok(n > 0)
    }

    pub async fn user(
        &self,
        company: &str,
        user_id: &str,
    ) -> Result<Option<LinkedUser>, DirectoryError> {
        let key = self.users_key(company);
        let mut r = self.redis.clone();
        let doc: Option<String> = r.hget(&key, user_id).await?;
        doc.map(|d| parse_user(&key, &d)).transpose()
    }

    /// Every linked user of a company, by cyzen user id.
    pub async fn users(
        &self,
        company: &str,
    ) -> Result<HashMap<String, LinkedUser>, DirectoryError> {
        let key = self.users_key(company);
        let mut r = self.redis.clone();
        let all: HashMap<String, String> = r.hgetall(&key).await?;
        all.into_iter()
            .map(|(id, d)| parse_user(&key, &d).map(|u| (id, u)))
            .collect()
    }

    /// Records the outcome of writes to a user's mailbox: a success sets the last sync time; a
    /// mailbox problem flips the user to auth_failed with the reason.
    pub async fn record_sync(
        &self,
        company: &str,
        user_id: &str,
        outcome: Result<(), (&str, &str)>,
    ) -> Result<(), DirectoryError> {
        let Some(mut u) = self.user(company, user_id).await? else {
            return Ok(());
        };
        match outcome {
            Ok(()) => {
                u.last_sync_at = Some(Timestamp::now());
            }
            Err((reason, message)) => {
                u.status = UserStatus::AuthFailed;
                u.reason = Some(reason.to_string());
                u.last_error = Some(message.to_string());
            }
        }
        self.put_user(company, &u).await
    }
}

fn parse_user(key: &str, doc: &str) -> Result<LinkedUser, DirectoryError> {
    serde_json::from_str(doc).map_err(|e| DirectoryError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}
