//! A Lua script on the store: `EVALSHA`, and on `NOSCRIPT` the whole
//! script with `EVAL`. Both carry the script's keys, so a cluster routes
//! them to the node of the keys' slot (redis-rs's own fallback loads the
//! script with a keyless `SCRIPT LOAD`, which a cluster sends to any node,
//! and the retried `EVALSHA` fails again on the node that matters).
//!
//! Each script has one typed wrapper beside it (in its own module) that
//! owns its KEYS/ARGV order and turns its reply into an enum.

use redis::{Cmd, ErrorKind, RedisResult, ServerErrorKind, ToRedisArgs, Value};

use super::conn::StoreConn;

/// A script's source and its SHA-1.
#[derive(Debug)]
pub(crate) struct LuaScript {
    source: &'static str,
    sha: String,
}

impl LuaScript {
    pub(crate) fn new(source: &'static str) -> Self {
        let sha = redis::Script::new(source).get_hash().to_owned();
        Self { source, sha }
    }

    /// A call of the script with no keys or arguments yet.
    pub(crate) fn call(&self) -> ScriptCall<'_> {
        ScriptCall {
            script: self,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// One call of a script: its keys and arguments, in order.
#[derive(Debug)]
pub(crate) struct ScriptCall<'a> {
    script: &'a LuaScript,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl ScriptCall<'_> {
    pub(crate) fn key(&mut self, key: &str) -> &mut Self {
        self.keys.push(key.as_bytes().to_vec());
        self
    }

    pub(crate) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        self.args.extend(arg.to_redis_args());
        self
    }

    fn command(&self, verb: &str, body: &str) -> Cmd {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(self.keys.len());
        for key in &self.keys {
            cmd.arg(key.as_slice());
        }
        for arg in &self.args {
            cmd.arg(arg.as_slice());
        }
        cmd
    }

    /// Runs the script on `conn`.
    pub(crate) async fn run(&self, conn: &mut StoreConn) -> RedisResult<Value> {
        let by_sha = self.command("EVALSHA", &self.script.sha);
        match by_sha.query_async(conn).await {
            Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL", self.script.source)
                    .query_async(conn)
                    .await
            }
            other => other,
        }
    }
}
