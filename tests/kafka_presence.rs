//! Presence across gateway processes on one Tansu broker, shared through the presence topic only:
//! members of both nodes counted on each, join/leave frames for remote users (once per user,
//! leave after its last connection on any node), a node started later learning the members from
//! the topic, and a node killed with SIGKILL whose members expire on the others after
//! `presence.ttl_secs`.

mod common;
mod kafka_common;
mod presence_common;

use common::*;
use kafka_common::*;
use presence_common::*;
use serde_json::json;
use std::time::Duration;

/// ttl 2 s: a killed node's members leave within about that (plus reading and batching).
const CONFIG: &str = "[presence]\nchannels = [\"room_*\"]\nbatch_ms = 50\nttl_secs = 2\n\
                      [kafka]\npresence_topic = \"presence\"\n";
/// A killed node's members must be gone within this (ttl, liveness period, consumer lag; the
/// machine is shared and noisy).
const EXPIRY: Duration = Duration::from_secs(20);

fn node(brokers: &str) -> Gateway {
    let path = config_file(CONFIG);
    let topics = Topics::new(&["push"], "up");
    let cfg = path.to_str().expect("utf-8 path");
    start_ready(
        2,
        brokers,
        &topics,
        &["--config", cfg],
        &[("push", 0), ("push", 1), ("up", 0)],
    )
}

fn member_token(sub: &str) -> String {
    token(sub, &["room_*"], &[])
}

#[test]
fn presence_spans_nodes_and_a_killed_node_expires() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 2);
    kafka.create_topic("up", 1);
    kafka.create_topic("presence", 2);
    let a = node(&broker.addr());
    let mut b = node(&broker.addr());
    let room = "room_1";

    let mut wa = Watcher::new(a.connect(&member_token("wa")));
    let r = wa.ask(json!({"type": "subscribe", "channel": room, "join_leave": true}));
    assert_eq!(r["ok"], true, "{r}");
    let mut wb = Watcher::new(b.connect(&member_token("wb")));
    let r = wb.ask(json!({"type": "subscribe", "channel": room, "join_leave": true}));
    assert_eq!(r["ok"], true, "{r}");
    let mut b1 = b.connect(&member_token("u1"));
    let mut b2 = b.connect(&member_token("u1"));
    let mut a1 = a.connect(&member_token("u1"));
    for c in [&mut b1, &mut b2, &mut a1] {
        subscribe_jl(c, room, false);
    }
    let all = [("wa", 1), ("wb", 1), ("u1", 3)];
    let r = wa.wait_members(room, &all, EXPIRY);
    assert_eq!(
        (r["users"].clone(), r["conns"].clone()),
        (json!(3), json!(5)),
        "{r}"
    );
    wb.wait_members(room, &all, EXPIRY);
    let s = wb.ask(json!({"type": "presence_stats", "channel": room}));
    assert_eq!(
        (s["users"].clone(), s["conns"].clone()),
        (json!(3), json!(5)),
        "{s}"
    );
    wa.wait_events("wb and u1 join on a", |e| {
        has(e, "join", "wb") && has(e, "join", "u1")
    });
    wb.wait_events("wa and u1 join on b", |e| {
        has(e, "join", "wa") && has(e, "join", "u1")
    });

    // u1's connections on b go: still present through a; then a's goes too: u1 leaves, once,
    // on both nodes.
    b1.close();
    b2.close();
    wa.wait_members(room, &[("wa", 1), ("wb", 1), ("u1", 1)], EXPIRY);
    a1.unsubscribe(room);
    wb.wait_events("u1 leaves on b", |e| has(e, "leave", "u1"));
    wa.wait_events("u1 leaves on a", |e| has(e, "leave", "u1"));
    for w in [&wa, &wb] {
        assert_eq!(
            w.users("join", room).iter().filter(|u| *u == "u1").count(),
            1,
            "{:?}",
            w.events
        );
        assert_eq!(w.users("leave", room), vec!["u1"], "{:?}", w.events);
    }

    // A node started now learns the members from the topic.
    let k1 = b.connect(&member_token("k"));
    let mut k1 = k1;
    subscribe_jl(&mut k1, room, false);
    wa.wait_members(room, &[("wa", 1), ("wb", 1), ("k", 1)], EXPIRY);
    let c = node(&broker.addr());
    let mut wc = Watcher::new(c.connect(&member_token("wc")));
    wc.wait_members(room, &[("wa", 1), ("wb", 1), ("k", 1)], EXPIRY);

    // b is killed: its members (wb, k) leave on a once the ttl has passed without its liveness.
    b.child.kill().expect("SIGKILL");
    let _ = b.wait_exit(WAIT);
    wa.wait_events_within("b's members expire", EXPIRY, |e| {
        has(e, "leave", "wb") && has(e, "leave", "k")
    });
    wa.wait_members(room, &[("wa", 1)], EXPIRY);
    wc.wait_members(room, &[("wa", 1)], EXPIRY);
    drop(k1);
}

#[test]
fn a_node_cut_from_kafka_expires_and_comes_back_with_what_changed_meanwhile() {
    let (proxy, broker) = broker_behind_proxy();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 2);
    kafka.create_topic("up", 1);
    kafka.create_topic("presence", 2);
    let start = |id: &str| {
        let path = config_file(&format!("{CONFIG}client_id = \"{id}\"\n"));
        let topics = Topics::new(&["push"], "up");
        let cfg = path.to_str().expect("utf-8 path").to_string();
        start_ready(
            2,
            &broker.addr(),
            &topics,
            &["--config", &cfg],
            &[("push", 0), ("push", 1), ("up", 0)],
        )
    };
    let a = start("gw-a");
    let b = start("gw-b");
    assert!(proxy.seen("gw-b") > 0, "b goes through the proxy");
    let room = "room_cut";
    let mut wa = Watcher::new(a.connect(&member_token("wa")));
    let r = wa.ask(json!({"type": "subscribe", "channel": room, "join_leave": true}));
    assert_eq!(r["ok"], true, "{r}");
    let mut k = b.connect(&member_token("k"));
    subscribe_jl(&mut k, room, false);
    wa.wait_events("k joins", |e| has(e, "join", "k"));

    // b loses Kafka: a expires its members. Meanwhile k leaves and k2 arrives on b; their writes
    // fail and are retried once b reaches the broker again.
    proxy.cut("gw-b");
    wa.wait_events_within("k expires with its node", EXPIRY, |e| has(e, "leave", "k"));
    wa.wait_members(room, &[("wa", 1)], EXPIRY);
    k.unsubscribe(room);
    let mut k2 = b.connect(&member_token("k2"));
    subscribe_jl(&mut k2, room, false);
    let failures = || metric_value(&b.metrics(), "gateway_presence_write_failures_total", &[]);
    wait_until("b's writes fail while it is cut off", EXPIRY, || {
        failures().is_some_and(|n| n > 0.0)
    });
    proxy.restore();
    wa.wait_events_within("k2 joins once b is back", EXPIRY, |e| has(e, "join", "k2"));
    wa.wait_members(room, &[("wa", 1), ("k2", 1)], EXPIRY);
    wa.c.expect_silence(QUIET);
    let r = wa.ask(json!({"type": "presence", "channel": room}));
    assert_eq!(members(&r).len(), 2, "k stays gone: {r}");
}
