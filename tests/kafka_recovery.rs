//! `since` with Kafka: a position older than the in-memory history (`--history-size 2`) is
//! recovered by reading the partition back from the broker: `recovered: true`, then exactly the
//! channel's records after it, in order, then live ones. For a partition consumed by the
//! subscriber's shard and by the other one (partition p is consumed by shard p % 2), for many
//! clients recovering the same partition at once (from positions inside one record batch), and
//! `recovered: false` for positions the gateway cannot answer.

mod common;
mod kafka_common;

use common::*;
use kafka_common::*;
use serde_json::{json, Value};
use std::time::Duration;

/// The replay follows the reply at once; this long without a frame means it is over.
const REPLAY_QUIET: Duration = Duration::from_secs(3);

fn subscribe_since(c: &mut Client, channel: &str, since: &str) -> Value {
    let r =
        c.request(&json!({"type": "subscribe", "id": "since", "channel": channel, "since": since}));
    assert_eq!(r["type"], "reply", "{r}");
    r
}

/// Records `i` for `from..to` of `channel`, each followed by a record of another channel (as one
/// batch of two for even `i`, two batches of one for odd `i`); returns the channel's offsets.
fn produce_with_noise(
    kafka: &Kafka,
    topic: &str,
    p: i32,
    channel: &str,
    from: usize,
    to: usize,
) -> Vec<i64> {
    let mut offsets = Vec::new();
    for i in from..to {
        let recs = vec![
            keyed(channel, &json!({"i": i}), &[("id", &format!("m{i}"))]),
            keyed("noise", &json!({"n": i}), &[]),
        ];
        // Alternate single-record batches and two-record batches.
        if i % 2 == 0 {
            offsets.push(kafka.produce(topic, p, recs)[0]);
        } else {
            let o = kafka.produce_each(topic, p, recs);
            offsets.push(o[0]);
        }
    }
    offsets
}

/// A 2-shard gateway with `--history-size 2` consuming `push_topics` (2 partitions each).
fn start(push_topics: &[&str]) -> (Broker, Kafka, Gateway) {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    let mut parts = Vec::new();
    for t in push_topics {
        kafka.create_topic(t, 2);
        parts.extend([(*t, 0), (*t, 1)]);
    }
    kafka.create_topic("up", 1);
    parts.push(("up", 0));
    let topics = Topics::new(push_topics, "up");
    let gw = start_ready(2, &broker.addr(), &topics, &["--history-size", "2"], &parts);
    (broker, kafka, gw)
}

/// A client sees record 0 of `channel` (in `topic`/`p`) and leaves; ten more are produced; a new
/// connection on `sub_shard` subscribes since record 0: it must get exactly the ten, then live ones.
fn recover_case(gw: &Gateway, kafka: &Kafka, topic: &str, p: i32, channel: &str, sub_shard: u64) {
    let case = format!(
        "{channel} in {topic}/{p} (consumed by shard {}), subscriber on shard {sub_shard}",
        p % 2
    );
    let tok = token("r", &[channel], &[]);
    let mut first = gw.connect(&tok);
    first.subscribe(channel);
    let o0 = kafka.produce_one(topic, p, keyed(channel, &json!({"i": 0}), &[]));
    let m = first.recv_message(channel);
    assert_eq!(m["pos"], pos(topic, p, o0), "{case}: {m}");
    let last_seen = m["pos"].as_str().unwrap().to_string();
    first.close();

    // Ten records while away, more than the two kept in memory.
    let missed = produce_with_noise(kafka, topic, p, channel, 1, 11);
    wait_position(gw, topic, p, missed[9] + 2);

    let mut c = gw.connect_on_shard(&tok, sub_shard);
    let r = subscribe_since(&mut c, channel, &last_seen);
    assert_eq!(r["ok"], true, "{case}: {r}");
    assert_eq!(r["recovered"], true, "{case}: {r}");
    let got = recv_up_to(&mut c, 10, REPLAY_QUIET);
    assert_eq!(
        indices(&got),
        (1..11).collect::<Vec<_>>(),
        "{case}: exactly the missed ones, in order"
    );
    for (m, o) in got.iter().zip(&missed) {
        assert_eq!(m["pos"], pos(topic, p, *o), "{case}: {m}");
        assert_eq!(m["channel"], channel, "{case}: {m}");
        assert_eq!(m["id"], format!("m{}", m["data"]["i"]), "{case}: {m}");
    }
    // Then live ones, nothing twice.
    let live = produce_with_noise(kafka, topic, p, channel, 11, 13);
    let got = recv_messages(&mut c, 2, DELIVERY);
    assert_eq!(indices(&got), vec![11, 12], "{case}: live after replay");
    assert_eq!(got[1]["pos"], pos(topic, p, live[1]), "{case}");
    c.expect_silence(QUIET);
    c.close();
}

#[test]
fn since_beyond_memory_is_read_back_from_kafka_on_either_shard() {
    // "push" is the second consumed topic here; see the next test for the first one.
    let (_broker, kafka, gw) = start(&["aux", "push"]);
    for sub_shard in 0..2u64 {
        for p in 0..2i32 {
            let channel = channel_where(&format!("rec_{sub_shard}_"), p, 2, |_| true);
            recover_case(&gw, &kafka, "push", p, &channel, sub_shard);
        }
    }
}

/// Partition 0 of the first consumed topic is as recoverable as any other, whichever shard the
/// channel's name hashes to.
#[test]
fn since_in_partition_0_of_the_first_topic_is_read_back_from_kafka() {
    let (_broker, kafka, gw) = start(&["push"]);
    // The name's owner shard (FNV-1a) matters for channels of the in-process bus only.
    for name_owner in 0..2 {
        for sub_shard in 0..2u64 {
            let prefix = format!("first_{name_owner}_{sub_shard}_");
            let channel = channel_where(&prefix, 0, 2, |c| {
                gateway::topology::owner_of(c, 2) == name_owner
            });
            recover_case(&gw, &kafka, "push", 0, &channel, sub_shard);
        }
    }
}

#[test]
fn ten_clients_recover_the_same_partition_at_once() {
    let (_broker, kafka, gw) = start(&["push"]);
    let crowd = &channel_where("crowd_", 1, 2, |_| true);
    let tok = token("crowd", &[crowd, "noise"], &[]);
    let mut live = gw.connect(&tok);
    live.subscribe(crowd);
    let offsets = produce_with_noise(&kafka, "push", 1, crowd, 0, 12);
    let end = kafka.produce_one("push", 1, keyed("noise", &json!({}), &[]));
    let seen = recv_messages(&mut live, 12, DELIVERY);
    assert_eq!(indices(&seen), (0..12).collect::<Vec<_>>());
    let positions: Vec<String> = seen
        .iter()
        .map(|m| m["pos"].as_str().unwrap().to_string())
        .collect();
    for (p, o) in positions.iter().zip(&offsets) {
        assert_eq!(*p, pos("push", 1, *o));
    }
    wait_position(&gw, "push", 1, end + 1);

    // Ten clients, spread over the shards, each since a different position; all the requests are
    // sent before any answer is read.
    let mut clients: Vec<Client> = (0..10).map(|_| gw.connect(&tok)).collect();
    for (k, c) in clients.iter_mut().enumerate() {
        c.send_json(
            &json!({"type": "subscribe", "id": "since", "channel": crowd, "since": positions[k]}),
        );
    }
    for (k, c) in clients.iter_mut().enumerate() {
        let r = c.recv_json(DELIVERY);
        assert_eq!(r["type"], "reply", "client {k}: {r}");
        assert_eq!(r["ok"], true, "client {k}: {r}");
        assert_eq!(
            r["recovered"], true,
            "client {k} since {}: {r}",
            positions[k]
        );
        let got = recv_up_to(c, 11 - k, REPLAY_QUIET);
        assert_eq!(
            indices(&got),
            (k as i64 + 1..12).collect::<Vec<_>>(),
            "client {k} (shard {})",
            c.shard()
        );
        for m in &got {
            let i = m["data"]["i"].as_i64().unwrap() as usize;
            assert_eq!(m["pos"], positions[i].as_str(), "client {k}: {m}");
        }
    }
    let o = kafka.produce_one("push", 1, keyed(crowd, &json!({"i": 12}), &[]));
    for (k, c) in clients
        .iter_mut()
        .chain(std::iter::once(&mut live))
        .enumerate()
    {
        let got = recv_messages(c, 1, DELIVERY);
        assert_eq!(got[0]["pos"], pos("push", 1, o), "client {k}");
        c.expect_silence(QUIET);
    }
}

/// A `since` naming a record in the middle of a multi-record batch, with more batches after it.
#[test]
fn since_inside_a_record_batch_recovers_the_rest_of_the_batch() {
    let (_broker, kafka, gw) = start(&["push"]);
    let batched = &channel_where("batched_", 1, 2, |_| true);
    let tok = token("b", &[batched], &[]);
    let mut live = gw.connect(&tok);
    live.subscribe(batched);
    let mut offsets = kafka.produce(
        "push",
        1,
        (0..6)
            .map(|i| keyed(batched, &json!({"i": i}), &[]))
            .collect(),
    );
    offsets.extend(
        kafka.produce(
            "push",
            1,
            (6..8)
                .map(|i| keyed(batched, &json!({"i": i}), &[]))
                .collect(),
        ),
    );
    let end = kafka.produce_one("push", 1, keyed("noise", &json!({}), &[]));
    let seen = recv_messages(&mut live, 8, DELIVERY);
    assert_eq!(indices(&seen), (0..8).collect::<Vec<_>>());
    wait_position(&gw, "push", 1, end + 1);
    // Since the last record of the first batch (the read starts at the next batch), then since
    // records inside it.
    for k in [5usize, 1, 4] {
        let mut c = gw.connect(&tok);
        let since = seen[k]["pos"].as_str().unwrap();
        let r = subscribe_since(&mut c, batched, since);
        assert_eq!(r["recovered"], true, "since {since}: {r}");
        let got = recv_up_to(&mut c, 7 - k, REPLAY_QUIET);
        assert_eq!(
            indices(&got),
            (k as i64 + 1..8).collect::<Vec<_>>(),
            "since record {k} ({since})"
        );
        for m in &got {
            let i = m["data"]["i"].as_i64().unwrap() as usize;
            assert_eq!(m["pos"], pos("push", 1, offsets[i]), "{m}");
        }
        c.expect_silence(QUIET);
        c.close();
    }
}

/// A client of a node that went away resubscribes on another node with its last `pos`: the
/// other node never held those records in memory (it started at `latest`, after them) and reads
/// them back from the broker. Partition `p` of the only push topic.
fn since_from_another_node(p: i32) {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 2);
    kafka.create_topic("up", 1);
    let parts = [("push", 0), ("push", 1), ("up", 0)];
    let topics = Topics::new(&["push"], "up");
    let node_a = start_ready(2, &broker.addr(), &topics, &[], &parts);
    let moving = &channel_where("moving_", p, 2, |_| true);
    let tok = token("mover", &[moving], &[]);
    let mut c = node_a.connect(&tok);
    c.subscribe(moving);
    let first = kafka.produce_each(
        "push",
        p,
        (0..3)
            .map(|i| keyed(moving, &json!({"i": i}), &[]))
            .collect(),
    );
    let got = recv_messages(&mut c, 3, DELIVERY);
    let last_seen = got[2]["pos"].as_str().unwrap().to_string();
    assert_eq!(last_seen, pos("push", p, first[2]));
    drop(c);
    drop(node_a);

    let node_b = start_ready(
        2,
        &broker.addr(),
        &topics.starting_at_latest(),
        &["--history-size", "2"],
        &parts,
    );
    wait_position(&node_b, "push", p, first[2] + 1);
    let missed = produce_with_noise(&kafka, "push", p, moving, 3, 8);
    wait_position(&node_b, "push", p, missed[4] + 2);
    for sub_shard in 0..2u64 {
        let case = format!("partition {p}, subscriber on shard {sub_shard}");
        let mut c = node_b.connect_on_shard(&tok, sub_shard);
        let r = subscribe_since(&mut c, moving, &last_seen);
        assert_eq!(r["recovered"], true, "{case}: {r}");
        let got = recv_up_to(&mut c, 5, REPLAY_QUIET);
        assert_eq!(indices(&got), (3..8).collect::<Vec<_>>(), "{case}");
        for (m, o) in got.iter().zip(&missed) {
            assert_eq!(m["pos"], pos("push", p, *o), "{case}: {m}");
        }
        c.expect_silence(QUIET);
        c.close();
    }
}

#[test]
fn since_from_another_node_is_recovered_from_kafka() {
    since_from_another_node(1);
}

/// The same for partition 0 of the first consumed topic.
#[test]
fn since_from_another_node_in_partition_0_of_the_first_topic_is_recovered_from_kafka() {
    since_from_another_node(0);
}

#[test]
fn positions_the_gateway_cannot_answer_are_not_recovered() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    let gw = standard_gateway(&kafka, &broker.addr(), &["--history-size", "2"]);
    let tok = token("n", &["room_*"], &[]);
    let mut c = gw.connect(&tok);
    c.subscribe("room_n");
    // The partition of "push" where "room_n" lives, and the other one.
    let home = default_partition("room_n", 2);
    let other = format!("push:{}:000000000000", 1 - home);
    kafka.produce_one("push", home, keyed("room_n", &json!({"i": 0}), &[]));
    c.recv_message("room_n");
    c.unsubscribe("room_n");

    // A topic the gateway does not consume; a partition the topic does not have; a partition the
    // channel does not map to.
    for since in [
        "elsewhere:0:000000000000",
        "push:9:000000000000",
        other.as_str(),
    ] {
        let r = subscribe_since(&mut c, "room_n", since);
        assert_eq!(r["ok"], true, "{since}: {r}");
        assert_eq!(r["recovered"], false, "{since}: {r}");
        c.expect_silence(QUIET);
        // Still subscribed for live messages.
        let o = kafka.produce_one("push", home, keyed("room_n", &json!({"since": since}), &[]));
        let m = c.recv_message("room_n");
        assert_eq!(m["pos"], pos("push", home, o), "{since}: {m}");
        c.unsubscribe("room_n");
    }
    // Not a Kafka pos at all.
    for since in ["garbage", "19a-000000000001", "push:x:1"] {
        let r = subscribe_since(&mut c, "room_n", since);
        assert_eq!(r["ok"], false, "{since}: {r}");
        assert_eq!(r["error"]["code"], "bad_request", "{since}: {r}");
    }
}
