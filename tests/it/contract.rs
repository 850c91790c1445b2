//! The v1 contract: the JSON Schema and the Rust decoder agree on every example, and each
//! invalid example is rejected with its specific reason and field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use outlook_sync::event::{self, MAX_MESSAGE_BYTES, Reason};
use serde::Deserialize;

use crate::support::repo_path;

#[derive(Deserialize)]
struct Expected {
    reason: String,
    field: String,
    /// The AMQP routing key the example is published with; by default its own event_type.
    #[serde(default)]
    routing_key: Option<String>,
}

/// The routing key a message is published with when expected.json names none: its event_type.
fn default_routing_key(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("event_type")?.as_str().map(str::to_string))
        .unwrap_or_else(|| "schedule.created".into())
}

fn schema_validator() -> jsonschema::Validator {
    let text = std::fs::read_to_string(repo_path("schemas/schedule-event.v1.schema.json")).unwrap();
    let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .expect("the schema compiles")
}

fn examples(dir: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(repo_path(&format!("schemas/examples/{dir}")))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no examples in {dir}");
    out
}

fn schema_accepts(v: &jsonschema::Validator, body: &[u8]) -> bool {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(value) => v.is_valid(&value),
        Err(_) => false,
    }
}

fn reason_by_code(code: &str) -> Reason {
    Reason::from_code(code)
        .unwrap_or_else(|| panic!("expected.json names an unknown reason {code:?}"))
}

#[test]
fn schema_and_decoder_agree_on_every_valid_example() {
    let v = schema_validator();
    for path in examples("valid") {
        let body = std::fs::read(&path).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let schema_errors: Vec<String> = v.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(
            schema_errors.is_empty(),
            "{}: schema rejects: {schema_errors:?}",
            path.display()
        );
        if let Err(e) = event::decode(&body) {
            panic!("{}: decoder rejects a valid example: {e}", path.display());
        }
    }
}

#[test]
fn schema_and_decoder_agree_on_every_invalid_example_with_its_specific_reason() {
    let v = schema_validator();
    let expected: BTreeMap<String, Expected> = serde_json::from_str(
        &std::fs::read_to_string(repo_path("schemas/examples/expected.json")).unwrap(),
    )
    .unwrap();
    let files = examples("invalid");
    assert_eq!(
        files.len(),
        expected.len(),
        "every invalid example needs an entry in schemas/examples/expected.json and vice versa"
    );
    for path in files {
        let key = format!("invalid/{}", path.file_name().unwrap().to_string_lossy());
        let want = expected
            .get(&key)
            .unwrap_or_else(|| panic!("{key} has no entry in expected.json"));
        let body = std::fs::read(&path).unwrap();
        let routing_key = want
            .routing_key
            .clone()
            .unwrap_or_else(|| default_routing_key(&body));
        let got = event::decode_delivery(&body, &routing_key)
            .expect_err(&format!("{key}: decoder accepted it"));
        assert_eq!(got.reason.code(), want.reason, "{key}: {got}");
        assert_eq!(got.field, want.field, "{key}: {got}");
        let reason = reason_by_code(&want.reason);
        // The schema must reject exactly what the structural phase rejects; the rules it cannot
        // express (`x-semantic-rules`) are the decoder's alone. A member named twice is one of
        // them: the schema judges the parsed document, which kept one of the two values.
        let structural_ok = event::decode_structure(&body).is_ok();
        let schema_ok = schema_accepts(&v, &body);
        if reason == Reason::DuplicateKey {
            assert!(!structural_ok, "{key}: the decoder parsed a duplicate");
        } else {
            assert_eq!(
                schema_ok, structural_ok,
                "{key}: schema and decoder disagree"
            );
        }
        assert_eq!(
            schema_ok,
            reason.is_semantic(),
            "{key}: schema verdict vs reason {reason:?}"
        );
    }
}

#[test]
fn every_reason_code_is_distinct_documented_and_has_an_invalid_example() {
    let mut codes: Vec<&str> = Reason::ALL.iter().map(|r| r.code()).collect();
    let readme = std::fs::read_to_string(repo_path("schemas/README.md")).unwrap();
    let expected = std::fs::read_to_string(repo_path("schemas/examples/expected.json")).unwrap();
    for code in &codes {
        assert!(
            readme.contains(&format!("`{code}`")),
            "schemas/README.md does not document {code}"
        );
        // too_large and not_utf8 cannot be JSON files a reader opens; their tests build them.
        if !matches!(*code, "too_large" | "not_utf8") {
            assert!(
                expected.contains(&format!("\"reason\": \"{code}\"")),
                "no invalid example for {code} in schemas/examples/expected.json"
            );
        }
    }
    codes.sort();
    let n = codes.len();
    codes.dedup();
    assert_eq!(codes.len(), n);
}

#[test]
fn a_message_over_the_size_limit_is_rejected_before_parsing() {
    let mut body =
        std::fs::read(repo_path("schemas/examples/valid/created-timed-tokyo.json")).unwrap();
    body.extend(std::iter::repeat_n(b' ', MAX_MESSAGE_BYTES));
    let e = event::decode(&body).unwrap_err();
    assert_eq!(e.reason, Reason::TooLarge);
    assert!(e.to_string().contains("262144"), "{e}");
}

#[test]
fn invalid_utf8_is_rejected_with_its_offset() {
    let e = event::decode(b"{\"a\": \"\xff\"}").unwrap_err();
    assert_eq!(e.reason, Reason::NotUtf8);
    assert!(e.problem.contains("offset 7"), "{e}");
}

#[test]
fn unknown_fields_are_accepted_for_forward_compatibility() {
    let body = std::fs::read(repo_path(
        "schemas/examples/valid/created-with-unknown-fields.json",
    ))
    .unwrap();
    let ev = event::decode(&body).unwrap();
    assert_eq!(ev.schedule_id, "sch-1001");
}

#[test]
fn the_owner_is_a_participant_once_even_when_listed() {
    let body = std::fs::read(repo_path("schemas/examples/valid/created-timed-tokyo.json")).unwrap();
    let ev = event::decode(&body).unwrap();
    assert_eq!(ev.schedule.unwrap().participants(), vec!["u-100", "u-200"]);
}

#[test]
fn the_validate_command_gives_each_example_its_verdict_and_reason() {
    let expected: BTreeMap<String, Expected> = serde_json::from_str(
        &std::fs::read_to_string(repo_path("schemas/examples/expected.json")).unwrap(),
    )
    .unwrap();
    let with_key = |p: &PathBuf| {
        let key = format!("invalid/{}", p.file_name().unwrap().to_string_lossy());
        expected.get(&key).and_then(|e| e.routing_key.clone())
    };
    let mut files: Vec<PathBuf> = examples("valid");
    files.extend(
        examples("invalid")
            .into_iter()
            .filter(|p| with_key(p).is_none()),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("validate")
        .args(&files)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "invalid examples make it exit 1\n{stdout}"
    );
    for path in examples("valid") {
        let line = format!("valid    {}", path.display());
        assert!(stdout.contains(&line), "missing {line:?} in\n{stdout}");
    }
    for (key, want) in &expected {
        let path = repo_path(&format!("schemas/examples/{key}"));
        // An example invalid only under its routing key is checked as published with it.
        let stdout = match &want.routing_key {
            None => stdout.clone(),
            Some(rk) => {
                let out = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
                    .args(["validate", "--routing-key", rk])
                    .arg(&path)
                    .output()
                    .unwrap();
                assert_eq!(out.status.code(), Some(1), "{key} under {rk}");
                String::from_utf8(out.stdout).unwrap()
            }
        };
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("INVALID  {}:", path.display())))
            .unwrap_or_else(|| panic!("no verdict for {key} in\n{stdout}"));
        assert!(line.contains(&format!("[{}]", want.reason)), "{line}");
        assert!(line.contains(&format!(": {}:", want.field)), "{line}");
    }
    let valid = examples("valid").len();
    let invalid = files.len() - valid;
    assert!(
        stdout.contains(&format!("{valid} valid, {invalid} invalid")),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------
// Generated mutations: thousands of near-valid events, judged by the schema (Rust's `jsonschema`
// and, when installed, Python's) and by the decoder, which must agree on each.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// How many mutated events the agreement test judges (`CONTRACT_MUTATIONS` overrides).
const MUTATIONS: usize = 6_000;
const MUTATION_SEED: u64 = 0x0016_2026;

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A path as the decoder names fields: `schedule.participant_user_ids[3]`.
fn field_name(path: &[Seg]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() { "$".into() } else { out }
}

/// Every path to a value below the root, parents before children.
fn all_paths(v: &Value) -> Vec<Vec<Seg>> {
    fn walk(v: &Value, here: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    here.push(Seg::Key(k.clone()));
                    out.push(here.clone());
                    walk(child, here, out);
                    here.pop();
                }
            }
            Value::Array(a) => {
                for (i, child) in a.iter().enumerate() {
                    here.push(Seg::Index(i));
                    out.push(here.clone());
                    walk(child, here, out);
                    here.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn at<'a>(v: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn at_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for s in path {
        cur = match (s, cur) {
            (Seg::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (Seg::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

fn remove_at(v: &mut Value, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    match (last, at_mut(v, parent)) {
        (Seg::Key(k), Some(Value::Object(m))) => {
            m.remove(k);
        }
        (Seg::Index(i), Some(Value::Array(a))) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

/// Contract fields whose JSON type the schema fixes: a value of another type there is
/// `wrong_type` at that field, whatever else the event holds.
const TYPED_FIELDS: &[&str] = &[
    "event_id",
    "event_type",
    "occurred_at",
    "company_id",
    "schedule_id",
    "revision",
    "schedule",
    "schedule.title",
    "schedule.memo",
    "schedule.all_day",
    "schedule.start",
    "schedule.end",
    "schedule.time_zone",
    "schedule.first_date",
    "schedule.last_date",
    "schedule.place",
    "schedule.place.name",
    "schedule.place.address",
    "schedule.owner_user_id",
    "schedule.participant_user_ids",
    "schedule.visibility",
    "schedule.url",
    "schedule.created_at",
    "schedule.updated_at",
];

/// Values of every JSON type, for type swaps.
fn one_of_each_type() -> Vec<Value> {
    vec![
        Value::Null,
        json!(true),
        json!(7),
        json!(1.5),
        json!("text"),
        json!([]),
        json!(["u-1"]),
        json!({}),
        json!({"name": "x"}),
    ]
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "float",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Strings of `n` characters made of `unit` (1, 2 or 4 bytes in UTF-8: the limits count
/// characters, not bytes).
fn chars(unit: &str, n: usize) -> String {
    unit.repeat(n)
}

const TIMESTAMPS: &[&str] = &[
    "2026-11-30T10:00:00+09:00",
    "2026-11-30T10:00:00Z",
    "2026-11-30T10:00:00.5Z",
    "2026-11-30T10:00:00.123456789+09:00",
    "2026-11-30T10:00:00.1234567890Z",
    "2026-11-30T10:00+09:00",
    "2026-11-30 10:00:00+09:00",
    "2026-11-30t10:00:00z",
    "2026-11-30T10:00:00",
    "2026-11-30T24:00:00Z",
    "2026-11-30T23:59:60Z",
    "2026-11-30T10:60:00Z",
    "2026-02-29T10:00:00Z",
    "2028-02-29T10:00:00Z",
    "2026-13-01T10:00:00Z",
    "2026-11-31T10:00:00Z",
    "2026-11-30T10:00:00+14:00",
    "2026-11-30T10:00:00-12:00",
    "2026-11-30T10:00:00+23:59",
    "2026-11-30T10:00:00+24:00",
    "2026-11-30T10:00:00+09:60",
    "2026-11-30T10:00:00+0900",
    "2026-11-30T10:00:00Z\n",
    " 2026-11-30T10:00:00Z",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "1600-12-31T23:59:59Z",
    "1899-12-31T23:59:59+09:00",
    "1900-01-01T00:00:00Z",
    "1900-01-01T00:00:00+14:00",
    "2999-12-31T23:59:59Z",
    "2999-12-31T23:59:59-12:00",
    "3000-01-01T00:00:00Z",
    "4500-08-31T10:00:00Z",
    "9999-12-31T10:00:00+09:00",
    "9999-12-31T10:00+09:00",
    "+02026-11-30T10:00:00Z",
    "",
];

const DATES: &[&str] = &[
    "2026-12-01",
    "2026-12-31",
    "2027-01-01",
    "2026-02-29",
    "2028-02-29",
    "2026-02-30",
    "2026-00-10",
    "2026-12-00",
    "2026-1-1",
    "20261201",
    "2026-12-01T00:00:00Z",
    "2026-12-01\n",
    "0000-01-01",
    "1899-12-31",
    "1900-01-01",
    "2999-12-31",
    "3000-01-01",
    "9999-12-31",
    "",
];

const IDS: &[&str] = &[
    "a",
    "u-200",
    "A.b_c:d-9",
    "",
    "a b",
    "a/b",
    "é",
    "a\n",
    "\na",
    "u-1\u{0}",
];

/// Values at and around the contract's limits, per field.
fn boundary_values(field: &str, rng: &mut StdRng) -> Vec<Value> {
    let unit = *["a", "é", "日", "𝄞"].choose(rng).expect("units");
    let strings = |limit: usize| -> Vec<Value> {
        vec![
            json!(""),
            json!(chars(unit, 1)),
            json!(chars(unit, limit)),
            json!(chars(unit, limit + 1)),
        ]
    };
    match field {
        "schema_version" => vec![
            json!(0),
            json!(1),
            json!(2),
            json!(1.0),
            json!(-1),
            json!("1"),
            json!(true),
            json!(1e0),
        ],
        "revision" => vec![
            json!(0),
            json!(1),
            json!(2),
            json!(9_007_199_254_740_991u64),
            json!(9_007_199_254_740_992u64),
            json!(u64::MAX),
            json!(-1),
            json!(i64::MIN),
            json!(1.0),
            json!(7.0),
            json!(2.5),
            json!(-0.0),
            json!(1e300),
            json!(9_007_199_254_740_991.0f64),
            json!("3"),
        ],
        "event_type" => vec![
            json!("schedule.created"),
            json!("schedule.updated"),
            json!("schedule.deleted"),
            json!("schedule.weird"),
            json!("Schedule.Created"),
            json!(""),
            json!("schedule.created\n"),
        ],
        "schedule.visibility" => vec![
            json!("public"),
            json!("private"),
            json!("Public"),
            json!("secret"),
            json!(""),
        ],
        "schedule.title" => strings(255),
        "schedule.memo" => strings(20_000),
        "schedule.place.name" => strings(255),
        "schedule.place.address" => strings(1000),
        "schedule.time_zone" => {
            let mut v = strings(64);
            v.extend([
                json!("Asia/Tokyo"),
                json!("America/New_York"),
                json!("UTC"),
                json!("Mars/Olympus_Mons"),
                json!("asia/tokyo"),
            ]);
            v
        }
        "schedule.url" => vec![
            json!("https://app.cyzen.cloud/x"),
            json!("http://x"),
            json!("https://"),
            json!("ftp://x"),
            json!("HTTPS://x"),
            json!(""),
            json!(format!("https://{}", "a".repeat(2040))),
            json!(format!("https://{}", "a".repeat(2041))),
            json!(format!("https://{}", "日".repeat(2040))),
            json!(format!("https://{}", "日".repeat(2041))),
            json!("https://x/\u{202e}fdp.exe"),
        ],
        "schedule.participant_user_ids" => vec![
            json!([]),
            json!((0..500).map(|i| format!("u-{i}")).collect::<Vec<_>>()),
            json!((0..501).map(|i| format!("u-{i}")).collect::<Vec<_>>()),
            json!(["u-1", "u-1"]),
            json!(["u-1", 2]),
            json!([null]),
        ],
        "schedule.all_day" => vec![json!(true), json!(false), json!("true"), json!(0)],
        "schedule.place" => vec![
            Value::Null,
            json!({}),
            json!({"name": ""}),
            json!({"address": "x"}),
            json!({"name": null}),
            json!(["u-1"]),
            json!("Tokyo"),
        ],
        f if f.ends_with("_id") || f.contains("participant_user_ids[") => {
            let mut v: Vec<Value> = IDS.iter().map(|s| json!(s)).collect();
            v.push(json!("a".repeat(64)));
            v.push(json!("a".repeat(65)));
            v
        }
        "occurred_at"
        | "schedule.start"
        | "schedule.end"
        | "schedule.created_at"
        | "schedule.updated_at" => TIMESTAMPS.iter().map(|s| json!(s)).collect(),
        "schedule.first_date" | "schedule.last_date" => DATES.iter().map(|s| json!(s)).collect(),
        _ => one_of_each_type(),
    }
}

/// Text a hostile or careless publisher sends: controls, bidi overrides, invisible characters.
const HOSTILE_TEXT: &[&str] = &[
    "\u{0}",
    "\u{1b}[31m",
    "\u{7}",
    "\u{7f}",
    "\u{85}",
    "\u{9b}",
    "\t",
    "\r\n",
    "\u{2028}",
    "\u{202e}",
    "\u{2066}",
    "\u{200b}",
    "\u{200d}",
    "\u{feff}",
    "\u{e0041}",
    "👨\u{200d}👩\u{200d}👧",
];

const FIELDS_WITH_TEXT: &[&str] = &[
    "schedule.title",
    "schedule.memo",
    "schedule.place.name",
    "schedule.place.address",
];

/// Applies one random mutation to `doc` and says what it did (kind, field).
fn mutate_once(rng: &mut StdRng, doc: &mut Value) -> (&'static str, String, Option<Value>) {
    let paths = all_paths(doc);
    let pick =
        |rng: &mut StdRng, paths: &[Vec<Seg>]| -> Option<Vec<Seg>> { paths.choose(rng).cloned() };
    match rng.random_range(0..100) {
        // A value of another JSON type.
        0..=19 => {
            let Some(p) = pick(rng, &paths) else {
                return ("none", "$".into(), None);
            };
            let here = at_mut(doc, &p).expect("path");
            let candidates: Vec<Value> = one_of_each_type()
                .into_iter()
                .filter(|c| json_type(c) != json_type(here))
                .collect();
            let v = candidates.choose(rng).expect("candidates").clone();
            *here = v.clone();
            ("type_swap", field_name(&p), Some(v))
        }
        // null
        20..=26 => {
            let Some(p) = pick(rng, &paths) else {
                return ("none", "$".into(), None);
            };
            *at_mut(doc, &p).expect("path") = Value::Null;
            ("null", field_name(&p), Some(Value::Null))
        }
        // An array where an object was (serde builds a struct from an array).
        27..=32 => {
            let objects: Vec<Vec<Seg>> = std::iter::once(Vec::new())
                .chain(paths.iter().cloned())
                .filter(|p| at(doc, p).is_some_and(Value::is_object))
                .collect();
            let Some(p) = objects.choose(rng).cloned() else {
                return ("none", "$".into(), None);
            };
            let here = at_mut(doc, &p).expect("path");
            let v = if rng.random_bool(0.5) {
                Value::Array(
                    here.as_object()
                        .expect("object")
                        .values()
                        .cloned()
                        .collect(),
                )
            } else {
                json!(["u-1"])
            };
            *here = v;
            ("array_for_object", field_name(&p), None)
        }
        // An integer written as a float with a zero fraction.
        33..=39 => {
            let ints: Vec<&Vec<Seg>> = paths
                .iter()
                .filter(|p| at(doc, p).is_some_and(|v| v.is_u64() || v.is_i64()))
                .collect();
            let Some(p) = ints.choose(rng).map(|p| (*p).clone()) else {
                return ("none", "$".into(), None);
            };
            let here = at_mut(doc, &p).expect("path");
            *here = json!(here.as_f64().expect("a number"));
            ("integer_as_float", field_name(&p), None)
        }
        // A field removed.
        40..=49 => {
            let Some(p) = pick(rng, &paths) else {
                return ("none", "$".into(), None);
            };
            remove_at(doc, &p);
            ("remove", field_name(&p), None)
        }
        // An unknown field added somewhere.
        50..=54 => {
            let objects: Vec<Vec<Seg>> = std::iter::once(Vec::new())
                .chain(paths.iter().cloned())
                .filter(|p| at(doc, p).is_some_and(Value::is_object))
                .collect();
            let Some(p) = objects.choose(rng).cloned() else {
                return ("none", "$".into(), None);
            };
            let v = one_of_each_type().choose(rng).expect("values").clone();
            let key = format!("extra_{}", rng.random_range(0..5));
            if let Some(Value::Object(m)) = at_mut(doc, &p) {
                m.insert(key.clone(), v);
            }
            let mut q = p.clone();
            q.push(Seg::Key(key));
            ("extra_field", field_name(&q), None)
        }
        // A boundary value for a known field (added if absent).
        55..=84 => {
            let fields: Vec<String> = paths
                .iter()
                .map(|p| field_name(p))
                .chain(
                    [
                        "schedule.time_zone",
                        "schedule.place",
                        "schedule.memo",
                        "schedule.start",
                        "schedule.first_date",
                    ]
                    .iter()
                    .map(|s| s.to_string()),
                )
                .collect();
            let f = fields.choose(rng).expect("fields").clone();
            let v = boundary_values(&f, rng)
                .choose(rng)
                .expect("values")
                .clone();
            set_field(doc, &f, v);
            ("boundary", f, None)
        }
        // Times moved against each other: end before start, spans too long (the rules only the
        // decoder knows), and the limits exactly.
        85..=87 => {
            let timed = doc.pointer("/schedule/start").is_some();
            let (field, value) = if timed {
                let v = *[
                    "2026-11-30T10:00:00+09:00",
                    "2026-11-30T09:59:59+09:00",
                    "2026-11-30T01:00:00Z",
                    "2026-12-31T10:00:00+09:00",
                    "2026-12-31T10:00:01+09:00",
                    "2027-01-30T10:00:00+09:00",
                ]
                .choose(rng)
                .expect("ends");
                ("schedule.end", v)
            } else {
                let v = *[
                    "2026-11-30",
                    "2026-12-01",
                    "2027-12-01",
                    "2027-12-02",
                    "2028-01-01",
                ]
                .choose(rng)
                .expect("last dates");
                ("schedule.last_date", v)
            };
            if doc.get("schedule").is_some_and(Value::is_object) {
                set_field(doc, field, json!(value));
            }
            ("move_times", field.to_string(), None)
        }
        // all_day flipped, leaving the other fields as they were.
        88..=89 => {
            if let Some(Value::Bool(b)) = doc.pointer_mut("/schedule/all_day") {
                *b = !*b;
                ("all_day_flip", "schedule.all_day".into(), None)
            } else {
                ("none", "$".into(), None)
            }
        }
        // Controls, bidi overrides and invisible characters inside text (still valid).
        _ => {
            let f = *FIELDS_WITH_TEXT.choose(rng).expect("fields");
            let bad = *HOSTILE_TEXT.choose(rng).expect("text");
            let mut s = doc
                .pointer(&format!("/{}", f.replace('.', "/")))
                .and_then(Value::as_str)
                .unwrap_or("x")
                .to_string();
            let at = s.char_indices().map(|(i, _)| i).collect::<Vec<_>>();
            let i = at.choose(rng).copied().unwrap_or(0);
            s.insert_str(i, bad);
            if doc.get("schedule").is_some_and(Value::is_object) {
                set_field(doc, f, json!(s));
            }
            ("hostile_text", f.to_string(), None)
        }
    }
}

/// Sets `a.b.c` (creating objects on the way where the parent is an object).
fn set_field(doc: &mut Value, field: &str, v: Value) {
    let parts: Vec<&str> = field.split('.').collect();
    let mut cur = doc;
    for (i, part) in parts.iter().enumerate() {
        let (name, index) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*part, None),
        };
        let Value::Object(m) = cur else { return };
        let last = i + 1 == parts.len();
        if last && index.is_none() {
            m.insert(name.to_string(), v);
            return;
        }
        let next = m.entry(name.to_string()).or_insert_with(|| json!({}));
        cur = match index {
            Some(ix) => match next {
                Value::Array(a) if ix < a.len() => {
                    if last {
                        a[ix] = v;
                        return;
                    }
                    &mut a[ix]
                }
                _ => return,
            },
            None => next,
        };
    }
}

/// The document written with every object's keys in a random order and random whitespace.
fn shuffled_text(rng: &mut StdRng, v: &Value) -> String {
    let ws = |rng: &mut StdRng| *[" ", "", "\n  ", "\t"].choose(rng).expect("ws");
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            for i in (1..keys.len()).rev() {
                keys.swap(i, rng.random_range(0..=i));
            }
            let items: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}{}:{}{}",
                        ws(rng),
                        serde_json::to_string(k).expect("key"),
                        ws(rng),
                        shuffled_text(rng, &m[k])
                    )
                })
                .collect();
            format!("{{{}{}}}", items.join(","), ws(rng))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(|x| shuffled_text(rng, x)).collect();
            format!("[{}]", items.join(", "))
        }
        other => serde_json::to_string(other).expect("leaf"),
    }
}

/// A decoder verdict, comparable across two encodings of one document.
fn verdict(body: &[u8]) -> Result<event::ScheduleEvent, (String, String)> {
    event::decode(body).map_err(|e| (e.reason.code().to_string(), e.field))
}

struct Mutated {
    body: Vec<u8>,
    doc: Value,
    applied: Vec<(&'static str, String, Option<Value>)>,
    origin: String,
}

fn generate_mutations(n: usize, seed: u64) -> Vec<Mutated> {
    let mut rng = StdRng::seed_from_u64(seed);
    let bases: Vec<(String, Value)> = examples("valid")
        .into_iter()
        .map(|p| {
            let v = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect();
    (0..n)
        .map(|_| {
            let (origin, base) = bases.choose(&mut rng).expect("bases");
            let mut doc = base.clone();
            let count = match rng.random_range(0..10) {
                0..=6 => 1,
                7..=8 => 2,
                _ => 3,
            };
            let applied = (0..count)
                .map(|_| mutate_once(&mut rng, &mut doc))
                .collect();
            Mutated {
                body: serde_json::to_vec(&doc).expect("json"),
                doc,
                applied,
                origin: origin.clone(),
            }
        })
        .collect()
}

fn mutation_count() -> usize {
    std::env::var("CONTRACT_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MUTATIONS)
}

#[test]
fn schema_and_decoder_agree_on_thousands_of_generated_mutations() {
    let v = schema_validator();
    let n = mutation_count();
    let mutated = generate_mutations(n, MUTATION_SEED);
    let mut rng = StdRng::seed_from_u64(MUTATION_SEED ^ 0xffff);
    let mut problems: Vec<String> = Vec::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    let (mut valid, mut structural, mut semantic) = (0usize, 0usize, 0usize);
    for m in &mutated {
        for (k, _, _) in &m.applied {
            *kinds.entry(k).or_default() += 1;
        }
        let schema_ok = v.is_valid(&m.doc);
        let structure = event::decode_structure(&m.body);
        let decoded = verdict(&m.body);
        let what = || {
            format!(
                "{} + {:?}: {}",
                m.origin,
                m.applied
                    .iter()
                    .map(|(k, f, _)| format!("{k} {f}"))
                    .collect::<Vec<_>>(),
                String::from_utf8_lossy(&m.body)
                    .chars()
                    .take(600)
                    .collect::<String>()
            )
        };
        // 1. The schema and the structural phase agree.
        if schema_ok != structure.is_ok() {
            problems.push(format!(
                "schema says {}, decoder's structure says {:?}: {}",
                if schema_ok { "valid" } else { "invalid" },
                structure.as_ref().err().map(|e| e.to_string()),
                what()
            ));
            continue;
        }
        // 2. Only the rules the schema cannot express reject what it accepts, and a structural
        //    rejection is the whole decoder's verdict.
        match (&structure, &decoded) {
            (Ok(_), Ok(_)) => valid += 1,
            (Ok(_), Err((code, field))) => {
                semantic += 1;
                if !reason_by_code(code).is_semantic() {
                    problems.push(format!(
                        "the schema accepts it, the decoder refuses it with the structural reason {code} at {field}: {}",
                        what()
                    ));
                }
            }
            (Err(s), decoded) => {
                structural += 1;
                let same = matches!(decoded, Err((c, f)) if c == s.reason.code() && *f == s.field);
                if !same || s.reason.is_semantic() {
                    problems.push(format!(
                        "the structural phase says {s}, decode says {decoded:?}: {}",
                        what()
                    ));
                }
            }
        }
        // 3. The reason is stable: the same document with its keys in another order and other
        //    whitespace gets the same verdict, field and reason.
        let again = shuffled_text(&mut rng, &m.doc);
        let other = verdict(again.as_bytes());
        if other != decoded {
            problems.push(format!(
                "key order changed the verdict: {:?} vs {:?}: {}",
                decoded.as_ref().err(),
                other.as_ref().err(),
                what()
            ));
        }
        // 4. A single type swap on a contract field is `wrong_type` at that field.
        if let [(kind, field, Some(new))] = m.applied.as_slice()
            && *kind == "type_swap"
            && !(field == "schedule.place" && new.is_null())
        {
            let want: Option<(&str, &str)> = if field == "schema_version" {
                Some(("unknown_schema_version", field))
            } else if TYPED_FIELDS.contains(&field.as_str())
                || field.starts_with("schedule.participant_user_ids[")
            {
                Some(("wrong_type", field))
            } else {
                None
            };
            if let Some((code, f)) = want
                && !matches!(&decoded, Err((c, got)) if c == code && got == f)
            {
                problems.push(format!(
                    "a type swap at {field} should be {code} at {f}, decoder says {:?}: {}",
                    decoded.as_ref().err(),
                    what()
                ));
            }
        }
    }
    let shown: Vec<&String> = problems.iter().take(15).collect();
    assert!(
        problems.is_empty(),
        "{} of {n} mutated events: schema and decoder disagree (first 15):\n{}",
        problems.len(),
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    // The generator must reach every class, or the agreement means little.
    assert!(valid > n / 20, "only {valid} valid mutations of {n}");
    assert!(
        structural > n / 3,
        "only {structural} structurally invalid of {n}"
    );
    assert!(
        semantic > n / 50,
        "only {semantic} semantically invalid of {n}"
    );
    println!(
        "contract mutations: {n} judged (seed {MUTATION_SEED:#x}): {valid} valid, {structural} refused by the schema, {semantic} by the decoder's own rules; kinds {kinds:?}"
    );
}

/// The Python program that judges each JSON line with Python's `jsonschema` (Draft 2020-12, with
/// the format checker): one `valid` or `invalid` line per event.
const PYTHON_JUDGE: &str = r#"
import json, sys
import jsonschema
schema = json.load(open(sys.argv[1], encoding="utf-8"))
V = jsonschema.Draft202012Validator
V.check_schema(schema)
checker = V.FORMAT_CHECKER
if checker.conforms("2026-02-30T00:00:00Z", "date-time"):
    sys.exit("rfc3339-validator is missing, so date-time is not checked: run scripts/tools/python-jsonschema.sh")
v = V(schema, format_checker=checker)
for line in sys.stdin.buffer:
    sys.stdout.write("valid\n" if v.is_valid(json.loads(line)) else "invalid\n")
"#;

#[test]
fn python_jsonschema_and_the_decoder_agree_on_the_same_generated_mutations() {
    let python = repo_path("target/tools/python-jsonschema/bin/python");
    assert!(
        python.exists(),
        "this test needs Python's jsonschema, which is not installed: run scripts/tools/python-jsonschema.sh (scripts/test.sh does)"
    );
    let n = mutation_count();
    let mutated = generate_mutations(n, MUTATION_SEED);
    let mut input = Vec::new();
    for m in &mutated {
        input.extend_from_slice(&m.body);
        input.push(b'\n');
    }
    let mut child = std::process::Command::new(&python)
        .arg("-c")
        .arg(PYTHON_JUDGE)
        .arg(repo_path("schemas/schedule-event.v1.schema.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&input).expect("python reads");
    });
    let out = child.wait_with_output().expect("python runs");
    writer.join().expect("writer");
    assert!(
        out.status.success(),
        "Python's jsonschema failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<bool> = String::from_utf8(out.stdout)
        .expect("utf-8")
        .lines()
        .map(|l| l == "valid")
        .collect();
    assert_eq!(verdicts.len(), n, "one verdict per event");
    let mut disagreements = Vec::new();
    for (m, python_ok) in mutated.iter().zip(&verdicts) {
        let decoder = event::decode_structure(&m.body);
        if decoder.is_ok() != *python_ok {
            disagreements.push(format!(
                "Python says {}, the decoder {:?}: {:?}: {}",
                if *python_ok { "valid" } else { "invalid" },
                decoder.err().map(|e| e.to_string()),
                m.applied
                    .iter()
                    .map(|(k, f, _)| format!("{k} {f}"))
                    .collect::<Vec<_>>(),
                String::from_utf8_lossy(&m.body)
                    .chars()
                    .take(400)
                    .collect::<String>()
            ));
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} of {n} events: Python's jsonschema and the decoder disagree (first 10):\n{}",
        disagreements.len(),
        disagreements
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n\n")
    );
    let valid = verdicts.iter().filter(|v| **v).count();
    println!(
        "Python's jsonschema: {n} events judged, {valid} valid, all as the decoder judged them"
    );
}

// ---------------------------------------------------------------------------------------------
// Issue 15: duplicate members, dates outside what Outlook shows, hostile text, routing keys.

fn example_text(name: &str) -> String {
    std::fs::read_to_string(repo_path(&format!("schemas/examples/valid/{name}"))).unwrap()
}

#[test]
fn a_member_named_twice_is_refused_as_duplicate_key_wherever_it_is() {
    let base = example_text("created-timed-tokyo.json");
    // Both values valid each time: whichever one a parser keeps, the event would pass.
    let cases = [
        (
            "\"revision\": 1,",
            "\"revision\": 1, \"revision\": 7,",
            "revision",
        ),
        (
            "\"title\": ",
            "\"title\": \"Another title\", \"title\": ",
            "schedule.title",
        ),
        (
            "\"name\": ",
            "\"name\": \"Another place\", \"name\": ",
            "schedule.place.name",
        ),
        (
            "\"schedule\": {",
            "\"future\": [{\"a\": 1, \"a\": 1}], \"schedule\": {",
            "future[0].a",
        ),
    ];
    for (from, to, field) in cases {
        let body = base.replacen(from, to, 1);
        assert_ne!(body, base, "{field}: the example changed");
        let e = event::decode(body.as_bytes()).expect_err(field);
        assert_eq!(
            (e.reason.code(), e.field.as_str()),
            ("duplicate_key", field),
            "{e}"
        );
        assert!(e.problem.contains("twice"), "{e}");
    }
}

#[test]
fn the_validate_command_finds_a_member_named_twice_in_an_array_and_in_json_lines() {
    let good: Value = serde_json::from_str(&example_text("deleted.json")).unwrap();
    let good = serde_json::to_string(&good).unwrap();
    let twice = good.replacen("\"revision\":5", "\"revision\":5,\"revision\":6", 1);
    assert_ne!(good, twice);
    let dir = tempfile::tempdir().unwrap();
    let array = dir.path().join("events.json");
    std::fs::write(&array, format!("[\n  {good},\n  {twice}\n]\n")).unwrap();
    let lines = dir.path().join("events.jsonl");
    std::fs::write(&lines, format!("{good}\n{twice}\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("validate")
        .args([&array, &lines])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for label in [
        format!("{}[1]", array.display()),
        format!("{}:2", lines.display()),
    ] {
        let line = stdout
            .lines()
            .find(|l| l.contains(&label))
            .unwrap_or_else(|| panic!("no verdict for {label} in\n{stdout}"));
        assert!(
            line.starts_with("INVALID")
                && line.contains("revision:")
                && line.ends_with("[duplicate_key]"),
            "{line}"
        );
    }
    assert!(stdout.contains("2 valid, 2 invalid"), "{stdout}");
}

#[test]
fn dates_and_times_outside_1900_to_2999_are_out_of_range_naming_the_field() {
    let timed: Value = serde_json::from_str(&example_text("created-timed-tokyo.json")).unwrap();
    let all_day: Value =
        serde_json::from_str(&example_text("updated-all-day-two-days.json")).unwrap();
    let cases: [(&Value, &str, &str, &str); 9] = [
        (
            &timed,
            "/schedule/start",
            "0000-01-01T10:00:00+09:00",
            "schedule.start",
        ),
        // The issue's value, which was refused as "not an RFC 3339 time".
        (
            &timed,
            "/schedule/start",
            "9999-12-31T10:00+09:00",
            "schedule.start",
        ),
        (
            &timed,
            "/schedule/end",
            "9999-12-31T10:00:00+09:00",
            "schedule.end",
        ),
        (
            &timed,
            "/schedule/end",
            "3000-01-01T00:00:00Z",
            "schedule.end",
        ),
        (
            &timed,
            "/occurred_at",
            "1899-12-31T23:59:59Z",
            "occurred_at",
        ),
        (
            &timed,
            "/schedule/created_at",
            "0001-01-01T00:00:00Z",
            "schedule.created_at",
        ),
        (
            &all_day,
            "/schedule/first_date",
            "0000-01-01",
            "schedule.first_date",
        ),
        (
            &all_day,
            "/schedule/last_date",
            "3000-01-01",
            "schedule.last_date",
        ),
        (
            &all_day,
            "/schedule/updated_at",
            "9999-12-31T23:59:59Z",
            "schedule.updated_at",
        ),
    ];
    let v = schema_validator();
    for (base, pointer, value, field) in cases {
        let mut doc = base.clone();
        *doc.pointer_mut(pointer).unwrap() = json!(value);
        let e = event::decode(&serde_json::to_vec(&doc).unwrap()).expect_err(value);
        assert_eq!(
            (e.reason.code(), e.field.as_str()),
            ("out_of_range", field),
            "{value}: {e}"
        );
        assert!(
            e.problem.contains("1900") && e.problem.contains("2999"),
            "{e}"
        );
        assert!(!v.is_valid(&doc), "the schema accepts {value}");
    }
    // The edges themselves are in range, whatever the offset does to the instant.
    let mut doc = timed.clone();
    doc["schedule"]["start"] = json!("1900-01-01T00:00:00+14:00");
    doc["schedule"]["end"] = json!("1900-01-01T01:00:00+14:00");
    event::decode(&serde_json::to_vec(&doc).unwrap()).expect("1900-01-01 is in range");
    assert!(v.is_valid(&doc));
    let mut doc = all_day.clone();
    doc["schedule"]["first_date"] = json!("2999-12-31");
    doc["schedule"]["last_date"] = json!("2999-12-31");
    event::decode(&serde_json::to_vec(&doc).unwrap()).expect("2999-12-31 is in range");
    assert!(v.is_valid(&doc));
}

#[test]
fn control_and_invisible_characters_never_reach_the_outlook_copy() {
    use outlook_sync::graph::mapping::{self, MappingOptions};
    let mut doc: Value = serde_json::from_str(&example_text("created-timed-tokyo.json")).unwrap();
    doc["schedule"]["title"] =
        json!("Visit\u{0}: \u{1b}[1mTanaka\u{7}\u{202e}gnp.exe\r\nHQ\u{e0041}\u{e0042}");
    doc["schedule"]["memo"] = json!("Line 1\r\n\tLine 2\u{85}Line 3\u{2066}\u{200b}\u{7f}\u{9b}");
    doc["schedule"]["place"] = json!({
        "name": "Room\t3\u{feff}",
        "address": "1-2-3\u{2028}Marunouchi\u{0}"
    });
    let ev =
        event::decode(&serde_json::to_vec(&doc).unwrap()).expect("text is cleaned, not refused");
    let s = ev.schedule.as_ref().unwrap();
    let zone = jiff::tz::TimeZone::get("Asia/Tokyo").unwrap();
    let opts = MappingOptions {
        category: "cyzen",
        default_zone: &zone,
    };
    let body = mapping::create_body(s, &ev.company_id, &ev.schedule_id, "tx", &opts);
    assert_eq!(body["subject"], "Visit: [1mTanakagnp.exe HQ");
    assert_eq!(
        body["body"]["content"],
        "Line 1\n\tLine 2\nLine 3\n\nhttps://app.cyzen.cloud/schedules/sch-1001"
    );
    assert_eq!(body["location"]["displayName"], "Room 3");
    assert_eq!(body["location"]["address"]["street"], "1-2-3 Marunouchi");
    // Text that needs its invisible characters keeps them.
    let family = "👨\u{200d}👩\u{200d}👧 \u{200f}שלום\u{200e} 🗓\u{fe0f}";
    doc["schedule"]["title"] = json!(family);
    let ev = event::decode(&serde_json::to_vec(&doc).unwrap()).unwrap();
    assert_eq!(ev.schedule.unwrap().title, family);
}

#[test]
fn a_routing_key_other_than_the_event_type_is_refused_after_the_body() {
    let created =
        std::fs::read(repo_path("schemas/examples/valid/created-timed-tokyo.json")).unwrap();
    let deleted = std::fs::read(repo_path("schemas/examples/valid/deleted.json")).unwrap();
    assert!(event::decode_delivery(&created, "schedule.created").is_ok());
    assert!(event::decode_delivery(&deleted, "schedule.deleted").is_ok());
    for (body, key) in [
        (&created, "schedule.deleted"),
        (&created, "schedule.weird"),
        (&created, ""),
        (&created, "Schedule.Created"),
        (&deleted, "schedule.updated"),
    ] {
        let e = event::decode_delivery(body, key).expect_err(key);
        assert_eq!(e.reason, Reason::RoutingKeyMismatch, "{key}: {e}");
        assert_eq!(e.field, "routing_key");
        assert!(e.problem.contains(&format!("{key:?}")), "{e}");
    }
    // A body that breaks the contract is refused for that, whatever its key.
    let e = event::decode_delivery(b"{\"schema_version\": 1", "schedule.weird").unwrap_err();
    assert_eq!(e.reason, Reason::MalformedJson);
}

#[test]
fn a_problem_quotes_at_most_a_short_piece_of_a_huge_value() {
    let base: Value = serde_json::from_str(&example_text("created-timed-tokyo.json")).unwrap();
    let huge = "x".repeat(200_000);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for pointer in [
        "/event_type",
        "/occurred_at",
        "/schema_version",
        "/schedule/visibility",
        "/schedule/start",
    ] {
        let mut doc = base.clone();
        *doc.pointer_mut(pointer).unwrap() = json!(format!("2026-{huge}"));
        cases.push((pointer.to_string(), serde_json::to_vec(&doc).unwrap()));
    }
    let mut doc = base.clone();
    doc["schema_version"] = json!([huge.clone()]);
    cases.push((
        "schema_version array".into(),
        serde_json::to_vec(&doc).unwrap(),
    ));
    let text = serde_json::to_string(&base).unwrap();
    cases.push((
        "a duplicate member with a huge name".into(),
        text.replacen('{', &format!("{{\"{huge}\":1,\"{huge}\":2,"), 1)
            .into_bytes(),
    ));
    for (what, body) in cases {
        let e = event::decode(&body).expect_err(&what);
        let shown = e.to_string();
        assert!(
            shown.len() < 400,
            "{what}: a {} byte message: {}…",
            shown.len(),
            shown.chars().take(200).collect::<String>()
        );
    }
}
