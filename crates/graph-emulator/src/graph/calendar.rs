//! One mailbox's calendar: the calendar and mailboxSettings resources, and the event operations
//! (list, `calendarView`, create with `transactionId`, get, update and delete with `If-Match`).

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::{Ctx, json_body, with_prefer};
use crate::errors::{ErrorReply, Reply, wire};
use crate::events::{self, ExtMode, RenderOpts, StoredEvent};
use crate::odata::{self, OrderBy};
use crate::state::Counters;
use crate::util;
use crate::{Emulator, TransactionIdMode};

/// `startDateTime`/`endDateTime`: ISO 8601 with offset, or without (then UTC).
pub(super) fn parse_view_time(name: &str, raw: &str) -> Result<Timestamp, ErrorReply> {
    if let Ok(ts) = raw.trim().parse::<Timestamp>() {
        return Ok(ts);
    }
    events::parse_local(raw)
        .and_then(|dt| jiff::tz::TimeZone::UTC.to_timestamp(dt).ok())
        .ok_or_else(|| {
            ErrorReply::new(
                400,
                wire::CALENDAR_VIEW_WINDOW_CODE,
                format!(
                    "The value '{raw}' of parameter '{name}' is invalid (ISO 8601 expected; encode '+' in offsets as %2B)."
                ),
            )
        })
}

impl Emulator {
    pub(super) fn list_events(&self, ctx: &Ctx, calendar_view: bool) -> Result<Reply, ErrorReply> {
        let pairs = util::query_pairs(ctx.call.query.as_deref());
        let q = odata::parse_event_query(&pairs)?;
        let window = if calendar_view {
            let (Some(s), Some(e)) = (&q.start_date_time, &q.end_date_time) else {
                return Err(ErrorReply::new(
                    400,
                    wire::CALENDAR_VIEW_WINDOW_CODE,
                    wire::CALENDAR_VIEW_WINDOW,
                ));
            };
            Some((
                parse_view_time("StartDateTime", s)?,
                parse_view_time("EndDateTime", e)?,
            ))
        } else {
            None
        };
        let settings = ctx.settings;
        let page_size = q
            .top
            .or(ctx.prefer.max_page_size)
            .unwrap_or(settings.default_page_size)
            .min(settings.max_page_size);
        let opts = ctx.render_opts(&q, None);
        let store = self.inner.store.lock().expect("store");
        let mut matched: Vec<&StoredEvent> = store
            .get(&ctx.user.mailbox_key())
            .map(|m| m.events.values().collect())
            .unwrap_or_default();
        if let Some(f) = &q.filter {
            matched.retain(|e| f.matches(e));
        }
        if let Some((from, to)) = window {
            matched.retain(|e| {
                let (s, en) = (e.start.instant, e.end.instant);
                (s < to && en > from) || (s == en && s >= from && s < to)
            });
        }
        sort_events(&mut matched, q.order);
        let total = matched.len();
        let value: Vec<Value> = matched
            .iter()
            .skip(q.skip)
            .take(page_size)
            .map(|e| e.render(&opts))
            .collect();
        drop(store);
        let what = if calendar_view {
            "calendarView"
        } else {
            "events"
        };
        let mut body = Map::new();
        body.insert(
            "@odata.context".into(),
            json!(format!(
                "{}/$metadata#users('{}')/{}",
                ctx.call.base(),
                ctx.seg,
                what
            )),
        );
        if q.count {
            body.insert("@odata.count".into(), json!(total));
        }
        body.insert("value".into(), Value::Array(value));
        if page_size > 0 && q.skip + page_size < total {
            let mut next_pairs: Vec<(String, String)> = pairs
                .iter()
                .filter(|(k, _)| !k.eq_ignore_ascii_case("$skip"))
                .cloned()
                .collect();
            next_pairs.push(("$skip".into(), (q.skip + page_size).to_string()));
            if q.top.is_none() {
                next_pairs.push(("$top".into(), page_size.to_string()));
            }
            body.insert(
                "@odata.nextLink".into(),
                json!(format!(
                    "{}{}?{}",
                    ctx.call.origin,
                    ctx.call.path,
                    util::build_query(&next_pairs)
                )),
            );
        }
        Ok(with_prefer(
            Reply::json(200, Value::Object(body)),
            ctx.prefer,
            true,
        ))
    }

    pub(super) fn create_event(&self, ctx: &Ctx) -> Result<Reply, ErrorReply> {
        let input = json_body(ctx.call)?;
        let draft = events::parse_input(&input, ctx.settings)?;
        let mut store = self.inner.store.lock().expect("store");
        let mbox = store.entry(ctx.user.mailbox_key()).or_default();
        if let Some(tx) = &draft.transaction_id {
            let mode = ctx.settings.transaction_id_mode;
            let existing = mbox
                .transactions
                .get(&tx.to_lowercase())
                .and_then(|id| mbox.events.get(id));
            match (mode, existing) {
                (TransactionIdMode::ReturnExisting, Some(ev)) => {
                    Counters::inc(&self.inner.counters.create_dedupes);
                    return Ok(ctx.written(ev, 201));
                }
                (TransactionIdMode::Conflict409, Some(_)) => {
                    return Err(ErrorReply::new(
                        409,
                        wire::DUPLICATE_TRANSACTION_CODE,
                        wire::DUPLICATE_TRANSACTION,
                    ));
                }
                _ => {}
            }
        }
        let seq = mbox.next_seq + 1;
        let ev = StoredEvent::create(draft, ctx.user, seq, ctx.settings)?;
        mbox.next_seq = seq;
        if let Some(tx) = &ev.transaction_id {
            mbox.transactions.insert(tx.to_lowercase(), ev.id.clone());
        }
        let reply = ctx.written(&ev, 201);
        mbox.changes.changed(&ev.id);
        mbox.events.insert(ev.id.clone(), ev);
        Counters::inc(&self.inner.counters.events_created);
        Ok(reply)
    }

    pub(super) fn get_event(&self, ctx: &Ctx, id: &str) -> Result<Reply, ErrorReply> {
        let pairs = util::query_pairs(ctx.call.query.as_deref());
        let q = odata::parse_event_query(&pairs)?;
        let context = format!(
            "{}/$metadata#users('{}')/events/$entity",
            ctx.call.base(),
            ctx.seg
        );
        let opts = ctx.render_opts(&q, Some(context));
        let store = self.inner.store.lock().expect("store");
        let ev = store
            .get(&ctx.user.mailbox_key())
            .and_then(|m| m.events.get(id))
            .ok_or_else(ErrorReply::item_not_found)?;
        let reply = Reply::json(200, ev.render(&opts)).header("ETag", ev.etag());
        Ok(with_prefer(reply, ctx.prefer, true))
    }

    fn check_if_match(&self, ctx: &Ctx, ev: &StoredEvent) -> Result<(), ErrorReply> {
        let status = ctx.settings.if_match_mismatch_status;
        if status == 0 {
            return Ok(());
        }
        match ctx.call.headers.get("if-match") {
            Some(tag) if !ev.matches_etag(tag) => {
                Err(ErrorReply::new(status, wire::CONFLICT_CODE, wire::CONFLICT))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn patch_event(&self, ctx: &Ctx, id: &str) -> Result<Reply, ErrorReply> {
        let input = json_body(ctx.call)?;
        let draft = events::parse_input(&input, ctx.settings)?;
        let mut store = self.inner.store.lock().expect("store");
        let mbox = store
            .get_mut(&ctx.user.mailbox_key())
            .ok_or_else(ErrorReply::item_not_found)?;
        let ev = mbox
            .events
            .get_mut(id)
            .ok_or_else(ErrorReply::item_not_found)?;
        self.check_if_match(ctx, ev)?;
        let mut updated = ev.clone();
        updated.patch(draft)?;
        let reply = ctx.written(&updated, 200);
        *ev = updated;
        mbox.changes.changed(id);
        Counters::inc(&self.inner.counters.events_updated);
        Ok(reply)
    }

    pub(super) fn delete_event(&self, ctx: &Ctx, id: &str) -> Result<Reply, ErrorReply> {
        let mut store = self.inner.store.lock().expect("store");
        let mbox = store
            .get_mut(&ctx.user.mailbox_key())
            .ok_or_else(ErrorReply::item_not_found)?;
        let ev = mbox.events.get(id).ok_or_else(ErrorReply::item_not_found)?;
        self.check_if_match(ctx, ev)?;
        let ev = mbox.events.remove(id).expect("present");
        mbox.changes.removed(&ev);
        if let Some(tx) = &ev.transaction_id
            && mbox.transactions.get(&tx.to_lowercase()) == Some(&ev.id)
        {
            mbox.transactions.remove(&tx.to_lowercase());
        }
        Counters::inc(&self.inner.counters.events_deleted);
        Ok(Reply::empty(204))
    }
}

fn sort_events(list: &mut [&StoredEvent], order: Option<(OrderBy, bool)>) {
    let (key, desc) = order.unwrap_or((OrderBy::Start, false));
    list.sort_by(|a, b| {
        let ord = match key {
            OrderBy::Start => a.start.instant.cmp(&b.start.instant),
            OrderBy::End => a.end.instant.cmp(&b.end.instant),
            OrderBy::Created => a.created.cmp(&b.created),
            OrderBy::Modified => a.modified.cmp(&b.modified),
            OrderBy::Subject => a.subject.cmp(&b.subject),
        }
        .then(a.seq.cmp(&b.seq));
        if desc { ord.reverse() } else { ord }
    });
}

impl Ctx<'_> {
    /// The POST/PATCH response: full event without extended properties (GRAPH.md §2.6).
    fn written(&self, ev: &StoredEvent, status: u16) -> Reply {
        let base = self.call.base();
        let opts = RenderOpts {
            tz: self.prefer.tz,
            text_body: self.prefer.text_body,
            ext: ExtMode::None,
            select: None,
            context: Some(format!(
                "{base}/$metadata#users('{}')/events/$entity",
                self.seg
            )),
        };
        let mut reply = Reply::json(status, ev.render(&opts)).header("ETag", ev.etag());
        if status == 201 {
            reply = reply.header(
                "Location",
                format!(
                    "{base}/users('{}')/events('{}')",
                    self.user.id,
                    util::percent_encode(&ev.id)
                ),
            );
        }
        with_prefer(reply, self.prefer, true)
    }

    fn calendar_json(&self) -> Value {
        json!({
            "id": self.user.calendar_id(),
            "name": "Calendar",
            "color": "auto",
            "hexColor": "",
            "isDefaultCalendar": true,
            "changeKey": util::b64(self.user.id.as_bytes(), false),
            "canShare": true,
            "canViewPrivateItems": true,
            "canEdit": true,
            "allowedOnlineMeetingProviders": ["teamsForBusiness"],
            "defaultOnlineMeetingProvider": "teamsForBusiness",
            "isTallyingResponses": true,
            "isRemovable": false,
            "owner": {"name": self.user.display_name, "address": self.user.address()},
        })
    }

    pub(super) fn calendar(&self) -> Reply {
        let mut v = self.calendar_json();
        v["@odata.context"] = json!(format!(
            "{}/$metadata#users('{}')/calendar/$entity",
            self.call.base(),
            self.seg
        ));
        Reply::json(200, v)
    }

    pub(super) fn calendars(&self) -> Reply {
        Reply::json(
            200,
            json!({
                "@odata.context": format!("{}/$metadata#users('{}')/calendars", self.call.base(), self.seg),
                "value": [self.calendar_json()],
            }),
        )
    }

    pub(super) fn mailbox_settings(&self) -> Reply {
        let tz = &self.user.time_zone;
        Reply::json(
            200,
            json!({
                "@odata.context": format!("{}/$metadata#users('{}')/mailboxSettings", self.call.base(), self.seg),
                "archiveFolder": util::b64(format!("archive:{}", self.user.id).as_bytes(), false),
                "timeZone": tz,
                "delegateMeetingMessageDeliveryOptions": "sendToDelegateOnly",
                "dateFormat": "yyyy-MM-dd",
                "timeFormat": "HH:mm",
                "userPurpose": {"value": self.user.user_purpose},
                "automaticRepliesSetting": {
                    "status": "disabled",
                    "externalAudience": "all",
                    "internalReplyMessage": "",
                    "externalReplyMessage": "",
                    "scheduledStartDateTime": {"dateTime": "2020-01-01T00:00:00.0000000", "timeZone": "UTC"},
                    "scheduledEndDateTime": {"dateTime": "2020-01-02T00:00:00.0000000", "timeZone": "UTC"},
                },
                "language": {"locale": "en-US", "displayName": "English (United States)"},
                "workingHours": {
                    "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                    "startTime": "08:00:00.0000000",
                    "endTime": "17:00:00.0000000",
                    "timeZone": {"name": tz},
                },
            }),
        )
    }
}
