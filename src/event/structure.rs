//! Phase 1 of decoding: the body as JSON (`json`), then what the JSON Schema checks, member by
//! member in the schema's order, into a [`WireEvent`].

use serde_json::{Map, Value};

use super::dates::{check_date, check_timestamp};
use super::error::{ContractError, Reason, err, shown, shown_json};
use super::json::{self, ParseError};
use super::{EventType, Place, SCHEMA_VERSION, Visibility, WireEvent, WireSchedule};

const MAX_REVISION: i128 = 9_007_199_254_740_991;

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
    let when = when(o, all_day)?;
    let place = place(o)?;
    let owner_user_id = o.id("owner_user_id")?;
    let participant_user_ids = participant_user_ids(o)?;
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
        start: when.start,
        end: when.end,
        time_zone: when.time_zone.map(str::to_string),
        first_date: when.first_date,
        last_date: when.last_date,
        place,
        owner_user_id,
        participant_user_ids,
        visibility,
        url: url.to_string(),
        created_at,
        updated_at,
    })
}

/// When a schedule happens, as written: start and end (a timed schedule) or first and last
/// date (an all-day one), and its zone.
struct When<'a> {
    start: Option<String>,
    end: Option<String>,
    first_date: Option<String>,
    last_date: Option<String>,
    time_zone: Option<&'a str>,
}

/// An all-day schedule carries dates and no times, a timed one times and a zone and no dates.
fn when<'a>(o: &Obj<'a>, all_day: bool) -> Result<When<'a>, ContractError> {
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
    Ok(When {
        start,
        end,
        first_date,
        last_date,
        time_zone,
    })
}

/// `place`: an object with a name and an address, or null (or absent).
fn place(o: &Obj<'_>) -> Result<Option<Place>, ContractError> {
    Ok(match o.get("place") {
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
    })
}

/// `participant_user_ids`: an array of at most 500 ids.
fn participant_user_ids(o: &Obj<'_>) -> Result<Vec<String>, ContractError> {
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
    participants
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let field = format!("schedule.participant_user_ids[{i}]");
            let id = as_str(&field, v)?;
            check_id(&field, id)?;
            Ok(id.to_string())
        })
        .collect()
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
