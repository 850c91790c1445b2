//! The tenant directory in Redis: companies (credentials, plan, enabled) and their linked users
//! (cyzen user → mailbox, linked-at, status). The flush reads it; the admin API writes it.
//!
//! Keys: `{prefix}:company:{company}` (a JSON document) and `{prefix}:users:{company}` (a hash of
//! user id → JSON).

use std::collections::HashMap;

use jiff::Timestamp;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::graph::client::Credentials;
use crate::secret::Secret;

/// cyzen's plans. Every plan but Lite may use the Microsoft calendar integration; Lite Plus only
/// with the schedule option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Plan {
    Lite,
    LitePlus,
    Standard,
    Premium,
    Enterprise,
}

pub const SCHEDULE_OPTION: &str = "schedule";

/// Why a company's events are skipped (counted, never an error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSyncing {
    PlanExcludesIntegration,
    LitePlusWithoutScheduleOption,
    Disabled,
    NoCredentials,
    UnknownCompany,
}

impl NotSyncing {
    pub fn code(self) -> &'static str {
        match self {
            NotSyncing::PlanExcludesIntegration => "plan_excludes_integration",
            NotSyncing::LitePlusWithoutScheduleOption => "lite_plus_without_schedule_option",
            NotSyncing::Disabled => "integration_disabled",
            NotSyncing::NoCredentials => "no_credentials",
            NotSyncing::UnknownCompany => "unknown_company",
        }
    }
}

impl Plan {
    /// Whether this plan with these options may use the integration at all.
    pub fn allows(self, options: &[String]) -> Result<(), NotSyncing> {
        match self {
            Plan::Lite => Err(NotSyncing::PlanExcludesIntegration),
            Plan::LitePlus if !options.iter().any(|o| o == SCHEDULE_OPTION) => {
                Err(NotSyncing::LitePlusWithoutScheduleOption)
            }
            _ => Ok(()),
        }
    }
}

/// The company's Microsoft Entra app registration.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredCredentials {
    pub tenant_id: String,
    pub client_id: String,
    /// The client secret. TODO(issue 5): encrypted at rest with a configured AEAD key.
    pub client_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_expires_at: Option<Timestamp>,
}

impl std::fmt::Debug for StoredCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredentials")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &"***")
            .finish()
    }
}

impl StoredCredentials {
    pub fn credentials(&self) -> Credentials {
        Credentials {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            client_secret: Secret::new(self.client_secret.clone()),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Company {
    pub id: String,
    pub plan: Plan,
    #[serde(default)]
    pub options: Vec<String>,
    /// The administrator turned the integration on.
    pub enabled: bool,
    #[serde(default)]
    pub credentials: Option<StoredCredentials>,
}

impl Company {
    /// Whether this company's events are synced, and if not, why.
    pub fn sync_allowed(&self) -> Result<(), NotSyncing> {
        self.plan.allows(&self.options)?;
        if !self.enabled {
            return Err(NotSyncing::Disabled);
        }
        if self.credentials.is_none() {
            return Err(NotSyncing::NoCredentials);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserStatus {
    /// 認証済み: the mailbox was verified and writes succeed.
    Authenticated,
    /// 認証失敗: verification or a write failed; `reason` says why.
    AuthFailed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LinkedUser {
    pub user_id: String,
    /// The Microsoft mailbox address (user principal name or primary SMTP address).
    pub mailbox: String,
    pub linked_at: Timestamp,
    pub status: UserStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

impl LinkedUser {
    /// The mailbox address as used in keys and leases (addresses are case-insensitive).
    pub fn mailbox_key(&self) -> String {
        self.mailbox.to_ascii_lowercase()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
}

/// Reads and writes the directory.
#[derive(Clone)]
pub struct Directory {
    redis: ConnectionManager,
    prefix: String,
}

impl Directory {
    pub fn new(redis: ConnectionManager, prefix: &str) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
        }
    }

    fn company_key(&self, company: &str) -> String {
        format!("{}:company:{company}", self.prefix)
    }

    fn users_key(&self, company: &str) -> String {
        format!("{}:users:{company}", self.prefix)
    }

    pub async fn put_company(&self, c: &Company) -> Result<(), DirectoryError> {
        let doc = serde_json::to_string(c).expect("serializable");
        let mut r = self.redis.clone();
        let _: () = r.set(self.company_key(&c.id), doc).await?;
        Ok(())
    }

    pub async fn company(&self, company: &str) -> Result<Option<Company>, DirectoryError> {
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

    pub async fn remove_company(&self, company: &str) -> Result<(), DirectoryError> {
        let mut r = self.redis.clone();
        let _: () = r
            .del(&[self.company_key(company), self.users_key(company)])
            .await?;
        Ok(())
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
