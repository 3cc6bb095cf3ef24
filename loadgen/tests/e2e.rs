//! loadgen against a real gateway (started in-process on port 0): every message reaches every member
//! of its room, nothing is lost or repeated, and wrong targets fail with a clear message.

mod tansu;

use serde_json::Value;
use std::process::Command;
use tansu::broker;

fn gateway() -> gateway::server::Running {
    gateway_with_limits(serde_json::json!({"max_connections_per_user": 1000}))
}

fn gateway_with_limits(limits: Value) -> gateway::server::Running {
    let overrides = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "shards": 2,
        "auth": {"jwt_secret": "e2e-secret", "api_key": "e2e-key"},
        "limits": limits,
    });
    let cfg = gateway::config::Config::load(None, overrides).expect("config");
    gateway::server::start(cfg).expect("gateway starts")
}

/// loadgen against `gw` with the test secret, publishing over its admin API unless `args` say
/// otherwise.
fn loadgen_against(gw: &gateway::server::Running, args: &[&str]) -> std::process::Output {
    let url = format!("ws://{}/ws", gw.ws_addr);
    let admin = gw.admin_addr.to_string();
    let mut all = vec![
        "--url",
        &url,
        "--secret",
        "e2e-secret",
        "--publish-addr",
        &admin,
        "--api-key",
        "e2e-key",
    ];
    all.extend_from_slice(args);
    loadgen(&all)
}

fn loadgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .output()
        .expect("loadgen runs")
}

#[test]
fn every_member_gets_every_message_once() {
    let gw = gateway();
    let out = loadgen_against(
        &gw,
        &[
            "--conns",
            "200",
            "--rooms",
            "4",
            "--rate",
            "40",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--drain",
            "1",
            "--workers",
            "2",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(s["connections"]["connected"], 200);
    assert_eq!(s["published"], 40);
    // 40 messages over 4 rooms of 50 members each.
    assert_eq!(s["expected_deliveries"], 2000);
    assert_eq!(s["deliveries"], 2000, "{s}");
    assert_eq!(s["lost"], 0);
    assert_eq!(s["duplicates"], 0);
    assert_eq!(s["latency"]["last_member"]["count"], 40);
    assert_eq!(s["latency"]["connect"]["count"], 200);

    // The same through `publish` frames.
    let out = loadgen_against(
        &gw,
        &[
            "--publish",
            "ws",
            "--conns",
            "50",
            "--rooms",
            "5",
            "--rate",
            "20",
            "--duration",
            "1",
            "--warmup",
            "0.2",
            "--drain",
            "1",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(s["deliveries"], s["expected_deliveries"], "{s}");
    assert_eq!(s["lost"], 0);
}

/// Churning connections come and go while stable ones miss nothing; stalled ones (never reading)
/// fill their bounded queue and are closed with 1013.
#[test]
fn churn_and_stalled_connections() {
    // Small buffers so a stalled client overflows within the run.
    let gw = gateway_with_limits(
        serde_json::json!({"queue_bytes": 65536, "socket_send_buffer_bytes": 4096}),
    );
    let out = loadgen_against(
        &gw,
        &[
            "--conns",
            "100",
            "--rooms",
            "2",
            "--rate",
            "100",
            "--payload-bytes",
            "2048",
            "--duration",
            "2",
            "--warmup",
            "0.2",
            "--drain",
            "1",
            "--workers",
            "2",
            "--churn",
            "0.3",
            "--churn-lifetime",
            "0.5",
            "--stalled",
            "4",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    let stable = s["churn"]["stable_connections"]
        .as_u64()
        .expect("stable count");
    assert!((50..100).contains(&stable), "{s}");
    assert_eq!(s["expected_deliveries"], stable * 100, "{s}");
    assert_eq!(s["deliveries"], s["expected_deliveries"], "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    assert!(s["churn"]["reconnects"].as_u64() > Some(10), "{s}");
    assert!(s["churn"]["received"].as_u64() > Some(0), "{s}");
    assert_eq!(
        s["stalled"]["ended"],
        serde_json::json!({"close_1013": 4}),
        "{s}"
    );
}

#[test]
fn clear_errors_for_a_missing_server_and_a_refused_token() {
    let out = loadgen(&["--url", "ws://127.0.0.1:1/ws", "--conns", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing is listening"));

    let gw = gateway();
    let url = format!("ws://{}/ws", gw.ws_addr);
    let out = loadgen(&["--url", &url, "--secret", "not-the-secret", "--conns", "1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refused the token"));

    let out = loadgen(&["--url", "http://127.0.0.1/ws"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("ws://"));
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("admin");
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn publishing_through_kafka() {
    let kafka = broker();
    let overrides = serde_json::json!({
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "shards": 2,
        "auth": {"jwt_secret": "e2e-secret"},
        "limits": {"max_connections_per_user": 1000},
        "kafka": {
            "brokers": [kafka.1],
            "push_topics": ["lg.push"],
            "fetch_max_wait_ms": 10,
            "metadata_refresh_ms": 200,
            "create_topics_partitions": 2,
        },
    });
    let cfg = gateway::config::Config::load(None, overrides).expect("config");
    let gw = gateway::server::start(cfg).expect("gateway starts");
    // Both topics (push and upstream) with 2 partitions each, all being read.
    let ready = (0..200).any(|_| {
        let stats = http_get(gw.admin_addr, "/stats");
        let ok = stats.contains(r#""status":"ok""#) && stats.matches(r#""position""#).count() >= 4;
        if !ok {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        ok
    });
    assert!(
        ready,
        "gateway never read its partitions: {}",
        http_get(gw.admin_addr, "/stats")
    );
    let url = format!("ws://{}/ws", gw.ws_addr);
    let out = loadgen(&[
        "--url",
        &url,
        "--secret",
        "e2e-secret",
        "--publish",
        "kafka",
        "--kafka-brokers",
        &kafka.1,
        "--kafka-topic",
        "lg.push",
        "--conns",
        "100",
        "--rooms",
        "4",
        "--rate",
        "40",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--drain",
        "2",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    assert_eq!(s["expected_deliveries"], 1000);
    assert_eq!(s["deliveries"], 1000, "{s}");
    assert_eq!(s["lost"], 0);
    assert_eq!(s["duplicates"], 0);
}
