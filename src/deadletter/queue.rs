//! How the dead-letter operations read and change a quorum queue without losing, duplicating or
//! reordering its messages: a **rotation**.
//!
//! AMQP has no "peek". Taking messages without acking them and giving them back (nack/requeue)
//! is what a peek usually becomes, but RabbitMQ 3.10's quorum queues do not return requeued
//! messages in their original order (measured: a requeued run of 300 comes back partly
//! reversed, differently each time), RabbitMQ ≥ 3.13 puts them at the back instead of the front,
//! and 4.0–4.2 count every requeue against the default `x-delivery-limit` of 20, after which a
//! quorum queue drops the message. A rotation avoids all three:
//!
//! 1. Under a lock (a Redis lease, so two operations never rotate the queue at once), count the
//!    ready messages `M` and take exactly `M` with `basic.get` (later arrivals are not touched),
//!    in batches.
//! 2. Per batch, each message is either **kept** (a copy is published to the tail of the same
//!    queue), **replayed** (published to the work exchange), or **removed** (written to the
//!    archive first). Every publish is `mandatory` and confirmed by the broker; only then are
//!    the originals acked. After `M` messages every kept one is back, in the same order.
//!
//! Crash behaviour: a message is acked only after its copy, its replay or its archive line is
//! safe, so a crash loses nothing; the unacked batch returns to the queue by itself. What a crash
//! can leave behind is (a) copies of the batch in flight, whose originals also came back, and (b)
//! a queue rotated part-way. Both heal on the next operation: before its first copy is published
//! an operation records in Redis the id of the message that must end up first (the **head**);
//! an operation that finds a head left over takes the messages before it aside (unacked) and puts
//! them back last, which restores the order; and every operation drops the second copy of an id
//! it has already seen (each dead letter has an id, `x-dead-letter-id`). Only the order within
//! the one batch in flight may differ afterwards (RabbitMQ 3.10 returns unacked messages to a
//! quorum queue in no guaranteed order).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use lapin::Confirmation;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde::{Deserialize, Serialize};

use super::error::DlqError;
use super::letter::{
    DEAD_LETTER_ID, ORIGINAL_ROUTING_KEY, REPLAY_COUNT, REPLAY_HEADER, REPLAYED_AT, REPLAYED_FROM,
};
use super::lock::OpsLock;
use super::record::{Record, header_map};
use crate::amqp::long_str;

/// The most messages one batch handles. RabbitMQ settles each message taken with `basic.get`
/// from a quorum queue with a command of its own, and a channel with more than 32 commands in
/// flight to a queue (`SOFT_LIMIT` in `rabbit_fifo_client`, 3.10 and 4.x) holds further settles
/// back until earlier ones are applied; closing the channel then drops them, and the broker
/// returns those messages although they were acked (measured on 3.10: a batch of 200 acked
/// right before the close came back 167 strong). With at most 16 per batch, every ack is sent.
pub const MAX_BATCH: usize = 16;

/// Stops a running operation: gracefully (no more replays or removals; the rotation finishes so
/// the queue keeps its order), or at once, as a crash would (nothing of the batch in flight is
/// acked; the next operation heals the queue).
#[derive(Debug, Clone, Default)]
pub struct Control(Arc<AtomicU8>);

impl Control {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn stop_gracefully(&self) {
        let _ = self
            .0
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn abandon(&self) {
        self.0.store(2, Ordering::SeqCst);
    }

    pub fn stopping(&self) -> bool {
        self.0.load(Ordering::SeqCst) >= 1
    }

    pub fn abandoned(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 2
    }
}

/// Where an operation is, reported after every batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Messages in the queue when the operation started (the ones it goes through).
    pub total: usize,
    /// Messages read so far.
    pub scanned: usize,
    /// Put back in place.
    pub kept: usize,
    /// Published to the work exchange (and acked).
    pub replayed: usize,
    /// Archived and acked.
    pub removed: usize,
    /// Second copies of a dead letter (left by an interrupted operation), dropped.
    pub duplicates: usize,
}

/// What to do with one dead letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Keep,
    /// Publish to the work exchange with this routing key.
    Replay(String),
    Remove,
}

/// A message taken from the queue and not yet acked.
pub(crate) struct Taken {
    tag: u64,
    pub(crate) props: BasicProperties,
    pub(crate) body: Vec<u8>,
    pub(crate) rec: Record,
}

/// An operation's decisions, one message at a time, in queue order.
pub(crate) trait Visitor {
    fn visit(&mut self, rec: &Record) -> Action;

    /// Called with a batch's removals before they are acked: make them durable (the archive).
    fn removing(&mut self, _removed: &[&Taken]) -> Result<(), DlqError> {
        Ok(())
    }
}

/// One pass over the queue.
pub(crate) struct Rotation<'a> {
    pub(crate) ch: &'a Channel,
    pub(crate) queue: &'a str,
    pub(crate) work_exchange: &'a str,
    pub(crate) redis: crate::store::Redis,
    pub(crate) head_key: String,
    pub(crate) batch: usize,
    pub(crate) control: &'a Control,
    pub(crate) lock: &'a OpsLock,
    pub(crate) progress: &'a mut (dyn FnMut(&Progress) + Send + Sync),
    /// Messages taken and not acked yet (after a failure: what the broker will give back).
    pub(crate) unacked: &'a AtomicUsize,
}

/// Ready messages in a queue (passive declare: fails if the queue does not exist).
pub(crate) async fn ready_count(ch: &Channel, queue: &str) -> Result<u32, lapin::Error> {
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Samples the dead-letter queue's depth into `outlook_sync_dead_letter_queue_depth` every
/// `dlq.depth_poll_seconds` until `shutdown` turns true (a worker runs it beside ingest and the
/// flush). An unreachable broker leaves the gauge as it was and is tried again next time.
///
/// It asks only once the worker's ingest has declared the queues (`declared` turned true): a
/// passive declare of a queue that does not exist yet would close the channel with an error.
pub async fn watch_depth(
    cfg: crate::config::Config,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    declared: tokio::sync::watch::Receiver<bool>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut declared_once = false;
    let every = std::time::Duration::from_secs(cfg.dlq.depth_poll_seconds);
    let url = cfg.amqp.connection_url();
    let queue = cfg.amqp.dead_letter_queue.clone();
    let mut conn: Option<(lapin::Connection, lapin::Channel)> = None;
    while !*shutdown.borrow() {
        if conn
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            conn = match crate::amqp::connect(&url, "outlook-sync dlq depth").await {
                Ok(c) => match c.create_channel().await {
                    Ok(ch) => Some((c, ch)),
                    Err(_) => None,
                },
                Err(e) => {
                    tracing::debug!(error = %e, "dead-letter queue depth: RabbitMQ unreachable");
                    None
                }
            };
        }
        declared_once |= *declared.borrow();
        if let Some((_, ch)) = conn.as_ref().filter(|_| declared_once) {
            match ready_count(ch, &queue).await {
                Ok(n) => {
                    metrics.dead_letter_queue_depth.set(i64::from(n));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "dead-letter queue depth unavailable");
                    conn = None;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => {}
        }
    }
    if let Some((c, ch)) = conn {
        if ch.status().connected() {
            let _ = ch.close(200, "bye".into()).await;
        }
        let _ = c.close(200, "bye".into()).await;
    }
}

impl Rotation<'_> {
    pub(crate) async fn run(
        mut self,
        visitor: &mut (dyn Visitor + Send),
    ) -> Result<Progress, DlqError> {
        let total = ready_count(self.ch, self.queue).await? as usize;
        let mut state = Progress {
            total,
            ..Progress::default()
        };
        let mut r = self.redis.clone();
        let left_over: Option<String> = redis::cmd("GET")
            .arg(&self.head_key)
            .query_async(&mut r)
            .await?;
        if let Some(head) = &left_over {
            tracing::warn!(
                queue = self.queue,
                head,
                "dead-letter queue: an earlier operation was interrupted; restoring the order"
            );
        }
        let mut searching = left_over;
        let mut held: Vec<Taken> = Vec::new();
        let mut seen = HashSet::new();
        let mut head_written = false;
        let mut taken = 0usize;
        while taken < total {
            self.check()?;
            let mut batch = Vec::with_capacity(self.batch);
            while batch.len() < self.batch && taken < total {
                let Some(t) = self.take().await? else {
                    taken = total;
                    break;
                };
                taken += 1;
                self.unacked.fetch_add(1, Ordering::SeqCst);
                if let Some(head) = &searching {
                    if t.rec.id != *head {
                        held.push(t);
                        continue;
                    }
                    searching = None;
                }
                batch.push(t);
            }
            if !batch.is_empty() {
                let multiple = held.is_empty();
                self.settle(
                    batch,
                    multiple,
                    visitor,
                    &mut seen,
                    &mut head_written,
                    &mut state,
                )
                .await?;
            }
        }
        // What came before the recorded head belongs at the end (the order before the
        // interruption). Held messages have the highest outstanding tags, in order.
        let mut rest = held.into_iter().peekable();
        while rest.peek().is_some() {
            self.check()?;
            let batch: Vec<Taken> = rest.by_ref().take(self.batch).collect();
            self.settle(
                batch,
                true,
                visitor,
                &mut seen,
                &mut head_written,
                &mut state,
            )
            .await?;
        }
        let _: () = redis::cmd("DEL")
            .arg(&self.head_key)
            .query_async(&mut r)
            .await?;
        Ok(state)
    }

    /// Between batches. (An abandon is noticed once the next batch is published and confirmed,
    /// before it is acked: the worst moment, as a crash would choose it.)
    fn check(&self) -> Result<(), DlqError> {
        if self.lock.lost() {
            return Err(DlqError::LockLost);
        }
        Ok(())
    }

    async fn take(&self) -> Result<Option<Taken>, DlqError> {
        let got = self
            .ch
            .basic_get(self.queue.into(), BasicGetOptions { no_ack: false })
            .await?;
        Ok(got.map(|m| {
            let d = m.delivery;
            let rec = Record::parse(d.routing_key.as_str(), &d.properties, &d.data);
            Taken {
                tag: d.delivery_tag,
                props: d.properties,
                body: d.data,
                rec,
            }
        }))
    }

    /// Decides, persists removals, publishes copies and replays, awaits every confirm, then acks.
    async fn settle(
        &mut self,
        batch: Vec<Taken>,
        multiple: bool,
        visitor: &mut (dyn Visitor + Send),
        seen: &mut HashSet<String>,
        head_written: &mut bool,
        state: &mut Progress,
    ) -> Result<(), DlqError> {
        let plan = self.decide(batch, visitor, seen);
        if !*head_written && let Some((t, _)) = plan.iter().find(|(_, a)| *a == Some(Action::Keep))
        {
            let mut r = self.redis.clone();
            let _: () = redis::cmd("SET")
                .arg(&self.head_key)
                .arg(&t.rec.id)
                .query_async(&mut r)
                .await?;
            *head_written = true;
        }
        let removed: Vec<&Taken> = plan
            .iter()
            .filter(|(_, a)| *a == Some(Action::Remove))
            .map(|(t, _)| t)
            .collect();
        if !removed.is_empty() {
            visitor.removing(&removed)?;
        }
        let failed = self.publish(&plan).await?;
        if self.control.abandoned() {
            // As a crash would: nothing of this batch is acked.
            return Err(DlqError::Interrupted);
        }
        let failed_idx: HashSet<usize> = failed.iter().map(|(i, _)| *i).collect();
        self.ack(&plan, &failed_idx, failed.is_empty() && multiple)
            .await?;
        state.scanned += plan.len();
        for (i, (_, a)) in plan.iter().enumerate() {
            if failed_idx.contains(&i) {
                continue;
            }
            match a {
                None => state.duplicates += 1,
                Some(Action::Keep) => state.kept += 1,
                Some(Action::Replay(_)) => state.replayed += 1,
                Some(Action::Remove) => state.removed += 1,
            }
        }
        (self.progress)(state);
        if let Some((i, why)) = failed.into_iter().next() {
            return Err(DlqError::Publish {
                id: plan[i].0.rec.id.clone(),
                why,
            });
        }
        Ok(())
    }

    /// Each message's action: the visitor's (or keep, when stopping gracefully); `None` for a
    /// second copy of a dead letter already seen in this pass (dropped).
    fn decide(
        &self,
        batch: Vec<Taken>,
        visitor: &mut (dyn Visitor + Send),
        seen: &mut HashSet<String>,
    ) -> Vec<(Taken, Option<Action>)> {
        let mut plan: Vec<(Taken, Option<Action>)> = Vec::with_capacity(batch.len());
        for mut t in batch {
            if !seen.insert(t.rec.id.clone()) {
                plan.push((t, None));
                continue;
            }
            t.rec.position = seen.len() - 1;
            let action = if self.control.stopping() && !self.control.abandoned() {
                Action::Keep
            } else {
                visitor.visit(&t.rec)
            };
            plan.push((t, Some(action)));
        }
        plan
    }

    /// Publishes the copies (to the tail of the queue) and the replays (to the work exchange),
    /// `mandatory`, and awaits every confirm; returns the ones that failed, with why.
    async fn publish(
        &self,
        plan: &[(Taken, Option<Action>)],
    ) -> Result<Vec<(usize, String)>, DlqError> {
        let mandatory = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let mut confirms = Vec::new();
        for (i, (t, a)) in plan.iter().enumerate() {
            let (exchange, key, props) = match a {
                Some(Action::Keep) => ("", self.queue.to_string(), copy_properties(t)),
                Some(Action::Replay(rk)) => (self.work_exchange, rk.clone(), replay_properties(t)),
                _ => continue,
            };
            let c = self
                .ch
                .basic_publish(
                    exchange.into(),
                    key.as_str().into(),
                    mandatory,
                    &t.body,
                    props,
                )
                .await?;
            confirms.push((i, exchange, key, c));
        }
        let mut failed: Vec<(usize, String)> = Vec::new();
        for (i, exchange, key, c) in confirms {
            let target = if exchange.is_empty() {
                format!("queue {key}")
            } else {
                format!("exchange {exchange} with routing key {key}")
            };
            match c.await {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {}
                Ok(Confirmation::Ack(Some(_))) => {
                    failed.push((i, format!("{target}: unroutable (no queue bound)")))
                }
                Ok(Confirmation::Nack(_)) => failed.push((
                    i,
                    format!("{target}: refused by the broker (a full queue?)"),
                )),
                Err(e) => failed.push((i, format!("{target}: {e}"))),
            }
        }
        Ok(failed)
    }

    /// Acks the originals whose copy, replay or archive line is safe: the whole batch with one
    /// `multiple` ack when it may, else one by one, leaving the failed ones unacked.
    async fn ack(
        &self,
        plan: &[(Taken, Option<Action>)],
        failed: &HashSet<usize>,
        multiple: bool,
    ) -> Result<(), DlqError> {
        if multiple {
            let last = plan.last().expect("a batch is never empty").0.tag;
            self.ch
                .basic_ack(last, BasicAckOptions { multiple: true })
                .await?;
            self.unacked.fetch_sub(plan.len(), Ordering::SeqCst);
        } else {
            for (i, (t, _)) in plan.iter().enumerate() {
                if !failed.contains(&i) {
                    self.ch
                        .basic_ack(t.tag, BasicAckOptions { multiple: false })
                        .await?;
                    self.unacked.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
        Ok(())
    }
}

fn set(h: &mut std::collections::BTreeMap<ShortString, AMQPValue>, k: &str, v: AMQPValue) {
    h.insert(ShortString::from(k), v);
}

/// The copy put back at the tail: the same message, with its id and original routing key
/// recorded (a copy is delivered from the default exchange, so the delivery's own routing key
/// no longer says it), without the broker's redelivery count.
fn copy_properties(t: &Taken) -> BasicProperties {
    let mut h = header_map(&t.props);
    h.remove("x-delivery-count");
    if !h.contains_key(DEAD_LETTER_ID) {
        set(&mut h, DEAD_LETTER_ID, long_str(&t.rec.id));
    }
    if !h.contains_key(ORIGINAL_ROUTING_KEY)
        && let Some(rk) = &t.rec.routing_key
    {
        set(&mut h, ORIGINAL_ROUTING_KEY, long_str(rk));
    }
    t.props
        .clone()
        .with_headers(FieldTable::from(h))
        .with_delivery_mode(2)
}

/// Headers that describe a death, moved under `x-replayed-from-` on a replay.
const DEATH_HEADERS: &[&str] = &[
    "x-stage",
    "x-reason",
    "x-error",
    "x-company",
    "x-schedule",
    "x-revision",
    "x-mailbox",
    "x-graph-status",
    "x-graph-code",
    "x-graph-message",
    "x-graph-request-id",
    "x-attempts",
    "x-first-failure",
    "x-last-failure",
    "x-original-routing-key",
    "x-dead-letter-id",
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-last-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
];

/// The replay: the original message (body, message id, content type, type, timestamp), marked
/// `x-replay: true`, its dead-letter headers kept for history under `x-replayed-from-*`.
pub(crate) fn replay_properties(t: &Taken) -> BasicProperties {
    let mut h = header_map(&t.props);
    h.retain(|k, _| !k.as_str().starts_with(REPLAYED_FROM));
    for k in ["x-delivery-count", REPLAY_HEADER, REPLAYED_AT, REPLAY_COUNT] {
        h.remove(k);
    }
    for k in DEATH_HEADERS {
        if let Some(v) = h.remove(*k) {
            let name = format!("{REPLAYED_FROM}{}", k.trim_start_matches("x-"));
            set(&mut h, &name, v);
        }
    }
    set(&mut h, REPLAY_HEADER, AMQPValue::Boolean(true));
    set(
        &mut h,
        REPLAY_COUNT,
        AMQPValue::LongInt(t.rec.replays.saturating_add(1) as i32),
    );
    set(
        &mut h,
        REPLAYED_AT,
        long_str(&jiff::Timestamp::now().to_string()),
    );
    t.props
        .clone()
        .with_headers(FieldTable::from(h))
        .with_delivery_mode(2)
}
