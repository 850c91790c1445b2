//! Decoding and validation of v1 events. See the module docs of [`super`].

use std::fmt;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::{Map, Value};

use super::json::{self, ParseError};
use super::text;
use super::{
    EventType, Place, SCHEMA_VERSION, Schedule, ScheduleEvent, Timing, Visibility, WireEvent,
    WireSchedule,
};

/// The largest message accepted, in bytes (256 KiB). A schedule's longest fields (memo 20,000
/// characters of up to 4 bytes each, 500 participants) fit with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
const MAX_TIMED_DAYS: i64 = 31;
const MAX_ALL_DAY_DAYS: i32 = 366;
const MAX_REVISION: i128 = 9_007_199_254_740_991;

/// The years every date and time of a message must be written in, both included. Outlook on the
/// desktop shows 1601-04-01 to 4500-08-31 and treats dates outside 1601–4500 as invalid
/// (MS-OXCICAL §2.2.31); Graph documents no range at all; Pocket Outlook's calendar ran from
/// 1899-12-30 to 2999-12-31. 1900–2999 lies inside all of them with more than a day to spare on
/// each side (a time zone moves a date by at most one), and holds every real schedule.
pub const FIRST_YEAR: u16 = 1900;
pub const LAST_YEAR: u16 = 2999;

/// Why a message was rejected, as a stable code (it travels on dead letters as `x-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    TooLarge,
    NotUtf8,
    MalformedJson,
    DuplicateKey,
    UnknownVersion,
    MissingField,
    WrongType,
    TooLong,
    InvalidValue,
    OutOfRange,
    EndBeforeStart,
    AllDayWithTimes,
    TimedWithDates,
    UnknownZone,
    SpanTooLong,
    RoutingKeyMismatch,
}

impl Reason {
    /// Every reason, in the order schemas/README.md lists them.
    pub const ALL: [Reason; 16] = [
        Reason::TooLarge,
        Reason::NotUtf8,
        Reason::MalformedJson,
        Reason::DuplicateKey,
        Reason::UnknownVersion,
        Reason::MissingField,
        Reason::WrongType,
        Reason::TooLong,
        Reason::InvalidValue,
        Reason::OutOfRange,
        Reason::EndBeforeStart,
        Reason::AllDayWithTimes,
        Reason::TimedWithDates,
        Reason::UnknownZone,
        Reason::SpanTooLong,
        Reason::RoutingKeyMismatch,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::NotUtf8 => "not_utf8",
            Reason::MalformedJson => "malformed_json",
            Reason::DuplicateKey => "duplicate_key",
            Reason::UnknownVersion => "unknown_schema_version",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::TooLong => "too_long",
            Reason::InvalidValue => "invalid_value",
            Reason::OutOfRange => "out_of_range",
            Reason::EndBeforeStart => "end_before_start",
            Reason::AllDayWithTimes => "all_day_with_times",
            Reason::TimedWithDates => "timed_with_dates",
            Reason::UnknownZone => "unknown_time_zone",
            Reason::SpanTooLong => "span_too_long",
            Reason::RoutingKeyMismatch => "routing_key_mismatch",
        }
    }

    /// The reason with this code, if there is one.
    pub fn from_code(code: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.code() == code)
    }

    /// True for the rules the JSON Schema cannot express (see `x-semantic-rules`): a message
    /// refused for one of these may pass a schema validator. Duplicate member names are among
    /// them: a parsed document keeps one value per name, so no validator ever sees the other.
    pub fn is_semantic(self) -> bool {
        matches!(
            self,
            Reason::TooLarge
                | Reason::DuplicateKey
                | Reason::EndBeforeStart
                | Reason::UnknownZone
                | Reason::SpanTooLong
                | Reason::RoutingKeyMismatch
        )
    }
}

/// A rejected message: which field, what is wrong, and what the publisher should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ContractError {
    pub reason: Reason,
    /// A JSON path such as `schedule.end`; `$` for the message as a whole; `routing_key` and
    /// `content_type` for the AMQP properties.
    pub field: String,
    pub problem: String,
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} [{}]",
            self.field,
            self.problem,
            self.reason.code()
        )
    }
}

fn err(reason: Reason, field: impl Into<String>, problem: impl Into<String>) -> ContractError {
    ContractError {
        reason,
        field: field.into(),
        problem: problem.into(),
    }
}

/// A value quoted in a problem: whole when short, else its first 40 characters and its length,
/// so a dead letter's `x-error` stays small whatever a publisher sent.
fn shown(v: &str) -> String {
    const KEEP: usize = 40;
    match v.char_indices().nth(KEEP) {
        None => format!("{v:?}"),
        Some((cut, _)) => format!("{:?}… ({} characters)", &v[..cut], v.chars().count()),
    }
}

/// A JSON value in a message: numbers, booleans and null as they are, anything else quoted and
/// cut as [`shown`] does.
fn shown_json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => shown(s),
        serde_json::Value::Number(_) | serde_json::Value::Bool(_) | serde_json::Value::Null => {
            let text = v.to_string();
            if text.chars().count() <= 40 {
                text
            } else {
                shown(&text)
            }
        }
        other => shown(&other.to_string()),
    }
}

/// Decodes and validates one message body: the whole v1 contract.
pub fn decode(body: &[u8]) -> Result<ScheduleEvent, ContractError> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(err(
            Reason::TooLarge,
            "$",
            format!(
                "message is {} bytes; the limit is {MAX_MESSAGE_BYTES} bytes (shorten the memo or split participants)",
                body.len()
            ),
        ));
    }
    let wire = decode_structure(body)?;
    check_semantics(wire)
}

/// Decodes a delivery: its body ([`decode`]), then its routing key, which must be the body's
/// `event_type` (a body that breaks the contract is refused for that first).
pub fn decode_delivery(body: &[u8], routing_key: &str) -> Result<ScheduleEvent, ContractError> {
    let event = decode(body)?;
    check_routing_key(event.event_type, routing_key)?;
    Ok(event)
}

/// The routing key an event of this type must be published with is its `event_type`: bindings
/// and operators filter by it, so a key that says another type (or none of the three) is refused
/// rather than taken by the body.
pub fn check_routing_key(event_type: EventType, routing_key: &str) -> Result<(), ContractError> {
    let want = event_type.routing_key();
    if routing_key == want {
        return Ok(());
    }
    Err(err(
        Reason::RoutingKeyMismatch,
        "routing_key",
        format!(
            "the message was published with routing key {} but its event_type is {want:?}; publish each event with its event_type as the routing key",
            shown(routing_key)
        ),
    ))
}

/// Phase 1: the body as JSON (UTF-8, one value, no member named twice), then what the JSON
/// Schema checks, and nothing more. Exposed for the schema-agreement test.
///
/// Each member is read for what the schema says of it, in one fixed order (the order of the
/// schema's `properties`), so a message's first problem does not depend on how its publisher
/// ordered the members: present means present (a `null` is a value of the wrong type, not an
/// absent member), an integer is any number without a fraction (`1.0` is 1), an object is an
/// object (never an array of its values).
pub fn decode_structure(body: &[u8]) -> Result<WireEvent, ContractError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        err(
            Reason::NotUtf8,
            "$",
            format!(
                "body is not UTF-8 (invalid byte at offset {}); publish UTF-8 JSON",
                e.valid_up_to()
            ),
        )
    })?;
    let value = json::parse(text).map_err(|e| match e {
        ParseError::Syntax(e) => err(
            Reason::MalformedJson,
            "$",
            format!("not valid JSON: {e}; publish one JSON object per message"),
        ),
        ParseError::Duplicate { path } => err(
            Reason::DuplicateKey,
            path,
            "this member is named twice in its object; parsers disagree on which one counts, so send it once",
        ),
    })?;
    wire_event(&value)
}

/// One JSON object of the message, with the path that names its members in errors.
struct Obj<'a> {
    path: &'static str,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn has(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    fn required(&self, key: &str, hint: &str) -> Result<&'a Value, ContractError> {
        self.get(key).ok_or_else(|| {
            err(
                Reason::MissingField,
                self.field(key),
                format!("missing; {hint}"),
            )
        })
    }

    fn string(&self, key: &str, hint: &str) -> Result<&'a str, ContractError> {
        as_str(&self.field(key), self.required(key, hint)?)
    }

    fn optional_string(&self, key: &str) -> Result<Option<&'a str>, ContractError> {
        self.get(key)
            .map(|v| as_str(&self.field(key), v))
            .transpose()
    }

    fn id(&self, key: &str) -> Result<String, ContractError> {
        let v = self.string(key, "an id is 1 to 64 of A-Z a-z 0-9 . _ : -")?;
        check_id(&self.field(key), v)?;
        Ok(v.to_string())
    }

    fn timestamp(&self, key: &str, hint: &str) -> Result<String, ContractError> {
        let v = self.string(key, hint)?;
        check_timestamp(&self.field(key), v)?;
        Ok(v.to_string())
    }

    fn date(&self, key: &str, hint: &str) -> Result<String, ContractError> {
        let v = self.string(key, hint)?;
        check_date(&self.field(key), v)?;
        Ok(v.to_string())
    }
}

/// What a value is, in words: "must be a string, not an array".
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(field: &str, want: &str, got: &Value) -> ContractError {
    err(
        Reason::WrongType,
        field,
        format!("must be {want}, not {}", kind(got)),
    )
}

fn as_str<'v>(field: &str, v: &'v Value) -> Result<&'v str, ContractError> {
    v.as_str().ok_or_else(|| wrong_type(field, "a string", v))
}

/// A JSON Schema integer: a number without a fractional part, `1.0` included. Floats beyond
/// the i128 range saturate (they are out of every range the contract allows anyway).
fn as_integer(field: &str, v: &Value) -> Result<i128, ContractError> {
    let Value::Number(n) = v else {
        return Err(wrong_type(field, "an integer", v));
    };
    if let Some(u) = n.as_u64() {
        return Ok(i128::from(u));
    }
    if let Some(i) = n.as_i64() {
        return Ok(i128::from(i));
    }
    let f = n.as_f64().unwrap_or(f64::NAN);
    if f.is_finite() && f.fract() == 0.0 {
        Ok(f as i128)
    } else {
        Err(err(
            Reason::WrongType,
            field,
            format!("must be an integer, not {n}"),
        ))
    }
}

fn wire_event(value: &Value) -> Result<WireEvent, ContractError> {
    let Value::Object(map) = value else {
        return Err(err(
            Reason::WrongType,
            "$",
            format!("a message must be a JSON object, not {}", kind(value)),
        ));
    };
    let o = Obj { path: "", map };
    let version = o.required("schema_version", "set it to 1")?;
    if as_integer("schema_version", version).ok() != Some(i128::from(SCHEMA_VERSION)) {
        return Err(err(
            Reason::UnknownVersion,
            "schema_version",
            format!(
                "version {} is unknown; this service understands version {SCHEMA_VERSION}",
                shown_json(version)
            ),
        ));
    }
    let event_id = o.id("event_id")?;
    let event_type = match o.string(
        "event_type",
        "schedule.created, schedule.updated or schedule.deleted",
    )? {
        "schedule.created" => EventType::Created,
        "schedule.updated" => EventType::Updated,
        "schedule.deleted" => EventType::Deleted,
        other => {
            return Err(err(
                Reason::InvalidValue,
                "event_type",
                format!(
                    "{} is not an event type; use schedule.created, schedule.updated or schedule.deleted",
                    shown(other)
                ),
            ));
        }
    };
    let occurred_at = o.timestamp(
        "occurred_at",
        "when the change happened, RFC 3339 with an offset",
    )?;
    let company_id = o.id("company_id")?;
    let schedule_id = o.id("schedule_id")?;
    let revision = as_integer(
        "revision",
        o.required("revision", "an integer that increases with every change")?,
    )?;
    if !(1..=MAX_REVISION).contains(&revision) {
        return Err(err(
            Reason::InvalidValue,
            "revision",
            "must be an integer from 1 to 2^53-1",
        ));
    }
    let schedule = match (o.get("schedule"), event_type) {
        (None, EventType::Created | EventType::Updated) => {
            return Err(err(
                Reason::MissingField,
                "schedule",
                "missing; created and updated events carry the schedule's whole current state",
            ));
        }
        (None, EventType::Deleted) => None,
        (Some(Value::Object(map)), _) => Some(wire_schedule(&Obj {
            path: "schedule",
            map,
        })?),
        (Some(other), _) => {
            return Err(wrong_type(
                "schedule",
                "an object (the schedule's whole state; leave it out of a delete that has none)",
                other,
            ));
        }
    };
    Ok(WireEvent {
        schema_version: SCHEMA_VERSION,
        event_id,
        event_type,
        occurred_at,
        company_id,
        schedule_id,
        revision: revision as u64,
        schedule,
    })
}

fn wire_schedule(o: &Obj<'_>) -> Result<WireSchedule, ContractError> {
    let title = o.string("title", "the schedule's title, 1 to 255 characters")?;
    if title.is_empty() {
        return Err(err(
            Reason::InvalidValue,
            "schedule.title",
            "must not be empty",
        ));
    }
    check_len("schedule.title", title, 255)?;
    let memo = o.optional_string("memo")?.unwrap_or_default();
    check_len("schedule.memo", memo, 20_000)?;
    let all_day = match o.required("all_day", "true for an all-day schedule, else false")? {
        Value::Bool(b) => *b,
        other => return Err(wrong_type("schedule.all_day", "true or false", other)),
    };
    let (mut start, mut end, mut first_date, mut last_date) = (None, None, None, None);
    if all_day {
        if let Some(key) = ["start", "end"].into_iter().find(|k| o.has(k)) {
            return Err(err(
                Reason::AllDayWithTimes,
                o.field(key),
                "an all-day schedule carries first_date and last_date, not start/end times",
            ));
        }
        let hint = "an all-day schedule needs first_date and last_date (YYYY-MM-DD)";
        first_date = Some(o.date("first_date", hint)?);
        last_date = Some(o.date("last_date", hint)?);
    } else {
        if let Some(key) = ["first_date", "last_date"].into_iter().find(|k| o.has(k)) {
            return Err(err(
                Reason::TimedWithDates,
                o.field(key),
                "a timed schedule (all_day: false) carries start, end and time_zone, not dates",
            ));
        }
        let hint = "a timed schedule needs start and end as RFC 3339 with an offset";
        start = Some(o.timestamp("start", hint)?);
        end = Some(o.timestamp("end", hint)?);
        o.required(
            "time_zone",
            "a timed schedule needs the IANA zone it is shown in, e.g. Asia/Tokyo",
        )?;
    }
    let time_zone = o.optional_string("time_zone")?;
    if let Some(tz) = time_zone {
        if tz.is_empty() {
            return Err(err(
                Reason::InvalidValue,
                "schedule.time_zone",
                "must not be empty",
            ));
        }
        check_len("schedule.time_zone", tz, 64)?;
    }
    let place = match o.get("place") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => {
            let p = Obj {
                path: "schedule.place",
                map,
            };
            let name = p.optional_string("name")?.unwrap_or_default();
            check_len("schedule.place.name", name, 255)?;
            let address = p.optional_string("address")?.unwrap_or_default();
            check_len("schedule.place.address", address, 1000)?;
            Some(Place {
                name: name.to_string(),
                address: address.to_string(),
            })
        }
        Some(other) => {
            return Err(wrong_type(
                "schedule.place",
                "an object with name and address, or null",
                other,
            ));
        }
    };
    let owner_user_id = o.id("owner_user_id")?;
    let participants = match o.required(
        "participant_user_ids",
        "the participants' cyzen user ids (an empty array if there are none)",
    )? {
        Value::Array(items) => items,
        other => {
            return Err(wrong_type(
                "schedule.participant_user_ids",
                "an array of user ids",
                other,
            ));
        }
    };
    if participants.len() > 500 {
        return Err(err(
            Reason::TooLong,
            "schedule.participant_user_ids",
            format!("{} participants; at most 500", participants.len()),
        ));
    }
    let participant_user_ids = participants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("schedule.participant_user_ids[{i}]");
            let id = as_str(&field, v)?;
            check_id(&field, id)?;
            Ok(id.to_string())
        })
        .collect::<Result<Vec<String>, ContractError>>()?;
    let visibility = match o.string("visibility", "public or private")? {
        "public" => Visibility::Public,
        "private" => Visibility::Private,
        other => {
            return Err(err(
                Reason::InvalidValue,
                "schedule.visibility",
                format!(
                    "{} is not a visibility; use public or private",
                    shown(other)
                ),
            ));
        }
    };
    let url = o.string("url", "the schedule's http(s) link in cyzen")?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(err(
            Reason::InvalidValue,
            "schedule.url",
            "must be the schedule's http(s) link in cyzen",
        ));
    }
    check_len("schedule.url", url, 2048)?;
    let created_at = o.timestamp("created_at", "RFC 3339 with an offset")?;
    let updated_at = o.timestamp("updated_at", "RFC 3339 with an offset")?;
    Ok(WireSchedule {
        title: title.to_string(),
        memo: memo.to_string(),
        all_day,
        start,
        end,
        time_zone: time_zone.map(str::to_string),
        first_date,
        last_date,
        place,
        owner_user_id,
        participant_user_ids,
        visibility,
        url: url.to_string(),
        created_at,
        updated_at,
    })
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), ContractError> {
    // Cheap first: a string of at most `max` bytes has at most `max` characters.
    if value.len() <= max {
        return Ok(());
    }
    let n = value.chars().count();
    if n > max {
        return Err(err(
            Reason::TooLong,
            field,
            format!("{n} characters; at most {max}"),
        ));
    }
    Ok(())
}

fn check_id(field: &str, value: &str) -> Result<(), ContractError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'));
    if ok {
        return Ok(());
    }
    let n = value.chars().count();
    if n > 64 {
        Err(err(
            Reason::TooLong,
            field,
            format!("{n} characters; an id has at most 64"),
        ))
    } else {
        Err(err(
            Reason::InvalidValue,
            field,
            format!(
                "{} is not an id (1 to 64 of A-Z a-z 0-9 . _ : -)",
                shown(value)
            ),
        ))
    }
}

/// A value that starts with a year (`YYYY-`) outside [`FIRST_YEAR`]..=[`LAST_YEAR`] is out of
/// range, whatever follows: the year is checked first.
fn check_year(field: &str, v: &str) -> Result<(), ContractError> {
    let b = v.as_bytes();
    if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return Ok(());
    }
    let year: u16 = v[..4].parse().unwrap_or(0);
    if (FIRST_YEAR..=LAST_YEAR).contains(&year) {
        return Ok(());
    }
    Err(err(
        Reason::OutOfRange,
        field,
        format!(
            "{} is in the year {year}; dates and times from {FIRST_YEAR} to {LAST_YEAR} are supported (the range every Outlook calendar shows)",
            shown(v)
        ),
    ))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, as the schema's pattern, in the supported years,
/// and a real instant.
fn check_timestamp(field: &str, v: &str) -> Result<(), ContractError> {
    check_year(field, v)?;
    parse_timestamp(v).map(|_| ()).ok_or_else(|| {
        err(
            Reason::InvalidValue,
            field,
            format!(
                "{} is not an RFC 3339 time with an offset, e.g. 2026-11-27T09:00:00+09:00",
                shown(v)
            ),
        )
    })
}

fn two_digits(b: &[u8], at: usize, max: u8) -> bool {
    match b.get(at..at + 2) {
        Some([t, u]) if t.is_ascii_digit() && u.is_ascii_digit() => {
            (t - b'0') * 10 + (u - b'0') <= max
        }
        _ => false,
    }
}

/// `YYYY-MM-DD` with a month 01–12 and a day 01–31 (the calendar decides the rest).
fn date_shape(b: &[u8]) -> bool {
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && two_digits(b, 5, 12)
        && &b[5..7] != b"00"
        && b[7] == b'-'
        && two_digits(b, 8, 31)
        && &b[8..10] != b"00"
}

pub(crate) fn parse_timestamp(v: &str) -> Option<Timestamp> {
    let b = v.as_bytes();
    let shape = b.len() >= 20
        && date_shape(b)
        && b[10] == b'T'
        && two_digits(b, 11, 23)
        && b[13] == b':'
        && two_digits(b, 14, 59)
        && b[16] == b':'
        && two_digits(b, 17, 59);
    if !shape {
        return None;
    }
    let mut i = 19;
    if b[i] == b'.' {
        let start = i + 1;
        i = start;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start || i - start > 9 {
            return None;
        }
    }
    let offset_ok = match &b[i..] {
        [b'Z'] => true,
        [b'+' | b'-', _, _, b':', _, _] => two_digits(b, i + 1, 23) && two_digits(b, i + 4, 59),
        _ => false,
    };
    if !offset_ok {
        return None;
    }
    v.parse::<Timestamp>().ok()
}

fn check_date(field: &str, v: &str) -> Result<(), ContractError> {
    check_year(field, v)?;
    parse_date(v).map(|_| ()).ok_or_else(|| {
        err(
            Reason::InvalidValue,
            field,
            format!("{} is not a date in the form YYYY-MM-DD", shown(v)),
        )
    })
}

fn parse_date(v: &str) -> Option<Date> {
    if v.len() != 10 || !date_shape(v.as_bytes()) {
        return None;
    }
    v.parse::<Date>().ok()
}

/// Phase 2: the rules a JSON Schema cannot express.
fn check_semantics(w: WireEvent) -> Result<ScheduleEvent, ContractError> {
    let occurred_at = parse_timestamp(&w.occurred_at).expect("checked in phase 1");
    // A delete may carry the schedule's last state; it must still be a valid one. The flush
    // uses its participants to find copies when the mapping was lost.
    let schedule = w.schedule.map(schedule_semantics).transpose()?;
    Ok(ScheduleEvent {
        event_id: w.event_id,
        event_type: w.event_type,
        occurred_at,
        company_id: w.company_id,
        schedule_id: w.schedule_id,
        revision: w.revision,
        schedule,
    })
}

fn zone(name: &str) -> Result<TimeZone, ContractError> {
    TimeZone::get(name).map_err(|_| {
        err(
            Reason::UnknownZone,
            "schedule.time_zone",
            format!(
                "{} is not a known IANA time zone (e.g. Asia/Tokyo, America/New_York)",
                shown(name)
            ),
        )
    })
}

fn schedule_semantics(s: WireSchedule) -> Result<Schedule, ContractError> {
    let timing = if s.all_day {
        let first = parse_date(s.first_date.as_deref().unwrap_or_default()).expect("phase 1");
        let last = parse_date(s.last_date.as_deref().unwrap_or_default()).expect("phase 1");
        if last < first {
            return Err(err(
                Reason::EndBeforeStart,
                "schedule.last_date",
                format!("{last} is before first_date {first}"),
            ));
        }
        let time_zone = s.time_zone.as_deref().map(zone).transpose()?;
        let days = first
            .until(last)
            .map(|span| span.get_days())
            .unwrap_or(i32::MAX);
        if days >= MAX_ALL_DAY_DAYS {
            return Err(err(
                Reason::SpanTooLong,
                "schedule.last_date",
                format!("an all-day schedule spans at most {MAX_ALL_DAY_DAYS} days"),
            ));
        }
        Timing::AllDay {
            first,
            last,
            time_zone,
        }
    } else {
        let start = parse_timestamp(s.start.as_deref().unwrap_or_default()).expect("phase 1");
        let end = parse_timestamp(s.end.as_deref().unwrap_or_default()).expect("phase 1");
        if end <= start {
            return Err(err(
                Reason::EndBeforeStart,
                "schedule.end",
                format!(
                    "{} is not after start {}",
                    s.end.unwrap_or_default(),
                    s.start.unwrap_or_default()
                ),
            ));
        }
        if end.as_second() - start.as_second() > MAX_TIMED_DAYS * 86_400 {
            return Err(err(
                Reason::SpanTooLong,
                "schedule.end",
                format!(
                    "a timed schedule lasts at most {MAX_TIMED_DAYS} days; use an all-day schedule"
                ),
            ));
        }
        let time_zone = zone(s.time_zone.as_deref().unwrap_or_default())?;
        Timing::Timed {
            start,
            end,
            time_zone,
        }
    };
    // What reaches Outlook holds no control or invisible formatting character (see `text`).
    let place = s
        .place
        .map(|p| Place {
            name: text::one_line(p.name),
            address: text::one_line(p.address),
        })
        .filter(|p| !(p.name.is_empty() && p.address.is_empty()));
    Ok(Schedule {
        title: text::one_line(s.title),
        memo: text::multi_line(s.memo),
        timing,
        place,
        owner_user_id: s.owner_user_id,
        participant_user_ids: s.participant_user_ids,
        visibility: s.visibility,
        url: text::one_line(s.url),
        created_at: parse_timestamp(&s.created_at).expect("phase 1"),
        updated_at: parse_timestamp(&s.updated_at).expect("phase 1"),
    })
}
