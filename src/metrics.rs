//! Prometheus metrics (OpenMetrics text at `/metrics`). One place declares every metric, so the
//! dashboards and alert rules in `deploy/` can be checked against this list.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

/// Every metric's name starts with `outlook_sync_`.
pub const PREFIX: &str = "outlook_sync";

pub struct Metrics {
    registry: Registry,
    pub events_consumed: Counter,
    pub events_staged: Counter,
    pub events_deduplicated: Family<Labels, Counter>,
    pub events_invalid: Family<Labels, Counter>,
    pub events_skipped: Family<Labels, Counter>,
    pub schedules_flushed: Counter,
    pub graph_requests: Family<Labels, Counter>,
    pub graph_writes: Family<Labels, Counter>,
    pub graph_throttled: Counter,
    pub retry_after_wait_seconds: Counter<f64, AtomicU64>,
    pub dead_letters: Family<Labels, Counter>,
    pub dead_letters_replayed: Family<Labels, Counter>,
    pub replays_succeeded: Counter,
    pub dead_letter_queue_depth: Gauge,
    pub due_backlog: Gauge,
    pub due_oldest_age_seconds: Gauge<f64, AtomicU64>,
    pub sync_latency_seconds: Histogram,
    // Production telemetry (issue 7).
    pub graph_requests_in_flight: Gauge,
    pub graph_mailboxes_leased: Gauge,
    pub graph_mailbox_requests_in_flight: Histogram,
    pub company_failures: Family<Labels, Counter>,
    pub consumer_attached: Gauge,
    pub redis_reachable: Gauge,
    pub ingest_reconnects: Counter,
    pub shutdown_released_claims: Counter,
    // The admin API (issue 5).
    pub secret_expires_in_days: Family<Labels, Gauge>,
    pub companies_secret_expiring: Gauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Metrics {
            events_consumed: Counter::default(),
            events_staged: Counter::default(),
            events_deduplicated: Family::default(),
            events_invalid: Family::default(),
            events_skipped: Family::default(),
            schedules_flushed: Counter::default(),
            graph_requests: Family::default(),
            graph_writes: Family::default(),
            graph_throttled: Counter::default(),
            retry_after_wait_seconds: Counter::default(),
            dead_letters: Family::default(),
            dead_letters_replayed: Family::default(),
            replays_succeeded: Counter::default(),
            dead_letter_queue_depth: Gauge::default(),
            due_backlog: Gauge::default(),
            due_oldest_age_seconds: Gauge::default(),
            sync_latency_seconds: Histogram::new([
                1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 450.0, 600.0, 900.0, 1800.0,
            ]),
            graph_requests_in_flight: Gauge::default(),
            graph_mailboxes_leased: Gauge::default(),
            graph_mailbox_requests_in_flight: Histogram::new([
                1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 12.0, 16.0, 20.0,
            ]),
            company_failures: Family::default(),
            consumer_attached: Gauge::default(),
            redis_reachable: Gauge::default(),
            ingest_reconnects: Counter::default(),
            shutdown_released_claims: Counter::default(),
            secret_expires_in_days: Family::default(),
            companies_secret_expiring: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_consumed",
            "Deliveries taken from the work queue",
            m.events_consumed.clone(),
        );
        registry.register(
            "events_staged",
            "Events staged as the newest revision of their schedule",
            m.events_staged.clone(),
        );
        registry.register(
            "events_deduplicated",
            "Events dropped at staging as a duplicate or a stale revision (label kind)",
            m.events_deduplicated.clone(),
        );
        registry.register(
            "events_invalid",
            "Messages that broke the contract and were dead-lettered (label reason)",
            m.events_invalid.clone(),
        );
        registry.register(
            "events_skipped",
            "Changes not synced by product rule (label reason)",
            m.events_skipped.clone(),
        );
        registry.register(
            "schedules_flushed",
            "Due schedules whose window was flushed",
            m.schedules_flushed.clone(),
        );
        registry.register(
            "graph_requests",
            "HTTP requests to Graph, batch items included (label status)",
            m.graph_requests.clone(),
        );
        registry.register(
            "graph_writes",
            "Outlook writes that succeeded (label op: create, update, delete)",
            m.graph_writes.clone(),
        );
        registry.register(
            "graph_throttled",
            "Graph answers 429",
            m.graph_throttled.clone(),
        );
        registry.register(
            "retry_after_wait_seconds",
            "Time spent waiting on Retry-After or backoff",
            m.retry_after_wait_seconds.clone(),
        );
        registry.register(
            "dead_letters",
            "Dead letters published (labels stage, reason)",
            m.dead_letters.clone(),
        );
        registry.register(
            "dead_letters_replayed",
            "Replayed dead letters taken in by ingest (label outcome: restaged = due again, \
             newest = newer than anything staged, duplicate)",
            m.dead_letters_replayed.clone(),
        );
        registry.register(
            "replays_succeeded",
            "Outlook writes that applied a replayed change (one per mailbox)",
            m.replays_succeeded.clone(),
        );
        registry.register(
            "dead_letter_queue_depth",
            "Messages waiting in the dead-letter queue",
            m.dead_letter_queue_depth.clone(),
        );
        registry.register(
            "due_backlog",
            "Schedules staged and waiting for their window to be flushed",
            m.due_backlog.clone(),
        );
        registry.register(
            "due_oldest_age_seconds",
            "Age of the oldest due schedule past its window end",
            m.due_oldest_age_seconds.clone(),
        );
        registry.register(
            "sync_latency_seconds",
            "From an event's occurred_at to its change being in Outlook",
            m.sync_latency_seconds.clone(),
        );
        registry.register(
            "graph_requests_in_flight",
            "Graph requests this worker has in flight (all mailboxes; $batch items counted)",
            m.graph_requests_in_flight.clone(),
        );
        registry.register(
            "graph_mailboxes_leased",
            "Mailboxes this worker holds the exclusive write lease of (one $batch in flight each at most)",
            m.graph_mailboxes_leased.clone(),
        );
        registry.register(
            "graph_mailbox_requests_in_flight",
            "Requests outstanding to one mailbox, observed at each send (the mailbox lease is exclusive across workers; Graph runs at most 4 items of a $batch at once)",
            m.graph_mailbox_requests_in_flight.clone(),
        );
        registry.register(
            "company_failures",
            "Changes that failed for good, by company and kind (credentials, mailbox, rejected, retries_exhausted); one series per company that has failed",
            m.company_failures.clone(),
        );
        registry.register(
            "consumer_attached",
            "1 while this worker's RabbitMQ consumer is attached to the work queue",
            m.consumer_attached.clone(),
        );
        registry.register(
            "redis_reachable",
            "1 if Redis answered PING at the last /metrics or /readyz",
            m.redis_reachable.clone(),
        );
        registry.register(
            "ingest_reconnects",
            "Times the consumer was rebuilt after its connection or stream was lost",
            m.ingest_reconnects.clone(),
        );
        registry.register(
            "shutdown_released_claims",
            "Flush claims given back at shutdown because the drain outlasted its grace period",
            m.shutdown_released_claims.clone(),
        );
        registry.register(
            "secret_expires_in_days",
            "Days until a company's recorded client-secret expiry (label company; negative when past)",
            m.secret_expires_in_days.clone(),
        );
        registry.register(
            "companies_secret_expiring",
            "Companies whose recorded client secret expires within admin.secret_expiry_warning_days (or has expired)",
            m.companies_secret_expiring.clone(),
        );
        let mut m = m;
        m.registry = registry;
        Arc::new(m)
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    pub fn label(k: &'static str, v: impl Into<String>) -> Labels {
        vec![(k, v.into())]
    }

    /// The name of every sample `/metrics` can expose (counters as `…_total`, histograms as
    /// `…_bucket`/`…_sum`/`…_count`). The deploy tests check dashboards, alert rules and the
    /// autoscaler against it.
    ///
    /// Metrics with a series are read from the `# TYPE` lines. A labelled family with no series
    /// yet prints nothing, so its name comes from the registry's descriptors, with every suffix
    /// its kind could have (the kind of an empty family is not observable).
    pub fn sample_names(&self) -> std::collections::BTreeSet<String> {
        let mut out = std::collections::BTreeSet::new();
        let mut typed = std::collections::BTreeSet::new();
        let debug = format!("{:?}", self.registry);
        for piece in debug.split("Descriptor { name: \"").skip(1) {
            let Some(name) = piece.split('"').next() else {
                continue;
            };
            for s in ["", "_total", "_bucket", "_sum", "_count"] {
                out.insert(format!("{PREFIX}_{name}{s}"));
            }
        }
        let mut exact = std::collections::BTreeSet::new();
        for line in self.render().lines() {
            let mut parts = line.split_whitespace();
            if parts.next() != Some("#") || parts.next() != Some("TYPE") {
                continue;
            }
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                "info" => &["_info"],
                "stateset" | "gaugehistogram" | "unknown" | "gauge" => &[""],
                _ => &[""],
            };
            typed.insert(name.to_string());
            for s in suffixes {
                exact.insert(format!("{name}{s}"));
            }
        }
        // Where the kind is known, only its own suffixes.
        out.retain(|n| {
            !typed.iter().any(|t| {
                n.strip_prefix(t.as_str())
                    .is_some_and(|rest| ["", "_total", "_bucket", "_sum", "_count"].contains(&rest))
            })
        });
        out.extend(exact);
        out
    }
}

/// Adds `n` to a gauge until dropped (in-flight counts stay right when a task is cancelled).
pub struct GaugeGuard {
    gauge: Gauge,
    n: i64,
}

impl GaugeGuard {
    pub fn new(gauge: &Gauge, n: i64) -> Self {
        gauge.inc_by(n);
        Self {
            gauge: gauge.clone(),
            n,
        }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.gauge.dec_by(self.n);
    }
}
