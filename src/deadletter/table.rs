//! Readable text for the dead-letter operations (`--json` prints the structures instead). Every
//! table and detail view goes through [`crate::terminal`], which aligns by display width and
//! escapes what a publisher or Graph could have put in a dead letter.

use std::fmt::Write as _;

use jiff::Timestamp;

use super::ops::{Group, Listing, PurgeReport, ReplayReport, Summary};
use super::queue::Progress;
use super::record::{Record, Source};
use crate::terminal::{self, Details, count, escape};

fn or_dash(v: Option<&str>) -> String {
    v.unwrap_or("-").to_string()
}

fn number<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn time(t: Option<Timestamp>) -> String {
    number(t)
}

fn graph(r: &Record) -> String {
    match (r.graph_status, &r.graph_code) {
        (Some(s), Some(c)) => format!("{s} {c}"),
        (Some(s), None) => s.to_string(),
        (None, Some(c)) => c.clone(),
        (None, None) => "-".into(),
    }
}

/// The id as listings show it (12 characters; any unique prefix of 6 or more works).
pub fn short_id(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

const LIST_HEADERS: [&str; 11] = [
    "ID",
    "LAST FAILURE (UTC)",
    "STAGE",
    "REASON",
    "COMPANY",
    "SCHEDULE",
    "REV",
    "MAILBOX",
    "GRAPH",
    "TRIES",
    "EVENT",
];

/// Dead letters, one a row.
fn list_table(records: &[Record]) -> String {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            vec![
                short_id(&r.id).to_string(),
                r.last_failure
                    .map_or("-".into(), |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string()),
                r.stage.clone(),
                r.reason.clone(),
                or_dash(r.company.as_deref()),
                or_dash(r.schedule.as_deref()),
                number(r.revision),
                or_dash(r.mailbox.as_deref()),
                graph(r),
                number(r.attempts),
                terminal::truncate(r.message_id.as_deref().unwrap_or("-"), 13),
            ]
        })
        .collect();
    terminal::table(&LIST_HEADERS, &rows)
}

/// "dead-letter queue Q holds 4 messages", and how many of them match.
fn queue_line(queue: &str, total: usize, matched: usize) -> String {
    let holds = match total {
        0 => "no message".to_string(),
        n => count(n, "message", None),
    };
    let mut line = format!("dead-letter queue {} holds {holds}", escape(queue));
    if matched != total {
        match matched {
            0 => line.push_str("; none matches"),
            1 => line.push_str("; 1 matches"),
            n => {
                let _ = write!(line, "; {n} match");
            }
        }
    }
    line.push('\n');
    line
}

pub fn listing(l: &Listing) -> String {
    let mut out = queue_line(&l.queue, l.total, l.records.len());
    if l.duplicates_removed > 0 {
        let _ = writeln!(
            out,
            "(removed {} left behind by an interrupted operation)",
            count(l.duplicates_removed, "second copy", Some("second copies"))
        );
    }
    if !l.records.is_empty() {
        out.push_str(&list_table(&l.records));
    }
    out
}

/// When a group's dead letters failed: the oldest and newest last failure.
fn span(g: &Group) -> String {
    match (g.oldest, g.newest) {
        (Some(o), Some(n)) => format!(
            "{} … {}",
            o.strftime("%Y-%m-%d %H:%M"),
            n.strftime("%Y-%m-%d %H:%M")
        ),
        _ => "-".into(),
    }
}

pub fn summary(s: &Summary) -> String {
    let mut out = queue_line(&s.queue, s.total, s.matched);
    if s.matched == 0 {
        return out;
    }
    let by_reason: Vec<Vec<String>> = s
        .by_reason
        .iter()
        .map(|g| {
            vec![
                g.key.clone(),
                g.count.to_string(),
                span(g),
                g.words.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let by_company: Vec<Vec<String>> = s
        .by_company
        .iter()
        .map(|g| vec![g.key.clone(), g.count.to_string(), span(g)])
        .collect();
    let by_stage: Vec<Vec<String>> = s
        .by_stage
        .iter()
        .map(|g| vec![g.key.clone(), g.count.to_string()])
        .collect();
    out.push('\n');
    out.push_str(&terminal::table(
        &["REASON", "COUNT", "FAILED (UTC)", "MEANING"],
        &by_reason,
    ));
    out.push('\n');
    out.push_str(&terminal::table(
        &["COMPANY", "COUNT", "FAILED (UTC)"],
        &by_company,
    ));
    out.push('\n');
    out.push_str(&terminal::table(&["STAGE", "COUNT"], &by_stage));
    out
}

/// One `x-death` entry in words: "delivery_limit in queue Q, 3 times, last at T (exchange X,
/// routing key schedule.created)".
fn death(d: &super::record::Death) -> String {
    let times = match d.count {
        1 => "once".to_string(),
        n => format!("{n} times"),
    };
    let exchange = if d.exchange.is_empty() {
        "the default exchange".to_string()
    } else {
        format!("exchange {}", d.exchange)
    };
    let keys = match d.routing_keys.as_slice() {
        [] => "no routing key".to_string(),
        [one] => format!("routing key {one}"),
        many => format!("routing keys {}", many.join(", ")),
    };
    format!(
        "{} in queue {}, {times}, last at {} ({exchange}, {keys})",
        d.reason,
        d.queue,
        time(d.time)
    )
}

/// One dead letter, whole.
pub fn record(r: &Record) -> String {
    let mut d = Details::new();
    d.field("id", r.id.as_str())
        .maybe("event id", r.message_id.as_deref())
        .field("queue position", r.position.to_string())
        .field(
            "dead-lettered by",
            match r.source {
                Source::Service => format!("outlook-sync ({})", r.stage),
                Source::Broker => "RabbitMQ (see x-death)".into(),
            },
        )
        .field("reason", format!("{}: {}", r.reason, r.words));
    if let Some(e) = &r.error {
        d.field("error", e.as_str());
    }
    d.field(
        "schedule",
        format!(
            "{}/{} revision {}",
            or_dash(r.company.as_deref()),
            or_dash(r.schedule.as_deref()),
            number(r.revision)
        ),
    )
    .maybe("routing key", r.routing_key.as_deref())
    .maybe("mailbox", r.mailbox.as_deref());
    if r.graph_status.is_some() || r.graph_code.is_some() {
        d.field("graph", graph(r))
            .maybe("graph message", r.graph_message.as_deref())
            .maybe("graph request-id", r.graph_request_id.as_deref());
    }
    d.field("attempts", number(r.attempts))
        .field("first failure", time(r.first_failure))
        .field("last failure", time(r.last_failure));
    if r.replays > 0 {
        d.field(
            "replayed before",
            match r.replays {
                1 => "once".to_string(),
                n => format!("{n} times"),
            },
        );
    }
    for (i, x) in r.death.iter().enumerate() {
        d.field(if i == 0 { "x-death" } else { "" }, death(x));
    }
    if let Some(e) = &r.event {
        d.block("event", serde_json::to_string_pretty(e).unwrap_or_default());
    }
    d.render()
}

pub fn records(rs: &[Record]) -> String {
    let mut out = String::new();
    for (i, r) in rs.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let _ = writeln!(out, "dead letter {} of {}", i + 1, rs.len());
        out.push_str(&record(r));
    }
    out
}

pub fn replay(r: &ReplayReport) -> String {
    let mut out = String::new();
    let verb = if r.dry_run {
        "would replay"
    } else {
        "replayed"
    };
    let _ = writeln!(
        out,
        "{verb} {} of the {} that match, from {}",
        r.replayed,
        count(r.matched, "dead letter", None),
        escape(&r.queue)
    );
    if r.stopped_early {
        let _ = writeln!(
            out,
            "stopped before the end (the --limit was reached, or Ctrl-C was pressed); the rest stay in the dead-letter queue, in order"
        );
    }
    if !r.records.is_empty() {
        out.push_str(&list_table(&r.records));
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "left in the queue:");
        let rows: Vec<Vec<String>> = r
            .skipped
            .iter()
            .map(|s| vec![short_id(&s.id).to_string(), s.why.clone()])
            .collect();
        out.push_str(&terminal::table(&["ID", "WHY"], &rows));
    }
    if !r.dry_run && r.replayed > 0 {
        let _ = writeln!(
            out,
            "RabbitMQ confirmed each replay before it left the dead-letter queue; workers re-apply the newest revision only where a copy is behind"
        );
    }
    out
}

pub fn purge(p: &PurgeReport) -> String {
    let mut out = format!(
        "purged {} from {}\n",
        count(p.removed, "dead letter", None),
        escape(&p.queue)
    );
    if !p.records.is_empty() {
        out.push_str(&list_table(&p.records));
    }
    match &p.archive {
        Some(a) => {
            let _ = writeln!(
                out,
                "archived as JSON lines in {}",
                escape(&a.display().to_string())
            );
        }
        None if p.removed > 0 => {
            let _ = writeln!(out, "not archived (--no-archive): they are gone");
        }
        None => {}
    }
    out
}

/// A progress line on stderr: "replay: read 40 of 120 dead letters, replayed 12, kept 28".
pub fn progress(op: Op, p: &Progress) -> String {
    let (done, n) = match op {
        Op::Replay => ("replayed", p.replayed),
        Op::Purge => ("purged", p.removed),
    };
    format!(
        "{}: read {} of {}, {done} {n}, kept {}",
        op.name(),
        p.scanned,
        count(p.total, "dead letter", None),
        p.kept
    )
}

/// The operations that report progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Replay,
    Purge,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Replay => "replay",
            Op::Purge => "purge",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hostile() -> Record {
        let forged = "schedule.created\r\n2026-11-30T00:00:00Z  INFO outlook_sync: token accepted\n\u{1b}[2J\u{1b}[31mRED";
        Record {
            id: "0123456789abcdef".into(),
            position: 0,
            message_id: Some(format!("ev-\u{1b}[2J{forged}")),
            source: Source::Service,
            stage: "ingest".into(),
            reason: "invalid_value".into(),
            words: "a field holds a value the contract does not allow".into(),
            error: Some(format!("event_type: {forged} [invalid_value]")),
            routing_key: Some(forged.into()),
            company: Some("acme\u{202e}emca".into()),
            schedule: Some("s-1\n".into()),
            revision: Some(1),
            mailbox: None,
            graph_status: None,
            graph_code: None,
            graph_message: None,
            graph_request_id: None,
            attempts: Some(1),
            first_failure: None,
            last_failure: None,
            death: vec![],
            replays: 0,
            headers: None,
            event: Some(serde_json::json!({"event_type": forged, "title": "x\u{9b}2J"})),
        }
    }

    /// Nothing a terminal acts on: no ESC, no CSI, no CR, no bidi override; only the line
    /// breaks the view itself writes.
    fn assert_inert(text: &str, lines: usize) {
        assert!(
            !text.chars().any(|c| c != '\n' && terminal::needs_escape(c)),
            "{text:?}"
        );
        assert_eq!(text.lines().count(), lines, "{text}");
        assert!(
            !text
                .lines()
                .any(|l| l.contains("INFO") && !l.starts_with(' '))
        );
    }

    #[test]
    fn a_dead_letter_holding_control_characters_is_shown_escaped_on_its_own_lines() {
        let r = hostile();
        let listing = listing(&Listing {
            queue: "q.dead".into(),
            total: 1,
            duplicates_removed: 0,
            records: vec![r.clone()],
        });
        assert_inert(&listing, 3);
        let shown = records(std::slice::from_ref(&r));
        // 12 fields, "event:", and the 4 lines of the pretty JSON.
        assert_inert(&shown, 1 + 12 + 1 + 4);
        assert!(
            shown.contains("schedule.created\\r\\n2026-11-30T00:00:00Z  INFO outlook_sync: token accepted\\n\\u{1b}[2J\\u{1b}[31mRED"),
            "{shown}"
        );
        assert!(
            shown.contains("acme\\u{202e}emca/s-1\\n revision 1"),
            "{shown}"
        );
    }

    #[test]
    fn counts_read_as_sentences() {
        let l = Listing {
            queue: "q.dead".into(),
            total: 1,
            duplicates_removed: 0,
            records: vec![],
        };
        assert_eq!(
            listing(&l),
            "dead-letter queue q.dead holds 1 message; none matches\n"
        );
        let l = Listing { total: 0, ..l };
        assert_eq!(listing(&l), "dead-letter queue q.dead holds no message\n");
        let p = Progress {
            total: 1,
            scanned: 1,
            removed: 1,
            ..Progress::default()
        };
        assert_eq!(
            progress(Op::Purge, &p),
            "purge: read 1 of 1 dead letter, purged 1, kept 0"
        );
        let report = PurgeReport {
            queue: "q.dead".into(),
            removed: 1,
            archive: None,
            records: vec![],
            progress: p,
        };
        assert_eq!(
            purge(&report),
            "purged 1 dead letter from q.dead\nnot archived (--no-archive): they are gone\n"
        );
    }
}
