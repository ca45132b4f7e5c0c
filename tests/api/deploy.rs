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
        cognito_facade::test_support::SERVICE_NAME,
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
/// containers guide and the Dockerfile give a `-t` that outlasts the
/// shipped drain and grace, and say so.
#[test]
fn the_documented_docker_stop_timeout_outlasts_drain_and_grace() {
    use cognito_facade::server::{DEFAULT_DRAIN_DELAY, DEFAULT_SHUTDOWN_GRACE};
    let needed = DEFAULT_DRAIN_DELAY + DEFAULT_SHUTDOWN_GRACE;
    for path in ["docs/kubernetes.md", "Dockerfile"] {
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

/// The Kubernetes and containers guide says to move a container's port with
/// `-e COGNITO_FACADE_LISTEN_ADDR=...`, because the image's HEALTHCHECK (a
/// `healthcheck` process of its own, without `--addr`) reads the environment
/// and never the server's arguments. Both halves hold: the documented way
/// moves the probe, and `--listen-addr` alone leaves it on the old port.
#[tokio::test]
async fn the_documented_way_to_move_the_port_moves_the_health_probe_too() {
    use crate::helpers::{Running, StandIn, command};
    let readme = file("docs/kubernetes.md");
    let documented = readme
        .split_whitespace()
        .find_map(|word| word.strip_prefix("COGNITO_FACADE_LISTEN_ADDR=0.0.0.0:"))
        .expect("docs/kubernetes.md documents -e COGNITO_FACADE_LISTEN_ADDR=0.0.0.0:PORT");
    assert!(readme.contains(&format!(
        "-e COGNITO_FACADE_LISTEN_ADDR=0.0.0.0:{documented}"
    )));
    let dockerfile = file("Dockerfile");
    let healthcheck = dockerfile
        .lines()
        .skip_while(|line| !line.starts_with("HEALTHCHECK"))
        .nth(1)
        .expect("a HEALTHCHECK command");
    assert!(healthcheck.contains("\"healthcheck\""), "{healthcheck}");
    assert!(
        !healthcheck.contains("--addr"),
        "the probe must follow the environment"
    );

    // On loopback and a free port instead of 0.0.0.0:PORT; the mechanism is
    // the same.
    let stand_in = StandIn::start().await;
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = free.local_addr().unwrap().to_string();
    drop(free);
    let probe = |envs: Vec<(&'static str, String)>| {
        tokio::task::spawn_blocking(move || {
            let envs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            command(&["healthcheck", "--timeout", "1s"], &envs)
                .output()
                .unwrap()
                .status
                .code()
        })
    };
    let env = [("COGNITO_FACADE_LISTEN_ADDR", moved.as_str())];
    let mut running = Running::against(&stand_in, &[], &env);
    let healthy = probe(vec![("COGNITO_FACADE_LISTEN_ADDR", moved.clone())]);
    assert_eq!(healthy.await.unwrap(), Some(0));
    assert_eq!(running.terminate().await, Some(0));

    // The flag alone: the server is up on the moved port, and the probe,
    // with the image's environment (the default port), does not find it.
    let mut running = Running::against(&stand_in, &["--listen-addr", &moved], &[]);
    let image_env = dockerfile
        .lines()
        .find_map(|line| line.trim().strip_prefix("ENV COGNITO_FACADE_LISTEN_ADDR="))
        .expect("the image sets the listen address")
        .trim_end_matches('\\')
        .trim()
        .replace("0.0.0.0", "127.0.0.1");
    assert_ne!(image_env, moved);
    let there = probe(vec![("COGNITO_FACADE_LISTEN_ADDR", moved.clone())]);
    assert_eq!(there.await.unwrap(), Some(0), "the server is up");
    let unhealthy = probe(vec![("COGNITO_FACADE_LISTEN_ADDR", image_env)]);
    assert_eq!(unhealthy.await.unwrap(), Some(1));
    assert_eq!(running.terminate().await, Some(0));
}
