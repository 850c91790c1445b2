//! Dead-letter operations against the real RabbitMQ and Redis: listing leaves the queue exactly
//! as it was (10,000 messages), a crash mid-operation loses nothing and heals, replays go through
//! the revision guard (emulator), purges archive first, and the admin router serves it all.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use graph_emulator::{MailboxKind, Settings};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel};
use outlook_sync::amqp::{self, Topology};
use outlook_sync::config::Config;
use outlook_sync::deadletter::ops::{Archive, Archived};
use outlook_sync::deadletter::{
    Control, DeadLetter, Dlq, DlqError, Filter, Progress, PurgeRequest, ReplayRequest, Source,
};
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::tenants::{Plan, UserStatus};
use redis::AsyncCommands;

use crate::support;

/// A test's own exchanges, queues and Redis prefix.
struct World {
    cfg: Config,
    conn: lapin::Connection,
    ch: Channel,
    redis: outlook_sync::store::Redis,
}

async fn world(name: &str) -> World {
    let cfg = support::config(name);
    let conn = support::rabbitmq().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    Topology::new(&cfg.amqp).declare(&ch).await.unwrap();
    let redis = support::redis().await;
    World {
        cfg,
        conn,
        ch,
        redis,
    }
}

impl World {
    fn dlq(&self) -> Dlq {
        Dlq::new(&self.cfg, self.redis.clone())
    }

    async fn cleanup(self) {
        support::cleanup_amqp(&self.cfg).await;
        let mut r = self.redis.clone();
        let keys: Vec<String> = r
            .keys(format!("{}:*", self.cfg.redis.key_prefix))
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<(), _> = r.del(keys).await;
        }
        let _ = self.conn.close(200, "bye".into()).await;
    }

    /// Publishes dead letters to the dead-letter exchange, confirmed in windows of 2,000.
    async fn publish(&self, items: &[(String, BasicProperties, Vec<u8>)]) {
        for chunk in items.chunks(2000) {
            let mut confirms = Vec::new();
            for (rk, props, body) in chunk {
                confirms.push(
                    self.ch
                        .basic_publish(
                            self.cfg.amqp.dead_letter_exchange.as_str().into(),
                            rk.as_str().into(),
                            BasicPublishOptions::default(),
                            body,
                            props.clone(),
                        )
                        .await
                        .unwrap(),
                );
            }
            for c in confirms {
                assert!(c.await.unwrap().is_ack());
            }
        }
    }

    async fn depth(&self, queue: &str) -> u32 {
        let q = self
            .ch
            .queue_declare(
                queue.into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        q.message_count()
    }

    /// Takes every message of a queue, in order (and acks them).
    async fn drain(&self, queue: &str) -> Vec<Msg> {
        let n = self.depth(queue).await as usize;
        let ch = self.conn.create_channel().await.unwrap();
        ch.basic_qos(1000, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "drain".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("the queue delivers what it counted")
                .unwrap()
                .unwrap();
            ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await
                .unwrap();
            out.push(Msg {
                routing_key: d.routing_key.to_string(),
                message_id: d.properties.message_id().as_ref().map(|s| s.to_string()),
                headers: d.properties.headers().clone().unwrap_or_default(),
                body: d.data,
            });
        }
        let _ = ch.close(200, "ok".into()).await;
        out
    }
}

#[derive(Debug, Clone)]
struct Msg {
    routing_key: String,
    message_id: Option<String>,
    headers: FieldTable,
    body: Vec<u8>,
}

impl Msg {
    fn header(&self, k: &str) -> Option<String> {
        match self.headers.inner().get(k)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::Boolean(b) => Some(b.to_string()),
            AMQPValue::LongInt(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

/// A flush dead letter of event `id` (a valid `schedule.created` of `schedule` in `company`)
/// for `mailbox`, as the flush publishes it.
pub(crate) fn flush_dead_letter(
    id: &str,
    company: &str,
    schedule: &str,
    mailbox: &str,
) -> (String, BasicProperties, Vec<u8>) {
    let mut ev = Ev::created(company, schedule).people("u-1", &[]).wire();
    ev.event_id = id.to_string();
    let rk = "schedule.created";
    let dl = DeadLetter {
        stage: "flush",
        reason: "no_mailbox".into(),
        error: "404 MailboxNotEnabledForRESTAPI".into(),
        company_id: Some(company.into()),
        schedule_id: Some(schedule.into()),
        revision: Some(1),
        mailbox: Some(mailbox.into()),
        graph_status: Some(404),
        graph_code: Some("MailboxNotEnabledForRESTAPI".into()),
        graph_message: Some(
            "The mailbox is either inactive, soft-deleted, or is hosted on-premise.".into(),
        ),
        graph_request_id: Some(format!("req-{id}")),
        attempts: 1,
        ..DeadLetter::default()
    };
    let props = amqp::event_properties(id, rk).with_headers(dl.headers(rk));
    (rk.to_string(), props, serde_json::to_vec(&ev).unwrap())
}

/// Compares long id lists, saying where they first differ (not printing 10,000 ids).
fn same_order(got: &[String], want: &[String], what: &str) {
    let first = got.iter().zip(want).position(|(g, w)| g != w);
    assert!(
        first.is_none() && got.len() == want.len(),
        "{what}: {} ids, {} wanted; first difference at {first:?}: {:?} instead of {:?}",
        got.len(),
        want.len(),
        first.map(|i| &got[i..(i + 5).min(got.len())]),
        first.map(|i| &want[i..(i + 5).min(want.len())]),
    );
}

fn ids(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .map(|m| m.message_id.clone().unwrap_or_default())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_ten_thousand_dead_letters_leaves_every_message_in_place_once_and_in_order() {
    let w = world("dlq-10k").await;
    let n = 10_000;
    let items: Vec<_> = (0..n)
        .map(|i| {
            flush_dead_letter(
                &format!("ev-{i:05}"),
                &format!("c-{}", i % 7),
                &format!("s-{i}"),
                &format!("user{}@c.example", i % 13),
            )
        })
        .collect();
    w.publish(&items).await;
    assert_eq!(w.depth(&w.cfg.amqp.dead_letter_queue).await, n as u32);

    let started = Instant::now();
    let listing = w
        .dlq()
        .list(&Filter {
            company: Some("c-3".into()),
            ..Filter::default()
        })
        .await
        .unwrap();
    let took = started.elapsed();
    eprintln!("listing {n} dead letters took {took:?}");
    assert_eq!(listing.total, n);
    assert_eq!(listing.duplicates_removed, 0);
    let want: Vec<String> = (0..n)
        .filter(|i| i % 7 == 3)
        .map(|i| format!("ev-{i:05}"))
        .collect();
    let got: Vec<String> = listing
        .records
        .iter()
        .map(|r| r.message_id.clone().unwrap())
        .collect();
    same_order(&got, &want, "the listing");
    assert!(listing.records.iter().all(|r| r.reason == "no_mailbox"
        && r.graph_status == Some(404)
        && r.source == Source::Service));

    // A second listing sees the same, and afterwards the queue holds exactly the messages it
    // held before, in the same order, each once, with the same bodies.
    let again = w.dlq().list(&Filter::default()).await.unwrap();
    assert_eq!(again.records.len(), n);
    let after = w.drain(&w.cfg.amqp.dead_letter_queue).await;
    assert_eq!(after.len(), n, "no message lost or duplicated");
    let want_all: Vec<String> = (0..n).map(|i| format!("ev-{i:05}")).collect();
    same_order(&ids(&after), &want_all, "the queue after two listings");
    for (m, (_, props, body)) in after.iter().zip(&items) {
        assert_eq!(&m.body, body);
        let h = props.headers().as_ref().unwrap();
        for k in ["x-dead-letter-id", "x-reason", "x-graph-request-id"] {
            assert_eq!(
                m.headers.inner().get(k),
                h.inner().get(k),
                "header {k} kept"
            );
        }
    }
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listing_that_crashes_mid_way_loses_nothing_and_the_next_operation_restores_order_without_copies()
 {
    let w = world("dlq-crash-list").await;
    let n = 200;
    let items: Vec<_> = (0..n)
        .map(|i| flush_dead_letter(&format!("ev-{i:03}"), "acme", &format!("s-{i}"), "a@x"))
        .collect();
    w.publish(&items).await;
    let dlq = w.dlq().with_batch_size(16);
    // Crash after four batches: the fifth is copied and confirmed but never acked.
    let control = Control::new();
    let c = control.clone();
    let mut progress = move |p: &Progress| {
        if p.scanned >= 60 {
            c.abandon();
        }
    };
    let err = dlq
        .replay(
            &ReplayRequest {
                filter: Filter {
                    company: Some("nobody".into()),
                    ..Filter::default()
                },
                ..ReplayRequest::default()
            },
            &control,
            &mut progress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, DlqError::Interrupted), "{err}");
    assert_eq!(
        w.depth(&w.cfg.amqp.dead_letter_queue).await,
        n as u32 + 16,
        "nothing lost; the batch in flight is there twice (its copies and its originals)"
    );
    // The next operation removes the copies and puts the queue back in order.
    let listing = dlq.list(&Filter::default()).await.unwrap();
    assert_eq!(listing.duplicates_removed, 16);
    let want: Vec<String> = (0..n).map(|i| format!("ev-{i:03}")).collect();
    let listed: Vec<String> = listing
        .records
        .iter()
        .map(|r| r.message_id.clone().unwrap())
        .collect();
    assert_eq!(listed, want);
    let after = w.drain(&w.cfg.amqp.dead_letter_queue).await;
    assert_eq!(
        ids(&after),
        want,
        "every message once, in the original order"
    );
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_counts_by_reason_and_company_and_show_returns_the_whole_record() {
    let w = world("dlq-summary").await;
    let mut items = vec![
        flush_dead_letter("ev-1", "acme", "s-1", "sachiko@acme.example"),
        // One event that failed for two mailboxes: two dead letters with one event id.
        flush_dead_letter("ev-2", "acme", "s-2", "sachiko@acme.example"),
        flush_dead_letter("ev-2", "acme", "s-2", "jiro@acme.example"),
        flush_dead_letter("ev-3", "globex", "s-3", "kim@globex.example"),
    ];
    // An invalid event dead-lettered by ingest.
    let invalid = DeadLetter {
        stage: "ingest",
        reason: "end_before_start".into(),
        error: "schedule.end: must be after schedule.start [end_before_start]".into(),
        attempts: 1,
        ..DeadLetter::default()
    };
    items.push((
        "schedule.created".into(),
        amqp::event_properties("bad-1", "schedule.created")
            .with_headers(invalid.headers("schedule.created")),
        br#"{"event_id":"bad-1","company_id":"acme","schedule_id":"s-9"}"#.to_vec(),
    ));
    w.publish(&items).await;
    let dlq = w.dlq();
    let s = dlq.summary(&Filter::default()).await.unwrap();
    assert_eq!((s.total, s.matched), (5, 5));
    let reasons: Vec<(&str, usize)> = s
        .by_reason
        .iter()
        .map(|g| (g.key.as_str(), g.count))
        .collect();
    assert_eq!(reasons, vec![("no_mailbox", 4), ("end_before_start", 1)]);
    assert_eq!(
        s.by_reason[0].words.as_deref(),
        Some("the user has no Exchange Online mailbox (or no licence)")
    );
    let companies: Vec<(&str, usize)> = s
        .by_company
        .iter()
        .map(|g| (g.key.as_str(), g.count))
        .collect();
    assert_eq!(companies, vec![("acme", 4), ("globex", 1)]);
    let filtered = dlq
        .summary(&Filter {
            company: Some("globex".into()),
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!((filtered.total, filtered.matched), (5, 1));

    // show by event id: both dead letters of ev-2, whole.
    let both = dlq.show("ev-2").await.unwrap();
    assert_eq!(both.len(), 2);
    let r = &both[0];
    assert_eq!(r.mailbox.as_deref(), Some("sachiko@acme.example"));
    assert_eq!(r.graph_request_id.as_deref(), Some("req-ev-2"));
    assert_eq!(r.graph_code.as_deref(), Some("MailboxNotEnabledForRESTAPI"));
    assert_eq!(r.attempts, Some(1));
    assert!(r.first_failure.is_some() && r.last_failure.is_some());
    assert_eq!(r.event.as_ref().unwrap()["schedule_id"], "s-2");
    assert!(
        r.headers
            .as_ref()
            .unwrap()
            .get("x-dead-letter-id")
            .is_some()
    );
    // …and by its own id (a prefix is enough), only that one.
    let one = dlq.show(&both[1].id[..8]).await.unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].mailbox.as_deref(), Some("jiro@acme.example"));
    assert!(matches!(
        dlq.show("no-such-id").await,
        Err(DlqError::NotFound(_))
    ));
    let text = outlook_sync::deadletter::table::records(&one);
    assert!(
        text.contains("graph request-id") && text.contains("req-ev-2"),
        "{text}"
    );
    // Nothing moved.
    assert_eq!(
        ids(&w.drain(&w.cfg.amqp.dead_letter_queue).await),
        vec!["ev-1", "ev-2", "ev-2", "ev-3", "bad-1"]
    );
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_dead_letter_is_listed_by_its_x_death_reason_and_replayed_with_its_routing_key() {
    let mut w = world("dlq-broker").await;
    // A work queue with a delivery limit of 1: a message requeued twice is dead-lettered by
    // RabbitMQ itself, with only x-death to say why.
    support::cleanup_amqp(&w.cfg).await;
    w.cfg.amqp.delivery_limit = 1;
    w.ch = w.conn.create_channel().await.unwrap();
    w.ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    Topology::new(&w.cfg.amqp).declare(&w.ch).await.unwrap();
    let ev = Ev::updated("acme", "s-1", 4).people("u-1", &[]).wire();
    w.ch.basic_publish(
        w.cfg.amqp.exchange.as_str().into(),
        "schedule.updated".into(),
        BasicPublishOptions::default(),
        &serde_json::to_vec(&ev).unwrap(),
        amqp::event_properties(&ev.event_id, "schedule.updated"),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.depth(&w.cfg.amqp.dead_letter_queue).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the broker never dead-lettered it"
        );
        if let Some(m) =
            w.ch.basic_get(w.cfg.amqp.queue.as_str().into(), Default::default())
                .await
                .unwrap()
        {
            w.ch.basic_nack(
                m.delivery.delivery_tag,
                BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let listing = w.dlq().list(&Filter::default()).await.unwrap();
    assert_eq!(listing.records.len(), 1);
    let r = &listing.records[0];
    assert_eq!(r.source, Source::Broker);
    assert_eq!(
        (r.stage.as_str(), r.reason.as_str()),
        ("broker", "delivery_limit")
    );
    assert_eq!(r.routing_key.as_deref(), Some("schedule.updated"));
    assert_eq!(r.message_id.as_deref(), Some(ev.event_id.as_str()));
    assert_eq!((r.company.as_deref(), r.revision), (Some("acme"), Some(4)));
    assert!(r.last_failure.is_some(), "the x-death time");
    // Listed twice, it keeps its id (derived from the message and its x-death).
    let again = w
        .dlq()
        .list(&Filter {
            reason: Some("delivery_limit".into()),
            ..Filter::default()
        })
        .await
        .unwrap();
    assert_eq!(again.records[0].id, r.id);
    let report = w
        .dlq()
        .replay(
            &ReplayRequest {
                filter: Filter {
                    stage: Some("broker".into()),
                    ..Filter::default()
                },
                ..ReplayRequest::default()
            },
            &Control::new(),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    let work = w.drain(&w.cfg.amqp.queue).await;
    assert_eq!(work.len(), 1);
    assert_eq!(work[0].routing_key, "schedule.updated");
    assert_eq!(work[0].header("x-replay").as_deref(), Some("true"));
    assert!(work[0].header("x-replayed-from-death").is_some());
    assert!(work[0].header("x-death").is_none());
    assert_eq!(w.depth(&w.cfg.amqp.dead_letter_queue).await, 0);
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_crashes_half_way_and_is_resumed_replays_each_once_or_twice_and_loses_none() {
    let w = world("dlq-replay-crash").await;
    let n = 100;
    let items: Vec<_> = (0..n)
        .map(|i| flush_dead_letter(&format!("ev-{i:03}"), "acme", &format!("s-{i}"), "a@x"))
        .collect();
    w.publish(&items).await;
    let dlq = w.dlq().with_batch_size(10);
    let all = ReplayRequest {
        all: true,
        ..ReplayRequest::default()
    };
    let control = Control::new();
    let c = control.clone();
    let mut crash_after_40 = move |p: &Progress| {
        if p.replayed >= 40 {
            c.abandon();
        }
    };
    let err = dlq
        .replay(&all, &control, &mut crash_after_40)
        .await
        .unwrap_err();
    assert!(matches!(err, DlqError::Interrupted), "{err}");
    // The batch in flight was published and confirmed, but never acked: it is in both queues.
    assert_eq!(w.depth(&w.cfg.amqp.queue).await, 50);
    assert_eq!(w.depth(&w.cfg.amqp.dead_letter_queue).await, 60);

    let resumed = dlq
        .replay(&all, &Control::new(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(resumed.replayed, 60);
    assert_eq!(w.depth(&w.cfg.amqp.dead_letter_queue).await, 0);
    let work = w.drain(&w.cfg.amqp.queue).await;
    let mut times: BTreeMap<String, usize> = BTreeMap::new();
    for m in &work {
        *times.entry(m.message_id.clone().unwrap()).or_default() += 1;
    }
    assert_eq!(times.len(), n, "none lost");
    assert!(times.values().all(|&t| t == 1 || t == 2));
    assert_eq!(times.values().filter(|&&t| t == 2).count(), 10);
    // Each replay is the original event, marked, with its dead-letter headers kept for history.
    let m = &work[0];
    assert_eq!(m.routing_key, "schedule.created");
    assert_eq!(m.header("x-replay").as_deref(), Some("true"));
    assert_eq!(m.header("x-replay-count").as_deref(), Some("1"));
    assert_eq!(
        m.header("x-replayed-from-reason").as_deref(),
        Some("no_mailbox")
    );
    assert!(m.header("x-replayed-from-dead-letter-id").is_some());
    assert!(m.header("x-reason").is_none() && m.header("x-dead-letter-id").is_none());
    assert_eq!(m.body, items[0].2);
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_limited_to_n_leaves_the_rest_in_place_in_order_and_a_rerun_finishes_it() {
    let w = world("dlq-replay-limit").await;
    let items: Vec<_> = (0..50)
        .map(|i| {
            let c = if i % 2 == 0 { "acme" } else { "globex" };
            flush_dead_letter(&format!("ev-{i:03}"), c, &format!("s-{i}"), "a@x")
        })
        .collect();
    w.publish(&items).await;
    let dlq = w.dlq().with_batch_size(7);
    let acme = |limit| ReplayRequest {
        filter: Filter {
            company: Some("acme".into()),
            ..Filter::default()
        },
        limit,
        ..ReplayRequest::default()
    };
    let mut batches = 0;
    let first = dlq
        .replay(&acme(Some(10)), &Control::new(), &mut |_| batches += 1)
        .await
        .unwrap();
    assert_eq!((first.matched, first.replayed), (25, 10));
    assert!(first.stopped_early);
    assert!(batches >= 50 / 7, "progress after every batch");
    let second = dlq
        .replay(&acme(None), &Control::new(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!((second.matched, second.replayed), (15, 15));
    let work = w.drain(&w.cfg.amqp.queue).await;
    let want: Vec<String> = (0..50)
        .filter(|i| i % 2 == 0)
        .map(|i| format!("ev-{i:03}"))
        .collect();
    assert_eq!(ids(&work), want, "each once, in dead-letter order");
    let rest = w.drain(&w.cfg.amqp.dead_letter_queue).await;
    let want_rest: Vec<String> = (0..50)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("ev-{i:03}"))
        .collect();
    assert_eq!(ids(&rest), want_rest, "the others stayed, in order");
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_replays_nothing_and_invalid_events_are_only_replayed_when_asked() {
    let w = world("dlq-dry").await;
    let invalid = DeadLetter {
        stage: "ingest",
        reason: "end_before_start".into(),
        error: "end before start".into(),
        attempts: 1,
        ..DeadLetter::default()
    };
    let items = vec![
        flush_dead_letter("ev-1", "acme", "s-1", "a@x"),
        (
            "schedule.created".to_string(),
            amqp::event_properties("bad-1", "schedule.created")
                .with_headers(invalid.headers("schedule.created")),
            b"{}".to_vec(),
        ),
    ];
    w.publish(&items).await;
    let dlq = w.dlq();
    assert!(matches!(
        dlq.replay(&ReplayRequest::default(), &Control::new(), &mut |_| {})
            .await,
        Err(DlqError::Invalid(_))
    ));
    let all = |dry_run, include_invalid| ReplayRequest {
        all: true,
        dry_run,
        include_invalid,
        ..ReplayRequest::default()
    };
    let dry = dlq
        .replay(&all(true, false), &Control::new(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!((dry.matched, dry.replayed, dry.skipped.len()), (2, 1, 1));
    assert!(dry.skipped[0].why.contains("contract"));
    assert_eq!(w.depth(&w.cfg.amqp.queue).await, 0);
    assert_eq!(w.depth(&w.cfg.amqp.dead_letter_queue).await, 2);
    let real = dlq
        .replay(&all(false, false), &Control::new(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(real.replayed, 1);
    assert_eq!(
        ids(&w.drain(&w.cfg.amqp.dead_letter_queue).await),
        vec!["bad-1"]
    );
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_archives_what_it_removes_first_and_only_what_was_confirmed() {
    let w = world("dlq-purge").await;
    let items: Vec<_> = (0..30)
        .map(|i| {
            let c = if i % 3 == 0 { "acme" } else { "globex" };
            flush_dead_letter(&format!("ev-{i:03}"), c, &format!("s-{i}"), "a@x")
        })
        .collect();
    w.publish(&items).await;
    let dlq = w.dlq().with_batch_size(4);
    let acme = Filter {
        company: Some("acme".into()),
        ..Filter::default()
    };
    // The operator saw (and confirmed) these ten.
    let shown = dlq.list(&acme).await.unwrap();
    assert_eq!(shown.records.len(), 10);
    // One more acme dead letter arrives after the confirmation: it is not purged.
    w.publish(&[flush_dead_letter("ev-late", "acme", "s-late", "a@x")])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/purged.jsonl");
    let report = dlq
        .purge(
            &PurgeRequest {
                filter: acme.clone(),
                expected: Some(shown.records.iter().map(|r| r.id.clone()).collect()),
                archive: Archive::Path(path.clone()),
                ..PurgeRequest::default()
            },
            &Control::new(),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.removed, 10);
    assert_eq!(report.archive.as_deref(), Some(path.as_path()));
    let lines: Vec<Archived> = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for (a, i) in lines.iter().zip((0..30).filter(|i| i % 3 == 0)) {
        assert_eq!(
            a.record.message_id.as_deref(),
            Some(format!("ev-{i:03}").as_str())
        );
        assert_eq!(a.body.as_bytes(), items[i].2.as_slice(), "the exact body");
        assert_eq!(
            a.record.graph_request_id.as_deref(),
            Some(format!("req-ev-{i:03}").as_str())
        );
    }
    let rest = w.drain(&w.cfg.amqp.dead_letter_queue).await;
    let mut want: Vec<String> = (0..30)
        .filter(|i| i % 3 != 0)
        .map(|i| format!("ev-{i:03}"))
        .collect();
    want.push("ev-late".into());
    assert_eq!(ids(&rest), want);
    // An empty filter is refused unless it says "all".
    assert!(matches!(
        dlq.purge(&PurgeRequest::default(), &Control::new(), &mut |_| {})
            .await,
        Err(DlqError::Invalid(_))
    ));
    w.cleanup().await;
}

/// Runs the real binary with a configuration file for `cfg`.
async fn run_cli(cfg: &Config, args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml::to_string(cfg).unwrap()).unwrap();
    tokio::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_lists_and_refuses_to_purge_without_a_terminal_or_yes() {
    let w = world("dlq-cli").await;
    w.publish(&[
        flush_dead_letter("ev-1", "acme", "s-1", "sachiko@acme.example"),
        flush_dead_letter("ev-2", "acme", "s-2", "jiro@acme.example"),
    ])
    .await;
    let out = run_cli(
        &w.cfg,
        &["dlq", "list", "--mailbox", "SACHIKO@acme.example"],
    )
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("holds 2 messages; 1 matches"), "{stdout}");
    assert!(
        stdout.contains("sachiko@acme.example") && !stdout.contains("jiro@"),
        "{stdout}"
    );
    let out = run_cli(&w.cfg, &["dlq", "list", "--json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 2);

    let out = run_cli(&w.cfg, &["dlq", "purge", "--company", "acme"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to purge without confirmation"),
        "{stderr}"
    );
    assert_eq!(w.depth(&w.cfg.amqp.dead_letter_queue).await, 2);

    let mut cfg = w.cfg.clone();
    let dir = tempfile::tempdir().unwrap();
    cfg.dlq.archive_dir = dir.path().display().to_string();
    let out = run_cli(&cfg, &["dlq", "purge", "--id", "ev-2", "--yes"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("purged 1 dead letter from"), "{stdout}");
    let archived: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(archived.len(), 1, "one archive file in dlq.archive_dir");
    assert_eq!(
        ids(&w.drain(&w.cfg.amqp.dead_letter_queue).await),
        vec!["ev-1"]
    );
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_operation_waits_for_the_lock_and_then_says_who_holds_it() {
    let w = world("dlq-lock").await;
    w.publish(&[flush_dead_letter("ev-1", "acme", "s-1", "a@x")])
        .await;
    let key = format!(
        "{}:dlq:{}:lock",
        w.cfg.redis.key_prefix, w.cfg.amqp.dead_letter_queue
    );
    let mut r = w.redis.clone();
    let holder = serde_json::json!({"op": "replay", "since": "2026-11-30T00:00:00Z", "by": "pid 1", "token": "t"});
    let _: () = r.set_ex(&key, holder.to_string(), 30).await.unwrap();
    let started = Instant::now();
    let err = w
        .dlq()
        .with_lock_wait(Duration::from_millis(300))
        .list(&Filter::default())
        .await
        .unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(300));
    let msg = err.to_string();
    assert!(
        matches!(err, DlqError::Busy { .. }) && msg.contains("replay since"),
        "{msg}"
    );
    let _: () = r.del(&key).await.unwrap();
    assert_eq!(
        w.dlq()
            .list(&Filter::default())
            .await
            .unwrap()
            .records
            .len(),
        1
    );
    let left: Option<String> = r.get(&key).await.unwrap();
    assert_eq!(left, None, "an operation gives its lock back");
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depth_gauge_follows_the_dead_letter_queue() {
    let mut w = world("dlq-depth").await;
    w.cfg.dlq.depth_poll_seconds = 1;
    let metrics = outlook_sync::metrics::Metrics::new();
    let (tx, rx) = tokio::sync::watch::channel(false);
    // The queues are declared (world() did it), as a worker's ingest says when it has.
    let (_declared_tx, declared) = tokio::sync::watch::channel(true);
    let task = tokio::spawn(outlook_sync::deadletter::watch_depth(
        w.cfg.clone(),
        metrics.clone(),
        declared,
        rx,
    ));
    w.publish(&[
        flush_dead_letter("ev-1", "acme", "s-1", "a@x"),
        flush_dead_letter("ev-2", "acme", "s-2", "a@x"),
        flush_dead_letter("ev-3", "acme", "s-3", "a@x"),
    ])
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metrics.dead_letter_queue_depth.get() != 3 {
        assert!(Instant::now() < deadline, "the gauge never showed 3");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics
            .render()
            .contains("outlook_sync_dead_letter_queue_depth 3")
    );
    let _ = tx.send(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops on shutdown")
        .unwrap();
    w.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_router_serves_every_operation() {
    let w = world("dlq-api").await;
    w.publish(&[
        flush_dead_letter("ev-1", "acme", "s-1", "sachiko@acme.example"),
        flush_dead_letter("ev-2", "globex", "s-2", "kim@globex.example"),
        flush_dead_letter("ev-3", "globex", "s-3", "kim@globex.example"),
    ])
    .await;
    let mut cfg = w.cfg.clone();
    let dir = tempfile::tempdir().unwrap();
    cfg.dlq.archive_dir = dir.path().display().to_string();
    let metrics = outlook_sync::metrics::Metrics::new();
    let api =
        outlook_sync::deadletter::api::DlqApi::new(&cfg, w.redis.clone(), Some(metrics.clone()));
    let app = outlook_sync::deadletter::api::router(api);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let http = reqwest::Client::new();
    let get = |path: String| {
        let http = http.clone();
        async move { http.get(path).send().await.unwrap() }
    };

    let r = get(format!("{base}/dlq/messages?company=globex")).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["total"], 3);
    assert_eq!(v["records"].as_array().unwrap().len(), 2);
    assert_eq!(metrics.dead_letter_queue_depth.get(), 3);

    let v: serde_json::Value = get(format!("{base}/dlq/summary"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["by_company"][0]["key"], "globex");
    assert_eq!(v["by_company"][0]["count"], 2);

    let r = get(format!("{base}/dlq/messages/ev-1")).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v[0]["graph_request_id"], "req-ev-1");
    assert_eq!(v[0]["event"]["schedule_id"], "s-1");
    assert_eq!(get(format!("{base}/dlq/messages/nope")).await.status(), 404);
    assert_eq!(
        get(format!("{base}/dlq/messages?since=yesterday"))
            .await
            .status(),
        400
    );

    let r = http
        .post(format!("{base}/dlq/replay"))
        .json(&serde_json::json!({"filter": {"company": "acme"}, "dry_run": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["dry_run"].as_bool(), v["replayed"].as_u64()),
        (Some(true), Some(1))
    );
    let r = http
        .post(format!("{base}/dlq/replay"))
        .json(&serde_json::json!({"filter": {"company": "acme"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<serde_json::Value>().await.unwrap()["replayed"], 1);
    assert_eq!(w.depth(&w.cfg.amqp.queue).await, 1);

    let r = http
        .post(format!("{base}/dlq/purge"))
        .json(&serde_json::json!({"filter": {"company": "globex"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422, "a purge needs confirm: true");
    let r = http
        .post(format!("{base}/dlq/purge"))
        .json(&serde_json::json!({"filter": {"company": "globex"}, "confirm": true, "expected": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["removed"], 2);
    let archive = v["archive"].as_str().unwrap();
    assert!(archive.starts_with(&cfg.dlq.archive_dir));
    assert_eq!(std::fs::read_to_string(archive).unwrap().lines().count(), 2);
    assert_eq!(w.depth(&w.cfg.amqp.dead_letter_queue).await, 0);
    assert_eq!(metrics.dead_letter_queue_depth.get(), 0);

    let r = get(format!("{base}/ledger/acme/s-1")).await;
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["schedule"], "s-1");
    assert!(v["why"].as_array().is_some());
    server.abort();
    w.cleanup().await;
}

// ---- with workers, the emulator standing in for Graph ----

const IDLE: Duration = Duration::from_secs(40);
const OK: MailboxKind = MailboxKind::Ok;

async fn sandbox(name: &str) -> Sandbox {
    match Sandbox::start(name, 1, Settings::default()).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    }
}

async fn idle(sb: &Sandbox) {
    assert!(
        sb.wait_idle(IDLE).await.unwrap(),
        "the pipeline did not drain within {IDLE:?}"
    );
}

fn mailbox(local: &str) -> String {
    format!("{local}@acme.onmicrosoft.com")
}

fn subjects(sb: &Sandbox, local: &str) -> Vec<String> {
    sb.emulator
        .emulator
        .calendar(&mailbox(local))
        .iter()
        .map(|e| e["subject"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The mailbox is fixed in Microsoft 365 and the admin re-verifies the user.
async fn fix_and_reverify(sb: &Sandbox, user: &str, local: &str) {
    assert!(
        sb.emulator
            .emulator
            .set_mailbox_kind(&mailbox(local), MailboxKind::Ok)
    );
    let mut u = sb.directory.user("acme", user).await.unwrap().unwrap();
    assert_eq!(
        u.status,
        UserStatus::AuthFailed,
        "the failure flipped the user"
    );
    u.status = UserStatus::Authenticated;
    u.reason = None;
    sb.directory.put_user("acme", &u).await.unwrap();
}

/// Graph requests per mailbox since the log was cleared: (writes, all).
fn requests(sb: &Sandbox) -> HashMap<String, (usize, usize)> {
    let mut by: HashMap<String, (usize, usize)> = HashMap::new();
    for r in sb.emulator.emulator.request_log() {
        let Some(m) = r.mailbox else { continue };
        let e = by.entry(m).or_default();
        e.1 += 1;
        if matches!(r.method.as_str(), "POST" | "PATCH" | "DELETE") {
            e.0 += 1;
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_failed_for_one_mailbox_is_replayed_to_that_mailbox_only() {
    let sb = sandbox("dlq-one-mailbox").await;
    sb.company(
        "acme",
        Plan::Standard,
        &[
            ("u-1", "taro", OK),
            ("u-2", "hanako", OK),
            ("u-3", "sachiko", MailboxKind::NoMailbox),
        ],
    )
    .await
    .unwrap();
    let worker = sb.worker().await.unwrap();
    sb.publish(&[Ev::created("acme", "s-1")
        .title("Visit: Tanaka Industries")
        .people("u-1", &["u-2", "u-3"])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    assert_eq!(subjects(&sb, "sachiko"), Vec::<String>::new());

    let dlq = Dlq::new(&sb.cfg, sb.redis.clone());
    let listing = dlq.list(&Filter::default()).await.unwrap();
    assert_eq!(listing.records.len(), 1, "one dead letter: sachiko's copy");
    let r = &listing.records[0];
    assert_eq!(r.reason, "no_mailbox");
    assert_eq!(r.mailbox.as_deref(), Some(mailbox("sachiko").as_str()));
    assert_eq!(r.graph_status, Some(404));
    assert_eq!(r.graph_code.as_deref(), Some("MailboxNotEnabledForRESTAPI"));
    assert!(r.graph_request_id.is_some(), "Graph's request-id is kept");

    fix_and_reverify(&sb, "u-3", "sachiko").await;
    sb.emulator.emulator.clear_log();
    let report = dlq
        .replay(
            &ReplayRequest {
                filter: Filter {
                    mailbox: Some(mailbox("sachiko")),
                    ..Filter::default()
                },
                ..ReplayRequest::default()
            },
            &Control::new(),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    idle(&sb).await;

    assert_eq!(subjects(&sb, "sachiko"), vec!["Visit: Tanaka Industries"]);
    let by = requests(&sb);
    assert_eq!(
        by.get(&mailbox("sachiko")).map(|r| r.0),
        Some(1),
        "one write to sachiko: {by:?}"
    );
    assert_eq!(by.get(&mailbox("taro")), None, "nothing to taro: {by:?}");
    assert_eq!(
        by.get(&mailbox("hanako")),
        None,
        "nothing to hanako: {by:?}"
    );
    assert_eq!(subjects(&sb, "taro").len(), 1);
    assert_eq!(subjects(&sb, "hanako").len(), 1);
    assert_eq!(dead_depth(&sb).await, 0);
    let replayed = worker
        .metrics
        .dead_letters_replayed
        .get_or_create(&outlook_sync::metrics::Metrics::label(
            "outcome", "restaged",
        ))
        .get();
    assert_eq!(replayed, 1);
    // The ledger says the copy came from the replay.
    let view = outlook_sync::ledger::sync_view(
        &sb.cfg,
        sb.redis.clone(),
        "acme",
        "s-1",
        &Default::default(),
    )
    .await
    .unwrap();
    let applied: Vec<_> = view
        .entries
        .iter()
        .filter(|e| e.replay)
        .map(|e| (e.target.as_str(), e.op.as_str()))
        .collect();
    let sachiko = mailbox("sachiko");
    assert_eq!(applied, vec![(sachiko.as_str(), "create")]);
    worker.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_never_overwrites_a_newer_revision_and_a_double_replay_never_duplicates() {
    let sb = sandbox("dlq-newer").await;
    sb.company(
        "acme",
        Plan::Standard,
        &[
            ("u-1", "taro", OK),
            ("u-3", "sachiko", MailboxKind::NoMailbox),
        ],
    )
    .await
    .unwrap();
    let worker = sb.worker().await.unwrap();
    sb.publish(&[Ev::created("acme", "s-1")
        .title("v1")
        .people("u-1", &["u-3"])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    // Revision 2 is applied to taro; sachiko (auth failed by now) is skipped.
    sb.publish(&[Ev::updated("acme", "s-1", 2)
        .title("v2")
        .people("u-1", &["u-3"])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    assert_eq!(subjects(&sb, "taro"), vec!["v2"]);
    let dlq = Dlq::new(&sb.cfg, sb.redis.clone()).with_batch_size(1);
    let listing = dlq.list(&Filter::default()).await.unwrap();
    let seen: Vec<_> = listing
        .records
        .iter()
        .map(|r| {
            (
                r.reason.clone(),
                r.mailbox.clone(),
                r.revision,
                r.stage.clone(),
            )
        })
        .collect();
    // Revision 1 failed for sachiko; revision 2 too, unless the flip to auth failed came first.
    assert!(
        seen.iter().all(|(reason, mb, _, _)| reason == "no_mailbox"
            && mb.as_deref() == Some(mailbox("sachiko").as_str()))
            && seen.first().map(|s| s.2) == Some(Some(1)),
        "{seen:?}"
    );

    fix_and_reverify(&sb, "u-3", "sachiko").await;
    sb.emulator.emulator.clear_log();
    // The replay crashes right after its publish was confirmed, before the ack: the dead letter
    // stays, and the resumed replay publishes it a second time.
    let replay = ReplayRequest {
        filter: Filter {
            schedule: Some("s-1".into()),
            ..Filter::default()
        },
        ..ReplayRequest::default()
    };
    let crash = Control::new();
    crash.abandon();
    let err = dlq.replay(&replay, &crash, &mut |_| {}).await.unwrap_err();
    assert!(matches!(err, DlqError::Interrupted), "{err}");
    assert_eq!(
        dead_depth(&sb).await as usize,
        seen.len(),
        "kept until its replay is acked"
    );
    let again = dlq
        .replay(&replay, &Control::new(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(
        again.replayed,
        seen.len(),
        "revision 1 a second time, and any other"
    );
    idle(&sb).await;

    // Sachiko gets revision 2 (the newest), once; taro is not written to again.
    assert_eq!(subjects(&sb, "sachiko"), vec!["v2"]);
    assert_eq!(subjects(&sb, "taro"), vec!["v2"]);
    let by = requests(&sb);
    assert_eq!(by.get(&mailbox("sachiko")).map(|r| r.0), Some(1), "{by:?}");
    assert_eq!(by.get(&mailbox("taro")), None, "{by:?}");
    assert_eq!(dead_depth(&sb).await, 0);
    worker.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}

async fn dead_depth(sb: &Sandbox) -> u32 {
    sb.queue_depth(&sb.cfg.amqp.dead_letter_queue)
        .await
        .unwrap()
}

/// Runs the operator's commands of README's "Operations" section against a live sandbox (a
/// worker, the emulator) and prints the transcript: `cargo test --test it
/// deadletter::operations_walkthrough -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints README's operations transcript; run it by name"]
async fn operations_walkthrough() {
    let sb = sandbox("ops").await;
    sb.company(
        "acme",
        Plan::Standard,
        &[
            ("u-100", "taro", OK),
            ("u-200", "hanako", OK),
            ("u-400", "sachiko", MailboxKind::NoMailbox),
        ],
    )
    .await
    .unwrap();
    sb.company(
        "globex",
        Plan::Premium,
        &[("u-10", "kim", MailboxKind::PolicyDenied)],
    )
    .await
    .unwrap();
    let worker = sb.worker().await.unwrap();
    sb.publish(&[
        Ev::created("acme", "sch-1001")
            .title("Visit: Tanaka Industries")
            .people("u-100", &["u-200", "u-400", "u-999"])
            .wire(),
        Ev::created("acme", "sch-1002")
            .title("Weekly sales meeting")
            .people("u-200", &["u-400"])
            .wire(),
        Ev::created("globex", "sch-2001")
            .title("Quarterly review")
            .people("u-10", &[])
            .wire(),
    ])
    .await
    .unwrap();
    let mut invalid = serde_json::to_value(
        Ev::created("acme", "sch-1007")
            .at(
                "2026-11-30T16:00:00+09:00",
                "2026-11-30T15:00:00+09:00",
                "Asia/Tokyo",
            )
            .wire(),
    )
    .unwrap();
    invalid["event_id"] = "bad-1".into();
    sb.publish_raw("bad-1", "schedule.created", invalid.to_string().as_bytes())
        .await
        .unwrap();
    idle(&sb).await;

    let mut transcript = String::new();
    let run = |args: Vec<String>| {
        let cfg = sb.cfg.clone();
        async move {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run_cli(&cfg, &refs).await;
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            format!(
                "$ outlook-sync {}\n{}\n",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout)
            )
        }
    };
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    transcript += &run(s(&["dlq", "summary"])).await;
    transcript += &run(s(&["dlq", "list"])).await;
    let dlq = Dlq::new(&sb.cfg, sb.redis.clone());
    let sachiko = mailbox("sachiko");
    let theirs = dlq
        .list(&Filter {
            mailbox: Some(sachiko.clone()),
            schedule: Some("sch-1001".into()),
            ..Filter::default()
        })
        .await
        .unwrap();
    let id = theirs.records[0].id[..8].to_string();
    transcript += &run(s(&["dlq", "show", &id])).await;
    transcript += &run(s(&["ledger", "show", "acme", "sch-1001"])).await;
    fix_and_reverify(&sb, "u-400", "sachiko").await;
    transcript += "# (sachiko gets an Exchange Online licence; the admin re-verifies u-400)\n\n";
    transcript += &run(s(&["dlq", "replay", "--mailbox", &sachiko, "--dry-run"])).await;
    transcript += &run(s(&["dlq", "replay", "--mailbox", &sachiko])).await;
    idle(&sb).await;
    transcript += &run(s(&["ledger", "show", "acme", "sch-1001"])).await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("invalid.jsonl");
    transcript += &run(s(&[
        "dlq",
        "purge",
        "--stage",
        "ingest",
        "--archive",
        &archive.display().to_string(),
        "--yes",
    ]))
    .await;
    transcript += &run(s(&["dlq", "summary"])).await;
    println!("{transcript}");
    assert_eq!(subjects(&sb, "sachiko").len(), 2, "both replays applied");
    assert_eq!(
        dead_depth(&sb).await,
        1,
        "globex's policy-denied copy is left"
    );
    worker.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dead_letter_queue_is_named_and_nothing_is_declared() {
    let cfg = support::config("dlq-missing");
    let _conn = support::rabbitmq().await;
    let dlq = Dlq::new(&cfg, support::redis().await);
    let err = dlq.list(&Filter::default()).await.unwrap_err();
    assert!(
        matches!(&err, DlqError::NoQueue { queue } if *queue == cfg.amqp.dead_letter_queue),
        "{err}"
    );
    assert!(matches!(dlq.depth().await, Err(DlqError::NoQueue { .. })));
}

/// An event type that forges a log line and clears the operator's screen (issue 15); no dot
/// after `schedule.`, so the work queue's `schedule.*` binding takes it.
const FORGED: &str = "schedule.created\r\n2026-11-30T00:00:00Z  INFO outlook_sync::admin: token accepted\n\u{1b}[2J\u{1b}[31mRED\u{9b}2J\u{202e}exe";

/// A command's output reached the terminal inert: it succeeded, holds no character a
/// terminal acts on (only the line breaks the view writes), no forged line, and shows `escaped`.
fn assert_inert(what: &str, out: &std::process::Output, escaped: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let raw: Vec<char> = stdout
        .chars()
        .filter(|c| *c != '\n' && outlook_sync::terminal::needs_escape(*c))
        .collect();
    assert!(raw.is_empty(), "{what} printed {raw:?} raw:\n{stdout}");
    assert!(
        !stdout
            .lines()
            .any(|l| l.starts_with("2026-11-30T00:00:00Z")),
        "{what} printed the forged log line as a line of its own:\n{stdout}"
    );
    assert!(
        stdout.contains(escaped),
        "{what} shows {escaped} escaped:\n{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_dlq_show_and_ledger_show_print_control_characters_from_a_dead_letter_escaped() {
    let sb = sandbox("dlq-hostile").await;
    sb.company("acme", Plan::Standard, &[("u-100", "taro", OK)])
        .await
        .unwrap();
    let worker = sb.worker().await.unwrap();
    let mut ev =
        serde_json::to_value(Ev::created("acme", "sch-1").people("u-100", &[]).wire()).unwrap();
    ev["event_type"] = FORGED.into();
    // The event id (the message id) clears the screen within the listing's 13 columns.
    let message_id = format!("e\u{1b}[2J\r\n{FORGED}");
    sb.publish_raw(&message_id, FORGED, ev.to_string().as_bytes())
        .await
        .unwrap();
    let deadline = Instant::now() + IDLE;
    while dead_depth(&sb).await < 1 {
        assert!(Instant::now() < deadline, "ingest dead-letters the event");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.stop(Duration::from_secs(5)).await;
    // What the flush records when Graph refuses a write, with Graph's code and request-id
    // holding the same text.
    let ledger = outlook_sync::ledger::Ledger::from_config(sb.redis.clone(), &sb.cfg);
    let mut entry = outlook_sync::ledger::Entry::new(
        1,
        &mailbox("taro"),
        "create",
        outlook_sync::ledger::Outcome::DeadLettered,
        "graph_rejected",
    );
    entry.graph_status = Some(400);
    entry.graph_code = Some(FORGED.into());
    entry.request_id = Some(FORGED.into());
    ledger
        .record(&[(outlook_sync::store::Member::new("acme", "sch-1"), entry)])
        .await
        .unwrap();

    let whole = "token accepted\\n\\u{1b}[2J\\u{1b}[31mRED\\u{9b}2J\\u{202e}exe";
    assert_inert(
        "dlq list",
        &run_cli(&sb.cfg, &["dlq", "list"]).await,
        "e\\u{1b}[2J\\r…",
    );
    let listed = Dlq::new(&sb.cfg, sb.redis.clone())
        .list(&Filter::default())
        .await
        .unwrap();
    assert_eq!(listed.records[0].routing_key.as_deref(), Some(FORGED));
    let id = listed.records[0].id[..8].to_string();
    let show = run_cli(&sb.cfg, &["dlq", "show", &id]).await;
    assert_inert("dlq show", &show, whole);
    let stdout = String::from_utf8_lossy(&show.stdout);
    assert!(
        stdout.contains("  routing key       schedule.created\\r\\n2026-11-30T00:00:00Z  INFO"),
        "{stdout}"
    );
    assert_inert(
        "ledger show",
        &run_cli(&sb.cfg, &["ledger", "show", "acme", "sch-1"]).await,
        whole,
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_is_named_without_its_password() {
    let mut cfg = support::config("dlq-no-redis");
    cfg.redis.url = "redis://:s3cret-redis-pass@127.0.0.1:1/".into();
    for args in [&["dlq", "list"][..], &["ledger", "show", "acme", "s-1"][..]] {
        let out = run_cli(&cfg, args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot reach Redis at redis://:***@127.0.0.1:1/")
                && stderr.contains("check redis.url"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("s3cret-redis-pass"), "{args:?}: {stderr}");
        assert_eq!(stderr.matches("Connection refused").count(), 1, "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dlq_command_says_what_happened_once_in_plain_words() {
    let w = world("dlq-errors").await;
    w.publish(&[flush_dead_letter("ev-1", "acme", "s-1", "a@x")])
        .await;
    let out = run_cli(&w.cfg, &["dlq", "show", "zzzzzzzz"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: no dead letter has the id zzzzzzzz (give a dead-letter id, a prefix of at least 6 characters, or an event id)\n"
    );
    let dir = tempfile::tempdir().unwrap();
    // A directory where the archive file should be: it cannot be written.
    let archive = dir.path().display().to_string();
    let out = run_cli(
        &w.cfg,
        &["dlq", "purge", "--all", "--yes", "--archive", &archive],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        error,
        format!(
            "error: cannot write the archive {archive} (Is a directory (os error 21)); what was not archived stays in the queue"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert_eq!(w.depth(&w.cfg.amqp.dead_letter_queue).await, 1);
    w.cleanup().await;
}
