//! Integration tests: the real server on loopback against a Cognito stand-in.

mod admin;
mod admin_credentials;
mod bad_day;
mod binary;
mod bodies;
mod callers;
mod cluster;
mod connections;
mod deploy;
mod docs;
mod economy;
mod envoy;
mod errors;
mod faults;
mod fleet;
mod gcra;
mod health;
mod helpers;
mod hostile;
mod jwt;
mod layers;
mod mesh;
mod monitoring;
mod moto;
mod observe;
mod operations;
mod pki;
mod quota;
mod reflection;
mod revocation;
mod rpc;
mod secrets;
mod servers;
mod shutdown;
mod slow_store;
mod stale;
mod stopping;
mod store_faults;
#[path = "../support/store_server.rs"]
mod store_server;
mod tokens;
mod tracing;
#[path = "../../bench/unfinished.rs"]
mod unfinished;
