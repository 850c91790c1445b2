//! `deploy/`: every manifest parses, and wherever it describes what the code also describes
//! (queue names and arguments, the admin port, the probes, the configuration keys, the metric
//! names), the two agree. Docker and Kubernetes cannot run here, so these checks are static,
//! except that configurations are loaded by the real binary (`check-config`).

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
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| {
            let v = serde_yaml_ng::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"));
            serde_json::to_value(v).unwrap_or_else(|e| panic!("{rel}: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
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

/// The configuration the ConfigMap ships.
fn configmap_toml() -> String {
    str_at(
        &object("deploy/k8s/configmap.yaml", "ConfigMap"),
        "/data/config.toml",
    )
    .to_string()
}

fn configmap_config() -> Config {
    Config::from_toml_str(&configmap_toml())
        .unwrap_or_else(|e| panic!("deploy/k8s/configmap.yaml's config.toml is invalid: {e}"))
}

fn container() -> Value {
    let d = object("deploy/k8s/deployment.yaml", "Deployment");
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
            "the ConfigMap sets {key:?}: secrets belong in the Secret"
        );
    }
    // And the real binary loads it.
    let (ok, out) = check_config(Some(&text), &[]);
    assert!(ok, "outlook-sync check-config refused the ConfigMap: {out}");
}

#[test]
fn the_deployment_probes_health_runs_non_root_read_only_and_outlasts_the_drain() {
    let cfg = configmap_config();
    let d = object("deploy/k8s/deployment.yaml", "Deployment");
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
    assert_eq!(str_at(mount, "/mountPath"), config_path);
    let volume = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == "config")
        .expect("the config volume");
    assert_eq!(
        volume["configMap"]["name"],
        object("deploy/k8s/configmap.yaml", "ConfigMap")["metadata"]["name"]
    );
    assert!(
        volume["configMap"]["name"] == "outlook-sync" && str_at(mount, "/subPath") == "config.toml"
    );
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
    let svc = object("deploy/k8s/service.yaml", "Service");
    assert_eq!(
        svc["spec"]["selector"]["app.kubernetes.io/name"],
        labels["app.kubernetes.io/name"]
    );
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "admin");
    let pdb = object("deploy/k8s/pdb.yaml", "PodDisruptionBudget");
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        labels["app.kubernetes.io/name"]
    );
    let sm = object("deploy/k8s/servicemonitor.yaml", "ServiceMonitor");
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        svc["metadata"]["labels"]["app.kubernetes.io/name"]
    );
    assert_eq!(
        sm["spec"]["endpoints"][0]["port"],
        svc["spec"]["ports"][0]["name"]
    );
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");

    // kustomization lists every manifest but the Secret template.
    let k = yaml("deploy/k8s/kustomization.yaml");
    let listed: BTreeSet<&str> = k["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in std::fs::read_dir(repo_path("deploy/k8s")).unwrap() {
        let name = f.unwrap().file_name().to_string_lossy().to_string();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert_eq!(
                listed.contains(name.as_str()),
                name != "secret.example.yaml",
                "{name} in kustomization.yaml"
            );
        }
    }
    for f in &listed {
        assert!(Path::new(&repo_path("deploy/k8s")).join(f).exists(), "{f}");
    }
}

#[tokio::test]
async fn the_probed_paths_answer_without_the_services() {
    // What the kubelet calls, on the router the worker serves: alive without Redis and
    // RabbitMQ, not ready without them, and quickly in both cases.
    outlook_sync::install_crypto_provider();
    let mut cfg = Config::default();
    cfg.redis.url = "redis://127.0.0.1:1/".into();
    let metrics = Metrics::new();
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let health = outlook_sync::admin::Health {
        metrics,
        consumer_ready: rx,
        redis: outlook_sync::store::connect_lazy(&cfg).unwrap(),
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
    let so = object("deploy/k8s/scaledobject.yaml", "ScaledObject");
    let d = object("deploy/k8s/deployment.yaml", "Deployment");
    assert_eq!(so["spec"]["scaleTargetRef"]["name"], d["metadata"]["name"]);
    assert!(
        d["spec"].get("replicas").is_none(),
        "KEDA owns the replica count; a fixed one would fight it"
    );
    let min = so["spec"]["minReplicaCount"]
        .as_u64()
        .expect("minReplicaCount");
    let pdb = object("deploy/k8s/pdb.yaml", "PodDisruptionBudget");
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
    let auth = object("deploy/k8s/scaledobject.yaml", "TriggerAuthentication");
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
    assert_known_metrics("deploy/k8s/scaledobject.yaml", &[query.to_string()]);
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
            let runbook = str_at(r, "/annotations/runbook");
            assert_eq!(
                runbook,
                format!("README.md#{}", name.to_lowercase()),
                "{name}'s runbook anchor"
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
    for s in ["rabbitmq", "redis", "graph-emulator", "worker"] {
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
    let pod_uid = object("deploy/k8s/deployment.yaml", "Deployment")["spec"]["template"]["spec"]
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
