//! Every Redis key this service writes, built in one place. All start with `{prefix}:`
//! (`redis.key_prefix`), so deployments and tests can share a Redis.
//!
//! | key | type | holds | owner |
//! |---|---|---|---|
//! | `s:{company}/{schedule}` | hash | the staged newest revision: `rev`, `event`, `kind`, `born`, `staged_at`, `replay` | `window` |
//! | `due` | sorted set | `{company}/{schedule}` by the end of its window (ms) | `window` |
//! | `inflight` | sorted set | claimed `{company}/{schedule}` by its lease expiry (ms) | `window` |
//! | `owner` | hash | claimed `{company}/{schedule}` → the claiming worker's token | `window` |
//! | `m:{company}/{schedule}` | hash | mailbox → the copy (`store::copies`) | `store::copies` |
//! | `copies-of:{company}:{mailbox}` | set | the schedules with a copy in a mailbox | `store::copies` |
//! | `lease:{company}:{mailbox}` | string | the token of the worker writing to the mailbox | `store::lease` |
//! | `rate:{company}:{mailbox}` | string | the mailbox's paced request budget (µs) while no one holds it | `store::pace` |
//! | `delta:{company}:{mailbox}` | string | the mailbox's delta cursor: the deltaLink and the range it reads | `store::repair` |
//! | `repair-due` | sorted set | `{company}/{mailbox}` by when its next repair pass is due (ms) | `store::repair` |
//! | `ledger:{company}/{schedule}` | list | the sync ledger's entries, newest first | `ledger` |
//! | `company:{company}`, `companies`, `users:{company}` | string, set, hash | the tenant directory | `tenants` |
//! | `consent-state:{sha256}` | string | a pending admin consent | `admin::consent` |
//! | `job:{id}` | string | a long admin job's record | `admin::jobs` |
//! | `dlq:{queue}:{what}` | string | the dead-letter operations' lock and marks | `deadletter` |
//! | `fleet`, `fleet:{token}`, `fleet-reporter` | sorted set, string, string | what each worker holds; who exports the fleet-wide figures | `fleet` |
//!
//! And one key outside the prefix: `outlook-sync-fleet:{vhost}/{queue}` ([`fleet_settings`]).

/// The settings every worker of one work queue must share (`fleet::SharedSettings`): by the
/// queue's vhost and name, the one key **outside** every prefix, since the prefix is one of them.
pub fn fleet_settings(vhost: &str, queue: &str) -> String {
    format!("outlook-sync-fleet:{vhost}/{queue}")
}

/// A schedule, as the staging, the claims and the copies name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Member {
    pub company_id: String,
    pub schedule_id: String,
}

impl Member {
    pub fn new(company_id: impl Into<String>, schedule_id: impl Into<String>) -> Member {
        Member {
            company_id: company_id.into(),
            schedule_id: schedule_id.into(),
        }
    }

    /// `{company}/{schedule}`.
    pub fn encode(&self) -> String {
        format!("{}/{}", self.company_id, self.schedule_id)
    }

    /// Ids never contain `/` (the contract allows `A-Z a-z 0-9 . _ : -`).
    pub fn decode(s: &str) -> Option<Member> {
        let (c, sch) = s.split_once('/')?;
        Some(Member::new(c, sch))
    }
}

/// The key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `{prefix}:*`: every key (tests and the sandbox clean up with it).
    pub fn all_pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }

    pub fn staged(&self, m: &Member) -> String {
        format!("{}:s:{}", self.prefix, m.encode())
    }

    pub fn due(&self) -> String {
        format!("{}:due", self.prefix)
    }

    pub fn inflight(&self) -> String {
        format!("{}:inflight", self.prefix)
    }

    pub fn owner(&self) -> String {
        format!("{}:owner", self.prefix)
    }

    pub fn copies(&self, m: &Member) -> String {
        format!("{}:m:{}", self.prefix, m.encode())
    }

    /// `mailbox` must be a `tenants::mailbox_key`.
    pub fn copies_of(&self, company: &str, mailbox: &str) -> String {
        format!("{}:copies-of:{company}:{mailbox}", self.prefix)
    }

    /// The prefix of every `copies-of` key of a company (the mailbox follows it).
    pub fn copies_of_company(&self, company: &str) -> String {
        format!("{}:copies-of:{company}:", self.prefix)
    }

    pub fn mailbox_lease(&self, company: &str, mailbox: &str) -> String {
        format!("{}:lease:{company}:{mailbox}", self.prefix)
    }

    /// A mailbox's paced request budget (its theoretical arrival time), `store::pace`.
    pub fn mailbox_rate(&self, company: &str, mailbox: &str) -> String {
        format!("{}:rate:{company}:{mailbox}", self.prefix)
    }

    /// A mailbox's delta cursor (`store::repair`); `mailbox` is a `tenants::mailbox_key`.
    pub fn delta_cursor(&self, company: &str, mailbox: &str) -> String {
        format!("{}:delta:{company}:{mailbox}", self.prefix)
    }

    /// When each mailbox's next repair pass is due (`store::repair`).
    pub fn repair_due(&self) -> String {
        format!("{}:repair-due", self.prefix)
    }

    pub fn ledger(&self, m: &Member) -> String {
        format!("{}:ledger:{}", self.prefix, m.encode())
    }

    pub fn company(&self, company: &str) -> String {
        format!("{}:company:{company}", self.prefix)
    }

    pub fn companies(&self) -> String {
        format!("{}:companies", self.prefix)
    }

    pub fn users(&self, company: &str) -> String {
        format!("{}:users:{company}", self.prefix)
    }

    pub fn consent_state(&self, hash: &str) -> String {
        format!("{}:consent-state:{hash}", self.prefix)
    }

    pub fn job(&self, id: &str) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    /// The workers that reported their load recently, by when the report expires (`fleet`).
    pub fn fleet(&self) -> String {
        format!("{}:fleet", self.prefix)
    }

    /// One worker's report of what it holds.
    pub fn fleet_worker(&self, token: &str) -> String {
        format!("{}:fleet:{token}", self.prefix)
    }

    /// The lease of the worker that exports the fleet-wide figures.
    pub fn fleet_reporter(&self) -> String {
        format!("{}:fleet-reporter", self.prefix)
    }

    /// A scratch key (the benchmark's probes), under the prefix so it is cleaned up with it.
    pub fn scratch(&self, name: &str) -> String {
        format!("{}:scratch:{name}", self.prefix)
    }

    /// `s:*`: every staged schedule (tests and the benchmark count them).
    pub fn staged_pattern(&self) -> String {
        format!("{}:s:*", self.prefix)
    }

    /// The dead-letter operations' keys of one queue (`lock`, …).
    pub fn dlq(&self, queue: &str, what: &str) -> String {
        format!("{}:dlq:{queue}:{what}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_round_trips_through_its_encoding() {
        let m = Member::new("acme", "s-1.a:b");
        assert_eq!(m.encode(), "acme/s-1.a:b");
        assert_eq!(Member::decode(&m.encode()), Some(m));
        assert_eq!(Member::decode("no-slash"), None);
    }

    #[test]
    fn every_key_starts_with_the_prefix() {
        let k = Keys::new("p");
        let m = Member::new("c", "s");
        for key in [
            k.staged(&m),
            k.due(),
            k.inflight(),
            k.owner(),
            k.copies(&m),
            k.copies_of("c", "a@b"),
            k.mailbox_lease("c", "a@b"),
            k.mailbox_rate("c", "a@b"),
            k.ledger(&m),
            k.delta_cursor("c", "a@b"),
            k.repair_due(),
            k.company("c"),
            k.companies(),
            k.users("c"),
            k.consent_state("h"),
            k.job("j"),
            k.dlq("q", "lock"),
        ] {
            assert!(key.starts_with("p:"), "{key}");
        }
        assert!(
            k.copies_of("c", "a@b")
                .starts_with(&k.copies_of_company("c"))
        );
    }
}
