//! `/healthz` (the process is alive), `/readyz` (consumer attached and Redis reachable) and
//! `/metrics` (Prometheus).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    pub consumer_ready: tokio::sync::watch::Receiver<bool>,
    pub redis: redis::aio::ConnectionManager,
}

pub fn router(state: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    let consumer = *h.consumer_ready.borrow();
    let mut r = h.redis.clone();
    let redis_ok = redis::cmd("PING")
        .query_async::<String>(&mut r)
        .await
        .is_ok();
    let body = format!("consumer_attached {consumer}\nredis_reachable {redis_ok}\n");
    if consumer && redis_ok {
        (StatusCode::OK, body)
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body)
    }
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        h.metrics.render(),
    )
}
