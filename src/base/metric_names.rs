//! The name of every metric this service records, in one place at the bottom
//! of the crate (the `/metrics` listener is [`crate::observability::prometheus`]).
//!
//! Recording goes through the `metrics` facade; with no recorder installed
//! (library tests) every call is a no-op.

/// RPCs by `method`, final gRPC `code` (after every mapping) and `source`
/// (where the answer came from: `cognito`, `coalesced`, `cache`, `local`).
pub(crate) const RPC_REQUESTS: &str = "cognito_facade_rpc_requests_total";
/// RPC latency by `method`, in seconds, arrival to response headers.
pub(crate) const RPC_DURATION: &str = "cognito_facade_rpc_duration_seconds";
/// RPCs being handled now.
pub const RPC_IN_FLIGHT: &str = "cognito_facade_rpc_in_flight";
/// Calls to Cognito by `outcome`: `ok`, Cognito's error code, or the reason of
/// a failure without one (`UPSTREAM_UNREACHABLE`, `UPSTREAM_TIMEOUT`, ...).
pub(crate) const UPSTREAM_REQUESTS: &str = "cognito_facade_upstream_requests_total";
/// Latency of calls to Cognito, retries included, in seconds.
pub(crate) const UPSTREAM_DURATION: &str = "cognito_facade_upstream_duration_seconds";
/// Calls refused by the concurrency limiter.
pub(crate) const SHED: &str = "cognito_facade_shed_total";
/// Enum values from Cognito that this version does not know, by `field` and `value`.
pub(crate) const UNKNOWN_ENUM_VALUES: &str = "cognito_facade_unknown_enum_values_total";
/// Calls answered by joining another call's upstream request (single flight).
pub(crate) const COALESCED: &str = "cognito_facade_coalesced_total";
/// Calls answered from the cache (`--cache-ttl`).
pub(crate) const CACHE_HITS: &str = "cognito_facade_cache_hits_total";
/// Always 1, labelled with the `version`.
pub(crate) const BUILD_INFO: &str = "cognito_facade_build_info";
/// Tokens refused here without a call to Cognito, by `reason`.
pub(crate) const TOKEN_REFUSALS: &str = "cognito_facade_token_refusals_total";
/// Tokens let through with every claim checked but not their signature,
/// because their pool's key set could not be had, by `pool`.
pub(crate) const TOKENS_UNVERIFIED: &str = "cognito_facade_tokens_unverified_total";
/// JWKS fetches by `pool` and `outcome` (`ok`, `unreachable`, `bad_status`,
/// `bad_body`, `invalid`, `timeout`).
pub(crate) const JWKS_FETCHES: &str = "cognito_facade_jwks_fetches_total";
/// Calls whose pool's keys could not be had, by `pool`: their claims are
/// still checked here (those let through are [`TOKENS_UNVERIFIED`]), their
/// signature by Cognito.
pub(crate) const JWKS_UNAVAILABLE: &str = "cognito_facade_jwks_unavailable_total";
/// Spans not exported, by `reason`: `queue_full` (the collector is slow or
/// away, or the service is stopping) or `export_failed`.
pub(crate) const TRACE_SPANS_DROPPED: &str = "cognito_facade_trace_spans_dropped_total";
/// Client connections open now on the gRPC listener, handshakes included.
pub(crate) const CONNECTIONS_OPEN: &str = "cognito_facade_connections_open";
/// The connection cap (`--max-connections`, or its default from the
/// file-descriptor limit).
pub(crate) const MAX_CONNECTIONS: &str = "cognito_facade_max_connections";
/// Connections closed at once because the cap was reached.
pub(crate) const CONNECTIONS_REFUSED: &str = "cognito_facade_connections_refused_total";
/// Connections closed because TLS, the HTTP/2 preface and SETTINGS did not
/// arrive within `--handshake-timeout`.
pub(crate) const HANDSHAKE_TIMEOUTS: &str = "cognito_facade_handshake_timeouts_total";
/// Request body bytes held now by bodies still arriving, across all
/// connections: what was read of them and each one's stream cost (a body
/// read whole at once is not shown).
pub(crate) const REQUEST_BODY_BYTES: &str = "cognito_facade_request_body_bytes";
/// Request bodies refused (`REQUEST_BYTES_EXHAUSTED`) because a frame
/// found no room in their connection's share or the budget.
pub(crate) const REQUEST_BODY_REFUSALS: &str = "cognito_facade_request_body_refusals_total";
/// Calls failed because their body did not arrive whole within
/// `--request-body-timeout`.
pub(crate) const REQUEST_BODY_TIMEOUTS: &str = "cognito_facade_request_body_timeouts_total";
/// `accept` failures that made the listener back off, by `error` (`EMFILE`,
/// `ENFILE`, `ENOMEM`, `ENOBUFS`, `other`).
pub(crate) const ACCEPT_ERRORS: &str = "cognito_facade_accept_errors_total";
/// Fleet store (Redis) operations by `op` and `outcome` (`ok`, `error`,
/// `timeout`).
pub(crate) const FLEET_REDIS_OPS: &str = "cognito_facade_fleet_redis_ops_total";
/// Calls that went without the fleet store, by `reason` (`breaker_open`,
/// `not_connected`).
pub(crate) const FLEET_SKIPPED: &str = "cognito_facade_fleet_skipped_total";
/// Seconds the fleet store's breaker has been opened for.
pub(crate) const FLEET_BREAKER_OPEN_SECONDS: &str =
    "cognito_facade_fleet_breaker_open_seconds_total";
/// Values read from the fleet store that did not open (tampered, another
/// fleet's key, moved, another format): each a miss.
pub(crate) const FLEET_UNOPENED: &str = "cognito_facade_fleet_unopened_values_total";
/// Fleet flights taken over after their leader's lease ran out.
pub(crate) const FLEET_LEASE_TAKEOVERS: &str = "cognito_facade_fleet_lease_takeovers_total";
/// Attempts to Cognito the upstream rate limit refused (the call answered
/// `UPSTREAM_RATE_LIMITED`), by `region`.
pub(crate) const UPSTREAM_LIMITED: &str = "cognito_facade_upstream_rate_limited_total";
/// Attempts to Cognito that waited for their turn under the upstream rate
/// limit, by `region`.
pub(crate) const UPSTREAM_WAITED: &str = "cognito_facade_upstream_rate_waited_total";
/// How long attempts to Cognito waited for their turn (those that waited),
/// by `region`.
pub(crate) const UPSTREAM_WAIT_SECONDS: &str = "cognito_facade_upstream_rate_wait_seconds";
/// Attempts Cognito answered with `TooManyRequestsException`, by `region`.
pub(crate) const UPSTREAM_THROTTLES: &str = "cognito_facade_upstream_throttles_total";
/// The upstream rate limit in force, per second, by `region` and `scope`
/// (`fleet`: shared on Redis; `replica`: this replica's share).
pub(crate) const UPSTREAM_RATE_EFFECTIVE: &str = "cognito_facade_upstream_rate_effective";
/// The fleet's size as this replica last knew it (replicas announcing
/// themselves on Redis).
pub(crate) const FLEET_REPLICAS: &str = "cognito_facade_fleet_replicas";
/// Calls answered from refusal memory, by `reason` and `scope` (`replica`,
/// `fleet`).
pub(crate) const REFUSALS_REMEMBERED: &str = "cognito_facade_refusals_remembered_total";
/// Calls answered with a kept answer while Cognito was unavailable
/// (`--stale-if-error`), by `region`.
pub(crate) const STALE_ANSWERS: &str = "cognito_facade_stale_answers_total";
/// Answers this replica keeps for `--stale-if-error`.
pub(crate) const KEPT_ANSWERS: &str = "cognito_facade_kept_answers";
/// Tokens this replica knows are revoked (Cognito's definitive refusal,
/// here or told by the fleet): nothing is cached or kept for them until
/// their `exp`. Bounded by `--cache-max-entries`.
pub(crate) const REVOKED_TOKENS: &str = "cognito_facade_revoked_tokens";
/// Revocations this replica heard while Redis was away, not yet written to
/// the fleet (at most 1,024).
pub(crate) const FLEET_REVOCATIONS_PENDING: &str = "cognito_facade_fleet_revocations_pending";
/// Pending revocations dropped, the oldest first, past 1,024.
pub(crate) const FLEET_REVOCATIONS_DROPPED: &str = "cognito_facade_fleet_revocations_dropped_total";
/// Envoy's ext_authz Checks, by `decision`.
pub(crate) const EXT_AUTHZ_DECISIONS: &str = "cognito_facade_ext_authz_decisions_total";
