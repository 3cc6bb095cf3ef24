//! Records produced to the push topics reach subscribers: on every shard, in partition order, with
//! `pos` = `<topic>:<partition>:<offset, 12 digits>` and `id`/`event`/`priority` from the headers;
//! every routing form (keyed with and without headers, keyless envelope, `user:<sub>`,
//! `broadcast`); topics with fewer and with more partitions than shards; a burst of 5000 records;
//! a record over the fetch size limit; and `--kafka-start-from latest`.

mod common;
mod kafka_common;

use common::*;
use kafka_common::*;
use rskafka::client::partition::Compression;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Messages grouped by channel, each channel's in arrival order.
fn by_channel(msgs: &[Value]) -> BTreeMap<String, Vec<Value>> {
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for m in msgs {
        let ch = m["channel"].as_str().expect("message channel").to_string();
        out.entry(ch).or_default().push(m.clone());
    }
    out
}

#[test]
fn records_reach_subscribers_on_both_shards_in_partition_order() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    let gw = standard_gateway(&kafka, &broker.addr(), &[]);
    let mut clients = gw.clients_on_every_shard(1, |i| token(&format!("u{i}"), &["room_*"], &[]));
    let shards: Vec<u64> = clients.iter().map(Client::shard).collect();
    assert_eq!(shards, vec![0, 1], "one subscriber per shard");
    let channels = ["room_a", "room_b"];
    for c in clients.iter_mut() {
        for ch in channels {
            c.subscribe(ch);
        }
    }

    // Per partition: 4 records as batches of their own, then 4 in one batch.
    let priorities = [Some("1"), Some("2"), None, Some("4")];
    // Per channel: (offset, data, priority) of each record.
    let mut expected: BTreeMap<&str, Vec<(i64, Value, i64)>> = BTreeMap::new();
    for (p, ch) in channels.iter().enumerate() {
        let p = p as i32;
        let recs = |range: std::ops::Range<usize>| -> Vec<rskafka::record::Record> {
            range
                .map(|i| {
                    let id = format!("id-{p}-{i}");
                    let ev = format!("ev{i}");
                    let mut h = vec![("event", ev.as_str()), ("id", id.as_str())];
                    if let Some(pr) = priorities[i % 4] {
                        h.push(("priority", pr));
                    }
                    keyed(ch, &json!({"i": i, "p": p}), &h)
                })
                .collect()
        };
        let mut offsets = kafka.produce_each("push", p, recs(0..4));
        offsets.extend(kafka.produce("push", p, recs(4..8)));
        for (i, o) in offsets.into_iter().enumerate() {
            let pr = priorities[i % 4].map_or(3, |s| s.parse().unwrap());
            expected
                .entry(ch)
                .or_default()
                .push((o, json!({"i": i, "p": p}), pr));
        }
    }

    for c in clients.iter_mut() {
        let got = by_channel(&recv_messages(c, 16, DELIVERY));
        for (p, ch) in channels.iter().enumerate() {
            let msgs = &got[*ch];
            let want = &expected[*ch];
            assert_eq!(msgs.len(), want.len(), "{ch} on shard {}", c.shard());
            for (k, (m, (offset, data, priority))) in msgs.iter().zip(want).enumerate() {
                let what = format!("{ch} message {k} on shard {}: {m}", c.shard());
                assert_eq!(m["data"], *data, "{what}");
                assert_eq!(m["pos"], pos("push", p as i32, *offset), "{what}");
                assert_eq!(m["id"], format!("id-{p}-{k}"), "{what}");
                assert_eq!(m["event"], format!("ev{k}"), "{what}");
                assert_eq!(m["priority"], *priority, "{what}");
                assert!(m["ts"].as_u64().is_some(), "{what}: ts");
                assert!(
                    m.get("from").is_none(),
                    "{what}: no from without a user header"
                );
            }
            // pos strings sort like the offsets.
            let positions: Vec<&str> = msgs.iter().map(|m| m["pos"].as_str().unwrap()).collect();
            let mut sorted = positions.clone();
            sorted.sort();
            assert_eq!(positions, sorted, "{ch}: pos increases");
        }
        c.expect_silence(QUIET);
    }
    // The zero-padding is literal: offset 0 of partition 1.
    assert_eq!(pos("push", 1, 0), "push:1:000000000000");
}

#[test]
fn every_routing_form_reaches_the_right_connections() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("events", 2);
    kafka.create_topic("up", 1);
    let topics = Topics::new(&["events"], "up");
    let gw = start_ready(
        2,
        &broker.addr(),
        &topics,
        &[],
        &[("events", 0), ("events", 1), ("up", 0)],
    );
    let alice_tok = token("alice", &["room_*"], &[]);
    let mut alice0 = gw.connect_on_shard(&alice_tok, 0);
    let mut alice1 = gw.connect_on_shard(&alice_tok, 1);
    let mut bob = gw.connect(&token("bob", &["room_*"], &[]));
    for c in [&mut alice0, &mut alice1, &mut bob] {
        c.subscribe("room_r");
    }

    // Partition 0 (consumed by shard 0), then partition 1 (shard 1).
    let p0 = vec![
        keyed(
            "room_r",
            &json!({"form": "keyed+headers"}),
            &[("event", "chat"), ("id", "k-1"), ("priority", "2")],
        ),
        keyed("room_r", &json!({"form": "keyed"}), &[]),
        record(Some(b"room_r"), None, &[("event", b"novalue")]),
        record(Some(b"room_r"), Some(b""), &[("event", b"empty")]),
        envelope(&json!({
            "channel": "room_r", "event": "env", "id": "e-1", "priority": 1, "data": {"form": "envelope"}
        })),
        envelope(&json!({"channel": "room_r"})),
        keyed("user:alice", &json!({"form": "user"}), &[("event", "dm")]),
    ];
    let p1 = vec![
        envelope(&json!({"channel": "user:bob", "data": {"form": "user-envelope"}})),
        keyed(
            "broadcast",
            &json!({"form": "broadcast"}),
            &[("event", "all")],
        ),
        envelope(
            &json!({"channel": "broadcast", "priority": 4, "data": {"form": "broadcast-envelope"}}),
        ),
    ];
    let o0 = kafka.produce_each("events", 0, p0);
    let o1 = kafka.produce_each("events", 1, p1);
    // A compressed batch is routed like any other.
    let o2 = kafka.produce_compressed(
        "events",
        0,
        vec![
            keyed("room_r", &json!({"form": "gzip", "n": 0}), &[]),
            keyed("room_r", &json!({"form": "gzip", "n": 1}), &[]),
        ],
        Compression::Gzip,
    );

    let room: Vec<Value> = vec![
        json!({"id": "k-1", "event": "chat", "priority": 2, "data": {"form": "keyed+headers"}, "pos": pos("events", 0, o0[0])}),
        json!({"id": pos("events", 0, o0[1]), "event": null, "priority": 3, "data": {"form": "keyed"}, "pos": pos("events", 0, o0[1])}),
        json!({"id": pos("events", 0, o0[2]), "event": "novalue", "priority": 3, "data": null, "pos": pos("events", 0, o0[2])}),
        json!({"id": pos("events", 0, o0[3]), "event": "empty", "priority": 3, "data": null, "pos": pos("events", 0, o0[3])}),
        json!({"id": "e-1", "event": "env", "priority": 1, "data": {"form": "envelope"}, "pos": pos("events", 0, o0[4])}),
        json!({"id": pos("events", 0, o0[5]), "event": null, "priority": 3, "data": null, "pos": pos("events", 0, o0[5])}),
        json!({"id": pos("events", 0, o2[0]), "event": null, "priority": 3, "data": {"form": "gzip", "n": 0}, "pos": pos("events", 0, o2[0])}),
        json!({"id": pos("events", 0, o2[1]), "event": null, "priority": 3, "data": {"form": "gzip", "n": 1}, "pos": pos("events", 0, o2[1])}),
    ];
    let alice_dm = json!({"id": pos("events", 0, o0[6]), "event": "dm", "priority": 3, "data": {"form": "user"}, "pos": pos("events", 0, o0[6])});
    let bob_dm = json!({"id": pos("events", 1, o1[0]), "event": null, "priority": 3, "data": {"form": "user-envelope"}, "pos": pos("events", 1, o1[0])});
    let everyone = vec![
        json!({"id": pos("events", 1, o1[1]), "event": "all", "priority": 3, "data": {"form": "broadcast"}, "pos": pos("events", 1, o1[1])}),
        json!({"id": pos("events", 1, o1[2]), "event": null, "priority": 4, "data": {"form": "broadcast-envelope"}, "pos": pos("events", 1, o1[2])}),
    ];

    let check = |c: &mut Client, name: &str, personal: &str, dm: &Value| {
        let got = by_channel(&recv_messages(c, room.len() + 1 + everyone.len(), DELIVERY));
        let expect: BTreeMap<String, Vec<Value>> = [
            ("room_r".to_string(), room.clone()),
            (personal.to_string(), vec![dm.clone()]),
            ("broadcast".to_string(), everyone.clone()),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            got.keys().collect::<Vec<_>>(),
            expect.keys().collect::<Vec<_>>(),
            "{name}: channels"
        );
        for (ch, want) in &expect {
            let have = &got[ch];
            assert_eq!(have.len(), want.len(), "{name}/{ch}: {have:?}");
            for (m, w) in have.iter().zip(want) {
                for k in ["id", "priority", "data", "pos"] {
                    assert_eq!(m[k], w[k], "{name}/{ch} {k}: {m}");
                }
                assert_eq!(
                    m.get("event").cloned().unwrap_or(Value::Null),
                    w["event"],
                    "{name}/{ch} event: {m}"
                );
            }
        }
        c.expect_silence(QUIET);
    };
    check(&mut alice0, "alice on shard 0", "user:alice", &alice_dm);
    check(&mut alice1, "alice on shard 1", "user:alice", &alice_dm);
    check(&mut bob, "bob", "user:bob", &bob_dm);
}

/// `partitions` partitions on 2 shards: a channel per partition, 10 records each, subscribers on
/// both shards get all of them, each channel in order.
fn deliver_all(partitions: i32) {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", partitions);
    kafka.create_topic("up", 1);
    let topics = Topics::new(&["push"], "up");
    let mut expect: Vec<(&str, i32)> = (0..partitions).map(|p| ("push", p)).collect();
    expect.push(("up", 0));
    let gw = start_ready(2, &broker.addr(), &topics, &[], &expect);
    let mut clients = gw.clients_on_every_shard(1, |i| token(&format!("u{i}"), &["ch_*"], &[]));
    let channels: Vec<String> = (0..partitions).map(|p| format!("ch_{p}")).collect();
    for c in clients.iter_mut() {
        for ch in &channels {
            c.subscribe(ch);
        }
    }
    let n = 10;
    let mut offsets = Vec::new();
    for (p, ch) in channels.iter().enumerate() {
        let recs: Vec<_> = (0..n).map(|i| keyed(ch, &json!({"i": i}), &[])).collect();
        // Half as single-record batches, half as one batch.
        let mut o = kafka.produce_each("push", p as i32, recs[..n / 2].to_vec());
        o.extend(kafka.produce("push", p as i32, recs[n / 2..].to_vec()));
        offsets.push(o);
    }
    for c in clients.iter_mut() {
        let got = by_channel(&recv_messages(c, n * partitions as usize, DELIVERY));
        for (p, ch) in channels.iter().enumerate() {
            let msgs = &got[ch];
            assert_eq!(
                indices(msgs),
                (0..n as i64).collect::<Vec<_>>(),
                "{ch} on shard {}",
                c.shard()
            );
            let positions: Vec<String> = msgs
                .iter()
                .map(|m| m["pos"].as_str().unwrap().to_string())
                .collect();
            let want: Vec<String> = offsets[p]
                .iter()
                .map(|o| pos("push", p as i32, *o))
                .collect();
            assert_eq!(positions, want, "{ch} positions");
        }
        c.expect_silence(QUIET);
    }
    // Every partition is consumed by exactly the shard p % 2 (it appears once in /stats).
    let s = stats(&gw);
    for p in 0..partitions {
        let e = partition_stats(&s, "push", p).expect("partition listed");
        assert_eq!(e["consumed"], n, "push/{p}: {e}");
    }
}

#[test]
fn a_topic_with_fewer_partitions_than_shards_delivers_everything() {
    deliver_all(1);
}

#[test]
fn a_topic_with_more_partitions_than_shards_delivers_everything() {
    deliver_all(5);
}

#[test]
fn a_burst_of_5000_records_arrives_complete_and_in_order() {
    const N: usize = 5000;
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("burst", 1);
    kafka.create_topic("up", 1);
    let topics = Topics::new(&["burst"], "up");
    // The send queue is large enough that a reader that falls behind for a moment on this busy
    // machine is not closed with 1013: this is about the Kafka path dropping nothing.
    let gw = start_ready(
        2,
        &broker.addr(),
        &topics,
        &["--queue-bytes", "16777216"],
        &[("burst", 0), ("up", 0)],
    );
    let mut clients = gw.clients_on_every_shard(1, |i| token(&format!("u{i}"), &["firehose"], &[]));
    for c in clients.iter_mut() {
        c.subscribe("firehose");
    }
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            std::thread::spawn(move || {
                let msgs = recv_messages(&mut c, N, Duration::from_secs(60));
                (c.shard(), msgs)
            })
        })
        .collect();
    let mut offsets = Vec::with_capacity(N);
    for chunk in 0..N / 100 {
        let recs = (chunk * 100..(chunk + 1) * 100)
            .map(|i| keyed("firehose", &json!({"i": i}), &[]))
            .collect();
        offsets.extend(kafka.produce("burst", 0, recs));
    }
    for r in readers {
        let (shard, msgs) = r.join().expect("reader thread");
        let idx = indices(&msgs);
        let first_gap = idx.iter().enumerate().find(|(k, i)| **i != *k as i64);
        assert!(
            first_gap.is_none(),
            "shard {shard}: first out-of-order or missing message at {first_gap:?}"
        );
        for (m, o) in msgs.iter().zip(&offsets) {
            assert_eq!(m["pos"], pos("burst", 0, *o), "shard {shard}");
        }
    }
    let s = stats(&gw);
    let e = partition_stats(&s, "burst", 0).unwrap();
    assert_eq!(e["consumed"], N, "{e}");
}

/// A record larger than a fetch's byte limit (1 MiB) is still delivered, and the partition goes on.
#[test]
fn a_record_larger_than_the_fetch_limit_does_not_stall_its_partition() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 1);
    kafka.create_topic("up", 1);
    let topics = Topics::new(&["push"], "up");
    // The send queue must hold the big message.
    let gw = start_ready(
        1,
        &broker.addr(),
        &topics,
        &["--queue-bytes", "8388608"],
        &[("push", 0), ("up", 0)],
    );
    let mut c = gw.connect(&token("big", &["big"], &[]));
    c.subscribe("big");
    let text = "x".repeat(1_500_000);
    kafka.produce_one("push", 0, keyed("big", &json!({"text": text}), &[]));
    kafka.produce_one("push", 0, keyed("big", &json!({"i": 1}), &[]));
    let got = recv_messages(&mut c, 2, DELIVERY);
    assert_eq!(
        got[0]["data"]["text"].as_str().map(str::len),
        Some(1_500_000)
    );
    assert_eq!(got[1]["data"], json!({"i": 1}));
}

#[test]
fn start_from_latest_skips_what_was_there_before() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 1);
    kafka.create_topic("up", 1);
    let old: Vec<_> = (0..3)
        .map(|i| keyed("room_l", &json!({"i": i}), &[]))
        .collect();
    kafka.produce_each("push", 0, old);
    let topics = Topics::new(&["push"], "up").starting_at_latest();
    let gw = start_ready(2, &broker.addr(), &topics, &[], &[("push", 0), ("up", 0)]);
    // The consumer has taken its start offset once it reports a position at the end.
    wait_position(&gw, "push", 0, 3);
    let mut c = gw.connect(&token("l", &["room_*"], &[]));
    c.subscribe("room_l");
    let new: Vec<_> = (3..5)
        .map(|i| keyed("room_l", &json!({"i": i}), &[]))
        .collect();
    let o = kafka.produce_each("push", 0, new);
    let got = recv_messages(&mut c, 2, DELIVERY);
    assert_eq!(indices(&got), vec![3, 4]);
    assert_eq!(got[0]["pos"], pos("push", 0, o[0]));
    c.expect_silence(QUIET);
}
