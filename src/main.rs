use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use gateway::auth::{mint_hs256, Claims};
use gateway::config::{Config, DEV_JWT_SECRET};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;

/// WebSocket push gateway: thread-per-core on io_uring, JWT-authenticated rooms, encode-once fan-out.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (defaults: WebSocket on 127.0.0.1:8080/ws, admin on 127.0.0.1:9090).
    Serve(Box<ServeArgs>),
    /// Mint an HS256 token for development (uses the configured secret, or the dev secret).
    Token(TokenArgs),
    /// Write a configuration with a random JWT secret and API key (stdout, or a new file).
    Genconfig {
        /// File to create (readable by its owner only); it must not exist.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Validate a configuration file (with the GATEWAY_* environment) and print the effective
    /// configuration, secrets redacted. Exits non-zero with the reason when it is invalid.
    CheckConfig {
        /// The TOML file.
        file: PathBuf,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML config file; environment (GATEWAY_*, nested keys with __) and flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// WebSocket listen address (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Path of the WebSocket endpoint.
    #[arg(long)]
    ws_path: Option<String>,
    /// Admin listen address: /health, /metrics, /stats, POST /api/publish.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Number of shards (0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Pin each shard to its own CPU.
    #[arg(long)]
    pin_cpus: bool,
    /// io_uring submission queue depth per ring of each shard.
    #[arg(long)]
    ring_depth: Option<usize>,
    /// HS256 shared secret.
    #[arg(long)]
    jwt_secret: Option<String>,
    /// HS256, RS256 or ES256.
    #[arg(long)]
    jwt_algorithm: Option<String>,
    /// PEM public key for RS256/ES256.
    #[arg(long)]
    jwt_public_key_file: Option<PathBuf>,
    /// Bearer key for POST /api/publish.
    #[arg(long)]
    api_key: Option<String>,
    /// Node-wide connection limit (503 beyond it).
    #[arg(long)]
    max_connections: Option<usize>,
    /// Connections per user (429 beyond it).
    #[arg(long)]
    max_connections_per_user: Option<usize>,
    /// Connections per client address (429 beyond it; 0 = no limit).
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Upgrades accepted per second, node-wide (429 beyond it; 0 = no limit).
    #[arg(long)]
    connect_rate_per_sec: Option<u32>,
    /// Subscriptions per connection.
    #[arg(long)]
    max_subscriptions: Option<usize>,
    /// Largest client message in bytes (close 1009 beyond it).
    #[arg(long)]
    max_frame_bytes: Option<usize>,
    /// Bytes queued per connection before low-priority drops and close 1013.
    #[arg(long)]
    queue_bytes: Option<usize>,
    /// Client frames per second per connection.
    #[arg(long)]
    client_frames_per_sec: Option<u32>,
    /// Burst of client frames above the rate.
    #[arg(long)]
    client_frames_burst: Option<u32>,
    /// Time allowed to finish the upgrade request.
    #[arg(long)]
    handshake_timeout_ms: Option<u64>,
    /// WebSocket ping interval; silence for two intervals closes the connection.
    #[arg(long)]
    heartbeat_ms: Option<u64>,
    /// Messages kept per channel for `since`.
    #[arg(long)]
    history_size: Option<usize>,
    /// Seconds a message stays recoverable.
    #[arg(long)]
    history_ttl_secs: Option<u64>,
    /// History bytes per shard; the oldest messages go first beyond it.
    #[arg(long)]
    history_max_bytes: Option<usize>,
    /// Deliveries waiting for one peer shard before its members of the channel are closed (1013).
    #[arg(long)]
    peer_queue_messages: Option<usize>,
    /// Time allowed for one `since` recovery.
    #[arg(long)]
    recovery_timeout_ms: Option<u64>,
    /// Accepted token audiences, comma-separated (`aud` must match one when set).
    #[arg(long, value_delimiter = ',')]
    jwt_audience: Option<Vec<String>>,
    /// Accepted token issuers, comma-separated (`iss` must match one when set).
    #[arg(long, value_delimiter = ',')]
    jwt_issuer: Option<Vec<String>>,
    /// JWKS document with the RS256/ES256 keys, chosen by the token's `kid`.
    #[arg(long)]
    jwks_url: Option<String>,
    /// Seconds between JWKS fetches.
    #[arg(long)]
    jwks_refresh_secs: Option<u64>,
    /// Least time between JWKS fetches caused by unknown `kid`s.
    #[arg(long)]
    jwks_min_refresh_ms: Option<u64>,
    /// Bearer key for /stats and /metrics (open when unset).
    #[arg(long)]
    stats_key: Option<String>,
    /// Origins a browser may upgrade from, comma-separated (trailing * matches any suffix).
    #[arg(long, value_delimiter = ',')]
    allowed_origins: Option<Vec<String>>,
    /// Upgrade requests in progress per shard; 503 beyond it.
    #[arg(long)]
    max_handshakes_per_shard: Option<usize>,
    /// Seconds before `exp` that `refresh_due` is sent.
    #[arg(long)]
    refresh_notice_secs: Option<u64>,
    /// Hold message frames up to this many ms to write them together (0 = off).
    #[arg(long)]
    write_delay_ms: Option<u64>,
    /// Test-only admin hooks (`POST /debug/stall`); never in production.
    #[arg(long, hide = true)]
    test_hooks: bool,
    /// Time allowed for clients to close after SIGTERM.
    #[arg(long)]
    drain_timeout_ms: Option<u64>,
    /// Kafka bootstrap brokers, comma-separated (enables Kafka instead of the in-process bus).
    #[arg(long, value_delimiter = ',')]
    kafka_brokers: Option<Vec<String>>,
    /// Topics pushed to clients, comma-separated.
    #[arg(long, value_delimiter = ',')]
    kafka_push_topics: Option<Vec<String>>,
    /// Topic for client and HTTP publishes (key = channel).
    #[arg(long)]
    kafka_upstream_topic: Option<String>,
    /// Topic for records that cannot be routed.
    #[arg(long)]
    kafka_dead_letter_topic: Option<String>,
    /// Where a node starts reading: latest or earliest.
    #[arg(long)]
    kafka_start_from: Option<String>,
    /// Longest time the broker may hold a fetch open.
    #[arg(long)]
    kafka_fetch_max_wait_ms: Option<i32>,
    /// How often partitions added later are picked up.
    #[arg(long)]
    kafka_metadata_refresh_ms: Option<u64>,
    /// Create missing topics with this many partitions (development).
    #[arg(long)]
    kafka_create_topics_partitions: Option<i32>,
}

#[derive(Args)]
struct TokenArgs {
    /// User id (`sub`).
    #[arg(long)]
    sub: String,
    /// Channels the user may subscribe to, comma-separated; a trailing * matches any suffix.
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Channels the user may publish to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    publish: Vec<String>,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// Secret to sign with (default: the configured auth.jwt_secret, else the dev secret).
    #[arg(long)]
    secret: Option<String>,
    /// Config file to read auth.jwt_secret from.
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Sets `path` (dot-separated) in `root` when `value` is present.
fn set<T: serde::Serialize>(root: &mut Value, path: &str, value: Option<T>) {
    let Some(v) = value else { return };
    let mut cur = root;
    let mut parts = path.split('.').peekable();
    while let Some(p) = parts.next() {
        if parts.peek().is_none() {
            cur[p] = json!(v);
        } else {
            if cur.get(p).is_none() {
                cur[p] = json!({});
            }
            cur = &mut cur[p];
        }
    }
}

impl ServeArgs {
    fn overrides(self) -> Value {
        let mut o = json!({});
        set(&mut o, "listen", self.listen);
        set(&mut o, "ws_path", self.ws_path);
        set(&mut o, "admin_listen", self.admin_listen);
        set(&mut o, "shards", self.shards);
        set(&mut o, "pin_cpus", self.pin_cpus.then_some(true));
        set(&mut o, "ring_depth", self.ring_depth);
        set(&mut o, "drain_timeout_ms", self.drain_timeout_ms);
        set(&mut o, "auth.jwt_secret", self.jwt_secret);
        set(&mut o, "auth.jwt_algorithm", self.jwt_algorithm);
        set(&mut o, "auth.jwt_public_key_file", self.jwt_public_key_file);
        set(&mut o, "auth.api_key", self.api_key);
        set(&mut o, "limits.max_connections", self.max_connections);
        set(
            &mut o,
            "limits.max_connections_per_user",
            self.max_connections_per_user,
        );
        set(
            &mut o,
            "limits.max_connections_per_ip",
            self.max_connections_per_ip,
        );
        set(
            &mut o,
            "limits.connect_rate_per_sec",
            self.connect_rate_per_sec,
        );
        set(&mut o, "limits.max_subscriptions", self.max_subscriptions);
        set(&mut o, "limits.max_frame_bytes", self.max_frame_bytes);
        set(&mut o, "limits.queue_bytes", self.queue_bytes);
        set(
            &mut o,
            "limits.client_frames_per_sec",
            self.client_frames_per_sec,
        );
        set(
            &mut o,
            "limits.client_frames_burst",
            self.client_frames_burst,
        );
        set(
            &mut o,
            "limits.handshake_timeout_ms",
            self.handshake_timeout_ms,
        );
        set(&mut o, "session.heartbeat_ms", self.heartbeat_ms);
        set(&mut o, "session.write_delay_ms", self.write_delay_ms);
        set(&mut o, "history.size", self.history_size);
        set(&mut o, "history.ttl_secs", self.history_ttl_secs);
        set(&mut o, "history.max_bytes", self.history_max_bytes);
        set(
            &mut o,
            "limits.peer_queue_messages",
            self.peer_queue_messages,
        );
        set(
            &mut o,
            "limits.recovery_timeout_ms",
            self.recovery_timeout_ms,
        );
        set(&mut o, "test_hooks", self.test_hooks.then_some(true));
        set(&mut o, "auth.audience", self.jwt_audience);
        set(&mut o, "auth.issuer", self.jwt_issuer);
        set(&mut o, "auth.jwks_url", self.jwks_url);
        set(&mut o, "auth.jwks_refresh_secs", self.jwks_refresh_secs);
        set(&mut o, "auth.jwks_min_refresh_ms", self.jwks_min_refresh_ms);
        set(&mut o, "auth.stats_key", self.stats_key);
        set(&mut o, "allowed_origins", self.allowed_origins);
        set(
            &mut o,
            "limits.max_handshakes_per_shard",
            self.max_handshakes_per_shard,
        );
        set(
            &mut o,
            "session.refresh_notice_secs",
            self.refresh_notice_secs,
        );
        set(&mut o, "kafka.brokers", self.kafka_brokers);
        set(&mut o, "kafka.push_topics", self.kafka_push_topics);
        set(&mut o, "kafka.upstream_topic", self.kafka_upstream_topic);
        set(
            &mut o,
            "kafka.dead_letter_topic",
            self.kafka_dead_letter_topic,
        );
        set(&mut o, "kafka.start_from", self.kafka_start_from);
        set(
            &mut o,
            "kafka.fetch_max_wait_ms",
            self.kafka_fetch_max_wait_ms,
        );
        set(
            &mut o,
            "kafka.metadata_refresh_ms",
            self.kafka_metadata_refresh_ms,
        );
        set(
            &mut o,
            "kafka.create_topics_partitions",
            self.kafka_create_topics_partitions,
        );
        o
    }
}

/// Logs to stderr, filtered by `GATEWAY_LOG`; `GATEWAY_LOG_FORMAT=json` writes one JSON object per
/// line, for log shippers.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("GATEWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rskafka=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("GATEWAY_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().init();
    } else {
        logs.init();
    }
}

fn main() -> Result<()> {
    init_logs();
    match Cli::parse().command {
        Command::Genconfig { out } => match out {
            Some(path) => {
                gateway::config_commands::write_new(&path)?;
                eprintln!("wrote {} (mode 0600)", path.display());
                Ok(())
            }
            None => {
                print!("{}", gateway::config_commands::generate()?);
                Ok(())
            }
        },
        Command::CheckConfig { file } => {
            let config = Config::load(Some(&file), json!({}))
                .with_context(|| format!("{} is not a valid configuration", file.display()))?;
            print!("{}", gateway::config_commands::effective(&config)?);
            eprintln!("{}: valid", file.display());
            Ok(())
        }
        Command::Serve(args) => {
            let file = args.config.clone();
            let config = Config::load(file.as_deref(), (*args).overrides())?;
            gateway::server::serve(config)
        }
        Command::Token(args) => {
            let secret = match args.secret {
                Some(s) => s,
                None => Config::load(args.config.as_deref(), json!({}))?
                    .auth
                    .jwt_secret
                    .unwrap_or_else(|| DEV_JWT_SECRET.to_string()),
            };
            let exp = gateway::message::now_ms() / 1000 + args.ttl;
            let claims = Claims {
                sub: args.sub,
                exp,
                nbf: None,
                channels: (!args.channels.is_empty()).then_some(args.channels),
                publish: (!args.publish.is_empty()).then_some(args.publish),
            };
            let token = mint_hs256(&secret, &claims).context("minting token")?;
            println!("{token}");
            Ok(())
        }
    }
}
