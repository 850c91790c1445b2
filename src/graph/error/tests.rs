//! Every status, code and AADSTS number to its class; the error's fields and text; `Retry-After`.

use super::*;
use serde_json::{Value, json};

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn graph_body(code: &str, message: &str) -> Value {
    json!({"error": {"code": code, "message": message, "innerError": {
        "date": "2021-08-23T06:12:16",
        "request-id": "inner-rid",
        "client-request-id": "91a6d4c4-0000-0000-0000-000000000000"
    }}})
}

fn check(status: u16, headers: &[(&str, &str)], body: Value, expected: ErrorClass) -> GraphError {
    let e = GraphError::from_response(status, &h(headers), &body);
    assert_eq!(e.class, expected, "status {status} body {body}");
    assert_eq!(e.status, Some(status));
    e
}

fn retry(secs: Option<f64>) -> ErrorClass {
    ErrorClass::Retryable {
        after: secs.map(Duration::from_secs_f64),
    }
}

#[test]
fn every_graph_status_and_code_maps_to_its_class() {
    use MailboxProblem::*;
    type Case<'a> = (u16, Vec<(&'a str, &'a str)>, Value, ErrorClass);
    let cases: Vec<Case> = vec![
        (
            429,
            vec![("retry-after", "10")],
            graph_body("TooManyRequests", "Please retry again later."),
            retry(Some(10.0)),
        ),
        (
            429,
            vec![("Retry-After", "2.128")],
            json!({"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}),
            ErrorClass::Retryable {
                after: Some(Duration::new(2, 128_000_000)),
            },
        ),
        (429, vec![], graph_body("TooManyRequests", ""), retry(None)),
        (
            503,
            vec![("retry-after", "5")],
            graph_body("serviceNotAvailable", "x"),
            retry(Some(5.0)),
        ),
        (503, vec![], Value::Null, retry(None)),
        (504, vec![], graph_body("GatewayTimeout", "x"), retry(None)),
        (
            500,
            vec![],
            graph_body("generalException", "x"),
            retry(None),
        ),
        (
            502,
            vec![],
            Value::String("<html>Bad gateway</html>".into()),
            retry(None),
        ),
        (
            401,
            vec![],
            graph_body(
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            ),
            ErrorClass::RefreshToken,
        ),
        (
            404,
            vec![],
            graph_body(
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            ),
            ErrorClass::ItemGone,
        ),
        (
            404,
            vec![],
            graph_body("ErrorInvalidUser", "The requested user 'x@y' is invalid."),
            ErrorClass::Mailbox(UnknownUser),
        ),
        (
            404,
            vec![],
            graph_body(
                "Request_ResourceNotFound",
                "Resource 'x' does not exist or one of its queried reference-property objects are not present.",
            ),
            ErrorClass::Mailbox(UnknownUser),
        ),
        (
            404,
            vec![],
            graph_body(
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            ),
            ErrorClass::Mailbox(NoMailbox),
        ),
        (
            404,
            vec![],
            graph_body("ResourceNotFound", "Resource could not be discovered."),
            ErrorClass::Mailbox(NoMailbox),
        ),
        (
            403,
            vec![],
            graph_body("ErrorAccessDenied", "Access to OData is disabled."),
            ErrorClass::Mailbox(PolicyDenied),
        ),
        (
            403,
            vec![],
            graph_body(
                "ExtensionError",
                "Operation: Create; Exception: [Status Code: Forbidden; Reason: Access to OData is disabled.]",
            ),
            ErrorClass::Mailbox(PolicyDenied),
        ),
        (
            403,
            vec![],
            graph_body(
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            ),
            ErrorClass::Mailbox(AccessDenied),
        ),
        (
            403,
            vec![],
            graph_body(
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ),
            ErrorClass::Mailbox(AccessDenied),
        ),
        (
            403,
            vec![],
            graph_body(
                "AccessDenied",
                "Either scp or roles claim need to be present in the token.",
            ),
            ErrorClass::Mailbox(AccessDenied),
        ),
        (
            403,
            vec![],
            graph_body("ErrorSomethingElse", "x"),
            ErrorClass::Permanent,
        ),
        (
            400,
            vec![],
            graph_body(
                "TimeZoneNotSupportedException",
                "A valid TimeZone value must be specified. The following TimeZone value is not supported: 'X'.",
            ),
            ErrorClass::Permanent,
        ),
        (
            400,
            vec![],
            graph_body(
                "ErrorPropertyValidationFailure",
                "At least one property failed validation.",
            ),
            ErrorClass::Permanent,
        ),
        (
            400,
            vec![],
            graph_body("ErrorInvalidIdMalformed", "Id is malformed."),
            ErrorClass::Permanent,
        ),
        (
            400,
            vec![],
            graph_body("BadRequest", "x"),
            ErrorClass::Permanent,
        ),
        (
            409,
            vec![],
            graph_body("ErrorIrresolvableConflict", "x"),
            ErrorClass::Permanent,
        ),
        (
            412,
            vec![],
            graph_body("ErrorIrresolvableConflict", "x"),
            ErrorClass::Permanent,
        ),
        (405, vec![], Value::Null, ErrorClass::Permanent),
        (404, vec![], Value::Null, ErrorClass::Permanent),
        (501, vec![], Value::Null, ErrorClass::Permanent),
        (
            424,
            vec![],
            graph_body("FailedDependency", "x"),
            retry(None),
        ),
    ];
    for (status, headers, body, class) in cases {
        check(status, &headers, body, class);
    }
}

#[test]
fn a_graph_error_carries_code_message_request_id_and_retry_after() {
    let e = check(
        429,
        &[("request-id", "hdr-rid"), ("retry-after", "2.5")],
        json!({"error":{"code":"ApplicationThrottled","message":"Application is over its MailboxConcurrency limit."}}),
        ErrorClass::Retryable {
            after: Some(Duration::from_millis(2500)),
        },
    );
    assert_eq!(e.code, "ApplicationThrottled");
    assert_eq!(
        e.message,
        "Application is over its MailboxConcurrency limit."
    );
    assert_eq!(e.request_id.as_deref(), Some("hdr-rid"));
    assert_eq!(e.retry_after, Some(Duration::from_millis(2500)));
    assert!(e.is_retryable());
    assert_eq!(
        e.to_string(),
        "Graph 429 ApplicationThrottled: Application is over its MailboxConcurrency limit. (request-id hdr-rid)"
    );

    // Without the header, the innerError's request-id is used.
    let e = check(
        404,
        &[],
        graph_body(
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        ),
        ErrorClass::ItemGone,
    );
    assert_eq!(e.request_id.as_deref(), Some("inner-rid"));
    assert!(!e.is_retryable());

    // A body with no error object: the code names the status.
    let e = check(502, &[], Value::Null, retry(None));
    assert_eq!(e.code, "Http502");
    assert_eq!(e.to_string(), "Graph 502 Http502");
}

#[test]
fn retry_after_parses_decimal_seconds_and_http_dates() {
    let now: jiff::Timestamp = "2024-03-01T12:00:00Z".parse().unwrap();
    let p = |v: &str| parse_retry_after(v, now);
    assert_eq!(p("10"), Some(Duration::from_secs(10)));
    assert_eq!(p("2.128"), Some(Duration::new(2, 128_000_000)));
    assert_eq!(p(" 0.5 "), Some(Duration::from_millis(500)));
    assert_eq!(p(".25"), Some(Duration::from_millis(250)));
    assert_eq!(p("3."), Some(Duration::from_secs(3)));
    assert_eq!(p("0"), Some(Duration::ZERO));
    assert_eq!(p("-1"), Some(Duration::ZERO));
    assert_eq!(p("-0.5"), Some(Duration::ZERO));
    assert_eq!(p("1.0000000001"), Some(Duration::from_secs(1)));
    assert_eq!(
        p("Fri, 01 Mar 2024 12:00:30 GMT"),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        p("Friday, 01-Mar-24 12:01:00 GMT"),
        Some(Duration::from_secs(60))
    );
    assert_eq!(p("Fri Mar  1 12:00:07 2024"), Some(Duration::from_secs(7)));
    assert_eq!(p("Fri, 01 Mar 2024 11:00:00 GMT"), Some(Duration::ZERO));
    for garbage in [
        "",
        " ",
        "soon",
        "1e3",
        "inf",
        "NaN",
        "1.2.3",
        "-",
        ".",
        "10s",
        "0x10",
        "99999999999999999999999",
    ] {
        assert_eq!(p(garbage), None, "{garbage:?}");
    }
}

/// Microsoft's exact token error body (GRAPH.md §1.3).
fn aad(error: &str, code: u64, text: &str) -> Value {
    json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {text}\r\nTrace ID: 0000aaaa-11bb-cc22-dd33-444444eeeeee\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd\r\nTimestamp: 2016-01-09 02:02:12Z"
        ),
        "error_codes": [code],
        "timestamp": "2016-01-09 02:02:12Z",
        "trace_id": "0000aaaa-11bb-cc22-dd33-444444eeeeee",
        "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}")
    })
}

#[test]
fn every_aadsts_code_maps_to_its_token_problem() {
    use TokenProblem::*;
    let creds = ErrorClass::Credentials;
    let cases: Vec<(u16, &str, u64, &str, ErrorClass)> = vec![
        (
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '11111111-2222-3333-4444-555555555555'.",
            creds(InvalidSecret),
        ),
        (
            401,
            "invalid_client",
            7000222,
            "The provided client secret keys for app '11111111-2222-3333-4444-555555555555' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
            creds(ExpiredSecret),
        ),
        (
            400,
            "unauthorized_client",
            700016,
            "Application with identifier '11111111-2222-3333-4444-555555555555' was not found in the directory 'contoso.onmicrosoft.com'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
            creds(AppNotInTenant),
        ),
        (
            400,
            "invalid_tenant",
            90002,
            "Tenant 'nope.onmicrosoft.com' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud.",
            creds(TenantNotFound),
        ),
        (
            400,
            "invalid_request",
            90002,
            "Tenant 'x' not found.",
            creds(TenantNotFound),
        ),
        (
            400,
            "invalid_request",
            900023,
            "Specified tenant identifier 'bad tenant' is neither a valid DNS name, nor a valid external domain.",
            creds(TenantNotFound),
        ),
        (
            400,
            "invalid_scope",
            70011,
            "The provided value for the input parameter 'scope' isn't valid.",
            creds(InvalidScope),
        ),
        (
            400,
            "invalid_scope",
            700022,
            "The provided value for the input parameter scope isn't valid because it contains more than one resource.",
            creds(InvalidScope),
        ),
        (
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            creds(Other {
                code: Some(7000218),
                error: "invalid_client".into(),
            }),
        ),
        (
            400,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'grant_type'.",
            creds(Other {
                code: Some(900144),
                error: "invalid_request".into(),
            }),
        ),
        (
            400,
            "unauthorized_client",
            7000112,
            "Application is disabled.",
            creds(Other {
                code: Some(7000112),
                error: "unauthorized_client".into(),
            }),
        ),
        (
            400,
            "invalid_resource",
            500011,
            "The resource principal named https://graph.microsoft.com was not found in the tenant.",
            creds(Other {
                code: Some(500011),
                error: "invalid_resource".into(),
            }),
        ),
        (
            400,
            "invalid_grant",
            53003,
            "Access has been blocked by Conditional Access policies.",
            creds(Other {
                code: Some(53003),
                error: "invalid_grant".into(),
            }),
        ),
        (
            400,
            "invalid_grant",
            90094,
            "Admin consent is required.",
            creds(Other {
                code: Some(90094),
                error: "invalid_grant".into(),
            }),
        ),
        (
            400,
            "invalid_client",
            650056,
            "Misconfigured application.",
            creds(Other {
                code: Some(650056),
                error: "invalid_client".into(),
            }),
        ),
        (
            429,
            "temporarily_unavailable",
            90055,
            "The request is throttled.",
            retry(None),
        ),
        (
            400,
            "invalid_request",
            90024,
            "Transient error.",
            retry(None),
        ),
        (
            503,
            "temporarily_unavailable",
            90006,
            "The service is temporarily unavailable.",
            retry(None),
        ),
        (
            503,
            "temporarily_unavailable",
            12345,
            "Something.",
            retry(None),
        ),
        (500, "server_error", 12346, "Something.", retry(None)),
    ];
    for (status, error, code, text, class) in cases {
        let e = GraphError::from_token_response(status, &aad(error, code, text));
        assert_eq!(e.class, class, "AADSTS{code}");
        assert_eq!(e.status, Some(status));
        assert_eq!(e.aadsts, Some(code));
        assert_eq!(e.code, error);
        assert_eq!(
            e.message,
            format!("AADSTS{code}: {text}"),
            "first line only"
        );
        assert_eq!(
            e.request_id.as_deref(),
            Some("0000aaaa-11bb-cc22-dd33-444444eeeeee")
        );
        assert!(!e.to_string().contains("Correlation ID"));
        assert!(
            e.to_string()
                .starts_with(&format!("token endpoint {status} {error}: AADSTS{code}")),
            "{e}"
        );
    }
}

#[test]
fn token_problems_have_stable_codes() {
    let cases = [
        (TokenProblem::InvalidSecret, "invalid_secret"),
        (TokenProblem::ExpiredSecret, "expired_secret"),
        (TokenProblem::AppNotInTenant, "app_not_in_tenant"),
        (TokenProblem::TenantNotFound, "tenant_not_found"),
        (TokenProblem::InvalidScope, "invalid_scope"),
        (
            TokenProblem::Other {
                code: Some(1),
                error: "x".into(),
            },
            "other",
        ),
    ];
    for (p, code) in cases {
        assert_eq!(p.code(), code);
        assert!(!p.description().is_empty());
    }
    let cases = [
        (MailboxProblem::UnknownUser, "unknown_user"),
        (MailboxProblem::NoMailbox, "no_mailbox"),
        (MailboxProblem::PolicyDenied, "policy_denied"),
        (MailboxProblem::AccessDenied, "access_denied"),
    ];
    for (p, code) in cases {
        assert_eq!(p.code(), code);
        assert_eq!(p.to_string(), code);
        assert!(!p.description().is_empty());
    }
}

#[test]
fn token_errors_without_microsofts_body_are_still_classified() {
    // AADSTS only in the description, error_codes as strings.
    let e = GraphError::from_token_response(
        401,
        &json!({"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided."}),
    );
    assert_eq!(e.aadsts, Some(7000215));
    assert_eq!(
        e.class,
        ErrorClass::Credentials(TokenProblem::InvalidSecret)
    );
    let e = GraphError::from_token_response(
        400,
        &json!({"error":"invalid_client","error_codes":["7000222"]}),
    );
    assert_eq!(
        e.class,
        ErrorClass::Credentials(TokenProblem::ExpiredSecret)
    );
    // A proxy's HTML 502 / an empty 503: retry.
    let e = GraphError::from_token_response(502, &Value::String("<html>bad</html>".into()));
    assert!(e.is_retryable());
    assert_eq!(e.code, "token_endpoint_error");
    assert!(e.to_string().starts_with("token endpoint 502"), "{e}");
    assert!(GraphError::from_token_response(503, &Value::Null).is_retryable());
    // A 404 (wrong login_url): the credentials/configuration need an admin.
    let e = GraphError::from_token_response(404, &Value::Null);
    assert_eq!(
        e.class,
        ErrorClass::Credentials(TokenProblem::Other {
            code: None,
            error: "http_404".into()
        })
    );
    // OAuth error names without a code.
    let e = GraphError::from_token_response(400, &json!({"error":"invalid_tenant"}));
    assert_eq!(
        e.class,
        ErrorClass::Credentials(TokenProblem::TenantNotFound)
    );
    let e = GraphError::from_token_response(400, &json!({"error":"invalid_scope"}));
    assert_eq!(e.class, ErrorClass::Credentials(TokenProblem::InvalidScope));
    // A 200 without access_token.
    assert!(GraphError::from_token_response(200, &json!({"token_type":"Bearer"})).is_retryable());
}

#[test]
fn redact_removes_an_echoed_secret() {
    let mut e = GraphError::from_token_response(
        401,
        &json!({"error":"invalid_client","error_description":"AADSTS7000215: secret 'hunter2-secret' is wrong","error_codes":[7000215]}),
    );
    e.redact("hunter2-secret");
    assert!(!format!("{e} {e:?}").contains("hunter2"));
    assert!(e.message.contains("***"));
}

#[test]
fn transport_errors_are_retryable() {
    let e = GraphError::local(
        "MissingBatchResponse",
        "no answer",
        ErrorClass::Retryable { after: None },
    );
    assert!(e.is_retryable());
    assert_eq!(e.to_string(), "Graph MissingBatchResponse: no answer");
}
