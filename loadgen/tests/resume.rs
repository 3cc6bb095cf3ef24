//! `loadgen --resume` against a gateway that goes away mid-stream: a Tansu broker, a gateway
//! (in-process) that is drained (close 1001) while loadgen publishes through Kafka, and a new gateway
//! on the same port. Every client must reconnect, resume with `since` (`recovered: true`) and end
//! with nothing lost or repeated. The same as `tests/cluster.rs` without network namespaces or a load
//! balancer, so it runs anywhere Tansu does (scripts/install-tansu.sh).

mod tansu;

use serde_json::Value;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed and reaped on drop (every exit path of the test) unless taken.
struct Owned(Option<Child>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stats(admin: SocketAddr) -> Value {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(admin).expect("admin");
    let _ = write!(
        s,
        "GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(Value::Null)
}

/// A gateway reading `lg.resume` from `kafka`, listening on `listen`, once it reads every partition.
fn gateway(kafka: &str, listen: &str) -> gateway::server::Running {
    let overrides = serde_json::json!({
        "listen": listen,
        "admin_listen": "127.0.0.1:0",
        "shards": 2,
        "drain_timeout_ms": 3000,
        "auth": {"jwt_secret": "resume-secret"},
        "kafka": {
            "brokers": [kafka],
            "push_topics": ["lg.resume"],
            "fetch_max_wait_ms": 10,
            "metadata_refresh_ms": 200,
            "create_topics_partitions": 2,
        },
    });
    let cfg = gateway::config::Config::load(None, overrides).expect("config");
    let gw = gateway::server::start(cfg).expect("gateway starts");
    wait("the gateway reads its partitions", || {
        let s = stats(gw.admin_addr).to_string();
        s.contains(r#""status":"ok""#) && s.matches(r#""position""#).count() >= 4
    });
    gw
}

fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn delivered(admin: SocketAddr) -> u64 {
    let s = stats(admin);
    s["shards"].as_array().map_or(0, |a| {
        a.iter().filter_map(|x| x["delivered"].as_u64()).sum()
    })
}

#[test]
fn clients_resume_on_a_new_gateway_and_lose_nothing() {
    let broker = tansu::broker();
    let kafka = broker.1.clone();
    let first = gateway(&kafka, "127.0.0.1:0");
    let addr = first.ws_addr;
    let conns = 60;
    let lg = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args([
            "--url",
            &format!("ws://{addr}/ws"),
            "--secret",
            "resume-secret",
        ])
        .args(["--publish", "kafka", "--kafka-brokers", &kafka])
        .args(["--kafka-topic", "lg.resume", "--publishers", "1"])
        .args([
            "--conns",
            &conns.to_string(),
            "--rooms",
            "3",
            "--rate",
            "30",
        ])
        .args(["--duration", "4", "--warmup", "0.3", "--drain", "5"])
        .args(["--resume", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("loadgen starts");
    let mut lg = Owned(Some(lg));

    // Every client has received a few messages of its room (so it has a `pos`): drain the gateway.
    wait("deliveries on the first gateway", || {
        delivered(first.admin_addr) >= conns * 5
    });
    first.node.drain();
    assert!(
        first.wait(Duration::from_secs(10)),
        "the first gateway ends"
    );
    // A new node on the same address; the clients find it by retrying.
    let second = gateway(&kafka, &addr.to_string());

    let out =
        lg.0.take()
            .expect("loadgen child")
            .wait_with_output()
            .expect("loadgen output");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s: Value = serde_json::from_slice(&out.stdout).expect("JSON summary");
    let r = &s["resume"];
    assert_eq!(s["lost"], 0, "{s}");
    assert_eq!(s["duplicates"], 0, "{s}");
    assert_eq!(s["deliveries"], s["expected_deliveries"], "{s}");
    assert_eq!(
        s["closes"]["1001"], conns,
        "every client saw the drain: {s}"
    );
    assert_eq!(r["reconnects"], conns, "every client resumed: {s}");
    assert_eq!(
        r["recovered"], conns,
        "every resume replayed with since: {s}"
    );
    assert_eq!(r["unrecovered"], 0);
    assert!(
        delivered(second.admin_addr) > 0,
        "the second gateway delivered"
    );
    second.node.drain();
    assert!(second.wait(Duration::from_secs(10)));
}
