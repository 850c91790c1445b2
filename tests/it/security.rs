//! Secrets and tenant isolation, on the real binary: `outlook-sync run` as a child process
//! (production's logging, its admin API and `/metrics` on a loopback port), configured with two
//! admin tokens and an encryption key, against the local RabbitMQ and Redis and the Graph
//! emulator with two companies in two Microsoft tenants.
//!
//! A full scenario (credentials set, verified, broken and fixed; users linked, one without a
//! mailbox; events synced; an invalid event; a change that fails on a wrong secret; calls with
//! missing and wrong tokens), then every place a secret could leak is searched for every secret:
//! the process's whole log output at `trace` (our crate) and `debug` (its dependencies), the
//! metrics, every admin API answer (bodies and headers), the dead letters (bodies and
//! properties), and Redis. The secrets: both companies' client secrets, a wrong secret that was
//! tried, both admin tokens, the tokens presented by unauthenticated callers, the encryption key,
//! and any Graph access token (a JWT).
//!
//! Then the emulator's request log: every request made with one company's app addressed only
//! that company's tenant and mailboxes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use graph_emulator::{MailboxKind, SeedApp, SeedTenant, SeedUser, Settings};
use lapin::options::BasicGetOptions;
use outlook_sync::demo::{Ev, Sandbox};
use redis::AsyncCommands;
use serde_json::{Value, json};

const ROLES: [&str; 3] = ["Calendars.ReadWrite", "User.Read.All", "Contacts.Read"];

/// A company's Microsoft tenant in the emulator.
struct Tenant {
    company: &'static str,
    id: String,
    domain: String,
    client_id: String,
    secret: String,
}

impl Tenant {
    fn new(sb: &Sandbox, company: &'static str, users: &[(&str, MailboxKind)]) -> Tenant {
        let t = Tenant {
            company,
            id: uuid::Uuid::new_v4().to_string(),
            domain: format!("{company}-sec.onmicrosoft.com"),
            client_id: uuid::Uuid::new_v4().to_string(),
            secret: format!("{company}~Secr3t.{}", uuid::Uuid::new_v4().simple()),
        };
        let mut seed = SeedTenant::new(&t.id, &t.domain)
            .with_app(SeedApp::new(&t.client_id, &t.secret).with_roles(ROLES));
        for (local, kind) in users {
            seed = seed.with_user(SeedUser::new(t.upn(local)).with_mailbox(*kind));
        }
        sb.emulator.emulator.add_tenant(seed);
        t
    }

    fn upn(&self, local: &str) -> String {
        format!("{local}@{}", self.domain)
    }

    fn credentials(&self, secret: &str) -> Value {
        json!({"tenant_id": self.id, "client_id": self.client_id, "client_secret": secret})
    }
}

/// The child process and everything it answered.
struct Service {
    base: String,
    child: std::process::Child,
    http: reqwest::Client,
    token: String,
    /// Every answer: status, headers and body, as text.
    answers: Vec<String>,
}

impl Service {
    async fn call(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{}{path}", self.base),
        );
        if let Some(t) = token {
            req = req.header("authorization", t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = format!("{:?}", resp.headers());
        let text = resp.text().await.unwrap();
        self.answers
            .push(format!("{method} {path} → {status} {headers} {text}"));
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A call with the real token that must succeed.
    async fn ok(&mut self, method: &str, path: &str, body: Option<Value>) -> Value {
        let bearer = format!("Bearer {}", self.token);
        let (status, v) = self.call(method, path, Some(&bearer), body).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }

    /// SIGTERM, then waits for the process to drain and exit.
    fn stop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("outlook-sync run did not stop within 40 s of SIGTERM");
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_service(sb: &Sandbox, dir: &Path, tokens: &[String]) -> Service {
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cfg = sb.cfg.clone();
    cfg.admin.listen = format!("127.0.0.1:{port}");
    cfg.admin.public_url = base.clone();
    cfg.admin.tokens = tokens.to_vec();
    cfg.log.format = outlook_sync::config::LogFormat::Json;
    cfg.log.filter = "outlook_sync=trace,debug".into();
    cfg.validate().expect("a valid configuration");
    let path = dir.join("config.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdout(std::fs::File::create(dir.join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("stderr.log")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .expect("the outlook-sync binary starts");
    let mut s = Service {
        base,
        child,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        token: tokens[0].clone(),
        answers: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = s.http.get(format!("{}/readyz", s.base)).send().await
            && r.status().is_success()
        {
            return s;
        }
        if let Ok(Some(status)) = s.child.try_wait() {
            panic!(
                "outlook-sync run exited with {status}: {}",
                std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "outlook-sync run never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Concrete paths for the route templates (`{company}` → `alpha`).
fn concrete(path: &str) -> String {
    path.replace("{company}", "alpha")
        .replace("{user}", "u-1")
        .replace("{job}", "j-1")
        .replace("{id}", "x")
        .replace("{schedule}", "s-1")
}

/// Every JWT-shaped string (`eyJ…` header, a dot, a payload): Graph access tokens.
fn jwts(text: &str) -> Vec<String> {
    let b64 = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let mut out = Vec::new();
    for (i, _) in text.match_indices("eyJ") {
        let rest = &text[i..];
        let head: String = rest.chars().take_while(|c| b64(*c)).collect();
        let after = &rest[head.len()..];
        if head.len() >= 10 && after.starts_with('.') && after[1..].chars().take(10).all(b64) {
            out.push(rest.chars().take(40).collect());
        }
    }
    out
}

/// Whether `text` shows `secret` or any 16 consecutive characters of it (a prefix, a suffix, a
/// slice logged "for debugging" is a leak too).
fn shows(text: &str, secret: &str) -> bool {
    const WINDOW: usize = 16;
    if secret.len() <= WINDOW {
        return text.contains(secret);
    }
    secret
        .as_bytes()
        .windows(WINDOW)
        .any(|w| text.contains(std::str::from_utf8(w).expect("ASCII secrets")))
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_ever_leaves_the_service_and_no_company_reaches_another_companys_mailbox() {
    let sb = match Sandbox::start("security", 1, Settings::default()).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    };
    let dir = tempfile::tempdir().unwrap();
    let tokens = vec![
        format!("adm-{}", uuid::Uuid::new_v4().simple()),
        format!("adm-{}", uuid::Uuid::new_v4().simple()),
    ];
    let alpha = Tenant::new(
        &sb,
        "alpha",
        &[
            ("taro", MailboxKind::Ok),
            ("hanako", MailboxKind::Ok),
            ("guest", MailboxKind::NoMailbox),
        ],
    );
    let beta = Tenant::new(
        &sb,
        "beta",
        &[("jiro", MailboxKind::Ok), ("saburo", MailboxKind::Ok)],
    );
    let wrong_secret = format!("{}-rotated-badly", beta.secret);
    let mut svc = start_service(&sb, dir.path(), &tokens).await;

    // 1. Without a token, with a wrong one, or almost the right one: 401 on every admin route,
    //    and the answer never echoes what was presented.
    let presented = [
        None,
        Some("Bearer".to_string()),
        Some("Bearer wrong-token-but-long-enough".to_string()),
        Some(format!("Bearer {}x", tokens[0])),
        Some(format!("Bearer {}", &tokens[0][..tokens[0].len() - 1])),
        Some(format!("Basic {}", tokens[0])),
        Some(tokens[0].clone()),
    ];
    let mut refused = 0;
    for (method, path) in outlook_sync::admin::api::routes() {
        if path.starts_with("/v1/consent/") {
            continue; // authenticated by its single-use state, not a token
        }
        for token in &presented {
            let body = (method != "GET" && method != "DELETE").then(|| json!({}));
            let (status, v) = svc
                .call(method, &concrete(path), token.as_deref(), body)
                .await;
            assert_eq!(status, 401, "{method} {path} with {token:?}: {v}");
            assert_eq!(v["error"]["code"], "unauthorized", "{v}");
            refused += 1;
        }
    }
    // Dead-letter and ledger operations must not be reachable without a token either, wherever
    // they are mounted.
    for path in [
        "/dlq/messages",
        "/dlq/summary",
        "/v1/dlq/messages",
        "/v1/dlq/summary",
        "/ledger/alpha/s-1",
        "/v1/ledger/alpha/s-1",
    ] {
        let (status, v) = svc.call("GET", path, None, None).await;
        assert!(
            status == 401 || status == 404,
            "GET {path} without a token answered {status}: {v}"
        );
    }

    // 2. The companies, through the API: alpha right away, beta with a secret that is then
    //    replaced by a wrong one (its change fails) and fixed again.
    for (t, secret) in [(&alpha, &alpha.secret), (&beta, &beta.secret)] {
        let c = t.company;
        svc.ok(
            "PUT",
            &format!("/v1/companies/{c}"),
            Some(json!({"plan": "standard", "options": []})),
        )
        .await;
        svc.ok(
            "PUT",
            &format!("/v1/companies/{c}/microsoft365"),
            Some(t.credentials(secret)),
        )
        .await;
        svc.ok(
            "POST",
            &format!("/v1/companies/{c}/microsoft365/enable"),
            None,
        )
        .await;
        let v = svc
            .ok(
                "POST",
                &format!("/v1/companies/{c}/microsoft365/verify"),
                None,
            )
            .await;
        assert_eq!(v["outcome"], "ok", "{v}");
    }
    // The same user ids in both companies: only the company's own directory may resolve them.
    for (c, user, mb) in [
        ("alpha", "u-1", alpha.upn("taro")),
        ("alpha", "u-2", alpha.upn("hanako")),
        ("alpha", "u-3", alpha.upn("guest")),
        ("beta", "u-1", beta.upn("jiro")),
        ("beta", "u-2", beta.upn("saburo")),
    ] {
        svc.ok(
            "PUT",
            &format!("/v1/companies/{c}/users/{user}"),
            Some(json!({"mailbox": mb})),
        )
        .await;
    }
    // A second admin token works as well.
    let second = format!("Bearer {}", tokens[1]);
    let (status, _) = svc.call("GET", "/v1/companies", Some(&second), None).await;
    assert_eq!(status, 200);

    sb.publish(&[
        Ev::created("alpha", "s-1")
            .title("alpha meeting")
            .people("u-1", &["u-2", "u-3", "u-9"])
            .wire(),
        Ev::created("beta", "s-1")
            .title("beta visit")
            .people("u-1", &["u-2"])
            .wire(),
    ])
    .await
    .unwrap();
    sb.publish_raw("bad-1", "schedule.created", b"{\"not\": \"an event\"")
        .await
        .unwrap();
    let cal = |mb: String| sb.emulator.emulator.calendar(&mb).len();
    wait_for("the first sync", Duration::from_secs(30), || {
        cal(alpha.upn("taro")) == 1 && cal(alpha.upn("hanako")) == 1 && cal(beta.upn("jiro")) == 1
    })
    .await;

    // Beta's secret is replaced by a wrong one: its next change cannot be written.
    svc.ok(
        "PUT",
        "/v1/companies/beta/microsoft365",
        Some(beta.credentials(&wrong_secret)),
    )
    .await;
    let v = svc
        .ok("POST", "/v1/companies/beta/microsoft365/verify", None)
        .await;
    assert_ne!(v["outcome"], "ok", "{v}");
    sb.publish(&[Ev::updated("beta", "s-1", 2)
        .title("beta visit, moved")
        .people("u-1", &["u-2"])
        .wire()])
        .await
        .unwrap();
    let dlq = sb.cfg.amqp.dead_letter_queue.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sb.queue_depth(&dlq).await.unwrap() < 3 {
        assert!(
            Instant::now() < deadline,
            "expected dead letters for the invalid event, the mailbox-less user and beta's \
             failed change; have {}",
            sb.queue_depth(&dlq).await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Fixed again; the next change goes through.
    svc.ok(
        "PUT",
        "/v1/companies/beta/microsoft365",
        Some(beta.credentials(&beta.secret)),
    )
    .await;
    for c in ["alpha", "beta"] {
        svc.ok(
            "POST",
            &format!("/v1/companies/{c}/microsoft365/verify"),
            None,
        )
        .await;
        svc.ok("GET", &format!("/v1/companies/{c}"), None).await;
        svc.ok("GET", &format!("/v1/companies/{c}/microsoft365"), None)
            .await;
        svc.ok("GET", &format!("/v1/companies/{c}/users"), None)
            .await;
    }
    svc.ok("POST", "/v1/companies/beta/users/u-1/verify", None)
        .await;
    svc.ok("POST", "/v1/companies/beta/users/u-2/verify", None)
        .await;
    sb.publish(&[Ev::updated("beta", "s-1", 3)
        .title("beta visit, final")
        .people("u-1", &["u-2"])
        .wire()])
        .await
        .unwrap();
    let subject = |mb: String| {
        sb.emulator
            .emulator
            .calendar(&mb)
            .first()
            .map(|e| e["subject"].as_str().unwrap_or_default().to_string())
    };
    wait_for("beta's fixed sync", Duration::from_secs(30), || {
        subject(beta.upn("jiro")).as_deref() == Some("beta visit, final")
    })
    .await;
    svc.ok("GET", "/v1/companies", None).await;
    let (_, metrics) = svc.call("GET", "/metrics", None, None).await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(metrics.contains("outlook_sync_"), "{metrics}");
    svc.stop();

    // 3. Collect every place a secret could show.
    let logs = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap()
        + &std::fs::read_to_string(dir.path().join("stdout.log")).unwrap();
    for expected in [
        "flush: running",
        "dead-lettered",
        "refused an unauthenticated call",
    ] {
        assert!(
            logs.contains(expected),
            "the captured log lacks {expected:?}"
        );
    }
    let conn = crate::support::rabbitmq().await;
    let ch = conn.create_channel().await.unwrap();
    let mut dead = Vec::new();
    while let Some(m) = ch
        .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        dead.push(format!(
            "{:?} {}",
            m.delivery.properties,
            String::from_utf8_lossy(&m.delivery.data)
        ));
    }
    let mut r = sb.redis.clone();
    let keys: Vec<String> = r
        .keys(format!("{}:*", sb.cfg.redis.key_prefix))
        .await
        .unwrap();
    let mut stored = String::new();
    for k in &keys {
        let dump: Option<Vec<u8>> = redis::cmd("DUMP").arg(k).query_async(&mut r).await.unwrap();
        stored.push_str(&String::from_utf8_lossy(&dump.unwrap_or_default()));
    }
    let key_b64 = sb.cfg.secrets.keys[0].key_base64.clone();
    let key_raw =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &key_b64).unwrap();
    let mut secrets: BTreeMap<String, String> = BTreeMap::new();
    secrets.insert("alpha's client secret".into(), alpha.secret.clone());
    secrets.insert("beta's client secret".into(), beta.secret.clone());
    secrets.insert(
        "the wrong secret tried for beta".into(),
        wrong_secret.clone(),
    );
    secrets.insert("admin token 1".into(), tokens[0].clone());
    secrets.insert("admin token 2".into(), tokens[1].clone());
    secrets.insert(
        "a presented wrong token".into(),
        "wrong-token-but-long-enough".into(),
    );
    secrets.insert("the encryption key (base64)".into(), key_b64.clone());
    secrets.insert("the encryption key (hex)".into(), hex::encode(&key_raw));
    let places: Vec<(&str, String)> = vec![
        ("the log", logs),
        ("the metrics", metrics),
        ("the admin API's answers", svc.answers.join("\n")),
        ("the dead letters", dead.join("\n")),
    ];
    assert!(dead.len() >= 3, "{dead:#?}");
    let mut leaks = Vec::new();
    for (place, text) in &places {
        assert!(text.len() > 100, "{place} is nearly empty");
        for (what, secret) in &secrets {
            if shows(text, secret) {
                leaks.push(format!("{what} (or a part of it) appears in {place}"));
            }
        }
        for jwt in jwts(text) {
            leaks.push(format!("an access token ({jwt}…) appears in {place}"));
        }
    }
    // At rest, client secrets are encrypted: never in Redis as they were given.
    for what in [
        "alpha's client secret",
        "beta's client secret",
        "the wrong secret tried for beta",
    ] {
        if shows(&stored, &secrets[what]) {
            leaks.push(format!("{what} is stored in Redis in the clear"));
        }
    }
    assert!(leaks.is_empty(), "secrets leaked: {leaks:#?}");

    // 4. Tenant isolation: each app only ever addressed its own tenant and its own mailboxes.
    let log = sb.emulator.emulator.request_log();
    let mut reached: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &log {
        let Some(client) = r.client_id.as_deref() else {
            continue;
        };
        let owner = [&alpha, &beta]
            .into_iter()
            .find(|t| t.client_id == client)
            .unwrap_or_else(|| panic!("an unknown app {client}: {r:?}"));
        let other = if owner.company == "alpha" {
            &beta
        } else {
            &alpha
        };
        if let Some(mb) = &r.mailbox {
            assert!(
                mb.ends_with(&format!("@{}", owner.domain)),
                "{}'s app addressed {mb}: {r:?}",
                owner.company
            );
            *reached.entry(owner.company).or_default() += 1;
        }
        assert!(
            !r.path.contains(&other.id) && !r.path.contains(&other.domain),
            "{}'s app addressed the other tenant: {r:?}",
            owner.company
        );
    }
    assert!(reached["alpha"] > 0 && reached["beta"] > 0, "{reached:?}");
    println!(
        "RELIABILITY security unauthenticated_calls_refused={refused} secrets_searched={} \
         places_searched={} log_bytes={} dead_letters={} graph_requests_checked={} leaks=0 \
         cross_tenant_requests=0",
        secrets.len(),
        places.len() + 1,
        places[0].1.len(),
        dead.len(),
        log.len()
    );
    drop(svc);
    sb.cleanup().await;
}

#[test]
fn the_access_token_scan_finds_a_jwt_and_nothing_else() {
    let jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL2dyYXBoIn0.c2ln";
    assert_eq!(jwts(&format!("Authorization: Bearer {jwt} ")).len(), 1);
    assert!(jwts("eyJ is not a token, nor is eyJabc.def").is_empty());
    assert_eq!(
        concrete("/v1/companies/{company}/users/{user}"),
        "/v1/companies/alpha/users/u-1"
    );
    let secret = "beta~Secr3t.0123456789abcdef0123456789abcdef";
    assert!(shows(&format!("tail={}", &secret[20..]), secret));
    assert!(shows(secret, secret));
    assert!(!shows("beta~Secr3t.012 and 3456789", secret));
}

// ---- a hardened listener -----------------------------------------------------------------------

/// Raises this process's soft file-descriptor limit to at least `need` (within the hard limit),
/// or fails the test saying why.
fn raise_fd_limit(need: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    if cur.current.is_none_or(|c| c >= need) {
        return;
    }
    let mut want = cur;
    want.current = Some(cur.maximum.map_or(need, |m| m.min(need)));
    setrlimit(Resource::Nofile, want).expect("raising the soft file-descriptor limit");
    let now = getrlimit(Resource::Nofile).current;
    assert!(
        now.is_none_or(|c| c >= need),
        "this test opens {need} sockets but the file-descriptor limit is {now:?} (hard {:?}): raise it (ulimit -n)",
        cur.maximum
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_half_open_connections_never_starves_healthz_and_the_sync_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const FLOOD: usize = 1_000;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
    raise_fd_limit(FLOOD as u64 + 512);
    let sb = match Sandbox::start("slowloris", 1, Settings::default()).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    };
    sb.company(
        "flood",
        outlook_sync::tenants::Plan::Standard,
        &[("u-1", "taro", MailboxKind::Ok)],
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut cfg = sb.cfg.clone();
    cfg.admin.listen = format!("127.0.0.1:{port}");
    cfg.admin.header_read_timeout_seconds = HEADER_TIMEOUT.as_secs();
    cfg.validate().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    // The worker gets 256 file descriptors, as in the report: fewer than the flood.
    let child = std::process::Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" --config \"$1\" run")
        .arg(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg(&path)
        .stdout(std::fs::File::create(dir.path().join("stdout.log")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Killed however the test ends (bash execs the binary, so this is its pid).
    let mut child = KillOnDrop(child);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "outlook-sync run exited with {status}: {}",
                std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "outlook-sync run never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The flood: connections that send half a request head and nothing more.
    let mut flood = Vec::with_capacity(FLOOD);
    let flood_started = Instant::now();
    for _ in 0..FLOOD / 100 {
        let batch = futures_util::future::join_all((0..100).map(|_| async {
            let mut s = tokio::time::timeout(
                Duration::from_secs(5),
                tokio::net::TcpStream::connect(("127.0.0.1", port)),
            )
            .await
            .expect("the admin port stopped accepting connections during the flood")
            .expect("connecting to the admin port");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
            s
        }))
        .await;
        flood.extend(batch);
    }
    let flooded = Instant::now();
    // Watched from now on: each half-open connection must be closed by the server within its
    // header timeout of the flood (some go earlier, to make room).
    let limit = flooded + HEADER_TIMEOUT + Duration::from_secs(2);
    let watch = tokio::spawn(futures_util::future::join_all(flood.into_iter().map(
        |mut s| async move {
            let mut buf = [0u8; 256];
            loop {
                match tokio::time::timeout_at(limit.into(), s.read(&mut buf)).await {
                    Err(_) => return true,                  // still open at the limit
                    Ok(Ok(0)) | Ok(Err(_)) => return false, // closed (FIN or reset)
                    Ok(Ok(_)) => continue,                  // an answer (408): then it closes
                }
            }
        },
    )));

    // /healthz answers at once, every time, on new connections.
    for i in 0..5 {
        let t = Instant::now();
        let r = http.get(format!("{base}/healthz")).send().await;
        let took = t.elapsed();
        assert!(
            matches!(&r, Ok(r) if r.status() == 200),
            "/healthz #{i} during the flood: {r:?}"
        );
        assert!(took < Duration::from_secs(1), "/healthz #{i} took {took:?}");
    }

    // The sync goes on: a published event reaches Outlook (the emulator).
    sb.publish(&[Ev::created("flood", "sch-flood")
        .title("During the flood")
        .people("u-1", &[])
        .wire()])
        .await
        .unwrap();
    let mailbox = crate::support::mailbox("taro", "flood");
    wait_for(
        "the copy in Outlook during the flood",
        Duration::from_secs(30),
        || crate::support::subjects(&sb, &mailbox).contains(&"During the flood".to_string()),
    )
    .await;

    let open = watch
        .await
        .unwrap()
        .into_iter()
        .filter(|open| *open)
        .count();
    assert_eq!(
        open,
        0,
        "{open} of {FLOOD} half-open connections were still open {:?} after the flood was \
         sent (it took {:?} to send), past the header timeout ({HEADER_TIMEOUT:?}) and 2 s",
        limit - flooded,
        flooded - flood_started
    );
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status();
    let _ = tokio::task::spawn_blocking(move || child.0.wait()).await;
    sb.cleanup().await;
}

/// A child process killed when dropped.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Serves `app` on a loopback port with short limits; returns the port.
async fn limited(app: axum::Router, header: u64, idle: u64, request: u64) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let limits = outlook_sync::admin::listener::Limits {
        header_read_timeout: Duration::from_secs(header),
        idle_timeout: Duration::from_secs(idle),
        request_timeout: Duration::from_secs(request),
        max_connections: 64,
    };
    tokio::spawn(outlook_sync::admin::listener::serve(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_gets_503_request_timeout_in_the_error_shape() {
    let app = axum::Router::new().route(
        "/slow",
        axum::routing::get(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let port = limited(app, 5, 30, 1).await;
    outlook_sync::install_crypto_provider();
    let started = Instant::now();
    let r = reqwest::get(format!("http://127.0.0.1:{port}/slow"))
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(r.headers().contains_key("retry-after"));
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(
        v["error"]["message_ja"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_disconnected_after_the_idle_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 64 << 20;
    let app = axum::Router::new().route("/big", axum::routing::get(|| async { vec![b'x'; SIZE] }));
    let port = limited(app, 1, 1, 60).await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Read nothing for a while: the server's writes stall on the full socket buffers.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got += n,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the stalled connection was never closed");
    assert!(
        got < SIZE,
        "the whole answer ({got} bytes) was delivered: the idle connection was not closed"
    );
}
