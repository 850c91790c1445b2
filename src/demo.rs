//! `outlook-sync demo`, and the sandbox it runs in (the tests and the benchmark use the same
//! sandbox): the embedded Graph emulator, the local RabbitMQ and Redis under names of its own, a
//! seeded company with linked users, and in-process workers.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use jiff::Timestamp;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use crate::amqp::{self, Publisher, Topology};
use crate::config::Config;
use crate::event::{EventType, Place, Visibility, WireEvent, WireSchedule};
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
    pub redis: ConnectionManager,
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
        cfg.redis.key_prefix = id;
        cfg.window.seconds = window_seconds;
        cfg.window.poll_interval_ms = 100;
        cfg.window.claim_lease_seconds = 5;
        cfg.graph.mailbox_lease_seconds = 3;
        cfg.graph.base_url = emulator.graph_url();
        cfg.graph.login_url = emulator.login_url();
        cfg.retry.initial_backoff_ms = 50;
        cfg.retry.max_backoff_ms = 2_000;
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
        Ok(Sandbox {
            directory: Directory::from_config(redis.clone(), &cfg),
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
        let mut r = self.redis.clone();
        let keys = crate::store::keys(&self.cfg);
        while tokio::time::Instant::now() < deadline {
            let depth = self.queue_depth(&self.cfg.amqp.queue).await?;
            let due: u64 = r.zcard(keys.due()).await?;
            let inflight: u64 = r.zcard(keys.inflight()).await?;
            if depth == 0 && due == 0 && inflight == 0 {
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

    /// Deletes the sandbox's queues, exchanges and Redis keys, and stops the emulator.
    pub async fn cleanup(self) {
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

/// Builds schedule events tersely (the demo, tests, the benchmark).
#[derive(Debug, Clone)]
pub struct Ev(pub WireEvent);

impl Ev {
    fn base(company: &str, schedule: &str, revision: u64, event_type: EventType) -> Ev {
        let now = Timestamp::now().to_string();
        Ev(WireEvent {
            schema_version: 1,
            event_id: uuid::Uuid::new_v4().to_string(),
            event_type,
            occurred_at: now.clone(),
            company_id: company.into(),
            schedule_id: schedule.into(),
            revision,
            schedule: Some(WireSchedule {
                title: format!("Schedule {schedule}"),
                memo: String::new(),
                all_day: false,
                start: Some("2026-11-30T10:00:00+09:00".into()),
                end: Some("2026-11-30T11:00:00+09:00".into()),
                time_zone: Some("Asia/Tokyo".into()),
                first_date: None,
                last_date: None,
                place: None,
                owner_user_id: "u-100".into(),
                participant_user_ids: vec![],
                visibility: Visibility::Public,
                url: format!("https://app.cyzen.cloud/schedules/{schedule}"),
                created_at: now.clone(),
                updated_at: now,
            }),
        })
    }

    pub fn created(company: &str, schedule: &str) -> Ev {
        Self::base(company, schedule, 1, EventType::Created)
    }

    pub fn updated(company: &str, schedule: &str, revision: u64) -> Ev {
        Self::base(company, schedule, revision, EventType::Updated)
    }

    pub fn deleted(company: &str, schedule: &str, revision: u64) -> Ev {
        let mut e = Self::base(company, schedule, revision, EventType::Deleted);
        e.0.schedule = None;
        e
    }

    fn s(&mut self) -> &mut WireSchedule {
        self.0.schedule.as_mut().expect("not a delete")
    }

    pub fn title(mut self, t: &str) -> Ev {
        self.s().title = t.into();
        self
    }

    pub fn memo(mut self, m: &str) -> Ev {
        self.s().memo = m.into();
        self
    }

    /// A timed schedule: RFC 3339 start and end, and its IANA zone.
    pub fn at(mut self, start: &str, end: &str, zone: &str) -> Ev {
        let s = self.s();
        s.all_day = false;
        s.start = Some(start.into());
        s.end = Some(end.into());
        s.time_zone = Some(zone.into());
        s.first_date = None;
        s.last_date = None;
        self
    }

    /// An all-day schedule from `first` to `last`, both inclusive.
    pub fn all_day(mut self, first: &str, last: &str) -> Ev {
        let s = self.s();
        s.all_day = true;
        s.start = None;
        s.end = None;
        s.first_date = Some(first.into());
        s.last_date = Some(last.into());
        self
    }

    pub fn place(mut self, name: &str, address: &str) -> Ev {
        self.s().place = Some(Place {
            name: name.into(),
            address: address.into(),
        });
        self
    }

    /// The owner, then the other participants.
    pub fn people(mut self, owner: &str, others: &[&str]) -> Ev {
        let s = self.s();
        s.owner_user_id = owner.into();
        s.participant_user_ids = others.iter().map(|o| o.to_string()).collect();
        self
    }

    pub fn private(mut self) -> Ev {
        self.s().visibility = Visibility::Private;
        self
    }

    pub fn occurred(mut self, at: Timestamp) -> Ev {
        self.0.occurred_at = at.to_string();
        self
    }

    pub fn wire(self) -> WireEvent {
        self.0
    }
}

/// One user's Outlook calendar as a readable table (the shared printer: display-width
/// alignment, escaped cells), sorted by when.
pub fn calendar_table(title: &str, events: &[serde_json::Value]) -> String {
    let mut out = format!("{}\n", crate::terminal::escape(title));
    if events.is_empty() {
        out.push_str("  (no events)\n");
        return out;
    }
    let mut rows: Vec<Vec<String>> = events.iter().map(calendar_row).collect();
    rows.sort();
    out.push_str(&crate::terminal::table(
        &["WHEN", "ZONE", "SUBJECT", "LOCATION", "SENSITIVITY"],
        &rows,
    ));
    out
}

/// One Outlook event (Graph JSON) as a calendar row: when (in its own zone), zone, subject,
/// location, sensitivity.
fn calendar_row(e: &serde_json::Value) -> Vec<String> {
    let get = |p: &str| {
        e.pointer(p)
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string()
    };
    let all_day = e.get("isAllDay").and_then(|v| v.as_bool()) == Some(true);
    let zone = get("/originalStartTimeZone");
    let shown = |p: &str| local_time(&get(p), &get(&p.replace("dateTime", "timeZone")), &zone);
    let (start, end) = (shown("/start/dateTime"), shown("/end/dateTime"));
    let when = if all_day {
        // Outlook's end is exclusive; cyzen shows the last day.
        let last = end
            .get(..10)
            .and_then(|d| d.parse::<jiff::civil::Date>().ok())
            .and_then(|d| d.yesterday().ok())
            .map(|d| d.to_string())
            .unwrap_or_default();
        format!("{} → {last} (all day)", start.get(..10).unwrap_or(&start))
    } else {
        format!(
            "{} → {}",
            start.get(..16).unwrap_or(&start).replace('T', " "),
            end.get(11..16).unwrap_or(&end)
        )
    };
    vec![
        when,
        zone,
        get("/subject"),
        get("/location/displayName"),
        get("/sensitivity"),
    ]
}

/// A Graph `dateTime` shown in the event's original zone (Graph answers in UTC unless asked).
fn local_time(date_time: &str, given_zone: &str, original_zone: &str) -> String {
    let convert = || -> Option<String> {
        if given_zone != "UTC" {
            return None;
        }
        let iana = crate::graph::zones::iana_for_windows(original_zone)?;
        let dt: jiff::civil::DateTime = date_time.get(..19)?.parse().ok()?;
        let local = dt
            .to_zoned_datetime(jiff::tz::TimeZone::UTC)
            .ok()?
            .with_time_zone(jiff::tz::TimeZone::get(iana).ok()?);
        Some(local.datetime().strftime("%Y-%m-%dT%H:%M:%S").to_string())
    };
    convert().unwrap_or_else(|| date_time.to_string())
}

/// The demo's users: (cyzen user id, mailbox local part, display name, mailbox kind).
pub const DEMO_USERS: [(&str, &str, &str, MailboxKind); 4] = [
    ("u-100", "taro", "Taro Yamada", MailboxKind::Ok),
    ("u-200", "hanako", "Hanako Suzuki", MailboxKind::Ok),
    ("u-300", "jiro", "Jiro Sato", MailboxKind::Ok),
    (
        "u-400",
        "sachiko",
        "Sachiko Ito (no Exchange mailbox)",
        MailboxKind::NoMailbox,
    ),
];

/// What the demo ends with, for the test that pins it.
pub struct DemoOutcome {
    /// mailbox → its events (Graph JSON).
    pub calendars: BTreeMap<String, Vec<serde_json::Value>>,
    pub dead_letters: u32,
    pub report: String,
}

/// A realistic day of schedule events in two windows, published to the local RabbitMQ, synced by
/// an in-process worker into the embedded emulator. Returns the calendars and the printed report.
pub async fn run_demo(window_seconds: u64) -> Result<DemoOutcome, SandboxError> {
    let sb = Sandbox::start("demo", window_seconds, Settings::default()).await?;
    let result = demo_in(&sb, window_seconds).await;
    sb.cleanup().await;
    result
}

async fn demo_in(sb: &Sandbox, window_seconds: u64) -> Result<DemoOutcome, SandboxError> {
    let mut report = String::new();
    let c = "acme";
    let users: Vec<(&str, &str, MailboxKind)> =
        DEMO_USERS.iter().map(|(u, l, _, k)| (*u, *l, *k)).collect();
    let tenant = sb.company(c, Plan::Standard, &users).await?;
    let _ = writeln!(
        report,
        "company {c}: plan standard, Microsoft tenant {} ({}), {} linked users; u-999 is not linked",
        tenant.domain,
        tenant.tenant_id,
        users.len()
    );
    let worker = sb.worker().await?;
    let wait = Duration::from_secs(window_seconds * 3 + 20);

    let window1 = morning(c);
    sb.publish(&window1).await?;
    sb.publish_raw("bad-1", "schedule.created", &typo(c))
        .await?;
    let _ = writeln!(
        report,
        "window 1: published {} events (one twice) and 1 invalid event (end before start)",
        window1.len() - 1
    );
    sb.wait_idle(wait).await?;

    sb.publish(&afternoon(c)).await?;
    let _ = writeln!(
        report,
        "window 2: moved sch-1002 to Tuesday and took Jiro off it (revision 3 arrived before 2), added Jiro to sch-1001, deleted sch-1005"
    );
    if !sb.wait_idle(wait).await? {
        let _ = writeln!(
            report,
            "warning: the worker was still busy after {} seconds; the calendars below may not show every change yet",
            wait.as_secs()
        );
    }
    worker.stop(Duration::from_secs(10)).await;

    let _ = writeln!(report);
    let calendars = calendars(sb, c, &tenant, &mut report).await?;
    let dead_letters = sb.queue_depth(&sb.cfg.amqp.dead_letter_queue).await?;
    totals(sb, dead_letters, &mut report).await;
    Ok(DemoOutcome {
        calendars,
        dead_letters,
        report,
    })
}

/// A visit to Tanaka Industries (created, then renamed), in Tokyo.
fn tanaka_visit(c: &str, revision: u64, memo: &str, others: &[&str]) -> Ev {
    let ev = if revision == 1 {
        Ev::created(c, "sch-1001").title("Visit: Tanaka Industries")
    } else {
        Ev::updated(c, "sch-1001", revision).title("Visit: Tanaka Industries (renewal)")
    };
    ev.memo(memo)
        .at(
            "2026-11-30T10:00:00+09:00",
            "2026-11-30T11:30:00+09:00",
            "Asia/Tokyo",
        )
        .place(
            "Tanaka Industries HQ",
            "1-2-3 Marunouchi, Chiyoda-ku, Tokyo",
        )
        .people("u-100", others)
}

/// A one-off timed schedule in Tokyo on 30 November.
fn tokyo(c: &str, schedule: &str, title: &str, hours: (&str, &str)) -> Ev {
    Ev::created(c, schedule).title(title).at(
        &format!("2026-11-30T{}:00+09:00", hours.0),
        &format!("2026-11-30T{}:00+09:00", hours.1),
        "Asia/Tokyo",
    )
}

/// Window 1: the morning's plans (the weekly meeting is delivered twice).
fn morning(c: &str) -> Vec<WireEvent> {
    let weekly = tokyo(c, "sch-1002", "Weekly sales meeting", ("09:00", "09:30"))
        .place("Head office, room 3", "")
        .people("u-200", &["u-100", "u-300"])
        .wire();
    let quote = "Bring the renewal quote.";
    vec![
        tanaka_visit(c, 1, quote, &["u-200"]).wire(),
        tanaka_visit(c, 2, quote, &["u-200"]).wire(),
        weekly.clone(),
        weekly,
        Ev::created(c, "sch-1003")
            .title("Trade fair, Osaka")
            .all_day("2026-12-01", "2026-12-02")
            .place("INTEX Osaka", "1-5-102 Nanko-kita, Suminoe-ku, Osaka")
            .people("u-300", &["u-100"])
            .wire(),
        tokyo(c, "sch-1004", "Clinic", ("17:00", "18:00"))
            .people("u-200", &[])
            .private()
            .wire(),
        tokyo(c, "sch-1005", "Client dinner", ("19:00", "21:00"))
            .people("u-100", &["u-999"])
            .wire(),
        tokyo(c, "sch-1006", "Demo for Kato Trading", ("14:00", "15:00"))
            .people("u-300", &["u-400"])
            .wire(),
    ]
}

/// An event that breaks the contract (it ends before it starts), as published bytes.
fn typo(c: &str) -> Vec<u8> {
    let mut invalid =
        serde_json::to_value(tokyo(c, "sch-1007", "Typo in the time", ("16:00", "15:00")).wire())
            .expect("json");
    invalid["event_id"] = "bad-1".into();
    invalid.to_string().into_bytes()
}

/// Window 2: the afternoon's edits, one of them delivered out of order.
fn afternoon(c: &str) -> Vec<WireEvent> {
    let moved = |rev: u64, others: &[&str]| {
        Ev::updated(c, "sch-1002", rev)
            .title("Weekly sales meeting (moved to Tuesday)")
            .at(
                "2026-12-01T09:00:00+09:00",
                "2026-12-01T09:30:00+09:00",
                "Asia/Tokyo",
            )
            .place("Head office, room 3", "")
            .people("u-200", others)
            .wire()
    };
    vec![
        moved(3, &["u-100"]),
        moved(2, &["u-100", "u-300"]),
        tanaka_visit(
            c,
            3,
            "Bring the renewal quote. Jiro joins for the demo.",
            &["u-200", "u-300"],
        )
        .wire(),
        Ev::deleted(c, "sch-1005", 2).wire(),
    ]
}

/// Each demo user's calendar in the emulator, as a table in the report.
async fn calendars(
    sb: &Sandbox,
    c: &str,
    tenant: &TenantInfo,
    report: &mut String,
) -> Result<BTreeMap<String, Vec<serde_json::Value>>, SandboxError> {
    let mut calendars = BTreeMap::new();
    for (user, local, name, _) in DEMO_USERS {
        let mailbox = format!("{local}@{}", tenant.domain);
        let events = sb.emulator.emulator.calendar(&mailbox);
        let status = sb
            .directory
            .user(c, user)
            .await?
            .map(|u| match (u.status, u.reason) {
                (UserStatus::Authenticated, _) => "authenticated (認証済み)".to_string(),
                (UserStatus::AuthFailed, r) => {
                    format!("auth failed (認証失敗): {}", r.unwrap_or_default())
                }
            })
            .unwrap_or_default();
        report.push_str(&calendar_table(
            &format!("{name} <{mailbox}>, {user}, {status}"),
            &events,
        ));
        report.push('\n');
        calendars.insert(mailbox, events);
    }
    Ok(calendars)
}

/// What Graph, Redis and the dead-letter queue saw.
async fn totals(sb: &Sandbox, dead_letters: u32, report: &mut String) {
    let stats = sb.emulator.emulator.stats();
    let _ = writeln!(
        report,
        "Graph: {} writes in {} $batch requests ({} creates, {} updates, {} deletes), {} throttled",
        stats.writes,
        stats.batches,
        stats.events_created,
        stats.events_updated,
        stats.events_deleted,
        stats.throttled
    );
    let _ = writeln!(report, "{}", worker_metrics_summary(sb).await);
    let _ = writeln!(
        report,
        "dead-letter queue {}: {dead_letters} messages (the invalid event, and Sachiko's copy: no Exchange mailbox)",
        sb.cfg.amqp.dead_letter_queue
    );
}

async fn worker_metrics_summary(sb: &Sandbox) -> String {
    let mut r = sb.redis.clone();
    let staged: u64 = r
        .keys::<_, Vec<String>>(crate::store::keys(&sb.cfg).staged_pattern())
        .await
        .map(|k| k.len() as u64)
        .unwrap_or(0);
    format!(
        "Redis: {staged} schedules staged (latest revision of each kept; duplicates and older revisions dropped)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(subject: &str, location: &str, start: &str, end: &str) -> serde_json::Value {
        serde_json::json!({
            "subject": subject,
            "isAllDay": false,
            "originalStartTimeZone": "Tokyo Standard Time",
            "start": {"dateTime": start, "timeZone": "Tokyo Standard Time"},
            "end": {"dateTime": end, "timeZone": "Tokyo Standard Time"},
            "location": {"displayName": location},
            "sensitivity": "normal",
        })
    }

    #[test]
    fn a_calendar_with_full_width_japanese_lines_up_by_display_width() {
        let t = calendar_table(
            "Taro Yamada <taro@acme.onmicrosoft.com>",
            &[
                event(
                    "顧客訪問（東京）",
                    "田中工業 本社",
                    "2026-11-30T10:00:00.0000000",
                    "2026-11-30T11:30:00.0000000",
                ),
                event(
                    "Weekly sales meeting",
                    "Head office, room 3",
                    "2026-12-01T09:00:00.0000000",
                    "2026-12-01T09:30:00.0000000",
                ),
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4, "{t}");
        // LOCATION and SENSITIVITY start at the same display column on every row.
        let column = |line: &str, cell: &str| {
            crate::terminal::width(
                &line[..line
                    .find(cell)
                    .unwrap_or_else(|| panic!("{cell} in {line}"))],
            )
        };
        let location = column(lines[1], "LOCATION");
        assert_eq!(column(lines[2], "田中工業"), location, "{t}");
        assert_eq!(column(lines[3], "Head office"), location, "{t}");
        let sensitivity = column(lines[1], "SENSITIVITY");
        assert_eq!(column(lines[2], "normal"), sensitivity, "{t}");
        assert_eq!(column(lines[3], "normal"), sensitivity, "{t}");
        assert!(lines[2].contains("2026-11-30 10:00 → 11:30"), "{t}");
    }
}
