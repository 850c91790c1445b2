//! Figure 3, drain: a backlog written under Graph's limits (4 in flight per mailbox, a fixed
//! latency) against the lower bound those limits allow, with how each mailbox's time was used.

use std::time::Duration;

use super::load::{
    On, broker_settle, company_with, drain_with_workers, ingest_size, stage_backlog,
};
use super::measure::{CpuSample, MailboxUse, mailbox_use};
use super::{BenchError, Figure, figure};
use crate::demo::Sandbox;
use graph_emulator::Settings;

/// The figure on the single Redis.
pub(super) const NAME: &str = "Drain: time / lower bound of Graph's limits";
/// The figure on a 3-primary Redis Cluster.
pub(super) const NAME_CLUSTER: &str =
    "Drain on a 3-primary Redis Cluster: time / lower bound of Graph's limits";

/// The drain's time over the bound (writes per mailbox × latency / 4), with the backlog and the
/// worker's state in the Redis `on` names.
pub(super) async fn measure(
    quick: bool,
    on: On<'_>,
    figures: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<(), BenchError> {
    let latency = Duration::from_millis(50);
    let (mailboxes, per_mailbox) = match std::env::var("OUTLOOK_SYNC_BENCH_DRAIN") {
        // "MAILBOXES,WRITES_PER_MAILBOX", for profiling one shape.
        Ok(v) => {
            let mut it = v.split(',').filter_map(|x| x.trim().parse::<usize>().ok());
            (it.next().unwrap_or(20), it.next().unwrap_or(200))
        }
        Err(_) if quick => (20, 400),
        Err(_) => (20, 1_000),
    };
    let settings = Settings {
        latency,
        ..Settings::default()
    };
    let mut sb = Sandbox::start("bench-drain", 1, settings).await?;
    let r = match on.point(&mut sb).await {
        Ok(()) => {
            measure_in(
                &mut sb,
                (mailboxes, per_mailbox),
                latency,
                quick,
                on,
                figures,
                notes,
            )
            .await
        }
        Err(e) => Err(e),
    };
    sb.cleanup().await;
    r
}

async fn measure_in(
    sb: &mut Sandbox,
    (mailboxes, per_mailbox): (usize, usize),
    latency: Duration,
    quick: bool,
    on: On<'_>,
    figures: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<(), BenchError> {
    let what = on.pick("drain", "drain on the cluster");
    // The worker's own cap on requests in flight is set high enough for every mailbox to
    // have 4: what binds is Graph's per-mailbox limit, the thing this figure measures.
    sb.cfg.graph.max_in_flight_total = sb.cfg.graph.max_in_flight_total.max(4 * mailboxes);
    company_with(sb, "acme", mailboxes).await?;
    let schedules = mailboxes * per_mailbox;
    stage_backlog(sb, "acme", schedules, mailboxes, 1).await?;
    // The ingest figure leaves the broker writing in the background for a while.
    broker_settle(ingest_size(quick)).await;
    let cpu = CpuSample::now();
    let took = drain_with_workers(sb, 1, Duration::from_secs(900)).await?;
    let cpu = CpuSample::now().since(&cpu);
    let bound = latency.mul_f64(per_mailbox as f64 / 4.0);
    let ratio = took.as_secs_f64() / bound.as_secs_f64();
    let stats = sb.emulator.emulator.stats();
    let uses = mailbox_use(&sb.emulator.emulator.request_log());
    let longest = uses.iter().map(|(_, u)| u.span).max().unwrap_or_default();
    let total = uses
        .iter()
        .fold(MailboxUse::default(), |t, (_, u)| MailboxUse {
            span: t.span + u.span,
            busy: t.busy + u.busy,
            item_time: t.item_time + u.item_time,
            writes: t.writes + u.writes,
        });
    notes.push(format!(
            "{what}: the longest a single mailbox was being written to: {:.2} s (bound {:.2} s); {} $batch requests for {} writes; CPU used while draining: this process (the worker and the emulator) {:.1} s, Redis {:.1} s, RabbitMQ {:.1} s, in {:.1} s on {} cores",
            longest.as_secs_f64(),
            bound.as_secs_f64(),
            stats.batches,
            stats.writes,
            cpu.this.as_secs_f64(),
            cpu.redis.as_secs_f64(),
            cpu.rabbitmq.as_secs_f64(),
            took.as_secs_f64(),
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        ));
    notes.push(format!(
            "{what}: where a mailbox's time went: writes in flight {:.0}% of its span (idle between batches the rest), {:.2} of 4 in flight on average while busy, a write took {:.1} ms on average (the emulator's latency is {} ms)",
            100.0 * total.busy.as_secs_f64() / total.span.as_secs_f64().max(1e-9),
            total.item_time.as_secs_f64() / total.busy.as_secs_f64().max(1e-9),
            1000.0 * total.item_time.as_secs_f64() / (total.writes.max(1) as f64),
            latency.as_millis(),
        ));
    figures.push(figure(
            on.pick(NAME, NAME_CLUSTER),
            format!(
                "{schedules} writes over {mailboxes} mailboxes at {} ms: {:.2} s vs bound {:.2} s ({} throttled)",
                latency.as_millis(),
                took.as_secs_f64(),
                bound.as_secs_f64(),
                stats.throttled
            ),
            ratio,
            "≤ 1.25",
            ratio <= 1.25,
        ));
    Ok(())
}
