//! `GET /users/{x}/calendarView/delta` (event: delta, v1.0): a round of pages over the events of
//! a time range, then a `@odata.deltaLink` whose next round returns only what changed since.
//!
//! What this emulator holds a client to (the conservative reading of Microsoft Learn's "event:
//! delta" and "Get incremental changes to events in a calendar view"):
//! - the first request names `startDateTime` and `endDateTime`; every later one is the
//!   `@odata.nextLink` (`$skiptoken`) or `@odata.deltaLink` (`$deltatoken`) **as given**: the
//!   tokens carry the range, and any other query option is refused (400), as are `$filter`,
//!   `$select`, `$expand`, `$orderby`, `$top`, `$skip`, `$search` and `$count` on the first
//!   request (delta supports none of them; in particular no extended properties);
//! - `Prefer: odata.maxpagesize` sets the page size (answered with `Preference-Applied`);
//! - a round after the first lists each event created or changed since the previous round: in
//!   the range, the whole event; outside it (moved away, or never in it), only
//!   `{"id", "@removed": {"reason": "deleted"}}`, like a deleted event, so a client must not read
//!   `@removed` as "deleted" without checking;
//! - an unknown or expired state token answers `410 Gone` with code `syncStateNotFound`; the
//!   client starts over with a new first request. [`crate::Emulator::expire_delta_tokens`] and the
//!   fault [`crate::FaultKind::SyncStateNotFound`] force it.
//!
//! Each round lists the changes up to the moment its first page was asked for (its snapshot);
//! later changes wait for the next round, so no page shifts under a client that is paging.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{Ctx, calendar::parse_view_time};
use crate::errors::{ErrorReply, Reply, wire};
use crate::events::{ExtMode, RenderOpts, StoredEvent};
use crate::state::MailboxKey;
use crate::{Emulator, util};

/// A mailbox calendar's change clock: when each event last changed, and which were removed.
#[derive(Debug, Default)]
pub(crate) struct ChangeLog {
    clock: u64,
    /// Event id → the clock of its last change (create or update).
    changed: HashMap<String, u64>,
    /// Removed events: id → the clock of the removal.
    removed: HashMap<String, u64>,
}

impl ChangeLog {
    /// An event was created or changed (its changeKey is new).
    pub fn changed(&mut self, id: &str) {
        self.clock += 1;
        self.removed.remove(id);
        self.changed.insert(id.to_string(), self.clock);
    }

    /// An event was deleted.
    pub fn removed(&mut self, ev: &StoredEvent) {
        self.clock += 1;
        self.changed.remove(&ev.id);
        self.removed.insert(ev.id.clone(), self.clock);
    }

    /// The ids changed or removed in `(since, upto]`, oldest change first.
    fn between(&self, since: u64, upto: u64) -> Vec<String> {
        let mut out: Vec<(u64, &String)> = self
            .changed
            .iter()
            .chain(self.removed.iter())
            .filter(|(_, c)| **c > since && **c <= upto)
            .map(|(id, c)| (*c, id))
            .collect();
        out.sort();
        out.into_iter().map(|(_, id)| id.clone()).collect()
    }
}

/// One round's state, named by an opaque token.
#[derive(Debug, Clone)]
pub(crate) struct DeltaState {
    mailbox: MailboxKey,
    start: Timestamp,
    end: Timestamp,
    /// The first round lists the whole range as it is; later ones, the changes since `since`.
    initial: bool,
    /// The clock the previous round ended at.
    since: u64,
    /// For a `$skiptoken`: the round being paged.
    page: Option<Page>,
}

/// A round being paged: its snapshot (the ids, and the clock it was taken at) and where the
/// next page starts.
#[derive(Debug, Clone)]
struct Page {
    ids: Arc<Vec<String>>,
    upto: u64,
    offset: usize,
}

/// Every state token handed out, until [`Emulator::expire_delta_tokens`] forgets them.
#[derive(Debug, Default)]
pub(crate) struct DeltaTokens {
    states: HashMap<String, DeltaState>,
}

const TOKEN_PARAMS: [&str; 2] = ["$deltatoken", "$skiptoken"];
const RANGE_PARAMS: [&str; 2] = ["startdatetime", "enddatetime"];

fn sync_state_not_found() -> ErrorReply {
    ErrorReply::new(
        410,
        wire::SYNC_STATE_NOT_FOUND_CODE,
        wire::SYNC_STATE_NOT_FOUND,
    )
}

/// The state a request continues, or a new first round.
fn parse_request(
    pairs: &[(String, String)],
    tokens: &DeltaTokens,
    mailbox: &MailboxKey,
) -> Result<DeltaState, ErrorReply> {
    let mut token = None;
    let (mut start, mut end) = (None, None);
    for (k, v) in pairs {
        let key = k.to_ascii_lowercase();
        if TOKEN_PARAMS.contains(&key.as_str()) {
            token = Some(v.as_str());
        } else if key == RANGE_PARAMS[0] {
            start = Some(v.as_str());
        } else if key == RANGE_PARAMS[1] {
            end = Some(v.as_str());
        } else {
            return Err(ErrorReply::bad_request(format!(
                "The query option '{k}' is not supported by the delta function on calendarView; only startDateTime and endDateTime (first request) or the state token of a nextLink or deltaLink are."
            )));
        }
    }
    if let Some(token) = token {
        if start.is_some() || end.is_some() {
            return Err(ErrorReply::bad_request(
                "A delta request with a state token must not repeat startDateTime or endDateTime: the token carries them. Use the nextLink or deltaLink as given.",
            ));
        }
        return match tokens.states.get(token) {
            Some(st) if &st.mailbox == mailbox => Ok(st.clone()),
            _ => Err(sync_state_not_found()),
        };
    }
    let (Some(s), Some(e)) = (start, end) else {
        return Err(ErrorReply::new(
            400,
            wire::CALENDAR_VIEW_WINDOW_CODE,
            wire::CALENDAR_VIEW_WINDOW,
        ));
    };
    Ok(DeltaState {
        mailbox: mailbox.clone(),
        start: parse_view_time("StartDateTime", s)?,
        end: parse_view_time("EndDateTime", e)?,
        initial: true,
        since: 0,
        page: None,
    })
}

fn in_range(e: &StoredEvent, from: Timestamp, to: Timestamp) -> bool {
    let (s, en) = (e.start.instant, e.end.instant);
    (s < to && en > from) || (s == en && s >= from && s < to)
}

fn removed_item(id: &str) -> Value {
    json!({"@odata.type": "#microsoft.graph.event", "id": id, "@removed": {"reason": "deleted"}})
}

impl Emulator {
    /// One page of a delta round (see the module's contract).
    pub(super) fn calendar_view_delta(&self, ctx: &Ctx) -> Result<Reply, ErrorReply> {
        let pairs = util::query_pairs(ctx.call.query.as_deref());
        let key = ctx.user.mailbox_key();
        let state = {
            let tokens = self.inner.delta_tokens.lock().expect("delta tokens");
            parse_request(&pairs, &tokens, &key)?
        };
        let page_size = ctx
            .prefer
            .max_page_size
            .unwrap_or(ctx.settings.default_page_size)
            .clamp(1, ctx.settings.max_page_size);
        let opts = RenderOpts {
            tz: ctx.prefer.tz,
            text_body: ctx.prefer.text_body,
            ext: ExtMode::None,
            select: None,
            context: None,
        };
        let store = self.inner.store.lock().expect("store");
        let mbox = store.get(&key);
        let page = match &state.page {
            Some(p) => p.clone(),
            None => {
                let upto = mbox.map_or(0, |m| m.changes.clock);
                let ids = mbox.map_or_else(Vec::new, |m| m.changes.between(state.since, upto));
                Page {
                    ids: Arc::new(ids),
                    upto,
                    offset: 0,
                }
            }
        };
        let first_round = state.initial;
        let mut value = Vec::new();
        for id in page.ids.iter().skip(page.offset).take(page_size) {
            match mbox.and_then(|m| m.events.get(id)) {
                Some(ev) if in_range(ev, state.start, state.end) => value.push(ev.render(&opts)),
                // The first round lists the range as it is; nothing was known before it.
                _ if first_round => {}
                _ => value.push(removed_item(id)),
            }
        }
        drop(store);
        let next_offset = page.offset + page_size;
        let more = next_offset < page.ids.len();
        let (link_name, param) = if more {
            ("@odata.nextLink", "$skiptoken")
        } else {
            ("@odata.deltaLink", "$deltatoken")
        };
        let next = DeltaState {
            initial: more && state.initial,
            since: if more { state.since } else { page.upto },
            page: more.then_some(Page {
                offset: next_offset,
                ..page
            }),
            ..state
        };
        let token = util::b64url(&util::random_bytes::<24>());
        self.inner
            .delta_tokens
            .lock()
            .expect("delta tokens")
            .states
            .insert(token.clone(), next);
        let mut body = Map::new();
        body.insert(
            "@odata.context".into(),
            json!(format!("{}/$metadata#Collection(event)", ctx.call.base())),
        );
        body.insert("value".into(), Value::Array(value));
        body.insert(
            link_name.into(),
            json!(format!(
                "{}{}?{}",
                ctx.call.origin,
                ctx.call.path,
                util::build_query(&[(param.to_string(), token)])
            )),
        );
        let mut reply = Reply::json(200, Value::Object(body));
        if ctx.prefer.max_page_size.is_some() {
            reply = reply.header(
                "Preference-Applied",
                format!("odata.maxpagesize={page_size}"),
            );
        }
        Ok(reply)
    }
}

impl crate::state::Inner {
    /// Forgets every delta state token of a mailbox: its next delta request answers 410.
    pub fn expire_delta_tokens(&self, mailbox: &MailboxKey) -> usize {
        let mut tokens = self.delta_tokens.lock().expect("delta tokens");
        let before = tokens.states.len();
        tokens.states.retain(|_, st| &st.mailbox != mailbox);
        before - tokens.states.len()
    }
}
