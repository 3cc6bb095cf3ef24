//! One shard's life on its executor: joins the mesh, starts its Kafka I/O thread, binds its
//! listener, runs its control queue (bus), and drains.

use crate::accept::listener;
use crate::bus::Control;
use crate::conn::CLOSE_SHUTDOWN;
use crate::mesh::{MeshEnds, Peers};
use crate::node::Node;
use crate::route::{Bounds, PresenceSettings, Router, RouterConfig};
use crate::shard::Shard;
use anyhow::{Context, Result};
use glommio::timer::{sleep, Timer};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Runs a shard until it is drained. `ready` hears once the listener is bound (or why not).
pub async fn run(
    node: Arc<Node>,
    id: usize,
    mesh: MeshEnds,
    controls: Vec<async_channel::Receiver<Control>>,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
) -> Result<()> {
    let (senders, receivers) = mesh.connect().await;
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
            presence: PresenceSettings {
                max_listed: cfg.presence.max_listed,
                max_channels: cfg.presence.max_channels,
                max_members: cfg.presence.max_members,
                sink: node.presence_sink.clone(),
            },
        },
        peers.clone(),
        metrics.clone(),
        kafka,
    );
    let shard = Rc::new(Shard::new(id, node.clone(), router, metrics)?);
    if let Some(c) = shard.coalescer.clone() {
        glommio::spawn_local(c.run()).detach();
    }

    for (_, rx) in receivers {
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
    // Joins and leaves go out, batched, once per `presence.batch_ms`.
    let presence_ticker = cfg.presence.enabled().then(|| {
        let shard = shard.clone();
        let period = Duration::from_millis(cfg.presence.batch_ms);
        glommio::spawn_local(async move {
            loop {
                Timer::new(period).await;
                shard.router.presence_tick();
            }
        })
        .detach()
    });
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
            Control::PublishMany(batch, tx) => {
                let mut positions = Vec::with_capacity(batch.len());
                for p in batch {
                    positions.push(shard.router.sequence(p).pos.to_string());
                    // A batch with big rooms must not hold the shard's connections for long.
                    glommio::yield_if_needed().await;
                }
                let _ = tx.send(positions);
            }
            Control::Presence(u) => shard.router.on_presence_update(u),
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
    if let Some(t) = presence_ticker {
        t.cancel();
    }
    peers.close();
    tracing::info!(
        shard = id,
        left = shard.router.connection_count(),
        "shard drained"
    );
    Ok(())
}
