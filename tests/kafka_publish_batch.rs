//! Batch publishing with Kafka (Tansu): a JSON array on `POST /api/publish` and `POST /api/broadcast`
//! are produced to the upstream topic (one request per partition), answered element by element in
//! order once the broker has acknowledged them, each with its record's `pos`; the records reach
//! members when consumed back, a channel's in the batch's order. (A failed produce answers its
//! elements `internal`, as the single form answers 503: tests/kafka_outage.rs covers that path.)

mod common;
mod kafka_common;

use common::*;
use kafka_common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `POST` with the test key; the admin's producer connects in the background, so an answer whose
/// elements say "Kafka unavailable" (or a 503) is retried for a few seconds.
fn post_until_produced(gw: &Gateway, path: &str, body: &Value) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http_post(gw.admin_addr, path, Some(API_KEY), &body.to_string());
        let answers = (r.status == 200).then(|| r.json());
        let ready = answers.as_ref().and_then(Value::as_array).is_some_and(|a| {
            a.iter()
                .all(|e| e["error"]["message"] != "Kafka unavailable")
        });
        if ready || Instant::now() >= deadline {
            assert_eq!(r.status, 200, "{path} {body}: {} {}", r.status, r.body);
            return answers
                .and_then(|a| a.as_array().cloned())
                .unwrap_or_default();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_batch_is_produced_upstream_answered_in_order_and_delivered() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 1);
    kafka.create_topic("up", 2);
    let topics = Topics::new(&["push"], "up");
    let parts = [("push", 0), ("up", 0), ("up", 1)];
    let gw = start_ready(2, &broker.addr(), &topics, &[], &parts);
    // One channel in each upstream partition.
    let a = channel_where("room_ka", 0, 2, |_| true);
    let b = channel_where("room_kb", 1, 2, |_| true);
    let mut members = gw.clients_on_every_shard(1, |i| token(&format!("k{i}"), &["room_*"], &[]));
    for m in members.iter_mut() {
        m.subscribe(&a);
        m.subscribe(&b);
    }
    let batch = json!([
        {"channel": a, "event": "e", "id": "first", "data": {"n": 0}},
        {"channel": b, "priority": 1, "data": {"n": 1}},
        {"channel": a, "priority": 0, "data": {"n": -1}},
        {"channel": a, "data": {"n": 2}},
        {"nochannel": true},
        {"channel": b, "data": {"n": 3}},
        {"channel": a, "data": {"n": 4}},
    ]);
    let answers = post_until_produced(&gw, "/api/publish", &batch);
    assert_eq!(answers.len(), 7, "{answers:?}");
    for bad in [2, 4] {
        assert_eq!(answers[bad]["ok"], false, "{}", answers[bad]);
        assert_eq!(answers[bad]["error"]["code"], "bad_request");
    }
    let good = [0, 1, 3, 5, 6];
    // One produce request per partition: each partition's records are one batch, read from its
    // first offset (Tansu answers a fetch inside a batch with the batches after it).
    let mut produced: [Vec<(usize, i64)>; 2] = Default::default();
    for i in good {
        assert_eq!(answers[i]["ok"], true, "{}", answers[i]);
        let (topic, p, offset) = parse_pos(answers[i]["pos"].as_str().expect("pos"));
        assert_eq!(topic, "up");
        let channel = batch[i]["channel"].as_str().unwrap();
        assert_eq!(p, default_partition(channel, 2), "{channel}");
        produced[p as usize].push((i, offset));
    }
    for (p, recs) in produced.iter().enumerate() {
        let offsets: Vec<i64> = recs.iter().map(|r| r.1).collect();
        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "in batch order: {offsets:?}"
        );
        let read = kafka.read("up", p as i32, offsets[0], recs.len(), WAIT);
        for (i, offset) in recs {
            let rec = &read
                .iter()
                .find(|r| r.offset == *offset)
                .expect("record")
                .record;
            let channel = batch[*i]["channel"].as_str().unwrap();
            assert_eq!(rec.key.as_deref(), Some(channel.as_bytes()));
            let value: Value = serde_json::from_slice(rec.value.as_deref().unwrap()).unwrap();
            assert_eq!(value, batch[*i]["data"]);
            if *i == 0 {
                assert_eq!(header(rec, "id"), Some("first"));
                assert_eq!(header(rec, "event"), Some("e"));
            }
        }
    }
    for m in members.iter_mut() {
        let got = recv_messages(m, 5, DELIVERY);
        for ch in [&a, &b] {
            let want: Vec<&Value> = good
                .iter()
                .filter(|i| batch[**i]["channel"] == **ch)
                .map(|i| &answers[*i]["pos"])
                .collect();
            let seen: Vec<&Value> = got
                .iter()
                .filter(|g| g["channel"] == **ch)
                .map(|g| &g["pos"])
                .collect();
            assert_eq!(seen, want, "shard {}: {ch} in order", m.shard());
        }
        m.expect_silence(QUIET);
    }

    // Broadcast: one record per channel, answered per channel.
    let c = channel_where("room_kc", 1, 2, |_| true);
    let body = json!({"channels": [a, c, "bad name", b], "event": "all", "data": {"x": 1}});
    let answers = post_until_produced(&gw, "/api/broadcast", &body);
    let oks: Vec<bool> = answers.iter().map(|x| x["ok"] == true).collect();
    assert_eq!(oks, [true, true, false, true], "{answers:?}");
    for m in members.iter_mut() {
        let got = recv_messages(m, 2, DELIVERY);
        let mut pos: Vec<&Value> = got.iter().map(|g| &g["pos"]).collect();
        pos.sort_by_key(|p| p.to_string());
        let mut want = vec![&answers[0]["pos"], &answers[3]["pos"]];
        want.sort_by_key(|p| p.to_string());
        assert_eq!(pos, want);
        assert!(got.iter().all(|g| g["event"] == "all"));
    }
}
