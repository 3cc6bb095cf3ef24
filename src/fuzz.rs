//! Entry points for the fuzz targets (`fuzz/`) and for replaying their corpora in `cargo test`
//! (tests/fuzz_corpora.rs). Each runs the gateway's own parsing code on arbitrary bytes and asserts
//! what must hold for any input; a panic is a finding.

use crate::accept::request as handshake;
use crate::auth::Verifier;
use crate::config::{AuthConfig, Config};
use crate::kafka::{self, decode};
use crate::message::{Frame, Msg};
use crate::protocol::{self, check_channel, ErrorCode, Filter, Refusal, Request};
use crate::session::{self, Io};
use crate::topology;
use rskafka::record::Record;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use tungstenite::error::Error as WsError;
use tungstenite::protocol::{Role, WebSocketContext};
use tungstenite::Message;

const SECRET: &str = "fuzz-secret";

fn config() -> &'static Config {
    static CFG: OnceLock<Config> = OnceLock::new();
    CFG.get_or_init(Config::default)
}

/// An upgrade request as the handshake reads it: parsed, and any refusal answered with a
/// well-formed HTTP response.
pub fn handshake_request(data: &[u8]) {
    match handshake::parse(data, "/ws") {
        Ok(Some((up, len))) => {
            assert!(len <= data.len());
            assert_eq!(up.leftover, &data[len..]);
            assert_eq!(up.key.len(), 24);
            // Any offer is answered with a response header value, or declined.
            if let Some((agreed, response)) = crate::deflate::negotiate(&up.extensions, 0) {
                assert!((8..=15).contains(&agreed.window_bits));
                assert!(response.is_ascii() && !response.contains(['\r', '\n']));
            }
        }
        Ok(None) => {}
        Err(refusal) => {
            assert!((400..500).contains(&refusal.status), "{refusal:?}");
            let text = handshake::response(&refusal);
            let mut headers = [httparse::EMPTY_HEADER; 8];
            let mut resp = httparse::Response::new(&mut headers);
            let parsed = resp.parse(text.as_bytes());
            assert!(
                matches!(parsed, Ok(httparse::Status::Complete(_))),
                "refusal is not a complete HTTP response: {text:?}"
            );
            assert_eq!(resp.code, Some(refusal.status));
        }
    }
}

/// Bytes from a client after the upgrade: tungstenite's codec with the session's limits, then every
/// text message through the request parsing the session does.
pub fn client_frames(data: &[u8]) {
    let cfg = config();
    let mut ws = WebSocketContext::new(Role::Server, Some(session::ws_config(cfg)));
    let mut out = Vec::new();
    let mut io = Io {
        input: data,
        output: &mut out,
    };
    loop {
        match ws.read(&mut io) {
            Ok(Message::Text(text)) => client_request(text.as_str()),
            // As a compressed message: inflated within the limit, or refused.
            Ok(Message::Binary(data)) => {
                if let Ok(raw) = crate::deflate::inflate(&data, cfg.limits.max_frame_bytes) {
                    assert!(raw.len() <= cfg.limits.max_frame_bytes);
                }
            }
            Ok(_) => {}
            Err(WsError::Io(_)) | Err(WsError::ConnectionClosed) | Err(WsError::AlreadyClosed) => {
                break
            }
            // A protocol, UTF-8 or size error closes the connection: nothing more is read.
            Err(_) => break,
        }
    }
}

/// One text frame from a client, checked as the session checks it; every answer is valid JSON.
pub fn client_request(text: &str) {
    let cfg = config();
    let req: Request = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let id = session::request_id(text);
            let refusal = Refusal::new(ErrorCode::BadRequest, format!("malformed request: {e}"));
            assert_json(&protocol::reply_err(&id, &refusal));
            return;
        }
    };
    if let Some(ch) = &req.channel {
        if let Err(m) = check_channel(ch, cfg.limits.max_channel_len) {
            assert_json(&protocol::reply_err(
                &req.id,
                &Refusal::new(ErrorCode::BadRequest, m),
            ));
        }
    }
    if let Some(f) = &req.filter {
        if let Ok(filter) = Filter::parse(f) {
            filter.matches(req.data.as_ref().unwrap_or(&Value::Null));
        }
    }
    let _ = protocol::parse_priority(req.priority.as_ref());
    if let Some(since) = &req.since {
        if let Some((_, partition, offset)) = kafka::parse_pos(since) {
            assert!(partition >= 0 && offset >= 0);
        }
        let _ = topology::parse_pos(since);
    }
    assert_json(&protocol::reply_ok(&req.id, None));
    assert_json(&protocol::pong(&req.id));
}

fn assert_json(text: &str) {
    if let Err(e) = serde_json::from_str::<Value>(text) {
        panic!("reply is not JSON ({e}): {text:?}");
    }
}

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        let cfg = AuthConfig {
            jwt_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        };
        Verifier::from_config(&cfg).expect("HS256 verifier")
    })
}

/// The JWT path. Input starting with `{` is a claims object, signed with the right key so the
/// claim checks run; anything else is a token as a client sends it, which cannot carry a valid
/// signature and so must be refused.
pub fn jwt(data: &[u8]) {
    if data.first() == Some(&b'{') {
        let Ok(claims) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        let Ok(token) = jsonwebtoken::encode(&header, &claims, &key) else {
            return;
        };
        if let Ok(c) = verifier().verify(&token) {
            assert!(!c.sub.is_empty());
            assert_eq!(c.user_channel(), format!("user:{}", c.sub));
            let _ = c.may_subscribe("room:1") && c.may_publish("room:1");
        }
        return;
    }
    let token = String::from_utf8_lossy(data);
    if let Ok(c) = verifier().verify(&token) {
        panic!("an unsigned token was accepted: {c:?}");
    }
}

/// A Kafka record as the consumer hands it over: decoded, then routed and serialized as the owner
/// shard does. Input: `key NUL value NUL header NUL header...`, headers as `name:value`; an empty
/// key is no key, a missing value part is no value.
pub fn kafka_record(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let key = parts.next().filter(|k| !k.is_empty()).map(<[u8]>::to_vec);
    let value = parts.next().map(<[u8]>::to_vec);
    let mut headers = BTreeMap::new();
    for h in parts {
        let (name, value) = match h.iter().position(|b| *b == b':') {
            Some(i) => (&h[..i], &h[i + 1..]),
            None => (h, &[][..]),
        };
        headers.insert(String::from_utf8_lossy(name).into_owned(), value.to_vec());
    }
    let millis = i64::try_from(data.len()).unwrap_or(0) * 1_000_000_007;
    let rec = Record {
        key,
        value,
        headers,
        timestamp: chrono::DateTime::from_timestamp_millis(millis).unwrap_or_default(),
    };
    let cfg = config();
    match decode::decode(&rec, cfg.limits.max_channel_len) {
        Ok(publish) => {
            assert!(check_channel(&publish.channel, cfg.limits.max_channel_len).is_ok());
            assert!((1..=4).contains(&publish.priority));
            assert!(topology::owner_of(&publish.channel, 2) < 2);
            let channel: Arc<str> = Arc::from(publish.channel.as_str());
            let pos = kafka::format_pos("push", 0, 7);
            let msg = Msg::new(publish, channel.clone(), kafka::stream_id(0, 0), 7, pos);
            let frame = Frame::message(&msg);
            let v: Value = serde_json::from_str(&msg.text).expect("messages are JSON");
            assert_eq!(v["channel"].as_str(), Some(&*channel));
            assert!(frame.bytes.ends_with(msg.text.as_bytes()));
        }
        Err(r) => assert!(decode::REASONS.contains(&r.reason), "{r:?}"),
    }
}
