//! Kafka records to messages, as the contract says: key = channel with optional headers `event`,
//! `id`, `priority` (and `user` for client publishes) and the value as `data`; or no key and a value
//! that is a whole envelope. JSON is parsed with simd-json.

use crate::message::Publish;
use crate::protocol::{check_channel, parse_priority};
use rskafka::record::Record;
use serde_json::Value;
use std::time::Instant;

/// Why a record cannot be routed; the label goes into the dead-letter header and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: &'static str,
    pub detail: String,
}

fn reject(reason: &'static str, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

pub const REASONS: [&str; 5] = [
    "bad_key",
    "bad_header",
    "bad_json",
    "bad_envelope",
    "bad_priority",
];

/// Deepest nesting accepted in `data`: the message wraps `data` in one object, and serde_json (in
/// many clients, and the gateway's own parser for client and HTTP publishes) refuses 128 levels.
pub const MAX_DATA_DEPTH: usize = 126;

/// Whether the JSON text nests arrays and objects deeper than `max`. Checked before parsing, so a
/// hostile record costs one pass and cannot recurse deeply in the parser or in `Value`'s drop.
fn nests_deeper_than(bytes: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn parse_json(bytes: &[u8], max_depth: usize) -> Result<Value, Reject> {
    if nests_deeper_than(bytes, max_depth) {
        return Err(reject(
            "bad_json",
            format!("JSON nested deeper than {max_depth} levels"),
        ));
    }
    // simd-json parses in place, so it works on a copy.
    let mut buf = bytes.to_vec();
    simd_json::serde::from_slice::<Value>(&mut buf).map_err(|e| reject("bad_json", e.to_string()))
}

fn header<'a>(rec: &'a Record, name: &str) -> Result<Option<&'a str>, Reject> {
    match rec.headers.get(name) {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .map(Some)
            .map_err(|_| reject("bad_header", format!("header {name} is not UTF-8"))),
    }
}

/// Decodes one record. `max_channel_len` bounds channel names as for clients.
pub fn decode(rec: &Record, max_channel_len: usize) -> Result<Publish, Reject> {
    let origin_ms = u64::try_from(rec.timestamp.timestamp_millis()).ok();
    let from = header(rec, "user")?.map(str::to_string);
    if let Some(key) = &rec.key {
        let channel =
            std::str::from_utf8(key).map_err(|_| reject("bad_key", "key is not UTF-8"))?;
        check_channel(channel, max_channel_len).map_err(|m| reject("bad_key", m))?;
        let priority = match header(rec, "priority")? {
            None => 3,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n @ 1..=4) => n,
                _ => return Err(reject("bad_priority", format!("priority header {p:?}"))),
            },
        };
        let data = match rec.value.as_deref() {
            None | Some([]) => Value::Null,
            Some(v) => parse_json(v, MAX_DATA_DEPTH)?,
        };
        return Ok(Publish {
            channel: channel.to_string(),
            event: header(rec, "event")?.map(str::to_string),
            id: header(rec, "id")?.map(str::to_string),
            priority,
            data,
            from,
            born: Instant::now(),
            origin_ms,
        });
    }
    let value = rec
        .value
        .as_deref()
        .ok_or_else(|| reject("bad_envelope", "no key and no value"))?;
    let mut env = match parse_json(value, MAX_DATA_DEPTH + 1)? {
        Value::Object(m) => m,
        _ => {
            return Err(reject(
                "bad_envelope",
                "no key, and the value is not an object",
            ))
        }
    };
    let channel = match env.remove("channel") {
        Some(Value::String(c)) => c,
        _ => return Err(reject("bad_envelope", "envelope has no channel string")),
    };
    check_channel(&channel, max_channel_len).map_err(|m| reject("bad_envelope", m))?;
    let mut string = |k: &str| match env.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(reject(
            "bad_envelope",
            format!("envelope {k} must be a string"),
        )),
    };
    let event = string("event")?;
    let id = string("id")?;
    let priority = parse_priority(env.get("priority")).map_err(|m| reject("bad_priority", m))?;
    Ok(Publish {
        channel,
        event,
        id,
        priority,
        data: env.remove("data").unwrap_or(Value::Null),
        from,
        born: Instant::now(),
        origin_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn rec(key: Option<&str>, value: Option<&str>, headers: &[(&str, &[u8])]) -> Record {
        Record {
            key: key.map(|k| k.as_bytes().to_vec()),
            value: value.map(|v| v.as_bytes().to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_vec()))
                .collect::<BTreeMap<_, _>>(),
            timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
        }
    }

    #[test]
    fn keyed_records() {
        let p = decode(
            &rec(
                Some("room_1"),
                Some(r#"{"t":1}"#),
                &[("event", b"chat"), ("priority", b"2")],
            ),
            100,
        )
        .unwrap();
        assert_eq!(p.channel, "room_1");
        assert_eq!(p.event.as_deref(), Some("chat"));
        assert_eq!(p.priority, 2);
        assert_eq!(p.data["t"], 1);
        assert_eq!(p.origin_ms, Some(1_700_000_000_000));
        assert_eq!(
            decode(&rec(Some("c"), None, &[]), 100).unwrap().data,
            Value::Null
        );
        let bad = |r: Record| decode(&r, 100).unwrap_err().reason;
        assert_eq!(bad(rec(Some("c"), Some("{nope"), &[])), "bad_json");
        assert_eq!(bad(rec(Some("a b"), Some("1"), &[])), "bad_key");
        assert_eq!(
            bad(rec(Some("c"), Some("1"), &[("priority", b"9")])),
            "bad_priority"
        );
        assert_eq!(
            bad(rec(Some("c"), Some("1"), &[("event", b"\xff")])),
            "bad_header"
        );
    }

    #[test]
    fn envelopes() {
        let p = decode(
            &rec(
                None,
                Some(r#"{"channel":"c","event":"e","id":"x","priority":1,"data":[1]}"#),
                &[],
            ),
            100,
        )
        .unwrap();
        assert_eq!((p.channel.as_str(), p.priority), ("c", 1));
        assert_eq!(p.id.as_deref(), Some("x"));
        assert_eq!(p.data, serde_json::json!([1]));
        let bad = |r: Record| decode(&r, 100).unwrap_err().reason;
        assert_eq!(bad(rec(None, None, &[])), "bad_envelope");
        assert_eq!(bad(rec(None, Some("[1]"), &[])), "bad_envelope");
        assert_eq!(bad(rec(None, Some(r#"{"data":1}"#), &[])), "bad_envelope");
        assert_eq!(
            bad(rec(None, Some(r#"{"channel":"c","priority":7}"#), &[])),
            "bad_priority"
        );
    }

    #[test]
    fn nesting_is_bounded_as_for_serde_json_clients() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let ok = decode(&rec(Some("c"), Some(&nested(MAX_DATA_DEPTH)), &[]), 100).unwrap();
        // Wrapped in the message envelope, the deepest accepted data still parses with serde_json.
        let msg = serde_json::json!({ "data": ok.data }).to_string();
        assert!(serde_json::from_str::<Value>(&msg).is_ok());
        let deep = decode(&rec(Some("c"), Some(&nested(MAX_DATA_DEPTH + 1)), &[]), 100);
        assert_eq!(deep.unwrap_err().reason, "bad_json");
        let env = format!(r#"{{"channel":"c","data":{}}}"#, nested(MAX_DATA_DEPTH));
        assert!(decode(&rec(None, Some(&env), &[]), 100).is_ok());
        let env = format!(r#"{{"channel":"c","data":{}}}"#, nested(MAX_DATA_DEPTH + 1));
        assert_eq!(
            decode(&rec(None, Some(&env), &[]), 100).unwrap_err().reason,
            "bad_json"
        );
        // Brackets inside strings (escaped quotes included) do not count.
        let text = format!(r#"["\"{}"]"#, "[".repeat(500));
        assert!(decode(&rec(Some("c"), Some(&text), &[]), 100).is_ok());
        // An escaped backslash ends before the quote: the next string's brackets do not count
        // either, and the brackets after it do.
        let text = format!(r#"["\\", "{}"]"#, "[".repeat(500));
        assert!(decode(&rec(Some("c"), Some(&text), &[]), 100).is_ok());
        let text = format!(r#"["\\", {}]"#, nested(MAX_DATA_DEPTH));
        assert_eq!(
            decode(&rec(Some("c"), Some(&text), &[]), 100)
                .unwrap_err()
                .reason,
            "bad_json"
        );
        // A million levels is refused without recursing.
        let huge = decode(&rec(Some("c"), Some(&nested(1_000_000)), &[]), 100);
        assert_eq!(huge.unwrap_err().reason, "bad_json");
    }
}
