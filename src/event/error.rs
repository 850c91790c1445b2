//! Why a message is refused: a stable [`Reason`] and a [`ContractError`] naming the field and
//! what is wrong; values quoted in a problem are cut short.

use std::fmt;

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

pub(super) fn err(
    reason: Reason,
    field: impl Into<String>,
    problem: impl Into<String>,
) -> ContractError {
    ContractError {
        reason,
        field: field.into(),
        problem: problem.into(),
    }
}

/// A value quoted in a problem: whole when short, else its first 40 characters and its length,
/// so a dead letter's `x-error` stays small whatever a publisher sent.
pub(super) fn shown(v: &str) -> String {
    const KEEP: usize = 40;
    match v.char_indices().nth(KEEP) {
        None => format!("{v:?}"),
        Some((cut, _)) => format!("{:?}… ({} characters)", &v[..cut], v.chars().count()),
    }
}

/// A JSON value in a message: numbers, booleans and null as they are, anything else quoted and
/// cut as [`shown`] does.
pub(super) fn shown_json(v: &serde_json::Value) -> String {
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
