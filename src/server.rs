//! The gRPC server: the RPC, health, reflection, and the shutdown sequence
//! (NOT_SERVING, drain, stop accepting, grace, exit).

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    cognito::Cognito,
    config::Config,
    middleware::RpcLayer,
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

/// Most concurrent streams (calls) per HTTP/2 connection; a client that
/// opens more gets REFUSED_STREAM for the excess and retries them.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;

/// After `--max-connection-age`, how long a connection's in-flight calls get
/// before it is closed.
const MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);

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

    let service = FacadeService::new(
        cognito,
        config.limits.max_concurrent_requests,
        config.economy,
    );
    let rpc =
        IdentityProviderServiceServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES);
    let rpc = tonic::service::interceptor::InterceptedService::new(rpc, stamp_arrival);

    let (stop_accepting, stop_signal) = tokio::sync::oneshot::channel::<()>();
    let local_addr = listener.local_addr().map_err(ServerError::Listener)?;
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let limits = &config.limits;
    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(limits.keepalive_interval))
        .http2_keepalive_timeout(Some(limits.keepalive_timeout))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_connection_age(limits.max_connection_age)
        .max_connection_age_grace(MAX_CONNECTION_AGE_GRACE);
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let server = builder
        .layer(RpcLayer)
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(rpc)
        .serve_with_incoming_shutdown(incoming, async {
            // A dropped sender also stops the server.
            let _ = stop_signal.await;
        });
    tokio::pin!(server);
    tracing::info!(addr = %local_addr, tls = config.tls.is_some(), "serving");

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
