//! The admin API end to end: the real Redis (and RabbitMQ where a worker runs), the Graph
//! emulator for Microsoft, the HTTP API served on a loopback port and called with reqwest.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use graph_emulator::{
    Consent, FaultKind, MailboxKind, ScriptedFault, SeedApp, SeedTenant, SeedUser, Settings,
};
use outlook_sync::admin::service::Admin;
use outlook_sync::demo::{Ev, Sandbox};
use outlook_sync::graph::client::GraphClient;
use outlook_sync::metrics::Metrics;
use outlook_sync::tenants::Plan;
use redis::AsyncCommands;
use serde_json::{Value, json};

const TOKEN: &str = "test-token-Vq3xN8kR2mT7wZ5pL9cY4hB6";
const ALL_ROLES: [&str; 3] = ["Calendars.ReadWrite", "User.Read.All", "Contacts.Read"];

async fn sandbox(name: &str) -> Sandbox {
    match Sandbox::start(name, 1, Settings::default()).await {
        Ok(sb) => sb,
        Err(e) => panic!("this test needs the local RabbitMQ and Redis: {e}"),
    }
}

/// The admin API of a sandbox, served on a loopback port. Every response body is kept (to
/// search them for secrets).
struct Api {
    base: String,
    http: reqwest::Client,
    admin: Admin,
    metrics: Arc<Metrics>,
    bodies: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(sb: &Sandbox, tweak: impl FnOnce(&mut outlook_sync::config::Config)) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = sb.cfg.clone();
    cfg.admin.tokens = vec![TOKEN.into()];
    cfg.admin.public_url = base.clone();
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let metrics = Metrics::new();
    let admin = Admin::new(
        Arc::new(cfg.clone()),
        sb.redis.clone(),
        GraphClient::new(&cfg.graph),
        metrics.clone(),
    );
    let app = outlook_sync::admin::api::router(admin.clone());
    let limits = outlook_sync::admin::listener::Limits::from_config(&cfg.admin);
    let server = tokio::spawn(outlook_sync::admin::listener::serve(
        listener,
        app,
        limits,
        std::future::pending(),
    ));
    Api {
        base,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        admin,
        metrics,
        bodies: Arc::new(Mutex::new(Vec::new())),
        server,
    }
}

impl Api {
    async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<reqwest::Body>,
        content_type: &str,
    ) -> (u16, reqwest::header::HeaderMap, String) {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", content_type).body(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        (status, headers, text)
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, text) = self
            .raw(
                method,
                path,
                Some(TOKEN),
                body.map(|b| b.to_string().into()),
                "application/json",
            )
            .await;
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// GETs a job's state as a polling client would: a request refused at the connection (the
    /// server closed an idle keep-alive, which it does when the process runs short of file
    /// descriptors, as the half-open flood of `security` makes it in the same test process) is
    /// sent again on a new connection; any HTTP answer but 200 fails the test.
    async fn poll(&self, path: &str) -> Value {
        let url = format!("{}{path}", self.base);
        for _ in 0..5 {
            match self.http.get(&url).bearer_auth(TOKEN).send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap();
                    assert_eq!(status, 200, "GET {path}: {text}");
                    return serde_json::from_str(&text).unwrap();
                }
                Err(e) if e.is_connect() || e.is_request() => {
                    eprintln!("GET {path}: {e}; sending it again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("GET {path}: {e}"),
            }
        }
        panic!("GET {path}: the connection failed five times in a row");
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }

    async fn csv(&self, path: &str, csv: String) -> (u16, Value) {
        let (status, _, text) = self
            .raw("POST", path, Some(TOKEN), Some(csv.into()), "text/csv")
            .await;
        (status, serde_json::from_str(&text).unwrap())
    }

    /// Polls a job until it is done; returns the final record.
    async fn wait_job(&self, job: &Value) -> Value {
        let path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());
        for _ in 0..1200 {
            let v = self.ok("GET", &path, None).await;
            if v["state"] != "running" {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("job {path} did not finish");
    }
}

/// A Microsoft tenant in the emulator: one app (`roles`, `consent`), users of each kind.
struct Tenant {
    id: String,
    domain: String,
    client_id: String,
    secret: String,
}

impl Tenant {
    fn upn(&self, local: &str) -> String {
        format!("{local}@{}", self.domain)
    }

    fn credentials(&self) -> Value {
        json!({"tenant_id": self.id, "client_id": self.client_id, "client_secret": self.secret})
    }
}

fn tenant(
    sb: &Sandbox,
    name: &str,
    app: impl FnOnce(SeedApp) -> SeedApp,
    users: &[(&str, MailboxKind)],
) -> Tenant {
    let t = Tenant {
        id: uuid::Uuid::new_v4().to_string(),
        domain: format!(
            "{name}-{}.onmicrosoft.com",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        ),
        client_id: uuid::Uuid::new_v4().to_string(),
        secret: format!("S3cr3t~{}", uuid::Uuid::new_v4().simple()),
    };
    let mut seed =
        SeedTenant::new(&t.id, &t.domain).with_app(app(
            SeedApp::new(&t.client_id, &t.secret).with_roles(ALL_ROLES)
        ));
    for (local, kind) in users {
        seed = seed.with_user(SeedUser::new(t.upn(local)).with_mailbox(*kind));
    }
    sb.emulator.emulator.add_tenant(seed);
    t
}

/// A company on `plan`, enabled where the plan allows, with the tenant's credentials.
async fn company(api: &Api, company: &str, plan: &str, t: &Tenant) {
    api.ok(
        "PUT",
        &format!("/v1/companies/{company}"),
        Some(json!({"plan": plan, "options": []})),
    )
    .await;
    api.ok(
        "PUT",
        &format!("/v1/companies/{company}/microsoft365"),
        Some(t.credentials()),
    )
    .await;
    api.ok(
        "POST",
        &format!("/v1/companies/{company}/microsoft365/enable"),
        None,
    )
    .await;
}

// ---- authentication and the document --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_admin_token_gets_401_with_www_authenticate() {
    let sb = sandbox("admin-auth").await;
    let api = serve(&sb, |_| {}).await;
    for token in [None, Some("wrong-token-but-long-enough"), Some("")] {
        for (method, path) in [
            ("GET", "/v1/companies"),
            ("GET", "/v1/companies/acme"),
            ("PUT", "/v1/companies/acme/microsoft365"),
            ("POST", "/v1/companies/acme/bulk-links"),
        ] {
            let (status, headers, body) = api.raw(method, path, token, None, "").await;
            assert_eq!(status, 401, "{method} {path} with {token:?}");
            assert!(
                headers["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer"),
                "{headers:?}"
            );
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["error"]["code"], "unauthorized");
        }
    }
    let (status, _, _) = api.raw("GET", "/v1/companies", Some(TOKEN), None, "").await;
    assert_eq!(status, 200);

    // No token configured: every call is refused, whatever is presented.
    let closed = serve(&sb, |c| c.admin.tokens.clear()).await;
    for token in [None, Some(TOKEN), Some("")] {
        let (status, _, _) = closed.raw("GET", "/v1/companies", token, None, "").await;
        assert_eq!(status, 401);
    }
    sb.cleanup().await;
}

/// Paths and methods of the OpenAPI document, parsed as YAML.
fn documented_routes() -> BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(crate::support::repo_path("schemas/admin-api.openapi.yaml"))
        .unwrap();
    let doc: Value = serde_yaml_ng::from_str(&text).expect("the OpenAPI document is valid YAML");
    assert_eq!(doc["openapi"], "3.1.0");
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                let op = &item[method];
                assert!(
                    op["operationId"].is_string(),
                    "{method} {path} has no operationId"
                );
                assert!(
                    op["responses"].is_object(),
                    "{method} {path} has no responses"
                );
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[test]
fn every_route_the_router_serves_is_in_the_openapi_document_and_vice_versa() {
    let served: BTreeSet<(String, String)> = outlook_sync::admin::api::routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let documented = documented_routes();
    assert!(served.len() > 10, "{served:?}");
    let undocumented: Vec<_> = served.difference(&documented).collect();
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
}

// ---- credentials ----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_exactly_which_credentials_problem_there_is() {
    let sb = sandbox("admin-verify").await;
    let api = serve(&sb, |_| {}).await;
    let good = tenant(&sb, "good", |a| a, &[]);
    let no_contacts = tenant(
        &sb,
        "nocontacts",
        |a| a.with_roles(["Calendars.ReadWrite", "User.Read.All"]),
        &[],
    );
    let no_calendars = tenant(&sb, "nocal", |a| a.with_roles(["User.Read.All"]), &[]);
    let pending = tenant(&sb, "pending", |a| a.with_consent(Consent::Pending), &[]);
    let expired = tenant(
        &sb,
        "expired",
        |a| {
            let mut a = a;
            a.secrets[0].expires_at = Some("2020-01-01T00:00:00Z".parse().unwrap());
            a
        },
        &[],
    );
    let elsewhere = tenant(&sb, "other", |a| a, &[]);
    api.ok(
        "PUT",
        "/v1/companies/acme",
        Some(json!({"plan": "standard"})),
    )
    .await;

    let verify = |creds: Value| {
        let api = &api;
        async move {
            api.ok("PUT", "/v1/companies/acme/microsoft365", Some(creds))
                .await;
            api.ok("POST", "/v1/companies/acme/microsoft365/verify", None)
                .await
        }
    };
    let v = verify(good.credentials()).await;
    assert_eq!(
        (v["ok"].clone(), v["outcome"].clone()),
        (json!(true), json!("ok")),
        "{v}"
    );
    assert_eq!(v["warnings"], json!([]));

    let v = verify(no_contacts.credentials()).await;
    assert_eq!(v["outcome"], "ok", "{v}");
    assert_eq!(v["warnings"][0]["code"], "permission_recommended");
    assert_eq!(v["warnings"][0]["detail"], "Contacts.Read");

    let v = verify(no_calendars.credentials()).await;
    assert_eq!(v["outcome"], "permission_not_granted", "{v}");
    let missing: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["detail"].as_str().unwrap())
        .collect();
    assert_eq!(missing, ["Calendars.ReadWrite"]);
    let status = api.ok("GET", "/v1/companies/acme/microsoft365", None).await;
    assert_eq!(
        status["verification"]["missing_permissions"],
        json!(["Calendars.ReadWrite"])
    );

    let v = verify(pending.credentials()).await;
    assert_eq!(v["outcome"], "permission_not_granted", "{v}");
    assert_eq!(v["problems"].as_array().unwrap().len(), 2, "{v}");

    let mut wrong = good.credentials();
    wrong["client_secret"] = json!("not-the-secret-value");
    let v = verify(wrong).await;
    assert_eq!(
        (v["outcome"].clone(), v["aadsts"].clone()),
        (json!("invalid_secret"), json!(7000215)),
        "{v}"
    );
    assert!(
        v["problems"][0]["message"]["ja"]
            .as_str()
            .unwrap()
            .contains("シークレット")
    );

    let v = verify(expired.credentials()).await;
    assert_eq!(
        (v["outcome"].clone(), v["aadsts"].clone()),
        (json!("expired_secret"), json!(7000222)),
        "{v}"
    );

    let mut wrong_tenant = elsewhere.credentials();
    wrong_tenant["tenant_id"] = json!(good.id);
    let v = verify(wrong_tenant).await;
    assert_eq!(
        (v["outcome"].clone(), v["aadsts"].clone()),
        (json!("app_not_in_tenant"), json!(700016)),
        "{v}"
    );

    let mut no_tenant = good.credentials();
    no_tenant["tenant_id"] = json!(uuid::Uuid::new_v4().to_string());
    let v = verify(no_tenant).await;
    assert_eq!(
        (v["outcome"].clone(), v["aadsts"].clone()),
        (json!("tenant_not_found"), json!(90002)),
        "{v}"
    );

    // Remove: the status says so, and verify has nothing to verify.
    let s = api
        .ok(
            "DELETE",
            "/v1/companies/acme/microsoft365/credentials",
            None,
        )
        .await;
    assert_eq!(s["credentials"], Value::Null);
    let (status, v) = api
        .call("POST", "/v1/companies/acme/microsoft365/verify", None)
        .await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("no_credentials"))
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_encrypted_at_rest_rotate_by_key_id_and_are_never_returned() {
    let sb = sandbox("admin-secret").await;
    let api = serve(&sb, |_| {}).await;
    let t = tenant(&sb, "acme", |a| a, &[]);
    api.ok(
        "PUT",
        "/v1/companies/acme",
        Some(json!({"plan": "standard"})),
    )
    .await;
    let s = api
        .ok(
            "PUT",
            "/v1/companies/acme/microsoft365",
            Some(t.credentials()),
        )
        .await;
    assert_eq!(s["credentials"]["secret_set"], true);
    assert_eq!(s["credentials"]["key_id"], "sandbox");
    assert_eq!(
        s["credentials"]["secret_fingerprint"]
            .as_str()
            .unwrap()
            .len(),
        12
    );
    let db = sb.directory.db();
    let raw = crate::directory::stored_text(db).await;
    assert!(!raw.contains(&t.secret), "stored in plain text: {raw}");
    let doc = crate::directory::company_doc(db, "acme").await;
    assert_eq!(doc["credentials"]["secret"]["key_id"], "sandbox");
    assert_eq!(
        api.admin.verify_credentials("acme").await.unwrap().outcome,
        "ok"
    );

    // Rotation: a new active key; the old secret still opens, reseal moves it to the new key.
    let mut rotated = sb.cfg.clone();
    rotated
        .secrets
        .keys
        .push(outlook_sync::config::SecretKeyConfig {
            id: "k2".into(),
            key_base64: base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                [9u8; 32],
            ),
        });
    rotated.secrets.active_key = "k2".into();
    let dir = outlook_sync::tenants::Directory::from_config(&rotated);
    let c = dir.company("acme").await.unwrap().unwrap();
    assert_eq!(c.credentials.unwrap().client_secret.expose(), t.secret);
    let report = dir.reseal_all().await.unwrap();
    assert_eq!(report.resealed, 1, "{report:?}");
    let doc = crate::directory::company_doc(db, "acme").await;
    assert_eq!(doc["credentials"]["secret"]["key_id"], "k2");
    rotated.secrets.keys.remove(0);
    let only_new = outlook_sync::tenants::Directory::from_config(&rotated);
    let c = only_new.company("acme").await.unwrap().unwrap();
    assert_eq!(c.credentials.unwrap().client_secret.expose(), t.secret);
    // The old key alone cannot open it: the company is not synced, and says why.
    let old_only = outlook_sync::tenants::Directory::from_config(&sb.cfg);
    let c = old_only.company("acme").await.unwrap().unwrap();
    assert!(c.credentials.is_none());
    assert!(c.credentials_error.as_deref().unwrap().contains("k2"));

    // No key configured: storing a secret is refused, naming the configuration keys.
    let keyless = serve(&sb, |c| c.secrets = Default::default()).await;
    let (status, v) = keyless
        .call(
            "PUT",
            "/v1/companies/acme/microsoft365",
            Some(t.credentials()),
        )
        .await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["code"], "secrets_not_configured");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("secrets.keys"),
        "{v}"
    );

    for body in api
        .bodies
        .lock()
        .unwrap()
        .iter()
        .chain(keyless.bodies.lock().unwrap().iter())
    {
        assert!(
            !body.contains(&t.secret),
            "an API response carries the secret: {body}"
        );
    }
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_consent_is_recorded_end_to_end_through_the_emulators_redirect() {
    let sb = sandbox("admin-consent").await;
    let api = serve(&sb, |_| {}).await;
    let t = tenant(&sb, "pending", |a| a.with_consent(Consent::Pending), &[]);
    company(&api, "acme", "standard", &t).await;
    let v = api
        .ok("POST", "/v1/companies/acme/microsoft365/verify", None)
        .await;
    assert_eq!(v["outcome"], "permission_not_granted");

    let link = api
        .ok("POST", "/v1/companies/acme/microsoft365/consent", None)
        .await;
    let url = link["url"].as_str().unwrap();
    let parsed = url::Url::parse(url).unwrap();
    assert_eq!(parsed.path(), format!("/{}/adminconsent", t.id));
    let q: HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q["client_id"], t.client_id);
    assert_eq!(
        q["redirect_uri"],
        format!("{}/v1/consent/callback", api.base)
    );
    assert!(
        q["state"].len() >= 40,
        "the state is not unguessable: {q:?}"
    );

    // The administrator accepts: the emulator redirects to our callback (no bearer token).
    let (status, headers, _) = api.raw("GET", url, None, None, "").await;
    assert_eq!(status, 302);
    let location = headers["location"].to_str().unwrap().to_string();
    assert!(location.contains("admin_consent=True"), "{location}");
    let (status, _, page) = api.raw("GET", &location, None, None, "").await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("同意"), "{page}");
    let s = api.ok("GET", "/v1/companies/acme/microsoft365", None).await;
    assert_eq!(s["consent"]["granted"], true, "{s}");
    assert_eq!(s["consent"]["tenant"], json!(t.id));
    assert_eq!(
        s["verification"]["outcome"], "ok",
        "verified again after the grant: {s}"
    );
    // The state is single use.
    let (status, _, _) = api.raw("GET", &location, None, None, "").await;
    assert_eq!(status, 422);

    // A refusing administrator.
    let r = tenant(&sb, "refuses", |a| a.with_consent(Consent::Refuses), &[]);
    company(&api, "beta", "standard", &r).await;
    let link = api
        .ok("POST", "/v1/companies/beta/microsoft365/consent", None)
        .await;
    let (_, headers, _) = api
        .raw("GET", link["url"].as_str().unwrap(), None, None, "")
        .await;
    let location = headers["location"].to_str().unwrap().to_string();
    let (status, _, _) = api.raw("GET", &location, None, None, "").await;
    assert_eq!(status, 200);
    let s = api.ok("GET", "/v1/companies/beta", None).await;
    assert_eq!(s["consent"]["granted"], false);
    assert_eq!(s["consent"]["error"], "permission_denied");
    assert!(
        s["consent"]["error_description"]
            .as_str()
            .unwrap()
            .contains("AADSTS65004")
    );

    // A made-up state records nothing.
    let (status, _, _) = api
        .raw(
            "GET",
            "/v1/consent/callback?admin_consent=True&state=guess",
            None,
            None,
            "",
        )
        .await;
    assert_eq!(status, 422);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabling_on_a_plan_without_the_integration_is_refused_with_the_reason() {
    let sb = sandbox("admin-plan").await;
    let api = serve(&sb, |_| {}).await;
    let cases = [
        ("lite", vec![], Some("plan_excludes_integration")),
        (
            "lite_plus",
            vec![],
            Some("lite_plus_without_schedule_option"),
        ),
        ("lite_plus", vec!["schedule"], None),
        ("standard", vec![], None),
        ("premium", vec![], None),
        ("enterprise", vec![], None),
    ];
    for (plan, options, refused) in cases {
        api.ok(
            "PUT",
            "/v1/companies/acme",
            Some(json!({"plan": plan, "options": options})),
        )
        .await;
        let (status, v) = api
            .call("POST", "/v1/companies/acme/microsoft365/enable", None)
            .await;
        match refused {
            Some(code) => {
                assert_eq!(status, 409, "{plan} {options:?}: {v}");
                assert_eq!(v["error"]["code"], code);
                assert!(!v["error"]["message"].as_str().unwrap().is_empty());
                assert!(!v["error"]["message_ja"].as_str().unwrap().is_empty());
                let s = api.ok("GET", "/v1/companies/acme", None).await;
                assert_eq!(s["enabled"], false);
            }
            None => {
                assert_eq!(status, 200, "{plan} {options:?}: {v}");
                assert_eq!(v["enabled"], true);
                api.ok("POST", "/v1/companies/acme/microsoft365/disable", None)
                    .await;
            }
        }
    }
    sb.cleanup().await;
}

// ---- users ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linking_checks_the_mailbox_and_shows_the_reason_in_japanese_and_english() {
    let sb = sandbox("admin-link").await;
    let api = serve(&sb, |_| {}).await;
    let t = tenant(
        &sb,
        "acme",
        |a| a,
        &[
            ("taro", MailboxKind::Ok),
            ("guest", MailboxKind::NoMailbox),
            ("locked", MailboxKind::PolicyDenied),
        ],
    );
    company(&api, "acme", "standard", &t).await;
    let link = |user: &str, mailbox: String| {
        let api = &api;
        let path = format!("/v1/companies/acme/users/{user}");
        async move {
            api.call("PUT", &path, Some(json!({ "mailbox": mailbox })))
                .await
        }
    };
    let (status, u) = link("u-1", t.upn("taro")).await;
    assert_eq!(status, 200, "{u}");
    assert_eq!(u["status"], "authenticated");
    assert_eq!(u["status_label"]["ja"], "認証済み");
    assert!(u["linked_at"].is_string());

    let cases = [
        (
            "u-2",
            t.upn("nobody"),
            "unknown_user",
            "このアドレスは会社のMicrosoftテナントのユーザーではありません",
        ),
        ("u-3", t.upn("guest"), "no_mailbox", "Exchange Online"),
        (
            "u-4",
            t.upn("locked"),
            "policy_denied",
            "アプリケーションアクセスポリシー",
        ),
    ];
    for (user, mailbox, code, ja) in &cases {
        let (status, u) = link(user, mailbox.clone()).await;
        assert_eq!(status, 200, "{u}");
        assert_eq!(u["status"], "auth_failed", "{u}");
        assert_eq!(u["status_label"]["ja"], "認証失敗");
        assert_eq!(u["reason"]["code"], *code, "{u}");
        assert!(
            u["reason"]["message"]["ja"].as_str().unwrap().contains(ja),
            "{u}"
        );
        assert!(!u["reason"]["message"]["en"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        link("u-1", t.upn("taro")).await.1["reason"]["message"]["en"],
        Value::Null
    );
    let (status, v) = link("u-5", "not an address".into()).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (422, json!("malformed_address"))
    );
    let (status, v) = link("u-5", t.upn("taro")).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("address_in_use"))
    );

    let list = api.ok("GET", "/v1/companies/acme/users", None).await;
    let users: Vec<(String, String)> = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["user_id"].as_str().unwrap().into(),
                u["status"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(users.len(), 4);
    assert!(
        list["users"][0].get("last_sync_at").is_some()
            && list["users"][0].get("last_error").is_some()
    );

    // The mailbox gets a licence: verifying again flips the user.
    sb.emulator
        .emulator
        .set_mailbox_kind(&t.upn("guest"), MailboxKind::Ok);
    let u = api
        .ok("POST", "/v1/companies/acme/users/u-3/verify", None)
        .await;
    assert_eq!(u["status"], "authenticated", "{u}");

    let r = api.ok("DELETE", "/v1/companies/acme/users/u-2", None).await;
    assert_eq!(r["copies"], Value::Null);
    let (status, v) = api.call("GET", "/v1/companies/acme/users/u-2", None).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (404, json!("not_linked"))
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_in_any_case_is_one_mailbox_linked_to_one_user_and_synced_and_cleaned_as_one() {
    let sb = sandbox("admin-mailbox-case").await;
    let api = serve(&sb, |_| {}).await;
    let t = tenant(&sb, "acme", |a| a, &[("taro", MailboxKind::Ok)]);
    company(&api, "acme", "standard", &t).await;
    let link = |user: &str, mailbox: String| {
        let api = &api;
        let path = format!("/v1/companies/acme/users/{user}");
        async move {
            api.call("PUT", &path, Some(json!({ "mailbox": mailbox })))
                .await
        }
    };
    let upper = t.upn("taro").to_uppercase();
    let (status, u) = link("u-1", upper.clone()).await;
    assert_eq!(
        (status, u["status"].clone()),
        (200, json!("authenticated")),
        "{u}"
    );
    let linked_at = u["linked_at"].clone();
    // Another spelling of the same mailbox is the same mailbox: not a second user.
    let (status, v) = link("u-2", t.upn("Taro")).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (409, json!("address_in_use")),
        "{v}"
    );
    let csv = format!("cyzen_user_id,email\nu-3,{}\n", t.upn("tArO"));
    let (status, report) = api
        .csv("/v1/companies/acme/bulk-links?dry_run=true", csv)
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["results"][0]["reason"]["code"], "address_in_use",
        "{report}"
    );
    // Full-width letters are not the ASCII address they look like: refused, in both languages.
    let (status, v) = link("u-2", format!("ｔａｒｏ@{}", t.domain)).await;
    assert_eq!(
        (status, v["error"]["code"].clone()),
        (422, json!("non_ascii_address")),
        "{v}"
    );
    assert!(
        v["error"]["message_ja"]
            .as_str()
            .unwrap_or_default()
            .contains("半角"),
        "{v}"
    );
    // Linking u-1 again in lowercase is the same link, not a new one.
    let (status, u) = link("u-1", t.upn("taro")).await;
    assert_eq!((status, u["linked_at"].clone()), (200, linked_at), "{u}");

    // The copy lands in the one mailbox, and a clean unlink finds and removes it.
    let mut u = sb.directory.user("acme", "u-1").await.unwrap().unwrap();
    u.linked_at = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    u.mailbox = upper;
    sb.directory.put_user("acme", &u).await.unwrap();
    let worker = sb.worker().await.unwrap();
    sb.publish(&[Ev::created("acme", "s-1").people("u-1", &[]).wire()])
        .await
        .unwrap();
    assert!(sb.wait_idle(Duration::from_secs(40)).await.unwrap());
    worker.stop(Duration::from_secs(5)).await;
    assert_eq!(tagged(&sb, &t.upn("taro")), 1);
    let r = api
        .ok(
            "DELETE",
            "/v1/companies/acme/users/u-1?delete_copies=true",
            None,
        )
        .await;
    assert_eq!(r["copies"]["deleted"], 1, "{r}");
    assert_eq!(tagged(&sb, &t.upn("taro")), 0);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bulk_preflight_says_what_each_row_would_do_and_the_real_run_does_it() {
    let sb = sandbox("admin-bulk").await;
    let api = serve(&sb, |_| {}).await;
    let t = tenant(
        &sb,
        "acme",
        |a| a,
        &[
            ("a", MailboxKind::Ok),
            ("b", MailboxKind::Ok),
            ("c", MailboxKind::Ok),
            ("guest", MailboxKind::NoMailbox),
            ("old", MailboxKind::Ok),
            ("slow", MailboxKind::Ok),
        ],
    );
    company(&api, "acme", "standard", &t).await;
    api.ok(
        "PUT",
        "/v1/companies/acme/users/u-old",
        Some(json!({"mailbox": t.upn("old")})),
    )
    .await;
    api.ok(
        "PUT",
        "/v1/companies/acme/users/u-c",
        Some(json!({"mailbox": t.upn("c")})),
    )
    .await;
    // One check is throttled: it waits for Retry-After and still succeeds.
    sb.emulator.emulator.script_fault(
        ScriptedFault::new(FaultKind::Throttle429 { retry_after: 1.0 })
            .path_contains(&format!("/users/{}", t.upn("slow"))),
    );
    let csv = format!(
        "cyzen_user_id,email,action\n\
         u-a,{a}\n\
         u-b,{b},link\n\
         u-bad,not-an-address\n\
         u-x,{nobody}\n\
         u-g,{guest}\n\
         u-a,{a}\n\
         u-c,{c}\n\
         u-old,,unlink\n\
         u-none,,unlink\n\
         u-s,{slow}\n",
        a = t.upn("a"),
        b = t.upn("b"),
        c = t.upn("c"),
        nobody = t.upn("nobody"),
        guest = t.upn("guest"),
        slow = t.upn("slow"),
    );
    let started = std::time::Instant::now();
    let (status, report) = api
        .csv("/v1/companies/acme/bulk-links?dry_run=true", csv.clone())
        .await;
    assert_eq!(status, 200, "{report}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    let rows: Vec<(u64, String, String)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["line"].as_u64().unwrap(),
                r["outcome"].as_str().unwrap().to_string(),
                r["reason"]["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let expect =
        |line: u64, outcome: &str, reason: &str| (line, outcome.to_string(), reason.to_string());
    assert_eq!(
        rows,
        vec![
            expect(2, "would_link", ""),
            expect(3, "would_link", ""),
            expect(4, "error", "malformed_address"),
            expect(5, "error", "unknown_user"),
            expect(6, "error", "no_mailbox"),
            expect(7, "error", "duplicate_row"),
            expect(8, "unchanged", "already_linked"),
            expect(9, "would_unlink", ""),
            expect(10, "error", "not_linked"),
            expect(11, "would_link", ""),
        ]
    );
    assert_eq!(report["reasons"]["unknown_user"], 1);
    // A dry run changes nothing.
    let users = api.ok("GET", "/v1/companies/acme/users", None).await;
    assert_eq!(users["users"].as_array().unwrap().len(), 2);

    let (status, report) = api.csv("/v1/companies/acme/bulk-links", csv).await;
    assert_eq!(status, 200, "{report}");
    let outcomes: Vec<&str> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [
            "linked",
            "linked",
            "skipped",
            "skipped",
            "skipped",
            "skipped",
            "unchanged",
            "unlinked",
            "skipped",
            "linked"
        ]
    );
    let users = api.ok("GET", "/v1/companies/acme/users", None).await;
    let mut ids: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["user_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["u-a", "u-b", "u-c", "u-s"]);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_rows_run_as_a_job_with_progress_and_bounded_concurrency() {
    let sb = sandbox("admin-bulk10k").await;
    let api = serve(&sb, |_| {}).await;
    const N: usize = 10_000;
    let locals: Vec<String> = (0..N).map(|i| format!("user{i:05}")).collect();
    let kinds: Vec<(&str, MailboxKind)> = locals
        .iter()
        .enumerate()
        .map(|(i, l)| {
            (
                l.as_str(),
                if i % 100 == 7 {
                    MailboxKind::NoMailbox
                } else {
                    MailboxKind::Ok
                },
            )
        })
        .collect();
    let t = tenant(&sb, "big", |a| a, &kinds);
    company(&api, "big", "enterprise", &t).await;
    let mut csv = String::from("cyzen_user_id,email\n");
    for (i, l) in locals.iter().enumerate() {
        csv.push_str(&format!("u-{i},{}\n", t.upn(l)));
    }
    let started = std::time::Instant::now();
    let (status, job) = api.csv("/v1/companies/big/bulk-links", csv).await;
    assert_eq!(status, 202, "{job}");
    // Progress is visible while it runs.
    let mut seen_progress = false;
    let path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());
    let done = loop {
        let v = api.poll(&path).await;
        let d = v["done"].as_u64().unwrap();
        seen_progress |= d > 0 && d < N as u64;
        if v["state"] != "running" {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let elapsed = started.elapsed();
    assert_eq!(done["state"], "done", "{done}");
    assert!(seen_progress, "no intermediate progress was seen");
    assert_eq!(done["done"], N as u64);
    let summary = &done["result"]["summary"];
    assert_eq!(summary["linked"], (N - N / 100) as u64, "{summary}");
    assert_eq!(done["result"]["reasons"]["no_mailbox"], (N / 100) as u64);
    let stats = sb.emulator.emulator.stats();
    assert!(
        stats.max_in_flight_any <= 16,
        "more than admin.bulk_concurrency checks at once: {}",
        stats.max_in_flight_any
    );
    assert!(stats.max_in_flight_per_mailbox.values().all(|&n| n <= 1));
    assert_eq!(sb.directory.users("big").await.unwrap().len(), N - N / 100);
    eprintln!(
        "bulk link of {N} rows: {elapsed:?} ({} Graph requests)",
        stats.requests
    );
    sb.cleanup().await;
}

// ---- clean unlink, integration removal, isolation, expiry ------------------------------------

/// Events in a mailbox that carry this service's tag.
fn tagged(sb: &Sandbox, mailbox: &str) -> usize {
    sb.emulator
        .emulator
        .calendar(mailbox)
        .iter()
        .filter(|e| e.to_string().contains("cyzen/v1/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlinking_with_delete_copies_removes_exactly_the_copies_this_service_created() {
    let sb = sandbox("admin-unlink").await;
    let api = serve(&sb, |_| {}).await;
    let info = sb
        .company(
            "acme",
            Plan::Standard,
            &[
                ("u-1", "taro", MailboxKind::Ok),
                ("u-2", "hanako", MailboxKind::Ok),
            ],
        )
        .await
        .unwrap();
    let taro = format!("taro@{}", info.domain);
    let hanako = format!("hanako@{}", info.domain);
    let worker = sb.worker().await.unwrap();
    let events: Vec<_> = (0..25)
        .map(|i| {
            Ev::created("acme", &format!("s-{i}"))
                .people("u-1", &["u-2"])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    assert!(sb.wait_idle(Duration::from_secs(40)).await.unwrap());
    assert_eq!(tagged(&sb, &taro), 25);
    // Taro's own event, not ours, and a copy whose create answer was never recorded.
    let creds = sb
        .directory
        .company("acme")
        .await
        .unwrap()
        .unwrap()
        .credentials
        .unwrap()
        .credentials();
    let graph = GraphClient::new(&sb.cfg.graph);
    graph
        .send(
            "acme",
            &creds,
            &outlook_sync::graph::client::GraphRequest::post(
                "1",
                format!("/users/{taro}/events"),
                json!({"subject": "dentist", "start": {"dateTime": "2026-12-01T09:00:00", "timeZone": "UTC"}, "end": {"dateTime": "2026-12-01T10:00:00", "timeZone": "UTC"}}),
            ),
        )
        .await
        .unwrap();
    let copies =
        outlook_sync::store::Copies::new(sb.redis.clone(), outlook_sync::store::keys(&sb.cfg));
    let m = outlook_sync::store::Member {
        company_id: "acme".into(),
        schedule_id: "s-3".into(),
    };
    let mut c = copies.get(&m, &taro).await.unwrap().unwrap();
    c.event_id = None;
    copies.write(&taro, &[(&m, c)], &[]).await.unwrap();
    worker.stop(Duration::from_secs(5)).await;

    // One delete is throttled: the batch's retry (backon) waits for its Retry-After.
    sb.emulator.emulator.script_fault(
        ScriptedFault::new(FaultKind::Throttle429 { retry_after: 1.5 })
            .method("DELETE")
            .path_contains(&taro),
    );
    let started = std::time::Instant::now();
    let r = api
        .ok(
            "DELETE",
            "/v1/companies/acme/users/u-1?delete_copies=true",
            None,
        )
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the throttled delete was retried before its Retry-After: {:?}",
        started.elapsed()
    );
    assert_eq!(r["copies"]["copies"], 25, "{r}");
    assert_eq!(r["copies"]["deleted"], 25, "{r}");
    assert_eq!(r["copies"]["failed"], json!([]));
    let left = sb.emulator.emulator.calendar(&taro);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["subject"], "dentist");
    assert!(
        copies
            .schedules_in_mailbox("acme", &taro)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        tagged(&sb, &hanako),
        25,
        "another user's copies were touched"
    );
    // No event had attendees, so nothing was cancelled by mail.
    assert!(
        sb.emulator
            .emulator
            .calendar(&hanako)
            .iter()
            .all(|e| e["attendees"].as_array().is_none_or(|a| a.is_empty()))
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_the_integration_deletes_every_copy_and_forgets_the_credentials() {
    let sb = sandbox("admin-remove").await;
    let api = serve(&sb, |_| {}).await;
    let info = sb
        .company(
            "acme",
            Plan::Standard,
            &[
                ("u-1", "taro", MailboxKind::Ok),
                ("u-2", "hanako", MailboxKind::Ok),
            ],
        )
        .await
        .unwrap();
    let worker = sb.worker().await.unwrap();
    let events: Vec<_> = (0..10)
        .map(|i| {
            Ev::created("acme", &format!("s-{i}"))
                .people("u-1", &["u-2"])
                .wire()
        })
        .collect();
    sb.publish(&events).await.unwrap();
    assert!(sb.wait_idle(Duration::from_secs(40)).await.unwrap());
    worker.stop(Duration::from_secs(5)).await;
    // u-2 was unlinked earlier without deleting: their copies are still found and removed.
    api.ok("DELETE", "/v1/companies/acme/users/u-2", None).await;
    let (status, job) = api
        .call("DELETE", "/v1/companies/acme/microsoft365", None)
        .await;
    assert_eq!(status, 202, "{job}");
    let done = api.wait_job(&job).await;
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["result"]["copies"]["deleted"], 20, "{done}");
    assert_eq!(done["result"]["mailboxes"], 2);
    for local in ["taro", "hanako"] {
        assert_eq!(tagged(&sb, &format!("{local}@{}", info.domain)), 0);
    }
    let s = api.ok("GET", "/v1/companies/acme", None).await;
    assert_eq!(s["credentials"], Value::Null);
    assert_eq!(s["enabled"], false);
    assert_eq!(s["users"], 0);
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_expiring_within_the_warning_days_is_flagged_and_counted() {
    let sb = sandbox("admin-expiry").await;
    let api = serve(&sb, |c| c.admin.secret_expiry_warning_days = 30).await;
    let t = tenant(&sb, "acme", |a| a, &[]);
    for (company, days) in [("soon", 10i64), ("later", 90), ("past", -3)] {
        api.ok(
            "PUT",
            &format!("/v1/companies/{company}"),
            Some(json!({"plan": "standard"})),
        )
        .await;
        let mut creds = t.credentials();
        let at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * days + 1);
        creds["secret_expires_at"] = json!(at.to_string());
        api.ok(
            "PUT",
            &format!("/v1/companies/{company}/microsoft365"),
            Some(creds),
        )
        .await;
    }
    let soon = api.ok("GET", "/v1/companies/soon", None).await;
    assert_eq!(soon["secret_expiring"], true);
    assert_eq!(soon["warnings"][0]["code"], "secret_expiring");
    assert_eq!(soon["credentials"]["secret_expires_in_days"], 10);
    assert_eq!(
        api.ok("GET", "/v1/companies/later", None).await["secret_expiring"],
        false
    );
    let past = api.ok("GET", "/v1/companies/past", None).await;
    assert_eq!(past["warnings"][0]["code"], "secret_expired");
    // A date alone is accepted too.
    let mut creds = t.credentials();
    creds["secret_expires_at"] = json!("2099-12-31");
    api.ok("PUT", "/v1/companies/later/microsoft365", Some(creds))
        .await;
    api.ok("GET", "/v1/companies", None).await;
    let metrics = api.metrics.render();
    assert!(
        metrics.contains("outlook_sync_companies_secret_expiring 2"),
        "{metrics}"
    );
    let soon_at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 10 + 1);
    let exported: i64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("outlook_sync_secret_expiry_timestamp_seconds{company=\"soon\"} ")
        })
        .unwrap_or_else(|| panic!("no expiry timestamp for soon: {metrics}"))
        .parse()
        .unwrap();
    assert!(
        (exported - soon_at.as_second()).abs() < 120,
        "soon's secret expires at {exported}, about {}: {metrics}",
        soon_at.as_second()
    );
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_companys_credentials_are_never_used_for_another_companys_mailbox() {
    let sb = sandbox("admin-isolation").await;
    let api = serve(&sb, |_| {}).await;
    let a = sb
        .company("alpha", Plan::Standard, &[("u-1", "taro", MailboxKind::Ok)])
        .await
        .unwrap();
    let b = sb
        .company("beta", Plan::Standard, &[("u-1", "jiro", MailboxKind::Ok)])
        .await
        .unwrap();
    let jiro = format!("jiro@{}", b.domain);
    // B's user linked to A: A's tenant does not know the address.
    let (status, u) = api
        .call(
            "PUT",
            "/v1/companies/alpha/users/u-9",
            Some(json!({"mailbox": jiro})),
        )
        .await;
    assert_eq!(status, 200, "{u}");
    assert_eq!(
        (u["status"].clone(), u["reason"]["code"].clone()),
        (json!("auth_failed"), json!("unknown_user"))
    );
    let worker = sb.worker().await.unwrap();
    sb.publish(&[
        Ev::created("alpha", "s-1").people("u-1", &["u-9"]).wire(),
        Ev::created("beta", "s-1").people("u-1", &[]).wire(),
    ])
    .await
    .unwrap();
    assert!(sb.wait_idle(Duration::from_secs(40)).await.unwrap());
    worker.stop(Duration::from_secs(5)).await;
    assert_eq!(tagged(&sb, &jiro), 1, "only beta's own copy");
    let log = sb.emulator.emulator.request_log();
    let mut a_reached = BTreeSet::new();
    for r in &log {
        let Some(mailbox) = &r.mailbox else { continue };
        let in_a = mailbox.ends_with(&format!("@{}", a.domain));
        let in_b = mailbox.ends_with(&format!("@{}", b.domain));
        if r.client_id.as_deref() == Some(a.client_id.as_str()) {
            if in_b {
                // The link check asked A's own tenant, which answered that the user is unknown.
                assert_eq!((r.method.as_str(), r.status), ("GET", 404), "{r:?}");
            } else {
                assert!(in_a, "{r:?}");
                a_reached.insert(mailbox.clone());
            }
        }
        if r.client_id.as_deref() == Some(b.client_id.as_str()) {
            assert!(in_b, "B's app reached another mailbox: {r:?}");
        }
    }
    assert!(!a_reached.is_empty());
    sb.cleanup().await;
}

// ---- the full scenario ------------------------------------------------------------------------

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// One thread, so the subscriber set for this thread sees every task's logs.
#[tokio::test(flavor = "current_thread")]
async fn the_full_scenario_never_reveals_the_secret_in_logs_metrics_responses_or_dead_letters() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("outlook_sync=trace")
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sb = sandbox("admin-scenario").await;
    let api = serve(&sb, |_| {}).await;
    let t = tenant(
        &sb,
        "acme",
        |a| a,
        &[
            ("taro", MailboxKind::Ok),
            ("hanako", MailboxKind::Ok),
            ("guest", MailboxKind::NoMailbox),
            ("jiro", MailboxKind::Ok),
        ],
    );
    let secret = t.secret.clone();
    company(&api, "acme", "standard", &t).await;
    let v = api
        .ok("POST", "/v1/companies/acme/microsoft365/verify", None)
        .await;
    assert_eq!(v["outcome"], "ok");
    // A wrong secret on the way: its failure is logged, the value never.
    let mut wrong = t.credentials();
    wrong["client_secret"] = json!(format!("{secret}-wrong"));
    api.ok("PUT", "/v1/companies/acme/microsoft365", Some(wrong))
        .await;
    api.ok("POST", "/v1/companies/acme/microsoft365/verify", None)
        .await;
    api.ok(
        "PUT",
        "/v1/companies/acme/microsoft365",
        Some(t.credentials()),
    )
    .await;
    api.ok(
        "PUT",
        "/v1/companies/acme/users/u-1",
        Some(json!({"mailbox": t.upn("taro")})),
    )
    .await;
    let csv = format!("u-2,{}\nu-3,{}\n", t.upn("hanako"), t.upn("jiro"));
    let (status, _) = api.csv("/v1/companies/acme/bulk-links", csv).await;
    assert_eq!(status, 200);
    // A user recorded as authenticated whose mailbox has none: her copy becomes a dead letter.
    api.ok(
        "PUT",
        "/v1/companies/acme/users/u-4",
        Some(json!({"mailbox": t.upn("guest")})),
    )
    .await;
    let mut r = sb.redis.clone();
    let u4 = json!({"user_id":"u-4","mailbox":t.upn("guest"),"linked_at":"2026-01-01T00:00:00Z","status":"authenticated"});
    sb.directory
        .put_user("acme", &serde_json::from_value(u4).unwrap())
        .await
        .unwrap();
    let worker = sb.worker().await.unwrap();
    sb.publish(&[
        Ev::created("acme", "s-1")
            .people("u-1", &["u-2", "u-4"])
            .wire(),
        Ev::created("acme", "s-2").people("u-3", &[]).wire(),
    ])
    .await
    .unwrap();
    assert!(sb.wait_idle(Duration::from_secs(40)).await.unwrap());
    // Last-sync times are written behind (the sandbox: every second).
    let mut list = Value::Null;
    for _ in 0..50 {
        list = api.ok("GET", "/v1/companies/acme/users", None).await;
        let taro = list["users"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["user_id"] == "u-1")
            .unwrap();
        if taro["last_sync_at"].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let taro = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_id"] == "u-1")
        .unwrap();
    assert!(taro["last_sync_at"].is_string(), "{list}");
    let u4 = list["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["user_id"] == "u-4")
        .unwrap();
    assert_eq!(u4["status"], "auth_failed", "{list}");
    api.ok(
        "DELETE",
        "/v1/companies/acme/users/u-1?delete_copies=true",
        None,
    )
    .await;
    let worker_metrics = worker.metrics.render();
    worker.stop(Duration::from_secs(5)).await;

    // Dead letters, as they sit in the queue.
    let conn = crate::support::rabbitmq().await;
    let ch = conn.create_channel().await.unwrap();
    let mut dead = Vec::new();
    while let Some(m) = ch
        .basic_get(
            sb.cfg.amqp.dead_letter_queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        dead.push(format!(
            "{:?} {}",
            m.delivery.properties,
            String::from_utf8_lossy(&m.delivery.data)
        ));
    }
    assert!(!dead.is_empty(), "expected the no-mailbox dead letter");
    // Everything in Redis under the sandbox's prefix.
    let keys: Vec<String> = r
        .keys(format!("{}:*", sb.cfg.redis.key_prefix))
        .await
        .unwrap();
    let mut stored = String::new();
    for k in keys {
        let dump: Option<Vec<u8>> = redis::cmd("DUMP")
            .arg(&k)
            .query_async(&mut r)
            .await
            .unwrap();
        stored.push_str(&String::from_utf8_lossy(&dump.unwrap_or_default()));
    }

    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("admin: credentials set"),
        "the capture saw no admin logs"
    );
    assert!(
        logs.contains("token request failed") || logs.contains("invalid_client"),
        "the capture saw no token failure"
    );
    let in_postgres = crate::directory::stored_text(sb.directory.db()).await;
    let places: Vec<(&str, String)> = vec![
        ("logs", logs),
        ("admin metrics", api.metrics.render()),
        ("worker metrics", worker_metrics),
        ("API responses", api.bodies.lock().unwrap().join("\n")),
        ("dead letters", dead.join("\n")),
        ("Redis", stored),
        ("PostgreSQL", in_postgres),
    ];
    for (place, text) in &places {
        assert!(!text.is_empty(), "{place} is empty");
        assert!(!text.contains(&secret), "the secret appears in the {place}");
    }
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_write_is_audited_with_the_token_name_and_never_a_secret() {
    let sb = sandbox("admin-audit").await;
    let api = serve(&sb, |c| c.admin.tokens = vec![format!("ops-alice:{TOKEN}")]).await;
    let t = tenant(&sb, "acme", |a| a, &[("taro", MailboxKind::Ok)]);
    company(&api, "acme", "standard", &t).await;
    api.ok(
        "PUT",
        "/v1/companies/acme/users/u-1",
        Some(json!({"mailbox": t.upn("taro")})),
    )
    .await;
    // A refused write and the reads are not changes.
    let (status, _) = api
        .call("PUT", "/v1/companies/acme", Some(json!({"plan": "gold"})))
        .await;
    assert_eq!(status, 422);
    api.ok("GET", "/v1/companies/acme/users", None).await;
    api.ok("DELETE", "/v1/companies/acme/users/u-1", None).await;

    let audit = api.ok("GET", "/v1/companies/acme/audit", None).await;
    let entries = audit["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.first(),
        Some(&"DELETE /v1/companies/{company}/users/{user}"),
        "newest first: {audit}"
    );
    assert!(
        actions.contains(&"PUT /v1/companies/{company}/microsoft365"),
        "{audit}"
    );
    assert!(
        actions.contains(&"PUT /v1/companies/{company}/users/{user}"),
        "{audit}"
    );
    assert!(actions.contains(&"PUT /v1/companies/{company}"), "{audit}");
    assert!(
        !actions.iter().any(|a| a.starts_with("GET")),
        "reads are not audited: {audit}"
    );
    assert_eq!(
        entries
            .iter()
            .filter(|e| e["summary"].as_str().unwrap().contains("422"))
            .count(),
        0,
        "a refused write changed nothing: {audit}"
    );
    for e in entries {
        assert_eq!(e["token"], "ops-alice", "{e}");
        assert!(e["at"].is_string());
    }
    assert!(
        !audit.to_string().contains(&t.secret),
        "the secret is in the audit"
    );
    assert!(
        !audit.to_string().contains(TOKEN),
        "the token is in the audit"
    );
    // Another company's audit holds none of it.
    let other = api.ok("GET", "/v1/companies/other/audit", None).await;
    assert!(other["entries"].as_array().unwrap().is_empty(), "{other}");
    sb.cleanup().await;
}

// ---- the command line -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_command_line_sets_verifies_and_links_without_ever_printing_the_secret() {
    let sb = sandbox("admin-cli").await;
    let t = tenant(
        &sb,
        "acme",
        |a| a,
        &[("taro", MailboxKind::Ok), ("hanako", MailboxKind::Ok)],
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml::to_string(&sb.cfg).unwrap()).unwrap();
    let run = |args: &[&str], secret: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"));
        cmd.arg("--config").arg(&path).arg("admin").args(args);
        cmd.env_remove("OUTLOOK_SYNC_CLIENT_SECRET");
        if let Some(s) = secret {
            cmd.env("OUTLOOK_SYNC_CLIENT_SECRET", s);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !stdout.contains(&t.secret) && !stderr.contains(&t.secret),
            "{stdout}{stderr}"
        );
        (out.status.code(), stdout, stderr)
    };
    let (code, out, err) = run(&["set-plan", "acme", "lite"], None);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = run(&["enable", "acme"], None);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("plan_excludes_integration"), "{err}");
    run(&["set-plan", "acme", "standard"], None);
    let (code, out, err) = run(
        &[
            "set-credentials",
            "acme",
            "--tenant-id",
            &t.id,
            "--client-id",
            &t.client_id,
            "--secret-expires-at",
            "2099-01-31",
        ],
        Some(&t.secret),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["credentials"]["secret_set"], true);
    let (code, out, _) = run(&["verify", "acme"], None);
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["outcome"],
        "ok"
    );
    let (code, out, _) = run(&["link", "acme", "u-1", &t.upn("taro")], None);
    assert_eq!(code, Some(0), "{out}");
    let (code, out, _) = run(&["link", "acme", "u-2", &t.upn("nobody")], None);
    assert_eq!(code, Some(1), "an auth_failed link exits 1: {out}");
    let csv = dir.path().join("users.csv");
    std::fs::write(&csv, format!("u-3,{}\nu-4,bad\n", t.upn("hanako"))).unwrap();
    let (code, out, err) = run(&["bulk", "acme", csv.to_str().unwrap(), "--dry-run"], None);
    assert_eq!(code, Some(1), "{out}");
    assert_eq!(
        err.matches("rows: 2/2").count(),
        1,
        "progress once on stderr: {err}"
    );
    assert!(!err.contains("summary: {"), "no Rust debug output: {err}");
    // Tables in plain words: each row with its outcome and why, then the counts.
    for words in [
        "(dry run: nothing changed)",
        "LINE",
        "OUTCOME",
        "would link",
        "would not be done",
        "malformed_address: The address is not a well-formed email address",
        "REASON",
        "MEANING",
    ] {
        assert!(out.contains(words), "{words:?} missing from:\n{out}");
    }
    assert!(!out.contains('{') && !out.contains("WouldLink"), "{out}");
    // A Shift_JIS file with a Japanese header, as Excel in Japan saves it; --json for the JSON.
    let japanese = format!("ユーザーID,メールアドレス\r\nu-3,{}\r\n", t.upn("hanako"));
    let (sjis, _, _) = encoding_rs::SHIFT_JIS.encode(&japanese);
    std::fs::write(&csv, &sjis).unwrap();
    let (code, out, err) = run(
        &["bulk", "acme", csv.to_str().unwrap(), "--dry-run", "--json"],
        None,
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["rows"], 1, "the header is not a row: {report}");
    assert_eq!(report["results"][0]["outcome"], "would_link", "{report}");
    let (_, out, _) = run(&["users", "acme"], None);
    assert_eq!(
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // Each write is in the audit under the command line's name; refused writes and dry runs
    // are not.
    use outlook_sync::tenants::AuditLog;
    let audit = sb.directory.audit("acme", 100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    for want in [
        "admin set-plan",
        "admin set-credentials",
        "admin verify",
        "admin link",
    ] {
        assert!(actions.contains(&want), "{want} not audited: {actions:?}");
    }
    assert!(
        !actions.contains(&"admin enable"),
        "a refused write is not audited: {actions:?}"
    );
    assert!(
        !actions.contains(&"admin bulk"),
        "a dry run is not audited: {actions:?}"
    );
    assert!(
        audit.iter().all(|e| e.token.starts_with("command-line:")),
        "{audit:?}"
    );
    assert!(!format!("{audit:?}").contains(&t.secret));
    sb.cleanup().await;
}

// ---- consent bound to its credentials ---------------------------------------------------------

/// The `state` of a consent link.
fn state_of(link: &Value) -> String {
    let url = url::Url::parse(link["url"].as_str().unwrap()).unwrap();
    url.query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("the link has a state")
}

fn callback_path(state: &str, tenant: &str) -> String {
    let mut u = url::Url::parse("http://x/v1/consent/callback").unwrap();
    u.query_pairs_mut()
        .append_pair("admin_consent", "True")
        .append_pair("tenant", tenant)
        .append_pair("state", state);
    format!("{}?{}", u.path(), u.query().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_callback_for_credentials_that_changed_is_refused() {
    let sb = sandbox("admin-consent-changed").await;
    let api = serve(&sb, |_| {}).await;
    let a = tenant(&sb, "ca", |a| a.with_consent(Consent::Pending), &[]);
    let b = tenant(&sb, "cb", |a| a.with_consent(Consent::Pending), &[]);
    company(&api, "acme", "standard", &a).await;
    let link = api
        .ok("POST", "/v1/companies/acme/microsoft365/consent", None)
        .await;
    let state = state_of(&link);
    // The credentials change to another tenant and app before the administrator answers.
    api.ok(
        "PUT",
        "/v1/companies/acme/microsoft365",
        Some(b.credentials()),
    )
    .await;
    let (status, _, page) = api
        .raw("GET", &callback_path(&state, &a.id), None, None, "")
        .await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("認証情報"), "a Japanese explanation: {page}");
    assert!(page.contains("changed"), "an English explanation: {page}");
    let s = api.ok("GET", "/v1/companies/acme", None).await;
    assert_eq!(s["consent"], Value::Null, "nothing recorded: {s}");

    // The state is void for good, even once the credentials are back to those it was issued for.
    api.ok(
        "PUT",
        "/v1/companies/acme/microsoft365",
        Some(a.credentials()),
    )
    .await;
    let (status, _, _) = api
        .raw("GET", &callback_path(&state, &a.id), None, None, "")
        .await;
    assert_eq!(status, 422);
    let s = api.ok("GET", "/v1/companies/acme", None).await;
    assert_eq!(s["consent"], Value::Null, "{s}");
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_granted_in_another_tenant_is_refused_also_for_a_domain_tenant_id() {
    let sb = sandbox("admin-consent-tenant").await;
    let api = serve(&sb, |_| {}).await;
    let a = tenant(&sb, "da", |a| a.with_consent(Consent::Pending), &[]);
    let other = tenant(&sb, "db", |a| a.with_consent(Consent::Pending), &[]);

    // A GUID tenant: a grant from another tenant is refused and records nothing.
    company(&api, "guid", "standard", &a).await;
    let link = api
        .ok("POST", "/v1/companies/guid/microsoft365/consent", None)
        .await;
    let (status, _, page) = api
        .raw(
            "GET",
            &callback_path(&state_of(&link), &other.id),
            None,
            None,
            "",
        )
        .await;
    assert_eq!(status, 409, "{page}");
    assert!(page.contains("テナント"), "{page}");
    let s = api.ok("GET", "/v1/companies/guid", None).await;
    assert_eq!(s["consent"], Value::Null, "{s}");

    // A domain tenant, never verified: the callback resolves it (the token's tid) and compares.
    let by_domain =
        json!({"tenant_id": a.domain, "client_id": a.client_id, "client_secret": a.secret});
    api.ok(
        "PUT",
        "/v1/companies/dom",
        Some(json!({"plan": "standard", "options": []})),
    )
    .await;
    api.ok("PUT", "/v1/companies/dom/microsoft365", Some(by_domain))
        .await;
    let link = api
        .ok("POST", "/v1/companies/dom/microsoft365/consent", None)
        .await;
    let (status, _, page) = api
        .raw(
            "GET",
            &callback_path(&state_of(&link), &other.id),
            None,
            None,
            "",
        )
        .await;
    assert_eq!(status, 409, "a domain tenant is compared too: {page}");
    let s = api.ok("GET", "/v1/companies/dom", None).await;
    assert_eq!(s["consent"], Value::Null, "{s}");

    // Verified first: the verification records the tenant's GUID; the emulator's own redirect
    // (Microsoft's) for the right tenant is recorded.
    let v = api
        .ok("POST", "/v1/companies/dom/microsoft365/verify", None)
        .await;
    assert_eq!(v["tenant_guid"], json!(a.id), "{v}");
    let link = api
        .ok("POST", "/v1/companies/dom/microsoft365/consent", None)
        .await;
    let (status, headers, _) = api
        .raw("GET", link["url"].as_str().unwrap(), None, None, "")
        .await;
    assert_eq!(status, 302);
    let location = headers["location"].to_str().unwrap().to_string();
    let (status, _, page) = api.raw("GET", &location, None, None, "").await;
    assert_eq!(status, 200, "{page}");
    let s = api.ok("GET", "/v1/companies/dom", None).await;
    assert_eq!(s["consent"]["granted"], true, "{s}");
    assert_eq!(s["consent"]["tenant"], json!(a.id));
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_id_that_is_not_a_guid_or_a_domain_is_refused_naming_the_field() {
    let sb = sandbox("admin-tenant-id").await;
    let api = serve(&sb, |_| {}).await;
    let t = tenant(&sb, "tid", |a| a, &[]);
    api.ok(
        "PUT",
        "/v1/companies/acme",
        Some(json!({"plan": "standard", "options": []})),
    )
    .await;
    for bad in ["..", ".", "common", "a/b", "x..y.com", ""] {
        let (status, v) = api
            .call(
                "PUT",
                "/v1/companies/acme/microsoft365",
                Some(
                    json!({"tenant_id": bad, "client_id": t.client_id, "client_secret": t.secret}),
                ),
            )
            .await;
        assert_eq!(status, 422, "{bad:?}: {v}");
        assert_eq!(v["error"]["code"], "invalid_tenant_id", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("tenant_id "),
            "{v}"
        );
        assert!(
            v["error"]["message_ja"]
                .as_str()
                .unwrap()
                .contains("テナントID"),
            "{v}"
        );
    }
    let s = api.ok("GET", "/v1/companies/acme", None).await;
    assert_eq!(s["credentials"], Value::Null, "nothing was stored: {s}");
    sb.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consent_refusal_with_a_huge_description_is_stored_capped() {
    let sb = sandbox("admin-consent-cap").await;
    let api = serve(&sb, |_| {}).await;
    let t = tenant(&sb, "cap", |a| a, &[]);
    company(&api, "acme", "standard", &t).await;
    let link = api
        .ok("POST", "/v1/companies/acme/microsoft365/consent", None)
        .await;
    let mut u = url::Url::parse(&format!("{}/v1/consent/callback", api.base)).unwrap();
    u.query_pairs_mut()
        .append_pair("error", &"e".repeat(2_000))
        .append_pair(
            "error_description",
            &format!("{}{}", "拒".repeat(1_500), "x".repeat(20_000)),
        )
        .append_pair("state", &state_of(&link));
    let (status, _, _) = api.raw("GET", u.as_str(), None, None, "").await;
    assert_eq!(status, 200);
    let s = api.ok("GET", "/v1/companies/acme", None).await;
    assert_eq!(s["consent"]["granted"], false);
    let stored = |f: &str| s["consent"][f].as_str().unwrap().chars().count();
    assert!(
        stored("error_description") <= 1001,
        "{}",
        stored("error_description")
    );
    assert!(stored("error") <= 101, "{}", stored("error"));
    sb.cleanup().await;
}

// ---- dead-letter purges over HTTP ------------------------------------------------------------

/// Publishes dead letters straight to the sandbox's dead-letter exchange (confirmed).
async fn dead_letters(sb: &Sandbox, items: &[(String, lapin::BasicProperties, Vec<u8>)]) {
    let ch = sb.connection().create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    for (rk, props, body) in items {
        let c = ch
            .basic_publish(
                sb.cfg.amqp.dead_letter_exchange.as_str().into(),
                rk.as_str().into(),
                Default::default(),
                body,
                props.clone(),
            )
            .await
            .unwrap();
        assert!(c.await.unwrap().is_ack());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_purge_needs_the_count_the_operator_saw_and_archives_for_the_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let sb = sandbox("admin-purge").await;
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let api = serve(&sb, |c| {
        c.dlq.archive_dir = archive_dir.display().to_string();
    })
    .await;
    dead_letters(
        &sb,
        &(1..=4)
            .map(|i| {
                crate::deadletter::flush_dead_letter(
                    &format!("ev-{i}"),
                    "acme",
                    "s-1",
                    "a@x.example",
                )
            })
            .collect::<Vec<_>>(),
    )
    .await;
    let filter = json!({"company": "acme"});
    // Confirmed, but without saying what was seen: refused, nothing removed.
    let (status, v) = api
        .call(
            "POST",
            "/v1/dlq/purge",
            Some(json!({"filter": filter, "confirm": true})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "purge_not_confirmed");
    // The operator saw 3; 4 match now: refused with the current count.
    let (status, v) = api
        .call(
            "POST",
            "/v1/dlq/purge",
            Some(json!({"filter": filter, "confirm": true, "expected": 3})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert_eq!(v["error"]["code"], "purge_count_changed");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("4 dead letter(s) match now"),
        "{v}"
    );
    assert!(
        v["error"]["message_ja"].as_str().unwrap().contains("4 件"),
        "{v}"
    );
    let listed = api.ok("GET", "/v1/dlq/messages?company=acme", None).await;
    assert_eq!(
        listed["records"].as_array().unwrap().len(),
        4,
        "nothing removed"
    );
    // The right count: all four go, archived with mode 0600 in a folder of mode 0700.
    let v = api
        .ok(
            "POST",
            "/v1/dlq/purge",
            Some(json!({"filter": filter, "confirm": true, "expected": 4})),
        )
        .await;
    assert_eq!(v["removed"], 4, "{v}");
    let file = std::path::PathBuf::from(v["archive"].as_str().unwrap());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&file), 0o600, "the archive file");
    assert_eq!(mode(&archive_dir), 0o700, "the archive folder");
    assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 4);
    sb.cleanup().await;
}

// ---- one error shape, in Japanese and English -------------------------------------------------

fn assert_error_shape(what: &str, status: u16, body: &str) -> Value {
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{what}: {status} is not JSON ({e}): {body:?}"));
    let e = &v["error"];
    let code = e["code"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no code: {v}"));
    assert!(!code.is_empty(), "{what}: {v}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: no English message: {v}"
    );
    let ja = e["message_ja"]
        .as_str()
        .unwrap_or_else(|| panic!("{what}: no message_ja: {v}"));
    assert!(
        ja.chars()
            .any(|c| ('\u{3040}'..='\u{30ff}').contains(&c)
                || ('\u{4e00}'..='\u{9fff}').contains(&c)),
        "{what}: message_ja is not Japanese: {v}"
    );
    assert_ne!(
        ja,
        outlook_sync::admin::messages::GENERIC.ja,
        "{what}: {code} has no Japanese sentence of its own"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_answers_one_shape_in_japanese_and_english_including_axums_rejections() {
    let sb = sandbox("admin-errors").await;
    let api = serve(&sb, |_| {}).await;
    let json_body = |s: &str| Some(reqwest::Body::from(s.to_string()));
    /// (what, method, path, body, content type, status, code)
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a str,
        Option<reqwest::Body>,
        &'a str,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "unknown company",
            "GET",
            "/v1/companies/nobody",
            None,
            "",
            404,
            "unknown_company",
        ),
        (
            "bad JSON",
            "PUT",
            "/v1/companies/acme",
            json_body("{not json"),
            "application/json",
            422,
            "invalid_body",
        ),
        (
            "unknown field",
            "PUT",
            "/v1/companies/acme",
            json_body(r#"{"plan":"standard","x":1}"#),
            "application/json",
            422,
            "invalid_body",
        ),
        (
            "bad flag",
            "DELETE",
            "/v1/companies/acme/users/u-1?delete_copies=maybe",
            None,
            "",
            422,
            "invalid_query",
        ),
        (
            "unknown route",
            "GET",
            "/v1/nothing-here",
            None,
            "",
            404,
            "unknown_route",
        ),
        (
            "unknown route outside /v1",
            "GET",
            "/favicon.ico",
            None,
            "",
            404,
            "unknown_route",
        ),
        (
            "method not allowed",
            "PATCH",
            "/v1/companies",
            None,
            "",
            405,
            "method_not_allowed",
        ),
        (
            "dlq: bad JSON",
            "POST",
            "/v1/dlq/replay",
            json_body("{nope"),
            "application/json",
            400,
            "invalid_request",
        ),
        (
            "dlq: wrong content type",
            "POST",
            "/v1/dlq/replay",
            json_body("{}"),
            "text/plain",
            415,
            "unsupported_media_type",
        ),
        (
            "dlq: unknown field",
            "POST",
            "/v1/dlq/replay",
            json_body(r#"{"bogus":1}"#),
            "application/json",
            422,
            "invalid_body",
        ),
        (
            "dlq: bad time",
            "GET",
            "/v1/dlq/messages?since=yesterday",
            None,
            "",
            400,
            "invalid_request",
        ),
        (
            "dlq: unknown query",
            "GET",
            "/v1/dlq/summary?colour=red",
            None,
            "",
            400,
            "invalid_request",
        ),
        (
            "dlq: no such dead letter",
            "GET",
            "/v1/dlq/messages/nope",
            None,
            "",
            404,
            "dead_letter_not_found",
        ),
        (
            "dlq: unconfirmed purge",
            "POST",
            "/v1/dlq/purge",
            json_body(r#"{"all":true}"#),
            "application/json",
            422,
            "purge_not_confirmed",
        ),
        (
            "unknown job",
            "GET",
            "/v1/jobs/nope",
            None,
            "",
            404,
            "unknown_job",
        ),
    ];
    for (what, method, path, body, ct, status, code) in cases {
        let (got, _, text) = api.raw(method, path, Some(TOKEN), body, ct).await;
        assert_eq!(got, status, "{what}: {text}");
        let v = assert_error_shape(what, got, &text);
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
    }
    let (got, headers, text) = api
        .raw(
            "GET",
            "/v1/companies",
            Some("nope-nope-nope-nope"),
            None,
            "",
        )
        .await;
    assert_eq!(got, 401);
    assert!(headers.contains_key("www-authenticate"));
    assert_error_shape("unauthorized", got, &text);
    sb.cleanup().await;
}

/// The string literals that name an error code in the admin surface's sources.
fn codes_in_source() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in [
        "src/admin/api.rs",
        "src/admin/auth.rs",
        "src/admin/bulk/file.rs",
        "src/admin/bulk/mod.rs",
        "src/admin/cleanup.rs",
        "src/admin/companies.rs",
        "src/admin/consent.rs",
        "src/admin/credentials.rs",
        "src/admin/errors.rs",
        "src/admin/input.rs",
        "src/admin/jobs.rs",
        "src/admin/removal.rs",
        "src/admin/service.rs",
        "src/admin/users.rs",
        "src/deadletter/api.rs",
    ] {
        let text = std::fs::read_to_string(crate::support::repo_path(file)).unwrap();
        for marker in [
            "code: \"",
            "invalid(",
            "conflict(",
            "ApiError::new(",
            "=> \"",
            "(StatusCode::",
        ] {
            for (i, _) in text.match_indices(marker) {
                let rest = &text[i + marker.len()..];
                // The first string literal after the marker, within the call.
                let rest = if marker.ends_with('"') {
                    rest
                } else {
                    let Some(q) = rest.find('"') else { continue };
                    if rest[..q].contains(';')
                        || rest[..q].contains(')') && !marker.starts_with("ApiError")
                    {
                        continue;
                    }
                    &rest[q + 1..]
                };
                let lit: String = rest.chars().take_while(|c| *c != '"').collect();
                if !lit.is_empty()
                    && lit.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && lit.contains('_')
                {
                    out.insert(lit);
                }
            }
        }
    }
    out
}

#[test]
fn every_error_code_the_admin_surface_answers_has_a_japanese_sentence_of_its_own() {
    let codes = codes_in_source();
    for must in [
        "unknown_company",
        "invalid_body",
        "purge_count_changed",
        "consent_tenant_mismatch",
        "dlq_busy",
    ] {
        assert!(
            codes.contains(must),
            "the source scan misses {must}: {codes:?}"
        );
    }
    let missing: Vec<&String> = codes
        .iter()
        .filter(|c| !outlook_sync::admin::messages::is_known(c))
        .collect();
    assert!(
        missing.is_empty(),
        "codes without a Japanese sentence: {missing:?}"
    );
}

// ---- the public listener ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_listener_serves_only_the_consent_callback() {
    let sb = sandbox("admin-public").await;
    let public = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let public_base = format!("http://{}", public.local_addr().unwrap());
    let pb = public_base.clone();
    let api = serve(&sb, move |c| c.admin.public_url = pb).await;
    let limits = outlook_sync::admin::listener::Limits::from_config(&api.admin.config().admin);
    let server = tokio::spawn(outlook_sync::admin::listener::serve(
        public,
        outlook_sync::admin::api::public_router(api.admin.clone()),
        limits,
        std::future::pending(),
    ));
    // Nothing but the callback answers there, with or without a token.
    for (method, path) in [
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/metrics"),
        ("GET", "/v1/companies"),
        ("POST", "/v1/dlq/purge"),
        ("GET", "/v1/dlq/messages"),
    ] {
        let (status, _, body) = api
            .raw(
                method,
                &format!("{public_base}{path}"),
                Some(TOKEN),
                None,
                "",
            )
            .await;
        assert_eq!(
            status, 404,
            "{method} {path} on the public listener: {body}"
        );
        let v = assert_error_shape(path, status, &body);
        assert_eq!(v["error"]["code"], "unknown_route");
    }
    // The callback does, end to end through Microsoft's redirect to public_url.
    let t = tenant(&sb, "pub", |a| a.with_consent(Consent::Pending), &[]);
    company(&api, "acme", "standard", &t).await;
    let link = api
        .ok("POST", "/v1/companies/acme/microsoft365/consent", None)
        .await;
    let (status, headers, _) = api
        .raw("GET", link["url"].as_str().unwrap(), None, None, "")
        .await;
    assert_eq!(status, 302);
    let location = headers["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&public_base), "{location}");
    let (status, _, page) = api.raw("GET", &location, None, None, "").await;
    assert_eq!(status, 200, "{page}");
    let s = api.ok("GET", "/v1/companies/acme", None).await;
    assert_eq!(s["consent"]["granted"], true, "{s}");
    server.abort();
    sb.cleanup().await;
}

fn yaml_file(rel: &str) -> Value {
    let text = std::fs::read_to_string(crate::support::repo_path(rel)).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn the_deploy_files_put_only_the_consent_callback_on_the_public_port() {
    let toml =
        std::fs::read_to_string(crate::support::repo_path("deploy/k8s/base/config.toml")).unwrap();
    let cfg = outlook_sync::config::Config::from_toml_str(&toml).unwrap();
    let public: std::net::SocketAddr = cfg
        .admin
        .public_listen
        .parse()
        .expect("the ConfigMap sets admin.public_listen");
    assert_ne!(public.port(), cfg.admin_addr().port());
    let d = yaml_file("deploy/k8s/base/deployment.yaml");
    let ports = d["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .clone();
    let port = |name: &str| {
        ports
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("a container port named {name}"))["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(port("public"), u64::from(public.port()));
    // The internal Service never exposes the public port, the public one nothing else.
    let internal = yaml_file("deploy/k8s/base/service.yaml");
    assert!(
        internal["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["targetPort"] == "admin")
    );
    let outside = yaml_file("deploy/k8s/base/service-public.yaml");
    let out_ports = outside["spec"]["ports"].as_array().unwrap();
    assert_eq!(out_ports.len(), 1);
    assert_eq!(out_ports[0]["targetPort"], "public");
    let k = std::fs::read_to_string(crate::support::repo_path(
        "deploy/k8s/base/kustomization.yaml",
    ))
    .unwrap();
    assert!(k.contains("service-public.yaml"));
    assert!(
        cfg.admin.public_url.starts_with("https://"),
        "administrators' browsers reach the callback over TLS: {}",
        cfg.admin.public_url
    );
    // compose: the same split.
    let compose = yaml_file("deploy/compose.yaml");
    let env = &compose["services"]["worker"]["environment"];
    let compose_public = env["OUTLOOK_SYNC__ADMIN__PUBLIC_LISTEN"].as_str().unwrap();
    let compose_port = compose_public.rsplit(':').next().unwrap();
    assert!(
        env["OUTLOOK_SYNC__ADMIN__PUBLIC_URL"]
            .as_str()
            .unwrap()
            .ends_with(&format!(":{compose_port}"))
    );
}

// ---- the OpenAPI document: valid, and what the routes answer ------------------------------------

fn openapi() -> Value {
    let text = std::fs::read_to_string(crate::support::repo_path("schemas/admin-api.openapi.yaml"))
        .unwrap();
    serde_yaml_ng::from_str(&text).expect("the OpenAPI document is valid YAML")
}

#[test]
fn the_openapi_document_is_valid_openapi_3_1_by_openapi_spec_validator() {
    let tool =
        crate::support::repo_path("target/tools/openapi-spec-validator/bin/openapi-spec-validator");
    assert!(
        tool.exists(),
        "this test needs openapi-spec-validator (PyPI), which is missing at {}: install it with \
         `bash scripts/tools/openapi-spec-validator.sh` (scripts/test.sh runs it)",
        tool.display()
    );
    let out = std::process::Command::new(&tool)
        .arg(crate::support::repo_path("schemas/admin-api.openapi.yaml"))
        .output()
        .expect("openapi-spec-validator runs");
    assert!(
        out.status.success(),
        "schemas/admin-api.openapi.yaml is not valid OpenAPI 3.1:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_openapi_document_gives_every_response_a_schema_and_splits_no_description() {
    let doc = openapi();
    // An unquoted flow-mapping description with a comma becomes keys with null values.
    fn nulls(v: &Value, at: &str, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if x.is_null() {
                        out.push(format!("{at}/{k}"));
                    }
                    nulls(x, &format!("{at}/{k}"), out);
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    nulls(x, &format!("{at}/{i}"), out);
                }
            }
            _ => {}
        }
    }
    let mut split = Vec::new();
    nulls(&doc, "", &mut split);
    assert!(
        split.is_empty(),
        "keys without a value (a description split at a comma?): {split:?}"
    );
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(responses) = op["responses"].as_object() else {
                continue;
            };
            for (status, r) in responses {
                let r = resolve(&doc, r);
                let has_schema = r["content"]
                    .as_object()
                    .is_some_and(|c| !c.is_empty() && c.values().all(|m| m["schema"].is_object()));
                if !has_schema {
                    missing.push(format!("{method} {path} {status}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "responses without a schema: {missing:?}"
    );
}

/// Follows a `$ref` to `#/components/...`.
fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
    match v["$ref"].as_str() {
        Some(r) => doc
            .pointer(r.trim_start_matches('#'))
            .unwrap_or_else(|| panic!("unresolved {r}")),
        None => v,
    }
}

/// The documented path template a concrete path matches (`/v1/jobs/3f…` → `/v1/jobs/{job}`).
fn template_of(doc: &Value, path: &str) -> Option<String> {
    let path = path.split('?').next().unwrap();
    let segs: Vec<&str> = path.split('/').collect();
    doc["paths"].as_object().unwrap().keys().find_map(|t| {
        let ts: Vec<&str> = t.split('/').collect();
        (ts.len() == segs.len()
            && ts
                .iter()
                .zip(&segs)
                .all(|(a, b)| a == b || (a.starts_with('{') && !b.is_empty())))
        .then(|| t.clone())
    })
}

/// Holds each live answer to the document: the status is documented for the route, and the body
/// matches its schema (JSON Schema 2020-12, formats checked).
struct Contract {
    doc: Value,
    seen: Mutex<Vec<(String, String, u16)>>,
}

impl Contract {
    fn check(&self, method: &str, path: &str, status: u16, content_type: &str, body: &str) {
        let doc = &self.doc;
        let template = template_of(doc, path)
            .unwrap_or_else(|| panic!("{method} {path}: no such path in the document"));
        let op = &doc["paths"][&template][method.to_ascii_lowercase()];
        assert!(op.is_object(), "{method} {template}: not in the document");
        let documented = &op["responses"][status.to_string()];
        assert!(
            documented.is_object(),
            "{method} {template} answered {status}, which the document does not list: {body}"
        );
        let response = resolve(doc, documented);
        let media = content_type.split(';').next().unwrap().trim();
        let schema = &response["content"][media]["schema"];
        assert!(
            schema.is_object(),
            "{method} {template} {status}: the document has no {media} schema"
        );
        let instance = if media == "application/json" {
            serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("{method} {path} {status}: not JSON ({e}): {body}"))
        } else {
            Value::String(body.to_string())
        };
        let mut root = schema.clone();
        root["components"] = doc["components"].clone();
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| {
                panic!("{method} {template} {status}: the schema does not compile: {e}")
            });
        let errors: Vec<String> = validator
            .iter_errors(&instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{method} {path} answered {status} against its schema with {errors:?}: {body}"
        );
        self.seen
            .lock()
            .unwrap()
            .push((method.to_string(), template, status));
    }
}

impl Api {
    /// A call whose answer is held to the OpenAPI document.
    async fn checked(
        &self,
        contract: &Contract,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, String)>,
    ) -> (u16, Value) {
        let (ct, b) = match body {
            Some((ct, b)) => (ct, Some(reqwest::Body::from(b))),
            None => ("", None),
        };
        let (status, headers, text) = self.raw(method, path, token, b, ct).await;
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let local = path.strip_prefix(&self.base).unwrap_or(path);
        contract.check(method, local, status, &content_type, &text);
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_what_the_openapi_document_says_in_success_and_in_error() {
    let sb = sandbox("admin-openapi").await;
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().display().to_string();
    let api = serve(&sb, |c| {
        c.admin.bulk_sync_max_rows = 2;
        c.dlq.archive_dir = archive;
    })
    .await;
    let contract = Contract {
        doc: openapi(),
        seen: Mutex::new(Vec::new()),
    };
    let t = tenant(
        &sb,
        "oa",
        |a| a,
        &[
            ("taro", MailboxKind::Ok),
            ("hanako", MailboxKind::Ok),
            ("jiro", MailboxKind::Ok),
        ],
    );
    let c = &contract;
    let tok = Some(TOKEN);
    let json = |v: Value| Some(("application/json", v.to_string()));
    let expect = |what: &str, got: (u16, Value), want: u16| -> Value {
        assert_eq!(got.0, want, "{what}: {}", got.1);
        got.1
    };

    // Companies and credentials.
    let plan = json!({"plan": "standard", "options": []});
    expect(
        "put company",
        api.checked(c, "PUT", "/v1/companies/acme", tok, json(plan.clone()))
            .await,
        200,
    );
    expect(
        "put company, bad",
        api.checked(
            c,
            "PUT",
            "/v1/companies/acme",
            tok,
            json(json!({"plan": "gold"})),
        )
        .await,
        422,
    );
    expect(
        "list",
        api.checked(c, "GET", "/v1/companies", tok, None).await,
        200,
    );
    expect(
        "list, no token",
        api.checked(c, "GET", "/v1/companies", None, None).await,
        401,
    );
    expect(
        "get",
        api.checked(c, "GET", "/v1/companies/acme", tok, None).await,
        200,
    );
    expect(
        "get, unknown",
        api.checked(c, "GET", "/v1/companies/nobody", tok, None)
            .await,
        404,
    );
    expect(
        "credentials",
        api.checked(
            c,
            "PUT",
            "/v1/companies/acme/microsoft365",
            tok,
            json(t.credentials()),
        )
        .await,
        200,
    );
    let bad = json!({"tenant_id": "..", "client_id": t.client_id, "client_secret": "x"});
    expect(
        "credentials, bad tenant",
        api.checked(c, "PUT", "/v1/companies/acme/microsoft365", tok, json(bad))
            .await,
        422,
    );
    expect(
        "integration",
        api.checked(c, "GET", "/v1/companies/acme/microsoft365", tok, None)
            .await,
        200,
    );
    expect(
        "verify",
        api.checked(
            c,
            "POST",
            "/v1/companies/acme/microsoft365/verify",
            tok,
            None,
        )
        .await,
        200,
    );
    expect(
        "verify, no credentials",
        {
            api.checked(
                c,
                "PUT",
                "/v1/companies/lite",
                tok,
                json(json!({"plan": "lite"})),
            )
            .await;
            api.checked(
                c,
                "POST",
                "/v1/companies/lite/microsoft365/verify",
                tok,
                None,
            )
            .await
        },
        409,
    );
    expect(
        "enable",
        api.checked(
            c,
            "POST",
            "/v1/companies/acme/microsoft365/enable",
            tok,
            None,
        )
        .await,
        200,
    );
    expect(
        "enable on lite",
        api.checked(
            c,
            "POST",
            "/v1/companies/lite/microsoft365/enable",
            tok,
            None,
        )
        .await,
        409,
    );
    expect(
        "remove credentials",
        api.checked(
            c,
            "DELETE",
            "/v1/companies/lite/microsoft365/credentials",
            tok,
            None,
        )
        .await,
        200,
    );

    // Consent, through Microsoft's (the emulator's) redirect.
    let link = expect(
        "consent link",
        api.checked(
            c,
            "POST",
            "/v1/companies/acme/microsoft365/consent",
            tok,
            None,
        )
        .await,
        200,
    );
    let (status, headers, _) = api
        .raw("GET", link["url"].as_str().unwrap(), None, None, "")
        .await;
    assert_eq!(status, 302);
    let location = headers["location"].to_str().unwrap().to_string();
    expect(
        "callback",
        api.checked(c, "GET", &location, None, None).await,
        200,
    );
    expect(
        "callback, used state",
        api.checked(c, "GET", &location, None, None).await,
        422,
    );

    // Users.
    let link_body = |local: &str| json(json!({"mailbox": t.upn(local)}));
    expect(
        "link",
        api.checked(
            c,
            "PUT",
            "/v1/companies/acme/users/u-1",
            tok,
            link_body("taro"),
        )
        .await,
        200,
    );
    expect(
        "link, bad address",
        api.checked(
            c,
            "PUT",
            "/v1/companies/acme/users/u-2",
            tok,
            json(json!({"mailbox": "nope"})),
        )
        .await,
        422,
    );
    expect(
        "link 2",
        api.checked(
            c,
            "PUT",
            "/v1/companies/acme/users/u-2",
            tok,
            link_body("hanako"),
        )
        .await,
        200,
    );
    expect(
        "users",
        api.checked(c, "GET", "/v1/companies/acme/users", tok, None)
            .await,
        200,
    );
    expect(
        "user",
        api.checked(c, "GET", "/v1/companies/acme/users/u-1", tok, None)
            .await,
        200,
    );
    expect(
        "user, unknown",
        api.checked(c, "GET", "/v1/companies/acme/users/u-9", tok, None)
            .await,
        404,
    );
    expect(
        "verify user",
        api.checked(c, "POST", "/v1/companies/acme/users/u-1/verify", tok, None)
            .await,
        200,
    );
    let csv = |s: &str| Some(("text/csv", s.to_string()));
    expect(
        "bulk preflight",
        api.checked(
            c,
            "POST",
            "/v1/companies/acme/bulk-links?dry_run=true",
            tok,
            csv(&format!("cyzen_user_id,email\nu-3,{}\n", t.upn("jiro"))),
        )
        .await,
        200,
    );
    let job = expect(
        "bulk job",
        api.checked(
            c,
            "POST",
            "/v1/companies/acme/bulk-links",
            tok,
            csv(&format!(
                "u-3,{}\nu-4,bad\nu-5,{}\n",
                t.upn("jiro"),
                t.upn("nobody")
            )),
        )
        .await,
        202,
    );
    let job_path = format!("/v1/jobs/{}", job["id"].as_str().unwrap());
    for _ in 0..300 {
        let v = expect(
            "job",
            api.checked(c, "GET", &job_path, tok, None).await,
            200,
        );
        if v["state"] != "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expect(
        "job, unknown",
        api.checked(c, "GET", "/v1/jobs/nope", tok, None).await,
        404,
    );
    expect(
        "unlink",
        api.checked(c, "DELETE", "/v1/companies/acme/users/u-2", tok, None)
            .await,
        200,
    );
    expect(
        "unlink, bad flag",
        api.checked(
            c,
            "DELETE",
            "/v1/companies/acme/users/u-1?delete_copies=maybe",
            tok,
            None,
        )
        .await,
        422,
    );
    let policy = "/v1/companies/acme/microsoft365/drift-policy";
    let set = expect(
        "drift policy",
        api.checked(c, "PUT", policy, tok, json(json!({"policy": "report"})))
            .await,
        200,
    );
    assert_eq!(set["drift_policy"], "report");
    expect(
        "drift policy, bad",
        api.checked(c, "PUT", policy, tok, json(json!({"policy": "fix"})))
            .await,
        422,
    );
    expect(
        "disable",
        api.checked(
            c,
            "POST",
            "/v1/companies/acme/microsoft365/disable",
            tok,
            None,
        )
        .await,
        200,
    );

    // Dead letters and the ledger.
    dead_letters(
        &sb,
        &["ev-1", "ev-2"]
            .map(|id| crate::deadletter::flush_dead_letter(id, "acme", "s-1", &t.upn("taro"))),
    )
    .await;
    expect(
        "dlq list",
        api.checked(c, "GET", "/v1/dlq/messages?company=acme", tok, None)
            .await,
        200,
    );
    expect(
        "dlq list by age",
        api.checked(c, "GET", "/v1/dlq/messages?since=2h", tok, None)
            .await,
        200,
    );
    expect(
        "dlq list, bad time",
        api.checked(c, "GET", "/v1/dlq/messages?since=yesterday", tok, None)
            .await,
        400,
    );
    expect(
        "dlq summary",
        api.checked(c, "GET", "/v1/dlq/summary?stage=flush", tok, None)
            .await,
        200,
    );
    expect(
        "dlq show",
        api.checked(c, "GET", "/v1/dlq/messages/ev-1", tok, None)
            .await,
        200,
    );
    expect(
        "dlq show, unknown",
        api.checked(c, "GET", "/v1/dlq/messages/nothing", tok, None)
            .await,
        404,
    );
    expect(
        "dlq replay, dry run",
        api.checked(
            c,
            "POST",
            "/v1/dlq/replay",
            tok,
            json(json!({"filter": {"company": "acme"}, "dry_run": true})),
        )
        .await,
        200,
    );
    expect(
        "dlq replay, unknown field",
        api.checked(c, "POST", "/v1/dlq/replay", tok, json(json!({"nope": 1})))
            .await,
        422,
    );
    let purge =
        |n: u64| json(json!({"filter": {"company": "acme"}, "confirm": true, "expected": n}));
    expect(
        "dlq purge, wrong count",
        api.checked(c, "POST", "/v1/dlq/purge", tok, purge(5)).await,
        409,
    );
    expect(
        "dlq purge",
        api.checked(c, "POST", "/v1/dlq/purge", tok, purge(2)).await,
        200,
    );
    expect(
        "ledger",
        api.checked(c, "GET", "/v1/ledger/acme/s-1", tok, None)
            .await,
        200,
    );
    expect(
        "backlog",
        api.checked(c, "GET", "/v1/backlog", tok, None).await,
        200,
    );

    let audit = expect(
        "audit",
        api.checked(c, "GET", "/v1/companies/acme/audit?limit=5", tok, None)
            .await,
        200,
    );
    assert_eq!(audit["entries"].as_array().unwrap().len(), 5, "{audit}");
    expect(
        "audit, bad limit",
        api.checked(c, "GET", "/v1/companies/acme/audit?limit=0", tok, None)
            .await,
        422,
    );

    // Last: remove the integration (a job).
    let job = expect(
        "remove integration",
        api.checked(
            c,
            "DELETE",
            "/v1/companies/acme/microsoft365?delete_copies=false",
            tok,
            None,
        )
        .await,
        202,
    );
    api.wait_job(&job).await;

    // Every route was held to the document with a success.
    let seen = contract.seen.lock().unwrap().clone();
    let succeeded: BTreeSet<(String, String)> = seen
        .iter()
        .filter(|(_, _, s)| (200..300).contains(s))
        .map(|(m, t, _)| (m.clone(), t.clone()))
        .collect();
    let unexercised: Vec<_> = outlook_sync::admin::api::routes()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .filter(|r| !succeeded.contains(r))
        .collect();
    assert!(
        unexercised.is_empty(),
        "routes never checked with a success: {unexercised:?}"
    );
    assert!(seen.iter().filter(|(_, _, s)| *s >= 400).count() >= 15);
    sb.cleanup().await;
}

// ---- CSV as a Japanese administrator writes it ------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shift_jis_csv_with_a_japanese_header_is_read_as_excel_in_japan_saves_it() {
    let sb = sandbox("admin-sjis").await;
    let api = serve(&sb, |_| {}).await;
    let t = tenant(
        &sb,
        "sjis",
        |a| a,
        &[("taro", MailboxKind::Ok), ("hanako", MailboxKind::Ok)],
    );
    company(&api, "acme", "standard", &t).await;
    let upload = |bytes: Vec<u8>| {
        let api = &api;
        async move {
            let (status, _, text) = api
                .raw(
                    "POST",
                    "/v1/companies/acme/bulk-links?dry_run=true",
                    Some(TOKEN),
                    Some(bytes.into()),
                    "text/csv",
                )
                .await;
            (status, serde_json::from_str::<Value>(&text).unwrap())
        }
    };
    // Excel's "CSV (コンマ区切り)": Shift_JIS (CP932), CRLF, a Japanese header, a name column.
    let text = format!(
        "氏名,ユーザーID,メールアドレス,操作\r\n山田 太郎,u-1,{},連携\r\n髙橋 花子,u-2,{},\r\n",
        t.upn("taro"),
        t.upn("hanako")
    );
    let (sjis, _, unmappable) = encoding_rs::SHIFT_JIS.encode(&text);
    assert!(!unmappable);
    let (status, report) = upload(sjis.into_owned()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["rows"], 2, "the header is not a row: {report}");
    let outcomes: Vec<(&str, &str)> = report["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user_id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![("u-1", "would_link"), ("u-2", "would_link")],
        "{report}"
    );
    // UTF-8 with a BOM and the English header: the same.
    let utf8 = format!(
        "\u{feff}cyzen_user_id,email\r\nu-1,{}\r\nu-2,{}\r\n",
        t.upn("taro"),
        t.upn("hanako")
    );
    let (status, report) = upload(utf8.into_bytes()).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["rows"], 2, "{report}");
    // Bytes that are neither: refused in both languages, naming what to do.
    let (status, v) = upload(b"u-1,\x82\xff\x82@x.com\r\n".to_vec()).await;
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["error"]["code"], "invalid_csv");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Shift_JIS"),
        "{v}"
    );
    assert!(
        v["error"]["message_ja"]
            .as_str()
            .unwrap()
            .contains("Shift_JIS"),
        "{v}"
    );
    sb.cleanup().await;
}
