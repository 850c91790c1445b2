//! Logging setup: structured `tracing`, readable text locally, JSON lines in production.
//!
//! JSON lines carry the event's fields at the top level (`company`, `schedule`, `mailbox`,
//! `revision`, `op`, … on the flush's per-change lines) and the current span's fields, if any,
//! under `span`. No secret is ever a field: client secrets are `Secret`s (a fingerprint at
//! most), URLs are logged redacted, tokens are never logged.
//!
//! Text lines are one event a line whatever the event holds: a message or field value with
//! `\r`, `\n`, ESC, another C0 or C1 control, or a bidi override (an event type a publisher
//! made up, Graph's error text) is written escaped by [`crate::terminal::escape`] (`\r\n`,
//! `\u{1b}[2J`), so it can neither forge a log line nor act on the terminal reading the log.
//! JSON lines are escaped by JSON itself.

use std::fmt;

use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};
use crate::terminal::escape;

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
        LogFormat::Text => Box::new(
            builder
                .compact()
                .with_ansi(ansi)
                .fmt_fields(EscapedFields)
                .finish(),
        ),
    }
}

/// Installs the global subscriber (stderr). `RUST_LOG`, when set, overrides `log.filter`.
pub fn init_logging(cfg: &LogConfig) {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let sub = subscriber(cfg, filter(cfg), std::io::stderr, ansi);
    // `try_init` also routes `log` records (from crates that use `log`) into tracing.
    let _ = sub.try_init();
}

/// The text log's fields, laid out as tracing-subscriber's default (`message name=value …`,
/// names in italics on a terminal), every value escaped. The default escapes ESC in messages
/// only: a line break anywhere, or a control in a `%value` field, would still be written raw.
struct EscapedFields;

impl<'w> MakeVisitor<Writer<'w>> for EscapedFields {
    type Visitor = EscapedVisitor<'w>;

    fn make_visitor(&self, writer: Writer<'w>) -> EscapedVisitor<'w> {
        EscapedVisitor {
            writer,
            is_empty: true,
            result: Ok(()),
        }
    }
}

struct EscapedVisitor<'w> {
    writer: Writer<'w>,
    is_empty: bool,
    result: fmt::Result,
}

impl EscapedVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        let name = field.name();
        // `log` records' metadata, already shown as the line's target.
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let pad = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        let value = escape(value);
        self.result = if name == "message" {
            write!(self.writer, "{pad}{value}")
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            if self.writer.has_ansi_escapes() {
                write!(
                    self.writer,
                    "{pad}\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m{value}"
                )
            } else {
                write!(self.writer, "{pad}{name}={value}")
            }
        };
    }
}

impl Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut text = value.to_string();
        let mut source = value.source();
        if source.is_some() {
            text.push_str(" (caused by: ");
            while let Some(s) = source {
                text.push_str(&s.to_string());
                source = s.source();
                text.push_str(if source.is_some() { ": " } else { ")" });
            }
        }
        self.write(field, &text);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

impl VisitOutput<fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::event::{ContractError, Reason};
    use crate::internal_events::{InternalEvent, InvalidEventDeadLettered};
    use crate::metrics::Metrics;

    const FORGED: &str = "schedule.created\r\n2026-11-30T00:00:00.000000Z  INFO outlook_sync::admin: token accepted\n\u{1b}[2J\u{1b}[31mRED\u{9b}2J\u{202e}txt.exe";

    /// The log as written, in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// Logs five events carrying the forged text every way a field can hold it, through the
    /// text subscriber `outlook-sync` installs; returns what it wrote.
    fn text_log(ansi: bool) -> String {
        let captured = Captured::default();
        let cfg = LogConfig {
            format: LogFormat::Text,
            ..LogConfig::default()
        };
        let sub = subscriber(&cfg, EnvFilter::new("info"), captured.clone(), ansi);
        tracing::subscriber::with_default(sub, || {
            tracing::info!("ingest: got {FORGED}");
            tracing::warn!(event_type = %FORGED, "as a Display value");
            tracing::warn!(event_type = ?FORGED, routing_key = FORGED, "as Debug and str values");
            let span = tracing::info_span!("flush", company = %FORGED);
            span.in_scope(|| tracing::warn!("inside a span"));
            // The real event ingest emits for an invalid message.
            InvalidEventDeadLettered {
                error: &ContractError {
                    reason: Reason::InvalidValue,
                    field: FORGED.into(),
                    problem: FORGED.into(),
                },
                message_id: Some(FORGED),
            }
            .emit(&Metrics::new());
        });
        let bytes = captured.0.lock().expect("log buffer").clone();
        String::from_utf8(bytes).expect("UTF-8")
    }

    fn assert_one_line_per_event(log: &str, ansi: bool) {
        let lines: Vec<&str> = log.split('\n').collect();
        assert_eq!(lines.len(), 6, "five lines and the final newline:\n{log}");
        assert_eq!(lines[5], "");
        for line in &lines[..5] {
            let plain = if ansi {
                // Only the formatter's own colours: ESC followed by `[`, digits, `m`.
                let mut plain = String::new();
                let mut rest = *line;
                while let Some(i) = rest.find('\u{1b}') {
                    plain.push_str(&rest[..i]);
                    let end = rest[i..].find('m').expect("an SGR sequence") + i;
                    let code = &rest[i + 1..end];
                    assert!(
                        code.starts_with('[') && code[1..].chars().all(|c| c.is_ascii_digit()),
                        "a colour, not {code:?}, in {line:?}"
                    );
                    rest = &rest[end + 1..];
                }
                plain.push_str(rest);
                plain
            } else {
                line.to_string()
            };
            assert!(
                plain.starts_with("20") && plain.as_bytes()[4] == b'-',
                "every line starts with its timestamp: {plain:?}"
            );
            assert!(
                !plain.chars().any(crate::terminal::needs_escape),
                "nothing a terminal acts on: {plain:?}"
            );
            assert!(plain.contains("token accepted"), "{plain:?}");
        }
        assert!(!log.contains("\u{1b}[2J") && !log.contains("\u{1b}[31m"));
    }

    #[test]
    fn control_characters_in_a_logged_value_never_start_a_line_or_reach_the_terminal() {
        let log = text_log(false);
        assert_one_line_per_event(&log, false);
        assert!(
            log.contains("schedule.created\\r\\n2026-11-30T00:00:00.000000Z  INFO outlook_sync::admin: token accepted\\n\\u{1b}[2J\\u{1b}[31mRED\\u{9b}2J\\u{202e}txt.exe"),
            "{log}"
        );
        assert!(log.contains("ingest: invalid event dead-lettered"), "{log}");
        assert_one_line_per_event(&text_log(true), true);
    }

    #[test]
    fn ordinary_fields_keep_their_usual_layout() {
        let captured = Captured::default();
        let cfg = LogConfig {
            format: LogFormat::Text,
            ..LogConfig::default()
        };
        let sub = subscriber(&cfg, EnvFilter::new("info"), captured.clone(), false);
        tracing::subscriber::with_default(sub, || {
            tracing::info!(company = "acme", revision = 3, op = %"create", "flush: copy written");
        });
        let log = String::from_utf8(captured.0.lock().expect("log buffer").clone()).unwrap();
        assert!(
            log.trim_end()
                .ends_with("flush: copy written company=\"acme\" revision=3 op=create"),
            "{log}"
        );
    }
}
