//! The Redis keyspace in one place: every key name and its layout ([`keys`]), the copies
//! ([`copies`]), the one lease implementation ([`lease`]), and the connection.
//!
//! The stages that keep state in Redis (`window`'s staging and claims, `ledger`, `tenants`, the
//! admin's consent states and jobs, the dead-letter operations' lock) take their key names from
//! [`Keys`]; nothing else builds a key.

pub mod connection;
pub mod copies;
pub mod keys;
pub mod lease;
pub mod pace;

use std::time::Duration;

pub use connection::Redis;
pub use copies::{Copies, CopyChange, CopyRecord};
pub use keys::{Keys, Member};
pub use lease::{LeaseGuard, Leases, MailboxLeases};

use crate::config::Config;

fn manager_config(cfg: &Config) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(cfg.redis.response_timeout_ms)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(5))
        // A command fails at once when Redis is away (the caller says so and retries with its
        // own backoff), rather than after six silent reconnection attempts.
        .set_number_of_retries(1)
}

/// Connects to Redis with the configured response timeout; the manager reconnects by itself.
pub async fn connect(cfg: &Config) -> Result<Redis, redis::RedisError> {
    let client = redis::Client::open(cfg.redis.url.as_str())?;
    let manager = client
        .get_connection_manager_with_config(manager_config(cfg))
        .await?;
    Ok(Redis::single(manager))
}

/// A Redis connection manager that connects on first use (so a worker starts, not ready, while
/// Redis is down) and reconnects by itself.
pub fn connect_lazy(cfg: &Config) -> Result<Redis, redis::RedisError> {
    let client = redis::Client::open(cfg.redis.url.as_str())?;
    Ok(Redis::single(
        client.get_connection_manager_lazy(manager_config(cfg))?,
    ))
}

/// The key names of this configuration.
pub fn keys(cfg: &Config) -> Keys {
    Keys::new(&cfg.redis.key_prefix)
}
