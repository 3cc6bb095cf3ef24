//! Presence on one node with two shards: users on different shards counted with their connection
//! counts, `presence_stats`, the listing cap, join/leave frames (each user once, a second
//! connection is no join, leave on disconnect and on unsubscribe, frames capped), turning
//! join/leave off in place, and the refusals (`forbidden`, a channel without presence).

mod common;
mod presence_common;

use common::*;
use presence_common::*;
use serde_json::json;

fn gateway(max_listed: usize) -> Gateway {
    gateway_with(max_listed, "")
}

/// Two shards, presence on `room_*`, batches of 50 ms, plus `extra` lines of `[presence]`.
fn gateway_with(max_listed: usize, extra: &str) -> Gateway {
    let toml = format!(
        "[presence]\nchannels = [\"room_*\"]\nbatch_ms = 50\nmax_listed = {max_listed}\n{extra}"
    );
    let path = config_file(&toml);
    Gateway::start_sharded(2, &["--config", path.to_str().expect("utf-8 path")])
}

fn member_token(sub: &str) -> String {
    token(sub, &["room_*", "lobby"], &[])
}

#[test]
fn members_on_both_shards_are_counted_and_announced_once() {
    let gw = gateway(3);
    // The channel is owned by shard 1; the watcher sits on shard 0, so requests cross shards.
    let room = channel_owned_by("room_", 1, 2);
    let mut w = Watcher::new(gw.connect_on_shard(&member_token("w"), 0));
    let r = w.ask(json!({"type": "subscribe", "channel": room, "join_leave": true}));
    assert_eq!(r["ok"], true, "{r}");
    w.wait_members(&room, &[("w", 1)], WAIT);
    w.wait_events("the watcher's own join", |e| !e.is_empty());
    assert_eq!(w.users("join", &room), vec!["w"]);

    let mut a0 = gw.connect_on_shard(&member_token("42"), 0);
    let mut a1 = gw.connect_on_shard(&member_token("42"), 1);
    let mut b1 = gw.connect_on_shard(&member_token("43"), 1);
    for c in [&mut a0, &mut a1, &mut b1] {
        subscribe_jl(c, &room, false);
    }
    let r = w.wait_members(&room, &[("w", 1), ("42", 2), ("43", 1)], WAIT);
    assert_eq!(
        (r["users"].clone(), r["conns"].clone()),
        (json!(3), json!(4)),
        "{r}"
    );
    assert_eq!(r["channel"], room.as_str());
    assert!(r.get("truncated").is_none(), "{r}");
    let s = w.ask(json!({"type": "presence_stats", "channel": room}));
    assert_eq!(
        (s["ok"].clone(), s["users"].clone(), s["conns"].clone()),
        (json!(true), json!(3), json!(4)),
        "{s}"
    );
    assert!(
        s.get("members").is_none() && s.get("truncated").is_none(),
        "{s}"
    );

    w.wait_events("joins of 42 and 43", |e| {
        let joined = e.iter().filter(|(k, _, _)| k == "join");
        joined.flat_map(|x| x.2.clone()).count() >= 3
    });
    let mut joined = w.users("join", &room);
    joined.sort();
    assert_eq!(
        joined,
        vec!["42", "43", "w"],
        "each user joins once: {:?}",
        w.events
    );

    // max_listed = 3: a fourth user makes the listing truncated; the counts stay whole.
    let mut d = gw.connect(&member_token("44"));
    subscribe_jl(&mut d, &room, false);
    let deadline = std::time::Instant::now() + WAIT;
    let r = loop {
        let r = w.ask(json!({"type": "presence_stats", "channel": room}));
        if r["users"] == 4 || std::time::Instant::now() > deadline {
            break w.ask(json!({"type": "presence", "channel": room}));
        }
    };
    assert_eq!(
        (r["users"].clone(), r["conns"].clone()),
        (json!(4), json!(5)),
        "{r}"
    );
    assert_eq!(
        (members(&r).len(), r["truncated"].clone()),
        (3, json!(true)),
        "{r}"
    );
    w.wait_events("44 joins", |e| {
        e.iter()
            .any(|(k, _, u)| k == "join" && u.contains(&"44".to_string()))
    });
    d.close();

    // 42 leaves one connection: still present; 43 disconnects: leaves.
    a0.close();
    b1.close();
    w.wait_members(&room, &[("w", 1), ("42", 1)], WAIT);
    w.wait_events("43 leaves", |e| {
        e.iter()
            .any(|(k, _, u)| k == "leave" && u.contains(&"43".to_string()))
    });
    // 42's last connection unsubscribes: leaves.
    a1.unsubscribe(&room);
    w.wait_events("42 leaves", |e| {
        e.iter()
            .any(|(k, _, u)| k == "leave" && u.contains(&"42".to_string()))
    });
    assert_eq!(
        {
            let mut l = w.users("leave", &room);
            l.sort();
            l
        },
        vec!["42", "43", "44"],
        "each user leaves once, after its last connection: {:?}",
        w.events
    );
    w.wait_members(&room, &[("w", 1)], WAIT);
}

#[test]
fn join_leave_is_opt_in_and_turned_off_in_place() {
    let gw = gateway(10);
    let room = channel_owned_by("room_", 0, 2);
    let mut w = Watcher::new(gw.connect_on_shard(&member_token("w"), 1));
    let r = w.ask(json!({"type": "subscribe", "channel": room}));
    assert_eq!(r["ok"], true, "{r}");
    let mut quiet = gw.connect(&member_token("q"));
    subscribe_jl(&mut quiet, &room, false);
    w.wait_members(&room, &[("w", 1), ("q", 1)], WAIT);
    w.c.expect_silence(QUIET);
    assert!(w.events.is_empty(), "no join frames without join_leave");

    // On: the next join arrives; off again in place: the following one does not.
    let r = w.ask(json!({"type": "subscribe", "channel": room, "join_leave": true}));
    assert_eq!(r["ok"], true, "{r}");
    let mut x = gw.connect(&member_token("x"));
    subscribe_jl(&mut x, &room, false);
    w.wait_events("x joins", |e| {
        e.iter().any(|(k, _, u)| k == "join" && u == &["x"])
    });
    let r = w.ask(json!({"type": "subscribe", "channel": room}));
    assert_eq!(r["ok"], true, "{r}");
    let before = w.events.len();
    let mut y = gw.connect(&member_token("y"));
    subscribe_jl(&mut y, &room, false);
    w.wait_members(&room, &[("w", 1), ("q", 1), ("x", 1), ("y", 1)], WAIT);
    w.c.expect_silence(QUIET);
    assert_eq!(w.events.len(), before, "join_leave is off: {:?}", w.events);
    // The watcher's own subscription did not leave and come back on either change.
    assert!(w.users("leave", &room).is_empty(), "{:?}", w.events);
}

#[test]
fn refusals() {
    let gw = gateway(10);
    let mut c = Watcher::new(gw.connect(&member_token("a")));
    let r = c.ask(json!({"type": "presence", "channel": "lobby"}));
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    assert_eq!(
        r["error"]["message"],
        "presence is not enabled for this channel"
    );
    let r = c.ask(json!({"type": "subscribe", "channel": "lobby", "join_leave": true}));
    assert_eq!(r["error"]["code"], "bad_request", "{r}");
    let r = c.ask(json!({"type": "presence_stats", "channel": "user:a"}));
    assert_eq!(
        r["error"]["code"], "bad_request",
        "own channels have no presence: {r}"
    );
    let mut other = Watcher::new(gw.connect(&token("b", &["lobby"], &[])));
    for kind in ["presence", "presence_stats"] {
        let r = other.ask(json!({"type": kind, "channel": "room_1"}));
        assert_eq!(r["error"]["code"], "forbidden", "{r}");
    }
    let r = other.ask(json!({"type": "presence"}));
    assert_eq!(r["error"]["code"], "bad_request", "missing channel: {r}");
    // An empty channel answers zeros.
    let r = c.ask(json!({"type": "presence", "channel": "room_empty"}));
    assert_eq!(
        (r["users"].clone(), r["conns"].clone()),
        (json!(0), json!(0)),
        "{r}"
    );
    assert_eq!(r["members"], json!({}));
}

#[test]
fn users_beyond_max_members_are_not_counted() {
    let gw = gateway_with(10, "max_members = 2\n");
    let room = "room_full";
    let mut w = Watcher::new(gw.connect(&member_token("w")));
    let r = w.ask(json!({"type": "subscribe", "channel": room}));
    assert_eq!(r["ok"], true, "{r}");
    let mut a = gw.connect(&member_token("a"));
    subscribe_jl(&mut a, room, false);
    w.wait_members(room, &[("w", 1), ("a", 1)], WAIT);
    // The third user is a member (it gets the channel's messages) but is not counted.
    let mut b = gw.connect(&member_token("b"));
    subscribe_jl(&mut b, room, false);
    let refused = |gw: &Gateway| -> u64 {
        let s = http_get(gw.admin_addr, "/stats").json();
        let shards = s["shards"].as_array().cloned().unwrap_or_default();
        shards
            .iter()
            .filter_map(|x| x["presence_refused"].as_u64())
            .sum()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while refused(&gw) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the refusal is counted in /stats"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let r = w.ask(json!({"type": "presence", "channel": room}));
    assert_eq!(members(&r).len(), 2, "{r}");
    assert!(
        members(&r).contains_key("w") && members(&r).contains_key("a"),
        "{r}"
    );
    // A counted user leaves: room is made, and b's next connection is counted.
    a.close();
    w.wait_members(room, &[("w", 1)], WAIT);
    let mut b2 = gw.connect(&member_token("b"));
    subscribe_jl(&mut b2, room, false);
    w.wait_members(room, &[("w", 1), ("b", 1)], WAIT);
}
