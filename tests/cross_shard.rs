//! Causality across shards. The gateway sends the `ok` reply to a subscribe only once the new member
//! is live, that is once every other shard has acknowledged that this shard has a member of the
//! channel; so a message published after the client has its `ok` reaches it, whichever shard owns the
//! channel, whichever shard the client is on, and however busy that shard is. These tests publish
//! right after the `ok`, with nothing in between to give the shards time.

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

/// The same guarantee without a busy shard, for every combination of member shard and owner shard,
/// over many fresh channels (the first member of a channel on a shard announces it to the other
/// shards, which is where a reply sent too early would lose the message): subscribe, publish over
/// HTTP as soon as the reply is in, expect the message. The publish request is written beforehand
/// but for its last byte, so that it follows the reply as closely as possible. Then the last member
/// leaves and subscribes again, so the channel is announced anew, and the same must hold.
#[test]
fn publish_after_subscribe_reply_reaches_member_for_every_owner_and_member_shard() {
    const SHARDS: usize = 2;
    const ROUNDS: usize = 20;
    // 160 requests per connection in quick succession: above the default frame rate limit.
    let gw = Gateway::start_sharded(
        SHARDS,
        &[
            "--client-frames-per-sec",
            "100000",
            "--client-frames-burst",
            "100000",
        ],
    );
    let t = token("m", &["room_*"], &[]);
    for member_shard in [0u64, 1] {
        let mut c = gw.connect_on_shard(&t, member_shard);
        for owner in 0..SHARDS {
            for round in 0..ROUNDS {
                let prefix = format!("room_m{member_shard}_o{owner}_r{round}_");
                let channel = channel_owned_by(&prefix, owner, SHARDS);
                for (attempt, what) in ["first subscribe", "subscribe after leaving"]
                    .into_iter()
                    .enumerate()
                {
                    let publish =
                        gw.prime_publish(&json!({"channel": channel, "data": {"a": attempt}}));
                    c.subscribe(&channel);
                    let r = publish.send();
                    match c.recv(WAIT) {
                        Recv::Json(m) => {
                            assert_eq!(m["type"], "message", "{what} {channel}: {m}");
                            assert_eq!(m["channel"], channel.as_str(), "{what}: {m}");
                            assert_eq!(m["pos"], r["pos"], "{what} {channel}: {m}");
                        }
                        other => panic!(
                            "member on shard {member_shard}, channel {channel} owned by shard \
                             {owner}, round {round}, {what}: the message published after the \
                             subscribe reply was lost ({other:?})"
                        ),
                    }
                    c.unsubscribe(&channel);
                }
            }
        }
        c.expect_silence(QUIET);
    }
}
