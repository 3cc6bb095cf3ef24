//! The welcome frame, and fan-out across shards: client publish frames and `POST /api/publish`
//! reach every member on every shard, in publish order; `user:<sub>` and `broadcast` channels.

mod common;

use common::*;
use serde_json::{json, Value};

fn member_token(i: usize) -> String {
    token(&format!("member-{i}"), &["room_*"], &[])
}

/// Subscribes every client to `channel`. Each `ok` means that member is live on every shard, so
/// whatever is published afterwards reaches it.
fn subscribe_all(members: &mut [Client], channel: &str) {
    for m in members.iter_mut() {
        m.subscribe(channel);
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

/// The welcome is the very first frame, and once a client has it, its automatic channels are live
/// on every shard: an HTTP publish to `user:<sub>` and one to `broadcast`, sent as soon as the
/// welcome is in, both reach it. Repeated for many connections on each shard of a two-shard gateway,
/// each with a fresh user, and each closed before the next, so that the shard's `broadcast`
/// membership is often announced anew.
#[test]
fn welcome_is_first_and_automatic_channels_are_live_once_it_is_in() {
    const PER_SHARD: usize = 20;
    let gw = Gateway::start_sharded(2, &[]);
    let mut done = [0usize; 2];
    let mut attempts = 0;
    while done.iter().any(|n| *n < PER_SHARD) {
        attempts += 1;
        assert!(
            attempts <= 40 * PER_SHARD,
            "connections did not reach both shards often enough: {done:?} after {attempts}"
        );
        let sub = format!("fresh-{attempts}");
        let user_channel = format!("user:{sub}");
        // Written but for their last byte, so that they follow the welcome as closely as possible.
        let mut to_user =
            gw.prime_publish(&json!({"channel": user_channel, "event": "dm", "data": 1}));
        let mut to_all =
            gw.prime_publish(&json!({"channel": "broadcast", "event": "all", "data": 2}));
        let mut ws = RawWs::connect(gw.ws_addr, &token(&sub, &[], &[]));
        let w = ws.next_json("first frame");
        assert_eq!(w["type"], "welcome", "the first frame is the welcome: {w}");
        assert_eq!(w["user"], sub.as_str(), "{w}");
        let shard = w["shard"].as_u64().expect("welcome.shard") as usize;
        if done[shard] == PER_SHARD {
            continue;
        }
        done[shard] += 1;
        to_user.fire();
        to_all.fire();
        let (to_user, to_all) = (to_user.answer(), to_all.answer());
        // The two channels have their own owners: their messages may come in either order.
        let mut want = vec![
            (user_channel.clone(), to_user["pos"].clone()),
            ("broadcast".to_string(), to_all["pos"].clone()),
        ];
        while !want.is_empty() {
            let what = format!("{sub} on shard {shard}, waiting for {want:?}");
            let m = ws.next_json(&what);
            assert_eq!(m["type"], "message", "{what}: {m}");
            // A broadcast published for an earlier connection may still be on its way to this
            // shard and reach this client too: nothing promises either way about those.
            let earlier = m["channel"] == "broadcast" && m["pos"].as_str() < to_all["pos"].as_str();
            if earlier {
                continue;
            }
            let k = want
                .iter()
                .position(|(ch, pos)| m["channel"] == ch.as_str() && m["pos"] == *pos)
                .unwrap_or_else(|| panic!("{what}: unexpected {m}"));
            want.remove(k);
        }
    }
}

#[test]
fn client_publish_reaches_members_on_every_shard() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut members = gw.clients_on_every_shard(2, member_token);
    subscribe_all(&mut members, "room_1");
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
    subscribe_all(&mut members, "room_7");
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
    subscribe_all(&mut members, "room_2");
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
    let t42 = token("42", &[], &[]);
    // User 42 on both shards, user 43 on both shards. Their automatic channels are live once the
    // welcome is in.
    let mut u42 = vec![gw.connect_on_shard(&t42, 0), gw.connect_on_shard(&t42, 1)];
    let t43 = token("43", &[], &[]);
    let mut u43 = vec![gw.connect_on_shard(&t43, 0), gw.connect_on_shard(&t43, 1)];
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
    let mut clients = gw.clients_on_every_shard(3, |i| token(&format!("u{i}"), &[], &[]));
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
