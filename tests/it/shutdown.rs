//! Graceful shutdown: a worker stopped in the middle of a slow flush loses nothing and leaves
//! nothing behind that blocks the others longer than its expiry; `outlook-sync run` exits 0
//! within its grace period on SIGTERM.

use std::time::{Duration, Instant};

use graph_emulator::{MailboxKind, Settings};
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::tenants::Plan;
use redis::AsyncCommands;

use crate::support::{mailbox, subjects};

const OK: MailboxKind = MailboxKind::Ok;
const IDLE: Duration = Duration::from_secs(60);

async fn sandbox(name: &str, latency: Duration) -> Sandbox {
    let settings = Settings {
        latency,
        ..Settings::default()
    };
    crate::support::sandbox(name, settings).await
}

/// `n` schedules for u-1 and u-2, published; returns their sorted titles.
async fn publish_visits(sb: &Sandbox, c: &str, n: usize) -> Vec<String> {
    let events: Vec<_> = (0..n)
        .map(|i| {
            Ev::created(c, &format!("s-{i}"))
                .title(&format!("visit {i:02}"))
                .people("u-1", &["u-2"])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    (0..n).map(|i| format!("visit {i:02}")).collect()
}

/// Waits until some worker holds claims and Graph has seen writes: a flush is under way.
async fn mid_flush(sb: &Sandbox) {
    let mut r = sb.redis.clone();
    let inflight = format!("{}:inflight", sb.cfg.redis.key_prefix);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n: u64 = r.zcard(&inflight).await.unwrap();
        if n > 0 && sb.emulator.emulator.stats().writes > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the flush never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Claims (member → owner token) and mailbox leases (key → remaining ms) in Redis.
async fn claims_and_leases(sb: &Sandbox) -> (Vec<(String, String)>, Vec<(String, i64)>) {
    let mut r = sb.redis.clone();
    let p = &sb.cfg.redis.key_prefix;
    let owners: Vec<(String, String)> = r.hgetall(format!("{p}:owner")).await.unwrap();
    let keys: Vec<String> = r.keys(format!("{p}:lease:*")).await.unwrap();
    let mut leases = Vec::new();
    for k in keys {
        let ttl: i64 = r.pttl(&k).await.unwrap();
        leases.push((k, ttl));
    }
    (owners, leases)
}

async fn everything_once(sb: &Sandbox, c: &str, want: &[String]) {
    assert!(sb.wait_idle(IDLE).await.unwrap(), "the pipeline drained");
    for m in ["taro", "hanako"] {
        assert_eq!(subjects(sb, &mailbox(m, c)), want, "{m}: every visit, once");
    }
    assert_eq!(
        sb.queue_depth(&sb.cfg.amqp.dead_letter_queue)
            .await
            .unwrap(),
        0,
        "no dead letters"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_mid_flush_finishes_its_pass_and_another_finishes_the_rest() {
    let sb = sandbox("stop-drain", Duration::from_millis(200)).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let a = sb.worker().await.unwrap();
    let token = a.flusher.claim_token().to_string();
    let want = publish_visits(&sb, c, 30).await;
    mid_flush(&sb).await;

    let started = Instant::now();
    let stopped = a.stop(Duration::from_secs(30)).await;
    assert!(stopped.drained, "the pass finished within the grace period");
    assert_eq!(stopped.released_claims, 0);
    eprintln!("drained in {:?}", started.elapsed());
    // Nothing of A's is left: its claims were completed or released, its leases given back.
    let (owners, leases) = claims_and_leases(&sb).await;
    assert!(
        owners.iter().all(|(_, t)| t != &token),
        "A still owns claims: {owners:?}"
    );
    assert!(leases.is_empty(), "A left mailbox leases: {leases:?}");

    let b = sb.worker().await.unwrap();
    everything_once(&sb, c, &want).await;
    assert_eq!(
        sb.emulator.emulator.stats().events_created,
        60,
        "no duplicate"
    );
    b.stop(Duration::from_secs(10)).await;
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_past_its_grace_releases_the_claims_and_leaves_only_expiring_leases() {
    // Graph answers each request after 1.5 s: a pass takes far longer than the grace period.
    let sb = sandbox("stop-grace", Duration::from_millis(1500)).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let a = sb.worker().await.unwrap();
    let token = a.flusher.claim_token().to_string();
    let want = publish_visits(&sb, c, 30).await;
    mid_flush(&sb).await;

    let grace = Duration::from_millis(300);
    let started = Instant::now();
    let stopped = a.stop(grace).await;
    let took = started.elapsed();
    assert!(!stopped.drained, "the pass could not finish in {grace:?}");
    assert!(stopped.released_claims > 0, "its claims were given back");
    assert!(
        took < grace + Duration::from_secs(4),
        "stop returns within the grace period plus the release: {took:?}"
    );
    let (owners, leases) = claims_and_leases(&sb).await;
    assert!(
        owners.iter().all(|(_, t)| t != &token),
        "A still owns claims after releasing them: {owners:?}"
    );
    // Mailbox leases it held mid-write expire by themselves, within their lifetime.
    let lease_ms = (sb.cfg.graph.mailbox_lease_seconds * 1000) as i64;
    for (k, ttl) in &leases {
        assert!(
            *ttl > 0 && *ttl <= lease_ms,
            "{k} must expire within {lease_ms} ms, has {ttl}"
        );
    }
    // Another worker finishes everything, exactly once; it waits for nothing longer than the
    // leases' expiry (the released claims are due at once).
    let b_started = Instant::now();
    let b = sb.worker().await.unwrap();
    let mut r = sb.redis.clone();
    let p = sb.cfg.redis.key_prefix.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mine: Vec<(String, String)> = r.hgetall(format!("{p}:owner")).await.unwrap();
        if !mine.is_empty() && sb.emulator.emulator.stats().writes > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "B never took the work over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let taken_over = b_started.elapsed();
    assert!(
        taken_over < Duration::from_secs(sb.cfg.window.claim_lease_seconds),
        "B started within the claim lease ({taken_over:?}): the claims were released, not left to expire"
    );
    everything_once(&sb, c, &want).await;
    let created = sb.emulator.emulator.stats().events_created;
    assert!(
        created >= 60,
        "every copy was created ({created}); duplicates would show in the calendars above"
    );
    b.stop(Duration::from_secs(10)).await;
    sb.cleanup().await;
}

/// A free port on 127.0.0.1 (bound and released; good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlook_sync_run_exits_zero_on_sigterm_within_its_grace_period() {
    let sb = sandbox("sigterm", Duration::from_millis(300)).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let port = free_port();
    let grace_s = 5u64;
    let mut cfg = sb.cfg.clone();
    cfg.admin.listen = format!("127.0.0.1:{port}");
    cfg.admin.public_url = format!("http://127.0.0.1:{port}");
    cfg.log.format = outlook_sync::config::LogFormat::Json;
    cfg.log.filter = "info".into();
    cfg.worker.shutdown_grace_seconds = grace_s;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outlook-sync.toml");
    std::fs::write(
        &path,
        toml::to_string(&cfg).expect("the configuration as TOML"),
    )
    .unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawning outlook-sync run");

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .send()
            .await
            .map(|r| r.status().as_u16() == 200)
            .unwrap_or(false);
        if ready {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "outlook-sync run exited early ({status}): {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "outlook-sync run never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Work in progress when SIGTERM comes: a flush of slow Graph writes.
    let want = publish_visits(&sb, c, 20).await;
    mid_flush(&sb).await;

    let started = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(kill.success());
    let limit = Duration::from_secs(grace_s + 5);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("outlook-sync run did not exit within {limit:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = started.elapsed();
    let logs = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(status.success(), "exit status {status}; logs:\n{logs}");
    assert!(
        took <= Duration::from_secs(grace_s + 4),
        "exited {took:?} after SIGTERM (grace {grace_s} s)"
    );
    eprintln!("outlook-sync run exited 0 {took:?} after SIGTERM");
    // Production logs: one JSON object a line, ending with the worker's own account.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"] == "stopped"),
        "the worker logged how it stopped:\n{logs}"
    );

    // Nothing lost: an in-process worker finishes whatever the process left.
    let b = sb.worker().await.unwrap();
    everything_once(&sb, c, &want).await;
    b.stop(Duration::from_secs(10)).await;
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_start_on_port_zero_logs_the_port_it_got_and_no_error() {
    outlook_sync::install_crypto_provider();
    // A broker and a Redis this configuration has never seen: nothing is declared yet.
    let mut cfg = crate::support::config("fresh-start");
    cfg.admin.listen = "127.0.0.1:0".into();
    let token = "9vQm2LxT7rWc4ZpK8sNd3HfJ6bYg1AeU";
    cfg.admin.tokens = vec![token.into()];
    cfg.log.format = outlook_sync::config::LogFormat::Json;
    cfg.log.filter = "info".into();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outlook-sync.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawning outlook-sync run");
    let logs = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let found = logs().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            (v["message"] == "serving /healthz, /readyz, /metrics")
                .then(|| v["addr"].as_str().map(str::to_string))
                .flatten()
        });
        if let Some(a) = found {
            break a;
        }
        assert!(Instant::now() < deadline, "no address logged:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(
        port, 0,
        "it logged the port it got, not the one it asked for"
    );
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http
            .get(format!("http://{addr}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().as_u16() == 200);
        if ready {
            break;
        }
        assert!(Instant::now() < deadline, "never ready:\n{}", logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Some seconds of normal running: the dead-letter depth poller has run, the fleet reported,
    // and an operator looked at the dead letters and the backlog through the admin API.
    for path in ["/v1/dlq/messages", "/v1/dlq/summary", "/v1/backlog"] {
        let r = http
            .get(format!("http://{addr}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status().as_u16(),
            200,
            "{path}: {}",
            r.text().await.unwrap()
        );
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let errors: Vec<String> = logs()
        .lines()
        .filter(|l| l.contains("\"level\":\"ERROR\""))
        .map(str::to_string)
        .collect();
    assert!(
        errors.is_empty(),
        "ERROR lines in normal operation: {errors:#?}"
    );
    crate::support::cleanup_amqp(&cfg).await;
}
