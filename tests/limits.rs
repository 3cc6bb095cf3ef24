//! Connection and subscription limits: node-wide connections (503), connections per user (429),
//! subscriptions per connection (limit_exceeded), channel name length (bad_request).

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Retries an upgrade until it is accepted (slots are released asynchronously after a close).
fn connect_eventually(gw: &Gateway, token: &str) -> Client {
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::try_connect(gw.ws_addr, token) {
            Ok(c) => return c,
            Err(r) => {
                assert!(
                    Instant::now() < deadline,
                    "still refused after {WAIT:?} of retries: {} {}",
                    r.status,
                    r.body
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

#[test]
fn max_connections_refuses_with_503() {
    let gw = Gateway::start_sharded(2, &["--max-connections", "2"]);
    let a = gw.connect(&token("a", &[], &[]));
    let _b = gw.connect(&token("b", &[], &[]));
    for sub in ["c", "a"] {
        match Client::try_connect(gw.ws_addr, &token(sub, &[], &[])) {
            Ok(c) => panic!("third connection accepted: {}", c.welcome),
            Err(r) => assert_eq!(r.status, 503, "{:?}", r.body),
        }
    }
    // A refused upgrade does not use up a slot; a closed connection frees one.
    a.close();
    let _c = connect_eventually(&gw, &token("c", &[], &[]));
    match Client::try_connect(gw.ws_addr, &token("d", &[], &[])) {
        Ok(c) => panic!("connection over the limit accepted: {}", c.welcome),
        Err(r) => assert_eq!(r.status, 503, "{:?}", r.body),
    }
}

#[test]
fn max_connections_per_user_refuses_with_429() {
    let gw = Gateway::start_sharded(2, &["--max-connections-per-user", "1"]);
    let t42 = token("42", &[], &[]);
    let first = gw.connect(&t42);
    // Try several times so the second connection lands on both shards.
    for _ in 0..6 {
        match Client::try_connect(gw.ws_addr, &t42) {
            Ok(c) => panic!(
                "second connection of user 42 accepted on shard {}",
                c.shard()
            ),
            Err(r) => assert_eq!(r.status, 429, "{:?}", r.body),
        }
    }
    // Another user is not affected.
    let other = gw.connect(&token("43", &[], &[]));
    assert_eq!(other.user(), "43");
    // Once the first connection is gone, user 42 may connect again.
    first.close();
    let again = connect_eventually(&gw, &t42);
    assert_eq!(again.user(), "42");
    match Client::try_connect(gw.ws_addr, &t42) {
        Ok(c) => panic!("user 42 over its limit again on shard {}", c.shard()),
        Err(r) => assert_eq!(r.status, 429, "{:?}", r.body),
    }
}

#[test]
fn dropped_connection_releases_the_user_slot() {
    let gw = Gateway::start_sharded(2, &["--max-connections-per-user", "1"]);
    let t = token("drop", &[], &[]);
    let first = gw.connect(&t);
    // Gone without a close handshake: the TCP connection is just dropped.
    drop(first);
    let again = connect_eventually(&gw, &t);
    assert_eq!(again.user(), "drop");
}

#[test]
fn max_subscriptions_per_connection() {
    let gw = Gateway::start(&["--max-subscriptions", "2"]);
    let mut c = gw.connect(&token("s", &["room_*"], &[]));
    c.subscribe("room_1");
    c.subscribe("room_2");
    let r = c.request(&json!({"type": "subscribe", "id": "3", "channel": "room_3"}));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "limit_exceeded", "{r}");
    // Subscribing again to a channel already held is not a new subscription.
    c.subscribe("room_2");
    // The automatic channels do not count.
    c.subscribe("broadcast");
    c.subscribe("user:s");
    // Freeing one makes room.
    c.unsubscribe("room_1");
    c.subscribe("room_3");
    // The refused subscription never took effect.
    let r = gw.publish(&json!({"channel": "room_3", "data": "x"}));
    let m = c.recv_message("room_3");
    assert_eq!(m["pos"], r["pos"]);
}

#[test]
fn channel_names_are_checked() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&token("n", &["*"], &["*"]));
    let longest = "c".repeat(200);
    c.subscribe(&longest);
    let too_long = "c".repeat(201);
    for kind in ["subscribe", "publish", "unsubscribe"] {
        let r = c.request(&json!({"type": kind, "id": kind, "channel": too_long, "data": 1}));
        assert_eq!(r["ok"], false, "{kind}: {r}");
        assert_eq!(r["error"]["code"], "bad_request", "{kind}: {r}");
    }
    for bad in ["", "a b", "tab\there", "nl\n"] {
        let r = c.request(&json!({"type": "subscribe", "id": "bad", "channel": bad}));
        assert_eq!(r["error"]["code"], "bad_request", "channel {bad:?}: {r}");
    }
    let r = http_post(
        gw.admin_addr,
        "/api/publish",
        Some(API_KEY),
        &json!({"channel": too_long, "data": 1}).to_string(),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

/// The status line of the answer to a hand-made upgrade; empty when the server closed the socket
/// without answering.
fn upgrade_status(gw: &Gateway, token: &str) -> String {
    let mut s = TcpStream::connect(gw.ws_addr).expect("connect");
    let req = upgrade_request(gw.ws_addr, &format!("/ws?token={token}"), "");
    s.write_all(req.as_bytes()).expect("write upgrade");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(2).any(|w| w == b"\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.lines().next().unwrap_or("").to_string()
}

/// The per-user count is kept by the user's owner shard. While that shard is busy, an upgrade on
/// the other shard waits for it and may hit the handshake timeout; the slot the owner grants
/// afterwards must not stay taken, or the user is locked out for good.
#[test]
fn handshake_timeout_while_waiting_for_the_user_slot_does_not_leak_it() {
    const PINGS: usize = 300_000;
    let gw = Gateway::start_sharded(
        2,
        &[
            "--handshake-timeout-ms",
            "25",
            "--max-connections-per-user",
            "1",
            "--client-frames-per-sec",
            "10000000",
            "--client-frames-burst",
            "10000000",
            "--queue-bytes",
            "268435456",
        ],
    );
    let user = channel_owned_by("slot-user-", 0, 2);
    let t = token(&user, &[], &[]);

    // Keep shard 0 (the user's owner) busy with a stream of pings.
    let mut busy = (0..60)
        .map(|i| gw.connect(&token(&format!("busy-{i}"), &[], &[])))
        .find(|c| c.shard() == 0)
        .expect("a connection on shard 0");
    let mut batch = Vec::new();
    for i in 0..PINGS {
        client_text_frame(&mut batch, &json!({"type": "ping", "id": i}).to_string());
    }
    let mut raw = busy.ws.get_ref().try_clone().expect("clone socket");
    let writer = std::thread::spawn(move || raw.write_all(&batch).expect("writing pings"));
    let reader = std::thread::spawn(move || {
        for n in 0..PINGS {
            match busy.recv(Duration::from_secs(30)) {
                Recv::Json(_) => {}
                other => panic!("busy client: {other:?} after {n} pongs"),
            }
        }
    });

    let mut outcomes = Vec::new();
    while !reader.is_finished() && outcomes.len() < 40 {
        let status = upgrade_status(&gw, &t);
        let timed_out = status.is_empty();
        outcomes.push(status);
        if timed_out {
            break;
        }
    }
    writer.join().expect("writer");
    reader.join().expect("reader");
    if !outcomes.iter().any(String::is_empty) {
        eprintln!("no upgrade timed out while shard 0 was busy ({outcomes:?}); nothing to check");
    }
    // Every earlier attempt is gone: the user can connect again.
    let deadline = Instant::now() + WAIT;
    loop {
        match Client::try_connect(gw.ws_addr, &t) {
            Ok(c) => {
                assert_eq!(c.user(), user);
                break;
            }
            Err(r) => assert!(
                Instant::now() < deadline,
                "user {user} still refused ({} {:?}) {WAIT:?} after its earlier attempts \
                 (status lines, empty = closed without answer): {outcomes:?}",
                r.status,
                r.body
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
