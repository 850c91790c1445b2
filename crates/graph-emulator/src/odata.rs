//! OData query options on event lists and the `Prefer` header (GRAPH.md §2.1, §2.6, §2.9).
//!
//! Supported `$filter` grammar (exactly what §2.6 documents for finding events by a tag):
//! `singleValueExtendedProperties/Any(ep: ep/id eq '{id}' and ep/value eq '{value}')`
//! (`any` case-insensitive, any variable name, clauses in either order, `''` inside literals;
//! the id's `Name` part compares case-sensitively, the value case-insensitively).
//! `$expand=singleValueExtendedProperties($filter=id eq '{id}')` (or without the filter: all).

use super::errors::{ErrorReply, wire};
use super::events::{ExtMode, StoredEvent, canonical_property, normalize_ext_id};
use super::timezones::{self, Zone};
use super::util::Headers;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    LParen,
    RParen,
    Colon,
}

fn tokenize(s: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' => {
                out.push(Tok::LParen);
                i += 1;
            }
            ')' => {
                out.push(Tok::RParen);
                i += 1;
            }
            ':' => {
                out.push(Tok::Colon);
                i += 1;
            }
            '\'' => {
                let mut lit = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return None,
                        Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                            lit.push('\'');
                            i += 2;
                        }
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            lit.push(c);
                            i += 1;
                        }
                    }
                }
                out.push(Tok::Str(lit));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.get(i) {
                    if c.is_whitespace() || matches!(c, '(' | ')' | ':' | '\'') {
                        break;
                    }
                    w.push(c);
                    i += 1;
                }
                out.push(Tok::Word(w));
            }
        }
    }
    Some(out)
}

/// A parsed extended-property filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ExtFilter {
    /// Normalised property id.
    pub id: Option<String>,
    pub value: Option<String>,
}

impl ExtFilter {
    pub fn matches(&self, ev: &StoredEvent) -> bool {
        match (&self.id, &self.value) {
            (Some(id), Some(v)) => ev
                .ext_value(id)
                .is_some_and(|x| x.to_lowercase() == v.to_lowercase()),
            (Some(id), None) => ev.ext_value(id).is_some(),
            (None, Some(v)) => ev
                .ext
                .iter()
                .any(|p| p.value.to_lowercase() == v.to_lowercase()),
            (None, None) => true,
        }
    }
}

fn invalid_filter() -> ErrorReply {
    ErrorReply::new(400, wire::INVALID_FILTER_CODE, wire::INVALID_FILTER)
}

/// Parses `var/id eq 'x' [and var/value eq 'y']` (either order) from `toks`, given the
/// variable name (`None` in `$expand`'s inner filter, where paths are bare `id`/`value`).
fn parse_clauses(toks: &[Tok], var: Option<&str>) -> Result<ExtFilter, ErrorReply> {
    let mut f = ExtFilter::default();
    let mut i = 0;
    loop {
        let (Some(Tok::Word(path)), Some(Tok::Word(op)), Some(Tok::Str(lit))) =
            (toks.get(i), toks.get(i + 1), toks.get(i + 2))
        else {
            return Err(invalid_filter());
        };
        if !op.eq_ignore_ascii_case("eq") {
            return Err(invalid_filter());
        }
        let field = match var {
            Some(v) => {
                let (head, tail) = path.split_once('/').ok_or_else(invalid_filter)?;
                if head != v {
                    return Err(invalid_filter());
                }
                tail
            }
            None => path.as_str(),
        };
        if field.eq_ignore_ascii_case("id") && f.id.is_none() {
            f.id = Some(normalize_ext_id(lit).ok_or_else(invalid_filter)?);
        } else if field.eq_ignore_ascii_case("value") && f.value.is_none() {
            f.value = Some(lit.clone());
        } else {
            return Err(invalid_filter());
        }
        i += 3;
        match toks.get(i) {
            None => return Ok(f),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("and") => i += 1,
            _ => return Err(invalid_filter()),
        }
    }
}

pub(crate) fn parse_filter(s: &str) -> Result<ExtFilter, ErrorReply> {
    let toks = tokenize(s).ok_or_else(invalid_filter)?;
    let [
        Tok::Word(head),
        Tok::LParen,
        Tok::Word(var),
        Tok::Colon,
        rest @ ..,
        Tok::RParen,
    ] = toks.as_slice()
    else {
        return Err(invalid_filter());
    };
    if !head.eq_ignore_ascii_case("singleValueExtendedProperties/any") {
        return Err(invalid_filter());
    }
    let f = parse_clauses(rest, Some(var))?;
    if f.id.is_none() {
        return Err(invalid_filter());
    }
    Ok(f)
}

pub(crate) fn parse_expand(s: &str) -> Result<ExtMode, ErrorReply> {
    let s = s.trim();
    const PROP: &str = "singleValueExtendedProperties";
    let bad = || {
        ErrorReply::bad_request(format!(
            "Parsing OData Select and Expand failed: Could not find a property named '{s}' on type 'microsoft.graph.event'."
        ))
    };
    if s.len() < PROP.len() || !s[..PROP.len()].eq_ignore_ascii_case(PROP) {
        return Err(bad());
    }
    let rest = s[PROP.len()..].trim();
    if rest.is_empty() {
        return Ok(ExtMode::All);
    }
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(bad)?
        .trim();
    let Some(filter) = inner
        .get(..8)
        .filter(|p| p.eq_ignore_ascii_case("$filter="))
        .map(|_| &inner[8..])
    else {
        return Err(bad());
    };
    let toks = tokenize(filter).ok_or_else(invalid_filter)?;
    let f = parse_clauses(&toks, None)?;
    match (f.id, f.value) {
        (Some(id), None) => Ok(ExtMode::Only(id)),
        _ => Err(invalid_filter()),
    }
}

/// Sort key for `$orderby`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum OrderBy {
    Start,
    End,
    Created,
    Modified,
    Subject,
}

/// Query options of an event list / calendarView / single-event GET.
#[derive(Debug, Clone, Default)]
pub(crate) struct EventQuery {
    pub filter: Option<ExtFilter>,
    pub expand: Option<ExtMode>,
    pub select: Option<Vec<String>>,
    pub top: Option<usize>,
    pub skip: usize,
    pub count: bool,
    pub order: Option<(OrderBy, bool)>,
    /// `startDateTime` / `endDateTime` (calendarView), raw.
    pub start_date_time: Option<String>,
    pub end_date_time: Option<String>,
}

pub(crate) fn parse_event_query(pairs: &[(String, String)]) -> Result<EventQuery, ErrorReply> {
    let mut q = EventQuery::default();
    for (k, v) in pairs {
        let key = k.to_ascii_lowercase();
        match key.as_str() {
            "$filter" => q.filter = Some(parse_filter(v)?),
            "$expand" => q.expand = Some(parse_expand(v)?),
            "$select" => {
                let mut list = Vec::new();
                for name in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let Some(p) = canonical_property(name) else {
                        return Err(ErrorReply::new(
                            400,
                            "RequestBroker--ParseUri",
                            format!(
                                "Could not find a property named '{name}' on type 'microsoft.graph.event'."
                            ),
                        ));
                    };
                    list.push(p.to_string());
                }
                q.select = Some(list);
            }
            "$top" => {
                q.top = Some(v.trim().parse().map_err(|_| {
                    ErrorReply::bad_request(format!(
                        "Invalid value '{v}' for $top query option found."
                    ))
                })?)
            }
            "$skip" => {
                q.skip = v.trim().parse().map_err(|_| {
                    ErrorReply::bad_request(format!(
                        "Invalid value '{v}' for $skip query option found."
                    ))
                })?
            }
            "$count" => q.count = v.eq_ignore_ascii_case("true"),
            "$orderby" => {
                let mut parts = v.split_whitespace();
                let field = parts.next().unwrap_or("");
                let desc = match parts.next() {
                    None => false,
                    Some(d) if d.eq_ignore_ascii_case("asc") => false,
                    Some(d) if d.eq_ignore_ascii_case("desc") => true,
                    Some(_) => {
                        return Err(ErrorReply::bad_request(format!("Invalid $orderby '{v}'.")));
                    }
                };
                let key = match field.to_ascii_lowercase().as_str() {
                    "start/datetime" => OrderBy::Start,
                    "end/datetime" => OrderBy::End,
                    "createddatetime" => OrderBy::Created,
                    "lastmodifieddatetime" => OrderBy::Modified,
                    "subject" => OrderBy::Subject,
                    _ => {
                        return Err(ErrorReply::bad_request(format!(
                            "The emulator cannot order events by '{field}'."
                        )));
                    }
                };
                q.order = Some((key, desc));
            }
            "startdatetime" => q.start_date_time = Some(v.clone()),
            "enddatetime" => q.end_date_time = Some(v.clone()),
            _ if key.starts_with('$') => {
                return Err(ErrorReply::bad_request(format!(
                    "Query option '{k}' is not allowed. Make sure that the query option is supported for this resource."
                )));
            }
            _ => {}
        }
    }
    Ok(q)
}

/// The parts of `Prefer` the emulator honours.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prefer {
    /// Raw `outlook.timezone` value and whether it is an accepted zone.
    pub tz_raw: Option<String>,
    pub tz: Option<&'static Zone>,
    pub text_body: bool,
    pub html_body: bool,
    pub immutable_id: bool,
    pub max_page_size: Option<usize>,
}

/// Splits a header value on commas outside double quotes.
fn split_outside_quotes(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

pub(crate) fn parse_prefer(headers: &Headers, accept_iana: bool) -> Prefer {
    let mut p = Prefer::default();
    for value in headers.get_all("prefer") {
        for item in split_outside_quotes(value) {
            let Some((k, v)) = item.split_once('=') else {
                continue;
            };
            let key = k.trim().to_ascii_lowercase();
            let v = v.trim().trim_matches('"');
            match key.as_str() {
                "outlook.timezone" => {
                    p.tz_raw = Some(v.to_string());
                    p.tz = timezones::lookup(v, accept_iana);
                }
                "outlook.body-content-type" => {
                    p.text_body = v.eq_ignore_ascii_case("text");
                    p.html_body = v.eq_ignore_ascii_case("html");
                }
                "idtype" => p.immutable_id = v.eq_ignore_ascii_case("ImmutableId"),
                "odata.maxpagesize" => p.max_page_size = v.parse().ok(),
                _ => {}
            }
        }
    }
    p
}

impl Prefer {
    /// The `Preference-Applied` value for what was honoured, if anything.
    pub fn applied(&self, events: bool) -> Option<String> {
        let mut parts = Vec::new();
        if let Some(z) = self.tz {
            parts.push(format!("outlook.timezone=\"{}\"", z.name));
        }
        if events && self.text_body {
            parts.push("outlook.body-content-type=\"text\"".to_string());
        }
        if events && self.html_body {
            parts.push("outlook.body-content-type=\"html\"".to_string());
        }
        if self.immutable_id {
            parts.push("IdType=\"ImmutableId\"".to_string());
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "String {66f5a359-4659-4830-9070-00047ec6ac6e} Name SourceKey";

    #[test]
    fn filter_grammar() {
        let f = parse_filter(&format!(
            "singleValueExtendedProperties/Any(ep: ep/id eq '{ID}' and ep/value eq 'it''s')"
        ))
        .unwrap();
        assert_eq!(f.value.as_deref(), Some("it's"));
        assert_eq!(f.id, normalize_ext_id(ID));
        let g = parse_filter(&format!(
            "singlevalueextendedproperties/any(x:x/value eq 'v' AND x/id eq '{ID}')"
        ))
        .unwrap();
        assert_eq!(g.id, f.id);
        for bad in [
            "subject eq 'x'",
            "singleValueExtendedProperties/Any(ep: ep/value eq 'v')",
            &format!("singleValueExtendedProperties/Any(ep: other/id eq '{ID}')"),
            &format!("singleValueExtendedProperties/Any(ep: ep/id eq '{ID}'"),
            &format!("singleValueExtendedProperties/Any(ep: ep/id ne '{ID}')"),
        ] {
            assert!(parse_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn expand_grammar() {
        assert_eq!(
            parse_expand(&format!(
                "singleValueExtendedProperties($filter=id eq '{ID}')"
            ))
            .unwrap(),
            ExtMode::Only(normalize_ext_id(ID).unwrap())
        );
        assert_eq!(
            parse_expand("singleValueExtendedProperties").unwrap(),
            ExtMode::All
        );
        assert!(parse_expand("attachments").is_err());
    }

    #[test]
    fn prefer_header() {
        let h = Headers(vec![
            (
                "Prefer".into(),
                "outlook.timezone=\"Tokyo Standard Time\", IdType=\"ImmutableId\"".into(),
            ),
            ("prefer".into(), "outlook.body-content-type=\"text\"".into()),
        ]);
        let p = parse_prefer(&h, true);
        assert_eq!(p.tz.unwrap().name, "Tokyo Standard Time");
        assert!(p.immutable_id && p.text_body);
    }
}
