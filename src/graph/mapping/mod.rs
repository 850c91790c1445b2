//! A cyzen schedule → the Graph `event` JSON of its Outlook copy (DESIGN.md §1, GRAPH.md §2).
//!
//! Pure: no I/O, no clock. The flush builds a create (POST) or update (PATCH) body here, finds
//! copies by their tag with [`tag_filter`] / [`tag_expand`], and derives the idempotency key of
//! a create with [`transaction_id`].
//!
//! What every copy carries:
//! - `subject`, `body` (text: the memo, a blank line, the schedule's cyzen url);
//! - `start`/`end` as `dateTimeTimeZone` with a **Windows** zone name (GRAPH.md §2.3: some IANA
//!   names are rejected), and `isAllDay`; all-day copies run from the first day 00:00 to the day
//!   after the last day 00:00 (GRAPH.md §2.4: exclusive end, both ends midnight in one zone);
//! - `location`, `sensitivity`, `showAs: busy`, `categories`;
//! - the tag: a single-value extended property holding company and schedule (GRAPH.md §2.6);
//! - never `attendees` (a copy must not send invitation mail) and never `isReminderOn` (the
//!   mailbox's own default applies).

use jiff::Timestamp;
use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::zones;
use crate::event::{Place, Schedule, Timing, Visibility};

/// The single-value extended property that tags every copy (company + schedule).
pub const TAG_PROPERTY_ID: &str =
    "String {7d3c1e2a-9b4f-4c6d-8e1a-2f5b6c7d8e90} Name cyzenScheduleTag";

/// Prefix of every tag value; the version lets a later format coexist with this one.
const TAG_PREFIX: &str = "cyzen/v1/";

/// Domain separator of the transactionId hash input; bump the version to change the encoding.
const TRANSACTION_ID_DOMAIN: &str = "cyzen-outlook-sync/transaction-id/v1";

/// The tag value of a copy: `cyzen/v1/{company}/{schedule}`.
///
/// Contract ids (`^[A-Za-z0-9._:-]{1,64}$`) contain no `/`, so the value is unambiguous and
/// [`parse_tag`] inverts it. Graph matches extended-property values case-insensitively
/// (GRAPH.md §2.6), so a search by [`tag_filter`] may also return a copy of an id differing only
/// in case: compare the [`parse_tag`] of what comes back.
pub fn tag_value(company_id: &str, schedule_id: &str) -> String {
    format!("{TAG_PREFIX}{company_id}/{schedule_id}")
}

/// The `(company_id, schedule_id)` of a tag value made by [`tag_value`]; `None` for anything
/// else (another prefix or version, a missing or empty part, an extra `/`).
pub fn parse_tag(value: &str) -> Option<(String, String)> {
    let rest = value.strip_prefix(TAG_PREFIX)?;
    let (company, schedule) = rest.split_once('/')?;
    if company.is_empty() || schedule.is_empty() || schedule.contains('/') {
        return None;
    }
    Some((company.to_owned(), schedule.to_owned()))
}

/// Deterministic transactionId: company, schedule, mailbox (lowercased), and the revision that
/// first tried to create the copy.
///
/// SHA-256 of `"cyzen-outlook-sync/transaction-id/v1" 0x1F company 0x1F schedule 0x1F mailbox
/// 0x1F revision` (revision in decimal; none of the parts can contain 0x1F), whose first 16
/// bytes are shown as a lowercase 8-4-4-4-12 UUID with the version and variant bits of an RFC
/// 9562 version 8 (custom) UUID set, so it is also a well-formed GUID.
pub fn transaction_id(company_id: &str, schedule_id: &str, mailbox: &str, revision: u64) -> String {
    // The same spelling as every key (`tenants::mailbox_key`): linked addresses are ASCII.
    let mailbox = mailbox.trim().to_ascii_lowercase();
    let revision = revision.to_string();
    let mut hash = Sha256::new();
    for (i, part) in [
        TRANSACTION_ID_DOMAIN,
        company_id,
        schedule_id,
        &mailbox,
        &revision,
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 {
            hash.update([0x1f]);
        }
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}

/// Settings of the mapping that come from configuration.
#[derive(Debug, Clone, Copy)]
pub struct MappingOptions<'a> {
    /// The category every copy gets (default `cyzen`); empty means no category.
    pub category: &'a str,
    /// Used for all-day schedules without a zone and for zones with no Windows name.
    pub default_zone: &'a TimeZone,
}

/// The full event body for a POST (create): includes transactionId and the tag property.
pub fn create_body(
    s: &Schedule,
    company_id: &str,
    schedule_id: &str,
    transaction_id: &str,
    opts: &MappingOptions,
) -> Value {
    let mut body = event_body(s, company_id, schedule_id, opts, Write::Create);
    body.insert("transactionId".into(), Value::from(transaction_id));
    Value::Object(body)
}

/// The body for a PATCH (update): same fields, no transactionId. (includes the tag property so a
/// copy whose tag was lost regains it)
pub fn update_body(
    s: &Schedule,
    company_id: &str,
    schedule_id: &str,
    opts: &MappingOptions,
) -> Value {
    Value::Object(event_body(s, company_id, schedule_id, opts, Write::Update))
}

/// The `$filter` query value that finds copies by tag:
/// `singleValueExtendedProperties/Any(ep: ep/id eq '<TAG_PROPERTY_ID>' and ep/value eq '<value>')`,
/// with single quotes inside values doubled (OData). Not URL-encoded: the client encodes it.
pub fn tag_filter(company_id: &str, schedule_id: &str) -> String {
    format!(
        "singleValueExtendedProperties/Any(ep: ep/id eq '{}' and ep/value eq '{}')",
        odata_string(TAG_PROPERTY_ID),
        odata_string(&tag_value(company_id, schedule_id)),
    )
}

/// `$expand` value that returns the tag:
/// `singleValueExtendedProperties($filter=id eq '<TAG_PROPERTY_ID>')`.
pub fn tag_expand() -> String {
    format!(
        "singleValueExtendedProperties($filter=id eq '{}')",
        odata_string(TAG_PROPERTY_ID)
    )
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Create,
    Update,
}

fn event_body(
    s: &Schedule,
    company_id: &str,
    schedule_id: &str,
    opts: &MappingOptions,
    write: Write,
) -> Map<String, Value> {
    let (start, end, all_day) = times(&s.timing, opts.default_zone);
    let mut body = Map::new();
    body.insert("subject".into(), Value::from(s.title.as_str()));
    body.insert(
        "body".into(),
        json!({ "contentType": "text", "content": body_text(s) }),
    );
    body.insert("start".into(), start);
    body.insert("end".into(), end);
    body.insert("isAllDay".into(), Value::from(all_day));
    match (location(s.place.as_ref()), write) {
        (Some(location), _) => {
            body.insert("location".into(), location);
        }
        // A PATCH only changes what it names: clear a place the schedule no longer has.
        (None, Write::Update) => {
            body.insert("location".into(), json!({ "displayName": "" }));
        }
        (None, Write::Create) => {}
    }
    let sensitivity = match s.visibility {
        Visibility::Private => "private",
        Visibility::Public => "normal",
    };
    body.insert("sensitivity".into(), Value::from(sensitivity));
    body.insert("showAs".into(), Value::from("busy"));
    let categories: &[&str] = match opts.category {
        "" => &[],
        category => &[category],
    };
    body.insert("categories".into(), json!(categories));
    body.insert(
        "singleValueExtendedProperties".into(),
        json!([{ "id": TAG_PROPERTY_ID, "value": tag_value(company_id, schedule_id) }]),
    );
    body
}

/// The memo, a blank line, then the cyzen url; just the url when there is no memo.
fn body_text(s: &Schedule) -> String {
    if s.memo.is_empty() {
        s.url.clone()
    } else {
        format!("{}\n\n{}", s.memo, s.url)
    }
}

/// `location` for a place; `None` when there is no place (or one with neither name nor address).
fn location(place: Option<&Place>) -> Option<Value> {
    let place = place?;
    let display_name = if place.name.is_empty() {
        &place.address
    } else {
        &place.name
    };
    if display_name.is_empty() {
        return None;
    }
    let mut location = json!({ "displayName": display_name, "locationType": "default" });
    if !place.address.is_empty() {
        location["address"] = json!({ "street": place.address });
    }
    Some(location)
}

/// `(start, end, isAllDay)` as Graph `dateTimeTimeZone` values.
fn times(timing: &Timing, default_zone: &TimeZone) -> (Value, Value, bool) {
    match timing {
        Timing::Timed {
            start,
            end,
            time_zone,
        } => {
            let (zone, windows) = wire_zone(time_zone, default_zone);
            let at = |ts: &Timestamp| {
                let local = zone.to_datetime(*ts);
                // A wall-clock time the zone passes twice (the hour repeated when DST ends)
                // names no single instant: send that end in UTC, which keeps the instant.
                if zone.to_ambiguous_timestamp(local).is_ambiguous() {
                    date_time_time_zone(TimeZone::UTC.to_datetime(*ts), "UTC")
                } else {
                    date_time_time_zone(local, windows)
                }
            };
            (at(start), at(end), false)
        }
        Timing::AllDay {
            first,
            last,
            time_zone,
        } => {
            // The dates are cyzen's calendar days whatever the zone; the zone only names the
            // midnights, and both ends must be in the same one (GRAPH.md §2.4).
            let zone = time_zone.as_ref().unwrap_or(default_zone);
            let (_, windows) = wire_zone(zone, default_zone);
            let midnight = |d: Date| {
                date_time_time_zone(d.to_datetime(jiff::civil::Time::midnight()), windows)
            };
            // The day after the last one; a last day of 9999-12-31 (never a real schedule)
            // keeps itself rather than failing.
            let after_last = last.tomorrow().unwrap_or(*last);
            (midnight(*first), midnight(after_last), true)
        }
    }
}

/// The zone to express a time in and its Windows name: the schedule's own zone when CLDR maps
/// it, else the default zone, else UTC.
fn wire_zone(zone: &TimeZone, default_zone: &TimeZone) -> (TimeZone, &'static str) {
    let windows = |tz: &TimeZone| tz.iana_name().and_then(zones::windows_name);
    if let Some(name) = windows(zone) {
        (zone.clone(), name)
    } else if let Some(name) = windows(default_zone) {
        (default_zone.clone(), name)
    } else {
        (TimeZone::UTC, "UTC")
    }
}

/// `{"dateTime": "YYYY-MM-DDTHH:MM:SS", "timeZone": windows}`: wall clock, no offset, no fraction.
fn date_time_time_zone(wall: DateTime, windows: &str) -> Value {
    json!({
        "dateTime": wall.strftime("%Y-%m-%dT%H:%M:%S").to_string(),
        "timeZone": windows,
    })
}

/// An OData string literal's content: single quotes doubled.
fn odata_string(s: &str) -> String {
    s.replace('\'', "''")
}

#[cfg(test)]
mod tests;
