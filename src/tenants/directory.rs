//! The tenant directory in PostgreSQL (`db`): companies (credentials, plan, enabled) and their
//! linked users.
//!
//! A company is a row of `companies`: the typed columns the service queries (`plan`, `enabled`)
//! and the whole document as JSONB (`doc`, the client secret sealed with AES-256-GCM, see
//! [`crate::crypto`]), so a field added to [`CompanyDoc`] flows without a migration. A linked
//! user is a row of `linked_users` keyed (company, user), with its mailbox spelled by
//! [`super::mailbox_key`] and the [`LinkedUser`] as JSONB; its last-sync time is a column of its
//! own, written behind by the workers' cache (`cache`).

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::db::{self, Db, DbError, sql};
use super::{
    Company, ConsentRecord, DriftPolicy, LinkedUser, Plan, StoredCredentials, UserStatus,
    VerificationRecord,
};
use crate::crypto::{CryptoError, KeyRing, Sealed};
use crate::secret::Secret;

/// The company as stored: the secret sealed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct CompanyDoc {
    pub(super) id: String,
    pub(super) plan: Plan,
    #[serde(default)]
    pub(super) options: Vec<String>,
    pub(super) enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) credentials: Option<CredentialsDoc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) consent: Option<ConsentRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) verification: Option<VerificationRecord>,
    #[serde(default)]
    pub(super) drift: DriftPolicy,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub(super) struct CredentialsDoc {
    tenant_id: String,
    client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret: Option<Sealed>,
    /// Plain text, as versions before encryption at rest stored it; read, never written.
    #[serde(default, skip_serializing)]
    client_secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    secret_expires_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    set_at: Option<Timestamp>,
}

impl CredentialsDoc {
    /// Stored in plain text by a version before encryption at rest.
    pub(super) fn is_plain(&self) -> bool {
        self.secret.is_none() && self.client_secret.is_some()
    }
}

/// What the client secret of `company` is bound to when sealed.
fn secret_aad(company: &str) -> String {
    format!("outlook-sync/client-secret/v1/{company}")
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("corrupt record {key}: {message}")]
    Corrupt { key: String, message: String },
    #[error("{0}")]
    Crypto(#[from] CryptoError),
}

impl DirectoryError {
    /// The database is down, slow or refusing: a retry later may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DirectoryError::Db(e) if e.is_unavailable())
    }
}

impl From<tokio_postgres::Error> for DirectoryError {
    fn from(e: tokio_postgres::Error) -> Self {
        DirectoryError::Db(e.into())
    }
}

impl From<deadpool_postgres::PoolError> for DirectoryError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DirectoryError::Db(e.into())
    }
}

/// Reads and writes the directory.
#[derive(Clone)]
pub struct Directory {
    db: Db,
    keys: Arc<KeyRing>,
}

/// What [`Directory::reseal_all`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ResealReport {
    pub companies: usize,
    pub resealed: usize,
    /// Companies whose secret could not be opened: (company, error).
    pub failed: Vec<(String, String)>,
}

/// Bounds a directory call by the database's timeout.
macro_rules! timed {
    ($self:ident, $body:expr) => {
        match tokio::time::timeout($self.db.timeout(), async { $body }).await {
            Ok(r) => r,
            Err(_) => Err(DirectoryError::Db(DbError::Unavailable(format!(
                "no answer within {} ms",
                $self.db.timeout().as_millis()
            )))),
        }
    };
}

impl Directory {
    /// A directory without encryption keys: it reads companies without credentials, and
    /// refuses to store a secret. Use [`Directory::from_config`] or [`Directory::with_keys`].
    pub fn new(db: Db) -> Self {
        Self {
            db,
            keys: Arc::new(KeyRing::default()),
        }
    }

    /// The directory of a (validated) configuration: its database and its secret keys. No
    /// connection is made until the first call.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        let keys =
            KeyRing::from_config(&cfg.secrets).expect("secrets.* are checked by Config::validate");
        Self::new(Db::new(&cfg.database)).with_keys(Arc::new(keys))
    }

    pub fn with_keys(mut self, keys: Arc<KeyRing>) -> Self {
        self.keys = keys;
        self
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    async fn read_doc(&self, company: &str) -> Result<Option<CompanyDoc>, DirectoryError> {
        let c = self.db.client().await?;
        let row = c.query_opt(sql::COMPANY, &[&company]).await?;
        row.map(|r| company_doc(company, r.get(0))).transpose()
    }

    /// The stored document of a company as it would be written (its secret sealed).
    async fn doc_of(&self, c: &Company) -> Result<CompanyDoc, DirectoryError> {
        let credentials = match (&c.credentials, &c.credentials_error) {
            (Some(sc), _) => Some(CredentialsDoc {
                tenant_id: sc.tenant_id.clone(),
                client_id: sc.client_id.clone(),
                secret: Some(self.keys.seal(&sc.client_secret, &secret_aad(&c.id))?),
                client_secret: None,
                secret_expires_at: sc.secret_expires_at,
                set_at: sc.set_at,
            }),
            // Unreadable with today's keys: keep what is stored.
            (None, Some(_)) => self.read_doc(&c.id).await?.and_then(|d| d.credentials),
            (None, None) => None,
        };
        Ok(CompanyDoc {
            id: c.id.clone(),
            plan: c.plan,
            options: c.options.clone(),
            enabled: c.enabled,
            credentials,
            consent: c.consent.clone(),
            verification: c.verification.clone(),
            drift: c.drift,
        })
    }

    /// Stores the company, sealing its client secret with the active key. Fails with
    /// [`CryptoError::NoKey`] when it has a secret and no key is configured.
    pub async fn put_company(&self, c: &Company) -> Result<(), DirectoryError> {
        timed!(self, {
            let doc = self.doc_of(c).await?;
            self.put_doc(&doc).await.map(|_| ())
        })
    }

    /// Writes a stored document (an import's): as it is, or, for a secret in plain text from a
    /// version before encryption at rest, sealed with the active key unless the stored company
    /// already holds the same. Whether anything changed.
    pub(super) async fn put_company_doc(&self, doc: CompanyDoc) -> Result<bool, DirectoryError> {
        if !doc
            .credentials
            .as_ref()
            .is_some_and(CredentialsDoc::is_plain)
        {
            return timed!(self, self.put_doc(&doc).await);
        }
        let company = self.open(doc);
        let stored = self.company(&company.id).await?;
        if stored.is_some_and(|s| same_company(&s, &company)) {
            return Ok(false);
        }
        self.put_company(&company).await?;
        Ok(true)
    }

    /// Writes a stored document as it is (nothing changes, and no one is notified, when the
    /// stored one is equal).
    pub(super) async fn put_doc(&self, doc: &CompanyDoc) -> Result<bool, DirectoryError> {
        let value = serde_json::to_value(doc).expect("serializable");
        let plan = serde_json::to_value(doc.plan).expect("serializable");
        let plan = plan.as_str().unwrap_or_default().to_string();
        let mut c = self.db.client().await?;
        let tx = c.transaction().await?;
        let changed = tx
            .execute(sql::COMPANY_PUT, &[&doc.id, &plan, &doc.enabled, &value])
            .await?;
        tx.execute(sql::COMPANY_UNREMOVE, &[&doc.id]).await?;
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// The company, its client secret decrypted. Credentials the keys cannot open come back as
    /// `credentials: None` with `credentials_error` set (and a warning is logged).
    pub async fn company(&self, company: &str) -> Result<Option<Company>, DirectoryError> {
        timed!(self, {
            Ok(self.read_doc(company).await?.map(|d| self.open(d)))
        })
    }

    /// A stored document → the company, its secret opened with this directory's keys.
    pub(super) fn open(&self, doc: CompanyDoc) -> Company {
        let mut credentials = None;
        let mut credentials_error = None;
        if let Some(cd) = doc.credentials {
            let secret = match (&cd.secret, &cd.client_secret) {
                (Some(sealed), _) => self
                    .keys
                    .open(sealed, &secret_aad(&doc.id))
                    .map(|s| (s, Some(sealed.key_id.clone()))),
                (None, Some(plain)) => Ok((Secret::new(plain.clone()), None)),
                (None, None) => Err(CryptoError::Corrupt("-".into())),
            };
            match secret {
                Ok((client_secret, key_id)) => {
                    credentials = Some(StoredCredentials {
                        tenant_id: cd.tenant_id,
                        client_id: cd.client_id,
                        client_secret,
                        secret_expires_at: cd.secret_expires_at,
                        key_id,
                        set_at: cd.set_at,
                    });
                }
                Err(e) => {
                    tracing::warn!(company = %doc.id, error = %e, "the company's client secret cannot be decrypted");
                    credentials_error = Some(e.to_string());
                }
            }
        }
        Company {
            id: doc.id,
            plan: doc.plan,
            options: doc.options,
            enabled: doc.enabled,
            credentials,
            credentials_error,
            consent: doc.consent,
            verification: doc.verification,
            drift: doc.drift,
        }
    }

    /// Every company id in the directory, sorted.
    pub async fn company_ids(&self) -> Result<Vec<String>, DirectoryError> {
        timed!(self, {
            let c = self.db.client().await?;
            let rows = c.query(sql::COMPANY_IDS, &[]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// Removes the company and its users, and records the removal (so the workers skip its
    /// events as unknown instead of retrying them as lost).
    pub async fn remove_company(&self, company: &str) -> Result<(), DirectoryError> {
        timed!(self, {
            let mut c = self.db.client().await?;
            let tx = c.transaction().await?;
            tx.execute(sql::COMPANY_USERS_DELETE, &[&company]).await?;
            tx.execute(sql::COMPANY_DELETE, &[&company]).await?;
            tx.execute(sql::COMPANY_REMOVED, &[&company]).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Re-encrypts every stored secret sealed with a key other than the active one (or stored
    /// in plain text by an older version) with the active key.
    pub async fn reseal_all(&self) -> Result<ResealReport, DirectoryError> {
        let active = self
            .keys
            .active_key_id()
            .ok_or(CryptoError::NoKey)?
            .to_string();
        let mut report = ResealReport::default();
        for id in self.company_ids().await? {
            let Some(doc) = timed!(self, self.read_doc(&id).await)? else {
                continue;
            };
            report.companies += 1;
            let Some(cd) = &doc.credentials else { continue };
            if cd.secret.as_ref().is_some_and(|s| s.key_id == active) {
                continue;
            }
            match self.company(&id).await? {
                Some(c) if c.credentials.is_some() => {
                    self.put_company(&c).await?;
                    report.resealed += 1;
                }
                Some(c) => report
                    .failed
                    .push((id, c.credentials_error.unwrap_or_default())),
                None => {}
            }
        }
        Ok(report)
    }

    pub async fn put_user(&self, company: &str, u: &LinkedUser) -> Result<(), DirectoryError> {
        self.put_users(company, std::slice::from_ref(u)).await
    }

    /// Writes many users in one transaction.
    pub async fn put_users(
        &self,
        company: &str,
        users: &[LinkedUser],
    ) -> Result<(), DirectoryError> {
        self.put_users_changed(company, users).await.map(|_| ())
    }

    /// Writes many users in one transaction; how many rows changed (a user stored the same, and
    /// a last-sync time older than the stored one, change nothing).
    pub(super) async fn put_users_changed(
        &self,
        company: &str,
        users: &[LinkedUser],
    ) -> Result<usize, DirectoryError> {
        if users.is_empty() {
            return Ok(0);
        }
        timed!(self, {
            let mut c = self.db.client().await?;
            let tx = c.transaction().await?;
            let put = tx.prepare(sql::USER_PUT).await?;
            let mut changed = 0;
            for u in users {
                let (mailbox_key, status, doc, last) = user_columns(u);
                changed += tx
                    .execute(
                        &put,
                        &[
                            &company,
                            &u.user_id,
                            &u.mailbox,
                            &mailbox_key,
                            &status,
                            &doc,
                            &last,
                        ],
                    )
                    .await?;
            }
            tx.commit().await?;
            Ok(usize::try_from(changed).unwrap_or(usize::MAX))
        })
    }

    pub async fn remove_user(&self, company: &str, user_id: &str) -> Result<bool, DirectoryError> {
        timed!(self, {
            let c = self.db.client().await?;
            Ok(c.execute(sql::USER_DELETE, &[&company, &user_id]).await? > 0)
        })
    }

    pub async fn user(
        &self,
        company: &str,
        user_id: &str,
    ) -> Result<Option<LinkedUser>, DirectoryError> {
        timed!(self, {
            let c = self.db.client().await?;
            let row = c.query_opt(sql::USER, &[&company, &user_id]).await?;
            row.map(|r| user_row(company, &r, 0)).transpose()
        })
    }

    /// Every linked user of a company, by cyzen user id.
    pub async fn users(
        &self,
        company: &str,
    ) -> Result<HashMap<String, LinkedUser>, DirectoryError> {
        timed!(self, {
            let c = self.db.client().await?;
            let rows = c.query(sql::USERS, &[&company]).await?;
            rows.iter()
                .map(|r| user_row(company, r, 0).map(|u| (u.user_id.clone(), u)))
                .collect()
        })
    }

    /// Records the outcome of writes to a user's mailbox: a success sets the last sync time; a
    /// mailbox problem flips the user to auth_failed with the reason. (The workers write
    /// successes behind, many at once, through their cache: [`Directory::record_synced`].)
    pub async fn record_sync(
        &self,
        company: &str,
        user_id: &str,
        outcome: Result<(), (&str, &str)>,
    ) -> Result<(), DirectoryError> {
        let Some(mut u) = self.user(company, user_id).await? else {
            return Ok(());
        };
        match outcome {
            Ok(()) => {
                u.last_sync_at = Some(Timestamp::now());
            }
            Err((reason, message)) => {
                u.status = UserStatus::AuthFailed;
                u.reason = Some(reason.to_string());
                u.last_error = Some(message.to_string());
            }
        }
        self.put_user(company, &u).await
    }

    /// Sets the last-sync times of many users in one statement; a time never goes back, so
    /// writing the same batch twice changes nothing. Returns the rows changed.
    pub async fn record_synced(
        &self,
        synced: &[(String, String, Timestamp)],
    ) -> Result<u64, DirectoryError> {
        if synced.is_empty() {
            return Ok(0);
        }
        let companies: Vec<&str> = synced.iter().map(|s| s.0.as_str()).collect();
        let users: Vec<&str> = synced.iter().map(|s| s.1.as_str()).collect();
        let at: Vec<f64> = synced.iter().map(|s| db::epoch(s.2)).collect();
        timed!(self, {
            let c = self.db.client().await?;
            Ok(c.execute(sql::USERS_SYNCED, &[&companies, &users, &at])
                .await?)
        })
    }

    /// Everything, for the workers' cache: the companies (opened), the users by company, and
    /// the companies an administrator removed.
    pub(super) async fn load_all(&self) -> Result<Snapshot, DirectoryError> {
        timed!(self, {
            let mut c = self.db.client().await?;
            // One snapshot for the three reads.
            let tx = c
                .build_transaction()
                .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                .read_only(true)
                .start()
                .await?;
            let companies = tx.query(sql::COMPANIES_ALL, &[]).await?;
            let users = tx.query(sql::USERS_ALL, &[]).await?;
            let removed = tx.query(sql::REMOVED_ALL, &[]).await?;
            tx.commit().await?;
            let mut snap = Snapshot::default();
            for r in &companies {
                let id: String = r.get(0);
                let doc = company_doc(&id, r.get(1))?;
                snap.companies.insert(id, self.open(doc));
            }
            for r in &users {
                let company: String = r.get(0);
                let u = user_row(&company, r, 1)?;
                snap.users
                    .entry(company)
                    .or_default()
                    .insert(u.user_id.clone(), u);
            }
            snap.removed = removed.iter().map(|r| r.get(0)).collect();
            Ok(snap)
        })
    }

    /// One company for the workers' cache: the company (opened) with its users, or whether an
    /// administrator removed it.
    pub(super) async fn load_one(&self, company: &str) -> Result<One, DirectoryError> {
        timed!(self, {
            let c = self.db.client().await?;
            let Some(row) = c.query_opt(sql::COMPANY, &[&company]).await? else {
                let removed = c.query_opt(sql::IS_REMOVED, &[&company]).await?.is_some();
                return Ok(One::Absent { removed });
            };
            let doc = company_doc(company, row.get(0))?;
            let rows = c.query(sql::USERS, &[&company]).await?;
            let users = rows
                .iter()
                .map(|r| user_row(company, r, 0).map(|u| (u.user_id.clone(), u)))
                .collect::<Result<_, _>>()?;
            Ok(One::Present(Box::new(self.open(doc)), users))
        })
    }
}

/// The whole directory at one moment.
#[derive(Default)]
pub(super) struct Snapshot {
    pub companies: HashMap<String, Company>,
    pub users: HashMap<String, HashMap<String, LinkedUser>>,
    pub removed: std::collections::HashSet<String>,
}

/// One company at one moment.
pub(super) enum One {
    Present(Box<Company>, HashMap<String, LinkedUser>),
    Absent { removed: bool },
}

/// Two companies hold the same (secrets compared in clear, sealing aside).
fn same_company(a: &Company, b: &Company) -> bool {
    let creds = |c: &Company| {
        c.credentials.as_ref().map(|s| {
            (
                s.tenant_id.clone(),
                s.client_id.clone(),
                s.client_secret.expose().to_string(),
                s.secret_expires_at,
                s.set_at,
            )
        })
    };
    a.id == b.id
        && a.plan == b.plan
        && a.options == b.options
        && a.enabled == b.enabled
        && a.consent == b.consent
        && a.verification == b.verification
        && creds(a) == creds(b)
}

fn company_doc(company: &str, doc: serde_json::Value) -> Result<CompanyDoc, DirectoryError> {
    serde_json::from_value(doc).map_err(|e| DirectoryError::Corrupt {
        key: format!("companies/{company}"),
        message: e.to_string(),
    })
}

/// The columns of a user row besides its keys: mailbox key, status, the document (without the
/// last-sync time, a column of its own), the last-sync time.
fn user_columns(u: &LinkedUser) -> (String, String, serde_json::Value, Option<f64>) {
    let status = serde_json::to_value(u.status).expect("serializable");
    let mut doc = u.clone();
    doc.last_sync_at = None;
    (
        u.mailbox_key(),
        status.as_str().unwrap_or_default().to_string(),
        serde_json::to_value(&doc).expect("serializable"),
        u.last_sync_at.map(db::epoch),
    )
}

/// A user row (`user_id, doc, last_sync_at` from column `at`).
fn user_row(
    company: &str,
    r: &tokio_postgres::Row,
    at: usize,
) -> Result<LinkedUser, DirectoryError> {
    let user_id: String = r.get(at);
    let doc: serde_json::Value = r.get(at + 1);
    let last: Option<f64> = r.get(at + 2);
    let mut u: LinkedUser = serde_json::from_value(doc).map_err(|e| DirectoryError::Corrupt {
        key: format!("linked_users/{company}/{user_id}"),
        message: e.to_string(),
    })?;
    u.last_sync_at = last.and_then(db::from_epoch).or(u.last_sync_at);
    Ok(u)
}
