//! What a client can make the gateway do before it is authenticated: the Origin allow-list
//! (403 before any WebSocket exists), the per-shard bound on upgrade requests in progress (503
//! beyond it), the admin listener's header timeout, and the stats key on `/stats` and `/metrics`.

mod common;

use common::*;
use serde_json::json;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// Sends an upgrade request with a valid token and the given `Origin` header (none when None);
/// returns the answer's status.
fn upgrade_with_origin(gw: &Gateway, origin: Option<&str>) -> Option<u16> {
    let t = token("orig", &[], &[]);
    let extra = origin
        .map(|o| format!("Origin: {o}\r\n"))
        .unwrap_or_default();
    let req = upgrade_request(gw.ws_addr, &format!("/ws?token={t}"), &extra);
    upgrade_status(gw.ws_addr, req.as_bytes()).0
}

fn assert_origin(gw: &Gateway, origin: Option<&str>, status: u16) {
    let got = upgrade_with_origin(gw, origin);
    assert_eq!(
        got,
        Some(status),
        "expected {status} for an upgrade with Origin {origin:?}, got {got:?}"
    );
}

/// With `--allowed-origins https://app.example.com,https://preview-*`: the exact origin, any
/// origin starting with the prefix, and a request without Origin (not a browser) upgrade; other
/// origins — another host, another scheme, another port, a suffix added to an allowed host,
/// `null` — get 403 before any WebSocket exists.
#[test]
fn origin_allow_list() {
    let gw = Gateway::start(&[
        "--allowed-origins",
        "https://app.example.com,https://preview-*",
    ]);
    assert_origin(&gw, Some("https://app.example.com"), 101);
    assert_origin(&gw, Some("https://preview-42.example.net"), 101);
    assert_origin(&gw, None, 101);
    let c = Client::try_connect(gw.ws_addr, &token("no-origin", &[], &[])).unwrap_or_else(|r| {
        panic!(
            "expected a client without Origin to connect, got {} {:?}",
            r.status, r.body
        )
    });
    assert_eq!(
        c.user(),
        "no-origin",
        "expected the welcome of the client without Origin"
    );

    for bad in [
        "https://evil.example.com",
        "http://app.example.com",
        "https://app.example.com:8443",
        "https://app.example.com.evil.net",
        "https://preview.example.net",
        "null",
        "",
    ] {
        assert_origin(&gw, Some(bad), 403);
    }
}

/// The allow-list value from the issue, `https://app.example.com,https://*.example.org`, is
/// accepted as configuration; its exact entry upgrades, and hosts that only end in or contain
/// an allowed name do not.
#[test]
fn origin_allow_list_with_the_issue_example() {
    let gw = Gateway::start(&[
        "--allowed-origins",
        "https://app.example.com,https://*.example.org",
    ]);
    assert_origin(&gw, Some("https://app.example.com"), 101);
    assert_origin(&gw, None, 101);
    for bad in [
        "https://example.org.evil.net",
        "https://a.example.org.evil.net",
        "https://evilexample.org.net",
        "https://other.example.com",
    ] {
        assert_origin(&gw, Some(bad), 403);
    }
}

/// Without an allow-list any Origin upgrades.
#[test]
fn no_allow_list_accepts_any_origin() {
    let gw = Gateway::start(&[]);
    assert_origin(&gw, Some("https://anything.example"), 101);
    assert_origin(&gw, Some("null"), 101);
    assert_origin(&gw, None, 101);
}

/// Opens `n` connections that each send half an upgrade request and then stall.
fn stalled_handshakes(gw: &Gateway, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(gw.ws_addr).expect("connect");
            s.write_all(b"GET /ws?token=abc HTTP/1.1\r\nHost: x\r\nUpgrade: webs")
                .expect("write half an upgrade request");
            s
        })
        .collect()
}

fn full_upgrade(gw: &Gateway) -> (Option<u16>, String) {
    let t = token("hs", &[], &[]);
    let req = upgrade_request(gw.ws_addr, &format!("/ws?token={t}"), "");
    upgrade_status(gw.ws_addr, req.as_bytes())
}

/// Polls until a complete upgrade gets 101 (each try a new connection), at most `limit`.
fn upgrade_succeeds_within(gw: &Gateway, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    loop {
        let (status, head) = full_upgrade(gw);
        if status == Some(101) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected an upgrade to succeed within {limit:?} {what}; last answer {status:?} {head:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One shard, `--max-handshakes-per-shard 4`: established WebSockets do not count; with four
/// upgrade requests stalled half-way, a fifth complete one is answered 503; once the stalled
/// connections are gone, upgrades succeed again.
#[test]
fn handshakes_in_progress_are_bounded_per_shard() {
    let gw = Gateway::start(&[
        "--max-handshakes-per-shard",
        "4",
        "--handshake-timeout-ms",
        "60000",
    ]);
    let open: Vec<Client> = (0..6)
        .map(|i| gw.connect(&token(&format!("w{i}"), &[], &[])))
        .collect();

    let stalled = stalled_handshakes(&gw, 4);
    // Let the shard accept them (they are in its accept queue before the next connection anyway).
    std::thread::sleep(Duration::from_millis(500));
    let (status, head) = full_upgrade(&gw);
    assert_eq!(
        status,
        Some(503),
        "expected 503 for a fifth upgrade while four are in progress, got {head:?}"
    );

    // The established connections are unaffected.
    for mut c in open {
        let r = c.request(&json!({"type": "ping", "id": "p"}));
        assert_eq!(
            r["type"], "pong",
            "expected established connections to be served: {r}"
        );
    }

    drop(stalled);
    upgrade_succeeds_within(
        &gw,
        Duration::from_secs(10),
        "after the stalled connections closed",
    );
}

/// Stalled upgrade requests that the handshake timeout ends free their places too.
#[test]
fn handshake_timeouts_free_their_places() {
    let gw = Gateway::start(&[
        "--max-handshakes-per-shard",
        "4",
        "--handshake-timeout-ms",
        "1000",
    ]);
    let stalled = stalled_handshakes(&gw, 4);
    std::thread::sleep(Duration::from_millis(300));
    let (status, head) = full_upgrade(&gw);
    assert_eq!(
        status,
        Some(503),
        "expected 503 while four upgrades are in progress, got {head:?}"
    );
    // The stalled connections stay open on our side; the gateway times them out.
    upgrade_succeeds_within(
        &gw,
        Duration::from_secs(15),
        "after the stalled upgrades timed out",
    );
    drop(stalled);
}

/// The admin listener closes connections that do not send complete headers within 5 s: one
/// with half a request, one silent, one dribbling a header byte by byte; each is closed within
/// 15 s without a 200, and the admin listener keeps serving.
#[test]
fn admin_listener_times_out_incomplete_requests() {
    let gw = Gateway::start(&[]);
    let mut half = TcpStream::connect(gw.admin_addr).expect("connect to admin");
    half.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\n")
        .expect("write half a request");
    let mut silent = TcpStream::connect(gw.admin_addr).expect("connect to admin");
    let mut drip = TcpStream::connect(gw.admin_addr).expect("connect to admin");
    drip.write_all(b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        .expect("write the start of a request");

    // Dribble one byte every 200 ms until the gateway closes the connection.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 1024];
    let mut got = Vec::new();
    let closed = loop {
        if Instant::now() >= deadline {
            break false;
        }
        if drip.write_all(b"a").is_err() {
            break true;
        }
        drip.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set_read_timeout");
        match drip.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break true,
        }
    };
    assert!(
        closed,
        "expected the admin listener to close a dribbling request within 15 s"
    );
    assert!(
        !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "expected no 200 for a request that never completed: {:?}",
        String::from_utf8_lossy(&got)
    );

    for (what, s) in [
        ("half a request", &mut half),
        ("a silent connection", &mut silent),
    ] {
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        let got = read_to_eof(s, left);
        assert!(
            !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
            "expected no 200 for {what}: {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    let r = http_get(gw.admin_addr, "/health");
    assert_eq!(
        r.status, 200,
        "expected the admin listener to keep serving: {r:?}"
    );
}

/// With `--stats-key K`, `/stats` and `/metrics` need `Authorization: Bearer K` (401 without it or
/// with a wrong key, 200 with it); `/health` stays open; the stats key does not publish.
#[test]
fn stats_key_protects_stats_and_metrics() {
    const KEY: &str = "stats-key-0123456789";
    let gw = Gateway::start(&["--stats-key", KEY]);
    for path in ["/stats", "/metrics"] {
        let r = http_get(gw.admin_addr, path);
        assert_eq!(
            r.status, 401,
            "expected 401 for {path} without the stats key: {}",
            r.body
        );
        for wrong in [
            "Bearer wrong",
            "Bearer stats-key-012345678",
            "Bearer stats-key-01234567890",
            KEY,
        ] {
            let r = http_request(
                gw.admin_addr,
                "GET",
                path,
                &[("Authorization", wrong)],
                None,
            );
            assert_eq!(
                r.status, 401,
                "expected 401 for {path} with Authorization {wrong:?}: {}",
                r.body
            );
        }
        let auth = format!("Bearer {KEY}");
        let r = http_request(
            gw.admin_addr,
            "GET",
            path,
            &[("Authorization", &auth)],
            None,
        );
        assert_eq!(
            r.status, 200,
            "expected 200 for {path} with the stats key: {}",
            r.body
        );
        assert!(!r.body.is_empty(), "expected a body for {path}");
    }
    let r = http_get(gw.admin_addr, "/health");
    assert_eq!(
        r.status, 200,
        "expected /health open without the stats key: {}",
        r.body
    );

    let body = json!({"channel": "room_1", "data": 1}).to_string();
    let r = http_post(gw.admin_addr, "/api/publish", Some(KEY), &body);
    assert_eq!(
        r.status, 401,
        "expected the stats key not to authorize publishing: {}",
        r.body
    );
    let r = http_post(gw.admin_addr, "/api/publish", Some(API_KEY), &body);
    assert_eq!(
        r.status, 200,
        "expected the API key to still publish: {}",
        r.body
    );
}
