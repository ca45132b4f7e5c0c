//! The RPC itself (layer 6): one call's typed context (`call`), and the
//! service (`service`) that reads the token, checks it, asks the economy
//! and the fleet, calls Cognito within the caller's deadline, and answers
//! through the error table.
//!
//! Envoy's external authorization (`authz`) answers through the same
//! service, by the route's policy (`requirement`).
//!
//! The calls to Cognito in flight are shared fairly among the callers
//! (`slots`).
//!
//! Files, lowest first: `call`, `requirement`, `slots`, `upstream`, `service`, `authz`.

pub(crate) mod authz;
pub(crate) mod call;
pub(crate) mod requirement;
pub(crate) mod service;
pub(crate) mod slots;
mod upstream;
