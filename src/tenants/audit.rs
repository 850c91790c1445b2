//! The admin audit: every admin write, with its time, the name of the admin token that made it,
//! the company, the action and a summary that never holds a secret (`GET
//! /v1/companies/{company}/audit`).

use jiff::Timestamp;
use serde::Serialize;

use super::db::{self, sql};
use super::{Directory, DirectoryError};

/// One recorded admin write.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at: Timestamp,
    /// The name of the admin token (`admin.tokens`) that made the change.
    pub token: String,
    pub action: String,
    pub summary: String,
}

/// Writes and lists the audit.
pub trait AuditLog {
    /// Records an admin write.
    fn record_audit(
        &self,
        token: &str,
        company: &str,
        action: &str,
        summary: &str,
    ) -> impl Future<Output = Result<(), DirectoryError>> + Send;

    /// A company's newest `limit` entries, newest first.
    fn audit(
        &self,
        company: &str,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<AuditEntry>, DirectoryError>> + Send;
}

impl AuditLog for Directory {
    async fn record_audit(
        &self,
        token: &str,
        company: &str,
        action: &str,
        summary: &str,
    ) -> Result<(), DirectoryError> {
        let db = self.db();
        Ok(db
            .timed(async {
                let c = db.client().await?;
                c.execute(sql::AUDIT_ADD, &[&token, &company, &action, &summary])
                    .await?;
                Ok(())
            })
            .await?)
    }

    async fn audit(&self, company: &str, limit: i64) -> Result<Vec<AuditEntry>, DirectoryError> {
        let db = self.db();
        let rows = db
            .timed(async {
                let c = db.client().await?;
                Ok(c.query(sql::AUDIT_LIST, &[&company, &limit]).await?)
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get(0),
                at: db::from_epoch(r.get(1)).unwrap_or(Timestamp::UNIX_EPOCH),
                token: r.get(2),
                action: r.get(3),
                summary: r.get(4),
            })
            .collect())
    }
}
