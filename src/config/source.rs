//! Loading the layers (the defaults, one TOML file or text, the `OUTLOOK_SYNC__*` variables) and
//! placing each error: the file and line, or the environment variable, where the failing key was
//! set. An error never shows a secret: values of secret-bearing keys are described, not quoted,
//! and every message is scrubbed of the strings given for those keys.

use std::path::Path;

use figment::error::{Actual, Kind};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::{Figment, Provider};
use toml_edit::{ImDocument, Item, Table, TableLike, Value};

use super::{Config, ConfigError, Place, redact};

const ENV_PREFIX: &str = "OUTLOOK_SYNC__";

fn env_provider() -> Env {
    Env::prefixed(ENV_PREFIX).split("__")
}

/// The TOML layer: its text, parsed with the positions of its keys.
pub(super) struct TomlLayer {
    /// The file's path, or what stands for it.
    label: String,
    text: String,
    doc: ImDocument<String>,
}

impl TomlLayer {
    pub(super) fn read(path: &Path) -> Result<TomlLayer, ConfigError> {
        let label = path.display().to_string();
        let file_error = |message: String| ConfigError::File {
            path: label.clone(),
            line: None,
            column: None,
            message,
        };
        if !path.exists() {
            return Err(file_error(
                "does not exist (copy config/default.toml and edit it)".into(),
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| file_error(format!("cannot be read as UTF-8 text: {e}")))?;
        TomlLayer::parse(label, text)
    }

    /// Parses `text`; a syntax error names the line and column and the parser's words, never the
    /// line itself (it may hold a secret).
    pub(super) fn parse(label: String, text: String) -> Result<TomlLayer, ConfigError> {
        match ImDocument::parse(text.clone()) {
            Ok(doc) => Ok(TomlLayer { label, text, doc }),
            Err(e) => {
                let at = e.span().map(|s| s.start).unwrap_or(0);
                let (line, column) = line_and_column(&text, at);
                let words: Vec<&str> = e
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect();
                Err(ConfigError::File {
                    path: label,
                    line: Some(line),
                    column: Some(column),
                    message: format!("not valid TOML: {}", words.join("; ")),
                })
            }
        }
    }

    /// The line where `path` (keys and list indices) is set, or the deepest part of it that is.
    fn line_of(&self, path: &[String]) -> Option<usize> {
        let mut node = Node::Table(self.doc.as_table());
        let mut at = None;
        for part in path {
            let Some((child, span)) = node.child(part) else {
                break;
            };
            at = span.map(|s| s.start).or(at);
            node = child;
        }
        at.map(|offset| line_and_column(&self.text, offset).0)
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, column)
}

/// A place in a parsed TOML document.
#[derive(Clone, Copy)]
enum Node<'a> {
    Item(&'a Item),
    Value(&'a Value),
    Table(&'a Table),
}

type Span = Option<std::ops::Range<usize>>;

impl<'a> Node<'a> {
    /// The child named `part` (a key, or a list index) and where it is written.
    fn child(self, part: &str) -> Option<(Node<'a>, Span)> {
        fn keyed<'a>(t: &'a dyn TableLike, part: &str) -> Option<(Node<'a>, Span)> {
            let (key, item) = t.get_key_value(part)?;
            Some((Node::Item(item), key.span().or_else(|| item.span())))
        }
        let index = || part.parse::<usize>().ok();
        match self {
            Node::Table(t) => keyed(t, part),
            Node::Item(Item::ArrayOfTables(a)) => {
                let t = a.get(index()?)?;
                Some((Node::Table(t), t.span()))
            }
            Node::Item(Item::Value(v)) => Node::Value(v).child(part),
            Node::Item(item) => keyed(item.as_table_like()?, part),
            Node::Value(Value::InlineTable(t)) => keyed(t, part),
            Node::Value(Value::Array(a)) => {
                let v = a.get(index()?)?;
                Some((Node::Value(v), v.span()))
            }
            Node::Value(_) => None,
        }
    }
}

/// Merges the layers, deserializes, validates; every error placed and scrubbed.
pub(super) fn load(toml: Option<TomlLayer>, env: bool) -> Result<Config, ConfigError> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    if let Some(t) = &toml {
        fig = fig.merge(Toml::string(&t.text));
    }
    if env {
        fig = fig.merge(env_provider());
    }
    let layers = Layers {
        fig: &fig,
        toml: toml.as_ref(),
    };
    let cfg: Config = fig.extract().map_err(|e| layers.deserialize_error(e))?;
    cfg.validate().map_err(|e| layers.place(e))?;
    Ok(cfg)
}

struct Layers<'a> {
    fig: &'a Figment,
    toml: Option<&'a TomlLayer>,
}

impl Layers<'_> {
    /// A value of the wrong type, an unknown key, …: the key, the problem, where it was set.
    fn deserialize_error(&self, e: figment::Error) -> ConfigError {
        let e = e
            .into_iter()
            .next()
            .expect("figment errors are never empty");
        let key = key_name(&e.path);
        let message = describe(&e.kind, redact::bears_secret(&e.path), &key);
        let place = self.place_of(e.metadata.as_ref(), &e.path);
        self.scrubbed(ConfigError::Key {
            key,
            message,
            place,
        })
    }

    /// A validation error: where its key was set.
    fn place(&self, e: ConfigError) -> ConfigError {
        let e = match e {
            ConfigError::Key {
                key,
                message,
                place: Place::Unknown,
            } => {
                let path = key_path(&key);
                let names: Vec<&str> = path
                    .iter()
                    .map(String::as_str)
                    .filter(|p| p.parse::<usize>().is_err())
                    .collect();
                // The provider that set the key, or else the nearest table holding it.
                let metadata = (1..=names.len())
                    .rev()
                    .find_map(|n| self.fig.find_metadata(&names[..n].join(".")));
                let place = self.place_of(metadata, &path);
                ConfigError::Key {
                    key,
                    message,
                    place,
                }
            }
            other => other,
        };
        self.scrubbed(e)
    }

    fn place_of(&self, metadata: Option<&figment::Metadata>, path: &[String]) -> Place {
        let Some(md) = metadata else {
            return Place::Unknown;
        };
        if md.name == env_provider().metadata().name {
            return Place::Env { var: env_var(path) };
        }
        match self.toml {
            Some(t) if md.name == Toml::string("").metadata().name => Place::File {
                path: t.label.clone(),
                line: t.line_of(path),
            },
            _ => Place::Unknown,
        }
    }

    /// The error with every string given for a secret-bearing key replaced, wherever a library's
    /// message might have quoted it.
    fn scrubbed(&self, e: ConfigError) -> ConfigError {
        let mut secrets = redact::secret_strings(self.fig);
        secrets.retain(|s| s.len() >= 4);
        // Longest first, so a secret that contains another is hidden whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        let scrub = |mut m: String| {
            for s in &secrets {
                m = m.replace(s.as_str(), "***");
            }
            m
        };
        match e {
            ConfigError::Key {
                key,
                message,
                place,
            } => ConfigError::Key {
                key,
                message: scrub(message),
                place,
            },
            ConfigError::File {
                path,
                line,
                column,
                message,
            } => ConfigError::File {
                path,
                line,
                column,
                message: scrub(message),
            },
        }
    }
}

/// The variable that set `path` (or the table holding it), as the operator wrote it.
fn env_var(path: &[String]) -> String {
    let set: Vec<Vec<String>> = env_provider()
        .iter()
        .map(|(k, _)| k.as_str().split('.').map(str::to_ascii_lowercase).collect())
        .collect();
    let lower: Vec<String> = path.iter().map(|p| p.to_ascii_lowercase()).collect();
    let parts: Vec<String> = set
        .into_iter()
        .filter(|k| lower.starts_with(k))
        .max_by_key(Vec::len)
        .unwrap_or_else(|| {
            lower
                .into_iter()
                .filter(|p| p.parse::<usize>().is_err())
                .collect()
        });
    format!("{ENV_PREFIX}{}", parts.join("__").to_ascii_uppercase())
}

/// `["secrets", "keys", "0", "key_base64"]` → `secrets.keys[0].key_base64`.
fn key_name(path: &[String]) -> String {
    if path.is_empty() {
        return "(top level)".into();
    }
    let mut key = String::new();
    for part in path {
        if part.parse::<usize>().is_ok() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

/// `secrets.keys[0].key_base64` → `["secrets", "keys", "0", "key_base64"]`.
fn key_path(key: &str) -> Vec<String> {
    key.split('.')
        .flat_map(|part| {
            let mut pieces = part.split('[');
            let name = pieces.next().unwrap_or_default().to_string();
            std::iter::once(name).chain(pieces.map(|i| i.trim_end_matches(']').to_string()))
        })
        .filter(|p| !p.is_empty())
        .collect()
}

/// What figment found wrong, in words; for a secret-bearing key the value is described (`a
/// string`), never quoted.
fn describe(kind: &Kind, secret: bool, key: &str) -> String {
    let found = |a: &Actual| {
        if secret {
            format!("{} (not shown: this key holds a secret)", type_of(a))
        } else {
            a.to_string()
        }
    };
    let list = |names: &[&str]| {
        names
            .iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match kind {
        Kind::InvalidType(a, expected) => format!(
            "invalid type: expected {expected}, found {}{}",
            found(a),
            form_hint(key)
        ),
        Kind::InvalidValue(a, expected) => {
            format!("invalid value: expected {expected}, found {}", found(a))
        }
        Kind::InvalidLength(n, expected) => format!("has {n} elements, expected {expected}"),
        Kind::UnknownVariant(v, expected) if !secret => {
            format!("{v:?} is not one of {}", list(expected))
        }
        Kind::UnknownVariant(_, expected) => format!("is not one of {}", list(expected)),
        Kind::UnknownField(_, expected) => format!(
            "is not a known key (the keys here: {}; every key: `outlook-sync config-defaults`)",
            list(expected)
        ),
        Kind::MissingField(field) => format!("lacks `{field}`"),
        Kind::DuplicateField(field) => format!("sets `{field}` twice"),
        Kind::ISizeOutOfRange(n) => format!("{n} is out of range"),
        Kind::USizeOutOfRange(n) => format!("{n} is out of range"),
        Kind::Unsupported(a) => format!("{} is not supported here", found(a)),
        Kind::UnsupportedKey(a, expected) => {
            format!(
                "a key that is {} cannot be used, expected {expected}",
                found(a)
            )
        }
        Kind::Message(_) if secret => {
            "cannot be read (the details are not shown: this key holds a secret)".into()
        }
        Kind::Message(m) => m.clone(),
    }
}

/// The kind of a value, without the value.
fn type_of(a: &Actual) -> &'static str {
    match a {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a number",
        Actual::Char(_) => "a character",
        Actual::Str(_) => "a string",
        Actual::Bytes(_) => "bytes",
        Actual::Unit => "nothing",
        Actual::Seq => "a list",
        Actual::Map => "a table",
        _ => "a value of another kind",
    }
}

/// How the keys whose form surprises people are written.
fn form_hint(key: &str) -> &'static str {
    match key {
        "admin.tokens" => {
            "; write a list: tokens = [\"<token>\"] in the file, or \
             OUTLOOK_SYNC__ADMIN__TOKENS='[\"<token>\"]'"
        }
        "secrets.keys" => {
            "; write a list of tables: OUTLOOK_SYNC__SECRETS__KEYS='[{id=\"2026-01\",\
             key_base64=\"<openssl rand -base64 32>\"}]'"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(text: &str, key: &str) -> Option<usize> {
        TomlLayer::parse("t".into(), text.into())
            .unwrap_or_else(|e| panic!("{e}"))
            .line_of(&key_path(key))
    }

    #[test]
    fn a_key_is_placed_on_the_line_that_sets_it_in_tables_lists_and_inline_tables() {
        let text = "# c\n[secrets]\nactive_key = \"b\"\nkeys = [\n  {id = \"a\", key_base64 = \"x\"},\n  {id = \"b\", key_base64 = \"y\"},\n]\n\n[admin]\ntokens = [\n  \"t0\",\n  \"t1\",\n]\n";
        assert_eq!(line(text, "secrets.active_key"), Some(3));
        assert_eq!(line(text, "secrets.keys[0].key_base64"), Some(5));
        assert_eq!(line(text, "secrets.keys[1].key_base64"), Some(6));
        assert_eq!(line(text, "admin.tokens[1]"), Some(12));
        // A key the file does not set is placed on the nearest table it does.
        assert_eq!(line(text, "admin.listen"), Some(9));
        assert_eq!(line(text, "window.seconds"), None);
        let dotted =
            "admin.tokens = [\"t0\"]\n[[secrets.keys]]\nid = \"a\"\n[[secrets.keys]]\nid = \"b\"\n";
        assert_eq!(line(dotted, "admin.tokens[0]"), Some(1));
        assert_eq!(line(dotted, "secrets.keys[1].id"), Some(5));
    }

    #[test]
    fn a_key_name_and_its_path_convert_both_ways() {
        for key in [
            "window.seconds",
            "secrets.keys[1].key_base64",
            "admin.tokens[0]",
        ] {
            assert_eq!(key_name(&key_path(key)), key);
        }
        assert_eq!(key_name(&[]), "(top level)");
    }

    #[test]
    fn a_syntax_error_names_the_line_and_column_but_never_shows_the_line() {
        let err = TomlLayer::parse(
            "f.toml".into(),
            "[admin]\ntokens = [\"SENTINEL-x9Pq\n".into(),
        )
        .err()
        .expect("not TOML")
        .to_string();
        assert!(err.starts_with("f.toml, line 2, column "), "{err}");
        assert!(!err.contains("SENTINEL"), "{err}");
    }
}
