//! The emulator's directory: tenants, their registered apps and their users (see the format
//! in the [module docs](super)).

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EmulatorError;

/// Initial directory contents: tenants with their apps and users.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(default)]
    pub tenants: Vec<SeedTenant>,
}

/// One Entra tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedTenant {
    /// Tenant GUID (the `tid` claim; also accepted in the token URL).
    pub id: String,
    /// Verified domains, accepted in place of the id in the token URL.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Apps registered in (or consented into) this tenant. A `client_id` belongs to exactly one
    /// tenant; used against another tenant it gets AADSTS700016.
    #[serde(default)]
    pub apps: Vec<SeedApp>,
    /// Users of the directory. Unknown users are simply absent.
    #[serde(default)]
    pub users: Vec<SeedUser>,
}

/// An app registration (service principal) of a tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedApp {
    pub client_id: String,
    #[serde(default)]
    pub display_name: String,
    #[serde(default)]
    pub secrets: Vec<SeedSecret>,
    /// Application permissions (app roles) an admin granted, e.g. `Calendars.ReadWrite`.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub consent: Consent,
}

/// A client secret. `expires_at` absent = never expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSecret {
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<jiff::Timestamp>,
}

/// State of the admin consent for an app's application permissions (GRAPH.md §1.5).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Consent {
    /// Tokens carry the app's `roles`.
    #[default]
    Granted,
    /// Tokens are issued but carry no `roles` until `/adminconsent` succeeds.
    Pending,
    /// Like `Pending`, and `/adminconsent` redirects back with `error=permission_denied`.
    Refuses,
}

/// A directory user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedUser {
    /// Object id. Absent: derived deterministically from the UPN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub upn: String,
    /// Absent: the UPN for users with a mailbox, `null` for `no_mailbox` users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mail: Option<String>,
    /// Absent: the local part of the UPN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default)]
    pub mailbox: MailboxKind,
    /// Windows time-zone id of the mailbox (`mailboxSettings.timeZone`).
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    #[serde(default = "default_true")]
    pub account_enabled: bool,
    /// `mailboxSettings.userPurpose.value` (`user`, `shared`, `room`, ...).
    #[serde(default = "default_purpose")]
    pub user_purpose: String,
}

/// What Exchange says about a user's mailbox (GRAPH.md §5, §7.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MailboxKind {
    /// REST-enabled Exchange Online mailbox.
    #[default]
    Ok,
    /// No EXO mailbox / licence: 404 `MailboxNotEnabledForRESTAPI`.
    NoMailbox,
    /// Outside an application access policy: 403 `ErrorAccessDenied` "Access to OData is disabled."
    PolicyDenied,
}

fn default_time_zone() -> String {
    "UTC".into()
}
fn default_true() -> bool {
    true
}
fn default_purpose() -> String {
    "user".into()
}

const EXAMPLE_SEED: &str = include_str!("example-seed.json");

impl Seed {
    /// Reads a seed from a `.json` file, or a `.toml` file with the same structure
    /// (`[[tenants]]`, `[[tenants.apps]]`, ...; timestamps as quoted strings).
    pub fn from_file(path: &Path) -> Result<Seed, EmulatorError> {
        let text = std::fs::read_to_string(path).map_err(|source| EmulatorError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let seed = match ext.as_str() {
            "json" => Seed::from_json_str(&text)?,
            "toml" => {
                toml::from_str::<Seed>(&text).map_err(|e| EmulatorError::Toml(e.to_string()))?
            }
            other => return Err(EmulatorError::UnsupportedSeedFormat(other.to_string())),
        };
        seed.validate()?;
        Ok(seed)
    }

    /// Parses (and validates) a JSON seed.
    pub fn from_json_str(text: &str) -> Result<Seed, EmulatorError> {
        let seed: Seed = serde_json::from_str(text)?;
        seed.validate()?;
        Ok(seed)
    }

    /// The seed shipped as `crates/graph-emulator/src/example-seed.json` (used by `graph-emulator`
    /// when no seed file is given).
    pub fn example() -> Seed {
        Seed::from_json_str(EXAMPLE_SEED).expect("example-seed.json is valid")
    }

    /// Checks the cross-references: unique tenant ids and domains, a `client_id` in one tenant
    /// only, unique users per tenant, known mailbox time zones.
    pub fn validate(&self) -> Result<(), EmulatorError> {
        let mut tenant_keys = std::collections::HashSet::new();
        let mut clients = std::collections::HashSet::new();
        for t in &self.tenants {
            if t.id.trim().is_empty() {
                return Err(EmulatorError::InvalidSeed(
                    "a tenant has an empty id".into(),
                ));
            }
            for key in std::iter::once(&t.id).chain(&t.domains) {
                if !tenant_keys.insert(key.to_ascii_lowercase()) {
                    return Err(EmulatorError::InvalidSeed(format!(
                        "tenant id or domain '{key}' appears twice"
                    )));
                }
            }
            for a in &t.apps {
                if !clients.insert(a.client_id.to_ascii_lowercase()) {
                    return Err(EmulatorError::InvalidSeed(format!(
                        "client_id '{}' appears twice (an app is in exactly one tenant)",
                        a.client_id
                    )));
                }
            }
            let mut users = std::collections::HashSet::new();
            for u in &t.users {
                let id = u.resolved_id();
                if !users.insert(u.upn.to_ascii_lowercase()) || !users.insert(id.to_lowercase()) {
                    return Err(EmulatorError::InvalidSeed(format!(
                        "user '{}' appears twice in tenant {}",
                        u.upn, t.id
                    )));
                }
                if super::timezones::lookup(&u.time_zone, true).is_none() {
                    return Err(EmulatorError::InvalidSeed(format!(
                        "user '{}' has an unknown time_zone '{}'",
                        u.upn, u.time_zone
                    )));
                }
            }
        }
        Ok(())
    }
}

impl SeedTenant {
    /// A tenant with one domain and nothing in it.
    pub fn new(id: impl Into<String>, domain: impl Into<String>) -> SeedTenant {
        SeedTenant {
            id: id.into(),
            domains: vec![domain.into()],
            apps: Vec::new(),
            users: Vec::new(),
        }
    }
    pub fn with_app(mut self, app: SeedApp) -> SeedTenant {
        self.apps.push(app);
        self
    }
    pub fn with_user(mut self, user: SeedUser) -> SeedTenant {
        self.users.push(user);
        self
    }
}

impl SeedApp {
    /// An app with one non-expiring secret, consent granted, roles
    /// `Calendars.ReadWrite` and `User.Read.All`.
    pub fn new(client_id: impl Into<String>, secret: impl Into<String>) -> SeedApp {
        SeedApp {
            client_id: client_id.into(),
            display_name: "cyzen sync".into(),
            secrets: vec![SeedSecret {
                value: secret.into(),
                expires_at: None,
            }],
            roles: vec!["Calendars.ReadWrite".into(), "User.Read.All".into()],
            consent: Consent::Granted,
        }
    }
    pub fn with_roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> SeedApp {
        self.roles = roles.into_iter().map(Into::into).collect();
        self
    }
    pub fn with_consent(mut self, consent: Consent) -> SeedApp {
        self.consent = consent;
        self
    }
    pub fn with_secret(
        mut self,
        value: impl Into<String>,
        expires_at: Option<jiff::Timestamp>,
    ) -> SeedApp {
        self.secrets.push(SeedSecret {
            value: value.into(),
            expires_at,
        });
        self
    }
}

impl SeedUser {
    /// A user with an `ok` mailbox in UTC.
    pub fn new(upn: impl Into<String>) -> SeedUser {
        SeedUser {
            id: None,
            upn: upn.into(),
            mail: None,
            display_name: None,
            mailbox: MailboxKind::Ok,
            time_zone: default_time_zone(),
            account_enabled: true,
            user_purpose: default_purpose(),
        }
    }
    pub fn with_mailbox(mut self, kind: MailboxKind) -> SeedUser {
        self.mailbox = kind;
        self
    }
    pub fn with_id(mut self, id: impl Into<String>) -> SeedUser {
        self.id = Some(id.into());
        self
    }
    pub fn with_time_zone(mut self, tz: impl Into<String>) -> SeedUser {
        self.time_zone = tz.into();
        self
    }

    /// The object id: the seeded one, or a GUID derived from the lowercase UPN
    /// (SHA-256, first 16 bytes, UUID v4 layout), stable across runs.
    pub fn resolved_id(&self) -> String {
        match &self.id {
            Some(id) => id.clone(),
            None => derived_guid("user", &self.upn.to_ascii_lowercase()),
        }
    }
}

/// A GUID derived from `(kind, key)`, stable across runs.
pub(crate) fn derived_guid(kind: &str, key: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(kind.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .hyphenated()
        .to_string()
}
