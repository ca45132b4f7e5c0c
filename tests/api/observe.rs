//! The one observer of every call, seen from outside the real binary: one
//! line per call with the same fields (also for calls refused before the
//! handler, and for a caller that gives up), metrics and log lines from the
//! same clock, and every answer saying where it came from.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use serde_json::Value;
use tonic::{Code, codegen::http, transport::Channel};
use tower::ServiceExt as _;

use crate::helpers::{
    Reply, Running, StandIn, TOKEN, request, sample, scrape, shed_one_call, slow_call_in_flight,
    until_received,
};

const SOURCE: &str = "x-cognito-facade-source";

/// The RPC latency histogram's `part` (`sum`, `count`) over both method
/// labels.
fn duration(page: &str, part: &str) -> f64 {
    ["GetUserAuthFactors", "unknown"]
        .iter()
        .filter_map(|method| {
            sample(
                page,
                &format!("cognito_facade_rpc_duration_seconds_{part}{{method=\"{method}\"}}"),
            )
        })
        .sum()
}

/// A POST of `body` to `path` with `content_type`, below any gRPC client.
async fn raw_post(
    channel: &Channel,
    addr: std::net::SocketAddr,
    path: &str,
    content_type: &str,
    body: &'static str,
) -> http::Response<tonic::body::Body> {
    let raw = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{path}"))
        .header("te", "trailers")
        .header("content-type", content_type)
        .body(tonic::body::Body::new(body.to_owned()))
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), channel.clone().oneshot(raw))
        .await
        .expect("answered")
        .expect("an HTTP response")
}

/// The call lines (`call finished`, `call failed`, `call refused`) of a run.
fn call_lines(logs: &[String]) -> Vec<serde_json::Map<String, Value>> {
    logs.iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("call "))
        })
        .map(|line| line["fields"].as_object().unwrap().clone())
        .collect()
}

fn field<'l>(line: &'l serde_json::Map<String, Value>, name: &str) -> &'l str {
    line.get(name)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

#[tokio::test]
async fn every_call_gets_one_line_with_the_same_fields_and_the_metrics_agree() {
    let stand_in = StandIn::start().await;
    let mut running = Running::against(&stand_in, &["--max-concurrent-requests", "1"], &[]);
    let metrics_addr = running.wait_for_addr("serving metrics");
    let mut client = running.client().await;
    let channel = Channel::from_shared(format!("http://{}", running.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let path = "/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors";

    // 1. Cognito's answer. 2. Cognito's refusal. 3. A token refused here.
    client.get_user_auth_factors(request(TOKEN)).await.unwrap();
    stand_in.then([Reply::error(400, "NotAuthorizedException", "revoked")]);
    client
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap_err();
    client
        .get_user_auth_factors(request("not a token"))
        .await
        .unwrap_err();
    // 4. Not gRPC: HTTP 415, before the routes.
    let not_grpc = raw_post(&channel, running.addr, path, "application/json", "{}").await;
    assert_eq!(not_grpc.status(), http::StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(not_grpc.headers()[SOURCE], "local");
    // 5. An oversize message, refused by the decoder before the handler.
    let oversize = client
        .get_user_auth_factors(request(&"a".repeat(70_000)))
        .await
        .unwrap_err();
    assert_eq!(oversize.code(), Code::ResourceExhausted);
    assert_eq!(oversize.metadata().get(SOURCE).unwrap(), "local");
    // 6. A method the service does not have.
    let unknown = raw_post(
        &channel,
        running.addr,
        "/cognito.idp.v1.IdentityProviderService/DeleteUser",
        "application/grpc",
        "",
    )
    .await;
    assert_eq!(unknown.headers()["grpc-status"], "12");
    // 7. A slow call holds the only permit; 8. the next is shed.
    let shed = shed_one_call(&stand_in, &mut client, 3).await;
    assert_eq!(shed.code(), Code::ResourceExhausted);
    // 9. A caller that gives up while Cognito is still answering.
    let quitter = slow_call_in_flight(
        &stand_in,
        &client,
        "quitter.token",
        Duration::from_millis(400),
        4,
    )
    .await;
    quitter.abort();

    // The abandoned call is counted once the server sees the reset.
    let mut page = scrape(metrics_addr).await;
    for _ in 0..200 {
        if duration(&page, "count") == 9.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        page = scrape(metrics_addr).await;
    }
    assert_eq!(duration(&page, "count"), 9.0, "{page}");
    let duration_sum_us = duration(&page, "sum") * 1e6;
    drop(client);
    assert_eq!(running.terminate().await, Some(0));

    let lines = call_lines(&running.logs());
    assert_eq!(lines.len(), 9, "{lines:#?}");
    let keys: BTreeSet<Vec<&String>> = lines.iter().map(|l| l.keys().collect()).collect();
    assert_eq!(keys.len(), 1, "every line has the same fields: {keys:#?}");
    let expected_keys = [
        "aws_error_code",
        "aws_request_id",
        "caller",
        "decision",
        "error",
        "grpc.code",
        "latency_us",
        "message",
        "pool_id",
        "reason",
        "rpc.method",
        "source",
        "span_id",
        "trace_id",
        "verification",
    ];
    let keys: Vec<&str> = lines[0].keys().map(String::as_str).collect();
    assert_eq!(keys, expected_keys);

    let mut seen: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
    for line in &lines {
        let key = (
            field(line, "rpc.method").to_owned(),
            field(line, "grpc.code").to_owned(),
            field(line, "reason").to_owned(),
            field(line, "source").to_owned(),
        );
        *seen.entry(key).or_default() += 1;
    }
    let row = |method: &str, code: &str, reason: &str, source: &str, n: usize| {
        (
            (
                method.to_owned(),
                code.to_owned(),
                reason.to_owned(),
                source.to_owned(),
            ),
            n,
        )
    };
    let m = "GetUserAuthFactors";
    let expected: BTreeMap<_, _> = [
        row(m, "OK", "", "cognito", 2),
        row(m, "UNAUTHENTICATED", "NOT_AUTHORIZED", "cognito", 1),
        row(m, "INVALID_ARGUMENT", "INVALID_ACCESS_TOKEN", "local", 1),
        row(m, "INVALID_ARGUMENT", "", "local", 1),
        row(m, "RESOURCE_EXHAUSTED", "REQUEST_TOO_LARGE", "local", 1),
        row(m, "RESOURCE_EXHAUSTED", "OVERLOADED", "local", 1),
        row(m, "CANCELLED", "", "local", 1),
        row("unknown", "UNIMPLEMENTED", "", "local", 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(seen, expected, "{lines:#?}");

    // One clock: the histogram's sum is the lines' latencies (each line
    // truncates to whole microseconds).
    let lines_us: f64 = lines
        .iter()
        .map(|l| l["latency_us"].as_u64().unwrap() as f64)
        .sum();
    let difference = duration_sum_us - lines_us;
    assert!(
        (-0.01..9.0).contains(&difference),
        "metrics say {duration_sum_us} µs, the lines {lines_us} µs"
    );
}

#[tokio::test]
async fn each_answer_says_where_it_came_from() {
    let stand_in = StandIn::start().await;
    stand_in.always(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::full_success()),
    ));
    let mut running = Running::against(&stand_in, &["--cache-ttl", "10m"], &[]);
    let metrics_addr = running.wait_for_addr("serving metrics");
    let client = running.client().await;
    let source_of = |response: &tonic::Response<_>| {
        response
            .metadata()
            .get(SOURCE)
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };

    // Two at once share one call to Cognito; the third is from the cache.
    let (mut leader, mut follower) = (client.clone(), client.clone());
    let (first, second) = tokio::join!(leader.get_user_auth_factors(request(TOKEN)), async {
        until_received(&stand_in, 1).await;
        follower.get_user_auth_factors(request(TOKEN)).await
    });
    let mut sources = [source_of(&first.unwrap()), source_of(&second.unwrap())];
    sources.sort();
    assert_eq!(sources, ["coalesced", "cognito"]);
    let cached = client
        .clone()
        .get_user_auth_factors(request(TOKEN))
        .await
        .unwrap();
    assert_eq!(source_of(&cached), "cache");
    assert_eq!(stand_in.received().len(), 1);

    let page = scrape(metrics_addr).await;
    for source in ["cognito", "coalesced", "cache"] {
        let series = format!(
            "cognito_facade_rpc_requests_total{{method=\"GetUserAuthFactors\",code=\"OK\",source=\"{source}\",caller=\"anonymous\"}}"
        );
        assert_eq!(sample(&page, &series), Some(1.0), "{source}: {page}");
    }
    drop(client);
    assert_eq!(running.terminate().await, Some(0));
    let mut logged: Vec<String> = call_lines(&running.logs())
        .iter()
        .map(|l| field(l, "source").to_owned())
        .collect();
    logged.sort();
    assert_eq!(logged, ["cache", "coalesced", "cognito"]);
}
