//! cognito-facade: a gRPC front door to Amazon Cognito user pools.
//!
//! # Layers
//!
//! The crate is a folder per subsystem. Each folder's `mod.rs` opens with
//! what it owns; it declares its files from the lowest up, and a file names
//! only files declared before it. Folders only import from layers below
//! their own (a test, `tests/api/layers.rs`, reads every `crate::` and
//! `super::` path and fails on one that points up):
//!
//! ```text
//!  binary  src/main.rs, src/cli/       flags and env → Config; signals
//!  ────────────────────────────────────────────────────────────────────
//! 10  test_support                     what the tests reach (hidden)
//!  9  app                              builds everything from a Config
//!  8  config                           assembles the components' settings
//!  7  server                           listener, TLS, health, reflection,
//!                                      the observer and policy layers,
//!                                      shutdown
//!  6  rpc                              the RPC: token → economy → Cognito;
//!                                      one call's typed context
//!  5  economy  fleet                   single flight and cache; the fleet's
//!                                      flights and memory on Redis;
//!     verify  quota                    pools, routing, local verification;
//!                                      the upstream rate limit
//!  4  upstream  store                  the AWS SDK (attempts, pacing,
//!                                      conversion); Redis (connection,
//!                                      breakers, sealing, scripts);
//!     observability                    trace context in, spans out; /metrics
//!  3  error                            the one error table
//!  2  token                            the token, its redacted type, pool ids
//!  1  base  healthcheck                names and limits on the wire, metric
//!                                      names, token MACs, the expiring map,
//!                                      the log subscriber; the health probe
//!  0  proto                            generated code
//! ```
//!
//! # The public surface
//!
//! What a user of the library needs: [`app`] (build and run the service),
//! [`config`] (the settings, with every component's configuration type and
//! default), [`proto`] (the contract), [`server`] (serving, its errors and
//! defaults) and [`healthcheck`] (the probe). Everything else is
//! `pub(crate)`; what the integration tests and the benchmark's load
//! generator reach besides goes through [`test_support`], which is not part
//! of the supported surface.
//!
//! # One call
//!
//! A connection is admitted by `server::listener` (under the connection cap,
//! TLS and the HTTP/2 opening within the handshake deadline) and served by
//! tonic in [`server::run`]. A call arrives on it; `server::observe` starts
//! its one clock and its typed context (`rpc::call`); `server::policy`
//! refuses it if it is not gRPC and passes it to tonic, which decodes it
//! (refusing oversize messages, which `policy` reports as the documented
//! RESOURCE_EXHAUSTED) and calls `rpc::service::FacadeService`. The service
//! takes the token from the field or the `authorization` metadata
//! (`token`), has it checked by `verify`, asks the `economy` whether the
//! answer is cached or already being fetched (or, with a `fleet` on Redis
//! (`store`), whether another replica has it or is fetching it, or
//! remembers Cognito's refusal of the token), and otherwise, holding one of
//! the limiter's permits, calls Cognito through `upstream` within the
//! caller's deadline; under a rate limit, each HTTP attempt first takes its
//! turn from `quota`. Cognito's answer or error becomes a response or a
//! status through the one table in `error`, marked with where it came
//! from, and the context records the source, the pool and the error; back
//! in `server::observe`, the RPC metrics, the span and the call's single
//! log line are written from that context and the same elapsed time, and
//! the answer goes to the caller.

pub mod app;
pub(crate) mod base;
pub mod config;
pub(crate) mod economy;
pub(crate) mod error;
pub(crate) mod fleet;
pub mod healthcheck;
pub(crate) mod observability;
pub mod proto;
pub(crate) mod quota;
pub(crate) mod rpc;
pub mod server;
pub(crate) mod store;
#[doc(hidden)]
pub mod test_support;
pub(crate) mod token;
pub(crate) mod upstream;
pub(crate) mod verify;
