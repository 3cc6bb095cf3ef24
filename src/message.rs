//! What flows through the router: a publish request, the sequenced message (serialized once, shared
//! across shards), and the WebSocket frame (framed once per shard, shared by every recipient there).

use serde_json::Value;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// A message to publish, from any source (HTTP, client frame; later Kafka).
#[derive(Debug, Clone)]
pub struct Publish {
    pub channel: String,
    pub event: Option<String>,
    pub id: Option<String>,
    pub priority: u8,
    pub data: Value,
    /// The publishing user, for client publishes.
    pub from: Option<String>,
    /// When the gateway accepted it: the start of the delivery-latency measurement.
    pub born: Instant,
    /// The Kafka record's timestamp (ms), for records consumed from Kafka.
    pub origin_ms: Option<u64>,
}

/// A sequenced message. Immutable and shared (`Arc`) between the owner shard's history and every
/// shard that delivers it; held once, as its serialized text.
#[derive(Debug)]
pub struct Msg {
    pub channel: Arc<str>,
    /// The sequence `seq` belongs to: 0 for the in-process bus, else a Kafka partition.
    pub stream: u64,
    /// Position in `stream`: the owner's sequence number, or the Kafka offset.
    pub seq: u64,
    pub pos: Box<str>,
    pub priority: u8,
    /// The whole `{"type":"message",...}` text, serialized once; `data` is its last member.
    pub text: Box<str>,
    /// Where `data`'s JSON starts in `text` (it ends one byte before the text does).
    data_at: u32,
    pub born: Instant,
    pub accepted: Instant,
    pub origin_ms: Option<u64>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Appends `"key":<value as JSON>,`.
fn member(out: &mut String, key: &str, value: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":");
    // Serializing a string into a String cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
    out.push(',');
}

impl Msg {
    pub fn new(p: Publish, channel: Arc<str>, stream: u64, seq: u64, pos: String) -> Msg {
        let data = p.data.to_string();
        let mut text = String::with_capacity(data.len() + channel.len() + pos.len() + 128);
        text.push_str("{\"type\":\"message\",");
        member(&mut text, "channel", &channel);
        member(&mut text, "id", p.id.as_deref().unwrap_or(&pos));
        if let Some(e) = &p.event {
            member(&mut text, "event", e);
        }
        text.push_str(&format!("\"priority\":{},\"ts\":{},", p.priority, now_ms()));
        member(&mut text, "pos", &pos);
        if let Some(from) = &p.from {
            member(&mut text, "from", from);
        }
        text.push_str("\"data\":");
        let data_at = u32::try_from(text.len()).unwrap_or(u32::MAX);
        text.push_str(&data);
        text.push('}');
        Msg {
            channel,
            stream,
            seq,
            pos: pos.into_boxed_str(),
            priority: p.priority,
            text: text.into_boxed_str(),
            data_at,
            born: p.born,
            accepted: Instant::now(),
            origin_ms: p.origin_ms,
        }
    }

    /// The message's `data`, as JSON text (parsed only where a subscription filter needs it).
    pub fn data_json(&self) -> &str {
        let end = self.text.len().saturating_sub(1);
        self.text.get(self.data_at as usize..end).unwrap_or("null")
    }

    /// Bytes this message holds in memory (for the history's byte bound): the `Arc` and its
    /// counts, the text, the position, its own copy of the channel name, and the allocator's header
    /// on each of the four.
    pub fn footprint(&self) -> usize {
        const ALLOCATIONS: usize = 4 * 16;
        std::mem::size_of::<Msg>()
            + 16
            + self.text.len()
            + self.pos.len()
            + self.channel.len()
            + ALLOCATIONS
    }
}

/// Bytes ready for the socket: a complete server frame (unmasked, so the same for every recipient).
#[derive(Debug)]
pub struct Frame {
    pub bytes: Box<[u8]>,
    pub priority: u8,
    /// When the message entered the gateway (live messages), for the delivery-latency histogram.
    pub born: Option<Instant>,
    /// A channel message (counted as delivered), rather than a reply or control frame.
    pub message: bool,
    /// The Kafka record's timestamp (ms), for the record-to-socket histogram.
    pub origin_ms: Option<u64>,
}

impl Frame {
    /// A live channel message.
    pub fn message(msg: &Msg) -> Frame {
        Frame {
            message: true,
            origin_ms: msg.origin_ms,
            ..Frame::encode(&msg.text, msg.priority, Some(msg.born))
        }
    }

    /// A message replayed from history for `since` (no latency is recorded for it).
    pub fn replay(msg: &Msg) -> Frame {
        Frame {
            message: true,
            ..Frame::encode(&msg.text, msg.priority, None)
        }
    }

    /// A live channel message compressed for permessage-deflate (`packed`, RSV1 set).
    pub fn message_deflated(msg: &Msg, packed: &[u8]) -> Frame {
        Frame {
            message: true,
            origin_ms: msg.origin_ms,
            ..Frame::encode_with(Data::Text, packed, true, msg.priority, Some(msg.born))
        }
    }

    /// A text or binary message a client sent, echoed compressed (conformance echo mode).
    pub fn deflated(text: bool, packed: &[u8]) -> Frame {
        let data = if text { Data::Text } else { Data::Binary };
        Frame::encode_with(data, packed, true, 1, None)
    }

    /// A reply or other per-connection text frame; never dropped for priority.
    pub fn text(text: &str) -> Frame {
        Frame::encode(text, 1, None)
    }

    /// A binary frame (only the conformance echo mode sends these).
    pub fn binary(payload: &[u8]) -> Frame {
        Frame::encode_data(Data::Binary, payload, 1, None)
    }

    fn encode(text: &str, priority: u8, born: Option<Instant>) -> Frame {
        Frame::encode_data(Data::Text, text.as_bytes(), priority, born)
    }

    fn encode_data(data: Data, payload: &[u8], priority: u8, born: Option<Instant>) -> Frame {
        Frame::encode_with(data, payload, false, priority, born)
    }

    /// A whole message in one frame; `rsv1` marks a compressed payload (RFC 7692).
    fn encode_with(
        data: Data,
        payload: &[u8],
        rsv1: bool,
        priority: u8,
        born: Option<Instant>,
    ) -> Frame {
        let header = FrameHeader {
            opcode: OpCode::Data(data),
            rsv1,
            ..FrameHeader::default()
        };
        let len = payload.len() as u64;
        let mut out = Vec::with_capacity(header.len(len) + payload.len());
        // Writing into a Vec cannot fail.
        let _ = header.format(len, &mut out);
        out.extend_from_slice(payload);
        Frame {
            bytes: out.into_boxed_slice(),
            priority,
            born,
            message: false,
            origin_ms: None,
        }
    }

    /// Already framed bytes (control frames produced by tungstenite).
    pub fn raw(bytes: Vec<u8>) -> Frame {
        Frame {
            bytes: bytes.into_boxed_slice(),
            priority: 1,
            born: None,
            message: false,
            origin_ms: None,
        }
    }

    /// A close frame with a code and reason.
    pub fn close(code: u16, reason: &str) -> Frame {
        use tungstenite::protocol::frame::{CloseFrame, Frame as WsFrame};
        let mut out = Vec::with_capacity(4 + reason.len());
        let frame = WsFrame::close(Some(CloseFrame {
            code: code.into(),
            reason: reason.into(),
        }));
        let _ = frame.format(&mut out);
        Frame::raw(out)
    }

    pub fn ping() -> Frame {
        Frame::raw(vec![0x89, 0x00])
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_is_json_with_data_last() {
        let p = Publish {
            channel: "room \"1\"".into(),
            event: Some("e".into()),
            id: None,
            priority: 2,
            data: serde_json::json!({"a": [1, {"b": "x}"}]}),
            from: Some("u".into()),
            born: Instant::now(),
            origin_ms: None,
        };
        let m = Msg::new(p, Arc::from("room \"1\""), 0, 7, "1-000000000007".into());
        let v: Value = serde_json::from_str(&m.text).unwrap();
        assert_eq!(v["channel"], "room \"1\"");
        assert_eq!(v["id"], "1-000000000007");
        assert_eq!(v["pos"], "1-000000000007");
        assert_eq!(v["priority"], 2);
        assert_eq!(v["from"], "u");
        assert_eq!(v["type"], "message");
        let data: Value = serde_json::from_str(m.data_json()).unwrap();
        assert_eq!(data, v["data"]);
    }

    #[test]
    fn frames_parse_back() {
        for n in [0usize, 5, 125, 126, 65535, 65536] {
            let text = "x".repeat(n);
            let f = Frame::encode(&text, 3, None);
            let mut cur = std::io::Cursor::new(&f.bytes[..]);
            let (h, len) = FrameHeader::parse(&mut cur).unwrap().unwrap();
            assert_eq!(len as usize, n);
            assert!(h.is_final && h.mask.is_none());
            assert_eq!(f.len() - cur.position() as usize, n);
        }
        let c = Frame::close(1013, "slow");
        assert_eq!(&c.bytes[..4], &[0x88, 6, 0x03, 0xf5]);
    }
}
