//! A tower layer around the gRPC routes that sees every call of the RPC
//! service as the caller will: it refuses requests that are not gRPC (HTTP
//! 415), records the RPC metrics from the final status, and turns the
//! decoder's "message too large" (OUT_OF_RANGE, before our handler runs) into
//! the documented RESOURCE_EXHAUSTED.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tonic::{Code, Status, codegen::http};
use tower::{Layer, Service};

use crate::{error, metrics as names, server::SERVICE_NAME, service};

/// The RPC methods that get their own label; anything else under the service
/// is `unknown`, so hostile paths cannot grow the label set.
const METHODS: &[&str] = &[service::METHOD];

/// The layer; see the module docs.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcLayer;

impl<S> Layer<S> for RpcLayer {
    type Service = RpcService<S>;

    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService { inner }
    }
}

/// The service [`RpcLayer`] wraps around the routes.
#[derive(Debug, Clone)]
pub struct RpcService<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResB> Service<http::Request<B>> for RpcService<S>
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
        let method = rpc_method(request.uri().path());
        // A refused request never reaches the routes.
        let answer = match content_type_refusal(request.headers()) {
            Some(refusal) => Err(refusal),
            None => Ok(self.inner.call(request)),
        };
        let respond = async move {
            match answer {
                Ok(future) => future.await,
                Err(refusal) => Ok(refusal),
            }
        };
        let Some(method) = method else {
            return Box::pin(respond);
        };
        let started = Instant::now();
        let in_flight = InFlight::enter();
        Box::pin(async move {
            let mut response = respond.await?;
            let code = final_code(&mut response);
            metrics::counter!(names::RPC_REQUESTS, "method" => method, "code" => error::code_name(code))
                .increment(1);
            metrics::histogram!(names::RPC_DURATION, "method" => method)
                .record(started.elapsed().as_secs_f64());
            drop(in_flight);
            Ok(response)
        })
    }
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

/// The method label of a request path, or `None` for other services.
fn rpc_method(path: &str) -> Option<&'static str> {
    let method = path
        .strip_prefix('/')?
        .strip_prefix(SERVICE_NAME)?
        .strip_prefix('/')?;
    Some(
        METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("unknown"),
    )
}

/// The call's gRPC code. An error answer is trailers-only, its status in the
/// headers; a success carries `grpc-status: 0` in trailers after the message.
/// Rewrites the decoder's size refusal on the way.
fn final_code<B: Default>(response: &mut http::Response<B>) -> Code {
    let Some(status) = response.headers().get("grpc-status") else {
        return Code::Ok;
    };
    let code = status
        .to_str()
        .ok()
        .and_then(|s| s.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    if code == Code::OutOfRange {
        // Our handler never answers OUT_OF_RANGE; tonic's decoder does, for a
        // message over `server::MAX_REQUEST_BYTES`, before buffering it.
        *response = Status::from(error::Error::RequestTooLarge).into_http();
        return Code::ResourceExhausted;
    }
    code
}

/// The in-flight gauge's share of one call; leaves on drop, so a cancelled
/// call leaves too.
struct InFlight;

impl InFlight {
    fn enter() -> Self {
        metrics::gauge!(names::RPC_IN_FLIGHT).increment(1.0);
        Self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!(names::RPC_IN_FLIGHT).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_only_the_rpc_service() {
        assert_eq!(
            rpc_method("/cognito.idp.v1.IdentityProviderService/GetUserAuthFactors"),
            Some("GetUserAuthFactors")
        );
        assert_eq!(
            rpc_method("/cognito.idp.v1.IdentityProviderService/DropTables"),
            Some("unknown")
        );
        assert_eq!(rpc_method("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            rpc_method("/cognito.idp.v1.IdentityProviderServiceX/Get"),
            None
        );
        assert_eq!(rpc_method(""), None);
    }

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

    fn response_with_status(code: Option<&str>) -> http::Response<tonic::body::Body> {
        let mut response = http::Response::new(tonic::body::Body::default());
        if let Some(code) = code {
            response
                .headers_mut()
                .insert("grpc-status", code.parse().unwrap());
        }
        response
    }

    #[test]
    fn reads_the_final_code() {
        assert_eq!(final_code(&mut response_with_status(None)), Code::Ok);
        assert_eq!(
            final_code(&mut response_with_status(Some("16"))),
            Code::Unauthenticated
        );
        assert_eq!(
            final_code(&mut response_with_status(Some("x"))),
            Code::Unknown
        );
    }

    #[test]
    fn turns_the_decoders_size_refusal_into_resource_exhausted() {
        let mut response = response_with_status(Some("11"));
        assert_eq!(final_code(&mut response), Code::ResourceExhausted);
        let status = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
}
