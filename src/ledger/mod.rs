//! The sync ledger: per schedule, what happened to each change in each mailbox and why, kept for
//! a bounded time. It answers "why is this schedule not in Outlook?" in one command
//! (`outlook-sync ledger show COMPANY SCHEDULE`, or `GET /ledger/{company}/{schedule}`), together
//! with the schedule's staged state and its copies ([`SyncView`]).
//!
//! Key: `ledger:{company}/{schedule}` (`store::keys`), a list of JSON entries, newest first, trimmed to
//! `ledger.max_entries` and expiring `ledger.retention_days` after its last entry.
//!
//! Replays: staging an operator's replay marks the schedule (`replay` in the window's
//! `s:{company}/{schedule}` hash, see `window`); the first entry that applies that revision
//! afterwards is marked `replay: true`, clears the mark and counts in `replays_succeeded`.

mod view;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Keys, Member};
use crate::window::Windows;

pub use view::{CopyView, LedgerError, ParticipantView, StagedView, SyncView, render, sync_view};

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

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Skipped => "skipped",
            Outcome::Retrying => "retrying",
            Outcome::DeadLettered => "dead_lettered",
            Outcome::Deferred => "deferred",
        }
    }
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
    /// This write applied an operator's replay of a dead letter.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replay: bool,
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
            replay: false,
        }
    }
}

/// Plain words for every reason code the pipeline records (ledger entries and dead letters).
pub fn words(reason: &str) -> &'static str {
    match reason {
        "created" => "the Outlook copy was created",
        "updated" => "the Outlook copy was updated",
        "deleted" => "the Outlook copy was deleted",
        "already_gone" => "the Outlook copy was already gone",
        // The repair pass (issue #19).
        "recreated_after_outlook_delete" => "deleted in Outlook, recreated",
        "restored_after_outlook_edit" => "edited in Outlook, restored",
        "drift_reported_deleted" => {
            "deleted in Outlook; not recreated (the company's drift policy is report)"
        }
        "drift_reported_edited" => {
            "edited in Outlook; not restored (the company's drift policy is report)"
        }
        "drift_unrestorable" => {
            "changed in Outlook, but the schedule's state has expired from Redis (past retention); not restored: the next change in cyzen rewrites it"
        }
        "plan_excludes_integration" => {
            "the company's plan (Lite) does not include the Microsoft calendar integration"
        }
        "lite_plus_without_schedule_option" => {
            "Lite Plus includes the integration only with the schedule option"
        }
        "integration_disabled" => "the company's administrator has not turned the integration on",
        "no_credentials" => "the company has not entered its Microsoft app credentials",
        "credentials_unreadable" => {
            "the company's stored client secret cannot be decrypted with the configured keys"
        }
        "secrets_keys_not_configured" => {
            "this command has no secrets keys configured (secrets.keys), so it cannot decrypt the company's credentials; run it with the workers' configuration"
        }
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
        "invalid_scope" => "the token endpoint refused the requested scope",
        "retries_exhausted" => {
            "Graph kept failing (errors or timeouts without Retry-After) until retry.max_attempts ran out"
        }
        "retry_time_exhausted" => {
            "Graph kept throttling or failing for longer than retry.give_up_after_seconds; the change was given up"
        }
        "graph_rejected" => "Graph rejected the change as invalid",
        "throttled_or_unavailable" => "Graph throttled or was unavailable; retrying",
        "mailbox_busy" => "another worker was writing to this mailbox; retried shortly",
        "dead_letter_publish_failed" => {
            "the dead letter could not be published to RabbitMQ; the change is retried"
        }
        // Dead letters of the contract (ingest).
        "too_large" => "the event is larger than the contract allows",
        "not_utf8" => "the event is not UTF-8 text",
        "malformed_json" => "the event is not valid JSON",
        "unknown_schema_version" => "the event's schema_version is not one this service reads",
        "missing_field" => "the event lacks a required field",
        "wrong_type" => "a field of the event has the wrong type (or the message is not JSON)",
        "too_long" => "a field of the event is longer than the contract allows",
        "invalid_value" => "a field of the event has a value the contract does not allow",
        "end_before_start" => "the schedule ends before it starts",
        "all_day_with_times" => "an all-day schedule carries times instead of dates",
        "timed_with_dates" => "a timed schedule carries dates instead of times",
        "unknown_time_zone" => "the schedule's time zone is not a known IANA zone",
        "span_too_long" => "the schedule spans longer than the contract allows",
        // Dead letters of the broker (x-death).
        "delivery_limit" => {
            "RabbitMQ gave up after too many redeliveries (x-delivery-limit): workers kept failing on it"
        }
        "rejected" => "a consumer rejected it without requeueing",
        "expired" => "it expired in the queue (message TTL)",
        "maxlen" => "the queue was full (max length)",
        _ => "see the reason code",
    }
}

#[derive(Clone)]
pub struct Ledger {
    redis: crate::store::Redis,
    keys: Keys,
    /// The staging, whose replay marks an applied entry clears.
    windows: Windows,
    retention: Duration,
    max_entries: usize,
    metrics: Option<Arc<Metrics>>,
}

impl Ledger {
    pub fn new(
        redis: crate::store::Redis,
        windows: Windows,
        retention: Duration,
        max_entries: usize,
    ) -> Self {
        Self {
            redis,
            keys: windows.keys().clone(),
            windows,
            retention,
            max_entries,
            metrics: None,
        }
    }

    /// The ledger with `ledger.retention_days` and `ledger.max_entries`.
    pub fn from_config(redis: crate::store::Redis, cfg: &Config) -> Self {
        let windows = Windows::new(redis.clone(), crate::store::keys(cfg), cfg.window());
        Self::new(
            redis,
            windows,
            Duration::from_secs(cfg.ledger.retention_days * 86_400),
            cfg.ledger.max_entries,
        )
    }

    /// Counts applied replays in `replays_succeeded`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Appends entries (one round trip; two when some entry applied a change, to recognise
    /// replays). Returns how many entries applied a replay.
    pub async fn record(&self, entries: &[(Member, Entry)]) -> Result<u64, redis::RedisError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let applied: Vec<&Member> = {
            let mut seen = HashSet::new();
            entries
                .iter()
                .filter(|(m, e)| e.outcome == Outcome::Applied && seen.insert(m))
                .map(|(m, _)| m)
                .collect()
        };
        let marks = self.windows.replay_marks(&applied).await?;
        let replayed: HashMap<&Member, u64> = applied
            .into_iter()
            .zip(marks)
            .filter_map(|(m, mark)| mark.map(|rev| (m, rev)))
            .collect();
        let mut pipe = redis::pipe();
        let mut keys = BTreeSet::new();
        let mut cleared = HashSet::new();
        let mut succeeded = 0u64;
        for (m, e) in entries {
            let key = self.keys.ledger(m);
            let mut e = e.clone();
            if e.outcome == Outcome::Applied && replayed.get(m) == Some(&e.revision) {
                e.replay = true;
                succeeded += 1;
                if cleared.insert(m) {
                    self.windows.clear_replay_mark(&mut pipe, m, e.revision);
                }
            }
            let json = serde_json::to_string(&e).expect("a ledger entry serializes");
            pipe.lpush(&key, json).ignore();
            keys.insert(key);
        }
        for key in keys {
            pipe.ltrim(&key, 0, self.max_entries as isize - 1).ignore();
            pipe.expire(&key, self.retention.as_secs() as i64).ignore();
        }
        let mut r = self.redis.clone();
        pipe.query_async::<()>(&mut r).await?;
        if succeeded > 0
            && let Some(m) = &self.metrics
        {
            m.replays_succeeded.inc_by(succeeded);
        }
        Ok(succeeded)
    }

    /// Every entry of a schedule, newest first.
    pub async fn show(&self, m: &Member) -> Result<Vec<Entry>, redis::RedisError> {
        let mut r = self.redis.clone();
        let raw: Vec<String> = redis::cmd("LRANGE")
            .arg(self.keys.ledger(m))
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

/// Which entries `ledger show` prints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntryFilter {
    /// Entries about this mailbox (case-insensitive) or user id only (whole-schedule entries,
    /// target `-`, are always kept).
    pub target: Option<String>,
    /// The newest this many.
    pub limit: Option<usize>,
}

impl EntryFilter {
    pub fn apply(&self, entries: Vec<Entry>) -> Vec<Entry> {
        let keep = |e: &Entry| {
            self.target.as_ref().is_none_or(|t| {
                e.target == "-"
                    || e.target.eq_ignore_ascii_case(t)
                    || e.target == format!("user {t}")
            })
        };
        entries
            .into_iter()
            .filter(keep)
            .take(self.limit.unwrap_or(usize::MAX))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_the_pipeline_records_has_words() {
        for code in [
            "created",
            "updated",
            "deleted",
            "already_gone",
            "participant_not_linked",
            "change_before_link",
            "user_auth_failed",
            "no_mailbox",
            "policy_denied",
            "retries_exhausted",
            "graph_rejected",
            "mailbox_busy",
            "dead_letter_publish_failed",
            "end_before_start",
            "delivery_limit",
            "credentials_unreadable",
        ] {
            assert_ne!(words(code), "see the reason code", "{code}");
        }
    }

    #[test]
    fn the_entry_filter_keeps_whole_schedule_entries_and_the_newest() {
        let e = |target: &str| Entry::new(1, target, "plan", Outcome::Skipped, "x");
        let all = vec![
            e("A@x.com"),
            e("-"),
            e("user u-1"),
            e("b@x.com"),
            e("a@x.com"),
        ];
        let f = EntryFilter {
            target: Some("a@X.com".into()),
            limit: Some(2),
        };
        let got: Vec<String> = f.apply(all.clone()).into_iter().map(|e| e.target).collect();
        assert_eq!(got, vec!["A@x.com", "-"]);
        let f = EntryFilter {
            target: Some("u-1".into()),
            limit: None,
        };
        let got: Vec<String> = f.apply(all).into_iter().map(|e| e.target).collect();
        assert_eq!(got, vec!["-", "user u-1"]);
    }
}
