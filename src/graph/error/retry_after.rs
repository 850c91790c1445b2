//! `Retry-After`, as Graph sends it: decimal seconds or an HTTP-date.

use std::time::Duration;

/// `Retry-After` as decimal seconds (`"10"`, `"2.128"`) or an HTTP-date; `None` if absent or
/// unparsable; a negative number or a date in the past gives zero.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let v = value.trim();
    if v.is_empty() {
        return None;
    }
    if let Some(d) = parse_decimal_seconds(v) {
        return Some(d);
    }
    let at = parse_http_date(v)?;
    let secs = at.as_nanosecond() - now.as_nanosecond();
    if secs <= 0 {
        return Some(Duration::ZERO);
    }
    Some(Duration::from_nanos(u64::try_from(secs).ok()?))
}

/// `[+-]digits[.digits]`, exactly (no float rounding, no exponent, no `inf`/`NaN`).
fn parse_decimal_seconds(v: &str) -> Option<Duration> {
    let (negative, rest) = match v.as_bytes().first()? {
        b'-' => (true, &v[1..]),
        b'+' => (false, &v[1..]),
        _ => (false, v),
    };
    let (int, frac) = match rest.split_once('.') {
        Some((i, f)) => (i, f),
        None => (rest, ""),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    if !int.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if negative {
        return Some(Duration::ZERO);
    }
    let secs: u64 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut nanos: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        nanos += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    Some(Duration::new(secs, nanos))
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), RFC 850 (`Sunday, 06-Nov-94 08:49:37 GMT`)
/// or asctime (`Sun Nov  6 08:49:37 1994`), RFC 9110 §5.6.7.
fn parse_http_date(v: &str) -> Option<jiff::Timestamp> {
    static RFC2822: jiff::fmt::rfc2822::DateTimeParser = jiff::fmt::rfc2822::DateTimeParser::new();
    if let Ok(ts) = RFC2822.parse_timestamp(v) {
        return Some(ts);
    }
    let utc = |format: &str, input: &str| {
        jiff::fmt::strtime::parse(format, format!("{input} +0000"))
            .ok()?
            .to_timestamp()
            .ok()
    };
    if let Some(rest) = v.strip_suffix(" GMT")
        && let Some(ts) = utc("%A, %d-%b-%y %H:%M:%S %z", rest)
    {
        return Some(ts);
    }
    // asctime pads the day with a space; normalise runs of spaces for the parser.
    let collapsed = v.split_whitespace().collect::<Vec<_>>().join(" ");
    utc("%a %b %d %H:%M:%S %Y %z", &collapsed)
}
