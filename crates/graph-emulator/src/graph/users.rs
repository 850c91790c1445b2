//! The directory: `GET /users` and `GET /users/{x}` in the token's tenant, with `$select`.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{Call, Note};
use crate::errors::{ErrorReply, Reply, wire};
use crate::state::UserRec;
use crate::token::Claims;
use crate::util;
use crate::{Emulator, Settings};

const USER_READ_ROLES: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "User.ReadBasic.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
impl Emulator {
    pub(super) async fn list_users(
        &self,
        call: &Call,
        claims: &Claims,
        settings: &Settings,
    ) -> Result<Reply, ErrorReply> {
        if call.method != "GET" {
            return Err(ErrorReply::method_not_allowed(&call.method));
        }
        if !claims.has_any(USER_READ_ROLES) {
            return Err(ErrorReply::new(
                403,
                wire::DIRECTORY_DENIED_CODE,
                wire::DIRECTORY_DENIED,
            ));
        }
        let pairs = util::query_pairs(call.query.as_deref());
        let select = user_select(&pairs)?;
        let top: usize = pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("$top"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(100);
        self.latency(settings).await;
        let users: Vec<Arc<UserRec>> = {
            let dir = self.inner.dir.lock().expect("dir");
            dir.tenant(&claims.tid)
                .map(|t| t.user_list.clone())
                .unwrap_or_default()
        };
        let value: Vec<Value> = users
            .iter()
            .take(top)
            .map(|u| user_json(u, None, select.as_deref()))
            .collect();
        Ok(Reply::json(
            200,
            json!({"@odata.context": format!("{}/$metadata#users", call.base()), "value": value}),
        ))
    }

    pub(super) async fn get_user(
        &self,
        call: &Call,
        claims: &Claims,
        seg: &str,
        settings: &Settings,
        note: &mut Note,
    ) -> Result<Reply, ErrorReply> {
        if call.method != "GET" {
            return Err(ErrorReply::method_not_allowed(&call.method));
        }
        if !claims.has_any(USER_READ_ROLES) {
            return Err(ErrorReply::new(
                403,
                wire::DIRECTORY_DENIED_CODE,
                wire::DIRECTORY_DENIED,
            ));
        }
        let select = user_select(&util::query_pairs(call.query.as_deref()))?;
        self.latency(settings).await;
        let user = self.inner.dir.lock().expect("dir").user(&claims.tid, seg);
        let Some(user) = user else {
            return Err(ErrorReply::new(
                404,
                wire::DIRECTORY_NOT_FOUND_CODE,
                format!(
                    "Resource '{seg}' does not exist or one of its queried reference-property objects are not present."
                ),
            ));
        };
        note.mailbox = Some(user.upn.to_ascii_lowercase());
        let context = match &select {
            Some(s) => format!("{}/$metadata#users({})/$entity", call.base(), s.join(",")),
            None => format!("{}/$metadata#users/$entity", call.base()),
        };
        Ok(Reply::json(
            200,
            user_json(&user, Some(context), select.as_deref()),
        ))
    }
}

const USER_PROPERTIES: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
    "accountEnabled",
    "mailNickname",
    "userType",
];

fn user_select(pairs: &[(String, String)]) -> Result<Option<Vec<String>>, ErrorReply> {
    let Some((_, v)) = pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("$select"))
    else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(p) = USER_PROPERTIES
            .iter()
            .find(|p| p.eq_ignore_ascii_case(name))
        else {
            return Err(ErrorReply::new(
                400,
                "Request_BadRequest",
                format!(
                    "Parsing OData Select and Expand failed: Could not find a property named '{name}' on type 'microsoft.graph.user'."
                ),
            ));
        };
        out.push(p.to_string());
    }
    Ok(Some(out))
}

fn user_json(u: &UserRec, context: Option<String>, select: Option<&[String]>) -> Value {
    let mut all = Map::new();
    all.insert("businessPhones".into(), json!([]));
    all.insert("displayName".into(), json!(u.display_name));
    all.insert("givenName".into(), Value::Null);
    all.insert("jobTitle".into(), Value::Null);
    all.insert("mail".into(), json!(u.mail));
    all.insert("mobilePhone".into(), Value::Null);
    all.insert("officeLocation".into(), Value::Null);
    all.insert("preferredLanguage".into(), Value::Null);
    all.insert("surname".into(), Value::Null);
    all.insert("userPrincipalName".into(), json!(u.upn));
    all.insert("id".into(), json!(u.id));
    let mut out = Map::new();
    if let Some(ctx) = context {
        out.insert("@odata.context".into(), json!(ctx));
    }
    match select {
        None => out.extend(all),
        Some(fields) => {
            all.insert("accountEnabled".into(), json!(u.account_enabled));
            all.insert(
                "mailNickname".into(),
                json!(u.upn.split('@').next().unwrap_or(&u.upn)),
            );
            all.insert("userType".into(), json!("Member"));
            for f in fields {
                if let Some(v) = all.get(f) {
                    out.insert(f.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}
