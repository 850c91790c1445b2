//! The directory in PostgreSQL: migrations, every statement against the migrated schema, the
//! workers' cache (changes reach a running worker within seconds), outages (cached companies
//! keep syncing, admin writes answer 503, nothing written twice), the audit, the import from an
//! old Redis directory, and a Redis that loses everything mid-history.

use std::time::{Duration, Instant};

use graph_emulator::{MailboxKind, Settings};
use outlook_sync::config::Config;
use outlook_sync::demo::Ev;
use outlook_sync::tenants::db::{Db, sql};
use outlook_sync::tenants::{CachedCompany, Directory, LinkedUser, Lookup, Plan, UserStatus};

use crate::proxy::Proxy;
use crate::support::{mailbox, sandbox, subjects, unique};

const OK: MailboxKind = MailboxKind::Ok;

/// A configuration whose directory lives in a schema of its own (dropped by [`Schema::drop`]).
pub struct Schema {
    pub cfg: Config,
    pub db: Db,
}

impl Schema {
    pub async fn new(name: &str) -> Schema {
        let mut cfg = crate::support::config(name);
        cfg.database.schema = unique(name).replace('-', "_");
        let db = Db::new(&cfg.database);
        match db.migrate().await {
            Ok(_) => {}
            Err(e) if e.is_unavailable() => panic!(
                "this test needs PostgreSQL at 127.0.0.1:5432 (user postgres, database test) and it is absent: {e}. Start it with scripts/services.sh."
            ),
            Err(e) => panic!("migrating {}: {e}", cfg.database.schema),
        }
        Schema { cfg, db }
    }

    pub async fn drop(self) {
        self.db.drop_schema().await.unwrap();
    }
}

/// Everything the directory's tables hold, as text (to look for a secret in).
pub async fn stored_text(db: &Db) -> String {
    let c = db.client().await.unwrap();
    let mut out = String::new();
    for table in ["companies", "linked_users", "removed_companies", "audit"] {
        for row in c
            .query(&format!("SELECT t::text FROM {table} AS t"), &[])
            .await
            .unwrap()
        {
            out.push_str(&row.get::<_, String>(0));
            out.push('\n');
        }
    }
    out
}

/// A company's stored document.
pub async fn company_doc(db: &Db, company: &str) -> serde_json::Value {
    let c = db.client().await.unwrap();
    c.query_one(
        "SELECT doc FROM companies WHERE company_id = $1",
        &[&company],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until `f` holds, polling every 20 ms; the time it took, or a failure after `limit`.
async fn within(limit: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

pub fn user(id: &str, address: &str) -> LinkedUser {
    LinkedUser {
        user_id: id.into(),
        mailbox: address.into(),
        linked_at: jiff::Timestamp::now(),
        status: UserStatus::Authenticated,
        reason: None,
        last_sync_at: None,
        last_error: None,
    }
}

#[tokio::test]
async fn every_statement_the_directory_runs_prepares_against_the_migrated_schema() {
    let s = Schema::new("db-prepare").await;
    let c = s.db.client().await.unwrap();
    for q in sql::ALL {
        if let Err(e) = c.prepare(q).await {
            panic!("{q}\n does not prepare against the migrated schema: {e}");
        }
    }
    drop(c);
    s.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_migrating_at_once_apply_each_migration_once() {
    let mut cfg = crate::support::config("db-migrate");
    cfg.database.schema = unique("db-migrate").replace('-', "_");
    let (a, b) = (Db::new(&cfg.database), Db::new(&cfg.database));
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let all: Vec<i32> = outlook_sync::tenants::db::MIGRATIONS
        .iter()
        .map(|m| m.0)
        .collect();
    let mut applied = [ra, rb].concat();
    applied.sort();
    assert_eq!(
        applied, all,
        "each migration applied by exactly one of the two"
    );
    assert!(
        a.migrate().await.unwrap().is_empty(),
        "a third run finds nothing to do"
    );
    a.drop_schema().await.unwrap();
}

#[tokio::test]
async fn a_company_document_round_trips_and_a_mailbox_is_keyed_without_case() {
    let s = Schema::new("db-roundtrip").await;
    let d = Directory::from_config(&s.cfg);
    let mut company = outlook_sync::tenants::Company::new("acme", Plan::LitePlus);
    company.options = vec!["schedule".into()];
    company.enabled = true;
    d.put_company(&company).await.unwrap();
    d.put_user("acme", &user("u-1", "Taro.Yamada@Acme.example"))
        .await
        .unwrap();
    let got = d.company("acme").await.unwrap().unwrap();
    assert_eq!(got.plan, Plan::LitePlus);
    assert_eq!(got.options, vec!["schedule".to_string()]);
    assert!(got.enabled);
    let c = s.db.client().await.unwrap();
    let row = c
        .query_one(
            "SELECT mailbox, mailbox_key, status FROM linked_users WHERE company_id = 'acme'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "Taro.Yamada@Acme.example");
    assert_eq!(row.get::<_, String>(1), "taro.yamada@acme.example");
    assert_eq!(row.get::<_, String>(2), "authenticated");
    assert_eq!(d.company_ids().await.unwrap(), vec!["acme".to_string()]);
    assert!(d.remove_user("acme", "u-1").await.unwrap());
    assert!(d.users("acme").await.unwrap().is_empty());
    drop(c);
    s.drop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_an_unlink_a_plan_change_and_a_credential_change_reach_a_running_worker_within_two_seconds()
 {
    let sb = sandbox("db-cache", Settings::default()).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let w = sb.worker().await.unwrap();
    let cache = w.flusher.directory();
    let limit = Duration::from_secs(2);
    let known = |f: &dyn Fn(&CachedCompany) -> bool| match cache.lookup(c) {
        Lookup::Known(e) => f(&e),
        _ => false,
    };
    within(limit, "the first load", || {
        known(&|e| e.users.contains_key("u-2"))
    })
    .await;

    // An unlink, then a link: the event after it reaches the newly linked mailbox.
    let hanako = sb.directory.user(c, "u-2").await.unwrap().unwrap();
    sb.directory.remove_user(c, "u-2").await.unwrap();
    let took = within(limit, "the unlink", || {
        known(&|e| !e.users.contains_key("u-2"))
    })
    .await;
    println!("the unlink reached the worker in {took:?}");
    sb.directory.put_user(c, &hanako).await.unwrap();
    let took = within(limit, "the link", || {
        known(&|e| e.users.contains_key("u-2"))
    })
    .await;
    println!("the link reached the worker in {took:?}");
    sb.publish(&[Ev::created(c, "s-1")
        .title("v1")
        .people("u-1", &["u-2"])
        .wire()])
        .await
        .unwrap();
    assert!(sb.wait_idle(Duration::from_secs(20)).await.unwrap());
    assert_eq!(subjects(&sb, &mailbox("hanako", c)), vec!["v1"]);

    // A plan change.
    let mut company = sb.directory.company(c).await.unwrap().unwrap();
    company.plan = Plan::Lite;
    sb.directory.put_company(&company).await.unwrap();
    let took = within(limit, "the plan change", || {
        known(&|e| e.company.plan == Plan::Lite)
    })
    .await;
    println!("the plan change reached the worker in {took:?}");
    // A credential change.
    company.plan = Plan::Standard;
    let mut creds = company.credentials.clone().unwrap();
    creds.client_id = "another-client".into();
    company.credentials = Some(creds);
    sb.directory.put_company(&company).await.unwrap();
    let took = within(limit, "the credential change", || {
        known(&|e| {
            e.company
                .credentials
                .as_ref()
                .is_some_and(|c| c.client_id == "another-client")
        })
    })
    .await;
    println!("the credential change reached the worker in {took:?}");
    w.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}

/// A counter of the worker's metrics, by its name and label (`reason="…"`).
fn counter(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(name) && l.contains(label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// An admin API on `cfg` (token `ops:…`), for its answers while the database is down.
async fn admin_api(sb: &outlook_sync::demo::Sandbox, mut cfg: Config) -> String {
    cfg.admin.tokens = vec![format!("ops:{ADMIN_TOKEN}")];
    let admin = outlook_sync::admin::service::Admin::new(
        std::sync::Arc::new(cfg.clone()),
        sb.redis.clone(),
        outlook_sync::graph::client::GraphClient::new(&cfg.graph),
        outlook_sync::metrics::Metrics::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, outlook_sync::admin::api::router(admin))
            .await
            .unwrap()
    });
    base
}

const ADMIN_TOKEN: &str = "test-token-Vq3xN8kR2mT7wZ5pL9cY4hB6";

async fn put_plan(base: &str, plan: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .put(format!("{base}/v1/companies/acme"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "plan": plan }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_keeps_cached_companies_syncing_fails_admin_writes_cleanly_and_writes_nothing_twice()
 {
    let mut sb = sandbox("db-outage", Settings::default()).await;
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let proxy = Proxy::start("127.0.0.1:5432".parse().unwrap()).await;
    sb.cfg.database.url = format!("postgres://postgres@127.0.0.1:{}/test", proxy.port());
    sb.cfg.database.timeout_ms = 1000;
    let w = sb.worker().await.unwrap();
    let cache = w.flusher.directory();
    within(Duration::from_secs(5), "the first load", || {
        cache.is_fresh()
    })
    .await;
    sb.publish(&[Ev::created(c, "s-1")
        .title("v1")
        .people("u-1", &["u-2"])
        .wire()])
        .await
        .unwrap();
    assert!(sb.wait_idle(Duration::from_secs(20)).await.unwrap());
    let base = admin_api(&sb, sb.cfg.clone()).await;

    proxy.cut();
    within(Duration::from_secs(10), "noticing the outage", || {
        !cache.is_fresh()
    })
    .await;
    let ready = w.health().check().await;
    assert!(
        !ready.database_reachable && ready.redis_reachable,
        "{ready:?}"
    );
    // The cached company keeps syncing; a company the cache does not hold is retried.
    sb.publish(&[
        Ev::updated(c, "s-1", 2)
            .title("v2")
            .people("u-1", &["u-2"])
            .wire(),
        Ev::created("newco", "s-9")
            .title("n1")
            .people("u-9", &[])
            .wire(),
    ])
    .await
    .unwrap();
    within(Duration::from_secs(20), "the cached company's sync", || {
        subjects(&sb, &mailbox("taro", c)) == vec!["v2"]
            && subjects(&sb, &mailbox("hanako", c)) == vec!["v2"]
    })
    .await;
    within(
        Duration::from_secs(10),
        "the unknown company's retry",
        || {
            counter(
                &w.metrics.render(),
                "outlook_sync_events_deferred",
                "directory_unreachable",
            ) >= 1.0
        },
    )
    .await;
    assert_eq!(
        counter(
            &w.metrics.render(),
            "outlook_sync_events_skipped",
            "\"unknown_company\""
        ),
        0.0,
        "nothing is skipped while the directory cannot tell"
    );
    // Admin writes fail cleanly, in both languages.
    let (status, body) = put_plan(&base, "premium").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "directory_unavailable", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("try again"),
        "{body}"
    );
    assert!(
        !body["error"]["message_ja"].as_str().unwrap().is_empty(),
        "{body}"
    );

    proxy.restore();
    within(Duration::from_secs(15), "recovering", || cache.is_fresh()).await;
    // Back: the unknown company is now known to be unknown, and skipped.
    within(
        Duration::from_secs(20),
        "the unknown company's skip",
        || {
            counter(
                &w.metrics.render(),
                "outlook_sync_events_skipped",
                "\"unknown_company\"",
            ) >= 1.0
        },
    )
    .await;
    let (status, body) = put_plan(&base, "premium").await;
    assert_eq!(status, 200, "{body}");
    // The last-sync time held through the outage is written, once.
    let synced = |u: &str| {
        let d = sb.directory.clone();
        let u = u.to_string();
        async move { d.user(c, &u).await.unwrap().unwrap().last_sync_at }
    };
    let mut last = None;
    for _ in 0..100 {
        last = synced("u-1").await;
        if last.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(last.is_some(), "the held last-sync time was written");
    assert_eq!(
        w.flusher.directory().write_pending().await.unwrap(),
        0,
        "nothing left to write twice"
    );
    assert!(sb.wait_idle(Duration::from_secs(20)).await.unwrap());
    w.stop(Duration::from_secs(5)).await;
    let stats = sb.emulator.emulator.stats();
    assert_eq!(
        stats.events_created, 2,
        "one copy per mailbox, none written twice"
    );
    assert_eq!(subjects(&sb, &mailbox("taro", c)), vec!["v2"]);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_loses_everything_mid_history_keeps_the_directory_finds_copies_by_tag_and_syncs_what_follows()
 {
    // Four-second windows: the loss lands while the changes are staged and not yet due, never
    // between the reads of a flush's intake (a loss there is another matter: see the report).
    const WINDOW: u64 = 4;
    let sb = match outlook_sync::demo::Sandbox::start("db-redis-loss", WINDOW, Settings::default())
        .await
    {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ, Redis and PostgreSQL: {e}"),
    };
    let c = "acme";
    sb.company(
        c,
        Plan::Standard,
        &[("u-1", "taro", OK), ("u-2", "hanako", OK)],
    )
    .await
    .unwrap();
    let w = sb.worker().await.unwrap();
    let ids: Vec<String> = (1..=10).map(|i| format!("s-{i}")).collect();
    let changes = |rev: u64, range: std::ops::Range<usize>| -> Vec<_> {
        ids[range]
            .iter()
            .map(|id| {
                let ev = if rev == 1 {
                    Ev::created(c, id)
                } else {
                    Ev::updated(c, id, rev)
                };
                ev.title(&format!("{id} r{rev}"))
                    .people("u-1", &["u-2"])
                    .wire()
            })
            .collect()
    };
    sb.publish(&changes(1, 0..10)).await.unwrap();
    assert!(sb.wait_idle(Duration::from_secs(30)).await.unwrap());

    // Mid-history: revision 2 of s-1..s-5 staged, then every key of this sandbox is lost at
    // once (only this test's prefix: other tests share the Redis).
    // Just after a window starts, so these are due no sooner than ~3.5 s from now.
    let into_window = || jiff::Timestamp::now().as_millisecond() % (WINDOW as i64 * 1000);
    while into_window() > 200 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sb.publish(&changes(2, 0..5)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keys = outlook_sync::store::keys(&sb.cfg);
    let wipe = redis::Script::new(
        r"local n = redis.call('ZCARD', KEYS[1]) + redis.call('ZCARD', KEYS[2])
          local all = redis.call('KEYS', ARGV[1])
          for i = 1, #all, 500 do redis.call('DEL', unpack(all, i, math.min(i + 499, #all))) end
          return {n, #all}",
    );
    let mut r = sb.redis.clone();
    let (pending, wiped): (u64, u64) = wipe
        .key(keys.due())
        .key(keys.inflight())
        .arg(format!("{}:*", sb.cfg.redis.key_prefix))
        .invoke_async(&mut r)
        .await
        .unwrap();
    assert!(wiped > 0);

    // History goes on: revision 3 of s-3..s-10 (s-1 and s-2 get nothing newer).
    sb.publish(&changes(3, 2..10)).await.unwrap();
    assert!(sb.wait_idle(Duration::from_secs(60)).await.unwrap());
    w.stop(Duration::from_secs(5)).await;

    // The directory is intact.
    let company = sb.directory.company(c).await.unwrap().unwrap();
    assert!(company.credentials.is_some());
    assert_eq!(sb.directory.users(c).await.unwrap().len(), 2);
    // Every change staged after the loss is in Outlook, each copy once (found again by its
    // tag); of the changes before it, only revision 2 of s-1/s-2 may be missing, and only if it
    // was staged and not flushed when Redis lost everything.
    for m in ["taro", "hanako"] {
        let got = subjects(&sb, &mailbox(m, c));
        assert_eq!(got.len(), 10, "{m}: one copy per schedule: {got:?}");
        for (i, id) in ids.iter().enumerate() {
            let s = got
                .iter()
                .find(|s| s.starts_with(&format!("{id} ")))
                .unwrap();
            if i >= 2 {
                assert_eq!(s, &format!("{id} r3"), "{m}");
            } else {
                assert!(
                    s == &format!("{id} r1") || s == &format!("{id} r2"),
                    "{m}: {s}"
                );
            }
        }
    }
    assert_eq!(
        sb.emulator.emulator.stats().events_created,
        20,
        "no second copy"
    );
    let missing = subjects(&sb, &mailbox("taro", c))
        .iter()
        .filter(|s| s.ends_with(" r1"))
        .count();
    println!(
        "Redis lost everything with {pending} schedule(s) staged and not flushed (due or claimed); \
         {missing} of the lost revision-2 changes without a later change are missing in Outlook; {wiped} keys wiped"
    );
    assert!(
        missing as u64 <= pending,
        "only staged-not-flushed changes are missing"
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_company_the_directory_knew_and_lost_is_retried_and_one_an_admin_removed_is_skipped() {
    let sb = sandbox("db-lost", Settings::default()).await;
    sb.company("acme", Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    sb.company("beta", Plan::Standard, &[("u-5", "goro", OK)])
        .await
        .unwrap();
    let w = sb.worker().await.unwrap();
    let cache = w.flusher.directory();
    within(Duration::from_secs(5), "the first load", || {
        matches!(cache.lookup("beta"), Lookup::Known(_))
    })
    .await;
    // beta vanishes without a removal (a restore from an older backup, a mistaken DELETE).
    let c = sb.directory.db().client().await.unwrap();
    c.execute("DELETE FROM companies WHERE company_id = 'beta'", &[])
        .await
        .unwrap();
    within(Duration::from_secs(2), "noticing the loss", || {
        matches!(
            cache.lookup("beta"),
            Lookup::Unavailable("directory_lost_company")
        )
    })
    .await;
    sb.publish(&[Ev::created("beta", "s-1").people("u-5", &[]).wire()])
        .await
        .unwrap();
    let deferred =
        |reason: &str| counter(&w.metrics.render(), "outlook_sync_events_deferred", reason);
    let skipped = || {
        counter(
            &w.metrics.render(),
            "outlook_sync_events_skipped",
            "\"unknown_company\"",
        )
    };
    within(Duration::from_secs(10), "the retry", || {
        deferred("directory_lost_company") >= 1.0
    })
    .await;
    assert_eq!(skipped(), 0.0, "a lost company's event is never acked away");
    // An administrator removes it for good: its events are skipped from then on.
    sb.directory.remove_company("beta").await.unwrap();
    within(Duration::from_secs(2), "the removal", || {
        matches!(cache.lookup("beta"), Lookup::Unknown)
    })
    .await;
    within(Duration::from_secs(20), "the skip", || skipped() >= 1.0).await;
    assert!(sb.wait_idle(Duration::from_secs(20)).await.unwrap());
    w.stop(Duration::from_secs(5)).await;
    drop(c);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_directory_retries_every_event_instead_of_skipping_it() {
    let sb = sandbox("db-empty", Settings::default()).await;
    let w = sb.worker().await.unwrap();
    sb.publish(&[Ev::created("acme", "s-1").people("u-1", &[]).wire()])
        .await
        .unwrap();
    within(Duration::from_secs(10), "the retry", || {
        counter(
            &w.metrics.render(),
            "outlook_sync_events_deferred",
            "directory_empty",
        ) >= 1.0
    })
    .await;
    assert_eq!(
        counter(
            &w.metrics.render(),
            "outlook_sync_events_skipped",
            "\"unknown_company\""
        ),
        0.0
    );
    // The schedule is still waiting (due again), not acked away.
    let mut r = sb.redis.clone();
    let keys = outlook_sync::store::keys(&sb.cfg);
    let due: u64 = redis::AsyncCommands::zcard(&mut r, keys.due())
        .await
        .unwrap();
    assert_eq!(due, 1);
    w.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}
