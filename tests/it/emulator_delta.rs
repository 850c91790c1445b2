//! The emulator's `calendarView/delta` (the contract in ARCHITECTURE.md's "Delta, as Graph
//! answers it"): pages, `Prefer: odata.maxpagesize`, the deltaLink, `@removed` items, 410
//! `syncStateNotFound`, and a mailbox owner's edits and deletions.

use serde_json::{Value, json};

use super::*;

const RANGE: &str = "startDateTime=2025-03-01T00:00:00Z&endDateTime=2025-04-01T00:00:00Z";

fn delta_path(mailbox: &str) -> String {
    format!("/users/{mailbox}/calendarView/delta?{RANGE}")
}

impl Emu {
    /// Every page of one round from `link`: the items, and the round's deltaLink.
    async fn delta_round(&self, token: &str, link: &str, page_size: usize) -> (Vec<Value>, String) {
        let prefer = format!("odata.maxpagesize={page_size}");
        let mut items = Vec::new();
        let mut link = link.to_string();
        for _ in 0..100 {
            let r = self
                .req(
                    "GET",
                    &link,
                    Some(token),
                    None,
                    &[("Prefer", prefer.as_str())],
                )
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            assert_eq!(
                r.header("Preference-Applied"),
                Some(prefer.as_str()),
                "the page size is echoed"
            );
            let page = r.body["value"].as_array().unwrap();
            assert!(page.len() <= page_size, "{} > {page_size}", page.len());
            items.extend(page.iter().cloned());
            if let Some(next) = r.body["@odata.nextLink"].as_str() {
                assert!(r.body.get("@odata.deltaLink").is_none());
                link = next.to_string();
                continue;
            }
            let delta = r.body["@odata.deltaLink"].as_str().expect("a deltaLink");
            return (items, delta.to_string());
        }
        panic!("the round never ended");
    }
}

fn ids(items: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn march(subject: &str, day: u32) -> Value {
    let start = format!("2025-03-{day:02}T09:00:00");
    let end = format!("2025-03-{day:02}T10:00:00");
    event(subject, &start, &end, "UTC")
}

#[tokio::test]
async fn a_first_delta_round_pages_the_whole_range_and_ends_with_a_delta_link() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let mut inside = Vec::new();
    for day in 1..=5 {
        let r = e
            .create(&t, TARO, march(&format!("visit {day}"), day))
            .await;
        inside.push(r.body["id"].as_str().unwrap().to_string());
    }
    e.create(
        &t,
        TARO,
        event("april", "2025-04-02T09:00:00", "2025-04-02T10:00:00", "UTC"),
    )
    .await;
    inside.sort();
    let (items, delta) = e.delta_round(&t, &delta_path(TARO), 2).await;
    assert_eq!(ids(&items), inside, "only the range, each event once");
    for item in &items {
        assert!(item["changeKey"].is_string() && item["subject"].is_string());
        assert!(item.get("@removed").is_none());
        assert!(
            item.get("singleValueExtendedProperties").is_none(),
            "delta returns no extended properties"
        );
    }
    assert!(delta.contains("calendarView/delta?$deltatoken="), "{delta}");
    let (again, _) = e.delta_round(&t, &delta, 2).await;
    assert!(again.is_empty(), "nothing changed since: {again:?}");
}

#[tokio::test]
async fn a_later_round_lists_writes_owner_edits_and_removals_since_the_last_one() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let mut id = Vec::new();
    for day in 1..=5 {
        let r = e
            .create(&t, TARO, march(&format!("visit {day}"), day))
            .await;
        id.push((
            r.body["id"].as_str().unwrap().to_string(),
            r.body["changeKey"].as_str().unwrap().to_string(),
        ));
    }
    let (_, delta) = e.delta_round(&t, &delta_path(TARO), 3).await;
    // Our write, the owner's edit, the owner's delete, the owner moving one out of the range.
    let patched = e
        .req(
            "PATCH",
            &format!("/users/{TARO}/events/{}", enc(&id[0].0)),
            Some(&t),
            Some(json!({"subject": "ours"})),
            &[],
        )
        .await;
    assert_eq!(patched.status, 200);
    let our_key = patched.body["changeKey"].as_str().unwrap().to_string();
    e.em()
        .edit_event(TARO, &id[1].0, &json!({"subject": "edited in Outlook"}))
        .unwrap();
    assert!(e.em().remove_event(TARO, &id[2].0));
    e.em()
        .edit_event(
            TARO,
            &id[3].0,
            &json!({"start": {"dateTime": "2025-05-01T09:00:00", "timeZone": "UTC"},
                    "end": {"dateTime": "2025-05-01T10:00:00", "timeZone": "UTC"}}),
        )
        .unwrap();
    let (items, next) = e.delta_round(&t, &delta, 3).await;
    let by_id = |i: &str| items.iter().find(|x| x["id"] == i).cloned();
    assert_eq!(items.len(), 4, "{items:?}");
    let ours = by_id(&id[0].0).unwrap();
    assert_eq!(
        ours["changeKey"], our_key,
        "the changeKey our PATCH returned"
    );
    let edited = by_id(&id[1].0).unwrap();
    assert_eq!(edited["subject"], "edited in Outlook");
    assert_ne!(
        edited["changeKey"],
        id[1].1.as_str(),
        "an edit changes the changeKey"
    );
    for gone in [&id[2].0, &id[3].0] {
        let item = by_id(gone).unwrap();
        assert_eq!(item["@removed"], json!({"reason": "deleted"}), "{item}");
    }
    assert!(by_id(&id[4].0).is_none(), "unchanged events are not listed");
    let (after, _) = e.delta_round(&t, &next, 3).await;
    assert!(after.is_empty(), "{after:?}");
}

#[tokio::test]
async fn an_expired_or_unknown_state_token_is_410_sync_state_not_found() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    e.create(&t, TARO, march("visit", 3)).await;
    let (_, delta) = e.delta_round(&t, &delta_path(TARO), 10).await;
    assert!(e.em().expire_delta_tokens(TARO) > 0);
    let r = e.get(&t, &delta).await;
    assert_graph_error(&r, 410, wire::SYNC_STATE_NOT_FOUND_CODE, None);
    let r = e
        .get(
            &t,
            &format!("/users/{TARO}/calendarView/delta?$deltatoken=made-up"),
        )
        .await;
    assert_graph_error(&r, 410, wire::SYNC_STATE_NOT_FOUND_CODE, None);
    // Another mailbox's token is unknown here.
    let (_, hanako) = e.delta_round(&t, &delta_path(HANAKO), 10).await;
    let token = hanako.split("$deltatoken=").nth(1).unwrap();
    let r = e
        .get(
            &t,
            &format!("/users/{TARO}/calendarView/delta?$deltatoken={token}"),
        )
        .await;
    assert_graph_error(&r, 410, wire::SYNC_STATE_NOT_FOUND_CODE, None);
    // The fault forces it once.
    let (_, fresh) = e.delta_round(&t, &delta_path(TARO), 10).await;
    e.em().script_fault(
        ScriptedFault::new(FaultKind::SyncStateNotFound).path_contains("calendarView/delta"),
    );
    assert_eq!(e.get(&t, &fresh).await.status, 410);
    assert_eq!(e.get(&t, &fresh).await.status, 200);
}

#[tokio::test]
async fn delta_refuses_the_query_options_it_does_not_support() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let no_range = e
        .get(&t, &format!("/users/{TARO}/calendarView/delta"))
        .await;
    assert_graph_error(&no_range, 400, wire::CALENDAR_VIEW_WINDOW_CODE, None);
    for extra in [
        "$expand=singleValueExtendedProperties",
        "$filter=subject%20eq%20'x'",
        "$select=id",
        "$top=5",
    ] {
        let r = e.get(&t, &format!("{}&{extra}", delta_path(TARO))).await;
        assert_eq!(r.status, 400, "{extra}: {:?}", r.body);
    }
    let (_, delta) = e.delta_round(&t, &delta_path(TARO), 10).await;
    let r = e.get(&t, &format!("{delta}&{RANGE}")).await;
    assert_eq!(r.status, 400, "a token carries the range: {:?}", r.body);
}
