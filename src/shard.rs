//! One shard: a glommio executor on its own thread that owns its listener socket, its connections,
//! their channel memberships and send queues, and the channels hashed to it.

use crate::accept::listener;
use crate::bus::Control;
use crate::conn::CLOSE_SHUTDOWN;
use crate::mesh::{Mesh, Peers};
use crate::metrics::ShardMetrics;
use crate::node::Node;
use crate::route::{Bounds, Router, RouterConfig};
use anyhow::{Context, Result};
use glommio::timer::{sleep, Timer};
use hdrhistogram::Histogram;
use serde_json::json;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reads from every socket of the shard land here first; the session hands them on before yielding.
const SCRATCH_BYTES: usize = 64 * 1024;

pub struct Shard {
    pub id: usize,
    pub node: Arc<Node>,
    pub router: Router,
    pub metrics: ShardMetrics,
    pub scratch: RefCell<Vec<u8>>,
    /// Delivery latency in microseconds, for `/stats`.
    pub latency: RefCell<Histogram<u64>>,
    next_conn: Cell<u64>,
    /// This shard's share of the node's connect rate: (tokens, last refill).
    connect_tokens: Cell<(f64, Instant)>,
}

impl Shard {
    pub fn next_conn_id(&self) -> u64 {
        let n = self.next_conn.get() + 1;
        self.next_conn.set(n);
        ((self.id as u64) << 48) | n
    }

    /// Takes one upgrade from this shard's share of `limits.connect_rate_per_sec`.
    pub fn take_connect_token(&self) -> bool {
        let rate = self.node.config.limits.connect_rate_per_sec;
        if rate == 0 {
            return true;
        }
        let per_shard = f64::from(rate) / self.node.shards as f64;
        let (tokens, last) = self.connect_tokens.get();
        let now = Instant::now();
        let tokens =
            (tokens + now.duration_since(last).as_secs_f64() * per_shard).min(per_shard.max(1.0));
        if tokens >= 1.0 {
            self.connect_tokens.set((tokens - 1.0, now));
            true
        } else {
            self.connect_tokens.set((tokens, now));
            false
        }
    }

    pub fn record_latency(&self, d: Duration) {
        self.metrics.delivery_latency.observe(d);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self.latency.borrow_mut().record(us);
    }

    fn stats(&self) -> serde_json::Value {
        let mut v = self.router.stats();
        let h = self.latency.borrow();
        v["delivery_latency_us"] = json!({
            "count": h.len(),
            "p50": h.value_at_quantile(0.5),
            "p99": h.value_at_quantile(0.99),
            "p999": h.value_at_quantile(0.999),
            "max": h.max(),
        });
        v["delivered"] = json!(self.metrics.delivered.get());
        v["dropped_low_priority"] = json!(self.metrics.dropped_low_priority.get());
        v["slow_consumer_closes"] = json!(self.metrics.slow_consumer_closes.get());
        v["mesh_drops"] = json!(self.metrics.mesh_drops.get());
        v["mesh_messages"] = json!({
            "control": self.metrics.mesh_messages[0].get(),
            "data": self.metrics.mesh_messages[1].get(),
        });
        v
    }
}

/// Runs a shard until it is drained. `ready` hears once the listener is bound (or why not).
pub async fn run(
    node: Arc<Node>,
    mesh: Mesh,
    controls: Vec<async_channel::Receiver<Control>>,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
) -> Result<()> {
    let (senders, mut receivers) = mesh
        .join()
        .await
        .map_err(|e| anyhow::anyhow!("joining the shard mesh: {e}"))?;
    let id = senders.peer_id();
    let metrics = node.metrics.shards[id].clone();
    let cfg = &node.config;
    let peers = Peers::start(senders, id, cfg.limits.peer_queue_messages, metrics.clone());
    let (kafka, from_kafka) = match &node.kafka {
        Some(stats) => {
            let (io, rx) = crate::kafka::spawn(id, node.shards, cfg, stats.clone())?;
            (Some(io), Some(rx))
        }
        None => (None, None),
    };
    let router = Router::new(
        RouterConfig {
            shard: id,
            shards: node.shards,
            epoch: node.epoch,
            history: Bounds {
                per_channel: cfg.history.size,
                max_bytes: cfg.history.max_bytes,
                ttl: Duration::from_secs(cfg.history.ttl_secs),
            },
            user_limit: cfg.limits.max_connections_per_user,
            ip_limit: cfg.limits.max_connections_per_ip,
            queue_bytes: cfg.limits.queue_bytes,
            recovery_max_records: cfg.kafka.recovery_max_records,
            recovery_timeout: Duration::from_millis(cfg.limits.recovery_timeout_ms),
        },
        peers.clone(),
        metrics.clone(),
        kafka,
    );
    let shard = Rc::new(Shard {
        id,
        node: node.clone(),
        router,
        metrics,
        scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
        latency: RefCell::new(
            Histogram::new_with_bounds(1, 60_000_000, 3).context("latency histogram")?,
        ),
        next_conn: Cell::new(0),
        connect_tokens: Cell::new((f64::from(cfg.limits.connect_rate_per_sec), Instant::now())),
    });

    for (_, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(msg) = rx.recv().await {
                shard.router.on_mesh(msg);
            }
        })
        .detach();
    }

    if let Some(mut rx) = from_kafka {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(item) = rx.recv().await {
                shard.router.on_kafka(item);
                // Records are never dropped: while a peer is behind, consumption pauses here
                // (and, through the full hand-over ring, fetching).
                shard.router.room_for_records().await;
                glommio::yield_if_needed().await;
            }
        })
        .detach();
    }

    let tcp = match listener::bind(node.ws_addr, node.config.limits.socket_send_buffer_bytes) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(format!("binding {}: {e}", node.ws_addr)));
            return Err(e).context("binding the WebSocket listener");
        }
    };
    let accept = glommio::spawn_local(listener::accept_loop(shard.clone(), tcp)).detach();

    let ticker = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            loop {
                Timer::new(Duration::from_secs(1)).await;
                shard.router.sweep();
            }
        })
        .detach()
    };
    node.shard_listening();
    let _ = ready.send(Ok(id));

    let control = controls
        .get(id)
        .cloned()
        .context("no control queue for this shard")?;
    while let Ok(c) = control.recv().await {
        match c {
            Control::Publish(p, tx) => {
                let msg = shard.router.sequence(p);
                let _ = tx.send(Ok(msg.pos.to_string()));
            }
            Control::Stats(tx) => {
                let _ = tx.send(shard.stats());
            }
            Control::Stall(d) => {
                // Test hook: the whole shard stops, as a shard stuck in a long computation would.
                tracing::warn!(
                    shard = id,
                    ms = d.as_millis() as u64,
                    "stalling (test hook)"
                );
                std::thread::sleep(d);
            }
            Control::Drain => break,
        }
    }

    // Drain: stop accepting, ask every client to go, wait for them within the drain time.
    accept.cancel();
    let deadline = Instant::now() + Duration::from_millis(cfg.drain_timeout_ms);
    for c in shard.router.connections() {
        c.request_close(CLOSE_SHUTDOWN);
    }
    while shard.router.connection_count() > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    ticker.cancel();
    peers.close();
    tracing::info!(
        shard = id,
        left = shard.router.connection_count(),
        "shard drained"
    );
    Ok(())
}
