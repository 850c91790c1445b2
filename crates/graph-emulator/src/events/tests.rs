//! Extended-property ids, event ids, HTML bodies.

use super::render::{strip_html, wrap_html};
use super::*;

#[test]
fn ext_ids_normalise_all_but_the_name() {
    let a = normalize_ext_id("String {66F5A359-4659-4830-9070-00047EC6AC6E} Name Color").unwrap();
    let b = normalize_ext_id("string {66f5a359-4659-4830-9070-00047ec6ac6e} name Color").unwrap();
    let c = normalize_ext_id("String {66f5a359-4659-4830-9070-00047ec6ac6e} Name color").unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert!(normalize_ext_id("String 0x4001001E").is_some());
    assert!(normalize_ext_id("String {66f5a359-4659-4830-9070-00047ec6ac6e} Id 0x8012").is_some());
    assert!(normalize_ext_id("Color").is_none());
}

#[test]
fn ids_contain_url_unsafe_characters() {
    let id = new_event_id("3e9d2c1b-7a6f-4b5e-9d8c-2a1b0c9d8e7f", 1, true);
    assert!(id.starts_with("AAMkA"), "{id}");
    assert!(
        id.contains('/') && id.contains('+') && id.ends_with('='),
        "{id}"
    );
    let safe = new_event_id("3e9d2c1b-7a6f-4b5e-9d8c-2a1b0c9d8e7f", 1, false);
    assert!(!safe.contains('/') && !safe.contains('+'));
}

#[test]
fn html_round_trip() {
    let html = wrap_html("a &amp; b<br>\r\nc");
    assert_eq!(strip_html(&html), "a & b\nc");
}
