//! JSON batching, `POST /v1.0/$batch` (GRAPH.md §3).
//!
//! The envelope is validated as a whole (400 for: not JSON, no `requests` array, more than
//! `batch_max_requests` items, an item without `id`/`method`/`url`, duplicate ids compared
//! case-insensitively, an absolute `url`, a `body` without a `Content-Type` header, a
//! `dependsOn` naming an unknown id or forming a cycle). Each item then runs as if sent alone
//! with the envelope's `Authorization` (own log entry with `batch_item`, own throttling,
//! faults and latency). Items run in waves: every item whose dependencies are done is started,
//! at most `batch_concurrency` at a time; an item whose dependency did not succeed (non-2xx)
//! gets 424 `FailedDependency` without running. Responses come back in a shuffled order
//! (`shuffle_batch_responses`), with status 200 for the envelope.

use std::collections::HashMap;
use std::time::Instant;

use futures_util::StreamExt;
use rand::seq::SliceRandom;
use serde_json::{Map, Value, json};

use super::Emulator;
use super::errors::{Body, ErrorReply, Reply, wire};
use super::graph::{Call, Note};
use super::state::Counters;
use super::util::Headers;

struct Item {
    id: String,
    call: Call,
    depends_on: Vec<usize>,
}

fn invalid(message: impl Into<String>) -> ErrorReply {
    ErrorReply::new(400, wire::BATCH_CODE, message)
}

fn parse_batch(envelope: &Call, max: usize) -> Result<Vec<Item>, ErrorReply> {
    let value: Value =
        serde_json::from_slice(&envelope.body).map_err(|_| invalid(wire::BAD_JSON))?;
    let Some(requests) = value.get("requests").and_then(Value::as_array) else {
        return Err(invalid(wire::BATCH_INVALID));
    };
    if requests.len() > max {
        return Err(invalid(if max == 20 {
            wire::BATCH_TOO_MANY.to_string()
        } else {
            format!("Too many requests in batch. Max allowed is {max}.")
        }));
    }
    let mut ids: HashMap<String, usize> = HashMap::new();
    let mut raw_deps: Vec<Vec<String>> = Vec::new();
    let mut items = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        let (item, deps) = parse_item(envelope, i, r, &mut ids)?;
        items.push(item);
        raw_deps.push(deps);
    }
    resolve_dependencies(&mut items, raw_deps, &ids)?;
    Ok(items)
}

/// Item `i` of the envelope (its id recorded in `ids`, case-insensitively, to refuse a second),
/// with the ids it depends on; it carries the envelope's token and client-request-id.
fn parse_item(
    envelope: &Call,
    i: usize,
    r: &Value,
    ids: &mut HashMap<String, usize>,
) -> Result<(Item, Vec<String>), ErrorReply> {
    let Some(obj) = r.as_object() else {
        return Err(invalid(wire::BATCH_INVALID));
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(invalid(format!("Request {i} of the batch has no 'id'."))),
    };
    if ids.insert(id.to_lowercase(), i).is_some() {
        return Err(invalid(wire::BATCH_DUPLICATE_ID));
    }
    let Some(method) = obj
        .get("method")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
    else {
        return Err(invalid(format!(
            "Request '{id}' of the batch has no 'method'."
        )));
    };
    let Some(url) = obj
        .get("url")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
    else {
        return Err(invalid(format!(
            "Request '{id}' of the batch has no 'url'."
        )));
    };
    if url.contains("://") {
        return Err(invalid(wire::BATCH_ABSOLUTE_URL));
    }
    let mut headers = item_headers(&id, obj)?;
    let body = item_body(obj, &headers)?;
    let deps = item_depends_on(&id, obj)?;
    // The envelope's token and client-request-id apply to every item.
    if let Some(auth) = envelope.headers.get("authorization") {
        headers.set("Authorization", auth);
    }
    if headers.get("client-request-id").is_none()
        && let Some(c) = envelope.headers.get("client-request-id")
    {
        headers.set("client-request-id", c);
    }
    let url = if url.starts_with('/') {
        url.to_string()
    } else {
        format!("/{url}")
    };
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (url, None),
    };
    let item = Item {
        id,
        call: Call {
            method: method.to_ascii_uppercase(),
            path: format!("/v1.0{path}"),
            query,
            headers,
            body,
            origin: envelope.origin.clone(),
            batch_item: true,
        },
        depends_on: Vec::new(),
    };
    Ok((item, deps))
}

/// An item's `headers` object (values as strings).
fn item_headers(id: &str, obj: &Map<String, Value>) -> Result<Headers, ErrorReply> {
    let mut headers = Headers::default();
    match obj.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(h)) => {
            for (k, v) in h {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                headers.0.push((k.clone(), v));
            }
        }
        Some(_) => {
            return Err(invalid(format!(
                "The headers of request '{id}' must be an object."
            )));
        }
    }
    Ok(headers)
}

/// An item's `body` as bytes: JSON, or base64 for a string with a non-JSON content type; a body
/// needs a `Content-Type` header.
fn item_body(obj: &Map<String, Value>, headers: &Headers) -> Result<Vec<u8>, ErrorReply> {
    Ok(match obj.get("body") {
        None | Some(Value::Null) => Vec::new(),
        Some(b) => {
            if headers.get("content-type").is_none() {
                return Err(invalid(wire::BATCH_MISSING_CONTENT_TYPE));
            }
            match b {
                // A string body with a non-JSON content type is base64 (GRAPH.md §3).
                Value::String(s)
                    if !headers
                        .get("content-type")
                        .is_some_and(|ct| ct.to_ascii_lowercase().contains("json")) =>
                {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .unwrap_or_else(|_| s.clone().into_bytes())
                }
                other => serde_json::to_vec(other).expect("json"),
            }
        }
    })
}

/// The ids an item's `dependsOn` lists.
fn item_depends_on(id: &str, obj: &Map<String, Value>) -> Result<Vec<String>, ErrorReply> {
    Ok(match obj.get("dependsOn") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|d| match d {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(invalid(format!(
                    "The dependsOn of request '{id}' must list ids."
                ))),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(invalid(format!(
                "The dependsOn of request '{id}' must be an array."
            )));
        }
    })
}

/// Resolves each item's `dependsOn` to item indexes; refuses an unknown id, an item depending on
/// itself, and a cycle.
fn resolve_dependencies(
    items: &mut [Item],
    raw_deps: Vec<Vec<String>>,
    ids: &HashMap<String, usize>,
) -> Result<(), ErrorReply> {
    for (i, deps) in raw_deps.into_iter().enumerate() {
        for d in deps {
            let Some(&j) = ids.get(&d.to_lowercase()) else {
                return Err(invalid(format!(
                    "Request '{}' depends on '{d}', which is not in the batch.",
                    items[i].id
                )));
            };
            if j == i {
                return Err(invalid(format!("Request '{d}' depends on itself.")));
            }
            items[i].depends_on.push(j);
        }
    }
    // Cycle check (Kahn).
    let n = items.len();
    let mut done = vec![false; n];
    let mut progress = true;
    while progress {
        progress = false;
        for i in 0..n {
            if !done[i] && items[i].depends_on.iter().all(|&d| done[d]) {
                done[i] = true;
                progress = true;
            }
        }
    }
    if done.iter().any(|d| !d) {
        return Err(invalid("The dependsOn of the batch requests form a cycle."));
    }
    Ok(())
}

fn item_json(id: &str, reply: Reply) -> Value {
    let mut headers = Map::new();
    for (k, v) in &reply.headers {
        if k.eq_ignore_ascii_case("request-id") || k.eq_ignore_ascii_case("client-request-id") {
            continue;
        }
        headers.insert(k.clone(), json!(v));
    }
    let mut out = Map::new();
    out.insert("id".into(), json!(id));
    out.insert("status".into(), json!(reply.status));
    out.insert("headers".into(), Value::Object(headers));
    match reply.body {
        Body::Empty => {}
        Body::Json(v) => {
            out.insert("body".into(), v);
        }
        Body::Text(t) => {
            out.insert("body".into(), json!(t));
        }
    }
    Value::Object(out)
}

impl Emulator {
    pub(crate) async fn batch(&self, call: Call) -> Reply {
        let started = Instant::now();
        Counters::inc(&self.inner.counters.requests);
        Counters::inc(&self.inner.counters.batches);
        let mut note = Note::default();
        let outcome = self.batch_inner(&call, &mut note).await;
        self.finish(&call, outcome, note, started)
    }

    async fn batch_inner(&self, call: &Call, note: &mut Note) -> Result<Reply, ErrorReply> {
        if call.method != "POST" {
            return Err(ErrorReply::method_not_allowed(&call.method));
        }
        let claims = self
            .inner
            .verify_token(call.headers.get("authorization"))
            .map_err(ErrorReply::unauthenticated)?;
        note.client_id = Some(claims.appid);
        let settings = self.inner.settings();
        let scripted = self
            .inner
            .faults
            .lock()
            .expect("faults")
            .take_scripted(&call.method, &call.path_and_query());
        if let Some(kind) = scripted {
            return scripted_fault(kind);
        }
        let content_type = call.headers.get("content-type").unwrap_or("");
        if !content_type.to_ascii_lowercase().contains("json") {
            return Err(ErrorReply::new(
                415,
                "UnsupportedMediaType",
                "The $batch request's Content-Type must be application/json.",
            ));
        }
        let items = parse_batch(call, settings.batch_max_requests)?;
        let n = items.len();
        let mut replies = self
            .run_waves(&items, settings.batch_concurrency.max(1))
            .await;
        if replies.iter().flatten().any(|r| r.drop_connection) {
            return Ok(Reply::dropped());
        }
        let mut order: Vec<usize> = (0..n).collect();
        if settings.shuffle_batch_responses && n > 1 {
            order.shuffle(&mut *self.inner.shuffle_rng.lock().expect("rng"));
            if order.iter().enumerate().all(|(i, &x)| i == x) {
                order.rotate_left(1);
            }
        }
        let responses: Vec<Value> = order
            .into_iter()
            .map(|i| {
                item_json(
                    &items[i].id,
                    replies[i]
                        .take()
                        .expect("every item ran, and is answered once"),
                )
            })
            .collect();
        Ok(Reply::json(200, json!({"responses": responses})))
    }

    /// Runs the items in waves: each wave starts every item whose dependencies are answered, at
    /// most `concurrency` at once; an item whose dependency failed gets 424 without running.
    /// One reply per item.
    async fn run_waves(&self, items: &[Item], concurrency: usize) -> Vec<Option<Reply>> {
        let n = items.len();
        let mut replies: Vec<Option<Reply>> = vec![None; n];
        loop {
            let ready: Vec<usize> = (0..n)
                .filter(|&i| replies[i].is_none())
                .filter(|&i| items[i].depends_on.iter().all(|&d| replies[d].is_some()))
                .collect();
            if ready.is_empty() {
                break;
            }
            let mut runnable = Vec::new();
            for i in ready {
                let failed = items[i].depends_on.iter().any(|&d| {
                    replies[d]
                        .as_ref()
                        .is_some_and(|r| !(200..300).contains(&r.status))
                });
                if failed {
                    let request_id = super::util::new_guid();
                    replies[i] = Some(
                        ErrorReply::new(424, wire::FAILED_DEPENDENCY_CODE, wire::FAILED_DEPENDENCY)
                            .into_reply(&request_id, &request_id, jiff::Timestamp::now()),
                    );
                } else {
                    runnable.push(i);
                }
            }
            let results: Vec<(usize, Reply)> = futures_util::stream::iter(runnable)
                .map(|i| {
                    let call = items[i].call.clone();
                    async move { (i, self.graph(call).await) }
                })
                .buffer_unordered(concurrency)
                .collect()
                .await;
            for (i, r) in results {
                replies[i] = Some(r);
            }
        }
        replies
    }
}

/// What a scripted fault on the `$batch` request itself answers.
fn scripted_fault(kind: super::FaultKind) -> Result<Reply, ErrorReply> {
    use super::FaultKind;
    match kind {
        FaultKind::DropConnection => Ok(Reply::dropped()),
        FaultKind::ExpiredToken => Err(ErrorReply::unauthenticated(wire::TOKEN_EXPIRED)),
        FaultKind::Status503 { .. } => Err(ErrorReply::new(
            503,
            wire::SERVICE_UNAVAILABLE_CODE,
            wire::SERVICE_UNAVAILABLE,
        )),
        FaultKind::Throttle429 { retry_after } => Err(ErrorReply::too_many_requests(
            super::util::format_retry_after(retry_after, true),
        )),
        // A $batch envelope has no state token: the fault is the batch's own failure.
        FaultKind::SyncStateNotFound => Err(ErrorReply::new(
            410,
            wire::SYNC_STATE_NOT_FOUND_CODE,
            wire::SYNC_STATE_NOT_FOUND,
        )),
        FaultKind::Gateway504 | FaultKind::Gateway504AfterCreate => Err(ErrorReply::new(
            504,
            wire::GATEWAY_TIMEOUT_CODE,
            wire::GATEWAY_TIMEOUT,
        )),
    }
}
