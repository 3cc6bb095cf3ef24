//! A real Prometheus scrapes the real gateway's admin listener: the exposition parses, and the
//! series operators query (connections summed over shards, deliveries, `up`) arrive with the values
//! the test produced. Needs the `prometheus` binary: run scripts/install-prometheus.sh.

mod common;

use common::*;
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long Prometheus may take to start and scrape what the test expects.
const PROM_WAIT: Duration = Duration::from_secs(60);

/// A `prometheus` process with its own config and TSDB in a temporary directory; killed (and the
/// directory removed) on drop, so every exit path of the test, panics included, cleans up.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    addr: SocketAddr,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_loopback_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral loopback port")
        .port()
}

impl Prometheus {
    /// Starts Prometheus scraping `target`'s /metrics every second as job "gateway".
    fn start(target: SocketAddr) -> Prometheus {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("gateway-prometheus-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).expect("creating the Prometheus temp dir");
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: gateway\n    scrape_interval: 1s\n    scrape_timeout: 1s\n\
             \x20   metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).expect("writing prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("creating the log file");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_loopback_port())
            .parse()
            .expect("loopback address");
        let child = match Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file handle"))
            .stderr(log)
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!(
                    "prometheus is not installed (not on PATH): run scripts/install-prometheus.sh \
                     (it installs Debian's prometheus package)"
                )
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                panic!("spawning prometheus: {e}")
            }
        };
        let mut prom = Prometheus { child, dir, addr };
        prom.wait_ready();
        prom
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// Panics (with Prometheus's log) if the process has exited.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("prometheus exited ({status}); its log:\n{}", self.log());
        }
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PROM_WAIT;
        loop {
            self.assert_running();
            if TcpStream::connect(self.addr).is_ok()
                && http_get(self.addr, "/-/ready").status == 200
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus was not ready within {PROM_WAIT:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET /api/v1/query?query=<promql>`: the result vector.
    fn query(&mut self, promql: &str) -> Vec<Value> {
        self.assert_running();
        let q: String = promql
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let r = http_get(self.addr, &format!("/api/v1/query?query={q}"));
        assert_eq!(r.status, 200, "query {promql}: {} {}", r.status, r.body);
        let v = r.json();
        assert_eq!(v["status"], "success", "query {promql}: {v}");
        assert_eq!(v["data"]["resultType"], "vector", "query {promql}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Polls `promql` (which must give a single sample) until its value is `want`, at most
    /// [`PROM_WAIT`]; `between_polls` runs after every miss (it keeps the clients alive).
    fn wait_value(&mut self, promql: &str, want: f64, mut between_polls: impl FnMut()) -> Value {
        let deadline = Instant::now() + PROM_WAIT;
        loop {
            let last = self.query(promql);
            if let [sample] = last.as_slice() {
                if sample_value(sample) == Some(want) {
                    return sample.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not return {promql} = {want} within {PROM_WAIT:?}; last result \
                 {last:?}; targets: {}",
                http_get(self.addr, "/api/v1/targets").body
            );
            between_polls();
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The value of an instant-vector sample: `{"metric": {...}, "value": [ts, "1"]}`.
fn sample_value(sample: &Value) -> Option<f64> {
    sample["value"][1].as_str()?.parse().ok()
}

/// Reads whatever the clients got (answering the gateway's pings) so they stay connected.
fn keep_alive(clients: &mut [Client]) {
    for c in clients.iter_mut() {
        match c.recv(Duration::from_millis(10)) {
            Recv::Json(_) | Recv::Timeout => {}
            other => panic!("a client lost its connection while Prometheus scraped: {other:?}"),
        }
    }
}

#[test]
fn prometheus_scrapes_the_gateway() {
    let gw = Gateway::start_sharded(2, &[]);
    // Two connections (the sum over shards is what the test waits for), each subscribed to the
    // channel that gets three messages: six deliveries.
    let mut clients: Vec<Client> = (0..2)
        .map(|i| {
            let mut c = gw.connect(&token(&format!("scrape-{i}"), &["room_*"], &[]));
            c.subscribe("room_scrape");
            c
        })
        .collect();
    for n in 0..3 {
        gw.publish(&json!({"channel": "room_scrape", "data": {"n": n}}));
    }
    for c in clients.iter_mut() {
        for _ in 0..3 {
            c.recv_message("room_scrape");
        }
    }
    // Deliveries are counted just after the socket write: wait until the gateway's own /metrics
    // has them, so what Prometheus must see is settled.
    let deadline = Instant::now() + WAIT;
    while metric_sum(&gw.metrics(), "gateway_messages_delivered_total") < 6.0 {
        assert!(
            Instant::now() < deadline,
            "the gateway did not count 6 deliveries: {}",
            gw.metrics()
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut prom = Prometheus::start(gw.admin_addr);

    // The raw series, one per shard, sum to the open connections.
    let s = prom.wait_value("sum(gateway_connections)", 2.0, || keep_alive(&mut clients));
    assert!(s["metric"].as_object().is_some_and(|m| m.is_empty()), "{s}");
    let per_shard = prom.query("gateway_connections");
    assert_eq!(
        per_shard.len(),
        2,
        "one gateway_connections series per shard: {per_shard:?}"
    );
    for sample in &per_shard {
        assert_eq!(sample["metric"]["job"], "gateway", "{sample}");
        assert_eq!(
            sample["metric"]["instance"],
            gw.admin_addr.to_string(),
            "{sample}"
        );
        assert!(
            sample["metric"]["shard"].is_string(),
            "shard label: {sample}"
        );
    }

    // Counters arrive with their _total suffix.
    prom.wait_value("sum(gateway_messages_delivered_total)", 6.0, || {
        keep_alive(&mut clients)
    });
    prom.wait_value("sum(gateway_messages_in_total)", 3.0, || {
        keep_alive(&mut clients)
    });
    // The histogram's series, +Inf bucket included.
    prom.wait_value("sum(gateway_delivery_latency_seconds_count)", 6.0, || {
        keep_alive(&mut clients)
    });
    prom.wait_value(
        "sum(gateway_delivery_latency_seconds_bucket{le=\"+Inf\"})",
        6.0,
        || keep_alive(&mut clients),
    );
    // The target itself is healthy.
    let up = prom.wait_value("up{job=\"gateway\"}", 1.0, || keep_alive(&mut clients));
    assert_eq!(up["metric"]["instance"], gw.admin_addr.to_string(), "{up}");
}
