//! Dates and times as the contract writes them: RFC 3339 instants with an offset and
//! `YYYY-MM-DD` dates, exactly as the schema's patterns say, in the supported years.

use jiff::Timestamp;
use jiff::civil::Date;

use super::error::{ContractError, Reason, err, shown};

/// The years every date and time of a message must be written in, both included. Outlook on the
/// desktop shows 1601-04-01 to 4500-08-31 and treats dates outside 1601–4500 as invalid
/// (MS-OXCICAL §2.2.31); Graph documents no range at all; Pocket Outlook's calendar ran from
/// 1899-12-30 to 2999-12-31. 1900–2999 lies inside all of them with more than a day to spare on
/// each side (a time zone moves a date by at most one), and holds every real schedule.
pub const FIRST_YEAR: u16 = 1900;
pub const LAST_YEAR: u16 = 2999;

/// A value that starts with a year (`YYYY-`) outside [`FIRST_YEAR`]..=[`LAST_YEAR`] is out of
/// range, whatever follows: the year is checked first.
fn check_year(field: &str, v: &str) -> Result<(), ContractError> {
    let b = v.as_bytes();
    if b.len() < 5 || !b[..4].iter().all(u8::is_ascii_digit) || b[4] != b'-' {
        return Ok(());
    }
    let year: u16 = v[..4].parse().unwrap_or(0);
    if (FIRST_YEAR..=LAST_YEAR).contains(&year) {
        return Ok(());
    }
    Err(err(
        Reason::OutOfRange,
        field,
        format!(
            "{} is in the year {year}; dates and times from {FIRST_YEAR} to {LAST_YEAR} are supported (the range every Outlook calendar shows)",
            shown(v)
        ),
    ))
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, as the schema's pattern, in the supported years,
/// and a real instant.
pub(super) fn check_timestamp(field: &str, v: &str) -> Result<(), ContractError> {
    check_year(field, v)?;
    parse_timestamp(v).map(|_| ()).ok_or_else(|| {
        err(
            Reason::InvalidValue,
            field,
            format!(
                "{} is not an RFC 3339 time with an offset, e.g. 2026-11-27T09:00:00+09:00",
                shown(v)
            ),
        )
    })
}

fn two_digits(b: &[u8], at: usize, max: u8) -> bool {
    match b.get(at..at + 2) {
        Some([t, u]) if t.is_ascii_digit() && u.is_ascii_digit() => {
            (t - b'0') * 10 + (u - b'0') <= max
        }
        _ => false,
    }
}

/// `YYYY-MM-DD` with a month 01–12 and a day 01–31 (the calendar decides the rest).
fn date_shape(b: &[u8]) -> bool {
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && two_digits(b, 5, 12)
        && &b[5..7] != b"00"
        && b[7] == b'-'
        && two_digits(b, 8, 31)
        && &b[8..10] != b"00"
}

pub(super) fn parse_timestamp(v: &str) -> Option<Timestamp> {
    let b = v.as_bytes();
    let shape = b.len() >= 20
        && date_shape(b)
        && b[10] == b'T'
        && two_digits(b, 11, 23)
        && b[13] == b':'
        && two_digits(b, 14, 59)
        && b[16] == b':'
        && two_digits(b, 17, 59);
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
        [b'+' | b'-', _, _, b':', _, _] => two_digits(b, i + 1, 23) && two_digits(b, i + 4, 59),
        _ => false,
    };
    if !offset_ok {
        return None;
    }
    v.parse::<Timestamp>().ok()
}

pub(super) fn check_date(field: &str, v: &str) -> Result<(), ContractError> {
    check_year(field, v)?;
    parse_date(v).map(|_| ()).ok_or_else(|| {
        err(
            Reason::InvalidValue,
            field,
            format!("{} is not a date in the form YYYY-MM-DD", shown(v)),
        )
    })
}

pub(super) fn parse_date(v: &str) -> Option<Date> {
    if v.len() != 10 || !date_shape(v.as_bytes()) {
        return None;
    }
    v.parse::<Date>().ok()
}
