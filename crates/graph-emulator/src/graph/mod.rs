//! Graph v1.0 request pipeline: bearer-token check (GRAPH.md §1.6), faults (§4.2, §7.6),
//! routing (`route`), permission and mailbox checks (§1.5, §5), throttling (§4), then the
//! operations: users (`users`), the calendar, mailboxSettings and events (`calendar`, §2).
//!
//! Order of checks for a mailbox request: token (401) → scripted/random fault → route (400)
//! → app role (403) → user in the token's tenant (404 `ErrorInvalidUser`) → concurrency and
//! rate window for (app, mailbox) (429) → latency → mailbox kind (404/403) → operation.

mod calendar;
mod delta;
mod route;
mod users;

use std::time::{Instant, SystemTime};

use jiff::Timestamp;
use serde_json::Value;

pub(crate) use self::delta::{ChangeLog, DeltaTokens};
use self::route::{Op, Route, parse_route};
use super::errors::{ErrorReply, Reply, wire};
use super::events::{ExtMode, RenderOpts};
use super::odata::{self, EventQuery, Prefer};
use super::state::{Counters, UserRec};
use super::throttle::{Slot, Throttled};
use super::token::Claims;
use super::util::{self, Headers};
use super::{Emulator, FaultKind, LoggedRequest, MailboxKind, Settings};

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
        FaultKind::SyncStateNotFound => Err(ErrorReply::new(
            410,
            wire::SYNC_STATE_NOT_FOUND_CODE,
            wire::SYNC_STATE_NOT_FOUND,
        )),
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

    /// A request on one mailbox: the app's role, the user in the token's tenant, `Prefer`,
    /// throttling, latency, the mailbox kind, then the operation.
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
            (Op::CalendarViewDelta(_), "GET") => self.calendar_view_delta(&ctx),
            (Op::Event(_, id), "GET") => self.get_event(&ctx, id),
            (Op::Event(_, id), "PATCH") => self.patch_event(&ctx, id),
            (Op::Event(_, id), "DELETE") => self.delete_event(&ctx, id),
            _ => Err(ErrorReply::method_not_allowed(method)),
        }
    }
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
}
