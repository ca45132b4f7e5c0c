//! Server reflection, v1 and v1alpha, as grpcurl uses it.

use prost::Message as _;
use tonic::{client::Grpc, codegen::http::uri::PathAndQuery};
use tonic_prost::ProstCodec;

use crate::helpers::spawn_app;

/// Runs one reflection request over `version`'s stream and returns the
/// response, for both API versions (their messages are identical in shape).
macro_rules! reflect {
    ($version:ident, $channel:expr, $request:expr) => {{
        use tonic_reflection::pb::$version::{
            ServerReflectionRequest, ServerReflectionResponse,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        };
        let mut grpc = Grpc::new($channel.clone());
        grpc.ready().await.unwrap();
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some($request(MessageRequest::ListServices(String::new()))),
        };
        let path = PathAndQuery::from_static(concat!(
            "/grpc.reflection.",
            stringify!($version),
            ".ServerReflection/ServerReflectionInfo"
        ));
        let mut stream = grpc
            .streaming(
                tonic::Request::new(tokio_stream::iter([request])),
                path,
                ProstCodec::<ServerReflectionRequest, ServerReflectionResponse>::default(),
            )
            .await
            .unwrap()
            .into_inner();
        match stream
            .message()
            .await
            .unwrap()
            .unwrap()
            .message_response
            .unwrap()
        {
            MessageResponse::ListServicesResponse(list) => {
                Reflected::Services(list.service.into_iter().map(|s| s.name).collect())
            }
            MessageResponse::FileDescriptorResponse(files) => {
                Reflected::Files(files.file_descriptor_proto)
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    }};
}

#[derive(Debug)]
enum Reflected {
    Services(Vec<String>),
    Files(Vec<Vec<u8>>),
}

fn assert_lists_our_services(reflected: Reflected) {
    let Reflected::Services(names) = reflected else {
        panic!("{reflected:?}")
    };
    for expected in [
        "cognito.idp.v1.IdentityProviderService",
        "envoy.service.auth.v3.Authorization",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
}

fn assert_describes_the_rpc_with_comments(reflected: Reflected) {
    let Reflected::Files(files) = reflected else {
        panic!("{reflected:?}")
    };
    let file = prost_types::FileDescriptorProto::decode(files[0].as_slice()).unwrap();
    assert_eq!(file.name(), "cognito/idp/v1/identity_provider.proto");
    let methods: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(methods, ["GetUserAuthFactors", "AdminGetUserAuthFactors"]);
    let comments: Vec<_> = file
        .source_code_info
        .expect("source info, so grpcurl describe shows comments")
        .location
        .into_iter()
        .filter_map(|l| l.leading_comments)
        .collect();
    assert!(
        comments
            .iter()
            .any(|c| c.contains("Lists the authentication options")),
        "{comments:?}"
    );
}

#[tokio::test]
async fn v1_lists_and_describes() {
    let app = spawn_app().await;
    assert_lists_our_services(reflect!(v1, app.channel, |m| m));
    let symbol = |_| {
        tonic_reflection::pb::v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "cognito.idp.v1.IdentityProviderService".to_owned(),
        )
    };
    assert_describes_the_rpc_with_comments(reflect!(v1, app.channel, symbol));
}

#[tokio::test]
async fn v1alpha_lists_and_describes() {
    let app = spawn_app().await;
    assert_lists_our_services(reflect!(v1alpha, app.channel, |m| m));
    let symbol = |_| {
        tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "cognito.idp.v1.GetUserAuthFactorsResponse".to_owned(),
        )
    };
    assert_describes_the_rpc_with_comments(reflect!(v1alpha, app.channel, symbol));
}

/// grpcurl resolves error details through reflection: without these, it
/// prints ErrorInfo, RetryInfo and BadRequest as raw bytes.
#[tokio::test]
async fn resolves_the_error_detail_types() {
    let app = spawn_app().await;
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
        "google.rpc.BadRequest",
    ] {
        let request = |_| {
            tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                symbol.to_owned(),
            )
        };
        let Reflected::Files(files) = reflect!(v1alpha, app.channel, request) else {
            panic!("{symbol} did not resolve to a file")
        };
        let file = prost_types::FileDescriptorProto::decode(files[0].as_slice()).unwrap();
        let name = symbol.trim_start_matches("google.rpc.");
        assert!(
            file.message_type.iter().any(|m| m.name() == name),
            "{symbol}"
        );
    }
}

/// Envoy's ext_authz service is described too, so `grpcurl` can call Check.
#[tokio::test]
async fn describes_envoys_authorization_service() {
    let app = spawn_app().await;
    let request = |_| {
        tonic_reflection::pb::v1::server_reflection_request::MessageRequest::FileContainingSymbol(
            "envoy.service.auth.v3.Authorization".to_owned(),
        )
    };
    let Reflected::Files(files) = reflect!(v1, app.channel, request) else {
        panic!("the Authorization service did not resolve to a file")
    };
    let file = prost_types::FileDescriptorProto::decode(files[0].as_slice()).unwrap();
    assert_eq!(file.name(), "envoy/service/auth/v3/external_auth.proto");
    assert_eq!(file.service[0].name(), "Authorization");
    assert_eq!(file.service[0].method[0].name(), "Check");
}
