//! The directory's PostgreSQL, the one place the service talks to it: the connection pool (every
//! connection's `search_path` is `database.schema`), the migrations (`migrations/*.sql`, embedded
//! in the binary), and every statement the code runs ([`sql`]; a test prepares each one against
//! the migrated schema).

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use tokio_postgres::NoTls;

use crate::config::DatabaseConfig;

/// The migrations, in order: (version, name, SQL). Applied ones are recorded in
/// `schema_migrations`; a version is never edited once released, only followed by another.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "directory",
    include_str!("../../migrations/0001_directory.sql"),
)];

/// The channel every directory change is announced on (payload `"<schema>/<company>"`).
pub const CHANNEL: &str = "outlook_sync_directory";

/// Every statement the service runs, in one place.
pub mod sql {
    pub const COMPANY: &str = "SELECT doc FROM companies WHERE company_id = $1";
    pub const COMPANY_PUT: &str = "INSERT INTO companies (company_id, plan, enabled, doc) \
        VALUES ($1, $2, $3, $4) ON CONFLICT (company_id) DO UPDATE \
        SET plan = EXCLUDED.plan, enabled = EXCLUDED.enabled, doc = EXCLUDED.doc, updated_at = now() \
        WHERE companies.doc IS DISTINCT FROM EXCLUDED.doc";
    pub const COMPANY_UNREMOVE: &str = "DELETE FROM removed_companies WHERE company_id = $1";
    pub const COMPANY_IDS: &str = "SELECT company_id FROM companies ORDER BY company_id";
    pub const COMPANY_DELETE: &str = "DELETE FROM companies WHERE company_id = $1";
    pub const COMPANY_USERS_DELETE: &str = "DELETE FROM linked_users WHERE company_id = $1";
    pub const COMPANY_REMOVED: &str = "INSERT INTO removed_companies (company_id) VALUES ($1) \
        ON CONFLICT (company_id) DO UPDATE SET removed_at = now()";
    pub const COMPANIES_ALL: &str = "SELECT company_id, doc FROM companies";
    pub const REMOVED_ALL: &str = "SELECT company_id FROM removed_companies";
    pub const IS_REMOVED: &str = "SELECT 1 FROM removed_companies WHERE company_id = $1";
    pub const USER: &str = "SELECT user_id, doc, extract(epoch FROM last_sync_at)::float8 \
        FROM linked_users WHERE company_id = $1 AND user_id = $2";
    pub const USER_FOR_UPDATE: &str = "SELECT user_id, doc, extract(epoch FROM last_sync_at)::float8 \
        FROM linked_users WHERE company_id = $1 AND user_id = $2 FOR UPDATE";
    pub const USERS: &str = "SELECT user_id, doc, extract(epoch FROM last_sync_at)::float8 \
        FROM linked_users WHERE company_id = $1";
    pub const USERS_ALL: &str = "SELECT company_id, user_id, doc, \
        extract(epoch FROM last_sync_at)::float8 FROM linked_users";
    pub const USER_PUT: &str = "INSERT INTO linked_users \
        (company_id, user_id, mailbox, mailbox_key, status, doc, last_sync_at) \
        VALUES ($1, $2, $3, $4, $5, $6, to_timestamp($7::float8)) \
        ON CONFLICT (company_id, user_id) DO UPDATE \
        SET mailbox = EXCLUDED.mailbox, mailbox_key = EXCLUDED.mailbox_key, \
            status = EXCLUDED.status, doc = EXCLUDED.doc, \
            last_sync_at = GREATEST(linked_users.last_sync_at, EXCLUDED.last_sync_at), \
            updated_at = now() \
        WHERE linked_users.doc IS DISTINCT FROM EXCLUDED.doc \
           OR linked_users.last_sync_at IS DISTINCT FROM \
              GREATEST(linked_users.last_sync_at, EXCLUDED.last_sync_at)";
    pub const USER_DELETE: &str = "DELETE FROM linked_users WHERE company_id = $1 AND user_id = $2";
    /// The written-behind last-sync times, many users in one statement; a time never goes back.
    pub const USERS_SYNCED: &str = "UPDATE linked_users AS u \
        SET last_sync_at = to_timestamp(v.at) \
        FROM unnest($1::text[], $2::text[], $3::float8[]) AS v(company_id, user_id, at) \
        WHERE u.company_id = v.company_id AND u.user_id = v.user_id \
          AND (u.last_sync_at IS NULL OR u.last_sync_at < to_timestamp(v.at))";
    pub const AUDIT_ADD: &str = "INSERT INTO audit (token_name, company_id, action, summary) \
        VALUES ($1, $2, $3, $4)";
    pub const AUDIT_LIST: &str = "SELECT id, extract(epoch FROM at)::float8, token_name, action, \
        summary FROM audit WHERE company_id = $1 ORDER BY id DESC LIMIT $2";
    pub const MIGRATE_LOCK: &str =
        "SELECT pg_advisory_xact_lock(hashtext('outlook-sync migrate ' || $1::text))";
    pub const MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
        (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())";
    pub const MIGRATIONS_APPLIED: &str = "SELECT version FROM schema_migrations ORDER BY version";
    pub const MIGRATION_DONE: &str =
        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)";

    /// Every statement above that runs against the migrated schema (the test prepares each).
    pub const ALL: &[&str] = &[
        COMPANY,
        COMPANY_PUT,
        COMPANY_UNREMOVE,
        COMPANY_IDS,
        COMPANY_DELETE,
        COMPANY_USERS_DELETE,
        COMPANY_REMOVED,
        COMPANIES_ALL,
        REMOVED_ALL,
        IS_REMOVED,
        USER,
        USER_FOR_UPDATE,
        USERS,
        USERS_ALL,
        USER_PUT,
        USER_DELETE,
        USERS_SYNCED,
        AUDIT_ADD,
        AUDIT_LIST,
        MIGRATE_LOCK,
        MIGRATIONS_APPLIED,
        MIGRATION_DONE,
    ];
}

/// A failure of the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Not reachable, not answering in time, or refusing this service (connection, shutdown,
    /// privileges): the admin answers 503, the workers keep what they cached.
    #[error("PostgreSQL is unavailable: {0}")]
    Unavailable(String),
    /// The database answered with an error to a statement.
    #[error("PostgreSQL: {0}")]
    Query(String),
}

impl DbError {
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        let unavailable = match e.code() {
            None => true,
            Some(code) => {
                let c = code.code();
                // connection exceptions, operator intervention (terminated, shutting down),
                // insufficient resources, a missing or forbidden schema or privilege
                c.starts_with("08")
                    || c.starts_with("57")
                    || c.starts_with("53")
                    || c == "42501"
                    || c == "3D000"
                    || c == "3F000"
                    || c == "28000"
                    || c == "28P01"
            }
        };
        let text = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        if unavailable {
            DbError::Unavailable(text)
        } else {
            DbError::Query(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => DbError::Unavailable(other.to_string()),
        }
    }
}

/// The database of a configuration: a pool (connections are made on first use, so building it
/// never fails on an outage) and the bound on every call.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    pg: tokio_postgres::Config,
    schema: String,
    timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Db(schema {})", self.schema)
    }
}

impl Db {
    /// The pool of a (validated) `[database]`.
    pub fn new(cfg: &DatabaseConfig) -> Db {
        let timeout = Duration::from_millis(cfg.timeout_ms);
        let mut pg: tokio_postgres::Config = cfg.url.parse().expect("checked by Config::validate");
        let options = format!(
            "{} -c search_path={} -c statement_timeout={}",
            pg.get_options().unwrap_or_default(),
            cfg.schema,
            cfg.timeout_ms
        );
        pg.options(options.trim());
        pg.connect_timeout(timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("outlook-sync");
        }
        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(cfg.pool_size)
            .runtime(Runtime::Tokio1)
            .timeouts(Timeouts {
                wait: Some(timeout),
                create: Some(timeout),
                recycle: Some(timeout),
            })
            .build()
            .expect("a runtime is set");
        Db {
            pool,
            pg,
            schema: cfg.schema.clone(),
            timeout,
        }
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The configuration of a connection of its own (the cache's LISTEN).
    pub(super) fn pg_config(&self) -> &tokio_postgres::Config {
        &self.pg
    }

    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A pooled connection.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        Ok(self.pool.get().await?)
    }

    /// Runs `f` bounded by the configured timeout (a stalled network answers as unavailable).
    pub async fn timed<T>(
        &self,
        f: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .unwrap_or_else(|_| {
                Err(DbError::Unavailable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )))
            })
    }

    /// Whether the database answers now.
    pub async fn ping(&self) -> bool {
        self.timed(async {
            self.client().await?.simple_query("SELECT 1").await?;
            Ok(())
        })
        .await
        .is_ok()
    }

    /// Applies the pending migrations in one transaction under an advisory lock (two processes
    /// migrating at once: the second waits, then finds nothing to do). Returns the versions
    /// applied now.
    pub async fn migrate(&self) -> Result<Vec<i32>, DbError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await?;
        tx.execute(sql::MIGRATE_LOCK, &[&self.schema]).await?;
        tx.batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS \"{}\"; {}",
            self.schema,
            sql::MIGRATIONS_TABLE
        ))
        .await?;
        let applied: Vec<i32> = tx
            .query(sql::MIGRATIONS_APPLIED, &[])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut now = Vec::new();
        for (version, name, text) in MIGRATIONS {
            if applied.contains(version) {
                continue;
            }
            tx.batch_execute(text).await?;
            tx.execute(sql::MIGRATION_DONE, &[version, name]).await?;
            now.push(*version);
        }
        tx.commit().await?;
        Ok(now)
    }

    /// Drops the schema and everything in it (tests and sandboxes clean up with it).
    pub async fn drop_schema(&self) -> Result<(), DbError> {
        self.timed(async {
            self.client()
                .await?
                .batch_execute(&format!(
                    "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
                    self.schema
                ))
                .await?;
            Ok(())
        })
        .await
    }
}

/// A timestamp as PostgreSQL's epoch seconds (`to_timestamp`), and back.
pub(super) fn epoch(t: jiff::Timestamp) -> f64 {
    t.as_microsecond() as f64 / 1e6
}

pub(super) fn from_epoch(s: f64) -> Option<jiff::Timestamp> {
    jiff::Timestamp::from_microsecond((s * 1e6).round() as i64).ok()
}
