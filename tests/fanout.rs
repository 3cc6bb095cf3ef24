//! The welcome frame, and fan-out across shards: client publish frames and `POST /api/publish`
//! reach every member on every shard, in publish order; `user:<sub>` and `broadcast` channels.

mod common;

use common::*;
use serde_json::{json, Value};

fn member_token(i: usize) -> String {
    token(&format!("member-{i}"), &["room_*"], &[SYNC_CLAIM])
}

/// Subscribes every client to `channel`, then waits until the owner shard knows of them all.
fn subscribe_all(members: &mut [Client], channel: &str, shards: usize) {
    for m in members.iter_mut() {
        m.subscribe(channel);
    }
    for m in members.iter_mut() {
        m.barrier(shards);
    }
}

fn assert_message(m: &Value, channel: &str, event: &str, data: &Value) {
    assert_eq!(m["type"], "message", "{m}");
    assert_eq!(m["channel"], channel, "{m}");
    assert_eq!(m["event"], event, "{m}");
    assert_eq!(&m["data"], data, "{m}");
    assert_eq!(m["priority"], 3, "default priority is 3 (normal): {m}");
    assert!(
        m["ts"].as_u64().is_some_and(|t| t > 1_600_000_000_000),
        "ts in ms: {m}"
    );
    assert!(m["pos"].as_str().is_some_and(|p| !p.is_empty()), "pos: {m}");
    assert!(m["id"].as_str().is_some_and(|p| !p.is_empty()), "id: {m}");
}

#[test]
fn welcome_frame_and_connections_spread_over_shards() {
    let gw = Gateway::start_sharded(2, &["--heartbeat-ms", "15000"]);
    let mut seen = [false; 2];
    let mut ids = std::collections::HashSet::new();
    let mut clients = Vec::new();
    for _ in 0..40 {
        let c = gw.connect(&token("42", &[], &[]));
        let w = &c.welcome;
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["user"], "42", "{w}");
        assert_eq!(w["heartbeat_ms"], 15000, "{w}");
        let conn_id = w["conn_id"].as_str().expect("conn_id is a string");
        assert!(!conn_id.is_empty());
        assert!(ids.insert(conn_id.to_string()), "conn_id {conn_id} reused");
        let shard = w["shard"].as_u64().expect("shard is a number");
        assert!(shard < 2, "{w}");
        seen[shard as usize] = true;
        clients.push(c);
        if seen == [true, true] {
            break;
        }
    }
    assert_eq!(seen, [true, true], "connections reached both shards");
}

#[test]
fn client_publish_reaches_members_on_every_shard() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut members = gw.clients_on_every_shard(2, member_token);
    subscribe_all(&mut members, "room_1", 2);
    // A publisher on each shard: one publishes locally to the channel's owner, one across shards.
    let ptoken = token("publisher", &[], &["room_*"]);
    for (round, shard) in [0u64, 1].into_iter().enumerate() {
        let mut publisher = gw.connect_on_shard(&ptoken, shard);
        let id = format!("p{round}");
        let data = json!({"text": "hi", "round": round});
        let reply = publisher.request(&json!({
            "type": "publish", "id": id, "channel": "room_1", "event": "chat", "data": data,
        }));
        assert_eq!(reply["type"], "reply", "{reply}");
        assert_eq!(reply["ok"], true, "{reply}");
        let pos = reply["pos"]
            .as_str()
            .expect("publish reply carries pos")
            .to_string();
        for m in &mut members {
            let msg = m.recv_message("room_1");
            assert_message(&msg, "room_1", "chat", &data);
            assert_eq!(
                msg["pos"],
                pos.as_str(),
                "message pos is the one the reply gave"
            );
        }
        // The publisher is not a member of room_1: nothing for it.
        publisher.expect_silence(QUIET);
    }
}

#[test]
fn http_publish_reaches_every_shard_in_order() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut members = gw.clients_on_every_shard(2, member_token);
    subscribe_all(&mut members, "room_7", 2);
    let mut positions = Vec::new();
    for n in 0..20 {
        let r = gw.publish(&json!({"channel": "room_7", "event": "tick", "data": {"n": n}}));
        let pos = r["pos"]
            .as_str()
            .expect("pos in publish answer")
            .to_string();
        positions.push(pos);
    }
    for w in positions.windows(2) {
        assert!(w[0] < w[1], "pos increases within a channel: {positions:?}");
    }
    for m in &mut members {
        for (n, pos) in positions.iter().enumerate() {
            let msg = m.recv_message("room_7");
            assert_message(&msg, "room_7", "tick", &json!({"n": n}));
            assert_eq!(msg["pos"], pos.as_str(), "message {n} in publish order");
        }
    }
}

#[test]
fn http_publish_fields_id_priority() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut members = gw.clients_on_every_shard(1, member_token);
    subscribe_all(&mut members, "room_2", 2);
    gw.publish(&json!({
        "channel": "room_2", "event": "alert", "id": "evt-1", "priority": 1, "data": {"a": 1},
    }));
    for m in &mut members {
        let msg = m.recv_message("room_2");
        assert_eq!(msg["id"], "evt-1", "{msg}");
        assert_eq!(msg["priority"], 1, "{msg}");
        assert_eq!(msg["event"], "alert", "{msg}");
        assert_eq!(msg["data"], json!({"a": 1}), "{msg}");
    }
}

#[test]
fn user_channel_reaches_all_connections_of_that_user_only() {
    let gw = Gateway::start_sharded(2, &[]);
    let t42 = token("42", &[], &[SYNC_CLAIM]);
    // User 42 on both shards, user 43 on both shards.
    let mut u42 = vec![gw.connect_on_shard(&t42, 0), gw.connect_on_shard(&t42, 1)];
    let t43 = token("43", &[], &[SYNC_CLAIM]);
    let mut u43 = vec![gw.connect_on_shard(&t43, 0), gw.connect_on_shard(&t43, 1)];
    for c in u42.iter_mut().chain(u43.iter_mut()) {
        c.barrier(2);
    }
    for c in u42.iter().chain(u43.iter()) {
        let chans = &c.welcome["channels"];
        if !chans.is_null() {
            assert!(
                chans
                    .as_array()
                    .unwrap()
                    .contains(&json!(format!("user:{}", c.user()))),
                "{}",
                c.welcome
            );
        }
    }

    gw.publish(&json!({"channel": "user:42", "event": "dm", "data": {"to": 42}}));
    gw.publish(&json!({"channel": "broadcast", "event": "all", "data": {"to": "all"}}));

    for c in &mut u42 {
        let m = c.recv_message("user:42");
        assert_eq!(m["data"], json!({"to": 42}));
        let m = c.recv_message("broadcast");
        assert_eq!(m["data"], json!({"to": "all"}));
    }
    // User 43 never gets user 42's message: the next thing it sees is the broadcast.
    for c in &mut u43 {
        let m = c.recv_message("broadcast");
        assert_eq!(m["data"], json!({"to": "all"}));
        c.expect_silence(QUIET);
    }
}

#[test]
fn broadcast_reaches_everyone() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut clients = gw.clients_on_every_shard(3, |i| token(&format!("u{i}"), &[], &[SYNC_CLAIM]));
    for c in &mut clients {
        c.barrier(2);
    }
    let r = gw.publish(&json!({"channel": "broadcast", "event": "notice", "data": {"v": 1}}));
    for c in &mut clients {
        let m = c.recv_message("broadcast");
        assert_eq!(m["event"], "notice");
        assert_eq!(m["pos"], r["pos"]);
    }
}

#[test]
fn user_may_not_subscribe_to_someone_elses_user_channel() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&token("42", &[], &[]));
    let r = c.request(&json!({"type": "subscribe", "id": "x", "channel": "user:43"}));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    // Its own channels are always allowed (and already subscribed).
    let r = c.request(&json!({"type": "subscribe", "id": "y", "channel": "user:42"}));
    assert_eq!(r["ok"], true, "{r}");
    let r = c.request(&json!({"type": "subscribe", "id": "z", "channel": "broadcast"}));
    assert_eq!(r["ok"], true, "{r}");
}
