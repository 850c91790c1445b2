//! Figure 8, the cluster: the ingest and drain figures again, on a 3-primary Redis Cluster the
//! bench starts for itself (three `redis-server --cluster-enabled yes` on free ports, joined by
//! `redis-cli --cluster create`), beside the single Redis's of the same run.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::load::On;
use super::{BenchError, Figure, drain, ingest};

/// The ingest and drain figures on a cluster of the bench's own, and a note of each over the
/// single Redis's where both ran. The nodes are stopped at the end, failed or not.
pub(super) async fn measure(
    quick: bool,
    figures: &mut Vec<Figure>,
    notes: &mut Vec<String>,
) -> Result<(), BenchError> {
    let cluster = LocalCluster::start().await?;
    let url = cluster.url();
    ingest::measure(quick, On::Cluster(&url), figures, notes).await?;
    drain::measure(quick, On::Cluster(&url), figures, notes).await?;
    notes.push(
        "cluster: 3 primaries, no replicas, persistence off (as the local Redis), one claim \
         shard per primary (redis.shards = 3); Redis's CPU is that of every redis-server \
         process, the three nodes and the idle local Redis"
            .to_string(),
    );
    if let Some(note) = over_single(figures) {
        notes.push(note);
    }
    drop(cluster);
    Ok(())
}

/// Each cluster figure over the single Redis's of the same run, where both ran.
fn over_single(figures: &[Figure]) -> Option<String> {
    let ratio = |name: &str| figures.iter().find(|f| f.name == name).map(|f| f.ratio);
    let pairs = [
        (
            "ingest (worker rate / bare rate)",
            ingest::NAME,
            ingest::NAME_CLUSTER,
        ),
        (
            "staging (Redis CPU per event / SET)",
            ingest::STAGING,
            ingest::STAGING_CLUSTER,
        ),
        ("drain (time / bound)", drain::NAME, drain::NAME_CLUSTER),
    ];
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(what, single, cluster)| {
            let (s, c) = (ratio(single)?, ratio(cluster)?);
            Some(format!("{what} {c:.2} vs {s:.2}, {:.2}×", c / s.max(1e-9)))
        })
        .collect();
    (!parts.is_empty()).then(|| {
        format!(
            "cluster over single Redis, same run (cluster figure vs single figure, the \
             cluster's over the single's): {}",
            parts.join("; ")
        )
    })
}

/// Three primaries of the bench's own, in a directory of their own; killed (and the directory
/// removed) when dropped, so an error part-way leaves no `redis-server` behind.
struct LocalCluster {
    ports: Vec<u16>,
    nodes: Vec<Child>,
    dir: PathBuf,
}

impl LocalCluster {
    async fn start() -> Result<LocalCluster, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "outlook-sync-bench-cluster-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        std::fs::create_dir_all(&dir).map_err(|e| {
            BenchError::Other(format!(
                "the cluster figures could not make their directory {}: {e}",
                dir.display()
            ))
        })?;
        let mut cluster = LocalCluster {
            ports: Vec::new(),
            nodes: Vec::new(),
            dir,
        };
        for _ in 0..3 {
            let port = free_node_port(&cluster.ports).map_err(BenchError::Other)?;
            cluster
                .nodes
                .push(cluster.spawn(port).map_err(BenchError::Other)?);
            cluster.ports.push(port);
        }
        for &port in &cluster.ports {
            cluster
                .wait_for(port, &["PING"], "PONG", "answer PING")
                .await?;
        }
        let mut args: Vec<String> = vec!["--cluster".into(), "create".into()];
        args.extend(cluster.ports.iter().map(|p| format!("127.0.0.1:{p}")));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = redis_cli(&args).map_err(BenchError::Other)?;
        if !out.status.success() {
            return Err(BenchError::Other(format!(
                "`redis-cli --cluster create` failed to join the bench's three nodes into a \
                 cluster: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        for &port in &cluster.ports {
            cluster
                .wait_for(
                    port,
                    &["CLUSTER", "INFO"],
                    "cluster_state:ok",
                    "report cluster_state:ok",
                )
                .await?;
        }
        Ok(cluster)
    }

    /// `redis-server` on `port` as a cluster node, persistence off as the local test Redis.
    fn spawn(&self, port: u16) -> Result<Child, String> {
        let p = port.to_string();
        Command::new("redis-server")
            .args(["--port", &p, "--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{p}.conf")])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dbfilename", &format!("dump-{p}.rdb")])
            .args(["--logfile", &format!("node-{p}.log")])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                format!(
                    "the cluster figures start redis-server processes of their own, and \
                     `redis-server` could not be started ({e}): install it (Debian: \
                     redis-server) or run the bench without the cluster figures (--only)"
                )
            })
    }

    /// Polls `redis-cli -p port ARGS` until its answer contains `want`, for up to 20 s.
    async fn wait_for(
        &self,
        port: u16,
        args: &[&str],
        want: &str,
        what: &str,
    ) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut a = vec!["-p".to_string(), port.to_string()];
            a.extend(args.iter().map(|s| s.to_string()));
            let out = redis_cli(&a).map_err(BenchError::Other)?;
            if String::from_utf8_lossy(&out.stdout).contains(want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Other(format!(
                    "the bench's cluster node on port {port} did not {what} within 20 s; its log \
                     is {}",
                    self.dir.join(format!("node-{port}.log")).display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn redis_cli(args: &[String]) -> Result<std::process::Output, String> {
    Command::new("redis-cli").args(args).output().map_err(|e| {
        format!(
            "the cluster figures run `redis-cli` to join and check their nodes, and it could not \
             be started ({e}): install it (Debian: redis-tools)"
        )
    })
}

/// A port under 55,000 that is free, as is its cluster bus port (+10,000), and not in `taken`.
fn free_node_port(taken: &[u16]) -> Result<u16, String> {
    let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
    for _ in 0..200 {
        let p = rand::random_range(20_000..55_000u16);
        let clash = taken
            .iter()
            .any(|&t| t == p || t + 10_000 == p || p + 10_000 == t);
        if !clash && free(p) && free(p + 10_000) {
            return Ok(p);
        }
    }
    Err(
        "no free port pair (a node's and its bus port, +10,000) under 55,000 was found for the \
         bench's cluster nodes"
            .into(),
    )
}
