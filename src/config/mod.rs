//! One typed, validated configuration, loaded from a TOML file and `OUTLOOK_SYNC__*` environment
//! variables (`OUTLOOK_SYNC__AMQP__URL` sets `amqp.url`). Every key and its default is documented
//! in `config/default.toml`; an invalid setting stops the process with where it was set (file and
//! line, or variable), the key and the problem. The value of a key that holds a secret is never
//! shown (`redact`); `source` loads the layers and places errors; `checks` holds the value checks
//! [`Config::validate`] applies key by key.

mod checks;
mod redact;
mod source;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The commented defaults file, shipped in the binary so `outlook-sync config-defaults` can print it.
pub const DEFAULTS_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub amqp: AmqpConfig,
    pub redis: RedisConfig,
    pub window: WindowConfig,
    pub graph: GraphConfig,
    pub retry: RetryConfig,
    pub admin: AdminConfig,
    pub ledger: LedgerConfig,
    pub dlq: DlqConfig,
    pub log: LogConfig,
    pub secrets: SecretsConfig,
    pub worker: WorkerConfig,
}

/// How `outlook-sync run` behaves as a process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// On SIGTERM, how long the current flush pass may take to finish before the worker gives
    /// its claims back and exits. Kubernetes' `terminationGracePeriodSeconds` must exceed it.
    pub shutdown_grace_seconds: u64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            shutdown_grace_seconds: 25,
        }
    }
}

/// Keys that encrypt client secrets at rest (AES-256-GCM). Each stored secret names the key id
/// it was sealed with, so keys can rotate: add a new key, make it active, keep the old ones
/// until `outlook-sync admin reseal` has re-encrypted everything.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsConfig {
    /// Every key that may have sealed a stored secret.
    pub keys: Vec<SecretKeyConfig>,
    /// The id (in `keys`) new secrets are sealed with. Empty only when `keys` is empty.
    pub active_key: String,
}

/// One AES-256 key: an id and 32 bytes in standard base64. `Debug` never shows the key.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyConfig {
    pub id: String,
    pub key_base64: String,
}

impl std::fmt::Debug for SecretKeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretKeyConfig")
            .field("id", &self.id)
            .field("key_base64", &"***")
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerConfig {
    /// Days a schedule's sync ledger is kept after its last entry.
    pub retention_days: u64,
    /// Entries kept per schedule (the newest).
    pub max_entries: usize,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        Self {
            retention_days: 14,
            max_entries: 200,
        }
    }
}

/// Dead-letter operations (`outlook-sync dlq …` and the admin API).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DlqConfig {
    /// Where `dlq purge` archives what it removes (one JSON-lines file per purge).
    pub archive_dir: String,
    /// Dead letters handled per batch: republished and confirmed together, then acked.
    pub batch_size: usize,
    /// How often a worker samples the dead-letter queue's depth for the gauge, in seconds.
    pub depth_poll_seconds: u64,
}

impl Default for DlqConfig {
    fn default() -> Self {
        Self {
            archive_dir: "dead-letter-archive".into(),
            batch_size: 16,
            depth_poll_seconds: 15,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpConfig {
    /// `amqp://` or `amqps://` URL, with credentials and vhost.
    pub url: String,
    /// Topic exchange cyzen services publish schedule events to.
    pub exchange: String,
    /// The quorum work queue, bound to `schedule.*`.
    pub queue: String,
    /// Exchange and quorum queue dead letters go to.
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    /// Unacked deliveries per consumer (quorum queues cap this at 2,000).
    pub prefetch: u16,
    /// Redeliveries before the broker dead-letters a message by itself (`x-delivery-limit`).
    pub delivery_limit: u32,
    /// Deliveries staged in Redis with one pipelined round trip, then acked together.
    pub ingest_batch: usize,
    /// How long ingest waits to fill a batch before staging what it has, in milliseconds.
    pub ingest_batch_wait_ms: u64,
    /// AMQP heartbeat the worker asks for, in seconds (0: the broker's). A broker that stops
    /// answering is noticed after two heartbeats. A `heartbeat=` in `url` wins.
    pub heartbeat_seconds: u16,
}

impl AmqpConfig {
    /// `url` with `heartbeat=heartbeat_seconds` added unless it already names a heartbeat.
    pub fn connection_url(&self) -> String {
        let Ok(mut u) = url::Url::parse(&self.url) else {
            return self.url.clone();
        };
        if self.heartbeat_seconds == 0 || u.query_pairs().any(|(k, _)| k == "heartbeat") {
            return self.url.clone();
        }
        u.query_pairs_mut()
            .append_pair("heartbeat", &self.heartbeat_seconds.to_string());
        u.to_string()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub url: String,
    /// Every key this service writes starts with `{key_prefix}:`.
    pub key_prefix: String,
    /// Timeout of one Redis call (a large pipeline needs more than redis-rs's 500 ms default).
    pub response_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Length of the tumbling, aligned window, in seconds.
    pub seconds: u64,
    /// How often a worker looks for due schedules, in milliseconds.
    pub poll_interval_ms: u64,
    /// How long a claim on due schedules lasts before another worker may take it over.
    pub claim_lease_seconds: u64,
    /// Due schedules claimed at once.
    pub claim_batch: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GraphConfig {
    /// Graph's versioned base URL (national clouds: e.g. https://graph.microsoft.us/v1.0).
    pub base_url: String,
    /// The identity platform's base URL (token endpoint `{login_url}/{tenant}/oauth2/v2.0/token`).
    pub login_url: String,
    /// The Outlook category every copy carries.
    pub category: String,
    /// IANA zone for all-day schedules published without one (and for zones with no Windows name).
    pub default_time_zone: String,
    /// Requests in flight per mailbox across all workers (Graph's limit is 4).
    pub max_in_flight_per_mailbox: u32,
    /// Requests in flight per worker across all mailboxes.
    pub max_in_flight_total: usize,
    /// A worker's exclusive lease on a mailbox (renewed while it writes) expires after this many
    /// seconds if the worker dies; another worker then takes the mailbox over.
    pub mailbox_lease_seconds: u64,
    /// Requests per JSON `$batch` (Graph's limit is 20).
    pub batch_size: usize,
    /// Timeout of one HTTP request, in milliseconds.
    pub request_timeout_ms: u64,
    /// A token is renewed this many seconds before it expires.
    pub token_refresh_margin_seconds: u64,
    /// Graph's request budget per app and mailbox (`mailbox_request_budget` requests per
    /// `mailbox_budget_window_seconds`; GRAPH.md: 10,000 per 600 s). Each mailbox's requests are
    /// paced within it, across workers, so a backlog never runs into 429 to find it.
    pub mailbox_request_budget: u32,
    pub mailbox_budget_window_seconds: u64,
    /// Allows `http://` `base_url` and `login_url` to a host other than this machine (a Graph
    /// emulator in a compose network). The client secret then travels unencrypted: never in
    /// production; a worker logs a warning at start while it is on.
    pub allow_insecure_http: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts for one change before it becomes a dead letter, counting only the failures
    /// that could repeat forever for the same request (5xx without `Retry-After`, timeouts).
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// A `Retry-After` longer than this is capped (and logged), in seconds.
    pub max_retry_after_seconds: u64,
    /// How long a change is retried at most, from when it was staged, in seconds: past it, a
    /// change Graph still throttles (or that still fails) becomes a dead letter saying so. A 429
    /// or 503 with `Retry-After` is waited out without counting against `max_attempts`.
    pub give_up_after_seconds: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the admin API, /metrics, /healthz and /readyz listen.
    pub listen: String,
    /// Bearer tokens accepted by the admin API. Empty: the admin API refuses every call.
    pub tokens: Vec<String>,
    /// The admin API's base URL as the administrator's browser reaches it: the admin-consent
    /// redirect comes back to `{public_url}/v1/consent/callback`.
    pub public_url: String,
    /// How long an admin-consent link (its `state`) stays usable, in seconds.
    pub consent_state_ttl_seconds: u64,
    /// A company whose recorded client-secret expiry is this many days away or less is flagged.
    pub secret_expiry_warning_days: u32,
    /// Mailbox checks in flight at once during a bulk link (each row reads a different mailbox).
    pub bulk_concurrency: usize,
    /// Bulk uploads up to this many rows are answered at once; larger ones run as a job.
    pub bulk_sync_max_rows: usize,
    /// A second listener serving only the admin-consent callback (the one route a customer
    /// administrator's browser reaches from the internet); empty: none.
    pub public_listen: String,
    /// A connection that has not sent a whole request head within this many seconds is closed.
    pub header_read_timeout_seconds: u64,
    /// A connection that moved no byte for this many seconds, with no request in progress, is
    /// closed.
    pub idle_timeout_seconds: u64,
    /// A request unanswered after this many seconds gets 503 `request_timeout`.
    pub request_timeout_seconds: u64,
    /// Connections open at once per listener (never more than half the file-descriptor limit);
    /// at the cap a new one displaces the oldest without a request in progress.
    pub max_connections: usize,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,outlook_sync::graph=debug`.
    pub filter: String,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "cyzen.schedules".into(),
            queue: "outlook-sync.work".into(),
            dead_letter_exchange: "outlook-sync.dead".into(),
            dead_letter_queue: "outlook-sync.dead".into(),
            prefetch: 2000,
            delivery_limit: 20,
            ingest_batch: 500,
            ingest_batch_wait_ms: 20,
            heartbeat_seconds: 10,
        }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            key_prefix: "outlook-sync".into(),
            response_timeout_ms: 5000,
        }
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        Self {
            seconds: 300,
            poll_interval_ms: 1000,
            claim_lease_seconds: 120,
            claim_batch: 200,
        }
    }
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            base_url: "https://graph.microsoft.com/v1.0".into(),
            login_url: "https://login.microsoftonline.com".into(),
            category: "cyzen".into(),
            default_time_zone: "Asia/Tokyo".into(),
            max_in_flight_per_mailbox: 4,
            max_in_flight_total: 256,
            mailbox_lease_seconds: 15,
            batch_size: 20,
            request_timeout_ms: 30_000,
            token_refresh_margin_seconds: 300,
            mailbox_request_budget: 10_000,
            mailbox_budget_window_seconds: 600,
            allow_insecure_http: false,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff_ms: 500,
            max_backoff_ms: 60_000,
            max_retry_after_seconds: 600,
            give_up_after_seconds: 86_400,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            tokens: Vec::new(),
            public_url: "http://127.0.0.1:8080".into(),
            consent_state_ttl_seconds: 3600,
            secret_expiry_warning_days: 30,
            bulk_concurrency: 16,
            bulk_sync_max_rows: 500,
            public_listen: String::new(),
            header_read_timeout_seconds: 5,
            idle_timeout_seconds: 30,
            request_timeout_seconds: 120,
            max_connections: 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// A configuration that cannot be used: where it was set, which key, and what is wrong. It never
/// holds the value of a key that bears a secret.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, unreadable or not TOML (then where the parser stopped).
    #[error(
        "{path}{}{}: {message}",
        line.map(|l| format!(", line {l}")).unwrap_or_default(),
        column.map(|c| format!(", column {c}")).unwrap_or_default()
    )]
    File {
        path: String,
        line: Option<usize>,
        column: Option<usize>,
        message: String,
    },
    /// A key whose value cannot be used.
    #[error("{place}configuration key `{key}`: {message}")]
    Key {
        key: String,
        message: String,
        place: Place,
    },
}

/// Where a key was set: the file and line, or the environment variable (nothing for a default,
/// or for a configuration built in code).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Place {
    #[default]
    Unknown,
    File {
        path: String,
        line: Option<usize>,
    },
    Env {
        var: String,
    },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Unknown => Ok(()),
            Place::File {
                path,
                line: Some(l),
            } => write!(f, "{path}, line {l}: "),
            Place::File { path, line: None } => write!(f, "{path}: "),
            Place::Env { var } => write!(f, "environment variable {var}: "),
        }
    }
}

impl Config {
    /// Defaults, then the TOML file (if given), then `OUTLOOK_SYNC__SECTION__KEY` variables.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let toml = file.map(source::TomlLayer::read).transpose()?;
        source::load(toml, true)
    }

    /// Loads from TOML text only (no environment), for tests and tools.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let toml = source::TomlLayer::parse("TOML text".into(), text.into())?;
        source::load(Some(toml), false)
    }

    /// The configuration as TOML, every secret redacted (a URL keeps all but its password), for
    /// `outlook-sync check-config`.
    pub fn to_redacted_toml(&self) -> String {
        redact::redacted_toml(self)
    }

    /// What a valid configuration allows that an operator must hear about: plain `http://` to
    /// Graph off this machine under `graph.allow_insecure_http`.
    pub fn warnings(&self) -> Vec<String> {
        let g = &self.graph;
        [
            ("graph.base_url", &g.base_url),
            ("graph.login_url", &g.login_url),
        ]
        .into_iter()
        .filter_map(|(key, v)| {
            let host = checks::insecure_remote_host(v)?;
            Some(format!(
                "{key} is plain http:// to {host} (allowed by graph.allow_insecure_http): \
                     client secrets and tokens travel unencrypted; only for a test emulator, \
                     never in production"
            ))
        })
        .collect()
    }

    /// Checks every rule a type cannot express: anything that could never work is refused here,
    /// with its key. No message shows the value of a key that bears a secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn bad(key: &str, message: impl Into<String>) -> ConfigError {
            ConfigError::Key {
                key: key.into(),
                message: message.into(),
                place: Place::Unknown,
            }
        }
        let a = &self.amqp;
        checks::amqp_url(&a.url).map_err(|m| bad("amqp.url", m))?;
        for (key, v) in [
            ("amqp.exchange", &a.exchange),
            ("amqp.queue", &a.queue),
            ("amqp.dead_letter_exchange", &a.dead_letter_exchange),
            ("amqp.dead_letter_queue", &a.dead_letter_queue),
            ("redis.key_prefix", &self.redis.key_prefix),
            ("graph.category", &self.graph.category),
        ] {
            if v.trim().is_empty() {
                return Err(bad(key, "must not be empty"));
            }
        }
        if a.queue == a.dead_letter_queue {
            return Err(bad("amqp.dead_letter_queue", "must differ from amqp.queue"));
        }
        if a.prefetch == 0 || a.prefetch > 2000 {
            return Err(bad(
                "amqp.prefetch",
                format!(
                    "{} is out of range 1..=2000 (quorum queues cap prefetch at 2,000)",
                    a.prefetch
                ),
            ));
        }
        if a.delivery_limit == 0 {
            return Err(bad("amqp.delivery_limit", "must be at least 1"));
        }
        if a.ingest_batch == 0 || a.ingest_batch > usize::from(a.prefetch) {
            return Err(bad(
                "amqp.ingest_batch",
                format!(
                    "{} must be from 1 to amqp.prefetch ({})",
                    a.ingest_batch, a.prefetch
                ),
            ));
        }
        checks::redis_url(&self.redis.url).map_err(|m| bad("redis.url", m))?;
        if self.redis.response_timeout_ms < 100 {
            return Err(bad("redis.response_timeout_ms", "must be at least 100"));
        }
        let w = &self.window;
        if w.seconds == 0 || w.seconds > 3600 {
            return Err(bad(
                "window.seconds",
                format!("{} is out of range 1..=3600", w.seconds),
            ));
        }
        if w.poll_interval_ms == 0 {
            return Err(bad("window.poll_interval_ms", "must be at least 1"));
        }
        if w.claim_lease_seconds < 5 {
            return Err(bad("window.claim_lease_seconds", "must be at least 5"));
        }
        if w.claim_batch == 0 {
            return Err(bad("window.claim_batch", "must be at least 1"));
        }
        let g = &self.graph;
        for (key, v) in [
            ("graph.base_url", &g.base_url),
            ("graph.login_url", &g.login_url),
        ] {
            checks::graph_url(v, g.allow_insecure_http).map_err(|m| bad(key, m))?;
        }
        if jiff::tz::TimeZone::get(&g.default_time_zone).is_err() {
            return Err(bad(
                "graph.default_time_zone",
                format!("{:?} is not a known IANA time zone", g.default_time_zone),
            ));
        }
        if g.max_in_flight_per_mailbox == 0 || g.max_in_flight_per_mailbox > 4 {
            return Err(bad(
                "graph.max_in_flight_per_mailbox",
                format!(
                    "{} is out of range 1..=4 (Graph allows 4 concurrent requests per mailbox)",
                    g.max_in_flight_per_mailbox
                ),
            ));
        }
        if g.mailbox_lease_seconds < 2 {
            return Err(bad("graph.mailbox_lease_seconds", "must be at least 2"));
        }
        if g.max_in_flight_total == 0 {
            return Err(bad("graph.max_in_flight_total", "must be at least 1"));
        }
        if g.batch_size == 0 || g.batch_size > 20 {
            return Err(bad(
                "graph.batch_size",
                format!(
                    "{} is out of range 1..=20 (Graph's $batch limit)",
                    g.batch_size
                ),
            ));
        }
        if g.request_timeout_ms < 100 {
            return Err(bad("graph.request_timeout_ms", "must be at least 100"));
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(bad("retry.max_attempts", "must be at least 1"));
        }
        if r.give_up_after_seconds == 0 {
            return Err(bad("retry.give_up_after_seconds", "must be at least 1"));
        }
        if g.mailbox_request_budget < 10 || g.mailbox_budget_window_seconds == 0 {
            return Err(bad(
                "graph.mailbox_request_budget",
                "must be at least 10 requests per graph.mailbox_budget_window_seconds (at least 1)",
            ));
        }
        if r.initial_backoff_ms == 0 || r.initial_backoff_ms > r.max_backoff_ms {
            return Err(bad(
                "retry.initial_backoff_ms",
                "must be at least 1 and at most retry.max_backoff_ms",
            ));
        }
        if self.admin.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "admin.listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8080",
                    self.admin.listen
                ),
            ));
        }
        for (i, token) in self.admin.tokens.iter().enumerate() {
            checks::admin_token(token).map_err(|m| bad(&format!("admin.tokens[{i}]"), m))?;
        }
        match url::Url::parse(&self.admin.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(bad(
                    "admin.public_url",
                    "is not an http(s) URL such as https://outlook-sync.example.com",
                ));
            }
        }
        if self.admin.consent_state_ttl_seconds < 60 {
            return Err(bad(
                "admin.consent_state_ttl_seconds",
                "must be at least 60",
            ));
        }
        if self.admin.bulk_concurrency == 0 || self.admin.bulk_concurrency > 64 {
            return Err(bad("admin.bulk_concurrency", "must be from 1 to 64"));
        }
        if self.admin.bulk_sync_max_rows == 0 {
            return Err(bad("admin.bulk_sync_max_rows", "must be at least 1"));
        }
        if !self.admin.public_listen.is_empty() {
            match self.admin.public_listen.parse::<SocketAddr>() {
                Err(_) => {
                    return Err(bad(
                        "admin.public_listen",
                        format!(
                            "{:?} is not an address such as 0.0.0.0:8443 (or empty for none)",
                            self.admin.public_listen
                        ),
                    ));
                }
                Ok(a) if Some(a) == self.admin.listen.parse().ok() => {
                    return Err(bad(
                        "admin.public_listen",
                        "must differ from admin.listen (the public listener serves only the consent callback)",
                    ));
                }
                Ok(_) => {}
            }
        }
        if !(1..=60).contains(&self.admin.header_read_timeout_seconds) {
            return Err(bad(
                "admin.header_read_timeout_seconds",
                "must be from 1 to 60 (a few seconds: a request head is small)",
            ));
        }
        if self.admin.idle_timeout_seconds < self.admin.header_read_timeout_seconds
            || self.admin.idle_timeout_seconds > 3600
        {
            return Err(bad(
                "admin.idle_timeout_seconds",
                "must be at least admin.header_read_timeout_seconds and at most 3600",
            ));
        }
        if !(1..=3600).contains(&self.admin.request_timeout_seconds) {
            return Err(bad(
                "admin.request_timeout_seconds",
                "must be from 1 to 3600",
            ));
        }
        if !(16..=65_536).contains(&self.admin.max_connections) {
            return Err(bad("admin.max_connections", "must be from 16 to 65536"));
        }
        self.validate_secrets()?;
        if self.ledger.retention_days == 0 || self.ledger.retention_days > 366 {
            return Err(bad("ledger.retention_days", "must be from 1 to 366"));
        }
        if self.ledger.max_entries == 0 {
            return Err(bad("ledger.max_entries", "must be at least 1"));
        }
        if self.dlq.archive_dir.trim().is_empty() {
            return Err(bad("dlq.archive_dir", "must not be empty"));
        }
        if self.dlq.batch_size == 0 || self.dlq.batch_size > 16 {
            return Err(bad(
                "dlq.batch_size",
                format!(
                    "{} is out of range 1..=16 (RabbitMQ holds back the acks of larger batches)",
                    self.dlq.batch_size
                ),
            ));
        }
        if self.dlq.depth_poll_seconds == 0 {
            return Err(bad("dlq.depth_poll_seconds", "must be at least 1"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(bad("log.filter", e.to_string()));
        }
        if a.heartbeat_seconds > 600 {
            return Err(bad(
                "amqp.heartbeat_seconds",
                format!("{} is out of range 0..=600", a.heartbeat_seconds),
            ));
        }
        let grace = self.worker.shutdown_grace_seconds;
        if grace == 0 || grace > 3600 {
            return Err(bad(
                "worker.shutdown_grace_seconds",
                format!("{grace} is out of range 1..=3600"),
            ));
        }
        Ok(())
    }

    fn validate_secrets(&self) -> Result<(), ConfigError> {
        let s = &self.secrets;
        let bad = |key: String, message: String| ConfigError::Key {
            key,
            message,
            place: Place::Unknown,
        };
        for (i, k) in s.keys.iter().enumerate() {
            if k.id.trim().is_empty() || k.id.contains(char::is_whitespace) {
                return Err(bad(
                    format!("secrets.keys[{i}].id"),
                    "must be a non-empty word".into(),
                ));
            }
            if s.keys[..i].iter().any(|o| o.id == k.id) {
                return Err(bad(
                    format!("secrets.keys[{i}].id"),
                    format!("{:?} is used twice", k.id),
                ));
            }
            checks::aes_key(&k.key_base64)
                .map_err(|m| bad(format!("secrets.keys[{i}].key_base64"), m))?;
        }
        match (s.keys.is_empty(), s.active_key.is_empty()) {
            (true, true) => Ok(()),
            // The value is not repeated: it may be a key pasted where its id belongs.
            (true, false) => Err(bad(
                "secrets.active_key".into(),
                "names a key, but secrets.keys is empty (active_key is the id of one of \
                 secrets.keys, such as 2026-01, not a key)"
                    .into(),
            )),
            (false, true) => Err(bad(
                "secrets.active_key".into(),
                "must name one of secrets.keys".into(),
            )),
            (false, false) if !s.keys.iter().any(|k| k.id == s.active_key) => Err(bad(
                "secrets.active_key".into(),
                format!(
                    "is not the id of one of secrets.keys (their ids: {})",
                    s.keys
                        .iter()
                        .map(|k| k.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window.seconds)
    }

    /// Graph's request budget per app and mailbox, as the worker paces it.
    pub fn mailbox_budget(&self) -> crate::store::pace::Budget {
        crate::store::pace::Budget::new(
            self.graph.mailbox_request_budget,
            Duration::from_secs(self.graph.mailbox_budget_window_seconds),
        )
    }

    /// `retry.give_up_after_seconds`.
    pub fn give_up_after(&self) -> Duration {
        Duration::from_secs(self.retry.give_up_after_seconds)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.listen.parse().expect("validated")
    }
}
