//! A company's integration: its status as the admin screen shows it, its plan and options, the
//! on/off switch, and the secret-expiry warning (metrics for every company).

use jiff::Timestamp;
use serde::Serialize;

use super::input::check_id;
use super::messages::{self, Reason};
use super::service::{Admin, AdminError};
use crate::metrics::Metrics;
use crate::tenants::{Company, ConsentRecord, DriftPolicy, Plan, VerificationRecord};

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
    /// What the repair pass does with copies changed in Outlook.
    pub drift_policy: DriftPolicy,
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

impl Admin {
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
            drift_policy: c.drift,
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

    /// Sets what the repair pass does with the company's copies changed in Outlook.
    pub async fn set_drift_policy(
        &self,
        company: &str,
        policy: DriftPolicy,
    ) -> Result<CompanyStatus, AdminError> {
        let mut c = self.load(company).await?;
        c.drift = policy;
        self.directory.put_company(&c).await?;
        tracing::info!(company, policy = policy.as_str(), "admin: drift policy set");
        self.company_status(company).await
    }

    pub async fn disable(&self, company: &str) -> Result<CompanyStatus, AdminError> {
        let mut c = self.load(company).await?;
        c.enabled = false;
        self.directory.put_company(&c).await?;
        tracing::info!(company, "admin: integration disabled");
        self.company_status(company).await
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
}

/// Whole days from `now` until `at` (negative when past).
pub fn days_until(now: Timestamp, at: Timestamp) -> i64 {
    let secs = at.as_second() - now.as_second();
    secs.div_euclid(86_400)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_until_rounds_down_and_is_negative_when_past() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let at = |s: &str| s.parse::<Timestamp>().unwrap();
        assert_eq!(days_until(now, at("2026-01-31T00:00:00Z")), 30);
        assert_eq!(days_until(now, at("2026-01-30T23:00:00Z")), 29);
        assert_eq!(days_until(now, at("2025-12-31T23:00:00Z")), -1);
    }
}
