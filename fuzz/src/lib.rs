//! What the fuzz targets run, shared by the cargo-fuzz targets (`fuzz_targets/`) and the
//! libFuzzer-free smoke test in `tests/it/bad_input.rs` (which includes this file as a module),
//! so both exercise exactly the same calls with exactly the same checks.
//!
//! Both take untrusted bytes: an event body as it comes off the work queue, and a Graph or
//! token-endpoint answer as it comes off the network. Neither may panic, whatever the input.

use std::sync::OnceLock;

use outlook_sync::event;
use outlook_sync::graph::error::{GraphError, parse_retry_after};
use outlook_sync::graph::mapping::{self, MappingOptions};
use serde_json::Value;

fn tokyo() -> &'static jiff::tz::TimeZone {
    static ZONE: OnceLock<jiff::tz::TimeZone> = OnceLock::new();
    ZONE.get_or_init(|| jiff::tz::TimeZone::get("Asia/Tokyo").expect("bundled tzdb"))
}

/// True for a character that must never reach Outlook (see `event::text`): controls (tab and
/// line feed only in `multi_line` text), bidi embeddings, overrides and isolates, and invisible
/// format characters. `char::is_control` is exactly C0, DEL and C1.
fn hidden(c: char, multi_line: bool) -> bool {
    (c.is_control() && !(multi_line && matches!(c, '\t' | '\n')))
        || matches!(
            c,
            '\u{200b}' | '\u{202a}'..='\u{202e}' | '\u{2028}' | '\u{2029}'
        )
        || matches!(c, '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206f}' | '\u{feff}')
        || matches!(c, '\u{fff9}'..='\u{fffb}' | '\u{e0000}'..='\u{e007f}')
}

/// An event body: the whole v1 contract ([`event::decode`]) and, for a valid event, what the
/// flush does next with it: the Graph create and update bodies (whose subject, location and body
/// hold no hidden character), the tag (which must parse back to the same company and schedule),
/// the transactionId and the tag filter; and its own event type as a routing key is accepted.
pub fn decode_event(data: &[u8]) {
    let structure = event::decode_structure(data);
    match event::decode(data) {
        Ok(ev) => {
            assert!(
                data.len() <= event::MAX_MESSAGE_BYTES,
                "an oversized body was accepted"
            );
            assert!(
                structure.is_ok(),
                "decode accepted what decode_structure refused"
            );
            let tag = mapping::tag_value(&ev.company_id, &ev.schedule_id);
            assert_eq!(
                mapping::parse_tag(&tag),
                Some((ev.company_id.clone(), ev.schedule_id.clone())),
                "the tag of a valid event does not parse back"
            );
            assert!(
                event::check_routing_key(ev.event_type, ev.event_type.routing_key()).is_ok(),
                "an event's own type is refused as its routing key"
            );
            let tx = mapping::transaction_id(&ev.company_id, &ev.schedule_id, "a@b.c", ev.revision);
            let _ = mapping::tag_filter(&ev.company_id, &ev.schedule_id);
            if let Some(s) = &ev.schedule {
                let opts = MappingOptions {
                    category: "cyzen",
                    default_zone: tokyo(),
                };
                let create = mapping::create_body(s, &ev.company_id, &ev.schedule_id, &tx, &opts);
                let update = mapping::update_body(s, &ev.company_id, &ev.schedule_id, &opts);
                let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                for (what, value, multi_line) in [
                    ("subject", text(&create["subject"]), false),
                    ("location", text(&create["location"]["displayName"]), false),
                    (
                        "address",
                        text(&create["location"]["address"]["street"]),
                        false,
                    ),
                    ("body", text(&create["body"]["content"]), true),
                ] {
                    assert!(
                        !value.chars().any(|c| hidden(c, multi_line)),
                        "a hidden character reached the copy's {what}: {value:?}"
                    );
                }
                let _ = serde_json::to_vec(&create).expect("a create body serializes");
                let _ = serde_json::to_vec(&update).expect("an update body serializes");
            }
        }
        Err(e) => {
            assert!(!e.reason.code().is_empty());
            let _ = e.to_string();
        }
    }
}

/// Splits fuzz bytes into an HTTP answer: a status (first two bytes, folded into 100..=599),
/// header lines `name: value` up to an empty line, then the body.
pub fn split_response(data: &[u8]) -> (u16, Vec<(String, String)>, &[u8]) {
    let (status, rest) = match data {
        [a, b, rest @ ..] => (100 + u16::from_le_bytes([*a, *b]) % 500, rest),
        _ => (500, &[][..]),
    };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (&[][..], rest),
    };
    let headers = String::from_utf8_lossy(head)
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_string(), v.trim().to_string()))
        })
        .collect();
    (status, headers, body)
}

/// A body as the Graph client reads one: blank → null, JSON → the value, else the text.
fn parse_body(bytes: &[u8]) -> Value {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Value::Null;
    }
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// A Graph or token-endpoint answer: both classifiers, `Retry-After` on every header value and
/// on the body, and everything the worker does with the error afterwards (display, redaction,
/// the wait hint).
pub fn graph_response(data: &[u8]) {
    let (status, headers, body) = split_response(data);
    let now = jiff::Timestamp::from_second(1_800_000_000).expect("a fixed now");
    let body = parse_body(body);
    let mut e = GraphError::from_response_at(status, &headers, &body, now);
    let _ = (e.to_string(), e.is_retryable(), e.wait_hint());
    e.redact("a-client-secret-value");
    let t = GraphError::from_token_response(status, &body);
    let _ = (t.to_string(), t.is_retryable(), t.wait_hint());
    for (_, v) in &headers {
        let _ = parse_retry_after(v, now);
    }
    if let Value::String(text) = &body {
        let _ = parse_retry_after(text, now);
    }
}
