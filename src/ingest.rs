//! Ingest: consume the work queue with a bounded prefetch, validate each message against the v1
//! contract, stage a batch of valid ones in Redis with one round trip, dead-letter invalid ones
//! with their reason, then ack the whole batch with one `multiple` ack.
//!
//! A message is acked only after its staging write (or its dead letter) is done: nothing acked is
//! lost. While Redis or the dead-letter publish fails, the batch is held unacked and retried with
//! backoff (the broker's delivery count does not grow); if the AMQP connection or the consumer
//! stream ends, the consumer is rebuilt with backoff and the unacked deliveries come back.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::amqp::{self, Publisher, Topology};
use crate::config::Config;
use crate::deadletter::{DeadLetter, REPLAY_HEADER};
use crate::event;
use crate::internal_events::{
    BatchStaged, ConsumerLost, InternalEvent, InvalidEventDeadLettered, ReplayStaged,
};
use crate::metrics::Metrics;
use crate::runtime::Backoff;
use crate::window::{Staged, Staging, Windows};

/// What one batch came to.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchReport {
    pub staged: usize,
    pub duplicates: usize,
    pub stale: usize,
    pub invalid: usize,
}

pub struct Ingest {
    cfg: Arc<Config>,
    windows: Windows,
    metrics: Arc<Metrics>,
    ready: watch::Sender<bool>,
    /// What this worker holds (`in_hand`: received, not acked yet), for the fleet's backlog.
    load: Arc<crate::fleet::Load>,
    /// Why ingest stopped for good (a queue declared with other arguments), if it did.
    fatal: watch::Sender<Option<String>>,
}

/// Batches staged at once: one is validated and staged while the next is being received.
const BATCHES_IN_FLIGHT: usize = 3;

/// What staging a batch needs; cheap to clone into its task.
#[derive(Clone)]
struct Stager {
    cfg: Arc<Config>,
    windows: Windows,
    metrics: Arc<Metrics>,
}

impl Ingest {
    pub fn new(cfg: Config, windows: Windows, metrics: Arc<Metrics>) -> Self {
        let (ready, _) = watch::channel(false);
        Self {
            cfg: Arc::new(cfg),
            windows,
            metrics,
            ready,
            load: crate::fleet::Load::new(),
            fatal: watch::channel(None).0,
        }
    }

    /// Why ingest stopped for good, once it has (the process should then exit saying so).
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Reports what it holds into `load` (the worker's, shared with its flush).
    pub fn with_load(mut self, load: Arc<crate::fleet::Load>) -> Self {
        self.load = load;
        self
    }

    fn stager(&self) -> Stager {
        Stager {
            cfg: self.cfg.clone(),
            windows: self.windows.clone(),
            metrics: self.metrics.clone(),
        }
    }

    /// True while a consumer is attached.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Consumes until `shutdown` turns true, rebuilding the connection and the consumer with
    /// backoff whenever either ends.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while !*shutdown.borrow() {
            if let Err(e) = crate::fleet::join(&self.cfg, self.windows.redis()).await {
                // Another fleet's settings (or no Redis): consuming now would stage events where
                // no one flushes them. Not ready; checked again after the wait.
                self.ready.send_replace(false);
                let wait = backoff.delay().max(Duration::from_secs(5));
                match &e {
                    crate::fleet::JoinError::Conflict(c) => {
                        tracing::error!(
                            retry_in_ms = wait.as_millis() as u64,
                            "ingest: not consuming: {c}"
                        )
                    }
                    crate::fleet::JoinError::Redis(_) => {
                        warn!(error = %e, redis = %amqp::redacted(&self.cfg.redis.url), retry_in_ms = wait.as_millis() as u64, "ingest: not consuming until Redis answers")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let consumed = self.consume(&mut shutdown).await;
            // Whatever was not acked goes back to the queue with the connection.
            self.load.acked(u64::MAX);
            let was_consuming = self.ready.send_replace(false);
            match consumed {
                Ok(()) => backoff.reset(),
                Err(e) if e.is_permanent() => {
                    // Retrying cannot fix it: say so once, and stop.
                    tracing::error!("ingest: stopped: {e}");
                    self.fatal.send_replace(Some(e.to_string()));
                    return;
                }
                Err(e) => {
                    let wait = backoff.delay();
                    ConsumerLost {
                        error: &e,
                        broker: &amqp::redacted(&self.cfg.amqp.url),
                        was_consuming,
                        retry_in: wait,
                    }
                    .emit(&self.metrics);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
        self.ready.send_replace(false);
    }

    async fn consume(&self, shutdown: &mut watch::Receiver<bool>) -> Result<(), amqp::AmqpError> {
        let a = &self.cfg.amqp;
        let conn = amqp::connect(&a.url, "outlook-sync ingest").await?;
        let ch = conn.create_channel().await?;
        Topology::new(a).declare(&ch).await?;
        ch.basic_qos(a.prefetch, BasicQosOptions::default()).await?;
        let publisher = Arc::new(Publisher::new(&conn).await?);
        let mut consumer = ch
            .basic_consume(
                a.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        info!(queue = %a.queue, prefetch = a.prefetch, "ingest: consuming");
        self.ready.send_replace(true);
        let wait = Duration::from_millis(a.ingest_batch_wait_ms);
        // Batches being staged, oldest first; each is acked (with one `multiple` ack) only once
        // it and every batch before it are staged, so an ack never covers an unstaged delivery.
        let mut staging: std::collections::VecDeque<StageTask> = std::collections::VecDeque::new();
        loop {
            let first = loop {
                let busy = !staging.is_empty();
                let front = staging.front_mut().map(|(_, _, t)| t);
                tokio::select! {
                    d = consumer.next() => break d,
                    done = async { front.expect("checked").await }, if busy => {
                        let (last, n, _) = staging.pop_front().expect("checked");
                        ack(&ch, last, done).await?;
                        self.load.acked(n);
                    }
                    _ = shutdown.changed() => {
                        // Unacked deliveries go back to the queue when the connection closes.
                        for (_, _, task) in staging.drain(..) {
                            task.abort();
                        }
                        let _ = conn.close(200, "shutting down".into()).await;
                        return Ok(());
                    }
                }
            };
            let Some(first) = first else {
                return Err(amqp::AmqpError::StreamEnded);
            };
            let mut batch = Vec::with_capacity(a.ingest_batch);
            batch.push(first?);
            self.load.took(1);
            let deadline = tokio::time::Instant::now() + wait;
            while batch.len() < a.ingest_batch {
                match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Ok(Some(d)) => {
                        batch.push(d?);
                        self.load.took(1);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            let last = batch.last().expect("never empty").delivery_tag;
            let n = batch.len() as u64;
            let task = tokio::spawn(self.stager().handle_batch(
                ch.clone(),
                publisher.clone(),
                batch,
                shutdown.clone(),
            ));
            staging.push_back((last, n, task));
            while staging.len() >= BATCHES_IN_FLIGHT
                || staging.front().is_some_and(|(_, _, t)| t.is_finished())
            {
                let (last, n, task) = staging.pop_front().expect("checked");
                ack(&ch, last, task.await).await?;
                self.load.acked(n);
            }
        }
    }
}

/// A batch being staged: its last delivery tag, its size, and the staging task.
type StageTask = (
    u64,
    u64,
    tokio::task::JoinHandle<Result<BatchReport, amqp::AmqpError>>,
);

/// Acks everything up to `last` once its batch is staged; a failed batch ends the consumer (its
/// deliveries, unacked, come back from the broker).
async fn ack(
    ch: &lapin::Channel,
    last: u64,
    staged: Result<Result<BatchReport, amqp::AmqpError>, tokio::task::JoinError>,
) -> Result<(), amqp::AmqpError> {
    let report = match staged {
        Ok(r) => r?,
        Err(e) => return Err(amqp::AmqpError::Interrupted(format!("staging task: {e}"))),
    };
    // One frame acks the whole batch: every delivery up to the last tag is handled.
    ch.basic_ack(last, BasicAckOptions { multiple: true })
        .await?;
    debug!(?report, "ingest: batch acked");
    Ok(())
}

impl Stager {
    /// Validates, dead-letters the invalid (each confirmed), and stages the valid with one round
    /// trip. The caller acks.
    async fn handle_batch(
        self,
        ch: lapin::Channel,
        publisher: Arc<Publisher>,
        batch: Vec<lapin::message::Delivery>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<BatchReport, amqp::AmqpError> {
        self.metrics.events_consumed.inc_by(batch.len() as u64);
        let mut report = BatchReport::default();
        let mut valid = Vec::with_capacity(batch.len());
        let mut invalid = Vec::new();
        for d in &batch {
            match check_delivery(d) {
                Ok(ev) => valid.push((ev, d)),
                Err(e) => invalid.push((e, d)),
            }
        }
        // Dead letters first: each is confirmed before the batch is acked.
        for (e, d) in &invalid {
            self.dead_letter(&ch, &publisher, e, d, &shutdown).await?;
            report.invalid += 1;
        }
        if !valid.is_empty() {
            let staged = self.stage(&ch, &valid, &shutdown).await?;
            report = BatchReport {
                invalid: report.invalid,
                ..staged
            };
        }
        Ok(report)
    }

    /// Publishes an invalid message to the dead-letter exchange with its reason, retrying until
    /// the broker confirms it (or the channel closes: then the batch is redelivered).
    async fn dead_letter(
        &self,
        ch: &lapin::Channel,
        publisher: &Publisher,
        e: &event::ContractError,
        d: &lapin::message::Delivery,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), amqp::AmqpError> {
        let dl = DeadLetter {
            stage: "ingest",
            reason: e.reason.code().to_string(),
            error: e.to_string(),
            attempts: 1,
            ..DeadLetter::default()
        };
        let exchange = &self.cfg.amqp.dead_letter_exchange;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let key = d.routing_key.as_str();
            match dl
                .publish(publisher, exchange, key, &d.properties, &d.data)
                .await
            {
                Ok(()) => break,
                Err(err) if *shutdown.borrow() => return Err(err),
                Err(err) => {
                    warn!(error = %err, "ingest: dead-letter publish failed; retrying");
                    tokio::time::sleep(backoff.delay()).await;
                    if !ch.status().connected() {
                        return Err(err);
                    }
                }
            }
        }
        InvalidEventDeadLettered {
            error: e,
            message_id: d.properties.message_id().as_ref().map(|m| m.as_str()),
        }
        .emit(&self.metrics);
        Ok(())
    }

    /// Stages the valid events with one round trip, holding the batch unacked and retrying
    /// while Redis fails (unless the channel is closing: then the broker redelivers them).
    async fn stage(
        &self,
        ch: &lapin::Channel,
        valid: &[(event::ScheduleEvent, &lapin::message::Delivery)],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<BatchReport, amqp::AmqpError> {
        let staging: Vec<Staging<'_>> = valid
            .iter()
            .map(|(ev, d)| Staging {
                replay: is_replay(d),
                ..Staging::new(ev, &d.data)
            })
            .collect();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let outcomes = loop {
            match self.windows.stage(&staging).await {
                Ok(o) => break o,
                Err(e) if *shutdown.borrow() || !ch.status().connected() => {
                    return Err(amqp::AmqpError::Interrupted(format!(
                        "staging failed ({e}) and the channel is closing"
                    )));
                }
                Err(e) => {
                    let wait = backoff.delay();
                    warn!(error = %e, redis = %amqp::redacted(&self.cfg.redis.url), retry_in_ms = wait.as_millis() as u64, "ingest: staging in Redis failed; holding the batch unacked and retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let mut report = BatchReport::default();
        for (o, s) in outcomes.iter().zip(&staging) {
            match o {
                Staged::Appended | Staged::Newest | Staged::Replayed => report.staged += 1,
                Staged::Duplicate => report.duplicates += 1,
                Staged::Stale => report.stale += 1,
            }
            if s.replay {
                // An operator's replay of a dead letter (`outlook-sync dlq replay`).
                let outcome = match o {
                    Staged::Replayed => "restaged",
                    Staged::Newest | Staged::Appended => "newest",
                    Staged::Duplicate => "duplicate",
                    Staged::Stale => "stale",
                };
                ReplayStaged { outcome }.emit(&self.metrics);
            }
        }
        BatchStaged {
            staged: report.staged,
            duplicates: report.duplicates,
            stale: report.stale,
        }
        .emit(&self.metrics);
        Ok(report)
    }
}

fn is_replay(d: &lapin::message::Delivery) -> bool {
    use lapin::types::AMQPValue;
    let Some(h) = d.properties.headers() else {
        return false;
    };
    match h.inner().get(REPLAY_HEADER) {
        Some(AMQPValue::Boolean(b)) => *b,
        Some(AMQPValue::LongString(s)) => s.as_bytes() == b"true",
        _ => false,
    }
}

/// The content-type check and the contract. A message published with another content type is
/// refused before it is parsed (publishers must send `application/json`); a valid body whose
/// `event_type` is not the delivery's routing key is refused too (`routing_key_mismatch`).
fn check_delivery(
    d: &lapin::message::Delivery,
) -> Result<event::ScheduleEvent, event::ContractError> {
    if let Some(ct) = d.properties.content_type() {
        let ct = ct.as_str();
        let base = ct.split(';').next().unwrap_or("").trim();
        if !base.eq_ignore_ascii_case("application/json") {
            return Err(event::ContractError {
                reason: event::Reason::WrongType,
                field: "content_type".into(),
                problem: format!(
                    "{ct:?} is not application/json; publish JSON with content_type application/json"
                ),
            });
        }
    }
    event::decode_delivery(&d.data, d.routing_key.as_str())
}
