//! The dead-letter operations and the sync ledger over HTTP (JSON). This router has **no
//! authentication of its own**: mount it behind the admin API's bearer-token check.
//!
//! | method and path | does | answers |
//! |---|---|---|
//! | `GET /dlq/messages?company=&schedule=&mailbox=&reason=&stage=&status=&code=&since=&until=&id=` | list (non-destructive) | [`Listing`] |
//! | `GET /dlq/summary?…same filters…` | counts by reason, company, stage | [`Summary`] |
//! | `GET /dlq/messages/{id}` | whole records (dead-letter id, prefix, or event id) | `[Record]` |
//! | `POST /dlq/replay` with a [`ReplayRequest`] | replay (or `"dry_run": true`) | [`ReplayReport`] |
//! | `POST /dlq/purge` with a [`PurgeBody`] (`"confirm": true` required) | purge, archived to `dlq.archive_dir` | [`PurgeReport`] |
//! | `GET /ledger/{company}/{schedule}?target=&limit=` | why the schedule is (not) in Outlook | [`SyncView`] |
//!
//! `since` and `until` take RFC 3339 or an age (`2h`, `7d`); `id` takes several ids separated
//! by commas. Errors answer `{"error": "…"}`: 400 (a bad request), 404 (no such dead letter),
//! 409 (another dead-letter operation is running), 502 (RabbitMQ refused a republish), 503
//! (RabbitMQ or Redis unreachable).
//!
//! [`Listing`]: super::ops::Listing
//! [`Summary`]: super::ops::Summary
//! [`ReplayReport`]: super::ops::ReplayReport
//! [`PurgeReport`]: super::ops::PurgeReport
//! [`SyncView`]: crate::ledger::SyncView

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use redis::aio::ConnectionManager;
use serde::Deserialize;

use super::ops::{Archive, Dlq, DlqError, PurgeRequest, ReplayRequest};
use super::queue::Control;
use super::record::{Filter, parse_time};
use crate::config::Config;
use crate::ledger::{self, EntryFilter, LedgerError};
use crate::metrics::Metrics;

/// The router's state.
#[derive(Clone)]
pub struct DlqApi {
    dlq: Dlq,
    cfg: Arc<Config>,
    redis: ConnectionManager,
}

impl DlqApi {
    pub fn new(cfg: &Config, redis: ConnectionManager, metrics: Option<Arc<Metrics>>) -> Self {
        let mut dlq = Dlq::new(cfg, redis.clone());
        if let Some(m) = metrics {
            dlq = dlq.with_metrics(m);
        }
        Self {
            dlq,
            cfg: Arc::new(cfg.clone()),
            redis,
        }
    }
}

/// The routes, state applied, unauthenticated: mount behind the admin authentication.
pub fn router(state: DlqApi) -> Router {
    Router::new()
        .route("/dlq/messages", get(list))
        .route("/dlq/messages/{id}", get(show))
        .route("/dlq/summary", get(summary))
        .route("/dlq/replay", post(replay))
        .route("/dlq/purge", post(purge))
        .route("/ledger/{company}/{schedule}", get(ledger_view))
        .with_state(state)
}

/// Query-string filters (all optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterQuery {
    /// Comma-separated ids.
    pub id: Option<String>,
    pub company: Option<String>,
    pub schedule: Option<String>,
    pub mailbox: Option<String>,
    pub reason: Option<String>,
    pub stage: Option<String>,
    pub status: Option<u16>,
    pub code: Option<String>,
    pub since: Option<String>,
    pub until: Option<String>,
}

impl FilterQuery {
    fn filter(self) -> Result<Filter, ApiError> {
        let now = jiff::Timestamp::now();
        let time = |s: Option<String>, name: &str| {
            s.map(|s| parse_time(&s, now).map_err(|e| ApiError::bad(format!("{name}: {e}"))))
                .transpose()
        };
        Ok(Filter {
            ids: self
                .id
                .map(|s| {
                    s.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
            company: self.company,
            schedule: self.schedule,
            mailbox: self.mailbox,
            reason: self.reason,
            stage: self.stage,
            graph_status: self.status,
            graph_code: self.code,
            since: time(self.since, "since")?,
            until: time(self.until, "until")?,
        })
    }
}

/// `POST /dlq/purge`: the API always archives (to `dlq.archive_dir`).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PurgeBody {
    pub filter: Filter,
    pub all: bool,
    /// The dead-letter ids the caller was shown and means to purge (recommended: list first).
    pub expected: Option<Vec<String>>,
    /// Must be true: a purge removes dead letters from the queue.
    pub confirm: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerQuery {
    pub target: Option<String>,
    pub limit: Option<usize>,
}

/// An error as JSON with its status.
pub struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(m: impl Into<String>) -> Self {
        ApiError(StatusCode::BAD_REQUEST, m.into())
    }
}

impl From<DlqError> for ApiError {
    fn from(e: DlqError) -> Self {
        let status = match &e {
            DlqError::Invalid(_) => StatusCode::BAD_REQUEST,
            DlqError::NotFound(_) => StatusCode::NOT_FOUND,
            DlqError::Busy { .. } => StatusCode::CONFLICT,
            DlqError::Publish { .. } => StatusCode::BAD_GATEWAY,
            DlqError::Archive { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            DlqError::Amqp(_)
            | DlqError::Redis(_)
            | DlqError::NoQueue { .. }
            | DlqError::Interrupted
            | DlqError::LockLost => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, e.to_string())
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

/// Runs an operation in its own task: a client that hangs up does not cut a rotation short.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, DlqError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(f)
        .await
        .map_err(|e| {
            ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the operation failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

async fn list(State(s): State<DlqApi>, Query(q): Query<FilterQuery>) -> Result<Response, ApiError> {
    let filter = q.filter()?;
    let l = detached(async move { s.dlq.list(&filter).await }).await?;
    Ok(Json(l).into_response())
}

async fn summary(
    State(s): State<DlqApi>,
    Query(q): Query<FilterQuery>,
) -> Result<Response, ApiError> {
    let filter = q.filter()?;
    let v = detached(async move { s.dlq.summary(&filter).await }).await?;
    Ok(Json(v).into_response())
}

async fn show(State(s): State<DlqApi>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let v = detached(async move { s.dlq.show(&id).await }).await?;
    Ok(Json(v).into_response())
}

async fn replay(
    State(s): State<DlqApi>,
    Json(req): Json<ReplayRequest>,
) -> Result<Response, ApiError> {
    let v = detached(async move { s.dlq.replay(&req, &Control::new(), &mut |_| {}).await }).await?;
    Ok(Json(v).into_response())
}

async fn purge(State(s): State<DlqApi>, Json(body): Json<PurgeBody>) -> Result<Response, ApiError> {
    if !body.confirm {
        return Err(ApiError::bad(
            "a purge needs \"confirm\": true (list first, GET /dlq/messages, and pass the ids you mean as \"expected\")",
        ));
    }
    let req = PurgeRequest {
        filter: body.filter,
        all: body.all,
        expected: body.expected,
        archive: Archive::Default,
    };
    let v = detached(async move { s.dlq.purge(&req, &Control::new(), &mut |_| {}).await }).await?;
    Ok(Json(v).into_response())
}

async fn ledger_view(
    State(s): State<DlqApi>,
    Path((company, schedule)): Path<(String, String)>,
    Query(q): Query<LedgerQuery>,
) -> Result<Response, ApiError> {
    let filter = EntryFilter {
        target: q.target,
        limit: q.limit,
    };
    let v = ledger::sync_view(&s.cfg, s.redis.clone(), &company, &schedule, &filter).await?;
    Ok(Json(v).into_response())
}
