//! Decoding and validation of v1 events. See the module docs of [`super`].

use std::fmt;

use jiff::Timestamp;
use jiff::civil::Date;
use jiff::tz::TimeZone;
use serde_json::Value;

use super::{
    EventType, Place, SCHEMA_VERSION, Schedule, ScheduleEvent, Timing, WireEvent, WireSchedule,
};

/// The largest message accepted, in bytes (256 KiB). A schedule's longest fields (memo 20,000
/// characters of up to 4 bytes each, 500 participants) fit with room to spare.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;
const MAX_TIMED_DAYS: i64 = 31;
const MAX_ALL_DAY_DAYS: i32 = 366;

/// Why a message was rejected, as a stable code (it travels on dead letters as `x-reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    TooLarge,
    NotUtf8,
    MalformedJson,
    UnknownVersion,
    MissingField,
    WrongType,
    TooLong,
    InvalidValue,
    EndBeforeStart,
    AllDayWithTimes,
    TimedWithDates,
    UnknownZone,
    SpanTooLong,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::NotUtf8 => "not_utf8",
            Reason::MalformedJson => "malformed_json",
            Reason::UnknownVersion => "unknown_schema_version",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::TooLong => "too_long",
            Reason::InvalidValue => "invalid_value",
            Reason::EndBeforeStart => "end_before_start",
            Reason::AllDayWithTimes => "all_day_with_times",
            Reason::TimedWithDates => "timed_with_dates",
            Reason::UnknownZone => "unknown_time_zone",
            Reason::SpanTooLong => "span_too_long",
        }
    }

    /// True for the rules the JSON Schema cannot express (see `x-semantic-rules`).
    pub fn is_semantic(self) -> bool {
        matches!(
            self,
            Reason::TooLarge | Reason::EndBeforeStart | Reason::UnknownZone | Reason::SpanTooLong
        )
    }
}

/// A rejected message: which field, what is wrong, and what the publisher should do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ContractError {
    pub reason: Reason,
    /// A JSON path such as `schedule.end`; `$` for the message as a whole.
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

/// Phase 1: what the JSON Schema checks, and nothing more. Exposed for the schema-agreement test.
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
    // Fast path: a well-formed v1 object decodes in one pass; anything else takes the slow
    // path below, which names the exact problem.
    if text.trim_start().starts_with('{')
        && let Ok(wire) = serde_json::from_str::<WireEvent>(text)
        && wire.schema_version == SCHEMA_VERSION
    {
        check_structure(&wire)?;
        return Ok(wire);
    }
    let value: Value = serde_json::from_str(text).map_err(|e| {
        err(
            Reason::MalformedJson,
            "$",
            format!(
                "not valid JSON: {e} (line {}, column {})",
                e.line(),
                e.column()
            ),
        )
    })?;
    let Value::Object(obj) = &value else {
        return Err(err(
            Reason::WrongType,
            "$",
            "a message must be a JSON object",
        ));
    };
    match obj.get("schema_version") {
        None => {
            return Err(err(
                Reason::MissingField,
                "schema_version",
                "missing; set it to 1",
            ));
        }
        Some(v) if v.as_u64() == Some(SCHEMA_VERSION) && !v.is_f64() => {}
        Some(v) => {
            return Err(err(
                Reason::UnknownVersion,
                "schema_version",
                format!(
                    "version {v} is unknown; this service understands version {SCHEMA_VERSION}"
                ),
            ));
        }
    }
    let wire: WireEvent = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let (reason, field, problem) = if let Some(name) = missing_field_name(&inner) {
            let field = if path == "." || path.is_empty() {
                name.to_string()
            } else {
                format!("{path}.{name}")
            };
            (Reason::MissingField, field, "missing".to_string())
        } else {
            let field = if path == "." { "$".into() } else { path };
            let reason = if inner.starts_with("unknown variant") {
                Reason::InvalidValue
            } else {
                Reason::WrongType
            };
            (reason, field, inner)
        };
        err(reason, field, problem)
    })?;
    check_structure(&wire)?;
    Ok(wire)
}

fn missing_field_name(serde_message: &str) -> Option<&str> {
    let rest = serde_message.strip_prefix("missing field `")?;
    rest.split('`').next()
}

fn check_structure(w: &WireEvent) -> Result<(), ContractError> {
    check_id("event_id", &w.event_id)?;
    check_timestamp_shape("occurred_at", &w.occurred_at)?;
    check_id("company_id", &w.company_id)?;
    check_id("schedule_id", &w.schedule_id)?;
    if w.revision == 0 || w.revision > 9_007_199_254_740_991 {
        return Err(err(
            Reason::InvalidValue,
            "revision",
            "must be an integer from 1 to 2^53-1",
        ));
    }
    match (&w.schedule, w.event_type) {
        (None, EventType::Created | EventType::Updated) => {
            return Err(err(
                Reason::MissingField,
                "schedule",
                "missing; created and updated events carry the schedule's whole current state",
            ));
        }
        (Some(s), _) => check_schedule_structure(s)?,
        (None, EventType::Deleted) => {}
    }
    Ok(())
}

fn check_schedule_structure(s: &WireSchedule) -> Result<(), ContractError> {
    let chars = s.title.chars().count();
    if chars == 0 {
        return Err(err(
            Reason::InvalidValue,
            "schedule.title",
            "must not be empty",
        ));
    }
    check_len("schedule.title", &s.title, 255)?;
    check_len("schedule.memo", &s.memo, 20_000)?;
    if s.all_day {
        if s.start.is_some() || s.end.is_some() {
            return Err(err(
                Reason::AllDayWithTimes,
                "schedule.start",
                "an all-day schedule carries first_date and last_date, not start/end times",
            ));
        }
        for (field, v) in [
            ("schedule.first_date", &s.first_date),
            ("schedule.last_date", &s.last_date),
        ] {
            match v {
                None => {
                    return Err(err(
                        Reason::MissingField,
                        field,
                        "missing; an all-day schedule needs first_date and last_date (YYYY-MM-DD)",
                    ));
                }
                Some(d) => check_date_shape(field, d)?,
            }
        }
    } else {
        if s.first_date.is_some() || s.last_date.is_some() {
            return Err(err(
                Reason::TimedWithDates,
                "schedule.first_date",
                "a timed schedule (all_day: false) carries start, end and time_zone, not dates",
            ));
        }
        for (field, v) in [("schedule.start", &s.start), ("schedule.end", &s.end)] {
            match v {
                None => {
                    return Err(err(
                        Reason::MissingField,
                        field,
                        "missing; a timed schedule needs start and end as RFC 3339 with an offset",
                    ));
                }
                Some(t) => check_timestamp_shape(field, t)?,
            }
        }
        if s.time_zone.is_none() {
            return Err(err(
                Reason::MissingField,
                "schedule.time_zone",
                "missing; a timed schedule needs the IANA zone it is shown in, e.g. Asia/Tokyo",
            ));
        }
    }
    if let Some(tz) = &s.time_zone {
        if tz.is_empty() {
            return Err(err(
                Reason::InvalidValue,
                "schedule.time_zone",
                "must not be empty",
            ));
        }
        check_len("schedule.time_zone", tz, 64)?;
    }
    if let Some(p) = &s.place {
        check_len("schedule.place.name", &p.name, 255)?;
        check_len("schedule.place.address", &p.address, 1000)?;
    }
    check_id("schedule.owner_user_id", &s.owner_user_id)?;
    if s.participant_user_ids.len() > 500 {
        return Err(err(
            Reason::TooLong,
            "schedule.participant_user_ids",
            format!("{} participants; at most 500", s.participant_user_ids.len()),
        ));
    }
    for (i, p) in s.participant_user_ids.iter().enumerate() {
        check_id(&format!("schedule.participant_user_ids[{i}]"), p)?;
    }
    if s.url.is_empty() || !(s.url.starts_with("http://") || s.url.starts_with("https://")) {
        return Err(err(
            Reason::InvalidValue,
            "schedule.url",
            "must be the schedule's http(s) link in cyzen",
        ));
    }
    check_len("schedule.url", &s.url, 2048)?;
    check_timestamp_shape("schedule.created_at", &s.created_at)?;
    check_timestamp_shape("schedule.updated_at", &s.updated_at)?;
    Ok(())
}

fn check_len(field: &str, value: &str, max: usize) -> Result<(), ContractError> {
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
        Ok(())
    } else if value.len() > 64 {
        Err(err(
            Reason::TooLong,
            field,
            format!("{} characters; an id has at most 64", value.len()),
        ))
    } else {
        Err(err(
            Reason::InvalidValue,
            field,
            format!("{value:?} is not an id (1 to 64 of A-Z a-z 0-9 . _ : -)"),
        ))
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, as the schema's pattern, and a real instant.
fn check_timestamp_shape(field: &str, v: &str) -> Result<(), ContractError> {
    parse_timestamp(v).map(|_| ()).ok_or_else(|| {
        err(
            Reason::InvalidValue,
            field,
            format!("{v:?} is not an RFC 3339 time with an offset, e.g. 2026-11-27T09:00:00+09:00"),
        )
    })
}

pub(crate) fn parse_timestamp(v: &str) -> Option<Timestamp> {
    let b = v.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|s| s.iter().all(u8::is_ascii_digit));
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
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
        [sign, rest @ ..] if matches!(sign, b'+' | b'-') && rest.len() == 5 => {
            rest[..2].iter().all(u8::is_ascii_digit)
                && rest[2] == b':'
                && rest[3..].iter().all(u8::is_ascii_digit)
        }
        _ => false,
    };
    if !offset_ok {
        return None;
    }
    v.parse::<Timestamp>().ok()
}

fn check_date_shape(field: &str, v: &str) -> Result<(), ContractError> {
    parse_date(v).map(|_| ()).ok_or_else(|| {
        err(
            Reason::InvalidValue,
            field,
            format!("{v:?} is not a date in the form YYYY-MM-DD"),
        )
    })
}

fn parse_date(v: &str) -> Option<Date> {
    let b = v.as_bytes();
    let ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !ok {
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
            format!("{name:?} is not a known IANA time zone (e.g. Asia/Tokyo, America/New_York)"),
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
                format!("{end} is not after start {start}"),
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
    Ok(Schedule {
        title: s.title,
        memo: s.memo,
        timing,
        place: s
            .place
            .filter(|p: &Place| !(p.name.is_empty() && p.address.is_empty())),
        owner_user_id: s.owner_user_id,
        participant_user_ids: s.participant_user_ids,
        visibility: s.visibility,
        url: s.url,
        created_at: parse_timestamp(&s.created_at).expect("phase 1"),
        updated_at: parse_timestamp(&s.updated_at).expect("phase 1"),
    })
}
