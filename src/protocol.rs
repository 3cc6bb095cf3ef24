//! The JSON frames of the client contract (docs/protocol.md): requests parsed from clients, replies and
//! messages serialized for them.

use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// A request from a client, as received. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
pub struct Request {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub id: Value,
    pub channel: Option<String>,
    pub filter: Option<Value>,
    pub since: Option<String>,
    pub event: Option<String>,
    pub data: Option<Value>,
    pub priority: Option<Value>,
    /// A new token (`refresh`).
    pub token: Option<String>,
    /// `subscribe`: receive `join` / `leave` frames of a channel with presence.
    pub join_leave: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Forbidden,
    NotFound,
    LimitExceeded,
    Internal,
    /// A later request on the same channel superseded this one before it completed.
    Canceled,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Internal => "internal",
            ErrorCode::Canceled => "canceled",
        }
    }
}

/// An error reply's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// `filter`: for every key, the message's `data` must hold one of the listed values.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter(BTreeMap<String, Vec<Value>>);

impl Filter {
    pub fn parse(v: &Value) -> Result<Filter, String> {
        let obj = v
            .as_object()
            .ok_or("filter must be an object of key -> array of values")?;
        let mut out = BTreeMap::new();
        for (k, vals) in obj {
            let arr = vals
                .as_array()
                .ok_or_else(|| format!("filter.{k} must be an array of values"))?;
            if arr.iter().any(|v| v.is_object() || v.is_array()) {
                return Err(format!(
                    "filter.{k} must list strings, numbers, booleans or null"
                ));
            }
            out.insert(k.clone(), arr.clone());
        }
        Ok(Filter(out))
    }

    pub fn matches(&self, data: &Value) -> bool {
        let Some(obj) = data.as_object() else {
            return self.0.is_empty();
        };
        self.0
            .iter()
            .all(|(k, allowed)| obj.get(k).is_some_and(|v| allowed.contains(v)))
    }
}

/// Validates a publish priority: 1 critical .. 4 low, default 3.
pub fn parse_priority(v: Option<&Value>) -> Result<u8, String> {
    match v {
        None | Some(Value::Null) => Ok(3),
        Some(v) => match v.as_u64() {
            Some(p @ 1..=4) => Ok(p as u8),
            _ => Err("priority must be 1, 2, 3 or 4".into()),
        },
    }
}

/// Checks a channel name: non-empty, bounded, printable, no whitespace.
pub fn check_channel(name: &str, max_len: usize) -> Result<(), String> {
    if name.is_empty() {
        return Err("channel must not be empty".into());
    }
    if name.len() > max_len {
        return Err(format!("channel name longer than {max_len} bytes"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("channel name must not contain whitespace or control characters".into());
    }
    Ok(())
}

pub fn welcome(conn_id: &str, user: &str, shard: usize, heartbeat_ms: u64, exp: u64) -> String {
    json!({
        "type": "welcome",
        "conn_id": conn_id,
        "user": user,
        "shard": shard,
        "heartbeat_ms": heartbeat_ms,
        "expires": exp,
        "channels": [format!("user:{user}"), crate::topology::BROADCAST],
    })
    .to_string()
}

pub fn reply_ok(id: &Value, extra: Option<(&str, Value)>) -> String {
    let mut m = Map::new();
    m.insert("type".into(), "reply".into());
    m.insert("id".into(), id.clone());
    m.insert("ok".into(), true.into());
    if let Some((k, v)) = extra {
        m.insert(k.into(), v);
    }
    Value::Object(m).to_string()
}

pub fn reply_err(id: &Value, r: &Refusal) -> String {
    json!({
        "type": "reply",
        "id": id,
        "ok": false,
        "error": {"code": r.code.as_str(), "message": r.message},
    })
    .to_string()
}

/// The token expires soon: send `refresh` with a new one.
pub fn refresh_due(exp: u64) -> String {
    json!({"type": "refresh_due", "expires": exp}).to_string()
}

/// A subscription ended by the gateway (a refreshed token no longer allows it).
pub fn unsubscribed(channel: &str, reason: &str) -> String {
    json!({"type": "unsubscribed", "channel": channel, "reason": reason}).to_string()
}

/// The answer to `presence` (with `members`) or `presence_stats` (without).
pub fn presence_reply(
    id: &Value,
    channel: &str,
    users: usize,
    conns: u64,
    members: Option<&[(std::sync::Arc<str>, u32)]>,
    truncated: bool,
) -> String {
    let mut m = Map::new();
    m.insert("type".into(), "reply".into());
    m.insert("id".into(), id.clone());
    m.insert("ok".into(), true.into());
    m.insert("channel".into(), channel.into());
    m.insert("users".into(), users.into());
    m.insert("conns".into(), conns.into());
    if let Some(list) = members {
        let obj: Map<String, Value> = list
            .iter()
            .map(|(u, n)| (u.to_string(), Value::from(*n)))
            .collect();
        m.insert("members".into(), Value::Object(obj));
        if truncated {
            m.insert("truncated".into(), true.into());
        }
    }
    Value::Object(m).to_string()
}

/// A batch of users joining (`kind` = "join") or leaving ("leave") a channel.
pub fn presence_event(kind: &str, channel: &str, users: &[std::sync::Arc<str>]) -> String {
    let users: Vec<&str> = users.iter().map(|u| &**u).collect();
    json!({"type": kind, "channel": channel, "users": users}).to_string()
}

pub fn pong(id: &Value) -> String {
    json!({"type": "pong", "id": id}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_semantics() {
        let f =
            Filter::parse(&json!({"device_id": ["s-1", "s-2"], "severity": ["critical"]})).unwrap();
        assert!(f.matches(&json!({"device_id": "s-1", "severity": "critical", "x": 1})));
        assert!(!f.matches(&json!({"device_id": "s-3", "severity": "critical"})));
        assert!(!f.matches(&json!({"device_id": "s-1"})));
        assert!(!f.matches(&json!("text")));
        assert!(Filter::parse(&json!({"a": "b"})).is_err());
        assert!(Filter::parse(&json!([1])).is_err());
        let n = Filter::parse(&json!({"level": [1, 2]})).unwrap();
        assert!(n.matches(&json!({"level": 2})));
        assert!(!n.matches(&json!({"level": "2"})));
    }

    #[test]
    fn priorities_and_channels() {
        assert_eq!(parse_priority(None), Ok(3));
        assert_eq!(parse_priority(Some(&json!(4))), Ok(4));
        assert!(parse_priority(Some(&json!(0))).is_err());
        assert!(parse_priority(Some(&json!("1"))).is_err());
        assert!(check_channel("room_1", 10).is_ok());
        assert!(check_channel("", 10).is_err());
        assert!(check_channel("a b", 10).is_err());
        assert!(check_channel(&"x".repeat(11), 10).is_err());
    }
}
