//! The release binary as an operator runs it: flags, environment, exit codes,
//! signals.

use std::process::{Output, Stdio};

use crate::helpers::{Running, StandIn, USERNAME, command};

fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> Output {
    command(args, envs).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn no_region_exits_2_with_one_line_naming_both_ways_before_binding() {
    // Hold the port: if the binary tried to bind first it would fail differently.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let output = run_to_exit(&["--listen-addr", &addr], &[]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--region") && stderr.contains("AWS_REGION"),
        "{stderr}"
    );
}

#[test]
fn bad_values_exit_2_with_a_clear_line() {
    for (args, envs, needle) in [
        (&["--listen-addr", "nowhere"][..], &[][..], "--listen-addr"),
        (&["--no-such-flag"][..], &[][..], "--no-such-flag"),
        (
            &["--call-timeout", "0s"][..],
            &[("AWS_REGION", "eu-west-1")][..],
            "--call-timeout",
        ),
        (
            &[][..],
            &[("COGNITO_FACADE_LOG_FORMAT", "xml")][..],
            "--log-format",
        ),
        (
            &[][..],
            &[
                ("AWS_REGION", "eu-west-1"),
                ("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", "not a url"),
            ][..],
            "--cognito-endpoint",
        ),
        (
            &["--region", "eu-west-1"][..],
            &[("RUST_LOG", "info,[")][..],
            "RUST_LOG",
        ),
        (
            &["--region", "eu-west-1"][..],
            &[("LOG_SENSITIVE_BODIES", "true")][..],
            "LOG_SENSITIVE_BODIES",
        ),
    ] {
        let output = run_to_exit(args, envs);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?} {envs:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(
            output.stdout.is_empty(),
            "nothing started: {:?}",
            output.stdout
        );
    }
}

#[test]
fn help_names_every_flag_and_its_environment_variable() {
    let output = run_to_exit(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for (flag, env) in [
        ("--listen-addr", "COGNITO_FACADE_LISTEN_ADDR"),
        ("--log-format", "COGNITO_FACADE_LOG_FORMAT"),
        ("--region", "AWS_REGION"),
        (
            "--cognito-endpoint",
            "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER",
        ),
        ("--connect-timeout", "COGNITO_FACADE_CONNECT_TIMEOUT"),
        ("--attempt-timeout", "COGNITO_FACADE_ATTEMPT_TIMEOUT"),
        ("--call-timeout", "COGNITO_FACADE_CALL_TIMEOUT"),
        ("--max-attempts", "COGNITO_FACADE_MAX_ATTEMPTS"),
        ("--retry-backoff", "COGNITO_FACADE_RETRY_BACKOFF"),
        ("--drain-delay", "COGNITO_FACADE_DRAIN_DELAY"),
        ("--shutdown-grace", "COGNITO_FACADE_SHUTDOWN_GRACE"),
    ] {
        assert!(
            help.contains(flag) && help.contains(env),
            "{flag} / {env} missing:\n{help}"
        );
    }
}

#[tokio::test]
async fn serves_with_the_sdk_environment_and_no_credentials_then_exits_0_on_sigterm() {
    let stand_in = StandIn::start().await;
    let mut running = Running::against(&stand_in, &[], &[]);
    assert_eq!(running.call().await.unwrap(), USERNAME);
    assert_eq!(running.terminate().await, Some(0));
}

#[tokio::test]
async fn honours_the_general_aws_endpoint_url() {
    let stand_in = StandIn::start().await;
    let mut running = Running::start(
        &[],
        &[
            ("AWS_DEFAULT_REGION", "eu-west-1"),
            ("AWS_ENDPOINT_URL", &stand_in.endpoint),
        ],
    );
    assert_eq!(running.call().await.unwrap(), USERNAME);
    assert_eq!(running.terminate().await, Some(0));
}

#[tokio::test]
async fn flags_override_the_environment() {
    let stand_in = StandIn::start().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_endpoint = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut running = Running::start(
        &[
            "--region",
            "eu-west-1",
            "--cognito-endpoint",
            &stand_in.endpoint,
        ],
        &[
            ("AWS_REGION", "us-east-1"),
            ("AWS_ENDPOINT_URL", &dead_endpoint),
        ],
    );
    assert_eq!(running.call().await.unwrap(), USERNAME);
    assert_eq!(running.terminate().await, Some(0));
}
