//! The `event` resource (GRAPH.md §2.2–§2.9, §6.4): its storage form and its writes (here), the
//! validation of a request body (`input`), its rendering in Graph's response shape (`render`).

mod input;
mod render;
#[cfg(test)]
mod tests;

use jiff::Timestamp;
use jiff::civil::DateTime;
use serde_json::{Map, Value, json};

pub(crate) use self::input::{
    Draft, canonical_property, normalize_ext_id, parse_input, parse_local,
};
use self::input::{empty_location, validate_times};
use super::errors::{ErrorReply, wire};
use super::state::UserRec;
use super::timezones::Zone;
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
