//! The value checks [`Config::validate`](super::Config::validate) applies key by key: each says,
//! in words, why a value could never work and what to do instead. None repeats the value: these
//! keys hold secrets (tokens, keys, URLs with passwords).

use base64::Engine;

/// How to make a token or a key that passes.
const HOW_TO_MAKE_ONE: &str = "make one with `openssl rand -base64 32`";

/// zxcvbn counts guesses in a `u64`, so 64 bits is the most it reports; 63 leaves room for
/// rounding. A random token of 20 or more characters reaches it.
const MIN_TOKEN_BITS: f64 = 63.0;

/// zxcvbn's cost grows faster than the length; a longer token is judged by its first characters
/// (if they are strong enough, so is the whole).
const TOKEN_CHARS_ESTIMATED: usize = 128;

/// Words that make a token easier to guess here.
const CONTEXT_WORDS: &[&str] = &["cyzen", "outlook", "sync", "admin", "token", "secret"];

/// An admin API bearer token: sent in an HTTP header and compared after trimming, so it must be
/// visible ASCII without surrounding spaces, and random enough that it cannot be guessed.
pub(super) fn admin_token(token: &str) -> Result<(), String> {
    if token.trim().is_empty() {
        return Err(format!("is blank; {HOW_TO_MAKE_ONE}"));
    }
    if token.trim() != token {
        return Err(
            "starts or ends with a space: the token a caller presents is trimmed, so \
                    this one could never match; remove the spaces"
                .into(),
        );
    }
    if !token.chars().all(|c| c == ' ' || c.is_ascii_graphic()) {
        return Err(format!(
            "holds a character an HTTP header cannot carry (only visible ASCII can be sent); \
             {HOW_TO_MAKE_ONE}"
        ));
    }
    let sample: String = token.chars().take(TOKEN_CHARS_ESTIMATED).collect();
    let bits = zxcvbn::zxcvbn(&sample, CONTEXT_WORDS).guesses_log10() * std::f64::consts::LOG2_10;
    if bits < MIN_TOKEN_BITS {
        return Err(format!(
            "is too easy to guess: it needs about 64 bits of entropy (zxcvbn's estimate), and \
             words, repetitions, sequences and short tokens fall short; {HOW_TO_MAKE_ONE}"
        ));
    }
    Ok(())
}

/// An AES-256 key: 32 bytes in standard base64, and random. A random key's 32 bytes take about
/// 30 different values; fewer than 16 happens by chance with a probability far below 10^-20,
/// so such a key (all zeros, a short pattern repeated) was typed, not generated.
pub(super) fn aes_key(key_base64: &str) -> Result<(), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(key_base64.trim())
        .ok()
        .filter(|b| b.len() == 32)
        .ok_or_else(|| format!("must be 32 bytes in standard base64; {HOW_TO_MAKE_ONE}"))?;
    let distinct = bytes
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    if distinct < 16 {
        return Err(format!(
            "is not random (its 32 bytes take fewer than 16 different values, as an all-zero \
             key does); {HOW_TO_MAKE_ONE}"
        ));
    }
    Ok(())
}

/// `amqp.url`: what lapin will parse when it connects.
pub(super) fn amqp_url(v: &str) -> Result<(), String> {
    let u = url::Url::parse(v).map_err(|e| {
        format!("is not a URL ({e}); the form is amqp://user:password@host:5672/vhost")
    })?;
    if !matches!(u.scheme(), "amqp" | "amqps") {
        return Err("must start with amqp:// or amqps://".into());
    }
    v.parse::<lapin::uri::AMQPUri>()
        .map_err(|e| format!("cannot be used by the AMQP client: {e}"))?;
    Ok(())
}

/// `redis.url`: one Redis, Sentinel or Cluster ([`super::RedisTopology`]), each address as the
/// Redis client will parse it when it connects. `rediss://` always checks the server's
/// certificate and name: redis-rs's `#insecure` (no check at all) is refused.
pub(super) fn redis_url(v: &str) -> Result<(), String> {
    let single = match super::RedisTopology::parse(v)? {
        super::RedisTopology::Single { url } => url,
        super::RedisTopology::Sentinel { sentinels, .. } => {
            return sentinels.iter().try_for_each(|s| redis_single_url(s));
        }
        super::RedisTopology::Cluster { nodes } => {
            return nodes.iter().try_for_each(|n| redis_single_url(n));
        }
    };
    redis_single_url(&single)
}

fn redis_single_url(v: &str) -> Result<(), String> {
    let u = url::Url::parse(v)
        .map_err(|e| format!("is not a URL ({e}); the form is redis://[:password@]host:6379/db"))?;
    match u.scheme() {
        "redis" | "valkey" | "unix" | "redis+unix" | "valkey+unix" | "rediss" | "valkeys" => {}
        _ => {
            return Err(
                "must start with redis://, rediss://, unix://, redis+sentinel:// or \
                        redis+cluster://"
                    .into(),
            );
        }
    }
    if u.fragment().is_some() {
        return Err(
            "has a #fragment; #insecure would turn off the check of Redis's TLS \
                    certificate: give the CA that signs it in redis.tls_ca_file instead"
                .into(),
        );
    }
    redis::IntoConnectionInfo::into_connection_info(v)
        .map_err(|e| format!("cannot be used by the Redis client: {e}"))?;
    Ok(())
}

/// `database.url`: a `postgres://` URL the PostgreSQL client parses. The client's own error is
/// not quoted (it may repeat the value, password included).
pub(super) fn postgres_url(v: &str) -> Result<(), String> {
    let form = "the form is postgres://user:password@host:5432/database";
    let u = url::Url::parse(v).map_err(|_| format!("is not a URL; {form}"))?;
    if !matches!(u.scheme(), "postgres" | "postgresql") {
        return Err(format!("must start with postgres://; {form}"));
    }
    v.parse::<tokio_postgres::Config>()
        .map(|_| ())
        .map_err(|_| format!("cannot be used by the PostgreSQL client; {form}"))
}

/// `database.schema`: a plain lowercase SQL identifier (it is written into statements).
pub(super) fn schema_name(v: &str) -> Result<(), String> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && v.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err("must be 1 to 63 of a-z, 0-9 and _, not starting with a digit".into())
    }
}

/// Whether `redis.url` asks for TLS.
pub(super) fn redis_url_is_tls(v: &str) -> bool {
    super::RedisTopology::parse(v).is_ok_and(|t| t.tls())
}

/// `redis.tls_ca_file`: a readable PEM file with at least one certificate.
pub(super) fn pem_ca_file(path: &str) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("cannot read {path}: {e}; give a PEM file of the CA that signs Redis's certificate")
    })?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----); give the CA that \
             signs Redis's certificate"
        ));
    }
    Ok(())
}

/// `graph.base_url` and `graph.login_url`: paths are appended to them, and the client secret is
/// sent to `login_url`, so they take no credentials, no query or fragment, and `https://` unless
/// the host is this machine (or `graph.allow_insecure_http` says otherwise).
pub(super) fn graph_url(v: &str, allow_insecure_http: bool) -> Result<(), String> {
    let u = url::Url::parse(v).map_err(|e| format!("is not a URL ({e})"))?;
    match u.scheme() {
        "https" => {}
        "http" if allow_insecure_http || is_loopback(&u) => {}
        "http" => {
            return Err(
                "is plain http:// to a host other than this machine: the client secret \
                        and tokens would travel unencrypted. Use https://; only for a test \
                        emulator on another host, set graph.allow_insecure_http = true"
                    .into(),
            );
        }
        _ => return Err("must be an https:// URL".into()),
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(
            "must not hold a user name or password (user:password@): the service \
                    authenticates with each company's credentials, never with the URL"
                .into(),
        );
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err(
            "must not have a ?query or #fragment: paths such as /{tenant}/oauth2/v2.0/token \
                    are appended to it and would land inside them"
                .into(),
        );
    }
    Ok(())
}

/// The host of a plain `http://` URL that is not this machine, if `v` is one.
pub(super) fn insecure_remote_host(v: &str) -> Option<String> {
    let u = url::Url::parse(v).ok()?;
    (u.scheme() == "http" && !is_loopback(&u)).then(|| u.host_str().unwrap_or_default().to_string())
}

fn is_loopback(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}
