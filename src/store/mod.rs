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

/// The client of `redis.url`: with `rediss://`, the CA of `redis.tls_ca_file` (else the
/// system's roots) and the URL's host checked against the certificate.
fn client(cfg: &Config) -> Result<redis::Client, redis::RedisError> {
    let info = redis::IntoConnectionInfo::into_connection_info(cfg.redis.url.as_str())?;
    if cfg.redis.tls_ca_file.is_empty() {
        return redis::Client::open(info);
    }
    let pem = std::fs::read(&cfg.redis.tls_ca_file).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "cannot read redis.tls_ca_file",
            format!("{}: {e}", cfg.redis.tls_ca_file),
        ))
    })?;
    redis::Client::build_with_tls(
        info,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem),
        },
    )
}

/// A refused TLS certificate, said in words an operator can act on.
fn explain(e: redis::RedisError, cfg: &Config) -> redis::RedisError {
    let text = e.to_string();
    if !text.contains("certificate") {
        return e;
    }
    let trusted = if cfg.redis.tls_ca_file.is_empty() {
        "the system's roots".to_string()
    } else {
        format!("redis.tls_ca_file ({})", cfg.redis.tls_ca_file)
    };
    let why = if text.contains("NotValidForName") || text.contains("not valid for name") {
        "Redis's TLS certificate is not for the host redis.url names: use a host name the \
         certificate lists"
    } else {
        "Redis's TLS certificate is not signed by a CA this worker trusts: give the CA that \
         signs it in redis.tls_ca_file"
    };
    redis::RedisError::from((
        redis::ErrorKind::Io,
        "TLS refused",
        format!("{why} (trusted: {trusted}; {text})"),
    ))
}

/// Connects to Redis with the configured response timeout; the manager reconnects by itself.
pub async fn connect(cfg: &Config) -> Result<Redis, redis::RedisError> {
    let manager = client(cfg)?
        .get_connection_manager_with_config(manager_config(cfg))
        .await
        .map_err(|e| explain(e, cfg))?;
    Ok(Redis::single(manager))
}

/// A Redis connection manager that connects on first use (so a worker starts, not ready, while
/// Redis is down) and reconnects by itself.
pub fn connect_lazy(cfg: &Config) -> Result<Redis, redis::RedisError> {
    Ok(Redis::single(
        client(cfg)?.get_connection_manager_lazy(manager_config(cfg))?,
    ))
}

/// The key names of this configuration.
pub fn keys(cfg: &Config) -> Keys {
    Keys::new(&cfg.redis.key_prefix)
}
