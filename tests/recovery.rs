//! `since` recovery: a client that resubscribes with the last `pos` it saw gets `recovered: true`
//! and exactly the messages it missed, in order, then live ones; when the history no longer reaches
//! back that far it gets `recovered: false`. Both for a channel owned by the client's shard and for
//! one owned by the other shard.

mod common;

use common::*;
use serde_json::{json, Value};

const SHARDS: usize = 2;

fn hist_token(sub: &str) -> String {
    token(sub, &["hist_*"], &[])
}

/// The two channels for `client`: (owned by its shard, owned by the other shard).
fn channels_for(client: &Client, prefix: &str) -> [(String, &'static str); 2] {
    let mine = client.shard() as usize;
    [
        (
            channel_owned_by(&format!("hist_{prefix}_local_"), mine, SHARDS),
            "owner",
        ),
        (
            channel_owned_by(&format!("hist_{prefix}_remote_"), 1 - mine, SHARDS),
            "non-owner",
        ),
    ]
}

fn publish_n(gw: &Gateway, channel: &str, from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| {
            let r = gw.publish(&json!({"channel": channel, "event": "e", "data": {"i": i}}));
            r["pos"].as_str().expect("pos").to_string()
        })
        .collect()
}

fn subscribe_since(c: &mut Client, channel: &str, since: &str) -> Value {
    let r =
        c.request(&json!({"type": "subscribe", "id": "since", "channel": channel, "since": since}));
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(r["ok"], true, "{r}");
    r
}

fn expect_messages(c: &mut Client, channel: &str, from: usize, positions: &[String], case: &str) {
    for (k, pos) in positions.iter().enumerate() {
        let m = c.recv_message(channel);
        assert_eq!(
            m["data"],
            json!({"i": from + k}),
            "{case}: message {k}: {m}"
        );
        assert_eq!(m["pos"], pos.as_str(), "{case}: {m}");
    }
}

#[test]
fn since_after_unsubscribe_recovers_exactly_the_missed_messages() {
    let gw = Gateway::start_sharded(SHARDS, &[]);
    let mut c = gw.connect(&hist_token("r1"));
    for (channel, case) in channels_for(&c, "unsub") {
        c.subscribe(&channel);
        let p0 = publish_n(&gw, &channel, 0, 1);
        let m = c.recv_message(&channel);
        assert_eq!(m["pos"], p0[0].as_str(), "{case}: {m}");
        let last = m["pos"].as_str().unwrap().to_string();
        c.unsubscribe(&channel);

        let missed = publish_n(&gw, &channel, 1, 3);
        let r = subscribe_since(&mut c, &channel, &last);
        assert_eq!(r["recovered"], true, "{case}: {r}");
        expect_messages(&mut c, &channel, 1, &missed, case);

        // Then live messages, and nothing replayed twice.
        let live = publish_n(&gw, &channel, 4, 2);
        expect_messages(&mut c, &channel, 4, &live, case);
        c.expect_silence(QUIET);
        c.unsubscribe(&channel);
    }
}

#[test]
fn since_after_reconnect_recovers_on_any_shard() {
    let gw = Gateway::start_sharded(SHARDS, &[]);
    // Channels owned by shard 0 and 1; the reconnecting client lands on each shard in turn, so
    // every combination of (client shard, owner shard) occurs.
    let channels = [
        channel_owned_by("hist_rc_a_", 0, SHARDS),
        channel_owned_by("hist_rc_b_", 1, SHARDS),
    ];
    let t = hist_token("r2");
    for channel in &channels {
        for reconnect_shard in [0u64, 1] {
            let mut c = gw.connect(&t);
            c.subscribe(channel);
            publish_n(&gw, channel, 0, 1);
            let last = c.recv_message(channel)["pos"].as_str().unwrap().to_string();
            c.close();

            let missed = publish_n(&gw, channel, 1, 3);
            let mut c = gw.connect_on_shard(&t, reconnect_shard);
            let case = format!(
                "{channel} (owner {}) from shard {reconnect_shard}",
                gateway::topology::owner_of(channel, SHARDS)
            );
            let r = subscribe_since(&mut c, channel, &last);
            assert_eq!(r["recovered"], true, "{case}: {r}");
            expect_messages(&mut c, channel, 1, &missed, &case);
            let live = publish_n(&gw, channel, 4, 1);
            expect_messages(&mut c, channel, 4, &live, &case);
            c.expect_silence(QUIET);
            c.close();
        }
    }
}

#[test]
fn since_at_the_latest_pos_recovers_nothing_and_goes_live() {
    let gw = Gateway::start_sharded(SHARDS, &[]);
    let mut c = gw.connect(&hist_token("r3"));
    for (channel, case) in channels_for(&c, "latest") {
        let pos = publish_n(&gw, &channel, 0, 1);
        let r = subscribe_since(&mut c, &channel, &pos[0]);
        assert_eq!(r["recovered"], true, "{case}: {r}");
        let live = publish_n(&gw, &channel, 1, 1);
        expect_messages(&mut c, &channel, 1, &live, case);
        c.expect_silence(QUIET);
    }
}

#[test]
fn since_beyond_the_history_is_not_recovered() {
    let gw = Gateway::start_sharded(SHARDS, &["--history-size", "2"]);
    let mut c = gw.connect(&hist_token("r4"));
    for (channel, case) in channels_for(&c, "short") {
        c.subscribe(&channel);
        publish_n(&gw, &channel, 0, 1);
        let last = c.recv_message(&channel)["pos"]
            .as_str()
            .unwrap()
            .to_string();
        c.unsubscribe(&channel);

        publish_n(&gw, &channel, 1, 5);
        let r = subscribe_since(&mut c, &channel, &last);
        assert_eq!(r["recovered"], false, "{case}: {r}");
        // Whatever the gateway replays, it must not claim to be complete; live messages follow.
        let live = publish_n(&gw, &channel, 6, 1);
        let mut seen = Vec::new();
        loop {
            let m = c.recv_message(&channel);
            let done = m["pos"] == live[0].as_str();
            seen.push(m);
            if done {
                break;
            }
        }
        assert!(
            seen.len() <= 3,
            "{case}: at most the 2 kept messages are replayed: {seen:?}"
        );
        c.expect_silence(QUIET);
    }
}

#[test]
fn since_that_is_not_a_pos_is_a_bad_request() {
    let gw = Gateway::start_sharded(SHARDS, &[]);
    let mut c = gw.connect(&hist_token("r5"));
    for (channel, case) in channels_for(&c, "bad") {
        for since in [
            json!("not-a-pos"),
            json!(""),
            json!("12345"),
            json!("zz-1"),
            json!(17),
        ] {
            let r = c.request(&json!({
                "type": "subscribe", "id": "b", "channel": channel, "since": since,
            }));
            assert_eq!(r["ok"], false, "{case} since {since}: {r}");
            assert_eq!(
                r["error"]["code"], "bad_request",
                "{case} since {since}: {r}"
            );
        }
        // A refused since does not leave a subscription behind.
        let r = c.request(&json!({"type": "unsubscribe", "id": "u", "channel": channel}));
        assert_eq!(r["error"]["code"], "not_found", "{case}: {r}");
    }
}

/// A reconnecting client catches up on its own `user:<sub>` channel like on any other channel,
/// whether it comes back on the shard that owns that channel or on the other one. Nothing waits
/// for the shards to settle: publishes follow the welcome, and the `since` subscribe follows the
/// new connection's welcome, right away.
#[test]
fn since_on_own_user_channel_recovers_messages_missed_while_disconnected() {
    let gw = Gateway::start_sharded(SHARDS, &[]);
    let t = hist_token("dm");
    let owner = gateway::topology::owner_of("user:dm", SHARDS);
    let mut c = gw.connect(&t);
    let mut n = 0;
    for reconnect_shard in [0u64, 1] {
        let case = format!("user:dm (owner {owner}) back on shard {reconnect_shard}");
        let first = publish_n(&gw, "user:dm", n, 1);
        expect_messages(&mut c, "user:dm", n, &first, &case);
        n += 1;
        c.close();

        let missed = publish_n(&gw, "user:dm", n, 2);
        c = gw.connect_on_shard(&t, reconnect_shard);
        let r = subscribe_since(&mut c, "user:dm", &first[0]);
        assert_eq!(
            r["recovered"], true,
            "{case}: the missed messages are still retained: {r}"
        );
        expect_messages(&mut c, "user:dm", n, &missed, &case);
        n += 2;
        let live = publish_n(&gw, "user:dm", n, 1);
        expect_messages(&mut c, "user:dm", n, &live, &case);
        n += 1;
        c.expect_silence(QUIET);
    }
}

/// Connects a fresh user `sub` with a `since` on `channel` (one of its automatic channels) sent in
/// the same write as the upgrade request, so the gateway reads it before the welcome is out.
/// Asserts: the welcome first, then the reply with `recovered: true`, then exactly the two messages
/// published after `since`, then live ones. Returns the connection's shard.
fn pipelined_since_on_automatic_channel(gw: &Gateway, sub: &str, channel: &str) -> usize {
    let first = publish_n(gw, channel, 0, 1);
    let missed = publish_n(gw, channel, 1, 2);
    let target = format!("/ws?token={}", hist_token(sub));
    let mut bytes = upgrade_request(gw.ws_addr, &target, "").into_bytes();
    let req = json!({"type": "subscribe", "id": "early", "channel": channel, "since": first[0]});
    client_text_frame(&mut bytes, &req.to_string());
    let mut stream = std::net::TcpStream::connect(gw.ws_addr).expect("connect");
    std::io::Write::write_all(&mut stream, &bytes).expect("write upgrade and request");
    let mut ws = RawWs::from_upgraded(stream);

    let owner = gateway::topology::owner_of(channel, SHARDS);
    let w = ws.next_json(&format!(
        "{sub}, since on {channel} (owner {owner}) sent with the upgrade: the welcome"
    ));
    assert_eq!(w["type"], "welcome", "the welcome comes first: {w}");
    let shard = w["shard"].as_u64().expect("welcome.shard") as usize;
    let case = format!("{sub}, since on {channel} (owner {owner}) from shard {shard}");
    let r = ws.next_json(&format!("{case}: the reply"));
    assert_eq!(r["id"], "early", "{case}: {r}");
    assert_eq!(r["ok"], true, "{case}: {r}");
    assert_eq!(r["recovered"], true, "{case}: {r}");
    for (k, pos) in missed.iter().enumerate() {
        let m = ws.next_json(&format!("{case}: missed message {k}"));
        assert_eq!(m["channel"], channel, "{case}: {m}");
        assert_eq!(m["data"], json!({"i": 1 + k}), "{case}: {m}");
        assert_eq!(m["pos"], pos.as_str(), "{case}: {m}");
    }
    let live = publish_n(gw, channel, 3, 1);
    let m = ws.next_json(&format!("{case}: live message"));
    assert_eq!(m["pos"], live[0].as_str(), "{case}: {m}");
    shard
}

/// A client need not wait for its welcome before sending requests: a `since` on its own
/// `user:<sub>` channel, or on `broadcast`, sent along with the upgrade request still gets the
/// welcome first, then its reply and the missed messages. On a two-shard gateway the automatic
/// channels are still waiting for the other shard's acknowledgement when the request is read.
#[test]
fn since_on_automatic_channels_sent_before_the_welcome() {
    let gw = Gateway::start_sharded(SHARDS, &[]);
    for kind in ["user", "broadcast"] {
        let mut seen = [false; SHARDS];
        for attempt in 0.. {
            assert!(
                attempt < 40,
                "{kind}: connections did not reach every shard: {seen:?}"
            );
            let sub = format!("early-{kind}-{attempt}");
            let channel = match kind {
                "user" => format!("user:{sub}"),
                _ => "broadcast".to_string(),
            };
            seen[pipelined_since_on_automatic_channel(&gw, &sub, &channel)] = true;
            if seen.iter().all(|s| *s) {
                break;
            }
        }
    }
}
