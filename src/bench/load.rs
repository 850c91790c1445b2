//! The workloads and the harness the figures share: events, companies, a backlog staged straight
//! into Redis, workers draining it, and a pause for the broker's background writes.

use std::time::{Duration, Instant};

use redis::AsyncCommands;

use super::BenchError;
use crate::demo::{Ev, Sandbox};
use crate::tenants::Plan;
use crate::window::{Staging, Windows};
use graph_emulator::MailboxKind;

/// Which Redis a figure runs on: the local one the sandbox starts with, or a Redis Cluster of
/// the bench's own (`cluster::LocalCluster`), named by its `redis+cluster://` URL.
#[derive(Debug, Clone, Copy)]
pub(super) enum On<'a> {
    Single,
    Cluster(&'a str),
}

impl On<'_> {
    /// Points `sb` at this Redis: its URL, one claim shard per primary, and a connection of
    /// its own (every worker the sandbox starts then connects there too).
    pub(super) async fn point(self, sb: &mut Sandbox) -> Result<(), BenchError> {
        let On::Cluster(url) = self else {
            return Ok(());
        };
        sb.cfg.redis.url = url.to_string();
        sb.cfg.redis.shards = 3;
        sb.cfg
            .validate()
            .map_err(|e| BenchError::Other(format!("the bench's cluster configuration: {e}")))?;
        sb.redis = crate::store::connect(&sb.cfg).await?;
        Ok(())
    }

    /// The figure's name on this Redis: `single` or `cluster`, whichever applies.
    pub(super) fn pick(self, single: &'static str, cluster: &'static str) -> &'static str {
        match self {
            On::Single => single,
            On::Cluster(_) => cluster,
        }
    }
}

pub(super) fn event_body(
    company: &str,
    schedule: &str,
    rev: u64,
    participants: &[String],
) -> Vec<u8> {
    let others: Vec<&str> = participants[1..].iter().map(String::as_str).collect();
    let ev = if rev == 1 {
        Ev::created(company, schedule)
    } else {
        Ev::updated(company, schedule, rev)
    }
    .title(&format!("{schedule} r{rev}"))
    .memo("Visit the client; bring the quote.")
    .place("Client HQ", "1-2-3 Marunouchi, Chiyoda-ku, Tokyo")
    .people(&participants[0], &others)
    .wire();
    serde_json::to_vec(&ev).expect("serializable")
}

/// Lets the broker finish writing what was just published (a quorum queue moves its log to
/// segment files in the background) so that work is not counted against the consumer after it:
/// a second per 50,000 messages, between 1 and 3 s (`OUTLOOK_SYNC_BENCH_SETTLE` overrides it).
pub(super) async fn broker_settle(published: usize) {
    let secs = std::env::var("OUTLOOK_SYNC_BENCH_SETTLE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or((published as f64 / 50_000.0).clamp(1.0, 3.0));
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
}

/// How many events the ingest figure puts through each consumer.
pub(super) fn ingest_size(quick: bool) -> usize {
    if quick { 30_000 } else { 200_000 }
}

/// `n` creates of distinct schedules of `company`, two participants each: the ingest workload.
pub(super) fn ingest_bodies(company: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| event_body(company, &format!("s{i}"), 1, &participants(i, 50, 2)))
        .collect()
}

pub(super) fn participants(i: usize, mailboxes: usize, per: usize) -> Vec<String> {
    (0..per)
        .map(|k| format!("u-{}", (i * 7 + k * 13) % mailboxes))
        .collect()
}

pub(super) async fn company_with(
    sb: &Sandbox,
    company: &str,
    mailboxes: usize,
) -> Result<(), BenchError> {
    let users: Vec<(String, String)> = (0..mailboxes)
        .map(|i| (format!("u-{i}"), format!("user{i}")))
        .collect();
    let refs: Vec<(&str, &str, MailboxKind)> = users
        .iter()
        .map(|(u, l)| (u.as_str(), l.as_str(), MailboxKind::Ok))
        .collect();
    sb.company(company, Plan::Standard, &refs).await?;
    Ok(())
}

/// Stages `schedules` creates of one revision each, `per` participants each, straight into Redis
/// (a backlog that is due at once), bypassing AMQP.
pub(super) async fn stage_backlog(
    sb: &Sandbox,
    company: &str,
    schedules: usize,
    mailboxes: usize,
    per: usize,
) -> Result<(), BenchError> {
    let windows = Windows::new(
        sb.redis.clone(),
        crate::store::keys(&sb.cfg),
        Duration::from_secs(1),
    );
    let bodies: Vec<Vec<u8>> = (0..schedules)
        .map(|i| {
            event_body(
                company,
                &format!("s{i}"),
                1,
                &participants(i, mailboxes, per),
            )
        })
        .collect();
    let events: Vec<crate::event::ScheduleEvent> = bodies
        .iter()
        .map(|b| crate::event::decode(b).expect("valid"))
        .collect();
    for (evs, raws) in events.chunks(500).zip(bodies.chunks(500)) {
        let staging: Vec<Staging<'_>> = evs
            .iter()
            .zip(raws)
            .map(|(e, r)| Staging::new(e, r))
            .collect();
        Windows::stage(&windows, &staging).await?;
    }
    // Make everything due now, in every shard.
    let mut r = sb.redis.clone();
    let keys = crate::store::keys(&sb.cfg);
    for shard in 0..keys.shards() {
        let due = keys.due_in(shard);
        let members: Vec<String> = r.zrange(&due, 0, -1).await?;
        for chunk in members.chunks(1000) {
            let mut pipe = redis::pipe();
            for m in chunk {
                pipe.zadd(&due, m, 0).ignore();
            }
            pipe.query_async::<()>(&mut r).await?;
        }
    }
    Ok(())
}

pub(super) async fn drain_with_workers(
    sb: &Sandbox,
    workers: usize,
    timeout: Duration,
) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let mut ws = Vec::new();
    for _ in 0..workers {
        ws.push(sb.worker().await?);
    }
    if !sb.wait_idle(timeout).await? {
        return Err(BenchError::Other(format!(
            "the backlog did not drain within {timeout:?}"
        )));
    }
    // wait_idle waits for half a second of quiet; that half second is not work.
    let took = start.elapsed().saturating_sub(Duration::from_millis(500));
    for w in ws {
        w.stop(Duration::from_secs(5)).await;
    }
    Ok(took)
}
