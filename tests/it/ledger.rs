//! The sync ledger answers "why is this schedule not in Outlook?": a skip (participant not
//! linked), a dead letter (no mailbox) and an applied copy, from one command; replays that were
//! applied are marked and counted.

use std::time::Duration;

use graph_emulator::{MailboxKind, Settings};
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::ledger::{self, Entry, EntryFilter, Ledger, Outcome};
use outlook_sync::metrics::Metrics;
use outlook_sync::store::{Keys, Member};
use outlook_sync::tenants::Plan;
use outlook_sync::window::{Staging, Windows};
use redis::AsyncCommands;

use crate::support;

async fn sandbox(name: &str) -> Sandbox {
    match Sandbox::start(name, 1, Settings::default()).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_show_explains_a_skip_a_dead_letter_and_an_applied_copy() {
    let sb = sandbox("ledger-why").await;
    sb.company(
        "acme",
        Plan::Standard,
        &[
            ("u-1", "taro", MailboxKind::Ok),
            ("u-3", "sachiko", MailboxKind::NoMailbox),
        ],
    )
    .await
    .unwrap();
    let worker = sb.worker().await.unwrap();
    // u-9 is not linked; sachiko has no Exchange mailbox; taro is fine.
    sb.publish(&[Ev::created("acme", "s-1")
        .title("Visit: Tanaka Industries")
        .people("u-1", &["u-9", "u-3"])
        .wire()])
        .await
        .unwrap();
    assert!(sb.wait_idle(Duration::from_secs(40)).await.unwrap());
    worker.stop(Duration::from_secs(5)).await;

    let view = ledger::sync_view(
        &sb.cfg,
        sb.redis.clone(),
        "acme",
        "s-1",
        &EntryFilter::default(),
    )
    .await
    .unwrap();
    let taro = "taro@acme.onmicrosoft.com";
    let sachiko = "sachiko@acme.onmicrosoft.com";
    assert_eq!(view.company_status, "syncing");
    let staged = view.staged.as_ref().unwrap();
    assert_eq!((staged.revision, staged.kind.as_str()), (1, "created"));
    assert_eq!(staged.title.as_deref(), Some("Visit: Tanaka Industries"));
    assert!(staged.due_at.is_none() && staged.claimed_until.is_none());
    assert_eq!(staged.state, "flushed (nothing due)");

    // Each participant: copy, link and status.
    let p: Vec<(&str, bool, Option<&str>, Option<u64>)> = view
        .participants
        .iter()
        .map(|p| {
            (
                p.user.as_str(),
                p.linked,
                p.status.as_deref(),
                p.copy_revision,
            )
        })
        .collect();
    assert_eq!(
        p,
        vec![
            ("u-1", true, Some("authenticated"), Some(1)),
            ("u-9", false, None, None),
            ("u-3", true, Some("auth_failed"), None),
        ]
    );
    // The ledger: one applied, one skipped, one dead-lettered, with Graph's words.
    let find = |outcome: Outcome| {
        view.entries
            .iter()
            .find(|e| e.outcome == outcome)
            .unwrap_or_else(|| panic!("no {outcome:?} entry in {:#?}", view.entries))
    };
    let applied = find(Outcome::Applied);
    assert_eq!(
        (applied.target.as_str(), applied.op.as_str()),
        (taro, "create")
    );
    let skipped = find(Outcome::Skipped);
    assert_eq!(
        (skipped.target.as_str(), skipped.reason.as_str()),
        ("user u-9", "participant_not_linked")
    );
    let dead = find(Outcome::DeadLettered);
    assert_eq!(
        (dead.target.as_str(), dead.reason.as_str()),
        (sachiko, "no_mailbox")
    );
    assert_eq!(dead.graph_status, Some(404));
    assert!(dead.request_id.is_some());
    assert!(
        view.entries.windows(2).all(|w| w[0].at >= w[1].at),
        "newest first"
    );
    // The answer, in words.
    let why = view.why.join("\n");
    assert!(
        why.contains(&format!("u-1 <{taro}>: in Outlook at revision 1")),
        "{why}"
    );
    assert!(
        why.contains("u-9: no copy, this participant is not linked"),
        "{why}"
    );
    assert!(
        why.contains(&format!(
            "u-3 <{sachiko}>: not in Outlook: the user is marked auth_failed (no_mailbox"
        )) && why.contains("dlq replay --schedule s-1"),
        "{why}"
    );
    let text = ledger::render(&view);
    for want in [
        "why:",
        "participants:",
        "ledger (newest first):",
        "dead_lettered",
        "participant_not_linked",
        "MailboxNotEnabledForRESTAPI",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }

    // The same from the command line.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml::to_string(&sb.cfg).unwrap()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("--config")
        .arg(&path)
        .args(["ledger", "show", "acme", "s-1", "--target", sachiko])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("why:") && stdout.contains("no_mailbox"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("user u-9  plan"),
        "--target keeps sachiko's entries: {stdout}"
    );

    // Run without the secrets keys (an operator's laptop): it says that, not that the
    // credentials are unreadable.
    let mut keyless = sb.cfg.clone();
    keyless.secrets = Default::default();
    std::fs::write(&path, toml::to_string(&keyless).unwrap()).unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("--config")
        .arg(&path)
        .args(["ledger", "show", "acme", "s-1"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("secrets_keys_not_configured") && stdout.contains("secrets.keys"),
        "{stdout}"
    );
    assert!(!stdout.contains("credentials_unreadable"), "{stdout}");

    // A schedule nobody published.
    let none = ledger::sync_view(
        &sb.cfg,
        sb.redis.clone(),
        "acme",
        "s-404",
        &EntryFilter::default(),
    )
    .await
    .unwrap();
    assert!(none.staged.is_none() && none.entries.is_empty());
    assert!(none.why[0].contains("was it published?"), "{:?}", none.why);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_replay_is_marked_once_in_the_ledger_and_counted() {
    let cfg = support::config("ledger-replay");
    let redis = support::redis().await;
    let prefix = &cfg.redis.key_prefix;
    let windows = Windows::new(redis.clone(), Keys::new(prefix), Duration::from_secs(1));
    let metrics = Metrics::new();
    let ledger = Ledger::new(
        redis.clone(),
        windows.clone(),
        Duration::from_secs(3600),
        50,
    )
    .with_metrics(metrics.clone());
    let member = Member {
        company_id: "acme".into(),
        schedule_id: "s-1".into(),
    };
    let body =
        serde_json::to_vec(&Ev::updated("acme", "s-1", 2).people("u-1", &[]).wire()).unwrap();
    let ev = outlook_sync::event::decode(&body).unwrap();
    let old = serde_json::to_vec(&Ev::created("acme", "s-1").people("u-1", &[]).wire()).unwrap();
    let old_ev = outlook_sync::event::decode(&old).unwrap();
    windows.stage(&[Staging::new(&ev, &body)]).await.unwrap();
    let applied = |rev, target: &str| {
        (
            member.clone(),
            Entry::new(rev, target, "update", Outcome::Applied, "updated"),
        )
    };
    // Not a replay: nothing marked.
    assert_eq!(ledger.record(&[applied(2, "a@x")]).await.unwrap(), 0);
    // A replay of revision 1 (older than the staged 2) makes the schedule due again and marks
    // revision 2, the one the flush re-applies.
    let replay = Staging {
        replay: true,
        ..Staging::new(&old_ev, &old)
    };
    let staged = windows.stage(&[replay]).await.unwrap();
    assert_eq!(staged, vec![outlook_sync::window::Staged::Replayed]);
    let mut r = redis.clone();
    let due: Option<f64> = r
        .zscore(format!("{prefix}:due"), member.encode())
        .await
        .unwrap();
    assert!(due.is_some(), "due again");
    let n = ledger
        .record(&[
            applied(2, "b@x"),
            (
                member.clone(),
                Entry::new(
                    2,
                    "user u-9",
                    "plan",
                    Outcome::Skipped,
                    "participant_not_linked",
                ),
            ),
        ])
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(metrics.replays_succeeded.get(), 1);
    let entries = ledger.show(&member).await.unwrap();
    let marked: Vec<(&str, bool)> = entries
        .iter()
        .map(|e| (e.target.as_str(), e.replay))
        .collect();
    assert_eq!(
        marked,
        vec![("user u-9", false), ("b@x", true), ("a@x", false)]
    );
    // The mark is cleared: a later write of the same revision is not a replay.
    assert_eq!(ledger.record(&[applied(2, "c@x")]).await.unwrap(), 0);
    assert_eq!(metrics.replays_succeeded.get(), 1);
    let keys: Vec<String> = r.keys(format!("{prefix}:*")).await.unwrap();
    let _: () = r.del(keys).await.unwrap();
}
