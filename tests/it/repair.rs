//! The repair pass (issue #19) end to end, against the real RabbitMQ and Redis and the emulator:
//! copies deleted or edited in Outlook come back, our own writes are never taken for drift, the
//! `report` policy writes nothing, a stale delta token starts over without duplicates, and two
//! workers never read one mailbox at once.

use std::sync::Arc;
use std::time::Duration;

use graph_emulator::{MailboxKind, Settings};
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::graph::client::GraphClient;
use outlook_sync::ledger::Ledger;
use outlook_sync::metrics::Metrics;
use outlook_sync::repair::{PassReport, Repairer};
use outlook_sync::store::{self, Copies, CopyRecord, Drift, Member};
use outlook_sync::tenants::{DriftPolicy, Plan};
use outlook_sync::worker::Worker;
use serde_json::{Value, json};

use crate::support::{mailbox, sandbox};

const C: &str = "acme";
const IDLE: Duration = Duration::from_secs(40);

struct Fx {
    sb: Sandbox,
    worker: Option<Worker>,
    taro: String,
    metrics: Arc<Metrics>,
    repairer: Repairer,
}

/// A sandbox with one linked user (`u-1`, taro), a worker, and a repairer of its own.
async fn fx(name: &str, settings: Settings) -> Fx {
    let sb = sandbox(name, settings).await;
    sb.company(C, Plan::Standard, &[("u-1", "taro", MailboxKind::Ok)])
        .await
        .unwrap();
    let worker = Some(sb.worker().await.unwrap());
    let metrics = Metrics::new();
    let repairer = repairer(&sb, metrics.clone());
    Fx {
        taro: mailbox("taro", C),
        sb,
        worker,
        metrics,
        repairer,
    }
}

fn repairer(sb: &Sandbox, metrics: Arc<Metrics>) -> Repairer {
    Repairer::new(
        Arc::new(sb.cfg.clone()),
        sb.redis.clone(),
        GraphClient::new(&sb.cfg.graph),
        metrics,
    )
}

/// A schedule of taro's, tomorrow (so it is in the repair's range), with a place.
fn visit(id: &str, rev: u64, title: &str) -> outlook_sync::event::WireEvent {
    let day = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(30))
        .unwrap()
        .to_string();
    let day = &day[..10];
    let ev = if rev == 1 {
        Ev::created(C, id)
    } else {
        Ev::updated(C, id, rev)
    };
    ev.title(title)
        .people("u-1", &[])
        .at(
            &format!("{day}T10:00:00+09:00"),
            &format!("{day}T11:00:00+09:00"),
            "Asia/Tokyo",
        )
        .place("Head office", "1-1 Marunouchi, Tokyo")
        .wire()
}

impl Fx {
    async fn publish(&self, events: &[outlook_sync::event::WireEvent]) {
        self.sb.publish(events).await.unwrap();
        self.idle().await;
    }

    async fn idle(&self) {
        assert!(
            self.sb.wait_idle(IDLE).await.unwrap(),
            "the pipeline did not drain within {IDLE:?}"
        );
    }

    async fn pass(&self) -> PassReport {
        self.repairer.pass(C, &self.taro).await.expect("a pass")
    }

    fn calendar(&self) -> Vec<Value> {
        self.sb.emulator.emulator.calendar(&self.taro)
    }

    fn event_of(&self, subject: &str) -> Value {
        let cal = self.calendar();
        let hits: Vec<&Value> = cal.iter().filter(|e| e["subject"] == subject).collect();
        assert_eq!(hits.len(), 1, "one copy titled {subject}: {cal:#?}");
        hits[0].clone()
    }

    fn writes(&self) -> u64 {
        self.sb.emulator.emulator.stats().writes
    }

    async fn copy(&self, schedule: &str) -> Option<CopyRecord> {
        Copies::new(self.sb.redis.clone(), store::keys(&self.sb.cfg))
            .get(&Member::new(C, schedule), &self.taro)
            .await
            .unwrap()
    }

    async fn ledger_words(&self, schedule: &str) -> Vec<String> {
        Ledger::from_config(self.sb.redis.clone(), &self.sb.cfg)
            .show(&Member::new(C, schedule))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.words)
            .collect()
    }

    async fn set_policy(&self, policy: DriftPolicy) {
        let mut c = self.sb.directory.company(C).await.unwrap().unwrap();
        c.drift = policy;
        self.sb.directory.put_company(&c).await.unwrap();
    }

    async fn done(mut self) {
        if let Some(w) = self.worker.take() {
            w.stop(Duration::from_secs(5)).await;
        }
        self.sb.cleanup().await;
    }
}

fn same_copy(a: &Value, b: &Value) {
    for field in [
        "subject",
        "start",
        "end",
        "location",
        "body",
        "sensitivity",
        "categories",
    ] {
        assert_eq!(a[field], b[field], "{field}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_write_records_the_change_key_graph_returned_with_its_copy() {
    let f = fx("repair-ck", Settings::default()).await;
    f.publish(&[visit("s-1", 1, "v1")]).await;
    let ev = f.event_of("v1");
    let copy = f.copy("s-1").await.unwrap();
    assert_eq!(copy.event_id.as_deref(), ev["id"].as_str());
    assert_eq!(copy.ck.as_deref(), ev["changeKey"].as_str(), "the create's");
    f.publish(&[visit("s-1", 2, "v2")]).await;
    let ev2 = f.event_of("v2");
    assert_ne!(ev2["changeKey"], ev["changeKey"]);
    let copy = f.copy("s-1").await.unwrap();
    assert_eq!(
        copy.ck.as_deref(),
        ev2["changeKey"].as_str(),
        "the update's"
    );
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_own_writes_are_never_taken_for_drift_and_an_unchanged_mailbox_costs_one_request() {
    let f = fx("repair-own", Settings::default()).await;
    f.publish(&[
        visit("s-1", 1, "a"),
        visit("s-2", 1, "b"),
        visit("s-3", 1, "c"),
    ])
    .await;
    let writes = f.writes();
    // The first pass reads the whole range: our three copies, each with our changeKey.
    let first = f.pass().await;
    assert_eq!(
        (first.result, first.full, first.requests),
        ("clean", true, 1)
    );
    assert!(first.found.is_empty());
    // Our own update since: listed in the next round with the changeKey we recorded.
    f.publish(&[visit("s-2", 2, "b2")]).await;
    let writes_after_update = f.writes();
    assert_eq!(writes_after_update, writes + 1);
    let second = f.pass().await;
    assert_eq!((second.result, second.full), ("clean", false), "{second:?}");
    assert!(second.found.is_empty());
    // Nothing changed at all: one delta request, no write.
    let third = f.pass().await;
    assert_eq!((third.result, third.requests), ("clean", 1));
    f.idle().await;
    assert_eq!(f.writes(), writes_after_update, "no pass made a write");
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_deleted_in_outlook_is_back_within_one_pass_once() {
    let f = fx("repair-deleted", Settings::default()).await;
    f.publish(&[visit("s-1", 1, "visit"), visit("s-2", 1, "other")])
        .await;
    let before = f.event_of("visit");
    f.pass().await;
    assert!(
        f.sb.emulator
            .emulator
            .remove_event(&f.taro, before["id"].as_str().unwrap())
    );
    let report = f.pass().await;
    assert_eq!(report.result, "drift");
    assert_eq!(report.found, vec![(Member::new(C, "s-1"), Drift::Deleted)]);
    f.idle().await;
    let after = f.event_of("visit");
    assert_ne!(after["id"], before["id"], "created again");
    same_copy(&after, &before);
    assert_eq!(f.calendar().len(), 2, "no duplicate");
    let words = f.ledger_words("s-1").await;
    assert_eq!(words[0], "deleted in Outlook, recreated", "{words:?}");
    // The recreated copy is our own write from now on.
    let writes = f.writes();
    let next = f.pass().await;
    assert_eq!(next.result, "clean", "{next:?}");
    f.idle().await;
    assert_eq!(f.writes(), writes);
    let text = f.metrics.render();
    assert!(
        text.contains("outlook_sync_drift_found_total{kind=\"deleted\"} 1"),
        "{text}"
    );
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_edited_in_outlook_is_restored_subject_time_and_location() {
    let f = fx("repair-edited", Settings::default()).await;
    f.publish(&[visit("s-1", 1, "visit")]).await;
    let before = f.event_of("visit");
    f.pass().await;
    f.sb.emulator
        .emulator
        .edit_event(
            &f.taro,
            before["id"].as_str().unwrap(),
            &json!({
                "subject": "moved by a mobile client",
                "start": {"dateTime": "2031-01-01T09:00:00", "timeZone": "UTC"},
                "end": {"dateTime": "2031-01-01T10:00:00", "timeZone": "UTC"},
                "location": {"displayName": "somewhere else"},
            }),
        )
        .unwrap();
    let report = f.pass().await;
    // Moved out of the range, the edit is listed @removed: restored all the same.
    assert_eq!(report.found.len(), 1, "{report:?}");
    f.idle().await;
    let after = f.event_of("visit");
    assert_eq!(after["id"], before["id"], "written back, not created again");
    same_copy(&after, &before);
    assert_eq!(f.calendar().len(), 1);
    assert_eq!(
        f.ledger_words("s-1").await[0],
        "edited in Outlook, restored"
    );
    // An edit that stays in the range: listed with a changeKey that is not ours.
    f.sb.emulator
        .emulator
        .edit_event(
            &f.taro,
            before["id"].as_str().unwrap(),
            &json!({"subject": "renamed"}),
        )
        .unwrap();
    let report = f.pass().await;
    assert_eq!(report.found, vec![(Member::new(C, "s-1"), Drift::Edited)]);
    f.idle().await;
    same_copy(&f.event_of("visit"), &before);
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_deleted_then_recreated_in_cyzen_never_gets_two_copies() {
    let f = fx("repair-recreated", Settings::default()).await;
    f.publish(&[visit("s-1", 1, "first")]).await;
    f.pass().await;
    f.publish(&[Ev::deleted(C, "s-1", 2).wire()]).await;
    assert!(f.calendar().is_empty());
    f.publish(&[visit("s-1", 3, "again")]).await;
    // Our delete's @removed and our create are both our own doing.
    let writes = f.writes();
    let report = f.pass().await;
    assert!(report.found.is_empty(), "{report:?}");
    f.idle().await;
    assert_eq!(f.writes(), writes);
    // The owner deletes the new copy: back once.
    let id = f.event_of("again")["id"].as_str().unwrap().to_string();
    f.sb.emulator.emulator.remove_event(&f.taro, &id);
    f.pass().await;
    f.idle().await;
    f.pass().await;
    f.idle().await;
    assert_eq!(f.calendar().len(), 1, "{:#?}", f.calendar());
    f.event_of("again");
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_report_counts_and_notes_drift_but_writes_nothing() {
    let f = fx("repair-report", Settings::default()).await;
    f.publish(&[visit("s-1", 1, "kept"), visit("s-2", 1, "gone")])
        .await;
    f.set_policy(DriftPolicy::Report).await;
    f.pass().await;
    let kept = f.event_of("kept")["id"].as_str().unwrap().to_string();
    let gone = f.event_of("gone")["id"].as_str().unwrap().to_string();
    f.sb.emulator
        .emulator
        .edit_event(&f.taro, &kept, &json!({"subject": "edited"}))
        .unwrap();
    f.sb.emulator.emulator.remove_event(&f.taro, &gone);
    let writes = f.writes();
    let report = f.pass().await;
    assert_eq!(report.found.len(), 2, "{report:?}");
    f.idle().await;
    assert_eq!(f.writes(), writes, "report writes nothing");
    assert_eq!(f.calendar().len(), 1);
    assert_eq!(
        f.ledger_words("s-1").await[0],
        "edited in Outlook; not restored (the company's drift policy is report)"
    );
    assert_eq!(
        f.ledger_words("s-2").await[0],
        "deleted in Outlook; not recreated (the company's drift policy is report)"
    );
    // Off: not even read.
    f.set_policy(DriftPolicy::Off).await;
    let requests = f.sb.emulator.emulator.stats().requests;
    assert_eq!(f.pass().await.result, "skipped");
    assert_eq!(f.sb.emulator.emulator.stats().requests, requests);
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_delta_token_starts_over_without_duplicates() {
    let f = fx("repair-stale", Settings::default()).await;
    f.publish(&[
        visit("s-1", 1, "a"),
        visit("s-2", 1, "b"),
        visit("s-3", 1, "c"),
    ])
    .await;
    f.pass().await;
    let b = f.event_of("b")["id"].as_str().unwrap().to_string();
    f.sb.emulator.emulator.remove_event(&f.taro, &b);
    assert!(f.sb.emulator.emulator.expire_delta_tokens(&f.taro) > 0);
    let report = f.pass().await;
    assert_eq!(
        (report.result, report.full),
        ("restarted", true),
        "{report:?}"
    );
    // The full round does not list the deleted copy, whose schedule is in the range.
    assert_eq!(report.found, vec![(Member::new(C, "s-2"), Drift::Deleted)]);
    f.idle().await;
    let mut subjects: Vec<String> = f
        .calendar()
        .iter()
        .map(|e| e["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(subjects, ["a", "b", "c"]);
    // And the new cursor works.
    let next = f.pass().await;
    assert_eq!((next.result, next.full), ("clean", false));
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_never_read_one_mailbox_at_once() {
    let settings = Settings {
        latency: Duration::from_millis(150),
        ..Settings::default()
    };
    let mut f = fx("repair-two", settings).await;
    let events: Vec<_> = (0..6)
        .map(|i| visit(&format!("s-{i}"), 1, &format!("v{i}")))
        .collect();
    f.publish(&events).await;
    // Small pages, so a pass takes several slow requests.
    f.sb.cfg.repair.page_size = 1;
    let one = repairer(&f.sb, Metrics::new());
    let two = repairer(&f.sb, Metrics::new());
    f.sb.emulator.emulator.clear_log();
    let (a, b) = tokio::join!(one.pass(C, &f.taro), two.pass(C, &f.taro));
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut results = [a.result, b.result];
    results.sort();
    assert_eq!(results, ["busy", "clean"], "{a:?} {b:?}");
    let deltas: Vec<_> =
        f.sb.emulator
            .emulator
            .request_log()
            .into_iter()
            .filter(|r| r.path.contains("calendarView/delta"))
            .collect();
    assert_eq!(
        deltas.len(),
        6,
        "six pages of one, the last with the deltaLink"
    );
    for pair in deltas.windows(2) {
        let started = pair[1].time - pair[1].duration;
        assert!(started >= pair[0].time, "one request at a time, in order");
    }
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linked_mailboxes_are_spread_over_the_interval_and_each_due_pass_is_taken_by_one_worker() {
    let mut f = fx("repair-due", Settings::default()).await;
    f.sb.company(
        "globex",
        Plan::Standard,
        &[("u-1", "hanako", MailboxKind::Ok)],
    )
    .await
    .unwrap();
    f.publish(&[visit("s-1", 1, "visit")]).await;
    let now = outlook_sync::window::now_ms();
    let interval = f.sb.cfg.repair.interval_minutes * 60_000;
    assert_eq!(f.repairer.register().await.unwrap(), 2);
    let at = f
        .repairer
        .due_at(C, &f.taro)
        .await
        .unwrap()
        .expect("scheduled");
    assert!(
        at >= now && at <= now + interval + 1_000,
        "within one interval: {at}"
    );
    // Registering again keeps each mailbox's slot.
    f.repairer.register().await.unwrap();
    assert_eq!(f.repairer.due_at(C, &f.taro).await.unwrap(), Some(at));
    // Due now: of two workers asking at once, one takes the pass.
    f.repairer.due_by(C, &f.taro, 0).await.unwrap();
    let other = repairer(&f.sb, Metrics::new());
    let (a, b) = tokio::join!(f.repairer.run_due(), other.run_due());
    let ran: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
    assert_eq!(ran.len(), 1, "{ran:?}");
    assert_eq!(ran[0].0, f.taro);
    assert_eq!(ran[0].1.result, "clean");
    let next = f.repairer.due_at(C, &f.taro).await.unwrap().unwrap();
    assert!(next >= now + interval, "the next pass is an interval later");
    // Changes from cyzen first: while a schedule is due (no worker takes it here), no pass
    // starts; once it is gone, the pass runs.
    f.worker.take().unwrap().stop(Duration::from_secs(5)).await;
    f.repairer.due_by(C, &f.taro, 0).await.unwrap();
    let cfg = f.sb.cfg.clone();
    let windows =
        outlook_sync::window::Windows::new(f.sb.redis.clone(), store::keys(&cfg), cfg.window());
    let s1 = [Member::new(C, "s-1")];
    windows.make_due_now(&s1).await.unwrap();
    assert_eq!(windows.due_now().await.unwrap(), 1);
    assert!(f.repairer.run_due().await.unwrap().is_none());
    let mut r = f.sb.redis.clone();
    let _: () = redis::AsyncCommands::zrem(&mut r, store::keys(&cfg).due(), s1[0].encode())
        .await
        .unwrap();
    assert!(f.repairer.run_due().await.unwrap().is_some());
    f.done().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_marked_by_a_pass_that_died_before_making_it_due_is_restored_by_the_next_pass() {
    let f = fx("repair-stuck", Settings::default()).await;
    f.publish(&[visit("s-1", 1, "visit")]).await;
    f.pass().await;
    // A pass marked the copy, then died before making its schedule due.
    let copies = Copies::new(f.sb.redis.clone(), store::keys(&f.sb.cfg));
    let m = Member::new(C, "s-1");
    let marked = CopyRecord {
        drift: Some(Drift::Edited),
        ..f.copy("s-1").await.unwrap()
    };
    copies.write(&f.taro, &[(&m, marked)], &[]).await.unwrap();
    let writes = f.writes();
    f.pass().await;
    f.idle().await;
    assert_eq!(f.writes(), writes + 1, "written back once");
    let copy = f.copy("s-1").await.unwrap();
    assert_eq!(copy.drift, None);
    assert_eq!(
        copy.ck.as_deref(),
        f.event_of("visit")["changeKey"].as_str()
    );
    assert_eq!(
        f.ledger_words("s-1").await[0],
        "edited in Outlook, restored"
    );
    f.done().await;
}
