//! Each worker's copy of the directory, so the flush never waits on PostgreSQL.
//!
//! - A full load at start, then every `database.reload_seconds` (the safety net).
//! - A connection of its own LISTENs on [`db::CHANNEL`]: every write to `companies` or
//!   `linked_users` notifies (a trigger, in the writing transaction) and the company named is
//!   reloaded at once. On (re)connecting it reloads everything (what it missed while away).
//! - Last-sync times are kept here and written behind, many users in one statement, every
//!   `database.write_behind_seconds`; what could not be written is kept for the next round.
//!
//! [`DirectoryCache::lookup`] answers without I/O: a company known (with its users), unknown
//! (never in the directory, or removed by an administrator: the event is skipped), or
//! [`Lookup::Unavailable`] with a reason: not loaded yet, the database unreachable (a company
//! not cached could have been added meanwhile), the directory empty, or a company the cache knew
//! and the database no longer has without a removal (the event is retried, never acked away).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use jiff::Timestamp;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::db::{self, Db};
use super::directory::One;
use super::{Company, Directory, LinkedUser, UserStatus};
use crate::runtime::{AbortOnDrop, Backoff};

/// A company and its linked users, as cached.
#[derive(Debug)]
pub struct Entry {
    pub company: Company,
    pub users: HashMap<String, LinkedUser>,
}

/// What the cache says of a company.
#[derive(Debug, Clone)]
pub enum Lookup {
    Known(Arc<Entry>),
    /// Never in the directory, or removed by an administrator: skip its events.
    Unknown,
    /// The cache cannot tell now: retry the event later. The reason is a stable code.
    Unavailable(&'static str),
}

impl State {
    fn reachable(&self) -> bool {
        self.listening && !self.reload_failed
    }
}

#[derive(Default)]
struct State {
    /// A full load has succeeded.
    loaded: bool,
    /// LISTEN is in place (no change can be missed).
    listening: bool,
    /// The last full reload failed.
    reload_failed: bool,
    companies: HashMap<String, Arc<Entry>>,
    removed: HashSet<String>,
    /// Known, then missing without a removal.
    lost: HashSet<String>,
}

struct Inner {
    directory: Directory,
    state: RwLock<State>,
    /// Last-sync times not yet written: (company, user) → time.
    pending: Mutex<HashMap<(String, String), Timestamp>>,
    /// Bumped on every change applied (tests wait on it).
    changes: tokio::sync::watch::Sender<u64>,
    /// Held while a load reads and applies, so a company's reload after a notification never
    /// lands under an older full reload that started before it.
    loading: tokio::sync::Mutex<()>,
}

/// A worker's directory cache; its tasks end when it is dropped.
pub struct DirectoryCache {
    inner: Arc<Inner>,
    _tasks: Vec<AbortOnDrop>,
}

impl DirectoryCache {
    /// Starts the cache's tasks (load, listen, reload, write behind). Never fails: while the
    /// database is down every lookup of an uncached company is `Unavailable`.
    pub fn start(directory: Directory, cfg: &crate::config::DatabaseConfig) -> DirectoryCache {
        let inner = Arc::new(Inner {
            directory,
            state: RwLock::new(State::default()),
            pending: Mutex::new(HashMap::new()),
            changes: tokio::sync::watch::channel(0).0,
            loading: tokio::sync::Mutex::new(()),
        });
        let reload = Duration::from_secs(cfg.reload_seconds);
        let behind = Duration::from_secs(cfg.write_behind_seconds);
        let tasks = vec![
            AbortOnDrop(tokio::spawn(listen(inner.clone()))),
            AbortOnDrop(tokio::spawn(reload_every(inner.clone(), reload))),
            AbortOnDrop(tokio::spawn(write_behind(inner.clone(), behind))),
        ];
        DirectoryCache {
            inner,
            _tasks: tasks,
        }
    }

    pub fn directory(&self) -> &Directory {
        &self.inner.directory
    }

    /// The company as cached (no I/O).
    pub fn lookup(&self, company: &str) -> Lookup {
        let s = self.inner.state.read().expect("not poisoned");
        if !s.loaded {
            return Lookup::Unavailable("directory_not_loaded");
        }
        if let Some(e) = s.companies.get(company) {
            return Lookup::Known(e.clone());
        }
        if s.lost.contains(company) {
            return Lookup::Unavailable("directory_lost_company");
        }
        if !s.reachable() {
            return Lookup::Unavailable("directory_unreachable");
        }
        if s.companies.is_empty() && s.removed.is_empty() {
            return Lookup::Unavailable("directory_empty");
        }
        Lookup::Unknown
    }

    /// Whether a full load has succeeded (the flush claims nothing before: it could only give
    /// the claims back).
    pub fn is_loaded(&self) -> bool {
        self.inner.state.read().expect("not poisoned").loaded
    }

    /// Whether a full load succeeded and the database is reachable now.
    pub fn is_fresh(&self) -> bool {
        let s = self.inner.state.read().expect("not poisoned");
        s.loaded && s.reachable()
    }

    /// A receiver that changes whenever the cache applied a change.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Records the outcome of writes to a user's mailbox. A success is kept here and written
    /// behind (never a database call per write); a mailbox problem flips the cached user to
    /// auth_failed at once and is written through (rare, and every worker must learn it).
    pub async fn record_sync(
        &self,
        company: &str,
        user: &str,
        outcome: Result<(), (&str, &str)>,
    ) -> Result<(), super::DirectoryError> {
        match outcome {
            Ok(()) => {
                let mut p = self.inner.pending.lock().expect("not poisoned");
                p.insert((company.to_string(), user.to_string()), Timestamp::now());
                Ok(())
            }
            Err((reason, message)) => {
                self.inner.update_user(company, user, |u| {
                    u.status = UserStatus::AuthFailed;
                    u.reason = Some(reason.to_string());
                    u.last_error = Some(message.to_string());
                });
                self.inner
                    .directory
                    .record_sync(company, user, Err((reason, message)))
                    .await
            }
        }
    }

    /// Writes the pending last-sync times now (shutdown, tests).
    pub async fn write_pending(&self) -> Result<u64, super::DirectoryError> {
        self.inner.write_pending().await
    }
}

impl Inner {
    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    fn update_user(&self, company: &str, user: &str, f: impl FnOnce(&mut LinkedUser)) {
        let mut s = self.state.write().expect("not poisoned");
        let Some(e) = s.companies.get(company) else {
            return;
        };
        let mut users = e.users.clone();
        let Some(u) = users.get_mut(user) else { return };
        f(u);
        let entry = Entry {
            company: e.company.clone(),
            users,
        };
        s.companies.insert(company.to_string(), Arc::new(entry));
    }

    async fn load_all(&self) -> Result<(), super::DirectoryError> {
        let _one_at_a_time = self.loading.lock().await;
        let mut snap = self.directory.load_all().await?;
        let mut s = self.state.write().expect("not poisoned");
        let lost: Vec<String> = s
            .companies
            .keys()
            .filter(|id| !snap.companies.contains_key(*id) && !snap.removed.contains(*id))
            .cloned()
            .collect();
        for id in &lost {
            warn!(company = %id, "directory: a company this worker knew is missing from the database without a removal; its events are retried until it is back");
        }
        s.lost.extend(lost);
        s.lost
            .retain(|id| !snap.companies.contains_key(id) && !snap.removed.contains(id));
        s.companies = snap
            .companies
            .drain()
            .map(|(id, company)| {
                let users = snap.users.remove(&id).unwrap_or_default();
                (id, Arc::new(Entry { company, users }))
            })
            .collect();
        s.removed = snap.removed;
        s.loaded = true;
        s.reload_failed = false;
        drop(s);
        self.changed();
        Ok(())
    }

    async fn load_one(&self, company: &str) -> Result<(), super::DirectoryError> {
        let _one_at_a_time = self.loading.lock().await;
        let one = self.directory.load_one(company).await?;
        let mut s = self.state.write().expect("not poisoned");
        match one {
            One::Present(c, users) => {
                s.lost.remove(company);
                s.removed.remove(company);
                s.companies
                    .insert(company.to_string(), Arc::new(Entry { company: *c, users }));
            }
            One::Absent { removed } => {
                if s.companies.remove(company).is_some() && !removed {
                    warn!(
                        company,
                        "directory: a company this worker knew is missing from the database without a removal; its events are retried until it is back"
                    );
                    s.lost.insert(company.to_string());
                }
                if removed {
                    s.lost.remove(company);
                    s.removed.insert(company.to_string());
                }
            }
        }
        drop(s);
        self.changed();
        Ok(())
    }

    /// Sets what the listener or the reload found, and says when reachability changes.
    fn set(&self, f: impl FnOnce(&mut State)) {
        let mut s = self.state.write().expect("not poisoned");
        let before = s.reachable();
        f(&mut s);
        match (before, s.reachable()) {
            (false, true) => info!("directory: PostgreSQL reachable; the cache is current"),
            (true, false) => warn!(
                "directory: PostgreSQL unreachable; cached companies keep syncing, events of others are retried"
            ),
            _ => {}
        }
    }

    async fn write_pending(&self) -> Result<u64, super::DirectoryError> {
        let batch: Vec<(String, String, Timestamp)> = {
            let mut p = self.pending.lock().expect("not poisoned");
            p.drain().map(|((c, u), t)| (c, u, t)).collect()
        };
        match self.directory.record_synced(&batch).await {
            Ok(n) => Ok(n),
            Err(e) => {
                // Kept for the next round; a newer time recorded meanwhile wins.
                let mut p = self.pending.lock().expect("not poisoned");
                for (c, u, t) in batch {
                    let slot = p.entry((c, u)).or_insert(t);
                    *slot = (*slot).max(t);
                }
                Err(e)
            }
        }
    }
}

/// LISTENs on its own connection; reloads everything on each (re)connect, then each company
/// named by a notification. A check every few seconds notices a connection that went silent.
async fn listen(inner: Arc<Inner>) {
    let db = inner.directory.db().clone();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match listen_once(&inner, &db).await {
            Ok(()) => backoff.reset(),
            Err(e) => warn!(error = %e, "directory: the change feed (LISTEN) is down; retrying"),
        }
        inner.set(|s| s.listening = false);
        tokio::time::sleep(backoff.delay()).await;
    }
}

async fn listen_once(inner: &Inner, db: &Db) -> Result<(), super::DirectoryError> {
    let connect = db.pg_config().connect(tokio_postgres::NoTls);
    let (client, mut conn) = tokio::time::timeout(db.timeout(), connect)
        .await
        .map_err(|_| db::DbError::Unavailable("connecting timed out".into()))??;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let _driver = AbortOnDrop(tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = m
                && tx.send(n.payload().to_string()).is_err()
            {
                break;
            }
        }
    }));
    db.timed(async {
        Ok(client
            .batch_execute(&format!("LISTEN {}", db::CHANNEL))
            .await?)
    })
    .await?;
    inner.load_all().await?;
    inner.set(|s| s.listening = true);
    let prefix = format!("{}/", db.schema());
    let mut check = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            payload = rx.recv() => {
                let Some(payload) = payload else { return Ok(()) };
                // Coalesced: a burst of changes (a bulk link) reloads each company once.
                let mut companies = HashSet::new();
                companies.extend(payload.strip_prefix(&prefix).map(str::to_string));
                while let Ok(more) = rx.try_recv() {
                    companies.extend(more.strip_prefix(&prefix).map(str::to_string));
                }
                for company in companies {
                    // On failure the reload after reconnecting picks it up.
                    inner.load_one(&company).await?;
                }
            }
            _ = check.tick() => {
                db.timed(async { Ok(client.simple_query("SELECT 1").await?) }).await?;
            }
        }
    }
}

async fn reload_every(inner: Arc<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = inner.load_all().await {
            warn!(error = %e, "directory: the periodic reload failed; the cache is kept");
            inner.set(|s| s.reload_failed = true);
        }
    }
}

async fn write_behind(inner: Arc<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = inner.write_pending().await {
            warn!(error = %e, "directory: last-sync times not written; kept for the next round");
        }
    }
}
