//! The presence topic (`kafka.presence_topic`): one thread per node writes the node's counts and
//! liveness, reads every partition from its start, keeps the latest state per key in a
//! [`Mirror`] and hands what changes to the channels' owner shards through the bus.
//!
//! A channel's records go to the partition Kafka's default partitioner gives the channel name, so
//! they are read in the order they were written; liveness goes to partition 0. Writes are produced
//! one batch at a time, in order. A write that fails (or a liveness that could not be written for
//! a ttl) makes every owner write its counts again once the broker answers (`Update::Rewrite`).

use super::client::{self, partition_client, partition_for, MAX_BACKOFF};
use crate::bus::Bus;
use crate::config::Config;
use crate::presence::{alive_record, decode, member_record, Mirror, Rec, Update};
use anyhow::{Context, Result};
use prometheus_client::metrics::counter::Counter;
use rskafka::client::partition::{Compression, OffsetAt, PartitionClient};
use rskafka::client::Client;
use rskafka::record::Record;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

/// Batches of writes waiting for the writer; an owner whose batch does not fit keeps its changes
/// for its next batch.
const SINK_BATCHES: usize = 1024;
/// Batches of decoded records waiting between the partition readers and the mirror.
const READ_BATCHES: usize = 64;
/// A write the broker has not acknowledged by then counts as failed (and is retried): a lost
/// broker connection must not hold the reader and the expiry checks behind it for long.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(3);

/// A user's connection count on this node in a channel, to be written.
pub struct Write {
    pub channel: Arc<str>,
    pub user: Arc<str>,
    pub conns: u32,
}

/// (channel, user): one count of this node in the presence topic.
type Key = (Arc<str>, Arc<str>);

/// Where owner shards send their writes (never awaited: `try_send`).
pub type Sink = mpsc::Sender<Vec<Write>>;

/// The writer's queue: the shards' end and the thread's end.
pub fn sink() -> (Sink, mpsc::Receiver<Vec<Write>>) {
    mpsc::channel(SINK_BATCHES)
}

/// Starts the presence thread of node `node`.
pub fn spawn(
    cfg: &Config,
    node: Arc<str>,
    bus: Bus,
    writes: mpsc::Receiver<Vec<Write>>,
    written: [Counter; 3],
) -> Result<()> {
    let cfg = cfg.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("presence runtime")?;
    std::thread::Builder::new()
        .name("presence".into())
        .spawn(move || rt.block_on(run(cfg, node, bus, writes, written)))
        .context("starting the presence thread")?;
    Ok(())
}

fn now_ms() -> u64 {
    crate::message::now_ms()
}

async fn run(
    cfg: Config,
    node: Arc<str>,
    bus: Bus,
    mut writes: mpsc::Receiver<Vec<Write>>,
    written: [Counter; 3],
) {
    let topic = cfg.kafka.presence_topic.clone();
    let (client, partitions) = connect(&cfg, &topic).await;
    let mut pcs: Vec<Arc<PartitionClient>> = Vec::new();
    for p in 0..partitions {
        pcs.push(Arc::new(
            retry("opening a presence partition", || {
                partition_client(&client, &topic, p)
            })
            .await,
        ));
    }
    let (rec_tx, mut records) = mpsc::channel(READ_BATCHES);
    for pc in &pcs {
        let max = cfg.limits.max_channel_len;
        tokio::spawn(read(pc.clone(), rec_tx.clone(), max));
    }
    let ttl_ms = cfg.presence.ttl_secs * 1000;
    let mut mirror = Mirror::new(&node, ttl_ms, cfg.presence.max_remote_entries);
    let mut alive = tokio::time::interval(Duration::from_millis(ttl_ms / 3).max(MIN_PERIOD));
    let mut expire = tokio::time::interval(Duration::from_millis(ttl_ms / 10).max(MIN_PERIOD));
    // After a write that waited for its timeout, one tick, not a burst of them: the pending
    // counts must get their turn in the loop.
    alive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    expire.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_written = now_ms();
    let mut rewrite = false;
    // Counts whose write failed, latest per key: retried before anything later of the key.
    let mut failed: HashMap<Key, u32> = HashMap::new();
    tracing::info!(%node, %topic, partitions, "presence: reading and writing the presence topic");
    loop {
        let updates = tokio::select! {
            Some(batch) = writes.recv() => {
                for w in batch {
                    failed.insert((w.channel, w.user), w.conns);
                }
                write(&pcs, &node, &mut failed, &written).await;
                Vec::new()
            }
            Some(recs) = records.recv() => {
                let now = now_ms();
                recs.into_iter().flat_map(|r| mirror.apply(r, now)).collect()
            }
            _ = alive.tick() => {
                let (key, value) = alive_record(&node, now_ms());
                let ok = produce(&pcs[0], vec![record(key, Some(value))], &written).await;
                if !ok {
                    written[2].inc();
                }
                if ok && !failed.is_empty() {
                    write(&pcs, &node, &mut failed, &written).await;
                }
                if ok {
                    // Silent longer than the ttl: other nodes may have dropped this node's members.
                    rewrite |= now_ms().saturating_sub(last_written) >= ttl_ms;
                    last_written = now_ms();
                }
                if ok && std::mem::take(&mut rewrite) {
                    vec![Update::Rewrite]
                } else {
                    Vec::new()
                }
            }
            _ = expire.tick() => mirror.tick(now_ms()),
        };
        for u in updates {
            if !bus.presence(u).await {
                return;
            }
        }
    }
}

/// Liveness and expiry checks run at least this far apart.
const MIN_PERIOD: Duration = Duration::from_millis(100);

/// Connects (retrying), creates the topic when `kafka.create_topics_partitions` says so, and
/// waits for it to exist; returns the client and the topic's partition count.
async fn connect(cfg: &Config, topic: &str) -> (Arc<Client>, i32) {
    let client = Arc::new(retry("connecting to Kafka", || client::connect(&cfg.kafka)).await);
    let mut created = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.list_topics().await {
            Ok(ts) => {
                if let Some(t) = ts.iter().find(|t| t.name == topic) {
                    if !t.partitions.is_empty() {
                        let n = i32::try_from(t.partitions.len()).unwrap_or(i32::MAX);
                        return (client, n);
                    }
                }
                let n = cfg.kafka.create_topics_partitions;
                if n > 0 && !created {
                    created = true;
                    if let Ok(c) = client.controller_client() {
                        if let Err(e) = c.create_topic(topic, n, 1, 5_000).await {
                            tracing::warn!(%topic, error = %e, "could not create the presence topic");
                        }
                    }
                    continue;
                }
                tracing::warn!(%topic, "presence topic does not exist (yet)");
            }
            Err(e) => tracing::warn!(error = %e, "presence: listing topics failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Retries `f` with backoff until it succeeds, logging each failure.
async fn retry<T, F, Fut>(what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let failed = |e: &anyhow::Error| {
        tracing::warn!(error = %format!("{e:#}"), "presence: {what} failed; retrying");
    };
    client::retry(failed, f).await
}

fn record(key: Vec<u8>, value: Option<Vec<u8>>) -> Record {
    Record {
        key: Some(key),
        value,
        headers: BTreeMap::new(),
        timestamp: chrono::Utc::now(),
    }
}

async fn produce(pc: &PartitionClient, records: Vec<Record>, written: &[Counter; 3]) -> bool {
    let n = records.len() as u64;
    let bytes: usize = records
        .iter()
        .map(|r| r.key.as_ref().map_or(0, Vec::len) + r.value.as_ref().map_or(0, Vec::len))
        .sum();
    let produced = pc.produce(records, Compression::NoCompression);
    match tokio::time::timeout(PRODUCE_TIMEOUT, produced).await {
        Ok(Ok(_)) => {
            written[0].inc_by(n);
            written[1].inc_by(bytes as u64);
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "presence: write failed; counts are written again later");
            false
        }
        Err(_) => {
            tracing::warn!("presence: write timed out; counts are written again later");
            false
        }
    }
}

/// Writes the counts in `pending`, each channel's to its partition; what could not be written
/// stays in `pending` (a later count of the same key replaces it there, so none overtakes another).
async fn write(
    pcs: &[Arc<PartitionClient>],
    node: &str,
    pending: &mut HashMap<Key, u32>,
    written: &[Counter; 3],
) {
    let ts = now_ms();
    let mut by_partition: BTreeMap<i32, Vec<Key>> = BTreeMap::new();
    for (channel, user) in pending.keys() {
        let p = partition_for(channel.as_bytes(), pcs.len());
        by_partition
            .entry(p)
            .or_default()
            .push((channel.clone(), user.clone()));
    }
    for (p, keys) in by_partition {
        let Some(pc) = usize::try_from(p).ok().and_then(|p| pcs.get(p)) else {
            continue;
        };
        let recs: Vec<Record> = keys
            .iter()
            .map(|(c, u)| {
                let n = pending.get(&(c.clone(), u.clone())).copied().unwrap_or(0);
                let (key, value) = member_record(c, node, u, n, ts);
                record(key, value)
            })
            .collect();
        let n = recs.len() as u64;
        if produce(pc, recs, written).await {
            for k in keys {
                pending.remove(&k);
            }
        } else {
            written[2].inc_by(n);
        }
    }
}

/// Reads one partition from its start for ever, handing decoded records to the mirror.
async fn read(pc: Arc<PartitionClient>, out: mpsc::Sender<Vec<Rec>>, max_channel_len: usize) {
    let mut next = retry("reading the presence start offset", || async {
        pc.get_offset(OffsetAt::Earliest)
            .await
            .map_err(anyhow::Error::from)
    })
    .await;
    let mut backoff = Duration::from_millis(100);
    loop {
        match pc.fetch_records(next, 1..(1 << 20), 500).await {
            Ok((records, _)) => {
                backoff = Duration::from_millis(100);
                let mut recs = Vec::new();
                for r in records {
                    // Records before `next` (the head of a batch, or a repeat) were handled.
                    if r.offset < next {
                        continue;
                    }
                    next = r.offset + 1;
                    let (k, v) = (r.record.key.as_deref(), r.record.value.as_deref());
                    recs.extend(decode(k, v, max_channel_len));
                }
                if !recs.is_empty() && out.send(recs).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "presence: fetch failed; retrying from {next}");
                if let Ok(earliest) = pc.get_offset(OffsetAt::Earliest).await {
                    // Retention may have removed what was about to be read.
                    next = next.max(earliest);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
