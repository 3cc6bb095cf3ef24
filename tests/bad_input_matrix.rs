//! The bad-input matrix: every row sends something a hostile or broken client might, checks the
//! exact answer (HTTP status and reason, close code, or error reply), and then checks that a
//! bystander connection on the same shard still receives. Garbage Kafka records are covered the same
//! way in tests/kafka_dead_letter.rs (dead-lettered, counted, consumption continues).

mod common;

use common::{
    base64url, claims, client_frame, client_text_frame, http_request, now_secs, raw_exchange,
    sign_hs256, token, upgrade_request, Client, Gateway, RawWs, API_KEY, SECRET,
};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, PartialEq)]
enum Outcome {
    /// Refused before the upgrade: status and (a part of) the reason.
    Http(u16, String),
    /// The connection was closed by the gateway with this close code.
    Close(u16),
    /// An error reply with this code; the connection stays open.
    Error(String),
    /// The gateway closed the socket without an answer.
    Dropped,
}

fn http(gw: &Gateway, bytes: &[u8]) -> Outcome {
    let r = raw_exchange(gw.ws_addr, bytes);
    Outcome::Http(r.status, r.body.trim().to_string())
}

fn upgrade_with_token(gw: &Gateway, tok: &str) -> Outcome {
    http(
        gw,
        upgrade_request(gw.ws_addr, &format!("/ws?token={tok}"), "").as_bytes(),
    )
}

fn signed(mut c: Value, f: impl FnOnce(&mut Value)) -> String {
    f(&mut c);
    sign_hs256(&c, SECRET)
}

/// After a valid upgrade, sends `bytes` and reports how the gateway answered.
fn ws(gw: &Gateway, tok: &str, bytes: &[u8]) -> Outcome {
    let mut c = RawWs::connect(gw.ws_addr, tok);
    let welcome = c.next_json("welcome");
    assert_eq!(welcome["type"], "welcome");
    c.stream.write_all(bytes).expect("write");
    loop {
        match c.next_frame(Duration::from_secs(5)) {
            Ok(Some(f)) if f.opcode == 0x8 => return Outcome::Close(f.close_code().unwrap_or(0)),
            Ok(Some(f)) if f.opcode == 0x1 => {
                let v: Value = serde_json::from_slice(&f.payload).expect("JSON frame");
                if v["ok"] == false {
                    return Outcome::Error(v["error"]["code"].as_str().unwrap_or("").into());
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => return Outcome::Dropped,
            Err(()) => panic!("no answer within 5 s"),
        }
    }
}

fn text(t: &str) -> Vec<u8> {
    let mut out = Vec::new();
    client_text_frame(&mut out, t);
    out
}

fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    client_frame(&mut out, opcode, fin, payload);
    out
}

fn publish(gw: &Gateway, headers: &[(&str, &str)], body: &str) -> Outcome {
    let r = http_request(gw.admin_addr, "POST", "/api/publish", headers, Some(body));
    Outcome::Http(r.status, r.body)
}

fn slowloris(gw: &Gateway) -> Outcome {
    let mut s = TcpStream::connect(gw.ws_addr).expect("connect");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: web")
        .expect("write");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = Vec::new();
    match s.read_to_end(&mut buf) {
        Ok(_) if buf.is_empty() => Outcome::Dropped,
        Ok(_) => Outcome::Http(0, String::from_utf8_lossy(&buf).into()),
        Err(e) => panic!("the gateway kept a silent half-request open: {e}"),
    }
}

fn raw_req(addr: SocketAddr, head: &str) -> Vec<u8> {
    format!("{head}Host: {addr}\r\n\r\n").into_bytes()
}

type Row = (&'static str, Box<dyn Fn(&Gateway) -> Outcome>, Outcome);

fn e(code: &str) -> Outcome {
    Outcome::Error(code.into())
}

fn h(status: u16, reason: &str) -> Outcome {
    Outcome::Http(status, reason.into())
}

fn rows() -> Vec<Row> {
    let key = common::SAMPLE_KEY;
    let ok_token = || token("attacker", &["room_*"], &[]);
    let none_token = || {
        let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
        let body = base64url(format!(r#"{{"sub":"x","exp":{}}}"#, now_secs() + 60).as_bytes());
        format!("{header}.{body}.")
    };
    vec![
        // --- the upgrade request ---
        (
            "POST instead of GET",
            Box::new(move |gw: &Gateway| {
                http(gw, format!("POST /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n").as_bytes())
            }),
            h(405, "WebSocket upgrade requires GET"),
        ),
        (
            "wrong path",
            Box::new(|gw: &Gateway| http(gw, upgrade_request(gw.ws_addr, "/nope", "").as_bytes())),
            h(404, "no WebSocket endpoint at /nope"),
        ),
        (
            "no Upgrade header",
            Box::new(move |gw: &Gateway| {
                http(gw, &raw_req(gw.ws_addr, &format!("GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n")))
            }),
            h(426, "expected Upgrade: websocket and Connection: Upgrade"),
        ),
        (
            "WebSocket version 8",
            Box::new(move |gw: &Gateway| {
                http(gw, &raw_req(gw.ws_addr, &format!("GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: {key}\r\n")))
            }),
            h(426, "unsupported Sec-WebSocket-Version (13 required)"),
        ),
        (
            "no Sec-WebSocket-Key",
            Box::new(|gw: &Gateway| {
                http(gw, &raw_req(gw.ws_addr, "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"))
            }),
            h(400, "missing or invalid Sec-WebSocket-Key"),
        ),
        (
            "malformed Sec-WebSocket-Key",
            Box::new(|gw: &Gateway| {
                http(gw, &raw_req(gw.ws_addr, "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: short\r\n"))
            }),
            h(400, "missing or invalid Sec-WebSocket-Key"),
        ),
        (
            "TLS hello on the plain port",
            Box::new(|gw: &Gateway| {
                match http(
                    gw,
                    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
                ) {
                    Outcome::Http(400, _) => h(400, "malformed"),
                    other => other,
                }
            }),
            h(400, "malformed"),
        ),
        (
            "oversized headers (10 KB)",
            Box::new(|gw: &Gateway| {
                let big = format!("X-Big: {}\r\n", "a".repeat(10_000));
                http(gw, upgrade_request(gw.ws_addr, "/ws", &big).as_bytes())
            }),
            h(431, "upgrade request too large"),
        ),
        (
            "too many headers (60)",
            Box::new(|gw: &Gateway| {
                let many: String = (0..60).map(|i| format!("X-H{i}: v\r\n")).collect();
                http(gw, upgrade_request(gw.ws_addr, "/ws", &many).as_bytes())
            }),
            h(431, "too many headers"),
        ),
        (
            "slowloris: half a request, then silence",
            Box::new(slowloris),
            Outcome::Dropped,
        ),
        // --- the token ---
        (
            "no token",
            Box::new(|gw: &Gateway| http(gw, upgrade_request(gw.ws_addr, "/ws", "").as_bytes())),
            h(401, "missing_token"),
        ),
        (
            "garbage token",
            Box::new(|gw: &Gateway| upgrade_with_token(gw, "a.b.c")),
            h(401, "malformed_token"),
        ),
        (
            "expired token",
            Box::new(|gw: &Gateway| {
                upgrade_with_token(
                    gw,
                    &signed(claims("x", &[], &[]), |c| c["exp"] = json!(now_secs() - 60)),
                )
            }),
            h(401, "token_expired"),
        ),
        (
            "token not yet valid",
            Box::new(|gw: &Gateway| {
                upgrade_with_token(
                    gw,
                    &signed(claims("x", &[], &[]), |c| {
                        c["nbf"] = json!(now_secs() + 3600)
                    }),
                )
            }),
            h(401, "token_not_yet_valid"),
        ),
        (
            "token signed with another key",
            Box::new(|gw: &Gateway| {
                upgrade_with_token(gw, &sign_hs256(&claims("x", &[], &[]), "another-secret"))
            }),
            h(401, "bad_signature"),
        ),
        (
            "alg: none",
            Box::new(
                move |gw: &Gateway| match upgrade_with_token(gw, &none_token()) {
                    Outcome::Http(401, _) => h(401, "refused"),
                    other => other,
                },
            ),
            h(401, "refused"),
        ),
        (
            "no sub",
            Box::new(|gw: &Gateway| {
                upgrade_with_token(gw, &signed(json!({"exp": now_secs() + 60}), |_| {}))
            }),
            h(401, "missing_sub"),
        ),
        (
            "no exp",
            Box::new(|gw: &Gateway| upgrade_with_token(gw, &signed(json!({"sub": "x"}), |_| {}))),
            h(401, "missing_exp"),
        ),
        // --- frames ---
        (
            "text message over max_frame_bytes",
            Box::new(move |gw: &Gateway| ws(gw, &ok_token(), &text(&"x".repeat(5000)))),
            Outcome::Close(1009),
        ),
        (
            "fragmented flood past the message limit",
            Box::new(move |gw: &Gateway| {
                let mut b = frame(0x1, false, &[b'x'; 1000]);
                for _ in 0..10 {
                    b.extend(frame(0x0, false, &[b'x'; 1000]));
                }
                ws(gw, &ok_token(), &b)
            }),
            Outcome::Close(1009),
        ),
        (
            "ping flood",
            Box::new(move |gw: &Gateway| {
                let b: Vec<u8> = (0..40).flat_map(|_| frame(0x9, true, b"p")).collect();
                ws(gw, &ok_token(), &b)
            }),
            Outcome::Close(1008),
        ),
        (
            "invalid UTF-8 in a text frame",
            Box::new(move |gw: &Gateway| {
                ws(gw, &ok_token(), &frame(0x1, true, b"{\"a\":\"\xff\xfe\"}"))
            }),
            Outcome::Close(1007),
        ),
        (
            "unmasked client frame",
            Box::new(move |gw: &Gateway| ws(gw, &ok_token(), b"\x81\x02hi")),
            Outcome::Close(1002),
        ),
        (
            "reserved opcode 0x3",
            Box::new(move |gw: &Gateway| ws(gw, &ok_token(), &frame(0x3, true, b"x"))),
            Outcome::Close(1002),
        ),
        (
            "binary frame",
            Box::new(move |gw: &Gateway| ws(gw, &ok_token(), &frame(0x2, true, b"\x00\x01"))),
            e("bad_request"),
        ),
        (
            "not JSON",
            Box::new(move |gw: &Gateway| ws(gw, &ok_token(), &text("hello"))),
            e("bad_request"),
        ),
        (
            "JSON but not an object",
            Box::new(move |gw: &Gateway| ws(gw, &ok_token(), &text("[1,2]"))),
            e("bad_request"),
        ),
        (
            "unknown type",
            Box::new(move |gw: &Gateway| ws(gw, &ok_token(), &text(r#"{"type":"rm -rf","id":1}"#))),
            e("bad_request"),
        ),
        (
            "huge channel name",
            Box::new(move |gw: &Gateway| {
                let req = json!({"type": "subscribe", "id": 1, "channel": format!("room_{}", "x".repeat(300))});
                ws(gw, &ok_token(), &text(&req.to_string()))
            }),
            e("bad_request"),
        ),
        (
            "too many subscriptions",
            Box::new(move |gw: &Gateway| {
                let b: Vec<u8> = (0..4)
                    .flat_map(|i| {
                        text(
                            &json!({"type": "subscribe", "id": i, "channel": format!("room_{i}")})
                                .to_string(),
                        )
                    })
                    .collect();
                ws(gw, &ok_token(), &b)
            }),
            e("limit_exceeded"),
        ),
        (
            "subscribe to a channel the token does not allow",
            Box::new(move |gw: &Gateway| {
                ws(
                    gw,
                    &ok_token(),
                    &text(r#"{"type":"subscribe","id":1,"channel":"admin"}"#),
                )
            }),
            e("forbidden"),
        ),
        (
            "publish without the publish claim",
            Box::new(move |gw: &Gateway| {
                ws(
                    gw,
                    &ok_token(),
                    &text(r#"{"type":"publish","id":1,"channel":"room_1","data":{}}"#),
                )
            }),
            e("forbidden"),
        ),
        // --- HTTP publish ---
        (
            "HTTP publish without a key",
            Box::new(
                |gw: &Gateway| match publish(gw, &[], r#"{"channel":"c"}"#) {
                    Outcome::Http(s, _) => Outcome::Http(s, String::new()),
                    o => o,
                },
            ),
            h(401, ""),
        ),
        (
            "HTTP publish with a malformed body",
            Box::new(|gw: &Gateway| {
                match publish(
                    gw,
                    &[("Authorization", &format!("Bearer {API_KEY}"))],
                    "{not json",
                ) {
                    Outcome::Http(s, _) => Outcome::Http(s, String::new()),
                    o => o,
                }
            }),
            h(400, ""),
        ),
        (
            "HTTP publish without a channel",
            Box::new(|gw: &Gateway| {
                match publish(
                    gw,
                    &[("Authorization", &format!("Bearer {API_KEY}"))],
                    r#"{"data":1}"#,
                ) {
                    Outcome::Http(s, _) => Outcome::Http(s, String::new()),
                    o => o,
                }
            }),
            h(400, ""),
        ),
        (
            "HTTP publish with priority 9",
            Box::new(|gw: &Gateway| {
                match publish(
                    gw,
                    &[("Authorization", &format!("Bearer {API_KEY}"))],
                    r#"{"channel":"c","priority":9}"#,
                ) {
                    Outcome::Http(s, _) => Outcome::Http(s, String::new()),
                    o => o,
                }
            }),
            h(400, ""),
        ),
    ]
}

#[test]
fn every_bad_input_gets_its_answer_and_bystanders_keep_receiving() {
    let gw = Gateway::start(&[
        "--handshake-timeout-ms",
        "300",
        "--max-frame-bytes",
        "4096",
        "--max-subscriptions",
        "3",
        "--client-frames-per-sec",
        "5",
        "--client-frames-burst",
        "10",
    ]);
    let mut bystander = Client::connect(gw.ws_addr, &token("bystander", &["watch"], &[]));
    bystander.subscribe("watch");
    let table = rows();
    assert!(table.len() >= 30, "the matrix has {} rows", table.len());
    let mut failures = Vec::new();
    for (i, (name, run, expected)) in table.iter().enumerate() {
        let got = run(&gw);
        if &got != expected {
            failures.push(format!("{name}: expected {expected:?}, got {got:?}"));
        }
        // Whatever happened, a bystander on the same shard still gets its messages.
        gw.publish(&json!({"channel": "watch", "data": {"row": i}}));
        let m = bystander.recv_message("watch");
        assert_eq!(m["data"]["row"], i, "bystander after row {name:?}");
    }
    assert!(
        failures.is_empty(),
        "rows with the wrong answer:\n{}",
        failures.join("\n")
    );
}
