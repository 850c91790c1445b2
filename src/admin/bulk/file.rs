//! The uploaded file: its encoding (UTF-8, UTF-16 with a BOM, or Shift_JIS as Excel in Japan
//! saves it) and its rows (`cyzen_user_id,email[,action]`, an optional header row in English or
//! Japanese naming the columns in any order).

use serde::Serialize;

use crate::admin::service::AdminError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Link,
    Unlink,
}

/// One parsed row (1-based line number in the file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: usize,
    pub user_id: String,
    pub email: String,
    pub action: Result<Action, String>,
}

/// The text of an uploaded CSV file: UTF-8 (with or without a BOM), UTF-16 with a BOM, or
/// Shift_JIS as Windows writes it (CP932: what Excel in Japan saves as "CSV (コンマ区切り)").
/// Bytes that are none of these are refused (`invalid_csv`), never guessed at or replaced.
pub fn decode_csv(bytes: &[u8]) -> Result<String, AdminError> {
    let refuse = |what: &str| AdminError::Invalid {
        code: "invalid_csv",
        message: format!(
            "the CSV file {what}: save it from Excel as \"CSV UTF-8 (Comma delimited)\" or \"CSV (Comma delimited)\" (Shift_JIS), and upload it again"
        ),
    };
    if let Some((encoding, bom)) = encoding_rs::Encoding::for_bom(bytes) {
        return encoding
            .decode_without_bom_handling_and_without_replacement(&bytes[bom..])
            .map(|t| t.into_owned())
            .ok_or_else(|| {
                refuse(&format!(
                    "starts with a {} byte-order mark but is not {} text",
                    encoding.name(),
                    encoding.name()
                ))
            });
    }
    if let Ok(t) = std::str::from_utf8(bytes) {
        return Ok(t.to_string());
    }
    // encoding_rs's Shift_JIS is the WHATWG one, i.e. Windows-31J (CP932) with its NEC and IBM
    // extensions (①, ㈱, 髙 …).
    encoding_rs::SHIFT_JIS
        .decode_without_bom_handling_and_without_replacement(bytes)
        .map(|t| t.into_owned())
        .ok_or_else(|| refuse("is neither UTF-8 nor Shift_JIS (CP932) text"))
}

/// Which column holds what.
#[derive(Debug, Clone, Copy)]
struct Columns {
    user: usize,
    email: usize,
    action: Option<usize>,
    /// Named by a header row: extra columns (a name, a department) are ignored.
    from_header: bool,
}

const POSITIONAL: Columns = Columns {
    user: 0,
    email: 1,
    action: Some(2),
    from_header: false,
};

/// A header cell folded for comparison: full-width ASCII to half-width, lowercase, without
/// spaces, `_`, `-`, `・`.
fn fold(cell: &str) -> String {
    cell.chars()
        .map(|c| match c {
            '\u{ff01}'..='\u{ff5e}' => char::from_u32(c as u32 - 0xfee0).unwrap_or(c),
            '\u{3000}' => ' ',
            c => c,
        })
        .flat_map(char::to_lowercase)
        .filter(|c| !matches!(c, ' ' | '_' | '-' | '・' | '(' | ')' | '（' | '）'))
        .collect()
}

const USER_HEADERS: &[&str] = &[
    "cyzenuserid",
    "userid",
    "cyzenid",
    "ユーザーid",
    "ユーザid",
    "cyzenユーザーid",
    "cyzenユーザid",
    "ユーザー",
];
const EMAIL_HEADERS: &[&str] = &[
    "email",
    "mail",
    "emailaddress",
    "mailaddress",
    "mailbox",
    "upn",
    "メールアドレス",
    "メール",
    "eメール",
    "eメールアドレス",
    "microsoftアカウント",
];
const ACTION_HEADERS: &[&str] = &["action", "操作", "処理", "アクション"];

/// The columns a header row names, if `cells` is a header row (it names a user or an email
/// column, in English or Japanese).
fn header(cells: &[&str]) -> Option<Columns> {
    let find = |names: &[&str]| cells.iter().position(|c| names.contains(&fold(c).as_str()));
    let (user, email) = (find(USER_HEADERS), find(EMAIL_HEADERS));
    if user.is_none() && email.is_none() {
        return None;
    }
    Some(Columns {
        user: user.unwrap_or(0),
        email: email.unwrap_or(1),
        action: find(ACTION_HEADERS),
        from_header: true,
    })
}

/// The 1-based line a record starts on, from its byte offset. (After a CRLF the csv crate
/// places the next record at the `\n`, and counts lines accordingly: skip line ends first.)
fn line_at(text: &str, byte: u64) -> usize {
    let bytes = text.as_bytes();
    let mut start = usize::try_from(byte).unwrap_or(usize::MAX).min(bytes.len());
    while start < bytes.len() && matches!(bytes[start], b'\r' | b'\n') {
        start += 1;
    }
    bytes[..start].iter().filter(|b| **b == b'\n').count() + 1
}

/// `link` (the default, also `連携`) or `unlink` (also `解除`, `連携解除`).
fn action(cell: &str) -> Result<Action, String> {
    match fold(cell).as_str() {
        "" | "link" | "連携" | "リンク" => Ok(Action::Link),
        "unlink" | "解除" | "連携解除" | "リンク解除" => Ok(Action::Unlink),
        other => Err(other.to_string()),
    }
}

/// Parses the CSV text (RFC 4180 quoting with the `csv` crate, CRLF or LF, a BOM, blank lines
/// ignored). An optional header row names the columns in English (`cyzen_user_id,email,action`)
/// or Japanese (`ユーザーID,メールアドレス,操作`), in any order; without one the columns are
/// `user,email[,action]`. Returns the rows and the lines that cannot be read as rows.
pub fn parse_csv(text: &str) -> (Vec<Row>, Vec<(usize, String)>) {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    let mut bad = Vec::new();
    let mut columns: Option<Columns> = None;
    for record in reader.records() {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = line_at(text, e.position().map_or(0, |p| p.byte()));
                bad.push((
                    line,
                    format!("not readable as CSV ({e}) / CSVとして読み取れません"),
                ));
                continue;
            }
        };
        let line = line_at(text, record.position().map_or(0, |p| p.byte()));
        let cells: Vec<&str> = record.iter().map(str::trim).collect();
        if cells.iter().all(|c| c.is_empty()) {
            continue;
        }
        let cols = match columns {
            Some(c) => c,
            None => {
                let found = header(&cells);
                columns = Some(found.unwrap_or(POSITIONAL));
                if found.is_some() {
                    continue;
                }
                POSITIONAL
            }
        };
        let needed = cols.user.max(cols.email) + 1;
        let fits = if cols.from_header {
            cells.len() >= needed
        } else {
            (2..=3).contains(&cells.len())
        };
        if !fits {
            bad.push((
                line,
                format!(
                    "expected cyzen_user_id,email[,action] (ユーザーID,メールアドレス[,操作]), got {} field(s) / 列の数が合いません",
                    cells.len()
                ),
            ));
            continue;
        }
        let cell = |i: usize| cells.get(i).copied().unwrap_or("");
        rows.push(Row {
            line,
            user_id: cell(cols.user).to_string(),
            email: cell(cols.email).to_string(),
            action: cols.action.map_or(Ok(Action::Link), |i| action(cell(i))),
        });
    }
    (rows, bad)
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Each row as (line, user id, email, action), for comparing.
    fn fields(rows: &[Row]) -> Vec<(usize, &str, &str, Result<Action, String>)> {
        rows.iter()
            .map(|r| {
                (
                    r.line,
                    r.user_id.as_str(),
                    r.email.as_str(),
                    r.action.clone(),
                )
            })
            .collect()
    }

    #[test]
    fn csv_rows_with_quotes_crlf_bom_header_and_actions() {
        let text = "\u{feff}cyzen_user_id,email,action\r\nu-1,taro@a.com\r\n\r\n\"u-2\",\"o'neil, jr@a.com\",unlink\nu-3,\"x\"\"y@a.com\",LINK\nu-4,a@b.com,frobnicate\nonly-one-field\n";
        let (rows, bad) = parse_csv(text);
        let got = fields(&rows);
        assert_eq!(
            got,
            vec![
                (2, "u-1", "taro@a.com", Ok(Action::Link)),
                (4, "u-2", "o'neil, jr@a.com", Ok(Action::Unlink)),
                (5, "u-3", "x\"y@a.com", Ok(Action::Link)),
                (6, "u-4", "a@b.com", Err("frobnicate".into())),
            ]
        );
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, 7);
    }

    #[test]
    fn a_japanese_header_names_the_columns_in_any_order_and_extra_columns_are_ignored() {
        let text = "氏名,メールアドレス,ユーザーＩＤ,操作\r\n山田 太郎,taro@a.com,u-1,\r\n鈴木 一郎,ichiro@a.com,u-2,解除\r\n佐藤,sato@a.com,u-3,消す\r\n";
        let (rows, bad) = parse_csv(text);
        assert!(bad.is_empty(), "{bad:?}");
        let got = fields(&rows);
        assert_eq!(
            got,
            vec![
                (2, "u-1", "taro@a.com", Ok(Action::Link)),
                (3, "u-2", "ichiro@a.com", Ok(Action::Unlink)),
                (4, "u-3", "sato@a.com", Err("消す".into())),
            ]
        );
    }

    #[test]
    fn shift_jis_utf8_with_and_without_bom_and_utf16_decode_to_the_same_text() {
        let text = "ユーザーID,メールアドレス\r\nu-1,taro@a.com\r\n";
        let (sjis, _, unmappable) = encoding_rs::SHIFT_JIS.encode(text);
        assert!(!unmappable);
        assert!(
            std::str::from_utf8(&sjis).is_err(),
            "the sample is not UTF-8 too"
        );
        assert_eq!(decode_csv(&sjis).unwrap(), text);
        assert_eq!(decode_csv(text.as_bytes()).unwrap(), text);
        let bom = [b"\xef\xbb\xbf".as_slice(), text.as_bytes()].concat();
        assert_eq!(decode_csv(&bom).unwrap(), text);
        let mut utf16 = vec![0xff, 0xfe];
        utf16.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        assert_eq!(decode_csv(&utf16).unwrap(), text);
        // CP932's own characters (NEC special characters, IBM extensions).
        let (cp932, _, _) = encoding_rs::SHIFT_JIS.encode("①㈱髙");
        assert_eq!(decode_csv(&cp932).unwrap(), "①㈱髙");
        match decode_csv(b"u-1,\x82\xff\x82") {
            Err(AdminError::Invalid { code, .. }) => assert_eq!(code, "invalid_csv"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_without_header_starts_at_line_one() {
        let (rows, bad) = parse_csv("u-1,a@b.com");
        assert!(bad.is_empty());
        assert_eq!(rows[0].line, 1);
        assert_eq!(rows[0].action, Ok(Action::Link));
    }
}
