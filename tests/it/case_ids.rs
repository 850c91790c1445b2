//! Ids that differ only in case are different schedules; mailbox addresses that differ only in
//! case are one mailbox. Exchange compares strings in a `$filter` without regard to case (and the
//! emulator does too), so a tag lookup for `CaseX` also returns `casex`'s copy: the client must
//! keep only exact matches itself.

use std::time::Duration;

use graph_emulator::{FaultKind, MailboxKind, ScriptedFault, Settings};
use outlook_sync::deadletter::{Control, Dlq, Filter, ReplayRequest};
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::event::{EventType, WireEvent};
use outlook_sync::graph::mapping;
use outlook_sync::tenants::Plan;
use redis::AsyncCommands;

use crate::support::{mailbox, sandbox};

const IDLE: Duration = Duration::from_secs(40);
const OK: MailboxKind = MailboxKind::Ok;

async fn idle(sb: &Sandbox) {
    assert!(
        sb.wait_idle(IDLE).await.unwrap(),
        "the pipeline did not drain within {IDLE:?}"
    );
}

/// The mailbox's events as (schedule id from the tag, subject), sorted.
fn copies_by_tag(sb: &Sandbox, mb: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = sb
        .emulator
        .emulator
        .calendar(mb)
        .iter()
        .map(|e| {
            let tag = e["singleValueExtendedProperties"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| {
                    p["id"]
                        .as_str()
                        .is_some_and(|id| id.contains("cyzenScheduleTag"))
                })
                .and_then(|p| p["value"].as_str())
                .and_then(mapping::parse_tag)
                .map(|(_, s)| s)
                .unwrap_or_default();
            (tag, e["subject"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    out.sort();
    out
}

/// A delete that carries the schedule's last state (its participants), as the contract allows.
fn deleted_with_last_state(company: &str, schedule: &str, revision: u64) -> WireEvent {
    let mut ev = Ev::updated(company, schedule, revision)
        .people("u-1", &[])
        .wire();
    ev.event_type = EventType::Deleted;
    ev
}

async fn wipe_mappings(sb: &Sandbox) {
    let mut r = sb.redis.clone();
    let p = &sb.cfg.redis.key_prefix;
    for pattern in [format!("{p}:s:*"), format!("{p}:m:*")] {
        let keys: Vec<String> = r.keys(&pattern).await.unwrap();
        if !keys.is_empty() {
            let _: () = r.del(keys).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_whose_ids_differ_only_in_case_keep_separate_copies_through_create_update_delete_and_lost_mappings()
 {
    let sb = sandbox("case-ids", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let taro = mailbox("taro", c);
    let w = sb.worker().await.unwrap();

    // CaseX is created here; casex only ever arrives as an update (created before the link, or
    // before this Redis): its copy must be looked up by tag, and CaseX's copy is not it.
    sb.publish(&[Ev::created(c, "CaseX")
        .title("upper rev 1")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    sb.publish(&[Ev::updated(c, "casex", 4)
        .title("lower rev 4")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    assert_eq!(
        copies_by_tag(&sb, &taro),
        vec![
            ("CaseX".to_string(), "upper rev 1".to_string()),
            ("casex".to_string(), "lower rev 4".to_string()),
        ],
        "an update of casex never takes over CaseX's copy"
    );

    // Both updated: each copy follows its own schedule.
    sb.publish(&[
        Ev::updated(c, "CaseX", 2)
            .title("upper rev 2")
            .people("u-1", &[])
            .wire(),
        Ev::updated(c, "casex", 5)
            .title("lower rev 5")
            .people("u-1", &[])
            .wire(),
    ])
    .await
    .unwrap();
    idle(&sb).await;
    assert_eq!(
        copies_by_tag(&sb, &taro),
        vec![
            ("CaseX".to_string(), "upper rev 2".to_string()),
            ("casex".to_string(), "lower rev 5".to_string()),
        ]
    );

    // Redis loses every staging and mapping key: each copy is found again by its exact tag.
    wipe_mappings(&sb).await;
    sb.publish(&[Ev::updated(c, "casex", 6)
        .title("lower rev 6")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    sb.publish(&[Ev::updated(c, "CaseX", 3)
        .title("upper rev 3")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    assert_eq!(
        copies_by_tag(&sb, &taro),
        vec![
            ("CaseX".to_string(), "upper rev 3".to_string()),
            ("casex".to_string(), "lower rev 6".to_string()),
        ],
        "after a lost mapping, no copy was adopted by the other schedule and none was duplicated"
    );

    // A delete with a lost mapping looks by tag in the mailboxes its last state names: only
    // CaseX's copy goes.
    wipe_mappings(&sb).await;
    sb.publish(&[deleted_with_last_state(c, "CaseX", 7)])
        .await
        .unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    assert_eq!(
        copies_by_tag(&sb, &taro),
        vec![("casex".to_string(), "lower rev 6".to_string())],
        "deleting CaseX never deletes casex's copy"
    );
    assert_eq!(sb.emulator.emulator.stats().events_created, 2);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_create_and_a_later_delete_never_touch_the_copy_of_an_id_differing_only_in_case()
{
    let mut sb = sandbox("case-replay", Settings::default()).await;
    // One attempt: a 504 on CaseX's create dead-letters it (its intent stays recorded).
    sb.cfg.retry.max_attempts = 1;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let taro = mailbox("taro", c);
    let w = sb.worker().await.unwrap();
    sb.emulator
        .emulator
        .script_fault(ScriptedFault::new(FaultKind::Gateway504).method("POST"));
    sb.publish(&[Ev::created(c, "CaseX")
        .title("upper")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    assert!(
        copies_by_tag(&sb, &taro).is_empty(),
        "CaseX's create failed"
    );
    sb.publish(&[Ev::created(c, "casex")
        .title("lower")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    assert_eq!(
        copies_by_tag(&sb, &taro),
        vec![("casex".to_string(), "lower".to_string())]
    );

    // The operator replays CaseX's dead letter: its intent makes the flush look by tag first,
    // which finds casex's copy, and must not take it for CaseX's.
    let dlq = Dlq::new(&sb.cfg, sb.redis.clone());
    let report = dlq
        .replay(
            &ReplayRequest {
                filter: Filter {
                    schedule: Some("CaseX".into()),
                    ..Filter::default()
                },
                ..ReplayRequest::default()
            },
            &Control::new(),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.replayed, 1);
    idle(&sb).await;
    assert_eq!(
        copies_by_tag(&sb, &taro),
        vec![
            ("CaseX".to_string(), "upper".to_string()),
            ("casex".to_string(), "lower".to_string()),
        ],
        "the replay created CaseX's own copy"
    );

    sb.publish(&[Ev::deleted(c, "CaseX", 2).wire()])
        .await
        .unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    assert_eq!(
        copies_by_tag(&sb, &taro),
        vec![("casex".to_string(), "lower".to_string())],
        "CaseX's delete removed CaseX's copy only"
    );
    sb.cleanup().await;
}

/// Every spelling of `abcd` in upper and lower case: 16 schedules.
fn spellings() -> Vec<String> {
    (0..16u32)
        .map(|bits| {
            "abcd"
                .chars()
                .enumerate()
                .map(|(i, ch)| {
                    if bits & (1 << i) != 0 {
                        ch.to_ascii_uppercase()
                    } else {
                        ch
                    }
                })
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_pages_past_more_case_variants_than_one_page_holds_and_finds_its_own_copy() {
    let sb = sandbox("case-pages", Settings::default()).await;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", OK)])
        .await
        .unwrap();
    let taro = mailbox("taro", c);
    let w = sb.worker().await.unwrap();
    let ids = spellings();
    // 15 created here; the 16th arrives as an update, so its lookup pages through 15 copies
    // that all match its filter and creates its own only when none is exactly its tag.
    let (last, created) = ids.split_last().unwrap();
    let events: Vec<WireEvent> = created
        .iter()
        .map(|id| {
            Ev::created(c, id)
                .title(&format!("{id} 1"))
                .people("u-1", &[])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    idle(&sb).await;
    sb.publish(&[Ev::updated(c, last, 2)
        .title(&format!("{last} 2"))
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    idle(&sb).await;
    // The mappings are lost; every schedule is updated and must find its own copy by tag.
    wipe_mappings(&sb).await;
    let events: Vec<WireEvent> = ids
        .iter()
        .map(|id| {
            Ev::updated(c, id, 3)
                .title(&format!("{id} 3"))
                .people("u-1", &[])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    idle(&sb).await;
    w.stop(Duration::from_secs(5)).await;
    let mut want: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), format!("{id} 3")))
        .collect();
    want.sort();
    assert_eq!(copies_by_tag(&sb, &taro), want);
    assert_eq!(
        sb.emulator.emulator.stats().events_created,
        16,
        "no copy created twice"
    );
    sb.cleanup().await;
}
