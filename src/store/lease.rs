//! The one lease implementation: an exclusive, expiring hold on a Redis key. Taken with
//! `SET key token NX PX ttl`, renewed and given back only by its holder (compare the token, then
//! `PEXPIRE` or `DEL`, in Lua). A holder that dies stops renewing, and its lease runs out.
//!
//! Used for the per-mailbox write lease ([`MailboxLeases`]: writes to one mailbox are
//! serialised across all workers, so Graph's 4-in-flight limit holds across pods) and for the
//! dead-letter operations' lock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::warn;

use super::keys::Keys;
use super::pace::{self, Budget};
use crate::runtime::AbortOnDrop;

const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;
const EXTEND_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

/// Held leases as a renewer reads them: key → token. The holder adds and removes entries.
pub type Held = Arc<std::sync::Mutex<BTreeMap<String, String>>>;

/// Leases of one length on any keys.
#[derive(Clone)]
pub struct Leases {
    redis: crate::store::Redis,
    ttl: Duration,
    release: Arc<redis::Script>,
    extend: Arc<redis::Script>,
}

impl Leases {
    pub fn new(redis: crate::store::Redis, ttl: Duration) -> Leases {
        Leases {
            redis,
            ttl,
            release: Arc::new(redis::Script::new(RELEASE_LUA)),
            extend: Arc::new(redis::Script::new(EXTEND_LUA)),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Tries to take each `(key, token)` (one round trip); true for each taken.
    pub async fn try_take(
        &self,
        wanted: &[(String, String)],
    ) -> Result<Vec<bool>, redis::RedisError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (key, token) in wanted {
            pipe.cmd("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(self.ttl.as_millis() as u64);
        }
        let mut r = self.redis.clone();
        let ok: Vec<Option<String>> = pipe.query_async(&mut r).await?;
        Ok(ok.into_iter().map(|v| v.is_some()).collect())
    }

    /// Gives leases back (best effort: a lease not given back runs out).
    pub async fn give_back(&self, held: &[(String, String)]) {
        self.give_back_after(held, redis::pipe()).await;
    }

    /// Gives leases back in the same round trip as `before`'s commands, which run first (while
    /// the leases are still held).
    pub async fn give_back_after(&self, held: &[(String, String)], before: redis::Pipeline) {
        if held.is_empty() {
            return;
        }
        let mut r = self.redis.clone();
        if let Err(e) = self
            .invoke_all::<()>(&self.release, held, &[], before, &mut r)
            .await
        {
            warn!(error = %e, leases = held.len(), "leases not given back; they run out by themselves");
        }
    }

    /// Extends each `(key, token)` still held by that token; true for each still held.
    pub async fn renew(&self, held: &[(String, String)]) -> Result<Vec<bool>, redis::RedisError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut r = self.redis.clone();
        let ttl = self.ttl.as_millis() as u64;
        let out: Vec<i64> = self
            .invoke_all(&self.extend, held, &[ttl], redis::pipe(), &mut r)
            .await?;
        Ok(out.into_iter().map(|n| n == 1).collect())
    }

    /// One script call per lease in one pipeline (loading the script once if the server does
    /// not know it yet).
    async fn invoke_all<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        held: &[(String, String)],
        extra: &[u64],
        mut pipe: redis::Pipeline,
        r: &mut crate::store::Redis,
    ) -> Result<T, redis::RedisError> {
        for (key, token) in held {
            let mut inv = script.key(key);
            inv.arg(token);
            for a in extra {
                inv.arg(*a);
            }
            pipe.invoke_script(&inv);
        }
        match pipe.query_async(r).await {
            // NOSCRIPT on a fresh (or restarted) server: load once and try again.
            Err(_) => {
                let _: String = script.prepare_invoke().load_async(r).await?;
                pipe.query_async(r).await
            }
            ok => ok,
        }
    }

    /// Renews every lease in `held` each third of the lease time until the returned handle is
    /// dropped. A lease found taken by someone else (it ran out meanwhile) sets `lost`, if given.
    pub fn keep_renewed(&self, held: Held, lost: Option<Arc<AtomicBool>>) -> AbortOnDrop {
        let this = self.clone();
        AbortOnDrop(tokio::spawn(async move {
            loop {
                tokio::time::sleep(this.ttl / 3).await;
                let now: Vec<(String, String)> = held
                    .lock()
                    .expect("lease map")
                    .iter()
                    .map(|(k, t)| (k.clone(), t.clone()))
                    .collect();
                match this.renew(&now).await {
                    Ok(still) if still.iter().any(|s| !s) => {
                        if let Some(lost) = &lost {
                            lost.store(true, Ordering::SeqCst);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, "leases not renewed this time; retried"),
                }
            }
        }))
    }
}

/// A new random lease token.
pub fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The exclusive, expiring lease on one mailbox, shared by all workers. It carries the
/// mailbox's paced request budget (`store::pace`): read when taken, written back when given up.
#[derive(Clone)]
pub struct MailboxLeases {
    leases: Leases,
    keys: Keys,
    budget: Budget,
}

/// A mailbox lease just taken: its token, and the budget's TAT its last holder left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub token: String,
    pub tat_us: Option<u64>,
}

/// A mailbox lease to give back: the mailbox, its token, and the budget's TAT now.
pub type Given = (String, String, Option<u64>);

/// A held mailbox lease (see [`MailboxLeases::acquire`]), renewed until released or dropped;
/// it paces its requests within the mailbox's budget.
pub struct LeaseGuard {
    leases: MailboxLeases,
    company: String,
    mailbox: String,
    token: String,
    tat_us: std::sync::Mutex<Option<u64>>,
    _renewer: AbortOnDrop,
}

impl LeaseGuard {
    /// Waits until `n` more requests fit the mailbox's budget, and reserves them.
    pub async fn pace(&self, n: usize) {
        loop {
            let wait = {
                let mut tat = self.tat_us.lock().expect("budget");
                match self.leases.budget.reserve(*tat, pace::now_us(), n) {
                    Ok(next) => {
                        *tat = Some(next);
                        return;
                    }
                    Err(wait) => wait,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    pub async fn release(self) {
        let tat = *self.tat_us.lock().expect("budget");
        let given = [(self.mailbox.clone(), self.token.clone(), tat)];
        self.leases.release_many(&self.company, &given).await;
    }
}

impl MailboxLeases {
    pub fn new(redis: crate::store::Redis, keys: Keys, ttl: Duration, budget: Budget) -> Self {
        Self {
            leases: Leases::new(redis, ttl),
            keys,
            budget,
        }
    }

    /// The lease key of a mailbox (a `tenants::mailbox_key`).
    pub fn key(&self, company: &str, mailbox: &str) -> String {
        self.keys.mailbox_lease(company, mailbox)
    }

    pub fn leases(&self) -> &Leases {
        &self.leases
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Takes one mailbox's lease, trying every 30–60 ms (backon, with jitter) for up to `wait`;
    /// `None` if another worker held it throughout. The guard renews it until released (or
    /// dropped: then it runs out).
    pub async fn acquire(
        &self,
        company: &str,
        mailbox: &str,
        wait: Duration,
    ) -> Result<Option<LeaseGuard>, redis::RedisError> {
        use backon::Retryable;
        /// Why one try did not take the lease.
        enum Miss {
            Held,
            Redis(redis::RedisError),
        }
        let mailboxes = [mailbox.to_string()];
        let take = || async {
            match self.try_acquire_many(company, &mailboxes).await {
                Ok(mut taken) => taken.pop().flatten().ok_or(Miss::Held),
                Err(e) => Err(Miss::Redis(e)),
            }
        };
        let tries = (wait.as_millis() / 45).max(1) as usize;
        let schedule = backon::ConstantBuilder::default()
            .with_delay(Duration::from_millis(30))
            .with_jitter()
            .with_max_times(tries);
        match take.retry(schedule).when(|m| matches!(m, Miss::Held)).await {
            Ok(taken) => {
                let key = self.key(company, mailbox);
                let held: Held = Arc::new(std::sync::Mutex::new(BTreeMap::from([(
                    key,
                    taken.token.clone(),
                )])));
                Ok(Some(LeaseGuard {
                    leases: self.clone(),
                    company: company.to_string(),
                    mailbox: mailbox.to_string(),
                    token: taken.token,
                    tat_us: std::sync::Mutex::new(taken.tat_us),
                    _renewer: self.leases.keep_renewed(held, None),
                }))
            }
            Err(Miss::Held) => Ok(None),
            Err(Miss::Redis(e)) => Err(e),
        }
    }

    /// Tries to take several mailboxes' leases at once (one round trip), reading each one's
    /// budget as its last holder left it.
    pub async fn try_acquire_many(
        &self,
        company: &str,
        mailboxes: &[String],
    ) -> Result<Vec<Option<Taken>>, redis::RedisError> {
        if mailboxes.is_empty() {
            return Ok(Vec::new());
        }
        let tokens: Vec<String> = mailboxes.iter().map(|_| token()).collect();
        let mut pipe = redis::pipe();
        for (m, t) in mailboxes.iter().zip(&tokens) {
            pipe.cmd("SET")
                .arg(self.key(company, m))
                .arg(t)
                .arg("NX")
                .arg("PX")
                .arg(self.leases.ttl.as_millis() as u64);
            pipe.cmd("GET").arg(self.keys.mailbox_rate(company, m));
        }
        let mut r = self.leases.redis.clone();
        let flat: Vec<Option<String>> = pipe.query_async(&mut r).await?;
        Ok(flat
            .chunks(2)
            .zip(tokens)
            .map(|(pair, token)| {
                pair[0].as_ref().map(|_| Taken {
                    token,
                    tat_us: pair[1].as_deref().and_then(|t| t.parse().ok()),
                })
            })
            .collect())
    }

    /// Gives mailbox leases back, leaving each one's budget for its next holder (one round trip).
    pub async fn release_many(&self, company: &str, given: &[Given]) {
        let now = pace::now_us();
        let mut before = redis::pipe();
        for (m, _, tat) in given {
            if let Some(tat) = tat.filter(|t| *t > now) {
                before
                    .cmd("SET")
                    .arg(self.keys.mailbox_rate(company, m))
                    .arg(tat)
                    .arg("PX")
                    .arg(self.budget.window().as_millis() as u64)
                    .ignore();
            }
        }
        let held: Vec<(String, String)> = given
            .iter()
            .map(|(m, t, _)| (self.key(company, m), t.clone()))
            .collect();
        self.leases.give_back_after(&held, before).await;
    }
}
