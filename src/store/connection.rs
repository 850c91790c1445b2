//! [`Redis`]: the one connection type of the service. Every stage holds one (a cheap clone of
//! the process's connection) and speaks to it through `redis::aio::ConnectionLike`, so the
//! topology behind it (one Redis, a primary followed through Sentinel, a Redis Cluster) is
//! decided here, from `redis.url`, and nowhere else.

use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{
    Cmd, ErrorKind, Pipeline, RedisError, RedisFuture, RedisResult, ServerErrorKind, Value,
};

/// A connection to the configured Redis: cheap to clone (clones share one multiplexed
/// connection), reconnecting by itself.
#[derive(Clone)]
pub struct Redis {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    /// One Redis (`redis://`, `rediss://`, `unix://`), reconnected by the connection manager.
    Single(ConnectionManager),
    /// The primary the sentinels name, asked again whenever its connection fails or it answers
    /// as a replica (`READONLY`): a failover is followed on the next command.
    Sentinel(Arc<Followed>),
    /// A Redis Cluster: commands go to the node of their key's slot; a pipeline is sent as
    /// its commands, each to its own slot, at once.
    Cluster(Arc<Clustered>),
}

pub(crate) struct Followed {
    /// Held while asking the sentinels and connecting: one lookup at a time.
    sentinel: tokio::sync::Mutex<SentinelClient>,
    config: redis::AsyncConnectionConfig,
    connect_timeout: std::time::Duration,
    /// The primary's connection and its generation, while it is believed to be the primary.
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    generations: std::sync::atomic::AtomicU64,
}

pub(crate) struct Clustered {
    client: ClusterClient,
    connecting: tokio::sync::Mutex<()>,
    /// The cluster connection and its generation, until one of its commands times out.
    current: Mutex<Option<(u64, ClusterConnection)>>,
    generations: std::sync::atomic::AtomicU64,
}

impl Redis {
    pub(crate) fn single(manager: ConnectionManager) -> Redis {
        Redis {
            inner: Inner::Single(manager),
        }
    }

    pub(crate) fn sentinel(
        sentinel: SentinelClient,
        config: redis::AsyncConnectionConfig,
        connect_timeout: std::time::Duration,
    ) -> Redis {
        Redis {
            inner: Inner::Sentinel(Arc::new(Followed {
                sentinel: tokio::sync::Mutex::new(sentinel),
                config,
                connect_timeout,
                current: Mutex::new(None),
                generations: Default::default(),
            })),
        }
    }

    pub(crate) fn cluster(client: ClusterClient) -> Redis {
        Redis {
            inner: Inner::Cluster(Arc::new(Clustered {
                client,
                connecting: tokio::sync::Mutex::new(()),
                current: Mutex::new(None),
                generations: Default::default(),
            })),
        }
    }

    /// Which topology this connection speaks to: `single`, `sentinel` or `cluster`.
    pub fn topology(&self) -> &'static str {
        match &self.inner {
            Inner::Single(_) => "single",
            Inner::Sentinel(_) => "sentinel",
            Inner::Cluster(_) => "cluster",
        }
    }
}

impl From<ConnectionManager> for Redis {
    fn from(manager: ConnectionManager) -> Redis {
        Redis::single(manager)
    }
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redis({})", self.topology())
    }
}

impl Followed {
    async fn connection(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.current.lock().expect("not poisoned").clone() {
            return Ok(c);
        }
        let mut sentinel = self.sentinel.lock().await;
        if let Some(c) = self.current.lock().expect("not poisoned").clone() {
            return Ok(c);
        }
        let connect = sentinel.get_async_connection_with_config(&self.config);
        let conn = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                RedisError::from((
                    ErrorKind::Io,
                    "no primary answered",
                    "the sentinels named no primary that answered in time".to_string(),
                ))
            })??;
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.current.lock().expect("not poisoned") = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Forgets the primary's connection after a failure that says it may no longer be one.
    fn failed(&self, generation: u64, e: &RedisError) {
        let stale = e.is_io_error()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || e.is_timeout()
            || matches!(
                e.kind(),
                ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
            );
        if stale {
            let mut current = self.current.lock().expect("not poisoned");
            if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                *current = None;
            }
        }
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (generation, mut c) = self.connection().await?;
        let r = c.req_packed_command(cmd).await;
        if let Err(e) = &r {
            self.failed(generation, e);
        }
        r
    }

    async fn commands(
        &self,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        let (generation, mut c) = self.connection().await?;
        let r = c.req_packed_commands(pipe, offset, count).await;
        match &r {
            Err(e) => self.failed(generation, e),
            Ok(values) => {
                // A demoted primary answers each write of a pipeline with READONLY.
                if let Some(Value::ServerError(e)) =
                    values.iter().find(|v| matches!(v, Value::ServerError(_)))
                {
                    self.failed(generation, &RedisError::from(e.clone()));
                }
            }
        }
        r
    }
}

/// At most this many of one pipeline's commands are in the cluster connection at once. Sending
/// all of a pipeline's commands at once (hundreds: a staged batch, a claim's reads) is what made
/// the redis crate's cluster connection stop taking requests under the drain's load (see
/// [`Clustered::failed`]): the cluster bench's quick drain took 7.4× its bound with stalls and
/// repeated writes (8,081 for 8,000), and 2.0× with none once bounded (debug build, one run each,
/// 2026-12-03). The commands of one node still travel together (the connection pipelines them).
const PIPELINE_IN_FLIGHT: usize = 32;

impl Clustered {
    async fn connection(&self) -> RedisResult<(u64, ClusterConnection)> {
        if let Some(c) = self.current.lock().expect("not poisoned").clone() {
            return Ok(c);
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.current.lock().expect("not poisoned").clone() {
            return Ok(c);
        }
        // Once connected, the cluster connection follows slot moves, failovers and a node's
        // restart by itself.
        let conn = self.client.get_async_connection().await?;
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *self.current.lock().expect("not poisoned") = Some((generation, conn.clone()));
        Ok((generation, conn))
    }

    /// Forgets the cluster connection after one of its commands timed out, so the next command
    /// opens a new one. The redis crate's cluster connection runs every command through one
    /// background task (a channel of 100 requests); under the drain's load (issue #18's cluster
    /// bench: thousands of commands a second from one worker) that task was seen to stop taking
    /// requests for good, with every node idle and connected: every command of the worker then
    /// timed out, forever. The trigger was one pipeline's hundreds of commands sent at once
    /// (now bounded: [`PIPELINE_IN_FLIGHT`]); the fault itself is inside the crate and not
    /// found, so this stays as the safety net: a new connection has a new task, and a worker
    /// recovers after one response timeout instead of never.
    fn failed(&self, generation: u64, e: &RedisError) {
        if e.is_timeout() {
            let mut current = self.current.lock().expect("not poisoned");
            if current.as_ref().is_some_and(|(g, _)| *g == generation) {
                tracing::warn!(error = %e, "redis: a command to the cluster timed out; the next one opens a new cluster connection");
                *current = None;
            }
        }
    }

    async fn command(&self, cmd: &Cmd) -> RedisResult<Value> {
        let (generation, mut c) = self.connection().await?;
        let r = c.req_packed_command(cmd).await;
        if let Err(e) = &r {
            self.failed(generation, e);
        }
        r
    }

    /// A pipeline's commands, each routed to its own slot's node, up to [`PIPELINE_IN_FLIGHT`]
    /// at a time (the cluster connection pipelines them per node); the answers in the
    /// pipeline's order. No pipeline of
    /// this service is a transaction, so nothing needs its commands together on one node.
    async fn commands(
        &self,
        pipe: &Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisResult<Vec<Value>> {
        use futures_util::StreamExt as _;
        let (generation, conn) = self.connection().await?;
        let sends: Vec<_> = pipe
            .cmd_iter()
            .map(|cmd| {
                let mut c = conn.clone();
                async move {
                    // A server's refusal of one command is that command's answer, as a pipeline
                    // on one connection would have it.
                    let r = c.req_packed_command(cmd).await;
                    if let Err(e) = &r {
                        self.failed(generation, e);
                    }
                    r.or_else(|e| redis::ServerError::try_from(e).map(Value::ServerError))
                }
                .boxed()
            })
            .collect();
        let answers: Vec<RedisResult<Value>> = futures_util::stream::iter(sends)
            .buffered(PIPELINE_IN_FLIGHT)
            .collect()
            .await;
        let values = answers.into_iter().collect::<RedisResult<Vec<Value>>>()?;
        Ok(values.into_iter().skip(offset).take(count).collect())
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
            Inner::Sentinel(f) => f.command(cmd).boxed(),
            Inner::Cluster(c) => c.command(cmd).boxed(),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Inner::Sentinel(f) => f.commands(pipeline, offset, count).boxed(),
            Inner::Cluster(c) => c.commands(pipeline, offset, count).boxed(),
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
            Inner::Sentinel(_) | Inner::Cluster(_) => 0,
        }
    }
}
