//! Decoding the scripts' replies.

use redis::{ErrorKind, Value};

use crate::rate_limit::store::Refusal;
use crate::store::redis::RedisError;

pub(super) fn unexpected(operation: &'static str, what: String) -> RedisError {
    RedisError::Command {
        operation,
        source: redis::RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unexpected reply from a rate-limit script",
            what,
        )),
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn text(value: &Value) -> Option<&str> {
    match value {
        Value::BulkString(bytes) => std::str::from_utf8(bytes).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A time from a script (never negative).
pub(super) fn time(n: i64) -> u64 {
    n.max(0) as u64
}

/// What the admission script answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answer {
    Admitted { remaining: u32, id: u64, stamp: u64 },
    Refused { retry_at: u64, reason: Refusal },
}

pub(super) fn decode_acquire(reply: &[Value]) -> Result<(u64, Answer), RedisError> {
    const OP: &str = "rate-limit acquire";
    let bad = |what: &str| unexpected(OP, format!("{what} in {reply:?}"));
    let tag = reply.first().and_then(text).ok_or_else(|| bad("no tag"))?;
    let num = |i: usize| reply.get(i).and_then(int).ok_or_else(|| bad("no number"));
    let now = time(num(1)?);
    let answer = match tag {
        "admitted" => Answer::Admitted {
            remaining: u32::try_from(num(2)?).unwrap_or(u32::MAX),
            id: time(num(3)?),
            stamp: time(num(4)?),
        },
        "refused" => Answer::Refused {
            retry_at: time(num(2)?),
            reason: match reply.get(3).and_then(text) {
                Some("server_blocked") => Refusal::ServerBlocked,
                Some("server_budget") => Refusal::ServerBudget,
                Some("limit") => Refusal::Limit,
                Some("background_share") => Refusal::BackgroundShare,
                Some("background_paused") => Refusal::BackgroundPaused,
                Some("in_flight") => Refusal::InFlight,
                _ => return Err(bad("no reason")),
            },
        },
        _ => return Err(bad("unknown tag")),
    };
    Ok((now, answer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decode_or_fail_with_a_typed_error() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        assert_eq!(
            decode_acquire(&[
                bulk("admitted"),
                Value::Int(1000),
                Value::Int(-1),
                Value::Int(7),
                Value::Int(61_000)
            ])
            .unwrap(),
            (
                1000,
                Answer::Admitted {
                    remaining: u32::MAX,
                    id: 7,
                    stamp: 61_000
                }
            )
        );
        assert_eq!(
            decode_acquire(&[
                bulk("refused"),
                Value::Int(1000),
                Value::Int(2001),
                bulk("in_flight")
            ])
            .unwrap(),
            (
                1000,
                Answer::Refused {
                    retry_at: 2001,
                    reason: Refusal::InFlight
                }
            )
        );
        // A reply of an older script (no id): a typed error, not a panic.
        assert!(decode_acquire(&[bulk("admitted"), Value::Int(1000), Value::Int(-1)]).is_err());
        assert_eq!(
            decode_acquire(&[
                bulk("refused"),
                Value::Int(1000),
                Value::Int(2001),
                bulk("background_share")
            ])
            .unwrap(),
            (
                1000,
                Answer::Refused {
                    retry_at: 2001,
                    reason: Refusal::BackgroundShare
                }
            )
        );
        let err = decode_acquire(&[bulk("refused"), Value::Int(1), Value::Int(2), bulk("?")])
            .unwrap_err();
        assert_eq!(err.code(), "redis_command");
        assert!(decode_acquire(&[Value::Int(3)]).is_err());
    }
}
