//! The admin HTTP API (JSON, versioned under `/v1`), described by
//! `schemas/admin-api.openapi.yaml`. Every route but the admin-consent callback needs a bearer
//! token from `admin.tokens`; the callback is authenticated by its single-use state.
//!
//! Errors are `{"error": {"code", "message", "message_ja"?}}` with the status of
//! [`AdminError::status`]. No response ever carries a client secret.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::auth::{AdminTokens, require_bearer};
use super::bulk::{self, BulkOptions};
use super::credentials::NewCredentials;
pub use super::errors::ApiError;
use super::jobs::Jobs;
use super::messages;
use super::service::{Admin, AdminError, no_progress};
use crate::secret::Secret;
use crate::tenants::Plan;

#[derive(Clone)]
pub struct ApiState {
    admin: Admin,
    jobs: Jobs,
}

type ApiResult = Result<Response, ApiError>;

fn ok<T: serde::Serialize>(v: T) -> ApiResult {
    Ok(axum::Json(v).into_response())
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::from(AdminError::Invalid {
            code: "invalid_body",
            message: format!("the JSON body is not valid: {e}"),
        })
    })
}

fn flag(q: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match q.get(name).map(|v| v.to_ascii_lowercase()) {
        None => Ok(default),
        Some(v) if v == "true" || v == "1" => Ok(true),
        Some(v) if v == "false" || v == "0" => Ok(false),
        Some(v) => Err(ApiError::from(AdminError::Invalid {
            code: "invalid_query",
            message: format!("{name}={v:?}: use true or false"),
        })),
    }
}

fn accepted(job: super::jobs::JobRecord) -> ApiResult {
    let location = format!("/v1/jobs/{}", job.id);
    let mut resp = (StatusCode::ACCEPTED, axum::Json(job)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

// ---- the route table ----------------------------------------------------------------------

/// Builds the router and, alongside, the list of (method, path) it serves, so a test can hold
/// the OpenAPI document to exactly these routes.
struct Routes {
    router: Router<ApiState>,
    table: Vec<(&'static str, &'static str)>,
}

macro_rules! method {
    ($name:ident, $method:literal) => {
        fn $name<H, T>(mut self, path: &'static str, handler: H) -> Self
        where
            H: Handler<T, ApiState>,
            T: 'static,
        {
            self.table.push(($method, path));
            self.router = self.router.route(path, axum::routing::$name(handler));
            self
        }
    };
}

impl Routes {
    fn new() -> Routes {
        Routes {
            router: Router::new(),
            table: Vec::new(),
        }
    }
    method!(get, "GET");
    method!(put, "PUT");
    method!(post, "POST");
    method!(delete, "DELETE");
}

/// Routes that need a bearer token.
fn protected() -> Routes {
    Routes::new()
        .get("/v1/companies", list_companies)
        .get("/v1/companies/{company}", get_company)
        .put("/v1/companies/{company}", put_company)
        .get("/v1/companies/{company}/microsoft365", get_company)
        .put("/v1/companies/{company}/microsoft365", put_credentials)
        .delete("/v1/companies/{company}/microsoft365", remove_integration)
        .delete(
            "/v1/companies/{company}/microsoft365/credentials",
            delete_credentials,
        )
        .post("/v1/companies/{company}/microsoft365/verify", verify)
        .post("/v1/companies/{company}/microsoft365/enable", enable)
        .post("/v1/companies/{company}/microsoft365/disable", disable)
        .put(
            "/v1/companies/{company}/microsoft365/drift-policy",
            put_drift_policy,
        )
        .post("/v1/companies/{company}/microsoft365/consent", consent_link)
        .get("/v1/companies/{company}/audit", list_audit)
        .get("/v1/companies/{company}/users", list_users)
        .get("/v1/companies/{company}/users/{user}", get_user)
        .put("/v1/companies/{company}/users/{user}", link_user)
        .delete("/v1/companies/{company}/users/{user}", unlink_user)
        .post("/v1/companies/{company}/users/{user}/verify", verify_user)
        .post("/v1/companies/{company}/bulk-links", bulk_links)
        .get("/v1/jobs/{job}", get_job)
}

/// Routes without a bearer token.
fn public() -> Routes {
    Routes::new().get("/v1/consent/callback", consent_callback)
}

/// The dead-letter and ledger operations (`deadletter::api`), under `/v1`, behind the same
/// bearer token.
const DEAD_LETTER_ROUTES: [(&str, &str); 7] = [
    ("GET", "/v1/dlq/messages"),
    ("GET", "/v1/dlq/messages/{id}"),
    ("GET", "/v1/dlq/summary"),
    ("POST", "/v1/dlq/replay"),
    ("POST", "/v1/dlq/purge"),
    ("GET", "/v1/ledger/{company}/{schedule}"),
    ("GET", "/v1/backlog"),
];

/// Every (method, path) the admin API serves, in axum's path syntax (`{company}`).
pub fn routes() -> Vec<(&'static str, &'static str)> {
    let mut all = protected().table;
    all.extend(public().table);
    all.extend(DEAD_LETTER_ROUTES);
    all
}

/// The admin API. Serve it next to `/healthz`, `/readyz` and `/metrics`
/// (`admin::router(health).merge(admin::api::router(admin))`).
pub fn router(admin: Admin) -> Router {
    let tokens = AdminTokens::new(&admin.config().admin.tokens);
    let jobs = Jobs::new(admin.redis.clone(), crate::store::keys(admin.config()));
    let dead_letters = crate::deadletter::api::router(crate::deadletter::api::DlqApi::new(
        admin.config(),
        admin.redis.clone(),
        Some(admin.metrics.clone()),
    ))
    .route_layer(axum::middleware::from_fn_with_state(
        tokens.clone(),
        require_bearer,
    ));
    let audit = axum::middleware::from_fn_with_state(admin.clone(), super::audit::record_writes);
    let state = ApiState { admin, jobs };
    let protected = protected()
        .router
        .route_layer(audit)
        .route_layer(axum::middleware::from_fn_with_state(tokens, require_bearer));
    protected
        .merge(public().router)
        .with_state(state)
        .nest("/v1", dead_letters)
        .fallback(super::errors::unknown_route)
        .layer(axum::middleware::from_fn(super::errors::json_errors))
}

/// The public listener's router (`admin.public_listen`): only the admin-consent callback,
/// which a customer administrator's browser reaches from the internet. Everything else answers
/// 404 there.
pub fn public_router(admin: Admin) -> Router {
    let jobs = Jobs::new(admin.redis.clone(), crate::store::keys(admin.config()));
    public()
        .router
        .with_state(ApiState { admin, jobs })
        .fallback(super::errors::unknown_route)
        .layer(axum::middleware::from_fn(super::errors::json_errors))
}

// ---- handlers -------------------------------------------------------------------------------

async fn list_companies(State(s): State<ApiState>) -> ApiResult {
    s.admin.refresh_secret_expiry_metrics().await?;
    let mut out = Vec::new();
    for id in s
        .admin
        .directory()
        .company_ids()
        .await
        .map_err(AdminError::from)?
    {
        match s.admin.company_status(&id).await {
            Ok(st) => out.push(st),
            Err(AdminError::UnknownCompany(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    ok(serde_json::json!({ "companies": out }))
}

async fn get_company(State(s): State<ApiState>, Path(company): Path<String>) -> ApiResult {
    ok(s.admin.company_status(&company).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutCompany {
    plan: Plan,
    #[serde(default)]
    options: Vec<String>,
}

async fn put_company(
    State(s): State<ApiState>,
    Path(company): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: PutCompany = parse(&body)?;
    ok(s.admin.put_company(&company, b.plan, b.options).await?)
}

/// The credentials body. The secret goes straight into a [`Secret`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutCredentials {
    tenant_id: String,
    client_id: String,
    client_secret: String,
    #[serde(default)]
    secret_expires_at: Option<SecretExpiry>,
}

/// An RFC 3339 instant or a date (`2027-03-31`, taken as the start of that day in UTC).
#[derive(Deserialize)]
#[serde(untagged)]
enum SecretExpiry {
    At(jiff::Timestamp),
    Day(jiff::civil::Date),
}

async fn put_credentials(
    State(s): State<ApiState>,
    Path(company): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: PutCredentials = parse(&body)?;
    let expires = match b.secret_expires_at {
        None => None,
        Some(SecretExpiry::At(t)) => Some(t),
        Some(SecretExpiry::Day(d)) => Some(
            jiff::tz::TimeZone::UTC
                .to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
                .map_err(|e| {
                    ApiError::from(AdminError::Invalid {
                        code: "invalid_body",
                        message: format!("secret_expires_at: {e}"),
                    })
                })?,
        ),
    };
    let new = NewCredentials {
        tenant_id: b.tenant_id,
        client_id: b.client_id,
        client_secret: Secret::new(b.client_secret),
        secret_expires_at: expires,
    };
    ok(s.admin.set_credentials(&company, new).await?)
}

async fn delete_credentials(State(s): State<ApiState>, Path(company): Path<String>) -> ApiResult {
    ok(s.admin.remove_credentials(&company).await?)
}

async fn remove_integration(
    State(s): State<ApiState>,
    Path(company): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let delete_copies = flag(&q, "delete_copies", true)?;
    // Fail fast on what would fail in the job.
    let status = s.admin.company_status(&company).await?;
    if delete_copies && status.credentials.is_none() {
        return Err(ApiError::from(AdminError::Conflict {
            code: "no_credentials",
            message: "the copies cannot be deleted without working credentials: set them, or pass delete_copies=false".into(),
        }));
    }
    let admin = s.admin.clone();
    let id = company.clone();
    let job = s
        .jobs
        .spawn("remove_integration", &company, move |progress| async move {
            admin.remove_integration(&id, delete_copies, progress).await
        })
        .await?;
    accepted(job)
}

async fn verify(State(s): State<ApiState>, Path(company): Path<String>) -> ApiResult {
    ok(s.admin.verify_credentials(&company).await?)
}

async fn enable(State(s): State<ApiState>, Path(company): Path<String>) -> ApiResult {
    ok(s.admin.enable(&company).await?)
}

async fn disable(State(s): State<ApiState>, Path(company): Path<String>) -> ApiResult {
    ok(s.admin.disable(&company).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutDriftPolicy {
    policy: crate::tenants::DriftPolicy,
}

async fn put_drift_policy(
    State(s): State<ApiState>,
    Path(company): Path<String>,
    body: Bytes,
) -> ApiResult {
    let b: PutDriftPolicy = parse(&body)?;
    ok(s.admin.set_drift_policy(&company, b.policy).await?)
}

async fn consent_link(State(s): State<ApiState>, Path(company): Path<String>) -> ApiResult {
    ok(s.admin.consent_link(&company).await?)
}

async fn consent_callback(
    State(s): State<ApiState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let page = |status: StatusCode, ja: &str, en: &str| {
        let html = format!(
            "<!DOCTYPE html><html lang=\"ja\"><head><meta charset=\"utf-8\"><title>cyzen × Microsoft 365</title></head><body><h1>{}</h1><p>{}</p></body></html>",
            html_escape(ja),
            html_escape(en)
        );
        (status, Html(html)).into_response()
    };
    match s.admin.consent_callback(&q).await {
        Ok(o) if o.consent.granted => page(
            StatusCode::OK,
            "管理者の同意が記録されました。このウィンドウを閉じてcyzenに戻ってください。",
            "Admin consent was recorded. Close this window and return to cyzen.",
        ),
        Ok(o) => page(
            StatusCode::OK,
            "管理者の同意は得られませんでした。cyzenの設定画面で内容を確認してください。",
            &format!(
                "Admin consent was not granted ({}). See cyzen's settings.",
                o.consent.error.as_deref().unwrap_or("refused")
            ),
        ),
        Err(e) => page(
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            messages::reason(e.code()).ja,
            &e.to_string(),
        ),
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The company's audit, newest first (`limit`: 1..=1000, default 100). Listed for a company
/// removed since, too.
async fn list_audit(
    State(s): State<ApiState>,
    Path(company): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    use crate::tenants::AuditLog;
    let limit = match q.get("limit").map(|v| v.parse::<i64>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::from(AdminError::Invalid {
                code: "invalid_query",
                message: "limit must be a number from 1 to 1000".into(),
            }));
        }
    };
    let entries = s
        .admin
        .directory()
        .audit(&company, limit)
        .await
        .map_err(AdminError::from)?;
    ok(serde_json::json!({ "company": company, "entries": entries }))
}

async fn list_users(State(s): State<ApiState>, Path(company): Path<String>) -> ApiResult {
    ok(serde_json::json!({ "users": s.admin.list_users(&company).await? }))
}

async fn get_user(
    State(s): State<ApiState>,
    Path((company, user)): Path<(String, String)>,
) -> ApiResult {
    ok(s.admin.user(&company, &user).await?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LinkBody {
    mailbox: String,
}

async fn link_user(
    State(s): State<ApiState>,
    Path((company, user)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let b: LinkBody = parse(&body)?;
    ok(s.admin.link_user(&company, &user, &b.mailbox).await?)
}

async fn unlink_user(
    State(s): State<ApiState>,
    Path((company, user)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult {
    let delete_copies = flag(&q, "delete_copies", false)?;
    let admin = s.admin.clone();
    ok(detached(async move {
        admin
            .unlink_user(&company, &user, delete_copies, no_progress())
            .await
    })
    .await?)
}

/// Runs an operation that changes state in a task of its own: a client that hangs up, or the
/// per-request timeout, does not cut it short half way.
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = Result<T, AdminError>> + Send + 'static,
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
        .map_err(ApiError::from)
}

async fn verify_user(
    State(s): State<ApiState>,
    Path((company, user)): Path<(String, String)>,
) -> ApiResult {
    ok(s.admin.verify_user(&company, &user).await?)
}

async fn bulk_links(
    State(s): State<ApiState>,
    Path(company): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> ApiResult {
    let opts = BulkOptions {
        dry_run: flag(&q, "dry_run", false)?,
        delete_copies: flag(&q, "delete_copies", false)?,
    };
    let text = bulk::decode_csv(&body)?;
    let (rows, bad) = bulk::parse_csv(&text);
    if rows.len() + bad.len() <= s.admin.config().admin.bulk_sync_max_rows {
        let admin = s.admin.clone();
        return ok(
            detached(async move { admin.bulk(&company, &text, opts, no_progress()).await }).await?,
        );
    }
    s.admin.company_status(&company).await?;
    let admin = s.admin.clone();
    let id = company.clone();
    let kind = if opts.dry_run {
        "bulk_preflight"
    } else {
        "bulk_links"
    };
    let job = s
        .jobs
        .spawn(kind, &company, move |progress| async move {
            admin.bulk(&id, &text, opts, progress).await
        })
        .await?;
    accepted(job)
}

async fn get_job(State(s): State<ApiState>, Path(job): Path<String>) -> ApiResult {
    ok(s.jobs.get(&job).await?)
}
