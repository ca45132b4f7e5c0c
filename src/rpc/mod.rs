//! The RPC itself (layer 6): one call's typed context (`call`), and the
//! service (`service`) that reads the token, checks it, asks the economy
//! and the fleet, calls Cognito within the caller's deadline, and answers
//! through the error table.
//!
//! Files, lowest first: `call`, `service`.

pub(crate) mod call;
pub(crate) mod service;
