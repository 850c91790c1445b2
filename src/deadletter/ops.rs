//! The operations on the dead-letter queue: list, summary, show, replay, purge. Each is one
//! [rotation](super::queue) of the queue under its lock, so each leaves every message it does
//! not replay or purge in place, once, in order.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use super::error::DlqError;
use super::lock::OpsLock;
use super::queue::{Action, Control, Progress, Rotation, Taken, Visitor, ready_count};
use super::record::{Filter, Record};
use crate::amqp;
use crate::config::Config;
use crate::metrics::Metrics;

/// How long one dead-letter operation may take before it gives up (it is crash-safe).
const PASS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);
/// How long closing the AMQP connection may take.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A dead-letter operation's failure.
/// Operations on one dead-letter queue. Cheap to clone.
#[derive(Clone)]
pub struct Dlq {
    amqp_url: String,
    queue: String,
    work_exchange: String,
    redis: crate::store::Redis,
    keys: crate::store::Keys,
    batch: usize,
    archive_dir: PathBuf,
    lock_wait: Duration,
    metrics: Option<Arc<Metrics>>,
}

/// A listing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Listing {
    pub queue: String,
    /// Messages in the queue (all of them were read).
    pub total: usize,
    /// Second copies left by an interrupted operation, dropped while reading.
    pub duplicates_removed: usize,
    /// The dead letters that match, in queue order (without headers and event).
    pub records: Vec<Record>,
}

/// Dead letters counted by one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub key: String,
    /// For reasons: the reason in plain words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<String>,
    pub count: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<Timestamp>,
}

/// Counts grouped by reason, company and stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub queue: String,
    pub total: usize,
    /// Dead letters that match the filter (all of them without one).
    pub matched: usize,
    pub by_reason: Vec<Group>,
    pub by_company: Vec<Group>,
    pub by_stage: Vec<Group>,
}

/// What to replay.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayRequest {
    pub filter: Filter,
    /// Replay every dead letter (an empty filter is refused without it).
    pub all: bool,
    /// Only say what would be replayed; the queue is left as it is.
    pub dry_run: bool,
    /// Replay at most this many (the rest stay in place).
    pub limit: Option<usize>,
    /// Also replay events that broke the contract (they are dead-lettered again unless the
    /// contract changed).
    pub include_invalid: bool,
}

/// A dead letter a replay left alone, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    pub id: String,
    pub why: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayReport {
    pub queue: String,
    pub dry_run: bool,
    /// Dead letters that match the filter.
    pub matched: usize,
    /// Replayed (or, in a dry run, that would be).
    pub replayed: usize,
    pub skipped: Vec<Skipped>,
    /// The limit was reached, or the operation was stopped, before every match was replayed.
    pub stopped_early: bool,
    /// What was replayed (or would be), in queue order, without headers and event.
    pub records: Vec<Record>,
    pub progress: Progress,
}

/// Where a purge writes what it removes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Archive {
    /// `{dlq.archive_dir}/{queue}-{time}.jsonl`.
    #[default]
    Default,
    /// This file (appended to).
    Path(PathBuf),
    /// Nowhere: the purged dead letters are gone.
    Discard,
}

/// What to purge.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PurgeRequest {
    pub filter: Filter,
    /// Purge every dead letter (an empty filter is refused without it).
    pub all: bool,
    /// Purge only these dead-letter ids (those an operator was shown and confirmed), even if
    /// more match by now.
    pub expected: Option<Vec<String>>,
    pub archive: Archive,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PurgeReport {
    pub queue: String,
    pub removed: usize,
    /// The JSON-lines file holding what was removed.
    pub archive: Option<PathBuf>,
    pub records: Vec<Record>,
    pub progress: Progress,
}

/// One purged dead letter as archived: enough to inspect it or publish it again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Archived {
    pub archived_at: Timestamp,
    pub queue: String,
    pub record: Record,
    /// The message's properties.
    pub content_type: Option<String>,
    pub message_type: Option<String>,
    pub timestamp: Option<u64>,
    /// The body exactly: UTF-8 text, or base64 when `body_base64` is true.
    pub body: String,
    #[serde(default)]
    pub body_base64: bool,
}

impl Dlq {
    pub fn new(cfg: &Config, redis: crate::store::Redis) -> Self {
        Self {
            amqp_url: cfg.amqp.connection_url(),
            queue: cfg.amqp.dead_letter_queue.clone(),
            work_exchange: cfg.amqp.exchange.clone(),
            redis,
            keys: crate::store::keys(cfg),
            batch: cfg.dlq.batch_size.clamp(1, super::queue::MAX_BATCH),
            archive_dir: PathBuf::from(&cfg.dlq.archive_dir),
            lock_wait: Duration::from_secs(10),
            metrics: None,
        }
    }

    /// Keeps the dead-letter queue depth gauge up to date after each operation.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How long an operation waits for another one to finish (default 10 s).
    pub fn with_lock_wait(mut self, wait: Duration) -> Self {
        self.lock_wait = wait;
        self
    }

    /// Messages per batch (each batch is published and confirmed together, then acked), at
    /// most [`MAX_BATCH`](super::queue::MAX_BATCH).
    pub fn with_batch_size(mut self, batch: usize) -> Self {
        self.batch = batch.clamp(1, super::queue::MAX_BATCH);
        self
    }

    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// A new archive file for a purge: `{dlq.archive_dir}/{queue}-{time}.jsonl`.
    pub fn archive_path(&self) -> PathBuf {
        self.archive_dir.join(format!(
            "{}-{}.jsonl",
            self.queue,
            Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
        ))
    }

    fn key(&self, what: &str) -> String {
        self.keys.dlq(&self.queue, what)
    }

    /// Messages waiting in the dead-letter queue; also sets the depth gauge.
    pub async fn depth(&self) -> Result<u32, DlqError> {
        let conn = amqp::connect(&self.amqp_url, "outlook-sync dlq depth").await?;
        let ch = conn.create_channel().await?;
        let result = ready_count(&ch, &self.queue)
            .await
            .map_err(|e| self.no_queue(e));
        close(&conn, Some(ch)).await;
        let n = result?;
        if let Some(m) = &self.metrics {
            m.dead_letter_queue_depth.set(i64::from(n));
        }
        Ok(n)
    }

    fn no_queue(&self, e: lapin::Error) -> DlqError {
        if e.to_string().contains("NOT_FOUND") {
            DlqError::NoQueue {
                queue: self.queue.clone(),
            }
        } else {
            e.into()
        }
    }

    /// One rotation of the queue with `visitor`, under the lock.
    async fn pass(
        &self,
        op: &str,
        visitor: &mut (dyn Visitor + Send),
        control: &Control,
        progress: &mut (dyn FnMut(&Progress) + Send + Sync),
    ) -> Result<Progress, DlqError> {
        let lock = OpsLock::acquire(&self.redis, self.key("lock"), op, self.lock_wait).await?;
        // A broker that stops answering must not hang an operator's command (or a worker)
        // forever; the operation is crash-safe, so giving up loses nothing.
        let result = match tokio::time::timeout(
            PASS_TIMEOUT,
            self.pass_locked(&lock, visitor, control, progress),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(DlqError::Amqp(amqp::AmqpError::Interrupted(format!(
                "the dead-letter operation did not finish within {} s; nothing was lost, run it again",
                PASS_TIMEOUT.as_secs()
            )))),
        };
        lock.release().await;
        if let Err(e) = &result {
            tracing::warn!(queue = %self.queue, op, error = %e, "dead-letter operation failed");
        }
        result
    }

    async fn pass_locked(
        &self,
        lock: &OpsLock,
        visitor: &mut (dyn Visitor + Send),
        control: &Control,
        progress: &mut (dyn FnMut(&Progress) + Send + Sync),
    ) -> Result<Progress, DlqError> {
        let conn = amqp::connect(&self.amqp_url, "outlook-sync dlq").await?;
        let unacked = AtomicUsize::new(0);
        let mut ready_before_close = None;
        let ch = conn.create_channel().await?;
        let result = async {
            ch.confirm_select(Default::default()).await?;
            ready_count(&ch, &self.queue)
                .await
                .map_err(|e| self.no_queue(e))?;
            let rotation = Rotation {
                ch: &ch,
                queue: &self.queue,
                work_exchange: &self.work_exchange,
                redis: self.redis.clone(),
                head_key: self.key("head"),
                batch: self.batch,
                control,
                lock,
                progress,
                unacked: &unacked,
            };
            let p = rotation.run(visitor).await;
            if p.is_err() && ch.status().connected() {
                ready_before_close = ready_count(&ch, &self.queue).await.ok();
            }
            let p = p?;
            if let Some(m) = &self.metrics {
                m.dead_letter_queue_depth
                    .set(i64::from(ready_count(&ch, &self.queue).await?));
            }
            Ok(p)
        }
        .await;
        // Closing returns whatever is still unacked (an interrupted batch) to the queue. The
        // channel first: a connection closed under a channel still closing is logged as an error.
        close(&conn, Some(ch)).await;
        let outstanding = unacked.load(Ordering::SeqCst);
        if let (Err(_), Some(before)) = (&result, ready_before_close)
            && outstanding > 0
        {
            // Hold the lock until the broker has put them back, so the next operation sees them.
            self.await_returns(before as usize + outstanding).await;
        }
        result
    }

    /// Waits (up to 10 s) until the queue holds at least `ready` messages.
    async fn await_returns(&self, ready: usize) {
        let Ok(conn) = amqp::connect(&self.amqp_url, "outlook-sync dlq").await else {
            return;
        };
        let ch = conn.create_channel().await.ok();
        if let Some(ch) = &ch {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while tokio::time::Instant::now() < deadline {
                match ready_count(ch, &self.queue).await {
                    Ok(n) if n as usize >= ready => break,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(_) => break,
                }
            }
        }
        close(&conn, ch).await;
    }

    /// Every dead letter that matches, in queue order. Leaves the queue as it was.
    pub async fn list(&self, filter: &Filter) -> Result<Listing, DlqError> {
        let mut v = Collect {
            filter,
            records: Vec::new(),
            full: false,
        };
        let p = self
            .pass("list", &mut v, &Control::new(), &mut |_| {})
            .await?;
        Ok(Listing {
            queue: self.queue.clone(),
            total: p.total,
            duplicates_removed: p.duplicates,
            records: v.records,
        })
    }

    /// Counts by reason, company and stage. Leaves the queue as it was.
    pub async fn summary(&self, filter: &Filter) -> Result<Summary, DlqError> {
        let listing = self.list(filter).await?;
        Ok(summarize(&listing))
    }

    /// The whole record of every dead letter `id` names (a dead-letter id, a prefix of one, or
    /// an event id: one event can have failed for several mailboxes).
    pub async fn show(&self, id: &str) -> Result<Vec<Record>, DlqError> {
        if id.trim().is_empty() {
            return Err(DlqError::Invalid(
                "give a dead-letter id or an event id".into(),
            ));
        }
        let filter = Filter {
            ids: vec![id.to_string()],
            ..Filter::default()
        };
        let mut v = Collect {
            filter: &filter,
            records: Vec::new(),
            full: true,
        };
        self.pass("show", &mut v, &Control::new(), &mut |_| {})
            .await?;
        if v.records.is_empty() {
            return Err(DlqError::NotFound(id.to_string()));
        }
        Ok(v.records)
    }

    /// Replays what matches: each one is published to the work exchange (its original routing
    /// key and properties, `x-replay: true`) and confirmed before it leaves the dead-letter
    /// queue. A dry run only reports.
    pub async fn replay(
        &self,
        req: &ReplayRequest,
        control: &Control,
        progress: &mut (dyn FnMut(&Progress) + Send + Sync),
    ) -> Result<ReplayReport, DlqError> {
        if req.filter.is_empty() && !req.all {
            return Err(DlqError::Invalid(
                "an empty filter would replay every dead letter; say so explicitly (--all, \"all\": true)".into(),
            ));
        }
        let mut v = ReplaySelect {
            req,
            matched: 0,
            records: Vec::new(),
            skipped: Vec::new(),
            limited: false,
        };
        let p = self
            .pass(
                if req.dry_run {
                    "replay (dry run)"
                } else {
                    "replay"
                },
                &mut v,
                control,
                progress,
            )
            .await?;
        let replayed = if req.dry_run {
            v.records.len()
        } else {
            p.replayed
        };
        tracing::info!(queue = %self.queue, replayed, matched = v.matched, dry_run = req.dry_run, "dead letters replayed");
        Ok(ReplayReport {
            queue: self.queue.clone(),
            dry_run: req.dry_run,
            matched: v.matched,
            replayed,
            stopped_early: v.limited || (control.stopping() && replayed < v.records.len()),
            records: if req.dry_run {
                v.records
            } else {
                v.records.into_iter().take(p.replayed).collect()
            },
            skipped: v.skipped,
            progress: p,
        })
    }

    /// Removes what matches (and, with `expected`, was confirmed), archiving each one as a JSON
    /// line (flushed to disk) before it is acked.
    pub async fn purge(
        &self,
        req: &PurgeRequest,
        control: &Control,
        progress: &mut (dyn FnMut(&Progress) + Send + Sync),
    ) -> Result<PurgeReport, DlqError> {
        if req.filter.is_empty() && !req.all && req.expected.is_none() {
            return Err(DlqError::Invalid(
                "an empty filter would purge every dead letter; say so explicitly (--all, \"all\": true)".into(),
            ));
        }
        let path = match &req.archive {
            Archive::Discard => None,
            Archive::Path(p) => Some(p.clone()),
            Archive::Default => Some(self.archive_path()),
        };
        let mut v = PurgeSelect {
            req,
            expected: req
                .expected
                .as_ref()
                .map(|ids| ids.iter().cloned().collect()),
            queue: &self.queue,
            archive: path.as_deref().map(ArchiveFile::new),
            records: Vec::new(),
        };
        let p = self.pass("purge", &mut v, control, progress).await?;
        tracing::warn!(queue = %self.queue, removed = p.removed, archive = ?path, "dead letters purged");
        Ok(PurgeReport {
            queue: self.queue.clone(),
            removed: p.removed,
            archive: path.filter(|_| p.removed > 0),
            records: v.records,
            progress: p,
        })
    }
}

/// Collects what matches.
struct Collect<'a> {
    filter: &'a Filter,
    records: Vec<Record>,
    full: bool,
}

impl Visitor for Collect<'_> {
    fn visit(&mut self, rec: &Record) -> Action {
        if self.filter.matches(rec) {
            let r = rec.clone();
            self.records.push(if self.full { r } else { r.brief() });
        }
        Action::Keep
    }
}

struct ReplaySelect<'a> {
    req: &'a ReplayRequest,
    matched: usize,
    records: Vec<Record>,
    skipped: Vec<Skipped>,
    limited: bool,
}

impl Visitor for ReplaySelect<'_> {
    fn visit(&mut self, rec: &Record) -> Action {
        if !self.req.filter.matches(rec) {
            return Action::Keep;
        }
        self.matched += 1;
        if let Err(why) = rec.replayable(self.req.include_invalid) {
            self.skipped.push(Skipped {
                id: rec.id.clone(),
                why: why.to_string(),
            });
            return Action::Keep;
        }
        if self.req.limit.is_some_and(|l| self.records.len() >= l) {
            self.limited = true;
            return Action::Keep;
        }
        self.records.push(rec.clone().brief());
        match (&rec.routing_key, self.req.dry_run) {
            (Some(rk), false) => Action::Replay(rk.clone()),
            _ => Action::Keep,
        }
    }
}

struct PurgeSelect<'a> {
    req: &'a PurgeRequest,
    expected: Option<HashSet<String>>,
    queue: &'a str,
    archive: Option<ArchiveFile>,
    records: Vec<Record>,
}

impl Visitor for PurgeSelect<'_> {
    fn visit(&mut self, rec: &Record) -> Action {
        let confirmed = self
            .expected
            .as_ref()
            .is_none_or(|ids| ids.contains(&rec.id));
        if confirmed && self.req.filter.matches(rec) {
            self.records.push(rec.clone().brief());
            Action::Remove
        } else {
            Action::Keep
        }
    }

    fn removing(&mut self, removed: &[&Taken]) -> Result<(), DlqError> {
        let Some(archive) = &mut self.archive else {
            return Ok(());
        };
        archive.append(self.queue, removed)
    }
}

/// The JSON-lines archive of a purge, created on first use, synced to disk after each batch.
struct ArchiveFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl ArchiveFile {
    fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
        }
    }

    fn append(&mut self, queue: &str, removed: &[&Taken]) -> Result<(), DlqError> {
        let err = |error| DlqError::Archive {
            path: self.path.display().to_string(),
            error,
        };
        if self.file.is_none() {
            // The archive holds event data: only its owner reads it (folder 0700, file 0600).
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(err)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.path)
                .map_err(err)?;
            self.file = Some(f);
        }
        let file = self.file.as_mut().expect("opened above");
        let mut buf = Vec::new();
        let now = Timestamp::now();
        for t in removed {
            let (body, body_base64) = match std::str::from_utf8(&t.body) {
                Ok(s) => (s.to_string(), false),
                Err(_) => {
                    use base64::Engine;
                    (
                        base64::engine::general_purpose::STANDARD.encode(&t.body),
                        true,
                    )
                }
            };
            let a = Archived {
                archived_at: now,
                queue: queue.to_string(),
                record: t.rec.clone(),
                content_type: t.props.content_type().as_ref().map(|s| s.to_string()),
                message_type: t.props.kind().as_ref().map(|s| s.to_string()),
                timestamp: *t.props.timestamp(),
                body,
                body_base64,
            };
            serde_json::to_writer(&mut buf, &a).expect("serializable");
            buf.push(b'\n');
        }
        let path = self.path.display().to_string();
        let io = |error| DlqError::Archive {
            path: path.clone(),
            error,
        };
        file.write_all(&buf).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(())
    }
}

/// Groups a listing by reason, company and stage (largest first).
pub fn summarize(listing: &Listing) -> Summary {
    fn groups(records: &[Record], key: impl Fn(&Record) -> String, words: bool) -> Vec<Group> {
        let mut by: BTreeMap<String, Group> = BTreeMap::new();
        for r in records {
            let k = key(r);
            let g = by.entry(k.clone()).or_insert_with(|| Group {
                words: words.then(|| crate::ledger::words(&k).to_string()),
                key: k,
                count: 0,
                oldest: None,
                newest: None,
            });
            g.count += 1;
            if let Some(t) = r.last_failure {
                g.oldest = Some(g.oldest.map_or(t, |o| o.min(t)));
                g.newest = Some(g.newest.map_or(t, |n| n.max(t)));
            }
        }
        let mut v: Vec<Group> = by.into_values().collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then(a.key.cmp(&b.key)));
        v
    }
    let rs = &listing.records;
    Summary {
        queue: listing.queue.clone(),
        total: listing.total,
        matched: rs.len(),
        by_reason: groups(rs, |r| r.reason.clone(), true),
        by_company: groups(
            rs,
            |r| r.company.clone().unwrap_or_else(|| "(unknown)".into()),
            false,
        ),
        by_stage: groups(rs, |r| r.stage.clone(), false),
    }
}

/// Closes a channel (if it is still open), then its connection, each within [`CLOSE_TIMEOUT`].
async fn close(conn: &lapin::Connection, ch: Option<lapin::Channel>) {
    if let Some(ch) = ch.filter(|c| c.status().connected()) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ch.close(200, "done".into())).await;
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "done".into())).await;
}
