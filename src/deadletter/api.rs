//! The dead-letter operations and the sync ledger over HTTP (JSON). This router has **no
//! authentication of its own**: mount it behind the admin API's bearer-token check.
//!
//! | method and path | does | answers |
//! |---|---|---|
//! | `GET /dlq/messages?company=&schedule=&mailbox=&reason=&stage=&status=&code=&since=&until=&id=` | list (non-destructive) | [`Listing`] |
//! | `GET /dlq/summary?…same filters…` | counts by reason, company, stage | [`Summary`] |
//! | `GET /dlq/messages/{id}` | whole records (dead-letter id, prefix, or event id) | `[Record]` |
//! | `POST /dlq/replay` with a [`ReplayRequest`] | replay (or `"dry_run": true`) | [`ReplayReport`] |
//! | `POST /dlq/purge` with a [`PurgeBody`] (`"confirm": true` and `"expected"` required) | purge, archived to `dlq.archive_dir` | [`PurgeReport`] |
//! | `GET /ledger/{company}/{schedule}?target=&limit=` | why the schedule is (not) in Outlook | [`SyncView`] |
//! | `GET /backlog` | everything still waiting, fleet-wide | [`Backlog`](crate::fleet::Backlog) |
//!
//! `since` and `until` take RFC 3339 or an age (`2h`, `7d`); `id` takes several ids separated
//! by commas. Errors answer the admin API's shape (`{"error": {"code", "message",
//! "message_ja"}}`, `admin::errors`): 400 `invalid_request`, 404 `dead_letter_not_found`, 409
//! `dlq_busy` (another dead-letter operation is running) or `purge_count_changed`, 422
//! `purge_not_confirmed`, 502 `dlq_publish_refused`, 503 `dlq_unavailable`.
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
use serde::Deserialize;

use super::ops::{Archive, Dlq, DlqError, PurgeRequest, ReplayRequest};
use super::queue::Control;
use super::record::{Filter, parse_time};
use crate::admin::errors::ApiError;
use crate::config::Config;
use crate::ledger::{self, EntryFilter, LedgerError};
use crate::metrics::Metrics;

/// The router's state.
#[derive(Clone)]
pub struct DlqApi {
    dlq: Dlq,
    cfg: Arc<Config>,
    redis: crate::store::Redis,
}

impl DlqApi {
    pub fn new(cfg: &Config, redis: crate::store::Redis, metrics: Option<Arc<Metrics>>) -> Self {
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
        .route("/backlog", get(backlog))
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
            s.map(|s| parse_time(&s, now).map_err(|e| bad(format!("{name}: {e}"))))
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
    /// Required: what the operator saw when they listed (`GET /dlq/messages`), either how many
    /// dead letters matched or their ids. The purge is refused (409, with the current count)
    /// when what matches now differs.
    pub expected: Option<Expected>,
    /// Must be true: a purge removes dead letters from the queue.
    pub confirm: bool,
}

/// What the operator was shown before a purge.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Expected {
    /// How many matched.
    Count(usize),
    /// The ids of the dead letters that matched.
    Ids(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerQuery {
    pub target: Option<String>,
    pub limit: Option<usize>,
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", m)
}

/// A dead-letter error in the admin API's error shape.
fn dlq_error(e: DlqError) -> ApiError {
    let (status, code) = match &e {
        DlqError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        DlqError::NotFound(_) => (StatusCode::NOT_FOUND, "dead_letter_not_found"),
        DlqError::Busy { .. } => (StatusCode::CONFLICT, "dlq_busy"),
        DlqError::Publish { .. } => (StatusCode::BAD_GATEWAY, "dlq_publish_refused"),
        DlqError::Archive { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "dlq_archive_failed"),
        DlqError::Amqp(_)
        | DlqError::Redis(_)
        | DlqError::NoQueue { .. }
        | DlqError::Interrupted
        | DlqError::LockLost => (StatusCode::SERVICE_UNAVAILABLE, "dlq_unavailable"),
    };
    ApiError::new(status, code, e.to_string())
}

fn ledger_error(e: LedgerError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "ledger_unavailable",
        e.to_string(),
    )
}

/// Runs an operation in its own task: a client that hangs up does not cut a rotation short.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, DlqError>> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::spawn(f)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("the operation failed: {e}"),
            )
        })?
        .map_err(dlq_error)
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
    let expected = match (body.confirm, body.expected) {
        (true, Some(e)) => e,
        _ => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "purge_not_confirmed",
                "a purge needs \"confirm\": true and \"expected\": list first (GET /dlq/messages with the same filter), then pass how many you saw, or their ids, as \"expected\"",
            ));
        }
    };
    if body.filter.is_empty() && !body.all && !matches!(expected, Expected::Ids(_)) {
        return Err(bad(
            "an empty filter would purge every dead letter; say so explicitly (\"all\": true)",
        ));
    }
    // What matches now, against what the operator saw: exactly those are purged, or nothing.
    let listing = {
        let (dlq, filter) = (s.dlq.clone(), body.filter.clone());
        detached(async move { dlq.list(&filter).await }).await?
    };
    let now: Vec<String> = match &expected {
        Expected::Count(_) => listing.records.iter().map(|r| r.id.clone()).collect(),
        Expected::Ids(ids) => listing
            .records
            .iter()
            .filter(|r| ids.contains(&r.id))
            .map(|r| r.id.clone())
            .collect(),
    };
    let wanted = match &expected {
        Expected::Count(n) => *n,
        Expected::Ids(ids) => ids.len(),
    };
    if now.len() != wanted {
        let n = now.len();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "purge_count_changed",
            format!(
                "{n} dead letter(s) match now, not the {wanted} you expected; nothing was purged: list them again and confirm what you see"
            ),
        )
        .with_ja(format!(
            "現在 {n} 件が該当し、確認した {wanted} 件と異なるため、何も削除していません。一覧を取得し直して確認してください"
        )));
    }
    let req = PurgeRequest {
        filter: body.filter,
        all: body.all,
        expected: Some(now),
        archive: Archive::Default,
    };
    let v = detached(async move { s.dlq.purge(&req, &Control::new(), &mut |_| {}).await }).await?;
    Ok(Json(v).into_response())
}

/// Everything still waiting, fleet-wide (`fleet::backlog`).
async fn backlog(State(s): State<DlqApi>) -> Result<Response, ApiError> {
    let b = crate::fleet::backlog(&s.cfg, s.redis.clone())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "backlog_unavailable",
                e.to_string(),
            )
        })?;
    Ok(Json(b).into_response())
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
    let v = ledger::sync_view(&s.cfg, s.redis.clone(), &company, &schedule, &filter)
        .await
        .map_err(ledger_error)?;
    Ok(Json(v).into_response())
}
