//! permessage-deflate (RFC 7692) as clients see it: the negotiation answers, compressed pushes
//! (RSV1) beside plain ones on the same channel, compressed requests, and the compressed input
//! that must close a connection (a zip bomb with 1009) without touching the others. The client
//! here is made by hand (flate2 for the deflate side) so every frame bit can be checked;
//! tests/deflate_client.rs drives the gateway with a third-party client.

mod common;

use common::{client_frame, token, upgrade_request, Gateway, WAIT};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Instant;

const TEXT: u8 = 0x1;
const RSV1: u8 = 0x40;
const TAIL: [u8; 4] = [0, 0, 0xff, 0xff];

/// A gateway with `[session]` settings from a config file (nothing else changed).
fn gateway_with(name: &str, session: &str) -> Gateway {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("deflate-{name}.toml"));
    std::fs::write(&path, format!("[session]\n{session}\n")).expect("config file");
    Gateway::start(&["--config", path.to_str().expect("utf-8 path")])
}

/// A message compressed as a client would: raw deflate, sync flush, tail removed.
fn pack(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, FlushCompress::Sync)
        .expect("compress");
    assert!(out.ends_with(&TAIL));
    out.truncate(out.len() - 4);
    out
}

fn unpack(payload: &[u8]) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .expect("valid deflate from the gateway");
    out
}

/// One server frame, with its first header byte.
#[derive(Debug)]
struct Frame {
    first: u8,
    payload: Vec<u8>,
}

impl Frame {
    fn rsv1(&self) -> bool {
        self.first & RSV1 != 0
    }
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }
}

/// A hand-made client: the upgrade with a chosen `Sec-WebSocket-Extensions`, then raw frames.
struct DeflateWs {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` the gateway answered, if any.
    agreed: Option<String>,
}

impl DeflateWs {
    fn connect(addr: SocketAddr, tok: &str, offer: Option<&str>) -> DeflateWs {
        let mut stream = TcpStream::connect(addr).expect("connect");
        let extra = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let req = upgrade_request(addr, &format!("/ws?token={tok}"), &extra);
        stream.write_all(req.as_bytes()).expect("upgrade");
        let mut ws = DeflateWs {
            stream,
            buf: Vec::new(),
            agreed: None,
        };
        let end = loop {
            if let Some(i) = ws.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(ws.fill(Instant::now() + WAIT), "no upgrade response");
        };
        let head = String::from_utf8_lossy(&ws.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "upgrade answered {head}");
        ws.agreed = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions"))
            .map(|(_, v)| v.trim().to_string());
        ws.buf.drain(..end);
        let welcome = ws.next_json();
        assert_eq!(welcome["type"], "welcome");
        ws
    }

    /// Reads more bytes; false on EOF or when `deadline` passes.
    fn fill(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        self.stream.set_read_timeout(Some(left)).expect("timeout");
        let mut chunk = [0u8; 65536];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => true,
            Err(_) => false,
        }
    }

    /// The next frame (None on EOF); panics after `WAIT`.
    fn next_frame(&mut self) -> Option<Frame> {
        let deadline = Instant::now() + WAIT;
        loop {
            if self.buf.len() >= 2 {
                let (len, hdr) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(a) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if hdr > 0 && self.buf.len() >= hdr + len {
                    let payload = self.buf[hdr..hdr + len].to_vec();
                    let first = self.buf[0];
                    self.buf.drain(..hdr + len);
                    return Some(Frame { first, payload });
                }
            }
            if !self.fill(deadline) {
                assert!(Instant::now() < deadline, "no frame within {WAIT:?}");
                return None;
            }
        }
    }

    /// The next data message as JSON, and whether it came compressed.
    fn next_json_rsv1(&mut self) -> (Value, bool) {
        loop {
            let f = self.next_frame().expect("a frame, not EOF");
            if f.opcode() == 0x9 || f.opcode() == 0xa {
                continue;
            }
            assert_eq!(f.opcode(), TEXT, "a text frame: {f:?}");
            assert!(f.first & 0x80 != 0, "one frame per message");
            let rsv1 = f.rsv1();
            let text = if rsv1 { unpack(&f.payload) } else { f.payload };
            return (serde_json::from_slice(&text).expect("JSON"), rsv1);
        }
    }

    fn next_json(&mut self) -> Value {
        self.next_json_rsv1().0
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// A text message compressed, in one frame.
    fn send_packed(&mut self, text: &str) {
        let mut out = Vec::new();
        client_frame(&mut out, RSV1 | TEXT, true, &pack(text.as_bytes()));
        self.send(&out);
    }

    /// The close code the gateway ends the connection with.
    fn close_code(&mut self) -> u16 {
        loop {
            let f = self.next_frame().expect("a close frame before EOF");
            if f.opcode() == 0x8 {
                return u16::from_be_bytes([f.payload[0], f.payload[1]]);
            }
        }
    }
}

const BASE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

#[test]
fn offers_are_answered_per_rfc_7692() {
    let gw = Gateway::start(&[]);
    let tok = token("u1", &[], &[]);
    let agreed = |offer: Option<&str>| DeflateWs::connect(gw.ws_addr, &tok, offer).agreed;
    assert_eq!(agreed(None), None);
    assert_eq!(agreed(Some("permessage-deflate")).as_deref(), Some(BASE));
    // What browsers offer.
    assert_eq!(
        agreed(Some("permessage-deflate; client_max_window_bits")).as_deref(),
        Some(BASE)
    );
    assert_eq!(
        agreed(Some("permessage-deflate; server_max_window_bits=10")),
        Some(format!("{BASE}; server_max_window_bits=10"))
    );
    // Invalid offers are declined; the next one is taken, or none.
    assert_eq!(
        agreed(Some("permessage-deflate; server_max_window_bits=20")),
        None
    );
    assert_eq!(agreed(Some("permessage-deflate; foo=1")), None);
    assert_eq!(agreed(Some("x-webkit-deflate-frame")), None);
    assert_eq!(
        agreed(Some(
            "permessage-deflate; bogus, permessage-deflate; client_no_context_takeover"
        ))
        .as_deref(),
        Some(BASE)
    );
    // Off by configuration: no extension whatever the offer.
    let off = gateway_with("off", "deflate = false");
    let ws = DeflateWs::connect(off.ws_addr, &tok, Some("permessage-deflate"));
    assert_eq!(ws.agreed, None);
}

#[test]
fn pushes_go_compressed_to_clients_that_agreed_and_plain_to_the_others() {
    let gw = gateway_with("push", "deflate_min_bytes = 300");
    let tok = token("u1", &["room_*"], &[]);
    let mut packed = DeflateWs::connect(gw.ws_addr, &tok, Some("permessage-deflate"));
    let mut small_window = DeflateWs::connect(
        gw.ws_addr,
        &tok,
        Some("permessage-deflate; server_max_window_bits=9"),
    );
    let mut plain = DeflateWs::connect(gw.ws_addr, &tok, None);
    let mut tungstenite_client = gw.connect(&tok);
    for (i, ws) in [&mut packed, &mut small_window, &mut plain]
        .into_iter()
        .enumerate()
    {
        ws.send_text_plain(&json!({"type":"subscribe","id":i,"channel":"room_1"}));
        assert_eq!(ws.next_json()["ok"], true);
    }
    tungstenite_client.subscribe("room_1");

    // (data, compressed for the default window, compressed for a 2^9 window)
    let big = json!({"items": (0..40).map(|i| json!({"id": i, "name": format!("item {i}")})).collect::<Vec<_>>()});
    let mid = json!({"text": "abc ".repeat(80)});
    for (data, to_packed, to_small) in [
        (json!(1), false, false),
        (mid, true, true),
        (big, true, false),
    ] {
        gw.publish(&json!({"channel": "room_1", "data": data}));
        let (a, a_rsv1) = packed.next_json_rsv1();
        let (b, b_rsv1) = small_window.next_json_rsv1();
        let (c, c_rsv1) = plain.next_json_rsv1();
        let d = tungstenite_client.recv_message("room_1");
        assert_eq!(
            (a_rsv1, b_rsv1, c_rsv1),
            (to_packed, to_small, false),
            "{data}"
        );
        for m in [&a, &b, &c] {
            assert_eq!(m, &d);
        }
        assert_eq!(a["data"], data);
    }
    let m = gw.metrics();
    assert_eq!(
        common::metric_sum(&m, "gateway_deflate_compressed_total"),
        2.0
    );
    assert!(common::metric_sum(&m, "gateway_deflate_saved_bytes_total") > 1000.0);
}

#[test]
fn compressed_requests_are_inflated_fragmented_or_not() {
    let gw = Gateway::start(&[]);
    let tok = token("u1", &["room_*"], &["room_*"]);
    let mut ws = DeflateWs::connect(gw.ws_addr, &tok, Some("permessage-deflate"));
    // A subscribe compressed and split over two frames with a ping between them.
    let sub = pack(br#"{"type":"subscribe","id":"s","channel":"room_2"}"#);
    let (a, b) = sub.split_at(sub.len() / 2);
    let mut out = Vec::new();
    client_frame(&mut out, RSV1 | TEXT, false, a);
    client_frame(&mut out, 0x9, true, b"p");
    client_frame(&mut out, 0x0, true, b);
    ws.send(&out);
    let pong = ws.next_frame().expect("pong");
    assert_eq!((pong.opcode(), &pong.payload[..]), (0xa, &b"p"[..]));
    assert_eq!(ws.next_json(), json!({"type":"reply","id":"s","ok":true}));
    // A compressed publish with a large body reaches the publisher itself, compressed.
    let text = "compress me ".repeat(500);
    ws.send_packed(
        &json!({"type":"publish","id":"p","channel":"room_2","data":{"text": text}}).to_string(),
    );
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(ws.next_json_rsv1());
    }
    let (msg, rsv1) = seen
        .iter()
        .find(|(v, _)| v["type"] == "message")
        .expect("the message")
        .clone();
    assert!(rsv1);
    assert_eq!(msg["data"]["text"], text);
    assert!(seen.iter().any(|(v, _)| v["id"] == "p" && v["ok"] == true));
    // A plain message on the same connection is still fine.
    ws.send_text_plain(&json!({"type":"ping","id":"x"}));
    assert_eq!(ws.next_json()["id"], "x");
}

#[test]
fn a_zip_bomb_gets_1009_and_the_others_carry_on() {
    let gw = Gateway::start(&[]);
    let tok = token("u1", &["room_*"], &[]);
    let mut bystander = DeflateWs::connect(gw.ws_addr, &tok, Some("permessage-deflate"));
    bystander.send_text_plain(&json!({"type":"subscribe","id":1,"channel":"room_3"}));
    assert_eq!(bystander.next_json()["ok"], true);
    let mut plain = gw.connect(&tok);
    plain.subscribe("room_3");

    // 32 MiB of spaces in ~32 KiB compressed (one MiB compressed, sync-flushed blocks repeated):
    // under limits.max_frame_bytes (64 KiB) before inflating, 512 times it after.
    let mut bomb = DeflateWs::connect(gw.ws_addr, &tok, Some("permessage-deflate"));
    let mut one = pack(&vec![b' '; 1 << 20]);
    one.extend_from_slice(&TAIL);
    let mut packed = one.repeat(32);
    packed.truncate(packed.len() - TAIL.len());
    assert!(packed.len() < 65536, "{}", packed.len());
    let mut out = Vec::new();
    client_frame(&mut out, RSV1 | TEXT, true, &packed);
    bomb.send(&out);
    assert_eq!(bomb.close_code(), 1009);

    let data = json!({"text": "still here ".repeat(50)});
    gw.publish(&json!({"channel": "room_3", "data": data}));
    let (m, rsv1) = bystander.next_json_rsv1();
    assert!(rsv1);
    assert_eq!(m["data"], data);
    assert_eq!(plain.recv_message("room_3")["data"], data);
}

#[test]
fn bad_compressed_input_fails_the_connection_with_a_clear_code() {
    let gw = Gateway::start(&[]);
    let tok = token("u1", &[], &[]);
    let offer = Some("permessage-deflate");
    let case = |offer: Option<&str>, frames: &[(u8, bool, Vec<u8>)]| {
        let mut ws = DeflateWs::connect(gw.ws_addr, &tok, offer);
        let mut out = Vec::new();
        for (first, fin, payload) in frames {
            client_frame(&mut out, *first, *fin, payload);
        }
        ws.send(&out);
        ws.close_code()
    };
    let ping = pack(br#"{"type":"ping","id":1}"#);
    // RSV1 without the extension.
    assert_eq!(case(None, &[(RSV1 | TEXT, true, ping.clone())]), 1002);
    // RSV1 on a continuation frame, and on a control frame.
    assert_eq!(
        case(
            offer,
            &[(TEXT, false, b"{".to_vec()), (RSV1, true, b"}".to_vec())]
        ),
        1002
    );
    assert_eq!(case(offer, &[(RSV1 | 0x9, true, Vec::new())]), 1002);
    // Not deflate data, and invalid UTF-8 once inflated.
    assert_eq!(case(offer, &[(RSV1 | TEXT, true, vec![0xff; 20])]), 1007);
    assert_eq!(
        case(offer, &[(RSV1 | TEXT, true, pack(&[0xc3, 0x28]))]),
        1007
    );
    // The same compressed ping, well formed, is answered.
    let mut ws = DeflateWs::connect(gw.ws_addr, &tok, offer);
    let mut out = Vec::new();
    client_frame(&mut out, RSV1 | TEXT, true, &ping);
    ws.send(&out);
    assert_eq!(ws.next_json()["id"], 1);
}

impl DeflateWs {
    fn send_text_plain(&mut self, v: &Value) {
        let mut out = Vec::new();
        client_frame(&mut out, TEXT, true, v.to_string().as_bytes());
        self.send(&out);
    }
}
