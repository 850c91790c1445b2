//! Configuration: the defaults file documents every key and equals the built-in defaults; an
//! invalid setting names its key, where it was set (file and line, or environment variable) and
//! never shows a secret; what can never work is refused at start; `check-config` prints the
//! effective configuration as TOML with every secret redacted.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine;
use outlook_sync::config::{Config, DEFAULTS_TOML};

use crate::support::unique;

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
        (
            "[admin]\ntokens = [\"short\"]",
            "admin.tokens",
            "easy to guess",
        ),
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
    assert!(stdout.contains("seconds = 7"), "{stdout}");
    assert!(
        !stdout.contains("hunter2"),
        "the AMQP password is printed: {stdout}"
    );
}

/// What one run of the real binary printed, and how it ended.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    /// The configuration file it was given, if any.
    file: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Outcome {
    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Fails the test if anything it printed holds one of `secrets`.
    fn assert_shows_none_of(&self, secrets: &[&str], case: &str) {
        for s in secrets {
            assert!(
                !self.both().contains(s),
                "{case}: the output shows the secret {s:?}:\n{}",
                self.both()
            );
        }
    }
}

/// Runs `outlook-sync [--config FILE] ARGS` with only the `OUTLOOK_SYNC__*` variables given (none
/// inherited), its own queue names, Redis prefix and an ephemeral admin port, so a `run` that
/// was wrongly accepted touches nothing of anyone else's; it is stopped after 30 s.
fn outlook_sync(args: &[&str], toml: Option<&str>, env: &[(&str, &str)]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let id = unique("config");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"));
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTLOOK_SYNC") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.env("OUTLOOK_SYNC__AMQP__EXCHANGE", format!("{id}.x"))
        .env("OUTLOOK_SYNC__AMQP__QUEUE", format!("{id}.work"))
        .env(
            "OUTLOOK_SYNC__AMQP__DEAD_LETTER_EXCHANGE",
            format!("{id}.dlx"),
        )
        .env(
            "OUTLOOK_SYNC__AMQP__DEAD_LETTER_QUEUE",
            format!("{id}.dead"),
        )
        .env("OUTLOOK_SYNC__REDIS__KEY_PREFIX", &id)
        .env("OUTLOOK_SYNC__ADMIN__LISTEN", "127.0.0.1:0");
    cmd.envs(env.iter().copied());
    let file = toml.map(|t| {
        let path = dir.path().join("outlook-sync.toml");
        std::fs::write(&path, t).unwrap();
        cmd.arg("--config").arg(&path);
        path
    });
    cmd.args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("starting outlook-sync");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        file,
        _dir: dir,
    }
}

const SENTINEL: &str = "SENTINEL-q7Zr";

/// A 32-byte AES key whose base64 text is itself recognisable, and that text.
fn sentinel_key() -> String {
    let mut bytes = *b"SENTINEL-KEY-0123456789abcdefghi";
    bytes[31] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn a_secret_is_never_shown_when_its_value_has_the_wrong_type() {
    let token = format!("TOKEN-{SENTINEL}-abcdefghij");
    let key = sentinel_key();
    let env_token = [("OUTLOOK_SYNC__ADMIN__TOKENS", token.as_str())];
    let env_key = [("OUTLOOK_SYNC__SECRETS__KEYS", key.as_str())];
    let file_token = format!("[admin]\ntokens = \"{token}\"\n");
    let file_key = format!("[secrets]\nactive_key = \"k\"\nkeys = \"{key}\"\n");
    /// (case, file, environment, the key named, where it was set)
    type Case<'a> = (
        &'a str,
        Option<&'a str>,
        &'a [(&'a str, &'a str)],
        &'a str,
        &'a str,
    );
    let cases: [Case; 4] = [
        (
            "token in env",
            None,
            &env_token,
            "admin.tokens",
            "OUTLOOK_SYNC__ADMIN__TOKENS",
        ),
        (
            "key in env",
            None,
            &env_key,
            "secrets.keys",
            "OUTLOOK_SYNC__SECRETS__KEYS",
        ),
        (
            "token in file",
            Some(&file_token),
            &[],
            "admin.tokens",
            "line 2",
        ),
        (
            "key in file",
            Some(&file_key),
            &[],
            "secrets.keys",
            "line 3",
        ),
    ];
    for (case, toml, env, key_name, place) in cases {
        for command in ["check-config", "run"] {
            let out = outlook_sync(&[command], toml, env);
            let case = format!("{case}, {command}");
            assert_eq!(out.code, Some(2), "{case}: {}", out.both());
            out.assert_shows_none_of(&[SENTINEL, &key], &case);
            assert!(out.stderr.contains(key_name), "{case}: {}", out.stderr);
            assert!(out.stderr.contains(place), "{case}: {}", out.stderr);
            assert!(
                out.stderr.contains("invalid type"),
                "{case} does not describe the problem: {}",
                out.stderr
            );
        }
    }
}

#[test]
fn a_secret_is_never_shown_when_its_setting_is_refused_or_its_line_is_not_toml() {
    let zero_key = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
    let cases = [
        (
            format!("[admin]\ntokens = [\"TOKEN-{SENTINEL}-abcdefghij\n"),
            "line 2",
        ),
        // A key pasted where its id belongs.
        (
            format!("[secrets]\nactive_key = \"{SENTINEL}{zero_key}\"\n"),
            "secrets.active_key",
        ),
        (
            format!("[admin]\ntokens = [\"{SENTINEL}{SENTINEL}{SENTINEL} \"]\n"),
            "admin.tokens[0]",
        ),
        (
            format!("[admin]\ntokens = [\"{SENTINEL}\"]\n"),
            "admin.tokens[0]",
        ),
        (
            format!("[amqp]\nurl = \"amqp://u:{SENTINEL}@127.0.0.1:notaport/\"\n"),
            "amqp.url",
        ),
        (
            format!("[redis]\nurl = \"redis://:{SENTINEL}@127.0.0.1:99999/\"\n"),
            "redis.url",
        ),
        (
            format!("[graph]\nbase_url = \"not a url {SENTINEL}\"\n"),
            "graph.base_url",
        ),
        (
            format!("[graph]\nlogin_url = \"https://user:{SENTINEL}@login.example.com\"\n"),
            "graph.login_url",
        ),
        (
            format!("[admin]\npublic_url = \"{SENTINEL}\"\n"),
            "admin.public_url",
        ),
        (
            format!(
                "[secrets]\nactive_key = \"k\"\n[[secrets.keys]]\nid = \"k\"\nkey_base64 = \"{SENTINEL}\"\n"
            ),
            "secrets.keys[0].key_base64",
        ),
        (
            format!(
                "[secrets]\nactive_key = \"k\"\n[[secrets.keys]]\nid = \"k\"\nkey_base64 = \"{zero_key}\"\n"
            ),
            "secrets.keys[0].key_base64",
        ),
    ];
    for (toml, named) in &cases {
        let out = outlook_sync(&["check-config"], Some(toml), &[]);
        assert_eq!(out.code, Some(2), "{toml}: {}", out.both());
        out.assert_shows_none_of(&[SENTINEL, &zero_key], toml);
        assert!(out.stderr.contains(named), "{toml}: {}", out.stderr);
        let file = out.file.as_ref().unwrap().display().to_string();
        assert!(out.stderr.contains(&file), "{toml}: {}", out.stderr);
    }
}

#[test]
fn configuration_that_can_never_work_is_refused_with_its_key_named() {
    let zero_key = base64::engine::general_purpose::STANDARD.encode([0u8; 32]);
    let key_toml = |key: &str| {
        format!("[secrets]\nactive_key = \"k\"\nkeys = [{{id = \"k\", key_base64 = \"{key}\"}}]")
    };
    let cases = [
        (
            "[admin]\ntokens = [\"                \"]".to_string(),
            "admin.tokens[0]",
            "blank",
        ),
        (
            "[admin]\ntokens = [\" Zq4vT8xL2nW7pR5kY9cM3bH6\"]".into(),
            "admin.tokens[0]",
            "starts or ends with a space",
        ),
        (
            "[admin]\ntokens = [\"Zq4vT8xL2nW7pR5kY9cM3bH6\", \"Zq4vT8xL2nW7pR5kY9cM3bH7 \"]"
                .into(),
            "admin.tokens[1]",
            "starts or ends with a space",
        ),
        (
            "[admin]\ntokens = [\"aaaaaaaaaaaaaaaa\"]".into(),
            "admin.tokens[0]",
            "openssl rand",
        ),
        (
            "[admin]\ntokens = [\"aaaaaaaaaaaaaaaa\"]".into(),
            "admin.tokens[0]",
            "64 bits",
        ),
        (
            key_toml(&zero_key),
            "secrets.keys[0].key_base64",
            "not random",
        ),
        (
            "[amqp]\nurl = \"amqp://u:p@127.0.0.1:notaport/\"".into(),
            "amqp.url",
            "invalid port",
        ),
        (
            "[redis]\nurl = \"redis://127.0.0.1:99999/\"".into(),
            "redis.url",
            "invalid port",
        ),
        (
            "[redis]\nurl = \"rediss://127.0.0.1:6380/#insecure\"".into(),
            "redis.url",
            "redis.tls_ca_file",
        ),
        (
            "[redis]\nkey_prefix = \"sync{a}\"".into(),
            "redis.key_prefix",
            "must not contain '{' or '}'",
        ),
        (
            "[redis]\ntls_ca_file = \"/nonexistent/ca.pem\"".into(),
            "redis.tls_ca_file",
            "does not ask for TLS",
        ),
        (
            "[redis]\nurl = \"rediss://127.0.0.1:6380/\"\ntls_ca_file = \"/nonexistent/ca.pem\""
                .into(),
            "redis.tls_ca_file",
            "cannot read /nonexistent/ca.pem",
        ),
        (
            "[graph]\nlogin_url = \"http://login.example.com\"".into(),
            "graph.login_url",
            "graph.allow_insecure_http",
        ),
        (
            "[graph]\nbase_url = \"http://graph.example.com/v1.0\"".into(),
            "graph.base_url",
            "unencrypted",
        ),
        (
            "[graph]\nlogin_url = \"https://user:pw@login.example.com\"".into(),
            "graph.login_url",
            "user name or password",
        ),
        (
            "[graph]\nlogin_url = \"https://login.example.com/?x=1\"".into(),
            "graph.login_url",
            "query",
        ),
        (
            "[graph]\nlogin_url = \"https://login.example.com/#x\"".into(),
            "graph.login_url",
            "fragment",
        ),
    ];
    for (toml, key, problem) in &cases {
        let err = match Config::from_toml_str(toml) {
            Ok(_) => panic!("{toml:?} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(key), "{toml:?}: {err:?} does not name {key}");
        assert!(
            err.contains(problem),
            "{toml:?}: {err:?} does not say {problem:?}"
        );
    }
    // What does work stays accepted.
    let random_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    for ok in [
        "[admin]\ntokens = [\"Zq4vT8xL2nW7pR5kY9cM3bH6\", \"correct horse battery staple\"]".to_string(),
        key_toml(&random_key),
        "[graph]\nlogin_url = \"http://127.0.0.1:8090\"\nbase_url = \"http://localhost:8090/v1.0\"".into(),
        "[graph]\nbase_url = \"http://[::1]:8090/v1.0\"".into(),
        "[graph]\nallow_insecure_http = true\nlogin_url = \"http://graph-emulator:8090\"\nbase_url = \"http://graph-emulator:8090/v1.0\"".into(),
        "[redis]\nurl = \"redis://:pw@redis.internal:6379/0\"".into(),
        "[amqp]\nurl = \"amqps://u:p@mq.internal:5671/cyzen\"".into(),
    ] {
        if let Err(e) = Config::from_toml_str(&ok) {
            panic!("{ok:?} was refused: {e}");
        }
    }
}

#[test]
fn plain_http_to_graph_off_this_machine_needs_the_opt_in_and_is_then_warned_about() {
    let env = [
        (
            "OUTLOOK_SYNC__GRAPH__BASE_URL",
            "http://graph-emulator:8090/v1.0",
        ),
        (
            "OUTLOOK_SYNC__GRAPH__LOGIN_URL",
            "http://graph-emulator:8090",
        ),
    ];
    let refused = outlook_sync(&["check-config"], None, &env);
    assert_eq!(refused.code, Some(2), "{}", refused.both());
    assert!(
        refused.stderr.contains("OUTLOOK_SYNC__GRAPH__"),
        "{}",
        refused.stderr
    );
    let mut opted_in = env.to_vec();
    opted_in.push(("OUTLOOK_SYNC__GRAPH__ALLOW_INSECURE_HTTP", "true"));
    let accepted = outlook_sync(&["check-config"], None, &opted_in);
    assert_eq!(accepted.code, Some(0), "{}", accepted.both());
    for key in ["graph.base_url", "graph.login_url"] {
        assert!(
            accepted
                .stderr
                .lines()
                .any(|l| l.contains("warning") && l.contains(key) && l.contains("unencrypted")),
            "no warning about {key}: {}",
            accepted.stderr
        );
    }
}

#[test]
fn check_config_prints_the_effective_configuration_as_toml_with_every_secret_redacted() {
    let key = sentinel_key();
    let token = format!("{SENTINEL}-{}", uuid::Uuid::new_v4().simple());
    let file = format!(
        "[window]\nseconds = 10\n\n[admin]\ntokens = [\"{token}\"]\n\n[secrets]\nactive_key = \"k1\"\n\n[[secrets.keys]]\nid = \"k1\"\nkey_base64 = \"{key}\"\n"
    );
    let amqp = format!("amqp://sync:{SENTINEL}@mq.internal:5672/cyzen");
    let redis = format!("redis://:{SENTINEL}@redis.internal:6379/0");
    let database = format!("postgres://outlook_sync:{SENTINEL}@pg.internal:5432/cyzen");
    let out = outlook_sync(
        &["check-config"],
        Some(&file),
        &[
            ("OUTLOOK_SYNC__WINDOW__SECONDS", "7"),
            ("OUTLOOK_SYNC__AMQP__URL", &amqp),
            ("OUTLOOK_SYNC__REDIS__URL", &redis),
            ("OUTLOOK_SYNC__DATABASE__URL", &database),
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.both());
    out.assert_shows_none_of(&[SENTINEL, &key], "check-config");
    let shown: toml::Value = toml::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("check-config did not print TOML ({e}):\n{}", out.stdout));
    assert_eq!(shown["window"]["seconds"].as_integer(), Some(7));
    assert_eq!(shown["graph"]["batch_size"].as_integer(), Some(20));
    let amqp_shown = shown["amqp"]["url"].as_str().unwrap();
    assert!(
        amqp_shown.starts_with("amqp://sync:") && amqp_shown.contains("@mq.internal:5672/cyzen"),
        "the AMQP URL should keep everything but its password: {amqp_shown}"
    );
    assert!(
        shown["redis"]["url"]
            .as_str()
            .unwrap()
            .contains("@redis.internal:6379/0")
    );
    assert!(
        shown["database"]["url"]
            .as_str()
            .unwrap()
            .starts_with("postgres://outlook_sync:"),
        "the database URL keeps everything but its password"
    );
    assert_eq!(shown["admin"]["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(shown["secrets"]["keys"][0]["id"].as_str(), Some("k1"));
    assert_eq!(shown["secrets"]["active_key"].as_str(), Some("k1"));
}

#[test]
fn every_configuration_error_names_the_file_the_key_and_the_line() {
    let good_key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    let two_keys = format!(
        "[secrets]\nactive_key = \"a\"\n\n[[secrets.keys]]\nid = \"a\"\nkey_base64 = \"{good_key}\"\n\n[[secrets.keys]]\nid = \"b\"\nkey_base64 = \"short\"\n"
    );
    let cases: [(&str, &str, &str); 6] = [
        (
            "[window]\nseconds = 10\n\n[amqp\nprefetch = 10\n",
            "line 4",
            "TOML",
        ),
        (
            "[window]\n\nseconds = \"abc\"\n",
            "line 3",
            "window.seconds",
        ),
        ("[window]\nseconds = 0\n", "line 2", "window.seconds"),
        ("[window]\nsecs = 5\n", "line 2", "window.secs"),
        (
            "# comment\n[graph]\nbatch_size = 21\n",
            "line 3",
            "graph.batch_size",
        ),
        (&two_keys, "line 10", "secrets.keys[1].key_base64"),
    ];
    for (toml, line, key) in cases {
        let out = outlook_sync(&["check-config"], Some(toml), &[]);
        assert_eq!(out.code, Some(2), "{toml}: {}", out.both());
        let file = out.file.as_ref().unwrap().display().to_string();
        for part in [file.as_str(), line, key] {
            assert!(
                out.stderr.contains(part),
                "{toml:?}: the error does not say {part:?}: {}",
                out.stderr
            );
        }
    }
    // Set in the environment: the variable is named instead of a file and a line.
    for (value, problem) in [("abc", "invalid type"), ("0", "out of range")] {
        let out = outlook_sync(
            &["check-config"],
            Some("[window]\nseconds = 10\n"),
            &[("OUTLOOK_SYNC__WINDOW__SECONDS", value)],
        );
        assert_eq!(out.code, Some(2), "{}", out.both());
        for part in ["OUTLOOK_SYNC__WINDOW__SECONDS", "window.seconds", problem] {
            assert!(out.stderr.contains(part), "{value}: {}", out.stderr);
        }
        assert!(
            !out.stderr.contains("line 2"),
            "the value came from the environment, not the file: {}",
            out.stderr
        );
    }
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
