//! Client frames: replies for every kind of bad request, ping/pong, oversized frames (close 1009)
//! and the per-connection frame rate limit.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;

fn assert_error(r: &Value, code: &str) {
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], code, "{r}");
    assert!(
        r["error"]["message"].is_string(),
        "error carries a message: {r}"
    );
}

#[test]
fn ping_gets_pong_with_the_same_id() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&token("p", &[], &[]));
    for id in [json!("6"), json!(7), json!({"nested": true})] {
        let r = c.request(&json!({"type": "ping", "id": id}));
        assert_eq!(r["type"], "pong", "{r}");
        assert_eq!(r["id"], id, "{r}");
    }
}

#[test]
fn bad_requests_get_error_replies_and_the_connection_stays_open() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&token("b", &["room_*"], &[]));

    c.send_text("{not json");
    let r = c.recv_json(WAIT);
    assert_error(&r, "bad_request");

    c.send_text("[1,2,3]");
    assert_error(&c.recv_json(WAIT), "bad_request");

    let r = c.request(&json!({"type": "frobnicate", "id": "u1"}));
    assert_error(&r, "bad_request");
    assert_eq!(r["id"], "u1");

    let r = c.request(&json!({"id": "no-type", "channel": "room_1"}));
    assert_error(&r, "bad_request");

    for kind in ["subscribe", "unsubscribe", "publish"] {
        let r = c.request(&json!({"type": kind, "id": format!("nc-{kind}")}));
        assert_error(&r, "bad_request");
    }
    let r = c.request(&json!({"type": "subscribe", "id": "num", "channel": 5}));
    assert_error(&r, "bad_request");

    let r = c.request(&json!({"type": "subscribe", "id": "f1", "channel": "secret_room"}));
    assert_error(&r, "forbidden");
    assert_eq!(r["id"], "f1");

    let r = c.request(&json!({
        "type": "publish", "id": "f2", "channel": "room_1", "event": "chat", "data": {"text": "hi"},
    }));
    assert_error(&r, "forbidden");

    let r = c.request(&json!({"type": "unsubscribe", "id": "nf", "channel": "room_9"}));
    assert_error(&r, "not_found");

    // Still usable afterwards.
    c.subscribe("room_1");
    let r = c.request(&json!({"type": "ping", "id": "alive"}));
    assert_eq!(r["type"], "pong", "{r}");
}

#[test]
fn publish_claim_patterns_and_priorities() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&token("pub", &["room_*"], &["room_*", "exact"]));
    c.subscribe("room_1");
    let r = c.request(&json!({"type": "publish", "id": "ok", "channel": "exact", "data": 1}));
    assert_eq!(r["ok"], true, "{r}");
    let r = c.request(&json!({"type": "publish", "id": "no", "channel": "exact2", "data": 1}));
    assert_error(&r, "forbidden");
    let r = c.request(&json!({
        "type": "publish", "id": "bad-prio", "channel": "room_x", "priority": 9, "data": 1,
    }));
    assert_error(&r, "bad_request");
    // The sender itself is a member of room_1: it gets the reply and the message.
    c.send_json(&json!({
        "type": "publish", "id": "p", "channel": "room_1", "priority": 2, "data": {"n": 1},
    }));
    let mut got = [c.recv_json(WAIT), c.recv_json(WAIT)];
    got.sort_by_key(|v| v["type"] != "reply");
    assert_eq!(got[0]["id"], "p", "{:?}", got);
    assert_eq!(got[0]["ok"], true, "{:?}", got);
    assert_eq!(got[1]["type"], "message", "{:?}", got);
    assert_eq!(got[1]["priority"], 2, "{:?}", got);
    assert_eq!(got[1]["pos"], got[0]["pos"], "{:?}", got);
}

#[test]
fn oversized_message_closes_with_1009() {
    let gw = Gateway::start(&["--max-frame-bytes", "1024"]);
    let mut c = gw.connect(&token("big", &[], &[]));
    // Just under the limit is fine.
    let pad = "p".repeat(900);
    let r = c.request(&json!({"type": "ping", "id": "small", "pad": pad}));
    assert_eq!(r["type"], "pong", "{r}");
    let big = json!({"type": "ping", "id": "big", "pad": "x".repeat(2000)});
    c.send_json(&big);
    c.expect_close(1009, WAIT);
}

#[test]
fn frame_rate_limit_refuses_with_limit_exceeded() {
    let gw = Gateway::start(&["--client-frames-per-sec", "1", "--client-frames-burst", "3"]);
    let mut c = gw.connect(&token("rate", &[], &[]));
    for i in 0..10 {
        c.send_json(&json!({"type": "ping", "id": i}));
    }
    let mut pongs = 0;
    let mut limited = Vec::new();
    loop {
        match c.recv(QUIET) {
            Recv::Json(r) if r["type"] == "pong" => pongs += 1,
            Recv::Json(r) => {
                assert_error(&r, "limit_exceeded");
                let id = r["id"].as_u64().expect("the refusal repeats the ping id");
                assert!(id < 10, "{r}");
                limited.push(id);
            }
            // The gateway may also close a client that keeps exceeding the rate.
            Recv::Close(_) | Recv::Closed(_) | Recv::Timeout => break,
        }
    }
    assert!(
        !limited.is_empty(),
        "no limit_exceeded reply ({pongs} pongs)"
    );
    assert!(
        pongs <= 4,
        "at most the burst (plus one refill) answered: {pongs}"
    );
    assert!(pongs >= 1, "the burst is answered");
}

#[test]
fn fragmented_messages_are_reassembled_and_bounded() {
    let gw = Gateway::start(&["--max-frame-bytes", "1024"]);
    let mut raw = RawWs::connect(gw.ws_addr, &token("frag", &[], &[]));
    let welcome = raw.next_frame(WAIT).expect("in time").expect("not EOF");
    assert_eq!(welcome.opcode, 0x1);

    // A ping split over three frames, 700 bytes in all: reassembled and answered.
    let small = json!({"type": "ping", "id": "frag", "pad": "p".repeat(650)}).to_string();
    let b = small.as_bytes();
    let mut out = Vec::new();
    client_frame(&mut out, 0x1, false, &b[..200]);
    client_frame(&mut out, 0x0, false, &b[200..500]);
    client_frame(&mut out, 0x0, true, &b[500..]);
    raw.stream.write_all(&out).expect("write fragments");
    let f = raw
        .next_frame(WAIT)
        .expect("a reply in time")
        .expect("not EOF");
    assert_eq!(f.opcode, 0x1, "{f:?}");
    let reply: Value = serde_json::from_slice(&f.payload).expect("JSON");
    assert_eq!(reply["type"], "pong", "{reply}");
    assert_eq!(reply["id"], "frag", "{reply}");

    // 1200 bytes in fragments of 600, each under the limit: the message is too big.
    let big = json!({"type": "ping", "id": "big", "pad": "x".repeat(1170)}).to_string();
    let b = big.as_bytes();
    let mut out = Vec::new();
    client_frame(&mut out, 0x1, false, &b[..600]);
    client_frame(&mut out, 0x0, true, &b[600..]);
    raw.stream.write_all(&out).expect("write fragments");
    let f = raw
        .next_frame(WAIT)
        .expect("a close in time")
        .expect("not EOF");
    assert_eq!(f.close_code(), Some(1009), "{f:?}");
}
