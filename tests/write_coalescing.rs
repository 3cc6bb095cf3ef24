//! Write coalescing (`session.write_delay_ms`) as a client sees it: with the delay on, every
//! message still arrives, once, in each channel's order, interleaved with replies and pongs as
//! usual; requests are answered and connections close normally. Nothing here is timed: what the
//! delay saves is measured in bench/ (docs/benchmarks.md).

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;

const ROOMS: [&str; 3] = ["room_a", "room_b", "room_c"];
const MESSAGES: usize = 300;

/// Reads frames until `count` messages arrived; returns each channel's `data.i` in arrival order.
fn collect(c: &mut Client, count: usize) -> HashMap<String, Vec<u64>> {
    let mut got: HashMap<String, Vec<u64>> = HashMap::new();
    let mut n = 0;
    while n < count {
        let m = c.recv_json(WAIT);
        if m["type"] != "message" {
            continue;
        }
        let ch = m["channel"].as_str().expect("channel").to_string();
        got.entry(ch)
            .or_default()
            .push(m["data"]["i"].as_u64().expect("data.i"));
        n += 1;
    }
    got
}

fn expected() -> HashMap<String, Vec<u64>> {
    let mut want: HashMap<String, Vec<u64>> = HashMap::new();
    for i in 0..MESSAGES {
        want.entry(ROOMS[i % ROOMS.len()].to_string())
            .or_default()
            .push(i as u64);
    }
    want
}

#[test]
fn held_frames_arrive_complete_and_in_order_on_every_shard() {
    let gw = Gateway::start_sharded(
        2,
        &[
            "--write-delay-ms",
            "20",
            "--client-frames-per-sec",
            "100000",
            "--client-frames-burst",
            "100000",
        ],
    );
    let mut members = gw.clients_on_every_shard(2, |i| token(&format!("m{i}"), &["room_*"], &[]));
    for m in members.iter_mut() {
        for room in ROOMS {
            m.subscribe(room);
        }
    }
    let mut publisher = gw.connect(&token("pub", &[], &["room_*"]));
    for i in 0..MESSAGES {
        let room = ROOMS[i % ROOMS.len()];
        publisher.send_json(
            &json!({"type": "publish", "id": i.to_string(), "channel": room,
                                    "event": "e", "data": {"i": i}}),
        );
    }
    // The publisher's replies are not messages and are not held: every request is answered ok
    // (in the order their channels' owners answer).
    let mut ids = std::collections::HashSet::new();
    for _ in 0..MESSAGES {
        let r: Value = publisher.recv_json(WAIT);
        assert_eq!(r["type"], "reply", "{r}");
        assert_eq!(r["ok"], true, "{r}");
        assert!(
            ids.insert(r["id"].to_string()),
            "one reply per request: {r}"
        );
    }
    let want = expected();
    for m in members.iter_mut() {
        assert_eq!(collect(m, MESSAGES), want, "shard {}", m.shard());
    }
    // Requests are still answered with the delay on, and nothing else is left over.
    for m in members.iter_mut() {
        let r = m.request(&json!({"type": "ping", "id": "p"}));
        assert_eq!(r["id"], "p", "{r}");
        m.expect_silence(QUIET);
    }
    for m in members {
        m.close();
    }
}

#[test]
fn a_lone_message_is_not_held_for_good() {
    // One message and nothing after it: the shard's tick still writes it.
    let gw = Gateway::start(&["--write-delay-ms", "50"]);
    let mut c = gw.connect(&token("solo", &["room_*"], &[]));
    c.subscribe("room_solo");
    gw.publish(&json!({"channel": "room_solo", "event": "e", "data": {"i": 7}}));
    let m = c.recv_message("room_solo");
    assert_eq!(m["data"]["i"], 7, "{m}");
    // And again after an idle spell, when the tick task was parked.
    gw.publish(&json!({"channel": "room_solo", "event": "e", "data": {"i": 8}}));
    assert_eq!(c.recv_message("room_solo")["data"]["i"], 8);
}
