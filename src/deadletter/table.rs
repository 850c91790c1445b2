//! Readable text for the dead-letter operations (`--json` prints the structures instead).

use std::fmt::Write as _;

use super::ops::{Listing, PurgeReport, ReplayReport, Summary};
use super::record::Record;

/// A plain table: a header row, then rows, columns padded to their widest cell, two spaces
/// apart, indented by two.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .chain([headers[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        let mut l = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            let _ = write!(l, "{c}{}  ", " ".repeat(pad));
        }
        let mut l = l.trim_end().to_string();
        l.push('\n');
        l
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

fn short(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
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

fn rows(records: &[Record]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|r| {
            vec![
                short_id(&r.id).to_string(),
                r.last_failure
                    .map_or("-".into(), |t| t.strftime("%Y-%m-%d %H:%M:%S").to_string()),
                r.stage.clone(),
                r.reason.clone(),
                or_dash(&r.company),
                or_dash(&r.schedule),
                r.revision.map_or("-".into(), |v| v.to_string()),
                or_dash(&r.mailbox),
                graph(r),
                r.attempts.map_or("-".into(), |v| v.to_string()),
                short(r.message_id.as_deref().unwrap_or("-"), 13),
            ]
        })
        .collect()
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

pub fn listing(l: &Listing) -> String {
    let mut out = format!(
        "dead-letter queue {}: {} message(s), {} match\n",
        l.queue,
        l.total,
        l.records.len()
    );
    if l.duplicates_removed > 0 {
        let _ = writeln!(
            out,
            "({} duplicate copies left by an interrupted operation were removed)",
            l.duplicates_removed
        );
    }
    if !l.records.is_empty() {
        out.push_str(&table(&LIST_HEADERS, &rows(&l.records)));
    }
    out
}

pub fn summary(s: &Summary) -> String {
    let mut out = format!(
        "dead-letter queue {}: {} message(s){}\n",
        s.queue,
        s.total,
        if s.matched == s.total {
            String::new()
        } else {
            format!(", {} match", s.matched)
        }
    );
    if s.matched == 0 {
        return out;
    }
    let when = |g: &super::ops::Group| match (g.oldest, g.newest) {
        (Some(o), Some(n)) => format!(
            "{} … {}",
            o.strftime("%Y-%m-%d %H:%M"),
            n.strftime("%Y-%m-%d %H:%M")
        ),
        _ => "-".into(),
    };
    out.push('\n');
    out.push_str(&table(
        &["REASON", "COUNT", "FAILED (UTC)", "MEANING"],
        &s.by_reason
            .iter()
            .map(|g| {
                vec![
                    g.key.clone(),
                    g.count.to_string(),
                    when(g),
                    g.words.clone().unwrap_or_default(),
                ]
            })
            .collect::<Vec<_>>(),
    ));
    out.push('\n');
    out.push_str(&table(
        &["COMPANY", "COUNT", "FAILED (UTC)"],
        &s.by_company
            .iter()
            .map(|g| vec![g.key.clone(), g.count.to_string(), when(g)])
            .collect::<Vec<_>>(),
    ));
    out.push('\n');
    out.push_str(&table(
        &["STAGE", "COUNT"],
        &s.by_stage
            .iter()
            .map(|g| vec![g.key.clone(), g.count.to_string()])
            .collect::<Vec<_>>(),
    ));
    out
}

/// One dead letter, whole.
pub fn record(r: &Record) -> String {
    let mut out = String::new();
    let mut field = |k: &str, v: String| {
        let _ = writeln!(out, "  {k:<18} {v}");
    };
    field("id", r.id.clone());
    field("event id", or_dash(&r.message_id));
    field("queue position", r.position.to_string());
    field(
        "dead-lettered by",
        match r.source {
            super::record::Source::Service => format!("outlook-sync ({})", r.stage),
            super::record::Source::Broker => "RabbitMQ (x-death)".into(),
        },
    );
    field("reason", format!("{}: {}", r.reason, r.words));
    if let Some(e) = &r.error {
        field("error", e.clone());
    }
    field(
        "schedule",
        format!(
            "{}/{} revision {}",
            or_dash(&r.company),
            or_dash(&r.schedule),
            r.revision.map_or("-".into(), |v| v.to_string())
        ),
    );
    field("routing key", or_dash(&r.routing_key));
    field("mailbox", or_dash(&r.mailbox));
    if r.graph_status.is_some() || r.graph_code.is_some() {
        field("graph", graph(r));
        field("graph message", or_dash(&r.graph_message));
        field("graph request-id", or_dash(&r.graph_request_id));
    }
    field("attempts", r.attempts.map_or("-".into(), |v| v.to_string()));
    field(
        "first failure",
        r.first_failure.map_or("-".into(), |t| t.to_string()),
    );
    field(
        "last failure",
        r.last_failure.map_or("-".into(), |t| t.to_string()),
    );
    if r.replays > 0 {
        field("replayed before", format!("{} time(s)", r.replays));
    }
    for (i, d) in r.death.iter().enumerate() {
        field(
            if i == 0 { "x-death" } else { "" },
            format!(
                "{} from queue {} ×{} at {} (exchange {:?}, routing keys {})",
                d.reason,
                d.queue,
                d.count,
                d.time.map_or("-".into(), |t| t.to_string()),
                d.exchange,
                d.routing_keys.join(",")
            ),
        );
    }
    if let Some(e) = &r.event {
        let pretty = serde_json::to_string_pretty(e).unwrap_or_default();
        let _ = writeln!(out, "  event:");
        for l in pretty.lines() {
            let _ = writeln!(out, "    {l}");
        }
    }
    out
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
        "{verb} {} of {} matching dead letter(s) from {}{}",
        r.replayed,
        r.matched,
        r.queue,
        if r.stopped_early {
            " (stopped early: limit or interruption; the rest stay in the queue)"
        } else {
            ""
        }
    );
    if !r.records.is_empty() {
        out.push_str(&table(&LIST_HEADERS, &rows(&r.records)));
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "left in the queue:");
        for s in &r.skipped {
            let _ = writeln!(out, "  {}: {}", short_id(&s.id), s.why);
        }
    }
    if !r.dry_run && r.replayed > 0 {
        let _ = writeln!(
            out,
            "each was confirmed by RabbitMQ before it left the dead-letter queue; workers re-apply the newest revision only where a copy is behind"
        );
    }
    out
}

pub fn purge(p: &PurgeReport) -> String {
    let mut out = format!("purged {} dead letter(s) from {}\n", p.removed, p.queue);
    if !p.records.is_empty() {
        out.push_str(&table(&LIST_HEADERS, &rows(&p.records)));
    }
    match &p.archive {
        Some(a) => {
            let _ = writeln!(out, "archived as JSON lines in {}", a.display());
        }
        None if p.removed > 0 => {
            let _ = writeln!(out, "not archived (--no-archive)");
        }
        None => {}
    }
    out
}
