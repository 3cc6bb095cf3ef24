//! The process: shard threads, the admin thread, signals and the drain.

use crate::accept::listener;
use crate::admin;
use crate::auth::Verifier;
use crate::bus::Bus;
use crate::config::{Config, DEV_API_KEY, DEV_JWT_SECRET};
use crate::executor;
use crate::mesh::{full_mesh, MESH_CAPACITY};
use crate::metrics::Metrics;
use crate::node::Node;
use anyhow::{bail, Context, Result};
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Sockets kept back from RLIMIT_NOFILE for listeners, the admin, the io_uring rings and logs.
const FD_RESERVE: usize = 64;

/// A started gateway.
pub struct Running {
    pub node: Arc<Node>,
    pub ws_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shards: Vec<std::thread::JoinHandle<()>>,
}

fn nofile_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur as usize
}

fn epoch_now() -> u64 {
    crate::message::now_ms()
}

pub fn start(config: Config) -> Result<Running> {
    if config.auth.jwt_algorithm == crate::config::JwtAlgorithm::HS256
        && config.auth.jwt_secret.is_none()
    {
        tracing::warn!(
            "NO JWT SECRET CONFIGURED: using the public development secret {DEV_JWT_SECRET:?}. \
             Anyone can mint tokens. Set auth.jwt_secret (GATEWAY_AUTH__JWT_SECRET) in production."
        );
    }
    if config.auth.api_key.is_none() {
        tracing::warn!(
            "NO API KEY CONFIGURED: POST /api/publish accepts the development key {DEV_API_KEY:?}. \
             Set auth.api_key (GATEWAY_AUTH__API_KEY) in production."
        );
    }
    for w in listener::kernel_warnings() {
        tracing::warn!("{w}");
    }
    let verifier = Verifier::from_config(&config.auth)?;
    let shards = config.shard_count();
    let fd_cap = nofile_limit().saturating_sub(FD_RESERVE);
    let max_connections = config.limits.max_connections.min(fd_cap);
    if max_connections < config.limits.max_connections {
        tracing::warn!(
            configured = config.limits.max_connections,
            effective = max_connections,
            "RLIMIT_NOFILE caps the connection limit"
        );
    }
    let (reserved, ws_addr) = listener::reserve(config.listen)
        .with_context(|| format!("binding WebSocket listener {}", config.listen))?;
    let (bus, controls) = Bus::new(shards);
    let metrics = Metrics::new(shards);
    let kafka = config
        .kafka
        .enabled()
        .then(|| Arc::new(crate::kafka::stats::KafkaStats::new(shards, &metrics.kafka)));
    let epoch = epoch_now();
    let presence_node: Arc<str> = Arc::from(format!(
        "{}-{epoch:x}-{:x}",
        config.presence.node_name,
        std::process::id()
    ));
    let presence_io =
        (config.presence.enabled() && config.kafka.enabled()).then(crate::kafka::presence::sink);
    let node = Arc::new(Node {
        metrics,
        kafka,
        presence_node: presence_node.clone(),
        presence_sink: presence_io.as_ref().map(|(tx, _)| tx.clone()),
        admin_producer: std::sync::OnceLock::new(),
        verifier,
        bus,
        shards,
        epoch,
        ws_addr,
        max_connections,
        started: Instant::now(),
        connections: AtomicUsize::new(0),
        draining: AtomicBool::new(false),
        listening: AtomicUsize::new(0),
        config,
    });
    let admin_addr = admin::spawn(node.clone())?;
    if let Some((_, rx)) = presence_io {
        let written = node.metrics.presence_written.clone();
        let bus = node.bus.clone();
        crate::kafka::presence::spawn(&node.config, presence_node, bus, rx, written)?;
    }

    let mut meshes = full_mesh(shards, MESH_CAPACITY).into_iter();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::with_capacity(shards);
    for i in 0..shards {
        let placement = if node.config.pin_cpus {
            Placement::Fixed(i % cpus)
        } else {
            Placement::Unbound
        };
        let mesh = meshes.next().context("a mesh end per shard")?;
        let (node, controls, ready) = (node.clone(), controls.clone(), ready_tx.clone());
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{i}"))
            // The network path needs no registered buffers; keep locked memory small.
            .io_memory(128 << 10)
            .ring_depth(node.config.ring_depth)
            .spawn(move || async move {
                if let Err(e) = executor::run(node, i, mesh, controls, ready).await {
                    tracing::error!(error = %format!("{e:#}"), "shard failed");
                }
            })
            .map_err(|e| anyhow::anyhow!("starting shard {i}: {e}"))?;
        handles.push(std::thread::spawn(move || {
            let _ = handle.join();
        }));
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("a shard could not start: {e}"),
            Err(_) => bail!("shards did not start within 30 s"),
        }
    }
    drop(reserved);
    Ok(Running {
        node,
        ws_addr,
        admin_addr,
        shards: handles,
    })
}

impl Running {
    /// Waits for the shards to finish after a drain, at most `limit`.
    pub fn wait(self, limit: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for h in self.shards {
                let _ = h.join();
            }
            let _ = tx.send(());
        });
        rx.recv_timeout(limit).is_ok()
    }
}

/// `gateway serve`: start, announce, run until SIGTERM/SIGINT, drain, exit.
pub fn serve(config: Config) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .context("installing signal handlers")?;
    let running = start(config)?;
    let node = running.node.clone();
    tracing::info!(
        ws = %running.ws_addr,
        admin = %running.admin_addr,
        shards = node.shards,
        max_connections = node.max_connections,
        "gateway started"
    );
    // Tests and scripts wait for this line.
    println!(
        "gateway ready ws={} admin={} shards={}",
        running.ws_addr, running.admin_addr, node.shards
    );
    // systemd (Type=notify): ready only now that every shard listens. No-op without NOTIFY_SOCKET.
    crate::notify::ready(&format!(
        "ready ws={} admin={} shards={}",
        running.ws_addr, running.admin_addr, node.shards
    ));
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutdown requested");
    }
    crate::notify::stopping("draining");
    node.drain();
    let limit = Duration::from_millis(node.config.drain_timeout_ms + 500);
    if !running.wait(limit) {
        tracing::warn!("drain time exceeded; exiting with connections still open");
    }
    tracing::info!("gateway stopped");
    Ok(())
}
