//! [`Redis`]: the one connection type of the service. Every stage holds one (a cheap clone of
//! the process's connection) and speaks to it through `redis::aio::ConnectionLike`, so the
//! topology behind it is decided here, from `redis.url`, and nowhere else.

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to the configured Redis: cheap to clone (clones share one multiplexed
/// connection), reconnecting by itself.
#[derive(Clone)]
pub struct Redis {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    /// One Redis (`redis://`, `unix://`), reconnected by the connection manager.
    Single(ConnectionManager),
}

impl Redis {
    pub(crate) fn single(manager: ConnectionManager) -> Redis {
        Redis {
            inner: Inner::Single(manager),
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
        match &self.inner {
            Inner::Single(_) => f.write_str("Redis(single)"),
        }
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.inner {
            Inner::Single(c) => c.req_packed_command(cmd),
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
        }
    }

    fn get_db(&self) -> i64 {
        match &self.inner {
            Inner::Single(c) => c.get_db(),
        }
    }
}
