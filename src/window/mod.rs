//! Staged windows in Redis: the dedupe (per schedule only the highest revision is kept), the due
//! set (each staged schedule's window end), and claims on due schedules with a lease.
//!
//! Keys (named in `store::keys`):
//! - `s:{company}/{schedule}`: hash, the schedule's staged state as the flush last consolidated
//!   it: `rev`, `event` (the raw message), `kind` of the highest revision, `born` (a
//!   `schedule.created` of this schedule was staged here, so every copy of it was created through
//!   this Redis), `staged_at`, `replay` (the revision an operator's replay made due again, until
//!   a newer revision is staged; the sync ledger clears it when the replay is applied). Expires
//!   `RETENTION` after its last consolidation.
//! - `pending:{…s:{company}/{schedule}}`: string, in the same hash slot. Ingest `APPEND`s each
//!   event to it as one record (plain pipelined commands, no script: the hot path costs Redis
//!   about what a `SET` of the event would); the flush, under its claim, consolidates the
//!   records into the hash (one script on these two keys), keeping the highest revision and
//!   counting the duplicates and stale ones it drops.
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

mod scripts;
use scripts::{CLAIM_LUA, CLEAR_REPLAY_LUA, CONSOLIDATE_LUA, RENEW_LUA, SETTLE_LUA};

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
    /// Appended to its schedule's pending events, and the schedule is due at its window's end.
    /// The flush keeps it if it is the newest revision then, and counts it as a duplicate or
    /// stale otherwise ([`StagedSchedule::dropped`]).
    Appended,
    /// A replay that is the newest revision so far: kept (replays are consolidated at once).
    Newest,
    /// The same revision came earlier in the batch (a redelivery or a duplicate publish).
    Duplicate,
    /// An older revision than one earlier in the batch: dropped.
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
    /// What this consolidation dropped of the events appended since the last one.
    pub dropped: Dropped,
}

/// Appended events a consolidation dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Dropped {
    /// A revision already consolidated, or appended twice (a redelivery, a duplicate publish).
    pub duplicates: u64,
    /// Older than the revision already consolidated.
    pub stale: u64,
}

/// One pending record, as ingest appends it to a schedule's `pending` key:
/// `{rev} {kind}{replay} {staged_at} {len}\n{raw}`, kind `c`/`u`/`d`, replay `0`/`1`,
/// staged_at in ms, `len` the raw message's length in bytes. [`scripts::CONSOLIDATE_LUA`] reads
/// them back.
fn pending_record(revision: u64, kind: &str, replay: bool, staged_at: u64, raw: &[u8]) -> Vec<u8> {
    let head = format!(
        "{revision} {kind}{} {staged_at} {}\n",
        if replay { '1' } else { '0' },
        raw.len()
    );
    let mut v = Vec::with_capacity(head.len() + raw.len());
    v.extend_from_slice(head.as_bytes());
    v.extend_from_slice(raw);
    v
}

/// What [`scripts::CONSOLIDATE_LUA`] returns for one schedule: revision, event, born,
/// staged_at, duplicates and stale records dropped.
type Consolidated = Option<(u64, Vec<u8>, Option<String>, u64, u64, u64)>;

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
    consolidate: std::sync::Arc<Script>,
    /// Which shard the next claim starts at.
    claim_turn: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// `WAIT` for this many replicas, this long (ms), after each staged batch.
    wait: Option<(u32, u64)>,
    /// After a `WAIT` that came back short, none until this time (ms): a missing replica must
    /// not slow every batch by the timeout.
    wait_paused_until: std::sync::Arc<std::sync::atomic::AtomicU64>,
    claim: std::sync::Arc<Script>,
    settle: std::sync::Arc<Script>,
    renew: std::sync::Arc<Script>,
}

fn kind_code(t: EventType) -> &'static str {
    match t {
        EventType::Created => "c",
        EventType::Updated => "u",
        EventType::Deleted => "d",
    }
}

/// Per event, its outcome if the batch itself decides it: at or below a revision of its
/// schedule earlier in the batch (a replay always goes to Redis).
fn within_batch(batch: &[Staging<'_>]) -> Vec<Option<Staged>> {
    let mut best: std::collections::HashMap<(&str, &str), u64> = Default::default();
    batch
        .iter()
        .map(|s| {
            let key = (s.company_id, s.schedule_id);
            let prior = best.get(&key).copied();
            if prior.is_none_or(|p| s.revision > p) {
                best.insert(key, s.revision);
            }
            match prior {
                Some(p) if !s.replay && s.revision < p => Some(Staged::Stale),
                Some(p) if !s.replay && s.revision == p => Some(Staged::Duplicate),
                _ => None,
            }
        })
        .collect()
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
            consolidate: std::sync::Arc::new(Script::new(CONSOLIDATE_LUA)),
            wait: None,
            claim_turn: Default::default(),
            wait_paused_until: Default::default(),
            claim: std::sync::Arc::new(Script::new(CLAIM_LUA)),
            settle: std::sync::Arc::new(Script::new(SETTLE_LUA)),
            renew: std::sync::Arc::new(Script::new(RENEW_LUA)),
        }
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Staging returns only once `replicas` replicas have the batch (`WAIT`, at most
    /// `timeout`), else fails (the batch is held unacked and staged again).
    pub fn replicated(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = (replicas > 0).then_some((replicas, timeout.as_millis() as u64));
        self
    }

    /// The Redis connection the staging uses.
    pub fn redis(&self) -> &crate::store::Redis {
        &self.redis
    }

    /// The end of the aligned window containing `t_ms`.
    pub fn window_end(&self, t_ms: u64) -> u64 {
        (t_ms / self.window_ms + 1) * self.window_ms
    }

    /// Stages a batch with one round trip of plain commands: one `APPEND` of a
    /// [`pending_record`] per event, one `ZADD NX` per shard. Returns one outcome per event:
    /// within the batch, an event at or below a revision of its schedule earlier in it is a
    /// duplicate or stale and is not sent; the others are appended, and the flush decides
    /// against what it consolidated. A replay (rare: an operator's) is consolidated at once, in a
    /// second round trip, so the mark it sets is there for the ledger; its outcome says whether
    /// it was the newest revision.
    pub async fn stage(&self, batch: &[Staging<'_>]) -> Result<Vec<Staged>, redis::RedisError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let local = within_batch(batch);
        let sent: Vec<(usize, Member)> = batch
            .iter()
            .zip(&local)
            .enumerate()
            .filter(|(_, (_, l))| l.is_none())
            .map(|(i, (s, _))| (i, Member::new(s.company_id, s.schedule_id)))
            .collect();
        // The due entries go first: Redis persists and replicates in command order, so an
        // appended event that survives a crash or a failover is due too. One `ZADD NX` per
        // shard: each schedule is due in its own shard, where its claim and settle look.
        let mut pipe = redis::pipe();
        let end = self.window_end(now);
        let members: Vec<Member> = sent.iter().map(|(_, m)| m.clone()).collect();
        for (shard, members) in self.by_shard(&members) {
            let mut due = redis::cmd("ZADD");
            due.arg(self.keys.due_in(shard)).arg("NX");
            for m in members {
                due.arg(end).arg(m.encode());
            }
            pipe.add_command(due).ignore();
        }
        for (i, m) in &sent {
            let s = &batch[*i];
            if s.replay {
                // The revision consolidated before: whether the replay is the newest.
                pipe.cmd("HGET").arg(self.keys.staged(m)).arg("rev");
            }
            let record = pending_record(s.revision, kind_code(s.event_type), s.replay, now, s.raw);
            pipe.cmd("APPEND")
                .arg(self.keys.pending(m))
                .arg(record)
                .ignore();
        }
        let paused = &self.wait_paused_until;
        let wait = self
            .wait
            .filter(|_| paused.load(std::sync::atomic::Ordering::Relaxed) <= now);
        if let Some((n, ms)) = wait {
            pipe.cmd("WAIT").arg(n).arg(ms);
        }
        let mut r = self.redis.clone();
        let mut rows: Vec<redis::Value> = pipe.query_async(&mut r).await?;
        if let Some((n, ms)) = wait {
            let acked: u32 = redis::from_redis_value(rows.pop().unwrap_or(redis::Value::Nil))?;
            if acked < n {
                // Staged on the primary; holding the batch would stop ingest for as long as a
                // replica is missing (after a failover there may be none yet), so it is acked,
                // and said; the next 10 s of batches do not wait.
                paused.store(now_ms() + 10_000, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    replicas = acked,
                    wanted = n,
                    timeout_ms = ms,
                    "staging: fewer replicas than redis.wait_replicas had the batch in time; acked all the same, and not waiting for 10 s (a failover now could lose these batches): check the replicas"
                );
            }
        }
        let mut out: Vec<Staged> = local
            .into_iter()
            .map(|l| l.unwrap_or(Staged::Appended))
            .collect();
        let replays: Vec<(usize, &Member)> = sent
            .iter()
            .filter(|(i, _)| batch[*i].replay)
            .map(|(i, m)| (*i, m))
            .collect();
        if replays.is_empty() {
            return Ok(out);
        }
        if rows.len() != replays.len() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "staging: fewer answers than replays",
            )));
        }
        let members: Vec<Member> = replays.iter().map(|(_, m)| (*m).clone()).collect();
        let consolidated = self.consolidate(&members).await?;
        for (((i, _), cur), c) in replays.iter().zip(rows).zip(consolidated) {
            let cur: Option<u64> = redis::from_redis_value(cur)?;
            let rev = batch[*i].revision;
            out[*i] = if rev > cur.unwrap_or(0) && c.is_some_and(|(r, ..)| r == rev) {
                Staged::Newest
            } else {
                Staged::Replayed
            };
        }
        Ok(out)
    }

    /// Folds each schedule's pending entries into its staged state ([`scripts::CONSOLIDATE_LUA`]), one
    /// script call per schedule (one hash slot each), pipelined.
    async fn consolidate(
        &self,
        members: &[Member],
    ) -> Result<Vec<Consolidated>, redis::RedisError> {
        if members.is_empty() {
            return Ok(Vec::new());
        }
        let pipe = || {
            let mut pipe = redis::pipe();
            for m in members {
                pipe.cmd("EVALSHA")
                    .arg(self.consolidate.get_hash())
                    .arg(2)
                    .arg(self.keys.staged(m))
                    .arg(self.keys.pending(m))
                    .arg(RETENTION.as_secs());
            }
            pipe
        };
        let mut r = self.redis.clone();
        match pipe().query_async(&mut r).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.consolidate.prepare_invoke().load_async(&mut r).await?;
                pipe().query_async(&mut r).await
            }
            other => other,
        }
    }

    /// Claims up to `limit` due schedules (and expired claims) for `lease`, from every shard in
    /// turn: each call starts at the next shard and asks each for its share, then gives what
    /// is left to the shards that had more.
    pub async fn claim(
        &self,
        token: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Member>, redis::RedisError> {
        let n = self.keys.shards();
        let start = self
            .claim_turn
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let share = limit.div_ceil(n as usize);
        let mut out = Vec::new();
        let mut full = Vec::new();
        for i in 0..n {
            let shard = (start + i) % n;
            let want = share.min(limit - out.len());
            if want == 0 {
                break;
            }
            let got = self.claim_in(shard, token, want, lease).await?;
            if got.len() == want {
                full.push(shard);
            }
            out.extend(got);
        }
        for shard in full {
            let want = limit - out.len();
            if want == 0 {
                break;
            }
            out.extend(self.claim_in(shard, token, want, lease).await?);
        }
        Ok(out)
    }

    async fn claim_in(
        &self,
        shard: u32,
        token: &str,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Member>, redis::RedisError> {
        let mut r = self.redis.clone();
        let members: Vec<String> = self
            .claim
            .key(self.keys.due_in(shard))
            .key(self.keys.inflight_in(shard))
            .key(self.keys.owner_in(shard))
            .arg(now_ms())
            .arg(lease.as_millis() as u64)
            .arg(limit)
            .arg(token)
            .invoke_async(&mut r)
            .await?;
        Ok(members.iter().filter_map(|m| Member::decode(m)).collect())
    }

    /// `members` by shard.
    fn by_shard<'m>(
        &self,
        members: &'m [Member],
    ) -> std::collections::BTreeMap<u32, Vec<&'m Member>> {
        let mut out: std::collections::BTreeMap<u32, Vec<&Member>> = Default::default();
        for m in members {
            out.entry(self.keys.shard_of(m)).or_default().push(m);
        }
        out
    }

    async fn settle(
        &self,
        token: &str,
        members: &[Member],
        retry_at: Option<u64>,
    ) -> Result<usize, redis::RedisError> {
        let mut n = 0;
        for (shard, members) in self.by_shard(members) {
            let mut inv = self.settle.prepare_invoke();
            inv.key(self.keys.inflight_in(shard))
                .key(self.keys.owner_in(shard))
                .key(self.keys.due_in(shard))
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
            n += inv.invoke_async::<usize>(&mut r).await?;
        }
        Ok(n)
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

    /// Makes schedules due now (the repair pass found a copy changed in Outlook): the flush
    /// claims them as soon as no live claim holds them, and re-applies what is staged.
    pub async fn make_due_now(&self, members: &[Member]) -> Result<(), redis::RedisError> {
        if members.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for m in members {
            pipe.cmd("ZADD")
                .arg(self.keys.due_in(self.keys.shard_of(m)))
                .arg("LT")
                .arg(now_ms())
                .arg(m.encode())
                .ignore();
        }
        let mut r = self.redis.clone();
        pipe.query_async(&mut r).await
    }

    /// Extends this token's claims by `lease` from now.
    pub async fn renew(
        &self,
        token: &str,
        members: &[Member],
        lease: Duration,
    ) -> Result<usize, redis::RedisError> {
        let mut n = 0;
        for (shard, members) in self.by_shard(members) {
            let mut inv = self.renew.prepare_invoke();
            inv.key(self.keys.inflight_in(shard))
                .key(self.keys.owner_in(shard))
                .arg(token)
                .arg(now_ms() + lease.as_millis() as u64);
            for m in members {
                inv.arg(m.encode());
            }
            let mut r = self.redis.clone();
            n += inv.invoke_async::<usize>(&mut r).await?;
        }
        Ok(n)
    }

    /// Reads the staged state of several schedules in one round trip, under their claims:
    /// each schedule's pending events are consolidated first (the highest revision kept).
    pub async fn read(
        &self,
        members: &[Member],
    ) -> Result<Vec<Option<StagedSchedule>>, redis::RedisError> {
        Ok(self
            .consolidate(members)
            .await?
            .into_iter()
            .map(|c| {
                c.map(
                    |(revision, raw, born, staged_at, duplicates, stale)| StagedSchedule {
                        revision,
                        raw,
                        born_here: born.is_some(),
                        staged_at_ms: Some(staged_at).filter(|t| *t > 0),
                        dropped: Dropped { duplicates, stale },
                    },
                )
            })
            .collect())
    }

    /// Everything staged about one schedule, for the ledger's view (its pending events
    /// consolidated first, then one round trip).
    pub async fn inspect(&self, m: &Member) -> Result<Inspection, redis::RedisError> {
        self.consolidate(std::slice::from_ref(m)).await?;
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
            .arg(self.keys.due_in(self.keys.shard_of(m)))
            .arg(&encoded)
            .cmd("ZSCORE")
            .arg(self.keys.inflight_in(self.keys.shard_of(m)))
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
        let mut out = Vec::new();
        for shard in 0..self.keys.shards() {
            let owners: std::collections::HashMap<String, String> =
                r.hgetall(self.keys.owner_in(shard)).await?;
            out.extend(
                owners
                    .iter()
                    .filter(|(_, t)| t.as_str() == token)
                    .filter_map(|(m, _)| Member::decode(m)),
            );
        }
        Ok(out)
    }

    /// How many schedules are staged and not due yet, due and unclaimed, and claimed; and the
    /// due time of the oldest due one (ms). One round trip per shard.
    pub async fn counts(&self) -> Result<Counts, redis::RedisError> {
        let now = now_ms();
        let mut r = self.redis.clone();
        let mut total = Counts::default();
        for shard in 0..self.keys.shards() {
            let due_key = self.keys.due_in(shard);
            let (staged, due, claimed, first): (u64, u64, u64, Vec<(String, f64)>) = redis::pipe()
                .cmd("ZCOUNT")
                .arg(&due_key)
                .arg(format!("({now}"))
                .arg("+inf")
                .cmd("ZCOUNT")
                .arg(&due_key)
                .arg("-inf")
                .arg(now)
                .cmd("ZCARD")
                .arg(self.keys.inflight_in(shard))
                .cmd("ZRANGE")
                .arg(&due_key)
                .arg(0)
                .arg(0)
                .arg("WITHSCORES")
                .query_async(&mut r)
                .await?;
            let oldest = first.first().map(|(_, s)| *s as u64).filter(|t| *t <= now);
            total.staged += staged;
            total.due += due;
            total.claimed += claimed;
            total.oldest_due_ms = match (total.oldest_due_ms, oldest) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(total)
    }

    /// How many schedules are due now (their window has ended) and not yet claimed, over every
    /// shard.
    pub async fn due_now(&self) -> Result<u64, redis::RedisError> {
        let mut r = self.redis.clone();
        let now = now_ms();
        let mut n = 0;
        for shard in 0..self.keys.shards() {
            n += r
                .zcount::<_, _, _, u64>(self.keys.due_in(shard), "-inf", now)
                .await?;
        }
        Ok(n)
    }

    /// The due backlog: how many schedules wait and the due time of the oldest (ms).
    pub async fn backlog(&self) -> Result<(u64, Option<u64>), redis::RedisError> {
        let mut r = self.redis.clone();
        let (mut n, mut oldest) = (0, None::<u64>);
        for shard in 0..self.keys.shards() {
            let due = self.keys.due_in(shard);
            n += r.zcard::<_, u64>(&due).await?;
            let first: Vec<(String, f64)> = r.zrange_withscores(&due, 0, 0).await?;
            if let Some(t) = first.first().map(|(_, s)| *s as u64) {
                oldest = Some(oldest.map_or(t, |o| o.min(t)));
            }
        }
        Ok((n, oldest))
    }

    /// How many schedules are due or claimed, over every shard (the sandbox's idleness).
    pub async fn due_or_claimed(&self) -> Result<u64, redis::RedisError> {
        let mut r = self.redis.clone();
        let mut n = 0;
        for shard in 0..self.keys.shards() {
            n += r.zcard::<_, u64>(self.keys.due_in(shard)).await?;
            n += r.zcard::<_, u64>(self.keys.inflight_in(shard)).await?;
        }
        Ok(n)
    }
}
