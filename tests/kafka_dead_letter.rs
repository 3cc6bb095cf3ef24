//! Records that fit neither routing form go to the dead-letter topic with the reason
//! (`gateway-error`) and their origin (`gateway-source` = topic:partition:offset), are counted in
//! `gateway_kafka_records_dead_lettered_total{reason}`, and never stop consumption: a good record
//! after them in the same partition is delivered.

mod common;
mod kafka_common;

use common::*;
use kafka_common::*;
use serde_json::json;
use std::collections::BTreeMap;

#[test]
fn malformed_records_are_dead_lettered_and_consumption_continues() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 2);
    kafka.create_topic("up", 1);
    kafka.create_topic("dlq", 1);
    let topics = Topics::new(&["push"], "up").with_dead_letter("dlq");
    let gw = start_ready(
        2,
        &broker.addr(),
        &topics,
        &[],
        &[("push", 0), ("push", 1), ("up", 0)],
    );
    let mut clients = gw.clients_on_every_shard(1, |i| token(&format!("u{i}"), &["room_*"], &[]));
    for c in clients.iter_mut() {
        c.subscribe("room_ok");
    }

    // (reason, record): every way a record can fail.
    let long_channel = "c".repeat(10_000);
    let bad: Vec<(&str, rskafka::record::Record)> = vec![
        ("bad_json", record(Some(b"room_ok"), Some(b"{nope"), &[])),
        ("bad_json", record(None, Some(b"not json at all"), &[])),
        ("bad_key", record(Some(b"\xff\xfe"), Some(b"{}"), &[])),
        ("bad_key", record(Some(b"has space"), Some(b"{}"), &[])),
        ("bad_key", record(Some(b""), Some(b"{}"), &[])),
        (
            "bad_key",
            record(Some(long_channel.as_bytes()), Some(b"{}"), &[]),
        ),
        ("bad_envelope", record(None, None, &[])),
        ("bad_envelope", record(None, Some(b"[1,2]"), &[])),
        ("bad_envelope", record(None, Some(br#"{"data":1}"#), &[])),
        (
            "bad_envelope",
            record(None, Some(br#"{"channel":7,"data":1}"#), &[]),
        ),
        (
            "bad_envelope",
            record(None, Some(br#"{"channel":"a b","data":1}"#), &[]),
        ),
        (
            "bad_envelope",
            record(None, Some(br#"{"channel":"room_ok","event":5}"#), &[]),
        ),
        (
            "bad_priority",
            record(Some(b"room_ok"), Some(b"{}"), &[("priority", b"9")]),
        ),
        (
            "bad_priority",
            record(Some(b"room_ok"), Some(b"{}"), &[("priority", b"high")]),
        ),
        (
            "bad_priority",
            record(None, Some(br#"{"channel":"room_ok","priority":0}"#), &[]),
        ),
        (
            "bad_header",
            record(Some(b"room_ok"), Some(b"{}"), &[("event", b"\xff")]),
        ),
        (
            "bad_header",
            record(Some(b"room_ok"), Some(b"{}"), &[("id", b"\xc3\x28")]),
        ),
    ];
    let mut expected_reasons: BTreeMap<&str, usize> = BTreeMap::new();
    // source "push:<p>:<offset>" -> (reason, original record)
    let mut sources: BTreeMap<String, (&str, rskafka::record::Record)> = BTreeMap::new();
    for (k, (reason, rec)) in bad.into_iter().enumerate() {
        // Alternate partitions, so both shards dead-letter.
        let p = (k % 2) as i32;
        let o = kafka.produce_one("push", p, rec.clone());
        *expected_reasons.entry(reason).or_default() += 1;
        sources.insert(format!("push:{p}:{o}"), (reason, rec));
    }
    // A good record after the bad ones in each partition, one of them in a batch with a bad one.
    let good0 = kafka.produce_one("push", 0, keyed("room_ok", &json!({"i": 0}), &[]));
    let batch = kafka.produce(
        "push",
        1,
        vec![
            record(Some(b"room_ok"), Some(b"{oops"), &[]),
            keyed("room_ok", &json!({"i": 1}), &[]),
        ],
    );
    *expected_reasons.entry("bad_json").or_default() += 1;
    sources.insert(
        format!("push:1:{}", batch[0]),
        ("bad_json", record(Some(b"room_ok"), Some(b"{oops"), &[])),
    );

    for c in clients.iter_mut() {
        let got = recv_messages(c, 2, DELIVERY);
        let mut got_pos: Vec<String> = got
            .iter()
            .map(|m| m["pos"].as_str().unwrap().to_string())
            .collect();
        got_pos.sort();
        assert_eq!(
            got_pos,
            vec![pos("push", 0, good0), pos("push", 1, batch[1])],
            "shard {}: only the good records are delivered: {got:?}",
            c.shard()
        );
        c.expect_silence(QUIET);
    }

    // The dead-letter topic has every bad record, once, with its reason and origin.
    let total = sources.len();
    let dead = kafka.read("dlq", 0, 0, total, DELIVERY);
    assert_eq!(dead.len(), total, "dead letters");
    let mut seen = BTreeMap::new();
    for d in &dead {
        let r = &d.record;
        let source = header(r, "gateway-source")
            .unwrap_or_else(|| panic!("no gateway-source header: {r:?}"))
            .to_string();
        let reason = header(r, "gateway-error").expect("gateway-error header");
        let (want_reason, orig) = sources
            .get(&source)
            .unwrap_or_else(|| panic!("dead letter from an unexpected source {source}: {r:?}"));
        assert_eq!(reason, *want_reason, "reason of {source}");
        assert_eq!(r.key, orig.key, "{source}: the original key is kept");
        assert_eq!(r.value, orig.value, "{source}: the original value is kept");
        for (k, v) in &orig.headers {
            assert_eq!(r.headers.get(k), Some(v), "{source}: header {k} is kept");
        }
        assert!(seen.insert(source.clone(), ()).is_none(), "{source} twice");
    }

    // Counted by reason.
    let text = gw.metrics();
    for (reason, n) in &expected_reasons {
        let v = metric_value(
            &text,
            "gateway_kafka_records_dead_lettered_total",
            &[("reason", reason)],
        );
        assert_eq!(v, Some(*n as f64), "dead-lettered {reason}");
    }
    // Consumed counts every record read, good and bad.
    let s = stats(&gw);
    let consumed: i64 = (0..2)
        .map(|p| {
            partition_stats(&s, "push", p).unwrap()["consumed"]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(consumed as usize, total + 2, "consumed: {}", s["kafka"]);
}

#[test]
fn without_a_dead_letter_topic_bad_records_are_counted_and_skipped() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 1);
    kafka.create_topic("up", 1);
    let topics = Topics::new(&["push"], "up");
    let gw = start_ready(1, &broker.addr(), &topics, &[], &[("push", 0), ("up", 0)]);
    let mut c = gw.connect(&token("u", &["room_*"], &[]));
    c.subscribe("room_ok");
    kafka.produce_each(
        "push",
        0,
        vec![
            record(Some(b"room_ok"), Some(b"{bad"), &[]),
            record(None, Some(b"[]"), &[]),
            keyed("room_ok", &json!({"i": 1}), &[]),
        ],
    );
    let got = recv_messages(&mut c, 1, DELIVERY);
    assert_eq!(got[0]["data"], json!({"i": 1}));
    c.expect_silence(QUIET);
    let text = gw.metrics();
    for reason in ["bad_json", "bad_envelope"] {
        assert_eq!(
            metric_value(
                &text,
                "gateway_kafka_records_dead_lettered_total",
                &[("reason", reason)]
            ),
            Some(1.0),
            "{reason}"
        );
    }
}

#[test]
fn a_missing_dead_letter_topic_does_not_stop_consumption() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 1);
    kafka.create_topic("up", 1);
    let topics = Topics::new(&["push"], "up").with_dead_letter("no-such-topic");
    let gw = start_ready(1, &broker.addr(), &topics, &[], &[("push", 0), ("up", 0)]);
    let mut c = gw.connect(&token("u", &["room_*"], &[]));
    c.subscribe("room_ok");
    kafka.produce_each(
        "push",
        0,
        vec![
            record(Some(b"room_ok"), Some(b"{bad"), &[]),
            keyed("room_ok", &json!({"i": 1}), &[]),
        ],
    );
    let got = recv_messages(&mut c, 1, DELIVERY);
    assert_eq!(got[0]["data"], json!({"i": 1}));
    assert_eq!(
        metric_value(
            &gw.metrics(),
            "gateway_kafka_records_dead_lettered_total",
            &[("reason", "bad_json")]
        ),
        Some(1.0)
    );
}
