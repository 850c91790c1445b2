//! The `event` resource (GRAPH.md §2.2–§2.9, §6.4): input validation, storage form and
//! rendering in Graph's response shape.

use jiff::Timestamp;
use jiff::civil::DateTime;
use serde_json::{Map, Value, json};

use super::errors::{ErrorReply, wire};
use super::state::UserRec;
use super::timezones::{self, Zone};
use super::{Settings, util};

/// A `start`/`end` as stored: the wall-clock time in the zone it was given in.
#[derive(Debug, Clone)]
pub(crate) struct EventTime {
    pub local: DateTime,
    pub zone: &'static Zone,
    pub instant: Timestamp,
}

#[derive(Debug, Clone)]
pub(crate) struct StoredEvent {
    pub id: String,
    pub change_key: String,
    pub ical_uid: String,
    pub created: Timestamp,
    pub modified: Timestamp,
    /// Creation order in the mailbox (tie-breaker for sorting).
    pub seq: u64,
    pub transaction_id: Option<String>,
    pub subject: String,
    pub body_html: bool,
    pub body_content: String,
    pub start: EventTime,
    pub end: EventTime,
    pub is_all_day: bool,
    /// The other writable properties in their canonical form.
    pub props: Map<String, Value>,
    /// singleValueExtendedProperties: (id as given, value).
    pub ext: Vec<ExtProp>,
    pub organizer: Value,
}

/// A stored single-value extended property.
#[derive(Debug, Clone)]
pub(crate) struct ExtProp {
    /// The id as the client wrote it (returned as is).
    pub id: String,
    /// [`normalize_ext_id`] of `id`, for comparisons.
    pub key: String,
    pub value: String,
}

/// How `singleValueExtendedProperties` appear in a rendering.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ExtMode {
    None,
    All,
    /// Only the property with this normalised id.
    Only(String),
}

#[derive(Debug, Clone)]
pub(crate) struct RenderOpts<'a> {
    /// `Prefer: outlook.timezone`; `None` = UTC.
    pub tz: Option<&'static Zone>,
    /// `Prefer: outlook.body-content-type="text"`.
    pub text_body: bool,
    pub ext: ExtMode,
    pub select: Option<&'a [String]>,
    pub context: Option<String>,
}

impl RenderOpts<'_> {
    /// Everything, UTC, HTML body: the admin view.
    pub fn full() -> RenderOpts<'static> {
        RenderOpts {
            tz: None,
            text_body: false,
            ext: ExtMode::All,
            select: None,
            context: None,
        }
    }
}

/// Property names of `microsoft.graph.event` the emulator knows (for `$select` and bodies).
pub(crate) const EVENT_PROPERTIES: &[&str] = &[
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "transactionId",
    "originalStartTimeZone",
    "originalEndTimeZone",
    "iCalUId",
    "reminderMinutesBeforeStart",
    "isReminderOn",
    "hasAttachments",
    "subject",
    "bodyPreview",
    "importance",
    "sensitivity",
    "isAllDay",
    "isCancelled",
    "isOrganizer",
    "responseRequested",
    "seriesMasterId",
    "showAs",
    "type",
    "webLink",
    "onlineMeetingUrl",
    "isOnlineMeeting",
    "onlineMeetingProvider",
    "allowNewTimeProposals",
    "isDraft",
    "hideAttendees",
    "responseStatus",
    "body",
    "start",
    "end",
    "location",
    "locations",
    "recurrence",
    "attendees",
    "organizer",
    "onlineMeeting",
    "singleValueExtendedProperties",
];

/// Read-only properties a client may echo back; accepted and ignored.
const READ_ONLY: &[&str] = &[
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "iCalUId",
    "hasAttachments",
    "bodyPreview",
    "isCancelled",
    "isOrganizer",
    "seriesMasterId",
    "type",
    "webLink",
    "onlineMeetingUrl",
    "responseStatus",
    "organizer",
    "onlineMeeting",
    "originalStartTimeZone",
    "originalEndTimeZone",
    "isDraft",
];

pub(crate) fn canonical_property(name: &str) -> Option<&'static str> {
    EVENT_PROPERTIES
        .iter()
        .copied()
        .find(|p| p.eq_ignore_ascii_case(name))
}

const SHOW_AS: &[&str] = &[
    "free",
    "tentative",
    "busy",
    "oof",
    "workingElsewhere",
    "unknown",
];
const SENSITIVITY: &[&str] = &["normal", "personal", "private", "confidential"];
const IMPORTANCE: &[&str] = &["low", "normal", "high"];
const MEETING_PROVIDERS: &[&str] = &[
    "unknown",
    "teamsForBusiness",
    "skypeForBusiness",
    "skypeForConsumer",
];
const ATTENDEE_TYPES: &[&str] = &["required", "optional", "resource"];
const LOCATION_TYPES: &[&str] = &[
    "default",
    "conferenceRoom",
    "homeAddress",
    "businessAddress",
    "geoCoordinates",
    "streetAddress",
    "hotel",
    "restaurant",
    "localBusiness",
    "postalAddress",
];
const RECURRENCE_PATTERNS: &[&str] = &[
    "daily",
    "weekly",
    "absoluteMonthly",
    "relativeMonthly",
    "absoluteYearly",
    "relativeYearly",
];
const RECURRENCE_RANGES: &[&str] = &["endDate", "noEnd", "numbered"];
const EXT_TYPES: &[&str] = &[
    "String",
    "Integer",
    "Boolean",
    "SystemTime",
    "Long",
    "Double",
    "Binary",
    "Short",
    "Float",
    "Currency",
    "ApplicationTime",
    "CLSID",
    "Object",
];

fn type_error(prop: &str, expected: &str, got: &Value) -> ErrorReply {
    let found = match got {
        Value::Null => "null",
        Value::Bool(_) => "Boolean",
        Value::Number(_) => "Number",
        Value::String(_) => "PrimitiveValue",
        Value::Array(_) => "StartArray",
        Value::Object(_) => "StartObject",
    };
    ErrorReply::body_read(format!(
        "An unexpected '{found}' node was found when reading property '{prop}'. A '{expected}' node was expected."
    ))
}

fn enum_value(prop: &str, v: &Value, allowed: &[&'static str]) -> Result<&'static str, ErrorReply> {
    let Some(s) = v.as_str() else {
        return Err(type_error(prop, "PrimitiveValue", v));
    };
    allowed
        .iter()
        .copied()
        .find(|a| a.eq_ignore_ascii_case(s))
        .ok_or_else(|| ErrorReply::body_read(format!("Requested value '{s}' was not found.")))
}

fn string_value(prop: &str, v: &Value) -> Result<String, ErrorReply> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        other => Err(type_error(prop, "PrimitiveValue", other)),
    }
}

fn bool_value(prop: &str, v: &Value) -> Result<Option<bool>, ErrorReply> {
    match v {
        Value::Bool(b) => Ok(Some(*b)),
        Value::Null => Ok(None),
        other => Err(type_error(prop, "Boolean", other)),
    }
}

/// Parses a `dateTime`: `YYYY-MM-DD`, or `YYYY-MM-DDTHH:MM[:SS[.fffffff]]` (a trailing `Z` is
/// ignored, as the value is a wall-clock time in `timeZone`).
pub(crate) fn parse_local(s: &str) -> Option<DateTime> {
    let t = s.trim();
    let t = t
        .strip_suffix('Z')
        .or_else(|| t.strip_suffix('z'))
        .unwrap_or(t);
    if t.len() == 10 {
        return t
            .parse::<jiff::civil::Date>()
            .ok()
            .map(|d| d.to_datetime(jiff::civil::Time::midnight()));
    }
    t.parse::<DateTime>().ok()
}

fn parse_time(prop: &str, v: &Value, settings: &Settings) -> Result<EventTime, ErrorReply> {
    let Some(obj) = v.as_object() else {
        return Err(type_error(prop, "StartObject", v));
    };
    for key in obj.keys() {
        if !key.eq_ignore_ascii_case("dateTime")
            && !key.eq_ignore_ascii_case("timeZone")
            && !key.starts_with("@odata")
        {
            return Err(ErrorReply::body_read(format!(
                "The property '{key}' does not exist on type 'microsoft.graph.dateTimeTimeZone'. Make sure to only use property names that are defined by the type."
            )));
        }
    }
    let field = |name: &str| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let date_time = match field("dateTime") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => {
            return Err(ErrorReply::new(
                400,
                wire::START_END_REQUIRED_CODE,
                format!("The property '{prop}.dateTime' is required."),
            ));
        }
        Some(other) => {
            return Err(type_error(
                &format!("{prop}.dateTime"),
                "PrimitiveValue",
                other,
            ));
        }
    };
    let zone = match field("timeZone") {
        Some(Value::String(s)) => timezones::lookup(s, settings.accept_iana_zones)
            .ok_or_else(|| ErrorReply::time_zone(s))?,
        Some(Value::Null) | None => timezones::utc(),
        Some(other) => {
            return Err(type_error(
                &format!("{prop}.timeZone"),
                "PrimitiveValue",
                other,
            ));
        }
    };
    let local = parse_local(&date_time).ok_or_else(|| {
        ErrorReply::body_read(format!(
            "Cannot convert the literal '{date_time}' to the expected type 'Edm.DateTime' ({prop}.dateTime)."
        ))
    })?;
    let instant = zone.tz.to_timestamp(local).map_err(|e| {
        ErrorReply::body_read(format!(
            "The value '{date_time}' of {prop}.dateTime is out of range: {e}"
        ))
    })?;
    Ok(EventTime {
        local,
        zone,
        instant,
    })
}

fn canonical_location(v: &Value) -> Result<Value, ErrorReply> {
    let obj = match v {
        Value::Null => return Ok(empty_location()),
        Value::Object(o) => o,
        other => return Err(type_error("location", "StartObject", other)),
    };
    let display = match obj.get("displayName") {
        Some(v) => string_value("location.displayName", v)?,
        None => String::new(),
    };
    let location_type = match obj.get("locationType") {
        Some(Value::Null) | None => "default",
        Some(v) => enum_value("locationType", v, LOCATION_TYPES)?,
    };
    let mut out = Map::new();
    out.insert("displayName".into(), json!(display));
    out.insert("locationType".into(), json!(location_type));
    if !display.is_empty() {
        out.insert("uniqueId".into(), json!(display));
        out.insert("uniqueIdType".into(), json!("private"));
    } else {
        out.insert("uniqueIdType".into(), json!("unknown"));
    }
    for key in ["address", "coordinates"] {
        match obj.get(key) {
            Some(Value::Object(o)) => {
                out.insert(key.into(), Value::Object(o.clone()));
            }
            Some(Value::Null) | None => {}
            Some(other) => {
                return Err(type_error(&format!("location.{key}"), "StartObject", other));
            }
        }
    }
    for key in ["locationEmailAddress", "locationUri"] {
        if let Some(v) = obj.get(key) {
            out.insert(key.into(), json!(string_value(key, v)?));
        }
    }
    Ok(Value::Object(out))
}

fn empty_location() -> Value {
    json!({"displayName": "", "locationType": "default", "uniqueIdType": "unknown", "address": {}, "coordinates": {}})
}

fn canonical_attendees(v: &Value, max: usize) -> Result<Value, ErrorReply> {
    let list = match v {
        Value::Null => return Ok(json!([])),
        Value::Array(a) => a,
        other => return Err(type_error("attendees", "StartArray", other)),
    };
    if list.len() > max {
        return Err(ErrorReply::new(
            400,
            "ErrorInvalidRequest",
            format!("An event can have at most {max} attendees."),
        ));
    }
    let mut out = Vec::with_capacity(list.len());
    for a in list {
        let Some(obj) = a.as_object() else {
            return Err(type_error("attendees", "StartObject", a));
        };
        let email = obj.get("emailAddress").and_then(Value::as_object);
        let address = email
            .and_then(|e| e.get("address"))
            .and_then(Value::as_str)
            .filter(|s| s.contains('@'));
        let Some(address) = address else {
            return Err(ErrorReply::new(
                400,
                "ErrorInvalidRecipients",
                "At least one recipient isn't valid.",
            ));
        };
        let name = email
            .and_then(|e| e.get("name"))
            .and_then(Value::as_str)
            .unwrap_or(address);
        let kind = match obj.get("type") {
            Some(Value::Null) | None => "required",
            Some(t) => enum_value("type", t, ATTENDEE_TYPES)?,
        };
        out.push(json!({
            "type": kind,
            "status": {"response": "none", "time": "0001-01-01T00:00:00Z"},
            "emailAddress": {"name": name, "address": address},
        }));
    }
    Ok(Value::Array(out))
}

fn canonical_recurrence(v: &Value) -> Result<Value, ErrorReply> {
    let obj = match v {
        Value::Null => return Ok(Value::Null),
        Value::Object(o) => o,
        other => return Err(type_error("recurrence", "StartObject", other)),
    };
    let pattern_type = obj
        .get("pattern")
        .and_then(|p| p.get("type"))
        .ok_or_else(|| ErrorReply::body_read("The recurrence pattern must have a type."))?;
    enum_value("pattern.type", pattern_type, RECURRENCE_PATTERNS)?;
    let range_type = obj
        .get("range")
        .and_then(|p| p.get("type"))
        .ok_or_else(|| ErrorReply::body_read("The recurrence range must have a type."))?;
    enum_value("range.type", range_type, RECURRENCE_RANGES)?;
    Ok(v.clone())
}

/// Normalised id for comparisons: the `Name` part is case-sensitive, the rest is not
/// (GRAPH.md §2.6). `None` if the id is not one of the three documented formats.
pub(crate) fn normalize_ext_id(id: &str) -> Option<String> {
    let parts: Vec<&str> = id.split_whitespace().collect();
    let type_ok = |t: &str| EXT_TYPES.iter().any(|x| x.eq_ignore_ascii_case(t));
    let guid_ok =
        |g: &str| g.starts_with('{') && g.ends_with('}') && util::is_guid(&g[1..g.len() - 1]);
    match parts.as_slice() {
        [t, g, kw, rest @ ..]
            if type_ok(t) && guid_ok(g) && kw.eq_ignore_ascii_case("name") && !rest.is_empty() =>
        {
            // The name may contain spaces: keep the original text after "Name ".
            let idx = id.to_ascii_lowercase().find(" name ")? + 6;
            Some(format!(
                "{} {} name {}",
                t.to_ascii_lowercase(),
                g.to_ascii_lowercase(),
                id[idx..].trim()
            ))
        }
        [t, g, kw, tag]
            if type_ok(t)
                && guid_ok(g)
                && kw.eq_ignore_ascii_case("id")
                && tag.starts_with("0x") =>
        {
            Some(
                id.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_ascii_lowercase(),
            )
        }
        [t, tag] if type_ok(t) && tag.to_ascii_lowercase().starts_with("0x") => Some(format!(
            "{} {}",
            t.to_ascii_lowercase(),
            tag.to_ascii_lowercase()
        )),
        _ => None,
    }
}

fn parse_ext(v: &Value) -> Result<Vec<(String, String)>, ErrorReply> {
    let list = match v {
        Value::Null => return Ok(Vec::new()),
        Value::Array(a) => a,
        other => {
            return Err(type_error(
                "singleValueExtendedProperties",
                "StartArray",
                other,
            ));
        }
    };
    let mut out = Vec::new();
    for p in list {
        let id = p.get("id").and_then(Value::as_str).unwrap_or("");
        if normalize_ext_id(id).is_none() {
            return Err(ErrorReply::new(
                400,
                "ErrorInvalidProperty",
                format!("The extended property id '{id}' is not valid."),
            ));
        }
        let value = match p.get("value") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(type_error(
                    "singleValueExtendedProperties.value",
                    "PrimitiveValue",
                    other,
                ));
            }
            None => {
                return Err(ErrorReply::body_read(
                    "An extended property needs a 'value'.",
                ));
            }
        };
        out.push((id.to_string(), value));
    }
    Ok(out)
}

/// The writable fields found in a POST/PATCH body.
#[derive(Debug, Default)]
pub(crate) struct Draft {
    subject: Option<String>,
    body: Option<(bool, String)>,
    start: Option<EventTime>,
    end: Option<EventTime>,
    is_all_day: Option<bool>,
    props: Map<String, Value>,
    ext: Vec<(String, String)>,
    pub transaction_id: Option<String>,
}

/// Validates a request body and extracts its writable fields.
pub(crate) fn parse_input(input: &Value, settings: &Settings) -> Result<Draft, ErrorReply> {
    let Some(obj) = input.as_object() else {
        return Err(ErrorReply::bad_request(wire::BAD_JSON));
    };
    let mut d = Draft::default();
    let mut location: Option<Value> = None;
    let mut locations: Option<Value> = None;
    for (key, v) in obj {
        if key.starts_with('@') {
            continue;
        }
        let Some(prop) = canonical_property(key) else {
            return Err(ErrorReply::body_read(format!(
                "The property '{key}' does not exist on type 'microsoft.graph.event'. Make sure to only use property names that are defined by the type or mark the type as open type."
            )));
        };
        if READ_ONLY.contains(&prop) {
            continue;
        }
        match prop {
            "subject" => d.subject = Some(string_value(prop, v)?),
            "body" => {
                d.body = match v {
                    Value::Null => Some((false, String::new())),
                    Value::Object(b) => {
                        let html = match b.get("contentType") {
                            Some(Value::Null) | None => false,
                            Some(ct) => enum_value("contentType", ct, &["text", "html"])? == "html",
                        };
                        let content = match b.get("content") {
                            Some(c) => string_value("body.content", c)?,
                            None => String::new(),
                        };
                        Some((html, content))
                    }
                    other => return Err(type_error(prop, "StartObject", other)),
                }
            }
            "start" => d.start = Some(parse_time(prop, v, settings)?),
            "end" => d.end = Some(parse_time(prop, v, settings)?),
            "isAllDay" => d.is_all_day = bool_value(prop, v)?,
            "location" => location = Some(canonical_location(v)?),
            "locations" => {
                let list = match v {
                    Value::Null => Vec::new(),
                    Value::Array(a) => a
                        .iter()
                        .map(canonical_location)
                        .collect::<Result<Vec<_>, _>>()?,
                    other => return Err(type_error(prop, "StartArray", other)),
                };
                locations = Some(Value::Array(list));
            }
            "attendees" => {
                d.props
                    .insert(prop.into(), canonical_attendees(v, settings.max_attendees)?);
            }
            "categories" => {
                let list = match v {
                    Value::Null => Vec::new(),
                    Value::Array(a) => a
                        .iter()
                        .map(|c| string_value(prop, c).map(Value::String))
                        .collect::<Result<Vec<_>, _>>()?,
                    other => return Err(type_error(prop, "StartArray", other)),
                };
                d.props.insert(prop.into(), Value::Array(list));
            }
            "showAs" | "sensitivity" | "importance" | "onlineMeetingProvider" => {
                let allowed = match prop {
                    "showAs" => SHOW_AS,
                    "sensitivity" => SENSITIVITY,
                    "importance" => IMPORTANCE,
                    _ => MEETING_PROVIDERS,
                };
                if !v.is_null() {
                    d.props
                        .insert(prop.into(), json!(enum_value(prop, v, allowed)?));
                }
            }
            "isReminderOn"
            | "responseRequested"
            | "allowNewTimeProposals"
            | "hideAttendees"
            | "isOnlineMeeting" => {
                if let Some(b) = bool_value(prop, v)? {
                    d.props.insert(prop.into(), json!(b));
                }
            }
            "reminderMinutesBeforeStart" => match v {
                Value::Number(n) if n.as_i64().is_some_and(|n| i32::try_from(n).is_ok()) => {
                    d.props.insert(prop.into(), v.clone());
                }
                Value::Null => {}
                other => return Err(type_error(prop, "PrimitiveValue (Edm.Int32)", other)),
            },
            "recurrence" => {
                d.props.insert(prop.into(), canonical_recurrence(v)?);
            }
            "transactionId" => {
                let s = string_value(prop, v)?;
                if !s.is_empty() {
                    d.transaction_id = Some(s);
                }
            }
            "singleValueExtendedProperties" => d.ext = parse_ext(v)?,
            _ => {
                return Err(ErrorReply::body_read(format!(
                    "The property '{key}' cannot be set on 'microsoft.graph.event'."
                )));
            }
        }
    }
    // `location` and `locations` mirror each other; setting `location` replaces `locations`.
    match (location, locations) {
        (Some(loc), _) => {
            let list = if loc["displayName"].as_str().unwrap_or("").is_empty() {
                json!([])
            } else {
                json!([loc.clone()])
            };
            d.props.insert("location".into(), loc);
            d.props.insert("locations".into(), list);
        }
        (None, Some(Value::Array(list))) => {
            let loc = match list.as_slice() {
                [] => empty_location(),
                [one] => one.clone(),
                many => {
                    let names: Vec<&str> = many
                        .iter()
                        .filter_map(|l| l["displayName"].as_str())
                        .collect();
                    let joined = names.join("; ");
                    json!({"displayName": joined, "locationType": "default", "uniqueId": joined, "uniqueIdType": "private"})
                }
            };
            d.props.insert("location".into(), loc);
            d.props.insert("locations".into(), Value::Array(list));
        }
        _ => {}
    }
    Ok(d)
}

fn validate_times(start: &EventTime, end: &EventTime, all_day: bool) -> Result<(), ErrorReply> {
    if end.instant < start.instant {
        return Err(ErrorReply::new(
            400,
            wire::END_BEFORE_START_CODE,
            wire::END_BEFORE_START,
        ));
    }
    if all_day {
        let fail = |msg: &str| ErrorReply::new(400, wire::ALL_DAY_CODE, msg);
        if start.zone.name != end.zone.name {
            return Err(fail(wire::ALL_DAY_ZONES_DIFFER));
        }
        let midnight = jiff::civil::Time::midnight();
        if start.local.time() != midnight || end.local.time() != midnight {
            return Err(fail(wire::ALL_DAY_NOT_MIDNIGHT));
        }
        let utc = jiff::tz::TimeZone::UTC;
        let (Ok(a), Ok(b)) = (utc.to_timestamp(start.local), utc.to_timestamp(end.local)) else {
            return Err(fail(wire::ALL_DAY_TOO_SHORT));
        };
        let secs = b.as_second() - a.as_second();
        if secs < 86_400 {
            return Err(fail(wire::ALL_DAY_TOO_SHORT));
        }
        if secs % 86_400 != 0 {
            return Err(fail(wire::ALL_DAY_NOT_WHOLE_DAYS));
        }
    }
    Ok(())
}

/// New ids and keys.
pub(crate) fn new_event_id(owner_id: &str, seq: u64, url_unsafe: bool) -> String {
    let owner = uuid::Uuid::parse_str(owner_id)
        .map(|u| *u.as_bytes())
        .unwrap_or_else(|_| {
            *uuid::Uuid::parse_str(&super::seed::derived_guid("owner", owner_id))
                .expect("guid")
                .as_bytes()
        });
    let mut bytes = Vec::with_capacity(112);
    bytes.extend_from_slice(&[0x00, 0x03, 0x24, 0x00]);
    bytes.extend_from_slice(&owner);
    bytes.extend_from_slice(&[0x00, 0x46, 0x00, 0x00]);
    // At a 3-byte boundary: encodes to "+/+/" (standard) or "-_-_" (URL-safe).
    bytes.extend_from_slice(&[0xFB, 0xFF, 0xBF]);
    bytes.extend_from_slice(&util::random_bytes::<40>());
    bytes.extend_from_slice(&seq.to_be_bytes());
    bytes.push(0x00);
    util::b64(&bytes, url_unsafe)
}

fn new_change_key() -> String {
    util::b64(&util::random_bytes::<22>(), true)
}

fn new_ical_uid(now: Timestamp) -> String {
    format!(
        "040000008200E00074C5B7101A82E00800000000{:016X}000000000000000010000000{}",
        now.as_microsecond() as u64,
        hex::encode_upper(util::random_bytes::<16>())
    )
}

impl StoredEvent {
    /// Builds a new event from a validated draft.
    pub fn create(
        d: Draft,
        owner: &UserRec,
        seq: u64,
        settings: &Settings,
    ) -> Result<StoredEvent, ErrorReply> {
        let (Some(start), Some(end)) = (d.start, d.end) else {
            return Err(ErrorReply::new(
                400,
                wire::START_END_REQUIRED_CODE,
                wire::START_END_REQUIRED,
            ));
        };
        let is_all_day = d.is_all_day.unwrap_or(false);
        validate_times(&start, &end, is_all_day)?;
        let mut props = Map::new();
        let defaults = [
            ("categories", json!([])),
            ("importance", json!("normal")),
            ("sensitivity", json!("normal")),
            ("showAs", json!("busy")),
            ("isReminderOn", json!(true)),
            ("reminderMinutesBeforeStart", json!(15)),
            ("responseRequested", json!(true)),
            ("allowNewTimeProposals", json!(true)),
            ("hideAttendees", json!(false)),
            ("isOnlineMeeting", json!(false)),
            ("onlineMeetingProvider", json!("unknown")),
            ("attendees", json!([])),
            ("location", empty_location()),
            ("locations", json!([])),
            ("recurrence", Value::Null),
        ];
        for (k, v) in defaults {
            props.insert(k.into(), v);
        }
        for (k, v) in d.props {
            props.insert(k, v);
        }
        let now = Timestamp::now();
        let (body_html, body_content) = d.body.unwrap_or((false, String::new()));
        Ok(StoredEvent {
            id: new_event_id(&owner.id, seq, settings.url_unsafe_ids),
            change_key: new_change_key(),
            ical_uid: new_ical_uid(now),
            created: now,
            modified: now,
            seq,
            transaction_id: d.transaction_id,
            subject: d.subject.unwrap_or_default(),
            body_html,
            body_content,
            start,
            end,
            is_all_day,
            props,
            ext: merge_ext(Vec::new(), d.ext),
            organizer: json!({"emailAddress": {"name": owner.display_name, "address": owner.address()}}),
        })
    }

    /// Applies a PATCH (validated on the merged result); on error `self` is unchanged.
    pub fn patch(&mut self, d: Draft) -> Result<(), ErrorReply> {
        let start = d.start.unwrap_or_else(|| self.start.clone());
        let end = d.end.unwrap_or_else(|| self.end.clone());
        let all_day = d.is_all_day.unwrap_or(self.is_all_day);
        validate_times(&start, &end, all_day)?;
        self.start = start;
        self.end = end;
        self.is_all_day = all_day;
        if let Some(s) = d.subject {
            self.subject = s;
        }
        if let Some((html, content)) = d.body {
            self.body_html = html;
            self.body_content = content;
        }
        for (k, v) in d.props {
            // Once an online meeting, always an online meeting (GRAPH.md §2.2).
            if k == "isOnlineMeeting" && self.props.get(&k) == Some(&json!(true)) {
                continue;
            }
            self.props.insert(k, v);
        }
        self.ext = merge_ext(std::mem::take(&mut self.ext), d.ext);
        // transactionId cannot be changed by an update (GRAPH.md §2.5): ignored.
        self.change_key = new_change_key();
        self.modified = Timestamp::now();
        Ok(())
    }

    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.change_key)
    }

    /// `If-Match` check: `*`, `W/"ck"`, `"ck"` or `ck`.
    pub fn matches_etag(&self, if_match: &str) -> bool {
        if_match.split(',').any(|tag| {
            let tag = tag.trim();
            let tag = tag.strip_prefix("W/").unwrap_or(tag);
            tag == "*" || tag.trim_matches('"') == self.change_key
        })
    }

    pub fn ext_value(&self, normalized_id: &str) -> Option<&str> {
        self.ext
            .iter()
            .find(|p| p.key == normalized_id)
            .map(|p| p.value.as_str())
    }

    fn body_text(&self) -> String {
        if self.body_html {
            strip_html(&self.body_content)
        } else {
            self.body_content.clone()
        }
    }

    fn body_html(&self) -> String {
        if self.body_html {
            if self.body_content.to_ascii_lowercase().contains("<html") {
                self.body_content.clone()
            } else {
                wrap_html(&self.body_content)
            }
        } else if self.body_content.is_empty() {
            String::new()
        } else {
            wrap_html(&util::html_escape(&self.body_content).replace('\n', "<br>\r\n"))
        }
    }

    fn render_time(&self, t: &EventTime, opts: &RenderOpts) -> Value {
        if self.is_all_day {
            // All-day events come back midnight-to-midnight whatever the zone (GRAPH.md §2.4).
            let label = opts.tz.map_or("UTC", |z| z.name);
            return json!({"dateTime": util::civil7(t.local), "timeZone": label});
        }
        let zone = opts.tz.unwrap_or_else(timezones::utc);
        json!({"dateTime": util::civil7(zone.tz.to_datetime(t.instant)), "timeZone": zone.name})
    }

    /// The event in Graph's response shape.
    pub fn render(&self, opts: &RenderOpts) -> Value {
        let mut m = Map::new();
        if let Some(ctx) = &opts.context {
            m.insert("@odata.context".into(), json!(ctx));
        }
        m.insert("@odata.etag".into(), json!(self.etag()));
        m.insert("id".into(), json!(self.id));
        let wanted = |name: &str| opts.select.is_none_or(|s| s.iter().any(|x| x == name));
        let mut put = |name: &str, v: Value| {
            if wanted(name) {
                m.insert(name.into(), v);
            }
        };
        let p = |name: &str| self.props.get(name).cloned().unwrap_or(Value::Null);
        put(
            "createdDateTime",
            json!(util::graph_timestamp(self.created)),
        );
        put(
            "lastModifiedDateTime",
            json!(util::graph_timestamp(self.modified)),
        );
        put("changeKey", json!(self.change_key));
        put("categories", p("categories"));
        if let Some(tx) = &self.transaction_id {
            put("transactionId", json!(tx));
        }
        put("originalStartTimeZone", json!(self.start.zone.name));
        put("originalEndTimeZone", json!(self.end.zone.name));
        put("iCalUId", json!(self.ical_uid));
        put(
            "reminderMinutesBeforeStart",
            p("reminderMinutesBeforeStart"),
        );
        put("isReminderOn", p("isReminderOn"));
        put("hasAttachments", json!(false));
        put("subject", json!(self.subject));
        let text = self.body_text();
        let preview: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(255)
            .collect();
        put("bodyPreview", json!(preview));
        put("importance", p("importance"));
        put("sensitivity", p("sensitivity"));
        put("isAllDay", json!(self.is_all_day));
        put("isCancelled", json!(false));
        put("isOrganizer", json!(true));
        put("responseRequested", p("responseRequested"));
        put("seriesMasterId", Value::Null);
        put("showAs", p("showAs"));
        let kind = if self.props.get("recurrence").is_some_and(|r| !r.is_null()) {
            "seriesMaster"
        } else {
            "singleInstance"
        };
        put("type", json!(kind));
        put(
            "webLink",
            json!(format!(
                "https://outlook.office365.com/owa/?itemid={}&exvsurl=1&path=/calendar/item",
                util::percent_encode(&self.id)
            )),
        );
        let online = self.props.get("isOnlineMeeting") == Some(&json!(true));
        let join_url = format!(
            "https://teams.microsoft.com/l/meetup-join/emulator/{}",
            util::percent_encode(&self.ical_uid)
        );
        put("onlineMeetingUrl", Value::Null);
        put("isOnlineMeeting", json!(online));
        put("onlineMeetingProvider", p("onlineMeetingProvider"));
        put("allowNewTimeProposals", p("allowNewTimeProposals"));
        put("isDraft", json!(false));
        put("hideAttendees", p("hideAttendees"));
        put(
            "responseStatus",
            json!({"response": "organizer", "time": "0001-01-01T00:00:00Z"}),
        );
        let body = if opts.text_body {
            json!({"contentType": "text", "content": text})
        } else {
            json!({"contentType": "html", "content": self.body_html()})
        };
        put("body", body);
        put("start", self.render_time(&self.start, opts));
        put("end", self.render_time(&self.end, opts));
        put("location", p("location"));
        put("locations", p("locations"));
        put("recurrence", p("recurrence"));
        put("attendees", p("attendees"));
        put("organizer", self.organizer.clone());
        put(
            "onlineMeeting",
            if online {
                json!({"joinUrl": join_url})
            } else {
                Value::Null
            },
        );
        let ext: Vec<Value> = match &opts.ext {
            ExtMode::None => Vec::new(),
            ExtMode::All => self
                .ext
                .iter()
                .map(|p| json!({"id": p.id, "value": p.value}))
                .collect(),
            ExtMode::Only(want) => self
                .ext
                .iter()
                .filter(|p| &p.key == want)
                .map(|p| json!({"id": p.id, "value": p.value}))
                .collect(),
        };
        if !ext.is_empty() {
            m.insert("singleValueExtendedProperties".into(), Value::Array(ext));
        }
        Value::Object(m)
    }
}

/// Sets/overwrites extended properties by (normalised) id; others stay.
fn merge_ext(mut current: Vec<ExtProp>, new: Vec<(String, String)>) -> Vec<ExtProp> {
    for (id, value) in new {
        // parse_input only accepts ids that normalise.
        let key = normalize_ext_id(&id).unwrap_or_else(|| id.clone());
        let prop = ExtProp { id, key, value };
        match current.iter_mut().find(|p| p.key == prop.key) {
            Some(slot) => *slot = prop,
            None => current.push(prop),
        }
    }
    current
}

fn wrap_html(inner: &str) -> String {
    format!(
        "<html>\r\n<head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\r\n</head>\r\n<body>\r\n{inner}\r\n</body>\r\n</html>\r\n"
    )
}

/// Crude HTML → text for `Prefer: outlook.body-content-type="text"` and `bodyPreview`.
fn strip_html(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let body = match (lower.find("<body"), lower.rfind("</body>")) {
        (Some(a), Some(b)) if a < b => {
            let open_end = html[a..].find('>').map_or(a, |i| a + i + 1);
            &html[open_end.min(b)..b]
        }
        _ => html,
    };
    let mut body = body.replace("\r\n", "\n");
    for br in ["<br>", "<br/>", "<br />"] {
        body = body.replace(&format!("{br}\n"), "\n").replace(br, "\n");
    }
    let mut out = String::with_capacity(body.len());
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ext_ids_normalise_all_but_the_name() {
        let a =
            normalize_ext_id("String {66F5A359-4659-4830-9070-00047EC6AC6E} Name Color").unwrap();
        let b =
            normalize_ext_id("string {66f5a359-4659-4830-9070-00047ec6ac6e} name Color").unwrap();
        let c =
            normalize_ext_id("String {66f5a359-4659-4830-9070-00047ec6ac6e} Name color").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(normalize_ext_id("String 0x4001001E").is_some());
        assert!(
            normalize_ext_id("String {66f5a359-4659-4830-9070-00047ec6ac6e} Id 0x8012").is_some()
        );
        assert!(normalize_ext_id("Color").is_none());
    }

    #[test]
    fn ids_contain_url_unsafe_characters() {
        let id = new_event_id("3e9d2c1b-7a6f-4b5e-9d8c-2a1b0c9d8e7f", 1, true);
        assert!(id.starts_with("AAMkA"), "{id}");
        assert!(
            id.contains('/') && id.contains('+') && id.ends_with('='),
            "{id}"
        );
        let safe = new_event_id("3e9d2c1b-7a6f-4b5e-9d8c-2a1b0c9d8e7f", 1, false);
        assert!(!safe.contains('/') && !safe.contains('+'));
    }

    #[test]
    fn html_round_trip() {
        let html = wrap_html("a &amp; b<br>\r\nc");
        assert_eq!(strip_html(&html), "a & b\nc");
    }
}
