//! Supervision and telemetry: a worker behind a TCP proxy the test controls (`proxy.rs`) rides
//! out RabbitMQ and Redis outages, cut or stalled, reporting not-ready meanwhile and losing
//! nothing; its metrics move on the paths they describe; its JSON logs carry company, schedule
//! and mailbox, and no secret.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use graph_emulator::{FaultKind, MailboxKind, ScriptedFault, Settings};
use outlook_sync::config::Config;
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::tenants::Plan;
use outlook_sync::worker::Worker;
use serde_json::Value;

use crate::support::{mailbox, sandbox, subjects};

use crate::proxy::Proxy;

const OK: MailboxKind = MailboxKind::Ok;
const SYNCED: Duration = Duration::from_secs(40);

/// Events `{tag} 0..n` for the company's user u-1.
fn batch(c: &str, tag: &str, n: usize) -> Vec<outlook_sync::event::WireEvent> {
    (0..n)
        .map(|i| {
            Ev::created(c, &format!("{tag}-{i}"))
                .title(&format!("{tag} {i}"))
                .people("u-1", &[])
                .wire()
        })
        .collect()
}

fn titles(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag} {i}")).collect()
}

/// Waits until every title is in the mailbox.
async fn synced(sb: &Sandbox, mb: &str, want: &[String]) {
    let deadline = Instant::now() + SYNCED;
    loop {
        let have = subjects(sb, mb);
        if want.iter().all(|t| have.contains(t)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not synced within {SYNCED:?}: missing {:?}",
            want.iter()
                .filter(|t| !have.contains(t))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Proxies in front of the local RabbitMQ and Redis, and a configuration that uses them.
struct Proxied {
    amqp: Proxy,
    redis: Proxy,
    cfg: Config,
}

async fn proxied(sb: &Sandbox) -> Proxied {
    let amqp = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let redis = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let mut cfg = sb.cfg.clone();
    cfg.amqp.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", amqp.port());
    // A stalled broker is noticed after two heartbeats.
    cfg.amqp.heartbeat_seconds = 2;
    cfg.redis.url = format!("redis://127.0.0.1:{}/", redis.port());
    cfg.redis.response_timeout_ms = 1000;
    Proxied { amqp, redis, cfg }
}

/// Serves the worker's `/healthz`, `/readyz` and `/metrics` on an ephemeral port.
struct Served {
    addr: SocketAddr,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(w: &Worker) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = outlook_sync::admin::health::router(w.health());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Served {
            addr,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            task,
        }
    }

    async fn status(&self, path: &str) -> u16 {
        match self
            .http
            .get(format!("http://{}{path}", self.addr))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(e) => panic!("{path} did not answer: {e}"),
        }
    }

    /// Waits until `/readyz` answers `want`; returns how long it took.
    async fn readyz_becomes(&self, want: u16, within: Duration, why: &str) -> Duration {
        let started = Instant::now();
        loop {
            let s = self.status("/readyz").await;
            if s == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "/readyz stayed {s}, not {want}, for {within:?}: {why}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> BTreeMap<String, f64> {
        let text = self
            .http
            .get(format!("http://{}/metrics", self.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        parse_metrics(&text)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Samples of the OpenMetrics text: `name{labels}` → value.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn sum(m: &BTreeMap<String, f64>, prefix: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| *k == prefix || k.starts_with(&format!("{prefix}{{")))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_outage_cut_or_stalled_makes_the_worker_not_ready_and_loses_nothing() {
    let sb = sandbox("sup-amqp", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let p = proxied(&sb).await;
    let w = Worker::start(p.cfg.clone()).await.unwrap();
    let h = Served::start(&w).await;
    let mb = mailbox("taro", c);
    h.readyz_becomes(200, Duration::from_secs(20), "a fresh worker")
        .await;

    sb.publish(&batch(c, "before", 3)).await.unwrap();
    synced(&sb, &mb, &titles("before", 3)).await;

    // A cut: every connection closed, new ones refused.
    p.amqp.cut();
    let took = h
        .readyz_becomes(503, Duration::from_secs(5), "RabbitMQ was cut")
        .await;
    assert_eq!(h.status("/healthz").await, 200, "alive through the outage");
    sb.publish(&batch(c, "during-cut", 3)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.status("/readyz").await, 503);
    p.amqp.restore();
    let back = h
        .readyz_becomes(200, Duration::from_secs(20), "RabbitMQ is back")
        .await;
    synced(&sb, &mb, &titles("during-cut", 3)).await;
    eprintln!("cut: not ready after {took:?}, ready again {back:?} after the restore");

    // A stall: sockets stay open, nothing moves; only the heartbeat can tell.
    p.amqp.stall();
    let took = h
        .readyz_becomes(
            503,
            Duration::from_secs(15),
            "RabbitMQ stalled (heartbeat 2 s: noticed after ~4 s)",
        )
        .await;
    assert_eq!(h.status("/healthz").await, 200, "alive through the stall");
    sb.publish(&batch(c, "during-stall", 3)).await.unwrap();
    p.amqp.restore();
    let back = h
        .readyz_becomes(200, Duration::from_secs(25), "RabbitMQ answers again")
        .await;
    sb.publish(&batch(c, "after", 3)).await.unwrap();
    eprintln!("stall: not ready after {took:?}, ready again {back:?} after the restore");

    let mut want: Vec<String> = ["before", "during-cut", "during-stall", "after"]
        .iter()
        .flat_map(|t| titles(t, 3))
        .collect();
    synced(&sb, &mb, &want).await;
    assert!(sb.wait_idle(SYNCED).await.unwrap(), "the pipeline drained");
    want.sort();
    assert_eq!(subjects(&sb, &mb), want, "every event once, none lost");
    assert_eq!(
        sb.queue_depth(&sb.cfg.amqp.dead_letter_queue)
            .await
            .unwrap(),
        0
    );
    let m = h.metrics().await;
    assert!(
        sum(&m, "outlook_sync_ingest_reconnects_total") >= 2.0,
        "two outages, two reconnects at least: {m:?}"
    );
    assert!(
        p.amqp.accepted() >= 3,
        "the consumer reconnected through the proxy"
    );
    w.stop(Duration::from_secs(10)).await;
    drop(h);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_cut_or_stalled_makes_the_worker_not_ready_and_loses_nothing() {
    let sb = sandbox("sup-redis", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let p = proxied(&sb).await;
    let w = Worker::start(p.cfg.clone()).await.unwrap();
    let h = Served::start(&w).await;
    let mb = mailbox("taro", c);
    h.readyz_becomes(200, Duration::from_secs(20), "a fresh worker")
        .await;
    sb.publish(&batch(c, "before", 3)).await.unwrap();
    synced(&sb, &mb, &titles("before", 3)).await;

    p.redis.cut();
    let took = h
        .readyz_becomes(503, Duration::from_secs(5), "Redis was cut")
        .await;
    assert_eq!(h.status("/healthz").await, 200);
    // Consumed during the outage: held unacked (staging fails) until Redis is back.
    sb.publish(&batch(c, "during-cut", 3)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.status("/readyz").await, 503);
    p.redis.restore();
    let back = h
        .readyz_becomes(200, Duration::from_secs(20), "Redis is back")
        .await;
    synced(&sb, &mb, &titles("during-cut", 3)).await;
    eprintln!("cut: not ready after {took:?}, ready again {back:?} after the restore");

    p.redis.stall();
    let took = h
        .readyz_becomes(
            503,
            Duration::from_secs(5),
            "Redis stalled (PING bounded to 1 s)",
        )
        .await;
    assert_eq!(h.status("/healthz").await, 200);
    sb.publish(&batch(c, "during-stall", 3)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.redis.restore();
    let back = h
        .readyz_becomes(200, Duration::from_secs(20), "Redis answers again")
        .await;
    sb.publish(&batch(c, "after", 3)).await.unwrap();
    eprintln!("stall: not ready after {took:?}, ready again {back:?} after the restore");

    let mut want: Vec<String> = ["before", "during-cut", "during-stall", "after"]
        .iter()
        .flat_map(|t| titles(t, 3))
        .collect();
    synced(&sb, &mb, &want).await;
    assert!(sb.wait_idle(SYNCED).await.unwrap(), "the pipeline drained");
    want.sort();
    assert_eq!(subjects(&sb, &mb), want, "every event once, none lost");
    assert_eq!(
        sb.queue_depth(&sb.cfg.amqp.dead_letter_queue)
            .await
            .unwrap(),
        0
    );
    w.stop(Duration::from_secs(10)).await;
    drop(h);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_while_redis_is_down_is_alive_not_ready_and_syncs_once_it_is_back() {
    let sb = sandbox("sup-start", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let p = proxied(&sb).await;
    p.redis.cut();
    let w = Worker::start(p.cfg.clone())
        .await
        .expect("an unreachable Redis does not stop a worker from starting");
    let h = Served::start(&w).await;
    assert_eq!(h.status("/healthz").await, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.status("/readyz").await, 503);
    sb.publish(&batch(c, "early", 3)).await.unwrap();
    p.redis.restore();
    h.readyz_becomes(200, Duration::from_secs(20), "Redis came up")
        .await;
    synced(&sb, &mailbox("taro", c), &titles("early", 3)).await;
    w.stop(Duration::from_secs(10)).await;
    drop(h);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_move_on_the_paths_they_describe() {
    let sb = sandbox("sup-metrics", Settings::default()).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[
            ("u-1", "taro", OK),
            ("u-2", "sachiko", MailboxKind::NoMailbox),
        ],
    )
    .await
    .unwrap();
    sb.emulator.emulator.script_fault(
        ScriptedFault::new(FaultKind::Throttle429 { retry_after: 1.0 })
            .method("POST")
            .path_contains("/events"),
    );
    let w = sb.worker().await.unwrap();
    let h = Served::start(&w).await;
    let s1 = Ev::created(c, "s-1").title("one").people("u-1", &[]).wire();
    sb.publish(&[
        s1.clone(),
        s1, // a duplicate
        Ev::created(c, "s-2")
            .title("two v1")
            .people("u-1", &[])
            .wire(),
        Ev::updated(c, "s-2", 3)
            .title("two v3")
            .people("u-1", &[])
            .wire(),
        Ev::updated(c, "s-2", 2)
            .title("two v2")
            .people("u-1", &[])
            .wire(), // stale
        Ev::created(c, "s-3")
            .title("three")
            .people("u-2", &[])
            .wire(), // no mailbox
    ])
    .await
    .unwrap();
    sb.publish_raw("not-json", "schedule.created", b"{oops")
        .await
        .unwrap();
    assert!(sb.wait_idle(SYNCED).await.unwrap(), "the pipeline drained");
    // The backlog gauges are refreshed by the next idle pass.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = h.metrics().await;
    let get = |k: &str| m.get(k).copied().unwrap_or(0.0);
    let s = |k: &str| sum(&m, k);

    assert_eq!(s("outlook_sync_events_consumed_total"), 7.0, "{m:#?}");
    assert_eq!(s("outlook_sync_events_invalid_total"), 1.0);
    assert!(s("outlook_sync_events_staged_total") >= 4.0);
    // Dropped by ingest when the batch itself held the revision, else by the flush.
    let dedup = |kind: &str, at: &str| {
        get(&format!(
            "outlook_sync_events_deduplicated_total{{kind=\"{kind}\",at=\"{at}\"}}"
        ))
    };
    assert_eq!(
        dedup("duplicate", "ingest") + dedup("duplicate", "flush"),
        1.0,
        "{m:#?}"
    );
    assert!(dedup("stale", "ingest") + dedup("stale", "flush") <= 1.0);
    assert_eq!(
        s("outlook_sync_events_staged_total")
            + dedup("duplicate", "ingest")
            + dedup("stale", "ingest")
            + s("outlook_sync_events_invalid_total"),
        7.0,
        "every delivery is staged (appended), dropped by ingest or invalid"
    );
    assert!(s("outlook_sync_schedules_flushed_total") >= 3.0);
    assert!(get("outlook_sync_graph_requests_total{status=\"429\"}") >= 1.0);
    assert!(s("outlook_sync_graph_throttled_total") >= 1.0);
    assert!(
        s("outlook_sync_retry_after_wait_seconds_total") >= 1.0,
        "waited the Retry-After of 1 s"
    );
    assert_eq!(
        get("outlook_sync_dead_letters_total{stage=\"ingest\",reason=\"malformed_json\"}")
            + get("outlook_sync_dead_letters_total{stage=\"ingest\",reason=\"not_json\"}"),
        s("outlook_sync_events_invalid_total"),
        "the invalid event is an ingest dead letter: {m:#?}"
    );
    let flush_dead: f64 = m
        .iter()
        .filter(|(k, _)| k.starts_with("outlook_sync_dead_letters_total{stage=\"flush\""))
        .map(|(_, v)| v)
        .sum();
    assert!(flush_dead >= 1.0, "sachiko has no mailbox: {m:#?}");
    assert!(
        get(&format!(
            "outlook_sync_company_failures_total{{company=\"{c}\",kind=\"mailbox\"}}"
        )) >= 1.0,
        "per-company failures: {m:#?}"
    );
    let writes = s("outlook_sync_graph_writes_total");
    assert!(writes >= 2.0);
    assert_eq!(
        get("outlook_sync_sync_latency_seconds_count"),
        writes,
        "one latency observation per write"
    );
    assert_eq!(get("outlook_sync_due_backlog"), 0.0);
    assert_eq!(get("outlook_sync_due_oldest_age_seconds"), 0.0);
    assert_eq!(get("outlook_sync_graph_requests_in_flight"), 0.0);
    assert_eq!(get("outlook_sync_graph_mailboxes_leased"), 0.0);
    let sends = get("outlook_sync_graph_mailbox_requests_in_flight_count");
    assert!(sends >= 1.0, "per-mailbox in-flight observed at each send");
    assert!(
        get("outlook_sync_graph_mailbox_requests_in_flight_bucket{le=\"4.0\"}") >= 1.0,
        "{m:#?}"
    );
    assert_eq!(get("outlook_sync_consumer_attached"), 1.0);
    assert_eq!(get("outlook_sync_redis_reachable"), 1.0);
    assert_eq!(s("outlook_sync_ingest_reconnects_total"), 0.0);
    // Bounded cardinality: no series is per mailbox or per schedule.
    for k in m.keys() {
        assert!(
            !k.contains("@") && !k.contains("s-1"),
            "a series names a mailbox or a schedule: {k}"
        );
    }
    w.stop(Duration::from_secs(10)).await;
    drop(h);
    sb.cleanup().await;
}

/// Runs the real binary (`outlook-sync run`, production logging: `log.format = "json"`) on a
/// sandbox, so the logs are exactly what a pod writes, through the global subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_company_schedule_and_mailbox_and_never_a_secret() {
    let sb = sandbox("logs", Settings::default()).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[
            ("u-1", "taro", OK),
            ("u-2", "hanako", OK),
            ("u-3", "sachiko", MailboxKind::NoMailbox),
        ],
    )
    .await
    .unwrap();
    let secret = sb
        .directory
        .company(c)
        .await
        .unwrap()
        .and_then(|co| co.credentials)
        .map(|cr| cr.client_secret.expose().to_string())
        .unwrap_or_default();
    assert!(!secret.is_empty(), "the test knows the secret it looks for");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = sb.cfg.clone();
    cfg.admin.listen = format!("127.0.0.1:{port}");
    cfg.admin.public_url = format!("http://127.0.0.1:{port}");
    cfg.log.format = outlook_sync::config::LogFormat::Json;
    cfg.log.filter = "info,outlook_sync=debug".into();
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
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 200)
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "outlook-sync run exited: {}",
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        );
        assert!(
            Instant::now() < deadline,
            "outlook-sync run never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sb.publish(&[
        Ev::created(c, "s-1")
            .title("one")
            .people("u-1", &["u-2"])
            .wire(),
        Ev::created(c, "s-2").title("two").people("u-3", &[]).wire(),
    ])
    .await
    .unwrap();
    for m in ["taro", "hanako"] {
        synced(&sb, &mailbox(m, c), &["one".to_string()]).await;
    }
    assert!(sb.wait_idle(SYNCED).await.unwrap(), "the pipeline drained");
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(40);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "outlook-sync run did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sb.cleanup().await;

    let text = std::fs::read_to_string(&stderr_path).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 5, "{text}");
    for l in &lines {
        assert!(l["timestamp"].is_string() && l["level"].is_string() && l["target"].is_string());
        assert!(l["message"].is_string(), "{l}");
    }
    let ours = |l: &&Value| {
        l["target"]
            .as_str()
            .unwrap_or("")
            .starts_with("outlook_sync")
    };
    // Each write: company, schedule, mailbox, revision and op, at the top level.
    let written: Vec<&Value> = lines
        .iter()
        .filter(ours)
        .filter(|l| l["message"] == "flush: copy written")
        .collect();
    assert_eq!(written.len(), 2, "taro's and hanako's copies: {text}");
    for l in &written {
        assert_eq!(l["company"], c, "{l}");
        assert_eq!(l["schedule"], "s-1", "{l}");
        assert!(l["mailbox"].as_str().unwrap().ends_with(".onmicrosoft.com"));
        assert!(l["revision"].is_u64() && l["op"] == "create", "{l}");
    }
    let dead: Vec<&Value> = lines
        .iter()
        .filter(ours)
        .filter(|l| l["message"] == "flush: change dead-lettered")
        .collect();
    assert_eq!(dead.len(), 1, "sachiko's copy: {text}");
    assert_eq!(dead[0]["company"], c);
    assert_eq!(dead[0]["schedule"], "s-2");
    assert_eq!(dead[0]["mailbox"], mailbox("sachiko", c));
    // Every flush line about a schedule or a mailbox names its company too.
    for l in lines.iter().filter(ours) {
        let flush = l["message"].as_str().unwrap_or("").starts_with("flush:");
        if flush && (l.get("mailbox").is_some() || l.get("schedule").is_some()) {
            assert_eq!(l["company"], c, "{l}");
        }
    }
    // No secret anywhere: not the client secret, no token, no password.
    assert!(
        !text.contains(&secret),
        "a log line holds the client secret"
    );
    for l in &lines {
        let s = l.to_string();
        assert!(!s.contains("eyJ"), "a log line holds a token: {s}");
        assert!(!s.contains("Bearer "), "a log line holds a token: {s}");
        assert!(!s.contains(":guest@"), "a log line holds a password: {s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_work_queue_declared_with_other_arguments_stops_ingest_once_naming_the_argument_and_the_fix()
 {
    outlook_sync::install_crypto_provider();
    let mut cfg = crate::support::config("inequivalent");
    // Someone declared the work queue by hand with another delivery limit.
    let conn = crate::support::rabbitmq().await;
    let ch = conn.create_channel().await.unwrap();
    // Everything as the worker declares it, but the delivery limit.
    let mut topology = outlook_sync::amqp::Topology::new(&cfg.amqp);
    topology.delivery_limit = 99;
    let args = topology.work_queue_arguments();
    ch.queue_declare(
        cfg.amqp.queue.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    cfg.amqp.delivery_limit = 5;
    let w = Worker::start(cfg.clone()).await.unwrap();
    let mut fatal = w.fatal();
    let why = tokio::time::timeout(Duration::from_secs(20), fatal.wait_for(Option::is_some))
        .await
        .expect("ingest kept retrying instead of stopping")
        .unwrap()
        .clone()
        .unwrap();
    for words in [
        "x-delivery-limit",
        "5",
        "99",
        "amqp.delivery_limit",
        "delete_queue",
        cfg.amqp.queue.as_str(),
    ] {
        assert!(why.contains(words), "{words:?} missing from: {why}");
    }
    assert!(!*w.ingest.ready().borrow(), "a stopped ingest is not ready");
    w.stop(Duration::from_secs(5)).await;
    let _ = conn.close(200, "bye".into()).await;
    crate::support::cleanup_amqp(&cfg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_or_rabbitmq_is_named_with_its_address_from_the_first_failure() {
    // Nothing listens on this port.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let at = format!("127.0.0.1:{closed}");
    // Redis away: every line about it says Redis and where (the password hidden).
    let mut cfg = crate::support::config("unreachable-redis");
    cfg.redis.url = format!("redis://:s3cret-pw@{at}/");
    let logs = run_for(&cfg, Duration::from_secs(8)).await;
    assert!(
        logs.lines().any(|l| l.contains("Redis") && l.contains(&at)),
        "no line names Redis and its address:\n{logs}"
    );
    assert!(
        !logs.contains("s3cret-pw"),
        "a password was logged:\n{logs}"
    );
    // RabbitMQ away (Redis there): it says it cannot reach RabbitMQ, not that a consumer it never
    // had was lost.
    let mut cfg = crate::support::config("unreachable-rabbitmq");
    cfg.amqp.url = format!("amqp://guest:guest@{at}/%2f");
    let logs = run_for(&cfg, Duration::from_secs(6)).await;
    assert!(
        logs.lines()
            .any(|l| l.contains("RabbitMQ cannot be reached") && l.contains(&at)),
        "no line names RabbitMQ and its address:\n{logs}"
    );
    assert!(
        !logs.contains("consumer was lost"),
        "it never had a consumer:\n{logs}"
    );
}

/// Runs `outlook-sync run` on `cfg` (text logs at info) for `how_long`; its log.
async fn run_for(cfg: &Config, how_long: Duration) -> String {
    let mut cfg = cfg.clone();
    cfg.admin.listen = "127.0.0.1:0".into();
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
        .unwrap();
    tokio::time::sleep(how_long).await;
    let _ = child.kill();
    let _ = child.wait();
    std::fs::read_to_string(&stderr_path).unwrap()
}
