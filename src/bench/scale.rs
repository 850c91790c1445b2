//! Figure 5, scale-out: one worker against two on a Graph-bound backlog.

use std::time::Duration;

use super::load::{company_with, drain_with_workers, stage_backlog};
use super::{BenchError, Figure, figure};
use crate::demo::Sandbox;
use graph_emulator::Settings;

/// One worker's time over two workers' time.
pub(super) async fn measure(quick: bool, figures: &mut Vec<Figure>) -> Result<(), BenchError> {
    let latency = Duration::from_millis(100);
    let (mailboxes, per_mailbox) = if quick { (64, 40) } else { (200, 100) };
    let mut took = Vec::new();
    for workers in [1, 2] {
        let settings = Settings {
            latency,
            ..Settings::default()
        };
        let mut sb = Sandbox::start("bench-scale", 1, settings).await?;
        // Each pod caps its Graph concurrency; more pods, more concurrency.
        sb.cfg.graph.max_in_flight_total = 64;
        company_with(&sb, "acme", mailboxes).await?;
        stage_backlog(&sb, "acme", mailboxes * per_mailbox, mailboxes, 1).await?;
        took.push(drain_with_workers(&sb, workers, Duration::from_secs(900)).await?);
        sb.cleanup().await;
    }
    let speedup = took[0].as_secs_f64() / took[1].as_secs_f64();
    figures.push(figure(
            "Scale-out: one worker's time / two workers' time",
            format!(
                "{} writes over {mailboxes} mailboxes at {} ms, 64 in flight per worker: {:.2} s vs {:.2} s",
                mailboxes * per_mailbox,
                latency.as_millis(),
                took[0].as_secs_f64(),
                took[1].as_secs_f64()
            ),
            speedup,
            "≥ 1.70",
            speedup >= 1.7,
        ));
    Ok(())
}
