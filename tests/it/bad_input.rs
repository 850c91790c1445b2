//! Bad input at the door, and the fuzzed parsers without libFuzzer.
//!
//! - A burst of hostile messages (oversized, invalid UTF-8, nested 100,000 deep, a wrong content
//!   type, an unknown schema version) published between valid events: each hostile one becomes a
//!   dead letter with its reason, the worker keeps running, and the valid ones are synced as if
//!   nothing had happened.
//! - A routing key that is not the body's event_type: a dead letter (`routing_key_mismatch`),
//!   never taken by its body; a replay republishes with the key the event came with, so a flush
//!   dead letter is taken again and a mismatched one is refused again. Hostile text (NUL, ESC,
//!   bidi overrides, tag characters) reaches Outlook cleaned.
//! - The fuzz targets' harness (`fuzz/src/lib.rs`, the very functions `cargo fuzz` runs) fed a
//!   seeded corpus of 100,000 random and structure-aware mutations on stable Rust: no panic,
//!   bounded time per input, and no single call allocating more than a bounded multiple of its
//!   input (`FUZZ_SMOKE_INPUTS` changes the count, `FUZZ_SMOKE_SEED` the seed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use graph_emulator::{FaultKind, MailboxKind, ScriptedFault, Settings};
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, ShortString};
use outlook_sync::amqp;
use outlook_sync::deadletter::{Control, Dlq, Filter, ReplayRequest};
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::tenants::Plan;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[path = "../../fuzz/src/lib.rs"]
mod harness;

// ---------------------------------------------------------------------------------------------
// Allocation accounting: a thread can ask how many bytes were allocated (and the peak live) while
// it ran a closure. Other threads and other tests are only counted, never limited.

struct Counting;

thread_local! {
    static TRACK: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn note(delta: isize) {
    // `try_with`: the thread-locals may already be gone while a thread exits.
    let _ = TRACK.try_with(|t| {
        if t.get() {
            let live = LIVE.with(|l| {
                l.set(l.get() + delta);
                l.get()
            });
            PEAK.with(|p| p.set(p.get().max(live)));
        }
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; the bookkeeping only touches
// const thread-locals (no allocation, no destructor).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        // SAFETY: same layout, forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns the peak of bytes it held at once (allocated and not yet freed).
fn peak_bytes(f: impl FnOnce()) -> usize {
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    TRACK.with(|t| t.set(true));
    f();
    TRACK.with(|t| t.set(false));
    PEAK.with(|p| p.get()).max(0) as usize
}

// ---------------------------------------------------------------------------------------------
// The burst

fn header(props: &lapin::BasicProperties, k: &str) -> String {
    match props.headers().as_ref().and_then(|h| h.inner().get(k)) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_become_dead_letters_with_their_reason_and_hold_nothing_up() {
    let sb = match Sandbox::start("bad-input", 1, Settings::default()).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    };
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", MailboxKind::Ok)])
        .await
        .unwrap();
    let worker = sb.worker().await.unwrap();
    let valid = |s: &str| {
        Ev::created(c, s)
            .title(&format!("valid {s}"))
            .people("u-1", &[])
            .wire()
    };
    let body = |ev: &outlook_sync::event::WireEvent| serde_json::to_vec(ev).unwrap();
    let mut oversized = serde_json::to_value(valid("big")).unwrap();
    oversized["schedule"]["memo"] = Value::from("x".repeat(300 * 1024));
    let mut v2 = serde_json::to_value(valid("v2")).unwrap();
    v2["schema_version"] = json!(2);
    let mut invalid_utf8 = body(&valid("utf8"));
    let at = invalid_utf8.len() / 2;
    invalid_utf8.splice(at..at, [0xff, 0xfe, 0xc3]);

    // (message id, body, content type, expected x-reason, a word the x-error must contain)
    let hostile: Vec<(&str, Vec<u8>, &str, &str, &str)> = vec![
        (
            "too-large",
            serde_json::to_vec(&oversized).unwrap(),
            "application/json",
            "too_large",
            "limit",
        ),
        (
            "way-too-large",
            vec![b'{'; 8 * 1024 * 1024],
            "application/json",
            "too_large",
            "limit",
        ),
        (
            "not-utf8",
            invalid_utf8,
            "application/json",
            "not_utf8",
            "UTF-8",
        ),
        (
            "nested-arrays",
            vec![b'['; 100_000],
            "application/json",
            "malformed_json",
            "JSON",
        ),
        (
            "nested-objects",
            "{\"a\":".repeat(50_000).into_bytes(),
            "application/json",
            "malformed_json",
            "JSON",
        ),
        (
            "wrong-content-type",
            body(&valid("ct")),
            "text/plain",
            "wrong_type",
            "content_type",
        ),
        (
            "schema-v2",
            serde_json::to_vec(&v2).unwrap(),
            "application/json",
            "unknown_schema_version",
            "version 2",
        ),
    ];
    // Hostile and valid messages interleaved in one burst.
    let ch = sb.connection().create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut burst: Vec<(String, Vec<u8>, &str)> = Vec::new();
    for (i, (id, b, ct, _, _)) in hostile.iter().enumerate() {
        let ev = valid(&format!("ok-{i}"));
        burst.push((ev.event_id.clone(), body(&ev), "application/json"));
        burst.push((id.to_string(), b.clone(), ct));
    }
    let started = Instant::now();
    let mut confirms = Vec::new();
    for (id, b, ct) in &burst {
        let props = amqp::event_properties(id, "schedule.created")
            .with_content_type(ShortString::from(ct.to_string()));
        confirms.push(
            ch.basic_publish(
                sb.cfg.amqp.exchange.as_str().into(),
                "schedule.created".into(),
                BasicPublishOptions::default(),
                b,
                props,
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(c.await.unwrap().is_ack(), "the broker took every message");
    }
    // The valid ones are synced within a couple of windows: nothing waits behind the bad ones.
    let taro = format!("taro@{c}.onmicrosoft.com");
    let deadline = Instant::now() + Duration::from_secs(20);
    while sb.emulator.emulator.calendar(&taro).len() < hostile.len() {
        assert!(
            Instant::now() < deadline,
            "the valid events were held up: {} of {} synced after {:?}",
            sb.emulator.emulator.calendar(&taro).len(),
            hostile.len(),
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let synced_after = started.elapsed();
    assert!(sb.wait_idle(Duration::from_secs(30)).await.unwrap());
    assert!(
        *worker.ingest.ready().borrow(),
        "the consumer is still attached: nothing crashed"
    );

    // Exactly one dead letter per hostile message, each with its reason, the body untouched.
    let mut got: BTreeMap<String, (String, String, String, usize)> = BTreeMap::new();
    while let Some(m) = ch
        .basic_get(
            sb.cfg.amqp.dead_letter_queue.as_str().into(),
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let p = &m.delivery.properties;
        let id = p
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default();
        let previous = got.insert(
            id.clone(),
            (
                header(p, "x-reason"),
                header(p, "x-error"),
                header(p, "x-stage"),
                m.delivery.data.len(),
            ),
        );
        assert!(previous.is_none(), "{id} was dead-lettered twice");
    }
    assert_eq!(got.len(), hostile.len(), "dead letters: {got:?}");
    for (id, b, _, reason, word) in &hostile {
        let (r, error, stage, len) = &got[*id];
        assert_eq!(r, reason, "{id}: x-reason");
        assert!(
            error.contains(word),
            "{id}: x-error {error:?} lacks {word:?}"
        );
        assert!(
            error.len() < 2_000,
            "{id}: x-error is {} bytes",
            error.len()
        );
        assert_eq!(stage, "ingest", "{id}");
        assert_eq!(
            *len,
            b.len(),
            "{id}: the dead letter keeps the original body"
        );
    }
    let invalid: f64 = worker
        .metrics
        .render()
        .lines()
        .filter(|l| l.starts_with("outlook_sync_events_invalid"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        invalid as usize,
        hostile.len(),
        "invalid events are counted"
    );

    // And the worker goes on: a valid event published afterwards is synced.
    sb.publish(&[valid("after")]).await.unwrap();
    assert!(sb.wait_idle(Duration::from_secs(30)).await.unwrap());
    assert_eq!(
        sb.emulator.emulator.calendar(&taro).len(),
        hostile.len() + 1
    );
    assert!(
        synced_after < Duration::from_secs(10),
        "valid events synced after {synced_after:?}"
    );
    let restarts = worker.metrics.ingest_reconnects.get();
    assert_eq!(restarts, 0, "a hostile message made the consumer reconnect");
    let mut reasons: Vec<&str> = hostile.iter().map(|h| h.3).collect();
    reasons.sort();
    println!(
        "RELIABILITY bad_input hostile={} dead_letters={} reasons=\"{}\" valid_events={} \
         valid_synced_after_s={:.1} consumer_restarts={restarts}",
        hostile.len(),
        got.len(),
        reasons.join(", "),
        hostile.len() + 1,
        synced_after.as_secs_f64()
    );
    worker.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Routing keys and hostile text, end to end

/// The dead letters in the queue now (the queue is left as it was).
async fn dead_letters(dlq: &Dlq) -> Vec<outlook_sync::deadletter::Record> {
    dlq.list(&Filter::default()).await.unwrap().records
}

/// Waits until the dead-letter queue holds `n` messages.
async fn wait_dead_letters(dlq: &Dlq, n: usize) -> Vec<outlook_sync::deadletter::Record> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = dead_letters(dlq).await;
        if got.len() >= n {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} dead letters after 30 s: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routing_key_that_is_not_the_event_type_is_a_dead_letter_and_a_replay_keeps_a_matching_key()
 {
    let mut sb = match Sandbox::start("routing-key", 1, Settings::default()).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    };
    // One attempt: a 504 on an update dead-letters it at the flush.
    sb.cfg.retry.max_attempts = 1;
    let c = "acme";
    sb.company(c, Plan::Standard, &[("u-1", "taro", MailboxKind::Ok)])
        .await
        .unwrap();
    let taro = format!("taro@{c}.onmicrosoft.com");
    let worker = sb.worker().await.unwrap();
    let dlq = Dlq::new(&sb.cfg, sb.redis.clone());
    let created = |s: &str| {
        Ev::created(c, s)
            .title(&format!("{s} created"))
            .people("u-1", &[])
            .wire()
    };
    let subjects = |sb: &Sandbox| crate::support::subjects(sb, &taro);

    // Valid bodies under keys that are not their event_type: the body used to win.
    let wrong: [(&str, &str, Vec<u8>); 3] = [
        (
            "as-deleted",
            "schedule.deleted",
            serde_json::to_vec(&created("s-1")).unwrap(),
        ),
        (
            "as-weird",
            "schedule.weird",
            serde_json::to_vec(&created("s-2")).unwrap(),
        ),
        (
            "delete-as-created",
            "schedule.created",
            serde_json::to_vec(&Ev::deleted(c, "s-9", 3).wire()).unwrap(),
        ),
    ];
    for (id, key, body) in &wrong {
        sb.publish_raw(id, key, body).await.unwrap();
    }
    // Hostile text under the right key: synced, cleaned.
    let hostile = Ev::created(c, "s-3")
        .title("Visit\u{0}: \u{1b}[1mTanaka\u{202e}gnp.exe\r\nHQ\u{e0041}")
        .memo("Line 1\r\n\tLine 2\u{7}\u{2066}")
        .place("Room\t3\u{feff}", "1-2-3\u{2028}Marunouchi\u{0}")
        .people("u-1", &[])
        .wire();
    sb.publish(&[hostile]).await.unwrap();

    let got = wait_dead_letters(&dlq, wrong.len()).await;
    wait_for("the hostile title's copy", || !subjects(&sb).is_empty()).await;
    assert!(sb.wait_idle(Duration::from_secs(30)).await.unwrap());
    for (id, key, body) in &wrong {
        let r = got
            .iter()
            .find(|r| r.message_id.as_deref() == Some(*id))
            .unwrap_or_else(|| panic!("no dead letter for {id}: {got:?}"));
        assert_eq!(
            (r.stage.as_str(), r.reason.as_str()),
            ("ingest", "routing_key_mismatch"),
            "{id}"
        );
        assert_eq!(
            r.routing_key.as_deref(),
            Some(*key),
            "{id}: the key it came with"
        );
        let error = r.error.clone().unwrap_or_default();
        assert!(
            error.contains(&format!("{key:?}")) && error.contains("routing key"),
            "{id}: {error}"
        );
        assert!(!body.is_empty());
    }
    assert_eq!(got.len(), wrong.len(), "{got:?}");
    let copies = sb.emulator.emulator.calendar(&taro);
    assert_eq!(
        subjects(&sb),
        vec!["Visit: [1mTanakagnp.exe HQ".to_string()],
        "only the hostile-text event reached Outlook, with its subject cleaned"
    );
    // Graph answers with the body as HTML; the memo's tab and lines are there, its BEL and
    // bidi isolate are not.
    let content = copies[0]["body"]["content"].as_str().unwrap_or_default();
    assert!(
        content.contains("Line 1") && content.contains("\tLine 2"),
        "{content:?}"
    );
    assert!(
        !content
            .chars()
            .any(|ch| (ch.is_control() && !"\r\n\t".contains(ch)) || ch == '\u{2066}'),
        "{content:?}"
    );
    assert_eq!(copies[0]["location"]["displayName"], "Room 3");
    assert_eq!(
        copies[0]["location"]["address"]["street"],
        "1-2-3 Marunouchi"
    );

    // Published with its event_type as the key, the same event syncs.
    sb.publish(&[created("s-1")]).await.unwrap();
    wait_for("s-1's copy", || subjects(&sb).len() == 2).await;

    // A flush dead letter (a 504 on the update's PATCH, one attempt) is replayed with the key
    // it was published with, which matches its body: it is taken, not refused.
    sb.emulator
        .emulator
        .script_fault(ScriptedFault::new(FaultKind::Gateway504).method("PATCH"));
    sb.publish(&[Ev::updated(c, "s-1", 2)
        .title("s-1 revision 2")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    let got = wait_dead_letters(&dlq, wrong.len() + 1).await;
    let flushed = got
        .iter()
        .find(|r| r.stage == "flush")
        .unwrap_or_else(|| panic!("no flush dead letter: {got:?}"));
    assert_eq!(flushed.routing_key.as_deref(), Some("schedule.updated"));
    let report = dlq
        .replay(
            &ReplayRequest {
                filter: Filter {
                    stage: Some("flush".into()),
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
    wait_for("s-1 at revision 2", || {
        subjects(&sb).contains(&"s-1 revision 2".to_string())
    })
    .await;
    assert!(sb.wait_idle(Duration::from_secs(30)).await.unwrap());

    // Replayed on purpose, the mismatched ones keep their key, so they are refused again.
    let report = dlq
        .replay(
            &ReplayRequest {
                filter: Filter {
                    reason: Some("routing_key_mismatch".into()),
                    ..Filter::default()
                },
                include_invalid: true,
                ..ReplayRequest::default()
            },
            &Control::new(),
            &mut |_| {},
        )
        .await
        .unwrap();
    assert_eq!(report.replayed, wrong.len());
    let deadline = Instant::now() + Duration::from_secs(30);
    let again = loop {
        let got = dead_letters(&dlq).await;
        if got.len() == wrong.len() && got.iter().all(|r| r.replays == 1) {
            break got;
        }
        assert!(Instant::now() < deadline, "replays not back: {got:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        again.iter().all(|r| r.reason == "routing_key_mismatch"),
        "{again:?}"
    );
    assert_eq!(
        subjects(&sb),
        vec![
            "Visit: [1mTanakagnp.exe HQ".to_string(),
            "s-1 revision 2".to_string()
        ]
    );
    let mismatches: f64 = worker
        .metrics
        .render()
        .lines()
        .filter(|l| {
            l.starts_with("outlook_sync_events_invalid") && l.contains("routing_key_mismatch")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(mismatches as usize, 2 * wrong.len(), "counted by reason");
    println!(
        "RELIABILITY routing_keys mismatched={} dead_letters={} reason=routing_key_mismatch \
         replayed_flush_dead_letter_synced=true replayed_mismatches_refused_again={} \
         hostile_text_cleaned=true",
        wrong.len(),
        wrong.len(),
        again.len()
    );
    worker.stop(Duration::from_secs(5)).await;
    sb.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// The fuzz targets without libFuzzer

/// The seeds a mutation starts from: every example event (valid and invalid) and typical Graph
/// and token-endpoint answers, as the `split_response` layout expects them.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for dir in ["schemas/examples/valid", "schemas/examples/invalid"] {
        let mut paths: Vec<_> = std::fs::read_dir(crate::support::repo_path(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for p in paths {
            out.push(std::fs::read(p).unwrap());
        }
    }
    let answers: [(u16, &str, &str); 8] = [
        (
            429,
            "Retry-After: 2.5\nrequest-id: 1",
            r#"{"error":{"code":"ApplicationThrottled","message":"over limit"}}"#,
        ),
        (
            503,
            "retry-after: Sun, 06 Nov 1994 08:49:37 GMT",
            r#"{"error":{"code":"serviceNotAvailable","message":"x","innerError":{"request-id":"r"}}}"#,
        ),
        (
            404,
            "",
            r#"{"error":{"code":"ErrorItemNotFound","message":{"lang":"en","value":"gone"}}}"#,
        ),
        (
            401,
            "",
            r#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215],"trace_id":"t"}"#,
        ),
        (
            400,
            "",
            r#"{"error":"invalid_request","error_codes":["90002"]}"#,
        ),
        (
            403,
            "Retry-After: -1",
            r#"{"error":{"code":"ErrorAccessDenied","message":"Access to OData is disabled."}}"#,
        ),
        (
            504,
            "Retry-After: Sunday, 06-Nov-94 08:49:37 GMT",
            "<html>Gateway Time-out</html>",
        ),
        (
            200,
            "Retry-After: Sun Nov  6 08:49:37 1994",
            r#"{"access_token":1}"#,
        ),
    ];
    for (status, headers, body) in answers {
        let mut b = (status - 100).to_le_bytes().to_vec();
        b.extend_from_slice(headers.as_bytes());
        b.extend_from_slice(b"\n\n");
        b.extend_from_slice(body.as_bytes());
        out.push(b);
    }
    out
}

/// Values that break parsers: extremes of every type the contract uses.
const NASTY_STRINGS: &[&str] = &[
    "",
    " ",
    "\u{0}",
    "\u{feff}",
    "\u{1b}[31mred",
    "a\u{202e}fdp.exe",
    "\u{2066}x\u{2069}\u{200b}",
    "tag\u{e0041}\u{e0042}",
    "two\r\nlines\u{85}\u{2028}",
    "\u{7f}\u{9b}\t",
    "🗓️",
    "9999-12-31",
    "0000-01-01",
    "2026-02-29",
    "2026-13-45",
    "9999-12-31T23:59:59+00:00",
    "9999-12-31T23:59:59-23:59",
    "0000-01-01T00:00:00+23:59",
    "2026-11-01T01:30:00-04:00",
    "2026-11-30T10:00:00.123456789Z",
    "2026-11-30T10:00:00.1234567890Z",
    "2026-11-30T24:00:00Z",
    "2026-11-30T10:00:00+99:99",
    "Asia/Tokyo",
    "America/New_York",
    "Mars/Olympus_Mons",
    "UTC",
    "Etc/GMT+14",
    "../../etc/passwd",
    "schedule.created",
    "schedule.deleted",
    "public",
    "private",
    "https://app.cyzen.cloud/x",
    "http://",
    "18446744073709551615",
    "-1",
    "1e309",
    "NaN",
    "Sun, 06 Nov 1994 08:49:37 GMT",
    "AADSTS7000215:",
    "a/b",
    "o'neil",
];

fn nasty_value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.random_range(0..12) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random::<u64>()),
        3 => json!(rng.random::<i64>()),
        4 => json!(rng.random::<f64>() * 1e300),
        5 => json!([0, 1, 2, u64::MAX, 9_007_199_254_740_992u64][rng.random_range(0..5)]),
        // Lengths at and around the contract's limits (255, 1,000, 2,048, 20,000 characters).
        6 => Value::from(
            "é".repeat(
                *[0, 1, 64, 65, 255, 256, 1_001, 2_049, 20_000, 20_001]
                    .choose(rng)
                    .expect("lengths"),
            ),
        ),
        7 if depth < 4 => Value::Array(
            (0..*[0, 1, 3, 500, 501].choose(rng).expect("counts"))
                .map(|i| {
                    if i % 50 == 0 {
                        nasty_value(rng, depth + 1)
                    } else {
                        json!(format!("u-{i}"))
                    }
                })
                .collect(),
        ),
        8 if depth < 4 => json!({"name": nasty_value(rng, depth + 1), "address": "x"}),
        _ => Value::from(*NASTY_STRINGS.choose(rng).expect("strings")),
    }
}

/// A structure-aware mutation of a JSON event: change, drop or add fields (also inside
/// `schedule`), with values from the nasty set.
fn mutate_json(rng: &mut StdRng, v: &mut Value) {
    let Some(obj) = v.as_object_mut() else { return };
    let target = if rng.random_bool(0.6) {
        match obj.get_mut("schedule").and_then(Value::as_object_mut) {
            Some(s) => s,
            None => obj,
        }
    } else {
        obj
    };
    for _ in 0..rng.random_range(1..4) {
        let keys: Vec<String> = target.keys().cloned().collect();
        match rng.random_range(0..10) {
            0 if !keys.is_empty() => {
                let k = keys.choose(rng).expect("keys").clone();
                target.remove(&k);
            }
            1 => {
                target.insert(
                    format!("extra{}", rng.random_range(0..9)),
                    nasty_value(rng, 0),
                );
            }
            _ if !keys.is_empty() => {
                let k = keys.choose(rng).expect("keys").clone();
                target.insert(k, nasty_value(rng, 0));
            }
            _ => {}
        }
    }
}

/// A byte-level mutation: flips, inserts, deletes, duplicated or truncated ranges, splices of
/// another seed, runs of brackets.
fn mutate_bytes(rng: &mut StdRng, b: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..rng.random_range(1..6) {
        let len = b.len();
        let at = if len == 0 {
            0
        } else {
            rng.random_range(0..len)
        };
        match rng.random_range(0..8) {
            0 if len > 0 => b[at] ^= 1 << rng.random_range(0..8),
            1 if len > 0 => b[at] = rng.random(),
            2 => b.insert(at, rng.random()),
            3 if len > 0 => {
                let n = rng.random_range(1..=(len - at).min(64));
                b.drain(at..at + n);
            }
            4 if len > 0 => {
                let n = rng.random_range(1..=(len - at).min(256));
                let chunk = b[at..at + n].to_vec();
                b.splice(at..at, chunk);
            }
            5 => b.truncate(at),
            6 if !other.is_empty() => {
                let from = rng.random_range(0..other.len());
                let n = rng.random_range(1..=(other.len() - from).min(512));
                b.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => {
                let c = *[b"[", b"{", b"\"", b"\\", b"]"].choose(rng).expect("c");
                let n = rng.random_range(1..2_000);
                b.splice(at..at, std::iter::repeat_n(c[0], n));
            }
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn the_fuzz_targets_survive_random_and_structure_aware_inputs() {
    let n = env_u64("FUZZ_SMOKE_INPUTS").unwrap_or(100_000);
    let seed = env_u64("FUZZ_SMOKE_SEED").unwrap_or(0x0f0f_2026);
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds = seeds();
    let started = Instant::now();
    let (mut slowest, mut slowest_input) = (Duration::ZERO, Vec::new());
    let (mut most, mut most_input) = (0usize, Vec::new());
    for i in 0..n {
        let base = seeds.choose(&mut rng).expect("seeds");
        let input: Vec<u8> = match rng.random_range(0..10) {
            // Random bytes.
            0 => (0..rng.random_range(0..512))
                .map(|_| rng.random())
                .collect(),
            // Structure-aware: a JSON seed with fields changed, dropped or added.
            1..=4 => match serde_json::from_slice::<Value>(base) {
                Ok(mut v) => {
                    mutate_json(&mut rng, &mut v);
                    serde_json::to_vec(&v).expect("json")
                }
                Err(_) => base.clone(),
            },
            // Bytes of a seed, mutated.
            _ => {
                let mut b = base.clone();
                let other = seeds.choose(&mut rng).expect("seeds");
                mutate_bytes(&mut rng, &mut b, other);
                b
            }
        };
        let t = Instant::now();
        let mut peak = 0;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            peak = peak_bytes(|| {
                harness::decode_event(&input);
                harness::graph_response(&input);
            });
        }));
        let took = t.elapsed();
        if outcome.is_err() {
            panic!(
                "input #{i} (seed {seed}) panicked; its bytes (base64): {}",
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &input)
            );
        }
        if took > slowest {
            (slowest, slowest_input) = (took, input.clone());
        }
        // Parsing may hold a few copies of the input as JSON values, never more.
        let bound = 64 * input.len() + 4 * 1024 * 1024;
        assert!(
            peak <= bound,
            "input #{i} ({} bytes) held {peak} bytes at once (bound {bound}); base64: {}",
            input.len(),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &input)
        );
        if peak > most {
            (most, most_input) = (peak, input);
        }
    }
    let elapsed = started.elapsed();
    println!(
        "RELIABILITY fuzz_smoke inputs={n} seed={seed} panics=0 elapsed_s={:.1} slowest_ms={} \
         slowest_input_bytes={} peak_alloc_bytes={} peak_alloc_input_bytes={}",
        elapsed.as_secs_f64(),
        slowest.as_millis(),
        slowest_input.len(),
        most,
        most_input.len()
    );
    assert!(
        slowest < Duration::from_secs(2),
        "one input took {slowest:?} ({} bytes)",
        slowest_input.len()
    );
}

#[test]
fn the_allocation_meter_sees_what_a_call_holds() {
    let peak = peak_bytes(|| {
        let v = vec![0u8; 1 << 20];
        std::hint::black_box(&v);
    });
    assert!(peak >= 1 << 20, "{peak}");
    assert!(peak_bytes(|| {}) < 1024);
}
