//! The sync ledger: per schedule, what happened to each change in each mailbox and why, kept for
//! a bounded time. It answers "why is this schedule not in Outlook?" in one command
//! (`outlook-sync ledger show COMPANY SCHEDULE`).
//!
//! Key: `{prefix}:ledger:{company}/{schedule}`, a list of JSON entries, newest first, trimmed to
//! `ledger.max_entries` and expiring `ledger.retention_days` after its last entry.

use std::time::Duration;

use jiff::Timestamp;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::window::Member;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Written to Outlook (or already there).
    Applied,
    /// Not synced by a product rule (plan, link, participant); not an error.
    Skipped,
    /// Graph refused for now; the change is retried.
    Retrying,
    /// Given up: a dead letter holds the change, with Graph's error.
    DeadLettered,
    /// Not attempted yet (the mailbox was busy); due again shortly.
    Deferred,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub at: Timestamp,
    pub revision: u64,
    /// The mailbox, `user {id}` for a participant without one, or `-` for the whole schedule.
    pub target: String,
    /// create, update, delete, lookup, or plan.
    pub op: String,
    pub outcome: Outcome,
    /// A stable code (`no_mailbox`, `participant_not_linked`, `retries_exhausted`, …).
    pub reason: String,
    /// The same in plain words.
    pub words: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default)]
    pub attempt: u32,
}

impl Entry {
    pub fn new(revision: u64, target: &str, op: &str, outcome: Outcome, reason: &str) -> Self {
        Self {
            at: Timestamp::now(),
            revision,
            target: target.to_string(),
            op: op.to_string(),
            outcome,
            reason: reason.to_string(),
            words: words(reason).to_string(),
            graph_status: None,
            graph_code: None,
            request_id: None,
            attempt: 0,
        }
    }
}

/// Plain words for every reason code the pipeline records.
pub fn words(reason: &str) -> &'static str {
    match reason {
        "created" => "the Outlook copy was created",
        "updated" => "the Outlook copy was updated",
        "deleted" => "the Outlook copy was deleted",
        "already_gone" => "the Outlook copy was already gone",
        "plan_excludes_integration" => {
            "the company's plan (Lite) does not include the Microsoft calendar integration"
        }
        "lite_plus_without_schedule_option" => {
            "Lite Plus includes the integration only with the schedule option"
        }
        "integration_disabled" => "the company's administrator has not turned the integration on",
        "no_credentials" => "the company has not entered its Microsoft app credentials",
        "unknown_company" => "the company is not set up for the integration",
        "participant_not_linked" => "this participant is not linked to a Microsoft mailbox",
        "change_before_link" => {
            "the change happened before the participant was linked; the next update syncs it"
        }
        "user_auth_failed" => {
            "the participant's mailbox failed verification (auth failed); re-verify the user"
        }
        "no_mailbox" => "the user has no Exchange Online mailbox (or no licence)",
        "unknown_user" => "the address is not a user of the company's Microsoft tenant",
        "policy_denied" => "an application access policy blocks the app from this mailbox",
        "access_denied" => {
            "access denied: admin consent or the Calendars.ReadWrite permission is missing"
        }
        "invalid_secret" => "the company's client secret is wrong",
        "expired_secret" => "the company's client secret has expired; create a new one in Entra",
        "app_not_in_tenant" => "the app is not registered (or consented) in the company's tenant",
        "tenant_not_found" => "the company's tenant id is wrong",
        "retries_exhausted" => {
            "Graph kept failing (throttling or outages) until the retry budget ran out"
        }
        "graph_rejected" => "Graph rejected the change as invalid",
        "throttled_or_unavailable" => "Graph throttled or was unavailable; retrying",
        "mailbox_busy" => "another worker was writing to this mailbox; retried shortly",
        _ => "see the reason code",
    }
}

#[derive(Clone)]
pub struct Ledger {
    redis: ConnectionManager,
    prefix: String,
    retention: Duration,
    max_entries: usize,
}

impl Ledger {
    pub fn new(
        redis: ConnectionManager,
        prefix: &str,
        retention: Duration,
        max_entries: usize,
    ) -> Self {
        Self {
            redis,
            prefix: prefix.to_string(),
            retention,
            max_entries,
        }
    }

    fn key(&self, company: &str, schedule: &str) -> String {
        format!("{}:ledger:{company}/{schedule}", self.prefix)
    }

    /// Appends entries (one round trip).
    pub async fn record(&self, entries: &[(Member, Entry)]) -> Result<(), redis::RedisError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        let mut keys = std::collections::BTreeSet::new();
        for (m, e) in entries {
            let key = self.key(&m.company_id, &m.schedule_id);
            pipe.lpush(&key, serde_json::to_string(e).expect("serializable"))
                .ignore();
            keys.insert(key);
        }
        for key in keys {
            pipe.ltrim(&key, 0, self.max_entries as isize - 1).ignore();
            pipe.expire(&key, self.retention.as_secs() as i64).ignore();
        }
        let mut r = self.redis.clone();
        pipe.query_async::<()>(&mut r).await
    }

    /// Every entry of a schedule, newest first.
    pub async fn show(
        &self,
        company: &str,
        schedule: &str,
    ) -> Result<Vec<Entry>, redis::RedisError> {
        let mut r = self.redis.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.key(company, schedule))
            .arg(0)
            .arg(-1)
            .query_async(&mut r)
            .await?;
        Ok(raw
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect())
    }
}
