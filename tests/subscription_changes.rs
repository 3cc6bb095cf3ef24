//! Changing a subscription while messages flow (in-process bus, 2 shards).
//!
//! - Subscribing again to a channel the client is in (no `since`) replaces the filter in place:
//!   no leave and rejoin, so a message that passes both filters is never lost across the change,
//!   and messages only the new filter passes appear only after the change's reply.
//! - Every request gets exactly one reply: a `since` subscribe whose recovery is still running
//!   when the same channel is unsubscribed or subscribed again is answered `canceled` (or `ok`,
//!   if it had already finished), before the later request's reply; the later `since` then gets
//!   its own, complete recovery, never the earlier one's answer.

mod common;

use common::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const SHARDS: usize = 2;
/// Messages missed before the stale-recovery requests.
const BACKLOG: usize = 500;

fn start() -> Gateway {
    let mut args = vec!["--history-size", "1000", "--history-max-bytes", "67108864"];
    args.extend_from_slice(&FAST_FRAMES);
    Gateway::start_sharded(SHARDS, &args)
}

/// The next message, failing on anything else.
fn next_message(c: &mut Client, what: &str) -> Value {
    match c.recv(Duration::from_secs(20)) {
        Recv::Json(m) if m["type"] == "message" => m,
        other => panic!("{what}: expected a message, got {other:?}"),
    }
}

fn index(m: &Value) -> u64 {
    m["data"]["i"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected data.i in {m}"))
}

/// A publisher thread publishes {"k": "a" (even i) | "b" (odd i), "i": i} to a channel owned by
/// `owner` until told to stop. The client, on `sub_shard`, subscribes with filter k in [a], and
/// after 20 messages subscribes again with k in [a, b]. Every "a" from the first one seen arrives
/// once and in order across the change; "b" messages appear only after the change's reply, and
/// from the first one on every "b" arrives once.
fn filter_change_case(gw: &Gateway, owner: usize, sub_shard: u64) {
    let channel = channel_owned_by(&format!("fc_{owner}_{sub_shard}_"), owner, SHARDS);
    let case = format!("{channel} (owner shard {owner}), subscriber on shard {sub_shard}");
    let mut c = gw.connect_on_shard(&token("fc", &["fc_*"], &[]), sub_shard);
    let mut publisher = gw.connect(&token("fc-pub", &[], &["fc_*"]));
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = {
        let (stop, channel) = (stop.clone(), channel.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                let k = if i.is_multiple_of(2) { "a" } else { "b" };
                let r = publisher.request(&json!({
                    "type": "publish", "id": i, "channel": channel, "data": {"k": k, "i": i},
                }));
                assert_eq!(r["ok"], true, "expected publish {i} to be accepted: {r}");
                i += 1;
            }
            i - 1
        })
    };

    let r = c.request(&json!({
        "type": "subscribe", "id": "f1", "channel": channel, "filter": {"k": ["a"]},
    }));
    assert_eq!(
        r["ok"], true,
        "{case}: expected the first subscribe to succeed: {r}"
    );
    let mut before = Vec::new();
    while before.len() < 20 {
        before.push(next_message(&mut c, &format!("{case}: before the change")));
    }
    c.send_json(&json!({
        "type": "subscribe", "id": "f2", "channel": channel, "filter": {"k": ["a", "b"]},
    }));
    loop {
        match c.recv(Duration::from_secs(20)) {
            Recv::Json(f) if f["type"] == "message" => before.push(f),
            Recv::Json(f) => {
                assert_eq!(f["id"], "f2", "{case}: expected the reply to f2: {f}");
                assert_eq!(
                    f["ok"], true,
                    "{case}: expected the filter change to succeed: {f}"
                );
                break;
            }
            other => panic!("{case}: expected the reply to f2, got {other:?}"),
        }
    }
    let mut after = Vec::new();
    while after.len() < 60 {
        after.push(next_message(&mut c, &format!("{case}: after the change")));
    }
    stop.store(true, Ordering::Relaxed);
    let last = publishing.join().expect("publisher thread");
    while after.last().map(index) != Some(last) {
        after.push(next_message(
            &mut c,
            &format!("{case}: up to message {last}"),
        ));
    }
    c.expect_silence(QUIET);

    for m in &before {
        assert_eq!(
            m["data"]["k"], "a",
            "{case}: expected only \"a\" before the change's reply: {m}"
        );
    }
    let all: Vec<u64> = before.iter().chain(&after).map(index).collect();
    assert!(
        all.windows(2).all(|w| w[0] < w[1]),
        "{case}: expected messages in order, each once: {all:?}"
    );
    let a: Vec<u64> = all.iter().copied().filter(|i| i % 2 == 0).collect();
    let expected_a: Vec<u64> = (a[0]..=last).filter(|i| i % 2 == 0).collect();
    assert_eq!(
        a, expected_a,
        "{case}: expected every \"a\" from the first one, once, in order"
    );
    let b: Vec<u64> = all.iter().copied().filter(|i| i % 2 == 1).collect();
    assert!(
        !b.is_empty(),
        "{case}: expected \"b\" messages after the change"
    );
    let expected_b: Vec<u64> = (b[0]..=last).filter(|i| i % 2 == 1).collect();
    assert_eq!(
        b, expected_b,
        "{case}: expected every \"b\" from the first one, once, in order"
    );
    c.close();
}

#[test]
fn filter_change_on_a_channel_owned_by_the_other_shard_loses_nothing() {
    let gw = start();
    filter_change_case(&gw, 0, 1);
}

#[test]
fn filter_change_on_a_channel_owned_by_the_clients_shard_loses_nothing() {
    let gw = start();
    filter_change_case(&gw, 1, 1);
}

/// The client sees message 0 of a channel owned by `owner` and unsubscribes; [`BACKLOG`] messages
/// of about 1 KiB follow. Then, in one write: subscribe since message 0 (`s1`), `unsubscribe`
/// (`u`, when `with_unsubscribe`), subscribe since message 0 again (`s2`).
fn stale_recovery_case(gw: &Gateway, owner: usize, sub_shard: u64, with_unsubscribe: bool) {
    let channel = channel_owned_by(
        &format!("sr_{owner}_{sub_shard}_{with_unsubscribe}_"),
        owner,
        SHARDS,
    );
    let case = format!(
        "{channel} (owner shard {owner}), client on shard {sub_shard}, {}",
        if with_unsubscribe { "s1 u s2" } else { "s1 s2" }
    );
    let mut c = gw.connect_on_shard(&token("sr", &["sr_*"], &[]), sub_shard);
    let mut publisher = gw.connect(&token("sr-pub", &[], &["sr_*"]));
    let data = |i: usize| {
        let mut d = payload_of(1000);
        d["i"] = json!(i);
        d
    };
    c.subscribe(&channel);
    let p0 = publish_pipelined(&mut publisher, &channel, &[data(0)]);
    assert_eq!(
        c.recv_message(&channel)["pos"],
        p0[0].as_str(),
        "{case}: expected message 0 live"
    );
    c.unsubscribe(&channel);
    let datas: Vec<Value> = (1..=BACKLOG).map(data).collect();
    let missed = publish_pipelined(&mut publisher, &channel, &datas);

    let s1 = json!({"type": "subscribe", "id": "s1", "channel": channel, "since": p0[0]});
    let u = json!({"type": "unsubscribe", "id": "u", "channel": channel});
    let s2 = json!({"type": "subscribe", "id": "s2", "channel": channel, "since": p0[0]});
    let mut batch = vec![s1];
    if with_unsubscribe {
        batch.push(u);
    }
    batch.push(s2);
    for req in &batch {
        c.ws.write(tungstenite::Message::text(req.to_string()))
            .expect("queueing a request");
    }
    c.ws.flush().expect("writing the requests");

    // s1: canceled, or ok when its recovery finished first; then only a prefix of its replay.
    let r1 = c.recv_json(Duration::from_secs(20));
    assert_eq!(
        r1["id"], "s1",
        "{case}: expected the reply to s1 first: {r1}"
    );
    if r1["ok"] == false {
        assert_eq!(
            r1["error"]["code"], "canceled",
            "{case}: expected s1 canceled: {r1}"
        );
    } else {
        assert_eq!(
            r1["recovered"], true,
            "{case}: expected s1 ok to be recovered: {r1}"
        );
    }
    let next_id = if with_unsubscribe { "u" } else { "s2" };
    let mut prefix = 0usize;
    let r = loop {
        let f = c.recv_json(Duration::from_secs(20));
        if f["type"] != "message" {
            break f;
        }
        assert_eq!(
            r1["ok"], true,
            "{case}: expected no message for canceled s1: {f}"
        );
        prefix += 1;
        assert_eq!(
            index(&f),
            prefix as u64,
            "{case}: expected s1's replay in order: {f}"
        );
    };
    eprintln!("{case}: s1 {r1}, then {prefix} messages");
    assert_eq!(
        r["id"], next_id,
        "{case}: expected the reply to {next_id} next: {r}"
    );
    assert_eq!(r["ok"], true, "{case}: expected {next_id} to succeed: {r}");
    let r2 = if with_unsubscribe {
        c.recv_json(Duration::from_secs(20))
    } else {
        r
    };
    assert_eq!(r2["id"], "s2", "{case}: expected the reply to s2: {r2}");
    assert_eq!(r2["ok"], true, "{case}: expected s2 to succeed: {r2}");
    assert_eq!(r2["recovered"], true, "{case}: expected s2 recovered: {r2}");

    // s2's own recovery: every missed message once, in order, then live ones.
    for (k, pos) in missed.iter().enumerate() {
        let m = next_message(&mut c, &format!("{case}: replayed message {}", k + 1));
        assert_eq!(
            index(&m),
            k as u64 + 1,
            "{case}: expected message {} next",
            k + 1
        );
        assert_eq!(m["pos"], pos.as_str(), "{case}: expected the published pos");
    }
    let live = publish_pipelined(&mut publisher, &channel, &[data(BACKLOG + 1)]);
    let m = next_message(&mut c, &format!("{case}: the live message"));
    assert_eq!(
        m["pos"],
        live[0].as_str(),
        "{case}: expected the live message after the replay"
    );
    c.expect_silence(QUIET);
    c.close();
    publisher.close();
}

#[test]
fn stale_recovery_is_canceled_by_unsubscribe_on_a_channel_owned_by_the_other_shard() {
    let gw = start();
    stale_recovery_case(&gw, 0, 1, true);
}

#[test]
fn stale_recovery_is_canceled_by_unsubscribe_on_a_channel_owned_by_the_clients_shard() {
    let gw = start();
    stale_recovery_case(&gw, 1, 1, true);
}

#[test]
fn stale_recovery_is_canceled_by_a_new_since_subscribe() {
    let gw = start();
    stale_recovery_case(&gw, 0, 1, false);
    stale_recovery_case(&gw, 1, 1, false);
}
