//! The repair pass's state in Redis: each mailbox's delta cursor (`delta:{company}:{mailbox}`,
//! the deltaLink of its last round and the first day of the range it reads) and when each
//! mailbox's next pass is due (`repair-due`, a sorted set of `{company}/{mailbox}` by ms).
//! Both are rebuildable: a lost cursor costs one full round, a lost schedule is refilled from
//! the directory.

use super::Redis;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

use super::keys::Keys;

/// Where a mailbox's delta rounds stand.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaCursor {
    /// The `@odata.deltaLink` of the last round, relative to the Graph base URL.
    pub link: String,
    /// The first day (UTC, `YYYY-MM-DD`) of the range the link reads: when today's range
    /// starts on another day, the cursor is dropped and a new full round reads the new range.
    pub from_day: String,
}

/// Claims due mailboxes: up to ARGV[2] members due at ARGV[1] (ms), each moved to ARGV[3] (ms)
/// at once, so two workers never claim one mailbox for one pass.
const CLAIM: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, m in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[3], m)
end
return due
";

/// The repair pass's Redis state.
#[derive(Clone)]
pub struct RepairStore {
    redis: Redis,
    keys: Keys,
    claim: redis::Script,
}

impl RepairStore {
    pub fn new(redis: Redis, keys: Keys) -> Self {
        Self {
            redis,
            keys,
            claim: redis::Script::new(CLAIM),
        }
    }

    /// A mailbox's cursor; `None` when it has none (or an unreadable one).
    pub async fn cursor(
        &self,
        company: &str,
        mailbox: &str,
    ) -> Result<Option<DeltaCursor>, redis::RedisError> {
        let mut r = self.redis.clone();
        let raw: Option<String> = r.get(self.keys.delta_cursor(company, mailbox)).await?;
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    pub async fn set_cursor(
        &self,
        company: &str,
        mailbox: &str,
        cursor: &DeltaCursor,
    ) -> Result<(), redis::RedisError> {
        let json = serde_json::to_string(cursor).expect("a cursor serializes");
        let mut r = self.redis.clone();
        r.set(self.keys.delta_cursor(company, mailbox), json).await
    }

    pub async fn clear_cursor(
        &self,
        company: &str,
        mailbox: &str,
    ) -> Result<(), redis::RedisError> {
        let mut r = self.redis.clone();
        r.del(self.keys.delta_cursor(company, mailbox)).await
    }

    /// Schedules mailboxes not scheduled yet, each at its own time (ms); one round trip.
    pub async fn schedule_new(
        &self,
        mailboxes: &[(String, String, u64)],
    ) -> Result<(), redis::RedisError> {
        if mailboxes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (company, mailbox, at) in mailboxes {
            pipe.cmd("ZADD")
                .arg(self.keys.repair_due())
                .arg("NX")
                .arg(*at)
                .arg(format!("{company}/{mailbox}"))
                .ignore();
        }
        let mut r = self.redis.clone();
        pipe.query_async(&mut r).await
    }

    /// Moves a scheduled mailbox's next pass to `at` (ms).
    pub async fn reschedule(
        &self,
        company: &str,
        mailbox: &str,
        at: u64,
    ) -> Result<(), redis::RedisError> {
        let mut r = self.redis.clone();
        redis::cmd("ZADD")
            .arg(self.keys.repair_due())
            .arg("XX")
            .arg(at)
            .arg(format!("{company}/{mailbox}"))
            .query_async(&mut r)
            .await
    }

    /// Forgets a mailbox (unlinked, or its company gone): no more passes, no cursor.
    pub async fn forget(&self, company: &str, mailbox: &str) -> Result<(), redis::RedisError> {
        let mut r = self.redis.clone();
        redis::pipe()
            .zrem(self.keys.repair_due(), format!("{company}/{mailbox}"))
            .ignore()
            .del(self.keys.delta_cursor(company, mailbox))
            .ignore()
            .query_async(&mut r)
            .await
    }

    /// Claims up to `limit` mailboxes whose pass is due at `now_ms`; each one's next pass moves
    /// to `next_ms`. (company, mailbox) pairs.
    pub async fn claim_due(
        &self,
        now_ms: u64,
        limit: usize,
        next_ms: u64,
    ) -> Result<Vec<(String, String)>, redis::RedisError> {
        let mut r = self.redis.clone();
        let due: Vec<String> = self
            .claim
            .key(self.keys.repair_due())
            .arg(now_ms)
            .arg(limit)
            .arg(next_ms)
            .invoke_async(&mut r)
            .await?;
        Ok(due
            .iter()
            .filter_map(|m| m.split_once('/'))
            .map(|(c, m)| (c.to_string(), m.to_string()))
            .collect())
    }

    /// When a mailbox's next pass is due (ms), if it is scheduled.
    pub async fn due_at(
        &self,
        company: &str,
        mailbox: &str,
    ) -> Result<Option<u64>, redis::RedisError> {
        let mut r = self.redis.clone();
        let score: Option<f64> = r
            .zscore(self.keys.repair_due(), format!("{company}/{mailbox}"))
            .await?;
        Ok(score.map(|s| s as u64))
    }
}
