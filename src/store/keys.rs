//! Every Redis key this service writes, built in one place. All start with `{prefix}:`
//! (`redis.key_prefix`), so deployments and tests can share a Redis.
//!
//! | key | type | holds | owner |
//! |---|---|---|---|
//! | `s:{company}/{schedule}` | hash | the newest revision the flush consolidated: `rev`, `event`, `kind`, `born`, `staged_at`, `replay` (and, from versions before December 2026, events appended as `e:{rev}`) | `window` |
//! | `pending:{…:s:{company}/{schedule}}` | string | the events ingest appended since the last consolidation, one record each | `window` |
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
//! | `company:{company}`, `companies`, `users:{company}` | string, set, hash | the tenant directory of versions before PostgreSQL, read once by `db import-redis-directory` | `tenants::redis_directory` |
//! | `consent-state:{sha256}` | string | a pending admin consent | `admin::consent` |
//! | `job:{id}` | string | a long admin job's record | `admin::jobs` |
//! | `dlq:{queue}:{what}` | string | the dead-letter operations' lock and marks | `deadletter` |
//! | `fleet`, `fleet:{token}`, `fleet-reporter` | sorted set, string, string | what each worker holds; who exports the fleet-wide figures | `fleet` |
//!
//! `due`, `inflight` and `owner` are one set of three per shard (`redis.shards`; a schedule's
//! shard is a hash of its member): `due:{shard-…}`, `inflight:{shard-…}`, `owner:{shard-…}`, the
//! three of a shard in one hash slot (the claim scripts touch them together) and the shards'
//! slots spread evenly over the 16,384 (so over a cluster's primaries). One shard outside a
//! cluster keeps the plain names `due`, `inflight`, `owner`. Every other key is touched alone
//! (each script and command names one key, pipelines are not transactions), so it needs no
//! hash tag; which is why a schedule's `s:`, `m:` and `ledger:` keys keep their names.
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
    /// The hash tag of each shard's `due`, `inflight` and `owner`; empty: one shard, plain names.
    shard_tags: Vec<String>,
}

/// The hash slot of `key` (Redis Cluster: CRC16/XMODEM of the key, or of its `{tag}`, mod 16,384).
pub fn hash_slot(key: &str) -> u16 {
    let b = key.as_bytes();
    let tagged = b.iter().position(|c| *c == b'{').and_then(|open| {
        let close = b[open + 1..].iter().position(|c| *c == b'}')?;
        (close > 0).then(|| &b[open + 1..open + 1 + close])
    });
    let mut crc: u16 = 0;
    for byte in tagged.unwrap_or(b) {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
            shard_tags: Vec::new(),
        }
    }

    /// Keys with the due set and the claims over `shards` shards, each in a hash slot of its
    /// own, spread evenly: shard `i` of `n` lies in the `i`-th `n`-th of the slots. `tagged`:
    /// give even one shard a hash tag (a cluster).
    pub fn sharded(prefix: &str, shards: u32, tagged: bool) -> Keys {
        let n = shards.max(1);
        if n == 1 && !tagged {
            return Keys::new(prefix);
        }
        let shard_tags = (0..n)
            .map(|i| {
                let (lo, hi) = (i * 16384 / n, (i + 1) * 16384 / n);
                (0u32..)
                    .map(|k| format!("shard-{i}-{k}"))
                    .find(|t| (lo..hi).contains(&u32::from(hash_slot(t))))
                    .expect("some tag lands in every range")
            })
            .collect();
        Keys {
            prefix: prefix.to_string(),
            shard_tags,
        }
    }

    /// How many shards the due set and the claims are spread over.
    pub fn shards(&self) -> u32 {
        self.shard_tags.len().max(1) as u32
    }

    /// The shard of a schedule (FNV-1a of its member).
    pub fn shard_of(&self, m: &Member) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in m.encode().bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h % self.shards()
    }

    fn sharded_name(&self, name: &str, shard: u32) -> String {
        match self.shard_tags.get(shard as usize) {
            Some(tag) => format!("{}:{name}:{{{tag}}}", self.prefix),
            None => format!("{}:{name}", self.prefix),
        }
    }

    /// A shard's due set.
    pub fn due_in(&self, shard: u32) -> String {
        self.sharded_name("due", shard)
    }

    /// A shard's claims by lease expiry.
    pub fn inflight_in(&self, shard: u32) -> String {
        self.sharded_name("inflight", shard)
    }

    /// A shard's claim owners.
    pub fn owner_in(&self, shard: u32) -> String {
        self.sharded_name("owner", shard)
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

    /// The events ingest appended for a schedule since the flush last consolidated it. Its hash
    /// tag is the whole name of the schedule's [`Keys::staged`] key, which has no braces: both
    /// are in one hash slot, so the consolidation's script may touch the two.
    pub fn pending(&self, m: &Member) -> String {
        format!("{}:pending:{{{}}}", self.prefix, self.staged(m))
    }

    /// The due set of shard 0 (of the only shard, unless `redis.shards` says otherwise).
    pub fn due(&self) -> String {
        self.due_in(0)
    }

    /// The claims of shard 0 (see [`Keys::due`]).
    pub fn inflight(&self) -> String {
        self.inflight_in(0)
    }

    /// The claim owners of shard 0 (see [`Keys::due`]).
    pub fn owner(&self) -> String {
        self.owner_in(0)
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
            k.pending(&m),
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

    #[test]
    fn the_hash_slot_is_redis_clusters() {
        // The values `CLUSTER KEYSLOT` gives.
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("123456789"), 12739);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        assert_eq!(hash_slot("foo{}{bar}"), hash_slot("foo{}{bar}"));
        assert_eq!(hash_slot("{}x"), hash_slot("{}x"));
    }

    #[test]
    fn a_schedules_pending_events_share_the_hash_slot_of_its_staged_state() {
        for prefix in ["outlook-sync", "p", "tenant-a.sync"] {
            let k = Keys::new(prefix);
            for s in ["s-1", "S_2.a:b", "x"] {
                let m = Member::new("acme-co", s);
                assert_eq!(
                    hash_slot(&k.pending(&m)),
                    hash_slot(&k.staged(&m)),
                    "{}",
                    k.pending(&m)
                );
            }
        }
    }

    #[test]
    fn each_shards_due_inflight_and_owner_share_a_slot_and_the_shards_spread_over_the_slots() {
        let k = Keys::sharded("p", 3, true);
        assert_eq!(k.shards(), 3);
        for i in 0..3 {
            let slot = hash_slot(&k.due_in(i));
            assert_eq!(slot, hash_slot(&k.inflight_in(i)));
            assert_eq!(slot, hash_slot(&k.owner_in(i)));
            let (lo, hi) = (i * 16384 / 3, (i + 1) * 16384 / 3);
            assert!(
                (lo..hi).contains(&u32::from(slot)),
                "shard {i}: slot {slot}"
            );
        }
        // Schedules spread over the shards.
        let mut seen = [0; 3];
        for s in 0..300 {
            seen[k.shard_of(&Member::new("c", format!("s-{s}"))) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 60), "{seen:?}");
        // One shard outside a cluster keeps the plain names.
        assert_eq!(Keys::sharded("p", 1, false).due(), "p:due");
        assert!(
            Keys::sharded("p", 1, true)
                .due()
                .starts_with("p:due:{shard-0-")
        );
    }
}
