//! Figure 2, coalescing: several updates per schedule inside one window make one write per
//! (schedule, mailbox), in as few `$batch` requests as can carry them.

use std::time::Duration;

use super::load::{company_with, drain_with_workers, event_body, participants};
use super::{BenchError, Figure, figure};
use crate::demo::Sandbox;
use graph_emulator::Settings;

/// Graph writes over net changes, and requests over ⌈writes / 20⌉.
pub(super) async fn measure(quick: bool, figures: &mut Vec<Figure>) -> Result<(), BenchError> {
    let (schedules, revisions, mailboxes, per) = if quick {
        (500, 5, 30, 3)
    } else {
        (2_000, 5, 50, 3)
    };
    let sb = Sandbox::start("bench-coalesce", 2, Settings::default()).await?;
    company_with(&sb, "acme", mailboxes).await?;
    let mut items = Vec::new();
    for rev in 1..=revisions {
        for i in 0..schedules {
            let body = event_body(
                "acme",
                &format!("s{i}"),
                rev,
                &participants(i, mailboxes, per),
            );
            let key = if rev == 1 {
                "schedule.created"
            } else {
                "schedule.updated"
            };
            items.push((format!("s{i}-{rev}"), key, body));
        }
    }
    sb.publish_bulk(&items).await?;
    let _ = drain_with_workers(&sb, 1, Duration::from_secs(300)).await?;
    let stats = sb.emulator.emulator.stats();
    let net = (schedules * per) as f64;
    let writes = stats.writes as f64;
    let requests = sb
        .emulator
        .emulator
        .request_log()
        .iter()
        .filter(|r| !r.batch_item && r.path.starts_with("/v1.0"))
        .count() as f64;
    let min_requests = (writes / 20.0).ceil();
    figures.push(figure(
            "Coalescing: Graph writes / net (schedule, mailbox) changes",
            format!("{schedules} schedules × {revisions} revisions × {per} mailboxes: {writes} writes for {net} net changes"),
            writes / net,
            "= 1.00",
            (writes - net).abs() < 0.5,
        ));
    figures.push(figure(
        "Coalescing: HTTP requests / ⌈writes / 20⌉",
        format!("{requests} requests for {writes} writes"),
        requests / min_requests,
        "≤ 1.05",
        requests / min_requests <= 1.05,
    ));
    sb.cleanup().await;
    Ok(())
}
