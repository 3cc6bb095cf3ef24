//! The HTTP upgrade done by hand: refusals with the right status before any WebSocket exists, the
//! handshake timeout, and a correct 101 for a correct request.

mod common;

use common::*;
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn incomplete_request_is_dropped_after_the_handshake_timeout() {
    let gw = Gateway::start(&["--handshake-timeout-ms", "300"]);
    let mut s = TcpStream::connect(gw.ws_addr).expect("connect");
    s.write_all(b"GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: webs")
        .expect("write half a request");
    let started = Instant::now();
    // The server closes the socket (EOF or reset); read_to_eof panics if it stays open.
    let got = read_to_eof(&mut s, Duration::from_secs(3));
    assert!(
        got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"),
        "an unfinished request gets no upgrade: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn silent_connection_is_dropped_after_the_handshake_timeout() {
    let gw = Gateway::start(&["--handshake-timeout-ms", "300"]);
    let mut s = TcpStream::connect(gw.ws_addr).expect("connect");
    read_to_eof(&mut s, Duration::from_secs(3));
}

#[test]
fn dribbling_request_is_dropped_after_the_handshake_timeout() {
    let gw = Gateway::start(&["--handshake-timeout-ms", "300"]);
    let mut s = TcpStream::connect(gw.ws_addr).expect("connect");
    let req = upgrade_request(gw.ws_addr, "/ws?token=abc", "X-Pad: ");
    let deadline = Instant::now() + Duration::from_secs(3);
    // One byte every 50 ms: the timeout is for the whole request, not between bytes.
    for b in req.as_bytes().iter().take(60) {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            Instant::now() < deadline,
            "still open after 3 s of dribbling"
        );
    }
    read_to_eof(&mut s, deadline.saturating_duration_since(Instant::now()));
}

#[test]
fn bad_upgrade_requests_are_refused() {
    let gw = Gateway::start(&[]);
    let a = gw.ws_addr;
    let t = token("h", &[], &[]);
    let q = format!("/ws?token={t}");
    let key = |k: &str| {
        format!(
            "GET {q} HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {k}\r\n\r\n"
        )
    };
    let cases: Vec<(String, u16, &str)> = vec![
        (
            upgrade_request(a, &format!("/other?token={t}"), ""),
            404,
            "wrong path",
        ),
        (upgrade_request(a, "/", ""), 404, "root path"),
        (
            upgrade_request(a, &q, "").replacen("GET", "POST", 1),
            405,
            "POST",
        ),
        (
            format!(
                "GET {q} HTTP/1.1\r\nHost: {a}\r\nSec-WebSocket-Version: 13\r\n\
                 Sec-WebSocket-Key: {SAMPLE_KEY}\r\n\r\n"
            ),
            426,
            "no Upgrade/Connection headers",
        ),
        (
            format!(
                "GET {q} HTTP/1.1\r\nHost: {a}\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {SAMPLE_KEY}\r\n\r\n"
            ),
            426,
            "no Upgrade header",
        ),
        (
            upgrade_request(a, &q, "").replace("Version: 13", "Version: 8"),
            426,
            "old WebSocket version",
        ),
        (key("short"), 400, "short key"),
        (key(""), 400, "empty key"),
        (
            format!(
                "GET {q} HTTP/1.1\r\nHost: {a}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Version: 13\r\n\r\n"
            ),
            400,
            "no key",
        ),
        (
            "\x16\x03\x01\x02\x00garbage\r\n\r\n".to_string(),
            400,
            "not HTTP",
        ),
    ];
    for (req, status, what) in cases {
        let r = raw_exchange(a, req.as_bytes());
        assert_eq!(r.status, status, "{what}: {r:?}");
        if status == 426 {
            assert_eq!(
                r.header("Sec-WebSocket-Version"),
                Some("13"),
                "{what}: {r:?}"
            );
        }
    }
}

#[test]
fn auth_is_checked_before_the_upgrade_on_raw_requests() {
    let gw = Gateway::start(&[]);
    let r = raw_exchange(
        gw.ws_addr,
        upgrade_request(gw.ws_addr, "/ws", "").as_bytes(),
    );
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.body.contains("missing_token"), "{r:?}");
}

#[test]
fn correct_request_is_upgraded() {
    let gw = Gateway::start(&[]);
    // RawWs::connect checks the 101 and Sec-WebSocket-Accept.
    let mut raw = RawWs::connect(gw.ws_addr, &token("ok", &[], &[]));
    let f = raw
        .next_frame(WAIT)
        .expect("a frame in time")
        .expect("not EOF");
    assert_eq!(f.opcode, 0x1, "{f:?}");
    let welcome: serde_json::Value = serde_json::from_slice(&f.payload).expect("JSON welcome");
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"], "ok");
}

#[test]
fn browser_style_headers_and_an_eager_first_frame() {
    let gw = Gateway::start(&[]);
    let t = token("eager", &[], &[]);
    // Firefox sends "Connection: keep-alive, Upgrade"; header names are case-insensitive; the
    // client's first frame may arrive in the same packet as the request.
    let mut req = format!(
        "GET /ws?token={t} HTTP/1.1\r\nhost: {}\r\nconnection: keep-alive, Upgrade\r\n\
         upgrade: WebSocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: {SAMPLE_KEY}\r\n\
         Origin: http://example.test\r\n\r\n",
        gw.ws_addr
    )
    .into_bytes();
    client_text_frame(&mut req, r#"{"type":"ping","id":"eager"}"#);
    let mut s = TcpStream::connect(gw.ws_addr).expect("connect");
    s.write_all(&req).expect("write");
    let mut raw = RawWs::from_upgraded(s);
    let mut texts = Vec::new();
    while texts.len() < 2 {
        let f = raw
            .next_frame(WAIT)
            .expect("frames in time")
            .expect("not EOF");
        if f.opcode == 0x1 {
            texts.push(serde_json::from_slice::<serde_json::Value>(&f.payload).expect("JSON"));
        }
    }
    assert_eq!(texts[0]["type"], "welcome", "{texts:?}");
    assert_eq!(texts[1]["type"], "pong", "{texts:?}");
    assert_eq!(texts[1]["id"], "eager", "{texts:?}");
}
