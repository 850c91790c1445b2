//! In-process **Microsoft Graph emulator**: the token endpoint of the Microsoft identity
//! platform plus the slice of Graph v1.0 this service uses (users, mailbox probes, calendar
//! events, `$batch`), with Outlook's throttling and injectable faults. Graph cannot be reached
//! from this project's machines, so every Graph-facing test and the local demo run against it.
//!
//! The wire contract is `shared/GRAPH.md`; each part follows its sections:
//!
//! | part | file | GRAPH.md |
//! |---|---|---|
//! | token endpoint, AADSTS error bodies, JWT-shaped tokens, `/adminconsent` | `token.rs` | §1.1–§1.5 |
//! | bearer-token check, `www-authenticate`, the request pipeline | `graph/mod.rs` (routes in `graph/route.rs`) | §1.6 |
//! | error envelope (`error.code/message/innerError`: `ErrorReply`), `request-id` headers | `errors.rs` | §2.10, §2.11 |
//! | `/users/{x}` (`graph/users.rs`), `/calendar`, `/mailboxSettings` (`graph/calendar.rs`), mailbox kinds (`graph/mod.rs`) | `graph/` | §5, §7.3 |
//! | events: create/get/update/delete, list, `calendarView` (`graph/calendar.rs`), validation (`events/input.rs`), `transactionId`, extended properties, rendering and `Prefer` (`events/render.rs`, `odata.rs`) | `events/`, `graph/calendar.rs`, `odata.rs` | §2.1–§2.9, §6.4 |
//! | `calendarView/delta`: rounds, `nextLink`/`deltaLink`, `@removed`, 410 `syncStateNotFound`; the owner's edits and deletions (`Emulator::edit_event`, `remove_event`) | `graph/delta.rs` | ARCHITECTURE.md "Delta" |
//! | accepted time-zone names | `timezones.rs` | §2.3 |
//! | `$batch` | `batch.rs` | §3 |
//! | throttling (4 in flight, 10,000 requests / 10 min, 150 MB uploads / 5 min per app+mailbox), `Retry-After` | `throttle.rs` | §4 |
//! | faults (503, 504, 504-after-create, dropped connection, 429, expired token) | `faults.rs` | §4.2, §7.6 |
//!
//! Behaviour GRAPH.md marks UNCONFIRMED is a [`Settings`] knob (`transaction_id_mode`,
//! `if_match_mismatch_status`, `missing_secret_error`, `fractional_retry_after`,
//! `rate_window_counts_throttled`, ...); UNCONFIRMED error texts are constants in [`wire`].
//!
//! # Use
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use graph_emulator::{Emulator, Seed, Settings};
//! let running = Emulator::start(Seed::example(), Settings::default()).await?;
//! let token_url = format!("{}/contoso.onmicrosoft.com/oauth2/v2.0/token", running.login_url());
//! let events_url = format!("{}/users/taro@contoso.onmicrosoft.com/events", running.graph_url());
//! # let _ = (token_url, events_url);
//! // ... drive the code under test, then look at the state:
//! let stored = running.emulator.calendar("taro@contoso.onmicrosoft.com");
//! let stats = running.emulator.stats();
//! # let _ = (stored, stats);
//! running.stop().await;
//! # Ok(()) }
//! ```
//! The server also exposes the admin operations over HTTP for the standalone
//! `graph-emulator` command: `GET /_emulator/stats`, `GET /_emulator/log`,
//! `DELETE /_emulator/log`, `GET /_emulator/calendar/{mailbox}`, `POST /_emulator/tenants`
//! (a [`SeedTenant`]), `PUT /_emulator/faults` ([`Faults`]), `POST /_emulator/scripted-faults`
//! ([`ScriptedFault`]), `PUT /_emulator/latency` (`{"ms": 250}`).
//!
//! # Seed format
//! JSON (or TOML with the same structure). Example (`crates/graph-emulator/src/example-seed.json`):
//! ```json
//! { "tenants": [ {
//!     "id": "8f2c5a1e-3b7d-4c9a-9e61-0d4f7b2a6c10",
//!     "domains": ["contoso.onmicrosoft.com"],
//!     "apps": [ {
//!         "client_id": "5d0b1f6e-2a4c-4e8b-b7d3-9c1e0a2f4b68",
//!         "display_name": "cyzen sync",
//!         "secrets": [ {"value": "emulator-secret", "expires_at": "2099-01-01T00:00:00Z"},
//!                      {"value": "old-expired-secret", "expires_at": "2020-01-01T00:00:00Z"} ],
//!         "roles": ["Calendars.ReadWrite", "User.Read.All", "Contacts.Read"],
//!         "consent": "granted" } ],
//!     "users": [
//!         { "id": "3e9d2c1b-7a6f-4b5e-9d8c-2a1b0c9d8e7f", "upn": "taro@contoso.onmicrosoft.com",
//!           "mail": "taro@contoso.example", "display_name": "Taro Yamada",
//!           "mailbox": "ok", "time_zone": "Tokyo Standard Time" },
//!         { "upn": "guest@contoso.onmicrosoft.com", "mailbox": "no_mailbox" },
//!         { "upn": "restricted@contoso.onmicrosoft.com", "mailbox": "policy_denied" } ] } ] }
//! ```
//! * `tenants[].id`: tenant GUID; `domains`: names accepted instead of the id in
//!   `/{tenant}/oauth2/v2.0/token`.
//! * `apps[]`: `client_id` (in exactly one tenant; elsewhere AADSTS700016), `display_name`,
//!   `secrets[]` (`value`, optional RFC 3339 `expires_at`), `roles` (granted application
//!   permissions), `consent`: `granted` (default) | `pending` (tokens carry no `roles` until
//!   `/adminconsent`) | `refuses` (`/adminconsent` redirects with `error=permission_denied`).
//! * `users[]`: `upn` (required), `id` (optional: derived from the UPN, stable), `mail`
//!   (default: the UPN, `null` for `no_mailbox`), `display_name` (default: UPN local part),
//!   `mailbox`: `ok` (default) | `no_mailbox` | `policy_denied`, `time_zone` (Windows id,
//!   default `UTC`), `account_enabled` (default true), `user_purpose` (default `user`).
//!   Users not listed are unknown.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::too_many_lines))]

mod batch;
mod errors;
mod events;
mod faults;
mod graph;
mod http;
mod odata;
mod seed;
mod state;
mod throttle;
pub mod timezones;
mod token;
mod util;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

pub use errors::wire;
pub use seed::{Consent, MailboxKind, Seed, SeedApp, SeedSecret, SeedTenant, SeedUser};

use state::Inner;

/// Errors of the emulator's own setup (not Graph errors, which are HTTP responses).
#[derive(Debug, thiserror::Error)]
pub enum EmulatorError {
    #[error("cannot read seed file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid JSON seed: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid TOML seed: {0}")]
    Toml(String),
    #[error("unsupported seed file extension '{0}' (use .json or .toml)")]
    UnsupportedSeedFormat(String),
    #[error("invalid seed: {0}")]
    InvalidSeed(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a second POST with an already used `transactionId` does (GRAPH.md §2.5, UNCONFIRMED).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransactionIdMode {
    /// 201 with the existing event, unchanged (the observed behaviour).
    #[default]
    ReturnExisting,
    /// Ignore `transactionId`: a second event is created.
    CreateDuplicate,
    /// 409 [`wire::DUPLICATE_TRANSACTION_CODE`].
    Conflict409,
}

/// What the token endpoint answers when neither `client_secret` nor Basic auth is sent
/// (GRAPH.md §1.4: 900144 per the brief, 7000218 per the AADSTS reference; UNCONFIRMED).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MissingSecretError {
    /// 400 `invalid_request` AADSTS900144 "... parameter: 'client_secret'."
    #[default]
    InvalidRequest900144,
    /// 401 `invalid_client` AADSTS7000218 "... 'client_assertion' or 'client_secret'."
    InvalidClient7000218,
}

/// Emulator knobs. All fields public; `Settings::default()` mirrors Graph's documented numbers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Access-token lifetime (`expires_in`, `ext_expires_in`). Default 3599 s.
    pub token_lifetime: Duration,
    /// Requests in flight per (app, mailbox) before 429 `ApplicationThrottled`. Default 4;
    /// 0 = unlimited.
    pub max_concurrent_per_mailbox: u32,
    /// Admitted requests per (app, mailbox) per `rate_window` before 429 `TooManyRequests`.
    /// Default 10,000; 0 = unlimited.
    pub requests_per_window: u32,
    /// Sliding window of `requests_per_window`. Default 600 s.
    pub rate_window: Duration,
    /// Upload bytes (POST/PATCH/PUT bodies) per (app, mailbox) per `upload_window` before
    /// 429 `TooManyRequests` (GRAPH.md §4.1: 150 MB / 5 min). Default 150 MiB; 0 = unlimited.
    pub upload_bytes_per_window: u64,
    /// Sliding window of `upload_bytes_per_window`. Default 300 s.
    pub upload_window: Duration,
    /// Whether requests rejected by the window still count in it ("Graph keeps counting usage
    /// while you are throttled", GRAPH.md §4.2). Default false.
    pub rate_window_counts_throttled: bool,
    /// `Retry-After` for the concurrency 429 and injected 429s. Default 1.0 s.
    pub retry_after_secs: f64,
    /// Send `Retry-After` with a fraction ("0.5", "2.128") instead of whole seconds
    /// (rounded up). Default false.
    pub fractional_retry_after: bool,
    /// Added to every Graph request (inside the concurrency slot). Default 0.
    pub latency: Duration,
    /// Random faults (seeded). Default: none.
    pub faults: Faults,
    /// Duplicate `transactionId` behaviour. Default [`TransactionIdMode::ReturnExisting`].
    pub transaction_id_mode: TransactionIdMode,
    /// Accept the IANA names Graph documents in `timeZone` (GRAPH.md §2.3). Default true.
    pub accept_iana_zones: bool,
    /// Reject event requests without `Prefer: IdType="ImmutableId"` (400). Default false.
    pub require_immutable_id: bool,
    /// Return `$batch` responses in a shuffled order. Default true.
    pub shuffle_batch_responses: bool,
    /// Max requests in one `$batch`. Default 20.
    pub batch_max_requests: usize,
    /// Unordered `$batch` items executed at once. Default 4.
    pub batch_concurrency: usize,
    /// Page size of event lists without `$top`. Default 10.
    pub default_page_size: usize,
    /// Largest accepted `$top` (larger values are capped). Default 1000.
    pub max_page_size: usize,
    /// Token error for a missing secret. Default [`MissingSecretError::InvalidRequest900144`].
    pub missing_secret_error: MissingSecretError,
    /// `GET /users/{x}/mailboxSettings` also accepts `Calendars.Read`/`Calendars.ReadWrite`
    /// (real Graph wants `MailboxSettings.Read`). Default true.
    pub mailbox_settings_accepts_calendar_roles: bool,
    /// Status for an `If-Match` that does not match the current changeKey (UNCONFIRMED:
    /// 409 or 412). 0 disables `If-Match` checks. Default 412.
    pub if_match_mismatch_status: u16,
    /// Event ids use standard base64 and always contain `+` and `/` (as GRAPH.md §2.9 warns),
    /// so clients must URL-encode them. False: URL-safe alphabet. Default true.
    pub url_unsafe_ids: bool,
    /// Request-log entries kept (oldest dropped first). Default 100,000.
    pub max_log_entries: usize,
    /// Largest accepted request body. Default 4 MiB.
    pub max_body_bytes: usize,
    /// Max attendees per event. Default 500.
    pub max_attendees: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            token_lifetime: Duration::from_secs(3599),
            max_concurrent_per_mailbox: 4,
            requests_per_window: 10_000,
            rate_window: Duration::from_secs(600),
            upload_bytes_per_window: 150 * 1024 * 1024,
            upload_window: Duration::from_secs(300),
            rate_window_counts_throttled: false,
            retry_after_secs: 1.0,
            fractional_retry_after: false,
            latency: Duration::ZERO,
            faults: Faults::default(),
            transaction_id_mode: TransactionIdMode::ReturnExisting,
            accept_iana_zones: true,
            require_immutable_id: false,
            shuffle_batch_responses: true,
            batch_max_requests: 20,
            batch_concurrency: 4,
            default_page_size: 10,
            max_page_size: 1000,
            missing_secret_error: MissingSecretError::InvalidRequest900144,
            mailbox_settings_accepts_calendar_roles: true,
            if_match_mismatch_status: 412,
            url_unsafe_ids: true,
            max_log_entries: 100_000,
            max_body_bytes: 4 * 1024 * 1024,
            max_attendees: 500,
        }
    }
}

/// Random fault rates (each 0.0..=1.0) for Graph event requests (`/events`, `/calendarView`,
/// also inside `$batch`), drawn from an RNG seeded with `seed` so runs are reproducible.
/// At most one of drop/503/504/429 hits a request; `rate_504_after_create` is drawn
/// separately and only for POST creates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    pub rate_503: f64,
    pub rate_504: f64,
    /// The create is performed, then 504 is answered.
    pub rate_504_after_create: f64,
    pub rate_drop_connection: f64,
    pub rate_429: f64,
    /// 503 `temporarily_unavailable` from the token endpoint.
    pub rate_token_503: f64,
    pub seed: u64,
}

/// A one-shot fault for the first request (Graph request, `$batch` envelope or `$batch` item)
/// that matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScriptedFault {
    #[serde(default)]
    pub matcher: FaultMatch,
    pub kind: FaultKind,
}

impl ScriptedFault {
    /// A fault for the next Graph request of any kind.
    pub fn new(kind: FaultKind) -> ScriptedFault {
        ScriptedFault {
            matcher: FaultMatch::default(),
            kind,
        }
    }
    /// Only requests with this method (case-insensitive).
    pub fn method(mut self, method: &str) -> ScriptedFault {
        self.matcher.method = Some(method.to_string());
        self
    }
    /// Only requests whose path (with query, percent-encoded as sent, e.g.
    /// `/v1.0/users/x/events`) contains this.
    pub fn path_contains(mut self, needle: &str) -> ScriptedFault {
        self.matcher.path_contains = Some(needle.to_string());
        self
    }
}

/// Which requests a [`ScriptedFault`] applies to; `None` matches anything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultMatch {
    pub method: Option<String>,
    pub path_contains: Option<String>,
}

/// The injected failure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// 503 `serviceNotAvailable`, with `Retry-After` when given.
    Status503 { retry_after: Option<f64> },
    /// 504 before doing anything.
    Gateway504,
    /// Perform the request (e.g. the create), then answer 504.
    Gateway504AfterCreate,
    /// Close the connection without an answer (in `$batch`: the whole batch connection).
    DropConnection,
    /// 429 `TooManyRequests` with this `Retry-After`.
    Throttle429 { retry_after: f64 },
    /// 401 `InvalidAuthenticationToken` "Access token has expired or is not yet valid."
    ExpiredToken,
    /// 410 `syncStateNotFound`: a delta state token Graph no longer knows (match it with
    /// `path_contains("calendarView/delta")`).
    SyncStateNotFound,
}

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Every request handled: token, adminconsent, Graph, `$batch` envelopes and each item.
    pub requests: u64,
    /// 429 answers (throttling and injected).
    pub throttled: u64,
    pub tokens_issued: u64,
    /// Highest number of admitted requests in flight at once per mailbox (all apps together),
    /// key: lowercase UPN.
    pub max_in_flight_per_mailbox: HashMap<String, u32>,
    /// Highest number of admitted mailbox requests in flight at once overall.
    pub max_in_flight_any: u32,
    /// POST/PATCH/DELETE requests addressed to events (incl. `$batch` items), whatever their
    /// outcome.
    pub writes: u64,
    /// `$batch` envelopes received.
    pub batches: u64,
    pub events_created: u64,
    /// Creates answered with an existing event because of a reused `transactionId`.
    pub create_dedupes: u64,
    /// Events deleted.
    pub events_deleted: u64,
    /// Events updated (PATCH).
    pub events_updated: u64,
}

/// One handled request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedRequest {
    pub method: String,
    /// Path with query, as sent (for `$batch` items: `/v1.0` + the item's `url`).
    pub path: String,
    /// HTTP status answered; 0 = connection dropped by a fault.
    pub status: u16,
    /// Lowercase UPN of the addressed mailbox/user (the raw segment if the user is unknown).
    pub mailbox: Option<String>,
    pub time: SystemTime,
    pub batch_item: bool,
    /// `appid` of the bearer token (Graph) or the `client_id` (token endpoint), if known.
    pub client_id: Option<String>,
    pub duration: Duration,
    pub request_id: String,
}

/// The emulator's shared state. Cheap to clone; usable without a server.
#[derive(Clone)]
pub struct Emulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").finish_non_exhaustive()
    }
}

impl Emulator {
    pub fn new(seed: Seed, settings: Settings) -> Emulator {
        Emulator {
            inner: Arc::new(Inner::new(seed, settings)),
        }
    }

    /// Serves HTTP/1.1 on `listener` until `shutdown` resolves (then finishes in-flight requests).
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let app = http::router(self);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Binds `127.0.0.1:0` and serves in a background task.
    pub async fn start(seed: Seed, settings: Settings) -> std::io::Result<RunningEmulator> {
        Emulator::new(seed, settings)
            .start_on("127.0.0.1:0".parse().expect("addr"))
            .await
    }

    /// Binds `addr` and serves this emulator in a background task.
    pub async fn start_on(self, addr: SocketAddr) -> std::io::Result<RunningEmulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = self.clone();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = rx.await;
        }));
        Ok(RunningEmulator {
            emulator: self,
            addr,
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Adds a tenant (with its apps and users) at run time; replaces a tenant with the same id.
    /// Stored events of users that remain are kept.
    pub fn add_tenant(&self, t: SeedTenant) {
        self.inner.add_tenant(t);
    }

    /// Every stored event of a mailbox (UPN or id, case-insensitive, any tenant), as full JSON
    /// including `singleValueExtendedProperties` and `transactionId`, times in UTC, sorted by
    /// start. Unknown mailbox: empty.
    pub fn calendar(&self, mailbox: &str) -> Vec<serde_json::Value> {
        self.inner.calendar(mailbox)
    }

    /// Deletes a stored event as its owner would in Outlook (no request, nothing logged; the next
    /// delta round lists it `@removed`).
    /// False if the mailbox or the event is unknown.
    pub fn remove_event(&self, mailbox: &str, event_id: &str) -> bool {
        self.inner.remove_event(mailbox, event_id)
    }

    /// Edits a stored event as its owner would in Outlook (no request, nothing logged): `patch`
    /// is a Graph PATCH body (`subject`, `start`/`end`, `location`, ...), validated as Graph
    /// would; the event gets a new changeKey and shows up in the next delta round.
    pub fn edit_event(
        &self,
        mailbox: &str,
        event_id: &str,
        patch: &serde_json::Value,
    ) -> Result<(), String> {
        self.inner.edit_event(mailbox, event_id, patch)
    }

    /// Forgets every delta state token of a mailbox (UPN or id): its next delta request with a
    /// nextLink or deltaLink answers 410 `syncStateNotFound`. The number forgotten.
    pub fn expire_delta_tokens(&self, mailbox: &str) -> usize {
        match self.inner.find_user(mailbox) {
            Some(u) => self.inner.expire_delta_tokens(&u.mailbox_key()),
            None => 0,
        }
    }

    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.inner
            .log
            .lock()
            .expect("log")
            .iter()
            .cloned()
            .collect()
    }

    pub fn clear_log(&self) {
        self.inner.log.lock().expect("log").clear();
    }

    /// Replaces the random-fault settings (and reseeds their RNG with `f.seed`).
    pub fn set_faults(&self, f: Faults) {
        self.inner.faults.lock().expect("faults").set(f);
    }

    /// Queues a one-shot fault, consumed by the first matching request.
    pub fn script_fault(&self, f: ScriptedFault) {
        self.inner
            .faults
            .lock()
            .expect("faults")
            .scripted
            .push_back(f);
    }

    pub fn set_latency(&self, d: Duration) {
        self.inner.settings.lock().expect("settings").latency = d;
    }

    /// A copy of the current settings.
    pub fn settings(&self) -> Settings {
        self.inner.settings()
    }

    /// Changes settings at run time (faults: use [`Emulator::set_faults`]).
    pub fn update_settings(&self, f: impl FnOnce(&mut Settings)) {
        f(&mut self.inner.settings.lock().expect("settings"));
    }

    /// Changes a user's mailbox kind at run time (UPN or id). False if unknown.
    pub fn set_mailbox_kind(&self, mailbox: &str, kind: MailboxKind) -> bool {
        self.inner.set_mailbox_kind(mailbox, kind)
    }

    /// The object id of a user (UPN or id, case-insensitive, any tenant).
    pub fn user_id(&self, mailbox: &str) -> Option<String> {
        self.inner.find_user(mailbox).map(|u| u.id.clone())
    }

    /// Current consent state of an app.
    pub fn consent(&self, client_id: &str) -> Option<Consent> {
        self.inner.consent(client_id)
    }
}

/// A server started by [`Emulator::start`]. Dropping it also shuts the server down.
pub struct RunningEmulator {
    pub emulator: Emulator,
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl std::fmt::Debug for RunningEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningEmulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl RunningEmulator {
    /// `http://127.0.0.1:PORT`; token endpoint: `{login_url}/{tenant}/oauth2/v2.0/token`.
    pub fn login_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://127.0.0.1:PORT/v1.0`; events: `{graph_url}/users/{id}/events`.
    pub fn graph_url(&self) -> String {
        format!("http://{}/v1.0", self.addr)
    }

    /// Stops accepting, lets in-flight requests finish (at most 5 s), and waits for the server.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The `graph-emulator` command: serves `seed` (default: [`Seed::example`]) on `listen`,
/// prints the URLs, and runs until Ctrl-C.
pub async fn run_standalone(
    listen: SocketAddr,
    seed: Option<PathBuf>,
    settings: Settings,
) -> Result<(), EmulatorError> {
    let seed = match seed {
        Some(path) => Seed::from_file(&path)?,
        None => Seed::example(),
    };
    let listen_err = |source| EmulatorError::Listen {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(listen_err)?;
    let addr = listener.local_addr().map_err(listen_err)?;
    println!("graph: http://{addr}/v1.0");
    println!("login: http://{addr}");
    for t in &seed.tenants {
        let domain = t.domains.first().unwrap_or(&t.id);
        println!("tenant {} ({})", t.id, t.domains.join(", "));
        println!("  token: http://{addr}/{domain}/oauth2/v2.0/token");
        for a in &t.apps {
            println!(
                "  app {} consent={:?} roles={}",
                a.client_id,
                a.consent,
                a.roles.join(",")
            );
        }
        for u in &t.users {
            println!("  user {} mailbox={:?}", u.upn, u.mailbox);
        }
    }
    let emulator = Emulator::new(seed, settings);
    emulator
        .serve(listener, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(listen_err)?;
    Ok(())
}
