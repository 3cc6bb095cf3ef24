//! loadgen's command line (clap): what to connect to, how many, how fast, what to publish.

use crate::publish;
use crate::worker::Server;
use clap::Parser;
use std::net::IpAddr;
use std::path::PathBuf;

/// Load generator for the WebSocket push gateway (and Nchan, for side-by-side runs).
#[derive(Parser, Debug)]
#[command(
    version,
    about,
    long_about = None,
    after_help = "`loadgen hold --help`: connect, subscribe and hold idle in separate phases (memory and per-connection costs)."
)]
pub struct Args {
    /// WebSocket URL: ws://HOST:PORT/ws for the gateway, ws://HOST:PORT/sub for Nchan.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub url: String,
    /// Which server is measured.
    #[arg(long, value_enum, default_value_t = Server::Gateway)]
    pub server: Server,
    /// Connections to open.
    #[arg(long, default_value_t = 1000)]
    pub conns: usize,
    /// New connections per second while ramping up.
    #[arg(long, default_value_t = 2000.0)]
    pub ramp: f64,
    /// Rooms; connection i joins room i % rooms (room size = conns / rooms).
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    #[arg(long, default_value = "room_")]
    pub room_prefix: String,
    /// HS256 secret to mint one token per connection (sub = <sub-prefix><i>).
    #[arg(long, default_value = gateway::config::DEV_JWT_SECRET)]
    pub secret: String,
    /// Read tokens from this file instead (one per line, used round-robin).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    #[arg(long, default_value = "lg")]
    pub sub_prefix: String,
    /// Worker processes (default: enough to stay under RLIMIT_NOFILE).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Source addresses to spread connections over, e.g. 127.0.0.1,127.0.0.2 (more ephemeral ports).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// How to publish: http (gateway admin API), ws (publish frames), kafka, nchan, none.
    #[arg(long, value_enum)]
    pub publish: Option<publish::Mode>,
    /// For http: the gateway's admin listener; for nchan: the Nchan HTTP address.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub publish_addr: String,
    /// Bearer key for http publishing.
    #[arg(long, default_value = gateway::config::DEV_API_KEY)]
    pub api_key: String,
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:9092")]
    pub kafka_brokers: Vec<String>,
    #[arg(long, default_value = "gateway.push")]
    pub kafka_topic: String,
    /// Messages per second over all rooms (open loop).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Each message goes to a room drawn at random instead of the next in turn, so a connection's
    /// messages arrive as from many independent publishers (Poisson-like) rather than evenly spaced.
    #[arg(long)]
    pub random_rooms: bool,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds between ramp-up and publishing.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds to wait after publishing for the last deliveries.
    #[arg(long, default_value_t = 2.0)]
    pub drain: f64,
    /// Padding bytes per message payload.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Pad with JSON records (ids, symbols, prices, users; random values) instead of one repeated
    /// character: payloads that compress like real pushes (for --deflate).
    #[arg(long)]
    pub payload_json: bool,
    /// Publisher connections.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Extra connections that subscribe (round-robin over the rooms) and then never read: slow or
    /// hostile clients. The report says how each one ended (e.g. close_1013).
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// SO_RCVBUF for stalled connections, so they fill the server's queue as a slow link would
    /// (0 = the kernel's default, which on loopback buffers megabytes first).
    #[arg(long, default_value_t = 4096)]
    pub stalled_recv_buffer: u32,
    /// Fraction of the connections that keep disconnecting and reconnecting (0..1). Only the others
    /// are checked for lost messages.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Mean lifetime in seconds of a churning connection (drawn from 0.5x to 1.5x).
    #[arg(long, default_value_t = 30.0)]
    pub churn_lifetime: f64,
    /// Stable connections reconnect on a close or a failed read and subscribe again with `since` =
    /// the last `pos` they saw (the gateway only; for clusters behind a load balancer). Lost and
    /// duplicate counts then cover the resumed connections; the report adds reconnect times.
    #[arg(long)]
    pub resume: bool,
    /// Report the server's CPU time (utime+stime from /proc) per delivered message.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Offer permessage-deflate (RFC 7692); compressed messages are inflated to check their
    /// sequence numbers (not with --resume).
    #[arg(long, conflicts_with = "resume")]
    pub deflate: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Write summary.json, the .hgrm files and latency.svg here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}
