//! `outlook-sync bench`: the pipeline measured against its limits, on the local RabbitMQ and
//! Redis and the embedded emulator. Every figure is a ratio of two things measured side by side
//! in the same run (the machine is shared and noisy), and `BENCHMARKS.md` is written from it.
//!
//! One file per figure (`ingest`, `coalescing`, `drain`, `memory`, `scale`, `repair`,
//! `latency`, `cluster`), over the shared
//! workloads (`load`: also `On`, which Redis a figure runs on) and readings (`measure`);
//! `markdown` writes BENCHMARKS.md.
//!
//! `cluster` (`--only cluster`) runs the ingest and drain figures again on a 3-primary Redis
//! Cluster it starts for itself: "Ingest on a 3-primary Redis Cluster: worker rate / bare
//! consume-and-ack rate", "Staging on a 3-primary Redis Cluster: Redis CPU per staged event / a
//! bare pipelined SET" and "Drain on a 3-primary Redis Cluster: time / lower bound of Graph's
//! limits", with the single Redis's targets, and a note of each over the single Redis's figure
//! of the same run.

mod cluster;
mod coalescing;
mod drain;
mod ingest;
mod latency;
mod load;
mod markdown;
mod measure;
mod memory;
mod repair;
mod scale;

use std::fmt::Write as _;

pub use self::markdown::write_markdown;
use crate::demo::SandboxError;

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// Under a minute.
    Quick,
    /// A few minutes.
    Full,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("{0}")]
    Other(String),
}

/// One figure: what was measured, the ratio, and its target.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: &'static str,
    pub measured: String,
    pub ratio: f64,
    pub target: &'static str,
    pub met: bool,
}

pub struct Report {
    pub size: Size,
    pub figures: Vec<Figure>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn table(&self) -> String {
        let mut out = String::from(
            "| figure | measured (this run) | ratio | target | met |\n|---|---|---|---|---|\n",
        );
        for f in &self.figures {
            let _ = writeln!(
                out,
                "| {} | {} | {:.2} | {} | {} |",
                f.name,
                f.measured,
                f.ratio,
                f.target,
                if f.met { "yes" } else { "**no**" }
            );
        }
        out
    }
}

fn figure(
    name: &'static str,
    measured: String,
    ratio: f64,
    target: &'static str,
    met: bool,
) -> Figure {
    Figure {
        name,
        measured,
        ratio,
        target,
        met,
    }
}

/// Which figures to run (all when empty).
fn wanted(only: &[String], name: &str) -> bool {
    only.is_empty() || only.iter().any(|o| name.contains(o.as_str()))
}

/// Runs every figure (or those whose name contains one of `only`). `binary` is the
/// `outlook-sync` executable (for the memory figure).
pub async fn run(
    size: Size,
    binary: &std::path::Path,
    only: &[String],
) -> Result<Report, BenchError> {
    let quick = size == Size::Quick;
    let mut figures = Vec::new();
    let mut notes = Vec::new();

    // 1. Ingest against the broker's bare consume-and-ack rate.
    if wanted(only, "ingest") {
        ingest::measure(quick, load::On::Single, &mut figures, &mut notes).await?;
    }
    // 2. Coalescing: several updates per schedule inside one window.
    if wanted(only, "coalescing") {
        coalescing::measure(quick, &mut figures).await?;
    }
    // 3. Drain under Graph's limits: 4 in flight per mailbox, fixed latency.
    if wanted(only, "drain") {
        drain::measure(quick, load::On::Single, &mut figures, &mut notes).await?;
    }
    // 4. Memory: the worker's peak RSS with many staged events.
    if wanted(only, "memory") {
        memory::measure(quick, binary, &mut figures).await?;
    }
    // 5. Scale-out: one worker against two on a Graph-bound backlog.
    if wanted(only, "scale") {
        scale::measure(quick, &mut figures).await?;
    }
    // 6. The repair pass: Graph requests per pass, unchanged and full (issue #19).
    if wanted(only, "repair") {
        repair::measure(quick, &mut figures, &mut notes).await?;
    }
    // 7. What users feel: publish-to-copy delay at sustained rates, and the knee (issue #18).
    if wanted(only, "latency") {
        latency::measure(quick, &mut figures, &mut notes).await?;
    }
    // 8. Ingest and drain again on a 3-primary Redis Cluster of the bench's own (issue #18).
    if wanted(only, "cluster") {
        cluster::measure(quick, &mut figures, &mut notes).await?;
    }
    notes.push(format!(
        "machine: {} cores; RabbitMQ and Redis local; Graph: the embedded emulator",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    ));
    Ok(Report {
        size,
        figures,
        notes,
    })
}
