//! The copy of every kind of schedule, field by field; the tag and the transactionId.

use super::*;
use serde_json::json;

const URL: &str = "https://app.cyzen.cloud/schedules/S-1";

fn tz(name: &str) -> TimeZone {
    TimeZone::get(name).unwrap()
}

fn timed(start: &str, end: &str, zone: &str) -> Timing {
    Timing::Timed {
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
        time_zone: tz(zone),
    }
}

fn all_day(first: &str, last: &str, zone: Option<&str>) -> Timing {
    Timing::AllDay {
        first: first.parse().unwrap(),
        last: last.parse().unwrap(),
        time_zone: zone.map(tz),
    }
}

fn schedule(timing: Timing) -> Schedule {
    Schedule {
        title: "Visit ACME".into(),
        memo: "Bring the contract".into(),
        timing,
        place: None,
        owner_user_id: "u-1".into(),
        participant_user_ids: vec![],
        visibility: Visibility::Public,
        url: URL.into(),
        created_at: "2026-11-01T00:00:00Z".parse().unwrap(),
        updated_at: "2026-11-01T00:00:00Z".parse().unwrap(),
    }
}

fn place(name: &str, address: &str) -> Option<Place> {
    Some(Place {
        name: name.into(),
        address: address.into(),
    })
}

fn tokyo_9_to_10() -> Schedule {
    schedule(timed(
        "2026-11-30T09:00:00+09:00",
        "2026-11-30T10:00:00+09:00",
        "Asia/Tokyo",
    ))
}

/// Builds the create and the update body with Asia/Tokyo as the default zone and checks the
/// given fields of each: a field expected `null` must be absent.
fn check(s: Schedule, create: Value, update: Value) {
    let default_zone = tz("Asia/Tokyo");
    check_with(&s, &default_zone, create, update);
}

fn check_with(s: &Schedule, default_zone: &TimeZone, create: Value, update: Value) {
    let opts = MappingOptions {
        category: "cyzen",
        default_zone,
    };
    let bodies = [
        ("create", create_body(s, "C-1", "S-1", "tx", &opts), create),
        ("update", update_body(s, "C-1", "S-1", &opts), update),
    ];
    for (what, got, expected) in bodies {
        for (field, want) in expected.as_object().unwrap() {
            let got = got.get(field).unwrap_or(&Value::Null);
            assert_eq!(got, want, "{what} body, field {field}: {s:#?}");
        }
    }
}

/// The same expectation for create and update.
fn check_both(s: Schedule, expected: Value) {
    check(s, expected.clone(), expected);
}

fn at(date_time: &str, zone: &str) -> Value {
    json!({ "dateTime": date_time, "timeZone": zone })
}

#[test]
fn a_create_body_is_the_whole_copy() {
    let s = Schedule {
        place: place("ACME HQ", "1-1 Marunouchi, Chiyoda-ku"),
        ..tokyo_9_to_10()
    };
    let default_zone = tz("Asia/Tokyo");
    let opts = MappingOptions {
        category: "cyzen",
        default_zone: &default_zone,
    };
    let tx = transaction_id("C-1", "S-1", "a@example.com", 7);
    assert_eq!(
        create_body(&s, "C-1", "S-1", &tx, &opts),
        json!({
            "subject": "Visit ACME",
            "body": { "contentType": "text", "content": format!("Bring the contract\n\n{URL}") },
            "start": at("2026-11-30T09:00:00", "Tokyo Standard Time"),
            "end": at("2026-11-30T10:00:00", "Tokyo Standard Time"),
            "isAllDay": false,
            "location": {
                "displayName": "ACME HQ",
                "locationType": "default",
                "address": { "street": "1-1 Marunouchi, Chiyoda-ku" },
            },
            "sensitivity": "normal",
            "showAs": "busy",
            "categories": ["cyzen"],
            "singleValueExtendedProperties": [
                { "id": TAG_PROPERTY_ID, "value": "cyzen/v1/C-1/S-1" },
            ],
            "transactionId": tx,
        })
    );
}

#[test]
fn an_update_body_is_the_create_body_without_transaction_id() {
    let s = tokyo_9_to_10();
    let default_zone = tz("Asia/Tokyo");
    let opts = MappingOptions {
        category: "cyzen",
        default_zone: &default_zone,
    };
    let mut create = create_body(&s, "C-1", "S-1", "tx", &opts);
    let update = update_body(&s, "C-1", "S-1", &opts);
    let create = create.as_object_mut().unwrap();
    assert_eq!(create.remove("transactionId"), Some(json!("tx")));
    // The only other difference: an update clears a place the schedule no longer has.
    let mut update = update.as_object().unwrap().clone();
    assert_eq!(
        update.remove("location"),
        Some(json!({ "displayName": "" }))
    );
    assert_eq!(*create, update);
}

#[test]
fn no_copy_has_attendees_or_a_reminder_setting() {
    let default_zone = tz("Asia/Tokyo");
    let opts = MappingOptions {
        category: "cyzen",
        default_zone: &default_zone,
    };
    let s = Schedule {
        participant_user_ids: vec!["u-2".into(), "u-3".into()],
        ..tokyo_9_to_10()
    };
    for body in [
        create_body(&s, "C-1", "S-1", "tx", &opts),
        update_body(&s, "C-1", "S-1", &opts),
    ] {
        for field in ["attendees", "isReminderOn", "reminderMinutesBeforeStart"] {
            assert!(body.get(field).is_none(), "{field} in {body}");
        }
    }
}

#[test]
fn a_timed_schedule_is_wall_clock_time_in_its_zone() {
    let cases = [
        // Given in the zone's own offset.
        (
            timed(
                "2026-11-30T09:00:00+09:00",
                "2026-11-30T10:00:00+09:00",
                "Asia/Tokyo",
            ),
            at("2026-11-30T09:00:00", "Tokyo Standard Time"),
            at("2026-11-30T10:00:00", "Tokyo Standard Time"),
        ),
        // Given with another offset: shown in the schedule's zone.
        (
            timed("2026-11-30T01:00:00Z", "2026-11-30T02:30:00Z", "Asia/Tokyo"),
            at("2026-11-30T10:00:00", "Tokyo Standard Time"),
            at("2026-11-30T11:30:00", "Tokyo Standard Time"),
        ),
        // No fraction on the wire, even when the instant has one.
        (
            timed(
                "2026-11-30T09:00:00.5+09:00",
                "2026-11-30T10:00:00.999+09:00",
                "Asia/Tokyo",
            ),
            at("2026-11-30T09:00:00", "Tokyo Standard Time"),
            at("2026-11-30T10:00:00", "Tokyo Standard Time"),
        ),
        // Across the end of DST in New York (2026-11-01 02:00 EDT → 01:00 EST): wall-clock
        // times on both sides, in Eastern time; the 3.5 hours are kept.
        (
            timed(
                "2026-11-01T00:30:00-04:00",
                "2026-11-01T03:00:00-05:00",
                "America/New_York",
            ),
            at("2026-11-01T00:30:00", "Eastern Standard Time"),
            at("2026-11-01T03:00:00", "Eastern Standard Time"),
        ),
        // 01:30 happens twice that night: such a time is sent in UTC, so a one-hour
        // schedule from 01:30 EDT to 01:30 EST stays one hour long.
        (
            timed(
                "2026-11-01T01:30:00-04:00",
                "2026-11-01T01:30:00-05:00",
                "America/New_York",
            ),
            at("2026-11-01T05:30:00", "UTC"),
            at("2026-11-01T06:30:00", "UTC"),
        ),
        // Summer time in Berlin.
        (
            timed(
                "2026-07-01T08:00:00Z",
                "2026-07-01T09:00:00Z",
                "Europe/Berlin",
            ),
            at("2026-07-01T10:00:00", "W. Europe Standard Time"),
            at("2026-07-01T11:00:00", "W. Europe Standard Time"),
        ),
        // An alias jiff keeps as given.
        (
            timed(
                "2026-11-30T03:30:00Z",
                "2026-11-30T04:30:00Z",
                "Asia/Kolkata",
            ),
            at("2026-11-30T09:00:00", "India Standard Time"),
            at("2026-11-30T10:00:00", "India Standard Time"),
        ),
        (
            timed("2026-11-30T00:00:00Z", "2026-11-30T01:00:00Z", "UTC"),
            at("2026-11-30T00:00:00", "UTC"),
            at("2026-11-30T01:00:00", "UTC"),
        ),
        // A zone with no Windows name: the same instants in the default zone.
        (
            timed(
                "2026-11-30T12:00:00Z",
                "2026-11-30T13:00:00Z",
                "Antarctica/Troll",
            ),
            at("2026-11-30T21:00:00", "Tokyo Standard Time"),
            at("2026-11-30T22:00:00", "Tokyo Standard Time"),
        ),
    ];
    for (timing, start, end) in cases {
        check_both(
            schedule(timing),
            json!({ "start": start, "end": end, "isAllDay": false }),
        );
    }
}

#[test]
fn with_no_windows_name_for_either_zone_a_timed_schedule_is_sent_in_utc() {
    let s = schedule(timed(
        "2026-11-30T12:00:00Z",
        "2026-11-30T13:00:00Z",
        "Antarctica/Troll",
    ));
    let expected = json!({
        "start": at("2026-11-30T12:00:00", "UTC"),
        "end": at("2026-11-30T13:00:00", "UTC"),
    });
    check_with(
        &s,
        &tz("Antarctica/Troll"),
        expected.clone(),
        expected.clone(),
    );
    let fixed = TimeZone::fixed(jiff::tz::offset(5));
    check_with(&s, &fixed, expected.clone(), expected);
}

#[test]
fn an_all_day_schedule_runs_midnight_to_the_midnight_after_its_last_day() {
    let cases = [
        (
            all_day("2026-12-01", "2026-12-01", Some("Asia/Tokyo")),
            at("2026-12-01T00:00:00", "Tokyo Standard Time"),
            at("2026-12-02T00:00:00", "Tokyo Standard Time"),
        ),
        (
            all_day("2026-12-01", "2026-12-02", Some("America/New_York")),
            at("2026-12-01T00:00:00", "Eastern Standard Time"),
            at("2026-12-03T00:00:00", "Eastern Standard Time"),
        ),
        // Over a month and a year end.
        (
            all_day("2026-12-31", "2027-01-01", Some("Europe/Berlin")),
            at("2026-12-31T00:00:00", "W. Europe Standard Time"),
            at("2027-01-02T00:00:00", "W. Europe Standard Time"),
        ),
        // On the day New York leaves DST: still midnight to midnight.
        (
            all_day("2026-11-01", "2026-11-01", Some("America/New_York")),
            at("2026-11-01T00:00:00", "Eastern Standard Time"),
            at("2026-11-02T00:00:00", "Eastern Standard Time"),
        ),
        // Without a zone: the default zone (Asia/Tokyo here).
        (
            all_day("2026-12-01", "2026-12-01", None),
            at("2026-12-01T00:00:00", "Tokyo Standard Time"),
            at("2026-12-02T00:00:00", "Tokyo Standard Time"),
        ),
        // A zone with no Windows name: the same days, named in the default zone.
        (
            all_day("2026-12-01", "2026-12-01", Some("Antarctica/Troll")),
            at("2026-12-01T00:00:00", "Tokyo Standard Time"),
            at("2026-12-02T00:00:00", "Tokyo Standard Time"),
        ),
    ];
    for (timing, start, end) in cases {
        check_both(
            schedule(timing),
            json!({ "start": start, "end": end, "isAllDay": true }),
        );
    }
}

#[test]
fn an_all_day_schedule_without_a_zone_uses_the_configured_default() {
    let s = schedule(all_day("2026-12-01", "2026-12-02", None));
    let expected = json!({
        "start": at("2026-12-01T00:00:00", "Pacific Standard Time"),
        "end": at("2026-12-03T00:00:00", "Pacific Standard Time"),
        "isAllDay": true,
    });
    check_with(&s, &tz("America/Los_Angeles"), expected.clone(), expected);
}

#[test]
fn sensitivity_follows_visibility() {
    for (visibility, sensitivity) in [
        (Visibility::Private, "private"),
        (Visibility::Public, "normal"),
    ] {
        let s = Schedule {
            visibility,
            ..tokyo_9_to_10()
        };
        check_both(
            s,
            json!({ "sensitivity": sensitivity, "showAs": "busy", "categories": ["cyzen"] }),
        );
    }
}

#[test]
fn location_comes_from_the_place() {
    let cases = [
        (
            place("ACME HQ", "1-1 Marunouchi"),
            json!({
                "displayName": "ACME HQ",
                "locationType": "default",
                "address": { "street": "1-1 Marunouchi" },
            }),
            None,
        ),
        // No name: the address names it.
        (
            place("", "1-1 Marunouchi"),
            json!({
                "displayName": "1-1 Marunouchi",
                "locationType": "default",
                "address": { "street": "1-1 Marunouchi" },
            }),
            None,
        ),
        // No address: no address object.
        (
            place("ACME HQ", ""),
            json!({ "displayName": "ACME HQ", "locationType": "default" }),
            None,
        ),
        // No place, or an empty one: nothing on create, cleared on update.
        (None, Value::Null, Some(json!({ "displayName": "" }))),
        (
            place("", ""),
            Value::Null,
            Some(json!({ "displayName": "" })),
        ),
    ];
    for (place, create, update) in cases {
        let s = Schedule {
            place,
            ..tokyo_9_to_10()
        };
        let update = update.unwrap_or_else(|| create.clone());
        check(
            s,
            json!({ "location": create }),
            json!({ "location": update }),
        );
    }
}

#[test]
fn the_body_is_the_memo_then_the_cyzen_link() {
    for (memo, content) in [
        ("Bring the contract", format!("Bring the contract\n\n{URL}")),
        ("line 1\nline 2", format!("line 1\nline 2\n\n{URL}")),
        ("", URL.to_string()),
    ] {
        let s = Schedule {
            memo: memo.into(),
            ..tokyo_9_to_10()
        };
        check_both(
            s,
            json!({
                "subject": "Visit ACME",
                "body": { "contentType": "text", "content": content },
            }),
        );
    }
}

#[test]
fn an_empty_category_means_no_category() {
    let default_zone = tz("Asia/Tokyo");
    let opts = MappingOptions {
        category: "",
        default_zone: &default_zone,
    };
    let body = update_body(&tokyo_9_to_10(), "C-1", "S-1", &opts);
    assert_eq!(body["categories"], json!([]));
}

#[test]
fn transaction_id_is_deterministic_and_uuid_shaped() {
    let id = transaction_id("C-1", "S-1", "taro@example.com", 3);
    assert_eq!(id, transaction_id("C-1", "S-1", "taro@example.com", 3));
    let parsed = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(parsed.hyphenated().to_string(), id, "lowercase 8-4-4-4-12");
    assert_eq!(parsed.get_version_num(), 8);
    // Pinned: a change here changes every transactionId in flight.
    assert_eq!(id, transaction_id("C-1", "S-1", "Taro@Example.COM", 3));
    let golden = {
        let mut h = Sha256::new();
        h.update(b"cyzen-outlook-sync/transaction-id/v1\x1fC-1\x1fS-1\x1ftaro@example.com\x1f3");
        let mut b = [0u8; 16];
        b.copy_from_slice(&h.finalize()[..16]);
        b[6] = (b[6] & 0x0f) | 0x80;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h = hex::encode(b);
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    };
    assert_eq!(id, golden);
}

#[test]
fn transaction_id_differs_per_part_and_ignores_mailbox_case() {
    let base = transaction_id("C-1", "S-1", "taro@example.com", 3);
    for other in [
        transaction_id("C-2", "S-1", "taro@example.com", 3),
        transaction_id("C-1", "S-2", "taro@example.com", 3),
        transaction_id("C-1", "S-1", "hanako@example.com", 3),
        transaction_id("C-1", "S-1", "taro@example.com", 4),
        // The separator keeps the parts apart.
        transaction_id("C-1S", "-1", "taro@example.com", 3),
    ] {
        assert_ne!(base, other);
    }
    assert_eq!(base, transaction_id("C-1", "S-1", "TARO@EXAMPLE.COM", 3));
}

#[test]
fn a_tag_round_trips() {
    for (company, schedule) in [("C-1", "S-1"), ("acme.co:jp", "2026_11-30.x")] {
        let value = tag_value(company, schedule);
        assert_eq!(value, format!("cyzen/v1/{company}/{schedule}"));
        assert_eq!(parse_tag(&value), Some((company.into(), schedule.into())));
    }
    for bad in [
        "",
        "cyzen/v1/",
        "cyzen/v1/C-1",
        "cyzen/v1/C-1/",
        "cyzen/v1//S-1",
        "cyzen/v1/C-1/S-1/x",
        "cyzen/v2/C-1/S-1",
        "other/v1/C-1/S-1",
    ] {
        assert_eq!(parse_tag(bad), None, "{bad:?}");
    }
}

#[test]
fn tag_filter_and_expand_are_odata() {
    assert_eq!(
        tag_filter("C-1", "S-1"),
        "singleValueExtendedProperties/Any(ep: ep/id eq 'String {7d3c1e2a-9b4f-4c6d-8e1a-2f5b6c7d8e90} Name cyzenScheduleTag' and ep/value eq 'cyzen/v1/C-1/S-1')"
    );
    assert_eq!(
        tag_filter("o'brien", "S'1"),
        "singleValueExtendedProperties/Any(ep: ep/id eq 'String {7d3c1e2a-9b4f-4c6d-8e1a-2f5b6c7d8e90} Name cyzenScheduleTag' and ep/value eq 'cyzen/v1/o''brien/S''1')"
    );
    assert_eq!(
        tag_expand(),
        "singleValueExtendedProperties($filter=id eq 'String {7d3c1e2a-9b4f-4c6d-8e1a-2f5b6c7d8e90} Name cyzenScheduleTag')"
    );
}
