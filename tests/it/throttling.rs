//! Graph as it really behaves under load: throttling slows the sync and never turns a change into
//! a dead letter before `retry.give_up_after_seconds`; each mailbox is paced within Graph's
//! budget so a backlog does not run into 429 to find it; other mailboxes keep going.

use std::time::{Duration, SystemTime};

use graph_emulator::{FaultKind, LoggedRequest, MailboxKind, ScriptedFault, Settings};
use outlook_sync::deadletter::{Dlq, Filter};
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::tenants::Plan;

use crate::support::{mailbox, subjects};

const OK: MailboxKind = MailboxKind::Ok;

async fn sandbox(name: &str, settings: Settings) -> Sandbox {
    match Sandbox::start(name, 1, settings).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    }
}

async fn idle(sb: &Sandbox, within: Duration) {
    assert!(
        sb.wait_idle(within).await.unwrap(),
        "the pipeline did not drain within {within:?}"
    );
}

/// Scripts `n` 429s (each asking to wait `retry_after` seconds) for requests to one mailbox.
fn throttle(sb: &Sandbox, mb: &str, n: usize, retry_after: f64) {
    for _ in 0..n {
        sb.emulator.emulator.script_fault(
            ScriptedFault::new(FaultKind::Throttle429 { retry_after })
                .path_contains(&format!("/users/{mb}/events")),
        );
    }
}

fn writes_to(log: &[LoggedRequest], mb: &str) -> Vec<LoggedRequest> {
    log.iter()
        .filter(|r| r.batch_item && r.mailbox.as_deref() == Some(mb))
        .filter(|r| matches!(r.method.as_str(), "POST" | "PATCH" | "DELETE"))
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_throttled_for_longer_than_the_attempts_allow_loses_nothing_and_never_retries_early()
 {
    let mut sb = sandbox("throttled-long", Settings::default()).await;
    // Three attempts would have been spent by the third 429 before; twelve are scripted.
    sb.cfg.retry.max_attempts = 3;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let (taro, hanako) = (mailbox("taro", c), mailbox("hanako", c));
    throttle(&sb, &taro, 12, 0.3);
    let w = sb.worker().await.unwrap();
    // One change for taro, so that each request to taro is a retry of the one before.
    let events: Vec<_> = std::iter::once(
        Ev::created(c, "t-0")
            .title("taro 0")
            .people("u-1", &[])
            .wire(),
    )
    .chain((0..3).map(|i| {
        Ev::created(c, &format!("h-{i}"))
            .title(&format!("hanako {i}"))
            .people("u-2", &[])
            .wire()
    }))
    .collect();
    sb.publish(&events).await.unwrap();
    idle(&sb, Duration::from_secs(60)).await;
    w.stop(Duration::from_secs(5)).await;

    let dead = Dlq::new(&sb.cfg, sb.redis.clone())
        .list(&Filter::default())
        .await
        .unwrap();
    assert!(dead.records.is_empty(), "dead letters: {:?}", dead.records);
    assert_eq!(subjects(&sb, &taro), vec!["taro 0"]);
    assert_eq!(
        subjects(&sb, &hanako),
        vec!["hanako 0", "hanako 1", "hanako 2"]
    );
    let log = sb.emulator.emulator.request_log();
    let tried = writes_to(&log, &taro);
    assert!(
        tried.iter().filter(|r| r.status == 429).count() >= 12,
        "every scripted 429 was met: {tried:?}"
    );
    // Never sooner than Retry-After: after a 429, the mailbox's next request waits 0.3 s.
    let to_taro: Vec<&LoggedRequest> = log
        .iter()
        .filter(|r| r.batch_item && r.mailbox.as_deref() == Some(taro.as_str()))
        .collect();
    for pair in to_taro.windows(2) {
        if pair[0].status == 429 {
            let gap = pair[1]
                .time
                .duration_since(pair[0].time)
                .unwrap_or_default();
            assert!(
                gap >= Duration::from_millis(290),
                "retried {gap:?} after a 429 asking for 300 ms"
            );
        }
    }
    // The other mailbox was not held up by taro's throttling.
    let first_taro_success = tried.iter().find(|r| r.status < 300).unwrap().time;
    let hanako_done = writes_to(&log, &hanako)
        .iter()
        .map(|r| r.time)
        .max()
        .unwrap();
    assert!(
        hanako_done < first_taro_success,
        "hanako's copies waited for taro's throttling"
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_throttled_past_the_time_budget_becomes_a_dead_letter_that_says_why() {
    let mut sb = sandbox("throttled-past", Settings::default()).await;
    sb.cfg.retry.give_up_after_seconds = 2;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let taro = mailbox("taro", c);
    throttle(&sb, &taro, 40, 0.4);
    let w = sb.worker().await.unwrap();
    sb.publish(&[Ev::created(c, "s-1").title("t").people("u-1", &[]).wire()])
        .await
        .unwrap();
    idle(&sb, Duration::from_secs(40)).await;
    w.stop(Duration::from_secs(5)).await;
    let dead = Dlq::new(&sb.cfg, sb.redis.clone())
        .list(&Filter::default())
        .await
        .unwrap();
    assert_eq!(dead.records.len(), 1, "{:?}", dead.records);
    let d = &dead.records[0];
    assert_eq!(d.reason, "retry_time_exhausted");
    assert_eq!(d.graph_status, Some(429));
    let error = d.error.as_deref().unwrap_or_default();
    for words in [
        "kept throttling",
        "answers of 429",
        "the last asking to wait 400 ms",
    ] {
        assert!(error.contains(words), "{words:?} missing from {error:?}");
    }
    // The ledger says the same, in plain words.
    let entries = outlook_sync::ledger::Ledger::from_config(sb.redis.clone(), &sb.cfg)
        .show(&outlook_sync::store::Member::new(c, "s-1"))
        .await
        .unwrap();
    let last = entries.first().unwrap();
    assert_eq!(last.reason, "retry_time_exhausted");
    assert!(last.words.contains("kept throttling"), "{last:?}");
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_for_one_mailbox_is_paced_within_its_budget_and_never_throttled() {
    // The emulator enforces 60 requests per 6 s per app and mailbox; the worker is told so.
    let settings = Settings {
        requests_per_window: 60,
        rate_window: Duration::from_secs(6),
        ..Settings::default()
    };
    let mut sb = sandbox("paced", settings).await;
    sb.cfg.graph.mailbox_request_budget = 60;
    sb.cfg.graph.mailbox_budget_window_seconds = 6;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let taro = mailbox("taro", c);
    let w = sb.worker().await.unwrap();
    let started = SystemTime::now();
    let events: Vec<_> = (0..120)
        .map(|i| {
            Ev::created(c, &format!("s-{i}"))
                .title(&format!("visit {i}"))
                .people("u-1", &[])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    idle(&sb, Duration::from_secs(90)).await;
    w.stop(Duration::from_secs(5)).await;
    let log = sb.emulator.emulator.request_log();
    let to_taro: Vec<&LoggedRequest> = log
        .iter()
        .filter(|r| r.batch_item && r.mailbox.as_deref() == Some(taro.as_str()))
        .collect();
    assert_eq!(to_taro.len(), 120, "one create each, nothing retried");
    assert!(
        to_taro.iter().all(|r| r.status == 201),
        "throttled: {:?}",
        to_taro.iter().filter(|r| r.status != 201).count()
    );
    // No 6-second window held more than the budget.
    for (i, r) in to_taro.iter().enumerate() {
        let end = r.time + Duration::from_secs(6);
        let n = to_taro[i..].iter().take_while(|x| x.time < end).count();
        assert!(n <= 60, "{n} requests in 6 s");
    }
    assert_eq!(subjects(&sb, &taro).len(), 120);
    let took = started.elapsed().unwrap();
    assert!(
        took >= Duration::from_secs(6),
        "paced, not bursted: {took:?}"
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_unlink_of_many_copies_is_paced_within_the_mailboxs_budget() {
    let sb = sandbox("paced-unlink", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let taro = mailbox("taro", c);
    let w = sb.worker().await.unwrap();
    let events: Vec<_> = (0..60)
        .map(|i| {
            Ev::created(c, &format!("s-{i}"))
                .title(&format!("visit {i}"))
                .people("u-1", &[])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    idle(&sb, Duration::from_secs(60)).await;
    w.stop(Duration::from_secs(5)).await;
    assert_eq!(subjects(&sb, &taro).len(), 60);
    // From now on Graph allows 40 requests per 3 s to the mailbox, and the admin is told so
    // (after the creates have left that window).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    sb.emulator.emulator.update_settings(|s| {
        s.requests_per_window = 40;
        s.rate_window = Duration::from_secs(3);
    });
    sb.emulator.emulator.clear_log();
    let mut cfg = sb.cfg.clone();
    cfg.graph.mailbox_request_budget = 40;
    cfg.graph.mailbox_budget_window_seconds = 3;
    let admin = outlook_sync::admin::Admin::new(
        std::sync::Arc::new(cfg.clone()),
        sb.redis.clone(),
        outlook_sync::graph::client::GraphClient::new(&cfg.graph),
        outlook_sync::metrics::Metrics::new(),
    );
    let started = SystemTime::now();
    let report = admin
        .unlink_user(c, "u-1", true, std::sync::Arc::new(|_| {}))
        .await
        .unwrap();
    let took = started.elapsed().unwrap();
    let copies = report.copies.expect("copies were removed");
    assert_eq!((copies.deleted, copies.failed.len()), (60, 0), "{copies:?}");
    assert!(subjects(&sb, &taro).is_empty());
    let log = sb.emulator.emulator.request_log();
    assert!(
        log.iter().all(|r| r.status != 429),
        "the unlink ran into Graph's limit instead of pacing itself"
    );
    assert!(
        took >= Duration::from_secs(3),
        "60 deletes at 30 per 3 s took {took:?}"
    );
    sb.cleanup().await;
}
