//! The Graph emulator's wire behaviour (GRAPH.md), pinned over real HTTP with reqwest against
//! `Emulator::start`. Each test starts its own emulator, so they run in parallel.

use std::collections::HashSet;
use std::time::Duration;

use graph_emulator::{
    Consent, Emulator, FaultKind, Faults, MailboxKind, RunningEmulator, ScriptedFault, Seed,
    SeedApp, SeedTenant, SeedUser, Settings, TransactionIdMode, wire,
};
use serde_json::{Value, json};

// ---- fixture ----------------------------------------------------------------------------

const TENANT_A: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
const DOMAIN_A: &str = "contoso.onmicrosoft.com";
const TENANT_B: &str = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d";
const DOMAIN_B: &str = "fabrikam.onmicrosoft.com";

const APP: &str = "c0ffee00-0000-4000-8000-000000000001";
const APP_PENDING: &str = "c0ffee00-0000-4000-8000-000000000002";
const APP_REFUSES: &str = "c0ffee00-0000-4000-8000-000000000003";
const APP_READONLY: &str = "c0ffee00-0000-4000-8000-000000000004";
const APP_NO_ROLES: &str = "c0ffee00-0000-4000-8000-000000000005";
const APP_EXPIRED: &str = "c0ffee00-0000-4000-8000-000000000006";
const APP_B: &str = "c0ffee00-0000-4000-8000-0000000000b1";
const SECRET: &str = "s3cret+/=&";

const TARO: &str = "taro@contoso.onmicrosoft.com";
const HANAKO: &str = "hanako@contoso.onmicrosoft.com";
const GUEST: &str = "guest@contoso.onmicrosoft.com";
const RESTRICTED: &str = "restricted@contoso.onmicrosoft.com";
const NOBODY: &str = "nobody@contoso.onmicrosoft.com";
const ANNA: &str = "anna@fabrikam.onmicrosoft.com";

const PROP_ID: &str = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name CyzenScheduleId";

fn seed() -> Seed {
    let past: jiff::Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
    let tenant_a = SeedTenant::new(TENANT_A, DOMAIN_A)
        .with_app(SeedApp::new(APP, SECRET))
        .with_app(SeedApp::new(APP_PENDING, SECRET).with_consent(Consent::Pending))
        .with_app(SeedApp::new(APP_REFUSES, SECRET).with_consent(Consent::Refuses))
        .with_app(SeedApp::new(APP_READONLY, SECRET).with_roles(["Calendars.Read"]))
        .with_app(SeedApp::new(APP_NO_ROLES, SECRET).with_roles(Vec::<String>::new()))
        .with_app({
            let mut app = SeedApp::new(APP_EXPIRED, "unused");
            app.secrets.clear();
            app.with_secret("old", Some(past))
        })
        .with_user(
            SeedUser::new(TARO)
                .with_id("3e9d2c1b-7a6f-4b5e-9d8c-2a1b0c9d8e7f")
                .with_time_zone("Tokyo Standard Time"),
        )
        .with_user(SeedUser::new(HANAKO))
        .with_user(SeedUser::new(GUEST).with_mailbox(MailboxKind::NoMailbox))
        .with_user(SeedUser::new(RESTRICTED).with_mailbox(MailboxKind::PolicyDenied));
    let tenant_b = SeedTenant::new(TENANT_B, DOMAIN_B)
        .with_app(SeedApp::new(APP_B, SECRET))
        .with_user(SeedUser::new(ANNA));
    Seed {
        tenants: vec![tenant_a, tenant_b],
    }
}

struct Emu {
    run: RunningEmulator,
    http: reqwest::Client,
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

async fn emu(settings: Settings) -> Emu {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let run = Emulator::start(seed(), settings)
        .await
        .expect("start emulator");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Emu { run, http }
}

/// Percent-encodes a path segment (event ids contain `/`, `+`, `=`).
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn event(subject: &str, start: &str, end: &str, tz: &str) -> Value {
    json!({
        "subject": subject,
        "body": {"contentType": "text", "content": format!("Visit <{subject}> & co\nline 2")},
        "start": {"dateTime": start, "timeZone": tz},
        "end": {"dateTime": end, "timeZone": tz},
        "location": {"displayName": "Harry's Bar"},
    })
}

impl Emu {
    fn em(&self) -> &Emulator {
        &self.run.emulator
    }

    fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.run.login_url())
    }

    async fn token_raw(&self, tenant: &str, form: &[(&str, &str)]) -> Resp {
        let r = self
            .http
            .post(self.token_url(tenant))
            .form(form)
            .send()
            .await
            .unwrap();
        to_resp(r).await
    }

    async fn token_for(&self, tenant: &str, client: &str) -> String {
        let r = self
            .token_raw(
                tenant,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", client),
                    ("client_secret", SECRET),
                    ("scope", "https://graph.microsoft.com/.default"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        r.body["access_token"].as_str().unwrap().to_string()
    }

    async fn token(&self) -> String {
        self.token_for(DOMAIN_A, APP).await
    }

    async fn req(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.run.graph_url())
        };
        let mut rb = self
            .http
            .request(reqwest::Method::from_bytes(method.as_bytes()).unwrap(), url);
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        to_resp(rb.send().await.expect("request")).await
    }

    async fn get(&self, token: &str, path: &str) -> Resp {
        self.req("GET", path, Some(token), None, &[]).await
    }

    async fn post(&self, token: &str, path: &str, body: Value) -> Resp {
        self.req("POST", path, Some(token), Some(body), &[]).await
    }

    async fn create(&self, token: &str, mailbox: &str, body: Value) -> Resp {
        let r = self
            .post(token, &format!("/users/{mailbox}/events"), body)
            .await;
        assert_eq!(r.status, 201, "{:?}", r.body);
        r
    }
}

async fn to_resp(r: reqwest::Response) -> Resp {
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Resp {
        status,
        headers,
        body,
    }
}

/// Status, code, message and the envelope's `innerError` + `request-id` headers (GRAPH.md §2.10).
fn assert_graph_error(r: &Resp, status: u16, code: &str, message: Option<&str>) {
    assert_eq!(r.status, status, "{:?}", r.body);
    assert_eq!(r.code(), code, "{:?}", r.body);
    if let Some(m) = message {
        assert_eq!(r.message(), m);
    }
    let inner = &r.body["error"]["innerError"];
    let date = inner["date"].as_str().expect("innerError.date");
    assert_eq!(date.len(), 19, "{date}");
    assert!(!date.ends_with('Z'));
    assert_eq!(inner["request-id"].as_str(), r.header("request-id"));
    assert!(inner["client-request-id"].is_string());
    assert!(r.header("client-request-id").is_some());
}

fn jwt_payload(token: &str) -> Value {
    use base64::Engine;
    let part = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn is_graph_timestamp(s: &str) -> bool {
    // 2017-04-15T03:00:50.7579581Z
    s.len() == 28 && s.as_bytes()[10] == b'T' && s.as_bytes()[19] == b'.' && s.ends_with('Z')
}

// ---- token endpoint (GRAPH.md §1) --------------------------------------------------------

#[tokio::test]
async fn token_success_by_tenant_id_domain_body_secret_or_basic_auth() {
    let e = emu(Settings::default()).await;
    for tenant in [TENANT_A, DOMAIN_A, "CONTOSO.onmicrosoft.com"] {
        let r = e
            .token_raw(
                tenant,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", APP),
                    ("client_secret", SECRET),
                    ("scope", "https://graph.microsoft.com/.default"),
                ],
            )
            .await;
        assert_eq!(r.status, 200, "{tenant}: {:?}", r.body);
        assert_eq!(r.body["token_type"], "Bearer");
        assert_eq!(r.body["expires_in"], 3599);
        assert_eq!(r.body["ext_expires_in"], 3599);
        let token = r.body["access_token"].as_str().unwrap();
        assert_eq!(token.split('.').count(), 3);
        let claims = jwt_payload(token);
        assert_eq!(claims["aud"], "https://graph.microsoft.com");
        assert_eq!(claims["tid"], TENANT_A);
        assert_eq!(claims["appid"], APP);
        assert_eq!(
            claims["roles"],
            json!(["Calendars.ReadWrite", "User.Read.All"])
        );
        let (iat, nbf, exp) = (
            claims["iat"].as_i64().unwrap(),
            claims["nbf"].as_i64().unwrap(),
            claims["exp"].as_i64().unwrap(),
        );
        assert_eq!(exp - iat, 3599);
        assert!(nbf <= iat);
    }
    // HTTP Basic (RFC 6749 §2.3.1: form-encoded id and secret).
    let basic_secret: String = url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect();
    let r = e
        .http
        .post(e.token_url(DOMAIN_A))
        .basic_auth(APP, Some(basic_secret))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "https://graph.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap();
    let r = to_resp(r).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let token = r.body["access_token"].as_str().unwrap();
    assert_eq!(
        e.get(token, &format!("/users/{TARO}/events")).await.status,
        200
    );
    assert_eq!(e.em().stats().tokens_issued, 4);
}

#[tokio::test]
async fn token_errors_have_aadsts_codes_and_the_full_error_body() {
    let e = emu(Settings::default()).await;
    let scope = "https://graph.microsoft.com/.default";
    let ok = |client: &'static str, secret: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", secret),
            ("scope", scope),
        ]
    };
    let without = |name: &str| {
        ok(APP, SECRET)
            .into_iter()
            .filter(|(k, _)| *k != name)
            .collect::<Vec<_>>()
    };
    #[rustfmt::skip]
    // (case, tenant, form, status, error, AADSTS code)
    type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, u16, &'a str, u32);
    let cases: Vec<Case> = vec![
        (
            "wrong secret",
            DOMAIN_A,
            ok(APP, "nope"),
            401,
            "invalid_client",
            7000215,
        ),
        (
            "expired secret",
            DOMAIN_A,
            ok(APP_EXPIRED, "old"),
            401,
            "invalid_client",
            7000222,
        ),
        (
            "app of another tenant",
            DOMAIN_B,
            ok(APP, SECRET),
            400,
            "unauthorized_client",
            700016,
        ),
        (
            "unknown app",
            DOMAIN_A,
            ok("deadbeef-0000-4000-8000-000000000000", SECRET),
            400,
            "unauthorized_client",
            700016,
        ),
        (
            "unknown tenant id",
            "11111111-2222-4333-8444-555555555555",
            ok(APP, SECRET),
            400,
            "invalid_tenant",
            90002,
        ),
        (
            "unknown tenant domain",
            "nowhere.onmicrosoft.com",
            ok(APP, SECRET),
            400,
            "invalid_tenant",
            90002,
        ),
        (
            "scope of another resource",
            DOMAIN_A,
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", SECRET),
                ("scope", "https://outlook.office.com/.default"),
            ],
            400,
            "invalid_scope",
            70011,
        ),
        (
            "delegated scope",
            DOMAIN_A,
            vec![
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", SECRET),
                ("scope", "Calendars.ReadWrite"),
            ],
            400,
            "invalid_scope",
            70011,
        ),
        (
            "missing grant_type",
            DOMAIN_A,
            without("grant_type"),
            400,
            "invalid_request",
            900144,
        ),
        (
            "missing client_id",
            DOMAIN_A,
            without("client_id"),
            400,
            "invalid_request",
            900144,
        ),
        (
            "missing secret",
            DOMAIN_A,
            without("client_secret"),
            400,
            "invalid_request",
            900144,
        ),
        (
            "password grant",
            DOMAIN_A,
            vec![
                ("grant_type", "password"),
                ("client_id", APP),
                ("client_secret", SECRET),
                ("scope", scope),
            ],
            400,
            "unsupported_grant_type",
            70003,
        ),
    ];
    for (name, tenant, form, status, error, code) in cases {
        let r = e.token_raw(tenant, &form).await;
        assert_eq!(r.status, status, "{name}: {:?}", r.body);
        assert_eq!(r.body["error"], error, "{name}");
        assert_eq!(r.body["error_codes"], json!([code]), "{name}");
        let desc = r.body["error_description"].as_str().unwrap();
        assert!(
            desc.starts_with(&format!("AADSTS{code}: ")),
            "{name}: {desc}"
        );
        for part in ["\r\nTrace ID: ", "\r\nCorrelation ID: ", "\r\nTimestamp: "] {
            assert!(desc.contains(part), "{name}: {desc}");
        }
        let ts = r.body["timestamp"].as_str().unwrap();
        assert!(
            ts.len() == 20 && ts.as_bytes()[10] == b' ' && ts.ends_with('Z'),
            "{ts}"
        );
        assert!(desc.ends_with(ts), "{name}");
        for id in ["trace_id", "correlation_id"] {
            assert!(
                uuid::Uuid::parse_str(r.body[id].as_str().unwrap()).is_ok(),
                "{name} {id}"
            );
        }
        assert_eq!(
            r.body["error_uri"],
            format!("https://login.microsoftonline.com/error?code={code}")
        );
    }
    // The missing parameter is named.
    let r = e.token_raw(DOMAIN_A, &without("client_id")).await;
    assert!(
        r.body["error_description"]
            .as_str()
            .unwrap()
            .contains("The request body must contain the following parameter: 'client_id'.")
    );
    assert_eq!(e.em().stats().tokens_issued, 0);
}

#[tokio::test]
async fn token_with_expired_secret_is_401_aadsts7000222() {
    let e = emu(Settings::default()).await;
    let r = e
        .token_raw(
            DOMAIN_A,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", APP_EXPIRED),
                ("client_secret", "old"),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body["error"], "invalid_client");
    assert!(r.body["error_description"]
        .as_str()
        .unwrap()
        .starts_with(&format!("AADSTS7000222: The provided client secret keys for app '{APP_EXPIRED}' are expired.")));
}

// ---- consent (GRAPH.md §1.5) -------------------------------------------------------------

#[tokio::test]
async fn pending_consent_gives_tokens_without_roles_until_adminconsent() {
    let e = emu(Settings::default()).await;
    let before = e.token_for(DOMAIN_A, APP_PENDING).await;
    assert!(jwt_payload(&before).get("roles").is_none());
    let r = e.get(&before, &format!("/users/{TARO}/events")).await;
    assert_graph_error(&r, 403, "ErrorAccessDenied", Some(wire::ACCESS_DENIED));
    let r = e.get(&before, &format!("/users/{TARO}")).await;
    assert_graph_error(
        &r,
        403,
        "Authorization_RequestDenied",
        Some(wire::DIRECTORY_DENIED),
    );

    let r = e
        .http
        .get(format!("{}/{DOMAIN_A}/adminconsent", e.run.login_url()))
        .query(&[
            ("client_id", APP_PENDING),
            ("state", "xyz 1"),
            ("redirect_uri", "https://app.example/consent?x=1"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let url = url::Url::parse(&location).unwrap();
    assert_eq!(
        (url.host_str(), url.path()),
        (Some("app.example"), "/consent")
    );
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["x"], "1");
    assert_eq!(q["admin_consent"], "True");
    assert_eq!(q["tenant"], TENANT_A);
    assert_eq!(q["state"], "xyz 1");
    assert_eq!(e.em().consent(APP_PENDING), Some(Consent::Granted));

    // Only newly issued tokens carry the roles (GRAPH.md §1.2).
    assert_eq!(
        e.get(&before, &format!("/users/{TARO}/events"))
            .await
            .status,
        403
    );
    let after = e.token_for(DOMAIN_A, APP_PENDING).await;
    assert_eq!(
        jwt_payload(&after)["roles"],
        json!(["Calendars.ReadWrite", "User.Read.All"])
    );
    assert_eq!(
        e.get(&after, &format!("/users/{TARO}/events")).await.status,
        200
    );
}

#[tokio::test]
async fn refused_adminconsent_redirects_with_permission_denied() {
    let e = emu(Settings::default()).await;
    let r = e
        .http
        .get(format!("{}/{TENANT_A}/adminconsent", e.run.login_url()))
        .query(&[
            ("client_id", APP_REFUSES),
            ("state", "s1"),
            ("redirect_uri", "https://app.example/cb"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 302);
    let url = url::Url::parse(r.headers()["location"].to_str().unwrap()).unwrap();
    let q: std::collections::HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["error"], "permission_denied");
    assert!(!q["error_description"].is_empty());
    assert_eq!(q["state"], "s1");
    assert!(!q.contains_key("admin_consent"));
    assert_eq!(e.em().consent(APP_REFUSES), Some(Consent::Refuses));
    let token = e.token_for(DOMAIN_A, APP_REFUSES).await;
    assert!(jwt_payload(&token).get("roles").is_none());

    // Unknown app, or an app of another tenant: an error page, no redirect.
    for (tenant, client) in [
        (DOMAIN_A, "deadbeef-0000-4000-8000-000000000000"),
        (DOMAIN_B, APP),
    ] {
        let r = e
            .http
            .get(format!("{}/{tenant}/adminconsent", e.run.login_url()))
            .query(&[
                ("client_id", client),
                ("redirect_uri", "https://app.example/cb"),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert!(r.text().await.unwrap().contains("AADSTS700016"));
    }
}

// ---- bearer tokens (GRAPH.md §1.6, §2.10) ------------------------------------------------

#[tokio::test]
async fn graph_rejects_missing_garbage_and_forged_tokens_with_401() {
    let e = emu(Settings::default()).await;
    let good = e.token().await;
    // Same claims, signed by another emulator: the signature does not verify here.
    let other = emu(Settings::default()).await;
    let foreign = other.token().await;
    // Roles edited into the payload: the signature no longer matches.
    let tampered = {
        use base64::Engine;
        let parts: Vec<&str> = good.split('.').collect();
        let mut claims = jwt_payload(&good);
        claims["roles"] = json!(["Calendars.ReadWrite", "Directory.ReadWrite.All"]);
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(claims.to_string());
        format!("{}.{}.{}", parts[0], payload, parts[2])
    };
    let path = format!("/users/{TARO}/events");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no header", None, wire::TOKEN_EMPTY),
        (
            "garbage",
            Some("Bearer garbage".into()),
            wire::TOKEN_GARBAGE,
        ),
        (
            "basic scheme",
            Some("Basic Zm9vOmJhcg==".into()),
            wire::TOKEN_EMPTY,
        ),
        (
            "foreign signature",
            Some(format!("Bearer {foreign}")),
            wire::TOKEN_BAD_SIGNATURE,
        ),
        (
            "tampered payload",
            Some(format!("Bearer {tampered}")),
            wire::TOKEN_BAD_SIGNATURE,
        ),
    ];
    for (name, auth, message) in cases {
        let mut headers = vec![("client-request-id", "6f1e3b9a-0000-4000-8000-000000000001")];
        if let Some(a) = &auth {
            headers.push(("Authorization", a.as_str()));
        }
        let r = e.req("GET", &path, None, None, &headers).await;
        assert_graph_error(&r, 401, "InvalidAuthenticationToken", Some(message));
        assert_eq!(
            r.header("www-authenticate"),
            Some(wire::WWW_AUTHENTICATE),
            "{name}"
        );
        assert_eq!(
            r.header("client-request-id"),
            Some("6f1e3b9a-0000-4000-8000-000000000001"),
            "{name}"
        );
        assert_eq!(
            r.body["error"]["innerError"]["client-request-id"],
            "6f1e3b9a-0000-4000-8000-000000000001"
        );
    }
    assert_eq!(e.get(&good, &path).await.status, 200);
}

#[tokio::test]
async fn expired_token_is_401_access_token_has_expired() {
    let e = emu(Settings {
        token_lifetime: Duration::from_secs(2),
        ..Settings::default()
    })
    .await;
    let r = e
        .token_raw(
            DOMAIN_A,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", APP),
                ("client_secret", SECRET),
                ("scope", "https://graph.microsoft.com/.default"),
            ],
        )
        .await;
    assert_eq!(r.body["expires_in"], 2);
    let token = r.body["access_token"].as_str().unwrap().to_string();
    let path = format!("/users/{TARO}/calendar");
    assert_eq!(e.get(&token, &path).await.status, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let r = e.get(&token, &path).await;
    assert_graph_error(
        &r,
        401,
        "InvalidAuthenticationToken",
        Some(wire::TOKEN_EXPIRED),
    );
    assert_eq!(r.header("www-authenticate"), Some(wire::WWW_AUTHENTICATE));
}

#[tokio::test]
async fn tokens_only_reach_users_of_their_own_tenant() {
    let e = emu(Settings::default()).await;
    let a = e.token().await;
    let b = e.token_for(DOMAIN_B, APP_B).await;
    assert_eq!(jwt_payload(&b)["tid"], TENANT_B);
    // B's token on A's user: unknown user, whatever the path.
    let r = e.get(&b, &format!("/users/{TARO}/events")).await;
    assert_graph_error(
        &r,
        404,
        "ErrorInvalidUser",
        Some(&format!("The requested user '{TARO}' is invalid.")),
    );
    let r = e.get(&b, &format!("/users/{TARO}")).await;
    assert_graph_error(&r, 404, "Request_ResourceNotFound", None);
    let taro_id = e.em().user_id(TARO).unwrap();
    assert_eq!(
        e.get(&b, &format!("/users/{taro_id}/calendar"))
            .await
            .status,
        404
    );
    // Each token reaches its own tenant.
    assert_eq!(
        e.get(&b, &format!("/users/{ANNA}/events")).await.status,
        200
    );
    assert_eq!(
        e.get(&a, &format!("/users/{ANNA}/events")).await.status,
        404
    );
    let r = e
        .create(
            &a,
            TARO,
            event("a", "2025-01-06T09:00:00", "2025-01-06T10:00:00", "UTC"),
        )
        .await;
    let id = r.body["id"].as_str().unwrap();
    let r = e
        .get(&b, &format!("/users/{ANNA}/events/{}", enc(id)))
        .await;
    assert_graph_error(&r, 404, "ErrorItemNotFound", Some(wire::ITEM_NOT_FOUND));
}

// ---- users and mailboxes (GRAPH.md §5) ---------------------------------------------------

#[tokio::test]
async fn mailbox_kinds_give_the_documented_answer_on_every_path() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let body = event("probe", "2025-01-06T09:00:00", "2025-01-06T10:00:00", "UTC");
    let paths: Vec<(&str, &str, bool)> = vec![
        ("GET", "calendar", false),
        ("GET", "mailboxSettings", false),
        ("GET", "events", false),
        ("POST", "events", true),
        ("POST", "calendar/events", true),
        (
            "GET",
            "calendarView?startDateTime=2025-01-01T00:00:00Z&endDateTime=2025-02-01T00:00:00Z",
            false,
        ),
        ("GET", "events/AAMkAGI1AAAt9AHjAAA%3D", false),
        ("PATCH", "events/AAMkAGI1AAAt9AHjAAA%3D", true),
        ("DELETE", "events/AAMkAGI1AAAt9AHjAAA%3D", false),
    ];
    #[rustfmt::skip]
    let kinds: Vec<(&str, u16, &str, String)> = vec![
        (GUEST, 404, wire::NO_MAILBOX_CODE, wire::NO_MAILBOX.to_string()),
        (RESTRICTED, 403, "ErrorAccessDenied", wire::ODATA_DISABLED.to_string()),
        (NOBODY, 404, "ErrorInvalidUser", format!("The requested user '{NOBODY}' is invalid.")),
    ];
    for (user, status, code, message) in &kinds {
        for (method, sub, with_body) in &paths {
            let r = e
                .req(
                    method,
                    &format!("/users/{user}/{sub}"),
                    Some(&t),
                    with_body.then(|| body.clone()),
                    &[],
                )
                .await;
            assert_graph_error(&r, *status, code, Some(message.as_str()));
        }
    }
    // ok mailbox: every path works (the item ones give ErrorItemNotFound for the fake id).
    for (method, sub, with_body) in &paths {
        let r = e
            .req(
                method,
                &format!("/users/{TARO}/{sub}"),
                Some(&t),
                with_body.then(|| body.clone()),
                &[],
            )
            .await;
        if sub.starts_with("events/") {
            assert_graph_error(&r, 404, "ErrorItemNotFound", Some(wire::ITEM_NOT_FOUND));
        } else {
            assert!(
                r.status == 200 || r.status == 201,
                "{method} {sub}: {:?}",
                r.body
            );
        }
    }
    // The directory sees every existing user, mailbox or not.
    for (user, mail) in [
        (TARO, json!(TARO)),
        (GUEST, Value::Null),
        (RESTRICTED, json!(RESTRICTED)),
    ] {
        let r = e.get(&t, &format!("/users/{user}")).await;
        assert_eq!(r.status, 200, "{user}");
        assert_eq!(r.body["userPrincipalName"], user);
        assert_eq!(r.body["mail"], mail);
        assert!(
            r.body["@odata.context"]
                .as_str()
                .unwrap()
                .ends_with("$metadata#users/$entity")
        );
    }
    let r = e.get(&t, &format!("/users/{NOBODY}")).await;
    assert_graph_error(
        &r,
        404,
        "Request_ResourceNotFound",
        Some(&format!(
            "Resource '{NOBODY}' does not exist or one of its queried reference-property objects are not present."
        )),
    );
    // By id and case-insensitively, with $select.
    let id = e.em().user_id(TARO).unwrap();
    let r = e
        .get(
            &t,
            &format!(
                "/users/{}?$select=id,mail,accountEnabled",
                id.to_uppercase()
            ),
        )
        .await;
    assert_eq!(r.status, 200);
    let keys: HashSet<&str> = r
        .body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        HashSet::from(["@odata.context", "id", "mail", "accountEnabled"])
    );
    assert_eq!(r.body["id"], id);
    // Mailbox settings carry the user's zone.
    let r = e.get(&t, &format!("/users/{TARO}/mailboxSettings")).await;
    assert_eq!(r.body["timeZone"], "Tokyo Standard Time");
    assert_eq!(r.body["userPurpose"]["value"], "user");
    let r = e.get(&t, &format!("/users/{TARO}/calendar")).await;
    assert_eq!(r.body["isDefaultCalendar"], true);
    // The mailbox kind can change at run time.
    assert!(e.em().set_mailbox_kind(TARO, MailboxKind::PolicyDenied));
    let r = e.get(&t, &format!("/users/{TARO}/calendar")).await;
    assert_graph_error(&r, 403, "ErrorAccessDenied", Some(wire::ODATA_DISABLED));
}

#[tokio::test]
async fn missing_app_roles_give_403_with_the_workloads_code() {
    let e = emu(Settings::default()).await;
    let read_only = e.token_for(DOMAIN_A, APP_READONLY).await;
    let no_roles = e.token_for(DOMAIN_A, APP_NO_ROLES).await;
    assert!(jwt_payload(&no_roles).get("roles").is_none());
    let body = event("x", "2025-01-06T09:00:00", "2025-01-06T10:00:00", "UTC");
    #[rustfmt::skip]
    // (case, token, method, body, status, code)
    type Case<'a> = (&'a str, &'a str, &'a str, Option<Value>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "read-only app reads",
            read_only.as_str(),
            "GET",
            None,
            200,
            "",
        ),
        (
            "read-only app writes",
            read_only.as_str(),
            "POST",
            Some(body.clone()),
            403,
            "ErrorAccessDenied",
        ),
        (
            "role-less app reads",
            no_roles.as_str(),
            "GET",
            None,
            403,
            "ErrorAccessDenied",
        ),
        (
            "role-less app writes",
            no_roles.as_str(),
            "POST",
            Some(body.clone()),
            403,
            "ErrorAccessDenied",
        ),
    ];
    for (name, token, method, body, status, code) in cases {
        let r = e
            .req(
                method,
                &format!("/users/{TARO}/events"),
                Some(token),
                body,
                &[],
            )
            .await;
        assert_eq!(r.status, status, "{name}: {:?}", r.body);
        if status == 403 {
            assert_graph_error(&r, 403, code, Some(wire::ACCESS_DENIED));
        }
    }
    let r = e.get(&read_only, &format!("/users/{TARO}")).await;
    assert_graph_error(
        &r,
        403,
        "Authorization_RequestDenied",
        Some(wire::DIRECTORY_DENIED),
    );
    // mailboxSettings: Calendars.* accepted by default, MailboxSettings.Read required when strict.
    assert_eq!(
        e.get(&read_only, &format!("/users/{TARO}/mailboxSettings"))
            .await
            .status,
        200
    );
    e.em()
        .update_settings(|s| s.mailbox_settings_accepts_calendar_roles = false);
    let r = e
        .get(&read_only, &format!("/users/{TARO}/mailboxSettings"))
        .await;
    assert_graph_error(&r, 403, "ErrorAccessDenied", Some(wire::ACCESS_DENIED));
}

#[tokio::test]
async fn unknown_segments_and_me_with_an_app_token_are_400() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let r = e.get(&t, "/me/events").await;
    assert_graph_error(&r, 400, "BadRequest", Some(wire::ME_WITH_APP_TOKEN));
    let r = e.get(&t, &format!("/users/{TARO}/messages")).await;
    assert_graph_error(
        &r,
        400,
        "BadRequest",
        Some("Resource not found for the segment 'messages'."),
    );
    let r = e.get(&t, "/groups").await;
    assert_graph_error(&r, 400, "BadRequest", None);
}

// ---- events (GRAPH.md §2) ----------------------------------------------------------------

#[tokio::test]
async fn event_create_get_patch_delete_round_trip() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let mut body = event(
        "Team sync",
        "2025-07-01T09:00:00",
        "2025-07-01T10:30:00",
        "Tokyo Standard Time",
    );
    body["transactionId"] = json!("tx-1");
    body["categories"] = json!(["cyzen"]);
    body["singleValueExtendedProperties"] = json!([{"id": PROP_ID, "value": "sched-1"}]);
    let r = e.create(&t, TARO, body).await;
    let ev = &r.body;
    let id = ev["id"].as_str().unwrap().to_string();
    assert!(
        id.starts_with("AAMk") && id.contains('/') && id.contains('+'),
        "{id}"
    );
    let ck = ev["changeKey"].as_str().unwrap();
    assert_eq!(ev["@odata.etag"], format!("W/\"{ck}\""));
    assert!(
        ev["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with(&format!("$metadata#users('{TARO}')/events/$entity"))
    );
    assert!(
        ev["iCalUId"]
            .as_str()
            .unwrap()
            .starts_with("040000008200E00074C5B7101A82E008")
    );
    assert!(
        is_graph_timestamp(ev["createdDateTime"].as_str().unwrap()),
        "{}",
        ev["createdDateTime"]
    );
    assert!(is_graph_timestamp(
        ev["lastModifiedDateTime"].as_str().unwrap()
    ));
    assert_eq!(ev["type"], "singleInstance");
    assert_eq!(ev["isOrganizer"], true);
    assert_eq!(
        ev["responseStatus"],
        json!({"response": "organizer", "time": "0001-01-01T00:00:00Z"})
    );
    assert_eq!(ev["organizer"]["emailAddress"]["address"], TARO);
    assert_eq!(ev["organizer"]["emailAddress"]["name"], "taro");
    assert_eq!(ev["transactionId"], "tx-1");
    assert_eq!(ev["categories"], json!(["cyzen"]));
    assert_eq!(ev["showAs"], "busy");
    assert_eq!(ev["sensitivity"], "normal");
    assert_eq!(ev["originalStartTimeZone"], "Tokyo Standard Time");
    assert!(
        ev["webLink"]
            .as_str()
            .unwrap()
            .starts_with("https://outlook.office365.com/owa/?itemid=AAMk")
    );
    assert!(
        ev["webLink"]
            .as_str()
            .unwrap()
            .contains(&format!("itemid={}&exvsurl=1", enc(&id)))
    );
    // Body: text wrapped into escaped HTML.
    assert_eq!(ev["body"]["contentType"], "html");
    let html = ev["body"]["content"].as_str().unwrap();
    assert!(
        html.starts_with("<html>") && html.contains("<head>") && html.contains("<body>"),
        "{html}"
    );
    assert!(html.contains("Visit &lt;Team sync&gt; &amp; co"), "{html}");
    assert_eq!(ev["bodyPreview"], "Visit <Team sync> & co line 2");
    // Times in UTC with 7 fractional digits.
    assert_eq!(
        ev["start"],
        json!({"dateTime": "2025-07-01T00:00:00.0000000", "timeZone": "UTC"})
    );
    assert_eq!(
        ev["end"],
        json!({"dateTime": "2025-07-01T01:30:00.0000000", "timeZone": "UTC"})
    );
    // location mirrored into locations.
    assert_eq!(ev["location"]["displayName"], "Harry's Bar");
    assert_eq!(ev["location"]["uniqueId"], "Harry's Bar");
    assert_eq!(ev["location"]["uniqueIdType"], "private");
    assert_eq!(ev["locations"], json!([ev["location"].clone()]));
    // Extended properties are stored but not returned by POST.
    assert!(ev.get("singleValueExtendedProperties").is_none());
    assert!(r.header("location").unwrap().contains("/events('"));
    assert_eq!(r.header("etag"), ev["@odata.etag"].as_str());

    let path = format!("/users/{TARO}/events/{}", enc(&id));
    let got = e.get(&t, &path).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body["id"], id.as_str());
    assert_eq!(got.body["subject"], "Team sync");
    assert!(got.body.get("singleValueExtendedProperties").is_none());
    // Also under /calendar/events.
    assert_eq!(
        e.get(&t, &format!("/users/{TARO}/calendar/events/{}", enc(&id)))
            .await
            .status,
        200
    );

    let r = e
        .req(
            "PATCH",
            &path,
            Some(&t),
            Some(json!({"subject": "Team sync (moved)", "showAs": "Tentative"})),
            &[],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["subject"], "Team sync (moved)");
    assert_eq!(r.body["showAs"], "tentative");
    assert_eq!(r.body["categories"], json!(["cyzen"]));
    assert_eq!(r.body["start"], ev["start"]);
    assert_ne!(r.body["changeKey"], ev["changeKey"]);
    assert_eq!(r.body["createdDateTime"], ev["createdDateTime"]);
    assert!(r.body["lastModifiedDateTime"].as_str() >= ev["lastModifiedDateTime"].as_str());
    // A stale If-Match is refused (status is a setting; 412 by default).
    let r2 = e
        .req(
            "PATCH",
            &path,
            Some(&t),
            Some(json!({"subject": "x"})),
            &[("If-Match", ev["@odata.etag"].as_str().unwrap())],
        )
        .await;
    assert_graph_error(&r2, 412, wire::CONFLICT_CODE, None);
    let fresh = r.body["@odata.etag"].as_str().unwrap().to_string();
    let r3 = e
        .req(
            "PATCH",
            &path,
            Some(&t),
            Some(json!({"subject": "y"})),
            &[("If-Match", fresh.as_str())],
        )
        .await;
    assert_eq!(r3.status, 200);
    // An invalid PATCH leaves the event as it was.
    let r4 = e
        .req(
            "PATCH",
            &path,
            Some(&t),
            Some(json!({"end": {"dateTime": "2025-06-30T00:00:00", "timeZone": "UTC"}})),
            &[],
        )
        .await;
    assert_graph_error(
        &r4,
        400,
        wire::END_BEFORE_START_CODE,
        Some(wire::END_BEFORE_START),
    );
    assert_eq!(e.em().calendar(TARO)[0]["subject"], "y");

    let r = e.req("DELETE", &path, Some(&t), None, &[]).await;
    assert_eq!(r.status, 204);
    assert_eq!(r.body, Value::Null);
    for method in ["GET", "DELETE"] {
        let r = e.req(method, &path, Some(&t), None, &[]).await;
        assert_graph_error(&r, 404, "ErrorItemNotFound", Some(wire::ITEM_NOT_FOUND));
    }
    let r = e
        .req("PATCH", &path, Some(&t), Some(json!({"subject": "z"})), &[])
        .await;
    assert_graph_error(&r, 404, "ErrorItemNotFound", Some(wire::ITEM_NOT_FOUND));
    assert!(e.em().calendar(TARO).is_empty());
    let s = e.em().stats();
    assert_eq!(
        (s.events_created, s.events_updated, s.events_deleted),
        (1, 2, 1)
    );
    assert_eq!(s.writes, 1 + 4 + 2 + 1); // POST, PATCH×4 (incl. 412 and 400), DELETE×2, PATCH 404
}

#[tokio::test]
async fn calendar_returns_full_json_sorted_by_start_with_extended_properties() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    for (subject, start, end) in [
        ("late", "2025-01-06T15:00:00", "2025-01-06T16:00:00"),
        ("early", "2025-01-06T08:00:00", "2025-01-06T09:00:00"),
    ] {
        let mut b = event(subject, start, end, "UTC");
        b["singleValueExtendedProperties"] = json!([{"id": PROP_ID, "value": subject}]);
        e.create(&t, TARO, b).await;
    }
    let taro_id = e.em().user_id(TARO).unwrap();
    for key in [TARO.to_uppercase(), taro_id] {
        let cal = e.em().calendar(&key);
        let subjects: Vec<&str> = cal.iter().map(|v| v["subject"].as_str().unwrap()).collect();
        assert_eq!(subjects, ["early", "late"]);
        assert_eq!(
            cal[0]["singleValueExtendedProperties"],
            json!([{"id": PROP_ID, "value": "early"}])
        );
    }
    assert!(e.em().calendar(HANAKO).is_empty());
    assert!(e.em().calendar(NOBODY).is_empty());
}

#[tokio::test]
async fn transaction_id_reuse_follows_the_configured_mode() {
    for mode in [
        TransactionIdMode::ReturnExisting,
        TransactionIdMode::CreateDuplicate,
        TransactionIdMode::Conflict409,
    ] {
        let e = emu(Settings {
            transaction_id_mode: mode,
            ..Settings::default()
        })
        .await;
        let t = e.token().await;
        let mut first = event("first", "2025-01-06T09:00:00", "2025-01-06T10:00:00", "UTC");
        first["transactionId"] = json!("5f8a1c2e-0000-5000-8000-000000000001");
        let mut second = event(
            "second",
            "2025-01-07T09:00:00",
            "2025-01-07T10:00:00",
            "UTC",
        );
        second["transactionId"] = first["transactionId"].clone();
        let a = e.create(&t, TARO, first).await;
        let b = e
            .post(&t, &format!("/users/{TARO}/events"), second.clone())
            .await;
        let stats = e.em().stats();
        match mode {
            TransactionIdMode::ReturnExisting => {
                assert_eq!(b.status, 201);
                assert_eq!(b.body["id"], a.body["id"]);
                assert_eq!(b.body["subject"], "first");
                assert_eq!(b.body["changeKey"], a.body["changeKey"]);
                assert_eq!(e.em().calendar(TARO).len(), 1);
                assert_eq!((stats.events_created, stats.create_dedupes), (1, 1));
            }
            TransactionIdMode::CreateDuplicate => {
                assert_eq!(b.status, 201);
                assert_ne!(b.body["id"], a.body["id"]);
                assert_eq!(e.em().calendar(TARO).len(), 2);
                assert_eq!((stats.events_created, stats.create_dedupes), (2, 0));
            }
            TransactionIdMode::Conflict409 => {
                assert_graph_error(
                    &b,
                    409,
                    wire::DUPLICATE_TRANSACTION_CODE,
                    Some(wire::DUPLICATE_TRANSACTION),
                );
                assert_eq!(e.em().calendar(TARO).len(), 1);
                assert_eq!((stats.events_created, stats.create_dedupes), (1, 0));
            }
        }
        // Dedupe is per mailbox.
        assert_eq!(
            e.post(&t, &format!("/users/{HANAKO}/events"), second)
                .await
                .status,
            201
        );
    }
}

#[tokio::test]
async fn extended_property_filter_and_expand() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    for (subject, value) in [("one", "Sched-1"), ("two", "sched-2"), ("quote", "it's")] {
        let mut b = event(subject, "2025-01-06T09:00:00", "2025-01-06T10:00:00", "UTC");
        b["singleValueExtendedProperties"] = json!([
            {"id": PROP_ID, "value": value},
            {"id": "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name Other", "value": "x"},
        ]);
        e.create(&t, TARO, b).await;
    }
    let mut b = event(
        "elsewhere",
        "2025-01-06T09:00:00",
        "2025-01-06T10:00:00",
        "UTC",
    );
    b["singleValueExtendedProperties"] = json!([{"id": PROP_ID, "value": "sched-1"}]);
    e.create(&t, HANAKO, b).await;

    let filter = |id: &str, v: &str| {
        format!(
            "singleValueExtendedProperties/Any(ep: ep/id eq '{id}' and ep/value eq '{}')",
            v.replace('\'', "''")
        )
    };
    let expand = format!("singleValueExtendedProperties($filter=id eq '{PROP_ID}')");
    let list = |q: Vec<(&'static str, String)>| {
        let e = &e;
        let t = &t;
        async move {
            let url = reqwest::Url::parse_with_params(
                &format!("{}/users/{TARO}/events", e.run.graph_url()),
                &q,
            )
            .unwrap();
            e.get(t, url.as_str()).await
        }
    };
    // Value match is case-insensitive; only TARO's events are searched.
    let r = list(vec![("$filter", filter(PROP_ID, "SCHED-1"))]).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let value = r.body["value"].as_array().unwrap();
    assert_eq!(value.len(), 1);
    assert_eq!(value[0]["subject"], "one");
    assert!(value[0].get("singleValueExtendedProperties").is_none());
    // Quotes doubled inside the literal.
    let r = list(vec![("$filter", filter(PROP_ID, "it's"))]).await;
    assert_eq!(r.body["value"][0]["subject"], "quote");
    // Lowercase any, other variable name, clauses swapped.
    let alt = format!(
        "singleValueExtendedProperties/any(p:p/value eq 'sched-2' and p/id eq '{PROP_ID}')"
    );
    let r = list(vec![("$filter", alt)]).await;
    assert_eq!(r.body["value"][0]["subject"], "two");
    // The Name part of the id is case-sensitive.
    let r = list(vec![(
        "$filter",
        filter(
            &PROP_ID.replace("CyzenScheduleId", "cyzenscheduleid"),
            "sched-1",
        ),
    )])
    .await;
    assert_eq!(r.body["value"], json!([]));
    // $expand returns only the asked property.
    let r = list(vec![
        ("$filter", filter(PROP_ID, "sched-2")),
        ("$expand", expand.clone()),
    ])
    .await;
    assert_eq!(
        r.body["value"][0]["singleValueExtendedProperties"],
        json!([{"id": PROP_ID, "value": "sched-2"}])
    );
    // On a single GET too.
    let id = r.body["value"][0]["id"].as_str().unwrap().to_string();
    let url = reqwest::Url::parse_with_params(
        &format!("{}/users/{TARO}/events/{}", e.run.graph_url(), enc(&id)),
        &[("$expand", expand.as_str())],
    )
    .unwrap();
    let r = e.get(&t, url.as_str()).await;
    assert_eq!(
        r.body["singleValueExtendedProperties"],
        json!([{"id": PROP_ID, "value": "sched-2"}])
    );
    // Unsupported filters are 400.
    for bad in [
        "subject eq 'one'",
        "singleValueExtendedProperties/Any(ep: ep/value eq 'x')",
    ] {
        let r = list(vec![("$filter", bad.to_string())]).await;
        assert_graph_error(
            &r,
            400,
            wire::INVALID_FILTER_CODE,
            Some(wire::INVALID_FILTER),
        );
    }
}

#[tokio::test]
async fn event_lists_page_with_top_and_next_link_and_honour_select() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    for i in 0..12 {
        let start = format!("2025-02-{:02}T09:00:00", i + 1);
        let end = format!("2025-02-{:02}T10:00:00", i + 1);
        e.create(&t, TARO, event(&format!("e{i:02}"), &start, &end, "UTC"))
            .await;
    }
    let r = e.get(&t, &format!("/users/{TARO}/events")).await;
    assert_eq!(r.body["value"].as_array().unwrap().len(), 10);
    assert!(
        r.body["@odata.context"]
            .as_str()
            .unwrap()
            .ends_with(&format!("$metadata#users('{TARO}')/events"))
    );
    let next = r.body["@odata.nextLink"].as_str().unwrap().to_string();
    assert!(next.starts_with(&e.run.graph_url()), "{next}");
    let r2 = e.get(&t, &next).await;
    let subjects: Vec<&str> = r2.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["e10", "e11"]);
    assert!(r2.body.get("@odata.nextLink").is_none());
    // $top pages; $select trims.
    let mut url = format!("/users/{TARO}/events?$top=5&$select=subject,start");
    let mut seen = Vec::new();
    for _ in 0..5 {
        let r = e.get(&t, &url).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        for v in r.body["value"].as_array().unwrap() {
            let keys: HashSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                HashSet::from(["@odata.etag", "id", "subject", "start"])
            );
            seen.push(v["subject"].as_str().unwrap().to_string());
        }
        match r.body["@odata.nextLink"].as_str() {
            Some(n) => url = n.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 12);
    let r = e
        .get(&t, &format!("/users/{TARO}/events?$select=nope"))
        .await;
    assert_graph_error(&r, 400, "RequestBroker--ParseUri", None);
}

#[tokio::test]
async fn calendar_view_returns_overlapping_events_and_requires_both_bounds() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    for (subject, start, end, tz) in [
        (
            "before",
            "2025-03-10T07:00:00",
            "2025-03-10T08:00:00",
            "UTC",
        ),
        (
            "ends at window start",
            "2025-03-10T08:00:00",
            "2025-03-10T09:00:00",
            "UTC",
        ),
        (
            "straddles start",
            "2025-03-10T08:30:00",
            "2025-03-10T09:30:00",
            "UTC",
        ),
        (
            "inside (Tokyo)",
            "2025-03-10T19:00:00",
            "2025-03-10T20:00:00",
            "Tokyo Standard Time",
        ),
        (
            "straddles end",
            "2025-03-10T11:30:00",
            "2025-03-10T12:30:00",
            "UTC",
        ),
        (
            "starts at window end",
            "2025-03-10T12:00:00",
            "2025-03-10T13:00:00",
            "UTC",
        ),
    ] {
        e.create(&t, TARO, event(subject, start, end, tz)).await;
    }
    let q = [
        ("startDateTime", "2025-03-10T09:00:00Z"),
        ("endDateTime", "2025-03-10T21:00:00+09:00"),
    ];
    let url = reqwest::Url::parse_with_params(
        &format!("{}/users/{TARO}/calendarView", e.run.graph_url()),
        q,
    )
    .unwrap();
    let r = e.get(&t, url.as_str()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let subjects: Vec<&str> = r.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["subject"].as_str().unwrap())
        .collect();
    assert_eq!(
        subjects,
        ["straddles start", "inside (Tokyo)", "straddles end"]
    );
    for q in [
        vec![("startDateTime", "2025-03-10T09:00:00Z")],
        vec![("endDateTime", "2025-03-10T09:00:00Z")],
        vec![],
    ] {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/users/{TARO}/calendarView", e.run.graph_url()),
            q,
        )
        .unwrap();
        let r = e.get(&t, url.as_str()).await;
        assert_graph_error(
            &r,
            400,
            "ErrorInvalidParameter",
            Some(wire::CALENDAR_VIEW_WINDOW),
        );
    }
    let r = e
        .get(
            &t,
            &format!("/users/{TARO}/calendarView?startDateTime=yesterday&endDateTime=2025-03-11"),
        )
        .await;
    assert_graph_error(&r, 400, "ErrorInvalidParameter", None);
}

#[tokio::test]
async fn prefer_outlook_timezone_converts_times_and_is_echoed() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let prefer = ("Prefer", "outlook.timezone=\"Eastern Standard Time\"");
    // 09:00 in Tokyo on 1 July = 00:00 UTC = 20:00 EDT the day before (DST).
    let r = e
        .req(
            "POST",
            &format!("/users/{TARO}/events"),
            Some(&t),
            Some(event(
                "tz",
                "2025-07-01T09:00:00",
                "2025-07-01T10:00:00",
                "Tokyo Standard Time",
            )),
            &[prefer],
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.body["start"],
        json!({"dateTime": "2025-06-30T20:00:00.0000000", "timeZone": "Eastern Standard Time"})
    );
    assert_eq!(
        r.header("preference-applied"),
        Some("outlook.timezone=\"Eastern Standard Time\"")
    );
    let path = format!(
        "/users/{TARO}/events/{}",
        enc(r.body["id"].as_str().unwrap())
    );
    // Winter: EST is UTC-5.
    let r2 = e
        .req(
            "PATCH",
            &path,
            Some(&t),
            Some(json!({
            "start": {"dateTime": "2025-01-15T09:00:00", "timeZone": "Tokyo Standard Time"},
            "end": {"dateTime": "2025-01-15T10:00:00", "timeZone": "Tokyo Standard Time"}})),
            &[prefer],
        )
        .await;
    assert_eq!(
        r2.body["start"],
        json!({"dateTime": "2025-01-14T19:00:00.0000000", "timeZone": "Eastern Standard Time"})
    );
    // IANA names work in Prefer too; GET echoes; text body on request.
    let r3 = e
        .req(
            "GET",
            &path,
            Some(&t),
            None,
            &[
                ("Prefer", "outlook.timezone=\"Europe/Berlin\""),
                ("Prefer", "outlook.body-content-type=\"text\""),
            ],
        )
        .await;
    assert_eq!(
        r3.body["start"],
        json!({"dateTime": "2025-01-15T01:00:00.0000000", "timeZone": "Europe/Berlin"})
    );
    assert_eq!(
        r3.body["body"],
        json!({"contentType": "text", "content": "Visit <tz> & co\nline 2"})
    );
    let applied = r3.header("preference-applied").unwrap();
    assert!(
        applied.contains("outlook.timezone=\"Europe/Berlin\"")
            && applied.contains("outlook.body-content-type=\"text\""),
        "{applied}"
    );
    // Without Prefer: UTC.
    let r4 = e.get(&t, &path).await;
    assert_eq!(
        r4.body["start"],
        json!({"dateTime": "2025-01-15T00:00:00.0000000", "timeZone": "UTC"})
    );
    assert!(r4.header("preference-applied").is_none());
}

#[tokio::test]
async fn unsupported_time_zones_are_400_time_zone_not_supported() {
    for (accept_iana, zone, accepted) in [
        (true, "Tokyo Standard Time", true),
        (true, "tokyo standard time", true),
        (true, "W. Europe Standard Time", true),
        (true, "Asia/Tokyo", true),
        (false, "Asia/Tokyo", false),
        (true, "America/Argentina/Buenos_Aires", true),
        (true, "Europe/Zurich", false),
        (true, "Greenwich Mean Time", false),
        (true, "Mars/Olympus_Mons", false),
        (true, "", false),
    ] {
        let e = emu(Settings {
            accept_iana_zones: accept_iana,
            ..Settings::default()
        })
        .await;
        let t = e.token().await;
        let r = e
            .post(
                &t,
                &format!("/users/{TARO}/events"),
                event("z", "2025-01-06T09:00:00", "2025-01-06T10:00:00", zone),
            )
            .await;
        if accepted {
            assert_eq!(r.status, 201, "{zone}: {:?}", r.body);
        } else {
            assert_graph_error(
                &r,
                400,
                "TimeZoneNotSupportedException",
                Some(&format!(
                    "A valid TimeZone value must be specified. The following TimeZone value is not supported: '{zone}'."
                )),
            );
        }
    }
}

#[tokio::test]
async fn event_bodies_are_validated() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let at = |d: &str, tz: &str| json!({"dateTime": d, "timeZone": tz});
    let all_day =
        |s: Value, en: Value| json!({"subject": "a", "isAllDay": true, "start": s, "end": en});
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, u16, &str, Option<&str>)> = vec![
        ("all-day one day", all_day(at("2025-01-06T00:00:00", "Tokyo Standard Time"), at("2025-01-07T00:00:00", "Tokyo Standard Time")), 201, "", None),
        ("all-day date-only", all_day(at("2025-01-06", "UTC"), at("2025-01-09", "UTC")), 201, "", None),
        ("all-day not midnight", all_day(at("2025-01-06T09:00:00", "UTC"), at("2025-01-07T09:00:00", "UTC")), 400, wire::ALL_DAY_CODE, Some(wire::ALL_DAY_NOT_MIDNIGHT)),
        ("all-day zero length", all_day(at("2025-01-06T00:00:00", "UTC"), at("2025-01-06T00:00:00", "UTC")), 400, wire::ALL_DAY_CODE, Some(wire::ALL_DAY_TOO_SHORT)),
        ("all-day zones differ", all_day(at("2025-01-06T00:00:00", "UTC"), at("2025-01-07T00:00:00", "Tokyo Standard Time")), 400, wire::ALL_DAY_CODE, Some(wire::ALL_DAY_ZONES_DIFFER)),
        ("end before start", json!({"start": at("2025-01-06T10:00:00", "UTC"), "end": at("2025-01-06T09:00:00", "UTC")}), 400, wire::END_BEFORE_START_CODE, Some(wire::END_BEFORE_START)),
        ("zero length ok", json!({"start": at("2025-01-06T10:00:00", "UTC"), "end": at("2025-01-06T10:00:00", "UTC")}), 201, "", None),
        ("missing end", json!({"subject": "x", "start": at("2025-01-06T10:00:00", "UTC")}), 400, wire::START_END_REQUIRED_CODE, Some(wire::START_END_REQUIRED)),
        ("missing both", json!({"subject": "x"}), 400, wire::START_END_REQUIRED_CODE, Some(wire::START_END_REQUIRED)),
        ("bad sensitivity", json!({"sensitivity": "secret", "start": at("2025-01-06T10:00:00", "UTC"), "end": at("2025-01-06T11:00:00", "UTC")}), 400, "RequestBodyRead", Some("Requested value 'secret' was not found.")),
        ("bad showAs", json!({"showAs": "away", "start": at("2025-01-06T10:00:00", "UTC"), "end": at("2025-01-06T11:00:00", "UTC")}), 400, "RequestBodyRead", None),
        ("unknown property", json!({"colour": "red", "start": at("2025-01-06T10:00:00", "UTC"), "end": at("2025-01-06T11:00:00", "UTC")}), 400, "RequestBodyRead", None),
        ("bad dateTime", json!({"start": at("next tuesday", "UTC"), "end": at("2025-01-06T11:00:00", "UTC")}), 400, "RequestBodyRead", None),
        ("wrong type", json!({"isAllDay": "yes", "start": at("2025-01-06T10:00:00", "UTC"), "end": at("2025-01-06T11:00:00", "UTC")}), 400, "RequestBodyRead", None),
        ("bad extended property id", json!({"singleValueExtendedProperties": [{"id": "Color", "value": "x"}], "start": at("2025-01-06T10:00:00", "UTC"), "end": at("2025-01-06T11:00:00", "UTC")}), 400, "ErrorInvalidProperty", None),
    ];
    for (name, body, status, code, message) in cases {
        let r = e.post(&t, &format!("/users/{TARO}/events"), body).await;
        if status == 201 {
            assert_eq!(r.status, 201, "{name}: {:?}", r.body);
        } else {
            assert_eq!(r.status, status, "{name}: {:?}", r.body);
            assert_graph_error(&r, status, code, message);
        }
    }
    // All-day events come back midnight-to-midnight whatever the requested zone.
    let r = e
        .req(
            "GET",
            &format!("/users/{TARO}/events?$top=50"),
            Some(&t),
            None,
            &[("Prefer", "outlook.timezone=\"Pacific Standard Time\"")],
        )
        .await;
    let first = r.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["isAllDay"] == true)
        .unwrap()
        .clone();
    assert_eq!(
        first["start"],
        json!({"dateTime": "2025-01-06T00:00:00.0000000", "timeZone": "Pacific Standard Time"})
    );
    assert_eq!(
        first["end"],
        json!({"dateTime": "2025-01-07T00:00:00.0000000", "timeZone": "Pacific Standard Time"})
    );
    // Not JSON / wrong content type.
    let r = e
        .http
        .post(format!("{}/users/{TARO}/events", e.run.graph_url()))
        .bearer_auth(&t)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let r = to_resp(r).await;
    assert_graph_error(&r, 400, "BadRequest", Some(wire::BAD_JSON));
    assert_eq!(e.em().calendar(TARO).len(), 3);
}

#[tokio::test]
async fn immutable_id_header_is_required_only_when_configured() {
    let e = emu(Settings {
        require_immutable_id: true,
        ..Settings::default()
    })
    .await;
    let t = e.token().await;
    let body = event("imm", "2025-01-06T09:00:00", "2025-01-06T10:00:00", "UTC");
    let r = e
        .post(&t, &format!("/users/{TARO}/events"), body.clone())
        .await;
    assert_graph_error(
        &r,
        400,
        wire::IMMUTABLE_ID_CODE,
        Some(wire::IMMUTABLE_ID_REQUIRED),
    );
    assert!(r.message().contains("Prefer: IdType=\"ImmutableId\""));
    let r = e
        .req(
            "POST",
            &format!("/users/{TARO}/events"),
            Some(&t),
            Some(body.clone()),
            &[("Prefer", "IdType=\"ImmutableId\"")],
        )
        .await;
    assert_eq!(r.status, 201);
    assert_eq!(
        r.header("preference-applied"),
        Some("IdType=\"ImmutableId\"")
    );
    // Non-event paths do not need it.
    assert_eq!(
        e.get(&t, &format!("/users/{TARO}/calendar")).await.status,
        200
    );

    let lax = emu(Settings::default()).await;
    let t = lax.token().await;
    assert_eq!(
        lax.post(&t, &format!("/users/{TARO}/events"), body)
            .await
            .status,
        201
    );
}

// ---- $batch (GRAPH.md §3) ----------------------------------------------------------------

fn batch_create(id: &str, mailbox: &str, subject: &str) -> Value {
    json!({
        "id": id, "method": "POST", "url": format!("/users/{mailbox}/events"),
        "headers": {"Content-Type": "application/json"},
        "body": event(subject, "2025-04-01T09:00:00", "2025-04-01T10:00:00", "UTC"),
    })
}

#[tokio::test]
async fn batch_envelope_errors_are_400_for_the_whole_batch() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let many: Vec<Value> = (0..21)
        .map(|i| batch_create(&i.to_string(), TARO, "x"))
        .collect();
    let mut no_ct = batch_create("1", TARO, "x");
    no_ct["headers"] = json!({"Prefer": "IdType=\"ImmutableId\""});
    let mut no_headers = batch_create("1", TARO, "x");
    no_headers.as_object_mut().unwrap().remove("headers");
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("21 requests", json!({"requests": many}), Some(wire::BATCH_TOO_MANY)),
        ("duplicate ids (case-insensitive)", json!({"requests": [batch_create("a", TARO, "x"), batch_create("A", TARO, "y")]}), Some(wire::BATCH_DUPLICATE_ID)),
        ("absolute url", json!({"requests": [{"id": "1", "method": "GET", "url": format!("https://graph.microsoft.com/v1.0/users/{TARO}/events")}]}), Some(wire::BATCH_ABSOLUTE_URL)),
        ("body without Content-Type", json!({"requests": [batch_create("0", TARO, "ok"), no_ct]}), Some(wire::BATCH_MISSING_CONTENT_TYPE)),
        ("body without headers", json!({"requests": [no_headers]}), Some(wire::BATCH_MISSING_CONTENT_TYPE)),
        ("dependsOn unknown id", json!({"requests": [{"id": "1", "method": "GET", "url": "/users/x/events", "dependsOn": ["9"]}]}), None),
        ("dependency cycle", json!({"requests": [{"id": "1", "method": "GET", "url": "/users/x/events", "dependsOn": ["2"]}, {"id": "2", "method": "GET", "url": "/users/x/events", "dependsOn": ["1"]}]}), None),
        ("missing url", json!({"requests": [{"id": "1", "method": "GET"}]}), None),
        ("no requests array", json!({"value": []}), Some(wire::BATCH_INVALID)),
    ];
    for (name, body, message) in cases {
        let r = e.post(&t, "/$batch", body).await;
        assert_eq!(r.status, 400, "{name}: {:?}", r.body);
        assert_graph_error(&r, 400, "BadRequest", message);
    }
    // Nothing ran.
    assert!(e.em().calendar(TARO).is_empty());
    assert!(e.em().request_log().iter().all(|l| !l.batch_item));
    // 20 is fine.
    let twenty: Vec<Value> = (0..20).map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{TARO}/calendar")})).collect();
    let r = e.post(&t, "/$batch", json!({"requests": twenty})).await;
    assert_eq!(r.status, 200);
    // Without a token the envelope is 401.
    let r = e
        .req("POST", "/$batch", None, Some(json!({"requests": []})), &[])
        .await;
    assert_graph_error(&r, 401, "InvalidAuthenticationToken", None);
}

#[tokio::test]
async fn batch_runs_items_as_single_requests_and_shuffles_the_responses() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let mut requests: Vec<Value> = (0..8)
        .map(|i| batch_create(&format!("c{i}"), TARO, &format!("s{i}")))
        .collect();
    requests.push(
        json!({"id": "get-user", "method": "GET", "url": format!("users/{HANAKO}?$select=id")}),
    );
    requests
        .push(json!({"id": "unknown", "method": "GET", "url": format!("/users/{NOBODY}/events")}));
    let r = e.post(&t, "/$batch", json!({"requests": requests})).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let responses = r.body["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 10);
    let order: Vec<&str> = responses
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    let sent: Vec<String> = requests
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect();
    assert_ne!(order, sent, "responses come back shuffled");
    assert_eq!(
        order.iter().copied().collect::<HashSet<_>>(),
        sent.iter().map(String::as_str).collect()
    );
    for x in responses {
        let id = x["id"].as_str().unwrap();
        match id {
            "get-user" => {
                assert_eq!(x["status"], 200);
                assert_eq!(x["body"]["id"], e.em().user_id(HANAKO).unwrap());
            }
            "unknown" => {
                assert_eq!(x["status"], 404);
                assert_eq!(x["body"]["error"]["code"], "ErrorInvalidUser");
            }
            _ => {
                assert_eq!(x["status"], 201, "{x}");
                assert!(
                    x["headers"]["Content-Type"]
                        .as_str()
                        .unwrap()
                        .starts_with("application/json")
                );
                assert_eq!(x["body"]["subject"], format!("s{}", &id[1..]));
            }
        }
    }
    assert_eq!(e.em().calendar(TARO).len(), 8);
    let log = e.em().request_log();
    let items: Vec<_> = log.iter().filter(|l| l.batch_item).collect();
    assert_eq!(items.len(), 10);
    assert!(
        items
            .iter()
            .filter(|l| l.method == "POST")
            .all(|l| l.path == format!("/v1.0/users/{TARO}/events")
                && l.status == 201
                && l.mailbox.as_deref() == Some(TARO))
    );
    let envelope: Vec<_> = log.iter().filter(|l| l.path == "/v1.0/$batch").collect();
    assert_eq!(envelope.len(), 1);
    assert_eq!(envelope[0].status, 200);
    assert!(!envelope[0].batch_item);
    let s = e.em().stats();
    assert_eq!((s.batches, s.writes, s.events_created), (1, 8, 8));
    assert!(s.max_in_flight_per_mailbox[TARO] <= 4);
    // Same ordering with shuffling off.
    e.em()
        .update_settings(|s| s.shuffle_batch_responses = false);
    let r = e
        .post(&t, "/$batch", json!({"requests": requests[..3]}))
        .await;
    let order: Vec<&str> = r.body["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["c0", "c1", "c2"]);
}

#[tokio::test]
async fn batch_depends_on_runs_in_order_and_failed_dependencies_give_424() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let chain: Vec<Value> = (0..4)
        .map(|i| {
            let mut r = batch_create(&i.to_string(), TARO, &format!("step{i}"));
            if i > 0 {
                r["dependsOn"] = json!([(i - 1).to_string()]);
            }
            r
        })
        .collect();
    let r = e.post(&t, "/$batch", json!({"requests": chain})).await;
    assert!(
        r.body["responses"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["status"] == 201)
    );
    let posts: Vec<String> = e
        .em()
        .calendar(TARO)
        .iter()
        .map(|v| {
            (
                v["createdDateTime"].as_str().unwrap().to_string(),
                v["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(
        posts,
        ["step0", "step1", "step2", "step3"],
        "dependsOn runs one after the other"
    );

    let r = e
        .post(&t, "/$batch", json!({"requests": [
            {"id": "1", "method": "GET", "url": format!("/users/{TARO}/events/AAMkAGI1AAAt9AHjAAA%3D")},
            {"id": "2", "method": "DELETE", "url": format!("/users/{TARO}/events/x"), "dependsOn": ["1"]},
            {"id": "3", "method": "GET", "url": format!("/users/{TARO}/calendar"), "dependsOn": ["2"]},
            {"id": "4", "method": "GET", "url": format!("/users/{TARO}/calendar")},
        ]}))
        .await;
    assert_eq!(r.status, 200);
    let by_id: std::collections::HashMap<&str, &Value> = r.body["responses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| (x["id"].as_str().unwrap(), x))
        .collect();
    assert_eq!(by_id["1"]["status"], 404);
    for id in ["2", "3"] {
        assert_eq!(by_id[id]["status"], 424);
        assert_eq!(
            by_id[id]["body"]["error"]["code"],
            wire::FAILED_DEPENDENCY_CODE
        );
    }
    assert_eq!(by_id["4"]["status"], 200);
    // 424'd items never ran.
    assert!(!e.em().request_log().iter().any(|l| l.method == "DELETE"));
}

#[tokio::test]
async fn batch_items_are_throttled_individually_with_retry_after_in_their_headers() {
    let e = emu(Settings {
        max_concurrent_per_mailbox: 2,
        latency: Duration::from_millis(150),
        ..Settings::default()
    })
    .await;
    let t = e.token().await;
    let requests: Vec<Value> = (0..6)
        .map(|i| batch_create(&i.to_string(), TARO, "t"))
        .collect();
    let r = e.post(&t, "/$batch", json!({"requests": requests})).await;
    assert_eq!(r.status, 200);
    let responses = r.body["responses"].as_array().unwrap();
    let throttled: Vec<&Value> = responses.iter().filter(|x| x["status"] == 429).collect();
    assert!(!throttled.is_empty(), "{responses:?}");
    for x in &throttled {
        assert_eq!(x["headers"]["Retry-After"], "1");
        assert_eq!(x["body"]["error"]["code"], wire::THROTTLED_CONCURRENCY_CODE);
    }
    let created = responses.iter().filter(|x| x["status"] == 201).count();
    assert_eq!(created + throttled.len(), 6);
    assert_eq!(e.em().calendar(TARO).len(), created);
    assert_eq!(e.em().stats().max_in_flight_per_mailbox[TARO], 2);
    assert_eq!(e.em().stats().throttled, throttled.len() as u64);

    // A scripted 429 inside a batch too.
    e.em().script_fault(
        ScriptedFault::new(FaultKind::Throttle429 { retry_after: 2.5 }).path_contains("/calendar"),
    );
    let r = e
        .post(&t, "/$batch", json!({"requests": [{"id": "1", "method": "GET", "url": format!("/users/{TARO}/calendar")}]}))
        .await;
    let item = &r.body["responses"][0];
    assert_eq!(item["status"], 429);
    assert_eq!(item["headers"]["Retry-After"], "2.5");
    assert_eq!(item["body"]["error"]["code"], "TooManyRequests");
}

// ---- throttling (GRAPH.md §4) ------------------------------------------------------------

#[tokio::test]
async fn mailbox_concurrency_limit_admits_four_and_throttles_the_rest() {
    let e = emu(Settings {
        latency: Duration::from_millis(300),
        ..Settings::default()
    })
    .await;
    let t = e.token().await;
    let (taro_path, hanako_path) = (
        format!("/users/{TARO}/events"),
        format!("/users/{HANAKO}/events"),
    );
    let taro = (0..20).map(|_| e.get(&t, &taro_path));
    let hanako = (0..3).map(|_| e.get(&t, &hanako_path));
    let (taro, hanako) = tokio::join!(
        futures_util::future::join_all(taro),
        futures_util::future::join_all(hanako)
    );
    let ok = taro.iter().filter(|r| r.status == 200).count();
    let throttled: Vec<&Resp> = taro.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + throttled.len(), 20);
    assert!(ok >= 4, "at least the first four are admitted ({ok})");
    assert!(
        throttled.len() >= 12,
        "most of the burst is throttled ({})",
        throttled.len()
    );
    for r in &throttled {
        assert_graph_error(
            r,
            429,
            "ApplicationThrottled",
            Some("Application is over its MailboxConcurrency limit."),
        );
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // Another mailbox is not affected.
    assert!(hanako.iter().all(|r| r.status == 200));
    let s = e.em().stats();
    assert_eq!(s.max_in_flight_per_mailbox[TARO], 4);
    assert_eq!(s.max_in_flight_per_mailbox[HANAKO], 3);
    assert!(s.max_in_flight_any >= 4 && s.max_in_flight_any <= 7);
    assert_eq!(s.throttled, throttled.len() as u64);
    // A second app has its own budget for the same mailbox.
    let other = e.token_for(DOMAIN_A, APP_READONLY).await;
    let calendar = format!("/users/{TARO}/calendar");
    let burst = (0..4).map(|i| e.get(if i % 2 == 0 { &t } else { &other }, &calendar));
    assert!(
        futures_util::future::join_all(burst)
            .await
            .iter()
            .all(|r| r.status == 200)
    );
}

#[tokio::test]
async fn fractional_retry_after_is_a_setting() {
    let e = emu(Settings {
        latency: Duration::from_millis(200),
        max_concurrent_per_mailbox: 1,
        retry_after_secs: 0.5,
        fractional_retry_after: true,
        ..Settings::default()
    })
    .await;
    let t = e.token().await;
    let path = format!("/users/{TARO}/calendar");
    let (a, b) = tokio::join!(e.get(&t, &path), e.get(&t, &path));
    let throttled = if a.status == 429 { a } else { b };
    assert_eq!(throttled.status, 429);
    assert_eq!(throttled.header("retry-after"), Some("0.5"));
}

#[tokio::test]
async fn rate_window_limit_gives_429_too_many_requests_until_the_window_slides() {
    let e = emu(Settings {
        requests_per_window: 3,
        rate_window: Duration::from_millis(800),
        ..Settings::default()
    })
    .await;
    let t = e.token().await;
    let path = format!("/users/{TARO}/calendar");
    for _ in 0..3 {
        assert_eq!(e.get(&t, &path).await.status, 200);
    }
    let r = e.get(&t, &path).await;
    assert_graph_error(
        &r,
        429,
        "TooManyRequests",
        Some("Please retry again later."),
    );
    let inner = &r.body["error"]["innerError"];
    assert_eq!(inner["code"], "429");
    assert_eq!(inner["status"], "429");
    assert_eq!(inner["message"], "Please retry after");
    assert_eq!(r.header("retry-after"), Some("1"));
    // Per mailbox: another one is fine.
    assert_eq!(
        e.get(&t, &format!("/users/{HANAKO}/calendar")).await.status,
        200
    );
    tokio::time::sleep(Duration::from_millis(850)).await;
    assert_eq!(e.get(&t, &path).await.status, 200);
    assert_eq!(e.em().stats().throttled, 1);
}

// ---- faults (GRAPH.md §4.2, §7.6) --------------------------------------------------------

#[tokio::test]
async fn scripted_faults_fire_once_on_the_first_matching_request() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    let events = format!("/users/{TARO}/events");
    #[rustfmt::skip]
    let cases: Vec<(FaultKind, u16, &str, Option<&str>)> = vec![
        (FaultKind::Status503 { retry_after: Some(2.0) }, 503, wire::SERVICE_UNAVAILABLE_CODE, Some("2")),
        (FaultKind::Status503 { retry_after: None }, 503, wire::SERVICE_UNAVAILABLE_CODE, None),
        (FaultKind::Gateway504, 504, wire::GATEWAY_TIMEOUT_CODE, None),
        (FaultKind::Throttle429 { retry_after: 1.5 }, 429, "TooManyRequests", Some("1.5")),
        (FaultKind::ExpiredToken, 401, "InvalidAuthenticationToken", None),
    ];
    for (kind, status, code, retry_after) in cases {
        // Only GET matches: a POST goes through untouched and leaves the fault queued.
        e.em().script_fault(
            ScriptedFault::new(kind.clone())
                .method("get")
                .path_contains("/events"),
        );
        e.create(
            &e.token().await,
            TARO,
            event("p", "2025-05-01T09:00:00", "2025-05-01T10:00:00", "UTC"),
        )
        .await;
        let r = e.get(&t, &events).await;
        assert_graph_error(&r, status, code, None);
        assert_eq!(r.header("retry-after"), retry_after, "{kind:?}");
        if kind == FaultKind::ExpiredToken {
            assert_eq!(r.message(), wire::TOKEN_EXPIRED);
            assert_eq!(r.header("www-authenticate"), Some(wire::WWW_AUTHENTICATE));
        }
        assert_eq!(e.get(&t, &events).await.status, 200, "{kind:?} fires once");
    }
    // A dropped connection: no HTTP answer at all.
    e.em()
        .script_fault(ScriptedFault::new(FaultKind::DropConnection).path_contains("/events"));
    let err = e
        .http
        .get(format!("{}{events}", e.run.graph_url()))
        .bearer_auth(&t)
        .send()
        .await
        .expect_err("connection dropped");
    assert!(!err.is_status(), "{err}");
    assert_eq!(e.get(&t, &events).await.status, 200);
    let log = e.em().request_log();
    assert!(
        log.iter()
            .any(|l| l.status == 0 && l.path.ends_with("/events"))
    );
    assert_eq!(e.em().stats().throttled, 1);
}

#[tokio::test]
async fn gateway_504_after_create_still_creates_the_event() {
    let e = emu(Settings::default()).await;
    let t = e.token().await;
    e.em()
        .script_fault(ScriptedFault::new(FaultKind::Gateway504AfterCreate).method("POST"));
    let mut body = event("maybe", "2025-05-01T09:00:00", "2025-05-01T10:00:00", "UTC");
    body["transactionId"] = json!("tx-504");
    let r = e
        .post(&t, &format!("/users/{TARO}/events"), body.clone())
        .await;
    assert_graph_error(&r, 504, wire::GATEWAY_TIMEOUT_CODE, None);
    let cal = e.em().calendar(TARO);
    assert_eq!(cal.len(), 1, "the create happened");
    // The client's retry with the same transactionId gets the existing event.
    let r = e.post(&t, &format!("/users/{TARO}/events"), body).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.body["id"], cal[0]["id"]);
    let s = e.em().stats();
    assert_eq!((s.events_created, s.create_dedupes), (1, 1));

    // The random variant, at rate 1.0.
    e.em().set_faults(Faults {
        rate_504_after_create: 1.0,
        ..Faults::default()
    });
    let r = e
        .post(
            &t,
            &format!("/users/{HANAKO}/events"),
            event("r", "2025-05-01T09:00:00", "2025-05-01T10:00:00", "UTC"),
        )
        .await;
    assert_eq!(r.status, 504);
    assert_eq!(e.em().calendar(HANAKO).len(), 1);
    // Reads are not creates.
    assert_eq!(
        e.get(&t, &format!("/users/{HANAKO}/events")).await.status,
        200
    );
}

#[tokio::test]
async fn random_faults_are_reproducible_from_their_seed() {
    let faults = Faults {
        rate_503: 0.3,
        rate_504: 0.1,
        rate_429: 0.1,
        seed: 7,
        ..Faults::default()
    };
    let mut runs = Vec::new();
    for _ in 0..2 {
        let e = emu(Settings {
            faults: faults.clone(),
            ..Settings::default()
        })
        .await;
        let t = e.token().await;
        let mut statuses = Vec::new();
        for _ in 0..30 {
            statuses.push(e.get(&t, &format!("/users/{TARO}/events")).await.status);
        }
        // Non-event paths are never faulted.
        assert_eq!(
            e.get(&t, &format!("/users/{TARO}/calendar")).await.status,
            200
        );
        runs.push(statuses);
    }
    assert_eq!(runs[0], runs[1]);
    for status in [200, 503] {
        assert!(runs[0].contains(&status), "{:?}", runs[0]);
    }
}

// ---- admin API -------------------------------------------------------------------------

#[tokio::test]
async fn tenants_added_at_run_time_can_get_tokens() {
    let e = emu(Settings::default()).await;
    let tid = "44444444-4444-4444-8444-444444444444";
    let client = "55555555-5555-4555-8555-555555555555";
    e.em().add_tenant(
        SeedTenant::new(tid, "new.onmicrosoft.com")
            .with_app(SeedApp::new(client, SECRET))
            .with_user(SeedUser::new("neo@new.onmicrosoft.com")),
    );
    let t = e.token_for("new.onmicrosoft.com", client).await;
    assert_eq!(jwt_payload(&t)["tid"], tid);
    assert_eq!(
        e.get(&t, "/users/neo@new.onmicrosoft.com/calendar")
            .await
            .status,
        200
    );
    // Over HTTP too (for the standalone server).
    let r = e
        .http
        .post(format!("{}/_emulator/tenants", e.run.login_url()))
        .json(&json!({"id": "66666666-6666-4666-8666-666666666666", "domains": ["http.onmicrosoft.com"],
                      "apps": [{"client_id": "77777777-7777-4777-8777-777777777777", "secrets": [{"value": "v"}], "roles": ["Calendars.ReadWrite"]}],
                      "users": [{"upn": "u@http.onmicrosoft.com"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let stats: Value = e
        .http
        .get(format!("{}/_emulator/stats", e.run.login_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["tokens_issued"], 1);
    e.em().clear_log();
    assert!(e.em().request_log().is_empty());
}

#[tokio::test]
async fn seeds_load_from_json_and_toml_files() {
    let example = Seed::example();
    assert_eq!(example.tenants.len(), 2);
    assert!(
        example.tenants[0]
            .apps
            .iter()
            .any(|a| a.consent == Consent::Pending)
    );

    let dir = tempfile::tempdir().unwrap();
    let json_path = dir.path().join("seed.json");
    std::fs::write(&json_path, serde_json::to_string(&seed()).unwrap()).unwrap();
    assert_eq!(Seed::from_file(&json_path).unwrap(), seed());

    let toml_path = dir.path().join("seed.toml");
    std::fs::write(
        &toml_path,
        r#"
[[tenants]]
id = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
domains = ["contoso.onmicrosoft.com"]

[[tenants.apps]]
client_id = "c0ffee00-0000-4000-8000-000000000001"
roles = ["Calendars.ReadWrite"]
consent = "pending"
secrets = [{ value = "s", expires_at = "2030-01-01T00:00:00Z" }]

[[tenants.users]]
upn = "taro@contoso.onmicrosoft.com"
mailbox = "no_mailbox"
time_zone = "Tokyo Standard Time"
"#,
    )
    .unwrap();
    let s = Seed::from_file(&toml_path).unwrap();
    assert_eq!(s.tenants[0].apps[0].consent, Consent::Pending);
    assert_eq!(
        s.tenants[0].apps[0].secrets[0].expires_at,
        Some("2030-01-01T00:00:00Z".parse().unwrap())
    );
    assert_eq!(s.tenants[0].users[0].mailbox, MailboxKind::NoMailbox);

    let bad = dir.path().join("seed.yaml");
    std::fs::write(&bad, "tenants: []").unwrap();
    assert!(Seed::from_file(&bad).is_err());
    let dup = dir.path().join("dup.json");
    let mut twice = seed();
    twice.tenants[1].apps.push(SeedApp::new(APP, "x"));
    std::fs::write(&dup, serde_json::to_string(&twice).unwrap()).unwrap();
    assert!(
        Seed::from_file(&dup).is_err(),
        "a client_id in two tenants is rejected"
    );
}

#[tokio::test]
async fn upload_bytes_limit_throttles_writes_but_not_reads() {
    let e = emu(Settings {
        upload_bytes_per_window: 1000,
        upload_window: Duration::from_millis(700),
        ..Settings::default()
    })
    .await;
    let t = e.token().await;
    let body = event("bytes", "2025-01-06T09:00:00", "2025-01-06T10:00:00", "UTC");
    let size = serde_json::to_vec(&body).unwrap().len();
    assert!((200..500).contains(&size), "{size}");
    let fits = 1000 / size;
    let path = format!("/users/{TARO}/events");
    for _ in 0..fits {
        assert_eq!(e.post(&t, &path, body.clone()).await.status, 201);
    }
    let r = e.post(&t, &path, body.clone()).await;
    assert_graph_error(&r, 429, "TooManyRequests", Some(wire::TOO_MANY_REQUESTS));
    assert_eq!(r.header("retry-after"), Some("1"));
    // Reads still pass, and other mailboxes have their own budget.
    assert_eq!(e.get(&t, &path).await.status, 200);
    assert_eq!(
        e.post(&t, &format!("/users/{HANAKO}/events"), body.clone())
            .await
            .status,
        201
    );
    tokio::time::sleep(Duration::from_millis(750)).await;
    assert_eq!(e.post(&t, &path, body).await.status, 201);
    assert_eq!(e.em().calendar(TARO).len(), fits + 1);
}

#[path = "emulator_delta.rs"]
mod delta;
