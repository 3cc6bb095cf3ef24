//! `since` with Kafka for a backlog far beyond the in-memory history (`--history-size 2`): the
//! gateway reads the channel's partition back page by page as the client's queue drains, so the
//! client gets `recovered: true`, then every record once, in offset order, then live ones. And a
//! `since` naming a partition the channel does not map to (Kafka's default partitioner on the
//! channel name) is answered `recovered: false`, with the subscription live from then on.
//!
//! Layout: topic `push` (2 partitions; partition p is consumed by shard p % 2) and `up`.

mod common;
mod kafka_common;

use common::*;
use kafka_common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const TOPIC: &str = "push";
const PARTITIONS: i32 = 2;
/// Records produced while the client is away.
const BACKLOG: usize = 2000;
/// Records per produce call (one record batch each).
const BATCH: usize = 100;
/// How long the whole replay may take to arrive.
const REPLAY: Duration = Duration::from_secs(60);

fn start() -> (Broker, Kafka, Gateway) {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic(TOPIC, PARTITIONS);
    kafka.create_topic("up", 1);
    let topics = Topics::new(&[TOPIC], "up");
    let gw = start_ready(
        2,
        &broker.addr(),
        &topics,
        &["--history-size", "2"],
        &[(TOPIC, 0), (TOPIC, 1), ("up", 0)],
    );
    (broker, kafka, gw)
}

/// The first name `<prefix><i>` that Kafka's default partitioner puts in partition `p`.
fn channel_in_partition(prefix: &str, p: i32) -> String {
    channel_where(prefix, p, PARTITIONS, |_| true)
}

fn data(i: usize, text: usize) -> Value {
    if text == 0 {
        json!({"i": i})
    } else {
        json!({"i": i, "text": "x".repeat(text)})
    }
}

/// Produces records `from..to` of `channel` to partition `p` in batches of [`BATCH`], each batch
/// ending with a record of another channel; returns the channel's offsets.
fn produce_backlog(
    kafka: &Kafka,
    p: i32,
    channel: &str,
    from: usize,
    to: usize,
    text: usize,
) -> Vec<i64> {
    let mut offsets = Vec::with_capacity(to - from);
    let mut i = from;
    while i < to {
        let end = (i + BATCH).min(to);
        let mut recs: Vec<_> = (i..end)
            .map(|k| keyed(channel, &data(k, text), &[]))
            .collect();
        recs.push(keyed("noise", &json!({"n": i}), &[]));
        let o = kafka.produce(TOPIC, p, recs);
        offsets.extend_from_slice(&o[..end - i]);
        i = end;
    }
    offsets
}

/// A client sees record 0 of `channel` (in partition `p`) and leaves; [`BACKLOG`] records of
/// `text` bytes are produced; a new connection on `sub_shard` subscribes since record 0.
fn backlog_case(gw: &Gateway, kafka: &Kafka, channel: &str, sub_shard: u64, text: usize) {
    let p = default_partition(channel, PARTITIONS);
    let case = format!(
        "{channel} in {TOPIC}/{p} (consumed by shard {}), subscriber on shard {sub_shard}, \
         {text}-byte records",
        p % 2
    );
    let tok = token("kb", &[channel], &[]);
    let mut first = gw.connect(&tok);
    first.subscribe(channel);
    // Record 0 is a batch of its own, so the read back starts at a batch boundary.
    let o0 = kafka.produce_one(TOPIC, p, keyed(channel, &data(0, text), &[]));
    let m = first.recv_message(channel);
    assert_eq!(
        m["pos"],
        pos(TOPIC, p, o0),
        "{case}: expected record 0 live: {m}"
    );
    let since = m["pos"].as_str().unwrap().to_string();
    first.close();

    let t = Instant::now();
    let offsets = produce_backlog(kafka, p, channel, 1, BACKLOG + 1, text);
    eprintln!("{case}: produced {BACKLOG} records in {:?}", t.elapsed());
    // The gateway has consumed them all: only the broker can answer.
    wait_position(gw, TOPIC, p, offsets[BACKLOG - 1] + 2);

    let mut c = gw.connect_on_shard(&tok, sub_shard);
    let t = Instant::now();
    let r =
        c.request(&json!({"type": "subscribe", "id": "since", "channel": channel, "since": since}));
    assert_eq!(
        r["type"], "reply",
        "{case}: expected the subscribe reply first: {r}"
    );
    assert_eq!(
        r["ok"], true,
        "{case}: expected the since subscribe to succeed: {r}"
    );
    assert_eq!(
        r["recovered"], true,
        "{case}: expected recovered:true, the partition still holds every record: {r}"
    );
    let got = recv_messages(&mut c, BACKLOG, REPLAY);
    eprintln!("{case}: replayed {BACKLOG} records in {:?}", t.elapsed());
    for (k, (m, o)) in got.iter().zip(&offsets).enumerate() {
        assert_eq!(
            m["data"]["i"],
            k + 1,
            "{case}: expected record {} next (in order, none missing or twice), got i={} pos={}",
            k + 1,
            m["data"]["i"],
            m["pos"]
        );
        assert_eq!(
            m["pos"],
            pos(TOPIC, p, *o),
            "{case}: expected the record's pos"
        );
        assert_eq!(
            m["channel"], channel,
            "{case}: expected only the channel's records"
        );
    }

    // Then live records, nothing twice.
    let live = produce_backlog(kafka, p, channel, BACKLOG + 1, BACKLOG + 3, text);
    let got = recv_messages(&mut c, 2, DELIVERY);
    assert_eq!(
        indices(&got),
        vec![BACKLOG as i64 + 1, BACKLOG as i64 + 2],
        "{case}: expected the live records after the replay"
    );
    assert_eq!(
        got[1]["pos"],
        pos(TOPIC, p, live[1]),
        "{case}: expected the live record's pos"
    );
    c.expect_silence(QUIET);
    c.close();
}

/// 2,000 small records: read back by the shard that consumes the partition, for a subscriber on
/// the other shard (partition 0) and on the same shard (partition 1).
#[test]
fn backlog_of_small_records_is_read_back_from_the_partition() {
    let (_broker, kafka, gw) = start();
    for p in 0..PARTITIONS {
        let channel = channel_in_partition(&format!("kbs_{p}_"), p);
        backlog_case(&gw, &kafka, &channel, 1, 0);
    }
}

/// 2,000 records of about 1 KiB, some 2 MiB, eight times the default send queue: the read back
/// must be paged as the client drains its queue, not closed with 1013.
#[test]
fn backlog_of_1kib_records_is_paged_to_the_client() {
    let (_broker, kafka, gw) = start();
    let channel = channel_in_partition("kbl_", 0);
    backlog_case(&gw, &kafka, &channel, 1, 1000);
}

/// A `since` naming a record of the other partition (a real position, but not in the partition
/// the channel maps to) cannot say what the channel missed: `recovered: false`, nothing
/// replayed, and the subscription gets live records from then on.
#[test]
fn since_in_a_partition_the_channel_does_not_map_to_is_not_recovered() {
    let (_broker, kafka, gw) = start();
    for sub_shard in 0..2u64 {
        for p in 0..PARTITIONS {
            let channel = channel_in_partition(&format!("kbx_{sub_shard}_{p}_"), p);
            let case = format!("{channel} in {TOPIC}/{p}, subscriber on shard {sub_shard}");
            // The channel has records in its own partition from offset 0 on...
            let mine = produce_backlog(&kafka, p, &channel, 0, 5, 0);
            // ...and the since names a record in the other one.
            let other = kafka.produce_one(TOPIC, 1 - p, keyed("elsewhere", &json!({}), &[]));
            wait_position(&gw, TOPIC, p, mine[4] + 2);
            wait_position(&gw, TOPIC, 1 - p, other + 1);
            let since = pos(TOPIC, 1 - p, other);

            let mut c = gw.connect_on_shard(&token("kx", &[&channel], &[]), sub_shard);
            let r = c.request(&json!({
                "type": "subscribe", "id": "since", "channel": channel, "since": since,
            }));
            assert_eq!(
                r["type"], "reply",
                "{case}: expected the subscribe reply: {r}"
            );
            assert_eq!(r["ok"], true, "{case} since {since}: expected ok: {r}");
            assert_eq!(
                r["recovered"], false,
                "{case} since {since}: expected recovered:false for another partition: {r}"
            );
            c.expect_silence(QUIET);
            let o = kafka.produce_one(TOPIC, p, keyed(&channel, &json!({"i": 99}), &[]));
            let m = c.recv_message(&channel);
            assert_eq!(
                m["pos"],
                pos(TOPIC, p, o),
                "{case}: expected the live record first, nothing replayed: {m}"
            );
            c.expect_silence(QUIET);
            c.close();
        }
    }
}
