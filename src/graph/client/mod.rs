//! The Microsoft Graph HTTP client: app-only tokens (client credentials, GRAPH.md §1; `token`),
//! single requests and JSON `$batch` (§3; `send`), with `Prefer: IdType="ImmutableId"` on every
//! request (§2.9). This module holds the vocabulary (credentials, requests, answers) and the
//! client itself.
//!
//! The client never retries by itself except once after a Graph 401 (a new token, then the same
//! request again); every other failure comes back as a classified
//! [`GraphError`](crate::graph::error::GraphError) and the caller
//! (the flush) decides, honouring `Retry-After`.
//!
//! Tokens are cached per company and credentials (tenant, client id, secret fingerprint) until
//! `token_refresh_margin_seconds` before they expire (at most half their lifetime early), and
//! concurrent callers of one company share one token request. Neither the secret nor a token is
//! ever logged or put in an error.

mod send;
#[cfg(test)]
mod tests;
mod token;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub use self::token::AccessToken;
use self::token::{Slot, TokenKey};
use crate::config::GraphConfig;
use crate::secret::Secret;

/// The `Prefer` header that makes Outlook ids immutable (GRAPH.md §2.9).
pub const PREFER_IMMUTABLE_ID: &str = "IdType=\"ImmutableId\"";
/// Requests per JSON `$batch` (GRAPH.md §3).
pub const MAX_BATCH: usize = 20;
/// The scope of the public cloud's Graph (also what the emulator expects).
pub const DEFAULT_SCOPE: &str = "https://graph.microsoft.com/.default";

/// A company's app registration (client credentials).
#[derive(Debug, Clone)]
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
    /// `Prefer: odata.maxpagesize` (a delta request's page size).
    pub page_size: Option<u32>,
}

impl GraphRequest {
    pub fn new(id: impl Into<String>, method: Method, path: impl Into<String>) -> GraphRequest {
        GraphRequest {
            id: id.into(),
            method,
            path: path.into(),
            body: None,
            page_size: None,
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
    /// Asks for pages of at most `n` items (`Prefer: odata.maxpagesize`).
    pub fn with_page_size(mut self, n: u32) -> GraphRequest {
        self.page_size = Some(n);
        self
    }
    /// The request's `Prefer` header: immutable ids, and its page size if it has one.
    pub fn prefer(&self) -> String {
        match self.page_size {
            Some(n) => format!("{PREFER_IMMUTABLE_ID}, odata.maxpagesize={n}"),
            None => PREFER_IMMUTABLE_ID.to_string(),
        }
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

fn new_client_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
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
}
