//! `redis-server` processes of a test's own, on free ports, stopped when dropped: a TLS-only
//! server with a CA and certificate the test makes with `openssl`, and (for the topology tests)
//! replicas, sentinels and cluster nodes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One `redis-server` (or sentinel) process, killed when dropped.
pub struct RedisProcess {
    child: Child,
}

impl RedisProcess {
    /// Starts `redis-server` with `args` (a config file first, if any) in `dir`.
    pub fn spawn(dir: &Path, args: &[String]) -> RedisProcess {
        let child = Command::new("redis-server")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("this test needs redis-server on the PATH (Debian: redis-server): {e}")
            });
        RedisProcess { child }
    }

    /// SIGTERM, as an orderly restart sends: Redis writes its AOF out and exits; waits for the
    /// process to end (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
    }

    /// SIGKILL, as a crashed host would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `client` answers PING, or panics naming `what`.
pub async fn wait_ping(client: &redis::Client, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut c) = client.get_multiplexed_async_connection().await
            && redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A CA and a server certificate for `localhost` signed by it, and a second, unrelated CA.
pub struct Certs {
    pub dir: PathBuf,
}

impl Certs {
    pub fn make(dir: &Path) -> Certs {
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .unwrap_or_else(|e| panic!("this test needs openssl on the PATH: {e}"));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=outlook-sync test {ca}"),
            );
            let mut a = vec!["req", "-x509", "-nodes", "-days", "2"];
            a.extend(ec);
            a.extend(["-keyout", &key, "-out", &pem, "-subj", &subj]);
            a.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            a.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            run(&a);
        }
        let mut a = vec!["req", "-nodes"];
        a.extend(ec);
        a.extend(["-keyout", "server.key", "-out", "server.csr"]);
        a.extend(["-subj", "/CN=localhost"]);
        run(&a);
        std::fs::write(
            dir.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n",
        )
        .unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ]);
        Certs {
            dir: dir.to_path_buf(),
        }
    }

    pub fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// `redis-server` arguments for TLS only on `port` (the plain port off).
    pub fn server_args(&self, port: u16) -> Vec<String> {
        [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "-::1",
            "--tls-cert-file",
            &self.file("server.pem"),
            "--tls-key-file",
            &self.file("server.key"),
            "--tls-ca-cert-file",
            &self.file("ca.pem"),
            "--tls-auth-clients",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }
}

/// `redis-server` arguments for a plain node on `port` with production's persistence
/// (AOF, `appendfsync everysec`), any extra `args` after.
pub fn node_args(port: u16, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--appendfilename",
        &format!("aof-{port}.aof"),
        "--appenddirname",
        &format!("aof-{port}"),
        "--dbfilename",
        &format!("dump-{port}.rdb"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// A primary, one replica and one sentinel watching them as `mymaster` (quorum 1, the primary
/// judged down after 1 s).
pub struct SentinelSet {
    pub primary: RedisProcess,
    pub primary_port: u16,
    _replica: RedisProcess,
    pub replica_port: u16,
    pub sentinel_port: u16,
    _sentinel: RedisProcess,
    _dir: tempfile::TempDir,
}

impl SentinelSet {
    pub async fn start() -> SentinelSet {
        let dir = tempfile::tempdir().unwrap();
        let (p, r, s) = (free_port(), free_port(), free_port());
        let primary = RedisProcess::spawn(
            dir.path(),
            &node_args(p, &["--repl-diskless-sync-delay", "0"]),
        );
        let replica = RedisProcess::spawn(
            dir.path(),
            &node_args(r, &["--replicaof", "127.0.0.1", &p.to_string()]),
        );
        for port in [p, r] {
            let c = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
            wait_ping(&c, &format!("redis-server on {port}")).await;
        }
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {s}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {p} 1\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        )
        .unwrap();
        let sentinel = RedisProcess::spawn(
            dir.path(),
            &[conf.to_string_lossy().into_owned(), "--sentinel".into()],
        );
        let c = redis::Client::open(format!("redis://127.0.0.1:{s}/")).unwrap();
        wait_ping(&c, "redis-server --sentinel").await;
        // The replica has caught up and the sentinel knows it, so a failover can pick it.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let info = Command::new("redis-cli")
                .args(["-p", &r.to_string(), "INFO", "replication"])
                .output()
                .expect("redis-cli");
            if String::from_utf8_lossy(&info.stdout).contains("master_link_status:up") {
                break;
            }
            assert!(Instant::now() < deadline, "the replica never synced");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            let replicas = Command::new("redis-cli")
                .args(["-p", &s.to_string(), "SENTINEL", "REPLICAS", "mymaster"])
                .output()
                .expect("redis-cli");
            let text = String::from_utf8_lossy(&replicas.stdout).to_string();
            if text.contains(&r.to_string()) && !text.contains("s_down") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the sentinel never saw the replica: {text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        SentinelSet {
            primary,
            primary_port: p,
            _replica: replica,
            replica_port: r,
            sentinel_port: s,
            _sentinel: sentinel,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis+sentinel://127.0.0.1:{}/mymaster", self.sentinel_port)
    }

    /// The port of the primary the sentinel names now.
    pub fn primary_now(&self) -> Option<u16> {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &self.sentinel_port.to_string(),
                "SENTINEL",
                "GET-MASTER-ADDR-BY-NAME",
                "mymaster",
            ])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    /// `SENTINEL FAILOVER`: the replica is promoted, the primary demoted.
    pub fn failover(&self) {
        let out = Command::new("redis-cli")
            .args([
                "-p",
                &self.sentinel_port.to_string(),
                "SENTINEL",
                "FAILOVER",
                "mymaster",
            ])
            .output()
            .expect("redis-cli");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("OK"),
            "SENTINEL FAILOVER: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

/// Three primaries on free ports made one Redis Cluster (`redis-cli --cluster create`).
pub struct ClusterSet {
    pub ports: Vec<u16>,
    nodes: Vec<RedisProcess>,
    /// Each node's `redis-server` arguments, to start it again as it was.
    args: Vec<Vec<String>>,
    dir: tempfile::TempDir,
}

impl ClusterSet {
    pub async fn start() -> ClusterSet {
        let dir = tempfile::tempdir().unwrap();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            // A node's cluster bus listens on its port + 10,000, which must be free too.
            let p = free_port();
            let bus_free = p < 55_000
                && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
                && !ports
                    .iter()
                    .any(|&q| q == p || q == p + 10_000 || q + 10_000 == p);
            if bus_free {
                ports.push(p);
            }
        }
        let args: Vec<Vec<String>> = ports
            .iter()
            .map(|p| {
                let conf = format!("nodes-{p}.conf");
                node_args(
                    *p,
                    &["--cluster-enabled", "yes", "--cluster-config-file", &conf],
                )
            })
            .collect();
        let nodes: Vec<RedisProcess> = args
            .iter()
            .map(|a| RedisProcess::spawn(dir.path(), a))
            .collect();
        for p in &ports {
            let c = redis::Client::open(format!("redis://127.0.0.1:{p}/")).unwrap();
            wait_ping(&c, &format!("cluster node on {p}")).await;
        }
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend([
            "--cluster-replicas".into(),
            "0".into(),
            "--cluster-yes".into(),
        ]);
        let out = Command::new("redis-cli")
            .args(&create)
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let set = ClusterSet {
            ports,
            nodes,
            args,
            dir,
        };
        for p in &set.ports {
            wait_cluster_ok(*p);
        }
        set
    }

    /// Stops node `i` gracefully (SIGTERM: its AOF written out), keeps it down for `down`, then
    /// starts it again with the same arguments in the same directory (its `nodes-PORT.conf` and
    /// AOF), and waits until every node reports `cluster_state:ok`. Blocks the calling thread.
    pub fn restart(&mut self, i: usize, down: Duration) {
        self.nodes[i].stop();
        std::thread::sleep(down);
        self.nodes[i] = RedisProcess::spawn(self.dir.path(), &self.args[i]);
        for p in &self.ports {
            wait_cluster_ok(*p);
        }
    }

    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// How many keys each node holds.
    pub fn keys_per_node(&self) -> Vec<u64> {
        self.ports
            .iter()
            .map(|p| {
                let out = Command::new("redis-cli")
                    .args(["-p", &p.to_string(), "DBSIZE"])
                    .output()
                    .expect("redis-cli");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .unwrap_or(0)
            })
            .collect()
    }
}

/// Waits (blocking, up to 20 s) until the node on `port` reports `cluster_state:ok`.
fn wait_cluster_ok(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let info = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "CLUSTER", "INFO"])
            .output()
            .expect("redis-cli");
        if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster node on {port} never reported cluster_state:ok"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
