//! Server reflection (`grpc.reflection.v1` and `v1alpha`), built on its first
//! call rather than at start-up: building it decodes every descriptor set
//! (the service's, health's, `google.rpc`'s and Envoy's ext_authz, once per
//! version), heap and code that a replica nobody asks with `grpcurl` never
//! needs (BENCHMARKS.md, idle RSS).

use std::{
    convert::Infallible,
    sync::{Arc, OnceLock},
    task::{Context, Poll},
};

use tonic::{body::Body, codegen::http, server::NamedService};
use tonic_reflection::server::{Builder, v1, v1alpha};

use crate::{base::wire::MAX_REQUEST_BYTES, proto};

/// A service `make` builds on its first call, shared by every clone after.
pub(crate) struct Lazy<S> {
    make: fn() -> S,
    built: Arc<OnceLock<S>>,
}

impl<S> Lazy<S> {
    fn new(make: fn() -> S) -> Self {
        Self {
            make,
            built: Arc::new(OnceLock::new()),
        }
    }
}

impl<S> Clone for Lazy<S> {
    fn clone(&self) -> Self {
        Self {
            make: self.make,
            built: Arc::clone(&self.built),
        }
    }
}

impl<S> std::fmt::Debug for Lazy<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lazy")
            .field("built", &self.built.get().is_some())
            .finish()
    }
}

impl<S: NamedService> NamedService for Lazy<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Lazy<S>
where
    S: tower::Service<http::Request<Body>, Error = Infallible> + Clone,
{
    type Response = S::Response;
    type Error = Infallible;
    type Future = S::Future;

    /// Always ready: tonic's generated servers are (their `poll_ready`
    /// returns ready without looking), so the built one is asked nothing.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        self.built.get_or_init(self.make).clone().call(request)
    }
}

/// The reflection service's builder, with every descriptor set served.
fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.ErrorInfo, RetryInfo, BadRequest: lets grpcurl decode
        // the error details instead of printing raw bytes.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(proto::ENVOY_EXT_AUTHZ_DESCRIPTOR_SET)
}

/// `grpc.reflection.v1`, built on its first call.
pub(crate) fn v1() -> Lazy<v1::ServerReflectionServer<impl v1::ServerReflection>> {
    Lazy::new(|| {
        builder()
            .build_v1()
            .expect("the compiled-in descriptor sets decode (a unit test builds them)")
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    })
}

/// `grpc.reflection.v1alpha`, built on its first call.
pub(crate) fn v1alpha() -> Lazy<v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>> {
    Lazy::new(|| {
        builder()
            .build_v1alpha()
            .expect("the compiled-in descriptor sets decode (a unit test builds them)")
            .max_decoding_message_size(MAX_REQUEST_BYTES)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_sets_build_both_versions() {
        assert!(builder().build_v1().is_ok());
        assert!(builder().build_v1alpha().is_ok());
    }
}
