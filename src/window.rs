//! Staged windows in Redis: the dedupe (per schedule only the highest revision is kept), the due
//! set (each staged schedule's window end), and claims on due schedules with a lease.
//!
//! Keys (named in `store::keys`):
//! - `s:{company}/{schedule}`: hash `rev`, `event` (the raw message), `kind`, `born` (a
//!   `schedule.created` of this schedule was staged here, so every copy of it was created through
//!   this Redis), `staged_at`, `replay` (the revision an operator's replay made due again, until
//!   a newer revision is staged; the sync ledger clears it when the replay is applied); expires
//!   `RETENTION` after its last staging.
//! - `due`: sorted set of `{company}/{schedule}` scored by the end of its window (ms).
//! - `inflight`: sorted set of claimed members scored by their lease expiry (ms); `owner`: hash
//!   member → the claim token of the worker holding it.
//!
//! Windows are tumbling and aligned: a change staged at `t` is due at `⌈t / W⌉·W` (the end of the
//! window containing `t`). A schedule already due keeps its earlier due time (`ZADD NX`), so
//! changes keep coalescing until its window closes and are never postponed indefinitely.

use std::time::Duration;

use redis::{AsyncCommands, Script};

use crate::event::{EventType, ScheduleEvent};
use crate::store::{Keys, Member};

/// How long a schedule's staging record outlives its last change. Within it, a redelivered or
/// replayed older revision is recognised as stale.
pub const RETENTION: Duration = Duration::from_secs(35 * 24 * 3600);

/// One validated event ready to stage.
#[derive(Debug, Clone)]
pub struct Staging<'a> {
    pub company_id: &'a str,
    pub schedule_id: &'a str,
    pub revision: u64,
    pub event_type: EventType,
    /// An operator's replay of a dead letter: the same revision is applied again where needed.
    pub replay: bool,
    pub raw: &'a [u8],
}

impl<'a> Staging<'a> {
    pub fn new(ev: &'a ScheduleEvent, raw: &'a [u8]) -> Self {
        Self {
            company_id: &ev.company_id,
            schedule_id: &ev.schedule_id,
            revision: ev.revision,
            event_type: ev.event_type,
            replay: false,
            raw,
        }
    }
}

/// What staging did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staged {
    /// The newest revision so far: kept, and the schedule is due at its window's end.
    Newest,
    /// The same revision was already staged (a redelivery or a duplicate publish).
    Duplicate,
    /// An older revision than the one staged: dropped.
    Stale,
    /// A replay of the staged revision or an older one: due again; the staged (newest)
    /// revision is re-applied only where a copy is behind.
    Replayed,
}

/// The staged state of one schedule, as the flush reads it.
#[derive(Debug, Clone)]
pub struct StagedSchedule {
    pub revision: u64,
    pub raw: Vec<u8>,
    /// Its `schedule.created` was staged through this Redis: no copy can predate our mapping.
    pub born_here: bool,
    /// When it was last staged (or replayed), ms since the epoch: the retry budget counts from it.
    pub staged_at_ms: Option<u64>,
}

/// `HMGET rev event born staged_at` of one schedule.
type StagedRow = (Option<u64>, Option<Vec<u8>>, Option<String>, Option<u64>);

/// KEYS[1] = due; KEYS[1+i] = the schedule hash of event i.
/// ARGV[1] = due score (ms), ARGV[2] = retention (s), ARGV[3] = now (ms);
/// then per event 5 values: revision, member, kind (c/u/d), replay (0/1), raw.
/// A replay of the staged revision, or of an older one, makes the schedule due again: the flush
/// re-applies the staged (newest) revision only where a copy is behind, so a replay never
/// writes an older revision. Anything else older is stale.
///
/// Staging is the hot path of ingest and its cost is Redis's CPU, so each event costs as few
/// commands as the rules allow: one `HMGET`, one `HSET` (every field at once), one `EXPIRE`,
/// an `HDEL` only when a replay mark must go, and one `ZADD NX` for the whole batch.
const STAGE_LUA: &str = r#"
local out = {}
local due = {}
local n = (#ARGV - 3) / 5
for i = 1, n do
  local key = KEYS[1 + i]
  local base = 3 + (i - 1) * 5
  local rev = tonumber(ARGV[base + 1])
  local kind = ARGV[base + 3]
  local replay = ARGV[base + 4] == '1'
  local state = redis.call('HMGET', key, 'rev', 'replay')
  local curs = state[1]
  local cur = tonumber(curs or '0')
  if rev > cur then
    -- Four spelled-out HSETs rather than one built from a table: building the table per event
    -- cost redis-server about 6% more instructions per staged event (callgrind).
    if replay then
      if kind == 'c' then
        redis.call('HSET', key, 'rev', ARGV[base + 1], 'event', ARGV[base + 5], 'kind', kind, 'staged_at', ARGV[3], 'replay', ARGV[base + 1], 'born', '1')
      else
        redis.call('HSET', key, 'rev', ARGV[base + 1], 'event', ARGV[base + 5], 'kind', kind, 'staged_at', ARGV[3], 'replay', ARGV[base + 1])
      end
    else
      if kind == 'c' then
        redis.call('HSET', key, 'rev', ARGV[base + 1], 'event', ARGV[base + 5], 'kind', kind, 'staged_at', ARGV[3], 'born', '1')
      else
        redis.call('HSET', key, 'rev', ARGV[base + 1], 'event', ARGV[base + 5], 'kind', kind, 'staged_at', ARGV[3])
      end
      if state[2] then redis.call('HDEL', key, 'replay') end
    end
    due[#due + 1] = ARGV[1]
    due[#due + 1] = ARGV[base + 2]
    out[i] = 1
  elseif replay then
    redis.call('HSET', key, 'replay', curs, 'staged_at', ARGV[3])
    due[#due + 1] = ARGV[1]
    due[#due + 1] = ARGV[base + 2]
    out[i] = 2
  elseif rev == cur then
    out[i] = 0
  else
    out[i] = -1
  end
  redis.call('EXPIRE', key, ARGV[2])
end
-- Lua's unpack is bounded by its stack; 2,000 values at a time stays well inside it.
for j = 1, #due, 2000 do
  redis.call('ZADD', KEYS[1], 'NX', unpack(due, j, math.min(j + 1999, #due)))
end
return out
"#;

/// KEYS: due, inflight, owner. ARGV: now, lease, limit, token.
/// Takes expired claims first (their worker died), then due members not held by a live claim.
const CLAIM_LUA: &str = r#"
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local out = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, limit)
for _, m in ipairs(expired) do table.insert(out, m) end
if #out < limit then
  local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit * 2)
  for _, m in ipairs(due) do
    if #out >= limit then break end
    local held = redis.call('ZSCORE', KEYS[2], m)
    if not held then
      redis.call('ZREM', KEYS[1], m)
      table.insert(out, m)
    end
  end
end
local exp = now + tonumber(ARGV[2])
for _, m in ipairs(out) do
  redis.call('ZADD', KEYS[2], exp, m)
  redis.call('HSET', KEYS[3], m, ARGV[4])
end
return out
"#;

/// KEYS: inflight, owner, due. ARGV: token, mode (done|retry_at), retry score (ms), members...
/// Only members this token still owns are touched.
const SETTLE_LUA: &str = r#"
local n = 0
for i = 4, #ARGV do
  local m = ARGV[i]
  if redis.call('HGET', KEYS[2], m) == ARGV[1] then
    redis.call('ZREM', KEYS[1], m)
    redis.call('HDEL', KEYS[2], m)
    if ARGV[2] == 'retry_at' then
      redis.call('ZADD', KEYS[3], 'LT', ARGV[3], m)
    end
    n = n + 1
  end
end
return n
"#;

/// KEYS: inflight, owner. ARGV: token, new expiry (ms), members... Extends this token's claims.
const RENEW_LUA: &str = r#"
local n = 0
for i = 3, #ARGV do
  if redis.call('HGET', KEYS[2], ARGV[i]) == ARGV[1] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[2], ARGV[i])
    n = n + 1
  end
end
return n
"#;

/// KEYS[1] = a schedule's staging hash; ARGV[1] = the replayed revision just applied.
const CLEAR_REPLAY_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'replay') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'replay')
end
return 0
"#;

/// `HMGET rev event kind staged_at replay` of one schedule.
type InspectedFields = (
    Option<u64>,
    Option<Vec<u8>>,
    Option<String>,
    Option<u64>,
    Option<u64>,
);

/// Everything staged about one schedule (see [`Windows::inspect`]).
#[derive(Debug, Clone, Default)]
pub struct Inspection {
    /// The staged (newest) revision; `None` if nothing is staged (never, or past retention).
    pub revision: Option<u64>,
    pub raw: Option<Vec<u8>>,
    pub kind: Option<EventType>,
    pub staged_at: Option<jiff::Timestamp>,
    /// The revision an operator's replay made due again, until applied.
    pub replay: Option<u64>,
    pub due_at: Option<jiff::Timestamp>,
    /// The claim's lease expiry while a worker flushes it.
    pub claimed_until: Option<jiff::Timestamp>,
}

/// Schedules by stage of the window (see [`Windows::counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub staged: u64,
    pub due: u64,
    pub claimed: u64,
    pub oldest_due_ms: Option<u64>,
}

/// The staging store.
#[derive(Clone)]
pub struct Windows {
    redis: crate::store::Redis,
    keys: Keys,
    window_ms: u64,
    stage: std::sync::Arc<Script>,
    claim: std::sync::Arc<Script>,
    settle: std::sync::Arc<Script>,
    renew: std::sync::Arc<Script>,
}

pub fn now_ms() -> u64 {
    jiff::Timestamp::now().as_millisecond().max(0) as u64
}

impl Windows {
    pub fn new(redis: crate::store::Redis, keys: Keys, window: Duration) -> Self {
        Self {
            redis,
            keys,
            window_ms: window.as_millis().max(1) as u64,
            stage: std::sync::Arc::new(Script::new(STAGE_LUA)),
            claim: std::sync::Arc::new(Script::new(CLAIM_LUA)),
            settle: std::sync::Arc::new(Script::new(SETTLE_LUA)),
            renew: std::sync::Arc::new(Script::new(RENEW_LUA)),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// The Redis connection the staging uses.
    pub fn redis(&self) -> &crate::store::Redis {
        &self.redis
    }

    fn schedule_key(&self, company: &str, schedule: &str) -> String {
        self.keys.staged(&Member::new(company, schedule))
    }

    /// The end of the aligned window containing `t_ms`.
    pub fn window_end(&self, t_ms: u64) -> u64 {
        (t_ms / self.window_ms + 1) * self.window_ms
    }

    /// Stages a batch with one round trip (one script call, atomic). Returns one outcome per event.
    pub async fn stage(&self, batch: &[Staging<'_>]) -> Result<Vec<Staged>, redis::RedisError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut inv = self.stage.prepare_invoke();
        inv.key(self.keys.due());
        for s in batch {
            inv.key(self.schedule_key(s.company_id, s.schedule_id));
        }
        inv.arg(self.window_end(now))
            .arg(RETENTION.as_secs())
            .arg(now);
        for s in batch {
            let kind = match s.event_type {
                EventType::Created => "c",
                EventType::Updated => "u",
                EventType::Deleted => "d",
            };
            inv.arg(s.revision)
                .arg(format!("{}/{}", s.company_id, s.schedule_id))
                .arg(kind)
                .arg(if s.replay { "1" } else { "0" })
                .arg(s.raw);
        }
        let mut r = self.redis.clone();
        let out: Vec<i64> = inv.invoke_async(&mut r).await?;
        Ok(out
            .into_iter()
            .map(|v| match v {
                1 => Staged::Newest,
                0 => Staged::Duplicate,
                2 => Staged::Replayed,
                _ => Staged::Stale,
            })
            .collect())
    }

    /// Claims up to `limit` due schedules (and expired claims) for `lease`.
    pub async fn claim(
        &self,
        token: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Member>, redis::RedisError> {
        let mut r = self.redis.clone();
        let members: Vec<String> = self
            .claim
            .key(self.keys.due())
            .key(self.keys.inflight())
            .key(self.keys.owner())
            .arg(now_ms())
            .arg(lease.as_millis() as u64)
            .arg(limit)
            .arg(token)
            .invoke_async(&mut r)
            .await?;
        Ok(members.iter().filter_map(|m| Member::decode(m)).collect())
    }

    async fn settle(
        &self,
        token: &str,
        members: &[Member],
        retry_at: Option<u64>,
    ) -> Result<usize, redis::RedisError> {
        if members.is_empty() {
            return Ok(0);
        }
        let mut inv = self.settle.prepare_invoke();
        inv.key(self.keys.inflight())
            .key(self.keys.owner())
            .key(self.keys.due())
            .arg(token)
            .arg(if retry_at.is_some() {
                "retry_at"
            } else {
                "done"
            })
            .arg(retry_at.unwrap_or(0));
        for m in members {
            inv.arg(m.encode());
        }
        let mut r = self.redis.clone();
        inv.invoke_async(&mut r).await
    }

    /// The claimed schedules are done (a newer change staged meanwhile is already due again).
    pub async fn complete(
        &self,
        token: &str,
        members: &[Member],
    ) -> Result<usize, redis::RedisError> {
        self.settle(token, members, None).await
    }

    /// Gives claims back, due again after `delay` (a busy mailbox, a shutdown).
    pub async fn release(
        &self,
        token: &str,
        members: &[Member],
        delay: Duration,
    ) -> Result<usize, redis::RedisError> {
        self.settle(token, members, Some(now_ms() + delay.as_millis() as u64))
            .await
    }

    /// Extends this token's claims by `lease` from now.
    pub async fn renew(
        &self,
        token: &str,
        members: &[Member],
        lease: Duration,
    ) -> Result<usize, redis::RedisError> {
        if members.is_empty() {
            return Ok(0);
        }
        let mut inv = self.renew.prepare_invoke();
        inv.key(self.keys.inflight())
            .key(self.keys.owner())
            .arg(token)
            .arg(now_ms() + lease.as_millis() as u64);
        for m in members {
            inv.arg(m.encode());
        }
        let mut r = self.redis.clone();
        inv.invoke_async(&mut r).await
    }

    /// Reads the staged state of several schedules in one round trip.
    pub async fn read(
        &self,
        members: &[Member],
    ) -> Result<Vec<Option<StagedSchedule>>, redis::RedisError> {
        let mut pipe = redis::pipe();
        for m in members {
            pipe.cmd("HMGET")
                .arg(self.schedule_key(&m.company_id, &m.schedule_id))
                .arg("rev")
                .arg("event")
                .arg("born")
                .arg("staged_at");
        }
        let mut r = self.redis.clone();
        let rows: Vec<StagedRow> = pipe.query_async(&mut r).await?;
        Ok(rows
            .into_iter()
            .map(|(rev, raw, born, staged_at)| match (rev, raw) {
                (Some(revision), Some(raw)) => Some(StagedSchedule {
                    revision,
                    raw,
                    born_here: born.is_some(),
                    staged_at_ms: staged_at,
                }),
                _ => None,
            })
            .collect())
    }

    /// Everything staged about one schedule, for the ledger's view (one round trip).
    pub async fn inspect(&self, m: &Member) -> Result<Inspection, redis::RedisError> {
        let mut r = self.redis.clone();
        let encoded = m.encode();
        let ((revision, raw, kind, staged_at, replay), due, inflight): (
            InspectedFields,
            Option<f64>,
            Option<f64>,
        ) = redis::pipe()
            .cmd("HMGET")
            .arg(self.keys.staged(m))
            .arg(&["rev", "event", "kind", "staged_at", "replay"])
            .cmd("ZSCORE")
            .arg(self.keys.due())
            .arg(&encoded)
            .cmd("ZSCORE")
            .arg(self.keys.inflight())
            .arg(&encoded)
            .query_async(&mut r)
            .await?;
        let ms = |v: f64| jiff::Timestamp::from_millisecond(v as i64).ok();
        Ok(Inspection {
            revision,
            raw,
            kind: kind.as_deref().map(|k| match k {
                "c" => EventType::Created,
                "d" => EventType::Deleted,
                _ => EventType::Updated,
            }),
            staged_at: staged_at.and_then(|v| ms(v as f64)),
            replay,
            due_at: due.and_then(ms),
            claimed_until: inflight.and_then(ms),
        })
    }

    /// The revision an operator's replay made due again, per schedule, until applied.
    pub async fn replay_marks(
        &self,
        members: &[&Member],
    ) -> Result<Vec<Option<u64>>, redis::RedisError> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for m in members {
            pipe.hget(self.keys.staged(m), "replay");
        }
        let mut r = self.redis.clone();
        pipe.query_async(&mut r).await
    }

    /// Adds to `pipe` the clearing of a schedule's replay mark, if it still marks `revision`
    /// (the ledger clears it in the same round trip as the entry that applied the replay).
    pub fn clear_replay_mark(&self, pipe: &mut redis::Pipeline, m: &Member, revision: u64) {
        pipe.cmd("EVAL")
            .arg(CLEAR_REPLAY_LUA)
            .arg(1)
            .arg(self.keys.staged(m))
            .arg(revision)
            .ignore();
    }

    /// The schedules a worker's claim token holds.
    pub async fn claimed_by(&self, token: &str) -> Result<Vec<Member>, redis::RedisError> {
        let mut r = self.redis.clone();
        let owners: std::collections::HashMap<String, String> =
            r.hgetall(self.keys.owner()).await?;
        Ok(owners
            .iter()
            .filter(|(_, t)| t.as_str() == token)
            .filter_map(|(m, _)| Member::decode(m))
            .collect())
    }

    /// How many schedules are staged and not due yet, due and unclaimed, and claimed; and the
    /// due time of the oldest due one (ms). One round trip.
    pub async fn counts(&self) -> Result<Counts, redis::RedisError> {
        let now = now_ms();
        let mut r = self.redis.clone();
        let (staged, due, claimed, first): (u64, u64, u64, Vec<(String, f64)>) = redis::pipe()
            .cmd("ZCOUNT")
            .arg(self.keys.due())
            .arg(format!("({now}"))
            .arg("+inf")
            .cmd("ZCOUNT")
            .arg(self.keys.due())
            .arg("-inf")
            .arg(now)
            .cmd("ZCARD")
            .arg(self.keys.inflight())
            .cmd("ZRANGE")
            .arg(self.keys.due())
            .arg(0)
            .arg(0)
            .arg("WITHSCORES")
            .query_async(&mut r)
            .await?;
        let oldest_due_ms = first.first().map(|(_, s)| *s as u64).filter(|t| *t <= now);
        Ok(Counts {
            staged,
            due,
            claimed,
            oldest_due_ms,
        })
    }

    /// The due backlog: how many schedules wait and the due time of the oldest (ms).
    pub async fn backlog(&self) -> Result<(u64, Option<u64>), redis::RedisError> {
        let mut r = self.redis.clone();
        let due = self.keys.due();
        let n: u64 = r.zcard(&due).await?;
        let first: Vec<(String, f64)> = r.zrange_withscores(&due, 0, 0).await?;
        Ok((n, first.first().map(|(_, s)| *s as u64)))
    }
}
