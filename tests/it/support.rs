//! Shared test plumbing: the real services (failing loudly when one is absent), unique names so
//! tests run in parallel, and a config pointing at both.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outlook_sync::config::Config;

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const REDIS_URL: &str = "redis://127.0.0.1:6379/";

/// A name no other test (or earlier run) uses: `{prefix}-{pid}-{n}-{random}`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "t-{prefix}-{}-{}-{:06x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Connects to the local RabbitMQ or fails the test saying it is absent and how to start it.
pub async fn rabbitmq() -> lapin::Connection {
    outlook_sync::install_crypto_provider();
    match tokio::time::timeout(
        Duration::from_secs(10),
        outlook_sync::amqp::connect(AMQP_URL, "outlook-sync tests"),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!(
            "this test needs RabbitMQ at 127.0.0.1:5672 (guest/guest) and it is absent: {e}. \
             Start it with `rabbitmq-server -detached`."
        ),
        Err(_) => panic!("this test needs RabbitMQ at 127.0.0.1:5672: connecting timed out"),
    }
}

#[allow(dead_code)] // used by the pipeline tests
/// Connects to the local Redis or fails the test saying it is absent and how to start it.
pub async fn redis() -> outlook_sync::store::Redis {
    let client = redis::Client::open(REDIS_URL).expect("redis url");
    match tokio::time::timeout(Duration::from_secs(10), client.get_connection_manager()).await {
        Ok(Ok(c)) => c.into(),
        Ok(Err(e)) => panic!(
            "this test needs Redis at 127.0.0.1:6379 and it is absent: {e}. Start it with \
             `redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no`."
        ),
        Err(_) => panic!("this test needs Redis at 127.0.0.1:6379: connecting timed out"),
    }
}

/// A configuration with its own queue names and key prefix.
pub fn config(name: &str) -> Config {
    let mut cfg = Config::default();
    let id = unique(name);
    cfg.amqp.url = AMQP_URL.into();
    cfg.amqp.exchange = format!("{id}.x");
    cfg.amqp.queue = format!("{id}.work");
    cfg.amqp.dead_letter_exchange = format!("{id}.dlx");
    cfg.amqp.dead_letter_queue = format!("{id}.dead");
    cfg.redis.url = REDIS_URL.into();
    cfg.redis.key_prefix = id;
    cfg
}

/// Deletes a test's queues and exchanges (best effort).
pub async fn cleanup_amqp(cfg: &Config) {
    let Ok(conn) = outlook_sync::amqp::connect(AMQP_URL, "cleanup").await else {
        return;
    };
    if let Ok(ch) = conn.create_channel().await {
        for q in [&cfg.amqp.queue, &cfg.amqp.dead_letter_queue] {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        for x in [&cfg.amqp.exchange, &cfg.amqp.dead_letter_exchange] {
            let _ = ch
                .exchange_delete(x.as_str().into(), Default::default())
                .await;
        }
    }
    let _ = conn.close(200, "bye".into()).await;
}

pub fn repo_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A sandbox with one-second windows, or a test failure naming the missing service.
pub async fn sandbox(
    name: &str,
    settings: graph_emulator::Settings,
) -> outlook_sync::demo::Sandbox {
    match outlook_sync::demo::Sandbox::start(name, 1, settings).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    }
}

/// A sandbox user's mailbox address (`Sandbox::company` names them so).
pub fn mailbox(local: &str, company: &str) -> String {
    format!("{local}@{company}.onmicrosoft.com")
}

/// The subjects of a mailbox's events in the emulator, sorted.
pub fn subjects(sb: &outlook_sync::demo::Sandbox, mailbox: &str) -> Vec<String> {
    let mut s: Vec<String> = sb
        .emulator
        .emulator
        .calendar(mailbox)
        .iter()
        .map(|e| e["subject"].as_str().unwrap_or_default().to_string())
        .collect();
    s.sort();
    s
}
