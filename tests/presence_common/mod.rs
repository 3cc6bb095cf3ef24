//! Helpers for the presence tests: a config file with a `[presence]` section, a client that
//! keeps the `join` / `leave` frames it meets while waiting for replies, and presence requests
//! repeated until the owner shows the expected state (deltas travel between shards and nodes).

#![allow(dead_code)]

use crate::common::{Client, Recv, WAIT};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Writes a TOML config file for one test and returns its path.
pub fn config_file(toml: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("gw-presence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(format!("{}.toml", N.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&path, toml).expect("writing the config file");
    path
}

/// A client and the join/leave frames it received so far, in order.
pub struct Watcher {
    pub c: Client,
    /// ("join" | "leave", channel, users) per frame.
    pub events: Vec<(String, String, Vec<String>)>,
    next_id: usize,
}

impl Watcher {
    pub fn new(c: Client) -> Watcher {
        Watcher {
            c,
            events: Vec::new(),
            next_id: 0,
        }
    }

    fn take_event(&mut self, v: &Value) -> bool {
        let kind = v["type"].as_str().unwrap_or_default();
        if kind != "join" && kind != "leave" {
            return false;
        }
        let users = v["users"]
            .as_array()
            .unwrap_or_else(|| panic!("{kind} without users: {v}"))
            .iter()
            .map(|u| u.as_str().expect("user ids are strings").to_string())
            .collect();
        let channel = v["channel"].as_str().expect("channel").to_string();
        self.events.push((kind.to_string(), channel, users));
        true
    }

    /// Sends `req` (with a fresh id) and returns its reply; join/leave frames on the way are kept.
    pub fn ask(&mut self, mut req: Value) -> Value {
        self.next_id += 1;
        let id = format!("w{}", self.next_id);
        req["id"] = json!(id);
        self.c.send_json(&req);
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.c.recv(left) {
                Recv::Json(v) if v["type"] == "reply" && v["id"] == id => return v,
                Recv::Json(v) if self.take_event(&v) => {}
                other => panic!("waiting for the reply to {req}: {other:?}"),
            }
        }
    }

    /// Reads frames until `done(events)` holds; panics on anything but join/leave, or after WAIT.
    pub fn wait_events(
        &mut self,
        what: &str,
        done: impl Fn(&[(String, String, Vec<String>)]) -> bool,
    ) {
        self.wait_events_within(what, WAIT, done)
    }

    /// [`Watcher::wait_events`] with another limit.
    pub fn wait_events_within(
        &mut self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[(String, String, Vec<String>)]) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        while !done(&self.events) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.c.recv(left) {
                Recv::Json(v) if self.take_event(&v) => {}
                other => panic!("{what}: events so far {:?}, then {other:?}", self.events),
            }
        }
    }

    /// Every user named in `kind` frames of `channel`, in order.
    pub fn users(&self, kind: &str, channel: &str) -> Vec<String> {
        self.events
            .iter()
            .filter(|(k, c, _)| k == kind && c == channel)
            .flat_map(|(_, _, u)| u.clone())
            .collect()
    }

    /// Asks `presence` until `members` is `want` (user -> connections), at most `limit`.
    pub fn wait_members(&mut self, channel: &str, want: &[(&str, u64)], limit: Duration) -> Value {
        let want: BTreeMap<String, u64> = want.iter().map(|(u, n)| (u.to_string(), *n)).collect();
        let deadline = Instant::now() + limit;
        loop {
            let r = self.ask(json!({"type": "presence", "channel": channel}));
            assert_eq!(r["ok"], true, "presence {channel}: {r}");
            if members(&r) == want {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "presence of {channel} did not become {want:?} within {limit:?}: last {r}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether `events` hold a `kind` frame naming `user`.
pub fn has(events: &[(String, String, Vec<String>)], kind: &str, user: &str) -> bool {
    events
        .iter()
        .any(|(k, _, u)| k == kind && u.iter().any(|x| x == user))
}

/// `members` of a presence reply as a map.
pub fn members(r: &Value) -> BTreeMap<String, u64> {
    r["members"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().expect("counts are numbers")))
                .collect()
        })
        .unwrap_or_default()
}

/// Subscribes `c` to `channel` with `join_leave`, asserting ok.
pub fn subscribe_jl(c: &mut Client, channel: &str, join_leave: bool) {
    let r = c.request(
        &json!({"type": "subscribe", "id": "s", "channel": channel, "join_leave": join_leave}),
    );
    assert_eq!(
        r["ok"], true,
        "subscribe {channel} join_leave={join_leave}: {r}"
    );
}
