//! The shipped alerts and recording rules (`deploy/monitoring/`): promtool
//! checks them and runs their unit tests (each alert fires on its fault and
//! stays silent without it); every alert has a severity, a summary and a
//! runbook section; every rule names only metrics the service exports.
//! promtool is Debian's `prometheus` package: from `PATH`, else unpacked
//! from the package into `target/` on first use.

use std::{path::PathBuf, process::Command};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap()
}

const RULES: &str = "deploy/monitoring/cognito-facade.rules.yml";
const RULE_TESTS: &str = "deploy/monitoring/cognito-facade.rules.test.yml";

/// promtool: on `PATH`, or Debian's package (`apt-get download`, no root
/// needed) unpacked into `target/` once.
fn promtool() -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _once = LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Ok(found) = Command::new("promtool").arg("--version").output()
        && found.status.success()
    {
        return PathBuf::from("promtool");
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("prometheus");
    let unpacked = dir.join("usr/bin/promtool");
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
