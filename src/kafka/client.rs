//! rskafka client set-up and a producer that partitions keyed records the way Kafka's default
//! partitioner does, so the gateway's records and other producers' land in the same partition.

use crate::config::KafkaConfig;
use anyhow::{anyhow, Context, Result};
use rskafka::client::partition::{Compression, PartitionClient, UnknownTopicHandling};
use rskafka::client::{Client, ClientBuilder};
use rskafka::record::Record;
use rskafka::BackoffConfig;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The longest pause between two tries of a failed Kafka call.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Calls `f` until it succeeds, doubling the pause between tries from 100 ms to [`MAX_BACKOFF`];
/// `failed` hears each error (to log it and report it where the caller keeps its health).
pub async fn retry<T, F, Fut>(mut failed: impl FnMut(&anyhow::Error), mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                failed(&e);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// rskafka retries internally; a deadline makes a lost broker surface as an error we can report.
fn backoff() -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(Duration::from_secs(3)),
    }
}

pub async fn connect(cfg: &KafkaConfig) -> Result<Client> {
    ClientBuilder::new(cfg.brokers.clone())
        .client_id(cfg.client_id.clone())
        .backoff_config(backoff())
        .build()
        .await
        .map_err(|e| anyhow!("connecting to Kafka {:?}: {e}", cfg.brokers))
}

pub async fn partition_client(client: &Client, topic: &str, p: i32) -> Result<PartitionClient> {
    client
        .partition_client(topic, p, UnknownTopicHandling::Error)
        .await
        .map_err(|e| anyhow!("partition {topic}/{p}: {e}"))
}

/// Kafka's murmur2 (as in the Java client's default partitioner).
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner picks for `key`.
pub fn partition_for(key: &[u8], partitions: usize) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) as usize % partitions.max(1)) as i32
}

/// Largest produce request `produce_many` sends to one partition, well under Kafka's default
/// `message.max.bytes` (1 MB): a 1 MiB HTTP batch for one partition goes out in a few requests.
const PRODUCE_CHUNK_BYTES: usize = 256 * 1024;

/// Produces to any topic. Used by the Kafka I/O threads and the admin thread; its caches are
/// locked only for a look-up, never across a request.
pub struct Producer {
    client: Arc<Client>,
    partitions: Mutex<HashMap<String, usize>>,
    clients: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    round_robin: AtomicUsize,
}

impl Producer {
    pub fn new(client: Arc<Client>) -> Producer {
        Producer {
            client,
            partitions: Mutex::default(),
            clients: Mutex::default(),
            round_robin: AtomicUsize::new(0),
        }
    }

    async fn partition_count(&self, topic: &str) -> Result<usize> {
        if let Some(n) = lock(&self.partitions).get(topic) {
            return Ok(*n);
        }
        let topics = self
            .client
            .list_topics()
            .await
            .map_err(|e| anyhow!("listing topics: {e}"))?;
        let n = topics
            .iter()
            .find(|t| t.name == topic)
            .map(|t| t.partitions.len())
            .filter(|n| *n > 0)
            .with_context(|| format!("topic {topic} does not exist"))?;
        lock(&self.partitions).insert(topic.to_string(), n);
        Ok(n)
    }

    async fn client_for(&self, topic: &str, p: i32) -> Result<Arc<PartitionClient>> {
        let key = (topic.to_string(), p);
        if let Some(c) = lock(&self.clients).get(&key) {
            return Ok(c.clone());
        }
        let c = Arc::new(partition_client(&self.client, topic, p).await?);
        lock(&self.clients).insert(key, c.clone());
        Ok(c)
    }

    /// Produces many records: one request per partition (split at `PRODUCE_CHUNK_BYTES`), the
    /// partitions at once, each partition's records in the order given. Answers per record, in
    /// order; after a failed request the rest of that partition is not tried, so what did go out
    /// keeps its order and a retry of the failed ones cannot overtake it.
    pub async fn produce_many(
        self: &Arc<Self>,
        topic: &str,
        records: Vec<Record>,
    ) -> Vec<Result<(i32, i64), String>> {
        let n = records.len();
        let partitions = match self.partition_count(topic).await {
            Ok(p) => p,
            Err(e) => return (0..n).map(|_| Err(format!("{e:#}"))).collect(),
        };
        let mut per_partition: HashMap<i32, Vec<(usize, Record)>> = HashMap::new();
        for (i, r) in records.into_iter().enumerate() {
            let p = match &r.key {
                Some(k) => partition_for(k, partitions),
                None => (self.round_robin.fetch_add(1, Ordering::Relaxed) % partitions) as i32,
            };
            per_partition.entry(p).or_default().push((i, r));
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (p, recs) in per_partition {
            let this = self.clone();
            let topic = topic.to_string();
            tasks.spawn(async move { this.produce_partition(&topic, p, recs).await });
        }
        let mut out: Vec<Result<(i32, i64), String>> =
            (0..n).map(|_| Err("not produced".to_string())).collect();
        while let Some(done) = tasks.join_next().await {
            // A panicked task leaves its records answered "not produced".
            for (i, r) in done.unwrap_or_default() {
                out[i] = r;
            }
        }
        out
    }

    /// One partition's share of `produce_many`, chunk by chunk.
    async fn produce_partition(
        &self,
        topic: &str,
        p: i32,
        recs: Vec<(usize, Record)>,
    ) -> Vec<(usize, Result<(i32, i64), String>)> {
        let mut out = Vec::with_capacity(recs.len());
        let mut failed: Option<String> = None;
        let client = match self.client_for(topic, p).await {
            Ok(c) => Some(c),
            Err(e) => {
                failed = Some(format!("{e:#}"));
                None
            }
        };
        let mut recs = recs.into_iter().peekable();
        while recs.peek().is_some() {
            let mut chunk = Vec::new();
            let mut bytes = 0;
            while let Some((i, r)) =
                recs.next_if(|_| chunk.is_empty() || bytes < PRODUCE_CHUNK_BYTES)
            {
                bytes += r.approximate_size();
                chunk.push((i, r));
            }
            let (indices, batch): (Vec<usize>, Vec<Record>) = chunk.into_iter().unzip();
            let result = match (&failed, &client) {
                (None, Some(c)) => {
                    c.produce(batch, Compression::NoCompression)
                        .await
                        .map_err(|e| {
                            lock(&self.partitions).remove(topic);
                            format!("producing to {topic}/{p}: {e}")
                        })
                }
                (Some(e), _) => Err(e.clone()),
                (None, None) => Err("no partition client".to_string()),
            };
            match result {
                Ok(offsets) if offsets.len() == indices.len() => {
                    out.extend(
                        indices
                            .into_iter()
                            .zip(offsets)
                            .map(|(i, o)| (i, Ok((p, o)))),
                    );
                }
                Ok(_) => {
                    failed = Some("the broker acknowledged another number of offsets".into());
                    let e = failed.clone().unwrap_or_default();
                    out.extend(indices.into_iter().map(|i| (i, Err(e.clone()))));
                }
                Err(e) => {
                    failed.get_or_insert_with(|| e.clone());
                    out.extend(indices.into_iter().map(|i| (i, Err(e.clone()))));
                }
            }
        }
        out
    }

    /// Produces one record; answers with its partition and offset once the broker has it.
    pub async fn produce(&self, topic: &str, record: Record) -> Result<(i32, i64)> {
        let n = self.partition_count(topic).await?;
        let p = match &record.key {
            Some(k) => partition_for(k, n),
            None => (self.round_robin.fetch_add(1, Ordering::Relaxed) % n) as i32,
        };
        let client = self.client_for(topic, p).await?;
        let offsets = client
            .produce(vec![record], Compression::NoCompression)
            .await
            .map_err(|e| {
                // A changed partition count or leader is re-read next time.
                lock(&self.partitions).remove(topic);
                anyhow!("producing to {topic}/{p}: {e}")
            })?;
        let offset = offsets
            .first()
            .copied()
            .context("the broker acknowledged no offset")?;
        Ok((p, offset))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka() {
        // Kafka's UtilsTest vectors.
        assert_eq!(murmur2(b"21"), -973932308);
        assert_eq!(murmur2(b"foobar"), -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"),
            -58897971
        );
        assert_eq!(murmur2(b"abc"), 479470107);
    }
}
