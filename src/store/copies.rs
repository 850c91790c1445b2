//! The copies: which Outlook event is the copy of a schedule in a mailbox, at which revision, and
//! the create's transactionId (the write-ahead intent).
//!
//! `m:{company}/{schedule}`: a hash of mailbox (a `tenants::mailbox_key`) → JSON
//! [`CopyRecord`]; and its reverse index `copies-of:{company}:{mailbox}`, the set of schedules
//! with a copy in a mailbox (for a clean unlink). Both are rebuildable: every copy carries its
//! tag (invariant 6).

use std::collections::{BTreeMap, HashMap};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::keys::{Keys, Member};
use crate::tenants::mailbox_key;

/// The Outlook copy of one schedule in one mailbox, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyRecord {
    /// The cyzen user the mailbox belongs to.
    pub user: String,
    /// `None` while only the intent exists (a create was sent, or is about to be).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// The revision applied to the copy (for an intent: the revision being created).
    pub rev: u64,
    /// The create's transactionId, reused by every retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx: Option<String>,
    /// The `changeKey` Graph returned for our last write of the copy: a delta item with this
    /// changeKey is our own write, any other one is an edit made in Outlook (`sync::repair`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ck: Option<String>,
    /// The repair pass found the copy changed in Outlook: the flush writes it again (even at
    /// the same revision), and the ledger says what it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
}

/// How a copy drifted in Outlook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Drift {
    /// Listed `@removed` (deleted, or moved out of the repair's range).
    Deleted,
    /// Changed with a changeKey that is not our last write's.
    Edited,
}

impl Drift {
    pub const ALL: [Drift; 2] = [Drift::Deleted, Drift::Edited];

    /// The metrics' `kind` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Drift::Deleted => "deleted",
            Drift::Edited => "edited",
        }
    }
}

impl CopyRecord {
    /// The copy exists in Outlook at `revision` or later, as we wrote it: nothing to write.
    pub fn is_at_least(&self, revision: u64) -> bool {
        self.event_id.is_some() && self.rev >= revision && self.drift.is_none()
    }
}

/// A change to the copies: put `Some`, remove `None`, of (mailbox, schedule).
pub type CopyChange = (String, Member, Option<CopyRecord>);

/// The copies store.
#[derive(Clone)]
pub struct Copies {
    redis: crate::store::Redis,
    keys: Keys,
}

impl Copies {
    pub fn new(redis: crate::store::Redis, keys: Keys) -> Self {
        Self { redis, keys }
    }

    /// The schedules that have (or are creating) a copy in this mailbox, sorted.
    pub async fn schedules_in_mailbox(
        &self,
        company: &str,
        mailbox: &str,
    ) -> Result<Vec<String>, redis::RedisError> {
        let mut r = self.redis.clone();
        let mut ids: Vec<String> = r
            .smembers(self.keys.copies_of(company, &mailbox_key(mailbox)))
            .await?;
        ids.sort();
        Ok(ids)
    }

    /// The mailboxes in which a company has copies recorded, sorted.
    pub async fn mailboxes_with_copies(
        &self,
        company: &str,
    ) -> Result<Vec<String>, redis::RedisError> {
        let prefix = self.keys.copies_of_company(company);
        let mut r = self.redis.clone();
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut r)
                .await?;
            out.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(&prefix))
                    .filter(|m| !m.contains(':'))
                    .map(str::to_string),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// One copy.
    pub async fn get(
        &self,
        m: &Member,
        mailbox: &str,
    ) -> Result<Option<CopyRecord>, redis::RedisError> {
        Ok(self.pairs(&[(m, mailbox)]).await?.pop().flatten())
    }

    /// Every copy of each schedule, in one round trip.
    pub async fn all(
        &self,
        members: &[Member],
    ) -> Result<Vec<BTreeMap<String, CopyRecord>>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for m in members {
            pipe.hgetall(self.keys.copies(m));
        }
        let mut r = self.redis.clone();
        let rows: Vec<HashMap<String, String>> = pipe.query_async(&mut r).await?;
        Ok(rows
            .into_iter()
            .map(|h| {
                h.into_iter()
                    .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|c| (k, c)))
                    .collect()
            })
            .collect())
    }

    /// The copies of several schedules in one mailbox, in one round trip.
    pub async fn in_mailbox(
        &self,
        members: &[&Member],
        mailbox: &str,
    ) -> Result<Vec<Option<CopyRecord>>, redis::RedisError> {
        let pairs: Vec<(&Member, &str)> = members.iter().map(|m| (*m, mailbox)).collect();
        self.pairs(&pairs).await
    }

    /// The copies for (schedule, mailbox) pairs, in one round trip.
    pub async fn pairs(
        &self,
        pairs: &[(&Member, &str)],
    ) -> Result<Vec<Option<CopyRecord>>, redis::RedisError> {
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (m, mailbox) in pairs {
            pipe.hget(self.keys.copies(m), *mailbox);
        }
        let mut r = self.redis.clone();
        let rows: Vec<Option<String>> = pipe.query_async(&mut r).await?;
        Ok(rows
            .into_iter()
            .map(|v| v.and_then(|s| serde_json::from_str(&s).ok()))
            .collect())
    }

    /// Applies puts and removals for one mailbox in one round trip.
    pub async fn write(
        &self,
        mailbox: &str,
        puts: &[(&Member, CopyRecord)],
        removals: &[&Member],
    ) -> Result<(), redis::RedisError> {
        let changes: Vec<CopyChange> = puts
            .iter()
            .map(|(m, c)| (mailbox.to_string(), (*m).clone(), Some(c.clone())))
            .chain(
                removals
                    .iter()
                    .map(|m| (mailbox.to_string(), (*m).clone(), None)),
            )
            .collect();
        self.write_many(&changes).await
    }

    /// Puts (`Some`) or removes (`None`) copies across mailboxes, in one round trip.
    pub async fn write_many(&self, changes: &[CopyChange]) -> Result<(), redis::RedisError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (mailbox, m, c) in changes {
            let index = self.keys.copies_of(&m.company_id, mailbox);
            match c {
                Some(c) => {
                    let json = serde_json::to_string(c).expect("a copy record serializes");
                    pipe.hset(self.keys.copies(m), mailbox, json).ignore();
                    pipe.sadd(index, &m.schedule_id).ignore();
                }
                None => {
                    pipe.hdel(self.keys.copies(m), mailbox).ignore();
                    pipe.srem(index, &m.schedule_id).ignore();
                }
            }
        }
        let mut r = self.redis.clone();
        pipe.query_async::<()>(&mut r).await
    }
}
