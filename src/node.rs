//! What the shards and the admin thread share: configuration, the JWT verifier, metrics, the bus,
//! and a few node-wide atomics. Nothing here is touched per message.

use crate::auth::Verifier;
use crate::bus::Bus;
use crate::config::{Config, DEV_API_KEY};
use crate::metrics::Metrics;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// What every shard and the admin thread share. Nothing here is touched per message.
pub struct Node {
    pub config: Config,
    pub verifier: Verifier,
    pub metrics: Metrics,
    pub bus: Bus,
    pub shards: usize,
    pub epoch: u64,
    pub ws_addr: SocketAddr,
    pub max_connections: usize,
    pub started: Instant,
    /// Kafka state, when Kafka is configured.
    pub kafka: Option<Arc<crate::kafka::stats::KafkaStats>>,
    /// The admin thread's producer for `POST /api/publish`, once connected.
    pub admin_producer: std::sync::OnceLock<Arc<crate::kafka::client::Producer>>,
    /// This process's id in the presence topic.
    pub presence_node: Arc<str>,
    /// Where owner shards write presence to the presence topic (with Kafka and presence on).
    pub presence_sink: Option<crate::kafka::presence::Sink>,
    pub(crate) connections: AtomicUsize,
    pub(crate) draining: AtomicBool,
    /// Shards whose listener is bound; `/health` says `starting` until all are.
    pub(crate) listening: AtomicUsize,
}

impl Node {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Whether every shard listens (until then a load balancer must not send clients here).
    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) >= self.shards
    }

    /// A shard's listener is bound.
    pub fn shard_listening(&self) {
        self.listening.fetch_add(1, Ordering::AcqRel);
    }

    /// One connect = one atomic add; the count is node-wide so the limit is too.
    pub fn try_acquire_connection(&self) -> bool {
        let prev = self.connections.fetch_add(1, Ordering::Relaxed);
        if prev < self.max_connections {
            return true;
        }
        self.connections.fetch_sub(1, Ordering::Relaxed);
        false
    }

    pub fn release_connection(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn api_key(&self) -> &str {
        self.config.auth.api_key.as_deref().unwrap_or(DEV_API_KEY)
    }

    /// Health turns 503, shards stop accepting and close their clients with 1001.
    pub fn drain(&self) {
        if !self.draining.swap(true, Ordering::SeqCst) {
            self.metrics.draining.set(1);
            tracing::info!("draining: closing connections with 1001");
            self.bus.drain();
        }
    }
}
