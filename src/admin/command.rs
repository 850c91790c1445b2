//! `outlook-sync admin …`: the admin API's operations for operators, run directly against Redis
//! and Graph with the service's own configuration (the same [`Admin`] the API serves). Output is
//! the JSON the API would answer, except `bulk`, which prints tables in plain words (`--json`
//! for the JSON); progress of long operations goes to stderr.
//!
//! The client secret is never taken from the command line (it would show in `ps` and shell
//! history): it is read from `--client-secret-file`, the `OUTLOOK_SYNC_CLIENT_SECRET`
//! environment variable, or standard input.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Subcommand;

use super::bulk::{BulkOptions, BulkReport, Outcome};
use super::credentials::NewCredentials;
use super::service::{Admin, AdminError, Progress, ProgressFn, no_progress};
use crate::config::Config;
use crate::graph::client::GraphClient;
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::tenants::{DriftPolicy, Plan};

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Every company with its integration status.
    Companies,
    /// One company's integration status (credentials without the secret, consent, warnings).
    Show {
        company: String,
    },
    /// Create a company or set its plan and options.
    SetPlan {
        company: String,
        #[arg(value_parser = parse_plan)]
        plan: Plan,
        /// An option of the plan (`schedule`); repeat for several.
        #[arg(long = "option")]
        options: Vec<String>,
    },
    /// Set or replace the Microsoft 365 credentials. The secret comes from
    /// --client-secret-file, $OUTLOOK_SYNC_CLIENT_SECRET, or standard input.
    SetCredentials {
        company: String,
        #[arg(long)]
        tenant_id: String,
        #[arg(long)]
        client_id: String,
        #[arg(long)]
        client_secret_file: Option<PathBuf>,
        /// When the secret expires (RFC 3339 or a date, 2027-03-31).
        #[arg(long)]
        secret_expires_at: Option<String>,
    },
    /// Verify the credentials: which problem, or all good.
    Verify {
        company: String,
    },
    /// Forget the credentials (sync stops; copies stay).
    RemoveCredentials {
        company: String,
    },
    /// Turn the integration on (refused on a plan without it).
    Enable {
        company: String,
    },
    Disable {
        company: String,
    },
    /// What the repair pass does with copies deleted or edited in Outlook: repair (restore
    /// them; the default), report (count them and note them in the ledger), or off.
    DriftPolicy {
        company: String,
        #[arg(value_parser = parse_drift_policy)]
        policy: DriftPolicy,
    },
    /// Print an admin-consent link for the customer's administrator.
    ConsentLink {
        company: String,
    },
    /// Linked users with status, last sync and last error.
    Users {
        company: String,
    },
    /// Link a user to a mailbox (checked through Graph).
    Link {
        company: String,
        user: String,
        mailbox: String,
    },
    /// Check a linked user's mailbox again.
    VerifyUser {
        company: String,
        user: String,
    },
    /// Unlink a user; --delete-copies also deletes the copies in their calendar.
    Unlink {
        company: String,
        user: String,
        #[arg(long)]
        delete_copies: bool,
    },
    /// Link or unlink users from a CSV file (cyzen_user_id,email[,action], or the Japanese
    /// header ユーザーID,メールアドレス[,操作]; UTF-8 or Shift_JIS as Excel saves it).
    Bulk {
        company: String,
        file: PathBuf,
        /// Only report what would happen, row by row.
        #[arg(long)]
        dry_run: bool,
        /// Unlink rows also delete the users' copies.
        #[arg(long)]
        delete_copies: bool,
        /// Print the report as the API's JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Remove the company's integration: delete every copy this service created (unless
    /// --keep-copies), unlink every user, forget the credentials.
    RemoveIntegration {
        company: String,
        #[arg(long)]
        keep_copies: bool,
    },
    /// Re-encrypt stored secrets with the active key (after adding a key to secrets.keys).
    Reseal,
    /// Companies whose recorded secret expiry is within admin.secret_expiry_warning_days.
    SecretExpiry,
}

fn parse_plan(s: &str) -> Result<Plan, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| "one of lite, lite_plus, standard, premium, enterprise".to_string())
}

fn parse_drift_policy(s: &str) -> Result<DriftPolicy, String> {
    DriftPolicy::parse(&s.to_ascii_lowercase())
        .ok_or_else(|| "one of repair, report, off".to_string())
}

/// Why `outlook-sync admin` could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum AdminCommandError {
    #[error("{0} [{code}]", code = .0.code())]
    Admin(#[from] AdminError),
    #[error("Redis is unreachable at {url}: {source}")]
    Redis {
        url: String,
        source: redis::RedisError,
    },
    #[error("{0}")]
    Input(String),
    #[error("writing the output: {0}")]
    Io(#[from] std::io::Error),
}

fn print(v: &impl serde::Serialize) -> Result<(), AdminCommandError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// Prints `label: done/total` to stderr at most once per 5 % and once at the end (never the
/// same figure twice).
fn progress_printer(label: &'static str) -> ProgressFn {
    let last = Arc::new(std::sync::Mutex::new(None::<(usize, usize)>));
    Arc::new(move |p: Progress| {
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let step = (p.total / 20).max(1);
        let due = match *last {
            None => true,
            Some((done, total)) => {
                (done, total) != (p.done, p.total)
                    && (p.done == p.total || done / step != p.done / step)
            }
        };
        if due {
            *last = Some((p.done, p.total));
            eprintln!("{label}: {}/{}", p.done, p.total);
        }
    })
}

/// An outcome in plain words.
fn outcome_words(o: Outcome) -> &'static str {
    match o {
        Outcome::WouldLink => "would link",
        Outcome::WouldRelink => "would link to the new address",
        Outcome::WouldUnlink => "would unlink",
        Outcome::Linked => "linked",
        Outcome::Relinked => "linked to the new address",
        Outcome::Unlinked => "unlinked",
        Outcome::Unchanged => "unchanged",
        Outcome::Error => "would not be done",
        Outcome::Skipped => "not done",
    }
}

/// A bulk report as tables: each row, then how many rows had each outcome and each reason.
pub fn bulk_text(company: &str, r: &BulkReport) -> String {
    use crate::terminal::table;
    let mut out = format!(
        "bulk file for company {company}{}: {} row(s)\n",
        if r.dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        },
        r.rows
    );
    let rows: Vec<Vec<String>> = r
        .results
        .iter()
        .map(|x| {
            vec![
                x.line.to_string(),
                if x.user_id.is_empty() {
                    "-".into()
                } else {
                    x.user_id.clone()
                },
                if x.email.is_empty() {
                    "-".into()
                } else {
                    x.email.clone()
                },
                outcome_words(x.outcome).to_string(),
                x.reason
                    .as_ref()
                    .map_or(String::new(), |why| match &why.detail {
                        Some(d) => format!("{}: {} ({d})", why.code, why.message.en),
                        None => format!("{}: {}", why.code, why.message.en),
                    }),
            ]
        })
        .collect();
    out.push_str(&table(&["LINE", "USER", "EMAIL", "OUTCOME", "WHY"], &rows));
    out.push_str("\noutcomes:\n");
    let outcomes: Vec<Vec<String>> = r
        .summary
        .iter()
        .map(|(o, n)| vec![outcome_words(*o).to_string(), n.to_string()])
        .collect();
    out.push_str(&table(&["OUTCOME", "ROWS"], &outcomes));
    if !r.reasons.is_empty() {
        out.push_str("\nreasons:\n");
        let reasons: Vec<Vec<String>> = r
            .reasons
            .iter()
            .map(|(code, n)| {
                vec![
                    code.clone(),
                    n.to_string(),
                    super::messages::reason(code).en.to_string(),
                ]
            })
            .collect();
        out.push_str(&table(&["REASON", "ROWS", "MEANING"], &reasons));
    }
    out
}

fn read_secret(file: Option<&PathBuf>) -> Result<Secret, AdminCommandError> {
    let raw = if let Some(path) = file {
        std::fs::read_to_string(path)
            .map_err(|e| AdminCommandError::Input(format!("cannot read {}: {e}", path.display())))?
    } else if let Ok(v) = std::env::var("OUTLOOK_SYNC_CLIENT_SECRET") {
        v
    } else {
        let mut stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("client secret (input is read until end of file):");
        }
        let mut s = String::new();
        stdin.read_to_string(&mut s)?;
        s
    };
    let secret = raw.trim();
    if secret.is_empty() {
        return Err(AdminCommandError::Input(
            "the client secret is empty".into(),
        ));
    }
    Ok(Secret::new(secret))
}

fn parse_expiry(s: &str) -> Result<jiff::Timestamp, AdminCommandError> {
    if let Ok(t) = s.parse::<jiff::Timestamp>() {
        return Ok(t);
    }
    let d: jiff::civil::Date = s.parse().map_err(|_| {
        AdminCommandError::Input(format!(
            "--secret-expires-at {s:?}: use 2027-03-31 or RFC 3339"
        ))
    })?;
    jiff::tz::TimeZone::UTC
        .to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
        .map_err(|e| AdminCommandError::Input(e.to_string()))
}

/// Runs one admin command; exit 0 on success, 1 when the outcome is a failure (a verification
/// that found a problem, a bulk file with skipped rows).
pub async fn run(cfg: Config, cmd: AdminCommand) -> Result<ExitCode, AdminCommandError> {
    let redis = crate::store::connect(&cfg)
        .await
        .map_err(|source| AdminCommandError::Redis {
            url: cfg.redis.url.clone(),
            source,
        })?;
    let admin = Admin::new(
        Arc::new(cfg.clone()),
        redis,
        GraphClient::new(&cfg.graph),
        Metrics::new(),
    );
    let audited = audited_write(&cmd);
    let failed = execute(&admin, cmd).await?;
    if let Some((company, action)) = audited {
        record_audit(&admin, &company, action).await;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The company and action of a command that writes one company (recorded in the audit as the
/// API's writes are); `None` for reads, dry runs and `reseal` (every company, the key only).
fn audited_write(cmd: &AdminCommand) -> Option<(String, &'static str)> {
    let (company, action) = match cmd {
        AdminCommand::SetPlan { company, .. } => (company, "admin set-plan"),
        AdminCommand::SetCredentials { company, .. } => (company, "admin set-credentials"),
        AdminCommand::Verify { company } => (company, "admin verify"),
        AdminCommand::RemoveCredentials { company } => (company, "admin remove-credentials"),
        AdminCommand::Enable { company } => (company, "admin enable"),
        AdminCommand::Disable { company } => (company, "admin disable"),
        AdminCommand::ConsentLink { company } => (company, "admin consent-link"),
        AdminCommand::Link { company, .. } => (company, "admin link"),
        AdminCommand::VerifyUser { company, .. } => (company, "admin verify-user"),
        AdminCommand::Unlink { company, .. } => (company, "admin unlink"),
        AdminCommand::Bulk {
            company, dry_run, ..
        } if !dry_run => (company, "admin bulk"),
        AdminCommand::RemoveIntegration { company, .. } => (company, "admin remove-integration"),
        _ => return None,
    };
    Some((company.clone(), action))
}

/// Records a command-line write in the audit: its name is `command-line` and the operating
/// system user who ran it (`$USER`), as the operator's own account says.
async fn record_audit(admin: &Admin, company: &str, action: &str) {
    use crate::tenants::AuditLog;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let actor = format!("command-line:{user}");
    let summary = format!("outlook-sync {action} {company}");
    if let Err(e) = admin
        .directory()
        .record_audit(&actor, company, action, &summary)
        .await
    {
        eprintln!("warning: done, but its audit entry was not recorded: {e}");
    }
}

/// Runs the command and prints its answer; whether the outcome is a failure.
async fn execute(admin: &Admin, cmd: AdminCommand) -> Result<bool, AdminCommandError> {
    let mut failed = false;
    match cmd {
        AdminCommand::Companies => companies(admin).await?,
        AdminCommand::Show { company } => print(&admin.company_status(&company).await?)?,
        AdminCommand::SetPlan {
            company,
            plan,
            options,
        } => print(&admin.put_company(&company, plan, options).await?)?,
        AdminCommand::SetCredentials {
            company,
            tenant_id,
            client_id,
            client_secret_file,
            secret_expires_at,
        } => {
            let new = NewCredentials {
                tenant_id,
                client_id,
                client_secret: read_secret(client_secret_file.as_ref())?,
                secret_expires_at: secret_expires_at.as_deref().map(parse_expiry).transpose()?,
            };
            print(&admin.set_credentials(&company, new).await?)?;
        }
        AdminCommand::Verify { company } => {
            let v = admin.verify_credentials(&company).await?;
            failed = !v.ok;
            print(&v)?;
        }
        AdminCommand::RemoveCredentials { company } => {
            print(&admin.remove_credentials(&company).await?)?
        }
        AdminCommand::Enable { company } => print(&admin.enable(&company).await?)?,
        AdminCommand::Disable { company } => print(&admin.disable(&company).await?)?,
        AdminCommand::DriftPolicy { company, policy } => {
            print(&admin.set_drift_policy(&company, policy).await?)?
        }
        AdminCommand::ConsentLink { company } => print(&admin.consent_link(&company).await?)?,
        AdminCommand::Users { company } => print(&admin.list_users(&company).await?)?,
        AdminCommand::Link {
            company,
            user,
            mailbox,
        } => {
            let u = admin.link_user(&company, &user, &mailbox).await?;
            failed = u.status != crate::tenants::UserStatus::Authenticated;
            print(&u)?;
        }
        AdminCommand::VerifyUser { company, user } => {
            let u = admin.verify_user(&company, &user).await?;
            failed = u.status != crate::tenants::UserStatus::Authenticated;
            print(&u)?;
        }
        AdminCommand::Unlink {
            company,
            user,
            delete_copies,
        } => unlink(admin, &company, &user, delete_copies).await?,
        AdminCommand::Bulk {
            company,
            file,
            dry_run,
            delete_copies,
            json,
        } => {
            let opts = BulkOptions {
                dry_run,
                delete_copies,
            };
            failed = bulk(admin, &company, &file, opts, json).await?;
        }
        AdminCommand::RemoveIntegration {
            company,
            keep_copies,
        } => print(
            &admin
                .remove_integration(&company, !keep_copies, progress_printer("copies"))
                .await?,
        )?,
        AdminCommand::Reseal => failed = reseal(admin).await?,
        AdminCommand::SecretExpiry => {
            print(&admin.refresh_secret_expiry_metrics().await?)?;
        }
    }
    Ok(failed)
}

/// `companies`: every company with its integration status.
async fn companies(admin: &Admin) -> Result<(), AdminCommandError> {
    let mut all = Vec::new();
    for id in admin
        .directory()
        .company_ids()
        .await
        .map_err(AdminError::from)?
    {
        all.push(admin.company_status(&id).await?);
    }
    print(&all)
}

/// `unlink`: with `--delete-copies`, the copies' progress goes to stderr.
async fn unlink(
    admin: &Admin,
    company: &str,
    user: &str,
    delete_copies: bool,
) -> Result<(), AdminCommandError> {
    let progress = if delete_copies {
        progress_printer("copies")
    } else {
        no_progress()
    };
    print(
        &admin
            .unlink_user(company, user, delete_copies, progress)
            .await?,
    )
}

/// `bulk`: the report as tables (or, with `--json`, the API's JSON); whether rows were refused.
async fn bulk(
    admin: &Admin,
    company: &str,
    file: &std::path::Path,
    opts: BulkOptions,
    json: bool,
) -> Result<bool, AdminCommandError> {
    let bytes = std::fs::read(file)
        .map_err(|e| AdminCommandError::Input(format!("cannot read {}: {e}", file.display())))?;
    let text = super::bulk::decode_csv(&bytes)?;
    let report = admin
        .bulk(company, &text, opts, progress_printer("rows"))
        .await?;
    if json {
        print(&report)?;
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(bulk_text(company, &report).as_bytes())?;
    }
    Ok(!report.reasons.is_empty())
}

/// `reseal`: every stored secret sealed again with the active key; whether any failed.
async fn reseal(admin: &Admin) -> Result<bool, AdminCommandError> {
    let r = admin
        .directory()
        .reseal_all()
        .await
        .map_err(AdminError::from)?;
    print(&serde_json::json!({
        "companies": r.companies,
        "resealed": r.resealed,
        "failed": r.failed,
    }))?;
    Ok(!r.failed.is_empty())
}
