//! One delta round of a mailbox, under its lease: the pages of `calendarView/delta` from the
//! mailbox's cursor (or a first full round), each request paced within the mailbox's budget,
//! to the round's deltaLink. A stale cursor (410 `syncStateNotFound`) starts a full round over,
//! once per pass.

use jiff::Timestamp;
use jiff::civil::Date;
use serde_json::Value;

use super::decide::Item;
use crate::graph::client::{Credentials, GraphClient, GraphRequest, path_segment};
use crate::graph::error::GraphError;
use crate::graph::requests::{query_encode, relative_link};
use crate::store::LeaseGuard;

/// Pages of one round at most (a runaway nextLink chain stops here and fails the pass).
const MAX_PAGES: u32 = 10_000;

/// The range a pass reads: whole UTC days around today.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub from: Date,
    pub to: Date,
}

impl Range {
    /// From `days_back` before `today` to `days_ahead` after it.
    pub fn around(today: Date, days_back: u32, days_ahead: u32) -> Range {
        let span = |d: u32| jiff::Span::new().days(i64::from(d));
        Range {
            from: today.checked_sub(span(days_back)).unwrap_or(today),
            to: today.checked_add(span(days_ahead)).unwrap_or(today),
        }
    }

    /// Whether a schedule's copy falls in the range (so a full round must list it).
    pub fn covers(&self, timing: &crate::event::Timing) -> bool {
        use crate::event::Timing;
        let at = |d: Date| {
            jiff::tz::TimeZone::UTC
                .to_timestamp(d.to_datetime(jiff::civil::Time::midnight()))
                .ok()
        };
        match timing {
            Timing::Timed { start, end, .. } => match (at(self.from), at(self.to)) {
                (Some(from), Some(to)) => *start < to && *end > from,
                _ => false,
            },
            Timing::AllDay { first, last, .. } => *first < self.to && *last >= self.from,
        }
    }

    /// The first request of a full round.
    pub fn first_path(&self, mailbox: &str) -> String {
        let at = |d: Date| format!("{d}T00:00:00Z");
        format!(
            "/users/{}/calendarView/delta?startDateTime={}&endDateTime={}",
            path_segment(mailbox),
            query_encode(&at(self.from)),
            query_encode(&at(self.to)),
        )
    }
}

/// Today (UTC).
pub fn today() -> Date {
    jiff::tz::TimeZone::UTC.to_datetime(Timestamp::now()).date()
}

/// What one round read.
#[derive(Debug, Default)]
pub struct Round {
    pub items: Vec<Item>,
    /// The next round's start (relative to the Graph base URL).
    pub delta_link: String,
    pub requests: u32,
    /// The cursor was stale (410) and a full round was read instead.
    pub restarted: bool,
    /// This round read the whole range (no cursor, a new range, or a restart).
    pub full: bool,
}

/// Who is read, and how.
pub struct Reader<'a> {
    pub graph: &'a GraphClient,
    pub company: &'a str,
    pub credentials: &'a Credentials,
    pub mailbox: &'a str,
    pub page_size: u32,
}

/// A state token Graph no longer knows: start over with a full round.
pub fn is_stale_token(e: &GraphError) -> bool {
    e.status == Some(410) || e.code.eq_ignore_ascii_case("syncStateNotFound")
}

impl Reader<'_> {
    /// Reads one round from `cursor` (a deltaLink), or a full round of `range`.
    pub async fn round(
        &self,
        lease: &LeaseGuard,
        cursor: Option<&str>,
        range: Range,
    ) -> Result<Round, GraphError> {
        let first = range.first_path(self.mailbox);
        let mut round = Round {
            full: cursor.is_none(),
            ..Round::default()
        };
        let mut link = cursor.map_or_else(|| first.clone(), str::to_string);
        while round.requests < MAX_PAGES {
            lease.pace(1).await;
            round.requests += 1;
            let req = GraphRequest::get("delta", link.as_str()).with_page_size(self.page_size);
            let body = match self.graph.send(self.company, self.credentials, &req).await {
                Ok(resp) => resp.body,
                Err(e) if is_stale_token(&e) && !round.restarted => {
                    round.restarted = true;
                    round.full = true;
                    round.items.clear();
                    link = first.clone();
                    continue;
                }
                Err(e) => return Err(e),
            };
            round.items.extend(
                body.get("value")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Item::read),
            );
            let base = self.graph.base_url();
            let next = |name: &str| {
                body.get(name)
                    .and_then(Value::as_str)
                    .and_then(|l| relative_link(base, l))
            };
            if let Some(next) = next("@odata.nextLink") {
                link = next;
            } else if let Some(delta) = next("@odata.deltaLink") {
                round.delta_link = delta;
                return Ok(round);
            } else {
                return Err(GraphError::local(
                    "NoDeltaLink",
                    "a calendarView delta page had neither @odata.nextLink nor @odata.deltaLink",
                    crate::graph::error::ErrorClass::Permanent,
                ));
            }
        }
        Err(GraphError::local(
            "TooManyPages",
            "a calendarView delta round did not end within 10,000 pages",
            crate::graph::error::ErrorClass::Permanent,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_range_is_whole_utc_days_around_today_and_its_first_request_names_both_bounds() {
        let today: Date = "2026-12-03".parse().unwrap();
        let r = Range::around(today, 30, 365);
        assert_eq!(r.from.to_string(), "2026-11-03");
        assert_eq!(r.to.to_string(), "2027-12-03");
        assert_eq!(
            r.first_path("taro@x.example"),
            "/users/taro@x.example/calendarView/delta?startDateTime=2026-11-03T00%3A00%3A00Z&endDateTime=2027-12-03T00%3A00%3A00Z"
        );
    }
}
