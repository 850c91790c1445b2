//! Reading a message body as JSON, refusing objects that name a member twice.
//!
//! `serde_json::Value` (like most JSON parsers) keeps the last of two members with one name, so
//! `"revision":1,"revision":7` would silently be revision 7 here and revision 1 for a publisher
//! whose parser keeps the first. RFC 8259 §4 leaves such a message's meaning to each parser; the
//! contract refuses it instead. This is `serde_json`'s own parser (same syntax errors, same
//! recursion limit of 128 levels) with a visitor that checks each object's names as it reads them.

use std::cell::RefCell;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not one JSON value.
#[derive(Debug)]
pub(super) enum ParseError {
    /// Not JSON (or trailing data, or nested deeper than 128 levels).
    Syntax(serde_json::Error),
    /// An object names a member twice: `path` names the member as the decoder names fields
    /// (`schedule.title`, `extra[2].a`).
    Duplicate { path: String },
}

/// Parses `text` as exactly one JSON value whose objects have unique member names.
pub(super) fn parse(text: &str) -> Result<Value, ParseError> {
    let trail = Trail::default();
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Unique { trail: &trail }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
    match (value, trail.into_path()) {
        (Ok(v), _) => Ok(v),
        (Err(_), Some(path)) => Err(ParseError::Duplicate { path }),
        (Err(e), None) => Err(ParseError::Syntax(e)),
    }
}

/// Where the duplicate is: filled only on the error path, innermost segment first, as the error
/// travels out of the nested objects and arrays.
#[derive(Default)]
struct Trail(RefCell<Option<Vec<Segment>>>);

enum Segment {
    Key(String),
    Index(usize),
}

impl Trail {
    fn found(&self, key: String) {
        *self.0.borrow_mut() = Some(vec![Segment::Key(key)]);
    }

    /// Adds the enclosing member or element, if a duplicate is being reported.
    fn enclosing(&self, segment: impl FnOnce() -> Segment) {
        if let Some(path) = self.0.borrow_mut().as_mut() {
            path.push(segment());
        }
    }

    fn into_path(self) -> Option<String> {
        let segments = self.0.into_inner()?;
        let mut out = String::new();
        for s in segments.iter().rev() {
            match s {
                Segment::Key(k) if out.is_empty() => out.push_str(k),
                Segment::Key(k) => {
                    out.push('.');
                    out.push_str(k);
                }
                Segment::Index(i) => out.push_str(&format!("[{i}]")),
            }
        }
        Some(out)
    }
}

#[derive(Clone, Copy)]
struct Unique<'a> {
    trail: &'a Trail,
}

impl<'de> DeserializeSeed<'de> for Unique<'_> {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // JSON has no NaN or infinity; serde_json never hands one over.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        loop {
            match seq.next_element_seed(self) {
                Ok(Some(v)) => out.push(v),
                Ok(None) => return Ok(Value::Array(out)),
                Err(e) => {
                    let i = out.len();
                    self.trail.enclosing(|| Segment::Index(i));
                    return Err(e);
                }
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let message = format!("duplicate member {key:?}");
                self.trail.found(key);
                return Err(de::Error::custom(message));
            }
            match map.next_value_seed(self) {
                Ok(v) => {
                    out.insert(key, v);
                }
                Err(e) => {
                    self.trail.enclosing(|| Segment::Key(key));
                    return Err(e);
                }
            }
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duplicate(text: &str) -> Option<String> {
        match parse(text) {
            Err(ParseError::Duplicate { path }) => Some(path),
            _ => None,
        }
    }

    #[test]
    fn a_duplicate_name_is_found_at_any_depth_and_named_by_its_path() {
        assert_eq!(
            duplicate(r#"{"revision":1,"revision":7}"#).unwrap(),
            "revision"
        );
        assert_eq!(
            duplicate(r#"{"a":1,"schedule":{"title":"x","memo":"","title":"y"}}"#).unwrap(),
            "schedule.title"
        );
        assert_eq!(
            duplicate(r#"{"extra":[{},{"b":[0,{"c":1,"c":1}]}]}"#).unwrap(),
            "extra[1].b[1].c"
        );
    }

    #[test]
    fn the_same_name_in_different_objects_is_not_a_duplicate() {
        let v = parse(r#"{"name":1,"place":{"name":2},"list":[{"name":3},{"name":4}]}"#).unwrap();
        assert_eq!(v["list"][1]["name"], 4);
    }

    #[test]
    fn the_values_read_are_the_ones_serde_json_reads() {
        let text = r#"{"i":-3,"u":18446744073709551615,"f":1.0,"e":1e300,"s":"\u00e9\ud834\udd1e","n":null,"b":[true,false],"o":{}}"#;
        assert_eq!(
            parse(text).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn syntax_errors_and_excessive_nesting_are_syntax_errors() {
        for text in ["{", "[1,]", "{} {}", "\"\\ud800\"", &"[".repeat(200)] {
            assert!(
                matches!(parse(text), Err(ParseError::Syntax(_))),
                "{text:.20}"
            );
        }
    }
}
