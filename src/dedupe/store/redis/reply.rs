//! Decoding the replies of the dedupe scripts: what the read part of a script found.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use redis::{ErrorKind, Value};

use crate::dedupe::SharedResponse;
use crate::store::redis::RedisError;
use crate::time::Timestamp;

use super::super::{Completion, KeyState, decode_headers};

pub(super) const RESPONSE: &str = "r";
pub(super) const FAILED: &str = "f";
pub(super) const TOO_LARGE: &str = "t";

/// What a script found.
pub(super) enum Found {
    /// What `read` (in `prelude.lua`) found.
    State(KeyState),
    /// The lead step led the key.
    Acquired {
        /// Whether it took over an expired lease.
        takeover: bool,
    },
}

pub(super) fn unexpected(operation: &'static str, what: String) -> RedisError {
    RedisError::Command {
        operation,
        source: redis::RedisError::from((
            ErrorKind::UnexpectedReturnType,
            "unexpected reply from a dedupe script",
            what,
        )),
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => text(other)?.parse().ok(),
    }
}

fn bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

/// A time a script read or wrote (ms since the epoch; the epoch for negative values).
fn stamp(ms: i64) -> Timestamp {
    Timestamp::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// Decodes the reply of `read()` or of the lead step.
pub(super) fn decode(operation: &'static str, reply: Vec<Value>) -> Result<Found, RedisError> {
    let bad = |what: &str| unexpected(operation, format!("{what} in {reply:?}"));
    let tag = reply.first().and_then(text).ok_or_else(|| bad("no tag"))?;
    let num = |i: usize| reply.get(i).and_then(int).ok_or_else(|| bad("no number"));
    let age = |i: usize| Ok::<_, RedisError>(stamp(num(1)?).saturating_since(stamp(num(i)?)));
    let owner = || reply.get(2).and_then(text).ok_or_else(|| bad("no owner"));
    Ok(Found::State(match tag.as_str() {
        "vacant" => KeyState::Vacant,
        "acquired" => {
            return Ok(Found::Acquired {
                takeover: num(2)? == 1,
            });
        }
        "pending" => KeyState::Pending {
            owner: owner()?,
            age: age(3)?,
        },
        "expired" => KeyState::Expired {
            owner: owner()?,
            age: age(3)?,
        },
        "done" => {
            let kind = reply.get(2).and_then(text).ok_or_else(|| bad("no kind"))?;
            let status = reply
                .get(5)
                .and_then(text)
                .and_then(|s| s.parse::<u16>().ok());
            let mut rest = reply.clone().into_iter().skip(6);
            let mut next = || rest.next().and_then(bytes).ok_or_else(|| bad("no field"));
            let (headers, body, error) = (next()?, next()?, next()?);
            let completion = match kind.as_str() {
                RESPONSE => {
                    let code = status
                        .and_then(|s| StatusCode::from_u16(s).ok())
                        .ok_or_else(|| bad("bad status"))?;
                    let headers = decode_headers(&headers).ok_or_else(|| bad("bad headers"))?;
                    Completion::Response(Arc::new(SharedResponse::new(
                        code,
                        headers,
                        Bytes::from(body),
                    )))
                }
                FAILED => Completion::Failed(String::from_utf8_lossy(&error).into()),
                TOO_LARGE => Completion::TooLarge,
                _ => return Err(bad("unknown kind")),
            };
            KeyState::Completed {
                completion,
                age: age(3)?,
                expires_in: Duration::from_millis(u64::try_from(num(4)?).unwrap_or(0)),
            }
        }
        _ => return Err(bad("unknown tag")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_malformed_reply_is_a_typed_error() {
        let err = decode("dedupe poll", vec![Value::Int(3)]).err().unwrap();
        assert_eq!(err.code(), "redis_command");
        let done = decode(
            "dedupe poll",
            vec![
                Value::BulkString(b"done".to_vec()),
                Value::Int(10),
                Value::BulkString(b"f".to_vec()),
                Value::BulkString(b"4".to_vec()),
                Value::Int(900),
                Value::BulkString(Vec::new()),
                Value::BulkString(Vec::new()),
                Value::BulkString(Vec::new()),
                Value::BulkString(b"boom".to_vec()),
            ],
        )
        .ok()
        .unwrap();
        assert!(matches!(
            done,
            Found::State(KeyState::Completed {
                completion: Completion::Failed(m),
                age,
                expires_in,
            }) if &*m == "boom" && age == Duration::from_millis(6) && expires_in == Duration::from_millis(900)
        ));
    }
}
