//! The shipped alerts and recording rules (`deploy/monitoring/`): promtool
//! checks them and runs their unit tests (each alert fires on its fault and
//! stays silent without it); every alert has a severity, a summary and a
//! runbook section; every rule names only metrics the service exports.
//! And a real Prometheus, scraping two replicas of the release binary on
//! Redis with the rules loaded: every rule evaluates without an error, and
//! with the Cognito stand-in down the recording rules show the outage.
//! promtool and Prometheus are Debian's `prometheus` package: from `PATH`,
//! else unpacked from the package into `target/` on first use.

use std::{path::PathBuf, process::Command};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

const RULES: &str = "deploy/monitoring/cognito-facade.rules.yml";
const RULE_TESTS: &str = "deploy/monitoring/cognito-facade.rules.test.yml";
const PROMETHEUS_RULE: &str = "deploy/monitoring/cognito-facade.prometheusrule.yaml";

fn promtool() -> PathBuf {
    prometheus_program("promtool")
}

/// `program` of Debian's `prometheus` package (`promtool`, `prometheus`):
/// on `PATH`, or the package (`apt-get download`, no root needed) unpacked
/// into `target/` once.
fn prometheus_program(program: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Ok(found) = Command::new(program).arg("--version").output()
        && found.status.success()
    {
        return PathBuf::from(program);
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prometheus");
    let unpacked = dir.join("usr/bin").join(program);
    if unpacked.exists() {
        return unpacked;
    }
    std::fs::create_dir_all(&dir).unwrap();
    let download = Command::new("apt-get")
        .args(["download", "prometheus"])
        .current_dir(&dir)
        .status()
        .expect("promtool is not on PATH and apt-get cannot fetch Debian's prometheus package");
    assert!(
        download.success(),
        "apt-get download prometheus: {download}"
    );
    let deb = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .find(|path| path.extension().is_some_and(|e| e == "deb"))
        .expect("the downloaded package");
    let unpack = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&dir)
        .status()
        .unwrap();
    assert!(unpack.success(), "dpkg-deb -x: {unpack}");
    unpacked
}

fn run_promtool(args: &[&str]) -> String {
    let output = Command::new(promtool())
        .args(args)
        .current_dir(root())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let checked = run_promtool(&["check", "rules", RULES]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = run_promtool(&["test", "rules", RULE_TESTS]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// The PrometheusRule for the prometheus-operator is what
/// `scripts/prometheus-rule` makes of the rule file, byte for byte, and the
/// rules under its `spec` are the rule file's own, which promtool passes.
#[test]
fn the_prometheus_rule_is_the_rule_file_under_spec_and_promtool_passes_it() {
    let printed = Command::new(root().join("scripts/prometheus-rule"))
        .output()
        .unwrap();
    assert!(printed.status.success());
    let generated = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(
        generated,
        read(PROMETHEUS_RULE),
        "{PROMETHEUS_RULE} is stale: run scripts/prometheus-rule > {PROMETHEUS_RULE}"
    );
    assert!(generated.contains("\nkind: PrometheusRule\n"));
    assert!(generated.contains("\napiVersion: monitoring.coreos.com/v1\n"));
    // Back out from under `spec`: the rule file from `groups:` on.
    let spec = generated.split_once("\nspec:\n").unwrap().1;
    let groups: String = spec
        .lines()
        .map(|line| format!("{}\n", line.strip_prefix("  ").unwrap_or(line)))
        .collect();
    let rules = read(RULES);
    assert_eq!(groups, rules[rules.find("\ngroups:\n").unwrap() + 1..]);
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prometheus-rule.rules.yml");
    std::fs::write(&file, groups).unwrap();
    let checked = run_promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS: 36 rules found"), "{checked}");
}

/// Each alert's block of the rule file: its name and its text.
fn alerts() -> Vec<(String, String)> {
    let rules = read(RULES);
    let mut blocks = rules.split("      - alert: ").skip(1);
    let mut alerts = Vec::new();
    for block in blocks.by_ref() {
        let (name, body) = block.split_once('\n').unwrap();
        // A block ends where the next rule of any kind begins.
        let body = body.split("\n      - ").next().unwrap();
        alerts.push((name.trim().to_owned(), body.to_owned()));
    }
    alerts
}

#[test]
fn every_alert_has_a_severity_a_summary_a_runbook_section_and_both_tests() {
    let alerts = alerts();
    assert!(alerts.len() >= 10, "{alerts:?}");
    let runbook = read("docs/runbook.md");
    let tests = read(RULE_TESTS);
    for (name, body) in &alerts {
        assert!(
            body.contains("severity: critical") || body.contains("severity: warning"),
            "{name} has no severity"
        );
        assert!(body.contains("summary: "), "{name} has no summary");
        let anchor = name.to_lowercase();
        assert!(
            body.contains(&format!("runbook_url: docs/runbook.md#{anchor}")),
            "{name}'s runbook_url"
        );
        assert!(
            runbook.contains(&format!("\n## {name}\n")),
            "docs/runbook.md has no section {name}"
        );
        let cases: Vec<&str> = tests
            .split("alertname: ")
            .skip(1)
            .filter(|case| case.starts_with(&format!("{name}\n")))
            .collect();
        assert!(
            cases
                .iter()
                .any(|c| c.contains("exp_alerts:\n          - exp_labels:")),
            "{name} has no test where it fires"
        );
        assert!(
            cases.iter().any(|c| c.contains("exp_alerts: []")),
            "{name} has no test where it stays silent"
        );
    }
}

#[test]
fn every_rule_names_only_metrics_the_service_exports() {
    let exported = read("src/base/metric_names.rs");
    let rules = read(RULES);
    let metric = regex::Regex::new(r"cognito_facade_[a-z_]+").unwrap();
    let mut named = 0;
    for found in metric.find_iter(&rules) {
        let name = found.as_str();
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| base.ends_with("_seconds"))
            .unwrap_or(name);
        assert!(
            exported.contains(&format!("\"{base}\"")),
            "{name} is not a metric the service exports"
        );
        named += 1;
    }
    assert!(named > 20, "{named}");
    // Recorded series are used only where they are recorded.
    let recorded = regex::Regex::new(r"record: (cognito_facade:[a-z0-9_:]+)").unwrap();
    let records: Vec<&str> = recorded
        .captures_iter(&rules)
        .map(|c| c.get(1).unwrap().as_str())
        .collect();
    let used = regex::Regex::new(r"cognito_facade:[a-z0-9_:]+").unwrap();
    for name in used.find_iter(&rules) {
        assert!(
            records.contains(&name.as_str()),
            "{} is not recorded",
            name.as_str()
        );
    }
}

/// `GET path` from `addr` as HTTP/1.0 (so never chunked): the JSON body.
async fn get_json(addr: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    serde_json::from_str(response.split_once("\r\n\r\n")?.1).ok()
}

/// Polls `path` (at most 30 s) until `done` holds of its JSON.
async fn until(
    addr: std::net::SocketAddr,
    path: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if let Some(json) = get_json(addr, path).await
            && done(&json)
        {
            return json;
        }
        assert!(std::time::Instant::now() < deadline, "{path}: never");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// The cognito-standin example, a process of its own so that it can go down.
fn standin_process(addr: &str) -> crate::helpers::KilledOnDrop {
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let child = Command::new(examples.join("cognito-standin"))
        .arg(addr)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("the cognito-standin example (cargo test builds it)");
    crate::helpers::KilledOnDrop(child)
}

#[tokio::test]
async fn a_real_prometheus_evaluates_every_rule_and_sees_cognito_go_down() {
    use crate::{
        helpers::{KilledOnDrop, Running, TOKEN, request},
        servers::{Redis, free_port, key_file, scratch_dir},
    };
    let dir = scratch_dir("prometheus");
    let standin_addr = format!("127.0.0.1:{}", free_port());
    let mut standin = standin_process(&standin_addr);
    let endpoint = format!("http://{standin_addr}");
    let redis = Redis::start(&[]);
    let url = redis.url();
    let key = key_file(&dir, 3);
    let args = [
        "--redis-url",
        url.as_str(),
        "--fleet-key-file",
        key.to_str().unwrap(),
        "--max-attempts",
        "1",
    ];
    let envs = [
        ("AWS_REGION", "eu-west-1"),
        (
            "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER",
            endpoint.as_str(),
        ),
    ];
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut replica = Running::start(&args, &envs);
        let metrics = replica.wait_for_addr("serving metrics");
        replica.find_line("connected to the fleet store");
        replicas.push((replica, metrics));
    }
    let targets: Vec<String> = replicas.iter().map(|(_, m)| format!("'{m}'")).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - '{}'\nscrape_configs:\n  - job_name: cognito-facade\n    static_configs:\n      - targets: [{}]\n",
            root().join(RULES).display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let web = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let _prometheus = KilledOnDrop(
        Command::new(prometheus_program("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("Debian's prometheus"),
    );
    // A good day: calls answered on both replicas.
    for (replica, _) in &replicas {
        let mut client = replica.client().await;
        for n in 0..5 {
            client
                .get_user_auth_factors(request(&format!("{TOKEN}{n}")))
                .await
                .unwrap();
        }
    }
    until(web, "/api/v1/targets", |json| {
        let active = json["data"]["activeTargets"].as_array();
        active.is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["health"] == "up"))
    })
    .await;
    // Every rule evaluated, none with an error.
    let rules = until(web, "/api/v1/rules", |json| {
        let groups = json["data"]["groups"].as_array();
        groups.is_some_and(|groups| {
            groups
                .iter()
                .flat_map(|g| g["rules"].as_array().unwrap())
                .all(|rule| {
                    rule["lastEvaluation"]
                        .as_str()
                        .is_some_and(|at| !at.starts_with("0001"))
                })
        })
    })
    .await;
    let mut evaluated = 0;
    for group in rules["data"]["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            assert_eq!(rule["health"], "ok", "{rule}");
            assert!(
                rule["lastError"].as_str().unwrap_or_default().is_empty(),
                "{rule}"
            );
            evaluated += 1;
        }
    }
    assert!(evaluated >= 30, "{evaluated}");
    // Cognito down: the recording rules show it.
    let _ = standin.0.kill();
    let _ = standin.0.wait();
    for (replica, _) in &replicas {
        let mut client = replica.client().await;
        for n in 0..5 {
            let status = client
                .get_user_auth_factors(request(&format!("{TOKEN}down{n}")))
                .await
                .unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }
    }
    // The counter of a new outcome starts where it is first scraped: calls
    // go on failing while Prometheus looks, so that it sees it grow.
    let mut failing = Vec::new();
    for (replica, _) in &replicas {
        let mut client = replica.client().await;
        failing.push(tokio::spawn(async move {
            for n in 0.. {
                let token = format!("{TOKEN}later{n}");
                let _ = client.get_user_auth_factors(request(&token)).await;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }));
    }
    let query = "/api/v1/query?query=cognito_facade:upstream_unavailable:ratio_rate5m";
    let outage = until(web, query, |json| {
        json["data"]["result"].as_array().is_some_and(|result| {
            result.iter().any(|sample| {
                sample["metric"]["region"] == "eu-west-1"
                    && sample["value"][1]
                        .as_str()
                        .and_then(|v| v.parse::<f64>().ok())
                        .is_some_and(|v| v > 0.0)
            })
        })
    })
    .await;
    assert_eq!(outage["status"], "success");
    for task in failing {
        task.abort();
    }
    for (mut replica, _) in replicas {
        assert_eq!(replica.terminate().await, Some(0));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_dashboard_query_parses_and_names_only_what_the_service_and_the_rules_export() {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/monitoring/cognito-facade.dashboard.json")).unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|panel| panel["targets"].as_array())
        .flatten()
        .map(|target| {
            target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "5m")
        })
        .collect();
    assert!(queries.len() >= 15, "{queries:?}");
    // promtool parses each query as a recording rule's expression.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, query) in queries.iter().enumerate() {
        let quoted = serde_json::to_string(query).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {quoted}\n"
        ));
    }
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let checked = run_promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(
        checked.contains(&format!("{} rules found", queries.len())),
        "{checked}"
    );
    let exported = read("src/base/metric_names.rs");
    let recorded = read(RULES);
    let metric = regex::Regex::new(r"cognito_facade[_:][a-z0-9_:]+").unwrap();
    for query in &queries {
        for found in metric.find_iter(query) {
            let name = found.as_str();
            let known = if name.contains(':') {
                recorded.contains(&format!("record: {name}\n"))
            } else {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .filter(|base| base.ends_with("_seconds"))
                    .unwrap_or(name);
                exported.contains(&format!("\"{base}\""))
            };
            assert!(
                known,
                "{name} in {query:?} is neither exported nor recorded"
            );
        }
    }
}
