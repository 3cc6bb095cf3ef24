//! A shard that stops answering for a while (`--test-hooks`: `POST /debug/stall` blocks shard 1's
//! thread) while the other shard keeps sending to it, with a small queue per peer
//! (`--peer-queue-messages 64`).
//!
//! - No control message between shards is lost: clients that connect during the stall (on
//!   shard 0, needing shard 1 for their per-user slot or their `user:` channel, or on shard 1
//!   itself) and subscribe to channels shard 1 owns, with and without `since`, all get their
//!   welcome and exactly one reply to every request once the stall ends, even though shard 0's
//!   queue towards shard 1 was flooded with data first. Per-user slots are not leaked: afterwards
//!   every user can again open `--max-connections-per-user` connections.
//! - A data message that cannot be queued for the stalled shard never vanishes: that shard's
//!   member either receives every message, or a contiguous prefix and then close 1013, after
//!   which `since` recovers the rest.
//! - Without `--test-hooks` the stall endpoint does not exist (404).

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const SHARDS: usize = 2;
const STALL_MS: u64 = 2500;
/// `--max-connections-per-user`.
const PER_USER: usize = 2;
/// Messages published while shard 1 is stalled: far more than the peer queue (64) and the mesh
/// ring in front of it hold.
const FLOOD: usize = 3000;
/// Waits long enough for the stall on a loaded machine.
const LONG: Duration = Duration::from_secs(30);

fn start(extra: &[&str]) -> Gateway {
    let mut args = vec!["--test-hooks", "--peer-queue-messages", "64"];
    args.extend_from_slice(&FAST_FRAMES);
    args.extend_from_slice(extra);
    Gateway::start_sharded(SHARDS, &args)
}

/// A connection on `shard`, for a new user `<prefix><i>` per attempt (so the per-user limit and
/// the asynchronous release of closed attempts never get in the way).
fn connect_fresh_on_shard(gw: &Gateway, prefix: &str, publish: &[&str], shard: u64) -> Client {
    for i in 0..60 {
        let c = gw.connect(&token(&format!("{prefix}{i}"), &["st_*"], publish));
        if c.shard() == shard {
            return c;
        }
        c.close();
    }
    panic!("expected a connection on shard {shard} within 60 attempts");
}

/// For each k: a user whose per-user slot shard 1 keeps, and one whose `user:<sub>` shard 1 owns.
fn users_needing_shard_1(prefix: &str, n: usize) -> Vec<String> {
    (0..n)
        .flat_map(|k| {
            let slot = channel_owned_by(&format!("{prefix}slot{k}_"), 1, SHARDS);
            let uc = channel_owned_by(&format!("user:{prefix}uc{k}_"), 1, SHARDS);
            [slot, uc["user:".len()..].to_string()]
        })
        .collect()
}

/// Connects `sub` with the upgrade request and three requests in one write: subscribe to `room`,
/// subscribe to `hist` since `since`, ping. Asserts the welcome first, then exactly one reply to
/// each request, the recovered messages (`replay`, by pos) after the since reply, then nothing.
/// Returns the open connection and its shard.
fn early_client(
    addr: SocketAddr,
    sub: &str,
    room: &str,
    hist: &str,
    since: &str,
    replay: &[String],
) -> (RawWs, u64) {
    let target = format!("/ws?token={}", token(sub, &["st_*"], &[]));
    let mut bytes = upgrade_request(addr, &target, "").into_bytes();
    for req in [
        json!({"type": "subscribe", "id": "room", "channel": room}),
        json!({"type": "subscribe", "id": "since", "channel": hist, "since": since}),
        json!({"type": "ping", "id": "ping"}),
    ] {
        client_text_frame(&mut bytes, &req.to_string());
    }
    let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream
        .write_all(&bytes)
        .expect("writing the upgrade and the requests");
    let mut ws = RawWs::from_upgraded_within(stream, LONG);
    let w = ws.next_json_within(&format!("{sub}: the welcome"), LONG);
    assert_eq!(
        w["type"], "welcome",
        "{sub}: expected the welcome first: {w}"
    );
    let shard = w["shard"].as_u64().expect("welcome.shard");
    let case = format!("{sub} on shard {shard}");
    let (mut room_ok, mut since_ok, mut pong, mut replayed) = (false, false, false, 0);
    while !(room_ok && since_ok && pong && replayed == replay.len()) {
        let f = ws.next_json_within(&format!("{case}: replies and replay"), LONG);
        match (f["type"].as_str(), f["id"].as_str()) {
            (Some("reply"), Some("room")) => {
                assert!(
                    !room_ok,
                    "{case}: expected one reply to the room subscribe: {f}"
                );
                assert_eq!(
                    f["ok"], true,
                    "{case}: expected the room subscribe to succeed: {f}"
                );
                room_ok = true;
            }
            (Some("reply"), Some("since")) => {
                assert!(
                    !since_ok,
                    "{case}: expected one reply to the since subscribe: {f}"
                );
                assert_eq!(
                    f["ok"], true,
                    "{case}: expected the since subscribe to succeed: {f}"
                );
                assert_eq!(f["recovered"], true, "{case}: expected recovered:true: {f}");
                since_ok = true;
            }
            (Some("pong"), Some("ping")) => {
                assert!(!pong, "{case}: expected one pong: {f}");
                pong = true;
            }
            (Some("message"), _) => {
                assert!(
                    since_ok,
                    "{case}: expected the since reply before its replay: {f}"
                );
                assert!(
                    replayed < replay.len(),
                    "{case}: expected no extra message: {f}"
                );
                assert_eq!(
                    f["pos"],
                    replay[replayed].as_str(),
                    "{case}: expected the replay in order: {f}"
                );
                replayed += 1;
            }
            _ => panic!("{case}: expected a reply, pong or replayed message, got {f}"),
        }
    }
    assert!(
        ws.next_frame(QUIET).is_err(),
        "{case}: expected nothing after the replies and the replay"
    );
    (ws, shard)
}

/// Opens [`PER_USER`] connections for `sub` (retrying while earlier connections' slots are still
/// being released), then closes them.
fn assert_all_slots_free(gw: &Gateway, sub: &str) {
    let tok = token(sub, &["st_*"], &[]);
    let deadline = Instant::now() + LONG;
    loop {
        let mut open = Vec::new();
        let mut refused = None;
        for _ in 0..PER_USER {
            match Client::try_connect(gw.ws_addr, &tok) {
                Ok(c) => open.push(c),
                Err(r) => {
                    refused = Some(r);
                    break;
                }
            }
        }
        let Some(r) = refused else {
            open.into_iter().for_each(Client::close);
            return;
        };
        assert_eq!(
            r.status, 429,
            "{sub}: expected only the per-user limit to refuse: {r:?}"
        );
        assert!(
            Instant::now() < deadline,
            "{sub}: expected {PER_USER} connections once every earlier one ended (leaked slot?), \
             still refused after {LONG:?}: {r:?}"
        );
        drop(open);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn control_messages_survive_a_stalled_shard_behind_a_full_peer_queue() {
    let gw = start(&["--max-connections-per-user", "2"]);
    let room = channel_owned_by("st_room_", 1, SHARDS);
    let hist = channel_owned_by("st_hist_", 1, SHARDS);
    let flood = channel_owned_by("st_flood_", 0, SHARDS);
    let hp: Vec<String> = (0..3)
        .map(|i| {
            let r = gw.publish(&json!({"channel": hist, "data": {"i": i}}));
            r["pos"].as_str().expect("pos").to_string()
        })
        .collect();
    // A member on shard 1 makes shard 0 forward the flood to it.
    let mut member = connect_fresh_on_shard(&gw, "st-member", &[], 1);
    member.subscribe(&flood);
    let mut publisher = connect_fresh_on_shard(&gw, "st-pub", &["st_*"], 0);
    let users = users_needing_shard_1("a", 4);
    let ghosts = users_needing_shard_1("g", 2);

    stall_shard(&gw, 1, STALL_MS);
    let t = Instant::now();
    let datas: Vec<Value> = (0..FLOOD).map(|i| json!({"i": i})).collect();
    publish_pipelined(&mut publisher, &flood, &datas);
    let flooded = t.elapsed();
    let mut threads = Vec::new();
    for sub in &users {
        for _ in 0..PER_USER {
            let (addr, sub, room, hist) = (gw.ws_addr, sub.clone(), room.clone(), hist.clone());
            let (since, replay) = (hp[0].clone(), hp[1..].to_vec());
            threads.push(std::thread::spawn(move || {
                early_client(addr, &sub, &room, &hist, &since, &replay)
            }));
        }
    }
    // Connections abandoned during the stall, right after their upgrade request.
    for sub in &ghosts {
        for _ in 0..PER_USER {
            let target = format!("/ws?token={}", token(sub, &["st_*"], &[]));
            let mut s = TcpStream::connect(gw.ws_addr).expect("connect to the gateway");
            s.write_all(upgrade_request(gw.ws_addr, &target, "").as_bytes())
                .expect("writing an upgrade request");
        }
    }
    eprintln!(
        "flood of {FLOOD} took {flooded:?}; clients sent after {:?} of a {STALL_MS} ms stall",
        t.elapsed()
    );
    let conns: Vec<(RawWs, u64)> = threads
        .into_iter()
        .map(|t| t.join().expect("an early client failed"))
        .collect();
    let on_0 = conns.iter().filter(|(_, s)| *s == 0).count();
    eprintln!("{on_0} of {} early clients on shard 0", conns.len());

    let m = gw.metrics();
    assert!(
        metric_sum(&m, "gateway_mesh_messages_total") > 0.0,
        "expected gateway_mesh_messages_total to count messages between shards"
    );

    drop(conns);
    drop(member);
    for sub in users.iter().chain(&ghosts) {
        assert_all_slots_free(&gw, sub);
    }
}

#[test]
fn member_behind_a_full_peer_queue_gets_everything_or_1013_never_a_gap() {
    let gw = start(&[
        "--queue-bytes",
        "67108864",
        "--history-size",
        "20000",
        "--history-max-bytes",
        "67108864",
    ]);
    let channel = channel_owned_by("st_data_", 0, SHARDS);
    let mut member = connect_fresh_on_shard(&gw, "st-member", &[], 1);
    member.subscribe(&channel);
    let mut bystander = connect_fresh_on_shard(&gw, "st-bystander", &[], 0);
    bystander.subscribe(&channel);
    let mut publisher = connect_fresh_on_shard(&gw, "st-pub", &["st_*"], 0);
    let p0 = publish_pipelined(&mut publisher, &channel, &[json!({"i": 0})]);
    for c in [&mut member, &mut bystander] {
        let m = c.recv_message(&channel);
        assert_eq!(
            m["pos"],
            p0[0].as_str(),
            "expected message 0 live on shard {}",
            c.shard()
        );
    }

    stall_shard(&gw, 1, STALL_MS);
    let datas: Vec<Value> = (1..=FLOOD).map(|i| json!({"i": i})).collect();
    let positions = publish_pipelined(&mut publisher, &channel, &datas);

    // On the owner shard nothing is in the way.
    for (k, pos) in positions.iter().enumerate() {
        let m = match bystander.recv(LONG) {
            Recv::Json(m) => m,
            other => panic!(
                "bystander: expected message {} of {FLOOD}, got {other:?}",
                k + 1
            ),
        };
        assert_eq!(
            m["pos"],
            pos.as_str(),
            "bystander: expected message {} in order: {m}",
            k + 1
        );
    }

    // The member on the stalled shard: a contiguous prefix, then everything or a 1013.
    let mut got = 0usize;
    let mut last_pos = p0[0].clone();
    let closed = loop {
        if got == FLOOD {
            break None;
        }
        match member.recv(LONG) {
            Recv::Json(m) => {
                assert_eq!(m["type"], "message", "member: expected messages only: {m}");
                assert_eq!(
                    m["pos"],
                    positions[got].as_str(),
                    "member: expected message {} next (no gap before a close): {m}",
                    got + 1
                );
                got += 1;
                last_pos = positions[got - 1].clone();
            }
            Recv::Close(code) => break Some(code),
            other => panic!(
                "member: expected message {} or close 1013, got {other:?}",
                got + 1
            ),
        }
    };
    let mut c = match closed {
        None => {
            eprintln!("the member got all {FLOOD} messages");
            member
        }
        Some(code) => {
            eprintln!("the member got {got} of {FLOOD} messages, then close {code:?}");
            assert_eq!(
                code.as_ref().map(|c| c.0),
                Some(1013),
                "member: expected close 1013 after {got} messages: {code:?}"
            );
            drop(member);
            // It resubscribes with the last pos it saw and gets the rest.
            let mut again = connect_fresh_on_shard(&gw, "st-again", &[], 1);
            let r = again.request(&json!({
                "type": "subscribe", "id": "again", "channel": channel, "since": last_pos,
            }));
            assert_eq!(
                r["ok"], true,
                "expected the since subscribe to succeed: {r}"
            );
            assert_eq!(
                r["recovered"], true,
                "expected the rest to be recovered: {r}"
            );
            for (k, pos) in positions.iter().enumerate().skip(got) {
                let m = match again.recv(LONG) {
                    Recv::Json(m) => m,
                    other => panic!(
                        "expected recovered message {} of {FLOOD}, got {other:?}",
                        k + 1
                    ),
                };
                assert_eq!(
                    m["pos"],
                    pos.as_str(),
                    "expected recovered message {} in order: {m}",
                    k + 1
                );
            }
            again
        }
    };
    let live = publish_pipelined(&mut publisher, &channel, &[json!({"i": FLOOD + 1})]);
    let m = c.recv_message(&channel);
    assert_eq!(
        m["pos"],
        live[0].as_str(),
        "expected the live message after the rest: {m}"
    );
    c.expect_silence(QUIET);
}

#[test]
fn stall_endpoint_is_404_without_test_hooks() {
    let gw = Gateway::start_sharded(SHARDS, &[]);
    let r = http_post(
        gw.admin_addr,
        "/debug/stall?shard=1&ms=10",
        Some(API_KEY),
        "",
    );
    assert_eq!(
        r.status, 404,
        "expected 404 without --test-hooks: {} {}",
        r.status, r.body
    );
}
