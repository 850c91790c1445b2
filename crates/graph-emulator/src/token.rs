//! The Microsoft identity platform's client-credentials token endpoint and the admin-consent
//! endpoint (GRAPH.md §1.1–§1.5), and the bearer-token check Graph does (§1.6).
//!
//! Access tokens are JWT-shaped (`base64url(header).base64url(payload).base64url(sig)`), the
//! signature an HMAC-SHA256 under a random per-emulator key, so tokens of another emulator or
//! edited tokens are rejected.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::errors::{Reply, aad_error, wire};
use super::state::{AppRec, Inner};
use super::util::{self, Headers};
use super::{Consent, MissingSecretError, Settings};

pub(crate) const GRAPH_AUDIENCE: &str = "https://graph.microsoft.com";
const GRAPH_DEFAULT_SCOPES: &[&str] = &[
    "https://graph.microsoft.com/.default",
    "00000003-0000-0000-c000-000000000000/.default",
];

/// The claims Graph needs from a verified token.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    pub tid: String,
    pub appid: String,
    pub roles: Vec<String>,
}

impl Claims {
    pub fn has_any(&self, roles: &[&str]) -> bool {
        self.roles
            .iter()
            .any(|r| roles.iter().any(|want| r.eq_ignore_ascii_case(want)))
    }
}

fn form(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .filter(|v| !v.is_empty())
}

/// `Authorization: Basic base64(urlenc(client_id):urlenc(secret))` → (id, decoded, raw) secret.
fn basic_auth(headers: &Headers) -> Option<(String, String, String)> {
    let value = headers.get("authorization")?;
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    let form_decode = |s: &str| -> String {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_default()
    };
    Some((form_decode(id), form_decode(secret), secret.to_string()))
}

/// Tenant segment syntax: a GUID or something DNS-like.
fn tenant_segment_valid(seg: &str) -> bool {
    util::is_guid(seg)
        || (seg.contains('.')
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'))
}

impl Inner {
    /// `POST /{tenant}/oauth2/v2.0/token`. Returns the reply and the client id (for the log).
    pub fn token_endpoint(
        &self,
        tenant_seg: &str,
        headers: &Headers,
        body: &[u8],
    ) -> (Reply, Option<String>) {
        let correlation = headers
            .get("client-request-id")
            .filter(|v| util::is_guid(v))
            .map(str::to_string)
            .unwrap_or_else(util::new_guid);
        let is_form = headers.get("content-type").is_some_and(|ct| {
            ct.to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
        let params = if is_form { form(body) } else { Vec::new() };
        let basic = basic_auth(headers);
        let client_id = param(&params, "client_id")
            .map(str::to_string)
            .or_else(|| basic.as_ref().map(|b| b.0.clone()));
        let reply = self.token_inner(
            tenant_seg,
            &params,
            basic,
            client_id.as_deref(),
            &correlation,
        );
        (reply, client_id)
    }

    fn token_inner(
        &self,
        tenant_seg: &str,
        params: &[(String, String)],
        basic: Option<(String, String, String)>,
        client_id: Option<&str>,
        corr: &str,
    ) -> Reply {
        if self.faults.lock().expect("faults").draw_token_503() {
            return aad_error(
                503,
                "temporarily_unavailable",
                90006,
                "The server is temporarily unavailable. Please retry later.",
                corr,
            )
            .header("Retry-After", "1");
        }
        if let Err(r) = check_tenant_segment(tenant_seg, corr) {
            return r;
        }
        let settings = self.settings();
        let mut dir = self.dir.lock().expect("dir");
        let Some(tenant) = dir.tenant(tenant_seg) else {
            return aad_error(
                400,
                "invalid_tenant",
                90002,
                &format!(
                    "Tenant '{tenant_seg}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
                ),
                corr,
            );
        };
        let tenant_id = tenant.id.clone();
        let Some(grant_type) = param(params, "grant_type") else {
            return missing("grant_type", corr);
        };
        if grant_type != "client_credentials" {
            return aad_error(
                400,
                "unsupported_grant_type",
                70003,
                &format!("The app requested an unsupported grant type '{grant_type}'."),
                corr,
            );
        }
        let Some(client_id) = client_id else {
            return missing("client_id", corr);
        };
        let app = match dir.apps.get_mut(&client_id.to_ascii_lowercase()) {
            Some(app) if app.tenant_id.eq_ignore_ascii_case(&tenant_id) => app,
            _ => {
                return aad_error(
                    400,
                    "unauthorized_client",
                    700016,
                    &format!(
                        "Application with identifier '{client_id}' was not found in the directory '{tenant_seg}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
                    ),
                    corr,
                );
            }
        };
        if let Err(r) = check_scope(params, corr) {
            return r;
        }
        let candidates = match secret_candidates(params, basic.as_ref(), &settings, corr) {
            Ok(c) => c,
            Err(r) => return r,
        };
        let now = Timestamp::now();
        if let Err(r) = check_secret(app, &candidates, now, corr) {
            return r;
        }
        let roles = if app.consent == Consent::Granted {
            app.roles.clone()
        } else {
            Vec::new()
        };
        let lifetime = settings.token_lifetime.as_secs() as i64;
        let token = self.issue_token(
            &tenant_id,
            &app.client_id,
            &app.display_name,
            &roles,
            now,
            lifetime,
        );
        drop(dir);
        super::state::Counters::inc(&self.counters.tokens_issued);
        token_reply(&token, lifetime, corr)
    }

    fn issue_token(
        &self,
        tid: &str,
        appid: &str,
        app_name: &str,
        roles: &[String],
        now: Timestamp,
        lifetime: i64,
    ) -> String {
        let iat = now.as_second();
        let oid = super::seed::derived_guid("service-principal", &format!("{tid}/{appid}"));
        let mut claims = json!({
            "aud": GRAPH_AUDIENCE,
            "iss": format!("https://sts.windows.net/{tid}/"),
            "iat": iat,
            "nbf": iat,
            "exp": iat + lifetime,
            "aio": util::b64url(&util::random_bytes::<24>()),
            "app_displayname": app_name,
            "appid": appid,
            "appidacr": "1",
            "idp": format!("https://sts.windows.net/{tid}/"),
            "idtyp": "app",
            "oid": oid,
            "sub": oid,
            "tid": tid,
            "uti": util::b64url(&util::random_bytes::<16>()),
            "ver": "1.0",
        });
        if !roles.is_empty() {
            claims["roles"] = json!(roles);
        }
        let header = util::b64url(br#"{"typ":"JWT","alg":"HS256","kid":"graph-emulator"}"#);
        let payload = util::b64url(claims.to_string().as_bytes());
        let signing_input = format!("{header}.{payload}");
        let sig = util::hmac_sha256(&self.key, signing_input.as_bytes());
        format!("{signing_input}.{}", util::b64url(&sig))
    }

    /// Checks `Authorization: Bearer <token>`; the error is the 401 message.
    pub fn verify_token(&self, authorization: Option<&str>) -> Result<Claims, &'static str> {
        let Some(value) = authorization else {
            return Err(wire::TOKEN_EMPTY);
        };
        let value = value.trim();
        let token = match value.split_once(' ') {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
            _ => return Err(wire::TOKEN_EMPTY),
        };
        if token.is_empty() {
            return Err(wire::TOKEN_EMPTY);
        }
        let parts: Vec<&str> = token.split('.').collect();
        if parts.len() != 3 {
            return Err(wire::TOKEN_GARBAGE);
        }
        let (Some(_header), Some(payload), Some(sig)) = (
            util::b64url_decode(parts[0]),
            util::b64url_decode(parts[1]),
            util::b64url_decode(parts[2]),
        ) else {
            return Err(wire::TOKEN_GARBAGE);
        };
        let Ok(claims) = serde_json::from_slice::<Value>(&payload) else {
            return Err(wire::TOKEN_GARBAGE);
        };
        let expected =
            util::hmac_sha256(&self.key, format!("{}.{}", parts[0], parts[1]).as_bytes());
        if sig.as_slice() != expected.as_slice() {
            return Err(wire::TOKEN_BAD_SIGNATURE);
        }
        if claims["aud"].as_str() != Some(GRAPH_AUDIENCE) {
            return Err(wire::TOKEN_BAD_AUDIENCE);
        }
        let now = Timestamp::now().as_second();
        let exp = claims["exp"].as_i64().unwrap_or(0);
        let nbf = claims["nbf"].as_i64().unwrap_or(0);
        if now >= exp || now + 300 < nbf {
            return Err(wire::TOKEN_EXPIRED);
        }
        let (Some(tid), Some(appid)) = (claims["tid"].as_str(), claims["appid"].as_str()) else {
            return Err(wire::TOKEN_GARBAGE);
        };
        let roles = claims["roles"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Claims {
            tid: tid.to_string(),
            appid: appid.to_string(),
            roles,
        })
    }

    /// `GET /{tenant}/adminconsent?client_id&state&redirect_uri` (also `/{tenant}/v2.0/adminconsent`).
    pub fn admin_consent(&self, tenant_seg: &str, query: Option<&str>) -> (Reply, Option<String>) {
        let params = util::query_pairs(query);
        let get = |name: &str| param(&params, name).map(str::to_string);
        let client_id = get("client_id");
        let page = |code: u32, msg: String| {
            let html = format!(
                "<!DOCTYPE html><html><head><title>Sign in to your account</title></head><body><h1>Sorry, but we're having trouble signing you in.</h1><p>AADSTS{code}: {}</p></body></html>",
                util::html_escape(&msg)
            );
            Reply::text(400, "text/html; charset=utf-8", html)
        };
        let mut dir = self.dir.lock().expect("dir");
        let Some(tenant) = dir.tenant(tenant_seg) else {
            return (
                page(90002, format!("Tenant '{tenant_seg}' not found.")),
                client_id,
            );
        };
        let tenant_id = tenant.id.clone();
        let Some(cid) = client_id.clone() else {
            return (
                page(
                    900144,
                    "The request body must contain the following parameter: 'client_id'.".into(),
                ),
                client_id,
            );
        };
        let Some(redirect) = get("redirect_uri") else {
            return (
                page(
                    900144,
                    "The request body must contain the following parameter: 'redirect_uri'.".into(),
                ),
                client_id,
            );
        };
        let app = match dir.apps.get_mut(&cid.to_ascii_lowercase()) {
            Some(app) if app.tenant_id.eq_ignore_ascii_case(&tenant_id) => app,
            _ => {
                return (
                    page(
                        700016,
                        format!(
                            "Application with identifier '{cid}' was not found in the directory '{tenant_seg}'."
                        ),
                    ),
                    client_id,
                );
            }
        };
        let mut pairs: Vec<(String, String)> = Vec::new();
        if app.consent == Consent::Refuses {
            pairs.push(("error".into(), "permission_denied".into()));
            pairs.push((
                "error_description".into(),
                "AADSTS65004: The administrator declined to consent to the permissions requested by the app.".into(),
            ));
        } else {
            app.consent = Consent::Granted;
            pairs.push(("admin_consent".into(), "True".into()));
            pairs.push(("tenant".into(), tenant_id));
        }
        if let Some(state) = get("state") {
            pairs.push(("state".into(), state));
        }
        if let Some(scope) = get("scope") {
            pairs.push(("scope".into(), scope));
        }
        let sep = if redirect.contains('?') { '&' } else { '?' };
        let location = format!("{redirect}{sep}{}", util::build_query(&pairs));
        let reply = Reply::empty(302).header("Location", location);
        (reply, client_id)
    }
}

/// `/common`, `/consumers` and `/organizations` take no client credentials; the segment must be
/// a GUID or a DNS name.
fn check_tenant_segment(tenant_seg: &str, corr: &str) -> Result<(), Reply> {
    let lower = tenant_seg.to_ascii_lowercase();
    if matches!(lower.as_str(), "common" | "consumers" | "organizations") {
        return Err(aad_error(
            400,
            "invalid_request",
            9001023,
            "The grant type isn't supported over the /common or /consumers endpoints. Please use the /organizations or tenant-specific endpoint.",
            corr,
        ));
    }
    if !tenant_segment_valid(tenant_seg) {
        return Err(aad_error(
            400,
            "invalid_request",
            900023,
            &format!(
                "Specified tenant identifier '{tenant_seg}' is neither a valid DNS name, nor a valid external domain."
            ),
            corr,
        ));
    }
    Ok(())
}

/// `AADSTS900144`: a required parameter is missing.
fn missing(name: &str, corr: &str) -> Reply {
    aad_error(
        400,
        "invalid_request",
        900144,
        &format!("The request body must contain the following parameter: '{name}'."),
        corr,
    )
}

/// `scope`: present, and only Graph's `.default`.
fn check_scope(params: &[(String, String)], corr: &str) -> Result<(), Reply> {
    let Some(scope) = param(params, "scope") else {
        return Err(missing("scope", corr));
    };
    let scopes: Vec<&str> = scope.split_whitespace().collect();
    if scopes.is_empty()
        || !scopes.iter().all(|s| {
            GRAPH_DEFAULT_SCOPES
                .iter()
                .any(|d| d.eq_ignore_ascii_case(s))
        })
    {
        return Err(aad_error(
            400,
            "invalid_scope",
            70011,
            &format!(
                "The provided value for the input parameter 'scope' isn't valid. The scope {scope} isn't valid. Client credential flows must use a scope of the form '{{resource}}/.default', e.g. 'https://graph.microsoft.com/.default'."
            ),
            corr,
        ));
    }
    Ok(())
}

/// The secrets a request offers: `client_secret`, else HTTP Basic's (decoded, and as sent).
fn secret_candidates(
    params: &[(String, String)],
    basic: Option<&(String, String, String)>,
    settings: &Settings,
    corr: &str,
) -> Result<Vec<String>, Reply> {
    Ok(match (param(params, "client_secret"), basic) {
        (Some(s), _) => vec![s.to_string()],
        (None, Some((_, decoded, raw))) => vec![decoded.clone(), raw.clone()],
        (None, None) => {
            return Err(match settings.missing_secret_error {
                MissingSecretError::InvalidRequest900144 => missing("client_secret", corr),
                MissingSecretError::InvalidClient7000218 => aad_error(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                    corr,
                ),
            });
        }
    })
}

/// One of the app's secrets is offered, and not all the offered ones have expired.
fn check_secret(
    app: &AppRec,
    candidates: &[String],
    now: Timestamp,
    corr: &str,
) -> Result<(), Reply> {
    let matching: Vec<_> = app
        .secrets
        .iter()
        .filter(|s| candidates.contains(&s.value))
        .collect();
    if matching.is_empty() {
        return Err(aad_error(
            401,
            "invalid_client",
            7000215,
            &format!(
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{}'.",
                app.client_id
            ),
            corr,
        ));
    }
    if matching
        .iter()
        .all(|s| s.expires_at.is_some_and(|e| e <= now))
    {
        return Err(aad_error(
            401,
            "invalid_client",
            7000222,
            &format!(
                "The provided client secret keys for app '{}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                app.client_id
            ),
            corr,
        ));
    }
    Ok(())
}

/// The token endpoint's 200: the bearer token and its lifetime.
fn token_reply(token: &str, lifetime: i64, corr: &str) -> Reply {
    let body = json!({
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": token,
    });
    Reply {
        status: 200,
        headers: vec![
            (
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            ),
            ("Cache-Control".into(), "no-store, no-cache".into()),
            ("Pragma".into(), "no-cache".into()),
            ("client-request-id".into(), corr.to_string()),
        ],
        body: super::errors::Body::Json(body),
        drop_connection: false,
    }
}
