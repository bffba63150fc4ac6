//! Decoding the replies of the dedupe scripts: what the read part of a script found.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use redis::{ErrorKind, Value};

use crate::dedupe::SharedResponse;
use crate::store::redis::RedisError;

use super::super::{Completion, decode_headers};

pub(super) const RESPONSE: &str = "r";
pub(super) const FAILED: &str = "f";
pub(super) const TOO_LARGE: &str = "t";

/// What the read part of a script found.
pub(super) enum Found {
    Done(Completion),
    Pending {
        now: i64,
        owner: String,
        started: i64,
    },
    Expired,
    Vacant,
    Acquired {
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

/// Decodes the reply of `read()` or of the lead step.
pub(super) fn decode(operation: &'static str, reply: Vec<Value>) -> Result<Found, RedisError> {
    let bad = |what: &str| unexpected(operation, format!("{what} in {reply:?}"));
    let tag = reply.first().and_then(text).ok_or_else(|| bad("no tag"))?;
    let num = |i: usize| reply.get(i).and_then(int).ok_or_else(|| bad("no number"));
    Ok(match tag.as_str() {
        "vacant" => Found::Vacant,
        "acquired" => Found::Acquired {
            takeover: num(2)? == 1,
        },
        "pending" => Found::Pending {
            now: num(1)?,
            owner: reply.get(2).and_then(text).ok_or_else(|| bad("no owner"))?,
            started: num(3)?,
        },
        "expired" => Found::Expired,
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
            Found::Done(completion)
        }
        _ => return Err(bad("unknown tag")),
    })
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
        assert!(matches!(done, Found::Done(Completion::Failed(m)) if &*m == "boom"));
    }
}
