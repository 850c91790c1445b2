//! [`Config::validate`]: every rule a type cannot express, key by key, in one fixed order (the
//! first problem found is the one reported). The value checks themselves are in `checks`.

use std::net::SocketAddr;

use super::{Config, ConfigError, Place, checks};

/// A key whose value cannot be used, placed later by `source` (the file's line or the variable).
fn bad(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.into(),
        message: message.into(),
        place: Place::Unknown,
    }
}

impl Config {
    /// Checks every rule a type cannot express: anything that could never work is refused here,
    /// with its key. No message shows the value of a key that bears a secret.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_amqp_and_names()?;
        self.validate_redis_and_window()?;
        self.validate_graph_and_retry()?;
        self.validate_admin()?;
        self.validate_secrets()?;
        self.validate_the_rest()?;
        self.validate_database()
    }

    /// The directory's PostgreSQL: a URL its client parses, a plain schema name, the cache.
    fn validate_database(&self) -> Result<(), ConfigError> {
        let d = &self.database;
        checks::postgres_url(&d.url).map_err(|m| bad("database.url", m))?;
        checks::schema_name(&d.schema).map_err(|m| bad("database.schema", m))?;
        if d.pool_size == 0 || d.pool_size > 64 {
            return Err(bad(
                "database.pool_size",
                format!("{} is out of range 1..=64", d.pool_size),
            ));
        }
        if d.timeout_ms < 100 {
            return Err(bad("database.timeout_ms", "must be at least 100"));
        }
        if !(5..=3600).contains(&d.reload_seconds) {
            return Err(bad(
                "database.reload_seconds",
                format!("{} is out of range 5..=3600", d.reload_seconds),
            ));
        }
        if !(1..=600).contains(&d.write_behind_seconds) {
            return Err(bad(
                "database.write_behind_seconds",
                format!("{} is out of range 1..=600", d.write_behind_seconds),
            ));
        }
        Ok(())
    }

    /// The AMQP URL, the names that must not be empty, the queues, prefetch and batches.
    fn validate_amqp_and_names(&self) -> Result<(), ConfigError> {
        let a = &self.amqp;
        checks::amqp_url(&a.url).map_err(|m| bad("amqp.url", m))?;
        for (key, v) in [
            ("amqp.exchange", &a.exchange),
            ("amqp.queue", &a.queue),
            ("amqp.dead_letter_exchange", &a.dead_letter_exchange),
            ("amqp.dead_letter_queue", &a.dead_letter_queue),
            ("redis.key_prefix", &self.redis.key_prefix),
            ("graph.category", &self.graph.category),
        ] {
            if v.trim().is_empty() {
                return Err(bad(key, "must not be empty"));
            }
        }
        if self.redis.key_prefix.contains(['{', '}']) {
            // Each schedule's pending events share its staged key's hash slot through a hash
            // tag naming that key whole (`store::keys`); a brace of the prefix's would break it.
            return Err(bad(
                "redis.key_prefix",
                "must not contain '{' or '}': the service places its own hash tags; choose a prefix without braces",
            ));
        }
        if a.queue == a.dead_letter_queue {
            return Err(bad("amqp.dead_letter_queue", "must differ from amqp.queue"));
        }
        if a.prefetch == 0 || a.prefetch > 2000 {
            return Err(bad(
                "amqp.prefetch",
                format!(
                    "{} is out of range 1..=2000 (quorum queues cap prefetch at 2,000)",
                    a.prefetch
                ),
            ));
        }
        if a.delivery_limit == 0 {
            return Err(bad("amqp.delivery_limit", "must be at least 1"));
        }
        if a.ingest_batch == 0 || a.ingest_batch > usize::from(a.prefetch) {
            return Err(bad(
                "amqp.ingest_batch",
                format!(
                    "{} must be from 1 to amqp.prefetch ({})",
                    a.ingest_batch, a.prefetch
                ),
            ));
        }
        Ok(())
    }

    /// The Redis URL and timeout; the window, its poll and its claims.
    fn validate_redis_and_window(&self) -> Result<(), ConfigError> {
        checks::redis_url(&self.redis.url).map_err(|m| bad("redis.url", m))?;
        if !self.redis.tls_ca_file.is_empty() {
            if !checks::redis_url_is_tls(&self.redis.url) {
                return Err(bad(
                    "redis.tls_ca_file",
                    "is set but redis.url does not ask for TLS: use rediss://, or leave \
                     tls_ca_file empty",
                ));
            }
            checks::pem_ca_file(&self.redis.tls_ca_file)
                .map_err(|m| bad("redis.tls_ca_file", m))?;
        }
        if !(1..=64).contains(&self.redis.shards) {
            return Err(bad(
                "redis.shards",
                format!("{} is out of range 1..=64", self.redis.shards),
            ));
        }
        if self.redis.wait_replicas > 0 {
            if matches!(
                super::RedisTopology::parse(&self.redis.url),
                Ok(super::RedisTopology::Cluster { .. })
            ) {
                return Err(bad(
                    "redis.wait_replicas",
                    "applies to one Redis or Sentinel, not to a cluster (WAIT is per node): set \
                     it to 0",
                ));
            }
            // WAIT holds the connection it is sent on (every stage shares one), so it must end
            // well within a call's timeout.
            if self.redis.wait_timeout_ms == 0
                || self.redis.wait_timeout_ms * 4 > self.redis.response_timeout_ms
            {
                return Err(bad(
                    "redis.wait_timeout_ms",
                    "must be at least 1 and at most a quarter of redis.response_timeout_ms",
                ));
            }
        }
        if self.redis.response_timeout_ms < 100 {
            return Err(bad("redis.response_timeout_ms", "must be at least 100"));
        }
        let w = &self.window;
        if w.seconds == 0 || w.seconds > 3600 {
            return Err(bad(
                "window.seconds",
                format!("{} is out of range 1..=3600", w.seconds),
            ));
        }
        if w.poll_interval_ms == 0 {
            return Err(bad("window.poll_interval_ms", "must be at least 1"));
        }
        if w.claim_lease_seconds < 5 {
            return Err(bad("window.claim_lease_seconds", "must be at least 5"));
        }
        if w.claim_batch == 0 {
            return Err(bad("window.claim_batch", "must be at least 1"));
        }
        Ok(())
    }

    /// Graph's URLs, zone, concurrency, lease, batch and timeout; the retry schedule.
    fn validate_graph_and_retry(&self) -> Result<(), ConfigError> {
        let g = &self.graph;
        for (key, v) in [
            ("graph.base_url", &g.base_url),
            ("graph.login_url", &g.login_url),
        ] {
            checks::graph_url(v, g.allow_insecure_http).map_err(|m| bad(key, m))?;
        }
        if jiff::tz::TimeZone::get(&g.default_time_zone).is_err() {
            return Err(bad(
                "graph.default_time_zone",
                format!("{:?} is not a known IANA time zone", g.default_time_zone),
            ));
        }
        if g.max_in_flight_per_mailbox == 0 || g.max_in_flight_per_mailbox > 4 {
            return Err(bad(
                "graph.max_in_flight_per_mailbox",
                format!(
                    "{} is out of range 1..=4 (Graph allows 4 concurrent requests per mailbox)",
                    g.max_in_flight_per_mailbox
                ),
            ));
        }
        if g.mailbox_lease_seconds < 2 {
            return Err(bad("graph.mailbox_lease_seconds", "must be at least 2"));
        }
        if g.max_in_flight_total == 0 {
            return Err(bad("graph.max_in_flight_total", "must be at least 1"));
        }
        if g.batch_size == 0 || g.batch_size > 20 {
            return Err(bad(
                "graph.batch_size",
                format!(
                    "{} is out of range 1..=20 (Graph's $batch limit)",
                    g.batch_size
                ),
            ));
        }
        if g.request_timeout_ms < 100 {
            return Err(bad("graph.request_timeout_ms", "must be at least 100"));
        }
        let r = &self.retry;
        if r.max_attempts == 0 {
            return Err(bad("retry.max_attempts", "must be at least 1"));
        }
        if r.give_up_after_seconds == 0 {
            return Err(bad("retry.give_up_after_seconds", "must be at least 1"));
        }
        if g.mailbox_request_budget < 40 || g.mailbox_budget_window_seconds == 0 {
            return Err(bad(
                "graph.mailbox_request_budget",
                "must be at least 40 requests (two full $batches) per graph.mailbox_budget_window_seconds (at least 1)",
            ));
        }
        if r.initial_backoff_ms == 0 || r.initial_backoff_ms > r.max_backoff_ms {
            return Err(bad(
                "retry.initial_backoff_ms",
                "must be at least 1 and at most retry.max_backoff_ms",
            ));
        }
        Ok(())
    }

    /// The admin API: its listeners, tokens, public URL, consent, bulk files and timeouts.
    fn validate_admin(&self) -> Result<(), ConfigError> {
        if self.admin.listen.parse::<SocketAddr>().is_err() {
            return Err(bad(
                "admin.listen",
                format!(
                    "{:?} is not an address such as 127.0.0.1:8080",
                    self.admin.listen
                ),
            ));
        }
        let mut names = std::collections::HashSet::new();
        for (i, entry) in self.admin.tokens.iter().enumerate() {
            let (name, token) = super::admin_token_parts(entry, i);
            checks::admin_token(token).map_err(|m| bad(&format!("admin.tokens[{i}]"), m))?;
            if !names.insert(name.clone()) {
                return Err(bad(
                    &format!("admin.tokens[{i}]"),
                    format!(
                        "names {name:?} again: each token's name must be its own (the audit records it)"
                    ),
                ));
            }
        }
        match url::Url::parse(&self.admin.public_url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            _ => {
                return Err(bad(
                    "admin.public_url",
                    "is not an http(s) URL such as https://outlook-sync.example.com",
                ));
            }
        }
        if self.admin.consent_state_ttl_seconds < 60 {
            return Err(bad(
                "admin.consent_state_ttl_seconds",
                "must be at least 60",
            ));
        }
        if self.admin.bulk_concurrency == 0 || self.admin.bulk_concurrency > 64 {
            return Err(bad("admin.bulk_concurrency", "must be from 1 to 64"));
        }
        if self.admin.bulk_sync_max_rows == 0 {
            return Err(bad("admin.bulk_sync_max_rows", "must be at least 1"));
        }
        if !self.admin.public_listen.is_empty() {
            match self.admin.public_listen.parse::<SocketAddr>() {
                Err(_) => {
                    return Err(bad(
                        "admin.public_listen",
                        format!(
                            "{:?} is not an address such as 0.0.0.0:8443 (or empty for none)",
                            self.admin.public_listen
                        ),
                    ));
                }
                Ok(a) if Some(a) == self.admin.listen.parse().ok() => {
                    return Err(bad(
                        "admin.public_listen",
                        "must differ from admin.listen (the public listener serves only the consent callback)",
                    ));
                }
                Ok(_) => {}
            }
        }
        if !(1..=60).contains(&self.admin.header_read_timeout_seconds) {
            return Err(bad(
                "admin.header_read_timeout_seconds",
                "must be from 1 to 60 (a few seconds: a request head is small)",
            ));
        }
        if self.admin.idle_timeout_seconds < self.admin.header_read_timeout_seconds
            || self.admin.idle_timeout_seconds > 3600
        {
            return Err(bad(
                "admin.idle_timeout_seconds",
                "must be at least admin.header_read_timeout_seconds and at most 3600",
            ));
        }
        if !(1..=3600).contains(&self.admin.request_timeout_seconds) {
            return Err(bad(
                "admin.request_timeout_seconds",
                "must be from 1 to 3600",
            ));
        }
        if !(16..=65_536).contains(&self.admin.max_connections) {
            return Err(bad("admin.max_connections", "must be from 16 to 65536"));
        }
        Ok(())
    }

    fn validate_secrets(&self) -> Result<(), ConfigError> {
        let s = &self.secrets;
        let bad = |key: String, message: String| ConfigError::Key {
            key,
            message,
            place: Place::Unknown,
        };
        for (i, k) in s.keys.iter().enumerate() {
            if k.id.trim().is_empty() || k.id.contains(char::is_whitespace) {
                return Err(bad(
                    format!("secrets.keys[{i}].id"),
                    "must be a non-empty word".into(),
                ));
            }
            if s.keys[..i].iter().any(|o| o.id == k.id) {
                return Err(bad(
                    format!("secrets.keys[{i}].id"),
                    format!("{:?} is used twice", k.id),
                ));
            }
            checks::aes_key(&k.key_base64)
                .map_err(|m| bad(format!("secrets.keys[{i}].key_base64"), m))?;
        }
        match (s.keys.is_empty(), s.active_key.is_empty()) {
            (true, true) => Ok(()),
            // The value is not repeated: it may be a key pasted where its id belongs.
            (true, false) => Err(bad(
                "secrets.active_key".into(),
                "names a key, but secrets.keys is empty (active_key is the id of one of \
                 secrets.keys, such as 2026-01, not a key)"
                    .into(),
            )),
            (false, true) => Err(bad(
                "secrets.active_key".into(),
                "must name one of secrets.keys".into(),
            )),
            (false, false) if !s.keys.iter().any(|k| k.id == s.active_key) => Err(bad(
                "secrets.active_key".into(),
                format!(
                    "is not the id of one of secrets.keys (their ids: {})",
                    s.keys
                        .iter()
                        .map(|k| k.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The ledger, the dead letters, the log filter, the AMQP heartbeat and the worker's grace.
    fn validate_the_rest(&self) -> Result<(), ConfigError> {
        if self.ledger.retention_days == 0 || self.ledger.retention_days > 366 {
            return Err(bad("ledger.retention_days", "must be from 1 to 366"));
        }
        if self.ledger.max_entries == 0 {
            return Err(bad("ledger.max_entries", "must be at least 1"));
        }
        if self.dlq.archive_dir.trim().is_empty() {
            return Err(bad("dlq.archive_dir", "must not be empty"));
        }
        if self.dlq.batch_size == 0 || self.dlq.batch_size > 16 {
            return Err(bad(
                "dlq.batch_size",
                format!(
                    "{} is out of range 1..=16 (RabbitMQ holds back the acks of larger batches)",
                    self.dlq.batch_size
                ),
            ));
        }
        if self.dlq.depth_poll_seconds == 0 {
            return Err(bad("dlq.depth_poll_seconds", "must be at least 1"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.filter) {
            return Err(bad("log.filter", e.to_string()));
        }
        let a = &self.amqp;
        if a.heartbeat_seconds > 600 {
            return Err(bad(
                "amqp.heartbeat_seconds",
                format!("{} is out of range 0..=600", a.heartbeat_seconds),
            ));
        }
        let grace = self.worker.shutdown_grace_seconds;
        if grace == 0 || grace > 3600 {
            return Err(bad(
                "worker.shutdown_grace_seconds",
                format!("{grace} is out of range 1..=3600"),
            ));
        }
        self.validate_repair()
    }

    /// The repair pass's interval, range and page size.
    fn validate_repair(&self) -> Result<(), ConfigError> {
        let r = &self.repair;
        for (key, v, lo, hi) in [
            (
                "repair.interval_minutes",
                r.interval_minutes,
                1,
                7 * 24 * 60,
            ),
            ("repair.days_back", u64::from(r.days_back), 0, 3650),
            ("repair.days_ahead", u64::from(r.days_ahead), 1, 3650),
            ("repair.page_size", u64::from(r.page_size), 1, 1000),
            ("repair.poll_seconds", r.poll_seconds, 1, 3600),
        ] {
            if v < lo || v > hi {
                return Err(bad(key, format!("{v} is out of range {lo}..={hi}")));
            }
        }
        Ok(())
    }
}
