//! Causality across shards: once a client has the `ok` reply to a subscribe, a message published
//! afterwards must reach it, whichever shard it is on and however busy that shard is.

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

/// The subscriber is on shard 1, the channel is owned by shard 0, and the subscriber keeps its
/// shard busy with a stream of pings sent right behind the subscribe. After the subscribe reply the
/// test publishes over HTTP; the message must arrive (after some pongs).
#[test]
fn publish_after_subscribe_reply_reaches_member_on_busy_non_owner_shard() {
    const PINGS: usize = 20_000;
    let gw = Gateway::start_sharded(
        2,
        &[
            "--client-frames-per-sec",
            "1000000",
            "--client-frames-burst",
            "1000000",
            "--queue-bytes",
            "67108864",
        ],
    );
    let mut c = gw.connect_on_shard(&token("m", &["room_*"], &[]), 1);
    let channel = channel_owned_by("room_busy_", 0, 2);

    let mut batch = Vec::new();
    client_text_frame(
        &mut batch,
        &json!({"type": "subscribe", "id": "s", "channel": channel}).to_string(),
    );
    for i in 0..PINGS {
        client_text_frame(&mut batch, &json!({"type": "ping", "id": i}).to_string());
    }
    let mut raw = c.ws.get_ref().try_clone().expect("clone socket");
    let writer = std::thread::spawn(move || raw.write_all(&batch).expect("writing the batch"));

    // Wait for the subscribe reply (pongs may come first), then publish.
    let mut pongs = 0;
    loop {
        let f = c.recv_json(WAIT);
        if f["type"] == "pong" {
            pongs += 1;
            continue;
        }
        assert_eq!(f["id"], "s", "{f}");
        assert_eq!(f["ok"], true, "{f}");
        break;
    }
    let r = gw.publish(&json!({"channel": channel, "event": "after-ok", "data": {"x": 1}}));

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let wait = if pongs == PINGS { WAIT } else { left };
        match c.recv(wait) {
            Recv::Json(f) if f["type"] == "pong" => pongs += 1,
            Recv::Json(f) => {
                assert_eq!(f["type"], "message", "{f}");
                assert_eq!(f["channel"], channel.as_str(), "{f}");
                assert_eq!(f["pos"], r["pos"], "{f}");
                break;
            }
            other => panic!(
                "the message published after the subscribe reply never arrived \
                 ({other:?} after {pongs} of {PINGS} pongs)"
            ),
        }
    }
    writer.join().expect("writer thread");
}

/// Same guarantee without a busy shard, repeated over many fresh channels and gateways: subscribe on
/// the non-owner shard, publish as soon as the reply is in, expect the message.
#[test]
fn publish_after_subscribe_reply_reaches_member_on_non_owner_shard() {
    let mut lost = Vec::new();
    for round in 0..6 {
        if !lost.is_empty() {
            break;
        }
        let gw = Gateway::start_sharded(2, &[]);
        let t = token("m", &["room_*"], &[]);
        let mut c = gw.connect_on_shard(&t, 1);
        for i in 0..5 {
            let channel = channel_owned_by(&format!("room_{round}_{i}_"), 0, 2);
            c.subscribe(&channel);
            gw.publish(&json!({"channel": channel, "data": {"i": i}}));
            match c.recv(WAIT) {
                Recv::Json(m) => assert_eq!(m["channel"], channel.as_str(), "{m}"),
                other => lost.push(format!("round {round} channel {channel}: {other:?}")),
            }
        }
    }
    assert!(
        lost.is_empty(),
        "messages lost after the subscribe reply: {lost:#?}"
    );
}
