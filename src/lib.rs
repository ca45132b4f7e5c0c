//! cognito-facade: a gRPC front door to Amazon Cognito user pools.
//!
//! `main` parses the [`config`], starts [`telemetry`], builds the
//! [`cognito`] client and hands a bound listener plus a shutdown future to
//! [`server::run`]. Tests do the same with a listener on `127.0.0.1:0`.

pub mod cognito;
pub mod config;
pub mod economy;
pub mod error;
pub mod healthcheck;
pub mod metrics;
pub mod middleware;
pub mod proto;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tls;
pub mod token;
