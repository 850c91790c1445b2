//! Prometheus metrics (OpenMetrics text at `/metrics`). One place declares every metric, so the
//! dashboards and alert rules in `deploy/` can be checked against this list.
//!
//! Every series whose labels are known in advance exists from the start at 0: the label values
//! of [`known`] when the registry is built, and a company's series when the company is loaded
//! ([`Metrics::company_loaded`]). A counter born at its first increment would hide that
//! increment from `increase()` and `rate()` (a company that fails twice would never alert), and
//! a metric absent until first used leaves dashboards empty instead of showing 0.

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
    pub events_deferred: Family<Labels, Counter>,
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
    pub database_reachable: Gauge,
    pub ingest_reconnects: Counter,
    pub shutdown_released_claims: Counter,
    // The admin API (issue 5).
    /// When a company's recorded client secret expires (Unix time, seconds; base unit).
    pub secret_expiry_timestamp_seconds: Family<Labels, Gauge>,
    pub companies_secret_expiring: Gauge,
    // The fleet as one (`fleet`), exported by one worker at a time, and pacing.
    pub fleet: FleetMetrics,
    // The repair pass (issue #19).
    pub drift: DriftMetrics,
}

/// The repair pass: drifts found and repaired per kind (`deleted`, `edited`), those that could
/// not be restored, the passes by result, and the delta requests they cost.
#[derive(Default)]
pub struct DriftMetrics {
    pub found: Family<Labels, Counter>,
    pub repaired: Family<Labels, Counter>,
    pub unrestorable: Family<Labels, Counter>,
    pub passes: Family<Labels, Counter>,
    pub requests: Counter,
}

impl DriftMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "drift_found",
            "Copies found changed in Outlook by the repair pass, by kind (deleted, edited)",
            self.found.clone(),
        );
        registry.register(
            "drift_repaired",
            "Copies changed in Outlook that the flush restored, by kind (deleted: created again; edited: written back)",
            self.repaired.clone(),
        );
        registry.register(
            "drift_unrestorable",
            "Copies changed in Outlook whose schedule's staged state had expired from Redis: counted and logged, not restored",
            self.unrestorable.clone(),
        );
        registry.register(
            "repair_passes",
            "Repair passes over a mailbox, by result (clean, drift, restarted, busy, failed)",
            self.passes.clone(),
        );
        registry.register(
            "repair_delta_requests",
            "calendarView delta requests the repair passes sent",
            self.requests.clone(),
        );
    }

    fn start_at_zero(&self) {
        for kind in known::DRIFT_KINDS {
            let labels = Metrics::label("kind", *kind);
            let _ = self.found.get_or_create(&labels);
            let _ = self.repaired.get_or_create(&labels);
            let _ = self.unrestorable.get_or_create(&labels);
        }
        for result in known::REPAIR_RESULTS {
            let _ = self
                .passes
                .get_or_create(&Metrics::label("result", *result));
        }
    }
}

/// The fleet-wide backlog, exported by the worker holding the `fleet-reporter` lease (the others
/// export nothing for it), and the time mailboxes waited for their paced budget.
#[derive(Default)]
pub struct FleetMetrics {
    pub backlog: Family<Labels, Gauge>,
    pub backlog_oldest_age_seconds: Family<Labels, Gauge<f64, AtomicU64>>,
    pub mailbox_paced_wait_seconds: Counter<f64, AtomicU64>,
}

impl FleetMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "fleet_backlog",
            "What is still waiting, fleet-wide, by part of the pipeline (queued, in_hand, staged, due, claimed, open_changes, waiting_on_mailboxes); exported by one worker at a time",
            self.backlog.clone(),
        );
        registry.register(
            "fleet_backlog_oldest_age_seconds",
            "How long the oldest waiting item has waited, fleet-wide; exported by one worker at a time",
            self.backlog_oldest_age_seconds.clone(),
        );
        registry.register(
            "mailbox_paced_wait_seconds",
            "Time mailboxes waited for Graph's request budget (graph.mailbox_request_budget) before sending",
            self.mailbox_paced_wait_seconds.clone(),
        );
    }
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
            events_deferred: Family::default(),
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
            database_reachable: Gauge::default(),
            ingest_reconnects: Counter::default(),
            shutdown_released_claims: Counter::default(),
            secret_expiry_timestamp_seconds: Family::default(),
            companies_secret_expiring: Gauge::default(),
            fleet: FleetMetrics::default(),
            drift: DriftMetrics::default(),
            registry: Registry::default(),
        };
        m.register_events(&mut registry);
        m.register_graph(&mut registry);
        m.register_dead_letters(&mut registry);
        m.register_backlog(&mut registry);
        m.register_worker(&mut registry);
        m.register_admin(&mut registry);
        m.fleet.register(&mut registry);
        m.drift.register(&mut registry);
        let mut m = m;
        m.registry = registry;
        m.start_known_series_at_zero();
        Arc::new(m)
    }

    /// The pipeline's events: consumed, staged, dropped at staging, invalid, skipped; windows flushed.
    fn register_events(&self, registry: &mut Registry) {
        registry.register(
            "events_consumed",
            "Deliveries taken from the work queue",
            self.events_consumed.clone(),
        );
        registry.register(
            "events_staged",
            "Events appended to their schedule's pending events (the flush keeps the newest)",
            self.events_staged.clone(),
        );
        registry.register(
            "events_deduplicated",
            "Events dropped as a duplicate or a stale revision (labels kind, and at: ingest when their batch held a newer or the same revision, flush when the consolidation found one)",
            self.events_deduplicated.clone(),
        );
        registry.register(
            "events_invalid",
            "Messages that broke the contract and were dead-lettered (label reason)",
            self.events_invalid.clone(),
        );
        registry.register(
            "events_skipped",
            "Changes not synced by product rule (label reason)",
            self.events_skipped.clone(),
        );
        registry.register(
            "events_deferred",
            "Schedules given back because the directory could not answer for their company (label reason)",
            self.events_deferred.clone(),
        );
        registry.register(
            "schedules_flushed",
            "Due schedules whose window was flushed",
            self.schedules_flushed.clone(),
        );
    }

    /// Graph: requests by status, writes by operation, 429s, time spent waiting.
    fn register_graph(&self, registry: &mut Registry) {
        registry.register(
            "graph_requests",
            "HTTP requests to Graph, batch items included (label status)",
            self.graph_requests.clone(),
        );
        registry.register(
            "graph_writes",
            "Outlook writes that succeeded (label op: create, update, delete)",
            self.graph_writes.clone(),
        );
        registry.register(
            "graph_throttled",
            "Graph answers 429",
            self.graph_throttled.clone(),
        );
        registry.register(
            "retry_after_wait_seconds",
            "Time spent waiting on Retry-After or backoff",
            self.retry_after_wait_seconds.clone(),
        );
    }

    /// Dead letters: published, replayed, applied after a replay, waiting in the queue.
    fn register_dead_letters(&self, registry: &mut Registry) {
        registry.register(
            "dead_letters",
            "Dead letters published (labels stage, reason)",
            self.dead_letters.clone(),
        );
        registry.register(
            "dead_letters_replayed",
            "Replayed dead letters taken in by ingest (label outcome: restaged = due again, \
             newest = newer than anything staged, duplicate)",
            self.dead_letters_replayed.clone(),
        );
        registry.register(
            "replays_succeeded",
            "Outlook writes that applied a replayed change (one per mailbox)",
            self.replays_succeeded.clone(),
        );
        registry.register(
            "dead_letter_queue_depth",
            "Messages waiting in the dead-letter queue",
            self.dead_letter_queue_depth.clone(),
        );
    }

    /// The backlog of due schedules and the sync latency.
    fn register_backlog(&self, registry: &mut Registry) {
        registry.register(
            "due_backlog",
            "Schedules staged and waiting for their window to be flushed",
            self.due_backlog.clone(),
        );
        registry.register(
            "due_oldest_age_seconds",
            "Age of the oldest due schedule past its window end",
            self.due_oldest_age_seconds.clone(),
        );
        registry.register(
            "sync_latency_seconds",
            "From an event's occurred_at to its change being in Outlook",
            self.sync_latency_seconds.clone(),
        );
    }

    /// A worker's own state: requests and leases in flight, failures per company, the consumer, Redis, reconnects, claims given back at shutdown (issue 7).
    fn register_worker(&self, registry: &mut Registry) {
        registry.register(
            "graph_requests_in_flight",
            "Graph requests this worker has in flight (all mailboxes; $batch items counted)",
            self.graph_requests_in_flight.clone(),
        );
        registry.register(
            "graph_mailboxes_leased",
            "Mailboxes this worker holds the exclusive write lease of (one $batch in flight each at most)",
            self.graph_mailboxes_leased.clone(),
        );
        registry.register(
            "graph_mailbox_requests_in_flight",
            "Requests outstanding to one mailbox, observed at each send (the mailbox lease is exclusive across workers; Graph runs at most 4 items of a $batch at once)",
            self.graph_mailbox_requests_in_flight.clone(),
        );
        registry.register(
            "company_failures",
            "Changes that failed for good, by company and kind (credentials, mailbox, rejected, retries_exhausted); every kind at 0 from when the company is loaded",
            self.company_failures.clone(),
        );
        registry.register(
            "consumer_attached",
            "1 while this worker's RabbitMQ consumer is attached to the work queue",
            self.consumer_attached.clone(),
        );
        registry.register(
            "redis_reachable",
            "1 if Redis answered PING at the last /metrics or /readyz",
            self.redis_reachable.clone(),
        );
        registry.register(
            "database_reachable",
            "1 if the directory's PostgreSQL answered at the last /metrics or /readyz",
            self.database_reachable.clone(),
        );
        registry.register(
            "ingest_reconnects",
            "Times the consumer was rebuilt after its connection or stream was lost",
            self.ingest_reconnects.clone(),
        );
        registry.register(
            "shutdown_released_claims",
            "Flush claims given back at shutdown because the drain outlasted its grace period",
            self.shutdown_released_claims.clone(),
        );
    }

    /// The admin's secret-expiry warning (issue 5).
    fn register_admin(&self, registry: &mut Registry) {
        registry.register(
            "secret_expiry_timestamp_seconds",
            "When a company's recorded client secret expires, as a Unix timestamp in seconds (label company)",
            self.secret_expiry_timestamp_seconds.clone(),
        );
        registry.register(
            "companies_secret_expiring",
            "Companies whose recorded client secret expires within admin.secret_expiry_warning_days (or has expired)",
            self.companies_secret_expiring.clone(),
        );
    }

    /// Creates, at 0, every series whose label values are known before anything happens.
    fn start_known_series_at_zero(&self) {
        let touch = |f: &Family<Labels, Counter>, labels: Labels| {
            let _created = f.get_or_create(&labels);
        };
        for kind in known::DEDUPLICATED_KINDS {
            for at in known::DEDUPLICATED_AT {
                touch(&self.events_deduplicated, deduplicated_labels(kind, at));
            }
        }
        for reason in known::invalid_reasons() {
            touch(&self.events_invalid, Self::label("reason", reason));
            touch(&self.dead_letters, dead_letter_labels("ingest", reason));
        }
        for reason in known::flush_dead_letter_reasons() {
            touch(&self.dead_letters, dead_letter_labels("flush", reason));
        }
        for reason in known::skip_reasons() {
            touch(&self.events_skipped, Self::label("reason", reason));
        }
        for reason in known::DEFERRED_REASONS {
            touch(&self.events_deferred, Self::label("reason", *reason));
        }
        for status in known::GRAPH_STATUSES {
            touch(&self.graph_requests, Self::label("status", *status));
        }
        for op in known::WRITE_OPS {
            touch(&self.graph_writes, Self::label("op", *op));
        }
        self.drift.start_at_zero();
        for outcome in known::REPLAY_OUTCOMES {
            touch(
                &self.dead_letters_replayed,
                Self::label("outcome", *outcome),
            );
        }
    }

    /// A company is known to this worker (the flush or the admin read it from the directory):
    /// its failure counters exist from now on, at 0 until its first failure, so the first
    /// failure shows in `increase()` and the per-company alerts can fire on it.
    pub fn company_loaded(&self, company: &str) {
        for kind in known::COMPANY_FAILURE_KINDS {
            let _created = self.company_failures.get_or_create(&vec![
                ("company", company.to_string()),
                ("kind", (*kind).to_string()),
            ]);
        }
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

/// The labels of `events_deduplicated`: `kind` (duplicate, stale) and `at` (ingest, flush).
pub fn deduplicated_labels(kind: &str, at: &str) -> Labels {
    vec![("kind", kind.to_string()), ("at", at.to_string())]
}

fn dead_letter_labels(stage: &str, reason: &str) -> Labels {
    vec![("stage", stage.to_string()), ("reason", reason.to_string())]
}

/// The label values each labelled metric can take, where they are known in advance. A value
/// missing here still works (its series is created at its first use); it only loses the
/// start at 0. The lists built from enums name every variant in an exhaustive `match`, so a new
/// variant does not compile until it is listed.
pub mod known {
    use crate::event::Reason;
    use crate::graph::error::{MailboxProblem, TokenProblem};
    use crate::tenants::NotSyncing;

    /// `events_deduplicated{kind}`: a duplicate or an older revision was dropped.
    pub const DEDUPLICATED_KINDS: &[&str] = &["duplicate", "stale"];
    /// `events_deduplicated{at}`: by ingest (within its batch) or by the flush's consolidation.
    pub const DEDUPLICATED_AT: &[&str] = &["ingest", "flush"];
    /// `events_deferred{reason}`: why the directory cache could not answer (`tenants::Lookup`).
    pub const DEFERRED_REASONS: &[&str] = &[
        "directory_not_loaded",
        "directory_unreachable",
        "directory_empty",
        "directory_lost_company",
    ];
    /// `graph_writes{op}`.
    pub const WRITE_OPS: &[&str] = &["create", "update", "delete"];
    /// `dead_letters_replayed{outcome}`: what staging made of a replayed dead letter.
    pub const REPLAY_OUTCOMES: &[&str] = &["restaged", "newest", "duplicate", "stale"];
    /// `drift_found{kind}`, `drift_repaired{kind}`, `drift_unrestorable{kind}`
    /// (`store::Drift::as_str`).
    pub const DRIFT_KINDS: &[&str] = &["deleted", "edited"];
    /// `repair_passes{result}`.
    pub const REPAIR_RESULTS: &[&str] =
        &["clean", "drift", "restarted", "busy", "skipped", "failed"];
    /// `company_failures{kind}`, per company.
    pub const COMPANY_FAILURE_KINDS: &[&str] =
        &["credentials", "mailbox", "rejected", "retries_exhausted"];
    /// `graph_requests{status}` is open-ended (any HTTP status, 0 for no answer); these are the
    /// answers of a healthy flush (200 read or update, 201 create, 204 delete) and the one the
    /// throttling alert watches (429).
    pub const GRAPH_STATUSES: &[&str] = &["200", "201", "204", "429"];
    /// `events_skipped{reason}` of the flush's per-participant rules (`flush::plan`).
    const PARTICIPANT_SKIPS: &[&str] = &[
        "participant_not_linked",
        "change_before_link",
        "user_auth_failed",
    ];

    /// `events_invalid{reason}` and `dead_letters{stage="ingest",reason}`: the contract's reasons.
    pub fn invalid_reasons() -> Vec<&'static str> {
        let all = [
            Reason::TooLarge,
            Reason::NotUtf8,
            Reason::MalformedJson,
            Reason::UnknownVersion,
            Reason::MissingField,
            Reason::WrongType,
            Reason::TooLong,
            Reason::InvalidValue,
            Reason::EndBeforeStart,
            Reason::AllDayWithTimes,
            Reason::TimedWithDates,
            Reason::UnknownZone,
            Reason::SpanTooLong,
            Reason::DuplicateKey,
            Reason::OutOfRange,
            Reason::RoutingKeyMismatch,
        ];
        // Exhaustive: a new reason must be added above.
        let _listed = |r: Reason| match r {
            Reason::TooLarge
            | Reason::NotUtf8
            | Reason::MalformedJson
            | Reason::UnknownVersion
            | Reason::MissingField
            | Reason::WrongType
            | Reason::TooLong
            | Reason::InvalidValue
            | Reason::EndBeforeStart
            | Reason::AllDayWithTimes
            | Reason::TimedWithDates
            | Reason::UnknownZone
            | Reason::SpanTooLong
            | Reason::DuplicateKey
            | Reason::OutOfRange
            | Reason::RoutingKeyMismatch => (),
        };
        all.iter().map(|r| r.code()).collect()
    }

    /// `dead_letters{stage="flush",reason}`: a mailbox problem, a credentials problem, Graph
    /// refusing the write, or the retry budget spent (`apply`).
    pub fn flush_dead_letter_reasons() -> Vec<&'static str> {
        let mailbox = [
            MailboxProblem::UnknownUser,
            MailboxProblem::NoMailbox,
            MailboxProblem::PolicyDenied,
            MailboxProblem::AccessDenied,
        ];
        let _listed = |p: MailboxProblem| match p {
            MailboxProblem::UnknownUser
            | MailboxProblem::NoMailbox
            | MailboxProblem::PolicyDenied
            | MailboxProblem::AccessDenied => (),
        };
        let token = [
            TokenProblem::InvalidSecret,
            TokenProblem::ExpiredSecret,
            TokenProblem::AppNotInTenant,
            TokenProblem::TenantNotFound,
            TokenProblem::InvalidScope,
            TokenProblem::Other {
                code: None,
                error: String::new(),
            },
        ];
        let _listed = |p: TokenProblem| match p {
            TokenProblem::InvalidSecret
            | TokenProblem::ExpiredSecret
            | TokenProblem::AppNotInTenant
            | TokenProblem::TenantNotFound
            | TokenProblem::InvalidScope
            | TokenProblem::Other { .. } => (),
        };
        let mut out: Vec<&'static str> = mailbox.iter().map(|p| p.code()).collect();
        out.extend(token.iter().map(|p| p.code()));
        out.extend([
            "graph_rejected",
            "retries_exhausted",
            "retry_time_exhausted",
        ]);
        out
    }

    /// `events_skipped{reason}`: why a company does not sync, and the per-participant rules.
    pub fn skip_reasons() -> Vec<&'static str> {
        let company = [
            NotSyncing::PlanExcludesIntegration,
            NotSyncing::LitePlusWithoutScheduleOption,
            NotSyncing::Disabled,
            NotSyncing::NoCredentials,
            NotSyncing::CredentialsUnreadable,
            NotSyncing::KeysNotConfigured,
            NotSyncing::UnknownCompany,
        ];
        let _listed = |n: NotSyncing| match n {
            NotSyncing::PlanExcludesIntegration
            | NotSyncing::LitePlusWithoutScheduleOption
            | NotSyncing::Disabled
            | NotSyncing::NoCredentials
            | NotSyncing::CredentialsUnreadable
            | NotSyncing::KeysNotConfigured
            | NotSyncing::UnknownCompany => (),
        };
        let mut out: Vec<&'static str> = company.iter().map(|n| n.code()).collect();
        out.extend(PARTICIPANT_SKIPS);
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
