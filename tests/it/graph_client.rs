//! The Graph client against a tiny in-test server playing the token endpoint and Graph: token
//! caching, single flight, refresh margin, 401 handling, `$batch` ordering, throttled items,
//! transport failures, the `Prefer` header, and secrets never shown in errors.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, Method as HttpMethod, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use outlook_sync::config::GraphConfig;
use outlook_sync::graph::client::{
    Credentials, GraphClient, GraphRequest, Method, PREFER_IMMUTABLE_ID,
};
use outlook_sync::graph::error::{ErrorClass, GraphError, MailboxProblem, TokenProblem};
use outlook_sync::secret::Secret;
use serde_json::{Value, json};

const SECRET: &str = "s3cr3t-Value~with.special&chars=";
const TENANT: &str = "7c2a4f1e-0d3b-4c5a-9e8f-1a2b3c4d5e6f";
const CLIENT: &str = "11111111-2222-3333-4444-555555555555";

/// A Graph request the mock saw.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    authorization: Option<String>,
    prefer: Option<String>,
    content_type: Option<String>,
    client_request_id: Option<String>,
    body: Value,
}

/// A token-endpoint error to answer with: status, body, extra headers.
type TokenError = (u16, Value, Vec<(&'static str, String)>);

/// The mock's knobs and what it recorded.
#[derive(Default)]
struct Mock {
    token_requests: AtomicUsize,
    token_forms: Mutex<Vec<HashMap<String, String>>>,
    token_delay_ms: AtomicUsize,
    /// `expires_in` to answer with (a number or a string); default 3599.
    expires_in: Mutex<Option<Value>>,
    /// (status, body, extra headers) to answer the token endpoint with instead of a token.
    token_error: Mutex<Option<TokenError>>,
    /// Put the received client secret into the token error's description.
    echo_secret: AtomicBool,
    /// Tokens Graph answers 401 to.
    refused_tokens: Mutex<HashSet<String>>,
    /// Refuse the first token issued (and only it).
    refuse_first_token: AtomicBool,
    /// Refuse every token.
    refuse_all_tokens: AtomicBool,
    first_token: Mutex<Option<String>>,
    graph: Mutex<Vec<Seen>>,
}

impl Mock {
    fn token_requests(&self) -> usize {
        self.token_requests.load(Ordering::SeqCst)
    }
    fn graph_requests(&self) -> Vec<Seen> {
        self.graph.lock().unwrap().clone()
    }
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
}

async fn token_endpoint(
    State(mock): State<Arc<Mock>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let n = mock.token_requests.fetch_add(1, Ordering::SeqCst) + 1;
    mock.token_forms.lock().unwrap().push(form.clone());
    let delay = mock.token_delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let error = mock.token_error.lock().unwrap().clone();
    if let Some((status, mut body, headers)) = error {
        if mock.echo_secret.load(Ordering::SeqCst) {
            let secret = form.get("client_secret").cloned().unwrap_or_default();
            body["error_description"] = json!(format!(
                "AADSTS7000215: Invalid client secret provided: '{secret}'.\r\nTrace ID: t\r\nCorrelation ID: c\r\nTimestamp: 2024-01-01 00:00:00Z"
            ));
        }
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(k, v.parse().unwrap());
        }
        return (StatusCode::from_u16(status).unwrap(), h, axum::Json(body)).into_response();
    }
    let payload = json!({
        "aud": "https://graph.microsoft.com",
        "tid": tenant,
        "appid": form.get("client_id"),
        "roles": ["Calendars.ReadWrite", "User.Read.All"],
        "n": n,
    });
    let token = format!(
        "{}.{}.sig{n}",
        b64(&json!({"typ":"JWT","alg":"RS256"})),
        b64(&payload)
    );
    {
        let mut first = mock.first_token.lock().unwrap();
        if first.is_none() {
            *first = Some(token.clone());
            if mock.refuse_first_token.load(Ordering::SeqCst) {
                mock.refused_tokens.lock().unwrap().insert(token.clone());
            }
        }
    }
    let expires_in = mock
        .expires_in
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(json!(3599));
    axum::Json(json!({
        "token_type": "Bearer",
        "expires_in": expires_in,
        "ext_expires_in": expires_in,
        "access_token": token,
    }))
    .into_response()
}

fn graph_error(status: u16, code: &str, message: &str) -> (u16, Vec<(String, String)>, Value) {
    (
        status,
        vec![],
        json!({"error": {"code": code, "message": message, "innerError": {
            "date": "2024-01-01T00:00:00", "request-id": "inner-rid", "client-request-id": "c"}}}),
    )
}

/// What Graph answers to one request (outer or `$batch` item), by path.
fn answer(method: &str, path: &str, body: &Value) -> (u16, Vec<(String, String)>, Value) {
    if path.contains("/gone/") {
        return graph_error(
            404,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        );
    }
    if path.contains("/users/nobody@") {
        return graph_error(
            404,
            "ErrorInvalidUser",
            "The requested user 'nobody@x.com' is invalid.",
        );
    }
    if path.contains("/throttled") {
        let (s, mut h, b) = graph_error(
            429,
            "ApplicationThrottled",
            "Application is over its MailboxConcurrency limit.",
        );
        h.push(("Retry-After".into(), "2.128".into()));
        return (s, h, b);
    }
    let status = match method {
        "POST" => 201,
        "DELETE" => 204,
        _ => 200,
    };
    let body = if status == 204 {
        Value::Null
    } else {
        json!({"method": method, "path": path, "echo": body})
    };
    (status, vec![], body)
}

async fn graph(
    State(mock): State<Arc<Mock>>,
    method: HttpMethod,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let h = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().unwrap_or_default().to_string())
    };
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    mock.graph.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: path.clone(),
        authorization: h("authorization"),
        prefer: h("prefer"),
        content_type: h("content-type"),
        client_request_id: h("client-request-id"),
        body: json_body.clone(),
    });
    let token = h("authorization")
        .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
        .unwrap_or_default();
    if mock.refuse_all_tokens.load(Ordering::SeqCst)
        || mock.refused_tokens.lock().unwrap().contains(&token)
    {
        return (
            StatusCode::UNAUTHORIZED,
            [
                ("www-authenticate", "Bearer realm=\"\""),
                ("request-id", "rid-401"),
            ],
            axum::Json(json!({"error": {"code": "InvalidAuthenticationToken",
                "message": "Access token has expired or is not yet valid."}})),
        )
            .into_response();
    }
    let rest = path.strip_prefix("/v1.0").unwrap_or(&path);
    if rest.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    if rest == "/$batch" {
        let mut responses: Vec<Value> = json_body["requests"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|r| !r["url"].as_str().unwrap_or("").contains("/dropme"))
            .map(|r| {
                let (status, headers, body) = answer(
                    r["method"].as_str().unwrap_or(""),
                    r["url"].as_str().unwrap_or(""),
                    &r["body"],
                );
                let headers: serde_json::Map<String, Value> =
                    headers.into_iter().map(|(k, v)| (k, json!(v))).collect();
                let mut item = json!({"id": r["id"], "status": status, "headers": headers});
                if !body.is_null() {
                    item["body"] = body;
                }
                item
            })
            .collect();
        // Graph answers in any order: reverse, then rotate.
        responses.reverse();
        if !responses.is_empty() {
            responses.rotate_left(1);
        }
        return (
            [("request-id", "rid-batch")],
            axum::Json(json!({ "responses": responses })),
        )
            .into_response();
    }
    let (status, headers, body) = answer(method.as_str(), rest, &json_body);
    let mut map = HeaderMap::new();
    map.insert("request-id", "rid-1".parse().unwrap());
    for (k, v) in headers {
        map.insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let status = StatusCode::from_u16(status).unwrap();
    if body.is_null() {
        (status, map).into_response()
    } else {
        (status, map, axum::Json(body)).into_response()
    }
}

/// Starts the mock on a free port; returns it and a config pointing at it.
async fn start(mock: Arc<Mock>) -> (Arc<Mock>, GraphConfig) {
    let app = Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
        .fallback(graph)
        .with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (mock, config_for(addr, addr))
}

fn config_for(login: SocketAddr, graph: SocketAddr) -> GraphConfig {
    GraphConfig {
        base_url: format!("http://{graph}/v1.0"),
        login_url: format!("http://{login}"),
        request_timeout_ms: 2000,
        token_refresh_margin_seconds: 300,
        ..GraphConfig::default()
    }
}

fn creds() -> Credentials {
    Credentials {
        tenant_id: TENANT.into(),
        client_id: CLIENT.into(),
        client_secret: Secret::new(SECRET),
    }
}

fn client(cfg: &GraphConfig) -> GraphClient {
    outlook_sync::install_crypto_provider();
    GraphClient::new(cfg)
}

/// A port nothing listens on.
async fn dead_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

fn assert_no_secret(e: &GraphError, token: Option<&str>) {
    let shown = format!("{e} | {e:?}");
    assert!(!shown.contains(SECRET), "secret shown: {shown}");
    if let Some(token) = token {
        assert!(!shown.contains(token), "token shown: {shown}");
    }
}

#[tokio::test]
async fn a_token_is_requested_with_client_credentials_and_then_cached() {
    let (mock, cfg) = start(Arc::default()).await;
    let client = client(&cfg);
    let before = tokio::time::Instant::now();
    let t1 = client.token("company-a", &creds()).await.unwrap();
    let t2 = client.token("company-a", &creds()).await.unwrap();
    assert!(Arc::ptr_eq(&t1, &t2));
    assert_eq!(mock.token_requests(), 1, "the second call makes no request");

    let form = mock.token_forms.lock().unwrap()[0].clone();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["client_id"], CLIENT);
    assert_eq!(form["client_secret"], SECRET);
    assert_eq!(form["scope"], "https://graph.microsoft.com/.default");

    assert_eq!(t1.roles, vec!["Calendars.ReadWrite", "User.Read.All"]);
    assert!(t1.has_role("calendars.readwrite"));
    assert_eq!(t1.tenant_id.as_deref(), Some(TENANT));
    let lifetime = t1.expires_at - before;
    assert!(
        lifetime >= Duration::from_secs(3599) && lifetime < Duration::from_secs(3601),
        "{lifetime:?}"
    );
    assert!(!format!("{t1:?}").contains(t1.value.expose()));
}

#[tokio::test]
async fn expires_in_sent_as_a_string_is_accepted() {
    let mock = Arc::new(Mock::default());
    *mock.expires_in.lock().unwrap() = Some(json!("3599"));
    let (mock, cfg) = start(mock).await;
    let client = client(&cfg);
    let t = client.token("c", &creds()).await.unwrap();
    assert!(t.expires_at > tokio::time::Instant::now() + Duration::from_secs(3500));
    client.token("c", &creds()).await.unwrap();
    assert_eq!(mock.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_token_calls_make_one_token_request() {
    let mock = Arc::new(Mock::default());
    mock.token_delay_ms.store(200, Ordering::SeqCst);
    let (mock, cfg) = start(mock).await;
    let client = client(&cfg);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.token("company-a", &creds()).await })
        })
        .collect();
    let mut tokens = Vec::new();
    for call in calls {
        tokens.push(call.await.unwrap().unwrap());
    }
    assert_eq!(mock.token_requests(), 1);
    assert!(tokens.iter().all(|t| Arc::ptr_eq(t, &tokens[0])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_one_failed_token_request() {
    let mock = Arc::new(Mock::default());
    mock.token_delay_ms.store(200, Ordering::SeqCst);
    *mock.token_error.lock().unwrap() = Some((
        401,
        json!({"error":"invalid_client","error_description":"AADSTS7000222: The provided client secret keys for app 'x' are expired.\r\nTrace ID: t","error_codes":[7000222],"trace_id":"t"}),
        vec![],
    ));
    let (mock, cfg) = start(mock).await;
    let client = client(&cfg);
    let calls: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.token("company-a", &creds()).await })
        })
        .collect();
    for call in calls {
        let e = call.await.unwrap().unwrap_err();
        assert_eq!(
            e.class,
            ErrorClass::Credentials(TokenProblem::ExpiredSecret)
        );
        assert_eq!(e.aadsts, Some(7000222));
    }
    assert_eq!(mock.token_requests(), 1);
    // A later call asks again (an admin may have fixed the secret).
    client.token("company-a", &creds()).await.unwrap_err();
    assert_eq!(mock.token_requests(), 2);
}

#[tokio::test]
async fn a_token_is_renewed_once_inside_the_refresh_margin() {
    let mock = Arc::new(Mock::default());
    *mock.expires_in.lock().unwrap() = Some(json!(2));
    let (mock, mut cfg) = start(mock).await;
    cfg.token_refresh_margin_seconds = 1;
    let client = client(&cfg);
    let t1 = client.token("c", &creds()).await.unwrap();
    let t2 = client.token("c", &creds()).await.unwrap();
    assert!(Arc::ptr_eq(&t1, &t2));
    assert_eq!(mock.token_requests(), 1);
    // 2 s lifetime, 1 s margin: after 1.1 s the token is renewed, though still valid.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(t1.expires_at > tokio::time::Instant::now());
    let t3 = client.token("c", &creds()).await.unwrap();
    assert!(!Arc::ptr_eq(&t1, &t3));
    assert_eq!(mock.token_requests(), 2);
    client.token("c", &creds()).await.unwrap();
    assert_eq!(mock.token_requests(), 2);
}

#[tokio::test]
async fn a_margin_longer_than_the_lifetime_still_caches_for_half_of_it() {
    let mock = Arc::new(Mock::default());
    *mock.expires_in.lock().unwrap() = Some(json!(60));
    let (mock, cfg) = start(mock).await; // margin 300 s > 60 s lifetime
    let client = client(&cfg);
    client.token("c", &creds()).await.unwrap();
    client.token("c", &creds()).await.unwrap();
    assert_eq!(mock.token_requests(), 1);
}

#[tokio::test]
async fn tokens_are_kept_per_company_and_per_secret() {
    let (mock, cfg) = start(Arc::default()).await;
    let client = client(&cfg);
    let a = client.token("company-a", &creds()).await.unwrap();
    let b = client.token("company-b", &creds()).await.unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!(mock.token_requests(), 2);
    let mut rotated = creds();
    rotated.client_secret = Secret::new("a-new-secret-value");
    let a2 = client.token("company-a", &rotated).await.unwrap();
    assert!(!Arc::ptr_eq(&a, &a2));
    assert_eq!(mock.token_requests(), 3);
    client.token("company-a", &rotated).await.unwrap();
    client.token("company-b", &creds()).await.unwrap();
    assert_eq!(mock.token_requests(), 3);

    client.forget_token("company-a");
    client.token("company-a", &rotated).await.unwrap();
    client.token("company-b", &creds()).await.unwrap();
    assert_eq!(
        mock.token_requests(),
        4,
        "forget_token drops only that company's token"
    );

    let fresh = client.fresh_token(&creds()).await.unwrap();
    assert_eq!(mock.token_requests(), 5, "fresh_token bypasses the cache");
    assert_eq!(fresh.tenant_id.as_deref(), Some(TENANT));
    client.token("company-b", &creds()).await.unwrap();
    assert_eq!(mock.token_requests(), 5, "and does not replace it");
}

#[tokio::test]
async fn an_outer_401_renews_the_token_once_and_retries_once() {
    let mock = Arc::new(Mock::default());
    mock.refuse_first_token.store(true, Ordering::SeqCst);
    let (mock, cfg) = start(mock).await;
    let client = client(&cfg);
    let resp = client
        .send(
            "c",
            &creds(),
            &GraphRequest::get("1", "/users/taro@x.com/events"),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(mock.token_requests(), 2, "exactly one renewal");
    let seen = mock.graph_requests();
    assert_eq!(seen.len(), 2, "exactly one retry");
    assert_ne!(seen[0].authorization, seen[1].authorization);
    // The renewed token is the cached one now.
    client
        .send(
            "c",
            &creds(),
            &GraphRequest::get("2", "/users/taro@x.com/events"),
        )
        .await
        .unwrap();
    assert_eq!(mock.token_requests(), 2);
}

#[tokio::test]
async fn a_401_after_renewal_is_returned_not_retried_again() {
    let mock = Arc::new(Mock::default());
    mock.refuse_all_tokens.store(true, Ordering::SeqCst);
    let (mock, cfg) = start(mock).await;
    let client = client(&cfg);
    let e = client
        .send(
            "c",
            &creds(),
            &GraphRequest::get("1", "/users/taro@x.com/events"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::RefreshToken);
    assert_eq!(e.status, Some(401));
    assert_eq!(e.code, "InvalidAuthenticationToken");
    assert_eq!(e.request_id.as_deref(), Some("rid-401"));
    assert_eq!(mock.token_requests(), 2);
    assert_eq!(mock.graph_requests().len(), 2);
    let token = mock.first_token.lock().unwrap().clone().unwrap();
    assert_no_secret(&e, Some(&token));

    // The same for a $batch envelope.
    let e = client
        .batch(
            "c",
            &creds(),
            &[GraphRequest::get("1", "/users/taro@x.com/events")],
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::RefreshToken);
    assert_eq!(mock.token_requests(), 3);
    assert_eq!(mock.graph_requests().len(), 4);
}

#[tokio::test]
async fn a_batch_outer_401_renews_the_token_once() {
    let mock = Arc::new(Mock::default());
    mock.refuse_first_token.store(true, Ordering::SeqCst);
    let (mock, cfg) = start(mock).await;
    let client = client(&cfg);
    let results = client
        .batch(
            "c",
            &creds(),
            &[GraphRequest::get("1", "/users/taro@x.com/events")],
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].as_ref().unwrap().status, 200);
    assert_eq!(mock.token_requests(), 2);
    assert_eq!(mock.graph_requests().len(), 2);
}

#[tokio::test]
async fn batch_results_come_back_in_input_order_though_graph_shuffles_them() {
    let (mock, cfg) = start(Arc::default()).await;
    let client = client(&cfg);
    let reqs = vec![
        GraphRequest::post("a", "/users/taro@x.com/events", json!({"subject":"one"})),
        GraphRequest::get("b", "/users/taro@x.com/events/throttled"),
        GraphRequest::patch(
            "c",
            "/users/taro@x.com/events/AAMk%2FAA%3D",
            json!({"subject":"two"}),
        ),
        GraphRequest::delete("d", "/users/taro@x.com/events/gone/x"),
        GraphRequest::delete("e", "/users/taro@x.com/events/ok"),
        GraphRequest::get("f", "/users/nobody@x.com/calendar"),
    ];
    let results = client.batch("c", &creds(), &reqs).await.unwrap();
    assert_eq!(results.len(), reqs.len());

    let a = results[0].as_ref().unwrap();
    assert_eq!(a.status, 201);
    assert_eq!(a.body["echo"]["subject"], "one");
    let b = results[1].as_ref().unwrap_err();
    assert_eq!(b.status, Some(429));
    assert_eq!(b.code, "ApplicationThrottled");
    assert_eq!(b.retry_after, Some(Duration::from_millis(2128)));
    assert_eq!(
        b.class,
        ErrorClass::Retryable {
            after: Some(Duration::from_millis(2128))
        }
    );
    let c = results[2].as_ref().unwrap();
    assert_eq!(c.status, 200);
    assert_eq!(c.body["path"], "/users/taro@x.com/events/AAMk%2FAA%3D");
    let d = results[3].as_ref().unwrap_err();
    assert_eq!(d.class, ErrorClass::ItemGone);
    assert_eq!(d.request_id.as_deref(), Some("inner-rid"));
    let e = results[4].as_ref().unwrap();
    assert_eq!(e.status, 204);
    assert_eq!(e.body, Value::Null);
    let f = results[5].as_ref().unwrap_err();
    assert_eq!(f.class, ErrorClass::Mailbox(MailboxProblem::UnknownUser));

    // The envelope Graph got.
    let seen = mock.graph_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1.0/$batch");
    let items = seen[0].body["requests"].as_array().unwrap();
    assert_eq!(items.len(), 6);
    for (item, req) in items.iter().zip(&reqs) {
        assert_eq!(item["id"], req.id.as_str());
        assert_eq!(item["method"], req.method.as_str());
        assert_eq!(item["url"], req.path.as_str());
        assert_eq!(item["headers"]["Prefer"], PREFER_IMMUTABLE_ID);
        match &req.body {
            Some(body) => {
                assert_eq!(item["headers"]["Content-Type"], "application/json");
                assert_eq!(&item["body"], body);
            }
            None => {
                assert!(item["headers"].get("Content-Type").is_none());
                assert!(item.get("body").is_none());
            }
        }
    }
}

#[tokio::test]
async fn a_batch_item_graph_did_not_answer_is_retryable() {
    let (_mock, cfg) = start(Arc::default()).await;
    let client = client(&cfg);
    let reqs = vec![
        GraphRequest::get("1", "/users/taro@x.com/events/one"),
        GraphRequest::get("2", "/users/taro@x.com/dropme"),
    ];
    let results = client.batch("c", &creds(), &reqs).await.unwrap();
    assert!(results[0].is_ok());
    let e = results[1].as_ref().unwrap_err();
    assert!(e.is_retryable());
    assert_eq!(e.code, "MissingBatchResponse");
    assert!(client.batch("c", &creds(), &[]).await.unwrap().is_empty());
}

#[tokio::test]
#[should_panic(expected = "at most 20")]
async fn a_batch_of_more_than_twenty_requests_is_refused() {
    let (_mock, cfg) = start(Arc::default()).await;
    let client = client(&cfg);
    let reqs: Vec<_> = (0..21)
        .map(|i| GraphRequest::get(i.to_string(), "/users/taro@x.com/events"))
        .collect();
    let _ = client.batch("c", &creds(), &reqs).await;
}

#[tokio::test]
async fn prefer_immutable_id_is_sent_on_every_graph_request() {
    let (mock, cfg) = start(Arc::default()).await;
    let client = client(&cfg);
    let c = creds();
    let path = "/users/taro@x.com/events";
    client
        .send("c", &c, &GraphRequest::get("1", path))
        .await
        .unwrap();
    let created = client
        .send(
            "c",
            &c,
            &GraphRequest::post("2", path, json!({"subject":"s"})),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 201);
    assert_eq!(created.request_id(), Some("rid-1"));
    client
        .send(
            "c",
            &c,
            &GraphRequest::patch("3", format!("{path}/x"), json!({"subject":"t"})),
        )
        .await
        .unwrap();
    let deleted = client
        .send("c", &c, &GraphRequest::delete("4", format!("{path}/x")))
        .await
        .unwrap();
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.body, Value::Null);
    client
        .batch("c", &c, &[GraphRequest::get("5", path)])
        .await
        .unwrap();

    let seen = mock.graph_requests();
    assert_eq!(seen.len(), 5);
    let mut ids = HashSet::new();
    for s in &seen {
        assert_eq!(s.prefer.as_deref(), Some("IdType=\"ImmutableId\""), "{s:?}");
        assert!(s.authorization.as_deref().unwrap().starts_with("Bearer "));
        let id = s.client_request_id.clone().unwrap();
        assert_eq!(id.len(), 36, "uuid-like: {id}");
        assert!(ids.insert(id), "client-request-id is new per request");
        let has_body = matches!(s.method.as_str(), "POST" | "PATCH");
        assert_eq!(
            s.content_type.as_deref() == Some("application/json"),
            has_body,
            "{s:?}"
        );
    }
    assert_eq!(seen[1].body, json!({"subject":"s"}));
    assert_eq!(seen[2].method, Method::Patch.as_str());
}

#[tokio::test]
async fn a_graph_error_answer_is_classified() {
    let (_mock, cfg) = start(Arc::default()).await;
    let client = client(&cfg);
    let e = client
        .send(
            "c",
            &creds(),
            &GraphRequest::patch("1", "/users/taro@x.com/events/throttled", json!({})),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Retryable {
            after: Some(Duration::from_millis(2128))
        }
    );
    assert_eq!(e.request_id.as_deref(), Some("rid-1"));
    assert_eq!(
        e.to_string(),
        "Graph 429 ApplicationThrottled: Application is over its MailboxConcurrency limit. (request-id rid-1)"
    );
    let e = client
        .send(
            "c",
            &creds(),
            &GraphRequest::delete("2", "/users/taro@x.com/events/gone/1"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::ItemGone);
}

#[tokio::test]
async fn connection_refused_is_retryable() {
    // Token endpoint down.
    let dead = dead_addr().await;
    let client = client(&config_for(dead, dead));
    let e = client.token("c", &creds()).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert_eq!(e.code, "ConnectionError");
    assert_eq!(e.status, None);
    assert_no_secret(&e, None);

    // Token endpoint up, Graph down.
    let (_mock, cfg) = start(Arc::default()).await;
    let login: SocketAddr = cfg.login_url.trim_start_matches("http://").parse().unwrap();
    let client = self::client(&config_for(login, dead_addr().await));
    let token = client.token("c", &creds()).await.unwrap();
    let e = client
        .send(
            "c",
            &creds(),
            &GraphRequest::get("1", "/users/taro@x.com/events"),
        )
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Retryable { after: None });
    assert_eq!(e.code, "ConnectionError");
    assert_no_secret(&e, Some(token.value.expose()));
    let e = client
        .batch(
            "c",
            &creds(),
            &[GraphRequest::get("1", "/users/taro@x.com/events")],
        )
        .await
        .unwrap_err();
    assert!(e.is_retryable());
}

#[tokio::test]
async fn a_request_timeout_is_retryable() {
    let (_mock, mut cfg) = start(Arc::default()).await;
    cfg.request_timeout_ms = 300;
    let client = client(&cfg);
    let token = client.token("c", &creds()).await.unwrap();
    let started = std::time::Instant::now();
    let e = client
        .send("c", &creds(), &GraphRequest::get("1", "/slow"))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(e.class, ErrorClass::Retryable { after: None });
    assert_eq!(e.code, "Timeout");
    assert_eq!(e.status, None);
    assert!(e.to_string().starts_with("Graph Timeout"), "{e}");
    assert_no_secret(&e, Some(token.value.expose()));
}

#[tokio::test]
async fn token_endpoint_errors_are_classified_with_retry_after() {
    let mock = Arc::new(Mock::default());
    *mock.token_error.lock().unwrap() = Some((
        503,
        json!({"error":"temporarily_unavailable","error_description":"AADSTS90006: The service is temporarily unavailable.\r\nTrace ID: trace-9","error_codes":[90006],"trace_id":"trace-9"}),
        vec![("retry-after", "3".to_string())],
    ));
    let (mock, cfg) = start(mock).await;
    let client = client(&cfg);
    let e = client.token("c", &creds()).await.unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Retryable {
            after: Some(Duration::from_secs(3))
        }
    );
    assert_eq!(e.request_id.as_deref(), Some("trace-9"));
    assert_eq!(
        e.to_string(),
        "token endpoint 503 temporarily_unavailable: AADSTS90006: The service is temporarily unavailable. (trace-id trace-9)"
    );

    *mock.token_error.lock().unwrap() = Some((
        400,
        json!({"error":"unauthorized_client","error_description":"AADSTS700016: Application with identifier 'x' was not found in the directory 'y'.\r\nTrace ID: t","error_codes":[700016]}),
        vec![],
    ));
    let e = client.fresh_token(&creds()).await.unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Credentials(TokenProblem::AppNotInTenant)
    );
    // A send needing a token fails with the token's error, before reaching Graph.
    let e = client
        .send(
            "c",
            &creds(),
            &GraphRequest::get("1", "/users/taro@x.com/events"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Credentials(TokenProblem::AppNotInTenant)
    );
    assert!(mock.graph_requests().is_empty());
}

#[tokio::test]
async fn no_error_shows_the_secret_even_when_the_server_echoes_it() {
    let mock = Arc::new(Mock::default());
    mock.echo_secret.store(true, Ordering::SeqCst);
    *mock.token_error.lock().unwrap() = Some((
        401,
        json!({"error":"invalid_client","error_codes":[7000215],"trace_id":"t"}),
        vec![],
    ));
    let (_mock, cfg) = start(mock).await;
    let client = client(&cfg);
    let e = client.token("c", &creds()).await.unwrap_err();
    assert_eq!(
        e.class,
        ErrorClass::Credentials(TokenProblem::InvalidSecret)
    );
    assert!(e.message.contains("***"), "{e}");
    assert_no_secret(&e, None);
    let e = client.fresh_token(&creds()).await.unwrap_err();
    assert_no_secret(&e, None);
    let c = creds();
    assert!(!format!("{c:?}").contains(SECRET));
    assert!(!format!("{client:?}").contains(SECRET));
}
