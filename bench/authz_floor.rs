//! The floor a Check is measured against (`bench/run.py`'s mesh scenario):
//! an ext_authz server that allows every Check and does nothing else, built
//! with what the service is built with (tonic, envoy-types, mimalloc, the
//! service's runtime and HTTP/2 settings), so that the service's cost per
//! Check minus this one's is the service's own.
//!
//! `cargo run --release --example authz-floor -- 127.0.0.1:PORT`: serves on
//! that loopback address until killed.

use envoy_types::{
    ext_authz::v3::pb::{Authorization, AuthorizationServer, CheckRequest, CheckResponse},
    pb::google::rpc::Status,
};

/// The service's allocator (see `src/main.rs`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Allows every Check: an OK status and nothing else.
#[derive(Debug)]
struct Allow;

#[tonic::async_trait]
impl Authorization for Allow {
    async fn check(
        &self,
        _request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status::default()),
            ..CheckResponse::default()
        }))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: std::net::SocketAddr = std::env::args()
        .nth(1)
        .ok_or("usage: authz-floor 127.0.0.1:PORT")?
        .parse()?;
    if !addr.ip().is_loopback() {
        return Err("the floor serves on loopback only".into());
    }
    let runtime = cognito_facade::app::runtime()?;
    runtime.block_on(async {
        cognito_facade::test_support::default_http2()
            .add_service(AuthorizationServer::new(Allow))
            .serve(addr)
            .await
    })?;
    Ok(())
}
