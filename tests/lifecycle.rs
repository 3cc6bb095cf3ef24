//! A connection's life after the upgrade: token expiry closes it with 1008; the gateway pings, a
//! client that answers stays connected, a client that never answers is closed.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

#[test]
fn token_expiry_closes_with_1008() {
    let gw = Gateway::start(&[]);
    let t = sign_hs256(&json!({"sub": "exp", "exp": now_secs() + 2}), SECRET);
    let mut c = gw.connect(&t);
    // Still served before the expiry.
    let r = c.request(&json!({"type": "ping", "id": 1}));
    assert_eq!(r["type"], "pong", "{r}");
    c.expect_close(1008, Duration::from_secs(6));
}

#[test]
fn heartbeat_pings_keep_an_answering_client_connected() {
    let gw = Gateway::start(&["--heartbeat-ms", "200"]);
    let mut c = gw.connect(&token("hb", &[], &[]));
    assert_eq!(c.welcome["heartbeat_ms"], 200);
    // Keep reading (tungstenite answers each ping with a pong) for several heartbeat intervals.
    match c.recv(Duration::from_millis(1500)) {
        Recv::Timeout => {}
        other => panic!("an answering client must stay connected: {other:?}"),
    }
    assert!(c.pings >= 2, "pings received: {}", c.pings);
    let r = c.request(&json!({"type": "ping", "id": "alive"}));
    assert_eq!(r["type"], "pong", "{r}");
}

#[test]
fn silent_client_is_closed() {
    let gw = Gateway::start(&["--heartbeat-ms", "200"]);
    let mut raw = RawWs::connect(gw.ws_addr, &token("silent", &[], &[]));
    // Never send anything, not even pongs: the gateway pings, then gives up and closes.
    let frames = raw.frames_until_eof(Duration::from_secs(10));
    let opcodes: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
    assert_eq!(
        opcodes.first(),
        Some(&0x1),
        "the welcome first: {opcodes:?}"
    );
    assert!(
        opcodes.contains(&0x9),
        "pinged before being closed: {opcodes:?}"
    );
    assert_eq!(
        opcodes.last(),
        Some(&0x8),
        "a close frame before EOF: {opcodes:?}"
    );
}

/// A validly signed token whose `exp` lies absurdly far ahead is a long-lived token, not a reason
/// to take the shard down: the client is served and so is everybody else on that shard.
#[test]
fn far_future_exp_does_not_break_the_shard() {
    let gw = Gateway::start(&[]);
    let t = sign_hs256(&json!({"sub": "forever", "exp": u64::MAX}), SECRET);
    let outcome = match Client::try_connect_checked(gw.ws_addr, &t) {
        Ok(Ok(mut c)) => {
            let r = c.request(&json!({"type": "ping", "id": "far"}));
            format!("served: {r}")
        }
        Ok(Err(e)) => format!("upgraded, then {e}"),
        Err(r) => format!("refused {} {:?}", r.status, r.body),
    };
    // Refusing the token would be acceptable; breaking the shard is not. With one shard, a new
    // client and /stats both need it.
    let mut other = match Client::try_connect_checked(gw.ws_addr, &token("other", &[], &[])) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => panic!("after the far-exp token ({outcome}), a normal client: {e}"),
        Err(r) => panic!(
            "after the far-exp token ({outcome}), a normal client: {} {:?}",
            r.status, r.body
        ),
    };
    let r = other.request(&json!({"type": "ping", "id": "after"}));
    assert_eq!(r["type"], "pong", "{r}");
    let stats = http_get(gw.admin_addr, "/stats");
    assert_eq!(stats.status, 200, "{stats:?}");
}
