//! cognito-facade: a gRPC front door to Amazon Cognito user pools.
//!
//! # Layers
//!
//! Modules only import from layers below their own (a test,
//! `tests/api/layers.rs`, reads every `crate::` path and fails on one that
//! points up):
//!
//! ```text
//!  binary  src/main.rs, src/cli.rs     flags and env → Config; signals
//!  ────────────────────────────────────────────────────────────────────
//!  9  app                              builds everything from a Config
//!  8  config                           assembles the components' settings
//!  7  server                           listener, health, reflection, shutdown
//!  6  service  quota                   the RPC: token → economy → Cognito;
//!                                      the upstream rate limit (fleet-wide)
//!  5  economy  observe  fleet          single flight and cache; the call's
//!                                      one observer (clock, metrics, line);
//!                                      the fleet's flights and memory;
//!     verify  policy                   pools, routing, local verification;
//!     listener                         HTTP 415 and the size refusal;
//!                                      connection cap, handshake deadline
//!  4  call  store                      one call's typed context; Redis
//!                                      (connection, breakers, sealing)
//!     cognito  tls  prometheus         the AWS SDK; TLS files; /metrics;
//!     healthcheck  jwks  traces        the health probe; the pools' keys;
//!                                      trace context in, spans out
//!  3  error                            the one error table
//!  2  token                            the token and its redacted type
//!  1  wire  metric_names  telemetry    names and limits on the wire; metric
//!     pools  gcra                      names; the log subscriber; pool ids;
//!                                      the rate limiter's algorithm
//!  0  proto  expiring                  generated code, the redaction marker;
//!                                      token MACs, the expiring map, locks
//! ```
//!
//! # One call
//!
//! A connection is admitted by [`listener`] (under the connection cap, TLS and
//! the HTTP/2 opening within the handshake deadline) and served by tonic in
//! [`server::run`]. A call arrives on it; `observe` starts its one clock and
//! its typed context (`call`); `policy` refuses it if it is not gRPC and
//! passes it to tonic, which decodes it (refusing oversize messages, which
//! `policy` reports as the documented RESOURCE_EXHAUSTED) and calls
//! [`service::FacadeService`]. The service takes the token from the field or
//! the `authorization` metadata ([`token`]), has it checked by [`verify`],
//! asks the [`economy`] whether the answer is cached or already being
//! fetched (or, with a [`fleet`] on Redis ([`store`]), whether another
//! replica has it or is fetching it, or remembers Cognito's refusal of the
//! token), and
//! otherwise, holding one of the limiter's permits, calls Cognito through
//! [`cognito`] within the caller's deadline; under a rate limit, each HTTP
//! attempt first takes its turn from [`quota`]. Cognito's answer
//! or error becomes a response or a status through the one table in
//! [`error`], marked with where it came from, and the context records the
//! source, the pool and the error; back in `observe`, the RPC metrics, the
//! span and the call's single log line are written from that context and the
//! same elapsed time, and the answer goes to the caller.

pub mod app;
pub(crate) mod call;
pub mod cognito;
pub mod config;
pub mod economy;
pub mod error;
pub(crate) mod expiring;
pub mod fleet;
pub mod gcra;
pub mod healthcheck;
pub(crate) mod jwks;
pub mod listener;
pub mod metric_names;
pub(crate) mod observe;
pub(crate) mod policy;
pub mod pools;
pub mod prometheus;
pub mod proto;
pub mod quota;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod token;
pub mod traces;
pub mod verify;
pub mod wire;
