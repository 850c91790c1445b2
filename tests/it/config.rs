//! Configuration: the defaults file documents every key and equals the built-in defaults; an
//! invalid setting names its key.

use outlook_sync::config::{Config, DEFAULTS_TOML};

#[test]
fn the_defaults_file_equals_the_built_in_defaults() {
    assert_eq!(
        Config::from_toml_str(DEFAULTS_TOML).unwrap(),
        Config::default()
    );
}

#[test]
fn the_defaults_file_documents_every_key() {
    let defaults = serde_json::to_value(Config::default()).unwrap();
    let file: toml_like::Doc = toml_like::parse(DEFAULTS_TOML);
    for (section, keys) in defaults.as_object().unwrap() {
        for key in keys.as_object().unwrap().keys() {
            assert!(
                file.has(section, key),
                "config/default.toml lacks {section}.{key}"
            );
        }
    }
}

#[test]
fn an_invalid_setting_names_its_key_and_the_problem() {
    let cases = [
        ("[window]\nseconds = 0", "window.seconds", "out of range"),
        ("[amqp]\nprefetch = 5000", "amqp.prefetch", "2,000"),
        ("[amqp]\nurl = \"http://x\"", "amqp.url", "amqp://"),
        ("[graph]\nbatch_size = 21", "graph.batch_size", "20"),
        (
            "[graph]\nmax_in_flight_per_mailbox = 5",
            "graph.max_in_flight_per_mailbox",
            "4",
        ),
        (
            "[graph]\nbase_url = \"not a url\"",
            "graph.base_url",
            "not a URL",
        ),
        (
            "[admin]\nlisten = \"nowhere\"",
            "admin.listen",
            "not an address",
        ),
        ("[admin]\ntokens = [\"short\"]", "admin.tokens", "16"),
        (
            "[window]\nseconds = \"five\"",
            "window.seconds",
            "invalid type",
        ),
        ("[window]\nsecs = 5", "window", "secs"),
        ("[log]\nformat = \"xml\"", "log.format", "xml"),
    ];
    for (toml, key, problem) in cases {
        let err = Config::from_toml_str(toml).unwrap_err().to_string();
        assert!(err.contains(key), "{toml:?}: {err:?} does not name {key}");
        assert!(
            err.contains(problem),
            "{toml:?}: {err:?} does not say {problem:?}"
        );
    }
}

#[test]
fn a_missing_config_file_is_named() {
    let err = Config::load(Some(std::path::Path::new("/nonexistent/outlook-sync.toml")))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/outlook-sync.toml"), "{err}");
}

#[test]
fn the_command_line_reports_an_invalid_configuration_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[window]\nseconds = 0\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("window.seconds"), "{stderr}");
}

#[test]
fn environment_variables_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.toml");
    std::fs::write(&path, "[window]\nseconds = 10\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .args(["--config", path.to_str().unwrap(), "check-config"])
        .env("OUTLOOK_SYNC__WINDOW__SECONDS", "7")
        .env(
            "OUTLOOK_SYNC__AMQP__URL",
            "amqp://user:hunter2hunter2@mq:5672/%2f",
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("seconds: 7"), "{stdout}");
    assert!(
        !stdout.contains("hunter2"),
        "the AMQP password is printed: {stdout}"
    );
}

/// Just enough TOML reading to see which keys the commented defaults file sets.
mod toml_like {
    pub struct Doc(Vec<(String, String)>);
    impl Doc {
        pub fn has(&self, section: &str, key: &str) -> bool {
            self.0.iter().any(|(s, k)| s == section && k == key)
        }
    }
    pub fn parse(text: &str) -> Doc {
        let mut section = String::new();
        let mut keys = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
            } else if let Some((k, _)) = line.split_once('=')
                && !line.starts_with('#')
            {
                keys.push((section.clone(), k.trim().to_string()));
            }
        }
        Doc(keys)
    }
}
