//! The admin operations, independent of HTTP: companies (plan, credentials, verification,
//! consent, enabling), linked users (link, verify, unlink with a clean removal of their copies)
//! and the secret-expiry warning. The HTTP API (`api`) and the command line (`outlook-sync
//! admin`) are both thin shells over [`Admin`].
//!
//! A company's credentials are only ever used for its own requests: every Graph call here goes
//! through `GraphClient::send`/`batch` with the company's id and credentials, addressed to the
//! mailbox being linked or cleaned for that company.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use jiff::Timestamp;
use redis::aio::ConnectionManager;
use serde::Serialize;

use super::messages::{self, Text};
use crate::config::Config;
use crate::crypto::CryptoError;
use crate::graph::client::{Credentials, GraphClient, GraphRequest, path_segment};
use crate::graph::error::{ErrorClass, GraphError, TokenProblem};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::{Copies, MailboxLeases};
use crate::tenants::{
    Company, ConsentRecord, Directory, DirectoryError, LinkedUser, Plan, StoredCredentials,
    UserStatus, VerificationRecord, mailbox_key,
};

/// Application permissions the integration cannot work without.
pub const REQUIRED_PERMISSIONS: &[&str] = &["Calendars.ReadWrite", "User.Read.All"];
/// Permissions cyzen's setup guide lists too; missing is a warning.
pub const RECOMMENDED_PERMISSIONS: &[&str] = &["Contacts.Read"];

/// Attempts for one Graph request of the admin (throttled or unavailable answers are retried
/// after `Retry-After`, else after the backoff, with backon).
const GRAPH_ATTEMPTS: u32 = 6;
/// How long an unlink waits for a worker that is writing to the mailbox.
const LEASE_WAIT: Duration = Duration::from_secs(30);

/// Why an admin operation did not happen. Each maps to one HTTP status and a stable code.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("unknown company {0:?}")]
    UnknownCompany(String),
    #[error("user {user:?} of company {company:?} is not linked")]
    NotLinked { company: String, user: String },
    #[error("unknown or expired job {0:?}")]
    UnknownJob(String),
    /// The request itself is wrong (422).
    #[error("{message}")]
    Invalid { code: &'static str, message: String },
    /// The company's state does not allow it (409): plan, missing credentials, address in use.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// Microsoft could not be reached or kept throttling (503).
    #[error("Microsoft Graph is unavailable: {message}")]
    Unavailable {
        message: String,
        retry_after: Option<Duration>,
    },
    /// No encryption key is configured, so no secret can be stored (503).
    #[error("{0}")]
    SecretsNotConfigured(CryptoError),
    #[error("directory: {0}")]
    Directory(DirectoryError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl From<DirectoryError> for AdminError {
    fn from(e: DirectoryError) -> Self {
        match e {
            DirectoryError::Crypto(c @ CryptoError::NoKey) => AdminError::SecretsNotConfigured(c),
            other => AdminError::Directory(other),
        }
    }
}

impl AdminError {
    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            AdminError::UnknownCompany(_)
            | AdminError::NotLinked { .. }
            | AdminError::UnknownJob(_) => 404,
            AdminError::Invalid { .. } => 422,
            AdminError::Conflict { .. } => 409,
            AdminError::Unavailable { .. } | AdminError::SecretsNotConfigured(_) => 503,
            AdminError::Directory(_) | AdminError::Redis(_) => 500,
        }
    }

    /// A stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AdminError::UnknownCompany(_) => "unknown_company",
            AdminError::NotLinked { .. } => "not_linked",
            AdminError::UnknownJob(_) => "unknown_job",
            AdminError::Invalid { code, .. } | AdminError::Conflict { code, .. } => code,
            AdminError::Unavailable { .. } => "verification_unavailable",
            AdminError::SecretsNotConfigured(_) => "secrets_not_configured",
            AdminError::Directory(_) | AdminError::Redis(_) => "internal",
        }
    }

    fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        AdminError::Invalid {
            code,
            message: message.into(),
        }
    }

    fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        AdminError::Conflict {
            code,
            message: message.into(),
        }
    }
}

// ---- views (what the API returns; never a secret) ----------------------------------------

/// A company's integration as the admin screen shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CompanyStatus {
    pub company: String,
    pub plan: Plan,
    pub options: Vec<String>,
    pub enabled: bool,
    /// Whether changes are synced now; if not, `not_syncing` says why.
    pub syncing: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_syncing: Option<Reason>,
    pub credentials: Option<CredentialsStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_error: Option<String>,
    pub consent: Option<ConsentRecord>,
    pub verification: Option<VerificationRecord>,
    /// The recorded secret expiry is within `admin.secret_expiry_warning_days` (or past).
    pub secret_expiring: bool,
    pub warnings: Vec<Reason>,
    pub users: usize,
}

/// The credentials without the secret: whether it is set and a short fingerprint.
#[derive(Debug, Clone, Serialize)]
pub struct CredentialsStatus {
    pub tenant_id: String,
    pub client_id: String,
    pub secret_set: bool,
    /// First 12 hex digits of the secret's SHA-256: tells two secrets apart, reveals nothing.
    pub secret_fingerprint: String,
    pub secret_expires_at: Option<Timestamp>,
    pub secret_expires_in_days: Option<i64>,
    pub key_id: Option<String>,
    pub set_at: Option<Timestamp>,
}

/// A reason code with its sentences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub code: String,
    pub message: Text,
    /// Extra detail (e.g. the missing permission, Graph's message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Reason {
    pub fn new(code: &str, detail: Option<String>) -> Reason {
        Reason {
            code: code.to_string(),
            message: messages::reason(code),
            detail,
        }
    }
}

/// A linked user as the admin screen shows it.
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub user_id: String,
    pub mailbox: String,
    pub status: UserStatus,
    pub status_label: Text,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    pub linked_at: Timestamp,
    pub last_sync_at: Option<Timestamp>,
    pub last_error: Option<String>,
}

impl From<&LinkedUser> for UserView {
    fn from(u: &LinkedUser) -> Self {
        UserView {
            user_id: u.user_id.clone(),
            mailbox: u.mailbox.clone(),
            status: u.status,
            status_label: messages::status_label(u.status),
            reason: u.reason.as_deref().map(|r| Reason::new(r, None)),
            linked_at: u.linked_at,
            last_sync_at: u.last_sync_at,
            last_error: u.last_error.clone(),
        }
    }
}

/// The answer of "verify" (確認する).
#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub ok: bool,
    /// `ok`, `invalid_secret`, `expired_secret`, `app_not_in_tenant`, `tenant_not_found`,
    /// `permission_not_granted`, `token_endpoint_error`.
    pub outcome: String,
    pub problems: Vec<Reason>,
    pub warnings: Vec<Reason>,
    /// The application permissions the token carries.
    pub roles: Vec<String>,
    /// The tenant GUID the token was issued in (the `tid` claim; a domain tenant ID resolved).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_guid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aadsts: Option<u64>,
    pub checked_at: Timestamp,
}

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

/// What removing copies from a mailbox did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CleanupReport {
    /// Schedules with a copy (or a create in progress) recorded in the mailbox.
    pub copies: usize,
    pub deleted: usize,
    /// Already deleted in Outlook (404), or a create that never happened.
    pub already_gone: usize,
    pub failed: Vec<CleanupFailure>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CleanupFailure {
    pub schedule_id: String,
    pub error: String,
}

impl CleanupReport {
    fn add(&mut self, o: &CleanupReport) {
        self.copies += o.copies;
        self.deleted += o.deleted;
        self.already_gone += o.already_gone;
        self.failed.extend(o.failed.iter().cloned());
    }
}

/// What an unlink did.
#[derive(Debug, Clone, Serialize)]
pub struct UnlinkReport {
    pub user_id: String,
    pub mailbox: String,
    pub copies: Option<CleanupReport>,
}

/// What removing a company's integration did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RemovalReport {
    pub users_unlinked: usize,
    pub mailboxes: usize,
    pub copies: CleanupReport,
}

/// Progress of a long operation: `done` of `total` units (rows, copies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    pub done: usize,
    pub total: usize,
}

/// Receives progress; the CLI prints it, a job stores it.
pub type ProgressFn = Arc<dyn Fn(Progress) + Send + Sync>;

pub fn no_progress() -> ProgressFn {
    Arc::new(|_| {})
}

/// The result of checking one address against the company's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxCheck {
    /// The user exists in the tenant and the mailbox answers.
    Reachable,
    /// Why not (a reason code) and Graph's words.
    Problem { code: &'static str, detail: String },
}

/// New credentials as entered.
#[derive(Debug, Clone)]
pub struct NewCredentials {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub secret_expires_at: Option<Timestamp>,
}

// ---- the service ------------------------------------------------------------------------------

/// Everything the admin operations need; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    pub(crate) cfg: Arc<Config>,
    pub(crate) directory: Directory,
    pub(crate) copies: Copies,
    leases: MailboxLeases,
    pub(crate) graph: GraphClient,
    pub(crate) redis: ConnectionManager,
    pub(crate) metrics: Arc<Metrics>,
}

impl Admin {
    pub fn new(
        cfg: Arc<Config>,
        redis: ConnectionManager,
        graph: GraphClient,
        metrics: Arc<Metrics>,
    ) -> Admin {
        let keys = crate::store::keys(&cfg);
        Admin {
            directory: Directory::from_config(redis.clone(), &cfg),
            copies: Copies::new(redis.clone(), keys.clone()),
            leases: MailboxLeases::new(
                redis.clone(),
                keys,
                Duration::from_secs(cfg.graph.mailbox_lease_seconds),
                cfg.mailbox_budget(),
            ),
            graph,
            redis,
            metrics,
            cfg,
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub(crate) async fn load(&self, company: &str) -> Result<Company, AdminError> {
        self.directory
            .company(company)
            .await?
            .ok_or_else(|| AdminError::UnknownCompany(company.to_string()))
    }

    fn creds_of(company: &Company) -> Result<Credentials, AdminError> {
        match (&company.credentials, &company.credentials_error) {
            (Some(c), _) => Ok(c.credentials()),
            (None, Some(e)) => Err(AdminError::conflict(
                "credentials_unreadable",
                format!("the stored credentials cannot be used: {e}"),
            )),
            (None, None) => Err(AdminError::conflict(
                "no_credentials",
                format!(
                    "company {:?} has no Microsoft 365 credentials: set them first",
                    company.id
                ),
            )),
        }
    }

    // ---- companies ----

    /// The company's integration status.
    pub async fn company_status(&self, company: &str) -> Result<CompanyStatus, AdminError> {
        let c = self.load(company).await?;
        let users = self.directory.users(company).await?.len();
        Ok(self.status_of(&c, users))
    }

    fn status_of(&self, c: &Company, users: usize) -> CompanyStatus {
        let now = Timestamp::now();
        let warn_days = i64::from(self.cfg.admin.secret_expiry_warning_days);
        let mut warnings = Vec::new();
        let credentials = c.credentials.as_ref().map(|sc| {
            let days = sc.secret_expires_at.map(|e| days_until(now, e));
            CredentialsStatus {
                tenant_id: sc.tenant_id.clone(),
                client_id: sc.client_id.clone(),
                secret_set: !sc.client_secret.expose().is_empty(),
                secret_fingerprint: sc.client_secret.fingerprint(),
                secret_expires_at: sc.secret_expires_at,
                secret_expires_in_days: days,
                key_id: sc.key_id.clone(),
                set_at: sc.set_at,
            }
        });
        let days = credentials.as_ref().and_then(|c| c.secret_expires_in_days);
        let secret_expiring = days.is_some_and(|d| d <= warn_days);
        match days {
            Some(d) if d < 0 => warnings.push(Reason::new("secret_expired", None)),
            Some(d) if d <= warn_days => warnings.push(Reason::new(
                "secret_expiring",
                Some(format!("{d} day(s) left")),
            )),
            _ => {}
        }
        if let Some(v) = &c.verification {
            for p in &v.missing_optional_permissions {
                warnings.push(Reason::new("permission_recommended", Some(p.clone())));
            }
        }
        let allowed = c.sync_allowed();
        CompanyStatus {
            company: c.id.clone(),
            plan: c.plan,
            options: c.options.clone(),
            enabled: c.enabled,
            syncing: allowed.is_ok(),
            not_syncing: allowed.err().map(|w| Reason::new(w.code(), None)),
            credentials,
            credentials_error: c.credentials_error.clone(),
            consent: c.consent.clone(),
            verification: c.verification.clone(),
            secret_expiring,
            warnings,
            users,
        }
    }

    /// Creates the company or changes its plan and options (what cyzen's billing says).
    pub async fn put_company(
        &self,
        company: &str,
        plan: Plan,
        options: Vec<String>,
    ) -> Result<CompanyStatus, AdminError> {
        check_id("company", company)?;
        let mut c = self
            .directory
            .company(company)
            .await?
            .unwrap_or_else(|| Company::new(company, plan));
        c.plan = plan;
        c.options = options;
        self.directory.put_company(&c).await?;
        tracing::info!(company, plan = ?plan, options = ?c.options, "admin: company plan set");
        self.company_status(company).await
    }

    /// Turns the integration on, if the plan allows it (else 409 with the plan's reason).
    pub async fn enable(&self, company: &str) -> Result<CompanyStatus, AdminError> {
        let mut c = self.load(company).await?;
        if let Err(why) = c.plan.allows(&c.options) {
            return Err(AdminError::conflict(
                why.code(),
                messages::reason(why.code()).en,
            ));
        }
        c.enabled = true;
        self.directory.put_company(&c).await?;
        tracing::info!(company, "admin: integration enabled");
        self.company_status(company).await
    }

    pub async fn disable(&self, company: &str) -> Result<CompanyStatus, AdminError> {
        let mut c = self.load(company).await?;
        c.enabled = false;
        self.directory.put_company(&c).await?;
        tracing::info!(company, "admin: integration disabled");
        self.company_status(company).await
    }

    // ---- credentials ----

    /// Sets or replaces the credentials (the secret is sealed before it is stored). New tenant
    /// or client ids reset the recorded consent and verification.
    pub async fn set_credentials(
        &self,
        company: &str,
        new: NewCredentials,
    ) -> Result<CompanyStatus, AdminError> {
        let mut c = self.load(company).await?;
        check_tenant(&new.tenant_id)?;
        check_client_id(&new.client_id)?;
        if new.client_secret.expose().trim().is_empty() {
            return Err(AdminError::invalid(
                "invalid_secret",
                "client_secret must not be empty",
            ));
        }
        let same_app = c.credentials.as_ref().is_some_and(|o| {
            o.tenant_id.eq_ignore_ascii_case(&new.tenant_id)
                && o.client_id.eq_ignore_ascii_case(&new.client_id)
        });
        if !same_app {
            c.consent = None;
        }
        c.verification = None;
        c.credentials = Some(StoredCredentials::new(
            new.tenant_id.trim(),
            new.client_id.trim(),
            new.client_secret,
            new.secret_expires_at,
        ));
        c.credentials_error = None;
        self.directory.put_company(&c).await?;
        self.graph.forget_token(company);
        tracing::info!(
            company,
            tenant = %new.tenant_id,
            client_id = %new.client_id,
            secret = %c.credentials.as_ref().map(|s| s.client_secret.fingerprint()).unwrap_or_default(),
            "admin: credentials set"
        );
        self.refresh_secret_expiry_metrics().await?;
        self.company_status(company).await
    }

    /// Forgets the credentials (sync stops; copies stay where they are).
    pub async fn remove_credentials(&self, company: &str) -> Result<CompanyStatus, AdminError> {
        let mut c = self.load(company).await?;
        c.credentials = None;
        c.credentials_error = None;
        c.consent = None;
        c.verification = None;
        self.directory.put_company(&c).await?;
        self.graph.forget_token(company);
        tracing::info!(company, "admin: credentials removed");
        self.refresh_secret_expiry_metrics().await?;
        self.company_status(company).await
    }

    /// Obtains a fresh token with the company's credentials and reports exactly what is wrong,
    /// or that all is well; records the outcome on the company.
    pub async fn verify_credentials(&self, company: &str) -> Result<Verification, AdminError> {
        let mut c = self.load(company).await?;
        let creds = Self::creds_of(&c)?;
        let v = self.verify(&creds).await?;
        c.verification = Some(VerificationRecord {
            at: v.checked_at,
            outcome: v.outcome.clone(),
            missing_permissions: v
                .problems
                .iter()
                .filter(|p| p.code == "permission_not_granted")
                .filter_map(|p| p.detail.clone())
                .collect(),
            missing_optional_permissions: v
                .warnings
                .iter()
                .filter(|p| p.code == "permission_recommended")
                .filter_map(|p| p.detail.clone())
                .collect(),
            tenant_guid: v.tenant_guid.clone(),
        });
        self.directory.put_company(&c).await?;
        tracing::info!(company, outcome = %v.outcome, "admin: credentials verified");
        Ok(v)
    }

    async fn verify(&self, creds: &Credentials) -> Result<Verification, AdminError> {
        let checked_at = Timestamp::now();
        let token = (|| self.graph.fresh_token(creds))
            .retry(self.backoff())
            .when(GraphError::is_retryable)
            .adjust(|e, d| self.retry_after_or(e, d))
            .notify(|e, wait| self.waiting("token", e, wait))
            .await;
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                if e.is_retryable() {
                    return Err(unavailable(&e));
                }
                let code = match &e.class {
                    ErrorClass::Credentials(TokenProblem::InvalidSecret) => "invalid_secret",
                    ErrorClass::Credentials(TokenProblem::ExpiredSecret) => "expired_secret",
                    ErrorClass::Credentials(TokenProblem::AppNotInTenant) => "app_not_in_tenant",
                    ErrorClass::Credentials(TokenProblem::TenantNotFound) => "tenant_not_found",
                    _ => "token_endpoint_error",
                };
                return Ok(Verification {
                    ok: false,
                    outcome: code.into(),
                    problems: vec![Reason::new(code, Some(e.to_string()))],
                    warnings: Vec::new(),
                    roles: Vec::new(),
                    tenant_guid: None,
                    aadsts: e.aadsts,
                    checked_at,
                });
            }
        };
        let problems: Vec<Reason> = REQUIRED_PERMISSIONS
            .iter()
            .filter(|p| !token.has_role(p))
            .map(|p| Reason::new("permission_not_granted", Some((*p).to_string())))
            .collect();
        let warnings: Vec<Reason> = RECOMMENDED_PERMISSIONS
            .iter()
            .filter(|p| !token.has_role(p))
            .map(|p| Reason::new("permission_recommended", Some((*p).to_string())))
            .collect();
        let ok = problems.is_empty();
        Ok(Verification {
            ok,
            outcome: if ok { "ok" } else { "permission_not_granted" }.into(),
            problems,
            warnings,
            roles: token.roles.clone(),
            tenant_guid: token.tenant_id.clone(),
            aadsts: None,
            checked_at,
        })
    }

    /// The retry schedule of one admin request to Microsoft: exponential with jitter from
    /// `retry.initial_backoff_ms` to `retry.max_backoff_ms`, [`GRAPH_ATTEMPTS`] attempts in all.
    pub(crate) fn backoff(&self) -> backon::ExponentialBuilder {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.cfg.retry.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.cfg.retry.max_backoff_ms))
            .with_jitter()
            .with_max_times(GRAPH_ATTEMPTS as usize - 1)
    }

    /// The wait before the next attempt: Graph's `Retry-After` when it gave one (capped by
    /// `retry.max_retry_after_seconds`), else the backoff's step; `None` (no more attempts)
    /// stays `None`.
    pub(crate) fn retry_after_or(
        &self,
        e: &GraphError,
        step: Option<Duration>,
    ) -> Option<Duration> {
        let cap = Duration::from_secs(self.cfg.retry.max_retry_after_seconds);
        step.map(|d| e.wait_hint().map(|h| h.min(cap)).unwrap_or(d))
    }

    /// Logs and counts a wait before retrying.
    pub(crate) fn waiting(&self, what: &str, e: &GraphError, wait: Duration) {
        tracing::debug!(what, wait_ms = wait.as_millis() as u64, code = %e.code, "admin: Microsoft busy; waiting");
        self.metrics
            .retry_after_wait_seconds
            .inc_by(wait.as_secs_f64());
    }

    // ---- the secret expiry warning ----

    /// Sets `outlook_sync_secret_expiry_timestamp_seconds{company}` for every company with a
    /// recorded expiry and `outlook_sync_companies_secret_expiring`, and starts every company's
    /// per-company counters at 0. Returns the expiring companies.
    pub async fn refresh_secret_expiry_metrics(&self) -> Result<Vec<String>, AdminError> {
        let now = Timestamp::now();
        let warn = i64::from(self.cfg.admin.secret_expiry_warning_days);
        let mut expiring = Vec::new();
        for id in self.directory.company_ids().await? {
            self.metrics.company_loaded(&id);
            let labels = Metrics::label("company", id.clone());
            let expiry = self
                .directory
                .company(&id)
                .await?
                .and_then(|c| c.credentials)
                .and_then(|c| c.secret_expires_at);
            match expiry {
                Some(e) => {
                    let days = days_until(now, e);
                    self.metrics
                        .secret_expiry_timestamp_seconds
                        .get_or_create(&labels)
                        .set(e.as_second());
                    if days <= warn {
                        expiring.push(id);
                    }
                }
                None => {
                    self.metrics.secret_expiry_timestamp_seconds.remove(&labels);
                }
            }
        }
        self.metrics
            .companies_secret_expiring
            .set(expiring.len() as i64);
        Ok(expiring)
    }

    // ---- users ----

    pub async fn list_users(&self, company: &str) -> Result<Vec<UserView>, AdminError> {
        self.load(company).await?;
        let mut users: Vec<LinkedUser> =
            self.directory.users(company).await?.into_values().collect();
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(users.iter().map(UserView::from).collect())
    }

    pub async fn user(&self, company: &str, user: &str) -> Result<UserView, AdminError> {
        self.load(company).await?;
        self.directory
            .user(company, user)
            .await?
            .map(|u| UserView::from(&u))
            .ok_or_else(|| AdminError::NotLinked {
                company: company.into(),
                user: user.into(),
            })
    }

    /// Links a cyzen user to a mailbox, checked through Graph with the company's credentials:
    /// the user is stored `authenticated`, or `auth_failed` with the reason.
    pub async fn link_user(
        &self,
        company: &str,
        user: &str,
        mailbox: &str,
    ) -> Result<UserView, AdminError> {
        check_id("user", user)?;
        let mailbox = mailbox.trim();
        match address_problem(mailbox) {
            Some("non_ascii_address") => {
                return Err(AdminError::invalid(
                    "non_ascii_address",
                    format!(
                        "{mailbox:?} has characters outside ASCII (full-width letters, for example): \
                         type the user's Microsoft sign-in name (UPN) in half-width characters"
                    ),
                ));
            }
            Some(code) => {
                return Err(AdminError::invalid(
                    code,
                    format!("{mailbox:?} is not a well-formed email address"),
                ));
            }
            None => {}
        }
        let c = self.load(company).await?;
        let creds = Self::creds_of(&c)?;
        let users = self.directory.users(company).await?;
        if let Some(other) = users
            .values()
            .find(|u| u.user_id != user && u.mailbox_key() == mailbox_key(mailbox))
        {
            return Err(AdminError::conflict(
                "address_in_use",
                format!("{mailbox} is linked to user {:?}", other.user_id),
            ));
        }
        let check = self.check_mailbox(company, &creds, mailbox).await?;
        let previous = users.get(user);
        let same = previous.is_some_and(|p| p.mailbox_key() == mailbox_key(mailbox));
        let linked = linked_user(user, mailbox, &check, previous.filter(|_| same));
        self.directory.put_user(company, &linked).await?;
        tracing::info!(company, user, status = ?linked.status, reason = linked.reason.as_deref().unwrap_or("-"), "admin: user linked");
        Ok(UserView::from(&linked))
    }

    /// Checks a linked user's mailbox again and records the outcome.
    pub async fn verify_user(&self, company: &str, user: &str) -> Result<UserView, AdminError> {
        let c = self.load(company).await?;
        let creds = Self::creds_of(&c)?;
        let u = self
            .directory
            .user(company, user)
            .await?
            .ok_or_else(|| AdminError::NotLinked {
                company: company.into(),
                user: user.into(),
            })?;
        let check = self.check_mailbox(company, &creds, &u.mailbox).await?;
        let linked = linked_user(user, &u.mailbox, &check, Some(&u));
        self.directory.put_user(company, &linked).await?;
        tracing::info!(company, user, status = ?linked.status, "admin: user verified");
        Ok(UserView::from(&linked))
    }

    /// `GET /users/{address}` (the user is in this tenant), then `GET /users/{address}/calendar`
    /// (the mailbox is reachable with the permission writes use). Throttled answers are retried
    /// after `Retry-After`; after that, `Unavailable`.
    pub async fn check_mailbox(
        &self,
        company: &str,
        creds: &Credentials,
        address: &str,
    ) -> Result<MailboxCheck, AdminError> {
        let seg = path_segment(address);
        let steps = [
            GraphRequest::get(
                "user",
                format!("/users/{seg}?$select=id,userPrincipalName,mail"),
            ),
            GraphRequest::get("calendar", format!("/users/{seg}/calendar?$select=id")),
        ];
        for req in &steps {
            match self.send_retrying(company, creds, req).await {
                Ok(_) => {}
                Err(e) if e.is_retryable() => return Err(unavailable(&e)),
                Err(e) => {
                    let code = match &e.class {
                        ErrorClass::Mailbox(p) => p.code(),
                        ErrorClass::Credentials(_) | ErrorClass::RefreshToken => {
                            "credentials_invalid"
                        }
                        // A 404 on the calendar of a user that exists.
                        ErrorClass::ItemGone => "no_mailbox",
                        _ => "graph_rejected",
                    };
                    return Ok(MailboxCheck::Problem {
                        code,
                        detail: e.to_string(),
                    });
                }
            }
        }
        Ok(MailboxCheck::Reachable)
    }

    async fn send_retrying(
        &self,
        company: &str,
        creds: &Credentials,
        req: &GraphRequest,
    ) -> Result<crate::graph::client::GraphResponse, GraphError> {
        (|| self.graph.send(company, creds, req))
            .retry(self.backoff())
            .when(GraphError::is_retryable)
            .adjust(|e, d| self.retry_after_or(e, d))
            .notify(|e, wait| self.waiting(company, e, wait))
            .await
    }

    /// Unlinks a user; with `delete_copies`, first deletes every copy this service created in
    /// their mailbox (and forgets them). Without it, the copies stay in Outlook.
    pub async fn unlink_user(
        &self,
        company: &str,
        user: &str,
        delete_copies: bool,
        progress: ProgressFn,
    ) -> Result<UnlinkReport, AdminError> {
        let c = self.load(company).await?;
        let u = self
            .directory
            .user(company, user)
            .await?
            .ok_or_else(|| AdminError::NotLinked {
                company: company.into(),
                user: user.into(),
            })?;
        let creds = if delete_copies {
            Some(Self::creds_of(&c)?)
        } else {
            None
        };
        // First out of the directory, so no new flush plans copies for this user.
        self.directory.remove_user(company, user).await?;
        let copies = match creds {
            Some(creds) => Some(
                self.delete_copies(company, &creds, &u.mailbox, progress)
                    .await?,
            ),
            None => None,
        };
        tracing::info!(
            company,
            user,
            delete_copies,
            deleted = copies.as_ref().map(|c| c.deleted).unwrap_or(0),
            "admin: user unlinked"
        );
        Ok(UnlinkReport {
            user_id: user.into(),
            mailbox: u.mailbox,
            copies,
        })
    }

    /// Removes the company's integration: deletes the copies this service created in every
    /// mailbox it wrote to (linked users and users unlinked earlier), unlinks every user, and
    /// forgets the credentials and consent; the integration is turned off.
    pub async fn remove_integration(
        &self,
        company: &str,
        delete_copies: bool,
        progress: ProgressFn,
    ) -> Result<RemovalReport, AdminError> {
        let mut c = self.load(company).await?;
        let creds = if delete_copies {
            Some(Self::creds_of(&c)?)
        } else {
            None
        };
        c.enabled = false;
        self.directory.put_company(&c).await?;
        let users = self.directory.users(company).await?;
        let mut report = RemovalReport::default();
        for u in users.keys() {
            self.directory.remove_user(company, u).await?;
            report.users_unlinked += 1;
        }
        if let Some(creds) = creds {
            let mailboxes = self.copies.mailboxes_with_copies(company).await?;
            report.mailboxes = mailboxes.len();
            let mut totals = Vec::with_capacity(mailboxes.len());
            for m in &mailboxes {
                totals.push(self.copies.schedules_in_mailbox(company, m).await?.len());
            }
            let total: usize = totals.iter().sum();
            let mut done = 0;
            for (m, n) in mailboxes.iter().zip(totals) {
                let base = done;
                let p = progress.clone();
                let inner: ProgressFn = Arc::new(move |q: Progress| {
                    p(Progress {
                        done: base + q.done,
                        total,
                    })
                });
                let r = self.delete_copies(company, &creds, m, inner).await?;
                report.copies.add(&r);
                done += n;
            }
        }
        c.credentials = None;
        c.credentials_error = None;
        c.consent = None;
        c.verification = None;
        self.directory.put_company(&c).await?;
        self.graph.forget_token(company);
        self.refresh_secret_expiry_metrics().await?;
        tracing::info!(
            company,
            users = report.users_unlinked,
            deleted = report.copies.deleted,
            "admin: integration removed"
        );
        Ok(report)
    }

    /// Deletes exactly the copies this service created in one mailbox: the events the mapping
    /// names, and for creates whose answer was never recorded, the events found by their tag.
    /// Runs under the mailbox's lease (so it never overlaps a worker's writes there), in
    /// `$batch`es of 20, honouring `Retry-After`. A 404 means already gone. Mapping entries are
    /// removed for what is gone; failures keep theirs.
    pub async fn delete_copies(
        &self,
        company: &str,
        creds: &Credentials,
        mailbox: &str,
        progress: ProgressFn,
    ) -> Result<CleanupReport, AdminError> {
        super::cleanup::delete_copies(
            self,
            &self.leases,
            LEASE_WAIT,
            company,
            creds,
            mailbox,
            progress,
        )
        .await
    }
}

fn unavailable(e: &GraphError) -> AdminError {
    AdminError::Unavailable {
        message: e.to_string(),
        retry_after: e.wait_hint(),
    }
}

/// The user record after a check; keeps `linked_at` and the sync history of an unchanged link.
fn linked_user(
    user: &str,
    mailbox: &str,
    check: &MailboxCheck,
    previous: Option<&LinkedUser>,
) -> LinkedUser {
    let (status, reason, last_error) = match check {
        MailboxCheck::Reachable => (UserStatus::Authenticated, None, None),
        MailboxCheck::Problem { code, detail } => (
            UserStatus::AuthFailed,
            Some(code.to_string()),
            Some(detail.clone()),
        ),
    };
    LinkedUser {
        user_id: user.to_string(),
        mailbox: mailbox.to_string(),
        linked_at: previous.map(|p| p.linked_at).unwrap_or_else(Timestamp::now),
        status,
        reason,
        last_sync_at: previous.and_then(|p| p.last_sync_at),
        last_error: last_error.or_else(|| previous.and_then(|p| p.last_error.clone())),
    }
}

/// Whole days from `now` until `at` (negative when past).
pub fn days_until(now: Timestamp, at: Timestamp) -> i64 {
    let secs = at.as_second() - now.as_second();
    secs.div_euclid(86_400)
}

/// An id as the event contract allows (`A-Z a-z 0-9 . _ : -`, 1..=64).
pub(crate) fn check_id(what: &'static str, id: &str) -> Result<(), AdminError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(AdminError::invalid(
            if what == "user" {
                "invalid_user_id"
            } else {
                "invalid_company_id"
            },
            format!("{what} id {id:?} must be 1 to 64 of A-Z a-z 0-9 . _ : -"),
        ))
    }
}

pub(crate) fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// A tenant ID as Microsoft's endpoints take it: the directory (tenant) GUID, or a DNS domain
/// name of the tenant (`contoso.onmicrosoft.com`). Anything else (`..`, `.`, `common`, a path)
/// is refused, naming the field: it would vanish from, or change, the token and consent URLs.
fn check_tenant(t: &str) -> Result<(), AdminError> {
    let t = t.trim();
    if is_guid(t) || is_dns_domain(t) {
        Ok(())
    } else {
        Err(AdminError::invalid(
            "invalid_tenant_id",
            format!(
                "tenant_id {t:?} must be the directory (tenant) ID, a GUID such as \
                 72f988bf-86f1-41af-91ab-2d7cd011db47, or the tenant's domain name such as \
                 contoso.onmicrosoft.com"
            ),
        ))
    }
}

/// A GUID in its usual form, `8-4-4-4-12` hex digits.
pub(crate) fn is_guid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// A DNS domain name: at least two labels of 1 to 63 letters, digits and inner hyphens, at most
/// 253 characters, and a top-level label that is not all digits (so not an IP address).
pub(crate) fn is_dns_domain(s: &str) -> bool {
    let labels: Vec<&str> = s.split('.').collect();
    let label_ok = |l: &&str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    s.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(label_ok)
        && labels
            .last()
            .is_some_and(|tld| tld.bytes().any(|b| b.is_ascii_alphabetic()))
}

fn check_client_id(c: &str) -> Result<(), AdminError> {
    let c = c.trim();
    let ok = !c.is_empty()
        && c.len() <= 100
        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(AdminError::invalid(
            "invalid_client_id",
            "client_id must be the application (client) ID, a GUID",
        ))
    }
}

/// Why an address cannot be linked: `malformed_address`, or `non_ascii_address` (Graph names a
/// mailbox by its user principal name, which Microsoft Entra limits to ASCII; a full-width
/// `ｔａｒｏ` typed in Japan is not `taro`, and two spellings must never become two mailboxes).
pub fn address_problem(a: &str) -> Option<&'static str> {
    if !is_well_formed_address(a) {
        Some("malformed_address")
    } else if !a.is_ascii() {
        Some("non_ascii_address")
    } else {
        None
    }
}

/// A plausible mailbox address: `local@domain.tld`, no spaces or separators, ≤ 254 characters.
pub fn is_well_formed_address(a: &str) -> bool {
    if a.len() > 254 || a.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    if a.contains([',', ';', '<', '>', '"', '/', '\\', ':', '(', ')', '[', ']']) {
        return false;
    }
    let Some((local, domain)) = a.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked_for_shape_only() {
        for ok in [
            "taro@acme.onmicrosoft.com",
            "o'neil@x.co.jp",
            "a_b.c#EXT#@t.onmicrosoft.com",
            "Taro.Yamada+cal@Example.COM",
        ] {
            assert!(is_well_formed_address(ok), "{ok}");
        }
        for bad in [
            "",
            "taro",
            "taro@",
            "@acme.com",
            "taro@acme",
            "taro@@acme.com",
            "taro @acme.com",
            "taro@acme..com",
            "taro@acme.com.",
            "a,b@acme.com",
            "taro@acme.com/x",
        ] {
            assert!(!is_well_formed_address(bad), "{bad}");
        }
    }

    #[test]
    fn an_address_outside_ascii_is_refused_with_its_own_reason() {
        assert_eq!(address_problem("taro@acme.com"), None);
        assert_eq!(
            address_problem("ｔａｒｏ@acme.com"),
            Some("non_ascii_address")
        );
        assert_eq!(address_problem("tarö@acme.com"), Some("non_ascii_address"));
        assert_eq!(address_problem("taro＠acme.com"), Some("malformed_address"));
    }

    #[test]
    fn a_tenant_id_is_a_guid_or_a_domain_name_and_nothing_else() {
        for ok in [
            "72f988bf-86f1-41af-91ab-2d7cd011db47",
            "contoso.onmicrosoft.com",
            "Acme.co.jp",
            "xn--eckwd4c7c.jp",
        ] {
            assert!(check_tenant(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "common",
            "organizations",
            "a..b.com",
            ".acme.com",
            "acme.com.",
            "-acme.com",
            "acme-.com",
            "10.0.0.1",
            "acme.com/x",
            "acme.com?x=1",
            "72f988bf86f141af91ab2d7cd011db47",
            "{72f988bf-86f1-41af-91ab-2d7cd011db47}",
        ] {
            match check_tenant(bad) {
                Err(AdminError::Invalid { code, message }) => {
                    assert_eq!(code, "invalid_tenant_id", "{bad}");
                    assert!(message.starts_with("tenant_id "), "{message}");
                }
                other => panic!("{bad:?} was accepted: {other:?}"),
            }
        }
    }

    #[test]
    fn days_until_rounds_down_and_is_negative_when_past() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(days_until(now, at("2026-01-31T00:00:00Z")), 30);
        assert_eq!(days_until(now, at("2026-01-30T23:00:00Z")), 29);
        assert_eq!(days_until(now, at("2025-12-31T23:00:00Z")), -1);
    }

    #[test]
    fn an_unchanged_link_keeps_its_history() {
        let prev = LinkedUser {
            user_id: "u".into(),
            mailbox: "a@b.com".into(),
            linked_at: "2026-01-01T00:00:00Z".parse().unwrap(),
            status: UserStatus::AuthFailed,
            reason: Some("no_mailbox".into()),
            last_sync_at: Some("2026-01-02T00:00:00Z".parse().unwrap()),
            last_error: Some("old".into()),
        };
        let u = linked_user("u", "a@b.com", &MailboxCheck::Reachable, Some(&prev));
        assert_eq!(u.status, UserStatus::Authenticated);
        assert_eq!(u.reason, None);
        assert_eq!(u.linked_at, prev.linked_at);
        assert_eq!(u.last_sync_at, prev.last_sync_at);
        let fresh = linked_user(
            "u",
            "a@b.com",
            &MailboxCheck::Problem {
                code: "unknown_user",
                detail: "Graph 404".into(),
            },
            None,
        );
        assert_eq!(fresh.status, UserStatus::AuthFailed);
        assert_eq!(fresh.reason.as_deref(), Some("unknown_user"));
    }
}
