//! `since` recovery of a backlog far larger than the client's send queue (in-process bus).
//!
//! A client sees message 0 of a channel and leaves; 2,000 messages of about 1 KiB (some 2 MiB,
//! eight times the default `limits.queue_bytes` of 256 KiB) are published while it is away; a new
//! connection subscribes with `since` = message 0's `pos`, with the default queue bound. The
//! gateway pages the replay as the client's queue drains, so a client that reads gets
//! `recovered: true`, then exactly messages 1..=2000 in `pos` order, then live ones: no close
//! 1013, no gap, nothing twice. Once for a channel owned by the subscriber's shard, once for a
//! channel owned by the other shard.

mod common;

use common::*;
use serde_json::{json, Value};
use std::time::Duration;

const SHARDS: usize = 2;
/// Messages published while the client is away.
const BACKLOG: usize = 2000;
/// Bytes of text in each message's data.
const TEXT: usize = 1000;
/// How long the whole replay may take to arrive.
const REPLAY: Duration = Duration::from_secs(60);

fn start() -> Gateway {
    let mut args = vec!["--history-size", "3000", "--history-max-bytes", "67108864"];
    args.extend_from_slice(&FAST_FRAMES);
    Gateway::start_sharded(SHARDS, &args)
}

fn data(i: usize) -> Value {
    let mut d = payload_of(TEXT);
    d["i"] = json!(i);
    d
}

/// The subscriber's view of a channel owned by `owner`, recovering from shard `sub_shard`.
fn backlog_case(gw: &Gateway, owner: usize, sub_shard: u64) {
    let channel = channel_owned_by(&format!("bk_{owner}_{sub_shard}_"), owner, SHARDS);
    let case = format!("{channel} (owner shard {owner}), subscriber on shard {sub_shard}");
    let tok = token("bk", &["bk_*"], &[]);
    let mut publisher = gw.connect(&token("bk-pub", &[], &["bk_*"]));

    // Message 0 is seen live, then the client leaves.
    let mut first = gw.connect(&tok);
    first.subscribe(&channel);
    let p0 = publish_pipelined(&mut publisher, &channel, &[data(0)]);
    let m = first.recv_message(&channel);
    assert_eq!(
        m["pos"],
        p0[0].as_str(),
        "{case}: expected message 0 live: {m}"
    );
    first.close();

    // The backlog, published while nobody is subscribed.
    let datas: Vec<Value> = (1..=BACKLOG).map(data).collect();
    let missed = publish_pipelined(&mut publisher, &channel, &datas);

    let mut c = gw.connect_on_shard(&tok, sub_shard);
    let r = c.request(&json!({
        "type": "subscribe", "id": "since", "channel": channel, "since": p0[0],
    }));
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
        "{case}: expected recovered:true, all {BACKLOG} messages are in the history: {r}"
    );
    for (k, pos) in missed.iter().enumerate() {
        let m = match c.recv(REPLAY) {
            Recv::Json(m) => m,
            other => panic!(
                "{case}: expected replayed message {} of {BACKLOG}, got {other:?}",
                k + 1
            ),
        };
        assert_eq!(
            m["type"],
            "message",
            "{case}: expected replayed message {}: {m}",
            k + 1
        );
        assert_eq!(
            m["channel"],
            channel.as_str(),
            "{case}: expected the channel: {m}"
        );
        assert_eq!(
            m["data"]["i"],
            k + 1,
            "{case}: expected message {} next (in order, none missing or twice), got i={}",
            k + 1,
            m["data"]["i"]
        );
        assert_eq!(
            m["pos"],
            pos.as_str(),
            "{case}: expected the published pos: {m}"
        );
    }

    // Then live messages, and nothing replayed twice.
    let live = publish_pipelined(&mut publisher, &channel, &[data(BACKLOG + 1)]);
    let m = c.recv_message(&channel);
    assert_eq!(
        m["pos"],
        live[0].as_str(),
        "{case}: expected the live message right after the replay: {m}"
    );
    c.expect_silence(QUIET);
    let r = c.request(&json!({"type": "ping", "id": "still-open"}));
    assert_eq!(
        r["type"], "pong",
        "{case}: expected the connection to stay open: {r}"
    );
    c.close();
    publisher.close();
}

/// The channel is owned by the subscriber's shard: the replay is paged from the local history.
#[test]
fn backlog_larger_than_the_queue_is_recovered_from_the_owner_shard() {
    let gw = start();
    backlog_case(&gw, 1, 1);
}

/// The channel is owned by the other shard: the pages cross the mesh as the queue drains.
#[test]
fn backlog_larger_than_the_queue_is_recovered_across_shards() {
    let gw = start();
    backlog_case(&gw, 0, 1);
}
