//! Subscription filters and unsubscribe: only matching messages arrive, and nothing arrives after
//! an unsubscribe while other channels keep flowing.

mod common;

use common::*;
use serde_json::{json, Value};

fn sensor_token(sub: &str) -> String {
    token(sub, &["sensors", "room_*"], &[])
}

#[test]
fn filter_keeps_only_matching_messages() {
    let gw = Gateway::start_sharded(2, &[]);
    // One subscriber on each shard, so the filter is applied on the owner and on the other shard.
    let mut subs = gw.clients_on_every_shard(1, |i| sensor_token(&format!("s{i}")));
    for c in &mut subs {
        let r = c.request(&json!({
            "type": "subscribe", "id": "f", "channel": "sensors",
            "filter": {"device_id": ["s-1", "s-2"], "severity": ["critical"]},
        }));
        assert_eq!(r["ok"], true, "{r}");
    }
    let published: Vec<(Value, bool)> = vec![
        (
            json!({"device_id": "s-1", "severity": "critical", "v": 1}),
            true,
        ),
        (
            json!({"device_id": "s-3", "severity": "critical", "v": 2}),
            false,
        ),
        (
            json!({"device_id": "s-2", "severity": "warning", "v": 3}),
            false,
        ),
        (json!({"device_id": "s-2", "v": 4}), false),
        (json!({"severity": "critical", "v": 5}), false),
        (json!("not an object"), false),
        (
            json!({"device_id": ["s-1"], "severity": "critical", "v": 7}),
            false,
        ),
        (
            json!({"device_id": "s-2", "severity": "critical", "v": 8}),
            true,
        ),
    ];
    for (data, _) in &published {
        gw.publish(&json!({"channel": "sensors", "event": "reading", "data": data}));
    }
    let expected: Vec<&Value> = published
        .iter()
        .filter(|(_, m)| *m)
        .map(|(d, _)| d)
        .collect();
    for c in &mut subs {
        // The last message matches: anything filtered out would have arrived before it.
        for want in &expected {
            let m = c.recv_message("sensors");
            assert_eq!(&&m["data"], want, "shard {}: {m}", c.shard());
        }
        c.expect_silence(QUIET);
    }
}

#[test]
fn filter_on_numbers_and_refused_filters() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&sensor_token("n"));
    let r = c.request(&json!({
        "type": "subscribe", "id": "f", "channel": "sensors", "filter": {"level": [1, 2]},
    }));
    assert_eq!(r["ok"], true, "{r}");
    for level in [json!(3), json!("1"), json!(2)] {
        gw.publish(&json!({"channel": "sensors", "data": {"level": level}}));
    }
    let m = c.recv_message("sensors");
    assert_eq!(m["data"], json!({"level": 2}), "{m}");

    for bad in [
        json!("device_id"),
        json!({"device_id": "s-1"}),
        json!([1, 2]),
    ] {
        let r = c.request(&json!({
            "type": "subscribe", "id": "bad", "channel": "room_1", "filter": bad,
        }));
        assert_eq!(r["ok"], false, "filter {bad}: {r}");
        assert_eq!(r["error"]["code"], "bad_request", "filter {bad}: {r}");
    }
}

#[test]
fn resubscribe_replaces_the_filter() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&sensor_token("r"));
    let r = c.request(&json!({
        "type": "subscribe", "id": "1", "channel": "sensors", "filter": {"k": ["a"]},
    }));
    assert_eq!(r["ok"], true, "{r}");
    let r = c.request(&json!({
        "type": "subscribe", "id": "2", "channel": "sensors", "filter": {"k": ["b"]},
    }));
    assert_eq!(r["ok"], true, "{r}");
    gw.publish(&json!({"channel": "sensors", "data": {"k": "a"}}));
    gw.publish(&json!({"channel": "sensors", "data": {"k": "b"}}));
    let m = c.recv_message("sensors");
    assert_eq!(m["data"], json!({"k": "b"}), "{m}");
    c.expect_silence(QUIET);
}

fn unsubscribe_stops_delivery_on(shards: usize) {
    let gw = Gateway::start_sharded(shards, &[]);
    let mut clients = gw.clients_on_every_shard(1, |i| sensor_token(&format!("u{i}")));
    for c in &mut clients {
        c.subscribe("room_a");
        c.subscribe("room_b");
        c.unsubscribe("room_a");
    }
    // The unwanted message first, then markers on the still-subscribed channels.
    gw.publish(&json!({"channel": "room_a", "event": "unwanted", "data": 1}));
    gw.publish(&json!({"channel": "room_b", "event": "marker", "data": 2}));
    for c in &mut clients {
        let m = c.recv_json(WAIT);
        assert_eq!(m["channel"], "room_b", "shard {}: {m}", c.shard());
        assert_eq!(m["event"], "marker", "{m}");
        let user = c.user();
        gw.publish(&json!({"channel": format!("user:{user}"), "event": "marker", "data": 3}));
        let m = c.recv_json(WAIT);
        assert_eq!(
            m["channel"],
            format!("user:{user}"),
            "shard {}: {m}",
            c.shard()
        );
        c.expect_silence(QUIET);
        // Unsubscribing again: not subscribed any more.
        let r = c.request(&json!({"type": "unsubscribe", "id": "again", "channel": "room_a"}));
        assert_eq!(r["ok"], false, "{r}");
        assert_eq!(r["error"]["code"], "not_found", "{r}");
    }
}

#[test]
fn unsubscribe_stops_delivery_one_shard() {
    unsubscribe_stops_delivery_on(1);
}

#[test]
fn unsubscribe_stops_delivery_two_shards() {
    unsubscribe_stops_delivery_on(2);
}

#[test]
fn automatic_channels_cannot_be_unsubscribed() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&sensor_token("auto"));
    for ch in ["broadcast", "user:auto"] {
        let r = c.request(&json!({"type": "unsubscribe", "id": ch, "channel": ch}));
        assert_eq!(r["ok"], false, "{r}");
    }
    gw.publish(&json!({"channel": "user:auto", "data": "still here"}));
    let m = c.recv_message("user:auto");
    assert_eq!(m["data"], "still here");
}
