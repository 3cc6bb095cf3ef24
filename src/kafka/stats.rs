//! Kafka state for `/stats`, `/health` and the metrics: written by the shards' Kafka I/O threads,
//! read by the admin thread. Only atomics change per record; the maps change when partitions appear.

use crate::metrics::{KafkaMetrics, PartitionLabel, ReasonLabel, ShardLabel};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub struct PartitionStats {
    /// The partition's start offset is known, so `since` can be answered for its channels.
    pub positioned: AtomicBool,
    pub position: Gauge,
    pub high_watermark: Gauge,
    pub lag: Gauge,
    pub consumed: Counter,
}

impl PartitionStats {
    pub fn fetched(&self, position: i64, hwm: i64) {
        self.position.set(position);
        self.high_watermark.set(hwm);
        self.lag.set((hwm - position).max(0));
    }
}

pub struct ShardKafka {
    up: AtomicBool,
    /// The shard's Kafka thread has listed the topics once, so its partitions are all known.
    discovered: AtomicBool,
    /// The first connection attempt has ended, one way or the other.
    tried: AtomicBool,
    up_gauge: Gauge,
    last_error: Mutex<String>,
}

pub struct KafkaStats {
    pub shards: Vec<ShardKafka>,
    partitions: Mutex<BTreeMap<(String, i32), Arc<PartitionStats>>>,
    metrics: KafkaMetrics,
}

impl KafkaStats {
    pub fn new(shards: usize, metrics: &KafkaMetrics) -> KafkaStats {
        let metrics = KafkaMetrics {
            position: metrics.position.clone(),
            high_watermark: metrics.high_watermark.clone(),
            lag: metrics.lag.clone(),
            consumed: metrics.consumed.clone(),
            dead_lettered: metrics.dead_lettered.clone(),
            produce_latency: metrics.produce_latency.clone(),
            up: metrics.up.clone(),
        };
        KafkaStats {
            shards: (0..shards)
                .map(|s| ShardKafka {
                    up: AtomicBool::new(false),
                    discovered: AtomicBool::new(false),
                    tried: AtomicBool::new(false),
                    up_gauge: metrics
                        .up
                        .get_or_create(&ShardLabel { shard: s as u32 })
                        .clone(),
                    last_error: Mutex::new("not connected yet".into()),
                })
                .collect(),
            partitions: Mutex::default(),
            metrics,
        }
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Arc<PartitionStats> {
        let mut parts = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        parts
            .entry((topic.to_string(), partition))
            .or_insert_with(|| {
                let l = PartitionLabel {
                    topic: topic.to_string(),
                    partition,
                };
                Arc::new(PartitionStats {
                    positioned: AtomicBool::new(false),
                    position: self.metrics.position.get_or_create(&l).clone(),
                    high_watermark: self.metrics.high_watermark.get_or_create(&l).clone(),
                    lag: self.metrics.lag.get_or_create(&l).clone(),
                    consumed: self.metrics.consumed.get_or_create(&l).clone(),
                })
            })
            .clone()
    }

    pub fn dead_lettered(&self, reason: &'static str) {
        self.metrics
            .dead_lettered
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn produce_latency(&self, d: std::time::Duration) {
        self.metrics.produce_latency.observe(d);
    }

    pub fn set_up(&self, shard: usize, up: bool, error: Option<String>) {
        let Some(s) = self.shards.get(shard) else {
            return;
        };
        s.up.store(up, Ordering::Relaxed);
        s.tried.store(true, Ordering::Relaxed);
        s.up_gauge.set(i64::from(up));
        if let Some(e) = error {
            *s.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
        }
    }

    /// A shard's Kafka thread has listed the topics (and registered its partitions) once.
    pub fn discovered(&self, shard: usize) {
        if let Some(s) = self.shards.get(shard) {
            s.discovered.store(true, Ordering::Release);
        }
    }

    /// Every shard knows its partitions and every partition its start offset: until then a
    /// `since` may be answered `internal` ("not being consumed yet"), so `/health` says `starting`.
    pub fn positioned(&self) -> bool {
        if !self
            .shards
            .iter()
            .all(|s| s.discovered.load(Ordering::Acquire))
        {
            return false;
        }
        let parts = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        parts.values().all(|p| p.positioned.load(Ordering::Acquire))
    }

    /// Still starting as far as Kafka goes: the broker answers (or has not been tried yet) but
    /// not every partition has a start offset. A broker that cannot be reached does not hold the
    /// node back: it serves its clients and says `degraded`.
    pub fn starting(&self) -> bool {
        let untried = self.shards.iter().any(|s| !s.tried.load(Ordering::Relaxed));
        (untried || self.all_up()) && !self.positioned()
    }

    pub fn all_up(&self) -> bool {
        self.shards.iter().all(|s| s.up.load(Ordering::Relaxed))
    }

    pub fn to_json(&self) -> Value {
        let shards: Vec<Value> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let up = s.up.load(Ordering::Relaxed);
                let err = s.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                json!({"shard": i, "up": up, "last_error": if up { Value::Null } else { err.into() }})
            })
            .collect();
        let parts = self.partitions.lock().unwrap_or_else(|e| e.into_inner());
        let partitions: Vec<Value> = parts
            .iter()
            .map(|((t, p), s)| {
                json!({
                    "topic": t,
                    "partition": p,
                    "position": s.position.get(),
                    "high_watermark": s.high_watermark.get(),
                    "lag": s.lag.get(),
                    "consumed": s.consumed.get(),
                })
            })
            .collect();
        json!({
            "status": if self.all_up() { "ok" } else { "unavailable" },
            "shards": shards,
            "partitions": partitions,
        })
    }
}
