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
        (
            &[
                "--region",
                "eu-west-1",
                "--ext-authz-username-header",
                "X-User",
            ][..],
            &[][..],
            "--ext-authz-username-header",
        ),
        (
            &["--region", "eu-west-1"][..],
            &[("COGNITO_FACADE_EXT_AUTHZ_USERNAME_HEADER", "x-cognito-user")][..],
            "--ext-authz-username-header",
        ),
        (
            &["--region", "eu-west-1", "--upstream-rate-limit", "0"][..],
            &[][..],
            "--upstream-rate-limit",
        ),
        (
            &["--region", "eu-west-1"][..],
            &[("COGNITO_FACADE_UPSTREAM_RATE_LIMIT", "nowhere=4")][..],
            "--upstream-rate-limit",
        ),
        (
            &[
                "--region",
                "eu-west-1",
                "--upstream-rate-limit",
                "40",
                "--upstream-queue-timeout",
                "2s",
            ][..],
            &[][..],
            "--upstream-queue-timeout",
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

/// One flag as `--help` describes it: its environment variable and default.
#[derive(Debug, PartialEq, Eq)]
struct Flag {
    env: Option<String>,
    default: Option<String>,
}

/// The server's flags from the binary's own `--help`.
fn flags_from_help() -> std::collections::BTreeMap<String, Flag> {
    let output = run_to_exit(&["--help"], &[]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8(output.stdout).unwrap();
    let mut flags = std::collections::BTreeMap::new();
    let mut current: Option<(String, String)> = None;
    let mut finish = |current: Option<(String, String)>| {
        if let Some((name, text)) = current {
            let bracket = |key: &str| {
                let start = text.find(&format!("[{key}: "))? + key.len() + 3;
                let end = start + text[start..].find(']')?;
                Some(text[start..end].trim_end_matches('=').to_owned())
            };
            let flag = Flag {
                env: bracket("env"),
                default: bracket("default"),
            };
            flags.insert(name, flag);
        }
    };
    for line in help.lines() {
        let trimmed = line.trim_start();
        let flag_start = trimmed
            .strip_prefix("-h, ")
            .or_else(|| trimmed.strip_prefix("-V, "))
            .unwrap_or(trimmed);
        if line.starts_with("  ") && flag_start.starts_with("--") {
            finish(current.take());
            let name = flag_start.split_whitespace().next().unwrap().to_owned();
            current = Some((name, String::new()));
        } else if let Some((_, text)) = current.as_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    finish(current);
    flags.remove("--help");
    flags.remove("--version");
    flags
}

/// The flags of the configuration guide's table: `| flag | env | default |`,
/// a default in backticks being a value and anything else a description.
fn flags_from_the_guide() -> std::collections::BTreeMap<String, Flag> {
    let guide = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    let section = guide
        .split("\n## ")
        .find(|s| s.starts_with("Flags\n"))
        .expect("a Flags section in docs/configuration.md");
    section
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix("`--")?.strip_suffix('`')?;
            let code = |cell: &str| {
                cell.strip_prefix('`')
                    .and_then(|c| c.strip_suffix('`'))
                    .map(str::to_owned)
            };
            let flag = Flag {
                env: code(cells.get(2)?),
                default: code(cells.get(3)?),
            };
            Some((format!("--{name}"), flag))
        })
        .collect()
}

#[test]
fn the_configuration_guide_matches_help() {
    let help = flags_from_help();
    assert!(help.len() > 20, "{help:#?}");
    assert!(help.values().all(|flag| flag.env.is_some()), "{help:#?}");
    let readme = flags_from_the_guide();
    let names = |flags: &std::collections::BTreeMap<String, Flag>| -> Vec<String> {
        flags.keys().cloned().collect()
    };
    assert_eq!(names(&readme), names(&help), "the same flags");
    for (name, flag) in &help {
        assert_eq!(
            &readme[name], flag,
            "{name}: docs/configuration.md vs --help"
        );
    }
}

#[test]
fn a_malformed_user_pool_id_exits_2_with_one_line_before_binding() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    for (args, envs) in [
        (
            vec![
                "--listen-addr",
                addr.as_str(),
                "--user-pool-id",
                "eu-west-1",
            ],
            vec![],
        ),
        (
            vec!["--listen-addr", addr.as_str()],
            vec![("COGNITO_FACADE_USER_POOL_IDS", "eu-west-1_Ok,not a pool")],
        ),
    ] {
        let output = run_to_exit(&args, &envs);
        assert_eq!(output.status.code(), Some(2), "{args:?} {envs:?}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains("--user-pool-id") && stderr.contains("not a user pool id"),
            "{stderr}"
        );
    }
}

/// With pools, no region is needed: each pool names its own. The call's
/// line names the pool, and never the token.
#[tokio::test]
async fn pools_need_no_region_and_the_call_line_names_the_pool() {
    use crate::jwt::{SigningKey, access_claims, jwks};
    const POOL: &str = "ap-southeast-2_LogPool";
    let key = SigningKey::generate("k1");
    let stand_in = StandIn::start().await;
    stand_in.serve_jwks(crate::helpers::Reply::Success(jwks(&[&key])));
    let mut running = Running::start(
        &["--user-pool-id", POOL],
        &[(
            "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER",
            stand_in.endpoint.as_str(),
        )],
    );
    let token = key.sign(&access_claims(POOL, 3600));
    let answer = running
        .client()
        .await
        .get_user_auth_factors(crate::helpers::request(&token))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().username, USERNAME);
    assert_eq!(running.terminate().await, Some(0));
    let logs = running.logs();
    let line = logs
        .iter()
        .find(|l| l.contains("call finished"))
        .expect("a call line");
    let fields: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(fields["fields"]["pool_id"], POOL);
    for part in token.split('.') {
        assert!(logs.iter().all(|l| !l.contains(part)), "the token leaked");
    }
}

#[test]
fn an_opentelemetry_setting_it_cannot_use_exits_2_naming_it() {
    for (var, value) in [
        ("OTEL_PROPAGATORS", "b3"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "lots"),
    ] {
        let output = run_to_exit(&[], &[("AWS_REGION", "eu-west-1"), (var, value)]);
        assert_eq!(output.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(var), "{stderr}");
    }
}

/// The build-info metric says whether this build turned tokio's LIFO slot
/// off; the test crate is built with the same flags as the binary. A build
/// without `--cfg tokio_unstable` also warns at start.
#[tokio::test]
async fn the_build_info_says_whether_the_lifo_slot_is_off() {
    let stand_in = StandIn::start().await;
    let mut running = Running::against(&stand_in, &[], &[]);
    let metrics = running.wait_for_addr("serving metrics");
    let page = crate::helpers::scrape(metrics).await;
    let expected = if cfg!(tokio_unstable) { "off" } else { "on" };
    let series = format!(
        "cognito_facade_build_info{{version=\"{}\",lifo_slot=\"{expected}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(crate::helpers::sample(&page, &series), Some(1.0), "{page}");
    assert_eq!(running.terminate().await, Some(0));
    let warned = running
        .logs()
        .iter()
        .any(|line| line.contains("built without --cfg tokio_unstable"));
    assert_eq!(warned, !cfg!(tokio_unstable));
}

/// The fleet key file is checked before anything binds: missing, short or
/// world-readable, or Redis without one, exits 2 with one line that names
/// it (and never echoes a password from the URL).
#[test]
fn a_fleet_key_that_cannot_be_used_exits_2_with_one_line_before_binding() {
    use std::os::unix::fs::PermissionsExt as _;
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let dir = std::env::temp_dir().join(format!("cognito-facade-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, len: usize, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; len]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let short = write("short.key", 31, 0o600);
    let open = write("open.key", 64, 0o644);
    let good = write("good.key", 32, 0o600);
    let url = "redis://user:hunter2@127.0.0.1:6379";
    for (args, needle) in [
        (
            vec![
                "--redis-url",
                url,
                "--fleet-key-file",
                "/nonexistent/fleet.key",
            ],
            "/nonexistent/fleet.key",
        ),
        (
            vec!["--redis-url", url, "--fleet-key-file", &short],
            "at least 32",
        ),
        (
            vec!["--redis-url", url, "--fleet-key-file", &open],
            "world-readable",
        ),
        (vec!["--redis-url", url], "--fleet-key-file"),
        (vec!["--fleet-key-file", &good], "--redis-url"),
        (
            vec![
                "--redis-url",
                "http://user:hunter2@127.0.0.1",
                "--fleet-key-file",
                &good,
            ],
            "--redis-url",
        ),
        (
            vec![
                "--redis-url",
                url,
                "--fleet-key-file",
                &good,
                "--redis-timeout",
                "0s",
            ],
            "--redis-timeout",
        ),
        (
            vec![
                "--redis-url",
                url,
                "--fleet-key-file",
                &good,
                "--fleet-previous-key-file",
                &short,
                "--fleet-naming-key-file",
                &good,
            ],
            "--fleet-previous-key-file",
        ),
        (
            vec![
                "--redis-url",
                url,
                "--fleet-key-file",
                &good,
                "--fleet-previous-key-file",
                &good,
            ],
            "needs --fleet-naming-key-file",
        ),
        (
            vec!["--fleet-naming-key-file", &good],
            "--fleet-naming-key-file is only used with --fleet-key-file",
        ),
        (vec!["--drain-delay", "1000000000y"], "--drain-delay"),
        (
            vec!["--fleet-size-hint", "3"],
            "--fleet-size-hint is only used with --redis-url",
        ),
        (vec!["--call-timeout", "400d"], "at most 365 days"),
        (vec!["--cache-ttl", "18446744073709551615s"], "--cache-ttl"),
    ] {
        let mut all = vec!["--region", "eu-west-1", "--listen-addr", addr.as_str()];
        all.extend(args.iter().copied());
        let output = run_to_exit(&all, &[]);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "the password leaked: {stderr}");
    }
}
