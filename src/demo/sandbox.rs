//! The sandbox the demo runs in, and the tests and the benchmark too: the embedded Graph emulator,
//! the local RabbitMQ and Redis under names of its own, seeded companies with linked users, and
//! in-process workers.

use std::time::Duration;

use jiff::Timestamp;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use redis::AsyncCommands;

use crate::amqp::{self, Publisher, Topology};
use crate::config::Config;
use crate::event::WireEvent;
use crate::tenants::{Company, Directory, LinkedUser, Plan, StoredCredentials, UserStatus};
use crate::worker::Worker;
use graph_emulator::{
    Emulator, MailboxKind, RunningEmulator, Seed, SeedApp, SeedTenant, SeedUser, Settings,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "RabbitMQ is not reachable at {url} ({source}); run scripts/services.sh (it installs and starts RabbitMQ, Redis and PostgreSQL) or `docker compose -f deploy/compose.yaml up -d rabbitmq`"
    )]
    RabbitMq {
        url: String,
        source: amqp::AmqpError,
    },
    #[error(
        "Redis is not reachable at {url} ({source}); run scripts/services.sh (it installs and starts RabbitMQ, Redis and PostgreSQL) or `docker compose -f deploy/compose.yaml up -d redis`"
    )]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error(
        "PostgreSQL is not reachable at {url} ({source}); run scripts/services.sh (it installs and starts RabbitMQ, Redis and PostgreSQL) or `docker compose -f deploy/compose.yaml up -d postgres`"
    )]
    Postgres {
        url: String,
        source: crate::tenants::db::DbError,
    },
    #[error("the Graph emulator could not start: {0}")]
    Emulator(std::io::Error),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] amqp::AmqpError),
    #[error("Redis: {0}")]
    RedisOp(#[from] redis::RedisError),
    #[error("directory: {0}")]
    Directory(#[from] crate::tenants::DirectoryError),
    #[error("the worker did not start: {0}")]
    Worker(#[from] crate::worker::StartError),
}

/// A self-contained world: own queue names, own Redis prefix, own emulator.
pub struct Sandbox {
    pub cfg: Config,
    pub emulator: RunningEmulator,
    pub directory: Directory,
    pub redis: crate::store::Redis,
    conn: lapin::Connection,
    publisher: Publisher,
}

/// One company's Microsoft tenant in the emulator and its record in the directory.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    pub company_id: String,
    pub tenant_id: String,
    pub domain: String,
    pub client_id: String,
}

impl Sandbox {
    /// A sandbox named `name` (queues `{name}-…`, Redis prefix `{name}-…`), with windows of
    /// `window_seconds` and an emulator with `settings`.
    pub async fn start(
        name: &str,
        window_seconds: u64,
        settings: Settings,
    ) -> Result<Sandbox, SandboxError> {
        crate::install_crypto_provider();
        let id = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let emulator = Emulator::start(Seed::default(), settings)
            .await
            .map_err(SandboxError::Emulator)?;
        let mut cfg = Config::default();
        cfg.amqp.exchange = format!("{id}.schedules");
        cfg.amqp.queue = format!("{id}.work");
        cfg.amqp.dead_letter_exchange = format!("{id}.dead");
        cfg.amqp.dead_letter_queue = format!("{id}.dead");
        // The directory in a schema of its own, dropped by `cleanup`.
        cfg.database.schema = format!("sb_{}", id.to_ascii_lowercase().replace('-', "_"));
        cfg.database.reload_seconds = 5;
        cfg.database.write_behind_seconds = 1;
        cfg.redis.key_prefix = id;
        cfg.window.seconds = window_seconds;
        cfg.window.poll_interval_ms = 100;
        cfg.window.claim_lease_seconds = 5;
        cfg.graph.mailbox_lease_seconds = 3;
        cfg.graph.base_url = emulator.graph_url();
        cfg.graph.login_url = emulator.login_url();
        cfg.retry.initial_backoff_ms = 50;
        cfg.retry.max_backoff_ms = 2_000;
        // Tests and the benchmark run repair passes themselves (`repair::Repairer::pass`), so
        // no pass comes at a random time between their requests.
        cfg.repair.enabled = false;
        // Client secrets are sealed at rest: a key of the sandbox's own.
        cfg.secrets = crate::config::SecretsConfig {
            keys: vec![crate::config::SecretKeyConfig {
                id: "sandbox".into(),
                key_base64: base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    rand::random::<[u8; 32]>(),
                ),
            }],
            active_key: "sandbox".into(),
        };
        cfg.validate().expect("sandbox configuration is valid");
        let conn = amqp::connect(&cfg.amqp.url, "outlook-sync sandbox")
            .await
            .map_err(|source| SandboxError::RabbitMq {
                url: amqp::redacted(&cfg.amqp.url),
                source,
            })?;
        let publisher = Publisher::new(&conn).await?;
        Topology::new(&cfg.amqp)
            .declare(publisher.channel())
            .await?;
        let redis = crate::store::connect(&cfg)
            .await
            .map_err(|source| SandboxError::Redis {
                url: amqp::redacted(&cfg.redis.url),
                source,
            })?;
        let directory = Directory::from_config(&cfg);
        directory
            .db()
            .migrate()
            .await
            .map_err(|source| SandboxError::Postgres {
                url: amqp::redacted(&cfg.database.url),
                source,
            })?;
        Ok(Sandbox {
            directory,
            redis,
            emulator,
            cfg,
            conn,
            publisher,
        })
    }

    /// Creates the company's Microsoft tenant (app with the needed roles, the given users'
    /// mailboxes) in the emulator, and the company with its linked users (linked an hour ago) in
    /// the directory. `users`: (cyzen user id, mailbox local part, mailbox kind).
    pub async fn company(
        &self,
        company_id: &str,
        plan: Plan,
        users: &[(&str, &str, MailboxKind)],
    ) -> Result<TenantInfo, SandboxError> {
        let tenant_id = uuid::Uuid::new_v4().to_string();
        let client_id = uuid::Uuid::new_v4().to_string();
        let secret = format!("secret-{}", uuid::Uuid::new_v4().simple());
        let domain = format!("{company_id}.onmicrosoft.com");
        let mut tenant = SeedTenant::new(&tenant_id, &domain).with_app(
            SeedApp::new(&client_id, &secret).with_roles([
                "Calendars.ReadWrite",
                "User.Read.All",
                "Contacts.Read",
            ]),
        );
        for (_, local, kind) in users {
            tenant = tenant.with_user(
                SeedUser::new(format!("{local}@{domain}"))
                    .with_mailbox(*kind)
                    .with_time_zone("Tokyo Standard Time"),
            );
        }
        self.emulator.emulator.add_tenant(tenant);
        self.directory
            .put_company(&Company {
                enabled: true,
                credentials: Some(StoredCredentials::new(
                    &tenant_id,
                    &client_id,
                    crate::secret::Secret::new(secret),
                    None,
                )),
                ..Company::new(company_id, plan)
            })
            .await?;
        let linked_at = Timestamp::now() - jiff::SignedDuration::from_hours(1);
        for (user, local, _) in users {
            self.directory
                .put_user(
                    company_id,
                    &LinkedUser {
                        user_id: user.to_string(),
                        mailbox: format!("{local}@{domain}"),
                        linked_at,
                        status: UserStatus::Authenticated,
                        reason: None,
                        last_sync_at: None,
                        last_error: None,
                    },
                )
                .await?;
        }
        Ok(TenantInfo {
            company_id: company_id.to_string(),
            tenant_id,
            domain,
            client_id,
        })
    }

    /// Starts a worker on this sandbox's configuration.
    pub async fn worker(&self) -> Result<Worker, SandboxError> {
        Ok(Worker::start(self.cfg.clone()).await?)
    }

    /// Publishes events with the contract's properties, each confirmed by the broker.
    pub async fn publish(&self, events: &[WireEvent]) -> Result<(), SandboxError> {
        for ev in events {
            let body = serde_json::to_vec(ev).expect("serializable");
            self.publish_raw(&ev.event_id, ev.event_type.routing_key(), &body)
                .await?;
        }
        Ok(())
    }

    /// Publishes any body (valid or not) under a routing key.
    pub async fn publish_raw(
        &self,
        message_id: &str,
        routing_key: &str,
        body: &[u8],
    ) -> Result<(), SandboxError> {
        self.publisher
            .publish(
                &self.cfg.amqp.exchange,
                routing_key,
                body,
                amqp::event_properties(message_id, routing_key),
            )
            .await?;
        Ok(())
    }

    /// Publishes many bodies fast: confirms are awaited in windows of 2,000 rather than one by
    /// one (each still confirmed before this returns). `(message_id, routing_key, body)`.
    pub async fn publish_bulk(
        &self,
        items: &[(String, &str, Vec<u8>)],
    ) -> Result<(), SandboxError> {
        use lapin::options::BasicPublishOptions;
        for chunk in items.chunks(2000) {
            let mut confirms = Vec::with_capacity(chunk.len());
            for (id, key, body) in chunk {
                let c = self
                    .publisher
                    .channel()
                    .basic_publish(
                        self.cfg.amqp.exchange.as_str().into(),
                        (*key).into(),
                        BasicPublishOptions::default(),
                        body,
                        amqp::event_properties(id, key),
                    )
                    .await
                    .map_err(amqp::AmqpError::from)?;
                confirms.push(c);
            }
            for c in confirms {
                let confirm = c.await.map_err(amqp::AmqpError::from)?;
                if confirm.is_nack() {
                    return Err(SandboxError::Amqp(amqp::AmqpError::Nacked {
                        exchange: self.cfg.amqp.exchange.clone(),
                        routing_key: "(bulk)".into(),
                    }));
                }
            }
        }
        Ok(())
    }

    /// The AMQP connection (benchmarks open their own channels on it).
    pub fn connection(&self) -> &lapin::Connection {
        &self.conn
    }

    /// Messages waiting in a queue (ready, not counting unacked).
    pub async fn queue_depth(&self, queue: &str) -> Result<u32, SandboxError> {
        let ch = self
            .conn
            .create_channel()
            .await
            .map_err(amqp::AmqpError::from)?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(amqp::AmqpError::from)?;
        let _ = ch.close(200, "ok".into()).await;
        Ok(q.message_count())
    }

    /// Waits until the work queue is empty and nothing is due or claimed, steadily for half a
    /// second. False on timeout.
    pub async fn wait_idle(&self, timeout: Duration) -> Result<bool, SandboxError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut quiet_since: Option<tokio::time::Instant> = None;
        let r = self.redis.clone();
        let windows = crate::window::Windows::new(
            r.clone(),
            crate::store::keys(&self.cfg),
            self.cfg.window(),
        );
        while tokio::time::Instant::now() < deadline {
            let depth = self.queue_depth(&self.cfg.amqp.queue).await?;
            if depth == 0 && windows.due_or_claimed().await? == 0 {
                let since = *quiet_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= Duration::from_millis(500) {
                    return Ok(true);
                }
            } else {
                quiet_since = None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(false)
    }

    /// Deletes the sandbox's queues, exchanges, Redis keys and PostgreSQL schema, and stops the
    /// emulator.
    pub async fn cleanup(self) {
        if let Err(e) = self.directory.db().drop_schema().await {
            tracing::warn!(error = %e, schema = %self.cfg.database.schema, "sandbox: the schema was not dropped");
        }
        if let Ok(ch) = self.conn.create_channel().await {
            for q in [&self.cfg.amqp.queue, &self.cfg.amqp.dead_letter_queue] {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            for x in [&self.cfg.amqp.exchange, &self.cfg.amqp.dead_letter_exchange] {
                let _ = ch
                    .exchange_delete(x.as_str().into(), Default::default())
                    .await;
            }
        }
        let _ = self.conn.close(200, "bye".into()).await;
        let mut r = self.redis.clone();
        let pattern = crate::store::keys(&self.cfg).all_pattern();
        let keys: Vec<String> = r.keys(&pattern).await.unwrap_or_default();
        for chunk in keys.chunks(500) {
            let _: Result<(), _> = r.del(chunk).await;
        }
        self.emulator.stop().await;
    }
}
