//! `/health` with Kafka: a starting node answers 503 `starting` until every partition it consumes
//! has its start offset, so a load balancer never sends it a client whose `since` it would answer
//! `internal` ("not being consumed yet"). Once it says 200, every partition is listed and a
//! `since` into any of them is answered.

mod common;
mod kafka_common;

use common::*;
use kafka_common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn health_says_starting_until_every_partition_has_a_position() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 4);
    kafka.create_topic("up", 1);
    let p = 3;
    let channel = channel_where("ch_", p, 4, |_| true);
    let offsets = kafka.produce_each(
        "push",
        p,
        (0..3)
            .map(|i| keyed(&channel, &json!({"i": i}), &[]))
            .collect(),
    );
    let gw = start_gateway(2, &broker.addr(), &Topics::new(&["push"], "up"), &[]);

    // Polled from the ready line on: nothing but 503 `starting` before the first 200 `ok`.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let (code, h) = health(&gw);
        if seen.last() != Some(&(code, h.clone())) {
            seen.push((code, h.clone()));
        }
        if code == 200 {
            assert_eq!(
                h["status"], "ok",
                "first 200 was not ok; answers seen: {seen:?}"
            );
            break;
        }
        assert_eq!((code, &h["status"]), (503, &json!("starting")), "{seen:?}");
        assert!(Instant::now() < deadline, "never healthy: {seen:?}");
        std::thread::sleep(Duration::from_millis(2));
    }

    // At the first 200, every partition is known, and a `since` into one is answered.
    let s = stats(&gw);
    for (t, q) in [
        ("push", 0),
        ("push", 1),
        ("push", 2),
        ("push", 3),
        ("up", 0),
    ] {
        assert!(
            partition_stats(&s, t, q).is_some(),
            "{t}/{q} not listed: {}",
            s["kafka"]
        );
    }
    let mut c = gw.connect(&token("u", &["*"], &[]));
    let r = c.request(&json!({"type": "subscribe", "id": "s", "channel": channel,
        "since": pos("push", p, offsets[0])}));
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["recovered"], true, "{r}");
    assert_eq!(indices(&recv_messages(&mut c, 2, DELIVERY)), vec![1, 2]);
}
