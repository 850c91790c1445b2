//! The directory's move out of Redis and the `db` commands: `import-redis-directory` twice
//! copies once; `migrate` applies each migration once and names an unreachable database without
//! its password.

use outlook_sync::config::Config;
use outlook_sync::tenants::Directory;
use outlook_sync::tenants::db::Db;

use crate::directory::{Schema, stored_text, user};
use crate::support::unique;

#[tokio::test]
async fn importing_a_redis_directory_twice_copies_it_once() {
    use redis::AsyncCommands;
    let mut s = Schema::new("db-import").await;
    s.cfg.secrets = outlook_sync::config::SecretsConfig {
        keys: vec![outlook_sync::config::SecretKeyConfig {
            id: "k1".into(),
            key_base64: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                rand::random::<[u8; 32]>(),
            ),
        }],
        active_key: "k1".into(),
    };
    let ring = outlook_sync::crypto::KeyRing::from_config(&s.cfg.secrets).unwrap();
    let sealed = ring
        .seal(
            &outlook_sync::secret::Secret::new("sealed-secret-1"),
            "outlook-sync/client-secret/v1/acme",
        )
        .unwrap();
    let keys = outlook_sync::store::keys(&s.cfg);
    let mut r = crate::support::redis().await;
    let acme = serde_json::json!({"id": "acme", "plan": "standard", "enabled": true,
        "credentials": {"tenant_id": "t-1", "client_id": "c-1", "secret": sealed}});
    // Stored in plain text by a version before encryption at rest.
    let old = serde_json::json!({"id": "oldco", "plan": "premium", "enabled": false,
        "credentials": {"tenant_id": "t-2", "client_id": "c-2", "client_secret": "plain-secret-2"}});
    let _: () = r.set(keys.company("acme"), acme.to_string()).await.unwrap();
    let _: () = r.set(keys.company("oldco"), old.to_string()).await.unwrap();
    let _: () = r.sadd(keys.companies(), &["acme", "oldco"]).await.unwrap();
    for (id, addr) in [("u-1", "Taro@acme.example"), ("u-2", "hanako@acme.example")] {
        let mut u = user(id, addr);
        u.last_sync_at = Some(jiff::Timestamp::now());
        let _: () = r
            .hset(keys.users("acme"), id, serde_json::to_string(&u).unwrap())
            .await
            .unwrap();
    }
    let _: () = r
        .hset(
            keys.users("oldco"),
            "u-7",
            serde_json::to_string(&user("u-7", "x@old.example")).unwrap(),
        )
        .await
        .unwrap();

    let d = Directory::from_config(&s.cfg);
    let from = outlook_sync::tenants::RedisDirectory::new(r.clone(), keys.clone());
    let first = from.import_into(&d).await.unwrap();
    assert_eq!(
        (
            first.companies,
            first.companies_written,
            first.users,
            first.users_written
        ),
        (2, 2, 3, 3),
        "{first:?}"
    );
    let stored = stored_text(&s.db).await;
    let second = from.import_into(&d).await.unwrap();
    assert_eq!(
        (
            second.companies,
            second.companies_written,
            second.users,
            second.users_written
        ),
        (2, 0, 3, 0),
        "a second run writes nothing: {second:?}"
    );
    assert_eq!(
        stored_text(&s.db).await,
        stored,
        "a second run changes nothing"
    );
    let acme = d.company("acme").await.unwrap().unwrap();
    assert_eq!(
        acme.credentials.unwrap().client_secret.expose(),
        "sealed-secret-1"
    );
    let old = d.company("oldco").await.unwrap().unwrap();
    assert_eq!(
        old.credentials.unwrap().client_secret.expose(),
        "plain-secret-2"
    );
    assert!(
        !stored.contains("plain-secret-2"),
        "the plain-text secret is sealed on import"
    );
    let users = d.users("acme").await.unwrap();
    assert_eq!(users["u-1"].mailbox, "Taro@acme.example");
    assert!(users["u-1"].last_sync_at.is_some());
    let _: () = r
        .del(&[
            keys.company("acme"),
            keys.company("oldco"),
            keys.companies(),
            keys.users("acme"),
            keys.users("oldco"),
        ])
        .await
        .unwrap();
    s.drop().await;
}

fn db_command(args: &[&str], schema: &str, url: &str) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTLOOK_SYNC") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .env("OUTLOOK_SYNC__DATABASE__SCHEMA", schema)
        .env("OUTLOOK_SYNC__DATABASE__URL", url)
        .env("OUTLOOK_SYNC__DATABASE__TIMEOUT_MS", "2000")
        .env("OUTLOOK_SYNC__REDIS__KEY_PREFIX", schema)
        .output()
        .unwrap()
}

#[tokio::test]
async fn the_db_commands_migrate_once_import_and_name_an_unreachable_database_without_its_password()
{
    let schema = unique("db-cli").replace('-', "_");
    let url = "postgres://postgres@127.0.0.1:5432/test";
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let first = db_command(&["db", "migrate"], &schema, url);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains("applied migrations [1]"),
        "{}",
        text(&first)
    );
    let again = db_command(&["db", "migrate"], &schema, url);
    assert!(text(&again).contains("up to date"), "{}", text(&again));
    let import = db_command(&["db", "import-redis-directory"], &schema, url);
    assert!(import.status.success(), "{}", text(&import));
    assert!(text(&import).contains("0 companies"), "{}", text(&import));
    let down = db_command(
        &["db", "migrate"],
        &schema,
        "postgres://postgres:hunter2-sentinel@127.0.0.1:1/test",
    );
    assert!(!down.status.success());
    let said = text(&down);
    assert!(
        said.contains("cannot migrate PostgreSQL at") && said.contains("database.url"),
        "{said}"
    );
    assert!(
        !said.contains("hunter2-sentinel"),
        "the password is shown: {said}"
    );
    let mut cfg = Config::default();
    cfg.database.schema = schema;
    Db::new(&cfg.database).drop_schema().await.unwrap();
}
