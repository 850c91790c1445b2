//! The pipeline end to end: real RabbitMQ, real Redis, the in-process Graph emulator. One test
//! per invariant of DESIGN.md §3, plus the product rules and the field mapping.

use std::time::Duration;

use graph_emulator::{FaultKind, MailboxKind, ScriptedFault, Settings};
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::tenants::Plan;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use redis::AsyncCommands;
use serde_json::Value;

use crate::support::{mailbox, sandbox, subjects};

const IDLE: Duration = Duration::from_secs(40);
const OK: MailboxKind = MailboxKind::Ok;

async fn idle(sb: &Sandbox) {
    assert!(
        sb.wait_idle(IDLE).await.unwrap(),
        "the pipeline did not drain within {IDLE:?}"
    );
}

async fn dead_letter_count(sb: &Sandbox) -> u32 {
    sb.queue_depth(&sb.cfg.amqp.dead_letter_queue)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_acked_is_lost_when_a_worker_is_killed_mid_flush() {
    let settings = Settings {
        latency: Duration::from_millis(300),
        ..Settings::default()
    };
    let sb = sandbox("killed", settings).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let a = sb.worker().await.unwrap();
    let events: Vec<_> = (0..30)
        .map(|i| {
            Ev::created(c, &format!("s-{i}"))
                .title(&format!("visit {i}"))
                .people("u-1", &["u-2"])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    // Wait until worker A holds claims and is writing, then kill it without any cleanup.
    let mut r = sb.redis.clone();
    let inflight = format!("{}:inflight", sb.cfg.redis.key_prefix);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n: u64 = r.zcard(&inflight).await.unwrap();
        if n > 0 && sb.emulator.emulator.stats().writes > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker A never started flushing"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill();
    let claimed: u64 = r.zcard(&inflight).await.unwrap();
    assert!(claimed > 0, "the kill left claims behind, as a crash would");
    let b = sb.worker().await.unwrap();
    idle(&sb).await;
    b.stop(Duration::from_secs(5)).await;
    let want: Vec<String> = {
        let mut v: Vec<String> = (0..30).map(|i| format!("visit {i}")).collect();
        v.sort();
        v
    };
    assert_eq!(subjects(&sb, &mailbox("taro", c)), want);
    assert_eq!(subjects(&sb, &mailbox("hanako", c)), want);
    assert_eq!(dead_letter_count(&sb).await, 0);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_never_regresses_under_shuffled_and_duplicated_deliveries() {
    let sb = sandbox("regress", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let w = sb.worker().await.unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // Five schedules, revisions 1..=12 each, every event published once or twice, shuffled,
    // spread over about three windows.
    let mut all = Vec::new();
    for s in 0..5 {
        for rev in 1..=12u64 {
            let ev = if rev == 1 {
                Ev::created(c, &format!("s-{s}"))
            } else {
                Ev::updated(c, &format!("s-{s}"), rev)
            }
            .title(&format!("s-{s} rev {rev}"))
            .people("u-1", &[])
            .wire();
            all.push(ev.clone());
            if rng.random_bool(0.5) {
                all.push(ev);
            }
        }
    }
    all.shuffle(&mut rng);
    for chunk in all.chunks(all.len() / 3 + 1) {
        sb.publish(chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    let want: Vec<String> = (0..5).map(|s| format!("s-{s} rev 12")).collect();
    assert_eq!(subjects(&sb, &mailbox("taro", c)), want);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_timed_out_but_happened_is_not_duplicated() {
    let sb = sandbox("timeout-create", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    sb.emulator.emulator.script_fault(
        ScriptedFault::new(FaultKind::Gateway504AfterCreate)
            .method("POST")
            .path_contains("/events"),
    );
    let w = sb.worker().await.unwrap();
    sb.publish(&[Ev::created(c, "s-1")
        .title("once")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    assert_eq!(subjects(&sb, &mailbox("taro", c)), vec!["once"]);
    let stats = sb.emulator.emulator.stats();
    assert!(stats.writes >= 2, "the create was retried after the 504");
    assert_eq!(stats.events_created, 1);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_that_timed_out_is_not_duplicated_even_when_graph_ignores_the_transaction_id() {
    // GRAPH.md leaves Graph's transactionId dedupe unconfirmed: the retry must not rely on it.
    let settings = Settings {
        transaction_id_mode: graph_emulator::TransactionIdMode::CreateDuplicate,
        ..Settings::default()
    };
    let sb = sandbox("timeout-no-dedupe", settings).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    for kind in [FaultKind::Gateway504AfterCreate, FaultKind::DropConnection] {
        sb.emulator.emulator.script_fault(
            ScriptedFault::new(kind)
                .method("POST")
                .path_contains("/events"),
        );
    }
    let w = sb.worker().await.unwrap();
    sb.publish(&[Ev::created(c, "s-1")
        .title("once")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    assert_eq!(subjects(&sb, &mailbox("taro", c)), vec!["once"]);
    assert_eq!(sb.emulator.emulator.stats().events_created, 1);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_between_the_create_and_the_mapping_write_leaves_no_duplicate() {
    let sb = sandbox("die-after-create", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    // The create happens, but the worker never learns it (504 after the create, retry budget of
    // one): only the write-ahead intent is recorded, as if it died before the mapping write.
    let mut cfg_one_try = sb.cfg.clone();
    cfg_one_try.retry.max_attempts = 1;
    sb.emulator.emulator.script_fault(
        ScriptedFault::new(FaultKind::Gateway504AfterCreate)
            .method("POST")
            .path_contains("/events"),
    );
    let w = outlook_sync::worker::Worker::start(cfg_one_try)
        .await
        .unwrap();
    sb.publish(&[Ev::created(c, "s-1").title("v1").people("u-1", &[]).wire()])
        .await
        .unwrap();
    idle(&sb).await;
    assert_eq!(subjects(&sb, &mailbox("taro", c)), vec!["v1"]);
    // A newer revision, applied by a worker that never saw the first attempt.
    w.kill();
    let w2 = sb.worker().await.unwrap();
    sb.publish(&[Ev::updated(c, "s-1", 2)
        .title("v2")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    w2.stop(Duration::from_secs(5)).await;
    assert_eq!(subjects(&sb, &mailbox("taro", c)), vec!["v2"]);
    assert_eq!(sb.emulator.emulator.stats().events_created, 1);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_deleted_in_outlook_are_created_again_with_their_transaction_ids_recorded_first() {
    let sb = sandbox("deleted-in-outlook", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let taro = mailbox("taro", c);
    // A full batch's worth, so the creates that replace them fill a batch of their own and
    // would go out at once if nothing held them back.
    let n = sb.cfg.graph.batch_size;
    let w = sb.worker().await.unwrap();
    // Every schedule at one revision (1 creates them, later ones update them), for taro.
    let at = |rev: u64, title: &str| -> Vec<_> {
        (0..n)
            .map(|i| {
                let id = format!("s-{i}");
                let ev = if rev == 1 {
                    Ev::created(c, &id)
                } else {
                    Ev::updated(c, &id, rev)
                };
                ev.title(title).people("u-1", &[]).wire()
            })
            .collect()
    };
    let created = at(1, "v1");
    sb.publish(&created).await.unwrap();
    idle(&sb).await;
    let first = sb.emulator.emulator.calendar(&taro);
    assert_eq!(first.len(), n);
    for e in &first {
        assert!(
            sb.emulator
                .emulator
                .remove_event(&taro, e["id"].as_str().unwrap())
        );
    }
    // Each update's PATCH finds nothing (404): the scheduler creates the copy again, and each
    // of those creates, like any other, goes out only once its transactionId is recorded.
    let updated = at(2, "v2");
    sb.publish(&updated).await.unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    assert_eq!(subjects(&sb, &taro), vec!["v2"; n]);
    let again = sb.emulator.emulator.calendar(&taro);
    let mut txs: Vec<&str> = again
        .iter()
        .map(|e| e["transactionId"].as_str().unwrap_or("(none)"))
        .collect();
    txs.sort();
    let mut expected: Vec<String> = (0..n)
        .map(|i| outlook_sync::graph::mapping::transaction_id(c, &format!("s-{i}"), &taro, 2))
        .collect();
    expected.sort();
    assert_eq!(txs, expected);
    assert_eq!(sb.emulator.emulator.stats().events_created, 2 * n as u64);
    assert_eq!(dead_letter_count(&sb).await, 0);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_is_rebuilt_from_the_tags_without_a_second_copy() {
    let sb = sandbox("wiped", Settings::default()).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let w = sb.worker().await.unwrap();
    sb.publish(&[Ev::created(c, "s-1")
        .title("v1")
        .people("u-1", &["u-2"])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    // Lose every staging and mapping key (the directory is re-entered by the admin).
    let mut r = sb.redis.clone();
    let p = &sb.cfg.redis.key_prefix;
    for pattern in [format!("{p}:s:*"), format!("{p}:m:*")] {
        let keys: Vec<String> = r.keys(&pattern).await.unwrap();
        assert!(!keys.is_empty(), "{pattern} existed before the wipe");
        let _: () = r.del(keys).await.unwrap();
    }
    sb.publish(&[Ev::updated(c, "s-1", 2)
        .title("v2")
        .people("u-1", &["u-2"])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    assert_eq!(subjects(&sb, &mailbox("taro", c)), vec!["v2"]);
    assert_eq!(subjects(&sb, &mailbox("hanako", c)), vec!["v2"]);
    assert_eq!(sb.emulator.emulator.stats().events_created, 2);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_changes_inside_one_window_make_one_write_per_mailbox() {
    let sb = sandbox("coalesce", Settings::default()).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[
            ("u-1", "taro", OK),
            ("u-2", "hanako", OK),
            ("u-3", "jiro", OK),
        ],
    )
    .await
    .unwrap();
    let mut events = vec![
        Ev::created(c, "s-1")
            .title("rev 1")
            .people("u-1", &["u-2", "u-3"])
            .wire(),
    ];
    for rev in 2..=10 {
        events.push(
            Ev::updated(c, "s-1", rev)
                .title(&format!("rev {rev}"))
                .people("u-1", &["u-2", "u-3"])
                .wire(),
        );
    }
    // Published before any worker runs, so all ten land in one window.
    sb.publish(&events).await.unwrap();
    let w = sb.worker().await.unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    let stats = sb.emulator.emulator.stats();
    assert_eq!(stats.writes, 3, "one write per affected mailbox");
    for m in ["taro", "hanako", "jiro"] {
        assert_eq!(subjects(&sb, &mailbox(m, c)), vec!["rev 10"]);
    }
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_four_requests_in_flight_per_mailbox_with_two_workers() {
    let settings = Settings {
        latency: Duration::from_millis(40),
        ..Settings::default()
    };
    let sb = sandbox("four", settings).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let events: Vec<_> = (0..120)
        .map(|i| {
            Ev::created(c, &format!("s-{i}"))
                .title(&format!("e{i}"))
                .people("u-1", &["u-2"])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    let (a, b) = (sb.worker().await.unwrap(), sb.worker().await.unwrap());
    idle(&sb).await;
    a.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
    let stats = sb.emulator.emulator.stats();
    assert_eq!(
        stats.throttled, 0,
        "the emulator never had to refuse a fifth request"
    );
    for m in ["taro", "hanako"] {
        let peak = stats.max_in_flight_per_mailbox[&mailbox(m, c)];
        assert!(peak <= 4, "{m}: {peak} in flight");
        assert_eq!(subjects(&sb, &mailbox(m, c)).len(), 120);
    }
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_never_retrying_sooner() {
    let sb = sandbox("retry-after", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    sb.emulator.emulator.script_fault(
        ScriptedFault::new(FaultKind::Throttle429 { retry_after: 1.5 })
            .method("POST")
            .path_contains("/events"),
    );
    let w = sb.worker().await.unwrap();
    sb.publish(&[Ev::created(c, "s-1").title("t").people("u-1", &[]).wire()])
        .await
        .unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    let posts: Vec<_> = sb
        .emulator
        .emulator
        .request_log()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.contains("/events"))
        .collect();
    assert_eq!(posts.len(), 2, "{posts:?}");
    assert_eq!(posts[0].status, 429);
    let gap = posts[1].time.duration_since(posts[0].time).unwrap();
    assert!(gap >= Duration::from_millis(1500), "retried after {gap:?}");
    assert_eq!(subjects(&sb, &mailbox("taro", c)), vec!["t"]);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_product_rules_decide_who_gets_a_copy() {
    let sb = sandbox("rules", Settings::default()).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    sb.company("lite", Plan::Lite, &[("u-1", "kenji", OK)])
        .await
        .unwrap();
    let w = sb.worker().await.unwrap();
    let before_link = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(2);
    sb.publish(&[
        // A change from before the user was linked: skipped.
        Ev::created(c, "old")
            .title("old")
            .people("u-1", &[])
            .occurred(before_link)
            .wire(),
        // An update of a schedule with no copy: creates one.
        Ev::updated(c, "upd", 7)
            .title("updated, no copy")
            .people("u-1", &[])
            .wire(),
        // A delete of a schedule with no copy: nothing.
        Ev::deleted(c, "gone", 3).wire(),
        // An unlinked participant (u-9) gets nothing; the linked ones do.
        Ev::created(c, "mixed")
            .title("mixed")
            .people("u-2", &["u-9"])
            .wire(),
        // A company on the Lite plan: nothing.
        Ev::created("lite", "l-1")
            .title("lite")
            .people("u-1", &[])
            .wire(),
    ])
    .await
    .unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    assert_eq!(subjects(&sb, &mailbox("taro", c)), vec!["updated, no copy"]);
    assert_eq!(subjects(&sb, &mailbox("hanako", c)), vec!["mixed"]);
    assert!(subjects(&sb, &mailbox("kenji", "lite")).is_empty());
    let deletes = sb
        .emulator
        .emulator
        .request_log()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .count();
    assert_eq!(deletes, 0, "a delete with no copy sends nothing");
    assert_eq!(dead_letter_count(&sb).await, 0, "skips are not errors");
    sb.cleanup().await;
}

fn event_in<'a>(events: &'a [Value], subject: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["subject"] == subject)
        .unwrap_or_else(|| panic!("no event {subject:?} in {events:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokyo_and_new_york_schedules_land_as_outlook_shows_them() {
    let sb = sandbox("mapping", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let w = sb.worker().await.unwrap();
    sb.publish(&[
        Ev::created(c, "tokyo")
            .title("tokyo")
            .at(
                "2026-11-30T10:00:00+09:00",
                "2026-11-30T11:30:00+09:00",
                "Asia/Tokyo",
            )
            .place("Tanaka HQ", "1-2-3 Marunouchi")
            .private()
            .people("u-1", &[])
            .wire(),
        Ev::created(c, "trip")
            .title("trip")
            .all_day("2026-12-01", "2026-12-02")
            .people("u-1", &[])
            .wire(),
        Ev::created(c, "ny")
            .title("ny")
            .at(
                "2026-11-01T00:30:00-04:00",
                "2026-11-01T03:00:00-05:00",
                "America/New_York",
            )
            .people("u-1", &[])
            .wire(),
    ])
    .await
    .unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    let events = sb.emulator.emulator.calendar(&mailbox("taro", c));
    let tokyo = event_in(&events, "tokyo");
    // Graph answers in UTC: 10:00 JST is 01:00Z; the zone it was written in is kept.
    assert_eq!(tokyo["start"]["dateTime"], "2026-11-30T01:00:00.0000000");
    assert_eq!(tokyo["end"]["dateTime"], "2026-11-30T02:30:00.0000000");
    assert_eq!(tokyo["originalStartTimeZone"], "Tokyo Standard Time");
    assert_eq!(tokyo["sensitivity"], "private");
    assert_eq!(tokyo["showAs"], "busy");
    assert_eq!(tokyo["location"]["displayName"], "Tanaka HQ");
    assert_eq!(tokyo["categories"], serde_json::json!(["cyzen"]));
    assert_eq!(tokyo["attendees"], serde_json::json!([]), "no invitations");
    let trip = event_in(&events, "trip");
    assert_eq!(trip["isAllDay"], true);
    assert_eq!(trip["start"]["dateTime"], "2026-12-01T00:00:00.0000000");
    assert_eq!(
        trip["end"]["dateTime"], "2026-12-03T00:00:00.0000000",
        "exclusive end"
    );
    assert_eq!(trip["originalStartTimeZone"], "Tokyo Standard Time");
    let ny = event_in(&events, "ny");
    // 00:30 EDT (04:30Z) to 03:00 EST (08:00Z): three and a half hours across the change.
    assert_eq!(ny["start"]["dateTime"], "2026-11-01T04:30:00.0000000");
    assert_eq!(ny["end"]["dateTime"], "2026-11-01T08:00:00.0000000");
    assert_eq!(ny["originalStartTimeZone"], "Eastern Standard Time");
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_event_becomes_a_dead_letter_with_its_reason_and_is_never_requeued() {
    let sb = sandbox("invalid", Settings::default()).await;
    let w = sb.worker().await.unwrap();
    sb.publish_raw("m-1", "schedule.created", b"{not json")
        .await
        .unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    let conn = crate::support::rabbitmq().await;
    let ch = conn.create_channel().await.unwrap();
    let got = ch
        .basic_get(
            sb.cfg.amqp.dead_letter_queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("a dead letter");
    let headers = got.delivery.properties.headers().clone().unwrap();
    let h = |k: &str| match headers.inner().get(k) {
        Some(lapin::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        other => format!("{other:?}"),
    };
    assert!(
        h("x-reason").contains("malformed_json"),
        "{}",
        h("x-reason")
    );
    assert!(h("x-stage").contains("ingest"));
    assert_eq!(got.delivery.data, b"{not json");
    assert_eq!(
        sb.queue_depth(&sb.cfg.amqp.queue).await.unwrap(),
        0,
        "not requeued"
    );
    sb.cleanup().await;
}
