//! What a schedule's text keeps on its way to Outlook (schemas/README.md, "Text").
//!
//! A title, place or memo may hold characters a person cannot see: controls (NUL, ESC and the
//! rest of C0 and C1, DEL), Unicode's explicit bidirectional controls (which reorder the text
//! after them, the "Trojan Source" trick: `invoice\u{202e}fdp.exe` shows as `invoiceexe.pdf`),
//! and invisible format characters, among them the tag characters (U+E0000–U+E007F) that hide
//! whole sentences from readers while software still reads them. None of them belongs in a
//! calendar entry, so they are removed, never refused: the schedule still syncs.
//!
//! - One-line fields (the subject from the title, the location from the place): line breaks and
//!   tabs become a space, so words on two lines stay two words; everything listed above is removed.
//! - The memo (the body, plain text): tabs and line breaks are kept, each line break as `\n`
//!   (CR LF, CR, NEL, U+2028 and U+2029 alike); everything else listed above is removed.
//!
//! Kept on purpose, because text needs them and they cannot hide or reorder anything: the
//! zero-width joiner and non-joiner (emoji sequences, Persian, Indic scripts), variation
//! selectors (`🗓️`), the implicit direction marks LRM, RLM and ALM (mixed Arabic or Hebrew and
//! Latin text), and the soft hyphen.

/// How one character is written into Outlook.
enum Keep {
    Char,
    LineBreak,
    Tab,
    Drop,
}

fn classify(c: char) -> Keep {
    match c {
        '\t' => Keep::Tab,
        // LF, VT, FF, CR, NEL, LINE SEPARATOR, PARAGRAPH SEPARATOR: Unicode's mandatory breaks.
        '\n' | '\u{0b}' | '\u{0c}' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}' => Keep::LineBreak,
        // The rest of C0, DEL and the rest of C1.
        '\u{00}'..='\u{1f}' | '\u{7f}'..='\u{9f}' => Keep::Drop,
        // Zero-width space; explicit bidi embeddings, overrides and pops.
        '\u{200b}' | '\u{202a}'..='\u{202e}' => Keep::Drop,
        // Word joiner and invisible operators; bidi isolates; deprecated format controls.
        '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{206a}'..='\u{206f}' => Keep::Drop,
        // Byte order mark (zero-width no-break space); interlinear annotation controls.
        '\u{feff}' | '\u{fff9}'..='\u{fffb}' => Keep::Drop,
        // Tag characters.
        '\u{e0000}'..='\u{e007f}' => Keep::Drop,
        _ => Keep::Char,
    }
}

/// `s` as a one-line field: line breaks and tabs become a space, hidden characters go. Returns
/// `s` itself (no copy) when there is nothing to change, as for almost every title.
pub fn one_line(s: String) -> String {
    if s.chars().all(|c| matches!(classify(c), Keep::Char)) {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match classify(c) {
            Keep::Char => out.push(c),
            Keep::Tab => out.push(' '),
            Keep::LineBreak => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push(' ');
            }
            Keep::Drop => {}
        }
    }
    out
}

/// `s` as plain text over several lines: tabs kept, every line break `\n`, hidden characters go.
pub fn multi_line(s: String) -> String {
    if s.chars()
        .all(|c| matches!(classify(c), Keep::Char | Keep::Tab) || c == '\n')
    {
        return s;
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match classify(c) {
            Keep::Char => out.push(c),
            Keep::Tab => out.push('\t'),
            Keep::LineBreak => {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push('\n');
            }
            Keep::Drop => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_removed_from_a_one_line_field_and_breaks_become_spaces() {
        assert_eq!(
            one_line("Visit\u{0} \u{1b}[31mACME\u{7}\u{7f}\u{9b}".into()),
            "Visit [31mACME"
        );
        assert_eq!(
            one_line("two\r\nlines\tand\u{2028}more".into()),
            "two lines and more"
        );
        assert_eq!(one_line("a\rb\nc\u{85}d".into()), "a b c d");
    }

    #[test]
    fn bidi_overrides_isolates_and_invisible_characters_are_removed() {
        assert_eq!(one_line("invoice\u{202e}fdp.exe".into()), "invoicefdp.exe");
        assert_eq!(one_line("\u{2066}a\u{2069}\u{200b}b\u{feff}".into()), "ab");
        // Tag characters: "hidden" written invisibly after the title.
        let hidden: String = "hidden"
            .chars()
            .map(|c| char::from_u32(0xe0000 + c as u32).unwrap())
            .collect();
        assert_eq!(one_line(format!("Lunch{hidden}")), "Lunch");
    }

    #[test]
    fn joiners_variation_selectors_and_direction_marks_are_kept() {
        for s in [
            "👨\u{200d}👩\u{200d}👧",
            "🗓\u{fe0f} Plan",
            "می\u{200c}خواهم",
            "\u{200f}שלום\u{200e} ABC",
            "co\u{ad}operate",
            "日本語のタイトル",
        ] {
            assert_eq!(one_line(s.to_string()), s);
            assert_eq!(multi_line(s.to_string()), s);
        }
    }

    #[test]
    fn the_memo_keeps_its_tabs_and_lines_with_every_break_as_a_newline() {
        assert_eq!(
            multi_line("line 1\r\nline 2\rline 3\u{2029}\tindented\u{0}\u{1b}".into()),
            "line 1\nline 2\nline 3\n\tindented"
        );
        assert_eq!(multi_line("a\n\nb".into()), "a\n\nb");
    }
}
