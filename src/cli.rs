//! The command line. Each subcommand is a thin shell over a library module; `anyhow` lives only
//! here and in `main`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::amqp::{self, Publisher, Topology};
use crate::config::Config;
use crate::event::{self, WireEvent};

#[derive(Debug, Parser)]
#[command(
    name = "outlook-sync",
    version,
    about = "Mirrors cyzen schedules into linked users' Outlook calendars through Microsoft Graph"
)]
pub struct Cli {
    /// TOML configuration file (keys and defaults: `outlook-sync config-defaults`).
    #[arg(long, global = true, env = "OUTLOOK_SYNC_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a worker: ingest from RabbitMQ, stage windows in Redis, flush to Graph.
    Run,
    #[cfg(feature = "emulator")]
    /// The demo: a realistic day of schedule events in, each user's Outlook calendar out (local
    /// RabbitMQ and Redis, the embedded Graph emulator).
    Demo {
        /// Window length in seconds (production: 300).
        #[arg(long, default_value_t = 3)]
        window_seconds: u64,
    },
    /// Publish events from JSON files (an object, an array, or JSON lines) with publisher confirms.
    Publish(PublishArgs),
    /// Check messages against the v1 contract and say why each invalid one is invalid.
    Validate {
        /// Files holding one event each (an array or JSON lines are checked item by item).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also check each message against the AMQP routing key it would be published with, as
        /// the worker does: it must be the message's event_type.
        #[arg(long, value_name = "KEY")]
        routing_key: Option<String>,
    },
    #[cfg(feature = "emulator")]
    /// Serve the Microsoft Graph emulator (token endpoint, events, $batch, throttling, faults).
    GraphEmulator {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
        /// Seed file (JSON) with tenants, apps, secrets and users; see README.
        #[arg(long)]
        seed: Option<PathBuf>,
    },
    #[cfg(feature = "emulator")]
    /// Measure the pipeline against its targets (local RabbitMQ/Redis, the embedded emulator) and
    /// write BENCHMARKS.md. Build with --release.
    Bench {
        /// quick: under a minute; full: a few minutes.
        #[arg(long, value_enum, default_value = "quick")]
        size: crate::bench::Size,
        /// Where to write the report.
        #[arg(long, default_value = "BENCHMARKS.md")]
        out: PathBuf,
        /// Run only the figures whose name contains one of these (ingest, coalescing, drain,
        /// memory, scale, repair, latency, cluster).
        #[arg(long)]
        only: Vec<String>,
    },
    /// Company credentials, consent, plan gating and linked users (the admin API's operations,
    /// run directly against Redis and Graph with this configuration).
    Admin {
        #[command(subcommand)]
        command: crate::admin::command::AdminCommand,
    },
    /// The directory's PostgreSQL: apply the migrations, move an old Redis directory in.
    Db {
        #[command(subcommand)]
        command: DbCommand,
    },
    /// Dead letters: list, summary, show, replay, purge (safe by construction: the queue keeps
    /// every message it does not replay or purge, once, in order).
    Dlq {
        #[command(subcommand)]
        command: crate::deadletter::command::DlqCommand,
    },
    /// The sync ledger: why a schedule is (not) in Outlook.
    Ledger {
        #[command(subcommand)]
        command: crate::deadletter::command::LedgerCommand,
    },
    /// Is anything still waiting? The work queue, what the workers hold, staged, due and claimed
    /// schedules, open changes and those waiting on a throttled mailbox, fleet-wide.
    Backlog {
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
        /// Wait until nothing is waiting anywhere (exit 0), or until --timeout (exit 1).
        #[arg(long)]
        wait_empty: bool,
        /// How long --wait-empty waits, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Load and check the configuration, then print it (secrets redacted).
    CheckConfig,
    /// Print the commented default configuration.
    ConfigDefaults,
}

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Apply the pending migrations (safe while workers run, and from several pods at once).
    Migrate,
    /// Copy the directory (companies, sealed secrets, linked users) that versions before
    /// PostgreSQL kept in Redis into PostgreSQL. Running it again changes nothing.
    ImportRedisDirectory,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Also publish events that break the contract (to exercise dead-lettering).
    #[arg(long)]
    pub allow_invalid: bool,
    /// Declare the exchange and queues first (they normally exist already).
    #[arg(long)]
    pub declare: bool,
}

pub async fn main(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    match cli.command {
        Command::ConfigDefaults => {
            print!("{}", crate::config::DEFAULTS_TOML);
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files, routing_key } => validate(&files, routing_key.as_deref()),
        Command::Dlq { command } => {
            let cfg = load_config(cli.config.as_deref())?;
            crate::telemetry::init_logging(&quiet_log(&cfg));
            Ok(crate::deadletter::command::run_dlq(&cfg, command).await?)
        }
        Command::Backlog {
            json,
            wait_empty,
            timeout,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            crate::telemetry::init_logging(&quiet_log(&cfg));
            backlog(
                &cfg,
                json,
                wait_empty.then(|| std::time::Duration::from_secs(timeout)),
            )
            .await
        }
        Command::Db { command } => {
            let cfg = load_config(cli.config.as_deref())?;
            crate::telemetry::init_logging(&quiet_log(&cfg));
            db(&cfg, command).await
        }
        Command::Ledger { command } => {
            let cfg = load_config(cli.config.as_deref())?;
            crate::telemetry::init_logging(&quiet_log(&cfg));
            Ok(crate::deadletter::command::run_ledger(&cfg, command).await?)
        }
        Command::CheckConfig => check_config(cli.config.as_deref()),
        Command::Publish(args) => {
            let cfg = load_config(cli.config.as_deref())?;
            crate::telemetry::init_logging(&cfg.log);
            publish(&cfg, &args).await
        }
        #[cfg(feature = "emulator")]
        Command::GraphEmulator { listen, seed } => {
            crate::telemetry::init_logging(&crate::config::LogConfig::default());
            let settings = graph_emulator::Settings::default();
            graph_emulator::run_standalone(listen, seed, settings).await?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "emulator")]
        Command::Demo { window_seconds } => demo(window_seconds).await,
        #[cfg(feature = "emulator")]
        Command::Bench { size, out, only } => bench(size, &out, &only).await,
        Command::Admin { command } => {
            let cfg = load_config(cli.config.as_deref())?;
            let log = crate::config::LogConfig {
                filter: "warn".into(),
                ..cfg.log.clone()
            };
            crate::telemetry::init_logging(&log);
            Ok(crate::admin::command::run(cfg, command).await?)
        }
        Command::Run => {
            let cfg = load_config(cli.config.as_deref())?;
            crate::telemetry::init_logging(&cfg.log);
            for warning in cfg.warnings() {
                tracing::warn!("INSECURE CONFIGURATION: {warning}");
            }
            run(cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `outlook-sync check-config`: the effective configuration as TOML, secrets redacted.
fn check_config(path: Option<&Path>) -> anyhow::Result<std::process::ExitCode> {
    let cfg = load_config(path)?;
    for warning in cfg.warnings() {
        eprintln!("warning: {warning}");
    }
    let from = match path {
        Some(path) => format!("the defaults, then {}, then", path.display()),
        None => "the defaults, then".into(),
    };
    println!(
        "# The configuration is valid. Effective values ({from} OUTLOOK_SYNC__* \
         variables), secrets redacted:\n"
    );
    print!("{}", cfg.to_redacted_toml());
    Ok(std::process::ExitCode::SUCCESS)
}

/// `outlook-sync demo`.
#[cfg(feature = "emulator")]
async fn demo(window_seconds: u64) -> anyhow::Result<std::process::ExitCode> {
    let log = crate::config::LogConfig {
        filter: "warn,lapin=off".into(),
        ..Default::default()
    };
    crate::telemetry::init_logging(&log);
    println!(
        "outlook-sync demo: {window_seconds}-second windows, local RabbitMQ and Redis, embedded Graph emulator\n"
    );
    let outcome = crate::demo::run_demo(window_seconds).await?;
    print!("{}", outcome.report);
    Ok(std::process::ExitCode::SUCCESS)
}

/// `outlook-sync bench`: the figures, printed and written to `out`.
#[cfg(feature = "emulator")]
async fn bench(
    size: crate::bench::Size,
    out: &Path,
    only: &[String],
) -> anyhow::Result<std::process::ExitCode> {
    let log = crate::config::LogConfig {
        filter: "error,lapin=off".into(),
        ..Default::default()
    };
    crate::telemetry::init_logging(&log);
    let binary = std::env::current_exe().context("locating the outlook-sync binary")?;
    let report = crate::bench::run(size, &binary, only).await?;
    println!("{}", report.table());
    crate::bench::write_markdown(&report, out)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("written to {}", out.display());
    Ok(std::process::ExitCode::SUCCESS)
}

/// `outlook-sync db …`.
async fn db(cfg: &Config, command: DbCommand) -> anyhow::Result<std::process::ExitCode> {
    let directory = crate::tenants::Directory::from_config(cfg);
    let at = || {
        format!(
            "PostgreSQL at {} (database.url), schema {} (database.schema)",
            amqp::redacted(&cfg.database.url),
            cfg.database.schema
        )
    };
    let applied = directory
        .db()
        .migrate()
        .await
        .with_context(|| format!("cannot migrate {}", at()))?;
    match applied.as_slice() {
        [] => println!("{}: up to date", at()),
        v => println!("{}: applied migrations {v:?}", at()),
    }
    if let DbCommand::ImportRedisDirectory = command {
        let redis = crate::store::connect(cfg).await.with_context(|| {
            format!(
                "cannot reach Redis at {} (redis.url)",
                amqp::redacted(&cfg.redis.url)
            )
        })?;
        let from = crate::tenants::RedisDirectory::new(redis, crate::store::keys(cfg));
        let r = from
            .import_into(&directory)
            .await
            .context("the import stopped (what was copied stays; run it again)")?;
        println!(
            "imported from Redis: {} companies ({} written, {} already there), {} linked users ({} written, {} already there)",
            r.companies,
            r.companies_written,
            r.companies - r.companies_written,
            r.users,
            r.users_written,
            r.users - r.users_written
        );
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Applies the migrations at start (`database.migrate_on_start`), retrying while PostgreSQL is
/// unreachable: a worker never fails to start on an outage.
fn migrate_in_background(cfg: &Config) -> Option<tokio::task::JoinHandle<()>> {
    if !cfg.database.migrate_on_start {
        return None;
    }
    let db = crate::tenants::db::Db::new(&cfg.database);
    Some(tokio::spawn(async move {
        let mut backoff = crate::runtime::Backoff::new(
            std::time::Duration::from_millis(500),
            std::time::Duration::from_secs(30),
        );
        loop {
            match db.migrate().await {
                Ok(v) => {
                    tracing::info!(applied = ?v, schema = db.schema(), "database: migrations up to date");
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "database: cannot apply the migrations yet; retrying (or run `outlook-sync db migrate`)");
                    tokio::time::sleep(backoff.delay()).await;
                }
            }
        }
    }))
}

/// `outlook-sync run`: a worker until SIGTERM or Ctrl-C, then a bounded drain.
async fn run(cfg: Config) -> anyhow::Result<()> {
    use crate::worker::{Worker, shutdown_signal};
    let addr = cfg.admin_addr();
    let admin_cfg = std::sync::Arc::new(cfg.clone());
    let grace = std::time::Duration::from_secs(cfg.worker.shutdown_grace_seconds);
    let _migrate = migrate_in_background(&cfg).map(crate::runtime::AbortOnDrop);
    // Never fails on an unreachable Redis or RabbitMQ: the worker starts not ready and connects
    // when they are there.
    let worker = Worker::start(cfg).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (admin.listen)"))?;
    // The address it got (admin.listen may ask for port 0: any free port).
    let addr = listener.local_addr().unwrap_or(addr);
    tracing::info!(%addr, "serving /healthz, /readyz, /metrics");
    let admin = crate::admin::Admin::new(
        admin_cfg.clone(),
        worker.redis.clone(),
        crate::graph::client::GraphClient::new(&admin_cfg.graph),
        worker.metrics.clone(),
    );
    tracing::info!(%addr, "serving the admin API under /v1");
    let api = crate::admin::api::router(admin.clone());
    let app = crate::admin::router(worker.health()).merge(api);
    let limits = crate::admin::listener::Limits::from_config(&admin_cfg.admin);
    // The consent callback on a listener of its own, for the internet (admin.public_listen).
    let public = match admin_cfg.admin.public_listen.as_str() {
        "" => None,
        public_addr => {
            let l = tokio::net::TcpListener::bind(public_addr)
                .await
                .with_context(|| format!("cannot listen on {public_addr} (admin.public_listen)"))?;
            let got = l
                .local_addr()
                .map(|a| a.to_string())
                .unwrap_or(public_addr.to_string());
            tracing::info!(addr = %got, "serving the admin-consent callback (only) on the public listener");
            let app = crate::admin::api::public_router(admin.clone());
            Some(tokio::spawn(crate::admin::listener::serve(
                l,
                app,
                limits,
                shutdown_signal(),
            )))
        }
    };
    // The secret-expiry metric: at start, then every ten minutes.
    let expiry = tokio::spawn(async move {
        loop {
            if let Err(e) = admin.refresh_secret_expiry_metrics().await {
                tracing::warn!(error = %e, redis = %amqp::redacted(&admin_cfg.redis.url), "cannot refresh the secret-expiry metric");
            }
            tokio::time::sleep(std::time::Duration::from_secs(600)).await;
        }
    });
    let server = tokio::spawn(crate::admin::listener::serve(
        listener,
        app,
        limits,
        shutdown_signal(),
    ));
    let mut fatal = worker.fatal();
    let why = tokio::select! {
        _ = shutdown_signal() => None,
        seen = fatal.wait_for(Option::is_some) => seen.ok().and_then(|w| w.clone()),
    };
    tracing::info!(
        grace_seconds = grace.as_secs(),
        "shutting down: no new deliveries; finishing the current flush"
    );
    let stopped = worker.stop(grace).await;
    expiry.abort();
    // The HTTP server stopped accepting on the same signal; give open requests a moment.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), server).await;
    if let Some(public) = public {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), public).await;
    }
    tracing::info!(
        drained = stopped.drained,
        released_claims = stopped.released_claims,
        "stopped"
    );
    match why {
        Some(why) => Err(anyhow::anyhow!("the worker stopped: {why}")),
        None => Ok(()),
    }
}

/// Operator commands print their results; their logs only say what went wrong (and not twice:
/// the dead-letter operations' own failure and purge lines repeat what the command prints).
fn quiet_log(cfg: &Config) -> crate::config::LogConfig {
    crate::config::LogConfig {
        filter: "warn,lapin=off,outlook_sync::deadletter::ops=error".into(),
        ..cfg.log.clone()
    }
}

/// The configuration, or an error naming where and which key is wrong (never a secret's value)
/// and how to check a fix.
pub fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    Config::load(path).map_err(|e| {
        anyhow::anyhow!(
            "the configuration cannot be used: {e}\n(fix it, then check it with `outlook-sync \
             check-config`; every key and its default: `outlook-sync config-defaults`)"
        )
    })
}

/// Reads a file holding one JSON message, a JSON array of messages, or JSON lines, and returns
/// each message's raw bytes with a label for messages.
pub fn read_messages(path: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let name = path.display().to_string();
    let trimmed = bytes.trim_ascii_start();
    // Each item of an array keeps its own bytes, exactly as written (a re-serialized value would
    // have lost, for one, a member named twice).
    if trimmed.first() == Some(&b'[')
        && let Ok(items) = serde_json::from_slice::<Vec<&serde_json::value::RawValue>>(&bytes)
    {
        return Ok(items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{name}[{i}]"), v.get().as_bytes().to_vec()))
            .collect());
    }
    let lines: Vec<&[u8]> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .collect();
    let is_json_lines = lines.len() > 1
        && lines
            .iter()
            .all(|l| serde_json::from_slice::<serde_json::Value>(l).is_ok());
    if is_json_lines {
        return Ok(lines
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("{name}:{}", i + 1), l.to_vec()))
            .collect());
    }
    Ok(vec![(name, bytes)])
}

fn validate(
    files: &[PathBuf],
    routing_key: Option<&str>,
) -> anyhow::Result<std::process::ExitCode> {
    let mut invalid = 0usize;
    let mut total = 0usize;
    let mut out = std::io::stdout().lock();
    for path in files {
        for (label, body) in read_messages(path)? {
            total += 1;
            let decoded = match routing_key {
                Some(key) => event::decode_delivery(&body, key),
                None => event::decode(&body),
            };
            match decoded {
                Ok(ev) => writeln!(
                    out,
                    "valid    {label}: {} {} revision {}",
                    ev.event_type.routing_key(),
                    ev.schedule_id,
                    ev.revision
                )?,
                Err(e) => {
                    invalid += 1;
                    writeln!(out, "INVALID  {label}: {e}")?;
                }
            }
        }
    }
    writeln!(out, "{} valid, {invalid} invalid", total - invalid)?;
    Ok(if invalid == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    })
}

async fn publish(cfg: &Config, args: &PublishArgs) -> anyhow::Result<std::process::ExitCode> {
    use crate::terminal::escape;
    let mut messages = Vec::new();
    let mut refused = 0usize;
    for path in &args.files {
        for (label, body) in read_messages(path)? {
            let label = escape(&label).into_owned();
            match event::decode(&body) {
                Ok(ev) => messages.push((label, ev.event_id, ev.event_type.routing_key(), body)),
                Err(e) if args.allow_invalid => {
                    eprintln!(
                        "{label} breaks the contract; publishing it anyway (--allow-invalid): {}",
                        escape(&e.to_string())
                    );
                    let wire: Option<WireEvent> = serde_json::from_slice(&body).ok();
                    let (id, key) = wire
                        .map(|w| (w.event_id, w.event_type.routing_key()))
                        .unwrap_or_else(|| (uuid::Uuid::new_v4().to_string(), "schedule.updated"));
                    messages.push((label, id, key, body));
                }
                Err(e) => {
                    refused += 1;
                    eprintln!(
                        "{label} breaks the contract, so it is not published: {}",
                        escape(&e.to_string())
                    );
                }
            }
        }
    }
    if refused > 0 {
        let (which, them) = if refused == 1 {
            ("1 message breaks".to_string(), "it")
        } else {
            (format!("{refused} messages break"), "them")
        };
        bail!(
            "{which} the contract, so nothing was published; fix {them}, or pass --allow-invalid to publish {them} anyway"
        );
    }
    let conn = amqp::connect(&cfg.amqp.url, "outlook-sync publish")
        .await
        .context("nothing was published: RabbitMQ is not reachable (amqp.url; scripts/services.sh starts a local one)")?;
    let publisher = Publisher::new(&conn).await?;
    if args.declare {
        Topology::new(&cfg.amqp)
            .declare(publisher.channel())
            .await?;
    }
    let exchange = escape(&cfg.amqp.exchange);
    for (i, (label, id, key, body)) in messages.iter().enumerate() {
        publisher
            .publish(
                &cfg.amqp.exchange,
                key,
                body,
                amqp::event_properties(id, key),
            )
            .await
            .with_context(|| {
                let before = match i {
                    0 => "nothing was published".to_string(),
                    1 => "the message before it was published and confirmed".to_string(),
                    n => format!("the {n} messages before it were published and confirmed"),
                };
                format!("publishing {label} to exchange {exchange} failed; {before}")
            })?;
        println!(
            "published {label} with routing key {key} and message id {}",
            escape(id)
        );
    }
    println!(
        "RabbitMQ confirmed {} published to exchange {exchange}",
        match messages.len() {
            1 => "the event".to_string(),
            n => format!("each of the {n} events"),
        }
    );
    let _ = conn.close(200, "done".into()).await;
    Ok(std::process::ExitCode::SUCCESS)
}

/// `outlook-sync backlog`: prints what waits where; with `wait`, polls until nothing has waited
/// anywhere for three reports in a row (exit 0) or the time is up (exit 1).
async fn backlog(
    cfg: &Config,
    json: bool,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<std::process::ExitCode> {
    use std::process::ExitCode;
    let redis = crate::store::connect(cfg).await.with_context(|| {
        format!(
            "cannot reach Redis at {} (redis.url)",
            amqp::redacted(&cfg.redis.url)
        )
    })?;
    let deadline = wait.map(|w| tokio::time::Instant::now() + w);
    let mut quiet = 0;
    loop {
        let b = crate::fleet::backlog(cfg, redis.clone()).await?;
        quiet = if b.empty { quiet + 1 } else { 0 };
        let done = match deadline {
            None => true,
            Some(_) if quiet >= 3 => true,
            Some(d) => tokio::time::Instant::now() >= d,
        };
        if done {
            if json {
                println!("{}", serde_json::to_string_pretty(&b)?);
            } else {
                print!("{}", backlog_text(&b));
            }
            let waited_in_vain = deadline.is_some() && !b.empty;
            return Ok(if waited_in_vain {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        tokio::time::sleep(crate::fleet::BEAT / 2).await;
    }
}

fn backlog_text(b: &crate::fleet::Backlog) -> String {
    let words = [
        ("queued", "on the work queue"),
        ("in_hand", "received by a worker, not acked yet"),
        ("staged", "staged, window still open"),
        ("due", "due, waiting for a worker"),
        ("claimed", "being flushed"),
        ("open_changes", "changes open in the workers"),
        (
            "waiting_on_mailboxes",
            "  of which waiting on a throttled mailbox",
        ),
    ];
    let mut out = String::new();
    for ((_, n), (_, label)) in b.parts().iter().zip(words) {
        let n = n.map_or_else(
            || "? (RabbitMQ did not answer)".to_string(),
            |n| n.to_string(),
        );
        out.push_str(&format!("{label:<42} {n}\n"));
    }
    out.push_str(&format!(
        "{:<42} {}\n{:<42} {}\n",
        "the oldest has waited",
        crate::runtime::human_duration(std::time::Duration::from_secs_f64(b.oldest_age_seconds)),
        "workers reporting",
        b.workers
    ));
    out.push_str(if b.empty {
        "nothing is waiting: every change published so far is in Outlook or a dead letter\n"
    } else {
        "changes are still on their way to Outlook\n"
    });
    out
}
