//! The connection to the store, standalone or cluster (both reconnect by
//! themselves), its pub/sub commands, and the loop that connects at start
//! without ever holding start-up back.

use std::{sync::Weak, time::Duration};

use redis::{
    ProtocolVersion, PushInfo, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};

use super::{
    StoreState,
    config::{FleetConfig, RedisMode},
    ops::{Op, Outcome},
};
use crate::base::telemetry::Every;

/// The longest budget any operation gets: the connection's own response
/// timeout is this, so it never cuts a longer per-operation budget short
/// (each operation has its own, often shorter, bound).
pub(crate) const BACKGROUND_BUDGET: Duration = Duration::from_millis(500);

/// First and longest pause between two attempts to connect at start.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Longest pause between two looks for a master after a READONLY: a
/// failover takes a few seconds, and the new master is to be found within
/// 5 s of it.
const MASTER_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Least time between two warnings about an unreachable store.
const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// A connection to the store, either kind.
#[derive(Clone)]
pub(crate) enum StoreConn {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for StoreConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Standalone(_) => "StoreConn::Standalone",
            Self::Cluster(_) => "StoreConn::Cluster",
        })
    }
}

impl StoreConn {
    /// SUBSCRIBE, or SSUBSCRIBE in a cluster (sharded: only the slot's
    /// nodes carry it).
    pub(crate) async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(conn) => conn.subscribe(channel).await,
            Self::Cluster(conn) => conn.ssubscribe(channel).await,
        }
    }

    /// SUBSCRIBE in either mode: a cluster carries a plain PUBLISH to
    /// every node, so one subscription hears the whole fleet.
    pub(crate) async fn subscribe_broadcast(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(conn) => conn.subscribe(channel).await,
            Self::Cluster(conn) => conn.subscribe(channel).await,
        }
    }

    pub(crate) async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            Self::Standalone(conn) => conn.unsubscribe(channel).await,
            Self::Cluster(conn) => conn.sunsubscribe(channel).await,
        }
    }
}

impl ConnectionLike for StoreConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Self::Standalone(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(conn) => conn.req_packed_commands(cmd, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
    }
}

/// What a connection must lead to before it is put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Wanted {
    /// Any server (at start).
    Any,
    /// A master (`ROLE`), after the last one answered READONLY.
    Master,
}

/// Connects, retrying with a growing pause until it works or the store is
/// gone; the connection then reconnects by itself. Pushes go to the
/// store's `deliver`.
pub(super) async fn connect(store: Weak<StoreState>, wanted: Wanted) {
    let warned = Every::new(WARN_INTERVAL);
    let mut backoff = CONNECT_BACKOFF_MIN;
    // Looking for a new master is a failover's few seconds, not an outage.
    let most = match wanted {
        Wanted::Any => CONNECT_BACKOFF_MAX,
        Wanted::Master => MASTER_BACKOFF_MAX,
    };
    loop {
        let Some(inner) = store.upgrade() else {
            return;
        };
        let push = {
            let deliver = inner.deliver.clone();
            move |push: PushInfo| -> Result<(), std::convert::Infallible> {
                deliver(push);
                Ok(())
            }
        };
        let opened = match open(&inner.config, push).await {
            Ok(conn) if wanted == Wanted::Master => is_master(conn).await,
            other => other,
        };
        let opened = match opened {
            Ok(conn) => subscribed(&inner, conn).await,
            Err(err) => Err(err),
        };
        match opened {
            Ok(conn) => {
                inner.install(conn);
                tracing::info!(mode = ?inner.config.mode, "connected to the fleet store");
                return;
            }
            Err(err) => {
                if let Some(suppressed) = warned.ready() {
                    tracing::warn!(error = %err, suppressed, "cannot reach the fleet store yet; serving without it");
                }
            }
        }
        drop(inner);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(most);
    }
}

/// `conn`, once it has subscribed the fleet-wide channel (counted as a
/// `subscribe`), else why not. A server that refuses the command itself
/// (an ACL without the channel, a proxy without pub/sub) leaves the store
/// of use all the same: `conn`, with a warning, since this replica then
/// hears of a revocation only at its next call for the token.
async fn subscribed(inner: &StoreState, mut conn: StoreConn) -> redis::RedisResult<StoreConn> {
    let subscribe = conn.subscribe_broadcast(&inner.broadcast);
    let subscribed = tokio::time::timeout(BACKGROUND_BUDGET, subscribe).await;
    let (outcome, result) = match subscribed {
        Ok(Ok(())) => (Outcome::Ok, Ok(())),
        Ok(Err(err)) if err.code().is_some() => {
            tracing::warn!(
                error = %err,
                "the fleet store refused to subscribe the revocation channel: this replica hears of a revocation only at its next call for the token"
            );
            (Outcome::Error, Ok(()))
        }
        Ok(Err(err)) => (Outcome::Error, Err(err)),
        Err(_) => (
            Outcome::Timeout,
            Err(redis::RedisError::from((
                redis::ErrorKind::Io,
                "SUBSCRIBE timed out",
            ))),
        ),
    };
    inner.metrics.op(Op::Subscribe, outcome);
    result.map(|()| conn)
}

/// `conn` if its server is a master (`ROLE`), else why not (the error
/// names READONLY, as the server did).
async fn is_master(mut conn: StoreConn) -> redis::RedisResult<StoreConn> {
    let role: Vec<Value> =
        tokio::time::timeout(BACKGROUND_BUDGET, redis::cmd("ROLE").query_async(&mut conn))
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "ROLE timed out")))??;
    match role.first() {
        Some(Value::BulkString(role)) if role.as_slice() == b"master" => Ok(conn),
        _ => Err(redis::RedisError::from((
            redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
            "READONLY: the server at --redis-url is still a replica",
        ))),
    }
}

async fn open(
    config: &FleetConfig,
    push: impl redis::aio::AsyncPushSender + Clone,
) -> redis::RedisResult<StoreConn> {
    let connect_timeout = config.timeout.max(BACKGROUND_BUDGET);
    let response_timeout = config.timeout.max(BACKGROUND_BUDGET);
    match config.mode {
        RedisMode::Standalone => {
            let info = redis::IntoConnectionInfo::into_connection_info(config.urls[0].as_str())?;
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            let client = redis::Client::open(info.set_redis_settings(settings))?;
            let manager = ConnectionManagerConfig::new()
                .set_push_sender(push)
                .set_automatic_resubscription()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(response_timeout))
                .set_number_of_retries(1);
            Ok(StoreConn::Standalone(
                client.get_connection_manager_with_config(manager).await?,
            ))
        }
        RedisMode::Cluster => {
            let client = ClusterClient::builder(config.urls.iter().map(String::as_str))
                .use_protocol(ProtocolVersion::RESP3)
                .push_sender(push)
                .connection_timeout(connect_timeout)
                .response_timeout(response_timeout)
                .retries(1)
                .build()?;
            Ok(StoreConn::Cluster(client.get_async_connection().await?))
        }
    }
}
