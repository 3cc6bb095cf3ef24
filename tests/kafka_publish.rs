//! Publishing with Kafka: a client `publish` frame and `POST /api/publish` are produced to the
//! upstream topic (key = channel, partitioned like Kafka's default partitioner, header `user` = the
//! sender for clients, an `id`), answered with the record's `pos` once the broker has it, and reach
//! members when consumed back, with that same `pos`, on every shard and on every node sharing the
//! broker. Also the Kafka figures in `/stats` and `/metrics`.

mod common;
mod kafka_common;

use common::*;
use kafka_common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// `POST /api/publish`; the admin's producer connects in the background at start, so a 503
/// "Kafka unavailable" is retried for a few seconds. Returns the 200 answer.
fn http_publish(gw: &Gateway, body: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http_post(
            gw.admin_addr,
            "/api/publish",
            Some(API_KEY),
            &body.to_string(),
        );
        if r.status == 503 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        assert_eq!(r.status, 200, "publish {body}: {} {}", r.status, r.body);
        let v = r.json();
        assert_eq!(v["ok"], true, "{v}");
        return v;
    }
}

fn setup(upstream_partitions: i32) -> (Broker, Kafka, Topics, Vec<(&'static str, i32)>) {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    kafka.create_topic("push", 1);
    kafka.create_topic("up", upstream_partitions);
    let mut parts = vec![("push", 0)];
    parts.extend((0..upstream_partitions).map(|p| ("up", p)));
    (broker, kafka, Topics::new(&["push"], "up"), parts)
}

#[test]
fn kafka_murmur2_of_the_tests_matches_kafkas_vectors() {
    // From Kafka's UtilsTest: the tests' own partitioner is right.
    assert_eq!(kafka_murmur2(b"21"), -973932308);
    assert_eq!(kafka_murmur2(b"foobar"), -790332482);
    assert_eq!(kafka_murmur2(b"a-little-bit-long-string"), -985981536);
    assert_eq!(kafka_murmur2(b"a-little-bit-longer-string"), -1486304829);
    assert_eq!(
        kafka_murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
        -58897971
    );
    assert_eq!(kafka_murmur2(b"abc"), 479470107);
}

#[test]
fn a_client_publish_goes_through_the_upstream_topic_and_back() {
    let (broker, kafka, topics, parts) = setup(3);
    let gw = start_ready(2, &broker.addr(), &topics, &[], &parts);
    let mut members = gw.clients_on_every_shard(1, |i| token(&format!("m{i}"), &["room_*"], &[]));
    for m in members.iter_mut() {
        m.subscribe("room_pub");
    }
    let mut publisher = gw.connect(&token("pubber", &["room_*"], &["room_*"]));
    publisher.subscribe("room_pub");

    let mut positions = Vec::new();
    for (k, channel_data) in [json!({"text": "hi"}), json!([1, 2, 3])].iter().enumerate() {
        let req = json!({
            "type": "publish", "id": format!("p{k}"), "channel": "room_pub", "event": "chat",
            "data": channel_data, "priority": 2
        });
        let (reply, own) = publish_frame(&mut publisher, &req, 1);
        assert_eq!(reply["ok"], true, "{reply}");
        let pos_s = reply["pos"].as_str().expect("reply pos").to_string();
        let (topic, p, offset) = parse_pos(&pos_s);
        assert_eq!(topic, "up", "{reply}");
        assert_eq!(
            p,
            default_partition("room_pub", 3),
            "partitioned like Kafka's default partitioner"
        );
        assert_eq!(pos_s, pos("up", p, offset), "pos format");

        // The record in the upstream topic.
        let rec = kafka.read_at("up", p, offset);
        assert_eq!(rec.key.as_deref(), Some(&b"room_pub"[..]), "key = channel");
        assert_eq!(header(&rec, "user"), Some("pubber"), "user header");
        let id = header(&rec, "id").expect("id header").to_string();
        assert!(!id.is_empty());
        assert_eq!(header(&rec, "event"), Some("chat"));
        assert_eq!(header(&rec, "priority"), Some("2"));
        let value: Value = serde_json::from_slice(rec.value.as_deref().unwrap()).unwrap();
        assert_eq!(value, *channel_data, "value = data");

        // Members on both shards, and the publisher, get it with the same pos.
        let mut all = own;
        for m in members.iter_mut() {
            all.extend(recv_messages(m, 1, DELIVERY));
        }
        for m in &all {
            assert_eq!(m["channel"], "room_pub", "{m}");
            assert_eq!(m["pos"], pos_s.as_str(), "{m}");
            assert_eq!(m["id"], id.as_str(), "{m}");
            assert_eq!(m["from"], "pubber", "{m}");
            assert_eq!(m["event"], "chat", "{m}");
            assert_eq!(m["priority"], 2, "{m}");
            assert_eq!(m["data"], *channel_data, "{m}");
        }
        positions.push(pos_s);
    }
    assert_ne!(positions[0], positions[1]);

    // Not allowed by the publish claim: refused, nothing produced.
    let r = publisher
        .request(&json!({"type": "publish", "id": "x", "channel": "elsewhere", "data": 1}));
    assert_eq!(r["ok"], false, "{r}");
    assert_eq!(r["error"]["code"], "forbidden", "{r}");
    for m in members.iter_mut() {
        m.expect_silence(QUIET);
    }
    publisher.expect_silence(QUIET);
}

#[test]
fn an_http_publish_goes_through_the_upstream_topic_and_back() {
    let (broker, kafka, topics, parts) = setup(2);
    let gw = start_ready(2, &broker.addr(), &topics, &[], &parts);
    let mut members = gw.clients_on_every_shard(1, |i| token(&format!("m{i}"), &["room_*"], &[]));
    for m in members.iter_mut() {
        m.subscribe("room_http");
    }
    let v = http_publish(
        &gw,
        &json!({"channel": "room_http", "event": "verdict", "id": "run-7", "priority": 1, "data": {"result": "AC"}}),
    );
    assert_eq!(v["channel"], "room_http", "{v}");
    let pos_s = v["pos"].as_str().expect("pos").to_string();
    let (topic, p, offset) = parse_pos(&pos_s);
    assert_eq!(topic, "up");
    assert_eq!(p, default_partition("room_http", 2));
    let rec = kafka.read_at("up", p, offset);
    assert_eq!(rec.key.as_deref(), Some(&b"room_http"[..]));
    assert_eq!(header(&rec, "id"), Some("run-7"));
    assert_eq!(header(&rec, "event"), Some("verdict"));
    assert_eq!(header(&rec, "priority"), Some("1"));
    assert_eq!(header(&rec, "user"), None, "no user for an HTTP publish");
    for m in members.iter_mut() {
        let got = recv_messages(m, 1, DELIVERY);
        let msg = &got[0];
        assert_eq!(msg["channel"], "room_http", "{msg}");
        assert_eq!(msg["pos"], pos_s.as_str(), "{msg}");
        assert_eq!(msg["id"], "run-7", "{msg}");
        assert_eq!(msg["event"], "verdict", "{msg}");
        assert_eq!(msg["priority"], 1, "{msg}");
        assert_eq!(msg["data"], json!({"result": "AC"}), "{msg}");
        assert!(msg.get("from").is_none(), "{msg}");
    }

    // user:<sub> reaches only that user; broadcast reaches everyone.
    let target = members[1].user();
    http_publish(
        &gw,
        &json!({"channel": format!("user:{target}"), "data": {"dm": 1}}),
    );
    let got = recv_messages(&mut members[1], 1, DELIVERY);
    assert_eq!(got[0]["channel"], format!("user:{target}"));
    members[0].expect_silence(QUIET);
    http_publish(&gw, &json!({"channel": "broadcast", "data": {"all": 1}}));
    for m in members.iter_mut() {
        let got = recv_messages(m, 1, DELIVERY);
        assert_eq!(got[0]["channel"], "broadcast");
        assert_eq!(got[0]["data"], json!({"all": 1}));
    }

    // Malformed input and a wrong key are refused before Kafka.
    let r = http_post(gw.admin_addr, "/api/publish", Some(API_KEY), "{nope");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = http_post(
        gw.admin_addr,
        "/api/publish",
        Some("wrong"),
        &json!({"channel": "room_http"}).to_string(),
    );
    assert_eq!(r.status, 401, "{}", r.body);
}

#[test]
fn two_nodes_on_one_broker_see_each_others_publishes() {
    let (broker, _kafka, topics, parts) = setup(2);
    let node_a = start_ready(1, &broker.addr(), &topics, &[], &parts);
    let node_b = start_ready(2, &broker.addr(), &topics, &[], &parts);
    let mut members_b =
        node_b.clients_on_every_shard(1, |i| token(&format!("b{i}"), &["room_*"], &[]));
    for m in members_b.iter_mut() {
        m.subscribe("room_x");
    }
    let mut member_a = node_a.connect(&token("a-member", &["room_*"], &[]));
    member_a.subscribe("room_x");
    let mut publisher = node_a.connect(&token("a-pub", &["room_*"], &["room_*"]));

    let req = json!({"type": "publish", "id": "f", "channel": "room_x", "data": {"via": "frame"}});
    let (reply, _) = publish_frame(&mut publisher, &req, 0);
    assert_eq!(reply["ok"], true, "{reply}");
    let frame_pos = reply["pos"].as_str().unwrap().to_string();
    let http_pos = http_publish(
        &node_a,
        &json!({"channel": "room_x", "data": {"via": "http"}}),
    )["pos"]
        .as_str()
        .unwrap()
        .to_string();
    // And the other way round.
    let back_pos = http_publish(
        &node_b,
        &json!({"channel": "room_x", "data": {"via": "http-b"}}),
    )["pos"]
        .as_str()
        .unwrap()
        .to_string();

    let want = [
        (json!({"via": "frame"}), frame_pos.as_str()),
        (json!({"via": "http"}), http_pos.as_str()),
        (json!({"via": "http-b"}), back_pos.as_str()),
    ];
    for (name, c) in members_b
        .iter_mut()
        .map(|c| ("node B", c))
        .chain(std::iter::once(("node A", &mut member_a)))
    {
        // Same channel, same upstream partition: in produce order.
        let got = recv_messages(c, 3, DELIVERY);
        for (m, (data, p)) in got.iter().zip(&want) {
            assert_eq!(m["data"], *data, "{name} shard {}: {m}", c.shard());
            assert_eq!(m["pos"], *p, "{name}: {m}");
        }
        c.expect_silence(QUIET);
    }
}

#[test]
fn stats_and_metrics_report_the_partitions() {
    let broker = Broker::start();
    let kafka = Kafka::connect(&broker.addr());
    let gw = standard_gateway(&kafka, &broker.addr(), &[]);
    let mut c = gw.connect(&token("obs", &["room_*"], &["room_*"]));
    c.subscribe("room_obs");
    let produced = [7usize, 4];
    for (p, n) in produced.iter().enumerate() {
        let recs = (0..*n)
            .map(|i| keyed("room_obs", &json!({"i": i}), &[]))
            .collect();
        kafka.produce_each("push", p as i32, recs);
    }
    recv_messages(&mut c, 11, DELIVERY);
    for (p, n) in produced.iter().enumerate() {
        wait_position(&gw, "push", p as i32, *n as i64);
    }
    let s = stats(&gw);
    assert_eq!(s["bus"], "kafka", "{s}");
    assert_eq!(s["kafka"]["status"], "ok", "{}", s["kafka"]);
    let shards = s["kafka"]["shards"].as_array().expect("kafka.shards");
    assert_eq!(shards.len(), 2);
    assert!(shards.iter().all(|sh| sh["up"] == true), "{shards:?}");
    for (p, n) in produced.iter().enumerate() {
        let e = partition_stats(&s, "push", p as i32).unwrap();
        assert_eq!(e["position"], *n, "push/{p}: {e}");
        assert_eq!(e["high_watermark"], *n, "push/{p}: {e}");
        assert_eq!(e["lag"], 0, "push/{p}: {e}");
        assert_eq!(e["consumed"], *n, "push/{p}: {e}");
    }
    let e = partition_stats(&s, "up", 0).unwrap();
    assert_eq!(e["consumed"], 0, "{e}");

    // A client publish: produce latency observed, and the record consumed back.
    let req = json!({"type": "publish", "id": "1", "channel": "room_obs", "data": {"i": 99}});
    let (reply, got) = publish_frame(&mut c, &req, 1);
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(got[0]["pos"], reply["pos"]);
    wait_position(&gw, "up", 0, 1);

    let text = gw.metrics();
    let m = |name: &str, labels: &[(&str, &str)]| {
        metric_value(&text, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?}"))
    };
    for (p, n) in produced.iter().enumerate() {
        let p = p.to_string();
        let l = [("topic", "push"), ("partition", p.as_str())];
        assert_eq!(m("gateway_kafka_position", &l), *n as f64, "position {l:?}");
        assert_eq!(m("gateway_kafka_high_watermark", &l), *n as f64);
        assert_eq!(m("gateway_kafka_lag", &l), 0.0);
        assert_eq!(
            m("gateway_kafka_records_consumed_total", &l),
            *n as f64,
            "consumed {l:?}"
        );
    }
    let l = [("topic", "up"), ("partition", "0")];
    assert_eq!(m("gateway_kafka_position", &l), 1.0);
    assert_eq!(m("gateway_kafka_records_consumed_total", &l), 1.0);
    assert_eq!(m("gateway_kafka_records_routed_total", &[]), 12.0);
    assert!(m("gateway_kafka_produce_latency_seconds_count", &[]) >= 1.0);
    assert!(m("gateway_kafka_record_to_socket_seconds_count", &[]) >= 12.0);
    assert_eq!(m("gateway_kafka_up", &[("shard", "0")]), 1.0);
    assert_eq!(m("gateway_kafka_up", &[("shard", "1")]), 1.0);
}
