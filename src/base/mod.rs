//! The crate's base (layer 1): names and limits on the wire (`wire`), the
//! metric names (`metric_names`), the one keyed MAC for tokens, the
//! expiring map and locks (`expiring`), and the log subscriber with its
//! rate-limited warnings (`telemetry`), and who is calling (`caller`). It
//! imports nothing of the crate but the generated `proto`.
//!
//! Files, lowest first: `wire`, `metric_names`, `expiring`, `telemetry`,
//! `caller`.

pub(crate) mod caller;
pub(crate) mod expiring;
pub(crate) mod metric_names;
pub(crate) mod telemetry;
pub(crate) mod wire;
