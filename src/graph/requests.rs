//! The Graph requests this service makes on a mailbox's calendar: the events path, the lookup of
//! a copy by its tag, and the create, update and delete of a copy. The flush and the admin's clean
//! unlink both build their requests here.
//!
//! **A tag lookup is never trusted to be exact.** Exchange compares strings in a `$filter`
//! without regard to case, so looking for `cyzen/v1/acme/CaseX` also returns the copy of
//! `casex`, a different schedule. A lookup therefore asks for the tag itself
//! (`$expand=singleValueExtendedProperties(...)`), and [`LookupPage::exact`] keeps only the
//! copies whose tag is byte-for-byte the one looked for; other matches are never updated or
//! deleted. When a page is full, the next one is followed ([`LookupPage::next`]), so an exact
//! match is found however many case variants share the mailbox.

use serde_json::Value;

use super::client::{GraphRequest, Method, path_segment};
use super::mapping::{self, MappingOptions};
use crate::event::Schedule;

/// Copies asked for per lookup page (Graph's default page size for events).
pub const LOOKUP_PAGE_SIZE: usize = 10;

/// `/users/{mailbox}/events`.
pub fn events_path(mailbox: &str) -> String {
    format!("/users/{}/events", path_segment(mailbox))
}

/// `/users/{mailbox}/events/{id}`.
pub fn event_path(mailbox: &str, event_id: &str) -> String {
    format!("{}/{}", events_path(mailbox), path_segment(event_id))
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay as they are).
pub fn query_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The first page of a lookup of a schedule's copy in a mailbox by its tag: the ids of the
/// events whose tag matches (case-insensitively, as Exchange compares), with their tags.
pub fn lookup_path(mailbox: &str, company_id: &str, schedule_id: &str) -> String {
    format!(
        "{}?$filter={}&$select=id&$expand={}&$top={LOOKUP_PAGE_SIZE}",
        events_path(mailbox),
        query_encode(&mapping::tag_filter(company_id, schedule_id)),
        query_encode(&mapping::tag_expand()),
    )
}

/// A lookup request: the first page, or the page `next` (relative to the Graph base URL, from
/// [`LookupPage::next`]).
pub fn lookup(
    id: impl Into<String>,
    mailbox: &str,
    company_id: &str,
    schedule_id: &str,
    next: Option<&str>,
) -> GraphRequest {
    let path = match next {
        Some(p) => p.to_string(),
        None => lookup_path(mailbox, company_id, schedule_id),
    };
    GraphRequest::get(id, path)
}

/// The create of a copy (with its recorded transactionId).
pub fn create(
    id: impl Into<String>,
    mailbox: &str,
    schedule: &Schedule,
    company_id: &str,
    schedule_id: &str,
    transaction_id: &str,
    opts: &MappingOptions<'_>,
) -> GraphRequest {
    GraphRequest::post(
        id,
        events_path(mailbox),
        mapping::create_body(schedule, company_id, schedule_id, transaction_id, opts),
    )
}

/// The update of a copy to the schedule's state.
pub fn update(
    id: impl Into<String>,
    mailbox: &str,
    event_id: &str,
    schedule: &Schedule,
    company_id: &str,
    schedule_id: &str,
    opts: &MappingOptions<'_>,
) -> GraphRequest {
    GraphRequest::patch(
        id,
        event_path(mailbox, event_id),
        mapping::update_body(schedule, company_id, schedule_id, opts),
    )
}

/// The delete of a copy.
pub fn delete(id: impl Into<String>, mailbox: &str, event_id: &str) -> GraphRequest {
    GraphRequest::new(id, Method::Delete, event_path(mailbox, event_id))
}

/// What one page of a tag lookup found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LookupPage {
    /// The events whose tag is exactly the schedule's, in the order Graph listed them.
    pub exact: Vec<String>,
    /// The next page (a path relative to the Graph base URL), when this one was not the last.
    pub next: Option<String>,
}

impl LookupPage {
    /// Reads a lookup answer (whole, or trimmed by [`trim_answer`]), keeping only the copies of
    /// exactly this schedule. `base_url` is the Graph base (`https://graph.microsoft.com/v1.0`),
    /// which `@odata.nextLink` is made relative to.
    pub fn read(body: &Value, company_id: &str, schedule_id: &str, base_url: &str) -> LookupPage {
        let tag = mapping::tag_value(company_id, schedule_id);
        let exact = body
            .get("value")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|e| event_tag(e).is_some_and(|t| t == tag))
            .filter_map(|e| e.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        let next = body
            .get("@odata.nextLink")
            .and_then(Value::as_str)
            .and_then(|link| relative_link(base_url, link));
        LookupPage { exact, next }
    }
}

/// The tag value of a listed event (from `$expand=singleValueExtendedProperties(...)`).
pub fn event_tag(event: &Value) -> Option<&str> {
    event
        .get("singleValueExtendedProperties")?
        .as_array()?
        .iter()
        .find(|p| {
            p.get("id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.eq_ignore_ascii_case(mapping::TAG_PROPERTY_ID))
        })?
        .get("value")?
        .as_str()
}

/// Of a successful answer, what the flush reads: the event's `id` and `changeKey`; for a list, each event's `id`
/// and tag, and the next page's link. The rest is dropped where the answer is read.
pub fn trim_answer(body: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for keep in ["id", "changeKey"] {
        if let Some(v) = body.get(keep) {
            out.insert(keep.into(), v.clone());
        }
    }
    if let Some(list) = body.get("value").and_then(Value::as_array) {
        let items = list
            .iter()
            .map(|e| {
                let mut item = serde_json::Map::new();
                if let Some(id) = e.get("id") {
                    item.insert("id".into(), id.clone());
                }
                if let Some(tag) = event_tag(e) {
                    item.insert(
                        "singleValueExtendedProperties".into(),
                        serde_json::json!([{ "id": mapping::TAG_PROPERTY_ID, "value": tag }]),
                    );
                }
                Value::Object(item)
            })
            .collect();
        out.insert("value".into(), Value::Array(items));
    }
    if let Some(next) = body.get("@odata.nextLink") {
        out.insert("@odata.nextLink".into(), next.clone());
    }
    Value::Object(out)
}

/// `link` (an absolute `@odata.nextLink`) as a path relative to `base_url`, which is how a
/// `$batch` item names its URL. `None` if the link is not under the base's path.
pub fn relative_link(base_url: &str, link: &str) -> Option<String> {
    let link = url::Url::parse(link).ok()?;
    let base = url::Url::parse(base_url).ok()?;
    let base_path = base.path().trim_end_matches('/');
    let rest = link.path().strip_prefix(base_path)?;
    if !rest.starts_with('/') {
        return None;
    }
    Some(match link.query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn listed(id: &str, tag: &str) -> Value {
        json!({
            "id": id,
            "subject": "dropped by trim",
            "singleValueExtendedProperties": [{ "id": mapping::TAG_PROPERTY_ID, "value": tag }],
        })
    }

    #[test]
    fn a_lookup_keeps_only_copies_whose_tag_is_exactly_the_schedules() {
        let body = json!({
            "value": [
                listed("E-lower", &mapping::tag_value("acme", "casex")),
                listed("E-upper", &mapping::tag_value("acme", "CaseX")),
                listed("E-other-company", &mapping::tag_value("ACME", "CaseX")),
                { "id": "E-untagged" },
            ]
        });
        let base = "https://graph.microsoft.com/v1.0";
        for b in [body.clone(), trim_answer(&body)] {
            let page = LookupPage::read(&b, "acme", "CaseX", base);
            assert_eq!(page.exact, vec!["E-upper".to_string()]);
            assert_eq!(page.next, None);
            assert!(LookupPage::read(&b, "acme", "casey", base).exact.is_empty());
        }
        assert!(trim_answer(&body)["value"][0].get("subject").is_none());
    }

    #[test]
    fn a_full_lookup_page_leads_to_the_next_page_relative_to_the_graph_base() {
        let body = json!({
            "value": [listed("E-1", &mapping::tag_value("acme", "casex"))],
            "@odata.nextLink": "https://graph.microsoft.com/v1.0/users/a%40b.com/events?$filter=x&$skip=10",
        });
        let page = LookupPage::read(
            &trim_answer(&body),
            "acme",
            "CaseX",
            "https://graph.microsoft.com/v1.0",
        );
        assert!(page.exact.is_empty());
        assert_eq!(
            page.next.as_deref(),
            Some("/users/a%40b.com/events?$filter=x&$skip=10")
        );
        assert_eq!(
            relative_link(
                "http://127.0.0.1:9/v1.0",
                "https://graph.microsoft.com/beta/users/x/events"
            ),
            None,
            "a link outside the base is not followed"
        );
    }

    #[test]
    fn the_lookup_asks_for_the_tag_and_encodes_the_filter() {
        let p = lookup_path("Taro@x.com", "acme", "it's");
        assert!(
            p.starts_with(
                "/users/Taro@x.com/events?$filter=singleValueExtendedProperties%2FAny%28ep%3A%20"
            ),
            "{p}"
        );
        assert!(p.contains("it%27%27s"), "quotes doubled, then encoded: {p}");
        assert!(
            p.contains(
                "&$select=id&$expand=singleValueExtendedProperties%28%24filter%3Did%20eq%20"
            ),
            "{p}"
        );
        assert!(p.ends_with("&$top=10"), "{p}");
    }
}
