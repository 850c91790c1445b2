//! `outlook-sync demo`: a realistic day of schedule events in, each user's Outlook calendar out,
//! on the local RabbitMQ and Redis and the embedded Graph emulator ([`Sandbox`], which the tests
//! and the benchmark use too).

mod ev;
mod sandbox;

pub use ev::Ev;
pub use sandbox::{Sandbox, SandboxError, TenantInfo};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use redis::AsyncCommands;

use crate::event::WireEvent;
use crate::tenants::{Plan, UserStatus};
use graph_emulator::{MailboxKind, Settings};

/// One user's Outlook calendar as a readable table (the shared printer: display-width
/// alignment, escaped cells), sorted by when.
pub fn calendar_table(title: &str, events: &[serde_json::Value]) -> String {
    let mut out = format!("{}\n", crate::terminal::escape(title));
    if events.is_empty() {
        out.push_str("  (no events)\n");
        return out;
    }
    let mut rows: Vec<Vec<String>> = events.iter().map(calendar_row).collect();
    rows.sort();
    out.push_str(&crate::terminal::table(
        &["WHEN", "ZONE", "SUBJECT", "LOCATION", "SENSITIVITY"],
        &rows,
    ));
    out
}

/// One Outlook event (Graph JSON) as a calendar row: when (in its own zone), zone, subject,
/// location, sensitivity.
fn calendar_row(e: &serde_json::Value) -> Vec<String> {
    let get = |p: &str| {
        e.pointer(p)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let all_day = e.get("isAllDay").and_then(|v| v.as_bool()) == Some(true);
    let zone = get("/originalStartTimeZone");
    let shown = |p: &str| local_time(&get(p), &get(&p.replace("dateTime", "timeZone")), &zone);
    let (start, end) = (shown("/start/dateTime"), shown("/end/dateTime"));
    let when = if all_day {
        // Outlook's end is exclusive; cyzen shows the last day.
        let last = end
            .get(..10)
            .and_then(|d| d.parse::<jiff::civil::Date>().ok())
            .and_then(|d| d.yesterday().ok())
            .map(|d| d.to_string())
            .unwrap_or_default();
        format!("{} → {last} (all day)", start.get(..10).unwrap_or(&start))
    } else {
        format!(
            "{} → {}",
            start.get(..16).unwrap_or(&start).replace('T', " "),
            end.get(11..16).unwrap_or(&end)
        )
    };
    vec![
        when,
        zone,
        get("/subject"),
        get("/location/displayName"),
        get("/sensitivity"),
    ]
}

/// A Graph `dateTime` shown in the event's original zone (Graph answers in UTC unless asked).
fn local_time(date_time: &str, given_zone: &str, original_zone: &str) -> String {
    let convert = || -> Option<String> {
        if given_zone != "UTC" {
            return None;
        }
        let iana = crate::graph::zones::iana_for_windows(original_zone)?;
        let dt: jiff::civil::DateTime = date_time.get(..19)?.parse().ok()?;
        let local = dt
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .ok()?
            .with_time_zone(jiff::tz::TimeZone::get(iana).ok()?);
        Some(local.datetime().strftime("%Y-%m-%dT%H:%M:%S").to_string())
    };
    convert().unwrap_or_else(|| date_time.to_string())
}

/// The demo's users: (cyzen user id, mailbox local part, display name, mailbox kind).
pub const DEMO_USERS: [(&str, &str, &str, MailboxKind); 4] = [
    ("u-100", "taro", "Taro Yamada", MailboxKind::Ok),
    ("u-200", "hanako", "Hanako Suzuki", MailboxKind::Ok),
    ("u-300", "jiro", "Jiro Sato", MailboxKind::Ok),
    (
        "u-400",
        "sachiko",
        "Sachiko Ito (no Exchange mailbox)",
        MailboxKind::NoMailbox,
    ),
];

/// What the demo ends with, for the test that pins it.
pub struct DemoOutcome {
    /// mailbox → its events (Graph JSON).
    pub calendars: BTreeMap<String, Vec<serde_json::Value>>,
    pub dead_letters: u32,
    pub report: String,
}

/// A realistic day of schedule events in two windows, published to the local RabbitMQ, synced by
/// an in-process worker into the embedded emulator. Returns the calendars and the printed report.
pub async fn run_demo(window_seconds: u64) -> Result<DemoOutcome, SandboxError> {
    let sb = Sandbox::start("demo", window_seconds, Settings::default()).await?;
    let result = demo_in(&sb, window_seconds).await;
    sb.cleanup().await;
    result
}

async fn demo_in(sb: &Sandbox, window_seconds: u64) -> Result<DemoOutcome, SandboxError> {
    let mut report = String::new();
    let c = "acme";
    let users: Vec<(&str, &str, MailboxKind)> =
        DEMO_USERS.iter().map(|(u, l, _, k)| (*u, *l, *k)).collect();
    let tenant = sb.company(c, Plan::Standard, &users).await?;
    let _ = writeln!(
        report,
        "company {c}: plan standard, Microsoft tenant {} ({}), {} linked users; u-999 is not linked",
        tenant.domain,
        tenant.tenant_id,
        users.len()
    );
    let worker = sb.worker().await?;
    let wait = Duration::from_secs(window_seconds * 3 + 20);

    let window1 = morning(c);
    sb.publish(&window1).await?;
    sb.publish_raw("bad-1", "schedule.created", &typo(c))
        .await?;
    let _ = writeln!(
        report,
        "window 1: published {} events (one twice) and 1 invalid event (end before start)",
        window1.len() - 1
    );
    sb.wait_idle(wait).await?;

    sb.publish(&afternoon(c)).await?;
    let _ = writeln!(
        report,
        "window 2: moved sch-1002 to Tuesday and took Jiro off it (revision 3 arrived before 2), added Jiro to sch-1001, deleted sch-1005"
    );
    if !sb.wait_idle(wait).await? {
        let _ = writeln!(
            report,
            "warning: the worker was still busy after {} seconds; the calendars below may not show every change yet",
            wait.as_secs()
        );
    }
    worker.stop(Duration::from_secs(10)).await;

    let _ = writeln!(report);
    let calendars = calendars(sb, c, &tenant, &mut report).await?;
    let dead_letters = sb.queue_depth(&sb.cfg.amqp.dead_letter_queue).await?;
    totals(sb, dead_letters, &mut report).await;
    Ok(DemoOutcome {
        calendars,
        dead_letters,
        report,
    })
}

/// A visit to Tanaka Industries (created, then renamed), in Tokyo.
fn tanaka_visit(c: &str, revision: u64, memo: &str, others: &[&str]) -> Ev {
    let ev = if revision == 1 {
        Ev::created(c, "sch-1001").title("Visit: Tanaka Industries")
    } else {
        Ev::updated(c, "sch-1001", revision).title("Visit: Tanaka Industries (renewal)")
    };
    ev.memo(memo)
        .at(
            "2026-11-30T10:00:00+09:00",
            "2026-11-30T11:30:00+09:00",
            "Asia/Tokyo",
        )
        .place(
            "Tanaka Industries HQ",
            "1-2-3 Marunouchi, Chiyoda-ku, Tokyo",
        )
        .people("u-100", others)
}

/// A one-off timed schedule in Tokyo on 30 November.
fn tokyo(c: &str, schedule: &str, title: &str, hours: (&str, &str)) -> Ev {
    Ev::created(c, schedule).title(title).at(
        &format!("2026-11-30T{}:00+09:00", hours.0),
        &format!("2026-11-30T{}:00+09:00", hours.1),
        "Asia/Tokyo",
    )
}

/// Window 1: the morning's plans (the weekly meeting is delivered twice).
fn morning(c: &str) -> Vec<WireEvent> {
    let weekly = tokyo(c, "sch-1002", "Weekly sales meeting", ("09:00", "09:30"))
        .place("Head office, room 3", "")
        .people("u-200", &["u-100", "u-300"])
        .wire();
    let quote = "Bring the renewal quote.";
    vec![
        tanaka_visit(c, 1, quote, &["u-200"]).wire(),
        tanaka_visit(c, 2, quote, &["u-200"]).wire(),
        weekly.clone(),
        weekly,
        Ev::created(c, "sch-1003")
            .title("Trade fair, Osaka")
            .all_day("2026-12-01", "2026-12-02")
            .place("INTEX Osaka", "1-5-102 Nanko-kita, Suminoe-ku, Osaka")
            .people("u-300", &["u-100"])
            .wire(),
        tokyo(c, "sch-1004", "Clinic", ("17:00", "18:00"))
            .people("u-200", &[])
            .private()
            .wire(),
        tokyo(c, "sch-1005", "Client dinner", ("19:00", "21:00"))
            .people("u-100", &["u-999"])
            .wire(),
        tokyo(c, "sch-1006", "Demo for Kato Trading", ("14:00", "15:00"))
            .people("u-300", &["u-400"])
            .wire(),
    ]
}

/// An event that breaks the contract (it ends before it starts), as published bytes.
fn typo(c: &str) -> Vec<u8> {
    let mut invalid =
        serde_json::to_value(tokyo(c, "sch-1007", "Typo in the time", ("16:00", "15:00")).wire())
            .expect("json");
    invalid["event_id"] = "bad-1".into();
    invalid.to_string().into_bytes()
}

/// Window 2: the afternoon's edits, one of them delivered out of order.
fn afternoon(c: &str) -> Vec<WireEvent> {
    let moved = |rev: u64, others: &[&str]| {
        Ev::updated(c, "sch-1002", rev)
            .title("Weekly sales meeting (moved to Tuesday)")
            .at(
                "2026-12-01T09:00:00+09:00",
                "2026-12-01T09:30:00+09:00",
                "Asia/Tokyo",
            )
            .place("Head office, room 3", "")
            .people("u-200", others)
            .wire()
    };
    vec![
        moved(3, &["u-100"]),
        moved(2, &["u-100", "u-300"]),
        tanaka_visit(
            c,
            3,
            "Bring the renewal quote. Jiro joins for the demo.",
            &["u-200", "u-300"],
        )
        .wire(),
        Ev::deleted(c, "sch-1005", 2).wire(),
    ]
}

/// Each demo user's calendar in the emulator, as a table in the report.
async fn calendars(
    sb: &Sandbox,
    c: &str,
    tenant: &TenantInfo,
    report: &mut String,
) -> Result<BTreeMap<String, Vec<serde_json::Value>>, SandboxError> {
    let mut calendars = BTreeMap::new();
    for (user, local, name, _) in DEMO_USERS {
        let mailbox = format!("{local}@{}", tenant.domain);
        let events = sb.emulator.emulator.calendar(&mailbox);
        let status = sb
            .directory
            .user(c, user)
            .await?
            .map(|u| match (u.status, u.reason) {
                (UserStatus::Authenticated, _) => "authenticated (認証済み)".to_string(),
                (UserStatus::AuthFailed, r) => {
                    format!("auth failed (認証失敗): {}", r.unwrap_or_default())
                }
            })
            .unwrap_or_default();
        report.push_str(&calendar_table(
            &format!("{name} <{mailbox}>, {user}, {status}"),
            &events,
        ));
        report.push('\n');
        calendars.insert(mailbox, events);
    }
    Ok(calendars)
}

/// What Graph, Redis and the dead-letter queue saw.
async fn totals(sb: &Sandbox, dead_letters: u32, report: &mut String) {
    let stats = sb.emulator.emulator.stats();
    let _ = writeln!(
        report,
        "Graph: {} writes in {} $batch requests ({} creates, {} updates, {} deletes), {} throttled",
        stats.writes,
        stats.batches,
        stats.events_created,
        stats.events_updated,
        stats.events_deleted,
        stats.throttled
    );
    let _ = writeln!(report, "{}", worker_metrics_summary(sb).await);
    let _ = writeln!(
        report,
        "dead-letter queue {}: {dead_letters} messages (the invalid event, and Sachiko's copy: no Exchange mailbox)",
        sb.cfg.amqp.dead_letter_queue
    );
}

async fn worker_metrics_summary(sb: &Sandbox) -> String {
    let mut r = sb.redis.clone();
    let staged: u64 = r
        .keys::<_, Vec<String>>(crate::store::keys(&sb.cfg).staged_pattern())
        .await
        .map(|k| k.len() as u64)
        .unwrap_or(0);
    format!(
        "Redis: {staged} schedules staged (latest revision of each kept; duplicates and older revisions dropped)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(subject: &str, location: &str, start: &str, end: &str) -> serde_json::Value {
        serde_json::json!({
            "subject": subject,
            "isAllDay": false,
            "originalStartTimeZone": "Tokyo Standard Time",
            "start": {"dateTime": start, "timeZone": "Tokyo Standard Time"},
            "end": {"dateTime": end, "timeZone": "Tokyo Standard Time"},
            "location": {"displayName": location},
            "sensitivity": "normal",
        })
    }

    #[test]
    fn a_calendar_with_full_width_japanese_lines_up_by_display_width() {
        let t = calendar_table(
            "Taro Yamada <taro@acme.onmicrosoft.com>",
            &[
                event(
                    "顧客訪問（東京）",
                    "田中工業 本社",
                    "2026-11-30T10:00:00.0000000",
                    "2026-11-30T11:30:00.0000000",
                ),
                event(
                    "Weekly sales meeting",
                    "Head office, room 3",
                    "2026-12-01T09:00:00.0000000",
                    "2026-12-01T09:30:00.0000000",
                ),
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        // LOCATION and SENSITIVITY start at the same display column on every row.
        let column = |line: &str, cell: &str| {
            crate::terminal::width(
                &line[..line
                    .find(cell)
                    .unwrap_or_else(|| panic!("{cell} in {line}"))],
            )
        };
        let location = column(lines[1], "LOCATION");
        assert_eq!(column(lines[2], "田中工業"), location, "{t}");
        assert_eq!(column(lines[3], "Head office"), location, "{t}");
        let sensitivity = column(lines[1], "SENSITIVITY");
        assert_eq!(column(lines[2], "normal"), sensitivity, "{t}");
        assert_eq!(column(lines[3], "normal"), sensitivity, "{t}");
        assert!(lines[2].contains("2026-11-30 10:00 → 11:30"), "{t}");
    }
}
