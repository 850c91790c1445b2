//! The flush: claimed schedules in, Outlook copies written, as one continuous scheduler per
//! worker. Read top to bottom:
//!
//! 1. [`intake`] claims due schedules (while the worker has room for more open changes), reads
//!    their staged state and copies, and plans the changes per mailbox ([`plan`], pure);
//! 2. the [`engine`] queues each change in its mailbox's queue ([`batch`]), leases the mailbox
//!    (exclusively, across workers) only while it sends to it or waits out its `Retry-After`,
//!    re-reads the copies under the lease (a copy another worker moved on is left alone: no
//!    regression), records each create's transactionId before the create is sent (no
//!    duplicates), and sends one `$batch` at a time per mailbox (at most 4 requests in flight);
//! 3. each answer goes through [`outcome::decide`] (pure): the next step, the finished copy, a
//!    retry after the mailbox waits, or a dead letter;
//! 4. the engine settles: copies recorded, claims completed (or released to be retried), ledger
//!    entries written, idle mailbox leases given back.
//!
//! The plan is recomputed from state every time (staged revision vs. the copy's applied
//! revision), so any step may be retried, by any worker, after any crash.

pub mod batch;
mod dead;
mod engine;
pub mod intake;
pub mod outcome;
pub mod plan;
mod work;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::amqp::{self, Publisher};
use crate::config::Config;
use crate::graph::client::GraphClient;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::runtime::{AbortOnDrop, Backoff};
use crate::store::{self, Copies, MailboxLeases, Member};
use crate::tenants::{Directory, DirectoryCache};
use crate::window::Windows;

pub use intake::FlushReport;

/// A worker's flush; cheap to clone.
#[derive(Clone)]
pub struct Flusher {
    shared: Arc<Shared>,
}

/// What every part of the flush uses.
pub(crate) struct Shared {
    pub cfg: Arc<Config>,
    pub windows: Windows,
    /// This worker's copy of the directory (no database call on the hot path).
    pub directory: DirectoryCache,
    pub copies: Copies,
    pub leases: MailboxLeases,
    pub ledger: Ledger,
    pub graph: GraphClient,
    pub metrics: Arc<Metrics>,
    /// This worker's claim token.
    pub token: String,
    pub default_zone: jiff::tz::TimeZone,
    /// What this worker holds, for the fleet's backlog (`open`, `waiting`, `oldest_open_ms`).
    pub load: Arc<crate::fleet::Load>,
    /// The flush's own AMQP connection for dead letters, opened on first use.
    dead_letters: tokio::sync::Mutex<Option<(lapin::Connection, Arc<Publisher>)>>,
}

impl Flusher {
    pub fn new(
        cfg: Arc<Config>,
        redis: crate::store::Redis,
        graph: GraphClient,
        metrics: Arc<Metrics>,
        load: Arc<crate::fleet::Load>,
    ) -> Self {
        let keys = store::keys(&cfg);
        let default_zone =
            jiff::tz::TimeZone::get(&cfg.graph.default_time_zone).expect("validated in config");
        let shared = Shared {
            windows: Windows::new(redis.clone(), keys.clone(), cfg.window()),
            directory: DirectoryCache::start(Directory::from_config(&cfg), &cfg.database),
            copies: Copies::new(redis.clone(), keys.clone()),
            ledger: Ledger::from_config(redis.clone(), &cfg).with_metrics(metrics.clone()),
            leases: MailboxLeases::new(
                redis,
                keys,
                Duration::from_secs(cfg.graph.mailbox_lease_seconds),
                cfg.mailbox_budget(),
            ),
            graph,
            metrics,
            token: format!(
                "{}-{}",
                std::process::id(),
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            default_zone,
            load,
            dead_letters: tokio::sync::Mutex::new(None),
            cfg,
        };
        info!(
            window_seconds = shared.cfg.window.seconds,
            graph = %shared.cfg.graph.base_url,
            "flush: running"
        );
        Self {
            shared: Arc::new(shared),
        }
    }

    /// This worker's copy of the directory.
    pub fn directory(&self) -> &DirectoryCache {
        &self.shared.directory
    }

    /// This worker's claim token (the owner recorded for its claims; shutdown releases them).
    pub fn claim_token(&self) -> &str {
        &self.shared.token
    }

    /// Gives back every claim this worker holds (shutdown): they are due again at once.
    pub async fn release_claims(&self) -> Result<usize, redis::RedisError> {
        let s = &self.shared;
        let mine = s.windows.claimed_by(&s.token).await?;
        s.windows.release(&s.token, &mine, Duration::ZERO).await
    }

    /// Flushes due schedules until `shutdown` turns true; then sends nothing new, lets the
    /// batches in flight finish, and gives back the claims still open.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let s = &*self.shared;
        let mut e = engine::Engine::new(s);
        let _claims = AbortOnDrop(self.renew_claims(e.claims()));
        let _leases = s.leases.leases().keep_renewed(e.leases(), None);
        let poll = Duration::from_millis(s.cfg.window.poll_interval_ms);
        let mut next_claim = Instant::now();
        let mut errors = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut progress = Progress::new();
        let mut last_load = Instant::now();
        let mut claiming: Option<ClaimFuture> = None;
        loop {
            let stopping = *shutdown.borrow();
            if stopping && e.idle() && claiming.is_none() {
                break;
            }
            if !stopping {
                e.step().await;
            }
            e.settle().await;
            progress.log(&mut e);
            if last_load.elapsed() >= Duration::from_secs(1) {
                e.report_load();
                last_load = Instant::now();
            }
            // Take more work while there is room for it; claiming runs beside the sending, so a
            // slow intake never delays a batch.
            let room = !stopping && e.has_room();
            if room && claiming.is_none() && Instant::now() >= next_claim {
                let (this, n) = (self.clone(), s.cfg.window.claim_batch);
                claiming = Some(Box::pin(
                    async move { intake::intake(&this.shared, n).await },
                ));
            }
            let wake = e
                .next_wake((room && claiming.is_none()).then_some(next_claim))
                .max(Instant::now() + Duration::from_millis(1));
            tokio::select! {
                Some(done) = e.inflight.next(), if !e.inflight.is_empty() => e.complete(done).await,
                res = async { claiming.as_mut().expect("checked").await }, if claiming.is_some() => {
                    claiming = None;
                    match res {
                        Ok(i) if i.is_empty() => {
                            e.set_more_coming(false);
                            next_claim = Instant::now() + poll;
                            s.observe_backlog().await;
                        }
                        Ok(i) => {
                            // A full claim means more is due: short queues wait for it.
                            e.set_more_coming(i.len() >= s.cfg.window.claim_batch);
                            e.add(i);
                            errors.reset();
                        }
                        Err(err) => {
                            let wait = errors.delay();
                            warn!(error = %err, redis = %crate::amqp::redacted(&s.cfg.redis.url), retry_in_ms = wait.as_millis() as u64, "flush: Redis did not answer while claiming due schedules; trying again");
                            next_claim = Instant::now() + wait;
                        }
                    }
                }
                _ = tokio::time::sleep_until(wake) => {}
                _ = shutdown.changed(), if !stopping => {}
            }
        }
        e.abandon();
        e.settle().await;
        e.report_load();
    }

    /// Renews this worker's claims every third of the claim lease until dropped.
    fn renew_claims(
        &self,
        claims: Arc<std::sync::Mutex<HashSet<Member>>>,
    ) -> tokio::task::JoinHandle<()> {
        let s = self.shared.clone();
        tokio::spawn(async move {
            let lease = s.claim_lease();
            loop {
                tokio::time::sleep(lease / 3).await;
                let now: Vec<Member> = claims.lock().expect("claims").iter().cloned().collect();
                if let Err(e) = s.windows.renew(&s.token, &now, lease).await {
                    warn!(error = %e, "flush: claims not renewed");
                }
            }
        })
    }
}

type ClaimFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<intake::Intake, redis::RedisError>> + Send>,
>;

/// The flush's progress line, every 10 s while it works.
struct Progress {
    last: Instant,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            last: Instant::now(),
        }
    }

    fn log(&mut self, e: &mut engine::Engine<'_>) {
        if self.last.elapsed() < Duration::from_secs(10) || *e.report() == FlushReport::default() {
            return;
        }
        let r = e.take_report();
        info!(
            creates = r.creates,
            updates = r.updates,
            deletes = r.deletes,
            dead_letters = r.dead_letters,
            skipped = r.skipped,
            open = e.open(),
            "flush: progress"
        );
        self.last = Instant::now();
    }
}

impl Shared {
    pub fn claim_lease(&self) -> Duration {
        Duration::from_secs(self.cfg.window.claim_lease_seconds)
    }

    /// The per-mailbox backoff of retryable failures without `Retry-After`.
    pub fn backoff_schedule(&self) -> backon::ExponentialBackoff {
        crate::runtime::schedule(
            Duration::from_millis(self.cfg.retry.initial_backoff_ms),
            Duration::from_millis(self.cfg.retry.max_backoff_ms),
        )
    }

    async fn observe_backlog(&self) {
        if let Ok((n, oldest)) = self.windows.backlog().await {
            self.metrics.due_backlog.set(n as i64);
            let age = oldest
                .map(|due| (crate::window::now_ms().saturating_sub(due)) as f64 / 1000.0)
                .unwrap_or(0.0);
            self.metrics.due_oldest_age_seconds.set(age);
        }
    }

    /// The dead-letter publisher, connecting on first use (and again after a disconnect).
    pub async fn publisher(&self) -> Result<Arc<Publisher>, amqp::AmqpError> {
        let mut slot = self.dead_letters.lock().await;
        if let Some((conn, p)) = slot.as_ref()
            && conn.status().connected()
        {
            return Ok(p.clone());
        }
        let conn = amqp::connect(&self.cfg.amqp.url, "outlook-sync flush").await?;
        let p = Arc::new(Publisher::new(&conn).await?);
        *slot = Some((conn, p.clone()));
        Ok(p)
    }
}
