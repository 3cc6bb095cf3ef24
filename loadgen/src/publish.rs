//! Open-loop publishing: message `i` is due at `start + i / rate` whatever happened before, and its
//! payload carries that due time, so a stalled publisher or server shows up as latency instead of
//! hiding it (no coordinated omission). Message `i` goes to room `i % rooms` (or a random
//! room, `--random-rooms`) as that room's next sequence number.

use anyhow::{anyhow, bail, Context, Result};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// `POST /api/publish` on the gateway's admin listener.
    Http,
    /// `publish` frames on WebSocket connections (the token needs the publish claim).
    Ws,
    /// Records to a Kafka topic (key = channel), consumed by the gateway.
    Kafka,
    /// `POST /pub?id=ROOM` (Nchan).
    Nchan,
}

pub struct Plan {
    pub mode: Mode,
    pub rate: f64,
    pub duration: Duration,
    pub rooms: usize,
    /// Rooms drawn at random per message (else round-robin).
    pub random_rooms: bool,
    pub room_prefix: String,
    pub payload_bytes: usize,
    /// Padding as JSON records rather than one repeated character.
    pub payload_json: bool,
    pub connections: usize,
    /// http/nchan: host:port; ws: the gateway's WebSocket address.
    pub addr: Option<SocketAddr>,
    pub api_key: String,
    pub ws_path: String,
    pub ws_token: String,
    pub kafka_brokers: Vec<String>,
    pub kafka_topic: String,
}

/// What was published: per room, how many; per (room, seq), the due time in unix ns.
#[derive(Default)]
pub struct Sent {
    pub per_room: BTreeMap<usize, u64>,
    pub due_ns: BTreeMap<(u32, u64), u64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

fn payload(seq: u64, due_ns: u64, room: usize, pad: usize, json: bool) -> String {
    let p = match json {
        true => records(pad),
        false => format!(r#""{}""#, "x".repeat(pad)),
    };
    format!(r#"{{"s":{seq},"t":{due_ns},"r":{room},"p":{p}}}"#)
}

/// A JSON array of about `bytes` bytes of trade-like records with random values.
fn records(bytes: usize) -> String {
    use std::fmt::Write;
    const SYMBOLS: [&str; 8] = [
        "AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "META", "NFLX",
    ];
    let mut out = String::with_capacity(bytes + 160);
    out.push('[');
    while out.len() < bytes {
        if out.len() > 1 {
            out.push(',');
        }
        let _ = write!(
            out,
            r#"{{"id":{},"symbol":"{}","side":"{}","price":{:.2},"qty":{},"trader":"user-{}"}}"#,
            rand::random_range(1..1_000_000_000u64),
            SYMBOLS[rand::random_range(0..SYMBOLS.len())],
            if rand::random() { "buy" } else { "sell" },
            rand::random_range(1.0..1000.0f64),
            rand::random_range(1..500u32),
            rand::random_range(1..100_000u32),
        );
    }
    out.push(']');
    out
}

enum Job {
    Send { room: usize, body: String },
}

/// Publishes for `plan.duration`; `tick` is called after every message handed out.
pub async fn run(plan: &Plan, tick: impl Fn(u64)) -> Result<Sent> {
    let (tx, rx) = async_channel_pair(plan.connections.max(1) * 64);
    let errors = Rc::new(std::cell::RefCell::new((0u64, None::<String>)));
    let mut senders = Vec::new();
    for _ in 0..plan.connections.max(1) {
        let sender = Sender::open(plan).await?;
        let rx = rx.clone();
        let errors = errors.clone();
        senders.push(tokio::task::spawn_local(async move {
            let mut sender = sender;
            while let Ok(job) = rx.recv().await {
                let Job::Send { room, body } = job;
                if let Err(e) = sender.send(room, &body).await {
                    let mut er = errors.borrow_mut();
                    er.0 += 1;
                    er.1.get_or_insert_with(|| format!("{e:#}"));
                }
            }
        }));
    }
    let mut sent = Sent::default();
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let interval = Duration::from_secs_f64(1.0 / plan.rate);
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let start_wall = SystemTime::now() + Duration::from_millis(50);
    for i in 0..total {
        let offset = interval.mul_f64(i as f64);
        tokio::time::sleep_until(start + offset).await;
        let room = if plan.random_rooms {
            rand::random_range(0..plan.rooms)
        } else {
            (i as usize) % plan.rooms
        };
        // A room's messages are numbered from 0 in publish order (round-robin: i / rooms).
        let seq = sent.per_room.get(&room).copied().unwrap_or(0);
        let due = unix_ns(start_wall + offset);
        let name = format!("{}{room}", plan.room_prefix);
        let data = payload(seq, due, room, plan.payload_bytes, plan.payload_json);
        let body = match plan.mode {
            Mode::Http => format!(r#"{{"channel":"{name}","event":"load","data":{data}}}"#),
            Mode::Ws => format!(
                r#"{{"type":"publish","id":"{i}","channel":"{name}","event":"load","data":{data}}}"#
            ),
            Mode::Kafka | Mode::Nchan => data,
        };
        if tx.send(Job::Send { room, body }).await.is_err() {
            bail!("all publisher connections failed");
        }
        *sent.per_room.entry(room).or_default() += 1;
        sent.due_ns.insert((room as u32, seq), due);
        tick(i + 1);
    }
    tx.close();
    for s in senders {
        let _ = s.await;
    }
    let er = errors.borrow();
    sent.errors = er.0;
    sent.first_error = er.1.clone();
    Ok(sent)
}

fn async_channel_pair(cap: usize) -> (Tx, Rx) {
    let (tx, rx) = mpsc::channel(cap);
    (Tx(tx), Rx(Rc::new(tokio::sync::Mutex::new(rx))))
}

/// A bounded queue shared by the sending connections (single-threaded runtime).
struct Tx(mpsc::Sender<Job>);
#[derive(Clone)]
struct Rx(Rc<tokio::sync::Mutex<mpsc::Receiver<Job>>>);

impl Tx {
    async fn send(&self, j: Job) -> Result<(), ()> {
        self.0.send(j).await.map_err(|_| ())
    }
    fn close(self) {}
}

impl Rx {
    async fn recv(&self) -> Result<Job, ()> {
        self.0.lock().await.recv().await.ok_or(())
    }
}

enum Sender {
    Http {
        stream: TcpStream,
        host: String,
        path_for: fn(&str) -> String,
        auth: String,
        buf: Vec<u8>,
        room_prefix: String,
    },
    Ws {
        writer: tokio::net::tcp::OwnedWriteHalf,
    },
    Kafka {
        partitions: Vec<Arc<PartitionClient>>,
        room_prefix: String,
    },
}

impl Sender {
    async fn open(plan: &Plan) -> Result<Sender> {
        match plan.mode {
            Mode::Http | Mode::Nchan => {
                let addr = plan.addr.context("publisher address")?;
                let stream = TcpStream::connect(addr).await.with_context(|| {
                    format!("nothing is listening at {addr} (publish endpoint)")
                })?;
                let _ = stream.set_nodelay(true);
                let (path_for, auth): (fn(&str) -> String, String) = if plan.mode == Mode::Http {
                    (
                        |_| "/api/publish".to_string(),
                        format!("Authorization: Bearer {}\r\n", plan.api_key),
                    )
                } else {
                    (|room| format!("/pub?id={room}"), String::new())
                };
                Ok(Sender::Http {
                    stream,
                    host: addr.to_string(),
                    path_for,
                    auth,
                    buf: vec![0; 4096],
                    room_prefix: plan.room_prefix.clone(),
                })
            }
            Mode::Ws => {
                let addr = plan.addr.context("publisher address")?;
                let target = crate::ws::Target {
                    addr,
                    host: addr.to_string(),
                };
                let path = format!("{}?token={}", plan.ws_path, plan.ws_token);
                let (stream, _) = crate::ws::connect(&target, None, &path)
                    .await
                    .map_err(|e| anyhow!("publisher connection: {}", e.label()))?;
                let (mut read_half, writer) = stream.into_split();
                // Replies are not needed: drain them so the gateway never sees a slow reader.
                tokio::task::spawn_local(async move {
                    let mut b = vec![0u8; 16 * 1024];
                    while matches!(read_half.read(&mut b).await, Ok(n) if n > 0) {}
                });
                Ok(Sender::Ws { writer })
            }
            Mode::Kafka => {
                let client = rskafka::client::ClientBuilder::new(plan.kafka_brokers.clone())
                    .client_id("loadgen")
                    .build()
                    .await
                    .map_err(|e| anyhow!("connecting to Kafka {:?}: {e}", plan.kafka_brokers))?;
                let topics = client.list_topics().await.map_err(|e| anyhow!("{e}"))?;
                let t = topics
                    .iter()
                    .find(|t| t.name == plan.kafka_topic)
                    .with_context(|| format!("Kafka topic {} does not exist", plan.kafka_topic))?;
                let mut partitions = Vec::new();
                for p in &t.partitions {
                    let pc = client
                        .partition_client(plan.kafka_topic.clone(), *p, UnknownTopicHandling::Retry)
                        .await
                        .map_err(|e| anyhow!("{e}"))?;
                    partitions.push(Arc::new(pc));
                }
                Ok(Sender::Kafka {
                    partitions,
                    room_prefix: plan.room_prefix.clone(),
                })
            }
        }
    }

    async fn send(&mut self, room: usize, body: &str) -> Result<()> {
        match self {
            Sender::Http {
                stream,
                host,
                path_for,
                auth,
                buf,
                room_prefix,
            } => {
                let path = path_for(&format!("{room_prefix}{room}"));
                let req = format!(
                    "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(req.as_bytes()).await?;
                read_response(stream, buf).await
            }
            Sender::Ws { writer } => {
                writer
                    .write_all(&crate::ws::client_frame(1, body.as_bytes()))
                    .await?;
                Ok(())
            }
            Sender::Kafka {
                partitions,
                room_prefix,
            } => {
                let key = format!("{room_prefix}{room}").into_bytes();
                let p = gateway::kafka::client::partition_for(&key, partitions.len()) as usize;
                let record = rskafka::record::Record {
                    key: Some(key),
                    value: Some(body.as_bytes().to_vec()),
                    headers: BTreeMap::new(),
                    timestamp: chrono::Utc::now(),
                };
                partitions[p]
                    .produce(vec![record], Compression::NoCompression)
                    .await
                    .map_err(|e| anyhow!("produce: {e}"))?;
                Ok(())
            }
        }
    }
}

/// Reads one HTTP/1.1 response (status line, headers, Content-Length body); errors on non-2xx.
async fn read_response(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            bail!("publish endpoint closed the connection");
        }
        filled += n;
        let Some(end) = memchr::memmem::find(&buf[..filled], b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while filled < end + 4 + len {
            if filled == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                bail!("publish endpoint closed mid-response");
            }
            filled += n;
        }
        if !(200..300).contains(&status) {
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]);
            bail!("publish answered {status}: {}", body.trim());
        }
        return Ok(());
    }
}
