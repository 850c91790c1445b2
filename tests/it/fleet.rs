//! The fleet as one: "is anything still waiting?", fleet-wide (the backlog from the broker, the
//! workers' reports and Redis; `outlook-sync backlog --wait-empty`; the fleet-wide metrics from
//! one worker), and the settings every worker of one queue must share.

use std::time::Duration;

use graph_emulator::{FaultKind, MailboxKind, ScriptedFault, Settings};
use outlook_sync::config::Config;
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::fleet::{self, Backlog};
use outlook_sync::tenants::Plan;

use crate::support::{mailbox, subjects};

const OK: MailboxKind = MailboxKind::Ok;

async fn sandbox(name: &str, window_seconds: u64) -> Sandbox {
    match Sandbox::start(name, window_seconds, Settings::default()).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    }
}

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
async fn the_backlog_shows_each_part_that_waits_and_is_empty_only_once_everything_is_in_outlook() {
    let sb = sandbox("backlog-parts", 3).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let taro = mailbox("taro", c);
    // Nothing consumes yet: the events wait on the queue.
    let events: Vec<_> = (0..4)
        .map(|i| {
            Ev::created(c, &format!("s-{i}"))
                .title(&format!("visit {i}"))
                .people("u-1", &[])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    let b = fleet::backlog(&sb.cfg, sb.redis.clone()).await.unwrap();
    assert_eq!((b.queued, b.workers, b.empty), (Some(4), 0, false), "{b:?}");
    // A worker takes them; taro's mailbox is throttled for a while: four rounds of 429s (one per
    // change) asking for 1.5 s each, longer than the workers' reports (every 2 s) can miss.
    for _ in 0..16 {
        sb.emulator.emulator.script_fault(
            ScriptedFault::new(FaultKind::Throttle429 { retry_after: 1.5 })
                .path_contains(&format!("/users/{taro}/events")),
        );
    }
    let w = sb.worker().await.unwrap();
    let mut seen: Vec<Backlog> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    // Empty over three reports in a row, as `backlog --wait-empty` waits for it.
    let mut quiet = 0;
    loop {
        let b = fleet::backlog(&sb.cfg, sb.redis.clone()).await.unwrap();
        quiet = if b.empty { quiet + 1 } else { 0 };
        seen.push(b);
        if quiet >= 3 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let last = seen.last().unwrap();
    assert!(last.empty, "never empty: {last:?}");
    assert_eq!(subjects(&sb, &taro).len(), 4, "empty means in Outlook");
    assert!(
        seen.iter()
            .any(|b| b.waiting_on_mailboxes > 0 && b.open_changes > 0),
        "changes were seen waiting on the throttled mailbox: {seen:#?}"
    );
    assert!(seen.iter().any(|b| b.workers == 1));
    assert!(
        seen.iter()
            .all(|b| b.empty == b.parts().iter().all(|(_, n)| *n == Some(0))),
        "empty means every part is zero"
    );
    w.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staged_due_and_claimed_schedules_are_each_counted_where_they_wait() {
    use outlook_sync::window::{Staging, Windows};
    let sb = sandbox("backlog-windows", 1).await;
    let keys = outlook_sync::store::keys(&sb.cfg);
    let raw = |id: &str| serde_json::to_vec(&Ev::created("acme", id).wire()).unwrap();
    let events: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|id| (outlook_sync::event::decode(&raw(id)).unwrap(), raw(id)))
        .collect();
    let stage = |w: &Windows, i: usize| {
        let (ev, raw) = &events[i];
        let w = w.clone();
        let (ev, raw) = (ev.clone(), raw.clone());
        async move { w.stage(&[Staging::new(&ev, &raw)]).await.unwrap() }
    };
    // One staged in an hour-long window (not due yet), two in a one-second one.
    let hour = Windows::new(sb.redis.clone(), keys.clone(), Duration::from_secs(3600));
    let second = Windows::new(sb.redis.clone(), keys, Duration::from_secs(1));
    stage(&hour, 0).await;
    stage(&second, 1).await;
    stage(&second, 2).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let claimed = second
        .claim("a-worker", 1, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let b = fleet::backlog(&sb.cfg, sb.redis.clone()).await.unwrap();
    assert_eq!((b.staged, b.due, b.claimed), (1, 1, 1), "{b:?}");
    assert!(b.oldest_age_seconds > 0.0 && !b.empty, "{b:?}");
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_wait_empty_exits_zero_once_applied_and_one_when_nothing_drains_it() {
    let sb = sandbox("backlog-cli", 1).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    sb.publish(&[Ev::created(c, "s-1").title("t").people("u-1", &[]).wire()])
        .await
        .unwrap();
    // No worker: it cannot drain.
    let out = run_cli(&sb.cfg, &["backlog", "--wait-empty", "--timeout", "3"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("on the work queue"), "{text}");
    assert!(text.contains("still on their way"), "{text}");
    // With a worker, it returns when the copy is in Outlook.
    let w = sb.worker().await.unwrap();
    let out = run_cli(
        &sb.cfg,
        &["backlog", "--wait-empty", "--timeout", "60", "--json"],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let b: Backlog = serde_json::from_slice(&out.stdout).unwrap();
    assert!(b.empty, "{b:?}");
    assert_eq!(subjects(&sb, &mailbox("taro", c)), vec!["t"]);
    w.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_wide_figures_are_exported_by_exactly_one_worker() {
    let sb = sandbox("backlog-metrics", 1).await;
    let a = sb.worker().await.unwrap();
    let b = sb.worker().await.unwrap();
    let exports = |w: &outlook_sync::worker::Worker| {
        w.metrics
            .render()
            .lines()
            .any(|l| l.starts_with("outlook_sync_fleet_backlog{"))
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (ea, eb) = (exports(&a), exports(&b));
        if ea != eb {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "exported by both or by neither: {ea} {eb}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The reporter stops: the other takes over within a few beats.
    let (reporter, other) = if exports(&a) { (a, b) } else { (b, a) };
    reporter.stop(Duration::from_secs(5)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !exports(&other) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nobody took over the fleet-wide figures"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    other.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_shared_settings_differ_from_the_fleets_refuses_to_start_and_nothing_is_lost()
 {
    let sb = sandbox("fleet-settings", 1).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let a = sb.worker().await.unwrap();
    // The same queue with another key prefix: it would stage where no one flushes.
    let mut other_prefix = sb.cfg.clone();
    other_prefix.redis.key_prefix = format!("{}-other", sb.cfg.redis.key_prefix);
    let err = match outlook_sync::worker::Worker::start(other_prefix.clone()).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a worker with another redis.key_prefix started"),
    };
    for words in [
        "redis.key_prefix",
        other_prefix.redis.key_prefix.as_str(),
        sb.cfg.redis.key_prefix.as_str(),
        "stop every worker first",
    ] {
        assert!(err.contains(words), "{words:?} missing from: {err}");
    }
    let mut other_window = sb.cfg.clone();
    other_window.window.seconds = 5;
    let err = match outlook_sync::worker::Worker::start(other_window).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("a worker with another window.seconds started"),
    };
    assert!(
        err.contains("window.seconds is \"5\" here and \"1\""),
        "{err}"
    );
    // The same settings join.
    let b = sb.worker().await.unwrap();
    let events: Vec<_> = (0..20)
        .map(|i| {
            Ev::created(c, &format!("s-{i}"))
                .title(&format!("visit {i}"))
                .people("u-1", &[])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    assert!(sb.wait_idle(Duration::from_secs(40)).await.unwrap());
    a.stop(Duration::from_secs(5)).await;
    b.stop(Duration::from_secs(5)).await;
    assert_eq!(
        subjects(&sb, &mailbox("taro", c)).len(),
        20,
        "every update reached Outlook"
    );
    sb.cleanup().await;
}
