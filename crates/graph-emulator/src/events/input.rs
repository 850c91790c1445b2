//! A POST/PATCH body checked as Graph checks it: known properties, their types and enumerations,
//! times in accepted zones, locations, attendees, recurrence, extended properties; the writable
//! fields it sets ([`Draft`]).

use jiff::civil::DateTime;
use serde_json::{Map, Value, json};

use super::EventTime;
use crate::errors::{ErrorReply, wire};
use crate::timezones;
use crate::{Settings, util};

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

pub(super) fn empty_location() -> Value {
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
    pub(super) subject: Option<String>,
    pub(super) body: Option<(bool, String)>,
    pub(super) start: Option<EventTime>,
    pub(super) end: Option<EventTime>,
    pub(super) is_all_day: Option<bool>,
    pub(super) props: Map<String, Value>,
    pub(super) ext: Vec<(String, String)>,
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
            "location" => location = Some(canonical_location(v)?),
            "locations" => locations = Some(location_list(prop, v)?),
            _ => d.set(prop, key, v, settings)?,
        }
    }
    d.mirror_locations(location, locations);
    Ok(d)
}

/// `locations`: an array of locations (or null, none).
fn location_list(prop: &str, v: &Value) -> Result<Value, ErrorReply> {
    let list = match v {
        Value::Null => Vec::new(),
        Value::Array(a) => a
            .iter()
            .map(canonical_location)
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(type_error(prop, "StartArray", other)),
    };
    Ok(Value::Array(list))
}

impl Draft {
    /// Sets the writable property `prop` (written `key` in the body) from `v`, checked; refuses
    /// a property that cannot be set.
    fn set(
        &mut self,
        prop: &str,
        key: &str,
        v: &Value,
        settings: &Settings,
    ) -> Result<(), ErrorReply> {
        let d = self;
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
        Ok(())
    }

    /// `location` and `locations` mirror each other; setting `location` replaces `locations`.
    fn mirror_locations(&mut self, location: Option<Value>, locations: Option<Value>) {
        match (location, locations) {
            (Some(loc), _) => {
                let list = if loc["displayName"].as_str().unwrap_or("").is_empty() {
                    json!([])
                } else {
                    json!([loc.clone()])
                };
                self.props.insert("location".into(), loc);
                self.props.insert("locations".into(), list);
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
                self.props.insert("location".into(), loc);
                self.props.insert("locations".into(), Value::Array(list));
            }
            _ => {}
        }
    }
}

pub(super) fn validate_times(
    start: &EventTime,
    end: &EventTime,
    all_day: bool,
) -> Result<(), ErrorReply> {
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
