//! `outlook-sync publish` puts events on the exchange with the contract's AMQP properties.

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use outlook_sync::amqp::Topology;

use crate::support::{self, repo_path};

#[tokio::test]
async fn publish_puts_a_valid_event_on_the_exchange_with_the_contract_properties() {
    let cfg = support::config("publish");
    let conn = support::rabbitmq().await;
    let ch = conn.create_channel().await.unwrap();
    Topology::new(&cfg.amqp).declare(&ch).await.unwrap();

    let file = repo_path("schemas/examples/valid/created-timed-tokyo.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("publish")
        .arg(&file)
        .env("OUTLOOK_SYNC__AMQP__EXCHANGE", &cfg.amqp.exchange)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        format!(
            "published {} with routing key schedule.created and message id 0b6f3c2e-5d1a-4f7e-9a43-1c2d3e4f5a6b\n\
             RabbitMQ confirmed the event published to exchange {}\n",
            file.display(),
            cfg.amqp.exchange
        )
    );

    let mut consumer = ch
        .basic_consume(
            cfg.amqp.queue.as_str().into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
        .await
        .expect("the published event reaches the work queue")
        .unwrap()
        .unwrap();
    let p = &delivery.properties;
    assert_eq!(delivery.routing_key.as_str(), "schedule.created");
    assert_eq!(
        p.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*p.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        p.message_id().as_ref().map(|s| s.as_str()),
        Some("0b6f3c2e-5d1a-4f7e-9a43-1c2d3e4f5a6b"),
        "message_id is the event id"
    );
    assert_eq!(delivery.data, std::fs::read(&file).unwrap());
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    support::cleanup_amqp(&cfg).await;
}

#[tokio::test]
async fn publish_refuses_an_invalid_event_and_says_why() {
    let cfg = support::config("publish-invalid");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("publish")
        .arg(repo_path("schemas/examples/invalid/end-before-start.json"))
        .env("OUTLOOK_SYNC__AMQP__EXCHANGE", &cfg.amqp.exchange)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("schedule.end") && stderr.contains("end_before_start"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-invalid"), "{stderr}");
}

#[tokio::test]
async fn publish_shows_the_times_of_a_refused_event_in_the_offset_they_were_given() {
    let cfg = support::config("publish-offset");
    let file = repo_path("schemas/examples/invalid/end-before-start.json");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("publish")
        .arg(&file)
        .env("OUTLOOK_SYNC__AMQP__EXCHANGE", &cfg.amqp.exchange)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The file says 10:00 and 09:00 in +09:00; UTC (01:00Z, 00:00Z) would send the reader
    // looking for times that are not in the file.
    assert_eq!(
        stderr,
        format!(
            "{} breaks the contract, so it is not published: schedule.end: 2026-11-30T09:00:00+09:00 is not after start 2026-11-30T10:00:00+09:00 [end_before_start]\n\
             error: 1 message breaks the contract, so nothing was published; fix it, or pass --allow-invalid to publish it anyway\n",
            file.display()
        )
    );
}
