//! What the integration tests (`tests/api`) and the benchmark's load
//! generator (`bench/loadgen.rs`) reach besides the public surface: the
//! error table and its names, the token's refusals and limits, the rate
//! limiter's algorithm (run against its Lua script), names and limits on
//! the wire, the SDK client, the HTTP/2 server's settings and the
//! file-descriptor limit. Hidden from the
//! documentation and not part of the supported surface: it follows the
//! code, release to release.

pub use crate::{
    base::{
        caller::Caller,
        metric_names::RPC_IN_FLIGHT,
        wire::{MAX_REQUEST_BYTES, SERVICE_NAME},
    },
    error::{
        ERROR_DOMAIN, Error, THROTTLE_RETRY_DELAY, UpstreamError, UpstreamErrorKind, code_name,
    },
    quota::gcra::{Gcra, Params, SCRIPT, ScriptOp, Turn},
    server::{default_http2, listener::raise_fd_limit},
    token::{MAX_TOKEN_BYTES, Refusal, TokenError, TokenSource, extract, user::UsernameError},
    upstream::Cognito,
};
