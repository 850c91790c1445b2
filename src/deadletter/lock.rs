//! The lock every operation on one dead-letter queue takes: a lease from `store::lease`
//! (renewed while held), so two operations never rotate the queue at once. A holder that dies
//! frees it within [`LOCK_LEASE`]. Its value says who holds it, for the "busy" message.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::DlqError;
use crate::runtime::AbortOnDrop;
use crate::store::Leases;

pub(crate) const LOCK_LEASE: Duration = Duration::from_secs(30);

/// Who holds the lock, as its value says.
#[derive(Debug, Serialize, Deserialize)]
struct Holder {
    op: String,
    since: jiff::Timestamp,
    by: String,
    token: String,
}

pub(crate) struct OpsLock {
    leases: Leases,
    key: String,
    value: String,
    lost: Arc<AtomicBool>,
    _renewer: AbortOnDrop,
}

impl OpsLock {
    /// Takes the lock for `op`, waiting up to `wait` for another operation to finish.
    pub(crate) async fn acquire(
        redis: &crate::store::Redis,
        key: String,
        op: &str,
        wait: Duration,
    ) -> Result<OpsLock, DlqError> {
        let value = serde_json::to_string(&Holder {
            op: op.to_string(),
            since: jiff::Timestamp::now(),
            by: format!("pid {}", std::process::id()),
            token: crate::store::lease::token(),
        })
        .expect("a lock holder serializes");
        let leases = Leases::new(redis.clone(), LOCK_LEASE);
        let deadline = tokio::time::Instant::now() + wait;
        while leases.try_take(&[(key.clone(), value.clone())]).await? != [true] {
            if tokio::time::Instant::now() >= deadline {
                let mut r = redis.clone();
                let current: Option<String> =
                    redis::cmd("GET").arg(&key).query_async(&mut r).await?;
                let holder = current
                    .and_then(|v| serde_json::from_str::<Holder>(&v).ok())
                    .map(|h| format!("{} since {} ({})", h.op, h.since, h.by))
                    .unwrap_or_else(|| "unknown".into());
                return Err(DlqError::Busy { holder });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let lost = Arc::new(AtomicBool::new(false));
        let held = Arc::new(std::sync::Mutex::new(
            [(key.clone(), value.clone())].into_iter().collect(),
        ));
        let renewer = leases.keep_renewed(held, Some(lost.clone()));
        Ok(OpsLock {
            leases,
            key,
            value,
            lost,
            _renewer: renewer,
        })
    }

    /// The lease ran out (Redis unreachable for longer than it lasts): stop.
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    /// Gives the lock back. If it is dropped instead (a cancelled request), the lease runs out
    /// by itself.
    pub(crate) async fn release(self) {
        self.leases
            .give_back(&[(self.key.clone(), self.value.clone())])
            .await;
    }
}
