//! Redis as production runs it, each test against `redis-server` processes of its own on free
//! ports: TLS only (`rediss://`, a CA the test makes), a primary and replica followed through a
//! sentinel while it fails over, a 3-primary Redis Cluster. Each runs the pipeline through waves of
//! creates, updates and deletes and checks every mailbox against the latest state.

use std::time::Duration;

use outlook_sync::config::Config;
use outlook_sync::demo::Sandbox;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::faults::{Book, add_company, dead_letters, impatient, sandbox, settle};
use crate::redis_servers::{Certs, ClusterSet, RedisProcess, SentinelSet, free_port, wait_ping};

/// Points the sandbox at `cfg_redis` (its URL and CA) and reconnects everything that holds Redis
/// (the directory is in PostgreSQL: it stays).
async fn use_redis(sb: &mut Sandbox, url: String, ca: &str) {
    sb.cfg.redis.url = url;
    sb.cfg.redis.tls_ca_file = ca.to_string();
    sb.cfg
        .validate()
        .expect("the test's Redis configuration is valid");
    impatient(&mut sb.cfg);
    sb.redis = outlook_sync::store::connect(&sb.cfg).await.unwrap();
}

/// Publishes `rounds` waves (with `between` run after each), then waits for the mailboxes to
/// match the book and asserts nothing was lost, duplicated or left stale, and no dead letter.
async fn converge(sb: &Sandbox, seed: u64, rounds: usize, mut between: impl FnMut(usize)) {
    let worker = sb.worker().await.unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut book = Book::default();
    for round in 0..rounds {
        let wave = book.wave(&mut rng, &format!("wave {round}"), 6, 6);
        sb.publish(&wave).await.unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        between(round);
    }
    settle(sb, &book, Duration::from_secs(60)).await;
    let (lost, dup, stale, extra, problems) = book.check(|m| sb.emulator.emulator.calendar(m));
    assert!(
        problems.is_empty(),
        "lost={lost} duplicated={dup} stale={stale} extra={extra}: {problems:#?}\n{}",
        worker.metrics.render()
    );
    assert_eq!(dead_letters(sb).await, 0, "a dead letter");
    worker.stop(Duration::from_secs(5)).await;
}

struct TlsRedis {
    certs: Certs,
    port: u16,
    _server: RedisProcess,
    _dir: tempfile::TempDir,
}

async fn tls_redis() -> TlsRedis {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::make(dir.path());
    let port = free_port();
    let server = RedisProcess::spawn(dir.path(), &certs.server_args(port));
    let client = redis::Client::build_with_tls(
        format!("rediss://localhost:{port}/"),
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(certs.file("ca.pem")).unwrap()),
        },
    )
    .unwrap();
    wait_ping(&client, "redis-server with --tls-port").await;
    TlsRedis {
        certs,
        port,
        _server: server,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_the_pipeline_over_tls_to_a_redis_that_speaks_only_tls() {
    outlook_sync::install_crypto_provider();
    let tls = tls_redis().await;
    let mut sb = sandbox("topology-tls").await;
    let url = format!("rediss://localhost:{}/", tls.port);
    use_redis(&mut sb, url.clone(), &tls.certs.file("ca.pem")).await;
    // The server has no plain port: what the worker does, it does over TLS.
    let plain = redis::Client::open(format!("redis://localhost:{}/", tls.port)).unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(3), async {
            let mut c = plain.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map_or(true, |r| r.is_err()),
        "the test's Redis answered without TLS"
    );
    add_company(&sb).await;
    converge(&sb, 18, 3, |_| {}).await;
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_certificate_from_an_unknown_ca_or_for_another_host_is_refused_saying_what_to_fix()
{
    outlook_sync::install_crypto_provider();
    let tls = tls_redis().await;
    let mut cfg = Config::default();
    cfg.redis.response_timeout_ms = 1_000;

    cfg.redis.url = format!("rediss://localhost:{}/", tls.port);
    cfg.redis.tls_ca_file = tls.certs.file("other-ca.pem");
    cfg.validate().unwrap();
    let e = outlook_sync::store::connect(&cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("not signed by a CA this worker trusts")
            && e.contains("redis.tls_ca_file")
            && e.contains("other-ca.pem"),
        "{e}"
    );

    // The certificate is for `localhost`, not for 127.0.0.1.
    cfg.redis.url = format!("rediss://127.0.0.1:{}/", tls.port);
    cfg.redis.tls_ca_file = tls.certs.file("ca.pem");
    let e = outlook_sync::store::connect(&cfg)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not for the host redis.url names"), "{e}");

    // The right CA and the right name connect.
    cfg.redis.url = format!("rediss://localhost:{}/", tls.port);
    let mut r = outlook_sync::store::connect(&cfg).await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut r).await.unwrap();
    assert_eq!(pong, "PONG");
}

/// Waits until the sentinel names another primary than `old`.
async fn switched(set: &SentinelSet, old: u16) -> u16 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = set.primary_now().filter(|p| *p != old) {
            return p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sentinel never switched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_follows_a_sentinel_failover_mid_history_and_every_mailbox_converges() {
    let set = SentinelSet::start().await;
    let mut sb = sandbox("topology-sentinel").await;
    use_redis(&mut sb, set.url(), "").await;
    add_company(&sb).await;
    let old = set.primary_port;
    converge(&sb, 41, 5, |round| {
        if round == 1 {
            set.failover();
        }
    })
    .await;
    assert_eq!(
        switched(&set, old).await,
        set.replica_port,
        "the replica was promoted"
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_follows_the_replica_promoted_when_the_primary_is_killed_and_loses_nothing_acked()
{
    let mut set = SentinelSet::start().await;
    let mut sb = sandbox("topology-sentinel-kill").await;
    // Staging waits for the replica (WAIT 1), so what was acked survives the primary's death.
    sb.cfg.redis.wait_replicas = 1;
    sb.cfg.redis.wait_timeout_ms = 200;
    use_redis(&mut sb, set.url(), "").await;
    add_company(&sb).await;
    let old = set.primary_port;
    let mut killed = false;
    converge(&sb, 43, 5, |round| {
        if round == 1 {
            set.primary.kill();
            killed = true;
        }
    })
    .await;
    assert!(killed);
    assert_eq!(
        switched(&set, old).await,
        set.replica_port,
        "the replica was promoted"
    );
    sb.cleanup().await;
}

/// With `redis.wait_replicas = 1`, a batch is on the replica when staging returns (so it is
/// acked only then); prints what WAIT costs per batch against staging without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_staged_with_wait_replicas_is_on_the_replica_when_staging_returns() {
    use outlook_sync::demo::Ev;
    use outlook_sync::window::{Staging, Windows};
    let set = SentinelSet::start().await;
    let mut cfg = crate::support::config("topology-wait");
    cfg.redis.url = set.url();
    let redis = outlook_sync::store::connect(&cfg).await.unwrap();
    let keys = outlook_sync::store::keys(&cfg);
    let plain = Windows::new(redis.clone(), keys.clone(), Duration::from_secs(300));
    let waiting = plain.clone().replicated(1, Duration::from_millis(1000));
    let replica = redis::Client::open(format!("redis://127.0.0.1:{}/", set.replica_port)).unwrap();
    let mut replica = replica.get_multiplexed_async_connection().await.unwrap();
    let (batches, size) = (100, 100);
    let mut took = [Duration::ZERO; 2];
    for round in 0..batches {
        for (i, windows) in [&plain, &waiting].into_iter().enumerate() {
            let bodies: Vec<Vec<u8>> = (0..size)
                .map(|k| {
                    let s = format!("s-{i}-{round}-{k}");
                    serde_json::to_vec(&Ev::created("acme", &s).people("u-1", &[]).wire()).unwrap()
                })
                .collect();
            let events: Vec<_> = bodies
                .iter()
                .map(|b| outlook_sync::event::decode(b).unwrap())
                .collect();
            let batch: Vec<Staging<'_>> = events
                .iter()
                .zip(&bodies)
                .map(|(e, b)| Staging::new(e, b))
                .collect();
            let t = std::time::Instant::now();
            windows.stage(&batch).await.unwrap();
            took[i] += t.elapsed();
            if i == 1 {
                let last =
                    outlook_sync::store::Member::new("acme", format!("s-1-{round}-{}", size - 1));
                // Ingest appends each event to the schedule's pending record.
                let on_replica: bool = redis::cmd("EXISTS")
                    .arg(keys.pending(&last))
                    .query_async(&mut replica)
                    .await
                    .unwrap();
                assert!(on_replica, "batch {round} acked before the replica had it");
            }
        }
    }
    let per = |d: Duration| d.as_secs_f64() * 1e3 / batches as f64;
    println!(
        "RELIABILITY wait_replicas batches={batches} events_per_batch={size} \
         staging_ms_per_batch={:.3} with_wait_1_ms_per_batch={:.3}",
        per(took[0]),
        per(took[1])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_runs_the_pipeline_on_a_three_primary_cluster_with_claims_spread_over_every_primary()
 {
    let cluster = ClusterSet::start().await;
    let mut sb = sandbox("topology-cluster").await;
    sb.cfg.redis.shards = 3;
    use_redis(&mut sb, cluster.url(), "").await;
    add_company(&sb).await;
    // Each shard's due set and claims live on a primary of their own.
    let keys = outlook_sync::store::keys(&sb.cfg);
    let mut r = sb.redis.clone();
    let mut owners = std::collections::BTreeSet::new();
    for shard in 0..3 {
        let _: () = redis::cmd("ZADD")
            .arg(keys.due_in(shard))
            .arg(i64::MAX)
            .arg("probe/probe")
            .query_async(&mut r)
            .await
            .unwrap();
        owners.insert(owner_of(&mut r, &keys.due_in(shard)).await);
        let _: () = redis::cmd("ZREM")
            .arg(keys.due_in(shard))
            .arg("probe/probe")
            .query_async(&mut r)
            .await
            .unwrap();
    }
    assert_eq!(owners.len(), 3, "the shards' slots are on {owners:?}");
    converge(&sb, 47, 4, |_| {}).await;
    let per_node = cluster.keys_per_node();
    assert!(
        per_node.iter().all(|n| *n > 0),
        "keys per node: {per_node:?}"
    );
    sb.cleanup().await;
}

/// The port of the primary that serves `key`'s hash slot (`CLUSTER SLOTS`).
async fn owner_of(r: &mut outlook_sync::store::Redis, key: &str) -> u16 {
    let slot = outlook_sync::store::keys::hash_slot(key);
    let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(r)
        .await
        .unwrap();
    let owner = ranges.iter().find_map(|range| {
        let redis::Value::Array(v) = range else {
            return None;
        };
        let lo: u16 = redis::from_redis_value(v[0].clone()).ok()?;
        let hi: u16 = redis::from_redis_value(v[1].clone()).ok()?;
        let redis::Value::Array(primary) = &v[2] else {
            return None;
        };
        let port: u16 = redis::from_redis_value(primary[1].clone()).ok()?;
        (lo..=hi).contains(&slot).then_some(port)
    });
    owner.expect("a primary serves the slot")
}

/// The cluster has no replicas, so a primary is restarted, not failed over: SIGTERM (its AOF
/// written out), down for 2 s while the pipeline keeps running (the worker's commands to it
/// fail and are retried, ingest holds its batch unacked), then started again from its AOF and
/// `nodes-PORT.conf`. Nothing acked is lost, and every mailbox converges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_primary_restarted_mid_history_loses_nothing_acked_and_every_mailbox_converges() {
    let cluster = ClusterSet::start().await;
    let mut sb = sandbox("topology-cluster-restart").await;
    sb.cfg.redis.shards = 3;
    use_redis(&mut sb, cluster.url(), "").await;
    add_company(&sb).await;
    // The primary of shard 0's due set and claims: the flush's own state goes down with it.
    let keys = outlook_sync::store::keys(&sb.cfg);
    let port = owner_of(&mut sb.redis.clone(), &keys.due_in(0)).await;
    let node = cluster.ports.iter().position(|p| *p == port).unwrap();
    let cluster = std::sync::Arc::new(std::sync::Mutex::new(cluster));
    let mut restart = None;
    converge(&sb, 53, 5, |round| {
        if round == 1 {
            let c = cluster.clone();
            restart = Some(std::thread::spawn(move || {
                c.lock().unwrap().restart(node, Duration::from_secs(2));
            }));
        }
    })
    .await;
    restart
        .expect("the primary was restarted")
        .join()
        .expect("the primary came back and the cluster reported ok");
    sb.cleanup().await;
}
