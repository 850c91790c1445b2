//! The tenants: companies (plan, credentials, consent, verification, enabled) and their linked
//! users (cyzen user → mailbox, linked-at, status), and [`mailbox_key`], the one spelling of an
//! address. Their store is PostgreSQL (`db`, the only module that talks to it): the
//! [`Directory`] (`directory`) reads and writes it for the admin API and the commands; each
//! worker's flush reads its [`DirectoryCache`] (`cache`), kept fresh by LISTEN/NOTIFY, and writes
//! its users' last-sync times behind. `redis_directory` reads the directory as older versions
//! kept it in Redis, to import it once.

pub mod audit;
mod cache;
pub mod db;
mod directory;
mod redis_directory;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use self::audit::{AuditEntry, AuditLog};
pub use self::cache::{DirectoryCache, Entry as CachedCompany, Lookup};
pub use self::directory::{Directory, DirectoryError, ResealReport};
pub use self::redis_directory::{ImportReport, RedisDirectory};
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
    /// Credentials are stored but the configured keys cannot decrypt them.
    CredentialsUnreadable,
    /// Credentials are stored, sealed, and this process has no keys at all to open them (a
    /// command run without `secrets.keys`): not the credentials' fault.
    KeysNotConfigured,
    UnknownCompany,
}

impl NotSyncing {
    pub fn code(self) -> &'static str {
        match self {
            NotSyncing::PlanExcludesIntegration => "plan_excludes_integration",
            NotSyncing::LitePlusWithoutScheduleOption => "lite_plus_without_schedule_option",
            NotSyncing::Disabled => "integration_disabled",
            NotSyncing::NoCredentials => "no_credentials",
            NotSyncing::CredentialsUnreadable => "credentials_unreadable",
            NotSyncing::KeysNotConfigured => "secrets_keys_not_configured",
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

/// The company's Microsoft Entra app registration, as the service uses it (the secret decrypted,
/// in a [`Secret`]). In Redis the secret is sealed with AES-256-GCM ([`crate::crypto`]).
#[derive(Clone)]
pub struct StoredCredentials {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub secret_expires_at: Option<Timestamp>,
    /// The id of the key that sealed the stored secret (`None`: not stored yet, or stored in
    /// plain text by a version before encryption at rest).
    pub key_id: Option<String>,
    /// When the credentials were last set.
    pub set_at: Option<Timestamp>,
}

impl std::fmt::Debug for StoredCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCredentials")
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret)
            .field("secret_expires_at", &self.secret_expires_at)
            .field("key_id", &self.key_id)
            .finish()
    }
}

impl StoredCredentials {
    pub fn new(
        tenant_id: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: Secret,
        secret_expires_at: Option<Timestamp>,
    ) -> Self {
        Self {
            tenant_id: tenant_id.into(),
            client_id: client_id.into(),
            client_secret,
            secret_expires_at,
            key_id: None,
            set_at: Some(Timestamp::now()),
        }
    }

    pub fn credentials(&self) -> Credentials {
        Credentials {
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
        }
    }
}

/// The last answer of the customer's administrator on Microsoft's admin-consent page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub granted: bool,
    pub at: Timestamp,
    /// The tenant Microsoft reported (`tenant=` on success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// `error` and `error_description` on refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// The outcome of the last "verify" of the company's credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerificationRecord {
    pub at: Timestamp,
    /// `ok`, or the problem's code (`invalid_secret`, `permission_not_granted`, …).
    pub outcome: String,
    /// Required application permissions the token lacks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_permissions: Vec<String>,
    /// Recommended permissions the token lacks (warnings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_optional_permissions: Vec<String>,
    /// The tenant GUID the token was issued in (its `tid` claim): a domain `tenant_id`
    /// resolved. The admin-consent callback's `tenant` must equal it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_guid: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Company {
    pub id: String,
    pub plan: Plan,
    pub options: Vec<String>,
    /// The administrator turned the integration on.
    pub enabled: bool,
    pub credentials: Option<StoredCredentials>,
    /// Set (and `credentials` is `None`) when stored credentials exist but cannot be decrypted
    /// with the configured keys; writing the company back keeps the stored credentials.
    pub credentials_error: Option<String>,
    pub consent: Option<ConsentRecord>,
    pub verification: Option<VerificationRecord>,
    /// What the repair pass does with copies changed in Outlook (`repair`).
    pub drift: DriftPolicy,
}

/// What the repair pass does when a copy was deleted or edited in Outlook.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftPolicy {
    /// Restore the copy (PATCH back, or create again) and note it in the ledger.
    #[default]
    Repair,
    /// Count it and note it in the ledger; write nothing.
    Report,
    /// Read nothing: no repair pass for this company's mailboxes.
    Off,
}

impl DriftPolicy {
    pub const ALL: [DriftPolicy; 3] = [DriftPolicy::Repair, DriftPolicy::Report, DriftPolicy::Off];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftPolicy::Repair => "repair",
            DriftPolicy::Report => "report",
            DriftPolicy::Off => "off",
        }
    }

    pub fn parse(s: &str) -> Option<DriftPolicy> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The `credentials_error` of sealed credentials read without any key configured.
static NOT_CONFIGURED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| crate::crypto::CryptoError::NotConfigured.to_string());

impl Company {
    /// A company on `plan`, no options, integration off, nothing configured.
    pub fn new(id: impl Into<String>, plan: Plan) -> Self {
        Self {
            id: id.into(),
            plan,
            options: Vec::new(),
            enabled: false,
            credentials: None,
            credentials_error: None,
            consent: None,
            verification: None,
            drift: DriftPolicy::default(),
        }
    }

    /// Whether this company's events are synced, and if not, why.
    pub fn sync_allowed(&self) -> Result<(), NotSyncing> {
        self.plan.allows(&self.options)?;
        if !self.enabled {
            return Err(NotSyncing::Disabled);
        }
        if self.credentials.is_none() {
            if self.credentials_error.as_deref() == Some(NOT_CONFIGURED.as_str()) {
                return Err(NotSyncing::KeysNotConfigured);
            }
            if self.credentials_error.is_some() {
                return Err(NotSyncing::CredentialsUnreadable);
            }
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
    /// The mailbox address as used in keys and leases (see [`mailbox_key`]).
    pub fn mailbox_key(&self) -> String {
        mailbox_key(&self.mailbox)
    }
}

/// The one spelling of a mailbox address used in every key, lease, comparison and
/// transactionId: Exchange compares addresses without regard to case (`Taro@x` and `taro@x` are
/// one mailbox), and linked addresses are ASCII (the admin refuses others), so ASCII lowercase
/// is exact.
pub fn mailbox_key(address: &str) -> String {
    address.trim().to_ascii_lowercase()
}
