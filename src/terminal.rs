//! What the command line prints for a person to read: tables and detail views (`dlq`, `ledger`,
//! `demo`, `publish`), aligned by the columns a terminal gives each character, with every
//! character that could move the cursor, start a line, or reorder the text shown as an escape.
//!
//! Dead letters and ledger entries carry what publishers and Graph sent, so a value may hold
//! `\r`, `\n`, ESC (`ESC[2J` clears the screen, `ESC]…` sets the window title) or a bidi override.
//! [`escape`] turns each of those into visible text (`\r`, `\n`, `\t`, `\u{1b}`, `\u{202e}`), so
//! one value stays on one line and the terminal only ever receives printable text. Every cell of
//! [`table`] and every value of [`Details`] goes through it; headings built by a caller escape
//! what they interpolate.
//!
//! Alignment counts display width ([`width`]), not characters: full-width Japanese
//! (「顧客訪問（東京）」) takes two columns a character, combining marks none.

use std::borrow::Cow;
use std::fmt::Write as _;

use unicode_width::UnicodeWidthStr;

/// True for a character a terminal must never receive raw from data: C0 controls (tab and line
/// breaks among them), DEL, C1 controls, the line and paragraph separators, the explicit bidi
/// embeddings, overrides and isolates (which reorder what follows them), and the invisible
/// format characters that hide text (zero-width space, word joiner and invisible operators,
/// byte order mark, interlinear annotations, tag characters). The zero-width joiner and
/// non-joiner and variation selectors are text (emoji, Indic and Persian scripts) and stay.
pub fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\u{00}'..='\u{1f}'
            | '\u{7f}'..='\u{9f}'
            | '\u{200b}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
            | '\u{e0000}'..='\u{e007f}'
    )
}

/// `s` with every character of [`needs_escape`] written as an escape: `\n`, `\r`, `\t`, else
/// `\u{…}` (lower-case hex, as Rust writes it). Borrows `s` when there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The columns `s` takes on a terminal once escaped.
pub fn width(s: &str) -> usize {
    escape(s).width()
}

/// `s` escaped and cut to at most `max` columns, the cut marked with `…`.
pub fn truncate(s: &str, max: usize) -> String {
    let s = escape(s);
    if s.width() <= max {
        return s.into_owned();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.to_string().width();
        if used + w + 1 > max {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
}

/// `s` padded with spaces to `columns` display columns (never cut).
fn pad(out: &mut String, s: &str, columns: usize) {
    out.push_str(s);
    for _ in s.width()..columns {
        out.push(' ');
    }
}

/// A table: a header row, then one line a row; each column as wide as its widest cell (in
/// display columns), columns two spaces apart, the whole indented by two, no trailing spaces.
/// Cells are escaped; a row shorter than the header leaves its last cells empty.
pub fn table<S: AsRef<str>>(headers: &[&str], rows: &[Vec<S>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| escape(c.as_ref())).collect())
        .collect();
    let headers: Vec<Cow<'_, str>> = headers.iter().map(|h| escape(h)).collect();
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .chain([&headers[i]])
                .map(|c| c.width())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for cells in std::iter::once(&headers).chain(&rows) {
        let mut line = String::from("  ");
        for (i, w) in widths.iter().enumerate() {
            pad(&mut line, cells.get(i).map_or("", |c| c.as_ref()), *w);
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A detail view: one `label  value` line a field, labels in a column as wide as the widest,
/// indented by two; values escaped, so each stays on its line. A block (pretty JSON) follows its
/// label on lines of its own, indented by four, each line escaped.
#[derive(Debug, Default)]
pub struct Details {
    fields: Vec<(String, Field)>,
}

#[derive(Debug)]
enum Field {
    Value(String),
    Block(String),
}

impl Details {
    pub fn new() -> Details {
        Details::default()
    }

    /// A field; a value over several lines is shown on one, its line breaks escaped.
    pub fn field(&mut self, label: &str, value: impl Into<String>) -> &mut Details {
        self.fields
            .push((label.to_string(), Field::Value(value.into())));
        self
    }

    /// A field whose value is optional: `-` when absent.
    pub fn maybe(&mut self, label: &str, value: Option<&str>) -> &mut Details {
        self.field(label, value.unwrap_or("-"))
    }

    /// A multi-line block (pretty JSON) under its label.
    pub fn block(&mut self, label: &str, text: impl Into<String>) -> &mut Details {
        self.fields
            .push((label.to_string(), Field::Block(text.into())));
        self
    }

    pub fn render(&self) -> String {
        let label_width = self
            .fields
            .iter()
            .filter(|(_, f)| matches!(f, Field::Value(_)))
            .map(|(l, _)| width(l))
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for (label, field) in &self.fields {
            match field {
                Field::Value(v) => {
                    let mut line = String::from("  ");
                    pad(&mut line, &escape(label), label_width);
                    line.push_str("  ");
                    line.push_str(&escape(v));
                    out.push_str(line.trim_end());
                    out.push('\n');
                }
                Field::Block(text) => {
                    let _ = writeln!(out, "  {}:", escape(label));
                    for l in text.lines() {
                        let _ = writeln!(out, "    {}", escape(l));
                    }
                }
            }
        }
        out
    }
}

/// `n` and the noun, singular or plural: "1 dead letter", "2 dead letters". `plural` is the
/// plural form when it is not the singular plus "s".
pub fn count(n: usize, singular: &str, plural: Option<&str>) -> String {
    if n == 1 {
        format!("1 {singular}")
    } else {
        match plural {
            Some(p) => format!("{n} {p}"),
            None => format!("{n} {singular}s"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_bidi_overrides_and_invisible_characters_are_escaped() {
        let forged =
            "schedule.created\r\n2026-11-30T00:00:00Z  INFO token accepted\n\u{1b}[2J\u{1b}[31mRED";
        assert_eq!(
            escape(forged),
            "schedule.created\\r\\n2026-11-30T00:00:00Z  INFO token accepted\\n\\u{1b}[2J\\u{1b}[31mRED"
        );
        for (raw, shown) in [
            ("a\tb", "a\\tb"),
            ("\u{0}\u{7f}\u{9b}", "\\u{0}\\u{7f}\\u{9b}"),
            ("invoice\u{202e}fdp.exe", "invoice\\u{202e}fdp.exe"),
            ("\u{2066}x\u{2069}", "\\u{2066}x\\u{2069}"),
            ("a\u{2028}b", "a\\u{2028}b"),
            ("zero\u{200b}width\u{feff}", "zero\\u{200b}width\\u{feff}"),
            ("tag\u{e0041}", "tag\\u{e0041}"),
        ] {
            assert_eq!(escape(raw), shown, "{raw:?}");
        }
    }

    #[test]
    fn plain_text_japanese_and_emoji_sequences_are_left_alone() {
        for s in [
            "Visit: Tanaka Industries",
            "顧客訪問（東京）",
            "👩\u{200d}💻 🗓\u{fe0f}",
            "مرحبا\u{200f} world",
        ] {
            assert!(matches!(escape(s), Cow::Borrowed(_)), "{s}");
        }
    }

    #[test]
    fn no_escaped_text_holds_a_character_a_terminal_acts_on() {
        let every: String = (0u32..0x3000)
            .chain(0xe0000..0xe0080)
            .filter_map(char::from_u32)
            .collect();
        let shown = escape(&every);
        assert!(!shown.chars().any(needs_escape));
        assert!(!shown.contains('\n') && !shown.contains('\u{1b}'));
    }

    #[test]
    fn a_table_aligns_full_width_japanese_by_display_width() {
        let t = table(
            &["SUBJECT", "LOCATION", "N"],
            &[
                vec!["顧客訪問（東京）", "本社", "1"],
                vec!["Visit: Tanaka", "Head office, room 3", "22"],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "  SUBJECT           LOCATION             N",
                "  顧客訪問（東京）  本社                 1",
                "  Visit: Tanaka     Head office, room 3  22",
            ]
        );
        // Every column starts at the same display column on every line.
        let col = |line: &str, cell: &str| width(&line[..line.rfind(cell).unwrap()]);
        assert_eq!(col(lines[1], "本社"), col(lines[0], "LOCATION"));
        assert_eq!(col(lines[2], "Head office"), col(lines[0], "LOCATION"));
        assert_eq!(col(lines[1], "1"), col(lines[0], "N"));
    }

    #[test]
    fn a_table_cell_with_a_line_break_or_escape_stays_on_its_line() {
        let t = table(
            &["EVENT", "REASON"],
            &[vec!["schedule.created\r\nINFO forged\n\u{1b}[2J", "x"]],
        );
        assert_eq!(t.lines().count(), 2, "{t}");
        assert!(!t.contains('\u{1b}') && !t.contains('\r'));
        assert!(t.contains("schedule.created\\r\\nINFO forged\\n\\u{1b}[2J  x"));
    }

    #[test]
    fn details_align_labels_and_keep_each_value_on_its_line() {
        let mut d = Details::new();
        d.field("id", "abc")
            .field("件名", "顧客訪問")
            .maybe("mailbox", None)
            .field("error", "line one\nline two\u{1b}[31m")
            .block("event", "{\n  \"t\": \"a\u{202e}b\"\n}");
        assert_eq!(
            d.render(),
            "  id       abc\n  件名     顧客訪問\n  mailbox  -\n  error    line one\\nline two\\u{1b}[31m\n  event:\n    {\n      \"t\": \"a\\u{202e}b\"\n    }\n"
        );
    }

    #[test]
    fn truncation_counts_display_columns() {
        assert_eq!(truncate("abcdef", 6), "abcdef");
        assert_eq!(truncate("abcdefg", 6), "abcde…");
        assert_eq!(truncate("顧客訪問東京", 7), "顧客訪…");
        assert!(width(&truncate("顧客訪問東京", 7)) <= 7);
        assert_eq!(truncate("a\nb", 10), "a\\nb");
    }

    #[test]
    fn counts_are_singular_or_plural() {
        assert_eq!(count(1, "dead letter", None), "1 dead letter");
        assert_eq!(count(0, "dead letter", None), "0 dead letters");
        assert_eq!(count(3, "copy", Some("copies")), "3 copies");
    }
}
