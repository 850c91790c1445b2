//! `deploy/`: every manifest parses, and wherever it describes what the code also describes
//! (queue names and arguments, the admin port, the probes, the configuration keys, the metric
//! names), the two agree. Docker and Kubernetes cannot run here; what can runs for real:
//! configurations are loaded by the real binary (`check-config`), the Kubernetes manifests are
//! rendered by kustomize and checked against the Kubernetes, KEDA and Prometheus Operator
//! schemas, the alert rules go through `promtool check rules` and their unit tests, a real
//! redis-server starts on `redis.conf`, a real worker's `/metrics` is read, and
//! `scripts/services.sh` brings private RabbitMQ, Redis and PostgreSQL instances up and down.
//! The tools come from `scripts/tools/*.sh` (run by `scripts/test.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use lapin::types::{AMQPValue, FieldTable};
use outlook_sync::amqp::{Topology, WORK_BINDING};
use outlook_sync::config::Config;
use outlook_sync::metrics::Metrics;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::support::repo_path;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_path(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Every YAML document of a file (manifests may hold several, separated by `---`), as JSON.
fn yaml_docs(rel: &str) -> Vec<Value> {
    yaml_docs_of(rel, &read(rel))
}

fn yaml_docs_of(what: &str, text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            let v = serde_yaml_ng::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{what} is not valid YAML: {e}"));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{what}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// A tool installed by `scripts/tools/{script}.sh` (into target/tools/bin), or on PATH; a test
/// that needs it fails, naming the script, when it is neither.
fn tool(name: &str, script: &str) -> std::path::PathBuf {
    let installed = repo_path("target/tools/bin").join(name);
    if installed.is_file() {
        return installed;
    }
    if let Some(found) = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }) {
        return found;
    }
    panic!(
        "this test needs {name}, which is not installed: run scripts/tools/{script}.sh \
         (scripts/test.sh runs it before the tests)"
    )
}

/// Runs a command; returns (success, stdout + stderr).
fn run(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `kustomize build DIR`: the manifests as `kubectl apply -k DIR` would send them.
fn kustomize_build(dir: &Path) -> String {
    let (ok, out) = run(std::process::Command::new(tool("kustomize", "kustomize"))
        .arg("build")
        .arg(dir));
    assert!(ok, "kustomize build {} failed: {out}", dir.display());
    out
}

/// The rendered object of `kind` in kustomize's output for `dir` (relative to the repository).
fn rendered(dir: &str, kind: &str) -> Value {
    yaml_docs_of(dir, &kustomize_build(&repo_path(dir)))
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("kustomize build {dir} renders no {kind}"))
}

fn yaml(rel: &str) -> Value {
    let mut docs = yaml_docs(rel);
    assert_eq!(docs.len(), 1, "{rel} should hold one document");
    docs.remove(0)
}

/// The Kubernetes object of `kind` in `rel`.
fn object(rel: &str, kind: &str) -> Value {
    yaml_docs(rel)
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("{rel} has no {kind}"))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {v:#}"))
}

/// The configuration the ConfigMap ships (kustomize generates the ConfigMap from this file).
fn configmap_toml() -> String {
    read("deploy/k8s/base/config.toml")
}

fn configmap_config() -> Config {
    Config::from_toml_str(&configmap_toml())
        .unwrap_or_else(|e| panic!("deploy/k8s/base/config.toml is invalid: {e}"))
}

fn container() -> Value {
    let d = object("deploy/k8s/base/deployment.yaml", "Deployment");
    let cs = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .clone();
    assert_eq!(cs.len(), 1, "one container per worker pod");
    cs[0].clone()
}

fn amqp_json(v: &AMQPValue) -> Value {
    match v {
        AMQPValue::LongString(s) => json!(String::from_utf8_lossy(s.as_bytes())),
        AMQPValue::ShortString(s) => json!(s.as_str()),
        AMQPValue::LongInt(n) => json!(n),
        AMQPValue::LongLongInt(n) => json!(n),
        AMQPValue::ShortInt(n) => json!(n),
        AMQPValue::Boolean(b) => json!(b),
        other => panic!("no JSON form for {other:?} in the definitions test"),
    }
}

fn table_json(t: &FieldTable) -> Value {
    Value::Object(
        t.inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), amqp_json(v)))
            .collect(),
    )
}

/// Runs `outlook-sync check-config` with a config file and environment; returns (success, output).
fn check_config(toml: Option<&str>, env: &[(String, String)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"));
    cmd.arg("check-config");
    if let Some(t) = toml {
        let path = dir.path().join("config.toml");
        std::fs::write(&path, t).unwrap();
        cmd.arg("--config").arg(&path);
    }
    // Only the variables under test: none inherited from the machine running the tests.
    for (k, _) in std::env::vars() {
        if k.starts_with("OUTLOOK_SYNC") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.output().expect("running outlook-sync check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn rabbitmq_definitions_declare_exactly_what_the_worker_declares() {
    let defs: Value = serde_json::from_str(&read("deploy/rabbitmq/definitions.json"))
        .expect("deploy/rabbitmq/definitions.json is valid JSON");
    let t = Topology::new(&Config::default().amqp);

    let exchanges: BTreeMap<&str, &Value> = defs["exchanges"]
        .as_array()
        .expect("exchanges")
        .iter()
        .map(|x| (str_at(x, "/name"), x))
        .collect();
    let want: BTreeMap<&str, &str> = [
        (t.exchange.as_str(), "topic"),
        (t.dead_letter_exchange.as_str(), "fanout"),
    ]
    .into();
    assert_eq!(
        exchanges.keys().copied().collect::<BTreeSet<_>>(),
        want.keys().copied().collect::<BTreeSet<_>>(),
        "exchanges"
    );
    for (name, kind) in &want {
        let x = exchanges[name];
        assert_eq!(x["type"], *kind, "exchange {name}'s type");
        assert_eq!(x["durable"], true, "exchange {name} is durable");
        assert_eq!(x["auto_delete"], false, "exchange {name}");
        assert_eq!(x["arguments"], json!({}), "exchange {name}'s arguments");
    }

    let queues: BTreeMap<&str, &Value> = defs["queues"]
        .as_array()
        .expect("queues")
        .iter()
        .map(|q| (str_at(q, "/name"), q))
        .collect();
    let want = [
        (t.queue.as_str(), table_json(&t.work_queue_arguments())),
        (
            t.dead_letter_queue.as_str(),
            table_json(&t.dead_letter_queue_arguments()),
        ),
    ];
    assert_eq!(
        queues.keys().copied().collect::<BTreeSet<_>>(),
        want.iter().map(|(n, _)| *n).collect::<BTreeSet<_>>(),
        "queues"
    );
    for (name, args) in &want {
        let q = queues[name];
        assert_eq!(&q["arguments"], args, "queue {name}'s arguments");
        assert_eq!(q["arguments"]["x-queue-type"], "quorum", "{name} is quorum");
        assert_eq!(q["durable"], true, "queue {name} is durable");
        assert_eq!(q["auto_delete"], false, "queue {name}");
    }
    // Dead-lettering: the work queue's dead letters go to the exchange the dead-letter queue is
    // bound to, at least once.
    assert_eq!(
        queues[t.queue.as_str()]["arguments"]["x-dead-letter-exchange"],
        t.dead_letter_exchange.as_str()
    );

    let bindings: BTreeSet<(String, String, String, String)> = defs["bindings"]
        .as_array()
        .expect("bindings")
        .iter()
        .map(|b| {
            assert_eq!(b["arguments"], json!({}), "binding arguments");
            (
                str_at(b, "/source").to_string(),
                str_at(b, "/destination").to_string(),
                str_at(b, "/destination_type").to_string(),
                str_at(b, "/routing_key").to_string(),
            )
        })
        .collect();
    let want: BTreeSet<(String, String, String, String)> = [
        (&t.exchange, &t.queue, WORK_BINDING),
        (&t.dead_letter_exchange, &t.dead_letter_queue, ""),
    ]
    .into_iter()
    .map(|(s, d, k)| (s.clone(), d.clone(), "queue".to_string(), k.to_string()))
    .collect();
    assert_eq!(bindings, want, "bindings");

    // Every object lives in a vhost the file declares.
    let vhosts: BTreeSet<&str> = defs["vhosts"]
        .as_array()
        .expect("vhosts")
        .iter()
        .map(|v| str_at(v, "/name"))
        .collect();
    for section in ["exchanges", "queues", "bindings", "policies"] {
        for item in defs[section].as_array().into_iter().flatten() {
            assert!(
                vhosts.contains(str_at(item, "/vhost")),
                "{section}: {item} is in an undeclared vhost"
            );
        }
    }
    // A policy must not compete with the arguments the worker sets (for quorum queues several
    // policy keys take precedence over, or combine with, the arguments).
    let arg_keys: BTreeSet<String> = want_arg_keys(&t);
    for p in defs["policies"].as_array().into_iter().flatten() {
        for key in p["definition"]
            .as_object()
            .expect("policy definition")
            .keys()
        {
            assert!(
                !arg_keys.contains(key),
                "policy {} sets {key}, which the worker sets as a queue argument",
                p["name"]
            );
        }
        let pattern = str_at(p, "/pattern");
        assert!(
            pattern.starts_with('^'),
            "policy patterns are anchored: {pattern}"
        );
    }
}

/// The queue argument keys the worker sets, as policy keys (`x-delivery-limit` → `delivery-limit`).
fn want_arg_keys(t: &Topology) -> BTreeSet<String> {
    [t.work_queue_arguments(), t.dead_letter_queue_arguments()]
        .iter()
        .flat_map(|a| a.inner().keys().map(|k| k.as_str().to_string()))
        .map(|k| k.trim_start_matches("x-").to_string())
        .collect()
}

#[test]
fn the_configmap_is_a_valid_configuration_naming_what_the_definitions_declare() {
    let cfg = configmap_config();
    let defaults = Config::default();
    // The names the definitions declare (checked against the code above) are the ones the
    // workers use.
    assert_eq!(cfg.amqp.exchange, defaults.amqp.exchange);
    assert_eq!(cfg.amqp.queue, defaults.amqp.queue);
    assert_eq!(
        cfg.amqp.dead_letter_exchange,
        defaults.amqp.dead_letter_exchange
    );
    assert_eq!(cfg.amqp.dead_letter_queue, defaults.amqp.dead_letter_queue);
    assert_eq!(cfg.amqp.delivery_limit, defaults.amqp.delivery_limit);
    assert!(
        cfg.amqp.heartbeat_seconds > 0,
        "a stalled broker must be noticed"
    );
    assert_eq!(
        cfg.log.format,
        outlook_sync::config::LogFormat::Json,
        "production logs are JSON"
    );
    assert_eq!(
        cfg.admin_addr().ip().to_string(),
        "0.0.0.0",
        "the kubelet and Prometheus reach the pod"
    );
    // No secret in the ConfigMap: those come from the Secret.
    let text = configmap_toml();
    for key in ["url =", "tokens =", "keys =", "key_base64"] {
        assert!(
            !text.lines().any(|l| l.trim_start().starts_with(key)),
            "config.toml sets {key:?}: secrets belong in the Secret"
        );
    }
    // And the real binary loads it.
    let (ok, out) = check_config(Some(&text), &[]);
    assert!(
        ok,
        "outlook-sync check-config refused deploy/k8s/base/config.toml: {out}"
    );
}

#[test]
fn the_deployment_probes_health_runs_non_root_read_only_and_outlasts_the_drain() {
    let cfg = configmap_config();
    let d = object("deploy/k8s/base/deployment.yaml", "Deployment");
    let pod = &d["spec"]["template"]["spec"];
    let c = container();
    let labels = &d["spec"]["template"]["metadata"]["labels"];
    assert_eq!(
        &d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        &labels["app.kubernetes.io/name"]
    );

    // Probes: liveness on /healthz, readiness on /readyz, on the admin port.
    let port = cfg.admin_addr().port();
    let ports = c["ports"].as_array().expect("ports");
    let admin = ports
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("a port named admin");
    assert_eq!(
        admin["containerPort"], port,
        "containerPort = admin.listen's port"
    );
    assert_eq!(str_at(&c, "/livenessProbe/httpGet/path"), "/healthz");
    assert_eq!(str_at(&c, "/readinessProbe/httpGet/path"), "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "admin");
    let annotations = &d["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/port"], port.to_string());
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // The drain fits in the termination grace period, with room to release claims and close.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        grace >= cfg.worker.shutdown_grace_seconds + 10,
        "terminationGracePeriodSeconds {grace} must exceed worker.shutdown_grace_seconds {} by 10 s or more",
        cfg.worker.shutdown_grace_seconds
    );

    // Non-root, read-only, no privilege escalation, all capabilities dropped.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_u64().unwrap_or(0) > 0);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));

    // Resources: requests, and a memory limit.
    for r in ["cpu", "memory"] {
        assert!(
            c["resources"]["requests"][r].is_string(),
            "requests.{r} is set"
        );
    }
    assert!(c["resources"]["limits"]["memory"].is_string());

    // The configuration file: the ConfigMap, mounted where OUTLOOK_SYNC_CONFIG points.
    let env = c["env"].as_array().expect("env");
    let config_path = env
        .iter()
        .find(|e| e["name"] == "OUTLOOK_SYNC_CONFIG")
        .map(|e| str_at(e, "/value"))
        .expect("OUTLOOK_SYNC_CONFIG");
    let mount = c["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"] == "config")
        .expect("the config volume is mounted");
    // The whole ConfigMap as a directory: a subPath mount never sees an update.
    assert!(
        mount.get("subPath").is_none(),
        "the config volume is mounted by subPath, so an edit never reaches running pods"
    );
    assert_eq!(
        format!("{}/config.toml", str_at(mount, "/mountPath")),
        config_path
    );
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "config")
        .expect("the config volume");
    let generated = &yaml("deploy/k8s/base/kustomization.yaml")["configMapGenerator"][0];
    assert_eq!(volume["configMap"]["name"], generated["name"]);
    assert_eq!(generated["files"], json!(["config.toml"]));
    // The root filesystem is read-only: whatever the worker writes (purge archives) must be on a
    // writable volume.
    let writable: Vec<&str> = c["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["readOnly"] != true)
        .map(|m| str_at(m, "/mountPath"))
        .collect();
    assert!(
        writable
            .iter()
            .any(|dir| Path::new(&cfg.dlq.archive_dir).starts_with(dir)),
        "dlq.archive_dir {} is not on a writable volume ({writable:?})",
        cfg.dlq.archive_dir
    );
    // The secrets: the Secret the template describes.
    let secret = object("deploy/k8s/secret.example.yaml", "Secret");
    assert_eq!(
        c["envFrom"][0]["secretRef"]["name"],
        secret["metadata"]["name"]
    );

    // Service, PodDisruptionBudget and ServiceMonitor select these pods, on the admin port.
    let svc = object("deploy/k8s/base/service.yaml", "Service");
    assert_eq!(
        svc["spec"]["selector"]["app.kubernetes.io/name"],
        labels["app.kubernetes.io/name"]
    );
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "admin");
    let pdb = object("deploy/k8s/base/pdb.yaml", "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        labels["app.kubernetes.io/name"]
    );
    let sm = object(
        "deploy/k8s/prometheus-operator/servicemonitor.yaml",
        "ServiceMonitor",
    );
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        svc["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");

    // Each kustomization lists every manifest of its directory, and the top level uses each
    // directory; only the Secret template is left out.
    let top = yaml("deploy/k8s/kustomization.yaml");
    assert_eq!(top["resources"], json!(["base"]));
    assert_eq!(top["components"], json!(["keda", "prometheus-operator"]));
    for dir in [
        "deploy/k8s",
        "deploy/k8s/base",
        "deploy/k8s/keda",
        "deploy/k8s/prometheus-operator",
    ] {
        let k = yaml(&format!("{dir}/kustomization.yaml"));
        let listed: BTreeSet<&str> = k["resources"]
            .as_array()
            .expect("resources")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for f in std::fs::read_dir(repo_path(dir)).unwrap() {
            let name = f.unwrap().file_name().to_string_lossy().to_string();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                assert_eq!(
                    listed.contains(name.as_str()),
                    name != "secret.example.yaml",
                    "{dir}/{name} in {dir}/kustomization.yaml"
                );
            }
        }
        for f in &listed {
            assert!(repo_path(dir).join(f).exists(), "{dir}/{f}");
        }
    }
}

#[tokio::test]
async fn the_probed_paths_answer_without_the_services() {
    // What the kubelet calls, on the router the worker serves: alive without Redis and
    // RabbitMQ, not ready without them, and quickly in both cases.
    outlook_sync::install_crypto_provider();
    let mut cfg = Config::default();
    cfg.redis.url = "redis://127.0.0.1:1/".into();
    cfg.database.url = "postgres://postgres@127.0.0.1:1/test".into();
    let metrics = Metrics::new();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let health = outlook_sync::admin::Health {
        metrics,
        consumer_ready: rx,
        redis: outlook_sync::store::connect_lazy(&cfg).unwrap(),
        database: outlook_sync::tenants::db::Db::new(&cfg.database),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(listener, outlook_sync::admin::router(health))
            .await
            .unwrap()
    });
    let http = reqwest::Client::new();
    let c = container();
    for (probe, want) in [("livenessProbe", 200), ("readinessProbe", 503)] {
        let path = str_at(&c, &format!("/{probe}/httpGet/path"));
        let timeout = c[probe]["timeoutSeconds"].as_u64().unwrap();
        let started = std::time::Instant::now();
        let r = http
            .get(format!("http://{addr}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{probe} {path}");
        assert!(
            started.elapsed().as_secs() < timeout,
            "{probe} {path} answered within its timeoutSeconds ({timeout} s)"
        );
    }
    let m = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(m.contains("outlook_sync_redis_reachable 0"), "{m}");
    assert!(m.contains("outlook_sync_database_reachable 0"), "{m}");
    assert!(m.contains("outlook_sync_consumer_attached 0"), "{m}");
    server.abort();
}

/// A valid stand-in for each placeholder of the Secret template.
fn fill(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('>').expect("a placeholder is closed") + start;
        let name = &rest[start + 1..end];
        out.push_str(match name {
            "amqp user" => "outlook-sync",
            "amqp password" => "amqp-placeholder-password",
            "rabbitmq host" => "rabbitmq.internal",
            "vhost" => "cyzen",
            "redis password" => "redis-placeholder-password",
            "redis host" => "redis.internal",
            "admin token" => "Vq3xN8kR2mT7wZ5pL9cY4hB6-admin",
            "admin token name" => "ops",
            "database user" => "outlook_sync",
            "database password" => "database-placeholder-password",
            "database host" => "postgres.internal",
            "database name" => "cyzen",
            "key id" => "k2026",
            "32 random bytes, base64" => "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            other => {
                panic!("the Secret template has a placeholder this test does not know: <{other}>")
            }
        });
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

#[test]
fn the_secret_template_holds_no_real_value_and_sets_real_configuration_keys() {
    let secret = object("deploy/k8s/secret.example.yaml", "Secret");
    let data = secret["stringData"].as_object().expect("stringData");
    assert!(
        secret.get("data").is_none(),
        "no base64 data: a template only"
    );
    let mut env = Vec::new();
    for (k, v) in data {
        let v = v.as_str().expect("string values");
        assert!(
            v.contains('<') && v.contains('>'),
            "{k} must be a placeholder, not a value: {v}"
        );
        assert!(
            k.starts_with("OUTLOOK_SYNC__"),
            "{k} is not a configuration variable"
        );
        env.push((k.clone(), fill(v)));
    }
    for key in [
        "OUTLOOK_SYNC__AMQP__URL",
        "OUTLOOK_SYNC__REDIS__URL",
        "OUTLOOK_SYNC__DATABASE__URL",
        "OUTLOOK_SYNC__ADMIN__TOKENS",
        "OUTLOOK_SYNC__SECRETS__KEYS",
        "OUTLOOK_SYNC__SECRETS__ACTIVE_KEY",
    ] {
        assert!(data.contains_key(key), "the Secret template lacks {key}");
    }
    // The ConfigMap plus the filled Secret is a configuration the binary accepts, and it prints
    // none of the secrets back.
    let (ok, out) = check_config(Some(&configmap_toml()), &env);
    assert!(ok, "check-config refused ConfigMap + Secret: {out}");
    for secret in [
        "amqp-placeholder-password",
        "redis-placeholder-password",
        "database-placeholder-password",
        "Vq3xN8kR2mT7wZ5pL9cY4hB6-admin",
        "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    ] {
        assert!(
            !out.contains(secret),
            "check-config printed a secret: {out}"
        );
    }
}

#[test]
fn keda_scales_on_the_work_queue_and_the_due_backlog_never_to_zero() {
    let cfg = configmap_config();
    let so = object("deploy/k8s/keda/scaledobject.yaml", "ScaledObject");
    let d = object("deploy/k8s/base/deployment.yaml", "Deployment");
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], d["metadata"]["name"]);
    let min = so["spec"]["minReplicaCount"]
        .as_u64()
        .expect("minReplicaCount");
    assert!(
        min >= 2,
        "never fewer than two workers (minReplicaCount {min})"
    );
    let pdb = object("deploy/k8s/base/pdb.yaml", "PodDisruptionBudget");
    let unavailable = pdb["spec"]["maxUnavailable"]
        .as_u64()
        .expect("maxUnavailable");
    assert!(
        min > unavailable,
        "a drain must leave a worker running (minReplicaCount {min}, maxUnavailable {unavailable})"
    );
    assert!(so["spec"]["maxReplicaCount"].as_u64().unwrap() > min);
    let triggers = so["spec"]["triggers"].as_array().expect("triggers");
    let rabbit = triggers
        .iter()
        .find(|t| t["type"] == "rabbitmq")
        .expect("a rabbitmq trigger");
    assert_eq!(rabbit["metadata"]["queueName"], cfg.amqp.queue.as_str());
    assert_eq!(rabbit["metadata"]["mode"], "QueueLength");
    // Its credentials: the Secret's AMQP URL.
    let auth = object("deploy/k8s/keda/scaledobject.yaml", "TriggerAuthentication");
    assert_eq!(
        rabbit["authenticationRef"]["name"],
        auth["metadata"]["name"]
    );
    let secret = object("deploy/k8s/secret.example.yaml", "Secret");
    let r = &auth["spec"]["secretTargetRef"][0];
    assert_eq!(r["parameter"], "host");
    assert_eq!(r["name"], secret["metadata"]["name"]);
    assert!(secret["stringData"][str_at(r, "/key")].is_string());
    let prom = triggers
        .iter()
        .find(|t| t["type"] == "prometheus")
        .expect("a prometheus trigger");
    let query = str_at(prom, "/metadata/query");
    assert!(query.contains("outlook_sync_due_backlog"), "{query}");
    assert_known_metrics("deploy/k8s/keda/scaledobject.yaml", &[query.to_string()]);
}

/// Every `outlook_sync_…` name in `exprs` is a sample `/metrics` exposes.
fn assert_known_metrics(file: &str, exprs: &[String]) -> BTreeSet<String> {
    let known = Metrics::new().sample_names();
    let mut used = BTreeSet::new();
    for e in exprs {
        for name in metric_names(e) {
            assert!(
                known.contains(&name),
                "{file} uses {name}, which the code does not export (known: {known:?})"
            );
            used.insert(name);
        }
    }
    used
}

fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("outlook_sync_") {
        let start = i + pos;
        let boundary = start == 0 || {
            let c = bytes[start - 1];
            !(c.is_ascii_alphanumeric() || c == b'_')
        };
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.push(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every `expr` string anywhere in a JSON value.
fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_grafana_dashboard_charts_the_operators_questions_with_metrics_the_code_exports() {
    let d: Value = serde_json::from_str(&read("deploy/grafana/outlook-sync.json"))
        .expect("deploy/grafana/outlook-sync.json is valid JSON");
    assert!(d["title"].is_string() && d["uid"].is_string());
    let panels = d["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut all = Vec::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        if p["type"] == "row" {
            continue;
        }
        let mut e = Vec::new();
        exprs(p, &mut e);
        assert!(!e.is_empty(), "panel {} has no query", p["title"]);
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
        all.extend(e);
    }
    let used = assert_known_metrics("deploy/grafana/outlook-sync.json", &all);
    let joined = all.join("\n");
    for (what, needle) in [
        ("throughput", "outlook_sync_events_consumed_total"),
        ("windows flushed", "outlook_sync_schedules_flushed_total"),
        ("backlog", "outlook_sync_due_backlog"),
        ("backlog age", "outlook_sync_due_oldest_age_seconds"),
        (
            "latency percentiles",
            "histogram_quantile(0.95, sum by (le) (rate(outlook_sync_sync_latency_seconds_bucket",
        ),
        (
            "Graph status mix",
            "sum by (status) (rate(outlook_sync_graph_requests_total",
        ),
        ("429s", "outlook_sync_graph_throttled_total"),
        (
            "Retry-After waits",
            "outlook_sync_retry_after_wait_seconds_total",
        ),
        ("dead letters", "outlook_sync_dead_letters_total"),
        ("per-company failures", "by (company, kind)"),
        (
            "per-mailbox in flight",
            "outlook_sync_graph_mailbox_requests_in_flight_bucket",
        ),
    ] {
        assert!(
            joined.contains(needle),
            "the dashboard lacks {what} ({needle})"
        );
    }
    assert!(used.len() >= 15, "{used:?}");
}

#[test]
fn the_alert_rules_parse_name_exported_metrics_and_have_a_runbook_in_the_readme() {
    let rules_file = yaml("deploy/prometheus/alerts.yaml");
    let readme = read("README.md");
    let mut names = BTreeSet::new();
    let mut all = Vec::new();
    for g in rules_file["groups"].as_array().expect("groups") {
        assert!(g["name"].is_string());
        for r in g["rules"].as_array().expect("rules") {
            let name = str_at(r, "/alert");
            assert!(names.insert(name.to_string()), "alert {name} twice");
            let expr = str_at(r, "/expr");
            assert!(
                expr.contains("outlook_sync_"),
                "{name} names no metric of ours"
            );
            assert!(r["for"].is_string(), "{name} has a for: duration");
            assert!(
                matches!(r["labels"]["severity"].as_str(), Some("page" | "ticket")),
                "{name}'s severity"
            );
            assert!(r["annotations"]["summary"].is_string(), "{name}'s summary");
            // An absolute link an alert's reader can open (Alertmanager, a pager): a relative
            // README.md#… path resolves to nothing there.
            let runbook = reqwest::Url::parse(str_at(r, "/annotations/runbook_url"))
                .unwrap_or_else(|e| panic!("{name}'s runbook_url is not an absolute URL: {e}"));
            assert_eq!(runbook.scheme(), "https", "{name}'s runbook_url");
            assert!(
                runbook.path().ends_with("/README.md"),
                "{name}'s runbook_url links to README.md: {runbook}"
            );
            assert_eq!(
                runbook.fragment(),
                Some(name.to_lowercase().as_str()),
                "{name}'s runbook anchor"
            );
            assert!(
                r["annotations"].get("runbook").is_none(),
                "{name}: one runbook link, runbook_url"
            );
            assert!(
                readme
                    .lines()
                    .any(|l| l.starts_with('#') && l.contains(name)),
                "README.md has no heading for {name}: say what it means and what to do"
            );
            all.push(expr.to_string());
        }
    }
    let used = assert_known_metrics("deploy/prometheus/alerts.yaml", &all);
    for required in [
        "OutlookSyncBacklogOlderThanTwoWindows",
        "OutlookSyncDeadLettersGrowing",
        "OutlookSyncCompanyCredentialsFailing",
        "OutlookSyncWorkerNotReady",
        "OutlookSyncGraphThrottlingSustained",
    ] {
        assert!(names.contains(required), "alerts.yaml lacks {required}");
    }
    // Two windows of the production configuration.
    let two_windows = 2 * configmap_config().window.seconds;
    let backlog = rules_file["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["alert"] == "OutlookSyncBacklogOlderThanTwoWindows")
        .unwrap();
    assert!(
        str_at(backlog, "/expr").ends_with(&format!("> {two_windows}")),
        "the backlog alert fires past two windows ({two_windows} s)"
    );
    // Where the code exports a client-secret expiry metric, an alert warns before it expires.
    let expiry: Vec<String> = Metrics::new()
        .sample_names()
        .into_iter()
        .filter(|n| n.contains("secret_expir"))
        .collect();
    if !expiry.is_empty() {
        assert!(
            expiry.iter().any(|n| used.contains(n)),
            "the code exports {expiry:?}: alerts.yaml must warn about secrets about to expire"
        );
        assert!(names.contains("OutlookSyncClientSecretExpiring"));
    }
    // The plain-Prometheus scrape job keeps only these pods and reads their annotations.
    let scrape = yaml("deploy/prometheus/scrape.yaml");
    let job = &scrape["scrape_configs"][0];
    assert_eq!(job["job_name"], "outlook-sync");
    let relabel = serde_json::to_string(&job["relabel_configs"]).unwrap();
    assert!(relabel.contains("__meta_kubernetes_pod_annotation_prometheus_io_port"));
}

#[test]
fn the_redis_configuration_is_durable_and_never_evicts() {
    let text = read("deploy/redis/redis.conf");
    let mut directives: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once(' ').unwrap_or((line, ""));
        directives
            .entry(k.to_lowercase())
            .or_default()
            .push(v.trim().to_string());
    }
    for (k, want) in [
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("aof-use-rdb-preamble", "yes"),
        ("maxmemory-policy", "noeviction"),
        ("no-appendfsync-on-rewrite", "no"),
    ] {
        assert_eq!(
            directives.get(k).map(Vec::as_slice),
            Some(&[want.to_string()][..]),
            "redis.conf: {k} {want} (exactly once)"
        );
    }
    // The trade-off is written down next to the setting.
    assert!(text.contains("trade-off") && text.contains("always"));
}

#[test]
fn compose_runs_rabbitmq_redis_the_emulator_and_a_worker_with_a_valid_configuration() {
    let c = yaml("deploy/compose.yaml");
    let services = c["services"].as_object().expect("services");
    for s in ["rabbitmq", "redis", "postgres", "graph-emulator", "worker"] {
        assert!(services.contains_key(s), "compose.yaml lacks {s}");
    }
    // Redis runs with the production configuration file.
    let redis = &services["redis"];
    let mounts = serde_json::to_string(&redis["volumes"]).unwrap();
    assert!(mounts.contains("./redis/redis.conf"), "{mounts}");
    assert!(
        serde_json::to_string(&redis["command"])
            .unwrap()
            .contains("redis.conf")
    );
    // The emulator: the same image, listening for other containers, with a seed that exists.
    let emu = serde_json::to_string(&services["graph-emulator"]["command"]).unwrap();
    assert!(
        emu.contains("graph-emulator") && emu.contains("0.0.0.0:8090"),
        "{emu}"
    );
    for v in services["graph-emulator"]["volumes"].as_array().unwrap() {
        let host = v.as_str().unwrap().split(':').next().unwrap();
        assert!(
            repo_path("deploy").join(host).exists(),
            "compose mounts {host}, which does not exist"
        );
    }
    assert_eq!(
        services["graph-emulator"]["build"]["dockerfile"],
        "deploy/Dockerfile"
    );
    // ...built from the Dockerfile's emulator stage, since the worker's image has no emulator.
    let target = services["graph-emulator"]["build"]["target"]
        .as_str()
        .expect("the emulator service builds a target of its own");
    let dockerfile = read("deploy/Dockerfile");
    assert!(
        dockerfile
            .lines()
            .any(|l| l.starts_with("FROM ") && l.ends_with(&format!(" AS {target}"))),
        "deploy/Dockerfile has no stage {target}"
    );
    assert_ne!(
        services["graph-emulator"]["image"], services["worker"]["image"],
        "the emulator and the worker are different images"
    );
    // The worker: its environment is a configuration the binary accepts, pointing at the others.
    let w = &services["worker"];
    let env: Vec<(String, String)> = w["environment"]
        .as_object()
        .expect("worker environment as a map")
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), v)
        })
        .collect();
    let (ok, out) = check_config(None, &env);
    assert!(
        ok,
        "check-config refused the compose worker's environment: {out}"
    );
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert!(
        get("OUTLOOK_SYNC__AMQP__URL")
            .unwrap()
            .contains("@rabbitmq:5672")
    );
    assert!(
        get("OUTLOOK_SYNC__REDIS__URL")
            .unwrap()
            .contains("//redis:6379")
    );
    assert!(
        get("OUTLOOK_SYNC__GRAPH__BASE_URL")
            .unwrap()
            .contains("graph-emulator:8090")
    );
    assert_eq!(get("OUTLOOK_SYNC__ADMIN__LISTEN"), Some("0.0.0.0:8080"));
    let stop = w["stop_grace_period"].as_str().expect("stop_grace_period");
    let secs: u64 = stop.trim_end_matches('s').parse().unwrap();
    assert!(secs > Config::default().worker.shutdown_grace_seconds);
}

#[test]
fn the_dockerfile_builds_locked_in_stages_and_runs_non_root() {
    // Docker cannot run here: these are the properties a review would check.
    let text = read("deploy/Dockerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let froms: Vec<&&str> = lines.iter().filter(|l| l.starts_with("FROM ")).collect();
    assert!(froms.len() >= 2, "multi-stage: {froms:?}");
    assert!(froms[0].contains(" AS build"), "{froms:?}");
    assert!(text.contains("cargo build --release --locked"));
    // The worker's image is built without the emulator, demo and bench.
    let build_stage = text
        .split("\nFROM ")
        .find(|stage| {
            stage
                .lines()
                .next()
                .is_some_and(|l| l.ends_with(" AS build"))
        })
        .expect("a stage named build");
    assert!(
        build_stage.contains("cargo build --release --locked --no-default-features"),
        "the production binary is built with --no-default-features: {build_stage}"
    );
    let last_stage: Vec<&&str> = lines
        .iter()
        .skip_while(|l| !std::ptr::eq(**l, *froms[froms.len() - 1]))
        .collect();
    let user = last_stage
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("the runtime stage sets USER");
    let uid = user.trim_start_matches("USER ").split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "runs as {uid}");
    assert!(
        uid.parse::<u32>().is_ok(),
        "a numeric user, which runAsNonRoot can verify: {uid}"
    );
    let pod_uid = object("deploy/k8s/base/deployment.yaml", "Deployment")["spec"]["template"]["spec"]
        ["securityContext"]["runAsUser"]
        .as_u64()
        .unwrap();
    assert_eq!(uid, pod_uid.to_string(), "the image's user is the pod's");
    assert!(last_stage.contains(&&r#"ENTRYPOINT ["outlook-sync"]"#));
    assert!(last_stage.contains(&&r#"CMD ["run"]"#));
    // Every file the runtime stage copies from the build context exists.
    for l in &last_stage {
        if let Some(rest) = l.strip_prefix("COPY ")
            && !rest.starts_with("--from")
        {
            let src = rest.split_whitespace().next().unwrap();
            assert!(repo_path(src).exists(), "COPY {src}: no such file");
        }
    }
    // The build context leaves the target directory out.
    assert!(
        read("deploy/Dockerfile.dockerignore")
            .lines()
            .any(|l| l.trim() == "target")
    );
}

/// A free port on 127.0.0.1 (bound and released; good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Every `outlook_sync_…` name the dashboard, the alerts and the autoscaler query.
fn metrics_used_by_deploy() -> BTreeSet<String> {
    let mut all = Vec::new();
    let dashboard: Value =
        serde_json::from_str(&read("deploy/grafana/outlook-sync.json")).expect("dashboard JSON");
    exprs(&dashboard, &mut all);
    exprs(&yaml("deploy/prometheus/alerts.yaml"), &mut all);
    exprs(
        &object("deploy/k8s/keda/scaledobject.yaml", "ScaledObject"),
        &mut all,
    );
    all.iter().flat_map(|e| metric_names(e)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_worker_exports_every_metric_the_dashboard_the_alerts_and_the_autoscaler_use() {
    use graph_emulator::MailboxKind;
    use outlook_sync::tenants::Plan;
    // A directory with one company whose secret expiry is recorded, and nothing else: no event
    // published, no failure, nothing deduplicated or replayed.
    let sb = crate::support::sandbox("deploy-fresh", Default::default()).await;
    sb.company("acme", Plan::Standard, &[("u-1", "taro", MailboxKind::Ok)])
        .await
        .unwrap();
    let expires = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 10);
    let mut acme = sb.directory.company("acme").await.unwrap().unwrap();
    acme.credentials.as_mut().unwrap().secret_expires_at = Some(expires);
    sb.directory.put_company(&acme).await.unwrap();

    let port = free_port();
    let mut cfg = sb.cfg.clone();
    cfg.admin.listen = format!("127.0.0.1:{port}");
    cfg.admin.public_url = format!("http://127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("outlook-sync.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let stderr_path = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_outlook-sync"))
        .arg("--config")
        .arg(&path)
        .arg("run")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("spawning outlook-sync run");

    // The worker loads the companies at start; wait for it.
    let http = reqwest::Client::new();
    let loaded = "outlook_sync_secret_expiry_timestamp_seconds{company=\"acme\"}";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let text = loop {
        if let Ok(r) = http
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            && let Ok(t) = r.text().await
            && t.contains(loaded)
        {
            break t;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "outlook-sync run exited ({status}): {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker's /metrics never showed {loaded}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();

    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    let samples: BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<String> = metrics_used_by_deploy()
        .into_iter()
        .filter(|m| !samples.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "a fresh worker's /metrics lacks {missing:?}, which the dashboard, the alerts or the \
         autoscaler use:\n{text}"
    );
    // The two the issue named, whatever the dashboard uses.
    for name in [
        "outlook_sync_events_deduplicated_total",
        "outlook_sync_dead_letters_replayed_total",
    ] {
        assert!(samples.contains(name), "{name} is absent:\n{text}");
    }
    // A loaded company's counters exist at 0 before its first failure, so increase() sees it.
    for kind in ["credentials", "mailbox", "rejected", "retries_exhausted"] {
        let series =
            format!("outlook_sync_company_failures_total{{company=\"acme\",kind=\"{kind}\"}}");
        assert_eq!(value(&series), Some(0.0), "{series}:\n{text}");
    }
    // The expiry in seconds since the epoch (base unit), not days.
    assert_eq!(value(loaded), Some(expires.as_second() as f64), "{text}");
    assert!(
        !text.contains("secret_expires_in_days"),
        "the expiry in days is gone:\n{text}"
    );
    let _ = child.wait();
    sb.cleanup().await;
}

#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests_fire_each_alert() {
    let promtool = tool("promtool", "promtool");
    let rules = repo_path("deploy/prometheus/alerts.yaml");
    let (ok, out) = run(std::process::Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules));
    assert!(
        ok,
        "promtool check rules deploy/prometheus/alerts.yaml:\n{out}"
    );
    let (ok, out) = run(std::process::Command::new(&promtool)
        .args(["test", "rules"])
        .arg(repo_path("deploy/prometheus/alerts.test.yaml")));
    assert!(
        ok,
        "promtool test rules deploy/prometheus/alerts.test.yaml:\n{out}"
    );
    // Every alert has a unit test in which it fires.
    let mut fired = BTreeSet::new();
    for t in yaml("deploy/prometheus/alerts.test.yaml")["tests"]
        .as_array()
        .expect("tests")
    {
        for a in t["alert_rule_test"].as_array().into_iter().flatten() {
            if a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()) {
                fired.insert(str_at(a, "/alertname").to_string());
            }
        }
    }
    for g in yaml("deploy/prometheus/alerts.yaml")["groups"]
        .as_array()
        .unwrap()
    {
        for r in g["rules"].as_array().unwrap() {
            let name = str_at(r, "/alert");
            assert!(
                fired.contains(name),
                "alerts.test.yaml has no test in which {name} fires"
            );
        }
    }
}

#[test]
fn redis_conf_starts_a_real_redis_server_outside_the_container() {
    let conf = read("deploy/redis/redis.conf");
    assert!(
        !conf
            .lines()
            .any(|l| l.trim_start().to_lowercase().starts_with("dir ")),
        "redis.conf sets dir: a directory missing on the host stops redis-server before --dir applies"
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let log = dir.path().join("redis.log");
    let mut child = match std::process::Command::new("redis-server")
        .arg(repo_path("deploy/redis/redis.conf"))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--dir"])
        .arg(dir.path())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::process::Stdio::inherit())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "this test needs redis-server ({e}): scripts/services.sh installs it (scripts/test.sh runs it)"
        ),
    };
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let mut conn = loop {
        if let Ok(mut c) = client.get_connection()
            && redis::cmd("PING").query::<String>(&mut c).is_ok()
        {
            break c;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "redis-server exited ({status}) on deploy/redis/redis.conf:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server on deploy/redis/redis.conf never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let get = |c: &mut redis::Connection, key: &str| -> String {
        let v: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query(c).unwrap();
        v.get(1).cloned().unwrap_or_default()
    };
    // The file's settings hold, and the data goes where the command line says.
    assert_eq!(get(&mut conn, "appendonly"), "yes");
    assert_eq!(get(&mut conn, "appendfsync"), "everysec");
    assert_eq!(get(&mut conn, "maxmemory-policy"), "noeviction");
    assert_eq!(
        Path::new(&get(&mut conn, "dir")).canonicalize().unwrap(),
        dir.path().canonicalize().unwrap()
    );
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    let _ = redis::cmd("SHUTDOWN").query::<()>(&mut conn);
    let status = child.wait().unwrap();
    assert!(status.success(), "redis-server stopped with {status}");
    assert!(
        dir.path().join("appendonlydir").is_dir(),
        "the AOF is in the --dir directory"
    );
}

#[test]
fn the_rendered_manifests_pass_the_kubernetes_keda_and_prometheus_operator_schemas() {
    let validate = tool("validate-k8s", "kubernetes-validate");
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, k) in [("production", "deploy/k8s"), ("base", "deploy/k8s/base")] {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, kustomize_build(&repo_path(k))).unwrap();
        files.push(path);
    }
    files.push(repo_path("deploy/k8s/secret.example.yaml"));
    let (ok, out) = run(std::process::Command::new(&validate).args(&files));
    assert!(ok, "the manifests break their schemas:\n{out}");
    for kind in [
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "ScaledObject",
        "TriggerAuthentication",
        "ServiceMonitor",
        "Secret",
    ] {
        assert!(
            out.lines()
                .any(|l| l.starts_with("valid") && l.contains(&format!(": {kind}/"))),
            "{kind} was not checked:\n{out}"
        );
    }
}

#[test]
fn without_keda_two_workers_run_and_with_keda_the_autoscaler_alone_sets_the_count() {
    let min =
        object("deploy/k8s/keda/scaledobject.yaml", "ScaledObject")["spec"]["minReplicaCount"]
            .as_u64()
            .unwrap();
    let base = rendered("deploy/k8s/base", "Deployment");
    assert_eq!(
        base["spec"]["replicas"].as_u64(),
        Some(min),
        "without KEDA (deploy/k8s/base) as many workers run as KEDA's minimum"
    );
    let production = rendered("deploy/k8s", "Deployment");
    assert!(
        production["spec"].get("replicas").is_none(),
        "with KEDA (deploy/k8s) a fixed replica count would reset the autoscaler's at every apply"
    );
    let so = rendered("deploy/k8s", "ScaledObject");
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"],
        production["metadata"]["name"]
    );
}

#[test]
fn editing_config_toml_renames_the_generated_configmap_so_the_workers_roll_over() {
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(repo_path("deploy/k8s/base")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
    }
    let render = || {
        let docs = yaml_docs_of("kustomize build", &kustomize_build(dir.path()));
        let find = |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap().clone();
        (find("ConfigMap"), find("Deployment"))
    };
    let volume_name = |d: &Value| {
        d["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap()["configMap"]["name"]
            .clone()
    };
    let (cm, deployment) = render();
    let toml = read("deploy/k8s/base/config.toml");
    assert_eq!(
        cm["data"]["config.toml"],
        toml.as_str(),
        "the ConfigMap is config.toml"
    );
    assert_eq!(volume_name(&deployment), cm["metadata"]["name"]);

    let edited = toml.replace("seconds = 300", "seconds = 240");
    assert_ne!(edited, toml);
    std::fs::write(dir.path().join("config.toml"), &edited).unwrap();
    let (cm2, deployment2) = render();
    assert_eq!(cm2["data"]["config.toml"], edited.as_str());
    assert_ne!(
        cm2["metadata"]["name"], cm["metadata"]["name"],
        "an edit must make a new ConfigMap name"
    );
    assert_eq!(volume_name(&deployment2), cm2["metadata"]["name"]);
    assert_ne!(
        deployment2["spec"]["template"], deployment["spec"]["template"],
        "the pod template changes, so Kubernetes rolls the workers over to the new configuration"
    );
}

/// Kubernetes' quantity (`512Mi`, `1Gi`, `500M`) in bytes.
fn quantity_bytes(q: &str) -> u64 {
    let (n, unit) = q.split_at(q.find(|c: char| !c.is_ascii_digit()).unwrap_or(q.len()));
    let n: u64 = n.parse().unwrap_or_else(|_| panic!("quantity {q}"));
    n * match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        other => panic!("unit {other} in {q}"),
    }
}

#[test]
fn the_prefetched_messages_fit_in_the_workers_memory_limit() {
    let cfg = configmap_config();
    let limit = quantity_bytes(str_at(&container(), "/resources/limits/memory"));
    // Every unacked delivery is in the worker's memory, up to the largest message the contract
    // accepts; count it twice for the copies made while batches are decoded and staged, and
    // keep 128 MiB for the rest of the worker.
    let worst = u64::from(cfg.amqp.prefetch) * outlook_sync::event::MAX_MESSAGE_BYTES as u64;
    assert!(
        2 * worst + (128 << 20) <= limit,
        "amqp.prefetch {} × {} KiB = {} MiB of prefetched messages (twice that while decoded) does \
         not fit in the memory limit of {} MiB",
        cfg.amqp.prefetch,
        outlook_sync::event::MAX_MESSAGE_BYTES >> 10,
        worst >> 20,
        limit >> 20
    );
    // Ingest still keeps three batches staging while the next arrives.
    assert!(usize::from(cfg.amqp.prefetch) >= 4 * cfg.amqp.ingest_batch);
}

/// Stops the private instances of a `services.sh` test, even when the test fails.
struct PrivateServices {
    env: Vec<(String, String)>,
}

impl PrivateServices {
    fn run(&self, action: &str) -> (bool, String) {
        run(std::process::Command::new("bash")
            .arg(repo_path("scripts/services.sh"))
            .arg(action)
            .envs(self.env.iter().map(|(k, v)| (k, v))))
    }
}

impl Drop for PrivateServices {
    fn drop(&mut self) {
        let _ = self.run("down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_sh_brings_rabbitmq_redis_and_postgres_up_from_not_running_and_down_again() {
    // Private instances on ports of their own, through the same code as the standard ones: the
    // shared services other tests use are never touched.
    let data = tempfile::tempdir().unwrap();
    let (rabbitmq, redis_port, postgres) = (free_port(), free_port(), free_port());
    let services = PrivateServices {
        env: vec![
            ("SERVICES_DIR".into(), data.path().display().to_string()),
            ("RABBITMQ_PORT".into(), rabbitmq.to_string()),
            ("REDIS_PORT".into(), redis_port.to_string()),
            ("POSTGRES_PORT".into(), postgres.to_string()),
        ],
    };
    let (ok, out) = services.run("status");
    assert!(!ok && out.matches("does not answer").count() == 3, "{out}");

    let (ok, out) = services.run("up");
    assert!(ok, "scripts/services.sh up failed:\n{out}");
    assert_eq!(out.matches("starting").count(), 3, "{out}");

    // Each answers its own protocol.
    let amqp = format!("amqp://guest:guest@127.0.0.1:{rabbitmq}/%2f");
    let conn = outlook_sync::amqp::connect(&amqp, "services test")
        .await
        .unwrap_or_else(|e| panic!("RabbitMQ on {rabbitmq}: {e}\n{out}"));
    conn.close(200, "bye".into()).await.unwrap();
    let mut r = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/"))
        .unwrap()
        .get_connection()
        .unwrap();
    assert_eq!(redis::cmd("PING").query::<String>(&mut r).unwrap(), "PONG");
    let (ok, psql) = run(std::process::Command::new("psql").args([
        "-w",
        "-X",
        "-tA",
        "-h",
        "127.0.0.1",
        "-p",
        &postgres.to_string(),
        "-U",
        "postgres",
        "-d",
        "test",
        "-c",
        "select 41 + 1",
    ]));
    assert!(
        ok && psql.trim() == "42",
        "PostgreSQL on {postgres}: {psql}"
    );

    // Again: everything answers, nothing is started twice.
    let (ok, again) = services.run("up");
    assert!(ok && !again.contains("starting"), "{again}");

    let (ok, down) = services.run("down");
    assert!(ok, "{down}");
    let (ok, out) = services.run("status");
    assert!(
        !ok && out.matches("does not answer").count() == 3,
        "after down: {out}"
    );
}

#[test]
fn sentinel_conf_starts_a_real_sentinel_watching_the_master_redis_url_names() {
    // The example's host and port are the cluster's; here, a primary of the test's own.
    let dir = tempfile::tempdir().unwrap();
    let (primary_port, sentinel_port) = (free_port(), free_port());
    let mut primary = std::process::Command::new("redis-server")
        .args([
            "--port",
            &primary_port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("this test needs redis-server: scripts/services.sh installs it");
    let conf = read("deploy/redis/sentinel.conf")
        .replace("redis-0.redis 6379", &format!("127.0.0.1 {primary_port}"))
        .replace(
            "port 26379",
            &format!("port {sentinel_port}\nbind 127.0.0.1"),
        );
    let path = dir.path().join("sentinel.conf");
    std::fs::write(&path, conf).unwrap();
    let mut sentinel = std::process::Command::new("redis-server")
        .arg(&path)
        .arg("--sentinel")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = redis::Client::open(format!("redis://127.0.0.1:{sentinel_port}/")).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    let addr = loop {
        if let Ok(mut c) = client.get_connection()
            && let Ok(a) = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg("outlook-sync")
                .query::<Vec<String>>(&mut c)
        {
            break a;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a sentinel on deploy/redis/sentinel.conf never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = sentinel.kill();
    let _ = primary.kill();
    let _ = (sentinel.wait(), primary.wait());
    assert_eq!(
        addr,
        vec!["127.0.0.1".to_string(), primary_port.to_string()]
    );
    // The URL the file's comment gives is one the configuration takes.
    let text = read("deploy/redis/sentinel.conf");
    assert!(text.contains("redis+sentinel://s1:26379,s2:26379,s3:26379/outlook-sync"));
    let mut cfg = outlook_sync::config::Config::default();
    cfg.redis.url = "redis+sentinel://s1:26379,s2:26379,s3:26379/outlook-sync".into();
    cfg.validate().unwrap();
}
