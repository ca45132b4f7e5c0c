//! Request policies that sit next to the observer, inside it: a request that
//! is not gRPC is refused with HTTP 415 before any route sees it, and the
//! decoder's OUT_OF_RANGE for an oversize message becomes the documented
//! RESOURCE_EXHAUSTED with `REQUEST_TOO_LARGE`.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Status, codegen::http};
use tower::{Layer, Service};

use crate::{base::wire::SERVICE_NAME, error::Error, rpc::call::CallContext};

/// The layer; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PolicyLayer;

impl<S> Layer<S> for PolicyLayer {
    type Service = Policy<S>;

    fn layer(&self, inner: S) -> Policy<S> {
        Policy { inner }
    }
}

/// The service [`PolicyLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub(crate) struct Policy<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResB> Service<http::Request<B>> for Policy<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // A refused request never reaches the routes, whatever its path.
        if let Some(refusal) = content_type_refusal(request.headers()) {
            return Box::pin(std::future::ready(Ok(refusal)));
        }
        // The size limit and its documented refusal are the RPC service's;
        // health and reflection keep tonic's own.
        if !is_rpc(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        let context = request
            .extensions()
            .get::<std::sync::Arc<CallContext>>()
            .cloned();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if rewrite_size_refusal(&mut response)
                && let Some(context) = context
            {
                context.set_error(Error::RequestTooLarge);
            }
            Ok(response)
        })
    }
}

/// Whether `path` names a method of the RPC service.
fn is_rpc(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.strip_prefix(SERVICE_NAME))
        .is_some_and(|rest| rest.starts_with('/'))
}

/// A request that is not gRPC (its content type is not `application/grpc`
/// or `application/grpc+...`) gets what the gRPC over HTTP/2 spec asks for:
/// HTTP 415 with `grpc-status` INVALID_ARGUMENT, before any handler or
/// decoder sees it. `None` for a gRPC request.
fn content_type_refusal<B: Default>(headers: &http::HeaderMap) -> Option<http::Response<B>> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(http::HeaderValue::as_bytes);
    let is_grpc = content_type.is_some_and(|value| {
        value == b"application/grpc"
            || value.starts_with(b"application/grpc+")
            || value.starts_with(b"application/grpc;")
    });
    if is_grpc {
        return None;
    }
    let mut response =
        Status::invalid_argument("not a gRPC request: the content-type must be application/grpc")
            .into_http();
    *response.status_mut() = http::StatusCode::UNSUPPORTED_MEDIA_TYPE;
    Some(response)
}

/// Our handlers never answer OUT_OF_RANGE; tonic's decoder does, for a
/// message over `wire::MAX_REQUEST_BYTES`, before buffering it. Replaces that
/// answer with RESOURCE_EXHAUSTED and `REQUEST_TOO_LARGE`; whether it did.
fn rewrite_size_refusal<B: Default>(response: &mut http::Response<B>) -> bool {
    let out_of_range = response
        .headers()
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() == b"11");
    if out_of_range {
        *response = Error::RequestTooLarge.to_status().into_http();
    }
    out_of_range
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn only_grpc_content_types_pass() {
        let refused = |value: Option<&str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(value) = value {
                headers.insert(http::header::CONTENT_TYPE, value.parse().unwrap());
            }
            content_type_refusal::<tonic::body::Body>(&headers)
        };
        for ok in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
        ] {
            assert!(refused(Some(ok)).is_none(), "{ok}");
        }
        for bad in [
            None,
            Some("application/json"),
            Some("application/grpcx"),
            Some("text/plain"),
        ] {
            let response = refused(bad).expect("refused");
            assert_eq!(
                response.status(),
                http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "{bad:?}"
            );
            assert_eq!(response.headers()["grpc-status"], "3", "{bad:?}");
        }
    }

    fn response_with_status(code: &str) -> http::Response<tonic::body::Body> {
        let mut response = http::Response::new(tonic::body::Body::default());
        response
            .headers_mut()
            .insert("grpc-status", code.parse().unwrap());
        response
    }

    #[test]
    fn turns_the_decoders_size_refusal_into_resource_exhausted() {
        let mut response = response_with_status("11");
        assert!(rewrite_size_refusal(&mut response));
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        let mut other = response_with_status("16");
        assert!(!rewrite_size_refusal(&mut other));
        assert_eq!(other.headers()["grpc-status"], "16");
    }
}
