//! Phase 2 of decoding: the rules a JSON Schema cannot express (`x-semantic-rules`): end after
//! start, a known zone, a bounded duration; the text that reaches Outlook cleaned (`text`).

use jiff::tz::TimeZone;

use super::dates::{parse_date, parse_timestamp};
use super::error::{ContractError, Reason, err, shown};
use super::text;
use super::{Place, Schedule, ScheduleEvent, Timing, WireEvent, WireSchedule};

const MAX_TIMED_DAYS: i64 = 31;
const MAX_ALL_DAY_DAYS: i32 = 366;

/// Phase 2: the rules a JSON Schema cannot express.
pub(super) fn check_semantics(w: WireEvent) -> Result<ScheduleEvent, ContractError> {
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
            format!(
                "{} is not a known IANA time zone (e.g. Asia/Tokyo, America/New_York)",
                shown(name)
            ),
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
                // Quoted as the event wrote them (with their offset), not converted to UTC,
                // so the reader finds them in the message.
                format!(
                    "{} is not after start {}",
                    s.end.as_deref().unwrap_or_default(),
                    s.start.as_deref().unwrap_or_default()
                ),
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
    // What reaches Outlook holds no control or invisible formatting character (see `text`).
    let place = s
        .place
        .map(|p| Place {
            name: text::one_line(p.name),
            address: text::one_line(p.address),
        })
        .filter(|p| !(p.name.is_empty() && p.address.is_empty()));
    Ok(Schedule {
        title: text::one_line(s.title),
        memo: text::multi_line(s.memo),
        timing,
        place,
        owner_user_id: s.owner_user_id,
        participant_user_ids: s.participant_user_ids,
        visibility: s.visibility,
        url: text::one_line(s.url),
        created_at: parse_timestamp(&s.created_at).expect("phase 1"),
        updated_at: parse_timestamp(&s.updated_at).expect("phase 1"),
    })
}
