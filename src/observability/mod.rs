//! What the service tells the world besides its answers (layer 4): trace
//! context in and spans out over OTLP (`traces`), and the Prometheus
//! endpoint with every metric's description (`prometheus`). The log
//! subscriber is in `base::telemetry`, below everything that logs.
//!
//! Files, lowest first: `traces`, `prometheus`.

pub(crate) mod prometheus;
pub(crate) mod traces;
