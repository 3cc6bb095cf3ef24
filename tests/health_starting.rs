//! `/health` while the gateway starts: the admin listener comes up before the shards, and until
//! every shard listens it answers 503 `{"status":"starting"}`; once it answers 200, a WebSocket
//! client connects (and gets its welcome) at once. Many shards (`--shards 16`, more than the
//! machine's cores) make the start long enough to be observed.
//!
//! The admin address is printed only in the ready line, after the start, so the test picks free
//! ports itself and polls from the moment the process is spawned.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SHARDS: &str = "16";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// The gateway process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(ws: SocketAddr, admin: SocketAddr) -> Proc {
    let (ws_s, admin_s) = (ws.to_string(), admin.to_string());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args([
        "serve",
        "--listen",
        &ws_s,
        "--admin-listen",
        &admin_s,
        "--shards",
        SHARDS,
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEWAY_") {
            cmd.env_remove(&k);
        }
    }
    match std::env::var("GATEWAY_TEST_LOG") {
        Ok(filter) => cmd.env("GATEWAY_LOG", filter).stderr(Stdio::inherit()),
        Err(_) => cmd.env("GATEWAY_LOG", "error").stderr(Stdio::null()),
    };
    let mut child = cmd.spawn().expect("spawning the gateway binary");
    // Drain stdout (the ready line) so the gateway never blocks writing it.
    let stdout = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || for _ in BufReader::new(stdout).lines() {});
    Proc(child)
}

/// `GET /health`, or None while nothing answers on the admin port.
fn try_health(admin: SocketAddr) -> Option<HttpResponse> {
    let mut s = TcpStream::connect(admin).ok()?;
    s.write_all(&http_request_bytes(admin, "GET", "/health", &[], None))
        .ok()?;
    let raw = read_to_eof(&mut s, Duration::from_secs(10));
    // Nothing at all: the process went away (the loop then sees it exit).
    (!raw.is_empty()).then(|| parse_response(&raw))
}

#[test]
fn health_says_starting_until_every_shard_listens() {
    for attempt in 0.. {
        assert!(
            attempt < 3,
            "expected the gateway to start on free ports within 3 attempts"
        );
        let ws: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let admin: SocketAddr = ([127, 0, 0, 1], free_port()).into();
        let mut p = spawn(ws, admin);
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut starting = 0usize;
        let ok = loop {
            if let Ok(Some(status)) = p.0.try_wait() {
                assert_eq!(
                    starting, 0,
                    "expected the shards to start; the gateway exited ({status}) after {starting} \
                     answers 503 starting"
                );
                // Before the admin listener answered: a port taken since it was picked.
                eprintln!("the gateway exited at start ({status}); retrying on other ports");
                break None;
            }
            assert!(
                Instant::now() < deadline,
                "expected /health to answer 200 within 60 s ({starting} answers 503 starting)"
            );
            let Some(r) = try_health(admin) else {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            };
            match r.status {
                503 => {
                    assert_eq!(
                        r.json(),
                        serde_json::json!({"status": "starting"}),
                        "expected 503 to say starting before the shards listen"
                    );
                    starting += 1;
                }
                200 => break Some(r),
                other => panic!("expected 503 starting or 200, got {other}: {}", r.body),
            }
        };
        let Some(ok) = ok else { continue };
        assert_eq!(
            ok.json()["status"],
            "ok",
            "expected 200 to say ok: {}",
            ok.body
        );
        eprintln!("{starting} answers 503 starting before 200");

        // Every shard listens: a client connects at once, and gets its welcome.
        let stream = TcpStream::connect(ws).unwrap_or_else(|e| {
            panic!("expected the WebSocket port to accept right after /health said 200: {e}")
        });
        let c = match Client::try_connect_stream(stream, ws, &token("early", &[], &[]), false) {
            Ok(c) => c,
            Err(r) => panic!("expected the upgrade to be accepted right after 200: {r:?}"),
        };
        assert_eq!(
            c.welcome["type"], "welcome",
            "expected a welcome: {}",
            c.welcome
        );
        c.close();
        // And it stays ok.
        let r = try_health(admin).expect("the admin listener keeps answering");
        assert_eq!(r.status, 200, "expected /health to stay 200: {}", r.body);
        return;
    }
}
