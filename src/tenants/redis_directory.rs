//! The directory as versions before PostgreSQL kept it in Redis, read once to move it
//! (`outlook-sync db import-redis-directory`): `company:{company}` (a JSON document, the client
//! secret sealed), `companies` (the set of company ids) and `users:{company}` (a hash of user id
//! → JSON). Nothing here writes Redis.

use std::collections::HashMap;

use crate::store::Redis;
use redis::AsyncCommands;

use super::directory::{CompanyDoc, DirectoryError};
use super::{Directory, LinkedUser};

/// The old directory in Redis, read only.
pub struct RedisDirectory {
    redis: Redis,
    names: crate::store::Keys,
}

/// What an import did: a second run over the same Redis writes nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImportReport {
    pub companies: usize,
    pub companies_written: usize,
    pub users: usize,
    pub users_written: usize,
}

impl RedisDirectory {
    pub fn new(redis: Redis, names: crate::store::Keys) -> Self {
        Self { redis, names }
    }

    /// Every company id in the old directory, sorted.
    pub async fn company_ids(&self) -> Result<Vec<String>, DirectoryError> {
        let mut r = self.redis.clone();
        let mut ids: Vec<String> = r.smembers(self.names.companies()).await?;
        ids.sort();
        Ok(ids)
    }

    async fn company_doc(&self, company: &str) -> Result<Option<CompanyDoc>, DirectoryError> {
        let key = self.names.company(company);
        let mut r = self.redis.clone();
        let doc: Option<String> = r.get(&key).await?;
        doc.map(|d| {
            serde_json::from_str(&d).map_err(|e| DirectoryError::Corrupt {
                key,
                message: e.to_string(),
            })
        })
        .transpose()
    }

    async fn users(&self, company: &str) -> Result<Vec<LinkedUser>, DirectoryError> {
        let key = self.names.users(company);
        let mut r = self.redis.clone();
        let all: HashMap<String, String> = r.hgetall(&key).await?;
        let mut users = all
            .into_values()
            .map(|d| {
                serde_json::from_str(&d).map_err(|e| DirectoryError::Corrupt {
                    key: key.clone(),
                    message: e.to_string(),
                })
            })
            .collect::<Result<Vec<LinkedUser>, _>>()?;
        users.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        Ok(users)
    }

    /// Copies every company and user into `to`. A company's sealed secret is copied as it is
    /// (the same keys open it); one stored in plain text by a version before encryption at rest
    /// is sealed with the active key. What PostgreSQL already holds the same is left alone.
    pub async fn import_into(&self, to: &Directory) -> Result<ImportReport, DirectoryError> {
        let mut report = ImportReport::default();
        for id in self.company_ids().await? {
            let Some(doc) = self.company_doc(&id).await? else {
                continue;
            };
            report.companies += 1;
            if to.put_company_doc(doc).await? {
                report.companies_written += 1;
            }
            let users = self.users(&id).await?;
            report.users += users.len();
            report.users_written += to.put_users_changed(&id, &users).await?;
        }
        Ok(report)
    }
}
