//! Graph's error envelope (GRAPH.md §2.10, [`ErrorReply`]) and Entra's token error body (§1.3),
//! plus the internal reply type every handler produces ([`Reply`]).

use jiff::Timestamp;
use serde_json::{Value, json};

use super::util;

/// Error codes and texts the emulator sends. Those GRAPH.md marks UNCONFIRMED are constants
/// here so tests and clients can refer to them instead of repeating strings.
pub mod wire {
    /// `Content-Type` of Graph JSON responses.
    pub const GRAPH_JSON: &str = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";
    /// `www-authenticate` on Graph 401s (GRAPH.md §1.6).
    pub const WWW_AUTHENTICATE: &str = "Bearer realm=\"\", authorization_uri=\"https://login.microsoftonline.com/common/oauth2/authorize\", client_id=\"00000003-0000-0000-c000-000000000000\"";

    pub const INVALID_TOKEN_CODE: &str = "InvalidAuthenticationToken";
    pub const TOKEN_EXPIRED: &str = "Access token has expired or is not yet valid.";
    pub const TOKEN_GARBAGE: &str = "CompactToken parsing failed with error code: 80049217";
    pub const TOKEN_EMPTY: &str = "Access token is empty.";
    pub const TOKEN_BAD_SIGNATURE: &str = "Access token validation failure.";
    pub const TOKEN_BAD_AUDIENCE: &str = "Access token validation failure. Invalid audience.";

    pub const ACCESS_DENIED_CODE: &str = "ErrorAccessDenied";
    pub const ACCESS_DENIED: &str = "Access is denied. Check credentials and try again.";
    pub const ODATA_DISABLED: &str = "Access to OData is disabled.";
    pub const DIRECTORY_DENIED_CODE: &str = "Authorization_RequestDenied";
    pub const DIRECTORY_DENIED: &str = "Insufficient privileges to complete the operation.";
    pub const DIRECTORY_NOT_FOUND_CODE: &str = "Request_ResourceNotFound";
    pub const INVALID_USER_CODE: &str = "ErrorInvalidUser";
    pub const NO_MAILBOX_CODE: &str = "MailboxNotEnabledForRESTAPI";
    pub const NO_MAILBOX: &str =
        "The mailbox is either inactive, soft-deleted, or is hosted on-premise.";
    pub const ITEM_NOT_FOUND_CODE: &str = "ErrorItemNotFound";
    pub const ITEM_NOT_FOUND: &str = "The specified object was not found in the store.";

    pub const TIME_ZONE_CODE: &str = "TimeZoneNotSupportedException";
    /// UNCONFIRMED code for end < start.
    pub const END_BEFORE_START_CODE: &str = "ErrorInvalidRequest";
    pub const END_BEFORE_START: &str = "The start time of the event must be before its end time.";
    /// UNCONFIRMED code/texts for all-day violations (GRAPH.md §2.4).
    pub const ALL_DAY_CODE: &str = "ErrorPropertyValidationFailure";
    pub const ALL_DAY_NOT_MIDNIGHT: &str =
        "The start and end time of an event marked as All day must be at midnight.";
    pub const ALL_DAY_TOO_SHORT: &str =
        "The duration of an event marked as All day must be at least 24 hours.";
    pub const ALL_DAY_NOT_WHOLE_DAYS: &str =
        "The duration of an event marked as All day must be a whole number of days.";
    pub const ALL_DAY_ZONES_DIFFER: &str =
        "The start and end of an event marked as All day must be in the same time zone.";
    /// UNCONFIRMED: a create without `start`/`end`.
    pub const START_END_REQUIRED_CODE: &str = "ErrorInvalidRequest";
    pub const START_END_REQUIRED: &str = "The event must have both a start and an end.";
    pub const BODY_READ_CODE: &str = "RequestBodyRead";
    pub const BAD_JSON: &str = "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.";
    /// UNCONFIRMED: code for a reused `transactionId` in `Conflict409` mode.
    pub const DUPLICATE_TRANSACTION_CODE: &str = "ErrorDuplicateTransactionId";
    pub const DUPLICATE_TRANSACTION: &str =
        "An event with the same transactionId already exists in this mailbox.";
    /// UNCONFIRMED: `If-Match` mismatch.
    pub const CONFLICT_CODE: &str = "ErrorIrresolvableConflict";
    pub const CONFLICT: &str = "The send or update operation could not be performed because the change key passed in the request does not match the current change key for the item.";
    pub const IMMUTABLE_ID_CODE: &str = "ErrorInvalidRequest";
    pub const IMMUTABLE_ID_REQUIRED: &str = "This emulator requires the header 'Prefer: IdType=\"ImmutableId\"' on every event request.";
    pub const INVALID_FILTER_CODE: &str = "ErrorInvalidUrlQueryFilter";
    pub const INVALID_FILTER: &str = "The query filter contains one or more invalid nodes.";
    pub const CALENDAR_VIEW_WINDOW_CODE: &str = "ErrorInvalidParameter";
    /// A delta state token that is unknown or expired (410 Gone).
    pub const SYNC_STATE_NOT_FOUND_CODE: &str = "syncStateNotFound";
    pub const SYNC_STATE_NOT_FOUND: &str = "The sync state generation is not found. The delta token is expired and data must be synchronized again.";
    pub const CALENDAR_VIEW_WINDOW: &str = "This request requires a time window specified by the query string parameters StartDateTime and EndDateTime.";
    /// UNCONFIRMED: `/me` with an app-only token.
    pub const ME_WITH_APP_TOKEN: &str =
        "/me request is only valid with delegated authentication flow.";

    pub const THROTTLED_CONCURRENCY_CODE: &str = "ApplicationThrottled";
    pub const THROTTLED_CONCURRENCY: &str = "Application is over its MailboxConcurrency limit.";
    pub const TOO_MANY_REQUESTS_CODE: &str = "TooManyRequests";
    pub const TOO_MANY_REQUESTS: &str = "Please retry again later.";
    pub const SERVICE_UNAVAILABLE_CODE: &str = "serviceNotAvailable";
    pub const SERVICE_UNAVAILABLE: &str =
        "The service is temporarily unavailable. Please retry later.";
    pub const GATEWAY_TIMEOUT_CODE: &str = "GatewayTimeout";
    pub const GATEWAY_TIMEOUT: &str =
        "The gateway did not receive a response from the service in time.";

    pub const BATCH_CODE: &str = "BadRequest";
    pub const BATCH_TOO_MANY: &str = "Too many requests in batch. Max allowed is 20.";
    pub const BATCH_DUPLICATE_ID: &str =
        "Batch request ids must be unique (ids are not case-sensitive).";
    pub const BATCH_ABSOLUTE_URL: &str =
        "Batch request urls must be relative to the version root, e.g. '/users/{id}/events'.";
    pub const BATCH_MISSING_CONTENT_TYPE: &str =
        "A batch request with a body must have a 'Content-Type' header.";
    pub const BATCH_INVALID: &str = "Invalid batch payload format.";
    pub const FAILED_DEPENDENCY_CODE: &str = "FailedDependency";
    pub const FAILED_DEPENDENCY: &str =
        "The request was not executed because a request it depends on failed.";
}

/// Body of an internal reply.
#[derive(Debug, Clone)]
pub(crate) enum Body {
    Empty,
    Json(Value),
    /// Plain text or HTML (the `Content-Type` is in the headers).
    Text(String),
}

/// What a handler answers; converted to HTTP by `http.rs` or to a `$batch` item.
#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub status: u16,
    /// Header names as Graph spells them (`Retry-After`, `Content-Type`, ...).
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// Close the connection without answering.
    pub drop_connection: bool,
}

impl Reply {
    pub fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), wire::GRAPH_JSON.into())],
            body: Body::Json(body),
            drop_connection: false,
        }
    }
    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Empty,
            drop_connection: false,
        }
    }
    pub fn text(status: u16, content_type: &'static str, text: String) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: Body::Text(text),
            drop_connection: false,
        }
    }
    pub fn dropped() -> Reply {
        Reply {
            status: 0,
            headers: Vec::new(),
            body: Body::Empty,
            drop_connection: true,
        }
    }
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Reply {
        self.headers.push((name.to_string(), value.into()));
        self
    }
    pub fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The error answer the emulator sends (Graph's envelope, GRAPH.md §2.10), before the request
/// ids are known: [`ErrorReply::into_reply`] makes it a [`Reply`].
#[derive(Debug, Clone)]
pub(crate) struct ErrorReply {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub headers: Vec<(String, String)>,
    /// The documented `TooManyRequests` body (innerError with `code`, `message`, `status`).
    pub too_many: bool,
}

impl ErrorReply {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ErrorReply {
        ErrorReply {
            status,
            code: code.to_string(),
            message: message.into(),
            headers: Vec::new(),
            too_many: false,
        }
    }
    pub fn header(mut self, name: &str, value: impl Into<String>) -> ErrorReply {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ErrorReply {
        ErrorReply::new(400, "BadRequest", message)
    }
    pub fn body_read(message: impl Into<String>) -> ErrorReply {
        ErrorReply::new(400, wire::BODY_READ_CODE, message)
    }
    pub fn unauthenticated(message: &str) -> ErrorReply {
        ErrorReply::new(401, wire::INVALID_TOKEN_CODE, message)
            .header("WWW-Authenticate", wire::WWW_AUTHENTICATE)
    }
    pub fn access_denied() -> ErrorReply {
        ErrorReply::new(403, wire::ACCESS_DENIED_CODE, wire::ACCESS_DENIED)
    }
    pub fn item_not_found() -> ErrorReply {
        ErrorReply::new(404, wire::ITEM_NOT_FOUND_CODE, wire::ITEM_NOT_FOUND)
    }
    pub fn invalid_user(segment: &str) -> ErrorReply {
        ErrorReply::new(
            404,
            wire::INVALID_USER_CODE,
            format!("The requested user '{segment}' is invalid."),
        )
    }
    pub fn too_many_requests(retry_after: String) -> ErrorReply {
        let mut e = ErrorReply::new(429, wire::TOO_MANY_REQUESTS_CODE, wire::TOO_MANY_REQUESTS)
            .header("Retry-After", retry_after);
        e.too_many = true;
        e
    }
    pub fn concurrency(retry_after: String) -> ErrorReply {
        ErrorReply::new(
            429,
            wire::THROTTLED_CONCURRENCY_CODE,
            wire::THROTTLED_CONCURRENCY,
        )
        .header("Retry-After", retry_after)
    }
    pub fn time_zone(tz: &str) -> ErrorReply {
        ErrorReply::new(
            400,
            wire::TIME_ZONE_CODE,
            format!(
                "A valid TimeZone value must be specified. The following TimeZone value is not supported: '{tz}'."
            ),
        )
    }
    pub fn method_not_allowed(method: &str) -> ErrorReply {
        ErrorReply::new(
            405,
            "Request_BadRequest",
            format!("The HTTP method '{method}' is not allowed for this resource."),
        )
    }

    /// The envelope `{"error":{"code","message","innerError":{...}}}` with ids.
    pub fn into_reply(self, request_id: &str, client_request_id: &str, now: Timestamp) -> Reply {
        let date = util::inner_error_date(now);
        let inner = if self.too_many {
            json!({
                "code": "429",
                "date": date,
                "message": "Please retry after",
                "request-id": request_id,
                "client-request-id": client_request_id,
                "status": "429",
            })
        } else {
            json!({
                "date": date,
                "request-id": request_id,
                "client-request-id": client_request_id,
            })
        };
        let mut reply = Reply::json(
            self.status,
            json!({"error": {"code": self.code, "message": self.message, "innerError": inner}}),
        );
        reply.headers.extend(self.headers);
        reply
    }
}

/// Entra's token-endpoint error body (GRAPH.md §1.3).
pub(crate) fn aad_error(
    status: u16,
    error: &str,
    code: u32,
    message: &str,
    correlation_id: &str,
) -> Reply {
    let now = Timestamp::now();
    let trace_id = util::new_guid();
    let ts = util::aad_timestamp(now);
    let description = format!(
        "AADSTS{code}: {message}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {ts}"
    );
    let body = json!({
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": ts,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    Reply {
        status,
        headers: vec![
            (
                "Content-Type".into(),
                "application/json; charset=utf-8".into(),
            ),
            ("x-ms-request-id".into(), trace_id),
            ("Cache-Control".into(), "no-store, no-cache".into()),
        ],
        body: Body::Json(body),
        drop_connection: false,
    }
}
