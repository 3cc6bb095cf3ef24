//! The admin listener: /health, /metrics, /stats, and the checks of POST /api/publish.

mod common;

use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn health_is_ok_while_serving() {
    let gw = Gateway::start(&[]);
    let r = http_get(gw.admin_addr, "/health");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json(), json!({"status": "ok"}));
}

#[test]
fn metrics_exposition_has_the_documented_series() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut c = gw.connect(&token("m", &["room_*"], &[]));
    c.subscribe("room_m");
    gw.publish(&json!({"channel": "room_m", "data": 1}));
    c.recv_message("room_m");
    let _ = Client::try_connect(gw.ws_addr, "garbage");

    // A message is counted as delivered (and its latency recorded) just after the socket write
    // that sent it, so the client may have it a moment before the counters move: poll.
    let deadline = Instant::now() + WAIT;
    let text = loop {
        let r = http_get(gw.admin_addr, "/metrics");
        assert_eq!(r.status, 200, "{r:?}");
        let delivered = metric_sum(&r.body, "gateway_messages_delivered_total") >= 1.0
            && metric_sum(&r.body, "gateway_delivery_latency_seconds_count") >= 1.0;
        if delivered || Instant::now() >= deadline {
            break r.body;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let m = &text;
    for name in [
        "gateway_connections",
        "gateway_messages_delivered_total",
        "gateway_auth_failures_total",
        "gateway_delivery_latency_seconds_bucket",
        "gateway_queue_bytes",
    ] {
        assert!(
            m.lines().any(|l| l.starts_with(name)),
            "/metrics lacks {name}:\n{m}"
        );
    }
    assert_eq!(metric_sum(m, "gateway_connections"), 1.0, "{m}");
    assert!(
        metric_sum(m, "gateway_messages_delivered_total") >= 1.0,
        "{m}"
    );
    assert!(metric_sum(m, "gateway_auth_failures_total") >= 1.0, "{m}");
    assert!(
        metric_sum(m, "gateway_delivery_latency_seconds_count") >= 1.0,
        "{m}"
    );
}

#[test]
fn stats_has_one_entry_per_shard() {
    let gw = Gateway::start_sharded(2, &[]);
    let clients = gw.clients_on_every_shard(1, |i| token(&format!("s{i}"), &[], &[]));
    // The extra connections that helper closed may be counted until their shard has finished
    // with them (just after the client saw the connection end): poll.
    let deadline = Instant::now() + WAIT;
    loop {
        let r = http_get(gw.admin_addr, "/stats");
        assert_eq!(r.status, 200, "{r:?}");
        let v = r.json();
        let shards = v["shards"].as_array().expect("shards array");
        assert_eq!(shards.len(), 2, "{v}");
        let mut total = 0;
        for (i, s) in shards.iter().enumerate() {
            let n = s["connections"]
                .as_u64()
                .unwrap_or_else(|| panic!("shard {i}: {s}"));
            total += n;
        }
        if total == clients.len() as u64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{total} connections counted, {} open: {v}",
            clients.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn http_publish_checks_key_and_body() {
    let gw = Gateway::start(&[]);
    let a = gw.admin_addr;
    let valid = json!({"channel": "room_1", "event": "e", "data": {"x": 1}}).to_string();

    let r = http_post(a, "/api/publish", None, &valid);
    assert_eq!(r.status, 401, "no key: {r:?}");
    let r = http_post(a, "/api/publish", Some("wrong-key"), &valid);
    assert_eq!(r.status, 401, "wrong key: {r:?}");
    let r = http_request(
        a,
        "POST",
        "/api/publish",
        &[("Authorization", API_KEY)],
        Some(&valid),
    );
    assert_eq!(r.status, 401, "key without Bearer: {r:?}");

    let bad_bodies = [
        ("{not json", "malformed JSON"),
        ("5", "not an object"),
        ("[1,2", "malformed array"),
        (r#"{"event":"e","data":1}"#, "missing channel"),
        (r#"{"channel":"","data":1}"#, "empty channel"),
        (r#"{"channel":5,"data":1}"#, "channel not a string"),
        (
            r#"{"channel":"room_1","priority":9,"data":1}"#,
            "priority 9",
        ),
        (
            r#"{"channel":"room_1","priority":0,"data":1}"#,
            "priority 0",
        ),
        (
            r#"{"channel":"room_1","priority":"1","data":1}"#,
            "priority as a string",
        ),
    ];
    for (body, what) in bad_bodies {
        let r = http_post(a, "/api/publish", Some(API_KEY), body);
        assert_eq!(r.status, 400, "{what}: {r:?}");
    }
    // An array is a batch (tests/publish_batch.rs): its bad elements are answered one by one.
    let r = http_post(a, "/api/publish", Some(API_KEY), "[1,2]");
    assert_eq!(r.status, 200, "{r:?}");
    let answers = r.json();
    assert_eq!(answers.as_array().map(Vec::len), Some(2), "{answers}");
    assert!(answers.as_array().unwrap().iter().all(|e| e["ok"] == false));

    let r = http_post(a, "/api/publish", Some(API_KEY), &valid);
    assert_eq!(r.status, 200, "{r:?}");
    let v = r.json();
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["pos"].as_str().is_some_and(|p| !p.is_empty()), "{v}");
    for p in 1..=4 {
        let body = json!({"channel": "room_1", "priority": p, "data": 1}).to_string();
        let r = http_post(a, "/api/publish", Some(API_KEY), &body);
        assert_eq!(r.status, 200, "priority {p}: {r:?}");
    }
}

#[test]
fn http_publish_reaches_a_subscriber() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&token("h", &["room_*"], &[]));
    c.subscribe("room_h");
    let v = gw.publish(&json!({"channel": "room_h", "event": "news", "data": {"n": 1}}));
    let m = c.recv_message("room_h");
    assert_eq!(m["pos"], v["pos"], "{m}");
    assert_eq!(m["event"], "news");
    assert_eq!(m["data"], json!({"n": 1}));
    // No id given: the message still has one.
    assert!(m["id"].as_str().is_some_and(|s| !s.is_empty()), "{m}");
}

#[test]
fn unknown_path_is_404() {
    let gw = Gateway::start(&[]);
    for path in ["/", "/nope", "/api/publishx", "/healthz"] {
        let r = http_get(gw.admin_addr, path);
        assert_eq!(r.status, 404, "{path}: {r:?}");
    }
    // The WebSocket endpoint is not on the admin port.
    let r = http_get(gw.admin_addr, "/ws");
    assert_eq!(r.status, 404, "{r:?}");
}
