//! Long admin operations (a large bulk file, removing a company's integration) run as jobs: the
//! API answers 202 with the job's id at once, and `GET /v1/jobs/{job}` shows its progress and,
//! when done, its result. The record lives in Redis (`job:{id}` (`store::keys`), kept a day), so any
//! pod can answer for it; the work itself runs in the pod that accepted it (if that pod dies,
//! the job stays `running` until it expires: run the operation again, it is idempotent).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::service::{AdminError, Progress, ProgressFn};

const TTL_SECONDS: u64 = 86_400;
const WRITE_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Running,
    Done,
    Failed,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    pub kind: String,
    pub company: String,
    pub state: JobState,
    pub done: usize,
    pub total: usize,
    pub started_at: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// The operation's report, when done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// `{code, message, message_ja}`, when failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

#[derive(Clone)]
pub struct Jobs {
    redis: crate::store::Redis,
    keys: crate::store::Keys,
}

impl Jobs {
    pub fn new(redis: crate::store::Redis, keys: crate::store::Keys) -> Jobs {
        Jobs { redis, keys }
    }

    fn key(&self, id: &str) -> String {
        self.keys.job(id)
    }

    async fn write(&self, rec: &JobRecord) -> Result<(), redis::RedisError> {
        let mut r = self.redis.clone();
        r.set_ex(
            self.key(&rec.id),
            serde_json::to_string(rec).expect("serializable"),
            TTL_SECONDS,
        )
        .await
    }

    pub async fn get(&self, id: &str) -> Result<JobRecord, AdminError> {
        let mut r = self.redis.clone();
        let doc: Option<String> = r.get(self.key(id)).await?;
        doc.and_then(|d| serde_json::from_str(&d).ok())
            .ok_or_else(|| AdminError::UnknownJob(id.to_string()))
    }

    /// Records a new job and runs `work` in the background; progress is written twice a second.
    pub async fn spawn<F, Fut, T>(
        &self,
        kind: &str,
        company: &str,
        work: F,
    ) -> Result<JobRecord, AdminError>
    where
        F: FnOnce(ProgressFn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, AdminError>> + Send + 'static,
        T: Serialize + Send + 'static,
    {
        let rec = JobRecord {
            id: uuid::Uuid::new_v4().simple().to_string(),
            kind: kind.to_string(),
            company: company.to_string(),
            state: JobState::Running,
            done: 0,
            total: 0,
            started_at: Timestamp::now(),
            finished_at: None,
            result: None,
            error: None,
        };
        self.write(&rec).await?;
        let latest = Arc::new(Mutex::new(Progress { done: 0, total: 0 }));
        let progress: ProgressFn = {
            let latest = latest.clone();
            Arc::new(move |p| *latest.lock().unwrap_or_else(PoisonError::into_inner) = p)
        };
        let jobs = self.clone();
        let mut record = rec.clone();
        tokio::spawn(async move {
            let work = tokio::spawn(work(progress));
            tokio::pin!(work);
            let outcome = loop {
                tokio::select! {
                    r = &mut work => break r,
                    _ = tokio::time::sleep(WRITE_EVERY) => {
                        let p = *latest.lock().unwrap_or_else(PoisonError::into_inner);
                        record.done = p.done;
                        record.total = p.total;
                        let _ = jobs.write(&record).await;
                    }
                }
            };
            let p = *latest.lock().unwrap_or_else(PoisonError::into_inner);
            record.done = p.done;
            record.total = p.total;
            record.finished_at = Some(Timestamp::now());
            match outcome {
                Ok(Ok(v)) => {
                    record.state = JobState::Done;
                    record.result = Some(serde_json::to_value(v).expect("serializable"));
                }
                Ok(Err(e)) => {
                    record.state = JobState::Failed;
                    record.error = Some(serde_json::json!({
                        "code": e.code(),
                        "message": e.to_string(),
                        "message_ja": super::messages::reason(e.code()).ja,
                    }));
                }
                Err(e) => {
                    record.state = JobState::Failed;
                    record.error = Some(serde_json::json!({
                        "code": "internal",
                        "message": e.to_string(),
                        "message_ja": super::messages::reason("internal").ja,
                    }));
                }
            }
            if let Err(e) = jobs.write(&record).await {
                tracing::warn!(job = %record.id, error = %e, "admin: cannot record the end of a job");
            }
            tracing::info!(job = %record.id, kind = %record.kind, company = %record.company, state = ?record.state, "admin: job finished");
        });
        Ok(rec)
    }
}
