//! Sending: one request, or a JSON `$batch` of up to [`MAX_BATCH`] (GRAPH.md §3), with the
//! company's token (renewed and sent once more after a Graph 401).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{
    AccessToken, Credentials, GraphClient, GraphRequest, GraphResponse, MAX_BATCH, header_pairs,
    is_success, new_client_request_id, parse_body,
};
use crate::graph::error::{ErrorClass, GraphError};

pub(super) fn batch_item(r: &GraphRequest) -> Value {
    let mut headers = Map::new();
    if r.body.is_some() {
        headers.insert("Content-Type".into(), "application/json".into());
    }
    headers.insert("Prefer".into(), r.prefer().into());
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
        let results = batch_results(reqs, &index, responses, &token);
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
            .header("Prefer", req.prefer())
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

/// One result per request of a `$batch`, in the order of `reqs`, from the answer's `responses`
/// (matched by id, case-insensitively; the first answer for an id counts). An item without a
/// status, or missing, comes back `Retryable`.
fn batch_results(
    reqs: &[GraphRequest],
    index: &HashMap<String, usize>,
    responses: &[Value],
    token: &AccessToken,
) -> Vec<Result<GraphResponse, GraphError>> {
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
            Err(response_error(&item_resp, token))
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
    results
}

/// The classified error of a non-2xx answer, with the bearer token scrubbed out.
fn response_error(resp: &GraphResponse, token: &AccessToken) -> GraphError {
    let mut e = GraphError::from_response(resp.status, &resp.headers, &resp.body);
    e.redact(token.value.expose());
    e
}
