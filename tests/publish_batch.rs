//! Batch publishing over real HTTP, received by real WebSocket clients (in-process bus): a JSON
//! array or NDJSON on `POST /api/publish` is answered element by element in order, a bad element
//! does not stop the others, a channel's messages arrive in the batch's order (on every shard),
//! `POST /api/broadcast` sends one message to many channels, and the bounds (1 MiB body, 1000
//! elements) refuse a request whole with 413, publishing nothing.

mod common;

use common::*;
use serde_json::{json, Value};

const MAX_BATCH: usize = 1000;
const MAX_BODY: usize = 1 << 20;

/// `POST` with the test key and the given `Content-Type`.
fn post(gw: &Gateway, path: &str, content_type: &str, body: &str) -> HttpResponse {
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
        gw.admin_addr,
        body.len()
    );
    raw_exchange(gw.admin_addr, req.as_bytes())
}

fn post_json(gw: &Gateway, path: &str, body: &Value) -> HttpResponse {
    post(gw, path, "application/json", &body.to_string())
}

/// The next `n` messages of a client, whatever their channel.
fn messages(c: &mut Client, n: usize) -> Vec<Value> {
    (0..n)
        .map(|_| {
            let m = c.recv_json(WAIT);
            assert_eq!(m["type"], "message", "{m}");
            m
        })
        .collect()
}

#[test]
fn a_json_array_is_answered_element_by_element_and_arrives_in_order() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut clients = gw.clients_on_every_shard(1, |i| token(&format!("m{i}"), &["room_*"], &[]));
    // Two channels, owned by different shards: each shard's member gets both, in batch order.
    let (a, b) = (
        channel_owned_by("room_a", 0, 2),
        channel_owned_by("room_b", 1, 2),
    );
    for c in clients.iter_mut() {
        c.subscribe(&a);
        c.subscribe(&b);
    }
    let batch = json!([
        {"channel": a, "event": "e", "data": {"n": 1}},
        {"channel": b, "data": {"n": 2}, "priority": 2},
        "not an object",
        {"channel": a, "data": {"n": 3}, "id": "mine"},
        {"channel": "", "data": 0},
        {"channel": b, "data": {"n": 4}},
        {"channel": a, "priority": 9, "data": 0},
        {"channel": a, "data": {"n": 5}},
    ]);
    let r = post_json(&gw, "/api/publish", &batch);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    let answers = r.json();
    let answers = answers.as_array().expect("an array answer");
    assert_eq!(answers.len(), 8, "{answers:?}");
    for (i, bad) in [(2, "JSON object"), (4, "empty"), (6, "priority")] {
        assert_eq!(answers[i]["ok"], false, "{}", answers[i]);
        assert_eq!(answers[i]["error"]["code"], "bad_request", "{}", answers[i]);
        let msg = answers[i]["error"]["message"].as_str().unwrap();
        assert!(msg.contains(bad), "{msg}");
    }
    let good = [0, 1, 3, 5, 7];
    for i in good {
        assert_eq!(answers[i]["ok"], true, "{}", answers[i]);
        assert_eq!(answers[i]["channel"], batch[i]["channel"]);
    }
    for c in clients.iter_mut() {
        let got = messages(c, 5);
        let of = |ch: &str| -> Vec<&Value> { got.iter().filter(|m| m["channel"] == ch).collect() };
        let want_a = [0, 3, 7].map(|i| (&batch[i]["data"], &answers[i]["pos"]));
        let want_b = [1, 5].map(|i| (&batch[i]["data"], &answers[i]["pos"]));
        for (ch, want) in [(&a, &want_a[..]), (&b, &want_b[..])] {
            let seen = of(ch);
            assert_eq!(seen.len(), want.len(), "shard {}: {got:?}", c.shard());
            for (m, (data, pos)) in seen.iter().zip(want) {
                assert_eq!(&m["data"], *data, "order within {ch}: {got:?}");
                assert_eq!(&m["pos"], *pos, "{m}");
            }
        }
        assert_eq!(of(&a)[1]["id"], "mine");
        assert_eq!(of(&b)[0]["priority"], 2);
        c.expect_silence(QUIET);
    }
}

#[test]
fn ndjson_is_answered_line_by_line() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&token("n", &["room_*"], &[]));
    c.subscribe("room_n");
    let body = "{\"channel\":\"room_n\",\"data\":1}\n\
                {broken\n\
                \n\
                {\"channel\":\"room_n\",\"data\":2}\r\n\
                {\"data\":3}\n\
                {\"channel\":\"room_n\",\"data\":4}";
    let r = post(&gw, "/api/publish", "application/x-ndjson", body);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = r
        .body
        .lines()
        .map(|l| serde_json::from_str(l).expect("each answer line is JSON"))
        .collect();
    assert_eq!(lines.len(), 5, "blank lines are skipped: {lines:?}");
    let oks: Vec<bool> = lines.iter().map(|l| l["ok"] == true).collect();
    assert_eq!(oks, [true, false, true, false, true], "{lines:?}");
    assert!(lines[1]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));
    assert!(lines[3]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("channel"));
    let got = messages(&mut c, 3);
    for (m, (data, line)) in got.iter().zip([(1, 0), (2, 2), (4, 4)]) {
        assert_eq!(m["data"], data, "{got:?}");
        assert_eq!(m["pos"], lines[line]["pos"], "{m}");
    }
    c.expect_silence(QUIET);
}

#[test]
fn broadcast_sends_one_message_to_many_channels() {
    let gw = Gateway::start_sharded(2, &[]);
    let mut c = gw.connect(&token("u1", &["room_*"], &[]));
    let rooms: Vec<String> = (0..4).map(|i| format!("room_bc{i}")).collect();
    for r in &rooms {
        c.subscribe(r);
    }
    let body = json!({
        "channels": [rooms[0], rooms[1], "bad name", rooms[0], 7, rooms[2], "user:u1"],
        "event": "news", "id": "same", "priority": 1, "data": {"hello": true}
    });
    let r = post_json(&gw, "/api/broadcast", &body);
    assert_eq!(r.status, 200, "{r:?}");
    let answers = r.json();
    let answers = answers.as_array().expect("array");
    assert_eq!(answers.len(), 7);
    let oks: Vec<bool> = answers.iter().map(|a| a["ok"] == true).collect();
    assert_eq!(
        oks,
        [true, true, false, false, false, true, true],
        "{answers:?}"
    );
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a["channel"], body["channels"][i], "{a}");
    }
    let got = messages(&mut c, 4);
    let mut channels: Vec<&str> = got.iter().map(|m| m["channel"].as_str().unwrap()).collect();
    channels.sort();
    assert_eq!(channels, [&rooms[0], &rooms[1], &rooms[2], "user:u1"]);
    for m in &got {
        assert_eq!(m["data"], json!({"hello": true}), "{m}");
        assert_eq!(
            (&m["event"], &m["id"], &m["priority"]),
            (&json!("news"), &json!("same"), &json!(1))
        );
        let i = body["channels"]
            .as_array()
            .unwrap()
            .iter()
            .position(|c| c == &m["channel"])
            .unwrap();
        assert_eq!(m["pos"], answers[i]["pos"], "{m}");
    }
    c.expect_silence(QUIET);

    // What would be wrong for every channel refuses the whole request.
    for bad in [
        json!({"channels": "room_bc0", "data": 1}),
        json!({"channels": ["room_bc0"], "priority": 7}),
        json!([{"channel": "room_bc0"}]),
    ] {
        assert_eq!(post_json(&gw, "/api/broadcast", &bad).status, 400, "{bad}");
    }
    let r = http_post(
        gw.admin_addr,
        "/api/broadcast",
        Some("wrong"),
        &body.to_string(),
    );
    assert_eq!(r.status, 401);
    assert_eq!(http_get(gw.admin_addr, "/api/broadcast").status, 405);
    c.expect_silence(QUIET);
}

#[test]
fn the_bounds_refuse_a_request_whole() {
    let gw = Gateway::start(&[]);
    let mut c = gw.connect(&token("l", &["room_*"], &[]));
    c.subscribe("room_l");
    let msg = json!({"channel": "room_l", "data": 0});

    let over = Value::Array(vec![msg.clone(); MAX_BATCH + 1]);
    let r = post_json(&gw, "/api/publish", &over);
    assert_eq!(r.status, 413, "{r:?}");
    assert_eq!(r.json()["error"]["code"], "limit_exceeded");
    let lines = format!("{msg}\n").repeat(MAX_BATCH + 1);
    let r = post(&gw, "/api/publish", "application/x-ndjson", &lines);
    assert_eq!(r.status, 413, "{r:?}");
    let chans: Vec<String> = (0..=MAX_BATCH).map(|i| format!("room_{i}")).collect();
    let r = post_json(
        &gw,
        "/api/broadcast",
        &json!({"channels": chans, "data": 0}),
    );
    assert_eq!(r.status, 413, "{r:?}");
    // A body declared bigger than the bound is refused before it is read (so none is sent here).
    for path in ["/api/publish", "/api/broadcast"] {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {API_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        let r = raw_exchange(gw.admin_addr, req.as_bytes());
        assert_eq!(r.status, 413, "{path}: {r:?}");
    }
    c.expect_silence(QUIET);

    // At the bound: every element answered and published, in order.
    let at: Vec<Value> = (0..MAX_BATCH)
        .map(|i| json!({"channel": if i % 10 == 0 { "room_l" } else { "room_other" }, "data": i}))
        .collect();
    let r = post_json(&gw, "/api/publish", &Value::Array(at));
    assert_eq!(r.status, 200, "{}", r.status);
    let answers = r.json();
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), MAX_BATCH);
    assert!(answers.iter().all(|a| a["ok"] == true));
    let got = messages(&mut c, MAX_BATCH / 10);
    for (k, m) in got.iter().enumerate() {
        assert_eq!(m["data"], k * 10, "{m}");
        assert_eq!(m["pos"], answers[k * 10]["pos"]);
    }
    c.expect_silence(QUIET);

    // An empty batch is answered with an empty array.
    let r = post_json(&gw, "/api/publish", &json!([]));
    assert_eq!((r.status, r.body.as_str()), (200, "[]"));
}
