//! `outlook-sync demo` ends with the calendars a reader of README expects.

use crate::support::mailbox;

fn subjects(events: &[serde_json::Value]) -> Vec<&str> {
    let mut s: Vec<&str> = events
        .iter()
        .map(|e| e["subject"].as_str().unwrap_or_default())
        .collect();
    s.sort();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_ends_with_the_expected_calendars_and_two_dead_letters() {
    let out = match outlook_sync::demo::run_demo(1).await {
        Ok(o) => o,
        Err(e) => panic!("the demo needs the local RabbitMQ and Redis: {e}"),
    };
    let cal = |local: &str| subjects(&out.calendars[&mailbox(local, "acme")]);
    assert_eq!(
        cal("taro"),
        vec![
            "Trade fair, Osaka",
            "Visit: Tanaka Industries (renewal)",
            "Weekly sales meeting (moved to Tuesday)"
        ]
    );
    assert_eq!(
        cal("hanako"),
        vec![
            "Clinic",
            "Visit: Tanaka Industries (renewal)",
            "Weekly sales meeting (moved to Tuesday)"
        ]
    );
    assert_eq!(
        cal("jiro"),
        vec![
            "Demo for Kato Trading",
            "Trade fair, Osaka",
            "Visit: Tanaka Industries (renewal)"
        ]
    );
    assert!(cal("sachiko").is_empty());
    assert_eq!(out.dead_letters, 2, "{}", out.report);
    assert!(
        out.report.contains("auth failed (認証失敗): no_mailbox"),
        "{}",
        out.report
    );
}
