//! `outlook-sync dlq …` and `outlook-sync ledger show …`: the command-line shells over
//! [`super::ops`] and [`crate::ledger`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::ops::{Archive, Dlq, DlqError, Listing, PurgeRequest, ReplayRequest};
use super::queue::{Control, Progress};
use super::record::{Filter, parse_time};
use super::table;
use crate::config::Config;
use crate::ledger::{self, EntryFilter, LedgerError};
use crate::terminal::count;

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List dead letters, oldest first (the queue is left exactly as it was).
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Count dead letters by reason, company and stage.
    Summary {
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Show whole dead letters: the event, the reason, Graph's request-id, attempts, failures,
    /// x-death. ID: a dead-letter id (or a prefix of 6+ characters), or an event id (one event
    /// can have failed for several mailboxes).
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to the work exchange (confirmed before each leaves the queue);
    /// workers re-apply the newest revision only where a copy is behind.
    Replay {
        #[command(flatten)]
        filter: FilterArgs,
        /// Replay every dead letter (required when no filter is given).
        #[arg(long)]
        all: bool,
        /// Only show what would be replayed.
        #[arg(long)]
        dry_run: bool,
        /// Replay at most N (the rest stay in the queue).
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Also replay events that broke the contract (they come back unless it changed).
        #[arg(long)]
        include_invalid: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove dead letters, archiving them as JSON lines first (asks for confirmation).
    Purge {
        #[command(flatten)]
        filter: FilterArgs,
        /// Purge every dead letter (required when no filter is given).
        #[arg(long)]
        all: bool,
        /// Archive file (default: dlq.archive_dir/QUEUE-TIME.jsonl).
        #[arg(long, value_name = "FILE", conflicts_with = "no_archive")]
        archive: Option<PathBuf>,
        /// Do not archive: the purged dead letters are gone.
        #[arg(long)]
        no_archive: bool,
        /// Do not ask (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
}

/// Which dead letters: every given option must match.
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// A dead-letter id (or a prefix of 6+ characters) or an event id; repeatable.
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<String>,
    #[arg(long)]
    pub company: Option<String>,
    #[arg(long)]
    pub schedule: Option<String>,
    /// The mailbox address (case-insensitive).
    #[arg(long)]
    pub mailbox: Option<String>,
    /// A reason code: no_mailbox, retries_exhausted, end_before_start, delivery_limit, …
    #[arg(long)]
    pub reason: Option<String>,
    /// ingest (broke the contract), flush (Graph refused) or broker (x-death).
    #[arg(long)]
    pub stage: Option<String>,
    /// Graph's HTTP status (404, 403, 429, …).
    #[arg(long = "status", value_name = "STATUS")]
    pub graph_status: Option<u16>,
    /// Graph's error code (MailboxNotEnabledForRESTAPI, ErrorAccessDenied, …).
    #[arg(long = "code", value_name = "CODE")]
    pub graph_code: Option<String>,
    /// Last failure at or after: RFC 3339, or an age such as 30m, 2h, 7d.
    #[arg(long)]
    pub since: Option<String>,
    /// Last failure before: RFC 3339, or an age.
    #[arg(long)]
    pub until: Option<String>,
}

impl FilterArgs {
    pub fn filter(&self) -> Result<Filter, CommandError> {
        let now = jiff::Timestamp::now();
        let time = |s: &Option<String>, flag: &str| {
            s.as_deref()
                .map(|s| {
                    parse_time(s, now).map_err(|e| CommandError::Usage(format!("--{flag}: {e}")))
                })
                .transpose()
        };
        Ok(Filter {
            ids: self.ids.clone(),
            company: self.company.clone(),
            schedule: self.schedule.clone(),
            mailbox: self.mailbox.clone(),
            reason: self.reason.clone(),
            stage: self.stage.clone(),
            graph_status: self.graph_status,
            graph_code: self.graph_code.clone(),
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Why is this schedule (not) in Outlook: its staged state, each participant's copy, and
    /// the ledger of every attempt, newest first.
    Show {
        company: String,
        schedule: String,
        /// Only entries about this mailbox or user id (and whole-schedule ones).
        #[arg(long)]
        target: Option<String>,
        /// The newest N entries.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Dlq(#[from] DlqError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// `url` is redacted; the error is shown once (it is not a `source`, whose chain would
    /// repeat it).
    #[error(
        "cannot reach Redis at {url} ({error}); the dlq and ledger commands read and lock there: check redis.url and that Redis is running"
    )]
    Redis {
        url: String,
        error: redis::RedisError,
    },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

async fn redis(cfg: &Config) -> Result<crate::store::Redis, CommandError> {
    crate::store::connect(cfg)
        .await
        .map_err(|error| CommandError::Redis {
            url: crate::amqp::redacted(&cfg.redis.url),
            error,
        })
}

fn json(v: &impl serde::Serialize) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("serializable");
    s.push('\n');
    s
}

/// Ctrl-C once: stop after the current batch (the rest of the queue is put back in order).
/// Twice: stop at once (nothing is lost; the next operation restores the order).
fn stop_on_ctrl_c(control: &Control) -> tokio::task::JoinHandle<()> {
    let control = control.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        eprintln!(
            "stopping after this batch; the rest stays in the queue, in order (Ctrl-C again to stop at once)"
        );
        control.stop_gracefully();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("stopping now; nothing is lost, the next dlq command restores the order");
            control.abandon();
        }
    })
}

fn progress_line(op: table::Op) -> impl FnMut(&Progress) + Send + Sync {
    move |p: &Progress| eprintln!("{}", table::progress(op, p))
}

/// Prints `v` as JSON, or as the text `text` makes of it.
fn print<T: serde::Serialize>(v: &T, as_json: bool, text: fn(&T) -> String) -> std::io::Result<()> {
    let out = if as_json { json(v) } else { text(v) };
    std::io::stdout().lock().write_all(out.as_bytes())
}

pub async fn run_dlq(cfg: &Config, cmd: DlqCommand) -> Result<ExitCode, CommandError> {
    let dlq = Dlq::new(cfg, redis(cfg).await?);
    match cmd {
        DlqCommand::List { filter, json } => {
            print(&dlq.list(&filter.filter()?).await?, json, table::listing)?;
        }
        DlqCommand::Summary { filter, json } => {
            print(&dlq.summary(&filter.filter()?).await?, json, table::summary)?;
        }
        DlqCommand::Show { id, json } => {
            print(&dlq.show(&id).await?, json, |rs: &Vec<_>| {
                table::records(rs)
            })?;
        }
        DlqCommand::Replay {
            filter,
            all,
            dry_run,
            limit,
            include_invalid,
            json,
        } => {
            let req = ReplayRequest {
                filter: filter.filter()?,
                all,
                dry_run,
                limit,
                include_invalid,
            };
            let control = Control::new();
            let watcher = stop_on_ctrl_c(&control);
            let mut progress = progress_line(table::Op::Replay);
            let report = dlq.replay(&req, &control, &mut progress).await;
            watcher.abort();
            print(&report?, json, table::replay)?;
        }
        DlqCommand::Purge {
            filter,
            all,
            archive,
            no_archive,
            yes,
            json,
        } => {
            let archive = match (archive, no_archive) {
                (_, true) => Archive::Discard,
                (Some(p), false) => Archive::Path(p),
                (None, false) => Archive::Path(dlq.archive_path()),
            };
            return purge(&dlq, filter.filter()?, all, archive, yes, json).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `dlq purge`: shows what matches, asks (unless `--yes`), then purges exactly what was shown.
async fn purge(
    dlq: &Dlq,
    filter: Filter,
    all: bool,
    archive: Archive,
    yes: bool,
    json: bool,
) -> Result<ExitCode, CommandError> {
    if filter.is_empty() && !all {
        return Err(CommandError::Usage(
            "no filter was given: pass --all to purge every dead letter, or a filter such as --company or --reason".into(),
        ));
    }
    let listing = dlq.list(&filter).await?;
    if listing.records.is_empty() {
        println!("no dead letter matches; nothing was purged");
        return Ok(ExitCode::SUCCESS);
    }
    if !yes && !confirm_purge(&listing, &archive)? {
        println!("nothing was purged");
        return Ok(ExitCode::from(1));
    }
    let req = PurgeRequest {
        filter,
        all,
        expected: Some(listing.records.iter().map(|r| r.id.clone()).collect()),
        archive,
    };
    let control = Control::new();
    let watcher = stop_on_ctrl_c(&control);
    let mut progress = progress_line(table::Op::Purge);
    let report = dlq.purge(&req, &control, &mut progress).await;
    watcher.abort();
    print(&report?, json, table::purge)?;
    Ok(ExitCode::SUCCESS)
}

/// Shows what a purge would remove and asks on the terminal; refuses without one.
fn confirm_purge(listing: &Listing, archive: &Archive) -> Result<bool, CommandError> {
    let n = count(listing.records.len(), "dead letter", None);
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CommandError::Usage(format!(
            "{n} match; refusing to purge without confirmation, because stdin is not a terminal: pass --yes to purge them"
        )));
    }
    let mut err = std::io::stderr().lock();
    err.write_all(table::listing(listing).as_bytes())?;
    let whereto = match archive {
        Archive::Path(p) => format!(
            "they will be archived in {}",
            crate::terminal::escape(&p.display().to_string())
        ),
        _ => "they will NOT be archived".into(),
    };
    write!(err, "purge these {n} ({whereto})? type yes to go on: ")?;
    err.flush()?;
    let mut answer = String::new();
    stdin.read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "yes" | "y"))
}

pub async fn run_ledger(cfg: &Config, cmd: LedgerCommand) -> Result<ExitCode, CommandError> {
    let LedgerCommand::Show {
        company,
        schedule,
        target,
        limit,
        json: j,
    } = cmd;
    let view = ledger::sync_view(
        cfg,
        redis(cfg).await?,
        &company,
        &schedule,
        &EntryFilter { target, limit },
    )
    .await?;
    print(&view, j, ledger::render)?;
    Ok(ExitCode::SUCCESS)
}
