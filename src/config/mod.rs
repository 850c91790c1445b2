//! One typed, validated configuration, loaded from a TOML file and `OUTLOOK_SYNC__*` environment
//! variables (`OUTLOOK_SYNC__AMQP__URL` sets `amqp.url`). Every key and its default is documented
//! in `config/default.toml`; an invalid setting stops the process with where it was set (file and
//! line, or variable), the key and the problem. The value of a key that holds a secret is never
//! shown (`redact`); `source` loads the layers and places errors; [`Config::validate`] (`validate`)
//! applies the value checks of `checks` key by key.

mod checks;
mod redact;
mod source;
mod topology;
mod validate;

pub use topology::RedisTopology;

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
    pub repair: RepairConfig,
    pub database: DatabaseConfig,
}

/// The repair pass (issue #19): each linked mailbox is read with Graph's calendarView delta and
/// its copies changed in Outlook are restored (per the company's drift policy).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RepairConfig {
    /// Run repair passes at all (a worker-wide switch; companies choose with their policy).
    pub enabled: bool,
    /// Each mailbox is read at most this often; passes are spread over the interval.
    pub interval_minutes: u64,
    /// The range read: from this many days before today (UTC) ...
    pub days_back: u32,
    /// ... to this many days after.
    pub days_ahead: u32,
    /// `Prefer: odata.maxpagesize` of the delta requests.
    pub page_size: u32,
    /// How often a worker looks for a mailbox whose pass is due, and for newly linked ones.
    pub poll_seconds: u64,
}

impl Default for RepairConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval_minutes: 30,
            days_back: 30,
            days_ahead: 365,
            page_size: 100,
            poll_seconds: 5,
        }
    }
}

/// The directory's PostgreSQL (`tenants::db`): companies, linked users, the admin audit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// A `postgres://` URL (it may hold the password: redacted wherever configuration is shown).
    pub url: String,
    /// The schema every table lives in (tests and sandboxes use one of their own).
    pub schema: String,
    /// Whether `run` applies pending migrations at start (otherwise `outlook-sync db migrate`).
    pub migrate_on_start: bool,
    /// Connections per process.
    pub pool_size: usize,
    /// How long one connection attempt or one query may take, in milliseconds.
    pub timeout_ms: u64,
    /// The per-worker cache reloads everything this often, in seconds (LISTEN/NOTIFY carries
    /// each change at once; the reload is the safety net).
    pub reload_seconds: u64,
    /// The last-sync times of users are written behind, at most this often, in seconds.
    pub write_behind_seconds: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/test".into(),
            schema: "outlook_sync".into(),
            migrate_on_start: true,
            pool_size: 4,
            timeout_ms: 5000,
            reload_seconds: 60,
            write_behind_seconds: 10,
        }
    }
}

/// How `outlook-sync run` behaves as a process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// On SIGTERM, how long the current flush pass may take to finish before the worker gives
    /// its claims back and exits. Kubernetes' `terminationGracePeriodSeconds` must exceed it.
    pub shutdown_grace_seconds: u64,
}

/// An `admin.tokens` entry as (name, token): `name:token` when the text before the first `:` is
/// a name (1 to 40 of `A-Za-z0-9._-`), else the whole entry is the token, named `token-N` (`index`
/// counts from 0). The audit records the name, never the token.
pub fn admin_token_parts(entry: &str, index: usize) -> (String, &str) {
    if let Some((name, token)) = entry.split_once(':') {
        let is_name = (1..=40).contains(&name.len())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if is_name {
            return (name.to_string(), token);
        }
    }
    (format!("token-{}", index + 1), entry)
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
    /// With `rediss://`: a PEM file of the CA(s) that sign Redis's certificate, trusted instead
    /// of the system's roots; empty: the system's roots.
    pub tls_ca_file: String,
    /// Staging waits until this many replicas have each batch (`WAIT`) before it is acked; 0:
    /// not at all (asynchronous replication: a failover can lose the last acked batches).
    pub wait_replicas: u32,
    /// How long staging waits for `wait_replicas`; a batch not on them by then is acked all
    /// the same, with a warning (a missing replica must not stop ingest).
    pub wait_timeout_ms: u64,
    /// The due set and the claims are spread over this many shards (each in a hash slot of its
    /// own): over a cluster's primaries, so that no node carries every claim.
    pub shards: u32,
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
    /// Bearer tokens accepted by the admin API, each `name:token` (the name is what the audit
    /// records) or a bare token (named `token-N`, its position from 1). Empty: the admin API
    /// refuses every call.
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
            tls_ca_file: String::new(),
            wait_replicas: 0,
            wait_timeout_ms: 1000,
            shards: 1,
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
