//! The admin operations, independent of HTTP, are methods of [`Admin`]: companies and their
//! plan (`companies`), credentials and their verification (`credentials`), consent (`consent`),
//! linked users (`users`), unlinking and removing the integration with a clean removal of the
//! copies (`removal`, over `cleanup`), bulk files (`bulk`). This module holds what they share:
//! the handles, [`AdminError`], progress, and the retry discipline of the admin's requests to
//! Microsoft. The HTTP API (`api`) and the command line (`outlook-sync admin`) are both thin
//! shells over [`Admin`].
//!
//! A company's credentials are only ever used for its own requests: every Graph call here goes
//! through `GraphClient::send`/`batch` with the company's id and credentials, addressed to the
//! mailbox being linked or cleaned for that company.

use std::sync::Arc;
use std::time::Duration;

use backon::Retryable;
use serde::Serialize;

use crate::config::Config;
use crate::crypto::CryptoError;
use crate::graph::client::{Credentials, GraphClient, GraphRequest, GraphResponse};
use crate::graph::error::GraphError;
use crate::metrics::Metrics;
use crate::store::{Copies, MailboxLeases};
use crate::tenants::{Company, Directory, DirectoryError};

/// Attempts for one Graph request of the admin (throttled or unavailable answers are retried
/// after `Retry-After`, else after the backoff, with backon).
const GRAPH_ATTEMPTS: u32 = 6;

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
    /// The directory's database is down, slow or refusing (503): nothing was changed.
    #[error(
        "the directory's database (PostgreSQL) is unavailable, so nothing was changed; try again in a minute, and tell the operators if it lasts ({0})"
    )]
    DirectoryUnavailable(DirectoryError),
    #[error("directory: {0}")]
    Directory(DirectoryError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
}

impl From<DirectoryError> for AdminError {
    fn from(e: DirectoryError) -> Self {
        match e {
            DirectoryError::Crypto(c @ CryptoError::NoKey) => AdminError::SecretsNotConfigured(c),
            other if other.is_unavailable() => AdminError::DirectoryUnavailable(other),
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
            AdminError::Unavailable { .. }
            | AdminError::SecretsNotConfigured(_)
            | AdminError::DirectoryUnavailable(_) => 503,
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
            AdminError::DirectoryUnavailable(_) => "directory_unavailable",
            AdminError::Directory(_) | AdminError::Redis(_) => "internal",
        }
    }

    pub(super) fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        AdminError::Invalid {
            code,
            message: message.into(),
        }
    }

    pub(super) fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        AdminError::Conflict {
            code,
            message: message.into(),
        }
    }
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

// ---- the service ------------------------------------------------------------------------------

/// Everything the admin operations need; cheap to clone.
#[derive(Clone)]
pub struct Admin {
    pub(crate) cfg: Arc<Config>,
    pub(crate) directory: Directory,
    pub(crate) copies: Copies,
    pub(super) leases: MailboxLeases,
    pub(crate) graph: GraphClient,
    pub(crate) redis: crate::store::Redis,
    pub(crate) metrics: Arc<Metrics>,
}

impl Admin {
    pub fn new(
        cfg: Arc<Config>,
        redis: crate::store::Redis,
        graph: GraphClient,
        metrics: Arc<Metrics>,
    ) -> Admin {
        let keys = crate::store::keys(&cfg);
        Admin {
            directory: Directory::from_config(&cfg),
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

    pub(super) fn creds_of(company: &Company) -> Result<Credentials, AdminError> {
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

    /// One request, retried while Graph throttles or is unavailable (as [`Admin::backoff`] says).
    pub(super) async fn send_retrying(
        &self,
        company: &str,
        creds: &Credentials,
        req: &GraphRequest,
    ) -> Result<GraphResponse, GraphError> {
        (|| self.graph.send(company, creds, req))
            .retry(self.backoff())
            .when(GraphError::is_retryable)
            .adjust(|e, d| self.retry_after_or(e, d))
            .notify(|e, wait| self.waiting(company, e, wait))
            .await
    }
}

/// A Graph failure that retrying did not cure, as the admin answers it (503).
pub(super) fn unavailable(e: &GraphError) -> AdminError {
    AdminError::Unavailable {
        message: e.to_string(),
        retry_after: e.wait_hint(),
    }
}
