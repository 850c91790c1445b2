//! What a delta round means for our copies, pure: for each listed item that is one of our copies
//! (by the mapping: its event id), whether it is our own last write, a copy we had no changeKey
//! for yet (adopted as it is), or a copy that drifted in Outlook (deleted, or edited).
//!
//! Only the mapping names our copies here: delta lists no extended properties, so an item's tag
//! cannot be read from it (ARCHITECTURE.md, "Delta"); a copy whose mapping Redis lost is found
//! again by the flush's tag lookup on its schedule's next change.

use std::collections::HashMap;

use serde_json::Value;

use crate::store::{CopyRecord, Drift, Member};

/// One item of a delta page, as the repair reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub id: String,
    pub change_key: Option<String>,
    /// Listed `@removed`: deleted, or no longer in the range read.
    pub removed: bool,
}

impl Item {
    /// An item of a page's `value`; `None` without an id.
    pub fn read(v: &Value) -> Option<Item> {
        Some(Item {
            id: v.get("id")?.as_str()?.to_string(),
            change_key: v
                .get("changeKey")
                .and_then(Value::as_str)
                .map(str::to_string),
            removed: v.get("@removed").is_some(),
        })
    }
}

/// What one of our copies listed in a round needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    /// The copy predates changeKey recording: its current changeKey becomes the one we know.
    Adopt { member: Member, change_key: String },
    /// The copy was changed in Outlook.
    Drifted { member: Member, kind: Drift },
}

/// Our copies in one mailbox, by event id: the schedule and its record.
pub type Ours = HashMap<String, (Member, CopyRecord)>;

/// The findings of a round's items (the last listing of an id counts), in the order listed.
pub fn decide(items: &[Item], ours: &Ours) -> Vec<Finding> {
    let mut last: HashMap<&str, &Item> = HashMap::new();
    let mut order = Vec::new();
    for item in items {
        if last.insert(item.id.as_str(), item).is_none() {
            order.push(item.id.as_str());
        }
    }
    order
        .into_iter()
        .filter_map(|id| {
            let item = last[id];
            let (member, record) = ours.get(id)?;
            if record.drift.is_some() {
                return None; // already waiting for the flush to restore it
            }
            let member = member.clone();
            if item.removed {
                return Some(Finding::Drifted {
                    member,
                    kind: Drift::Deleted,
                });
            }
            match (&record.ck, &item.change_key) {
                (Some(ours), Some(theirs)) if ours == theirs => None, // our own write
                (None, Some(theirs)) => Some(Finding::Adopt {
                    member,
                    change_key: theirs.clone(),
                }),
                _ => Some(Finding::Drifted {
                    member,
                    kind: Drift::Edited,
                }),
            }
        })
        .collect()
}

/// After a full round (no cursor, a new range, or a stale cursor): our copies it did not list
/// although their schedule falls in the range (`in_range`) are gone from the range (deleted, or
/// moved out of it in Outlook).
pub fn absent(items: &[Item], ours: &Ours, in_range: impl Fn(&Member) -> bool) -> Vec<Finding> {
    let listed: std::collections::HashSet<&str> = items.iter().map(|i| i.id.as_str()).collect();
    let mut out: Vec<Finding> = ours
        .iter()
        .filter(|(id, (member, record))| {
            !listed.contains(id.as_str()) && record.drift.is_none() && in_range(member)
        })
        .map(|(_, (member, _))| Finding::Drifted {
            member: member.clone(),
            kind: Drift::Deleted,
        })
        .collect();
    out.sort_by(|a, b| format!("{a:?}").cmp(&format!("{b:?}")));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ours(entries: &[(&str, &str, Option<&str>, Option<Drift>)]) -> Ours {
        entries
            .iter()
            .map(|(event, schedule, ck, drift)| {
                let record = CopyRecord {
                    user: "u-1".into(),
                    event_id: Some(event.to_string()),
                    rev: 1,
                    ck: ck.map(str::to_string),
                    drift: *drift,
                    ..CopyRecord::default()
                };
                (event.to_string(), (Member::new("acme", *schedule), record))
            })
            .collect()
    }

    fn item(id: &str, ck: &str) -> Item {
        Item::read(&json!({"id": id, "changeKey": ck, "subject": "x"})).unwrap()
    }

    fn removed(id: &str) -> Item {
        Item::read(&json!({"id": id, "@removed": {"reason": "deleted"}})).unwrap()
    }

    #[test]
    fn our_own_last_write_is_never_taken_for_drift() {
        let ours = ours(&[("E1", "s-1", Some("CK1"), None)]);
        assert_eq!(decide(&[item("E1", "CK1")], &ours), vec![]);
    }

    #[test]
    fn another_change_key_is_an_edit_and_a_removal_is_a_deletion() {
        let ours = ours(&[
            ("E1", "s-1", Some("CK1"), None),
            ("E2", "s-2", Some("CK2"), None),
        ]);
        assert_eq!(
            decide(&[item("E1", "CK-outlook"), removed("E2")], &ours),
            vec![
                Finding::Drifted {
                    member: Member::new("acme", "s-1"),
                    kind: Drift::Edited
                },
                Finding::Drifted {
                    member: Member::new("acme", "s-2"),
                    kind: Drift::Deleted
                },
            ]
        );
    }

    #[test]
    fn events_that_are_not_our_copies_are_left_alone() {
        let ours = ours(&[("E1", "s-1", Some("CK1"), None)]);
        assert_eq!(
            decide(&[item("PERSONAL", "CKx"), removed("OTHER")], &ours),
            vec![]
        );
    }

    #[test]
    fn a_copy_without_a_recorded_change_key_is_adopted_not_rewritten() {
        let ours = ours(&[("E1", "s-1", None, None)]);
        assert_eq!(
            decide(&[item("E1", "CK-now")], &ours),
            vec![Finding::Adopt {
                member: Member::new("acme", "s-1"),
                change_key: "CK-now".into()
            }]
        );
    }

    #[test]
    fn a_copy_already_waiting_to_be_restored_is_not_found_twice() {
        let ours = ours(&[("E1", "s-1", Some("CK1"), Some(Drift::Edited))]);
        assert_eq!(decide(&[item("E1", "CK-outlook")], &ours), vec![]);
    }

    #[test]
    fn a_full_round_that_does_not_list_a_copy_in_its_range_finds_it_deleted() {
        let ours = ours(&[
            ("E1", "listed", Some("CK1"), None),
            ("E2", "gone", Some("CK2"), None),
            ("E3", "long-past", Some("CK3"), None),
        ]);
        let in_range = |m: &Member| m.schedule_id != "long-past";
        assert_eq!(
            absent(&[item("E1", "CK1")], &ours, in_range),
            vec![Finding::Drifted {
                member: Member::new("acme", "gone"),
                kind: Drift::Deleted
            }]
        );
    }

    #[test]
    fn the_last_listing_of_an_event_in_a_round_counts() {
        let ours = ours(&[("E1", "s-1", Some("CK2"), None)]);
        // Listed edited on one page, then as our own restore on a later one.
        assert_eq!(
            decide(&[item("E1", "CK-outlook"), item("E1", "CK2")], &ours),
            vec![]
        );
    }
}
