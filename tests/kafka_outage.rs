//! The broker going away and coming back. A TCP proxy (in this test) sits in front of Tansu, which
//! advertises the proxy's address, so every client goes through it; the proxy tags connections by
//! the client id of their first request and cuts only the gateway's (`gateway`), while the test's
//! producer (`test-producer`) keeps working. And a gateway started while no broker listens.

mod common;
mod kafka_common;

use common::*;
use kafka_common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How long the gateway may take to report a lost broker (rskafka gives up on a request after 3 s).
const DETECT: Duration = Duration::from_secs(10);
/// How long it may take to get going again once the broker is back (reconnects back off up to
/// 5 s) or for a publish to fail while it is away.
const OUTAGE: Duration = Duration::from_secs(20);

fn degraded(gw: &Gateway) -> bool {
    let (code, h) = health(gw);
    let s = stats(gw);
    code == 200
        && h["status"] == "degraded"
        && h["kafka"] == "unavailable"
        && s["kafka"]["status"] == "unavailable"
}

fn healthy(gw: &Gateway) -> bool {
    let (code, h) = health(gw);
    code == 200 && h["status"] == "ok" && h["kafka"] == "ok"
}

/// 10 records `i` in `from..from + 10` of `ch_<p>` to partition `p`, for p in 0 and 1.
fn produce_round(kafka: &Kafka, from: usize) -> BTreeMap<String, Vec<i64>> {
    let mut offsets = BTreeMap::new();
    for p in 0..2 {
        let ch = format!("ch_{p}");
        let recs: Vec<_> = (from..from + 10)
            .map(|i| keyed(&ch, &json!({"i": i}), &[]))
            .collect();
        // Some single-record batches, then one batch.
        let mut o = kafka.produce_each("push", p, recs[..4].to_vec());
        o.extend(kafka.produce("push", p, recs[4..].to_vec()));
        offsets.insert(ch, o);
    }
    offsets
}

/// Reads 20 messages and checks each channel got `from..from + 10` at `offsets`, in order.
fn expect_round(
    c: &mut Client,
    from: usize,
    offsets: &BTreeMap<String, Vec<i64>>,
    limit: Duration,
) {
    let got = recv_messages(c, 20, limit);
    let mut by: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in got {
        by.entry(m["channel"].as_str().unwrap().to_string())
            .or_default()
            .push(m);
    }
    for (p, (ch, offs)) in offsets.iter().enumerate() {
        let msgs = by.get(ch).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            indices(msgs),
            (from as i64..from as i64 + 10).collect::<Vec<_>>(),
            "{ch} on shard {}: each record once, in order",
            c.shard()
        );
        for (m, o) in msgs.iter().zip(offs) {
            assert_eq!(m["pos"], pos("push", p as i32, *o), "{m}");
        }
    }
}

#[test]
fn a_cut_broker_degrades_health_and_nothing_is_lost_or_repeated_after() {
    let (proxy, broker) = broker_behind_proxy();
    let kafka = Kafka::connect(&broker.addr());
    let gw = standard_gateway(&kafka, &broker.addr(), &[]);
    assert!(
        proxy.seen("gateway") > 0,
        "the gateway goes through the proxy"
    );
    assert!(proxy.seen("test-producer") > 0, "the test producer too");

    let mut members =
        gw.clients_on_every_shard(1, |i| token(&format!("m{i}"), &["ch_*"], &["ch_*"]));
    for m in members.iter_mut() {
        m.subscribe("ch_0");
        m.subscribe("ch_1");
    }
    let before = produce_round(&kafka, 0);
    for m in members.iter_mut() {
        expect_round(m, 0, &before, DELIVERY);
    }

    proxy.cut("gateway");
    wait_until("health degraded after the cut", DETECT, || degraded(&gw));
    let s = stats(&gw);
    assert!(
        s["kafka"]["shards"]
            .as_array()
            .unwrap()
            .iter()
            .any(|sh| sh["up"] == false && sh["last_error"].is_string()),
        "a shard reports why: {}",
        s["kafka"]
    );

    // The producer still gets through; the gateway does not.
    let during = produce_round(&kafka, 10);
    // Publishing through the gateway fails cleanly meanwhile.
    members[0].send_json(&json!({"type": "publish", "id": "out", "channel": "ch_0", "data": 0}));
    let r = http_post(
        gw.admin_addr,
        "/api/publish",
        Some(API_KEY),
        &json!({"channel": "ch_0", "data": 0}).to_string(),
    );
    assert_eq!(r.status, 503, "HTTP publish while Kafka is cut: {}", r.body);
    let reply = members[0].recv_json(OUTAGE);
    assert_eq!(reply["id"], "out", "{reply}");
    assert_eq!(
        reply["ok"], false,
        "client publish while Kafka is cut: {reply}"
    );
    assert_eq!(reply["error"]["code"], "internal", "{reply}");

    proxy.restore();
    wait_until("health ok after the restore", OUTAGE, || healthy(&gw));
    for m in members.iter_mut() {
        expect_round(m, 10, &during, OUTAGE);
        // Nothing twice (the failed publishes were never produced).
        m.expect_silence(QUIET);
    }
    // And live delivery goes on.
    let after = produce_round(&kafka, 20);
    for m in members.iter_mut() {
        expect_round(m, 20, &after, DELIVERY);
        m.expect_silence(QUIET);
    }
}

#[test]
fn a_gateway_started_without_a_broker_serves_and_catches_up_when_it_appears() {
    let port = free_port();
    let topics = Topics::new(&["push"], "up");
    let gw = start_gateway(2, &format!("127.0.0.1:{port}"), &topics, &[]);
    let mut members = gw.clients_on_every_shard(1, |i| token(&format!("m{i}"), &["ch_*"], &[]));
    for m in members.iter_mut() {
        m.subscribe("ch_0");
        m.subscribe("ch_1");
    }
    // `starting` until the first connection attempt has failed (its retries last up to 3 s).
    wait_until("health degraded without a broker", DELIVERY, || {
        health(&gw).0 == 200
    });
    let (code, h) = health(&gw);
    assert_eq!(code, 200, "{h}");
    assert_eq!(h["status"], "degraded", "{h}");
    assert_eq!(h["kafka"], "unavailable", "{h}");
    assert_eq!(stats(&gw)["kafka"]["status"], "unavailable");
    let r = http_post(
        gw.admin_addr,
        "/api/publish",
        Some(API_KEY),
        &json!({"channel": "ch_0", "data": 0}).to_string(),
    );
    assert_eq!(r.status, 503, "HTTP publish without Kafka: {}", r.body);

    let broker = Broker::start_at(port, port);
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 2);
    kafka.create_topic("up", 1);
    wait_kafka_ready(&gw, &[("push", 0), ("push", 1), ("up", 0)]);
    let offsets = produce_round(&kafka, 0);
    for m in members.iter_mut() {
        expect_round(m, 0, &offsets, DELIVERY);
        m.expect_silence(QUIET);
    }
    // A client connected now is served too.
    let mut late = gw.connect(&token("late", &["ch_*"], &[]));
    late.subscribe("ch_0");
    late.subscribe("ch_1");
    let more = produce_round(&kafka, 10);
    expect_round(&mut late, 10, &more, DELIVERY);
}
