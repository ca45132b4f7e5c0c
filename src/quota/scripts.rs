//! The replies of the fleet's scripts on Redis: the limiter's
//! (`gcra.lua`) and the announcements' (`announce.lua`), read back into
//! what the gate acts on. A reply a script does not give reads as `None`.

use redis::Value;

use super::gcra::{self, Turn};
use crate::store::LuaScript;

/// The limiter's script (`src/gcra.lua`): KEYS and ARGV as
/// [`Params::script_args`] orders them.
pub(super) struct LimiterScript(pub(super) LuaScript);

impl LimiterScript {
    /// What the script answered; `None` if the reply is not one it gives.
    pub(super) fn reply(reply: Value) -> Option<LimiterReply> {
        let Value::Array(items) = reply else {
            return None;
        };
        let [Value::Int(code), Value::Int(micros), Value::Int(milli_rate)] = items.as_slice()
        else {
            return None;
        };
        let after = gcra::from_micros(*micros as f64);
        let rate = *milli_rate as f64 / 1000.0;
        match code {
            0 => Some(LimiterReply::Turn(Turn::Refused(after), rate)),
            1 => Some(LimiterReply::Turn(Turn::Go(after), rate)),
            2 | 3 => Some(LimiterReply::Rate(rate)),
            _ => None,
        }
    }
}

/// The limiter script's reply, with the fleet's rate per second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum LimiterReply {
    /// A take's answer.
    Turn(Turn, f64),
    /// A throttle's or spent turns' acknowledgement.
    Rate(f64),
}

/// The announcement script (`src/announce.lua`).
pub(super) struct AnnounceScript(pub(super) LuaScript);

impl AnnounceScript {
    /// The fleet's size, if the reply is the script's.
    pub(super) fn reply(reply: Value) -> Option<u32> {
        match reply {
            Value::Array(items) => match items.as_slice() {
                [Value::Int(size)] => Some(u32::try_from(*size).unwrap_or(1).max(1)),
                _ => None,
            },
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_replies_of_the_scripts_read_back() {
        let reply = Value::Array(vec![Value::Int(1), Value::Int(2500), Value::Int(40_000)]);
        assert_eq!(
            LimiterScript::reply(reply),
            Some(LimiterReply::Turn(
                Turn::Go(Duration::from_micros(2500)),
                40.0
            ))
        );
        let reply = Value::Array(vec![Value::Int(0), Value::Int(100_000), Value::Int(20_000)]);
        assert_eq!(
            LimiterScript::reply(reply),
            Some(LimiterReply::Turn(
                Turn::Refused(Duration::from_millis(100)),
                20.0
            ))
        );
        let reply = Value::Array(vec![Value::Int(3), Value::Int(0), Value::Int(20_000)]);
        assert_eq!(LimiterScript::reply(reply), Some(LimiterReply::Rate(20.0)));
        assert_eq!(
            LimiterScript::reply(Value::Array(vec![Value::Int(1)])),
            None
        );
        assert_eq!(
            AnnounceScript::reply(Value::Array(vec![Value::Int(3)])),
            Some(3)
        );
        assert_eq!(AnnounceScript::reply(Value::Int(3)), None);
    }
}
