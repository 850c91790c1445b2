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
pub mod repair;

use std::time::Duration;

pub use connection::Redis;
pub use copies::{Copies, CopyChange, CopyRecord, Drift};
pub use keys::{Keys, Member};
pub use lease::{LeaseGuard, Leases, MailboxLeases};

use crate::config::{Config, RedisTopology};

fn manager_config(cfg: &Config) -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_millis(cfg.redis.response_timeout_ms)))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(5))
        // A command fails at once when Redis is away (the caller says so and retries with its
        // own backoff), rather than after six silent reconnection attempts.
        .set_number_of_retries(1)
}

/// The CA of `redis.tls_ca_file`, if set.
fn tls_certificates(cfg: &Config) -> Result<Option<redis::TlsCertificates>, redis::RedisError> {
    if cfg.redis.tls_ca_file.is_empty() {
        return Ok(None);
    }
    let pem = std::fs::read(&cfg.redis.tls_ca_file).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "cannot read redis.tls_ca_file",
            format!("{}: {e}", cfg.redis.tls_ca_file),
        ))
    })?;
    Ok(Some(redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// The client of one Redis at `url`: with `rediss://`, the CA of `redis.tls_ca_file` (else the
/// system's roots) and the URL's host checked against the certificate.
fn client(cfg: &Config, url: &str) -> Result<redis::Client, redis::RedisError> {
    let info = redis::IntoConnectionInfo::into_connection_info(url)?;
    match tls_certificates(cfg)? {
        None => redis::Client::open(info),
        Some(certs) => redis::Client::build_with_tls(info, certs),
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn response_timeout(cfg: &Config) -> Duration {
    Duration::from_millis(cfg.redis.response_timeout_ms)
}

/// The connection `redis.url` names, not connected yet (see [`RedisTopology`]).
fn open(cfg: &Config) -> Result<Redis, redis::RedisError> {
    let topology = RedisTopology::parse(&cfg.redis.url).map_err(|m| {
        redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "redis.url", m))
    })?;
    match topology {
        RedisTopology::Single { url } => Ok(Redis::single(
            client(cfg, &url)?.get_connection_manager_lazy(manager_config(cfg))?,
        )),
        RedisTopology::Sentinel {
            master,
            sentinels,
            db,
            username,
            password,
            tls,
        } => {
            let addrs = sentinels
                .iter()
                .map(|s| {
                    redis::IntoConnectionInfo::into_connection_info(s.as_str())
                        .map(|i| i.addr().clone())
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut b = redis::sentinel::SentinelClientBuilder::new(
                addrs,
                master,
                redis::sentinel::SentinelServerType::Master,
            )?
            .set_client_to_redis_db(db);
            if let Some(u) = username {
                b = b.set_client_to_redis_username(u);
            }
            if let Some(p) = password {
                b = b.set_client_to_redis_password(p);
            }
            if tls {
                b = b
                    .set_client_to_redis_tls_mode(redis::TlsMode::Secure)
                    .set_client_to_sentinel_tls_mode(redis::TlsMode::Secure);
                if let Some(certs) = tls_certificates(cfg)? {
                    b = b
                        .set_client_to_redis_certificates(certs.clone())
                        .set_client_to_sentinel_certificates(certs);
                }
            }
            let config = redis::AsyncConnectionConfig::new()
                .set_response_timeout(Some(response_timeout(cfg)))
                .set_connection_timeout(Some(CONNECT_TIMEOUT));
            Ok(Redis::sentinel(b.build()?, config, CONNECT_TIMEOUT))
        }
        RedisTopology::Cluster { nodes } => {
            let mut b = redis::cluster::ClusterClient::builder(nodes)
                .response_timeout(response_timeout(cfg))
                .connection_timeout(CONNECT_TIMEOUT)
                .retries(3);
            if let Some(certs) = tls_certificates(cfg)? {
                b = b.certs(certs);
            }
            Ok(Redis::cluster(b.build()?))
        }
    }
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

/// Connects to the Redis `redis.url` names (one Redis, a Sentinel-followed primary, or a
/// cluster) with the configured response timeout, and checks that it answers; the connection
/// reconnects (and follows a failover) by itself.
pub async fn connect(cfg: &Config) -> Result<Redis, redis::RedisError> {
    let mut r = match RedisTopology::parse(&cfg.redis.url) {
        Ok(RedisTopology::Single { url }) => Redis::single(
            client(cfg, &url)?
                .get_connection_manager_with_config(manager_config(cfg))
                .await
                .map_err(|e| explain(e, cfg))?,
        ),
        _ => open(cfg)?,
    };
    let _: () = redis::cmd("PING")
        .query_async::<String>(&mut r)
        .await
        .map(drop)
        .map_err(|e| explain(e, cfg))?;
    Ok(r)
}

/// A Redis connection that connects on first use (so a worker starts, not ready, while Redis
/// is down) and reconnects by itself.
pub fn connect_lazy(cfg: &Config) -> Result<Redis, redis::RedisError> {
    open(cfg)
}

/// The key names of this configuration.
pub fn keys(cfg: &Config) -> Keys {
    let cluster = matches!(
        RedisTopology::parse(&cfg.redis.url),
        Ok(RedisTopology::Cluster { .. })
    );
    Keys::sharded(&cfg.redis.key_prefix, cfg.redis.shards, cluster)
}
