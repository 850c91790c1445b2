//! Which keys bear a secret, in one list: their values are never shown in an error, and are
//! redacted when the configuration is printed.

use super::Config;

#[derive(Debug, Clone, Copy)]
enum Secrecy {
    /// A URL that may hold a password: shown without it.
    Url,
    /// Never shown.
    Whole,
}

/// Every key whose value is, or may hold, a secret. A path goes through lists (`secrets.keys`
/// is a list of tables; `key_base64` is the secret in each).
const SECRET_KEYS: &[(&str, Secrecy)] = &[
    ("amqp.url", Secrecy::Url),
    ("redis.url", Secrecy::Url),
    ("database.url", Secrecy::Url),
    ("graph.base_url", Secrecy::Url),
    ("graph.login_url", Secrecy::Url),
    ("admin.public_url", Secrecy::Url),
    ("admin.tokens", Secrecy::Whole),
    ("secrets.keys.key_base64", Secrecy::Whole),
];

/// What a redacted value shows.
const HIDDEN: &str = "***";

fn secret_paths() -> impl Iterator<Item = (Vec<&'static str>, Secrecy)> {
    SECRET_KEYS
        .iter()
        .map(|(k, s)| (k.split('.').collect(), *s))
}

/// Whether the value at `path` (list indices included or not) is, holds or lies within a
/// secret-bearing key. The top level holds them all.
pub(super) fn bears_secret(path: &[String]) -> bool {
    let path: Vec<&str> = path
        .iter()
        .map(String::as_str)
        .filter(|c| c.parse::<usize>().is_err())
        .collect();
    secret_paths().any(|(secret, _)| secret.starts_with(&path) || path.starts_with(&secret))
}

/// A URL without its password (all of it hidden if it does not parse); one without a password
/// is left as written.
pub(super) fn redacted_url(v: &str) -> String {
    match url::Url::parse(v) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some(HIDDEN));
            u.to_string()
        }
        Ok(_) => v.to_string(),
        Err(_) => HIDDEN.into(),
    }
}

/// The configuration as TOML, in the order of `config/default.toml`, every secret redacted.
pub(super) fn redacted_toml(cfg: &Config) -> String {
    let text = toml::to_string(cfg).expect("a configuration is TOML");
    let mut doc: toml_edit::DocumentMut = text.parse().expect("toml writes TOML");
    for (path, secrecy) in secret_paths() {
        redact_item(doc.as_item_mut(), &path, secrecy);
    }
    let mut out = doc.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn redact_item(item: &mut toml_edit::Item, path: &[&str], secrecy: Secrecy) {
    use toml_edit::Item;
    match item {
        Item::Value(v) => redact_value(v, path, secrecy),
        Item::ArrayOfTables(tables) => {
            for t in tables.iter_mut() {
                if let Some((first, rest)) = path.split_first()
                    && let Some(child) = t.get_mut(first)
                {
                    redact_item(child, rest, secrecy);
                }
            }
        }
        Item::Table(t) => {
            if let Some((first, rest)) = path.split_first()
                && let Some(child) = t.get_mut(first)
            {
                redact_item(child, rest, secrecy);
            }
        }
        Item::None => {}
    }
}

fn redact_value(v: &mut toml_edit::Value, path: &[&str], secrecy: Secrecy) {
    use toml_edit::Value;
    match (v, path.split_first()) {
        (Value::Array(items), _) => {
            for item in items.iter_mut() {
                redact_value(item, path, secrecy);
            }
        }
        (Value::InlineTable(t), Some((first, rest))) => {
            if let Some(child) = t.get_mut(first) {
                redact_value(child, rest, secrecy);
            }
        }
        (v @ Value::String(_), None) => {
            let shown = match secrecy {
                Secrecy::Url => redacted_url(v.as_str().unwrap_or_default()),
                Secrecy::Whole => HIDDEN.into(),
            };
            let decor = v.decor().clone();
            *v = Value::from(shown);
            *v.decor_mut() = decor;
        }
        _ => {}
    }
}

/// Every string given for a secret-bearing key in the loaded layers (whatever its type turned out
/// to be), and each URL's password: what an error message must never contain.
pub(super) fn secret_strings(fig: &figment::Figment) -> Vec<String> {
    let mut out = Vec::new();
    for (path, _) in secret_paths() {
        if let Ok(v) = fig.find_value(path[0]) {
            collect(&v, &path[1..], &mut out);
        }
    }
    for s in out.clone() {
        if let Ok(u) = url::Url::parse(&s)
            && let Some(pw) = u.password()
        {
            out.push(pw.to_string());
            if let Ok(decoded) = percent_encoding::percent_decode_str(pw).decode_utf8() {
                out.push(decoded.into_owned());
            }
        }
    }
    out
}

fn collect(v: &figment::value::Value, path: &[&str], out: &mut Vec<String>) {
    use figment::value::Value;
    match (v, path.split_first()) {
        (Value::Dict(_, d), Some((first, rest))) => {
            if let Some(child) = d.get(*first) {
                collect(child, rest, out);
            }
        }
        (Value::Dict(_, d), None) => d.values().for_each(|c| collect(c, path, out)),
        (Value::Array(_, items), _) => items.iter().for_each(|c| collect(c, path, out)),
        // A string where a table was expected: it is where the secret was meant to be.
        (Value::String(_, s), _) => out.push(s.clone()),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretKeyConfig;

    const SENTINEL: &str = "SENTINEL-x9Pq";

    fn with_a_secret_everywhere() -> Config {
        let mut cfg = Config::default();
        cfg.amqp.url = format!("amqp://sync:{SENTINEL}@mq:5672/%2f");
        cfg.redis.url = format!("redis://:{SENTINEL}@redis:6379/0");
        cfg.graph.base_url = format!("https://u:{SENTINEL}@graph.example/v1.0");
        cfg.graph.login_url = format!("https://u:{SENTINEL}@login.example");
        cfg.admin.public_url = format!("https://u:{SENTINEL}@admin.example");
        cfg.admin.tokens = vec![format!("{SENTINEL}-a"), format!("{SENTINEL}-b")];
        cfg.secrets.keys = vec![SecretKeyConfig {
            id: "k1".into(),
            key_base64: SENTINEL.into(),
        }];
        cfg.secrets.active_key = "k1".into();
        cfg
    }

    #[test]
    fn every_secret_bearing_key_is_redacted_when_the_configuration_is_printed() {
        let shown = redacted_toml(&with_a_secret_everywhere());
        assert!(!shown.contains(SENTINEL), "{shown}");
        let v: toml::Value = toml::from_str(&shown).expect("the output is TOML");
        assert_eq!(
            v["amqp"]["url"].as_str(),
            Some("amqp://sync:***@mq:5672/%2f")
        );
        assert_eq!(v["admin"]["tokens"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["secrets"]["keys"][0]["id"].as_str(), Some("k1"));
    }

    /// A key added later whose name says it may hold a secret must be listed in `SECRET_KEYS`
    /// (or here, if it holds none).
    #[test]
    fn every_key_named_like_a_secret_is_treated_as_one() {
        const NOT_SECRET: &[&str] = &["secrets.active_key", "secrets.keys.id", "redis.key_prefix"];
        fn walk(v: &toml::Value, path: &mut Vec<String>, found: &mut Vec<String>) {
            match v {
                toml::Value::Table(t) => {
                    for (k, c) in t {
                        path.push(k.clone());
                        walk(c, path, found);
                        path.pop();
                    }
                }
                toml::Value::Array(items) => items.iter().for_each(|c| walk(c, path, found)),
                toml::Value::String(_) => found.push(path.join(".")),
                _ => {}
            }
        }
        let mut strings = Vec::new();
        let all = toml::Value::try_from(with_a_secret_everywhere()).unwrap();
        walk(&all, &mut Vec::new(), &mut strings);
        for key in strings {
            let named_like_a_secret = ["url", "token", "secret", "password", "key"]
                .iter()
                .any(|w| key.contains(w));
            let path: Vec<String> = key.split('.').map(String::from).collect();
            if named_like_a_secret && !NOT_SECRET.contains(&key.as_str()) {
                assert!(bears_secret(&path), "{key} is not in SECRET_KEYS");
            }
        }
    }

    #[test]
    fn a_path_bears_a_secret_when_it_is_holds_or_lies_within_one() {
        let p = |s: &str| -> Vec<String> { s.split('.').map(String::from).collect() };
        assert!(bears_secret(&p("admin.tokens")));
        assert!(bears_secret(&p("admin.tokens.1")));
        assert!(bears_secret(&p("secrets.keys")));
        assert!(bears_secret(&p("secrets.keys.0.key_base64")));
        assert!(bears_secret(&p("secrets")));
        assert!(bears_secret(&[]));
        assert!(!bears_secret(&p("secrets.keys.0.id")));
        assert!(!bears_secret(&p("secrets.active_key")));
        assert!(!bears_secret(&p("window.seconds")));
    }
}
