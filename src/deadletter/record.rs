//! One dead letter as an operator sees it: parsed from the message's headers (ours, or the
//! broker's `x-death`) and its body, with a stable id, and the filters operators select by.

use std::collections::BTreeMap;

use jiff::Timestamp;
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::letter::{DEAD_LETTER_ID, ORIGINAL_ROUTING_KEY, REPLAY_COUNT};

/// Who dead-lettered the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// This service (ingest or flush), with the reason in `x-reason` and Graph's error.
    Service,
    /// RabbitMQ itself (over `x-delivery-limit`, rejected, expired); only `x-death` says why.
    Broker,
}

/// One entry of RabbitMQ's `x-death` header (newest first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Death {
    pub queue: String,
    /// `delivery_limit`, `rejected`, `expired` or `maxlen`.
    pub reason: String,
    pub count: u64,
    pub exchange: String,
    pub routing_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Timestamp>,
}

/// A dead letter, everything an operator needs to decide what to do with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Stable id: the `x-dead-letter-id` header (set when it was dead-lettered), or for the
    /// broker's dead letters a digest of the message and its `x-death`.
    pub id: String,
    /// 0-based position in the dead-letter queue when it was read.
    pub position: usize,
    /// The event id (the message id of the original event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub source: Source,
    /// `ingest`, `flush`, or `broker`.
    pub stage: String,
    /// A stable code: `x-reason`, or the `x-death` reason.
    pub reason: String,
    /// The same in plain words.
    pub words: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The routing key the event was first published with (a replay uses it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_failure: Option<Timestamp>,
    /// When it last failed: `x-last-failure`, or the newest `x-death` time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub death: Vec<Death>,
    /// How often it was replayed before (and dead-lettered again).
    #[serde(default)]
    pub replays: u32,
    /// Every header, as JSON (for `show` and the archive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<serde_json::Value>,
    /// The original event: its JSON, or the body as text if it is not JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<serde_json::Value>,
}

impl Record {
    /// Parses a dead letter read from the queue. Never fails: whatever is missing stays `None`.
    pub fn parse(routing_key: &str, props: &BasicProperties, body: &[u8]) -> Record {
        let empty = FieldTable::default();
        let h = props.headers().as_ref().unwrap_or(&empty);
        let death = deaths(h);
        let event: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let from_body = |k: &str| {
            event
                .as_ref()
                .and_then(|e| e.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        let ours = h.contains_key("x-reason");
        let (source, stage, reason) = if ours {
            (
                Source::Service,
                hstr(h, "x-stage").unwrap_or_else(|| "unknown".into()),
                hstr(h, "x-reason").unwrap_or_default(),
            )
        } else {
            (
                Source::Broker,
                "broker".to_string(),
                death
                    .first()
                    .map(|d| d.reason.clone())
                    .unwrap_or_else(|| "unknown".into()),
            )
        };
        let message_id = props
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .or_else(|| from_body("event_id"));
        let routing_key = hstr(h, ORIGINAL_ROUTING_KEY)
            .or_else(|| death.last().and_then(|d| d.routing_keys.first().cloned()))
            .or_else(|| {
                routing_key
                    .starts_with("schedule.")
                    .then(|| routing_key.to_string())
            })
            .or_else(|| {
                from_body("event_type").filter(|t| {
                    matches!(
                        t.as_str(),
                        "schedule.created" | "schedule.updated" | "schedule.deleted"
                    )
                })
            });
        let id = hstr(h, DEAD_LETTER_ID).unwrap_or_else(|| digest_id(props, body, h));
        let last_failure =
            htime(h, "x-last-failure").or_else(|| death.first().and_then(|d| d.time));
        Record {
            id,
            position: 0,
            message_id,
            source,
            stage,
            words: crate::ledger::words(&reason).to_string(),
            reason,
            error: hstr(h, "x-error"),
            routing_key,
            company: hstr(h, "x-company").or_else(|| from_body("company_id")),
            schedule: hstr(h, "x-schedule").or_else(|| from_body("schedule_id")),
            revision: hint(h, "x-revision").map(|v| v.max(0) as u64).or_else(|| {
                event
                    .as_ref()
                    .and_then(|e| e.get("revision"))
                    .and_then(|v| v.as_u64())
            }),
            mailbox: hstr(h, "x-mailbox"),
            graph_status: hint(h, "x-graph-status").and_then(|v| u16::try_from(v).ok()),
            graph_code: hstr(h, "x-graph-code"),
            graph_message: hstr(h, "x-graph-message"),
            graph_request_id: hstr(h, "x-graph-request-id"),
            attempts: hint(h, "x-attempts")
                .and_then(|v| u32::try_from(v).ok())
                .or_else(|| death.first().map(|d| d.count as u32)),
            first_failure: htime(h, "x-first-failure")
                .or_else(|| death.last().and_then(|d| d.time)),
            last_failure,
            death,
            replays: hint(h, REPLAY_COUNT).map_or(0, |v| v.max(0) as u32),
            headers: Some(table_json(h)),
            event: Some(event.unwrap_or_else(|| {
                serde_json::Value::String(String::from_utf8_lossy(body).into_owned())
            })),
        }
    }

    /// The record without its heavy parts (headers and event), as listings show it.
    pub fn brief(mut self) -> Record {
        self.headers = None;
        self.event = None;
        self
    }

    /// Whether a replay can work: it has a routing key, and it did not break the contract (an
    /// invalid event would only come straight back).
    pub fn replayable(&self, include_invalid: bool) -> Result<(), &'static str> {
        if self.routing_key.is_none() {
            return Err("no routing key to replay it with");
        }
        if self.stage == "ingest" && !include_invalid {
            return Err("it broke the event contract and would be dead-lettered again");
        }
        Ok(())
    }
}

/// Which dead letters an operation applies to. Every given field must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Filter {
    /// Dead-letter ids (or a unique prefix of at least 6 characters) or event ids.
    pub ids: Vec<String>,
    pub company: Option<String>,
    pub schedule: Option<String>,
    /// Case-insensitive.
    pub mailbox: Option<String>,
    /// The reason code (`no_mailbox`, `retries_exhausted`, `delivery_limit`, …).
    pub reason: Option<String>,
    /// `ingest`, `flush` or `broker`.
    pub stage: Option<String>,
    pub graph_status: Option<u16>,
    pub graph_code: Option<String>,
    /// Last failure at or after.
    pub since: Option<Timestamp>,
    /// Last failure before.
    pub until: Option<Timestamp>,
}

/// The shortest id prefix accepted.
pub const MIN_ID_PREFIX: usize = 6;

impl Filter {
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    pub fn matches(&self, r: &Record) -> bool {
        let eq = |want: &Option<String>, got: &Option<String>| {
            want.as_ref()
                .is_none_or(|w| got.as_ref().is_some_and(|g| g == w))
        };
        (self.ids.is_empty() || self.ids.iter().any(|i| id_matches(i, r)))
            && eq(&self.company, &r.company)
            && eq(&self.schedule, &r.schedule)
            && self.mailbox.as_ref().is_none_or(|w| {
                r.mailbox
                    .as_ref()
                    .is_some_and(|g| g.eq_ignore_ascii_case(w))
            })
            && self.reason.as_ref().is_none_or(|w| *w == r.reason)
            && self.stage.as_ref().is_none_or(|w| *w == r.stage)
            && self.graph_status.is_none_or(|w| r.graph_status == Some(w))
            && eq(&self.graph_code, &r.graph_code)
            && self
                .since
                .is_none_or(|t| r.last_failure.is_some_and(|l| l >= t))
            && self
                .until
                .is_none_or(|t| r.last_failure.is_some_and(|l| l < t))
    }
}

/// An id given by an operator matches a dead letter by its id (or an unambiguous prefix of it)
/// or by its event id.
pub fn id_matches(given: &str, r: &Record) -> bool {
    let given = given.trim();
    (given.len() >= MIN_ID_PREFIX && r.id.starts_with(given))
        || r.message_id.as_deref() == Some(given)
}

/// Parses a time given by an operator: RFC 3339 (`2026-11-30T09:00:00Z`) or an age before
/// `now` (`90s`, `30m`, `2h`, `7d`).
pub fn parse_time(s: &str, now: Timestamp) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("{s:?} is neither RFC 3339 nor an age such as 30m, 2h or 7d"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => {
            return Err(format!(
                "{s:?} is neither RFC 3339 nor an age such as 30m, 2h or 7d"
            ));
        }
    };
    now.checked_sub(jiff::SignedDuration::from_secs(secs))
        .map_err(|e| format!("{s:?}: {e}"))
}

/// A header as a string (long or short string, or a number).
pub(crate) fn hstr(h: &FieldTable, k: &str) -> Option<String> {
    match h.inner().get(k)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        v => int(v).map(|i| i.to_string()),
    }
}

/// A header as an integer (any integer type, or a numeric string).
pub(crate) fn hint(h: &FieldTable, k: &str) -> Option<i64> {
    let v = h.inner().get(k)?;
    int(v).or_else(|| match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    })
}

fn htime(h: &FieldTable, k: &str) -> Option<Timestamp> {
    match h.inner().get(k)? {
        AMQPValue::Timestamp(t) => Timestamp::from_second(*t as i64).ok(),
        _ => hstr(h, k)?.parse().ok(),
    }
}

fn int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(i) => i64::from(*i),
        AMQPValue::ShortShortUInt(i) => i64::from(*i),
        AMQPValue::ShortInt(i) => i64::from(*i),
        AMQPValue::ShortUInt(i) => i64::from(*i),
        AMQPValue::LongInt(i) => i64::from(*i),
        AMQPValue::LongUInt(i) => i64::from(*i),
        AMQPValue::LongLongInt(i) => *i,
        AMQPValue::Timestamp(t) => *t as i64,
        _ => return None,
    })
}

fn deaths(h: &FieldTable) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(a)) = h.inner().get("x-death") else {
        return Vec::new();
    };
    a.as_slice()
        .iter()
        .filter_map(|v| match v {
            AMQPValue::FieldTable(t) => Some(Death {
                queue: hstr(t, "queue").unwrap_or_default(),
                reason: hstr(t, "reason").unwrap_or_default(),
                count: hint(t, "count").map_or(1, |c| c.max(0) as u64),
                exchange: hstr(t, "exchange").unwrap_or_default(),
                routing_keys: match t.inner().get("routing-keys") {
                    Some(AMQPValue::FieldArray(keys)) => keys
                        .as_slice()
                        .iter()
                        .filter_map(|k| match k {
                            AMQPValue::LongString(s) => {
                                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                            }
                            AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                },
                time: htime(t, "time"),
            }),
            _ => None,
        })
        .collect()
}

/// A broker dead letter has no id of ours: derive one from what identifies it (the message and
/// its `x-death`), so every read of it (and a copy of it) gets the same id.
fn digest_id(props: &BasicProperties, body: &[u8], h: &FieldTable) -> String {
    let mut d = Sha256::new();
    d.update(
        props
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
            .unwrap_or("")
            .as_bytes(),
    );
    d.update([0]);
    d.update(body);
    d.update([0]);
    if let Some(x) = h.inner().get("x-death") {
        d.update(value_json(x).to_string().as_bytes());
    }
    hex::encode(d.finalize())[..32].to_string()
}

/// Every header as JSON (tables become objects, in key order).
pub fn table_json(t: &FieldTable) -> serde_json::Value {
    serde_json::Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_json(v)))
            .collect(),
    )
}

fn value_json(v: &AMQPValue) -> serde_json::Value {
    use serde_json::Value;
    match v {
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::Float(f) => serde_json::json!(f),
        AMQPValue::Double(f) => serde_json::json!(f),
        AMQPValue::DecimalValue(d) => {
            serde_json::json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
        }
        AMQPValue::ShortString(s) => Value::String(s.as_str().to_string()),
        AMQPValue::LongString(s) => {
            Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::FieldArray(a) => Value::Array(a.as_slice().iter().map(value_json).collect()),
        AMQPValue::FieldTable(t) => table_json(t),
        AMQPValue::ByteArray(b) => {
            use base64::Engine;
            Value::String(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        AMQPValue::Void => Value::Null,
        other => int(other).map_or(Value::Null, |i| serde_json::json!(i)),
    }
}

/// Headers as an owned map (FieldTable cannot remove keys).
pub(crate) fn header_map(props: &BasicProperties) -> BTreeMap<ShortString, AMQPValue> {
    props
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::long_str;

    fn props(headers: FieldTable) -> BasicProperties {
        BasicProperties::default()
            .with_message_id("ev-1".into())
            .with_headers(headers)
    }

    #[test]
    fn a_broker_dead_letter_is_described_by_its_x_death() {
        let mut death = FieldTable::default();
        death.insert("queue".into(), long_str("work"));
        death.insert("reason".into(), long_str("delivery_limit"));
        death.insert("count".into(), AMQPValue::LongLongInt(1));
        death.insert("exchange".into(), long_str("cyzen.schedules"));
        death.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(vec![long_str("schedule.updated")].into()),
        );
        death.insert("time".into(), AMQPValue::Timestamp(1_780_000_000));
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
        );
        let body = br#"{"company_id":"acme","schedule_id":"s-1","revision":4}"#;
        let r = Record::parse("schedule.updated", &props(h.clone()), body);
        assert_eq!(r.source, Source::Broker);
        assert_eq!(r.stage, "broker");
        assert_eq!(r.reason, "delivery_limit");
        assert_eq!(r.routing_key.as_deref(), Some("schedule.updated"));
        assert_eq!(
            (r.company.as_deref(), r.schedule.as_deref(), r.revision),
            (Some("acme"), Some("s-1"), Some(4))
        );
        assert_eq!(r.last_failure, Timestamp::from_second(1_780_000_000).ok());
        // The same message read again (or its copy) has the same id.
        let again = Record::parse("outlook-sync.dead", &props(h), body);
        assert_eq!(r.id, again.id);
    }

    #[test]
    fn filters_match_every_given_field_and_ids_by_prefix_or_event_id() {
        let mut h = FieldTable::default();
        h.insert(DEAD_LETTER_ID.into(), long_str("0123456789abcdef"));
        h.insert("x-stage".into(), long_str("flush"));
        h.insert("x-reason".into(), long_str("no_mailbox"));
        h.insert("x-mailbox".into(), long_str("Sachiko@acme.example"));
        h.insert("x-graph-status".into(), AMQPValue::LongInt(404));
        h.insert("x-last-failure".into(), long_str("2026-11-30T01:00:00Z"));
        let r = Record::parse("schedule.created", &props(h), b"{}");
        let f = |f: Filter| f.matches(&r);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            mailbox: Some("sachiko@ACME.example".into()),
            reason: Some("no_mailbox".into()),
            graph_status: Some(404),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            graph_status: Some(403),
            ..Filter::default()
        }));
        assert!(f(Filter {
            ids: vec!["012345".into()],
            ..Filter::default()
        }));
        assert!(!f(Filter {
            ids: vec!["01234".into()],
            ..Filter::default()
        }));
        assert!(f(Filter {
            ids: vec!["ev-1".into()],
            ..Filter::default()
        }));
        let t = |s: &str| s.parse::<Timestamp>().unwrap();
        assert!(f(Filter {
            since: Some(t("2026-11-30T00:00:00Z")),
            until: Some(t("2026-11-30T02:00:00Z")),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            since: Some(t("2026-11-30T01:00:01Z")),
            ..Filter::default()
        }));
    }

    #[test]
    fn times_are_rfc3339_or_an_age() {
        let now: Timestamp = "2026-11-30T12:00:00Z".parse().unwrap();
        assert_eq!(
            parse_time("2h", now).unwrap(),
            "2026-11-30T10:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert_eq!(
            parse_time("7d", now).unwrap(),
            "2026-11-23T12:00:00Z".parse::<Timestamp>().unwrap()
        );
        assert!(parse_time("yesterday", now).is_err());
        assert_eq!(
            parse_time("2026-11-30T09:00:00+09:00", now).unwrap(),
            "2026-11-30T00:00:00Z".parse::<Timestamp>().unwrap()
        );
    }
}
