//! Shared helpers for the Kafka integration tests: a Tansu broker per test (killed on drop), a
//! blocking Kafka client for the test (rskafka on a current-thread tokio runtime), a gateway started
//! against the broker and waited for until it consumes, a TCP proxy in front of the broker that can
//! cut only the gateway's connections, and message readers with bounded waits.
//!
//! Tansu (a Kafka-compatible broker) is found through the `TANSU` environment variable, then `PATH`,
//! then `~/.cargo/bin/tansu`; `scripts/install-tansu.sh` installs it.
//!
//! Test files use it next to the general helpers:
//! ```ignore
//! mod common;
//! mod kafka_common;
//! ```

#![allow(dead_code)]

use crate::common::{http_get, Client, Gateway, Recv};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::ClientBuilder;
use rskafka::record::{Record, RecordAndOffset};
use rskafka::BackoffConfig;
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a gateway may take to connect to the broker and start consuming.
pub const KAFKA_READY: Duration = Duration::from_secs(20);
/// How long a record may take from the producer to a subscriber.
pub const DELIVERY: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------

/// Polls `f` every 20 ms until it is true; panics with `what` after `limit`.
pub fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// The broker
// ---------------------------------------------------------------------------------------------

/// The Tansu binary: `$TANSU`, else `tansu` on `PATH`, else `~/.cargo/bin/tansu`.
pub fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TANSU") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "TANSU={} does not name a file; run scripts/install-tansu.sh or fix TANSU",
            p.display()
        );
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("tansu");
            if p.is_file() {
                return p;
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let p = PathBuf::from(home).join(".cargo/bin/tansu");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the Kafka tests need Tansu (a Kafka-compatible broker) and it was not found in $TANSU, on \
         PATH or in ~/.cargo/bin; run scripts/install-tansu.sh first"
    );
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding an ephemeral port")
        .port()
}

/// A Tansu broker with in-memory storage, killed on drop.
pub struct Broker {
    /// The port Tansu listens on.
    pub port: u16,
    /// The port Tansu tells clients to use (a proxy's, or `port`).
    pub advertised: u16,
    child: Child,
}

impl Broker {
    /// A broker on a free port.
    pub fn start() -> Broker {
        for _ in 0..5 {
            let port = free_port();
            if let Ok(b) = Broker::try_start(port, port) {
                return b;
            }
        }
        panic!("could not start Tansu on a free port in 5 attempts");
    }

    /// A broker listening on `port` and advertising `advertised`; panics if it does not come up.
    pub fn start_at(port: u16, advertised: u16) -> Broker {
        Broker::try_start(port, advertised).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A broker listening on `port` and advertising `advertised`, or why it did not come up (the
    /// port may have been taken since it was picked).
    pub fn try_start(port: u16, advertised: u16) -> Result<Broker, String> {
        let bin = tansu_binary();
        let mut cmd = Command::new(&bin);
        cmd.arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{port}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{advertised}"))
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .stdin(Stdio::null());
        // Tansu also reads its settings from these.
        for k in [
            "LISTENER_URL",
            "ADVERTISED_LISTENER_URL",
            "STORAGE_ENGINE",
            "SCHEMA_REGISTRY",
            "CLUSTER_ID",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            cmd.env_remove(k);
        }
        if std::env::var_os("GATEWAY_TEST_LOG").is_some() {
            cmd.stdout(Stdio::inherit()).stderr(Stdio::inherit());
        } else {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let mut b = Broker {
            port,
            advertised,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = b.child.try_wait() {
                return Err(format!("Tansu on port {port} exited at start: {status}"));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                // Something accepts: make sure it is this Tansu, not another process on the port.
                std::thread::sleep(Duration::from_millis(20));
                if let Ok(Some(status)) = b.child.try_wait() {
                    return Err(format!("Tansu on port {port} exited at start: {status}"));
                }
                return Ok(b);
            }
            if Instant::now() >= deadline {
                return Err(format!("Tansu did not accept on port {port} within 10 s"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The address clients bootstrap from (the advertised one).
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.advertised)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// The test's Kafka client
// ---------------------------------------------------------------------------------------------

/// A blocking Kafka client (client id `test-producer`) for producing, creating topics and reading.
pub struct Kafka {
    rt: tokio::runtime::Runtime,
    client: rskafka::client::Client,
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
}

fn test_backoff() -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(500),
        base: 2.0,
        deadline: Some(Duration::from_secs(15)),
    }
}

impl Kafka {
    /// Connects to `addr`, retrying for a while (the broker may be starting).
    pub fn connect(addr: &str) -> Kafka {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the test's Kafka client");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            let built = rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    ClientBuilder::new(vec![addr.to_string()])
                        .client_id("test-producer")
                        .backoff_config(test_backoff())
                        .build(),
                )
                .await
            });
            match built {
                Ok(Ok(c)) => break c,
                other => {
                    let err = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "timed out".to_string(),
                    };
                    assert!(
                        Instant::now() < deadline,
                        "test Kafka client could not connect to {addr}: {err}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        Kafka {
            rt,
            client,
            partitions: Mutex::default(),
        }
    }

    pub fn create_topic(&self, name: &str, partitions: i32) {
        let controller = self.client.controller_client().expect("controller client");
        self.rt
            .block_on(controller.create_topic(name, partitions, 1, 5000))
            .unwrap_or_else(|e| panic!("creating topic {name} ({partitions} partitions): {e}"));
    }

    fn partition(&self, topic: &str, p: i32) -> Arc<PartitionClient> {
        let key = (topic.to_string(), p);
        if let Some(c) = self.partitions.lock().unwrap().get(&key) {
            return c.clone();
        }
        let c = self
            .rt
            .block_on(
                self.client
                    .partition_client(topic, p, UnknownTopicHandling::Retry),
            )
            .unwrap_or_else(|e| panic!("partition client {topic}/{p}: {e}"));
        let c = Arc::new(c);
        self.partitions.lock().unwrap().insert(key, c.clone());
        c
    }

    /// Produces `records` to `topic`/`p` as one batch; returns their offsets.
    pub fn produce(&self, topic: &str, p: i32, records: Vec<Record>) -> Vec<i64> {
        self.produce_compressed(topic, p, records, Compression::NoCompression)
    }

    pub fn produce_compressed(
        &self,
        topic: &str,
        p: i32,
        records: Vec<Record>,
        compression: Compression,
    ) -> Vec<i64> {
        let n = records.len();
        let pc = self.partition(topic, p);
        let offsets = self
            .rt
            .block_on(pc.produce(records, compression))
            .unwrap_or_else(|e| panic!("producing to {topic}/{p}: {e}"));
        assert_eq!(offsets.len(), n, "offsets for every record");
        offsets
    }

    /// Produces one record (a batch of its own); returns its offset.
    pub fn produce_one(&self, topic: &str, p: i32, record: Record) -> i64 {
        self.produce(topic, p, vec![record])[0]
    }

    /// Produces each record as a batch of its own; returns their offsets.
    pub fn produce_each(&self, topic: &str, p: i32, records: Vec<Record>) -> Vec<i64> {
        records
            .into_iter()
            .map(|r| self.produce_one(topic, p, r))
            .collect()
    }

    /// The records of `topic`/`p` from `from` on, once there are at least `n` of them (each once,
    /// in offset order); panics after `limit`. Give a batch's first offset (or 0): Tansu answers a
    /// fetch at an offset inside a multi-record batch with the batches after that one only.
    pub fn read(
        &self,
        topic: &str,
        p: i32,
        from: i64,
        n: usize,
        limit: Duration,
    ) -> Vec<RecordAndOffset> {
        let pc = self.partition(topic, p);
        let deadline = Instant::now() + limit;
        let mut out: Vec<RecordAndOffset> = Vec::new();
        let mut next = from;
        loop {
            let (records, _hwm) = self
                .rt
                .block_on(pc.fetch_records(next, 1..1_000_000, 10))
                .unwrap_or_else(|e| panic!("fetching {topic}/{p} at {next}: {e}"));
            for r in records {
                if r.offset >= next {
                    next = r.offset + 1;
                    out.push(r);
                }
            }
            if out.len() >= n {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {n} records in {topic}/{p} from offset {from} within {limit:?}",
                out.len()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The record at `offset` of `topic`/`p` (produced as a batch of its own).
    pub fn read_at(&self, topic: &str, p: i32, offset: i64) -> Record {
        let got = self.read(topic, p, offset, 1, Duration::from_secs(10));
        let r = got
            .into_iter()
            .find(|r| r.offset == offset)
            .unwrap_or_else(|| panic!("no record at {topic}/{p}/{offset}"));
        r.record
    }
}

/// A record with `key`, `value` and `headers`, timestamped now.
pub fn record(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[(&str, &[u8])]) -> Record {
    Record {
        key: key.map(<[u8]>::to_vec),
        value: value.map(<[u8]>::to_vec),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
        timestamp: chrono::Utc::now(),
    }
}

/// A keyed record: key = `channel`, value = `data` as JSON, string headers.
pub fn keyed(channel: &str, data: &Value, headers: &[(&str, &str)]) -> Record {
    let h: Vec<(&str, &[u8])> = headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
    record(
        Some(channel.as_bytes()),
        Some(data.to_string().as_bytes()),
        &h,
    )
}

/// A keyless record whose value is a whole envelope.
pub fn envelope(env: &Value) -> Record {
    record(None, Some(env.to_string().as_bytes()), &[])
}

/// A header's value as text.
pub fn header<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
    r.headers
        .get(name)
        .map(|v| std::str::from_utf8(v).expect("UTF-8 header"))
}

/// Kafka's murmur2 (the Java client's `Utils.murmur2`), written here from the algorithm so the
/// tests do not check the gateway against its own code.
pub fn kafka_murmur2(data: &[u8]) -> i32 {
    let m: u32 = 0x5bd1_e995;
    let r = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let n4 = data.len() / 4;
    for i in 0..n4 {
        let i4 = i * 4;
        let mut k = u32::from(data[i4])
            | (u32::from(data[i4 + 1]) << 8)
            | (u32::from(data[i4 + 2]) << 16)
            | (u32::from(data[i4 + 3]) << 24);
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let tail = n4 * 4;
    match data.len() % 4 {
        3 => {
            h ^= u32::from(data[tail + 2]) << 16;
            h ^= u32::from(data[tail + 1]) << 8;
            h ^= u32::from(data[tail]);
            h = h.wrapping_mul(m);
        }
        2 => {
            h ^= u32::from(data[tail + 1]) << 8;
            h ^= u32::from(data[tail]);
            h = h.wrapping_mul(m);
        }
        1 => {
            h ^= u32::from(data[tail]);
            h = h.wrapping_mul(m);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for a keyed record.
pub fn default_partition(key: &str, partitions: i32) -> i32 {
    (kafka_murmur2(key.as_bytes()) & 0x7fff_ffff) % partitions
}

/// `<prefix><n>` for the first `n` whose name the default partitioner puts in partition `p` of a
/// topic with `partitions` partitions and whose owner shard is accepted by `owner_ok`. A `since`
/// must name the partition its channel maps to.
pub fn channel_where(
    prefix: &str,
    p: i32,
    partitions: i32,
    owner_ok: impl Fn(&str) -> bool,
) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|c| default_partition(c, partitions) == p && owner_ok(c))
        .expect("some name fits")
}

// ---------------------------------------------------------------------------------------------
// The gateway against the broker
// ---------------------------------------------------------------------------------------------

/// What a Kafka gateway consumes and where it publishes.
#[derive(Clone)]
pub struct Topics {
    pub push: Vec<String>,
    pub upstream: String,
    pub dead_letter: Option<String>,
    /// `--kafka-start-from`: `earliest` unless changed.
    pub start_from: String,
}

impl Topics {
    pub fn new(push: &[&str], upstream: &str) -> Topics {
        Topics {
            push: push.iter().map(|s| s.to_string()).collect(),
            upstream: upstream.to_string(),
            dead_letter: None,
            start_from: "earliest".to_string(),
        }
    }

    pub fn starting_at_latest(mut self) -> Topics {
        self.start_from = "latest".to_string();
        self
    }

    pub fn with_dead_letter(mut self, topic: &str) -> Topics {
        self.dead_letter = Some(topic.to_string());
        self
    }

    /// The flags for `gateway serve`: short fetch waits, quick metadata refresh.
    pub fn args(&self, brokers: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "--kafka-brokers",
            brokers,
            "--kafka-push-topics",
            &self.push.join(","),
            "--kafka-upstream-topic",
            &self.upstream,
            "--kafka-start-from",
            &self.start_from,
            "--kafka-fetch-max-wait-ms",
            "10",
            "--kafka-metadata-refresh-ms",
            "200",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(d) = &self.dead_letter {
            a.push("--kafka-dead-letter-topic".into());
            a.push(d.clone());
        }
        a
    }
}

/// Starts a `shards`-shard gateway on `brokers` with `topics` and `extra` flags. Does not wait
/// for Kafka.
pub fn start_gateway(shards: usize, brokers: &str, topics: &Topics, extra: &[&str]) -> Gateway {
    let mut args = topics.args(brokers);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start_sharded(shards, &refs)
}

/// Starts a gateway and waits until it consumes every partition in `partitions`.
pub fn start_ready(
    shards: usize,
    brokers: &str,
    topics: &Topics,
    extra: &[&str],
    partitions: &[(&str, i32)],
) -> Gateway {
    let gw = start_gateway(shards, brokers, topics, extra);
    wait_kafka_ready(&gw, partitions);
    gw
}

/// The layout most tests use: topics `push` (2 partitions) and `up` (1 partition, the upstream
/// topic), and a 2-shard gateway that is reading all three partitions.
pub fn standard_gateway(kafka: &Kafka, brokers: &str, extra: &[&str]) -> Gateway {
    kafka.create_topic("push", 2);
    kafka.create_topic("up", 1);
    let topics = Topics::new(&["push"], "up");
    start_ready(
        2,
        brokers,
        &topics,
        extra,
        &[("push", 0), ("push", 1), ("up", 0)],
    )
}

/// `GET /health`: status code and JSON body.
pub fn health(gw: &Gateway) -> (u16, Value) {
    let r = http_get(gw.admin_addr, "/health");
    (r.status, r.json())
}

/// `GET /stats` (asserting 200).
pub fn stats(gw: &Gateway) -> Value {
    let r = http_get(gw.admin_addr, "/stats");
    assert_eq!(r.status, 200, "/stats: {}", r.body);
    r.json()
}

/// The `/stats` entry of `topic`/`p`, if the gateway lists it.
pub fn partition_stats(stats: &Value, topic: &str, p: i32) -> Option<Value> {
    stats["kafka"]["partitions"]
        .as_array()?
        .iter()
        .find(|e| e["topic"] == topic && e["partition"] == p)
        .cloned()
}

/// Waits until `/health` says Kafka is ok and `/stats` lists every partition in `partitions`.
pub fn wait_kafka_ready(gw: &Gateway, partitions: &[(&str, i32)]) {
    let deadline = Instant::now() + KAFKA_READY;
    loop {
        let (code, h) = health(gw);
        let s = stats(gw);
        let listed = partitions
            .iter()
            .all(|(t, p)| partition_stats(&s, t, *p).is_some());
        if code == 200 && h["kafka"] == "ok" && h["status"] == "ok" && listed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the gateway did not consume {partitions:?} within {KAFKA_READY:?}; last /health \
             {code} {h}, /stats kafka {}",
            s["kafka"]
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Waits until the gateway's position in `topic`/`p` is at least `offset` (it has read every
/// record before it).
pub fn wait_position(gw: &Gateway, topic: &str, p: i32, offset: i64) {
    let mut last = Value::Null;
    wait_until(
        &format!("position of {topic}/{p} reaching {offset}"),
        DELIVERY,
        || {
            let s = stats(gw);
            last = partition_stats(&s, topic, p).unwrap_or(Value::Null);
            last["position"].as_i64().is_some_and(|pos| pos >= offset)
        },
    );
}

/// `pos` of a record as the gateway writes it.
pub fn pos(topic: &str, p: i32, offset: i64) -> String {
    format!("{topic}:{p}:{offset:012}")
}

/// (topic, partition, offset) of a Kafka `pos`.
pub fn parse_pos(pos: &str) -> (String, i32, i64) {
    let mut it = pos.rsplitn(3, ':');
    let offset = it.next().and_then(|o| o.parse().ok());
    let partition = it.next().and_then(|p| p.parse().ok());
    let topic = it.next();
    match (topic, partition, offset) {
        (Some(t), Some(p), Some(o)) => (t.to_string(), p, o),
        _ => panic!("not a Kafka pos: {pos:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Reading messages
// ---------------------------------------------------------------------------------------------

/// The next `n` frames, which must all be messages; panics on anything else or after `limit`.
pub fn recv_messages(c: &mut Client, n: usize, limit: Duration) -> Vec<Value> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv(left) {
            Recv::Json(v) if v["type"] == "message" => out.push(v),
            Recv::Json(v) => panic!("expected a message ({} of {n} so far), got {v}", out.len()),
            other => panic!(
                "only {} of {n} messages within {limit:?} (shard {}): then {other:?}; last: {:?}",
                out.len(),
                c.shard(),
                out.last()
            ),
        }
    }
    out
}

/// Up to `n` messages: reads until `n` arrived or nothing came for `quiet`. Panics on a frame
/// that is not a message. For asserting on the whole list when some may be missing.
pub fn recv_up_to(c: &mut Client, n: usize, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match c.recv(quiet) {
            Recv::Json(v) if v["type"] == "message" => out.push(v),
            Recv::Json(v) => panic!("expected a message ({} of {n} so far), got {v}", out.len()),
            Recv::Timeout => break,
            other => panic!("connection ended after {} messages: {other:?}", out.len()),
        }
    }
    out
}

/// The `data.i` of each message.
pub fn indices(msgs: &[Value]) -> Vec<i64> {
    msgs.iter()
        .map(|m| {
            m["data"]["i"]
                .as_i64()
                .unwrap_or_else(|| panic!("message without data.i: {m}"))
        })
        .collect()
}

/// Sends a `publish` frame and reads until both its reply and `n_messages` messages arrived (the
/// message consumed back from Kafka may overtake the reply). Returns (reply, messages).
pub fn publish_frame(c: &mut Client, req: &Value, n_messages: usize) -> (Value, Vec<Value>) {
    c.send_json(req);
    let deadline = Instant::now() + DELIVERY;
    let mut reply = None;
    let mut msgs = Vec::new();
    while reply.is_none() || msgs.len() < n_messages {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv(left) {
            Recv::Json(v) if v["type"] == "reply" && v["id"] == req["id"] => reply = Some(v),
            Recv::Json(v) if v["type"] == "message" => msgs.push(v),
            other => panic!(
                "publish {req}: reply {reply:?}, {} messages, then {other:?}",
                msgs.len()
            ),
        }
    }
    (reply.unwrap(), msgs)
}

/// Sum of the samples of `name` whose labels contain every `label="value"` pair in `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (label_part, value) = if let Some(r) = rest.strip_prefix('{') {
            match r.split_once("} ") {
                Some((l, v)) => (l, v),
                None => continue,
            }
        } else if let Some(v) = rest.strip_prefix(' ') {
            ("", v)
        } else {
            continue;
        };
        let all = labels
            .iter()
            .all(|(k, v)| label_part.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
        if !all {
            continue;
        }
        let v: f64 = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("metric line {line:?}"));
        *found.get_or_insert(0.0) += v;
    }
    found
}

// ---------------------------------------------------------------------------------------------
// A proxy in front of the broker that can cut one client's connections
// ---------------------------------------------------------------------------------------------

struct ProxyConn {
    client_id: String,
    down: TcpStream,
    up: TcpStream,
}

#[derive(Default)]
struct ProxyState {
    conns: Vec<ProxyConn>,
    cut: HashSet<String>,
    /// Connections accepted per client id, for checking who went through the proxy.
    seen: HashMap<String, usize>,
}

/// A TCP proxy to the broker. It reads each connection's first Kafka request header to learn the
/// client id and tags the connection with it; [`KafkaProxy::cut`] closes a client id's
/// connections and refuses new ones (after their first request) until [`KafkaProxy::restore`].
pub struct KafkaProxy {
    pub port: u16,
    state: Arc<Mutex<ProxyState>>,
    stop: Arc<AtomicBool>,
}

impl KafkaProxy {
    /// Listens on a free port and forwards to `127.0.0.1:upstream_port`.
    pub fn start(upstream_port: u16) -> KafkaProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let state: Arc<Mutex<ProxyState>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let upstream: SocketAddr = ([127, 0, 0, 1], upstream_port).into();
        {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((s, _)) => {
                            let state = state.clone();
                            std::thread::spawn(move || proxy_conn(s, upstream, state));
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            });
        }
        KafkaProxy { port, state, stop }
    }

    /// Closes every connection of `client_id` and refuses its new ones.
    pub fn cut(&self, client_id: &str) {
        let mut st = self.state.lock().unwrap();
        st.cut.insert(client_id.to_string());
        st.conns.retain(|c| {
            if c.client_id == client_id {
                let _ = c.down.shutdown(Shutdown::Both);
                let _ = c.up.shutdown(Shutdown::Both);
                false
            } else {
                true
            }
        });
    }

    /// Lets every client through again.
    pub fn restore(&self) {
        self.state.lock().unwrap().cut.clear();
    }

    /// Connections accepted so far from `client_id`.
    pub fn seen(&self, client_id: &str) -> usize {
        self.state
            .lock()
            .unwrap()
            .seen
            .get(client_id)
            .copied()
            .unwrap_or(0)
    }
}

/// Tansu advertising a [`KafkaProxy`] in front of it, so clients reach it only through the proxy
/// (a few tries: a free port can be taken before Tansu binds it).
pub fn broker_behind_proxy() -> (KafkaProxy, Broker) {
    (0..5)
        .find_map(|_| {
            let tansu_port = free_port();
            let proxy = KafkaProxy::start(tansu_port);
            let broker = Broker::try_start(tansu_port, proxy.port).ok()?;
            Some((proxy, broker))
        })
        .expect("Tansu behind the proxy did not start in 5 attempts")
}

impl Drop for KafkaProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let mut st = self.state.lock().unwrap();
        for c in st.conns.drain(..) {
            let _ = c.down.shutdown(Shutdown::Both);
            let _ = c.up.shutdown(Shutdown::Both);
        }
    }
}

/// Reads one whole Kafka request (size-prefixed); returns its bytes and the client id.
fn read_first_request(s: &mut TcpStream) -> Option<(Vec<u8>, String)> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size).ok()?;
    let n = i32::from_be_bytes(size);
    if !(10..=(64 << 20)).contains(&n) {
        return None;
    }
    let mut body = vec![0u8; n as usize];
    s.read_exact(&mut body).ok()?;
    // api_key i16, api_version i16, correlation_id i32, client_id: i16 length + bytes (-1 = null).
    let len = i16::from_be_bytes([body[8], body[9]]);
    let client_id = if len < 0 {
        String::new()
    } else {
        let end = 10 + len as usize;
        String::from_utf8_lossy(body.get(10..end)?).into_owned()
    };
    let mut all = size.to_vec();
    all.extend_from_slice(&body);
    Some((all, client_id))
}

fn proxy_conn(mut down: TcpStream, upstream: SocketAddr, state: Arc<Mutex<ProxyState>>) {
    let _ = down.set_nonblocking(false);
    let _ = down.set_nodelay(true);
    let _ = down.set_read_timeout(Some(Duration::from_secs(10)));
    let Some((first, client_id)) = read_first_request(&mut down) else {
        return;
    };
    let _ = down.set_read_timeout(None);
    let Ok(mut up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
        let _ = down.shutdown(Shutdown::Both);
        return;
    };
    let _ = up.set_nodelay(true);
    {
        let mut st = state.lock().unwrap();
        *st.seen.entry(client_id.clone()).or_default() += 1;
        if st.cut.contains(&client_id) {
            let _ = down.shutdown(Shutdown::Both);
            let _ = up.shutdown(Shutdown::Both);
            return;
        }
        let (Ok(d), Ok(u)) = (down.try_clone(), up.try_clone()) else {
            return;
        };
        st.conns.push(ProxyConn {
            client_id,
            down: d,
            up: u,
        });
    }
    if up.write_all(&first).is_err() {
        let _ = down.shutdown(Shutdown::Both);
        return;
    }
    let (Ok(mut down2), Ok(mut up2)) = (down.try_clone(), up.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut up2, &mut down2);
        let _ = down2.shutdown(Shutdown::Both);
        let _ = up2.shutdown(Shutdown::Both);
    });
    let _ = std::io::copy(&mut down, &mut up);
    let _ = down.shutdown(Shutdown::Both);
    let _ = up.shutdown(Shutdown::Both);
    let _ = back.join();
}
