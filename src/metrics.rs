//! Prometheus metrics (prometheus-client). Every shard gets its own handles at start-up, so the hot
//! path touches only atomics on its own cache lines: no registry look-up, no lock.

use crate::auth::AuthError;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: u32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Upper bounds in seconds of the delivery-latency buckets (50 us .. 5 s).
const LATENCY_BOUNDS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// A histogram written with relaxed atomic adds by one shard and read at scrape time; the
/// crate's own histogram takes a lock per observation.
#[derive(Clone, Debug, Default)]
pub struct AtomicHistogram {
    inner: Arc<HistInner>,
}

#[derive(Debug)]
struct HistInner {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Default for HistInner {
    fn default() -> Self {
        HistInner {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }
}

impl AtomicHistogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let idx = LATENCY_BOUNDS.partition_point(|b| *b < secs);
        self.inner.buckets[idx].fetch_add(1, Ordering::Relaxed);
        self.inner.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .zip(self.inner.buckets.iter())
            .map(|(b, c)| (*b, c.load(Ordering::Relaxed)))
            .collect();
        let overflow = self.inner.buckets[LATENCY_BOUNDS.len()].load(Ordering::Relaxed);
        buckets.push((f64::MAX, overflow));
        let count = buckets.iter().map(|(_, c)| c).sum();
        let sum = self.inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// One shard's handles. Counters and gauges share their atomics with the registry.
#[derive(Clone, Debug)]
pub struct ShardMetrics {
    pub connections: Gauge,
    pub subscriptions: Gauge,
    pub channels: Gauge,
    pub queue_bytes: Gauge,
    pub messages_in: Counter,
    pub delivered: Counter,
    /// Writes (`sendmsg` calls that wrote something) to client sockets.
    pub socket_writes: Counter,
    pub dropped_low_priority: Counter,
    pub slow_consumer_closes: Counter,
    pub rate_limited: Counter,
    pub mesh_drops: Counter,
    pub handshake_failures: Counter,
    pub delivery_latency: AtomicHistogram,
    pub auth_failures: Vec<Counter>,
    /// Kafka records turned into messages by this shard.
    pub kafka_routed: Counter,
    /// From the record's Kafka timestamp to the frame written to the socket.
    pub record_to_socket: AtomicHistogram,
    /// Messages this shard sent to other shards: [control, data].
    pub mesh_messages: [Counter; 2],
    /// Bytes of history this shard holds (charged against `history.max_bytes`).
    pub history_bytes: Gauge,
    /// permessage-deflate: messages compressed (once per shard and message), the wire bytes that
    /// saved over their deliveries, and client messages inflated.
    pub deflate: [Counter; 3],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LaneLabel {
    pub shard: u32,
    pub lane: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    pub topic: String,
    pub partition: i32,
}

/// Families whose members appear as partitions are discovered.
pub struct KafkaMetrics {
    pub position: Family<PartitionLabel, Gauge>,
    pub high_watermark: Family<PartitionLabel, Gauge>,
    pub lag: Family<PartitionLabel, Gauge>,
    pub consumed: Family<PartitionLabel, Counter>,
    pub dead_lettered: Family<ReasonLabel, Counter>,
    pub produce_latency: AtomicHistogram,
    pub up: Family<ShardLabel, Gauge>,
}

pub struct Metrics {
    pub registry: Registry,
    pub shards: Vec<ShardMetrics>,
    pub kafka: KafkaMetrics,
    /// JWKS fetches: [ok, error].
    pub jwks_refreshes: [Counter; 2],
    /// Keys in the JWKS in use.
    pub jwks_keys: Gauge,
    /// 1 while the node drains (after SIGTERM/SIGINT), else 0.
    pub draining: Gauge,
    /// Records and bytes (keys and values) this node wrote to the presence topic, and count
    /// records whose write failed (retried).
    pub presence_written: [Counter; 3],
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

impl Metrics {
    pub fn new(shards: usize) -> Metrics {
        let mut registry = Registry::with_prefix("gateway");
        macro_rules! family {
            ($name:literal, $help:literal, $t:ty) => {{
                let f = Family::<ShardLabel, $t>::default();
                registry.register($name, $help, f.clone());
                f
            }};
        }
        let connections = family!("connections", "Open WebSocket connections", Gauge);
        let subscriptions = family!(
            "subscriptions",
            "Channel subscriptions held by connections",
            Gauge
        );
        let channels = family!("channels", "Channels with members on the shard", Gauge);
        let queue_bytes = family!(
            "queue_bytes",
            "Bytes queued for connections on the shard",
            Gauge
        );
        let messages_in = family!(
            "messages_in",
            "Messages published and sequenced by the shard that owns the channel",
            Counter
        );
        let delivered = family!(
            "messages_delivered",
            "Messages written to client sockets",
            Counter
        );
        let socket_writes = family!(
            "socket_writes",
            "Vectored writes to client sockets; messages_delivered / socket_writes is frames per write",
            Counter
        );
        let dropped = family!(
            "messages_dropped_low_priority",
            "Priority-4 messages dropped because a connection queue was full",
            Counter
        );
        let slow = family!(
            "slow_consumer_closes",
            "Connections closed with 1013 because their queue overflowed",
            Counter
        );
        let rate_limited = family!(
            "client_frames_rate_limited",
            "Client frames refused by the per-connection rate limit",
            Counter
        );
        let mesh_drops = family!(
            "mesh_drops",
            "Deliveries and publishes not forwarded because a peer shard's queue was full (members there are closed with 1013; publishers get an error)",
            Counter
        );
        let handshake_failures = family!(
            "handshake_failures",
            "Upgrade requests refused before authentication (bad request, timeout, limits)",
            Counter
        );
        let latency = Family::<ShardLabel, AtomicHistogram>::default();
        registry.register(
            "delivery_latency_seconds",
            "From message accepted by the gateway to written to the client socket",
            latency.clone(),
        );
        let kafka_routed = family!(
            "kafka_records_routed",
            "Kafka records turned into messages by the shard that owns the partition",
            Counter
        );
        let record_to_socket = Family::<ShardLabel, AtomicHistogram>::default();
        registry.register(
            "kafka_record_to_socket_seconds",
            "From a record's Kafka timestamp to its frame written to the client socket",
            record_to_socket.clone(),
        );
        let kafka = KafkaMetrics {
            position: Family::default(),
            high_watermark: Family::default(),
            lag: Family::default(),
            consumed: Family::default(),
            dead_lettered: Family::default(),
            produce_latency: AtomicHistogram::default(),
            up: Family::default(),
        };
        registry.register(
            "kafka_position",
            "Next offset the gateway reads, per partition",
            kafka.position.clone(),
        );
        registry.register(
            "kafka_high_watermark",
            "The partition's high watermark at the last fetch",
            kafka.high_watermark.clone(),
        );
        registry.register(
            "kafka_lag",
            "High watermark minus position",
            kafka.lag.clone(),
        );
        registry.register(
            "kafka_records_consumed",
            "Records read, per partition",
            kafka.consumed.clone(),
        );
        registry.register(
            "kafka_records_dead_lettered",
            "Records that could not be routed, by reason",
            kafka.dead_lettered.clone(),
        );
        registry.register(
            "kafka_produce_latency_seconds",
            "From produce request to the broker's acknowledgement (client and HTTP publishes)",
            kafka.produce_latency.clone(),
        );
        registry.register(
            "kafka_up",
            "1 while the shard's Kafka connection works",
            kafka.up.clone(),
        );
        let mesh_messages = Family::<LaneLabel, Counter>::default();
        registry.register(
            "mesh_messages",
            "Messages sent to other shards, by lane (control: never dropped; data: deliveries and forwarded publishes)",
            mesh_messages.clone(),
        );
        let history_bytes = family!(
            "history_bytes",
            "Bytes of history the shard holds for since (bounded by history.max_bytes)",
            Gauge
        );
        let deflate = [
            ("deflate_compressed", "Messages compressed for permessage-deflate (once per shard and message)"),
            ("deflate_saved_bytes", "Bytes on the wire saved by permessage-deflate (plain minus compressed, per delivery)"),
            ("deflate_inflated", "Compressed client messages inflated"),
        ]
        .map(|(name, help)| {
            let f = Family::<ShardLabel, Counter>::default();
            registry.register(name, help, f.clone());
            f
        });
        let auth = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "Upgrade requests refused with 401, by reason",
            auth.clone(),
        );

        let shards = (0..shards as u32)
            .map(|shard| {
                let l = ShardLabel { shard };
                ShardMetrics {
                    connections: connections.get_or_create(&l).clone(),
                    subscriptions: subscriptions.get_or_create(&l).clone(),
                    channels: channels.get_or_create(&l).clone(),
                    queue_bytes: queue_bytes.get_or_create(&l).clone(),
                    messages_in: messages_in.get_or_create(&l).clone(),
                    delivered: delivered.get_or_create(&l).clone(),
                    socket_writes: socket_writes.get_or_create(&l).clone(),
                    dropped_low_priority: dropped.get_or_create(&l).clone(),
                    slow_consumer_closes: slow.get_or_create(&l).clone(),
                    rate_limited: rate_limited.get_or_create(&l).clone(),
                    mesh_drops: mesh_drops.get_or_create(&l).clone(),
                    handshake_failures: handshake_failures.get_or_create(&l).clone(),
                    delivery_latency: latency.get_or_create(&l).clone(),
                    auth_failures: AuthError::ALL
                        .iter()
                        .map(|e| {
                            auth.get_or_create(&AuthLabels {
                                shard,
                                reason: e.reason(),
                            })
                            .clone()
                        })
                        .collect(),
                    kafka_routed: kafka_routed.get_or_create(&l).clone(),
                    record_to_socket: record_to_socket.get_or_create(&l).clone(),
                    mesh_messages: ["control", "data"].map(|lane| {
                        mesh_messages
                            .get_or_create(&LaneLabel { shard, lane })
                            .clone()
                    }),
                    history_bytes: history_bytes.get_or_create(&l).clone(),
                    deflate: deflate.each_ref().map(|f| f.get_or_create(&l).clone()),
                }
            })
            .collect();
        let refreshes = Family::<ResultLabel, Counter>::default();
        registry.register(
            "jwks_refreshes",
            "JWKS fetches, by result (a failed one keeps the keys known)",
            refreshes.clone(),
        );
        let jwks_keys = Gauge::default();
        registry.register("jwks_keys", "Keys in the JWKS in use", jwks_keys.clone());
        let draining = Gauge::default();
        registry.register(
            "draining",
            "1 while the gateway drains its connections after SIGTERM/SIGINT",
            draining.clone(),
        );
        let presence_written = [Counter::default(), Counter::default(), Counter::default()];
        registry.register(
            "presence_records_written",
            "Records this node wrote to the presence topic (counts and liveness)",
            presence_written[0].clone(),
        );
        registry.register(
            "presence_bytes_written",
            "Key and value bytes this node wrote to the presence topic",
            presence_written[1].clone(),
        );
        registry.register(
            "presence_write_failures",
            "Count records whose write to the presence topic failed (they are retried)",
            presence_written[2].clone(),
        );
        Metrics {
            registry,
            shards,
            kafka,
            draining,
            presence_written,
            jwks_refreshes: ["ok", "error"]
                .map(|result| refreshes.get_or_create(&ResultLabel { result }).clone()),
            jwks_keys,
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthLabels {
    pub shard: u32,
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_encodes_cumulative_buckets() {
        let m = Metrics::new(1);
        m.shards[0]
            .delivery_latency
            .observe(Duration::from_micros(80));
        m.shards[0].delivery_latency.observe(Duration::from_secs(9));
        m.shards[0].auth_failures[AuthError::Expired.index()].inc();
        let text = m.encode();
        assert!(text.contains("gateway_delivery_latency_seconds_count{shard=\"0\"} 2"));
        assert!(text.contains("le=\"0.0001\",shard=\"0\"} 1"), "{text}");
        assert!(text.contains("reason=\"token_expired\""));
    }
}
