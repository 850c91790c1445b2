//! The v1 event contract that cyzen services publish (`schemas/schedule-event.v1.schema.json`).
//!
//! Decoding has two phases, both pure (no I/O):
//! 1. [`decode_structure`] reads the body as JSON (UTF-8, one value, no object naming a member
//!    twice: `json`), then checks what the JSON Schema checks (shape, types, lengths, patterns,
//!    the supported years), member by member in one fixed order, so the schema and this decoder
//!    agree on every input (a test compares them on thousands of generated events);
//! 2. then the rules a JSON Schema cannot express (`x-semantic-rules` in the schema): size, end
//!    after start, known zone, bounded duration; and the text that reaches Outlook loses its
//!    control and invisible formatting characters (`text`).
//!
//! [`decode_delivery`] adds the AMQP side: the routing key must be the body's `event_type`.
//!
//! Every rejection is a [`ContractError`] naming the field and what is wrong, with a stable
//! [`Reason`] code that travels on the dead letter.

mod dates;
mod error;
mod json;
mod semantics;
mod structure;
mod text;
mod validate;

use jiff::Timestamp;
use jiff::civil::Date;
use serde::{Deserialize, Serialize};

pub use dates::{FIRST_YEAR, LAST_YEAR};
pub use error::{ContractError, Reason};
pub use structure::decode_structure;
pub use validate::{MAX_MESSAGE_BYTES, check_routing_key, decode, decode_delivery};

/// The contract version this service understands.
pub const SCHEMA_VERSION: u64 = 1;

/// The wire form of an event, exactly as published (strings where the contract has strings).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireEvent {
    pub schema_version: u64,
    pub event_id: String,
    pub event_type: EventType,
    pub occurred_at: String,
    pub company_id: String,
    pub schedule_id: String,
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<WireSchedule>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireSchedule {
    pub title: String,
    #[serde(default)]
    pub memo: String,
    pub all_day: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub place: Option<Place>,
    pub owner_user_id: String,
    pub participant_user_ids: Vec<String>,
    pub visibility: Visibility,
    pub url: String,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "schedule.created")]
    Created,
    #[serde(rename = "schedule.updated")]
    Updated,
    #[serde(rename = "schedule.deleted")]
    Deleted,
}

impl EventType {
    /// The AMQP routing key this event is published with.
    pub fn routing_key(self) -> &'static str {
        match self {
            EventType::Created => "schedule.created",
            EventType::Updated => "schedule.updated",
            EventType::Deleted => "schedule.deleted",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    Public,
    Private,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Place {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub address: String,
}

/// A validated event: every field typed and every contract rule checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleEvent {
    pub event_id: String,
    pub event_type: EventType,
    pub occurred_at: Timestamp,
    pub company_id: String,
    pub schedule_id: String,
    pub revision: u64,
    /// Present for created and updated; for deleted, the last state if the publisher sent it.
    pub schedule: Option<Schedule>,
}

impl ScheduleEvent {
    pub fn is_delete(&self) -> bool {
        self.event_type == EventType::Deleted
    }
}

/// The whole current state of a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub title: String,
    pub memo: String,
    pub timing: Timing,
    pub place: Option<Place>,
    pub owner_user_id: String,
    pub participant_user_ids: Vec<String>,
    pub visibility: Visibility,
    pub url: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Schedule {
    /// Everyone who should get a copy: the owner, then each participant, without repeats.
    pub fn participants(&self) -> Vec<&str> {
        let mut out: Vec<&str> = vec![self.owner_user_id.as_str()];
        for p in &self.participant_user_ids {
            if !out.contains(&p.as_str()) {
                out.push(p);
            }
        }
        out
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Timing {
    /// A timed schedule: two instants and the IANA zone it is shown in.
    Timed {
        start: Timestamp,
        end: Timestamp,
        time_zone: jiff::tz::TimeZone,
    },
    /// An all-day schedule: first and last day, both inclusive, as cyzen shows them, and the
    /// zone it is shown in when the publisher gave one.
    AllDay {
        first: Date,
        last: Date,
        time_zone: Option<jiff::tz::TimeZone>,
    },
}
