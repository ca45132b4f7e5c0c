use super::*;

fn parse(args: &[&str]) -> Result<Config, String> {
    let cli = Cli::try_parse_from(std::iter::once("cognito-facade").chain(args.iter().copied()))
        .map_err(|err| err.to_string())?;
    cli.into_config().map_err(|err| err.to_string())
}

#[test]
fn no_flags_give_the_library_defaults() {
    let config = parse(&[]).unwrap();
    let defaults = Config::default();
    assert_eq!(config.server.listen_addr, defaults.server.listen_addr);
    assert_eq!(config.server.drain_delay, defaults.server.drain_delay);
    assert_eq!(config.server.shutdown_grace, defaults.server.shutdown_grace);
    assert_eq!(
        config.server.max_connection_age,
        defaults.server.max_connection_age
    );
    assert_eq!(
        config.server.keepalive_interval,
        defaults.server.keepalive_interval
    );
    assert_eq!(
        config.server.keepalive_timeout,
        defaults.server.keepalive_timeout
    );
    assert!(config.server.tls.is_none());
    assert_eq!(
        config.server.handshake_timeout,
        defaults.server.handshake_timeout
    );
    assert_eq!(config.server.max_connections, None);
    assert_eq!(config.service, defaults.service);
    // AWS_REGION may be set where the tests run.
    let upstream = UpstreamConfig {
        region: None,
        ..config.upstream
    };
    assert_eq!(upstream, defaults.upstream);
    assert_eq!(config.economy, defaults.economy);
    assert_eq!(config.tokens, defaults.tokens);
    assert_eq!(config.log_format, defaults.log_format);
    assert_eq!(config.metrics_addr, defaults.metrics_addr);
}

#[test]
fn coalescing_and_the_cache_are_configurable() {
    let config = parse(&["--coalesce=false", "--cache-ttl", "30s"]).unwrap();
    assert!(!config.economy.coalesce);
    assert_eq!(config.economy.cache_ttl, Some(Duration::from_secs(30)));
    let config = parse(&["--cache-ttl", "0s"]).unwrap();
    assert_eq!(config.economy.cache_ttl, None);
}

#[test]
fn metrics_can_be_turned_off() {
    let config = parse(&["--metrics-addr", "off"]).unwrap();
    assert_eq!(config.metrics_addr, None);
    let config = parse(&["--metrics-addr", "127.0.0.1:9100"]).unwrap();
    assert_eq!(config.metrics_addr, Some("127.0.0.1:9100".parse().unwrap()));
}

#[test]
fn parses_human_durations() {
    let config = parse(&["--attempt-timeout", "250ms", "--call-timeout", "1m 30s"]).unwrap();
    assert_eq!(config.upstream.attempt_timeout, Duration::from_millis(250));
    assert_eq!(config.upstream.call_timeout, Duration::from_secs(90));
}

#[test]
fn refuses_bad_values() {
    for (args, needle) in [
        (&["--listen-addr", "nowhere"][..], "--listen-addr"),
        (&["--connect-timeout", "soon"][..], "--connect-timeout"),
        (&["--connect-timeout", "0s"][..], "--connect-timeout"),
        (&["--max-attempts", "0"][..], "--max-attempts"),
        (&["--log-format", "xml"][..], "--log-format"),
        (
            &["--attempt-timeout", "10s", "--call-timeout", "5s"][..],
            "--attempt-timeout",
        ),
        (
            &["--cognito-endpoint", "localhost:9229"][..],
            "--cognito-endpoint",
        ),
        (
            &["--cognito-endpoint", "ftp://example.com"][..],
            "--cognito-endpoint",
        ),
        (&["--region", " "][..], "--region"),
        (&["--metrics-addr", "nine"][..], "--metrics-addr"),
        (
            &["--max-concurrent-requests", "0"][..],
            "--max-concurrent-requests",
        ),
        (&["--max-connection-age", "0s"][..], "--max-connection-age"),
        (&["--handshake-timeout", "0s"][..], "--handshake-timeout"),
        (&["--max-connections", "0"][..], "--max-connections"),
        (&["--max-connections", "many"][..], "--max-connections"),
        (
            &["--request-body-timeout", "0s"][..],
            "--request-body-timeout",
        ),
        (&["--tls-cert", "/nonexistent.pem"][..], "--tls-key"),
        (&["--tls-client-ca", "/ca.pem"][..], "--tls-cert"),
        (
            &["--tls-cert", "/nonexistent.pem", "--tls-key", "/k.pem"][..],
            "/nonexistent.pem",
        ),
    ] {
        let err = parse(args).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn refuses_bad_request_byte_budgets() {
    for (args, needle) in [
        (
            &["--max-request-bytes-in-flight", "48MB"][..],
            "unknown unit \"MB\"",
        ),
        (
            &["--max-request-bytes-in-flight", "lots"][..],
            "--max-request-bytes-in-flight",
        ),
        (
            &["--max-connection-request-bytes", "1MiB"][..],
            "must be at least 1069061",
        ),
        (
            &[
                "--max-connection-request-bytes",
                "4MiB",
                "--max-request-bytes-in-flight",
                "3MiB",
            ][..],
            "at most --max-request-bytes-in-flight",
        ),
    ] {
        let err = parse(args).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn request_byte_budgets_take_units() {
    let config = parse(&[
        "--max-request-bytes-in-flight",
        "1GiB",
        "--max-connection-request-bytes",
        "1100000",
        "--request-body-timeout",
        "3s",
    ])
    .unwrap();
    let bodies = config.server.bodies;
    assert_eq!(bodies.in_flight, 1 << 30);
    assert_eq!(bodies.per_connection, 1_100_000);
    assert_eq!(bodies.read_timeout, Duration::from_secs(3));
    let defaults = parse(&[]).unwrap().server.bodies;
    assert_eq!(defaults, cognito_facade::config::BodyLimits::default());
    assert_eq!(Bytes(40 << 20).to_string(), "40MiB");
    assert_eq!(Bytes(1_100_000).to_string(), "1100000");
}

#[test]
fn pools_clients_and_region_endpoints() {
    let config = parse(&[
        "--user-pool-id",
        "eu-west-1_AbC",
        "--user-pool-id",
        "us-east-1_XyZ123",
        "--client-id",
        "app1",
        "--verify-tokens=false",
        "--region-endpoint",
        "eu-west-1=http://127.0.0.1:9001",
    ])
    .unwrap();
    let pools: Vec<&str> = config.tokens.pools.iter().map(UserPoolId::as_str).collect();
    assert_eq!(pools, ["eu-west-1_AbC", "us-east-1_XyZ123"]);
    assert_eq!(config.tokens.client_ids, ["app1"]);
    assert!(!config.tokens.verify);
    assert_eq!(
        config.upstream.endpoint_for("eu-west-1"),
        Some("http://127.0.0.1:9001")
    );
    assert_eq!(config.upstream.endpoint_for("us-east-1"), None);
    for (args, needle) in [
        (&["--user-pool-id", "eu-west-1"][..], "--user-pool-id"),
        (&["--user-pool-id", "eu-west-1_a-b"][..], "--user-pool-id"),
        (&["--region-endpoint", "http://x"][..], "--region-endpoint"),
        (
            &["--region-endpoint", "nowhere=http://x"][..],
            "--region-endpoint",
        ),
        (&["--region-endpoint", "eu-west-1=ftp://x"][..], "ftp://x"),
        (&["--client-id", ""][..], "--client-id"),
    ] {
        let err = parse(args).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn admin_callers_need_a_pool_and_well_formed_identities() {
    let config = parse(&[
        "--user-pool-id",
        "eu-west-1_AbC",
        "--admin-callers",
        "spiffe://cluster.local/ns/support/sa/console,api.risk.svc",
    ])
    .unwrap();
    assert_eq!(
        config.service.callers.admin.to_string(),
        "spiffe://cluster.local/ns/support/sa/console,api.risk.svc"
    );
    assert!(parse(&[]).unwrap().service.callers.admin.is_empty());
    for (args, needle) in [
        (&["--admin-callers", "api.risk.svc"][..], "--user-pool-id"),
        (
            &["--user-pool-id", "eu-west-1_AbC", "--admin-callers", "a,,b"][..],
            "--admin-callers",
        ),
        (
            &[
                "--user-pool-id",
                "eu-west-1_AbC",
                "--admin-callers",
                "anonymous",
            ][..],
            "label",
        ),
    ] {
        let err = parse(args).unwrap_err();
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn accepts_an_http_endpoint() {
    let config = parse(&["--cognito-endpoint", "http://127.0.0.1:9229"]).unwrap();
    assert_eq!(
        config.upstream.endpoint.as_deref(),
        Some("http://127.0.0.1:9229")
    );
}

#[test]
fn healthcheck_probes_where_the_server_listens() {
    let cli = Cli::try_parse_from(["cognito-facade", "healthcheck"]).unwrap();
    let Some(Command::Healthcheck(args)) = cli.command else {
        panic!("no healthcheck");
    };
    assert_eq!(
        args.addr(),
        healthcheck::probe_addr(server::DEFAULT_LISTEN_ADDR)
    );
    assert_eq!(args.addr().to_string(), "127.0.0.1:50051");
}
