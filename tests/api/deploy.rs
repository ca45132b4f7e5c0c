//! The deployment files agree with the binary: ports, probes, and a shutdown
//! timeline that fits inside Kubernetes' grace period.

use std::time::Duration;

fn file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// The value after `key:` on the first line that has it (after `skip` such
/// lines), unquoted.
fn value_after<'a>(text: &'a str, key: &str, skip: usize) -> &'a str {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix(key))
        .nth(skip)
        .unwrap_or_else(|| panic!("no {key}"))
        .trim()
        .trim_matches('"')
}

/// The value of an env var set in the Deployment.
fn env_value<'a>(deployment: &'a str, name: &str) -> &'a str {
    let lines: Vec<&str> = deployment.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim() == format!("- name: {name}"))
        .unwrap_or_else(|| panic!("no env {name}"));
    lines[at + 1]
        .trim()
        .strip_prefix("value:")
        .unwrap()
        .trim()
        .trim_matches('"')
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap()
}

#[test]
fn the_shutdown_timeline_fits_the_termination_grace_period() {
    let deployment = file("deploy/kubernetes/deployment.yaml");
    let pre_stop = Duration::from_secs(value_after(&deployment, "seconds:", 0).parse().unwrap());
    let drain = duration(env_value(&deployment, "COGNITO_FACADE_DRAIN_DELAY"));
    let grace = duration(env_value(&deployment, "COGNITO_FACADE_SHUTDOWN_GRACE"));
    let termination = Duration::from_secs(
        value_after(&deployment, "terminationGracePeriodSeconds:", 0)
            .parse()
            .unwrap(),
    );
    assert!(
        pre_stop + drain + grace < termination,
        "preStop {pre_stop:?} + drain {drain:?} + grace {grace:?} must end before SIGKILL at {termination:?}"
    );
}

#[test]
fn probes_and_ports_match_the_binary() {
    let deployment = file("deploy/kubernetes/deployment.yaml");
    assert_eq!(
        env_value(&deployment, "COGNITO_FACADE_LISTEN_ADDR"),
        "0.0.0.0:50051"
    );
    assert_eq!(
        env_value(&deployment, "COGNITO_FACADE_METRICS_ADDR"),
        "0.0.0.0:9090"
    );
    assert_eq!(value_after(&deployment, "containerPort:", 0), "50051");
    assert_eq!(value_after(&deployment, "containerPort:", 1), "9090");
    assert_eq!(
        value_after(&deployment, "service:", 0),
        cognito_facade::wire::SERVICE_NAME,
        "the readiness probe asks about the RPC service"
    );
    assert_eq!(
        value_after(&deployment, "readOnlyRootFilesystem:", 0),
        "true"
    );
    assert_eq!(value_after(&deployment, "runAsNonRoot:", 0), "true");

    let dockerfile = file("Dockerfile");
    // No address in the HEALTHCHECK: it follows COGNITO_FACADE_LISTEN_ADDR.
    assert!(dockerfile.contains("CMD [\"/usr/local/bin/cognito-facade\", \"healthcheck\"]"));
    assert!(dockerfile.contains("USER nonroot"));
}

/// `docker stop` sends SIGKILL after its timeout (10 s unless told): the
/// README and the Dockerfile give a `-t` that outlasts the shipped drain and
/// grace, and say so.
#[test]
fn the_documented_docker_stop_timeout_outlasts_drain_and_grace() {
    use cognito_facade::server::{DEFAULT_DRAIN_DELAY, DEFAULT_SHUTDOWN_GRACE};
    let needed = DEFAULT_DRAIN_DELAY + DEFAULT_SHUTDOWN_GRACE;
    for path in ["README.md", "Dockerfile"] {
        let text = file(path);
        let seconds: u64 = text
            .split("docker stop -t ")
            .nth(1)
            .unwrap_or_else(|| panic!("{path} names no `docker stop -t`"))
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            Duration::from_secs(seconds) > needed,
            "{path}: docker stop -t {seconds} does not outlast drain + grace ({needed:?})"
        );
    }
}
