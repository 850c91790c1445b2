//! Small helpers: time formats Graph and Entra use, HMAC, percent-encoding, ids.

use base64::Engine;
use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use rand::RngCore;

pub(crate) fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

pub(crate) fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .ok()
}

pub(crate) fn b64(data: &[u8], url_unsafe: bool) -> String {
    if url_unsafe {
        base64::engine::general_purpose::STANDARD.encode(data)
    } else {
        base64::engine::general_purpose::URL_SAFE.encode(data)
    }
}

/// HMAC-SHA256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..64 {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rng().fill_bytes(&mut b);
    b
}

pub(crate) fn new_guid() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

pub(crate) fn is_guid(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok()
}

/// `%XX` decoding for a path segment (`+` stays `+`). `None` for invalid escapes or UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_string());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986 unreserved characters and `$`.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'$') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Query-string pairs, form-decoded (`+` = space), in order.
pub(crate) fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    match query {
        Some(q) => url::form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
        None => Vec::new(),
    }
}

/// Builds a query string (`%20` for spaces).
pub(crate) fn build_query(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Civil date-time with 7 fractional digits: `2017-04-15T11:00:00.0000000`.
pub(crate) fn civil7(dt: DateTime) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.subsec_nanosecond() / 100
    )
}

/// UTC with 7 fractional digits and `Z`: `2017-04-15T03:00:50.7579581Z`.
pub(crate) fn graph_timestamp(ts: Timestamp) -> String {
    format!("{}Z", civil7(TimeZone::UTC.to_datetime(ts)))
}

/// `innerError.date`: `2021-08-23T06:12:16` (UTC, no zone designator).
pub(crate) fn inner_error_date(ts: Timestamp) -> String {
    let dt = TimeZone::UTC.to_datetime(ts);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// Entra's `timestamp`: `2016-01-09 02:02:12Z`.
pub(crate) fn aad_timestamp(ts: Timestamp) -> String {
    let dt = TimeZone::UTC.to_datetime(ts);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// `Retry-After` value: whole seconds rounded up, or up to 3 decimals when `fractional`.
pub(crate) fn format_retry_after(secs: f64, fractional: bool) -> String {
    let secs = if secs.is_finite() { secs.max(0.0) } else { 1.0 };
    if fractional {
        let s = format!("{secs:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s.is_empty() {
            "0".into()
        } else {
            s.to_string()
        }
    } else {
        format!("{}", secs.ceil() as u64)
    }
}

/// Minimal HTML escaping for text bodies.
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        let ts: Timestamp = "2017-04-15T03:00:50.75795817Z".parse().unwrap();
        assert_eq!(graph_timestamp(ts), "2017-04-15T03:00:50.7579581Z");
        assert_eq!(inner_error_date(ts), "2017-04-15T03:00:50");
        assert_eq!(aad_timestamp(ts), "2017-04-15 03:00:50Z");
        assert_eq!(format_retry_after(2.128, true), "2.128");
        assert_eq!(format_retry_after(0.5, true), "0.5");
        assert_eq!(format_retry_after(1.0, true), "1");
        assert_eq!(format_retry_after(1.2, false), "2");
        assert_eq!(percent_decode("a%2Fb+c").unwrap(), "a/b+c");
        assert_eq!(percent_encode("a b/'"), "a%20b%2F%27");
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

/// Request headers (names compared case-insensitively).
#[derive(Debug, Clone, Default)]
pub(crate) struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn set(&mut self, name: &str, value: impl Into<String>) {
        self.0.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.0.push((name.to_string(), value.into()));
    }
    pub fn from_http(map: &axum::http::HeaderMap) -> Headers {
        Headers(
            map.iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect(),
        )
    }
}
