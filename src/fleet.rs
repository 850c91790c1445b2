//! The fleet as one: "is anything still waiting?" answered from end to end, for an operator
//! draining a backlog, a deploy script and any black-box test.
//!
//! Each worker says what it holds every [`BEAT`] (`fleet:{token}`, expiring after three beats,
//! listed in `fleet` by expiry): deliveries taken from the queue and not acked yet, changes open
//! in its flush, and how many of those wait on a throttled or paced mailbox. [`backlog`] adds
//! the broker's ready messages and Redis's staged, due and claimed schedules. One worker at a
//! time (whichever holds the `fleet:reporter` lease) exports these fleet-wide figures as metrics,
//! so they are not counted once per pod.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::store::Keys;

/// How often a worker says what it holds.
pub const BEAT: Duration = Duration::from_secs(2);

/// What this worker holds now, updated by ingest and the flush as it changes.
#[derive(Debug, Default)]
pub struct Load {
    /// Deliveries received from the work queue and not acked yet.
    pub in_hand: AtomicU64,
    /// Changes open in the flush.
    pub open: AtomicU64,
    /// Of those, the ones whose mailbox waits (`Retry-After`, backoff, or its paced budget).
    pub waiting: AtomicU64,
    /// When the oldest open change was staged, ms since the epoch (0: none).
    pub oldest_open_ms: AtomicU64,
    /// Wakes the report loop at once when the worker starts holding something it did not: a
    /// fleet that looks empty must not be hiding deliveries taken a moment ago.
    pub changed: tokio::sync::Notify,
}

impl Load {
    pub fn new() -> Arc<Load> {
        Arc::new(Load::default())
    }

    /// Deliveries taken from the queue: in hand until acked (reported at once if they are the
    /// first).
    pub fn took(&self, n: u64) {
        if self.in_hand.fetch_add(n, Ordering::Relaxed) == 0 && n > 0 {
            self.changed.notify_one();
        }
    }

    /// Deliveries acked (or given back with the connection).
    pub fn acked(&self, n: u64) {
        let _ = self
            .in_hand
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    pub fn snapshot(&self) -> WorkerLoad {
        let oldest = self.oldest_open_ms.load(Ordering::Relaxed);
        WorkerLoad {
            in_hand: self.in_hand.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            waiting: self.waiting.load(Ordering::Relaxed),
            oldest_open_ms: (oldest > 0).then_some(oldest),
        }
    }
}

/// One worker's load, as it reported it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLoad {
    pub in_hand: u64,
    pub open: u64,
    pub waiting: u64,
    pub oldest_open_ms: Option<u64>,
}

/// Everything still waiting, fleet-wide.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Backlog {
    /// Ready messages on the work queue; `None` when the broker could not be asked.
    pub queued: Option<u64>,
    /// Received by a worker and not acked yet (being staged).
    pub in_hand: u64,
    /// Schedules staged whose window has not closed yet.
    pub staged: u64,
    /// Schedules due and not claimed yet.
    pub due: u64,
    /// Schedules a worker is flushing.
    pub claimed: u64,
    /// Changes open in the workers' flushes.
    pub open_changes: u64,
    /// Of those, the ones waiting on a throttled (or paced) mailbox.
    pub waiting_on_mailboxes: u64,
    /// How long the oldest of all these has waited: the oldest due schedule's time since its
    /// window closed, or the oldest open change's time since it was staged.
    pub oldest_age_seconds: f64,
    /// Workers that reported in the last few seconds.
    pub workers: u64,
    /// Nothing anywhere: every change published so far is in Outlook (or a dead letter). The
    /// workers' parts are as they reported them (at most a [`BEAT`] ago, and at once when they
    /// take new deliveries): wait for it to hold over a few reports before relying on it, as
    /// `outlook-sync backlog --wait-empty` does.
    pub empty: bool,
    pub at: Timestamp,
}

impl Backlog {
    /// `(part, count)` for the metrics and the command line, in pipeline order.
    pub fn parts(&self) -> [(&'static str, Option<u64>); 7] {
        [
            ("queued", self.queued),
            ("in_hand", Some(self.in_hand)),
            ("staged", Some(self.staged)),
            ("due", Some(self.due)),
            ("claimed", Some(self.claimed)),
            ("open_changes", Some(self.open_changes)),
            ("waiting_on_mailboxes", Some(self.waiting_on_mailboxes)),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BacklogError {
    #[error("Redis at {url} did not answer ({source}); the backlog is kept there")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}

/// The workers' reports in Redis.
#[derive(Clone)]
pub struct Fleet {
    redis: crate::store::Redis,
    keys: Keys,
}

impl Fleet {
    pub fn new(redis: crate::store::Redis, keys: Keys) -> Fleet {
        Fleet { redis, keys }
    }

    /// Says what this worker holds (one round trip); it counts for three beats.
    pub async fn beat(&self, token: &str, load: &WorkerLoad) -> Result<(), redis::RedisError> {
        let key = self.keys.fleet_worker(token);
        let ttl = BEAT * 3;
        let expires = crate::window::now_ms() + ttl.as_millis() as u64;
        let json = serde_json::to_string(load).expect("a load serializes");
        let mut r = self.redis.clone();
        redis::pipe()
            .cmd("SET")
            .arg(&key)
            .arg(json)
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .ignore()
            .cmd("ZADD")
            .arg(self.keys.fleet())
            .arg(expires)
            .arg(token)
            .ignore()
            .query_async(&mut r)
            .await
    }

    /// Takes this worker out at once (shutdown), rather than after three beats.
    pub async fn leave(&self, token: &str) {
        let mut r = self.redis.clone();
        let _: Result<(), _> = redis::pipe()
            .cmd("DEL")
            .arg(self.keys.fleet_worker(token))
            .ignore()
            .cmd("ZREM")
            .arg(self.keys.fleet())
            .arg(token)
            .ignore()
            .query_async(&mut r)
            .await;
    }

    /// The loads of the workers that reported recently.
    pub async fn loads(&self) -> Result<Vec<WorkerLoad>, redis::RedisError> {
        let mut r = self.redis.clone();
        let now = crate::window::now_ms();
        let (live,): (Vec<String>,) = redis::pipe()
            .cmd("ZRANGEBYSCORE")
            .arg(self.keys.fleet())
            .arg(now)
            .arg("+inf")
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.keys.fleet())
            .arg("-inf")
            .arg(now)
            .ignore()
            .query_async(&mut r)
            .await?;
        if live.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for token in &live {
            pipe.cmd("GET").arg(self.keys.fleet_worker(token));
        }
        let loads: Vec<Option<String>> = pipe.query_async(&mut r).await?;
        Ok(loads
            .into_iter()
            .flatten()
            .filter_map(|j| serde_json::from_str(&j).ok())
            .collect())
    }
}

/// Everything still waiting, fleet-wide: the broker's queue, the workers' reports and Redis.
pub async fn backlog(cfg: &Config, redis: crate::store::Redis) -> Result<Backlog, BacklogError> {
    let mut probe = QueueProbe::default();
    let b = backlog_with(cfg, redis, &mut probe).await;
    probe.close().await;
    b
}

/// [`backlog`], asking the broker through `probe` (kept open between calls).
async fn backlog_with(
    cfg: &Config,
    redis: crate::store::Redis,
    probe: &mut QueueProbe,
) -> Result<Backlog, BacklogError> {
    let redis_err = |source| BacklogError::Redis {
        url: crate::amqp::redacted(&cfg.redis.url),
        source,
    };
    let keys = crate::store::keys(cfg);
    let windows = crate::window::Windows::new(redis.clone(), keys.clone(), cfg.window());
    let counts = windows.counts().await.map_err(redis_err)?;
    let loads = Fleet::new(redis, keys).loads().await.map_err(redis_err)?;
    let queued = probe.depth(cfg).await;
    let now = crate::window::now_ms();
    let oldest_open = loads.iter().filter_map(|l| l.oldest_open_ms).min();
    let oldest_ms = [counts.oldest_due_ms, oldest_open]
        .into_iter()
        .flatten()
        .min()
        .map(|t| now.saturating_sub(t))
        .unwrap_or(0);
    let in_hand = loads.iter().map(|l| l.in_hand).sum();
    let open_changes = loads.iter().map(|l| l.open).sum();
    let waiting_on_mailboxes = loads.iter().map(|l| l.waiting).sum();
    let mut b = Backlog {
        queued,
        in_hand,
        staged: counts.staged,
        due: counts.due,
        claimed: counts.claimed,
        open_changes,
        waiting_on_mailboxes,
        oldest_age_seconds: oldest_ms as f64 / 1000.0,
        workers: loads.len() as u64,
        empty: false,
        at: Timestamp::now(),
    };
    b.empty = b.parts().iter().all(|(_, n)| *n == Some(0));
    Ok(b)
}

/// Asks the broker how many messages wait on the work queue, over a connection it keeps.
#[derive(Default)]
struct QueueProbe {
    conn: Option<(lapin::Connection, lapin::Channel)>,
    /// In a worker: turns true once its ingest declared the queues. Until then the broker is
    /// not asked (a passive declare of a queue that does not exist closes the channel with an
    /// error).
    declared: Option<tokio::sync::watch::Receiver<bool>>,
    declared_once: bool,
}

impl QueueProbe {
    /// Ready messages on the work queue (a passive declare); `None` if the broker cannot be
    /// asked (it is asked again next time, on a new connection).
    async fn depth(&mut self, cfg: &Config) -> Option<u64> {
        if let Some(d) = &self.declared {
            self.declared_once |= *d.borrow();
            if !self.declared_once {
                return None;
            }
        }
        let ask = async {
            if self
                .conn
                .as_ref()
                .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
            {
                self.close().await;
                let url = cfg.amqp.connection_url();
                let conn = crate::amqp::connect(&url, "outlook-sync backlog")
                    .await
                    .ok()?;
                let ch = conn.create_channel().await.ok()?;
                self.conn = Some((conn, ch));
            }
            let (_, ch) = self.conn.as_ref()?;
            crate::amqp::ready_count(ch, &cfg.amqp.queue).await.ok()
        };
        match tokio::time::timeout(Duration::from_secs(10), ask).await {
            Ok(Some(n)) => Some(u64::from(n)),
            _ => {
                self.close().await;
                None
            }
        }
    }

    /// The channel first: a connection closed under a channel still closing is logged as an
    /// error by lapin.
    async fn close(&mut self) {
        if let Some((conn, ch)) = self.conn.take() {
            if ch.status().connected() {
                let _ = ch.close(200, "done".into()).await;
            }
            let _ = conn.close(200, "done".into()).await;
        }
    }
}

/// A worker's report loop: says what it holds every [`BEAT`], and, while it holds the
/// `fleet-reporter` lease, exports the fleet-wide backlog as metrics (the others export nothing
/// for it). Ends on shutdown, taking the worker out of the fleet.
pub async fn report(
    cfg: Arc<Config>,
    redis: crate::store::Redis,
    token: String,
    load: Arc<Load>,
    metrics: Arc<crate::metrics::Metrics>,
    declared: tokio::sync::watch::Receiver<bool>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let keys = crate::store::keys(&cfg);
    let fleet = Fleet::new(redis.clone(), keys.clone());
    let reporter = crate::store::Leases::new(redis.clone(), BEAT * 3);
    let lease = [(keys.fleet_reporter(), token.clone())];
    let mut probe = QueueProbe {
        declared: Some(declared),
        ..QueueProbe::default()
    };
    loop {
        keep_settings(&cfg, &redis).await;
        if let Err(e) = fleet.beat(&token, &load.snapshot()).await {
            tracing::debug!(error = %e, "fleet: this worker's load was not reported; retried");
        }
        let holds = match reporter.renew(&lease).await {
            Ok(held) if held == [true] => true,
            Ok(_) => reporter.try_take(&lease).await.is_ok_and(|t| t == [true]),
            Err(_) => false,
        };
        let m = &metrics.fleet;
        let found = match holds {
            true => backlog_with(&cfg, redis.clone(), &mut probe).await.ok(),
            false => None,
        };
        match found {
            Some(b) => {
                for (part, n) in b.parts() {
                    let labels = vec![("part", part.to_string())];
                    match n {
                        Some(n) => {
                            m.backlog.get_or_create(&labels).set(n as i64);
                        }
                        None => {
                            m.backlog.remove(&labels);
                        }
                    }
                }
                m.backlog_oldest_age_seconds
                    .get_or_create(&Vec::new())
                    .set(b.oldest_age_seconds);
            }
            _ => {
                m.backlog.clear();
                m.backlog_oldest_age_seconds.clear();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(BEAT) => {}
            _ = load.changed.notified() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            fleet.leave(&token).await;
            reporter.give_back(&lease).await;
            probe.close().await;
            return;
        }
    }
}

/// The settings every worker consuming one work queue must share: a worker with another
/// `redis.key_prefix` would stage into a keyspace no one flushes (or count every company as
/// unknown), another `window.seconds` would flush the same schedules at other times, other names
/// would dead-letter elsewhere. Recorded in Redis by the work queue's name, outside the prefix
/// (`outlook-sync-fleet:{vhost}/{queue}`), for as long as a worker with them runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedSettings {
    pub redis_key_prefix: String,
    /// `redis.shards`: a worker with another count would stage into shards no one claims from.
    #[serde(default = "one_shard")]
    pub redis_shards: u32,
    pub window_seconds: u64,
    pub amqp_exchange: String,
    pub amqp_dead_letter_exchange: String,
    pub amqp_dead_letter_queue: String,
    pub amqp_delivery_limit: u32,
    pub graph_base_url: String,
    pub graph_category: String,
    pub graph_mailbox_request_budget: u32,
    pub graph_mailbox_budget_window_seconds: u64,
}

fn one_shard() -> u32 {
    1
}

impl SharedSettings {
    pub fn of(cfg: &Config) -> SharedSettings {
        SharedSettings {
            redis_key_prefix: cfg.redis.key_prefix.clone(),
            redis_shards: cfg.redis.shards,
            window_seconds: cfg.window.seconds,
            amqp_exchange: cfg.amqp.exchange.clone(),
            amqp_dead_letter_exchange: cfg.amqp.dead_letter_exchange.clone(),
            amqp_dead_letter_queue: cfg.amqp.dead_letter_queue.clone(),
            amqp_delivery_limit: cfg.amqp.delivery_limit,
            graph_base_url: cfg.graph.base_url.clone(),
            graph_category: cfg.graph.category.clone(),
            graph_mailbox_request_budget: cfg.graph.mailbox_request_budget,
            graph_mailbox_budget_window_seconds: cfg.graph.mailbox_budget_window_seconds,
        }
    }

    /// Each setting that differs: (key, this worker's value, the fleet's value).
    pub fn differences(&self, fleet: &SharedSettings) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        let mut cmp = |key: &'static str, mine: String, theirs: String| {
            if mine != theirs {
                out.push((key, mine, theirs));
            }
        };
        cmp(
            "redis.key_prefix",
            self.redis_key_prefix.clone(),
            fleet.redis_key_prefix.clone(),
        );
        cmp(
            "redis.shards",
            self.redis_shards.to_string(),
            fleet.redis_shards.to_string(),
        );
        cmp(
            "window.seconds",
            self.window_seconds.to_string(),
            fleet.window_seconds.to_string(),
        );
        cmp(
            "amqp.exchange",
            self.amqp_exchange.clone(),
            fleet.amqp_exchange.clone(),
        );
        cmp(
            "amqp.dead_letter_exchange",
            self.amqp_dead_letter_exchange.clone(),
            fleet.amqp_dead_letter_exchange.clone(),
        );
        cmp(
            "amqp.dead_letter_queue",
            self.amqp_dead_letter_queue.clone(),
            fleet.amqp_dead_letter_queue.clone(),
        );
        cmp(
            "amqp.delivery_limit",
            self.amqp_delivery_limit.to_string(),
            fleet.amqp_delivery_limit.to_string(),
        );
        cmp(
            "graph.base_url",
            crate::amqp::redacted(&self.graph_base_url),
            crate::amqp::redacted(&fleet.graph_base_url),
        );
        cmp(
            "graph.category",
            self.graph_category.clone(),
            fleet.graph_category.clone(),
        );
        cmp(
            "graph.mailbox_request_budget",
            self.graph_mailbox_request_budget.to_string(),
            fleet.graph_mailbox_request_budget.to_string(),
        );
        cmp(
            "graph.mailbox_budget_window_seconds",
            self.graph_mailbox_budget_window_seconds.to_string(),
            fleet.graph_mailbox_budget_window_seconds.to_string(),
        );
        out
    }
}

/// A worker whose shared settings differ from those of the workers already consuming its queue.
#[derive(Debug, thiserror::Error)]
#[error(
    "this worker's settings differ from those of the workers already consuming {queue}: {}. \
     Workers sharing a work queue must agree on them: give this worker the fleet's values; to \
     change them for the whole fleet, stop every worker first (a Recreate rollout, or scale to 0 \
     and back), so no worker with the old values is left running",
    .differences
        .iter()
        .map(|(k, mine, theirs)| format!("{k} is {mine:?} here and {theirs:?} in the fleet"))
        .collect::<Vec<_>>()
        .join("; ")
)]
pub struct SettingsConflict {
    pub queue: String,
    pub differences: Vec<(&'static str, String, String)>,
}

/// The Redis key of the shared settings of a work queue: by the queue (and vhost), outside any
/// key prefix, since the prefix is one of the settings.
fn settings_key(cfg: &Config) -> String {
    let vhost = url::Url::parse(&cfg.amqp.url)
        .ok()
        .map(|u| u.path().trim_start_matches('/').to_string())
        .unwrap_or_default();
    crate::store::keys::fleet_settings(&vhost, &cfg.amqp.queue)
}

/// How long a record of the shared settings outlives the last worker that refreshed it.
const SETTINGS_TTL: Duration = Duration::from_secs(30);

/// Joins the fleet of the work queue: records this worker's shared settings if no worker runs,
/// else checks them against the fleet's. Refreshed with every report ([`keep_settings`]).
pub async fn join(cfg: &Config, redis: &crate::store::Redis) -> Result<(), JoinError> {
    let key = settings_key(cfg);
    let mine = SharedSettings::of(cfg);
    let json = serde_json::to_string(&mine).expect("settings serialize");
    let mut r = redis.clone();
    let (set, current): (Option<String>, String) = redis::pipe()
        .cmd("SET")
        .arg(&key)
        .arg(&json)
        .arg("NX")
        .arg("PX")
        .arg(SETTINGS_TTL.as_millis() as u64)
        .cmd("GET")
        .arg(&key)
        .query_async(&mut r)
        .await
        .map_err(JoinError::Redis)?;
    if set.is_some() {
        return Ok(());
    }
    let fleet: SharedSettings = match serde_json::from_str(&current) {
        Ok(f) => f,
        // Written by a version with other settings: take it over.
        Err(_) => return Ok(()),
    };
    let differences = mine.differences(&fleet);
    if differences.is_empty() {
        Ok(())
    } else {
        Err(JoinError::Conflict(SettingsConflict {
            queue: cfg.amqp.queue.clone(),
            differences,
        }))
    }
}

/// Why a worker could not join its queue's fleet.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error(transparent)]
    Conflict(SettingsConflict),
    #[error("Redis did not answer while this worker checked its settings against the fleet's: {0}")]
    Redis(redis::RedisError),
}

/// Keeps the shared settings recorded while this worker runs (with each report).
async fn keep_settings(cfg: &Config, redis: &crate::store::Redis) {
    let mut r = redis.clone();
    let _: Result<(), _> = redis::cmd("PEXPIRE")
        .arg(settings_key(cfg))
        .arg(SETTINGS_TTL.as_millis() as u64)
        .query_async(&mut r)
        .await;
}
