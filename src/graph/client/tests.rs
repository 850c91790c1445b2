use base64::Engine;
use serde_json::json;

use super::send::batch_item;
use super::token::{expires_in_secs, jwt_claims};
use super::*;

#[test]
fn the_scope_follows_the_graph_host_except_for_loopback() {
    let cases = [
        ("https://graph.microsoft.com/v1.0", DEFAULT_SCOPE),
        ("https://GRAPH.microsoft.com/beta/", DEFAULT_SCOPE),
        (
            "https://graph.microsoft.us/v1.0",
            "https://graph.microsoft.us/.default",
        ),
        (
            "https://dod-graph.microsoft.us/v1.0",
            "https://dod-graph.microsoft.us/.default",
        ),
        (
            "https://microsoftgraph.chinacloudapi.cn/v1.0",
            "https://microsoftgraph.chinacloudapi.cn/.default",
        ),
        ("http://127.0.0.1:8123/v1.0", DEFAULT_SCOPE),
        ("http://[::1]:8123/v1.0", DEFAULT_SCOPE),
        ("http://localhost:8123/v1.0", DEFAULT_SCOPE),
        (
            "http://graph.test:8080/v1.0",
            "http://graph.test:8080/.default",
        ),
    ];
    for (base, scope) in cases {
        assert_eq!(graph_scope(base), scope, "{base}");
    }
}

#[test]
fn path_segments_are_percent_encoded() {
    assert_eq!(path_segment("o'neil@x.com"), "o%27neil@x.com");
    assert_eq!(
        path_segment("AAMkAGI1/AAAt9+AHjAAA="),
        "AAMkAGI1%2FAAAt9%2BAHjAAA%3D"
    );
    assert_eq!(
        path_segment("a_b.c#EXT#@t.onmicrosoft.com"),
        "a_b.c%23EXT%23@t.onmicrosoft.com"
    );
    assert_eq!(path_segment("a b?c&d"), "a%20b%3Fc%26d");
    assert_eq!(path_segment("日"), "%E6%97%A5");
}

#[test]
fn jwt_roles_and_tenant_are_read_without_verification() {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    let token = format!(
        "{}.{}.sig",
        b64(&json!({"alg":"RS256"})),
        b64(&json!({"roles":["Calendars.ReadWrite"],"tid":"t-1"}))
    );
    let claims = jwt_claims(&token).unwrap();
    assert_eq!(claims["roles"][0], "Calendars.ReadWrite");
    assert_eq!(claims["tid"], "t-1");
    assert!(jwt_claims("not-a-jwt").is_none());
    assert!(jwt_claims("a.!!!.c").is_none());
}

#[test]
fn expires_in_is_accepted_as_number_or_string() {
    assert_eq!(expires_in_secs(&json!(3599)), Some(3599));
    assert_eq!(expires_in_secs(&json!("3599")), Some(3599));
    assert_eq!(expires_in_secs(&json!(3599.0)), Some(3599));
    assert_eq!(expires_in_secs(&json!("soon")), None);
    assert_eq!(expires_in_secs(&json!(-1)), None);
}

#[test]
fn batch_items_carry_prefer_and_content_type_only_with_a_body() {
    let item = batch_item(&GraphRequest::delete("1", "/users/a@b/events/x"));
    assert_eq!(
        item,
        json!({"id":"1","method":"DELETE","url":"/users/a@b/events/x",
                   "headers":{"Prefer":"IdType=\"ImmutableId\""}})
    );
    let item = batch_item(&GraphRequest::post(
        "2",
        "/users/a@b/events",
        json!({"subject":"s"}),
    ));
    assert_eq!(item["headers"]["Content-Type"], "application/json");
    assert_eq!(item["headers"]["Prefer"], PREFER_IMMUTABLE_ID);
    assert_eq!(item["body"], json!({"subject":"s"}));
}

#[test]
fn bodies_are_null_json_or_text() {
    assert_eq!(parse_body(b""), Value::Null);
    assert_eq!(parse_body(b" \n"), Value::Null);
    assert_eq!(parse_body(br#"{"a":1}"#), json!({"a":1}));
    assert_eq!(parse_body(b"<html>"), json!("<html>"));
}
