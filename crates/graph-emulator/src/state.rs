//! Shared state behind [`Emulator`](super::Emulator): directory, mailboxes, throttling,
//! faults, counters and the request log. Each part has its own `std::sync::Mutex`, held only
//! for short, non-async sections.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

use super::events::{RenderOpts, StoredEvent};
use super::faults::FaultState;
use super::seed::derived_guid;
use super::throttle::ThrottleState;
use super::{
    Consent, LoggedRequest, MailboxKind, Seed, SeedSecret, SeedTenant, Settings, Stats, util,
};

/// A directory user as the emulator keeps it.
#[derive(Debug, Clone)]
pub(crate) struct UserRec {
    pub id: String,
    pub upn: String,
    pub mail: Option<String>,
    pub display_name: String,
    pub mailbox: MailboxKind,
    pub time_zone: String,
    pub account_enabled: bool,
    pub user_purpose: String,
    pub tenant_id: String,
}

impl UserRec {
    /// Address used for `organizer.emailAddress.address`.
    pub fn address(&self) -> &str {
        self.mail.as_deref().unwrap_or(&self.upn)
    }
    /// Key of this user's mailbox in the store.
    pub fn mailbox_key(&self) -> MailboxKey {
        (
            self.tenant_id.to_ascii_lowercase(),
            self.id.to_ascii_lowercase(),
        )
    }
    /// Id of the (only) calendar: stable, base64-ish like Graph's.
    pub fn calendar_id(&self) -> String {
        let digest = derived_guid("calendar", &self.id);
        let mut bytes = vec![0x00, 0x03, 0x24, 0x00];
        bytes.extend_from_slice(uuid::Uuid::parse_str(&digest).expect("guid").as_bytes());
        bytes.extend_from_slice(&[0x00, 0x2e, 0x00, 0x00, 0x00, 0x00, 0x00]);
        util::b64(&bytes, false)
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AppRec {
    pub client_id: String,
    pub display_name: String,
    pub secrets: Vec<SeedSecret>,
    pub roles: Vec<String>,
    pub consent: Consent,
    pub tenant_id: String,
}

#[derive(Debug, Default)]
pub(crate) struct TenantRec {
    pub id: String,
    pub domains: Vec<String>,
    /// Lowercase id and lowercase UPN → user.
    pub users: HashMap<String, Arc<UserRec>>,
    pub user_list: Vec<Arc<UserRec>>,
}

#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub tenants: Vec<TenantRec>,
    /// Lowercase tenant id or domain → index in `tenants`.
    pub tenant_keys: HashMap<String, usize>,
    /// Lowercase client id → app.
    pub apps: HashMap<String, AppRec>,
}

impl Directory {
    pub fn tenant(&self, key: &str) -> Option<&TenantRec> {
        self.tenant_keys
            .get(&key.to_ascii_lowercase())
            .map(|&i| &self.tenants[i])
    }

    /// A user of tenant `tid` by id or UPN (case-insensitive).
    pub fn user(&self, tid: &str, key: &str) -> Option<Arc<UserRec>> {
        self.tenant(tid)?
            .users
            .get(&key.to_ascii_lowercase())
            .cloned()
    }

    fn add(&mut self, t: SeedTenant) {
        let tenant_id = t.id.clone();
        // Replace: drop the old tenant's apps and keys.
        if let Some(pos) = self
            .tenants
            .iter()
            .position(|x| x.id.eq_ignore_ascii_case(&t.id))
        {
            self.tenants.remove(pos);
            self.apps
                .retain(|_, a| !a.tenant_id.eq_ignore_ascii_case(&tenant_id));
        }
        let mut rec = TenantRec {
            id: t.id.clone(),
            domains: t.domains.clone(),
            ..TenantRec::default()
        };
        for u in &t.users {
            let id = u.resolved_id();
            let local = u.upn.split('@').next().unwrap_or(&u.upn).to_string();
            let mail = match (&u.mail, u.mailbox) {
                (Some(m), _) => Some(m.clone()),
                (None, MailboxKind::NoMailbox) => None,
                (None, _) => Some(u.upn.clone()),
            };
            let user = Arc::new(UserRec {
                id: id.clone(),
                upn: u.upn.clone(),
                mail,
                display_name: u.display_name.clone().unwrap_or(local),
                mailbox: u.mailbox,
                time_zone: u.time_zone.clone(),
                account_enabled: u.account_enabled,
                user_purpose: u.user_purpose.clone(),
                tenant_id: t.id.clone(),
            });
            rec.users.insert(id.to_ascii_lowercase(), user.clone());
            rec.users.insert(u.upn.to_ascii_lowercase(), user.clone());
            rec.user_list.push(user);
        }
        for a in &t.apps {
            self.apps.insert(
                a.client_id.to_ascii_lowercase(),
                AppRec {
                    client_id: a.client_id.clone(),
                    display_name: a.display_name.clone(),
                    secrets: a.secrets.clone(),
                    roles: a.roles.clone(),
                    consent: a.consent,
                    tenant_id: t.id.clone(),
                },
            );
        }
        self.tenants.push(rec);
        self.tenant_keys.clear();
        for (i, t) in self.tenants.iter().enumerate() {
            self.tenant_keys.insert(t.id.to_ascii_lowercase(), i);
            for d in &t.domains {
                self.tenant_keys.insert(d.to_ascii_lowercase(), i);
            }
        }
    }

    /// A user by id or UPN in any tenant.
    pub fn find_user(&self, key: &str) -> Option<Arc<UserRec>> {
        let key = key.to_ascii_lowercase();
        self.tenants.iter().find_map(|t| t.users.get(&key).cloned())
    }
}

/// (lowercase tenant id, lowercase user id)
pub(crate) type MailboxKey = (String, String);

#[derive(Debug, Default)]
pub(crate) struct Mailbox {
    pub events: HashMap<String, StoredEvent>,
    /// transactionId (lowercase: compared without regard to case, the conservative reading of
    /// Exchange's string comparisons) → event id.
    pub transactions: HashMap<String, String>,
    pub next_seq: u64,
    /// The calendar's change clock and what each change left (`graph/delta.rs`).
    pub changes: super::graph::ChangeLog,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub requests: AtomicU64,
    pub throttled: AtomicU64,
    pub tokens_issued: AtomicU64,
    pub writes: AtomicU64,
    pub batches: AtomicU64,
    pub events_created: AtomicU64,
    pub create_dedupes: AtomicU64,
    pub events_deleted: AtomicU64,
    pub events_updated: AtomicU64,
}

impl Counters {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) struct Inner {
    pub settings: Mutex<Settings>,
    /// HMAC key of the access tokens (random per emulator).
    pub key: [u8; 32],
    pub dir: Mutex<Directory>,
    pub store: Mutex<HashMap<MailboxKey, Mailbox>>,
    pub throttle: Mutex<ThrottleState>,
    pub faults: Mutex<FaultState>,
    pub log: Mutex<VecDeque<LoggedRequest>>,
    pub counters: Counters,
    pub shuffle_rng: Mutex<StdRng>,
    /// The delta rounds' state tokens (`graph/delta.rs`).
    pub delta_tokens: Mutex<super::graph::DeltaTokens>,
}

impl Inner {
    pub fn new(seed: Seed, settings: Settings) -> Inner {
        let mut dir = Directory::default();
        for t in seed.tenants {
            dir.add(t);
        }
        let faults = FaultState::new(settings.faults.clone());
        let shuffle_seed = settings.faults.seed ^ 0x5eed_ba7c;
        Inner {
            key: util::random_bytes::<32>(),
            dir: Mutex::new(dir),
            store: Mutex::new(HashMap::new()),
            throttle: Mutex::new(ThrottleState::default()),
            faults: Mutex::new(faults),
            log: Mutex::new(VecDeque::new()),
            counters: Counters::default(),
            shuffle_rng: Mutex::new(StdRng::seed_from_u64(shuffle_seed)),
            delta_tokens: Mutex::new(Default::default()),
            settings: Mutex::new(settings),
        }
    }

    pub fn settings(&self) -> Settings {
        self.settings.lock().expect("settings").clone()
    }

    pub fn add_tenant(&self, t: SeedTenant) {
        self.dir.lock().expect("dir").add(t);
    }

    pub fn find_user(&self, key: &str) -> Option<Arc<UserRec>> {
        self.dir.lock().expect("dir").find_user(key)
    }

    pub fn consent(&self, client_id: &str) -> Option<Consent> {
        self.dir
            .lock()
            .expect("dir")
            .apps
            .get(&client_id.to_ascii_lowercase())
            .map(|a| a.consent)
    }

    pub fn set_mailbox_kind(&self, key: &str, kind: MailboxKind) -> bool {
        let mut dir = self.dir.lock().expect("dir");
        let Some(old) = dir.find_user(key) else {
            return false;
        };
        let mut new = (*old).clone();
        new.mailbox = kind;
        let new = Arc::new(new);
        for t in &mut dir.tenants {
            if !t.id.eq_ignore_ascii_case(&old.tenant_id) {
                continue;
            }
            for k in [old.id.to_ascii_lowercase(), old.upn.to_ascii_lowercase()] {
                t.users.insert(k, new.clone());
            }
            for u in &mut t.user_list {
                if Arc::ptr_eq(u, &old) {
                    *u = new.clone();
                }
            }
        }
        true
    }

    pub fn remove_event(&self, mailbox: &str, event_id: &str) -> bool {
        let Some(user) = self.find_user(mailbox) else {
            return false;
        };
        let mut store = self.store.lock().expect("store");
        let Some(mbox) = store.get_mut(&user.mailbox_key()) else {
            return false;
        };
        match mbox.events.remove(event_id) {
            Some(ev) => {
                mbox.changes.removed(&ev);
                true
            }
            None => false,
        }
    }

    pub fn edit_event(&self, mailbox: &str, event_id: &str, patch: &Value) -> Result<(), String> {
        let user = self
            .find_user(mailbox)
            .ok_or_else(|| format!("unknown mailbox {mailbox}"))?;
        let settings = self.settings();
        let draft = super::events::parse_input(patch, &settings).map_err(|e| e.message)?;
        let mut store = self.store.lock().expect("store");
        let mbox = store
            .get_mut(&user.mailbox_key())
            .ok_or_else(|| format!("no events in {mailbox}"))?;
        let ev = mbox
            .events
            .get_mut(event_id)
            .ok_or_else(|| format!("no event {event_id} in {mailbox}"))?;
        ev.patch(draft).map_err(|e| e.message)?;
        mbox.changes.changed(event_id);
        Ok(())
    }

    pub fn calendar(&self, mailbox: &str) -> Vec<Value> {
        let Some(user) = self.find_user(mailbox) else {
            return Vec::new();
        };
        let store = self.store.lock().expect("store");
        let Some(mbox) = store.get(&user.mailbox_key()) else {
            return Vec::new();
        };
        let mut events: Vec<&StoredEvent> = mbox.events.values().collect();
        events.sort_by_key(|e| (e.start.instant, e.seq));
        events
            .into_iter()
            .map(|e| e.render(&RenderOpts::full()))
            .collect()
    }

    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let throttle = self.throttle.lock().expect("throttle");
        Stats {
            requests: get(&c.requests),
            throttled: get(&c.throttled),
            tokens_issued: get(&c.tokens_issued),
            max_in_flight_per_mailbox: throttle.max_per_mailbox.clone(),
            max_in_flight_any: throttle.max_any,
            writes: get(&c.writes),
            batches: get(&c.batches),
            events_created: get(&c.events_created),
            create_dedupes: get(&c.create_dedupes),
            events_deleted: get(&c.events_deleted),
            events_updated: get(&c.events_updated),
        }
    }

    pub fn push_log(&self, entry: LoggedRequest) {
        let max = self.settings.lock().expect("settings").max_log_entries;
        let mut log = self.log.lock().expect("log");
        log.push_back(entry);
        while log.len() > max {
            log.pop_front();
        }
    }
}
