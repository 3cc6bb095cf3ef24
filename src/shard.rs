//! One shard's state: a glommio executor on its own thread owns its connections, their channel
//! memberships and send queues (the router), and the channels hashed to it. `executor` runs it.

use crate::coalesce::Coalescer;
use crate::metrics::ShardMetrics;
use crate::node::Node;
use crate::route::Router;
use anyhow::{Context, Result};
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
    /// Write coalescing (`session.write_delay_ms`), when on; its tick task runs in the executor.
    pub coalescer: Option<Rc<Coalescer>>,
    /// Delivery latency in microseconds, for `/stats`.
    pub latency: RefCell<Histogram<u64>>,
    next_conn: Cell<u64>,
    /// Upgrade requests being read and admitted.
    handshakes: Rc<Cell<usize>>,
    /// This shard's share of the node's connect rate: (tokens, last refill).
    connect_tokens: Cell<(f64, Instant)>,
}

impl Shard {
    pub fn new(id: usize, node: Arc<Node>, router: Router, metrics: ShardMetrics) -> Result<Shard> {
        let rate = f64::from(node.config.limits.connect_rate_per_sec);
        let coalescer = Coalescer::new(node.config.session.write_delay_ms);
        Ok(Shard {
            id,
            node,
            router,
            metrics,
            scratch: RefCell::new(vec![0; SCRATCH_BYTES]),
            coalescer,
            latency: RefCell::new(
                Histogram::new_with_bounds(1, 60_000_000, 3).context("latency histogram")?,
            ),
            next_conn: Cell::new(0),
            handshakes: Rc::default(),
            connect_tokens: Cell::new((rate, Instant::now())),
        })
    }

    /// Counts a handshake in progress until the guard drops; None at `max_handshakes_per_shard`.
    pub fn start_handshake(&self) -> Option<HandshakeGuard> {
        let n = self.handshakes.get();
        if n >= self.node.config.limits.max_handshakes_per_shard {
            return None;
        }
        self.handshakes.set(n + 1);
        Some(HandshakeGuard(self.handshakes.clone()))
    }

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

    pub fn stats(&self) -> serde_json::Value {
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

/// One handshake in progress on its shard.
pub struct HandshakeGuard(Rc<Cell<usize>>);

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}
