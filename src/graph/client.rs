//! The Microsoft Graph HTTP client: app-only tokens (client credentials, GRAPH.md §1), single
//! requests and JSON `$batch` (§3), with `Prefer: IdType="ImmutableId"` on every request (§2.9).
//!
//! The client never retries by itself except once after a Graph 401 (a new token, then the same
//! request again); every other failure comes back as a classified [`GraphError`] and the caller
//! (the flush) decides, honouring `Retry-After`.
//!
//! Tokens are cached per company and credentials (tenant, client id, secret fingerprint) until
//! `token_refresh_margin_seconds` before they expire (at most half their lifetime early), and
//! concurrent callers of one company share one token request. Neither the secret nor a token is
//! ever logged or put in an error.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use crate::config::GraphConfig;
use crate::graph::error::{ErrorClass, GraphError, parse_retry_after};
use crate::secret::Secret;

/// The `Prefer` header that makes Outlook ids immutable (GRAPH.md §2.9).
pub const PREFER_IMMUTABLE_ID: &str = "IdType=\"ImmutableId\"";
/// Requests per JSON `$batch` (GRAPH.md §3).
pub const MAX_BATCH: usize = 20;
/// The scope of the public cloud's Graph (also what the emulator expects).
pub const DEFAULT_SCOPE: &str = "https://graph.microsoft.com/.default";

/// A company's app registration (client credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub tenant_id: String,
    pub client_id: String,
    pub client_secret: Secret,
}

/// HTTP methods the calendar writer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Method> for reqwest::Method {
    fn from(m: Method) -> reqwest::Method {
        match m {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        }
    }
}

/// One Graph request. `path` is relative to the versioned base and starts with `/`
/// (`/users/taro@x/events`, with its query string if any); build segments with
/// [`path_segment`]. `id` names the request inside a `$batch` (unique, case-insensitively).
#[derive(Debug, Clone)]
pub struct GraphRequest {
    pub id: String,
    pub method: Method,
    pub path: String,
    pub body: Option<Value>,
}

impl GraphRequest {
    pub fn new(id: impl Into<String>, method: Method, path: impl Into<String>) -> GraphRequest {
        GraphRequest {
            id: id.into(),
            method,
            path: path.into(),
            body: None,
        }
    }
    pub fn get(id: impl Into<String>, path: impl Into<String>) -> GraphRequest {
        GraphRequest::new(id, Method::Get, path)
    }
    pub fn post(id: impl Into<String>, path: impl Into<String>, body: Value) -> GraphRequest {
        GraphRequest::new(id, Method::Post, path).with_body(body)
    }
    pub fn patch(id: impl Into<String>, path: impl Into<String>, body: Value) -> GraphRequest {
        GraphRequest::new(id, Method::Patch, path).with_body(body)
    }
    pub fn delete(id: impl Into<String>, path: impl Into<String>) -> GraphRequest {
        GraphRequest::new(id, Method::Delete, path)
    }
    pub fn with_body(mut self, body: Value) -> GraphRequest {
        self.body = Some(body);
        self
    }
}

/// A 2xx answer (or a `$batch` item's). Header names are lowercase; `body` is `Null` when empty
/// and a JSON string when the body was not JSON.
#[derive(Debug, Clone)]
pub struct GraphResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl GraphResponse {
    /// A header's value (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Graph's `request-id` header.
    pub fn request_id(&self) -> Option<&str> {
        self.header("request-id")
    }
}

/// An app-only access token.
#[derive(Debug, Clone)]
pub struct AccessToken {
    pub value: Secret,
    /// `expires_in` after the token request was sent.
    pub expires_at: Instant,
    /// The JWT payload's `roles` claim (decoded, not verified); empty if absent (no consent).
    pub roles: Vec<String>,
    /// The JWT payload's `tid` claim.
    pub tenant_id: Option<String>,
}

impl AccessToken {
    /// Whether `roles` holds `role` (case-insensitively).
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r.eq_ignore_ascii_case(role))
    }
}

/// The Graph client: cheap to clone (an `Arc` inside), shared by all tasks.
#[derive(Clone)]
pub struct GraphClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    /// Versioned base without a trailing `/` (`https://graph.microsoft.com/v1.0`).
    base_url: String,
    /// Identity platform base without a trailing `/`.
    login_url: String,
    scope: String,
    refresh_margin: Duration,
    tokens: Mutex<HashMap<TokenKey, Arc<Slot>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    company: String,
    tenant: String,
    client_id: String,
    secret_fingerprint: String,
}

/// One cached token and the lock its refreshes take (single flight).
#[derive(Default)]
struct Slot {
    state: tokio::sync::Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    /// The token and when to renew it.
    token: Option<(Arc<AccessToken>, Instant)>,
    /// The last failed token request and when it ended (shared with the callers that waited).
    failure: Option<(Instant, GraphError)>,
}

impl fmt::Debug for GraphClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphClient")
            .field("base_url", &self.inner.base_url)
            .field("login_url", &self.inner.login_url)
            .field("scope", &self.inner.scope)
            .finish_non_exhaustive()
    }
}

/// The `.default` scope of the Graph at `base_url`: `https://graph.microsoft.com/.default` for
/// the public cloud and for loopback/localhost (the emulator), else `{scheme}://{host}/.default`
/// (national clouds: `https://graph.microsoft.us/.default`).
pub fn graph_scope(base_url: &str) -> String {
    let Ok(url) = url::Url::parse(base_url) else {
        return DEFAULT_SCOPE.to_string();
    };
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        None => true,
    };
    let host = url.host_str().unwrap_or_default();
    if loopback || host.eq_ignore_ascii_case("graph.microsoft.com") {
        return DEFAULT_SCOPE.to_string();
    }
    match url.port() {
        Some(port) => format!("{}://{host}:{port}/.default", url.scheme()),
        None => format!("{}://{host}/.default", url.scheme()),
    }
}

/// URL-encodes one path segment (a mailbox address such as `o'neil@x.com`, an event id with
/// `/`, `+`, `=`): everything but RFC 3986 unreserved characters and `@` becomes `%XX`.
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// Lowercase header names, values lossily decoded.
fn header_pairs(headers: &reqwest::header::HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// Empty → `Null`; JSON → the value; anything else → a JSON string of the text.
fn parse_body(bytes: &[u8]) -> Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// `expires_in` as an integer, a float or a numeric string.
fn expires_in_secs(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse::<u64>().ok().or_else(|| {
            s.trim()
                .parse::<f64>()
                .ok()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        _ => None,
    }
}

/// The JWT payload (base64url, not verified), if the token is a JWT.
fn jwt_claims(token: &str) -> Option<Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn new_client_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn batch_item(r: &GraphRequest) -> Value {
    let mut headers = Map::new();
    if r.body.is_some() {
        headers.insert("Content-Type".into(), "application/json".into());
    }
    headers.insert("Prefer".into(), PREFER_IMMUTABLE_ID.into());
    let mut item = json!({
        "id": r.id,
        "method": r.method.as_str(),
        "url": r.path,
        "headers": headers,
    });
    if let Some(body) = &r.body {
        item["body"] = body.clone();
    }
    item
}

/// A `$batch` item's `headers` object as lowercase pairs.
fn item_headers(item: &Value) -> Vec<(String, String)> {
    let Some(obj) = item.get("headers").and_then(Value::as_object) else {
        return Vec::new();
    };
    obj.iter()
        .filter_map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.to_ascii_lowercase(), value))
        })
        .collect()
}

impl GraphClient {
    /// A client for the Graph at `cfg.base_url` and the token endpoint at `cfg.login_url`.
    /// Installs the process's rustls crypto provider if none is installed yet.
    pub fn new(cfg: &GraphConfig) -> GraphClient {
        crate::install_crypto_provider();
        let timeout = Duration::from_millis(cfg.request_timeout_ms.max(1));
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("cyzen-outlook-sync/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the Graph HTTP client can be built");
        GraphClient {
            inner: Arc::new(Inner {
                http,
                base_url: cfg.base_url.trim_end_matches('/').to_string(),
                login_url: cfg.login_url.trim_end_matches('/').to_string(),
                scope: graph_scope(&cfg.base_url),
                refresh_margin: Duration::from_secs(cfg.token_refresh_margin_seconds),
                tokens: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The versioned base URL requests go to (no trailing `/`).
    pub fn base_url(&self) -> &str {
        &self.inner.base_url
    }

    /// The scope token requests ask for.
    pub fn scope(&self) -> &str {
        &self.inner.scope
    }

    /// A token for this company, cached until `token_refresh_margin_seconds` (at most half the
    /// lifetime) before it expires. Concurrent callers for one company share one token request,
    /// and its failure. Errors have class `Credentials(..)` (an admin must fix them) or
    /// `Retryable` (throttled or unavailable token service, connection).
    pub async fn token(
        &self,
        company_id: &str,
        creds: &Credentials,
    ) -> Result<Arc<AccessToken>, GraphError> {
        self.token_replacing(company_id, creds, None).await
    }

    /// Fetches a fresh token, bypassing (and not filling) the cache: the admin "verify".
    pub async fn fresh_token(&self, creds: &Credentials) -> Result<AccessToken, GraphError> {
        self.fetch_token("-", creds).await.map(|(t, _)| t)
    }

    /// Drops the company's cached tokens; the next call requests a new one.
    pub fn forget_token(&self, company_id: &str) {
        self.tokens().retain(|k, _| k.company != company_id);
    }

    /// One request. Sends `Authorization`, `Prefer: IdType="ImmutableId"`, `client-request-id`
    /// and, with a body, `Content-Type: application/json`. A 401 from Graph makes it get a new
    /// token and send the request once more. Non-2xx → `Err(GraphError::from_response(..))`.
    pub async fn send(
        &self,
        company_id: &str,
        creds: &Credentials,
        req: &GraphRequest,
    ) -> Result<GraphResponse, GraphError> {
        let (resp, token) = self.execute_authed(company_id, creds, req).await?;
        if is_success(resp.status) {
            Ok(resp)
        } else {
            Err(response_error(&resp, &token))
        }
    }

    /// A JSON `$batch` of at most [`MAX_BATCH`] requests (panics on more, or on ids that are
    /// not unique case-insensitively). An outer failure (non-2xx, connection) is `Err`; otherwise
    /// one result per request, in the order of `reqs`: `Ok` for a 2xx item, else the item's
    /// classified error (a throttled item's `Retry-After` comes from its own headers). An item
    /// the answer lacks comes back `Retryable` (`MissingBatchResponse`). An outer 401 is handled
    /// like [`GraphClient::send`].
    pub async fn batch(
        &self,
        company_id: &str,
        creds: &Credentials,
        reqs: &[GraphRequest],
    ) -> Result<Vec<Result<GraphResponse, GraphError>>, GraphError> {
        assert!(
            reqs.len() <= MAX_BATCH,
            "a $batch holds at most {MAX_BATCH} requests, got {}",
            reqs.len()
        );
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let mut index: HashMap<String, usize> = HashMap::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            assert!(
                index.insert(r.id.to_lowercase(), i).is_none(),
                "$batch request ids must be unique (case-insensitively): {:?}",
                r.id
            );
        }
        let envelope = GraphRequest::post(
            "$batch",
            "/$batch",
            json!({"requests": reqs.iter().map(batch_item).collect::<Vec<_>>()}),
        );
        let (resp, token) = self.execute_authed(company_id, creds, &envelope).await?;
        let responses = resp.body.get("responses").and_then(Value::as_array);
        // Older Graph answered 424 to a batch with a throttled item, responses included.
        let answered = is_success(resp.status) || (resp.status == 424 && responses.is_some());
        if !answered {
            return Err(response_error(&resp, &token));
        }
        let Some(responses) = responses else {
            let mut e = GraphError::local(
                "InvalidBatchResponse",
                "the $batch answer has no `responses` array",
                ErrorClass::Retryable { after: None },
            );
            e.status = Some(resp.status);
            e.request_id = resp.request_id().map(str::to_string);
            return Err(e);
        };
        let mut out: Vec<Option<Result<GraphResponse, GraphError>>> =
            (0..reqs.len()).map(|_| None).collect();
        for item in responses {
            let Some(&i) = item
                .get("id")
                .and_then(Value::as_str)
                .and_then(|id| index.get(&id.to_lowercase()))
            else {
                continue;
            };
            if out[i].is_some() {
                continue;
            }
            let status = item
                .get("status")
                .and_then(|s| match s {
                    Value::Number(n) => n.as_u64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                })
                .and_then(|s| u16::try_from(s).ok());
            let Some(status) = status else {
                out[i] = Some(Err(GraphError::local(
                    "InvalidBatchResponse",
                    format!("the $batch item {:?} has no status", reqs[i].id),
                    ErrorClass::Retryable { after: None },
                )));
                continue;
            };
            let headers = item_headers(item);
            let body = item.get("body").cloned().unwrap_or(Value::Null);
            let item_resp = GraphResponse {
                status,
                headers,
                body,
            };
            out[i] = Some(if is_success(status) {
                Ok(item_resp)
            } else {
                Err(response_error(&item_resp, &token))
            });
        }
        let mut results = Vec::with_capacity(reqs.len());
        for (slot, req) in out.into_iter().zip(reqs) {
            results.push(match slot {
                Some(result) => result,
                None => Err(GraphError::local(
                    "MissingBatchResponse",
                    format!("the $batch answer has no response for request {:?}", req.id),
                    ErrorClass::Retryable { after: None },
                )),
            });
        }
        tracing::debug!(
            company = company_id,
            status = resp.status,
            request_id = resp.request_id().unwrap_or("-"),
            items = results.len(),
            failed = results.iter().filter(|r| r.is_err()).count(),
            "graph $batch"
        );
        Ok(results)
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Arc<Slot>>> {
        self.inner
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn slot(&self, company_id: &str, creds: &Credentials) -> Arc<Slot> {
        let key = TokenKey {
            company: company_id.to_string(),
            tenant: creds.tenant_id.clone(),
            client_id: creds.client_id.clone(),
            secret_fingerprint: creds.client_secret.fingerprint(),
        };
        let mut tokens = self.tokens();
        if let Some(slot) = tokens.get(&key) {
            return slot.clone();
        }
        // New credentials for this company: its old tokens are of no more use.
        tokens.retain(|k, _| k.company != company_id);
        tokens.entry(key).or_default().clone()
    }

    /// [`GraphClient::token`], except that a cached token identical to `stale` (one Graph just
    /// refused) is replaced, once, however many callers saw it refused.
    async fn token_replacing(
        &self,
        company_id: &str,
        creds: &Credentials,
        stale: Option<&Arc<AccessToken>>,
    ) -> Result<Arc<AccessToken>, GraphError> {
        let slot = self.slot(company_id, creds);
        let asked = Instant::now();
        let mut state = slot.state.lock().await;
        let now = Instant::now();
        if let Some((token, refresh_at)) = &state.token {
            let refused = stale.is_some_and(|s| Arc::ptr_eq(s, token));
            if !refused && now < *refresh_at {
                return Ok(token.clone());
            }
        }
        if let Some((ended, err)) = &state.failure
            && *ended >= asked
        {
            // Another caller's request failed while this one waited for it.
            return still_usable(&state, stale, err).ok_or_else(|| err.clone());
        }
        match self.fetch_token(company_id, creds).await {
            Ok((token, refresh_at)) => {
                let token = Arc::new(token);
                state.token = Some((token.clone(), refresh_at));
                state.failure = None;
                Ok(token)
            }
            Err(err) => {
                state.failure = Some((Instant::now(), err.clone()));
                if let Some(token) = still_usable(&state, stale, &err) {
                    tracing::warn!(
                        company = company_id,
                        error = %err,
                        "token renewal failed; using the current token until it expires"
                    );
                    return Ok(token);
                }
                state.token = None;
                Err(err)
            }
        }
    }

    /// `POST {login_url}/{tenant}/oauth2/v2.0/token` (client credentials). Returns the token
    /// and when to renew it.
    async fn fetch_token(
        &self,
        company_id: &str,
        creds: &Credentials,
    ) -> Result<(AccessToken, Instant), GraphError> {
        let secret = creds.client_secret.expose();
        let url = format!(
            "{}/{}/oauth2/v2.0/token",
            self.inner.login_url,
            path_segment(&creds.tenant_id)
        );
        let started = Instant::now();
        let sent = self
            .inner
            .http
            .post(&url)
            .header("client-request-id", new_client_request_id())
            .header("Accept", "application/json")
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", creds.client_id.as_str()),
                ("client_secret", secret),
                ("scope", self.inner.scope.as_str()),
            ])
            .send()
            .await;
        let fail = |mut e: GraphError| {
            e.redact(secret);
            tracing::debug!(
                company = company_id,
                tenant = %creds.tenant_id,
                client_id = %creds.client_id,
                secret = %creds.client_secret.fingerprint(),
                status = e.status,
                trace_id = e.request_id.as_deref().unwrap_or("-"),
                error = %e,
                "token request failed"
            );
            e
        };
        let resp = sent.map_err(|e| fail(GraphError::connection(&e)))?;
        let status = resp.status().as_u16();
        let headers = header_pairs(resp.headers());
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| fail(GraphError::connection(&e)))?;
        let body = parse_body(&bytes);
        let access_token = body
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty());
        let (true, Some(access_token)) = (is_success(status), access_token) else {
            let mut e = GraphError::from_token_response(status, &body);
            let retry_after = headers
                .iter()
                .find(|(k, _)| k == "retry-after")
                .and_then(|(_, v)| parse_retry_after(v, jiff::Timestamp::now()));
            e.retry_after = retry_after;
            if let ErrorClass::Retryable { after: None } = e.class {
                e.class = ErrorClass::Retryable { after: retry_after };
            }
            return Err(fail(e));
        };
        let expires_in = body
            .get("expires_in")
            .and_then(expires_in_secs)
            .unwrap_or_else(|| {
                tracing::debug!(
                    company = company_id,
                    "token answer without expires_in; assuming 3599 s"
                );
                3599
            });
        let lifetime = Duration::from_secs(expires_in);
        let claims = jwt_claims(access_token);
        let roles: Vec<String> = claims
            .as_ref()
            .and_then(|c| c.get("roles"))
            .and_then(Value::as_array)
            .map(|roles| {
                roles
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let tenant_id = claims
            .as_ref()
            .and_then(|c| c.get("tid"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let expires_at = started + lifetime;
        let margin = self.inner.refresh_margin.min(lifetime / 2);
        tracing::debug!(
            company = company_id,
            tenant = %creds.tenant_id,
            client_id = %creds.client_id,
            secret = %creds.client_secret.fingerprint(),
            status,
            expires_in,
            roles = roles.len(),
            "token issued"
        );
        Ok((
            AccessToken {
                value: Secret::new(access_token),
                expires_at,
                roles,
                tenant_id,
            },
            expires_at - margin,
        ))
    }

    /// Sends `req` with the company's token; after a 401, once more with a new token. Returns
    /// the raw answer (any status) and the token it was sent with.
    async fn execute_authed(
        &self,
        company_id: &str,
        creds: &Credentials,
        req: &GraphRequest,
    ) -> Result<(GraphResponse, Arc<AccessToken>), GraphError> {
        let token = self.token(company_id, creds).await?;
        let resp = self.execute(company_id, &token, req).await?;
        if resp.status != 401 {
            return Ok((resp, token));
        }
        tracing::debug!(
            company = company_id,
            request_id = resp.request_id().unwrap_or("-"),
            "graph refused the token; renewing it and retrying once"
        );
        let token = self
            .token_replacing(company_id, creds, Some(&token))
            .await?;
        let resp = self.execute(company_id, &token, req).await?;
        Ok((resp, token))
    }

    /// One HTTP exchange. `Err` only for transport failures.
    async fn execute(
        &self,
        company_id: &str,
        token: &AccessToken,
        req: &GraphRequest,
    ) -> Result<GraphResponse, GraphError> {
        let url = if req.path.starts_with('/') {
            format!("{}{}", self.inner.base_url, req.path)
        } else {
            format!("{}/{}", self.inner.base_url, req.path)
        };
        let client_request_id = new_client_request_id();
        let mut builder = self
            .inner
            .http
            .request(req.method.into(), &url)
            .bearer_auth(token.value.expose())
            .header("Prefer", PREFER_IMMUTABLE_ID)
            .header("client-request-id", &client_request_id)
            .header("Accept", "application/json");
        if let Some(body) = &req.body {
            // Sets `Content-Type: application/json`.
            builder = builder.json(body);
        }
        let started = Instant::now();
        let transport = |e: reqwest::Error| {
            let mut err = GraphError::connection(&e);
            err.redact(token.value.expose());
            tracing::debug!(
                company = company_id,
                method = req.method.as_str(),
                path = %req.path,
                client_request_id = %client_request_id,
                elapsed_ms = started.elapsed().as_millis() as u64,
                error = %err,
                "graph request failed"
            );
            err
        };
        let resp = builder.send().await.map_err(transport)?;
        let status = resp.status().as_u16();
        let headers = header_pairs(resp.headers());
        let bytes = resp.bytes().await.map_err(transport)?;
        let resp = GraphResponse {
            status,
            headers,
            body: parse_body(&bytes),
        };
        tracing::debug!(
            company = company_id,
            method = req.method.as_str(),
            path = %req.path,
            status,
            request_id = resp.request_id().unwrap_or("-"),
            client_request_id = %client_request_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "graph request"
        );
        Ok(resp)
    }
}

/// After a transient renewal failure: the cached token, if Graph has not refused it and it is
/// valid for a while yet (renewal starts `token_refresh_margin_seconds` early for this).
fn still_usable(
    state: &SlotState,
    stale: Option<&Arc<AccessToken>>,
    err: &GraphError,
) -> Option<Arc<AccessToken>> {
    let (token, _) = state.token.as_ref()?;
    let usable = err.is_retryable()
        && !stale.is_some_and(|s| Arc::ptr_eq(s, token))
        && token.expires_at > Instant::now() + Duration::from_secs(5);
    usable.then(|| token.clone())
}

/// The classified error of a non-2xx answer, with the bearer token scrubbed out.
fn response_error(resp: &GraphResponse, token: &AccessToken) -> GraphError {
    let mut e = GraphError::from_response(resp.status, &resp.headers, &resp.body);
    e.redact(token.value.expose());
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_follows_the_graph_host_except_for_loopback() {
        let cases = [
            ("https://graph.microsoft.com/v1.0", DEFAULT_SCOPE),
            ("https://GRAPH.microsoft.com/beta/", DEFAULT_SCOPE),
            (
                "https://graph.microsoft.us/v1.0",
                "https://graph.microsoft.us/.default",
            ),
            (
                "https://dod-graph.microsoft.us/v1.0",
                "https://dod-graph.microsoft.us/.default",
            ),
            (
                "https://microsoftgraph.chinacloudapi.cn/v1.0",
                "https://microsoftgraph.chinacloudapi.cn/.default",
            ),
            ("http://127.0.0.1:8123/v1.0", DEFAULT_SCOPE),
            ("http://[::1]:8123/v1.0", DEFAULT_SCOPE),
            ("http://localhost:8123/v1.0", DEFAULT_SCOPE),
            (
                "http://graph.test:8080/v1.0",
                "http://graph.test:8080/.default",
            ),
        ];
        for (base, scope) in cases {
            assert_eq!(graph_scope(base), scope, "{base}");
        }
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(path_segment("o'neil@x.com"), "o%27neil@x.com");
        assert_eq!(
            path_segment("AAMkAGI1/AAAt9+AHjAAA="),
            "AAMkAGI1%2FAAAt9%2BAHjAAA%3D"
        );
        assert_eq!(
            path_segment("a_b.c#EXT#@t.onmicrosoft.com"),
            "a_b.c%23EXT%23@t.onmicrosoft.com"
        );
        assert_eq!(path_segment("a b?c&d"), "a%20b%3Fc%26d");
        assert_eq!(path_segment("日"), "%E6%97%A5");
    }

    #[test]
    fn jwt_roles_and_tenant_are_read_without_verification() {
        let b64 = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        let token = format!(
            "{}.{}.sig",
            b64(&json!({"alg":"RS256"})),
            b64(&json!({"roles":["Calendars.ReadWrite"],"tid":"t-1"}))
        );
        let claims = jwt_claims(&token).unwrap();
        assert_eq!(claims["roles"][0], "Calendars.ReadWrite");
        assert_eq!(claims["tid"], "t-1");
        assert!(jwt_claims("not-a-jwt").is_none());
        assert!(jwt_claims("a.!!!.c").is_none());
    }

    #[test]
    fn expires_in_is_accepted_as_number_or_string() {
        assert_eq!(expires_in_secs(&json!(3599)), Some(3599));
        assert_eq!(expires_in_secs(&json!("3599")), Some(3599));
        assert_eq!(expires_in_secs(&json!(3599.0)), Some(3599));
        assert_eq!(expires_in_secs(&json!("soon")), None);
        assert_eq!(expires_in_secs(&json!(-1)), None);
    }

    #[test]
    fn batch_items_carry_prefer_and_content_type_only_with_a_body() {
        let item = batch_item(&GraphRequest::delete("1", "/users/a@b/events/x"));
        assert_eq!(
            item,
            json!({"id":"1","method":"DELETE","url":"/users/a@b/events/x",
                   "headers":{"Prefer":"IdType=\"ImmutableId\""}})
        );
        let item = batch_item(&GraphRequest::post(
            "2",
            "/users/a@b/events",
            json!({"subject":"s"}),
        ));
        assert_eq!(item["headers"]["Content-Type"], "application/json");
        assert_eq!(item["headers"]["Prefer"], PREFER_IMMUTABLE_ID);
        assert_eq!(item["body"], json!({"subject":"s"}));
    }

    #[test]
    fn bodies_are_null_json_or_text() {
        assert_eq!(parse_body(b""), Value::Null);
        assert_eq!(parse_body(b" \n"), Value::Null);
        assert_eq!(parse_body(br#"{"a":1}"#), json!({"a":1}));
        assert_eq!(parse_body(b"<html>"), json!("<html>"));
    }
}
