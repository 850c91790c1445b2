//! Graph v1.0 request pipeline: bearer-token check (GRAPH.md §1.6), faults (§4.2, §7.6),
//! routing, permission and mailbox checks (§1.5, §5), throttling (§4) and the user, calendar,
//! mailboxSettings and event operations (§2).
//!
//! Order of checks for a mailbox request: token (401) → scripted/random fault → route (400)
//! → app role (403) → user in the token's tenant (404 `ErrorInvalidUser`) → concurrency and
//! rate window for (app, mailbox) (429) → latency → mailbox kind (404/403) → operation.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use jiff::Timestamp;
use serde_json::{Map, Value, json};

use super::errors::{ErrorReply, Reply, wire};
use super::events::{self, ExtMode, RenderOpts, StoredEvent};
use super::odata::{self, EventQuery, OrderBy, Prefer};
use super::state::{Counters, UserRec};
use super::throttle::{Slot, Throttled};
use super::token::Claims;
use super::util::{self, Headers};
use super::{Emulator, FaultKind, LoggedRequest, MailboxKind, Settings, TransactionIdMode};

const USER_READ_ROLES: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "User.ReadBasic.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const CAL_READ_ROLES: &[&str] = &["Calendars.Read", "Calendars.ReadWrite"];
const CAL_WRITE_ROLES: &[&str] = &["Calendars.ReadWrite"];
const MAILBOX_SETTINGS_ROLES: &[&str] = &["MailboxSettings.Read", "MailboxSettings.ReadWrite"];
const MAILBOX_SETTINGS_LENIENT_ROLES: &[&str] = &[
    "MailboxSettings.Read",
    "MailboxSettings.ReadWrite",
    "Calendars.Read",
    "Calendars.ReadWrite",
];

/// One Graph request (from HTTP or a `$batch` item).
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// Uppercase.
    pub method: String,
    /// Raw path as sent, starting with `/v1.0`.
    pub path: String,
    pub query: Option<String>,
    pub headers: Headers,
    pub body: Vec<u8>,
    /// `http://host:port`.
    pub origin: String,
    pub batch_item: bool,
}

impl Call {
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
    fn base(&self) -> String {
        format!("{}/v1.0", self.origin)
    }
}

/// What the log needs to know about a request.
#[derive(Debug, Default)]
pub(crate) struct Note {
    pub mailbox: Option<String>,
    pub client_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    Calendar(Option<String>),
    Calendars,
    MailboxSettings,
    Events(Option<String>),
    Event(Option<String>, String),
    CalendarView(Option<String>),
}

impl Op {
    fn is_event_op(&self) -> bool {
        matches!(self, Op::Events(_) | Op::Event(..) | Op::CalendarView(_))
    }
    fn is_event_write(&self, method: &str) -> bool {
        match self {
            Op::Events(_) => method == "POST",
            Op::Event(..) => matches!(method, "PATCH" | "DELETE" | "POST" | "PUT"),
            _ => false,
        }
    }
    fn is_create(&self, method: &str) -> bool {
        matches!(self, Op::Events(_)) && method == "POST"
    }
    fn calendar_id(&self) -> Option<&str> {
        match self {
            Op::Calendar(c) | Op::Events(c) | Op::Event(c, _) | Op::CalendarView(c) => c.as_deref(),
            _ => None,
        }
    }
    fn roles(&self, method: &str, settings: &Settings) -> &'static [&'static str] {
        match self {
            Op::MailboxSettings if settings.mailbox_settings_accepts_calendar_roles => {
                MAILBOX_SETTINGS_LENIENT_ROLES
            }
            Op::MailboxSettings => MAILBOX_SETTINGS_ROLES,
            _ if method == "GET" => CAL_READ_ROLES,
            _ => CAL_WRITE_ROLES,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Route {
    Me,
    Batch,
    Users,
    User(String),
    Mailbox(String, Op),
}

fn segment_not_found(seg: &str) -> ErrorReply {
    ErrorReply::bad_request(format!("Resource not found for the segment '{seg}'."))
}

fn parse_route(path: &str) -> Result<Route, ErrorReply> {
    let rest = path.strip_prefix("/v1.0").unwrap_or(path);
    let mut segs = Vec::new();
    for raw in rest.split('/').filter(|s| !s.is_empty()) {
        segs.push(
            util::percent_decode(raw)
                .ok_or_else(|| ErrorReply::bad_request("Invalid URL encoding."))?,
        );
    }
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let Some(first) = s.first() else {
        return Err(ErrorReply::bad_request("Invalid request."));
    };
    if eq(first, "me") {
        return Ok(Route::Me);
    }
    if eq(first, "$batch") && s.len() == 1 {
        return Ok(Route::Batch);
    }
    if !eq(first, "users") {
        return Err(segment_not_found(first));
    }
    let Some(user) = s.get(1) else {
        return Ok(Route::Users);
    };
    let user = user.to_string();
    let rest = &s[2..];
    let op = match rest {
        [] => return Ok(Route::User(user)),
        [c] if eq(c, "calendar") => Op::Calendar(None),
        [c] if eq(c, "calendars") => Op::Calendars,
        [c, id] if eq(c, "calendars") => Op::Calendar(Some(id.to_string())),
        [m] if eq(m, "mailboxSettings") => Op::MailboxSettings,
        [e] if eq(e, "events") => Op::Events(None),
        [c, e] if eq(c, "calendar") && eq(e, "events") => Op::Events(None),
        [c, cid, e] if eq(c, "calendars") && eq(e, "events") => Op::Events(Some(cid.to_string())),
        [e, id] if eq(e, "events") => Op::Event(None, id.to_string()),
        [c, e, id] if eq(c, "calendar") && eq(e, "events") => Op::Event(None, id.to_string()),
        [c, cid, e, id] if eq(c, "calendars") && eq(e, "events") => {
            Op::Event(Some(cid.to_string()), id.to_string())
        }
        [v] if eq(v, "calendarView") => Op::CalendarView(None),
        [c, v] if eq(c, "calendar") && eq(v, "calendarView") => Op::CalendarView(None),
        [c, cid, v] if eq(c, "calendars") && eq(v, "calendarView") => {
            Op::CalendarView(Some(cid.to_string()))
        }
        [other, ..] => {
            let known = [
                "calendar",
                "calendars",
                "events",
                "calendarView",
                "mailboxSettings",
            ];
            let bad = if known.iter().any(|k| eq(k, other)) {
                rest.last().copied().unwrap_or(other)
            } else {
                other
            };
            return Err(segment_not_found(bad));
        }
    };
    Ok(Route::Mailbox(user, op))
}

fn fault_reply(kind: FaultKind, settings: &Settings) -> Result<Reply, ErrorReply> {
    match kind {
        FaultKind::Status503 { retry_after } => {
            let mut e = ErrorReply::new(
                503,
                wire::SERVICE_UNAVAILABLE_CODE,
                wire::SERVICE_UNAVAILABLE,
            );
            if let Some(secs) = retry_after {
                e = e.header(
                    "Retry-After",
                    util::format_retry_after(
                        secs,
                        settings.fractional_retry_after || secs.fract() != 0.0,
                    ),
                );
            }
            Err(e)
        }
        FaultKind::Gateway504 | FaultKind::Gateway504AfterCreate => Err(gateway_timeout()),
        FaultKind::DropConnection => Ok(Reply::dropped()),
        FaultKind::Throttle429 { retry_after } => {
            Err(ErrorReply::too_many_requests(util::format_retry_after(
                retry_after,
                settings.fractional_retry_after || retry_after.fract() != 0.0,
            )))
        }
        FaultKind::ExpiredToken => Err(ErrorReply::unauthenticated(wire::TOKEN_EXPIRED)),
    }
}

fn gateway_timeout() -> ErrorReply {
    ErrorReply::new(504, wire::GATEWAY_TIMEOUT_CODE, wire::GATEWAY_TIMEOUT)
}

fn json_body(call: &Call) -> Result<Value, ErrorReply> {
    let ct = call.headers.get("content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().contains("json") {
        return Err(ErrorReply::new(
            415,
            "UnsupportedMediaType",
            "The request's Content-Type must be application/json.",
        ));
    }
    serde_json::from_slice(&call.body).map_err(|_| ErrorReply::bad_request(wire::BAD_JSON))
}

fn with_prefer(mut reply: Reply, prefer: &Prefer, events: bool) -> Reply {
    if let Some(applied) = prefer.applied(events) {
        reply = reply.header("Preference-Applied", applied);
    }
    reply
}

/// `startDateTime`/`endDateTime`: ISO 8601 with offset, or without (then UTC).
fn parse_view_time(name: &str, raw: &str) -> Result<Timestamp, ErrorReply> {
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
    /// Runs one Graph request end to end: ids, counters, log.
    pub(crate) async fn graph(&self, call: Call) -> Reply {
        let started = Instant::now();
        Counters::inc(&self.inner.counters.requests);
        let mut note = Note::default();
        let outcome = self.graph_inner(&call, &mut note).await;
        self.finish(&call, outcome, note, started)
    }

    /// Turns an outcome into the final reply (error envelope, `request-id` headers) and logs it.
    pub(crate) fn finish(
        &self,
        call: &Call,
        outcome: Result<Reply, ErrorReply>,
        note: Note,
        started: Instant,
    ) -> Reply {
        let request_id = util::new_guid();
        let client_request_id = call
            .headers
            .get("client-request-id")
            .map(str::to_string)
            .unwrap_or_else(|| request_id.clone());
        let mut reply = match outcome {
            Ok(r) => r,
            Err(e) => e.into_reply(&request_id, &client_request_id, Timestamp::now()),
        };
        if reply.status == 429 {
            Counters::inc(&self.inner.counters.throttled);
        }
        if !reply.drop_connection {
            reply
                .headers
                .push(("request-id".into(), request_id.clone()));
            reply
                .headers
                .push(("client-request-id".into(), client_request_id));
            if matches!(reply.body, super::errors::Body::Json(_)) {
                reply.headers.push(("OData-Version".into(), "4.0".into()));
            }
            reply
                .headers
                .push(("Cache-Control".into(), "private".into()));
        }
        self.inner.push_log(LoggedRequest {
            method: call.method.clone(),
            path: call.path_and_query(),
            status: reply.status,
            mailbox: note.mailbox,
            time: SystemTime::now(),
            batch_item: call.batch_item,
            client_id: note.client_id,
            duration: started.elapsed(),
            request_id,
        });
        reply
    }

    async fn graph_inner(&self, call: &Call, note: &mut Note) -> Result<Reply, ErrorReply> {
        let settings = self.inner.settings();
        let route = parse_route(&call.path);
        match &route {
            Ok(Route::Mailbox(seg, op)) => {
                note.mailbox = Some(seg.to_lowercase());
                if op.is_event_write(&call.method) {
                    Counters::inc(&self.inner.counters.writes);
                }
            }
            Ok(Route::User(seg)) => note.mailbox = Some(seg.to_lowercase()),
            _ => {}
        }
        let claims = self
            .inner
            .verify_token(call.headers.get("authorization"))
            .map_err(ErrorReply::unauthenticated)?;
        note.client_id = Some(claims.appid.clone());

        let scripted = self
            .inner
            .faults
            .lock()
            .expect("faults")
            .take_scripted(&call.method, &call.path_and_query());
        let mut after_504 = false;
        match scripted {
            Some(FaultKind::Gateway504AfterCreate) => after_504 = true,
            Some(kind) => return fault_reply(kind, &settings),
            None => {}
        }
        let route = route?;
        if let Route::Mailbox(_, op) = &route
            && op.is_event_op()
        {
            let draw = self
                .inner
                .faults
                .lock()
                .expect("faults")
                .draw(op.is_create(&call.method), Some(settings.retry_after_secs));
            if let Some(kind) = draw.before {
                return fault_reply(kind, &settings);
            }
            after_504 |= draw.after_create_504;
        }
        let result = match route {
            Route::Me => Err(ErrorReply::bad_request(wire::ME_WITH_APP_TOKEN)),
            Route::Batch => Err(ErrorReply::bad_request(
                "A $batch request cannot contain another $batch request.",
            )),
            Route::Users => self.list_users(call, &claims, &settings).await,
            Route::User(seg) => self.get_user(call, &claims, &seg, &settings, note).await,
            Route::Mailbox(seg, op) => self.mailbox(call, &claims, &seg, op, &settings, note).await,
        };
        if after_504 {
            return Err(gateway_timeout());
        }
        result
    }

    async fn latency(&self, settings: &Settings) {
        if !settings.latency.is_zero() {
            tokio::time::sleep(settings.latency).await;
        }
    }

    // ---- directory ------------------------------------------------------------------------

    async fn list_users(
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

    async fn get_user(
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

    // ---- mailbox --------------------------------------------------------------------------

    async fn mailbox(
        &self,
        call: &Call,
        claims: &Claims,
        seg: &str,
        op: Op,
        settings: &Settings,
        note: &mut Note,
    ) -> Result<Reply, ErrorReply> {
        if !claims.has_any(op.roles(&call.method, settings)) {
            return Err(ErrorReply::access_denied());
        }
        let user = self.inner.dir.lock().expect("dir").user(&claims.tid, seg);
        let Some(user) = user else {
            return Err(ErrorReply::invalid_user(seg));
        };
        note.mailbox = Some(user.upn.to_ascii_lowercase());
        let prefer = odata::parse_prefer(&call.headers, settings.accept_iana_zones);
        if settings.require_immutable_id && op.is_event_op() && !prefer.immutable_id {
            return Err(ErrorReply::new(
                400,
                wire::IMMUTABLE_ID_CODE,
                wire::IMMUTABLE_ID_REQUIRED,
            ));
        }
        let upload_bytes = if matches!(call.method.as_str(), "POST" | "PATCH" | "PUT") {
            call.body.len() as u64
        } else {
            0
        };
        let _slot = Slot::acquire(
            &self.inner,
            &claims.appid,
            &user.id,
            &user.upn,
            settings,
            upload_bytes,
        )
        .map_err(|t| match t {
            Throttled::Concurrency => ErrorReply::concurrency(util::format_retry_after(
                settings.retry_after_secs,
                settings.fractional_retry_after,
            )),
            Throttled::Window(wait) => ErrorReply::too_many_requests(util::format_retry_after(
                wait.as_secs_f64().max(0.001),
                settings.fractional_retry_after,
            )),
        })?;
        self.latency(settings).await;
        match user.mailbox {
            MailboxKind::Ok => {}
            MailboxKind::NoMailbox => {
                return Err(ErrorReply::new(
                    404,
                    wire::NO_MAILBOX_CODE,
                    wire::NO_MAILBOX,
                ));
            }
            MailboxKind::PolicyDenied => {
                return Err(ErrorReply::new(
                    403,
                    wire::ACCESS_DENIED_CODE,
                    wire::ODATA_DISABLED,
                ));
            }
        }
        if let Some(cid) = op.calendar_id()
            && cid != user.calendar_id()
        {
            return Err(ErrorReply::item_not_found());
        }
        let ctx = Ctx {
            call,
            user: &user,
            seg,
            prefer: &prefer,
            settings,
        };
        let method = call.method.as_str();
        match (&op, method) {
            (Op::Calendar(_), "GET") => Ok(ctx.calendar()),
            (Op::Calendars, "GET") => Ok(ctx.calendars()),
            (Op::MailboxSettings, "GET") => Ok(ctx.mailbox_settings()),
            (Op::Events(_), "GET") => self.list_events(&ctx, false),
            (Op::Events(_), "POST") => self.create_event(&ctx),
            (Op::CalendarView(_), "GET") => self.list_events(&ctx, true),
            (Op::Event(_, id), "GET") => self.get_event(&ctx, id),
            (Op::Event(_, id), "PATCH") => self.patch_event(&ctx, id),
            (Op::Event(_, id), "DELETE") => self.delete_event(&ctx, id),
            _ => Err(ErrorReply::method_not_allowed(method)),
        }
    }

    fn list_events(&self, ctx: &Ctx, calendar_view: bool) -> Result<Reply, ErrorReply> {
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

    fn create_event(&self, ctx: &Ctx) -> Result<Reply, ErrorReply> {
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
        mbox.events.insert(ev.id.clone(), ev);
        Counters::inc(&self.inner.counters.events_created);
        Ok(reply)
    }

    fn get_event(&self, ctx: &Ctx, id: &str) -> Result<Reply, ErrorReply> {
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

    fn patch_event(&self, ctx: &Ctx, id: &str) -> Result<Reply, ErrorReply> {
        let input = json_body(ctx.call)?;
        let draft = events::parse_input(&input, ctx.settings)?;
        let mut store = self.inner.store.lock().expect("store");
        let ev = store
            .get_mut(&ctx.user.mailbox_key())
            .and_then(|m| m.events.get_mut(id))
            .ok_or_else(ErrorReply::item_not_found)?;
        self.check_if_match(ctx, ev)?;
        let mut updated = ev.clone();
        updated.patch(draft)?;
        let reply = ctx.written(&updated, 200);
        *ev = updated;
        Counters::inc(&self.inner.counters.events_updated);
        Ok(reply)
    }

    fn delete_event(&self, ctx: &Ctx, id: &str) -> Result<Reply, ErrorReply> {
        let mut store = self.inner.store.lock().expect("store");
        let mbox = store
            .get_mut(&ctx.user.mailbox_key())
            .ok_or_else(ErrorReply::item_not_found)?;
        let ev = mbox.events.get(id).ok_or_else(ErrorReply::item_not_found)?;
        self.check_if_match(ctx, ev)?;
        let ev = mbox.events.remove(id).expect("present");
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

/// Everything an operation on one mailbox needs.
struct Ctx<'a> {
    call: &'a Call,
    user: &'a UserRec,
    seg: &'a str,
    prefer: &'a Prefer,
    settings: &'a Settings,
}

impl Ctx<'_> {
    fn render_opts<'q>(&self, q: &'q EventQuery, context: Option<String>) -> RenderOpts<'q> {
        RenderOpts {
            tz: self.prefer.tz,
            text_body: self.prefer.text_body,
            ext: q.expand.clone().unwrap_or(ExtMode::None),
            select: q.select.as_deref(),
            context,
        }
    }

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

    fn calendar(&self) -> Reply {
        let mut v = self.calendar_json();
        v["@odata.context"] = json!(format!(
            "{}/$metadata#users('{}')/calendar/$entity",
            self.call.base(),
            self.seg
        ));
        Reply::json(200, v)
    }

    fn calendars(&self) -> Reply {
        Reply::json(
            200,
            json!({
                "@odata.context": format!("{}/$metadata#users('{}')/calendars", self.call.base(), self.seg),
                "value": [self.calendar_json()],
            }),
        )
    }

    fn mailbox_settings(&self) -> Reply {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |p: &str| parse_route(p);
        assert_eq!(
            r("/v1.0/users/a%40b.c").unwrap(),
            Route::User("a@b.c".into())
        );
        assert_eq!(
            r("/v1.0/users/x/calendar/events/AA%2FB+C%3D").unwrap(),
            Route::Mailbox("x".into(), Op::Event(None, "AA/B+C=".into()))
        );
        assert_eq!(
            r("/v1.0/Users/x/calendarView").unwrap(),
            Route::Mailbox("x".into(), Op::CalendarView(None))
        );
        assert_eq!(r("/v1.0/$batch").unwrap(), Route::Batch);
        assert!(r("/v1.0/groups/x").is_err());
        assert!(r("/v1.0/users/x/messages").is_err());
    }
}
