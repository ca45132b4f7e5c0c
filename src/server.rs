//! The gRPC server: the RPC, health, reflection, and the shutdown sequence
//! (NOT_SERVING, drain, stop accepting, grace, exit).

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    cognito::Cognito,
    config::Config,
    proto::{self, identity_provider_service_server::IdentityProviderServiceServer},
    service::{FacadeService, stamp_arrival},
};

/// The fully-qualified name of the RPC service, as health checks name it.
pub const SERVICE_NAME: &str = "cognito.idp.v1.IdentityProviderService";

/// Largest request message accepted. A GetUserAuthFactorsRequest holds one
/// token of at most 16 KiB; anything far larger is refused by tonic with
/// RESOURCE_EXHAUSTED before it is buffered.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest header block accepted. Room for a 16 KiB `authorization: Bearer`
/// token plus ordinary metadata; hyper's default (16 KiB) would refuse the
/// largest valid token.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;

/// HTTP/2 keepalive pings, so dead client connections are noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The reflection service could not read the descriptor sets.
    #[error("building the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's address could not be read.
    #[error("reading the listener's address: {0}")]
    Listener(std::io::Error),
    /// The listener or a connection failed fatally.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves on `listener` until `shutdown` completes, then: reports
/// NOT_SERVING, keeps serving for `config.drain_delay`, stops accepting, gives
/// in-flight calls up to `config.shutdown_grace`, and returns.
pub async fn run(
    listener: TcpListener,
    config: Config,
    cognito: Cognito,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let (mut health, health_service) = tonic_health::server::health_reporter();
    set_status(&health, ServingStatus::Serving).await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.ErrorInfo, RetryInfo, BadRequest: lets grpcurl decode
            // the error details instead of printing raw bytes.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    let rpc = IdentityProviderServiceServer::new(FacadeService::new(cognito))
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let rpc = tonic::service::interceptor::InterceptedService::new(rpc, stamp_arrival);

    let (stop_accepting, stop_signal) = tokio::sync::oneshot::channel::<()>();
    let local_addr = listener.local_addr().map_err(ServerError::Listener)?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(rpc)
        .serve_with_incoming_shutdown(incoming, async {
            // A dropped sender also stops the server.
            let _ = stop_signal.await;
        });
    tokio::pin!(server);
    tracing::info!(addr = %local_addr, "serving");

    tokio::select! {
        result = &mut server => return result.map_err(ServerError::from),
        () = shutdown => {}
    }
    tracing::info!(
        drain_delay = ?config.drain_delay,
        "shutdown requested: reporting NOT_SERVING and draining"
    );
    set_status(&health, ServingStatus::NotServing).await;
    tokio::select! {
        result = &mut server => return result.map_err(ServerError::from),
        () = tokio::time::sleep(config.drain_delay) => {}
    }

    // Ending the health statuses ends open Watch streams, which would
    // otherwise hold the graceful shutdown open until the grace runs out.
    for name in ["", SERVICE_NAME] {
        health.clear_service_status(name).await;
    }
    let _ = stop_accepting.send(());
    tracing::info!(grace = ?config.shutdown_grace, "listener closed; finishing in-flight calls");
    match tokio::time::timeout(config.shutdown_grace, &mut server).await {
        Ok(result) => result?,
        Err(_) => tracing::warn!("shutdown grace ran out; abandoning calls still in flight"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Sets the status of the whole server (`""`) and of the RPC service.
async fn set_status(health: &HealthReporter, status: ServingStatus) {
    for name in ["", SERVICE_NAME] {
        health.set_service_status(name, status).await;
    }
}
