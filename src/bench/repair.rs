//! Figure 6, the repair pass (issue #19): the Graph requests a pass costs. Over an unchanged
//! mailbox the floor is one calendarView delta request (its one page carries the deltaLink);
//! a first, full pass reads each mailbox's range in pages of `repair.page_size`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use graph_emulator::Settings;

use super::load::{company_with, drain_with_workers, stage_backlog};
use super::{BenchError, Figure, figure};
use crate::demo::Sandbox;
use crate::graph::client::GraphClient;
use crate::metrics::Metrics;
use crate::repair::Repairer;

/// One sweep: a pass over every mailbox, eight at a time. Delta requests, writes, time.
async fn sweep(sb: &Sandbox, r: &Repairer, mailboxes: &[String]) -> (usize, u64, Duration) {
    let em = &sb.emulator.emulator;
    em.clear_log();
    let writes = em.stats().writes;
    let started = Instant::now();
    let results: Vec<_> = futures_util::stream::iter(mailboxes.iter().cloned())
        .map(|m| {
            let r = r.clone();
            async move { r.pass("acme", &m).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let took = started.elapsed();
    let failed = results.iter().filter(|p| p.is_err()).count();
    assert_eq!(failed, 0, "every pass of the benchmark succeeds");
    let requests = em
        .request_log()
        .iter()
        .filter(|l| l.path.contains("calendarView/delta"))
        .count();
    (requests, em.stats().writes - writes, took)
}

/// Requests per pass over unchanged mailboxes, and a full pass over 1,000 mailboxes.
pub(super) async fn measure(
    quick: bool,
    figures: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<(), BenchError> {
    let mailboxes = 1_000;
    let (schedules, per) = if quick { (1_500, 2) } else { (5_000, 2) };
    let sb = Sandbox::start("bench-repair", 1, Settings::default()).await?;
    company_with(&sb, "acme", mailboxes).await?;
    stage_backlog(&sb, "acme", schedules, mailboxes, per).await?;
    drain_with_workers(&sb, 2, Duration::from_secs(600)).await?;
    let names: Vec<String> = (0..mailboxes)
        .map(|i| format!("user{i}@acme.onmicrosoft.com"))
        .collect();
    let page = sb.cfg.repair.page_size as usize;
    let floor: usize = names
        .iter()
        .map(|m| sb.emulator.emulator.calendar(m).len().div_ceil(page).max(1))
        .sum();
    let copies: usize = names
        .iter()
        .map(|m| sb.emulator.emulator.calendar(m).len())
        .sum();
    let repairer = Repairer::new(
        Arc::new(sb.cfg.clone()),
        sb.redis.clone(),
        GraphClient::new(&sb.cfg.graph),
        Metrics::new(),
    );
    let (full, full_writes, full_took) = sweep(&sb, &repairer, &names).await;
    let (again, again_writes, again_took) = sweep(&sb, &repairer, &names).await;
    figures.push(figure(
        "Repair: delta requests per pass over an unchanged mailbox",
        format!(
            "{again} requests, {again_writes} writes for {mailboxes} passes ({:.1} s)",
            again_took.as_secs_f64()
        ),
        again as f64 / mailboxes as f64,
        "= 1.00 (the floor), no write",
        again == mailboxes && again_writes == 0,
    ));
    figures.push(figure(
        "Repair: requests of a first, full pass over 1,000 mailboxes / pages of their ranges",
        format!(
            "{full} requests, {full_writes} writes for {mailboxes} mailboxes holding {copies} copies (pages of {page}: floor {floor}; {:.1} s)",
            full_took.as_secs_f64()
        ),
        full as f64 / floor as f64,
        "= 1.00, no write",
        full == floor && full_writes == 0,
    ));
    notes.push(format!(
        "repair: a full sweep of {mailboxes} mailboxes took {:.1} s and an unchanged one {:.1} s on this machine (8 passes at once, one worker); at the default interval (30 min) a fleet spends {:.2} delta requests per second per 1,000 mailboxes",
        full_took.as_secs_f64(),
        again_took.as_secs_f64(),
        mailboxes as f64 / 1800.0
    ));
    sb.cleanup().await;
    Ok(())
}
