//! The bodies of `POST /api/publish` (one message, a JSON array of messages, or NDJSON) and
//! `POST /api/broadcast` (one message, many channels), parsed without I/O. In a batch every element
//! stands alone: a bad one is answered with its own error and does not stop the others.

use crate::message::Publish;
use crate::protocol::{check_channel, parse_priority};
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::time::Instant;

/// Most messages (or broadcast channels) in one request: a bigger request is refused whole (413),
/// so one request holds a shard for a bounded time and its answer stays small.
pub const MAX_BATCH: usize = 1000;

/// One element of a batch: the message, or why it was refused.
pub type Element = Result<Publish, String>;

/// What a publish request asks for.
#[derive(Debug)]
pub enum Body {
    /// The single-message form, answered by one object.
    One(Publish),
    /// A JSON array or NDJSON, answered element by element in the same form.
    Many(Vec<Element>),
}

/// Why a whole request is refused (400, or 413 for `TooMany`).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Malformed(String),
    TooMany(usize),
}

impl Refused {
    pub fn message(&self) -> String {
        match self {
            Refused::Malformed(m) => m.clone(),
            Refused::TooMany(n) => {
                format!("{n} elements; at most {MAX_BATCH} per request (split it)")
            }
        }
    }
}

/// A publish body: NDJSON when `ndjson` (the `Content-Type`), else a JSON array (a batch) or a
/// JSON object (one message, as before batches existed).
pub fn parse_body(body: &[u8], ndjson: bool, max_channel_len: usize) -> Result<Body, Refused> {
    if ndjson {
        return parse_ndjson(body, max_channel_len).map(Body::Many);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Refused::Malformed(format!("malformed JSON: {e}")))?;
    match v {
        Value::Array(items) => {
            if items.len() > MAX_BATCH {
                return Err(Refused::TooMany(items.len()));
            }
            let now = Instant::now();
            Ok(Body::Many(
                items
                    .into_iter()
                    .map(|v| message_from(v, max_channel_len, now))
                    .collect(),
            ))
        }
        v => message_from(v, max_channel_len, Instant::now())
            .map(Body::One)
            .map_err(Refused::Malformed),
    }
}

/// One JSON message per line; blank lines are skipped (a trailing newline is usual). A line that
/// is not valid JSON is an element of its own with its error.
fn parse_ndjson(body: &[u8], max_channel_len: usize) -> Result<Vec<Element>, Refused> {
    let now = Instant::now();
    let lines: Vec<&[u8]> = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .collect();
    if lines.len() > MAX_BATCH {
        return Err(Refused::TooMany(lines.len()));
    }
    Ok(lines
        .into_iter()
        .map(|line| {
            serde_json::from_slice::<Value>(line)
                .map_err(|e| format!("malformed JSON: {e}"))
                .and_then(|v| message_from(v, max_channel_len, now))
        })
        .collect())
}

/// `{"channel":..,"event":..,"id":..,"priority":..,"data":..}`; `data` is moved out, not copied.
fn message_from(v: Value, max_channel_len: usize, born: Instant) -> Result<Publish, String> {
    let Value::Object(mut obj) = v else {
        return Err("a message must be a JSON object".into());
    };
    let data = obj.remove("data").unwrap_or(Value::Null);
    let channel = obj
        .get("channel")
        .and_then(Value::as_str)
        .ok_or("channel (string) is required")?;
    check_channel(channel, max_channel_len)?;
    fields(&obj, channel.to_string(), data, born)
}

/// The fields every message has besides its channel and its `data`.
fn fields(
    obj: &Map<String, Value>,
    channel: String,
    data: Value,
    born: Instant,
) -> Result<Publish, String> {
    let opt_str = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("{k} must be a string")),
        }
    };
    Ok(Publish {
        channel,
        event: opt_str("event")?,
        id: opt_str("id")?,
        priority: parse_priority(obj.get("priority"))?,
        data,
        from: None,
        born,
        origin_ms: None,
    })
}

/// One channel of a broadcast: its name as given (for the answer) and its message or error.
pub type Target = (Value, Element);

/// `{"channels":[..],"event":..,"id":..,"priority":..,"data":..}`: the same message to each
/// channel. A bad channel name (or one named twice) is an element with its error; a bad `event`,
/// `id` or `priority` refuses the whole request, since it would be wrong for every channel.
pub fn parse_broadcast(body: &[u8], max_channel_len: usize) -> Result<Vec<Target>, Refused> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| Refused::Malformed(format!("malformed JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Refused::Malformed("body must be a JSON object".into()))?;
    let channels = obj
        .get("channels")
        .and_then(Value::as_array)
        .ok_or_else(|| Refused::Malformed("channels (array of strings) is required".into()))?;
    if channels.len() > MAX_BATCH {
        return Err(Refused::TooMany(channels.len()));
    }
    let now = Instant::now();
    let data = obj.get("data").cloned().unwrap_or(Value::Null);
    let template = fields(obj, String::new(), data, now).map_err(Refused::Malformed)?;
    let mut seen = HashSet::new();
    Ok(channels
        .iter()
        .map(|c| {
            let element = match c.as_str() {
                None => Err("a channel must be a string".to_string()),
                Some(name) => check_channel(name, max_channel_len).and_then(|()| {
                    if !seen.insert(name) {
                        return Err("channel named twice; published once".to_string());
                    }
                    let mut p = template.clone();
                    p.channel = name.to_string();
                    Ok(p)
                }),
            };
            (c.clone(), element)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn many(body: &str, ndjson: bool) -> Vec<Element> {
        match parse_body(body.as_bytes(), ndjson, 64) {
            Ok(Body::Many(v)) => v,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn an_object_is_one_message_and_an_array_a_batch() {
        let one = parse_body(br#"{"channel":"a","data":1}"#, false, 64);
        assert!(matches!(one, Ok(Body::One(p)) if p.channel == "a"));
        let v = many(
            r#"[{"channel":"a","event":"e","data":1}, 7, {"channel":""}, {"channel":"b","priority":9},
                {"channel":"c","priority":4,"id":"x"}]"#,
            false,
        );
        assert_eq!(v.len(), 5);
        assert_eq!(v[0].as_ref().unwrap().event.as_deref(), Some("e"));
        assert!(v[1].as_ref().unwrap_err().contains("JSON object"));
        assert!(v[2].as_ref().unwrap_err().contains("empty"));
        assert!(v[3].as_ref().unwrap_err().contains("priority"));
        let c = v[4].as_ref().unwrap();
        assert_eq!((c.priority, c.id.as_deref()), (4, Some("x")));
        assert!(many("[]", false).is_empty());
        assert!(matches!(
            parse_body(b"[{", false, 64),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(
            parse_body(b"5", false, 64),
            Err(Refused::Malformed(_))
        ));
    }

    #[test]
    fn ndjson_lines_stand_alone() {
        let v = many(
            "{\"channel\":\"a\",\"data\":1}\n\n{oops\r\n[1]\n  {\"channel\":\"b\"}\r\n",
            true,
        );
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].as_ref().unwrap().channel, "a");
        assert!(v[1].as_ref().unwrap_err().contains("malformed JSON"));
        assert!(v[2].as_ref().unwrap_err().contains("JSON object"));
        assert_eq!(v[3].as_ref().unwrap().channel, "b");
        assert!(many("", true).is_empty());
    }

    #[test]
    fn more_than_the_bound_is_refused_whole() {
        let at = format!("[{}]", vec!["{\"channel\":\"a\"}"; MAX_BATCH].join(","));
        assert_eq!(many(&at, false).len(), MAX_BATCH);
        let over = format!("[{}]", vec!["1"; MAX_BATCH + 1].join(","));
        assert_eq!(
            parse_body(over.as_bytes(), false, 64).unwrap_err(),
            Refused::TooMany(MAX_BATCH + 1)
        );
        let lines = "{}\n".repeat(MAX_BATCH + 1);
        assert_eq!(
            parse_body(lines.as_bytes(), true, 64).unwrap_err(),
            Refused::TooMany(MAX_BATCH + 1)
        );
        let chans = format!(
            "{{\"channels\":[{}]}}",
            vec!["\"a\""; MAX_BATCH + 1].join(",")
        );
        assert_eq!(
            parse_broadcast(chans.as_bytes(), 64).unwrap_err(),
            Refused::TooMany(MAX_BATCH + 1)
        );
    }

    #[test]
    fn broadcast_copies_the_message_per_channel() {
        let t = parse_broadcast(
            br#"{"channels":["a","b",5,"a","has space"],"event":"e","priority":2,"data":{"x":1}}"#,
            64,
        )
        .unwrap();
        assert_eq!(t.len(), 5);
        for (i, name) in [(0, "a"), (1, "b")] {
            let p = t[i].1.as_ref().unwrap();
            assert_eq!(p.channel, name);
            assert_eq!((p.event.as_deref(), p.priority), (Some("e"), 2));
            assert_eq!(p.data, serde_json::json!({"x": 1}));
        }
        assert!(t[2].1.as_ref().unwrap_err().contains("string"));
        assert!(t[3].1.as_ref().unwrap_err().contains("twice"));
        assert!(t[4].1.as_ref().unwrap_err().contains("whitespace"));
        assert_eq!(t[2].0, serde_json::json!(5));
        for bad in [
            &br#"{"channels":"a"}"#[..],
            br#"{"data":1}"#,
            br#"{"channels":["a"],"priority":0}"#,
            br#"{"channels":["a"],"event":3}"#,
            b"[]",
        ] {
            assert!(matches!(
                parse_broadcast(bad, 64),
                Err(Refused::Malformed(_))
            ));
        }
    }
}
