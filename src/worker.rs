//! A worker: ingest and flush side by side in one process, with `/healthz`, `/readyz` and
//! `/metrics`, until shutdown. Workers are stateless; run as many as the backlog needs.
//!
//! Supervision: neither a RabbitMQ nor a Redis outage ends a worker. Ingest rebuilds its
//! connection with backoff (a stalled broker is noticed by the AMQP heartbeat,
//! `amqp.heartbeat_seconds`); Redis calls time out after `redis.response_timeout_ms` and the
//! connection manager reconnects by itself (also at start: a worker starts while Redis is down
//! and becomes ready when it is back); the flush retries its pass with backoff. Meanwhile
//! `/readyz` says what is missing.
//!
//! Shutdown ([`Worker::stop`]): ingest stops consuming and closes its connection (unacked
//! deliveries go back to the queue); the flush sends nothing new, lets the batches in flight
//! finish, and completes or gives back its claims. If that outlasts the grace period (a slow
//! Graph), the worker abandons the flush and gives its claims back at once, so other workers
//! take them over now; the mailbox leases it held run out within `graph.mailbox_lease_seconds`.
//! Either way nothing is lost: every step of a flush can be retried by any worker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Config;
use crate::graph::client::GraphClient;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::store;
use crate::sync::Flusher;
use crate::window::Windows;

/// Why a worker did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("redis.url cannot be used: {0}")]
    Redis(#[from] redis::RedisError),
    #[error(transparent)]
    Conflict(crate::fleet::SettingsConflict),
}

/// How a [`Worker::stop`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Both loops ended within the grace period.
    pub drained: bool,
    /// Claims given back because the drain did not finish in time.
    pub released_claims: usize,
}

/// The running parts of a worker, for tests and the demo that drive one in-process.
pub struct Worker {
    pub ingest: Arc<Ingest>,
    pub redis: crate::store::Redis,
    pub flusher: Flusher,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    mailbox_lease: Duration,
}

/// How long releasing the claims may take at shutdown.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

fn timeout_error() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "releasing the claims timed out",
    ))
}

impl Worker {
    /// Starts ingest and flush. Fails on an unusable `redis.url`, and when the workers already
    /// consuming the queue run with other shared settings (`fleet::SharedSettings`); an
    /// unreachable Redis or RabbitMQ makes the worker not ready until they are back, never fails
    /// it (the settings are then checked before ingest consumes).
    pub async fn start(mut cfg: Config) -> Result<Worker, StartError> {
        cfg.amqp.url = cfg.amqp.connection_url();
        let cfg = Arc::new(cfg);
        let redis = store::connect_lazy(&cfg)?;
        match tokio::time::timeout(Duration::from_secs(3), crate::fleet::join(&cfg, &redis)).await {
            Ok(Err(crate::fleet::JoinError::Conflict(c))) => return Err(StartError::Conflict(c)),
            // Redis not there yet: checked again before ingest consumes.
            Ok(Err(crate::fleet::JoinError::Redis(_))) | Err(_) | Ok(Ok(())) => {}
        }
        let metrics = Metrics::new();
        let windows = Windows::new(redis.clone(), store::keys(&cfg), cfg.window()).replicated(
            cfg.redis.wait_replicas,
            Duration::from_millis(cfg.redis.wait_timeout_ms),
        );
        let load = crate::fleet::Load::new();
        let ingest =
            Arc::new(Ingest::new((*cfg).clone(), windows, metrics.clone()).with_load(load.clone()));
        let graph = GraphClient::new(&cfg.graph);
        let flusher = Flusher::new(
            cfg.clone(),
            redis.clone(),
            graph.clone(),
            metrics.clone(),
            load.clone(),
        );
        let repairer =
            crate::repair::Repairer::new(cfg.clone(), redis.clone(), graph, metrics.clone());
        let (shutdown, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn({
                let (i, rx) = (ingest.clone(), rx.clone());
                async move { i.run(rx).await }
            }),
            tokio::spawn({
                let (f, rx) = (flusher.clone(), rx.clone());
                async move { f.run(rx).await }
            }),
            // Copies deleted or edited in Outlook come back (`repair`).
            tokio::spawn(repairer.run(rx.clone())),
            // What this worker holds, for the fleet's backlog (and its metrics, from one worker).
            tokio::spawn(crate::fleet::report(
                cfg.clone(),
                redis.clone(),
                flusher.claim_token().to_string(),
                load,
                metrics.clone(),
                ingest.ready(),
                rx.clone(),
            )),
            // The dead-letter queue's depth, for the dashboard and the alerts.
            tokio::spawn(crate::deadletter::watch_depth(
                (*cfg).clone(),
                metrics.clone(),
                ingest.ready(),
                rx.clone(),
            )),
        ];
        Ok(Worker {
            ingest,
            mailbox_lease: Duration::from_secs(cfg.graph.mailbox_lease_seconds),
            redis,
            flusher,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// Stops consuming, lets the flush's batches in flight finish (its claims are completed or
    /// released), and waits up to `grace` for both loops to end. Past `grace`, abandons the
    /// flush and releases this worker's claims (due again at once, for any worker); its mailbox
    /// leases expire by themselves. Returns within `grace` plus a few seconds at most.
    pub async fn stop(mut self, grace: Duration) -> Stopped {
        let stopped = self.drain(grace).await;
        // The last-sync times still held for the write behind.
        let pending = self.flusher.directory().write_pending();
        match tokio::time::timeout(RELEASE_TIMEOUT, pending).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!(error = %e, "worker: last-sync times not written"),
            Err(_) => warn!("worker: writing the last-sync times timed out"),
        }
        stopped
    }

    async fn drain(&mut self, grace: Duration) -> Stopped {
        let started = tokio::time::Instant::now();
        let _ = self.shutdown.send(true);
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let all = futures_util::future::join_all(tasks);
        if tokio::time::timeout(grace, all).await.is_ok() {
            info!(
                elapsed_ms = started.elapsed().as_millis() as u64,
                "worker: drained; the flush's batches in flight finished"
            );
            return Stopped {
                drained: true,
                released_claims: 0,
            };
        }
        for a in &aborts {
            a.abort();
        }
        // Aborted tasks drop their claim and lease renewers at their next await.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let released = tokio::time::timeout(RELEASE_TIMEOUT, self.flusher.release_claims())
            .await
            .unwrap_or_else(|_| Err(timeout_error()));
        let released_claims = match released {
            Ok(n) => {
                self.metrics.shutdown_released_claims.inc_by(n as u64);
                n
            }
            Err(e) => {
                warn!(error = %e, "worker: could not release the claims; they expire by lease");
                0
            }
        };
        warn!(
            grace_ms = grace.as_millis() as u64,
            released_claims,
            mailbox_lease_seconds = self.mailbox_lease.as_secs(),
            "worker: the drain outlasted the grace period; the flush was abandoned and its claims released"
        );
        Stopped {
            drained: false,
            released_claims,
        }
    }

    /// Why the worker cannot go on (its ingest stopped for good: a queue declared with other
    /// arguments), once it cannot; `outlook-sync run` then exits saying so.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.ingest.fatal()
    }

    /// What `/healthz`, `/readyz` and `/metrics` serve.
    pub fn health(&self) -> crate::admin::Health {
        crate::admin::Health {
            metrics: self.metrics.clone(),
            consumer_ready: self.ingest.ready(),
            redis: self.redis.clone(),
            database: self.flusher.directory().directory().db().clone(),
        }
    }

    /// Ends the worker at once, as a crash would: nothing is released (tests of takeover).
    pub fn kill(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Waits for SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
