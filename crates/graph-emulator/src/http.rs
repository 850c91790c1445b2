//! HTTP front: one axum fallback handler that routes by path to the token endpoint, admin
//! consent, Graph v1.0, `$batch` and the `/_emulator` admin API, and turns internal replies
//! into responses (including a dropped connection for the `DropConnection` fault).

use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::{Body as AxumBody, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::errors::{Body, Reply};
use super::graph::Call;
use super::state::Counters;
use super::util::{self, Headers};
use super::{Emulator, Faults, LoggedRequest, ScriptedFault, SeedTenant};

pub(crate) fn router(em: Emulator) -> Router {
    Router::new().fallback(handle).with_state(em)
}

async fn handle(State(em): State<Emulator>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let max = em.inner.settings.lock().expect("settings").max_body_bytes;
    let bytes = match axum::body::to_bytes(body, max).await {
        Ok(b) => b,
        Err(_) => {
            return to_response(Reply::text(
                413,
                "text/plain; charset=utf-8",
                "request body too large".into(),
            ));
        }
    };
    let headers = Headers::from_http(&parts.headers);
    let host = headers
        .get("host")
        .map(str::to_string)
        .unwrap_or_else(|| "127.0.0.1".into());
    let reply = em
        .dispatch(
            parts.method.as_str().to_ascii_uppercase(),
            parts.uri.path().to_string(),
            parts.uri.query().map(str::to_string),
            headers,
            bytes.to_vec(),
            format!("http://{host}"),
        )
        .await;
    to_response(reply)
}

fn to_response(reply: Reply) -> Response {
    if reply.drop_connection {
        // A body that fails before its first byte makes hyper abort the connection without
        // writing the response head: the client sees the connection close with no answer.
        let stream = futures_util::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("fault injection: drop connection"))
        });
        return Response::new(AxumBody::from_stream(stream));
    }
    let body = match reply.body {
        Body::Empty => AxumBody::empty(),
        Body::Json(v) => AxumBody::from(serde_json::to_vec(&v).expect("json")),
        Body::Text(t) => AxumBody::from(t),
    };
    let mut resp = Response::new(body);
    *resp.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers_mut();
    for (k, v) in reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            headers.append(name, value);
        }
    }
    resp
}

impl Emulator {
    async fn dispatch(
        &self,
        method: String,
        path: String,
        query: Option<String>,
        headers: Headers,
        body: Vec<u8>,
        origin: String,
    ) -> Reply {
        if path == "/v1.0" || path.starts_with("/v1.0/") {
            let is_batch = matches!(
                path.trim_end_matches('/'),
                "/v1.0/$batch" | "/v1.0/%24batch" | "/v1.0/%24Batch"
            );
            let call = Call {
                method,
                path,
                query,
                headers,
                body,
                origin,
                batch_item: false,
            };
            return if is_batch {
                self.batch(call).await
            } else {
                self.graph(call).await
            };
        }
        if path == "/_emulator" || path.starts_with("/_emulator/") {
            return self.admin(&method, &path, &body);
        }
        let segs: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| util::percent_decode(s).unwrap_or_else(|| s.to_string()))
            .collect();
        let s: Vec<&str> = segs.iter().map(String::as_str).collect();
        let started = Instant::now();
        let (reply, client_id) = match (method.as_str(), s.as_slice()) {
            ("POST", [tenant, "oauth2", "v2.0", "token"]) => {
                self.inner.token_endpoint(tenant, &headers, &body)
            }
            ("GET", [tenant, "adminconsent"]) | ("GET", [tenant, "v2.0", "adminconsent"]) => {
                self.inner.admin_consent(tenant, query.as_deref())
            }
            (_, [_, "oauth2", "v2.0", "token"]) => (
                Reply::text(405, "text/plain; charset=utf-8", "use POST".into()),
                None,
            ),
            ("GET", []) => return index(),
            _ => (
                Reply::text(
                    404,
                    "text/plain; charset=utf-8",
                    format!("no such endpoint: {path}"),
                ),
                None,
            ),
        };
        Counters::inc(&self.inner.counters.requests);
        self.inner.push_log(LoggedRequest {
            method,
            path: match &query {
                Some(q) => format!("{path}?{q}"),
                None => path.clone(),
            },
            status: reply.status,
            mailbox: None,
            time: SystemTime::now(),
            batch_item: false,
            client_id,
            duration: started.elapsed(),
            request_id: reply
                .header_value("x-ms-request-id")
                .unwrap_or_default()
                .to_string(),
        });
        reply
    }

    /// The `/_emulator` admin API (for the standalone server).
    fn admin(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        let rest = path.trim_start_matches("/_emulator").trim_matches('/');
        let bad = |msg: String| Reply::json(400, json!({"error": msg}));
        match (method, rest) {
            ("GET", "stats") => Reply::json(200, json!(self.stats())),
            ("GET", "log") => Reply::json(200, json!(self.request_log())),
            ("DELETE", "log") => {
                self.clear_log();
                Reply::empty(204)
            }
            ("POST", "tenants") => match serde_json::from_slice::<SeedTenant>(body) {
                Ok(t) => {
                    self.add_tenant(t);
                    Reply::empty(204)
                }
                Err(e) => bad(e.to_string()),
            },
            ("PUT", "faults") => match serde_json::from_slice::<Faults>(body) {
                Ok(f) => {
                    self.set_faults(f);
                    Reply::empty(204)
                }
                Err(e) => bad(e.to_string()),
            },
            ("POST", "scripted-faults") => match serde_json::from_slice::<ScriptedFault>(body) {
                Ok(f) => {
                    self.script_fault(f);
                    Reply::empty(204)
                }
                Err(e) => bad(e.to_string()),
            },
            ("PUT", "latency") => match serde_json::from_slice::<Value>(body)
                .ok()
                .and_then(|v| v["ms"].as_u64())
            {
                Some(ms) => {
                    self.set_latency(Duration::from_millis(ms));
                    Reply::empty(204)
                }
                None => bad("expected {\"ms\": <milliseconds>}".into()),
            },
            ("GET", r) if r.starts_with("calendar/") => {
                let mailbox = util::percent_decode(&r["calendar/".len()..]).unwrap_or_default();
                Reply::json(200, json!(self.calendar(&mailbox)))
            }
            _ => Reply::json(
                404,
                json!({"error": format!("no admin endpoint {method} {path}")}),
            ),
        }
    }
}

fn index() -> Reply {
    Reply::text(
        200,
        "text/plain; charset=utf-8",
        "Microsoft Graph emulator\n\
         POST /{tenant}/oauth2/v2.0/token      client-credentials token\n\
         GET  /{tenant}/adminconsent           admin consent redirect\n\
         *    /v1.0/...                        Graph v1.0 (users, calendar, mailboxSettings, events, calendarView)\n\
         POST /v1.0/$batch                     JSON batching\n\
         GET  /_emulator/stats | /_emulator/log | /_emulator/calendar/{mailbox}\n"
            .into(),
    )
}
