//! Removal: unlinking a user (with or without their copies) and removing a company's
//! integration, each deleting only the copies this service created (`cleanup`).

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::cleanup::{self, CleanupReport};
use super::service::{Admin, AdminError, Progress, ProgressFn};
use crate::graph::client::Credentials;

/// How long an unlink waits for a worker that is writing to the mailbox.
const LEASE_WAIT: Duration = Duration::from_secs(30);

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

impl Admin {
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
        cleanup::delete_copies(
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
