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

fn every_reason() -> Vec<Reason> {
    use Reason::*;
    vec![
        TooLarge,
        NotUtf8,
        MalformedJson,
        UnknownVersion,
        MissingField,
        WrongType,
        TooLong,
        InvalidValue,
        EndBeforeStart,
        AllDayWithTimes,
        TimedWithDates,
        UnknownZone,
        SpanTooLong,
    ]
}

fn reason_by_code(code: &str) -> Reason {
    every_reason()
        .into_iter()
        .find(|r| r.code() == code)
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
        let got = event::decode(&body).expect_err(&format!("{key}: decoder accepted it"));
        assert_eq!(got.reason.code(), want.reason, "{key}: {got}");
        assert_eq!(got.field, want.field, "{key}: {got}");
        let reason = reason_by_code(&want.reason);
        // The schema must reject exactly what the structural phase rejects; the rules it cannot
        // express (`x-semantic-rules`) are the decoder's alone.
        let structural_ok = event::decode_structure(&body).is_ok();
        let schema_ok = schema_accepts(&v, &body);
        assert_eq!(
            schema_ok, structural_ok,
            "{key}: schema and decoder disagree"
        );
        assert_eq!(
            schema_ok,
            reason.is_semantic(),
            "{key}: schema verdict vs reason {reason:?}"
        );
    }
}

#[test]
fn every_reason_code_is_distinct() {
    let mut codes: Vec<&str> = every_reason().iter().map(|r| r.code()).collect();
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
    let mut files: Vec<PathBuf> = examples("valid");
    files.extend(examples("invalid"));
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
    let expected: BTreeMap<String, Expected> = serde_json::from_str(
        &std::fs::read_to_string(repo_path("schemas/examples/expected.json")).unwrap(),
    )
    .unwrap();
    for (key, want) in expected {
        let path = repo_path(&format!("schemas/examples/{key}"));
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
