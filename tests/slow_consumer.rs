//! A client that stops reading fills its bounded send queue and is closed with 1013, while a
//! bystander on the same shard keeps receiving every message.

mod common;

use common::*;
use serde_json::json;
use socket2::{Domain, Socket, Type};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MESSAGES: usize = 1500;
const PAYLOAD: usize = 8000;

/// A client whose socket has a tiny receive buffer, so the gateway's queue fills fast.
fn connect_small_buffer(gw: &Gateway, token: &str) -> Client {
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    sock.connect(&gw.ws_addr.into()).expect("connect");
    let stream: TcpStream = sock.into();
    match Client::try_connect_stream(stream, gw.ws_addr, token, false) {
        Ok(c) => c,
        Err(r) => panic!("upgrade refused: {} {}", r.status, r.body),
    }
}

#[test]
fn slow_consumer_is_closed_with_1013_and_bystander_gets_everything() {
    let gw = Gateway::start_sharded(
        2,
        &[
            "--queue-bytes",
            "65536",
            "--client-frames-per-sec",
            "100000",
            "--client-frames-burst",
            "100000",
        ],
    );
    let member = |sub: &str| token(sub, &["room_*"], &[]);
    let mut slow = connect_small_buffer(&gw, &member("slow"));
    slow.subscribe("room_slow");
    let mut bystander = gw.connect_on_shard(&member("bystander"), slow.shard());
    bystander.subscribe("room_slow");
    let mut publisher = gw.connect(&token("publisher", &[], &["room_*"]));

    // The bystander reads everything on its own thread; the publisher stays at most WINDOW messages
    // ahead of it, so the bystander's queue never fills however the threads are scheduled.
    const WINDOW: usize = 4;
    let received = Arc::new(AtomicUsize::new(0));
    let seen = received.clone();
    let reader = std::thread::spawn(move || {
        for i in 0..MESSAGES {
            match bystander.recv(Duration::from_secs(10)) {
                Recv::Json(m) => {
                    assert_eq!(m["type"], "message", "{m}");
                    assert_eq!(m["data"]["i"], i, "bystander gets every message in order");
                    seen.store(i + 1, Ordering::Release);
                }
                other => panic!("bystander: message {i} of {MESSAGES}: {other:?}"),
            }
        }
        bystander
    });
    // The publisher waits for each reply, as a well-behaved client would.
    let writer = std::thread::spawn(move || {
        let text = "x".repeat(PAYLOAD);
        for i in 0..MESSAGES {
            let deadline = Instant::now() + Duration::from_secs(10);
            while received.load(Ordering::Acquire) + WINDOW < i {
                assert!(
                    Instant::now() < deadline,
                    "bystander stuck before message {i}"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            let r = publisher.request(&json!({
                "type": "publish", "id": i, "channel": "room_slow", "event": "bulk",
                "data": {"i": i, "text": text},
            }));
            assert_eq!(r["ok"], true, "publish {i}: {r}");
        }
    });

    // The slow client reads nothing until the gateway reports that it gave up on it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = writer.is_finished();
        let m = gw.metrics();
        if metric_sum(&m, "gateway_slow_consumer_closes_total") > 0.0 {
            break;
        }
        assert!(
            !done,
            "all messages published and no slow-consumer close reported:\n{m}"
        );
        assert!(
            Instant::now() < deadline,
            "no slow-consumer close within 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before_close = slow.expect_close(1013, Duration::from_secs(10));
    for (k, m) in before_close.iter().enumerate() {
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(
            m["data"]["i"], k,
            "what the slow client got is a prefix, in order"
        );
    }
    assert!(
        before_close.len() < MESSAGES,
        "the slow client was cut off early"
    );

    writer.join().expect("publisher thread");
    let mut bystander = reader.join().expect("bystander thread");
    bystander.expect_silence(QUIET);
    let r = bystander.request(&json!({"type": "ping", "id": "still-open"}));
    assert_eq!(r["type"], "pong", "{r}");
    assert!(metric_sum(&gw.metrics(), "gateway_slow_consumer_closes_total") >= 1.0);

    // Once everyone has gone, the gauges are back to zero.
    bystander.close();
    drop(slow);
    let deadline = Instant::now() + WAIT;
    loop {
        let m = gw.metrics();
        let (conns, queued) = (
            metric_sum(&m, "gateway_connections"),
            metric_sum(&m, "gateway_queue_bytes"),
        );
        if conns == 0.0 && queued == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after every client left: gateway_connections {conns}, gateway_queue_bytes {queued}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
