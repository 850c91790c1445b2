//! An event in Graph's response shape: `$select`, `Prefer: outlook.timezone` and
//! `outlook.body-content-type`, extended properties when expanded.

use serde_json::{Map, Value, json};

use super::{EventTime, ExtMode, RenderOpts, StoredEvent};
use crate::timezones;
use crate::util;

impl StoredEvent {
    fn body_text(&self) -> String {
        if self.body_html {
            strip_html(&self.body_content)
        } else {
            self.body_content.clone()
        }
    }

    fn body_html(&self) -> String {
        if self.body_html {
            if self.body_content.to_ascii_lowercase().contains("<html") {
                self.body_content.clone()
            } else {
                wrap_html(&self.body_content)
            }
        } else if self.body_content.is_empty() {
            String::new()
        } else {
            wrap_html(&util::html_escape(&self.body_content).replace('\n', "<br>\r\n"))
        }
    }

    fn render_time(&self, t: &EventTime, opts: &RenderOpts) -> Value {
        if self.is_all_day {
            // All-day events come back midnight-to-midnight whatever the zone (GRAPH.md §2.4).
            let label = opts.tz.map_or("UTC", |z| z.name);
            return json!({"dateTime": util::civil7(t.local), "timeZone": label});
        }
        let zone = opts.tz.unwrap_or_else(timezones::utc);
        json!({"dateTime": util::civil7(zone.tz.to_datetime(t.instant)), "timeZone": zone.name})
    }

    /// The event in Graph's response shape.
    pub fn render(&self, opts: &RenderOpts) -> Value {
        let mut m = Map::new();
        if let Some(ctx) = &opts.context {
            m.insert("@odata.context".into(), json!(ctx));
        }
        m.insert("@odata.etag".into(), json!(self.etag()));
        m.insert("id".into(), json!(self.id));
        let wanted = |name: &str| opts.select.is_none_or(|s| s.iter().any(|x| x == name));
        let text = self.body_text();
        let fields = self
            .summary_fields(&text)
            .into_iter()
            .chain(self.content_fields(&text, opts));
        for (name, v) in fields {
            if wanted(name) {
                m.insert(name.into(), v);
            }
        }
        let ext: Vec<Value> = match &opts.ext {
            ExtMode::None => Vec::new(),
            ExtMode::All => self
                .ext
                .iter()
                .map(|p| json!({"id": p.id, "value": p.value}))
                .collect(),
            ExtMode::Only(want) => self
                .ext
                .iter()
                .filter(|p| &p.key == want)
                .map(|p| json!({"id": p.id, "value": p.value}))
                .collect(),
        };
        if !ext.is_empty() {
            m.insert("singleValueExtendedProperties".into(), Value::Array(ext));
        }
        Value::Object(m)
    }

    /// The properties from `createdDateTime` to `webLink`, in Graph's order (`text` is the body
    /// as text, for `bodyPreview`).
    fn summary_fields(&self, text: &str) -> Vec<(&'static str, Value)> {
        let mut f = Vec::new();
        let p = |name: &str| self.props.get(name).cloned().unwrap_or(Value::Null);
        f.push((
            "createdDateTime",
            json!(util::graph_timestamp(self.created)),
        ));
        f.push((
            "lastModifiedDateTime",
            json!(util::graph_timestamp(self.modified)),
        ));
        f.push(("changeKey", json!(self.change_key)));
        f.push(("categories", p("categories")));
        if let Some(tx) = &self.transaction_id {
            f.push(("transactionId", json!(tx)));
        }
        f.push(("originalStartTimeZone", json!(self.start.zone.name)));
        f.push(("originalEndTimeZone", json!(self.end.zone.name)));
        f.push(("iCalUId", json!(self.ical_uid)));
        f.push((
            "reminderMinutesBeforeStart",
            p("reminderMinutesBeforeStart"),
        ));
        f.push(("isReminderOn", p("isReminderOn")));
        f.push(("hasAttachments", json!(false)));
        f.push(("subject", json!(self.subject)));
        let preview: String = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(255)
            .collect();
        f.push(("bodyPreview", json!(preview)));
        f.push(("importance", p("importance")));
        f.push(("sensitivity", p("sensitivity")));
        f.push(("isAllDay", json!(self.is_all_day)));
        f.push(("isCancelled", json!(false)));
        f.push(("isOrganizer", json!(true)));
        f.push(("responseRequested", p("responseRequested")));
        f.push(("seriesMasterId", Value::Null));
        f.push(("showAs", p("showAs")));
        let kind = if self.props.get("recurrence").is_some_and(|r| !r.is_null()) {
            "seriesMaster"
        } else {
            "singleInstance"
        };
        f.push(("type", json!(kind)));
        f.push((
            "webLink",
            json!(format!(
                "https://outlook.office365.com/owa/?itemid={}&exvsurl=1&path=/calendar/item",
                util::percent_encode(&self.id)
            )),
        ));
        f
    }

    /// The properties from the online meeting to the end, in Graph's order: the body (`text`,
    /// or HTML), start and end in the preferred zone, locations, attendees, organizer.
    fn content_fields(&self, text: &str, opts: &RenderOpts) -> Vec<(&'static str, Value)> {
        let mut f = Vec::new();
        let p = |name: &str| self.props.get(name).cloned().unwrap_or(Value::Null);
        let online = self.props.get("isOnlineMeeting") == Some(&json!(true));
        let join_url = format!(
            "https://teams.microsoft.com/l/meetup-join/emulator/{}",
            util::percent_encode(&self.ical_uid)
        );
        f.push(("onlineMeetingUrl", Value::Null));
        f.push(("isOnlineMeeting", json!(online)));
        f.push(("onlineMeetingProvider", p("onlineMeetingProvider")));
        f.push(("allowNewTimeProposals", p("allowNewTimeProposals")));
        f.push(("isDraft", json!(false)));
        f.push(("hideAttendees", p("hideAttendees")));
        f.push((
            "responseStatus",
            json!({"response": "organizer", "time": "0001-01-01T00:00:00Z"}),
        ));
        let body = if opts.text_body {
            json!({"contentType": "text", "content": text})
        } else {
            json!({"contentType": "html", "content": self.body_html()})
        };
        f.push(("body", body));
        f.push(("start", self.render_time(&self.start, opts)));
        f.push(("end", self.render_time(&self.end, opts)));
        f.push(("location", p("location")));
        f.push(("locations", p("locations")));
        f.push(("recurrence", p("recurrence")));
        f.push(("attendees", p("attendees")));
        f.push(("organizer", self.organizer.clone()));
        f.push((
            "onlineMeeting",
            if online {
                json!({"joinUrl": join_url})
            } else {
                Value::Null
            },
        ));
        f
    }
}

pub(super) fn wrap_html(inner: &str) -> String {
    format!(
        "<html>\r\n<head>\r\n<meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">\r\n</head>\r\n<body>\r\n{inner}\r\n</body>\r\n</html>\r\n"
    )
}

/// Crude HTML → text for `Prefer: outlook.body-content-type="text"` and `bodyPreview`.
pub(super) fn strip_html(html: &str) -> String {
    let lower = html.to_ascii_lowercase();
    let body = match (lower.find("<body"), lower.rfind("</body>")) {
        (Some(a), Some(b)) if a < b => {
            let open_end = html[a..].find('>').map_or(a, |i| a + i + 1);
            &html[open_end.min(b)..b]
        }
        _ => html,
    };
    let mut body = body.replace("\r\n", "\n");
    for br in ["<br>", "<br/>", "<br />"] {
        body = body.replace(&format!("{br}\n"), "\n").replace(br, "\n");
    }
    let mut out = String::with_capacity(body.len());
    let mut in_tag = false;
    for c in body.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&")
        .trim()
        .to_string()
}
