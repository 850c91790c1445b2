//! Which operation a path names (`/users/{x}/calendar/events/{id}`, `/$batch`, `/me`, …) and
//! the application roles each needs.

use crate::Settings;
use crate::errors::ErrorReply;
use crate::util;

const CAL_READ_ROLES: &[&str] = &["Calendars.Read", "Calendars.ReadWrite"];
const CAL_WRITE_ROLES: &[&str] = &["Calendars.ReadWrite"];
const MAILBOX_SETTINGS_ROLES: &[&str] = &["MailboxSettings.Read", "MailboxSettings.ReadWrite"];
const MAILBOX_SETTINGS_LENIENT_ROLES: &[&str] = &[
    "MailboxSettings.Read",
    "MailboxSettings.ReadWrite",
    "Calendars.Read",
    "Calendars.ReadWrite",
];

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Op {
    Calendar(Option<String>),
    Calendars,
    MailboxSettings,
    Events(Option<String>),
    Event(Option<String>, String),
    CalendarView(Option<String>),
    /// `calendarView/delta` (`delta.rs`).
    CalendarViewDelta(Option<String>),
}

impl Op {
    pub(super) fn is_event_op(&self) -> bool {
        matches!(
            self,
            Op::Events(_) | Op::Event(..) | Op::CalendarView(_) | Op::CalendarViewDelta(_)
        )
    }
    pub(super) fn is_event_write(&self, method: &str) -> bool {
        match self {
            Op::Events(_) => method == "POST",
            Op::Event(..) => matches!(method, "PATCH" | "DELETE" | "POST" | "PUT"),
            _ => false,
        }
    }
    pub(super) fn is_create(&self, method: &str) -> bool {
        matches!(self, Op::Events(_)) && method == "POST"
    }
    pub(super) fn calendar_id(&self) -> Option<&str> {
        match self {
            Op::Calendar(c)
            | Op::Events(c)
            | Op::Event(c, _)
            | Op::CalendarView(c)
            | Op::CalendarViewDelta(c) => c.as_deref(),
            _ => None,
        }
    }
    pub(super) fn roles(&self, method: &str, settings: &Settings) -> &'static [&'static str] {
        match self {
            Op::MailboxSettings if settings.mailbox_settings_accepts_calendar_roles => {
                MAILBOX_SETTINGS_LENIENT_ROLES
            }
            Op::MailboxSettings => MAILBOX_SETTINGS_ROLES,
            _ if method == "GET" => CAL_READ_ROLES,
            _ => CAL_WRITE_ROLES,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Route {
    Me,
    Batch,
    Users,
    User(String),
    Mailbox(String, Op),
}

fn segment_not_found(seg: &str) -> ErrorReply {
    ErrorReply::bad_request(format!("Resource not found for the segment '{seg}'."))
}

pub(super) fn parse_route(path: &str) -> Result<Route, ErrorReply> {
    let rest = path.strip_prefix("/v1.0").unwrap_or(path);
    let mut segs = Vec::new();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        segs.push(
            util::percent_decode(raw)
                .ok_or_else(|| ErrorReply::bad_request("Invalid URL encoding."))?,
        );
    }
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let Some(first) = s.first() else {
        return Err(ErrorReply::bad_request("Invalid request."));
    };
    if eq(first, "me") {
        return Ok(Route::Me);
    }
    if eq(first, "$batch") && s.len() == 1 {
        return Ok(Route::Batch);
    }
    if !eq(first, "users") {
        return Err(segment_not_found(first));
    }
    let Some(user) = s.get(1) else {
        return Ok(Route::Users);
    };
    let user = user.to_string();
    let rest = &s[2..];
    let op = match rest {
        [] => return Ok(Route::User(user)),
        [c] if eq(c, "calendar") => Op::Calendar(None),
        [c] if eq(c, "calendars") => Op::Calendars,
        [c, id] if eq(c, "calendars") => Op::Calendar(Some(id.to_string())),
        [m] if eq(m, "mailboxSettings") => Op::MailboxSettings,
        [e] if eq(e, "events") => Op::Events(None),
        [c, e] if eq(c, "calendar") && eq(e, "events") => Op::Events(None),
        [c, cid, e] if eq(c, "calendars") && eq(e, "events") => Op::Events(Some(cid.to_string())),
        [e, id] if eq(e, "events") => Op::Event(None, id.to_string()),
        [c, e, id] if eq(c, "calendar") && eq(e, "events") => Op::Event(None, id.to_string()),
        [c, cid, e, id] if eq(c, "calendars") && eq(e, "events") => {
            Op::Event(Some(cid.to_string()), id.to_string())
        }
        [v] if eq(v, "calendarView") => Op::CalendarView(None),
        [c, v] if eq(c, "calendar") && eq(v, "calendarView") => Op::CalendarView(None),
        [c, cid, v] if eq(c, "calendars") && eq(v, "calendarView") => {
            Op::CalendarView(Some(cid.to_string()))
        }
        [v, d] if eq(v, "calendarView") && eq(d, "delta") => Op::CalendarViewDelta(None),
        [c, v, d] if eq(c, "calendar") && eq(v, "calendarView") && eq(d, "delta") => {
            Op::CalendarViewDelta(None)
        }
        [c, cid, v, d] if eq(c, "calendars") && eq(v, "calendarView") && eq(d, "delta") => {
            Op::CalendarViewDelta(Some(cid.to_string()))
        }
        [other, ..] => {
            let known = [
                "calendar",
                "calendars",
                "events",
                "calendarView",
                "mailboxSettings",
            ];
            let bad = if known.iter().any(|k| eq(k, other)) {
                rest.last().copied().unwrap_or(other)
            } else {
                other
            };
            return Err(segment_not_found(bad));
        }
    };
    Ok(Route::Mailbox(user, op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |p: &str| parse_route(p);
        assert_eq!(
            r("/v1.0/users/a%40b.c").unwrap(),
            Route::User("a@b.c".into())
        );
        assert_eq!(
            r("/v1.0/users/x/calendar/events/AA%2FB+C%3D").unwrap(),
            Route::Mailbox("x".into(), Op::Event(None, "AA/B+C=".into()))
        );
        assert_eq!(
            r("/v1.0/Users/x/calendarView").unwrap(),
            Route::Mailbox("x".into(), Op::CalendarView(None))
        );
        assert_eq!(
            r("/v1.0/users/x/calendarView/delta").unwrap(),
            Route::Mailbox("x".into(), Op::CalendarViewDelta(None))
        );
        assert_eq!(r("/v1.0/$batch").unwrap(), Route::Batch);
        assert!(r("/v1.0/groups/x").is_err());
        assert!(r("/v1.0/users/x/messages").is_err());
    }
}
