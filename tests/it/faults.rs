//! Faults below the pipeline: a worker whose links to RabbitMQ, Redis and Graph run through a
//! TCP proxy the test controls (cuts and stalls), and a worker whose Redis is a dedicated
//! `redis-server` with AOF that is killed and started again on the same port and directory.
//! Each test publishes waves of creates, updates and deletes around the faults, lets the worker
//! recover by itself (nothing restarts it), and checks every mailbox against the latest state:
//! nothing lost, nothing duplicated, no dead letter.
//!
//! With `--nocapture`, each prints a `RELIABILITY faults …` line (scripts/reliability.sh).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use graph_emulator::{MailboxKind, Settings};
use outlook_sync::config::Config;
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::event::WireEvent;
use outlook_sync::graph::mapping::{TAG_PROPERTY_ID, parse_tag};
use outlook_sync::tenants::{Directory, Plan};
use outlook_sync::worker::Worker;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::proxy::Proxy;

const COMPANY: &str = "acme";
const USERS: [(&str, &str); 2] = [("u-1", "taro"), ("u-2", "hanako")];

fn mailbox(local: &str) -> String {
    format!("{local}@{COMPANY}.onmicrosoft.com")
}

/// The schedules of a test and the latest revision of each: what the mailboxes must show.
#[derive(Default)]
pub(crate) struct Book {
    pub(crate) latest: BTreeMap<String, (u64, Option<String>)>,
    pub(crate) events: usize,
}

impl Book {
    /// A wave: `new` creates, updates of up to `updates` live schedules, and one delete.
    pub(crate) fn wave(
        &mut self,
        rng: &mut StdRng,
        tag: &str,
        new: usize,
        updates: usize,
    ) -> Vec<WireEvent> {
        let mut out = Vec::new();
        let live: Vec<String> = self
            .latest
            .iter()
            .filter(|(_, (_, t))| t.is_some())
            .map(|(s, _)| s.clone())
            .collect();
        for s in live.choose_multiple(rng, updates) {
            let rev = self.latest[s].0 + 1;
            let title = format!("{s} r{rev} ({tag})");
            out.push(
                Ev::updated(COMPANY, s, rev)
                    .title(&title)
                    .people("u-1", &["u-2"])
                    .wire(),
            );
            self.latest.insert(s.clone(), (rev, Some(title)));
        }
        let delete = rng.random_bool(0.7);
        if let Some(s) = live.choose(rng).filter(|_| delete) {
            let rev = self.latest[s].0 + 1;
            if !out.iter().any(|e| &e.schedule_id == s) {
                out.push(Ev::deleted(COMPANY, s, rev).wire());
                self.latest.insert(s.clone(), (rev, None));
            }
        }
        for _ in 0..new {
            let s = format!("s-{}", self.latest.len() + 1);
            let title = format!("{s} r1 ({tag})");
            out.push(
                Ev::created(COMPANY, &s)
                    .title(&title)
                    .people("u-1", &["u-2"])
                    .wire(),
            );
            self.latest.insert(s, (1, Some(title)));
        }
        self.events += out.len();
        out
    }

    /// (lost, duplicated, stale, extra, problems) over both mailboxes.
    pub(crate) fn check(
        &self,
        calendar: impl Fn(&str) -> Vec<Value>,
    ) -> (usize, usize, usize, usize, Vec<String>) {
        let (mut lost, mut dup, mut stale, mut extra) = (0, 0, 0, 0);
        let mut problems = Vec::new();
        for (_, local) in USERS {
            let mb = mailbox(local);
            let mut have: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for e in calendar(&mb) {
                let tag = e["singleValueExtendedProperties"]
                    .as_array()
                    .and_then(|a| {
                        a.iter().find(|p| {
                            p["id"]
                                .as_str()
                                .is_some_and(|i| i.eq_ignore_ascii_case(TAG_PROPERTY_ID))
                        })
                    })
                    .and_then(|p| parse_tag(p["value"].as_str()?));
                let subject = e["subject"].as_str().unwrap_or_default().to_string();
                match tag {
                    Some((_, s)) => have.entry(s).or_default().push(subject),
                    None => {
                        extra += 1;
                        problems.push(format!("{mb}: untagged {e}"));
                    }
                }
            }
            for (s, (_, want)) in &self.latest {
                match (want, have.get(s)) {
                    (Some(w), None) => {
                        lost += 1;
                        problems.push(format!("{mb}: {s} missing (want {w:?})"));
                    }
                    (Some(w), Some(got)) => {
                        dup += got.len() - 1;
                        stale += got.iter().filter(|g| *g != w).count();
                        if got.len() != 1 || &got[0] != w {
                            problems.push(format!("{mb}: {s} is {got:?}, want [{w:?}]"));
                        }
                    }
                    (None, Some(got)) => {
                        extra += got.len();
                        problems.push(format!("{mb}: deleted {s} still there: {got:?}"));
                    }
                    (None, None) => {}
                }
            }
        }
        (lost, dup, stale, extra, problems)
    }
}

pub(crate) async fn sandbox(name: &str) -> Sandbox {
    match Sandbox::start(name, 1, Settings::default()).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    }
}

pub(crate) async fn add_company(sb: &Sandbox) {
    let users: Vec<_> = USERS
        .iter()
        .map(|(u, l)| (*u, *l, MailboxKind::Ok))
        .collect();
    sb.company(COMPANY, Plan::Standard, &users).await.unwrap();
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn port_of(url: &str) -> u16 {
    url::Url::parse(url)
        .unwrap()
        .port_or_known_default()
        .expect("a port")
}

/// Timeouts short enough that a stalled link is noticed within seconds.
pub(crate) fn impatient(cfg: &mut Config) {
    cfg.amqp.heartbeat_seconds = 2;
    cfg.redis.response_timeout_ms = 1_000;
    cfg.graph.request_timeout_ms = 2_000;
    cfg.retry.max_backoff_ms = 1_000;
}

/// Waits until the mailboxes match the book and the pipeline is idle (a batch held unacked while
/// Redis is down looks idle from outside, so idleness alone is not enough), or `limit` passes.
pub(crate) async fn settle(sb: &Sandbox, book: &Book, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        // The test's own connection to a restarted Redis may fail once before it reconnects.
        let idle = sb.wait_idle(Duration::from_secs(5)).await.unwrap_or(false);
        if idle
            && book
                .check(|m| sb.emulator.emulator.calendar(m))
                .4
                .is_empty()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(crate) async fn dead_letters(sb: &Sandbox) -> u32 {
    sb.queue_depth(&sb.cfg.amqp.dead_letter_queue)
        .await
        .unwrap()
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    Cut,
    Stall,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_stalled_links_to_rabbitmq_redis_and_graph_lose_and_duplicate_nothing() {
    let sb = sandbox("faults-proxy").await;
    add_company(&sb).await;
    let rabbit = Proxy::start(loopback(port_of(&sb.cfg.amqp.url))).await;
    let redis = Proxy::start(loopback(port_of(&sb.cfg.redis.url))).await;
    let graph = Proxy::start(sb.emulator.addr).await;
    let mut cfg = sb.cfg.clone();
    cfg.amqp.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", rabbit.port());
    cfg.redis.url = format!("redis://127.0.0.1:{}/", redis.port());
    cfg.graph.base_url = format!("http://127.0.0.1:{}/v1.0", graph.port());
    cfg.graph.login_url = format!("http://127.0.0.1:{}", graph.port());
    impatient(&mut cfg);
    let worker = Worker::start(cfg).await.unwrap();

    let mut rng = StdRng::seed_from_u64(9);
    let mut book = Book::default();
    let links: [(&str, &Proxy); 3] = [("rabbitmq", &rabbit), ("redis", &redis), ("graph", &graph)];
    // Every link is cut and stalled, then all three at once; each outage lasts a few seconds
    // while a wave of changes is in flight.
    let plan: Vec<(Vec<usize>, Fault, Duration)> = vec![
        (vec![0], Fault::Cut, Duration::from_secs(2)),
        (vec![1], Fault::Cut, Duration::from_secs(2)),
        (vec![2], Fault::Cut, Duration::from_secs(2)),
        (vec![0], Fault::Stall, Duration::from_secs(6)),
        (vec![1], Fault::Stall, Duration::from_secs(3)),
        (vec![2], Fault::Stall, Duration::from_secs(3)),
        (vec![0, 1, 2], Fault::Cut, Duration::from_secs(3)),
    ];
    let mut injected = Vec::new();
    let started = Instant::now();
    for (round, (which, fault, lasts)) in plan.iter().enumerate() {
        let wave = book.wave(&mut rng, &format!("wave {round}"), 6, 6);
        sb.publish(&wave).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..900))).await;
        let before: Vec<usize> = which.iter().map(|i| links[*i].1.accepted()).collect();
        for i in which {
            match fault {
                Fault::Cut => links[*i].1.cut(),
                Fault::Stall => links[*i].1.stall(),
            }
        }
        // Changes published during the outage too: they wait in RabbitMQ.
        let during = book.wave(&mut rng, &format!("during {round}"), 3, 3);
        sb.publish(&during).await.unwrap();
        tokio::time::sleep(*lasts).await;
        for i in which {
            links[*i].1.restore();
        }
        let names: Vec<&str> = which.iter().map(|i| links[*i].0).collect();
        injected.push(format!("{fault:?} {} {lasts:?}", names.join("+")));
        // The worker reconnects by itself: new connections arrive through the proxy (a stall
        // that no timeout noticed may resume on the old ones, which is fine too).
        if matches!(fault, Fault::Cut) {
            let deadline = Instant::now() + Duration::from_secs(20);
            for (k, i) in which.iter().enumerate() {
                while links[*i].1.accepted() <= before[k] {
                    assert!(
                        Instant::now() < deadline,
                        "the worker never reconnected to {} after the cut",
                        links[*i].0
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let recovering = Instant::now();
    settle(&sb, &book, Duration::from_secs(60)).await;
    let recovered = recovering.elapsed();
    let (lost, dup, stale, extra, problems) = book.check(|m| sb.emulator.emulator.calendar(m));
    let dl = dead_letters(&sb).await;
    println!(
        "RELIABILITY faults_proxy injected=\"{}\" events={} schedules={} lost={lost} \
         duplicated={dup} stale={stale} extra={extra} dead_letters={dl} reconnects_rabbitmq={} \
         reconnects_redis={} reconnects_graph={} settled_after_last_fault_s={:.1} elapsed_s={:.1}",
        injected.join(", "),
        book.events,
        book.latest.len(),
        rabbit.accepted().saturating_sub(1),
        redis.accepted().saturating_sub(1),
        graph.accepted().saturating_sub(1),
        recovered.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "not settled within 60 s: {problems:#?}\n{}",
        worker.metrics.render()
    );
    assert_eq!(dl, 0, "a fault below the pipeline made a dead letter");
    assert!(
        *worker.ingest.ready().borrow(),
        "the consumer is attached again"
    );
    worker.stop(Duration::from_secs(5)).await;
    drop((rabbit, redis, graph));
    sb.cleanup().await;
}

/// A `redis-server` of the test's own, on a free port, with production's persistence
/// (deploy/redis/redis.conf: AOF, `appendfsync everysec`) in `dir`; killed when dropped.
struct DedicatedRedis {
    port: u16,
    child: std::process::Child,
}

impl DedicatedRedis {
    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    async fn start(port: u16, dir: &Path) -> DedicatedRedis {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", "", "--protected-mode", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test needs redis-server on the PATH (Debian: redis-server): {e}")
            });
        let r = DedicatedRedis { port, child };
        let client = redis::Client::open(r.url()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut c)
                    .await
                    .is_ok()
            {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server on port {port} did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL: the process crashes; what it wrote to its AOF is in the kernel's page cache.
    fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: Redis's own orderly shutdown.
    fn shutdown(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for DedicatedRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_redis_killed_and_restarted_with_aof_loses_nothing_that_was_acked() {
    let dir = tempfile::tempdir().unwrap();
    let port = DedicatedRedis::free_port();
    let mut server = Some(DedicatedRedis::start(port, dir.path()).await);
    let mut sb = sandbox("faults-redis").await;
    // The whole sandbox (directory, staging, mappings) lives in the dedicated Redis.
    sb.cfg.redis.url = server.as_ref().unwrap().url();
    impatient(&mut sb.cfg);
    sb.redis = outlook_sync::store::connect(&sb.cfg).await.unwrap();
    sb.directory = Directory::from_config(&sb.cfg);
    add_company(&sb).await;
    let worker = sb.worker().await.unwrap();

    let mut rng = StdRng::seed_from_u64(11);
    let mut book = Book::default();
    let started = Instant::now();
    let mut restarts = Vec::new();
    for round in 0..4 {
        let wave = book.wave(&mut rng, &format!("wave {round}"), 8, 8);
        sb.publish(&wave).await.unwrap();
        // Stop Redis while the wave is being staged and flushed.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..1500))).await;
        let s = server.take().unwrap();
        if round % 2 == 0 {
            s.crash();
            restarts.push("SIGKILL");
        } else {
            s.shutdown();
            restarts.push("SIGTERM");
        }
        let during = book.wave(&mut rng, &format!("down {round}"), 3, 3);
        sb.publish(&during).await.unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(500..2500))).await;
        server = Some(DedicatedRedis::start(port, dir.path()).await);
    }
    let recovering = Instant::now();
    settle(&sb, &book, Duration::from_secs(60)).await;
    let recovered = recovering.elapsed();
    let (lost, dup, stale, extra, problems) = book.check(|m| sb.emulator.emulator.calendar(m));
    let dl = dead_letters(&sb).await;
    println!(
        "RELIABILITY faults_redis_restart restarts=\"{}\" appendfsync=everysec events={} \
         schedules={} lost={lost} duplicated={dup} stale={stale} extra={extra} dead_letters={dl} \
         settled_after_last_restart_s={:.1} elapsed_s={:.1}",
        restarts.join(", "),
        book.events,
        book.latest.len(),
        recovered.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        problems.is_empty(),
        "not settled within 60 s: {problems:#?}\n{}",
        worker.metrics.render()
    );
    assert_eq!(dl, 0, "a Redis restart made a dead letter");
    let aof: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        aof.iter().any(|f| f.contains("appendonly")),
        "AOF files in {aof:?}"
    );
    worker.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
    drop(server);
}

#[test]
fn the_book_finds_lost_duplicated_stale_and_extra_copies() {
    let mut rng = StdRng::seed_from_u64(1);
    let mut book = Book::default();
    let first = book.wave(&mut rng, "a", 3, 0);
    assert_eq!(first.len(), 3);
    let second = book.wave(&mut rng, "b", 1, 2);
    assert!(
        second
            .iter()
            .all(|e| e.revision == book.latest[&e.schedule_id].0),
        "each wave moves its schedules to a newer revision"
    );
    assert_eq!(book.events, first.len() + second.len());
    let copy = |s: &str, subject: &str| {
        serde_json::json!({
            "subject": subject,
            "singleValueExtendedProperties": [{
                "id": TAG_PROPERTY_ID,
                "value": outlook_sync::graph::mapping::tag_value(COMPANY, s)
            }]
        })
    };
    let exact = |_: &str| -> Vec<Value> {
        book.latest
            .iter()
            .filter_map(|(s, (_, t))| Some(copy(s, t.as_deref()?)))
            .collect()
    };
    let (lost, dup, stale, extra, problems) = book.check(exact);
    assert_eq!((lost, dup, stale, extra), (0, 0, 0, 0), "{problems:?}");
    let live = book.latest.values().filter(|(_, t)| t.is_some()).count();
    assert_eq!(book.check(|_| vec![]).0, 2 * live, "everything lost");
    let doubled = |m: &str| [exact(m), exact(m)].concat();
    assert_eq!(book.check(doubled).1, 2 * live, "everything duplicated");
    let renamed = |m: &str| {
        let mut v = exact(m);
        v[0]["subject"] = "an older title".into();
        v
    };
    assert_eq!(book.check(renamed).2, 2, "one stale copy per mailbox");
    if let Some((gone, _)) = book.latest.iter().find(|(_, (_, t))| t.is_none()) {
        let resurrected = |m: &str| [exact(m), vec![copy(gone, "x")]].concat();
        assert_eq!(
            book.check(resurrected).3,
            2,
            "a deleted schedule still shown"
        );
    }
}
