//! Logging setup: structured `tracing`, readable text locally, JSON lines in production.
//!
//! JSON lines carry the event's fields at the top level (`company`, `schedule`, `mailbox`,
//! `revision`, `op`, … on the flush's per-change lines) and the current span's fields, if any,
//! under `span`. No secret is ever a field: client secrets are `Secret`s (a fingerprint at
//! most), URLs are logged redacted, tokens are never logged.

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// The filter: `RUST_LOG` when set (and valid), else `log.filter`.
pub fn filter(cfg: &LogConfig) -> EnvFilter {
    std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(&cfg.filter))
}

/// The subscriber `init_logging` installs, writing to `writer` (tests capture it in a buffer).
/// `ansi` colours text output for a terminal.
pub fn subscriber<W>(
    cfg: &LogConfig,
    filter: EnvFilter,
    writer: W,
    ansi: bool,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match cfg.format {
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
        LogFormat::Text => Box::new(builder.compact().with_ansi(ansi).finish()),
    }
}

/// Installs the global subscriber (stderr). `RUST_LOG`, when set, overrides `log.filter`.
pub fn init_logging(cfg: &LogConfig) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let sub = subscriber(cfg, filter(cfg), std::io::stderr, ansi);
    // `try_init` also routes `log` records (from crates that use `log`) into tracing.
    let _ = sub.try_init();
}
