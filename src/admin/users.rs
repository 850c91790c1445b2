//! Linked users: listing them, linking a cyzen user to a mailbox and checking it again, each
//! checked through Graph with the company's credentials (the user is in the tenant, the mailbox
//! answers).

use jiff::Timestamp;
use serde::Serialize;

use super::input::{address_problem, check_id};
use super::messages::{self, Reason, Text};
use super::service::{Admin, AdminError, unavailable};
use crate::graph::client::{Credentials, GraphRequest, path_segment};
use crate::graph::error::ErrorClass;
use crate::tenants::{LinkedUser, UserStatus, mailbox_key};

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

/// The result of checking one address against the company's tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxCheck {
    /// The user exists in the tenant and the mailbox answers.
    Reachable,
    /// Why not (a reason code) and Graph's words.
    Problem { code: &'static str, detail: String },
}

impl Admin {
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

#[cfg(test)]
mod tests {
    use super::*;

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
