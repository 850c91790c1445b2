//! A company's Microsoft 365 credentials: setting them (the secret sealed before it is stored),
//! forgetting them, and verifying them (a fresh token, and exactly what is wrong, or that all
//! is well).

use backon::Retryable;
use jiff::Timestamp;
use serde::Serialize;

use super::companies::CompanyStatus;
use super::input::{check_client_id, check_tenant};
use super::messages::Reason;
use super::service::{Admin, AdminError, unavailable};
use crate::graph::client::Credentials;
use crate::graph::error::{ErrorClass, GraphError, TokenProblem};
use crate::secret::Secret;
use crate::tenants::{StoredCredentials, VerificationRecord};

/// Application permissions the integration cannot work without.
pub const REQUIRED_PERMISSIONS: &[&str] = &["Calendars.ReadWrite", "User.Read.All"];
/// Permissions cyzen's setup guide lists too; missing is a warning.
pub const RECOMMENDED_PERMISSIONS: &[&str] = &["Contacts.Read"];

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

/// New credentials as entered.
#[derive(Debug, Clone)]
pub struct NewCredentials {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub secret_expires_at: Option<Timestamp>,
}

impl Admin {
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
}
