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
    c.query_one("SELECT doc FROM companies WHERE company_id = $1", &[&company])
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

fn user(id: &str, address: &str) -> LinkedUser {
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
    assert_eq!(applied, all, "each migration applied by exactly one of the two");
    assert!(a.migrate().await.unwrap().is_empty(), "a third run finds nothing to do");
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
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK), ("u-2", "hanako", OK)])
        .await
        .unwrap();
    let w = sb.worker().await.unwrap();
    let cache = w.flusher.directory();
    let limit = Duration::from_secs(2);
    let known = |f: &dyn Fn(&CachedCompany) -> bool| match cache.lookup(c) {
        Lookup::Known(e) => f(&e),
        _ => false,
    };
    within(limit, "the first load", || known(&|e| e.users.contains_key("u-2"))).await;

    // An unlink, then a link: the event after it reaches the newly linked mailbox.
    let hanako = sb.directory.user(c, "u-2").await.unwrap().unwrap();
    sb.directory.remove_user(c, "u-2").await.unwrap();
    let took = within(limit, "the unlink", || known(&|e| !e.users.contains_key("u-2"))).await;
    println!("the unlink reached the worker in {took:?}");
    sb.directory.put_user(c, &hanako).await.unwrap();
    let took = within(limit, "the link", || known(&|e| e.users.contains_key("u-2"))).await;
    println!("the link reached the worker in {took:?}");
    sb.publish(&[Ev::created(c, "s-1").title("v1").people("u-1", &["u-2"]).wire()])
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
