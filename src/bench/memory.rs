//! Figure 4, memory: a real worker's peak RSS with many staged events, at two backlog sizes
//! (staged state lives in Redis, so it must not grow with the backlog).

use std::time::{Duration, Instant};

use redis::AsyncCommands;

use super::load::{event_body, participants};
use super::measure::rss_peak_kib;
use super::{BenchError, Figure, figure};
use crate::demo::Sandbox;
use graph_emulator::Settings;

/// The peak RSS at the larger backlog over the smaller; `binary` is the `outlook-sync`
/// executable run as the worker.
pub(super) async fn measure(
    quick: bool,
    binary: &std::path::Path,
    figures: &mut Vec<Figure>,
) -> Result<(), BenchError> {
    let sizes: [usize; 2] = if quick {
        [20_000, 60_000]
    } else {
        [100_000, 1_000_000]
    };
    let mut peaks = Vec::new();
    for n in sizes {
        let sb = Sandbox::start("bench-rss", 3600, Settings::default()).await?;
        let mib = worker_peak_rss(&sb, n, binary).await?;
        peaks.push(mib);
        sb.cleanup().await;
    }
    let ratio = peaks[1] / peaks[0].max(1.0);
    let max = peaks.iter().cloned().fold(0.0, f64::max);
    figures.push(figure(
        "Memory: peak RSS at the larger / the smaller staged count",
        format!(
            "{} staged: {:.1} MiB; {} staged: {:.1} MiB",
            sizes[0], peaks[0], sizes[1], peaks[1]
        ),
        ratio,
        "flat (≈ 1), both ≤ 128 MiB",
        ratio <= 1.25 && max <= 128.0,
    ));
    Ok(())
}

/// Runs `outlook-sync run` as a child with a long window (nothing flushes), feeds it `n` events,
/// and returns its peak RSS in MiB once they are all staged.
async fn worker_peak_rss(
    sb: &Sandbox,
    n: usize,
    binary: &std::path::Path,
) -> Result<f64, BenchError> {
    let dir = std::env::temp_dir().join(format!("{}-rss", crate::store::keys(&sb.cfg).prefix()));
    std::fs::create_dir_all(&dir).map_err(|e| BenchError::Other(e.to_string()))?;
    let mut cfg = sb.cfg.clone();
    cfg.window.seconds = 3600;
    cfg.admin.listen = "127.0.0.1:0".into();
    let path = dir.join("config.toml");
    std::fs::write(&path, toml_of(&cfg)).map_err(|e| BenchError::Other(e.to_string()))?;
    let mut child = tokio::process::Command::new(binary)
        .args(["--config", path.to_str().expect("utf-8 path"), "run"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Other(format!("cannot start {}: {e}", binary.display())))?;
    let pid = child.id().expect("running");
    let mut r = sb.redis.clone();
    let mut published = 0usize;
    let batch = 20_000;
    while published < n {
        let k = batch.min(n - published);
        let items: Vec<(String, &str, Vec<u8>)> = (published..published + k)
            .map(|i| {
                (
                    format!("m{i}"),
                    "schedule.created",
                    event_body("rss", &format!("s{i}"), 1, &participants(i, 50, 2)),
                )
            })
            .collect();
        sb.publish_bulk(&items).await?;
        published += k;
    }
    let due = crate::store::keys(&sb.cfg).due();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let staged: usize = r.zcard(&due).await?;
        if staged >= n && sb.queue_depth(&sb.cfg.amqp.queue).await? == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(BenchError::Other("staging did not finish".into()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let kib = rss_peak_kib(pid).unwrap_or(0);
    let _ = child.kill().await;
    Ok(kib as f64 / 1024.0)
}

fn toml_of(cfg: &crate::config::Config) -> String {
    toml::to_string(cfg).expect("the configuration serializes to TOML")
}
