//! Configuration: defaults < TOML file (`--config`) < environment (`GATEWAY_*`) < command-line flags.
//!
//! Nested keys use `__` in the environment: `GATEWAY_AUTH__JWT_SECRET`, `GATEWAY_LIMITS__MAX_CONNECTIONS`.

use anyhow::{bail, Context, Result};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The secret `gateway serve` falls back to when none is configured. Never use it in production.
pub const DEV_JWT_SECRET: &str = "dev-secret-change-me";
/// The API key for `POST /api/publish` when none is configured. Never use it in production.
pub const DEV_API_KEY: &str = "dev-api-key-change-me";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// WebSocket listener; every shard binds it with SO_REUSEPORT.
    pub listen: SocketAddr,
    /// Path of the WebSocket endpoint.
    pub ws_path: String,
    /// Admin listener: health, metrics, stats, HTTP publish.
    pub admin_listen: SocketAddr,
    /// Number of shards (executors); 0 means one per available core.
    pub shards: usize,
    /// Pin each shard to its own CPU.
    pub pin_cpus: bool,
    /// io_uring submission queue depth per ring of each shard. The kernel sizes its cancel-lookup
    /// hash table from it: every armed socket poll sits in that table, and glommio cancels and
    /// re-arms a timer on every reactor pass, which walks one bucket.
    pub ring_depth: usize,
    /// Time allowed for connections to close after SIGTERM/SIGINT.
    pub drain_timeout_ms: u64,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub session: SessionConfig,
    pub history: HistoryConfig,
    pub kafka: KafkaConfig,
    pub presence: PresenceConfig,
    /// Origins a browser may upgrade from (`Origin` header; one `*` stands for any characters).
    /// Empty: any. Requests without an `Origin` (not from a browser) are not affected.
    pub allowed_origins: Vec<String>,
    /// Test-only hooks on the admin listener (`POST /debug/stall`); never in production.
    pub test_hooks: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    Latest,
    Earliest,
}

/// Kafka: the production source of pushes and how nodes scale out. Empty `brokers` = the
/// in-process bus.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`.
    pub brokers: Vec<String>,
    /// Topics whose records are pushed to clients. Every node reads all of them.
    pub push_topics: Vec<String>,
    /// Where client `publish` frames and `POST /api/publish` go (key = channel); consumed too.
    pub upstream_topic: String,
    /// Where records that cannot be routed go, with the reason in a header; none = only counted.
    pub dead_letter_topic: Option<String>,
    /// Where a node starts reading a partition: `latest` (default) or `earliest`.
    pub start_from: StartFrom,
    /// Upper bound of one fetch per partition.
    pub fetch_max_bytes: i32,
    /// How long the broker may hold a fetch open waiting for records.
    pub fetch_max_wait_ms: i32,
    /// How often topic metadata is re-read to pick up added partitions.
    pub metadata_refresh_ms: u64,
    /// Records scanned at most to answer one `since` from the broker.
    pub recovery_max_records: usize,
    pub client_id: String,
    /// If > 0, missing topics are created with this many partitions when the gateway connects
    /// (for development; production topics are usually created by their owners).
    pub create_topics_partitions: i32,
    /// Where nodes share presence (docs/ARCHITECTURE.md); used when `presence.channels` is set.
    /// Best created compacted (`cleanup.policy=compact`).
    pub presence_topic: String,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: Vec::new(),
            push_topics: vec!["gateway.push".into()],
            upstream_topic: "gateway.upstream".into(),
            dead_letter_topic: None,
            start_from: StartFrom::Latest,
            fetch_max_bytes: 1 << 20,
            fetch_max_wait_ms: 500,
            metadata_refresh_ms: 10_000,
            recovery_max_records: 100_000,
            client_id: "gateway".into(),
            create_topics_partitions: 0,
            presence_topic: "gateway.presence".into(),
        }
    }
}

impl KafkaConfig {
    pub fn enabled(&self) -> bool {
        !self.brokers.is_empty()
    }

    /// Every topic the gateway consumes: the push topics and the upstream topic.
    pub fn consumed_topics(&self) -> Vec<String> {
        let mut t = self.push_topics.clone();
        if !t.contains(&self.upstream_topic) {
            t.push(self.upstream_topic.clone());
        }
        t
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub jwt_algorithm: JwtAlgorithm,
    /// Shared secret for HS256.
    pub jwt_secret: Option<String>,
    /// PEM public key file for RS256 / ES256.
    pub jwt_public_key_file: Option<PathBuf>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// Bearer key for `POST /api/publish`.
    pub api_key: Option<String>,
    /// Accepted `aud` values; when set, a token must carry one of them.
    pub audience: Vec<String>,
    /// Accepted `iss` values; when set, a token must carry one of them.
    pub issuer: Vec<String>,
    /// A JWKS document (RS256/ES256 keys chosen by the token's `kid`), fetched over HTTP(S).
    pub jwks_url: Option<String>,
    /// How often the JWKS is fetched again.
    pub jwks_refresh_secs: u64,
    /// A token with an unknown `kid` fetches the JWKS again at most this often.
    pub jwks_min_refresh_ms: u64,
    /// When set, `/stats` and `/metrics` need `Authorization: Bearer <stats_key>`.
    pub stats_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Node-wide WebSocket connections; beyond it the upgrade is refused with 503.
    /// Also capped at run time by RLIMIT_NOFILE.
    pub max_connections: usize,
    /// Connections per user (`sub`) across the node; beyond it 429.
    pub max_connections_per_user: usize,
    /// Connections per client address across the node; beyond it 429. 0 = no limit (clients behind
    /// one NAT share an address).
    pub max_connections_per_ip: usize,
    /// Upgrades accepted per second across the node (split evenly between shards); beyond it 429.
    /// 0 = no limit.
    pub connect_rate_per_sec: u32,
    /// Subscriptions per connection, not counting `user:<sub>` and `broadcast`.
    pub max_subscriptions: usize,
    /// Largest client message accepted; larger ones close the connection with 1009.
    pub max_frame_bytes: usize,
    /// Largest HTTP upgrade request (request line and headers).
    pub max_handshake_bytes: usize,
    /// A client must finish its upgrade request within this time.
    pub handshake_timeout_ms: u64,
    /// Upgrade requests in progress per shard (before authentication completes); 503 beyond it.
    pub max_handshakes_per_shard: usize,
    /// Bytes queued for one connection before low-priority drops and then close 1013.
    pub queue_bytes: usize,
    /// SO_SNDBUF of client sockets: bounds what the kernel holds for a client that stops reading,
    /// so the bounded queue behind it fills and the client is closed with 1013 (0 = the kernel's
    /// autotuning, up to net.ipv4.tcp_wmem's maximum, often 4 MiB per client). Linux doubles the
    /// value for its bookkeeping and caps it at net.core.wmem_max.
    pub socket_send_buffer_bytes: usize,
    /// Sustained client frames per second per connection.
    pub client_frames_per_sec: u32,
    /// Burst of client frames allowed above the sustained rate.
    pub client_frames_burst: u32,
    /// Longest channel name accepted.
    pub max_channel_len: usize,
    /// Deliveries waiting for one peer shard; beyond it a delivery is dropped and that shard's
    /// members of the channel are closed with 1013 (they recover with `since`).
    pub peer_queue_messages: usize,
    /// Time allowed for one `since` recovery; a longer one ends with 1013 (the client resumes
    /// from the last `pos` it got).
    pub recovery_timeout_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    /// WebSocket ping interval; a connection silent for two intervals is closed.
    pub heartbeat_ms: u64,
    /// tungstenite's read buffer per connection: allocated eagerly and held by every connection,
    /// so small (client frames are small); a bigger frame grows it while it is read, this many
    /// bytes per copy out of the shard's scratch buffer.
    pub read_buffer_bytes: usize,
    /// `refresh_due` goes out this long before the token's `exp` (at most half the token's
    /// remaining life at connect).
    pub refresh_notice_secs: u64,
    /// Conformance test mode: every data message a client sends is echoed back, and nothing else
    /// happens (no welcome, no channels). Runs the real connection code for the Autobahn|Testsuite;
    /// never for production.
    pub echo: bool,
    /// permessage-deflate (RFC 7692) for clients that offer it: messages compressed once per shard.
    pub deflate: bool,
    /// Messages shorter than this go uncompressed to every client.
    pub deflate_min_bytes: usize,
    /// Write coalescing: message frames for a connection are held up to this long (ms) and
    /// leave together in one vectored write; 0 = off (each wake writes at once).
    pub write_delay_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HistoryConfig {
    /// Messages kept per channel for `since` recovery.
    pub size: usize,
    /// How long a message stays recoverable.
    pub ttl_secs: u64,
    /// History bytes per shard, all channels together; the oldest messages go first beyond it.
    pub max_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".parse().expect("static address"),
            ws_path: "/ws".into(),
            admin_listen: "127.0.0.1:9090".parse().expect("static address"),
            shards: 0,
            pin_cpus: false,
            ring_depth: 2048,
            drain_timeout_ms: 10_000,
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            session: SessionConfig::default(),
            history: HistoryConfig::default(),
            kafka: KafkaConfig::default(),
            presence: PresenceConfig::default(),
            allowed_origins: Vec::new(),
            test_hooks: false,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            jwt_public_key_file: None,
            leeway_secs: 0,
            api_key: None,
            audience: Vec::new(),
            issuer: Vec::new(),
            jwks_url: None,
            jwks_refresh_secs: 300,
            jwks_min_refresh_ms: 5_000,
            stats_key: None,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_connections_per_user: 64,
            max_connections_per_ip: 0,
            connect_rate_per_sec: 0,
            max_subscriptions: 128,
            max_frame_bytes: 64 * 1024,
            max_handshake_bytes: 8 * 1024,
            handshake_timeout_ms: 5_000,
            max_handshakes_per_shard: 4096,
            queue_bytes: 256 * 1024,
            socket_send_buffer_bytes: 64 * 1024,
            client_frames_per_sec: 50,
            client_frames_burst: 100,
            max_channel_len: 200,
            peer_queue_messages: 65_536,
            recovery_timeout_ms: 60_000,
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            heartbeat_ms: 30_000,
            read_buffer_bytes: 128,
            refresh_notice_secs: 60,
            echo: false,
            deflate: true,
            deflate_min_bytes: 128,
            write_delay_ms: 0,
        }
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 256,
            ttl_secs: 300,
            max_bytes: 64 << 20,
        }
    }
}

impl Config {
    /// Layers the sources in order of precedence; `overrides` come from command-line flags.
    pub fn load(file: Option<&Path>, overrides: serde_json::Value) -> Result<Config> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            fig = fig.merge(Toml::file(path));
        }
        fig = fig
            // GATEWAY_LOG and GATEWAY_LOG_FORMAT set the logs, not config keys.
            .merge(
                Env::prefixed("GATEWAY_")
                    .ignore(&["LOG", "LOG_FORMAT"])
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides));
        let cfg: Config = fig.extract().context("invalid configuration")?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The number of shards to run: the configured count, or one per available core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(crate::topology::MAX_SHARDS)
        }
    }

    pub fn heartbeat(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.session.heartbeat_ms)
    }
}

mod presence;
mod validate;

pub use presence::PresenceConfig;

#[cfg(test)]
mod tests;
