//! The fleet's two scripts (`join.lua`, `finish.lua`), each with the one
//! wrapper that owns its KEYS/ARGV order and reads its reply into an enum.

use std::time::Duration;

use redis::Value;

use super::Names;
use crate::store::{LuaScript, RedisMode, ScriptCall};

/// A flight id: random, 32 lower-case hex digits.
const FLIGHT_ID_LEN: usize = 32;

/// The join script's answer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum JoinReply {
    /// A remembered answer (sealed).
    Answer(Vec<u8>),
    /// A remembered refusal (sealed).
    Refusal(Vec<u8>),
    /// The followed flight's result (sealed).
    Result(Vec<u8>),
    /// Another flight to follow, and its lease's time left (as Redis says:
    /// the follower bounds its wait itself); whether the token's kept
    /// answer was replaced.
    Follow {
        flight: String,
        left: Duration,
        replaced: bool,
    },
    /// The caller leads; its flight id is the lease's value. Whether the
    /// token's kept answer was replaced.
    Lead { replaced: bool },
    /// No flight, and the caller may not lead one (its turns are spent):
    /// nothing was taken.
    Free,
}

pub(super) struct JoinScript(LuaScript);

impl JoinScript {
    pub(super) fn new() -> Self {
        Self(LuaScript::new(include_str!("join.lua")))
    }

    /// The call: `flight` is the caller's new flight id, `followed` the
    /// flight it followed last round.
    pub(super) fn call<'a>(
        &'a self,
        names: &Names,
        flight: &str,
        lease: Duration,
        reads: (bool, bool),
        followed: Option<&str>,
        may_lead: bool,
    ) -> ScriptCall<'a> {
        let flag = |on: bool| if on { "1" } else { "0" };
        let mut call = self.0.call();
        call.key(&names.answer)
            .key(&names.refusal)
            .key(&names.lease)
            .key(&names.result(followed.unwrap_or_default()))
            .key(&names.replaced)
            .arg(flight)
            .arg(millis(lease))
            .arg(flag(reads.0))
            .arg(flag(reads.1))
            .arg(flag(followed.is_some()))
            .arg(flag(may_lead));
        call
    }

    /// The reply, or `None` if it is not one the script gives.
    pub(super) fn reply(value: Value) -> Option<JoinReply> {
        let Value::Array(items) = value else {
            return None;
        };
        Some(match items.as_slice() {
            [Value::Int(1), Value::BulkString(v)] => JoinReply::Answer(v.clone()),
            [Value::Int(2), Value::BulkString(v)] => JoinReply::Refusal(v.clone()),
            [Value::Int(3), Value::BulkString(v)] => JoinReply::Result(v.clone()),
            [
                Value::Int(4),
                Value::BulkString(flight),
                Value::Int(left),
                Value::Int(replaced),
            ] => JoinReply::Follow {
                flight: flight_id(flight),
                left: Duration::from_millis(u64::try_from(*left).unwrap_or(0)),
                replaced: *replaced == 1,
            },
            [Value::Int(5), Value::Int(replaced)] => JoinReply::Lead {
                replaced: *replaced == 1,
            },
            [Value::Int(6)] => JoinReply::Free,
            _ => return None,
        })
    }
}

/// A flight id read from Redis; anything but one this code writes (a
/// hand-written lease) becomes `?`, which no result ever matches.
fn flight_id(bytes: &[u8]) -> String {
    let valid = bytes.len() == FLIGHT_ID_LEN && bytes.iter().all(u8::is_ascii_hexdigit);
    if valid {
        String::from_utf8_lossy(bytes).into_owned()
    } else {
        "?".to_owned()
    }
}

/// A new random flight id.
pub(super) fn new_flight_id() -> String {
    use aws_lc_rs::rand::{SecureRandom as _, SystemRandom};
    let mut id = [0u8; FLIGHT_ID_LEN / 2];
    let _ = SystemRandom::new().fill(&mut id);
    crate::store::hex(&id)
}

/// What a flight leaves behind.
#[derive(Debug)]
pub(super) struct Finish<'a> {
    /// The flight, if the caller led one (not with `--coalesce=false`).
    pub(super) flight: Option<&'a str>,
    /// The sealed result, for its followers.
    pub(super) result: Option<Vec<u8>>,
    pub(super) result_ttl: Duration,
    /// Where to remember the outcome, the sealed outcome, and for how long.
    pub(super) memory: Option<(&'a str, Vec<u8>, Duration)>,
    /// The sealed kept answer, and for how long (`--stale-if-error`).
    pub(super) kept: Option<(Vec<u8>, Duration)>,
    /// Whether the outcome revokes the token's copies (a definitive
    /// refusal), and until when the revocation is remembered.
    pub(super) revokes: Option<Duration>,
}

pub(super) struct FinishScript(LuaScript);

impl FinishScript {
    pub(super) fn new() -> Self {
        Self(LuaScript::new(include_str!("finish.lua")))
    }

    /// The call; a revocation is told on `revocations`, the fleet-wide
    /// channel.
    pub(super) fn call<'a>(
        &'a self,
        names: &Names,
        finish: &Finish<'_>,
        mode: RedisMode,
        revocations: &str,
    ) -> ScriptCall<'a> {
        let publish = match mode {
            RedisMode::Standalone => "PUBLISH",
            RedisMode::Cluster => "SPUBLISH",
        };
        let (memory_key, memory, memory_ttl) = match &finish.memory {
            Some((key, sealed, ttl)) => (*key, sealed.as_slice(), millis(*ttl)),
            None => (names.answer.as_str(), &[][..], 1),
        };
        let (kept, kept_ttl) = match &finish.kept {
            Some((sealed, ttl)) => (sealed.as_slice(), millis(*ttl)),
            None => (&[][..], 1),
        };
        let mut call = self.0.call();
        call.key(&names.result(finish.flight.unwrap_or_default()))
            .key(&names.lease)
            .key(memory_key)
            .key(&names.kept)
            .key(&names.replaced)
            .key(&names.answer)
            .arg(finish.flight.unwrap_or_default())
            .arg(finish.result.as_deref().unwrap_or_default())
            .arg(millis(finish.result_ttl))
            .arg(memory)
            .arg(memory_ttl)
            .arg(&names.channel)
            .arg(publish)
            .arg(kept)
            .arg(kept_ttl)
            .arg(if finish.revokes.is_some() { "1" } else { "0" })
            .arg(millis(finish.revokes.unwrap_or_default()))
            .arg(revocations)
            .arg(names.tag());
        call
    }

    /// Whether the result was published (`None`: not a reply of this
    /// script).
    pub(super) fn reply(value: Value) -> Option<bool> {
        match value {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(1)] => Some(true),
                [Value::Int(0)] => Some(false),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Whole milliseconds, at least 1 (Redis refuses a PX of 0).
pub(super) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_server::TestServer;

    /// The join script's reply, on `store`.
    async fn join(store: &crate::store::Store, names: &Names, flight: &str) -> JoinReply {
        let script = JoinScript::new();
        let call = script.call(
            names,
            flight,
            Duration::from_secs(5),
            (true, true),
            None,
            true,
        );
        let mut conn = store.connected().unwrap();
        JoinScript::reply(call.run(&mut conn).await.unwrap()).unwrap()
    }

    /// The finish script's reply, on `store`.
    async fn finish(store: &crate::store::Store, names: &Names, finish: &Finish<'_>) -> bool {
        let script = FinishScript::new();
        let call = script.call(names, finish, RedisMode::Standalone, "revocations");
        let mut conn = store.connected().unwrap();
        FinishScript::reply(call.run(&mut conn).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn a_join_sent_again_leads_its_own_flight_and_a_revocation_stops_every_copy() {
        let server = TestServer::start();
        let store = server.store(|_| {}).await;
        let token = crate::token::AccessToken::for_tests("a.token");
        let names = Names::of(&store, &crate::token::user::Subject::Token(token));
        // The same join twice (a retry after a lost reply): the second
        // finds its own id in the lease and leads, never follows itself.
        let flight = new_flight_id();
        assert_eq!(
            join(&store, &names, &flight).await,
            JoinReply::Lead { replaced: false }
        );
        assert_eq!(
            join(&store, &names, &flight).await,
            JoinReply::Lead { replaced: false }
        );
        // Another caller follows it.
        assert!(matches!(
            join(&store, &names, &new_flight_id()).await,
            JoinReply::Follow {
                replaced: false,
                ..
            }
        ));
        let answer = |flight| Finish {
            flight,
            result: None,
            result_ttl: Duration::from_secs(2),
            memory: Some((
                names.answer.as_str(),
                b"answer".to_vec(),
                Duration::from_secs(60),
            )),
            kept: Some((b"kept".to_vec(), Duration::from_secs(60))),
            revokes: None,
        };
        assert!(finish(&store, &names, &answer(Some(&flight))).await);
        assert_eq!(
            join(&store, &names, &new_flight_id()).await,
            JoinReply::Answer(b"answer".to_vec())
        );
        // A revocation: both copies go, the mark lasts its time.
        let revocation = Finish {
            flight: None,
            result: None,
            result_ttl: Duration::from_secs(2),
            memory: None,
            kept: None,
            revokes: Some(Duration::from_secs(600)),
        };
        assert!(finish(&store, &names, &revocation).await);
        let exists = |key: String| {
            let server = &server;
            async move { server.command(&["EXISTS", &key]).await }
        };
        assert_eq!(exists(names.answer.clone()).await, Value::Int(0));
        assert_eq!(exists(names.kept.clone()).await, Value::Int(0));
        let ttl = server.command(&["PTTL", &names.replaced]).await;
        assert!(matches!(ttl, Value::Int(ms) if ms > 590_000), "{ttl:?}");
        // An answer given before it, landing after: never copied.
        assert!(finish(&store, &names, &answer(None)).await);
        assert_eq!(exists(names.answer.clone()).await, Value::Int(0));
        assert_eq!(exists(names.kept.clone()).await, Value::Int(0));
        // A remembered answer is not served while the mark lasts, even one
        // written by hand.
        server.command(&["SET", &names.answer, "answer"]).await;
        assert_eq!(
            join(&store, &names, &new_flight_id()).await,
            JoinReply::Lead { replaced: true }
        );
        // A shorter revocation never shortens the mark.
        let shorter = Finish {
            revokes: Some(Duration::from_secs(5)),
            ..revocation
        };
        assert!(finish(&store, &names, &shorter).await);
        let ttl = server.command(&["PTTL", &names.replaced]).await;
        assert!(matches!(ttl, Value::Int(ms) if ms > 580_000), "{ttl:?}");
    }

    #[test]
    fn replies_read_back_and_strange_leases_match_nothing() {
        let follow = Value::Array(vec![
            Value::Int(4),
            Value::BulkString(b"hand-written".to_vec()),
            Value::Int(-1),
            Value::Int(0),
        ]);
        assert_eq!(
            JoinScript::reply(follow),
            Some(JoinReply::Follow {
                flight: "?".to_owned(),
                left: Duration::ZERO,
                replaced: false,
            })
        );
        let id = new_flight_id();
        let follow = Value::Array(vec![
            Value::Int(4),
            Value::BulkString(id.clone().into_bytes()),
            Value::Int(250),
            Value::Int(1),
        ]);
        assert_eq!(
            JoinScript::reply(follow),
            Some(JoinReply::Follow {
                flight: id,
                left: Duration::from_millis(250),
                replaced: true,
            })
        );
        assert_eq!(
            JoinScript::reply(Value::Array(vec![Value::Int(5), Value::Int(0)])),
            Some(JoinReply::Lead { replaced: false })
        );
        assert_eq!(JoinScript::reply(Value::Array(vec![Value::Int(5)])), None);
        assert_eq!(
            JoinScript::reply(Value::Array(vec![Value::Int(6)])),
            Some(JoinReply::Free)
        );
        assert_eq!(JoinScript::reply(Value::Int(5)), None);
        assert_eq!(
            FinishScript::reply(Value::Array(vec![Value::Int(0)])),
            Some(false)
        );
    }
}
