//! grpc.health.v1 Check and Watch, and the shutdown sequence they report.

use std::time::Duration;

use cognito_facade::test_support::SERVICE_NAME;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{
    Reply, StandIn, TOKEN, spawn_app, spawn_app_with, spawn_call, test_config, until_received,
};

/// Envoy's ext_authz service, served beside the RPC.
const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

fn health_request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

#[tokio::test]
async fn check_reports_serving_for_the_server_and_the_service() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", SERVICE_NAME, AUTHZ_SERVICE] {
        let response = health
            .check(health_request(service))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{service:?}");
    }
    let status = health
        .check(health_request("no.such.Service"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

#[tokio::test]
async fn shutdown_flips_to_not_serving_drains_and_finishes_in_flight_calls() {
    let mut app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    let mut watch = health
        .watch(health_request(SERVICE_NAME))
        .await
        .unwrap()
        .into_inner();
    let mut watch_all = health.watch(health_request("")).await.unwrap().into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    assert_eq!(
        watch_all.message().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    // A call that is still in flight when the listener closes (drain is 300 ms).
    app.stand_in.always(Reply::Delay(
        Duration::from_millis(700),
        Box::new(Reply::full_success()),
    ));
    let in_flight = spawn_call(&app, TOKEN);
    until_received(&app.stand_in, 1).await;

    app.shut_down();
    let flipped = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("Watch reports the change at once")
        .unwrap()
        .unwrap();
    assert_eq!(flipped.status(), ServingStatus::NotServing);
    assert_eq!(
        watch_all.message().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    // Still answering during the drain delay, so load balancers can see it.
    for service in ["", AUTHZ_SERVICE] {
        let checked = health
            .check(health_request(service))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(checked.status(), ServingStatus::NotServing, "{service:?}");
    }

    let answered = in_flight
        .await
        .unwrap()
        .expect("the in-flight call completes normally");
    assert_eq!(answered.into_inner().username, crate::helpers::USERNAME);
    // The Watch streams end instead of holding the shutdown open.
    assert!(watch.message().await.unwrap_or(None).is_none());
    tokio::time::timeout(Duration::from_secs(3), app.stopped())
        .await
        .expect("run returns after the drain and the in-flight call")
        .unwrap();
    let refused = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err(), "the listener is closed");
}

#[tokio::test]
async fn shutdown_gives_up_on_calls_that_outlive_the_grace_period() {
    let stand_in = StandIn::start().await;
    let mut config = test_config(&stand_in.endpoint);
    config.server.drain_delay = Duration::from_millis(50);
    config.server.shutdown_grace = Duration::from_millis(300);
    config.upstream.call_timeout = Duration::from_secs(30);
    config.upstream.attempt_timeout = Duration::from_secs(30);
    stand_in.always(Reply::Delay(
        Duration::from_secs(30),
        Box::new(Reply::full_success()),
    ));
    let mut app = spawn_app_with(stand_in, config).await;
    let _stuck = spawn_call(&app, TOKEN);
    until_received(&app.stand_in, 1).await;
    app.shut_down();
    tokio::time::timeout(Duration::from_secs(3), app.stopped())
        .await
        .expect("run returns once drain + grace have passed")
        .unwrap();
}
