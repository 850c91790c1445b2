//! The product rules, per mailbox: who gets a copy of a change, and what to write there. Pure.
//!
//! - a deleted schedule: every recorded copy is deleted, and the copies of the participants its
//!   last state names (if it carries one) are looked for;
//! - otherwise each linked participant (owner included) whose link predates the change gets a
//!   create-or-update; a participant who is no longer on the schedule loses their copy; a user
//!   who was unlinked is forgotten (their copies are removed by the unlink itself);
//! - users whose mailbox failed verification (auth_failed) are skipped until re-verified.

use std::collections::{BTreeMap, HashMap};

use crate::event::{Schedule, ScheduleEvent};
use crate::store::CopyRecord;
use crate::tenants::{LinkedUser, UserStatus};

/// What to do with a schedule's copy in one mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// Create or update the copy to the staged revision.
    Upsert,
    /// Delete the copy (a deleted schedule, or a participant removed).
    Delete,
}

/// One change to one mailbox, as planned: the mailbox owner's cyzen user and the kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub user: String,
    pub kind: OpKind,
}

/// Why a participant gets no copy (a ledger entry and a count, never an error).
pub type Skip<'a> = &'a mut dyn FnMut(&'static str, &str);

/// Every reason [`targets`] skips a participant for.
pub const SKIP_REASONS: [&str; 3] = [
    "participant_not_linked",
    "change_before_link",
    "user_auth_failed",
];

/// The changes per mailbox (lowercase) for a schedule's staged event, given its recorded copies
/// and the company's linked users. `skip(reason, user)` hears of each participant left out.
pub fn plan(
    ev: &ScheduleEvent,
    copies: &BTreeMap<String, CopyRecord>,
    users: &HashMap<String, LinkedUser>,
    skip: Skip<'_>,
) -> Vec<(String, Op)> {
    let op = |user: &str, kind| Op {
        user: user.to_string(),
        kind,
    };
    let mut out: Vec<(String, Op)> = Vec::new();
    if ev.is_delete() {
        for (mailbox, copy) in copies {
            out.push((mailbox.clone(), op(&copy.user, OpKind::Delete)));
        }
        // A copy the mapping does not know of (Redis lost it) can only be looked for in the
        // mailboxes the delete's last state names.
        if let Some(last) = &ev.schedule {
            for (mailbox, user) in targets(ev, last, users, skip) {
                if !copies.contains_key(&mailbox) {
                    out.push((mailbox, op(&user, OpKind::Delete)));
                }
            }
        }
        return out;
    }
    let Some(schedule) = ev.schedule.as_ref() else {
        return out;
    };
    let targets = targets(ev, schedule, users, skip);
    for (mailbox, user) in &targets {
        out.push((mailbox.clone(), op(user, OpKind::Upsert)));
    }
    for (mailbox, copy) in copies {
        if !targets.contains_key(mailbox) && users.contains_key(&copy.user) {
            out.push((mailbox.clone(), op(&copy.user, OpKind::Delete)));
        }
    }
    out
}

/// Linked participants who get a copy: mailbox (lowercase) → user id.
pub fn targets(
    ev: &ScheduleEvent,
    schedule: &Schedule,
    users: &HashMap<String, LinkedUser>,
    skip: Skip<'_>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in schedule.participants() {
        let Some(u) = users.get(p) else {
            skip("participant_not_linked", p);
            continue;
        };
        if ev.occurred_at < u.linked_at {
            skip("change_before_link", p);
            continue;
        }
        if u.status == UserStatus::AuthFailed {
            skip("user_auth_failed", p);
            continue;
        }
        out.insert(u.mailbox_key(), u.user_id.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event;

    fn user(id: &str, mailbox: &str, linked_at: &str) -> (String, LinkedUser) {
        (
            id.to_string(),
            LinkedUser {
                user_id: id.to_string(),
                mailbox: mailbox.to_string(),
                linked_at: linked_at.parse().unwrap(),
                status: UserStatus::Authenticated,
                reason: None,
                last_sync_at: None,
                last_error: None,
            },
        )
    }

    fn event(participants: &[&str], deleted: bool) -> ScheduleEvent {
        let body = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/schemas/examples/valid/created-timed-tokyo.json"
        ))
        .unwrap();
        let mut ev = event::decode(&body).unwrap();
        let s = ev.schedule.as_mut().unwrap();
        s.owner_user_id = participants[0].to_string();
        s.participant_user_ids = participants.iter().map(|p| p.to_string()).collect();
        if deleted {
            ev.event_type = event::EventType::Deleted;
            ev.schedule = None;
        }
        ev
    }

    fn check(
        ev: ScheduleEvent,
        copies: &[(&str, &str)],
        users: &[(String, LinkedUser)],
        expected: &[(&str, &str)],
    ) {
        let copies: BTreeMap<String, CopyRecord> = copies
            .iter()
            .map(|(mb, user)| {
                (
                    mb.to_string(),
                    CopyRecord {
                        user: user.to_string(),
                        event_id: Some("E".into()),
                        rev: 1,
                        tx: None,
                        ..CopyRecord::default()
                    },
                )
            })
            .collect();
        let users: HashMap<String, LinkedUser> = users.iter().cloned().collect();
        let got: Vec<(String, &str)> = plan(&ev, &copies, &users, &mut |_, _| {})
            .into_iter()
            .map(|(mb, op)| {
                let kind = match op.kind {
                    OpKind::Upsert => "upsert",
                    OpKind::Delete => "delete",
                };
                (mb, kind)
            })
            .collect();
        let want: Vec<(String, &str)> = expected.iter().map(|(m, k)| (m.to_string(), *k)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn every_skip_reason_is_a_metric_label_from_the_start() {
        let known = crate::metrics::known::skip_reasons();
        for reason in SKIP_REASONS {
            assert!(known.contains(&reason), "{reason} is not pre-registered");
        }
        // And each one the rules can produce is listed here.
        let mut seen = Vec::new();
        let users = [
            user("u-late", "l@x.com", "2030-01-01T00:00:00Z"),
            (
                "u-failed".to_string(),
                LinkedUser {
                    status: UserStatus::AuthFailed,
                    ..user("u-failed", "f@x.com", "2026-01-01T00:00:00Z").1
                },
            ),
        ];
        let users: HashMap<String, LinkedUser> = users.into_iter().collect();
        let ev = event(&["u-none", "u-late", "u-failed"], false);
        let s = ev.schedule.as_ref().unwrap();
        targets(&ev, s, &users, &mut |reason, _| seen.push(reason));
        seen.sort();
        let mut want = SKIP_REASONS.to_vec();
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn each_linked_participant_gets_a_copy_and_unlinked_ones_get_nothing() {
        let users = [
            user("u-1", "A@x.com", "2026-01-01T00:00:00Z"),
            user("u-2", "b@x.com", "2026-01-01T00:00:00Z"),
        ];
        check(
            event(&["u-1", "u-2", "u-3"], false),
            &[],
            &users,
            &[("a@x.com", "upsert"), ("b@x.com", "upsert")],
        );
    }

    #[test]
    fn a_removed_participant_loses_the_copy() {
        let users = [
            user("u-1", "a@x.com", "2026-01-01T00:00:00Z"),
            user("u-2", "b@x.com", "2026-01-01T00:00:00Z"),
        ];
        check(
            event(&["u-1"], false),
            &[("a@x.com", "u-1"), ("b@x.com", "u-2")],
            &users,
            &[("a@x.com", "upsert"), ("b@x.com", "delete")],
        );
    }

    #[test]
    fn a_change_from_before_the_link_is_skipped() {
        let users = [user("u-1", "a@x.com", "2030-01-01T00:00:00Z")];
        check(event(&["u-1"], false), &[], &users, &[]);
    }

    #[test]
    fn a_deleted_schedule_deletes_every_copy_and_nothing_else() {
        let users = [user("u-1", "a@x.com", "2026-01-01T00:00:00Z")];
        check(
            event(&["u-1"], true),
            &[("a@x.com", "u-1"), ("c@x.com", "u-9")],
            &users,
            &[("a@x.com", "delete"), ("c@x.com", "delete")],
        );
        check(event(&["u-1"], true), &[], &users, &[]);
    }

    #[test]
    fn a_delete_with_its_last_state_also_looks_in_the_mailboxes_it_names() {
        let users = [
            user("u-1", "a@x.com", "2026-01-01T00:00:00Z"),
            user("u-2", "b@x.com", "2026-01-01T00:00:00Z"),
        ];
        let mut ev = event(&["u-1", "u-2"], false);
        ev.event_type = event::EventType::Deleted;
        check(
            ev,
            &[("a@x.com", "u-1")],
            &users,
            &[("a@x.com", "delete"), ("b@x.com", "delete")],
        );
    }
}
