//! A worker: ingest and flush side by side in one process, with `/healthz`, `/readyz` and
//! `/metrics`, until shutdown. Workers are stateless; run as many as the backlog needs.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use crate::config::Config;
use crate::flush::Flusher;
use crate::graph::client::GraphClient;
use crate::ingest::Ingest;
use crate::metrics::Metrics;
use crate::window::Windows;

/// Connects to Redis with the configured response timeout; the manager reconnects by itself.
pub async fn redis(cfg: &Config) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
    let client = redis::Client::open(cfg.redis.url.as_str())?;
    let mcfg = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(cfg.redis.response_timeout_ms)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(5));
    client.get_connection_manager_with_config(mcfg).await
}

/// The running parts of a worker, for tests and the demo that drive one in-process.
pub struct Worker {
    pub ingest: Arc<Ingest>,
    pub redis: redis::aio::ConnectionManager,
    pub flusher: Flusher,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Worker {
    /// Starts ingest and flush. Fails only if Redis cannot be reached at start.
    pub async fn start(cfg: Config) -> Result<Worker, redis::RedisError> {
        let cfg = Arc::new(cfg);
        let redis = redis(&cfg).await?;
        let metrics = Metrics::new();
        let windows = Windows::new(redis.clone(), &cfg.redis.key_prefix, cfg.window());
        let ingest = Arc::new(Ingest::new((*cfg).clone(), windows, metrics.clone()));
        let flusher = Flusher::new(
            cfg.clone(),
            redis.clone(),
            GraphClient::new(&cfg.graph),
            metrics.clone(),
        );
        crate::flush::announce(&cfg);
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
        ];
        Ok(Worker {
            ingest,
            redis,
            flusher,
            metrics,
            shutdown,
            tasks,
        })
    }

    /// Stops consuming, lets the current flush pass finish (its claims are completed or
    /// released), and waits up to `grace` for both loops to end.
    pub async fn stop(self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let all = futures_util::future::join_all(self.tasks);
        if tokio::time::timeout(grace, all).await.is_err() {
            info!("worker: drain exceeded the grace period; unfinished claims expire by lease");
        }
    }

    /// What `/healthz`, `/readyz` and `/metrics` serve.
    pub fn health(&self) -> crate::admin::Health {
        crate::admin::Health {
            metrics: self.metrics.clone(),
            consumer_ready: self.ingest.ready(),
            redis: self.redis.clone(),
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
