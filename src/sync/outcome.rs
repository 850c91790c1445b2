//! What happens to a change after Graph answered one of its requests: a pure transition from
//! (the request, the answer, the attempts so far) to the next step, the finished copy, a retry,
//! or a dead letter. The engine does the I/O that follows; every arm here is unit-tested.

use std::time::Duration;

use serde_json::Value;

use super::batch::{Request, Step};
use crate::graph::error::{ErrorClass, GraphError};
use crate::graph::requests::LookupPage;

/// What the transition needs to know besides the answer.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub company_id: &'a str,
    pub schedule_id: &'a str,
    /// The Graph base URL (a lookup's next page is made relative to it).
    pub graph_base: &'a str,
    /// Attempts of the current request that count (this one included, if it counts).
    pub attempts: u32,
    /// `retry.max_attempts`.
    pub max_attempts: u32,
    /// How long ago the change was staged.
    pub age: Duration,
    /// `retry.give_up_after_seconds`.
    pub give_up_after: Duration,
}

/// How the copy's record changes when a change finishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFate {
    /// The copy is (now) this event, created with this transactionId (creates only), as our
    /// write left it (`ck`: the changeKey Graph answered).
    Put {
        event_id: Option<String>,
        tx: Option<String>,
        ck: Option<String>,
    },
    /// There is no copy (any more).
    Remove,
}

/// The transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transition {
    /// Go on at once with this step (queued at the front of its mailbox); the attempts count
    /// starts over: a lookup that found its answer, a copy found gone.
    Again(Step),
    /// Finished: the copy's record becomes `copy`, and the ledger says `reason` of `op`.
    /// `written`: Outlook was changed (counted as a write).
    Finished {
        copy: CopyFate,
        op: &'static str,
        reason: &'static str,
        written: bool,
    },
    /// Retry `request` after the mailbox waits (`retry_after` if Graph gave one, else the
    /// backoff). `refresh_token`: the token is forgotten first. `counted`: the failure counts
    /// against `max_attempts` (Graph throttling, a 429 or 503 that says `Retry-After`, does not:
    /// it is waited out, within `give_up_after`).
    Retry {
        request: Request,
        retry_after: Option<Duration>,
        refresh_token: bool,
        counted: bool,
    },
    /// Give up: a dead letter with this reason.
    GiveUp { reason: &'static str },
}

/// The transition after `request` was answered with `answer` (a success's body, trimmed to the
/// ids and tags the flush reads, or the failure).
pub fn decide(
    request: &Request,
    answer: Result<&Value, &GraphError>,
    cx: &Context<'_>,
) -> Transition {
    match answer {
        Ok(body) => succeeded(request, body, cx),
        Err(e) => failed(request, e, cx),
    }
}

fn succeeded(request: &Request, body: &Value, cx: &Context<'_>) -> Transition {
    let found = || LookupPage::read(body, cx.company_id, cx.schedule_id, cx.graph_base);
    let finished = |copy, op, reason, written| Transition::Finished {
        copy,
        op,
        reason,
        written,
    };
    match request {
        Request::Lookup { then_create_tx, .. } => {
            // Only a copy tagged with exactly this schedule is ours: Graph's filter also returns
            // the copies of ids that differ only in case.
            let page = found();
            Transition::Again(match (page.exact.into_iter().next(), page.next) {
                (Some(event_id), _) => Step::Ready(Request::Update { event_id }),
                (None, Some(next)) => Step::Ready(Request::Lookup {
                    then_create_tx: then_create_tx.clone(),
                    page: Some(next),
                }),
                (None, None) => match then_create_tx {
                    Some(tx) => Step::Ready(Request::Create { tx: tx.clone() }),
                    None => Step::NeedsIntent,
                },
            })
        }
        Request::LookupForDelete { .. } => {
            let page = found();
            match (page.exact.into_iter().next(), page.next) {
                (Some(event_id), _) => Transition::Again(Step::Ready(Request::Delete { event_id })),
                (None, Some(next)) => {
                    Transition::Again(Step::Ready(Request::LookupForDelete { page: Some(next) }))
                }
                (None, None) => finished(CopyFate::Remove, "lookup", "already_gone", false),
            }
        }
        Request::Create { tx } => {
            let event_id = body.get("id").and_then(Value::as_str).map(str::to_string);
            let copy = CopyFate::Put {
                event_id,
                tx: Some(tx.clone()),
                ck: change_key(body),
            };
            finished(copy, "create", "created", true)
        }
        Request::Update { event_id } => {
            let copy = CopyFate::Put {
                event_id: Some(event_id.clone()),
                tx: None,
                ck: change_key(body),
            };
            finished(copy, "update", "updated", true)
        }
        Request::Delete { .. } => finished(CopyFate::Remove, "delete", "deleted", true),
    }
}

/// The changeKey a write's answer carries.
fn change_key(body: &Value) -> Option<String> {
    body.get("changeKey")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn failed(request: &Request, e: &GraphError, cx: &Context<'_>) -> Transition {
    match (&e.class, request) {
        (ErrorClass::ItemGone, Request::Delete { .. }) => Transition::Finished {
            copy: CopyFate::Remove,
            op: "delete",
            reason: "already_gone",
            written: false,
        },
        // The copy was deleted in Outlook: create it again (after recording a new intent).
        (ErrorClass::ItemGone, Request::Update { .. }) => Transition::Again(Step::NeedsIntent),
        (ErrorClass::Retryable { .. } | ErrorClass::RefreshToken, _)
            if cx.age >= cx.give_up_after =>
        {
            Transition::GiveUp {
                reason: RETRY_TIME_EXHAUSTED,
            }
        }
        (ErrorClass::Retryable { .. }, _) if is_throttled(e) => Transition::Retry {
            request: retried(request, e),
            retry_after: e.retry_after,
            refresh_token: false,
            counted: false,
        },
        (ErrorClass::Retryable { .. } | ErrorClass::RefreshToken, _)
            if cx.attempts < cx.max_attempts =>
        {
            Transition::Retry {
                request: retried(request, e),
                retry_after: e.retry_after,
                refresh_token: e.class == ErrorClass::RefreshToken,
                counted: true,
            }
        }
        (class, _) => Transition::GiveUp {
            reason: give_up_reason(class),
        },
    }
}

/// The reason of a change given up on because Graph kept refusing it for longer than
/// `retry.give_up_after_seconds`.
pub const RETRY_TIME_EXHAUSTED: &str = "retry_time_exhausted";

/// Graph slowing us down, not failing: a 429, or a 503 that says when to come back. Waited
/// out, never counted against the attempts (Microsoft's guidance: back off and retry).
pub fn is_throttled(e: &GraphError) -> bool {
    matches!(e.status, Some(429) | Some(503)) && e.retry_after.is_some()
}

/// What is sent again after a retryable failure. A create that failed ambiguously (a timeout, a
/// dropped connection, a 5xx) may have happened: look for the copy before creating again,
/// whatever Graph does with a repeated transactionId. A 429 or 401 was refused outright.
fn retried(request: &Request, e: &GraphError) -> Request {
    match request {
        Request::Create { tx } if !matches!(e.status, Some(429) | Some(401)) => Request::Lookup {
            then_create_tx: Some(tx.clone()),
            page: None,
        },
        other => other.clone(),
    }
}

/// The dead letter's reason for a failure given up on.
pub fn give_up_reason(class: &ErrorClass) -> &'static str {
    match class {
        ErrorClass::Retryable { .. } | ErrorClass::RefreshToken => "retries_exhausted",
        ErrorClass::Mailbox(p) => p.code(),
        ErrorClass::Credentials(p) => p.code(),
        ErrorClass::ItemGone | ErrorClass::Permanent => "graph_rejected",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::error::{MailboxProblem, TokenProblem};
    use crate::graph::mapping;
    use serde_json::json;

    const BASE: &str = "https://graph.microsoft.com/v1.0";

    fn cx(attempts: u32) -> Context<'static> {
        aged(attempts, Duration::from_secs(60))
    }

    /// A context for a change staged `age` ago, with a give-up time of an hour.
    fn aged(attempts: u32, age: Duration) -> Context<'static> {
        Context {
            company_id: "acme",
            schedule_id: "CaseX",
            graph_base: BASE,
            attempts,
            max_attempts: 3,
            age,
            give_up_after: Duration::from_secs(3600),
        }
    }

    fn err(status: Option<u16>, class: ErrorClass) -> GraphError {
        GraphError {
            status,
            retry_after: match &class {
                ErrorClass::Retryable { after } => *after,
                _ => None,
            },
            ..GraphError::local("Test", "test", class)
        }
    }

    fn lookup(tx: Option<&str>) -> Request {
        Request::Lookup {
            then_create_tx: tx.map(str::to_string),
            page: None,
        }
    }

    fn every_request() -> Vec<Request> {
        vec![
            lookup(Some("T")),
            lookup(None),
            Request::LookupForDelete { page: None },
            Request::Create { tx: "T".into() },
            Request::Update {
                event_id: "E".into(),
            },
            Request::Delete {
                event_id: "E".into(),
            },
        ]
    }

    fn tagged(id: &str, schedule: &str) -> Value {
        json!({"id": id, "singleValueExtendedProperties": [
            {"id": mapping::TAG_PROPERTY_ID, "value": mapping::tag_value("acme", schedule)}]})
    }

    #[test]
    fn throttling_is_waited_out_however_often_until_the_time_budget_is_spent() {
        let e = err(
            Some(429),
            ErrorClass::Retryable {
                after: Some(Duration::from_millis(300)),
            },
        );
        let update = Request::Update {
            event_id: "E".into(),
        };
        // A thousand 429s in a row never spend the attempts: none of them counts.
        for _ in 0..1000 {
            assert!(matches!(
                decide(&update, Err(&e), &aged(1, Duration::from_secs(59 * 60))),
                Transition::Retry { counted: false, .. }
            ));
        }
        assert_eq!(
            decide(&update, Err(&e), &aged(1, Duration::from_secs(3600))),
            Transition::GiveUp {
                reason: RETRY_TIME_EXHAUSTED
            }
        );
        // A 503 without Retry-After may repeat forever: it counts.
        let flaky = err(Some(503), ErrorClass::Retryable { after: None });
        assert!(matches!(
            decide(&update, Err(&flaky), &cx(1)),
            Transition::Retry { counted: true, .. }
        ));
        assert_eq!(
            decide(&update, Err(&flaky), &cx(3)),
            Transition::GiveUp {
                reason: "retries_exhausted"
            }
        );
    }

    #[test]
    fn every_reason_a_change_is_given_up_for_is_a_metric_label_from_the_start() {
        let known = crate::metrics::known::flush_dead_letter_reasons();
        for class in [
            ErrorClass::Retryable { after: None },
            ErrorClass::RefreshToken,
            ErrorClass::ItemGone,
            ErrorClass::Permanent,
            ErrorClass::Mailbox(MailboxProblem::PolicyDenied),
            ErrorClass::Credentials(TokenProblem::ExpiredSecret),
        ] {
            let reason = give_up_reason(&class);
            assert!(known.contains(&reason), "{reason} is not pre-registered");
        }
        assert!(known.contains(&RETRY_TIME_EXHAUSTED));
    }

    #[test]
    fn a_lookup_updates_its_exact_copy_pages_on_or_creates_with_its_transaction_id() {
        let hit = json!({"value": [tagged("E-lower", "casex"), tagged("E-own", "CaseX")]});
        let miss_more = json!({"value": [tagged("E-lower", "casex")],
            "@odata.nextLink": format!("{BASE}/users/a/events?$skip=10")});
        let miss = json!({"value": [tagged("E-lower", "casex")]});
        let d = |r: &Request, body: &Value| decide(r, Ok(body), &cx(1));
        let update = Transition::Again(Step::Ready(Request::Update {
            event_id: "E-own".into(),
        }));
        assert_eq!(d(&lookup(Some("T")), &hit), update);
        assert_eq!(
            d(&lookup(Some("T")), &miss_more),
            Transition::Again(Step::Ready(Request::Lookup {
                then_create_tx: Some("T".into()),
                page: Some("/users/a/events?$skip=10".into()),
            }))
        );
        assert_eq!(
            d(&lookup(Some("T")), &miss),
            Transition::Again(Step::Ready(Request::Create { tx: "T".into() }))
        );
        assert_eq!(
            d(&lookup(None), &miss),
            Transition::Again(Step::NeedsIntent)
        );

        let del = Request::LookupForDelete { page: None };
        assert_eq!(
            d(&del, &hit),
            Transition::Again(Step::Ready(Request::Delete {
                event_id: "E-own".into()
            }))
        );
        assert_eq!(
            d(&del, &miss_more),
            Transition::Again(Step::Ready(Request::LookupForDelete {
                page: Some("/users/a/events?$skip=10".into())
            }))
        );
        assert_eq!(
            d(&del, &miss),
            Transition::Finished {
                copy: CopyFate::Remove,
                op: "lookup",
                reason: "already_gone",
                written: false
            }
        );
    }

    #[test]
    fn a_write_that_succeeded_finishes_with_the_copy_and_the_change_key_it_left() {
        let d = |r: &Request, body: Value| decide(r, Ok(&body), &cx(1));
        assert_eq!(
            d(
                &Request::Create { tx: "T".into() },
                json!({"id": "E-new", "changeKey": "CK1"})
            ),
            Transition::Finished {
                copy: CopyFate::Put {
                    event_id: Some("E-new".into()),
                    tx: Some("T".into()),
                    ck: Some("CK1".into())
                },
                op: "create",
                reason: "created",
                written: true
            }
        );
        assert_eq!(
            d(
                &Request::Update {
                    event_id: "E".into()
                },
                json!({"id": "E", "changeKey": "CK2"})
            ),
            Transition::Finished {
                copy: CopyFate::Put {
                    event_id: Some("E".into()),
                    tx: None,
                    ck: Some("CK2".into())
                },
                op: "update",
                reason: "updated",
                written: true
            }
        );
        assert_eq!(
            d(
                &Request::Delete {
                    event_id: "E".into()
                },
                Value::Null
            ),
            Transition::Finished {
                copy: CopyFate::Remove,
                op: "delete",
                reason: "deleted",
                written: true
            }
        );
    }

    /// Every request kind against every failure class, below the attempt budget and at it.
    #[test]
    fn every_failure_of_every_request_has_one_defined_transition() {
        let classes: Vec<(&str, Option<u16>, ErrorClass)> = vec![
            (
                "429",
                Some(429),
                ErrorClass::Retryable {
                    after: Some(Duration::from_secs(2)),
                },
            ),
            ("503", Some(503), ErrorClass::Retryable { after: None }),
            (
                "503 with Retry-After",
                Some(503),
                ErrorClass::Retryable {
                    after: Some(Duration::from_secs(5)),
                },
            ),
            ("timeout", None, ErrorClass::Retryable { after: None }),
            ("401", Some(401), ErrorClass::RefreshToken),
            ("404 item", Some(404), ErrorClass::ItemGone),
            (
                "mailbox",
                Some(404),
                ErrorClass::Mailbox(MailboxProblem::NoMailbox),
            ),
            (
                "credentials",
                Some(401),
                ErrorClass::Credentials(TokenProblem::InvalidSecret),
            ),
            ("400", Some(400), ErrorClass::Permanent),
        ];
        for request in every_request() {
            for (name, status, class) in &classes {
                let e = err(*status, class.clone());
                for (attempts, age) in [(1, 60), (3, 60), (1, 3600), (3, 7200)] {
                    let got = decide(&request, Err(&e), &aged(attempts, Duration::from_secs(age)));
                    let within_budget = attempts < 3;
                    let within_time = age < 3600;
                    let throttled = is_throttled(&e);
                    let want = match (class, &request) {
                        (ErrorClass::ItemGone, Request::Delete { .. }) => Transition::Finished {
                            copy: CopyFate::Remove,
                            op: "delete",
                            reason: "already_gone",
                            written: false,
                        },
                        (ErrorClass::ItemGone, Request::Update { .. }) => {
                            Transition::Again(Step::NeedsIntent)
                        }
                        (ErrorClass::Retryable { .. } | ErrorClass::RefreshToken, _)
                            if !within_time =>
                        {
                            Transition::GiveUp {
                                reason: RETRY_TIME_EXHAUSTED,
                            }
                        }
                        (ErrorClass::Retryable { .. } | ErrorClass::RefreshToken, _)
                            if within_budget || throttled =>
                        {
                            let ambiguous_create = matches!(request, Request::Create { .. })
                                && !matches!(status, Some(429) | Some(401));
                            Transition::Retry {
                                request: if ambiguous_create {
                                    lookup(Some("T"))
                                } else {
                                    request.clone()
                                },
                                retry_after: e.retry_after,
                                refresh_token: *class == ErrorClass::RefreshToken,
                                counted: !throttled,
                            }
                        }
                        (ErrorClass::Retryable { .. } | ErrorClass::RefreshToken, _) => {
                            Transition::GiveUp {
                                reason: "retries_exhausted",
                            }
                        }
                        (ErrorClass::Mailbox(_), _) => Transition::GiveUp {
                            reason: "no_mailbox",
                        },
                        (ErrorClass::Credentials(_), _) => Transition::GiveUp {
                            reason: TokenProblem::InvalidSecret.code(),
                        },
                        _ => Transition::GiveUp {
                            reason: "graph_rejected",
                        },
                    };
                    assert_eq!(
                        got, want,
                        "{request:?} × {name} at attempt {attempts}, staged {age} s ago"
                    );
                }
            }
        }
    }
}
