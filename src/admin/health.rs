//! `/healthz` (the process is alive), `/readyz` (consumer attached and Redis reachable) and
//! `/metrics` (Prometheus).
//!
//! `/healthz` depends on nothing outside the process, so an outage of RabbitMQ or Redis never
//! makes Kubernetes restart a worker (it could not help); `/readyz` reports the outage (503) so
//! it shows on the pod and in `outlook_sync_consumer_attached` / `outlook_sync_redis_reachable`.
//! Every check is bounded in time: a stalled Redis answers `/readyz` with 503 after
//! [`PING_TIMEOUT`], never by hanging the probe.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

/// How long `/readyz` and `/metrics` wait for Redis to answer PING.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub consumer_ready: tokio::sync::watch::Receiver<bool>,
    pub redis: crate::store::Redis,
    /// The directory's PostgreSQL (while it is down, cached companies keep syncing; the admin's
    /// writes answer 503).
    pub database: crate::tenants::db::Db,
}

/// What `/readyz` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    pub consumer_attached: bool,
    pub redis_reachable: bool,
    pub database_reachable: bool,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.consumer_attached && self.redis_reachable && self.database_reachable
    }
}

impl Health {
    /// Checks both dependencies (PING bounded by [`PING_TIMEOUT`]) and records them as gauges.
    pub async fn check(&self) -> Readiness {
        let consumer_attached = *self.consumer_ready.borrow();
        let mut r = self.redis.clone();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut r);
        let database = tokio::time::timeout(PING_TIMEOUT, self.database.ping());
        let (redis, database) = tokio::join!(tokio::time::timeout(PING_TIMEOUT, ping), database);
        let redis_reachable = matches!(redis, Ok(Ok(_)));
        let database_reachable = matches!(database, Ok(true));
        self.metrics
            .consumer_attached
            .set(i64::from(consumer_attached));
        self.metrics.redis_reachable.set(i64::from(redis_reachable));
        self.metrics
            .database_reachable
            .set(i64::from(database_reachable));
        Readiness {
            consumer_attached,
            redis_reachable,
            database_reachable,
        }
    }
}

pub fn router(state: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let r = h.check().await;
    let body = format!(
        "consumer_attached {}\nredis_reachable {}\ndatabase_reachable {}\n",
        r.consumer_attached, r.redis_reachable, r.database_reachable
    );
    if r.ready() {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    h.check().await;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}
