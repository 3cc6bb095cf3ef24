//! A shard's Kafka I/O thread: connects (and keeps retrying), discovers the shard's partitions,
//! runs one consumer task per partition, produces client publishes, and hands `since` reads to the
//! partition's reader (`read`).

use super::client::{self, Producer, MAX_BACKOFF};
use super::decode::{decode, Reject};
use super::handoff;
use super::read::{ReadCfg, Readers};
use super::stats::KafkaStats;
use super::{format_pos, stream_id, Batch, Command, Decoded, FromKafka, KafkaIo, Stream};
use crate::config::{Config, KafkaConfig, StartFrom};
use anyhow::Result;
use rskafka::client::error::{Error as KError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::client::Client;
use rskafka::record::Record;
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::spawn_local;

/// Commands the shard may have queued; beyond, its `try_send` fails and it answers the client.
const COMMAND_QUEUE: usize = 4096;
/// Batches in flight to the shard; when full, fetching pauses.
const HANDOFF_BATCHES: usize = 256;
/// What the I/O thread's tasks share.
struct Ctx {
    shard: usize,
    shards: usize,
    cfg: KafkaConfig,
    topics: Arc<Vec<String>>,
    /// Partitions of each consumed topic, shared with the shard's `KafkaIo` (0 = unknown).
    partitions: Arc<[AtomicI32]>,
    max_channel_len: usize,
    stats: Arc<KafkaStats>,
    out: mpsc::Sender<FromKafka>,
}

/// Set once the broker has been reached.
type Connected = (Arc<Client>, Arc<Producer>);

/// Starts the Kafka I/O thread of `shard`; returns the shard's handle and the receiving end of the
/// hand-over.
pub fn spawn(
    shard: usize,
    shards: usize,
    config: &Config,
    stats: Arc<KafkaStats>,
) -> Result<(KafkaIo, handoff::Receiver<FromKafka>)> {
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let (handoff_tx, handoff_rx) = handoff::channel(HANDOFF_BATCHES);
    let topics = Arc::new(config.kafka.consumed_topics());
    let partitions: Arc<[AtomicI32]> = topics.iter().map(|_| AtomicI32::new(0)).collect();
    let io = KafkaIo {
        commands: cmd_tx,
        topics: topics.clone(),
        upstream: config.kafka.upstream_topic.clone(),
        partitions: partitions.clone(),
    };
    let cfg = config.kafka.clone();
    let max_channel_len = config.limits.max_channel_len;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name(format!("kafka-{shard}"))
        .spawn(move || {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                // Many tasks produce for the shard; one forwards into the single-producer ring.
                let (out, mut out_rx) = mpsc::channel::<FromKafka>(64);
                let mut handoff_tx = handoff_tx;
                spawn_local(async move {
                    while let Some(item) = out_rx.recv().await {
                        if handoff_tx.send(item).await.is_err() {
                            break;
                        }
                    }
                });
                let ctx = Rc::new(Ctx {
                    shard,
                    shards,
                    cfg,
                    topics,
                    partitions,
                    max_channel_len,
                    stats,
                    out,
                });
                run(ctx, cmd_rx).await;
            });
        })?;
    Ok((io, handoff_rx))
}

/// Connects in the background and serves the shard's commands meanwhile.
async fn run(ctx: Rc<Ctx>, mut commands: mpsc::Receiver<Command>) {
    let connected: Rc<RefCell<Option<Connected>>> = Rc::default();
    {
        let (ctx, connected) = (ctx.clone(), connected.clone());
        spawn_local(async move {
            let mut backoff = Duration::from_millis(100);
            let client = loop {
                match client::connect(&ctx.cfg).await {
                    Ok(c) => break Arc::new(c),
                    Err(e) => {
                        tracing::warn!(shard = ctx.shard, error = %e, "Kafka unavailable; retrying");
                        ctx.stats.set_up(ctx.shard, false, Some(e.to_string()));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            ctx.stats.set_up(ctx.shard, true, None);
            tracing::info!(shard = ctx.shard, "connected to Kafka");
            if ctx.shard == 0 && ctx.cfg.create_topics_partitions > 0 {
                create_missing_topics(&ctx, &client).await;
            }
            let producer = Arc::new(Producer::new(client.clone()));
            *connected.borrow_mut() = Some((client.clone(), producer.clone()));
            discover(ctx, client, producer).await;
        });
    }
    let cfg = ReadCfg {
        fetch_max_bytes: ctx.cfg.fetch_max_bytes,
        max_channel_len: ctx.max_channel_len,
    };
    let mut readers = Readers::new(
        ctx.topics.clone(),
        ctx.partitions.clone(),
        ctx.out.clone(),
        cfg,
    );
    while let Some(cmd) = commands.recv().await {
        // Cloned out first: the borrow must not live across the await below.
        let current = connected.borrow().clone();
        let Some((client, producer)) = current else {
            let err = "Kafka is not connected".to_string();
            let item = match cmd {
                Command::Produce { token, .. } => FromKafka::Produced {
                    token,
                    result: Err(err),
                },
                Command::Read { token, .. } => FromKafka::Read {
                    token,
                    result: Err(err),
                },
            };
            let _ = ctx.out.send(item).await;
            continue;
        };
        match cmd {
            Command::Produce {
                token,
                topic,
                record,
            } => {
                let ctx = ctx.clone();
                spawn_local(async move {
                    let started = Instant::now();
                    let result = producer
                        .produce(&topic, record)
                        .await
                        .map(|(p, o)| format_pos(&topic, p, o))
                        .map_err(|e| format!("{e:#}"));
                    ctx.stats.produce_latency(started.elapsed());
                    let _ = ctx.out.send(FromKafka::Produced { token, result }).await;
                });
            }
            read @ Command::Read { .. } => readers.queue(&client, read),
        }
    }
}

/// Creates the consumed and dead-letter topics that do not exist yet (development convenience).
async fn create_missing_topics(ctx: &Ctx, client: &Client) {
    let existing: HashSet<String> = match client.list_topics().await {
        Ok(t) => t.into_iter().map(|t| t.name).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not list topics to create missing ones");
            return;
        }
    };
    let Ok(controller) = client.controller_client() else {
        return;
    };
    let wanted = ctx.topics.iter().chain(ctx.cfg.dead_letter_topic.iter());
    for topic in wanted.filter(|t| !existing.contains(*t)) {
        let n = ctx.cfg.create_topics_partitions;
        match controller.create_topic(topic, n, 1, 5_000).await {
            Ok(()) => tracing::info!(topic = %topic, partitions = n, "created topic"),
            Err(e) => tracing::warn!(topic = %topic, error = %e, "could not create topic"),
        }
    }
}

/// Finds the shard's partitions of every consumed topic, now and every `metadata_refresh_ms`.
async fn discover(ctx: Rc<Ctx>, client: Arc<Client>, producer: Arc<Producer>) {
    let mut running: HashSet<Stream> = HashSet::new();
    let mut missing_reported: HashSet<usize> = HashSet::new();
    loop {
        match client.list_topics().await {
            Ok(found) => {
                for (ti, name) in ctx.topics.iter().enumerate() {
                    let t = found.iter().find(|t| &t.name == name);
                    // As the producer counts them, so both agree on a key's partition.
                    let n = t.map_or(0, |t| i32::try_from(t.partitions.len()).unwrap_or(i32::MAX));
                    if let Some(count) = ctx.partitions.get(ti) {
                        count.store(n, Ordering::Relaxed);
                    }
                    let Some(t) = t else {
                        if missing_reported.insert(ti) {
                            tracing::warn!(topic = %name, "consumed topic does not exist (yet)");
                        }
                        continue;
                    };
                    for p in &t.partitions {
                        let mine = (*p as usize) % ctx.shards == ctx.shard;
                        if mine && running.insert(stream_id(ti, *p)) {
                            // Registered now, so `/health` waits for its start offset.
                            ctx.stats.partition(name, *p);
                            tracing::info!(shard = ctx.shard, topic = %name, partition = p, "consuming");
                            let (ctx, client, producer) =
                                (ctx.clone(), client.clone(), producer.clone());
                            spawn_local(consume(ctx, client, producer, ti, *p));
                        }
                    }
                }
                ctx.stats.discovered(ctx.shard);
            }
            Err(e) => {
                ctx.stats
                    .set_up(ctx.shard, false, Some(format!("listing topics: {e}")));
            }
        }
        tokio::time::sleep(Duration::from_millis(ctx.cfg.metadata_refresh_ms)).await;
    }
}

/// Calls `f` until it succeeds, reporting failures in the shard's Kafka health and backing off.
async fn retry<T, F, Fut>(ctx: &Ctx, what: &str, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let failed = |e: &anyhow::Error| {
        tracing::warn!(shard = ctx.shard, error = %format!("{e:#}"), "{what}; retrying");
        ctx.stats
            .set_up(ctx.shard, false, Some(format!("{what}: {e:#}")));
    };
    client::retry(failed, f).await
}

/// The high watermark, read from a fetch (some brokers answer ListOffsets(Latest) wrongly).
async fn high_watermark(pc: &PartitionClient, max_bytes: i32) -> Result<i64> {
    let earliest = pc.get_offset(OffsetAt::Earliest).await?;
    let (_, hwm) = pc.fetch_records(earliest, 1..max_bytes, 0).await?;
    Ok(hwm)
}

/// Consumes one partition for ever: decodes its records for the shard, dead-letters the others.
async fn consume(ctx: Rc<Ctx>, client: Arc<Client>, producer: Arc<Producer>, ti: usize, p: i32) {
    let topic: Arc<str> = Arc::from(ctx.topics[ti].as_str());
    let stream = stream_id(ti, p);
    let stats = ctx.stats.partition(&topic, p);
    let max_bytes = ctx.cfg.fetch_max_bytes;
    let pc = retry(&ctx, "opening partition", || {
        client::partition_client(&client, &topic, p)
    })
    .await;
    let start = retry(&ctx, "reading the start offset", || async {
        Ok(match ctx.cfg.start_from {
            StartFrom::Latest => high_watermark(&pc, max_bytes).await?,
            StartFrom::Earliest => pc.get_offset(OffsetAt::Earliest).await?,
        })
    })
    .await;
    let mut next = start;
    stats.positioned.store(true, Ordering::Release);
    let first = Batch {
        stream,
        topic: topic.clone(),
        partition: p,
        msgs: Vec::new(),
        next,
    };
    if ctx.out.send(FromKafka::Records(first)).await.is_err() {
        return;
    }
    let mut backoff = Duration::from_millis(100);
    loop {
        match pc
            .fetch_records(next, 1..max_bytes, ctx.cfg.fetch_max_wait_ms)
            .await
        {
            Ok((records, hwm)) => {
                backoff = Duration::from_millis(100);
                ctx.stats.set_up(ctx.shard, true, None);
                let mut msgs = Vec::new();
                for r in records {
                    // Records before `next` (the head of a batch, or a repeat) were handled.
                    if r.offset < next {
                        continue;
                    }
                    next = r.offset + 1;
                    stats.consumed.inc();
                    match decode(&r.record, ctx.max_channel_len) {
                        Ok(publish) => msgs.push(Decoded {
                            offset: r.offset,
                            publish,
                        }),
                        Err(rej) => {
                            dead_letter(&ctx, &producer, &topic, p, r.offset, r.record, rej).await
                        }
                    }
                }
                stats.fetched(next, hwm);
                if !msgs.is_empty() {
                    let batch = Batch {
                        stream,
                        topic: topic.clone(),
                        partition: p,
                        msgs,
                        next,
                    };
                    // Waits while the shard's ring is full: fetching pauses, nothing is dropped.
                    if ctx.out.send(FromKafka::Records(batch)).await.is_err() {
                        return;
                    }
                }
            }
            Err(KError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => {
                // Retention removed what we were about to read: continue from the oldest kept.
                match pc.get_offset(OffsetAt::Earliest).await {
                    Ok(earliest) if earliest > next => {
                        tracing::warn!(topic = %topic, partition = p, from = next, to = earliest, "records expired before they were read");
                        next = earliest;
                    }
                    _ => tokio::time::sleep(backoff).await,
                }
            }
            Err(e) => {
                tracing::warn!(shard = ctx.shard, topic = %topic, partition = p, error = %e, "fetch failed; retrying from offset {next}");
                ctx.stats
                    .set_up(ctx.shard, false, Some(format!("fetching {topic}/{p}: {e}")));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Writes an unroutable record to the dead-letter topic (if any) with why, and counts it.
async fn dead_letter(
    ctx: &Ctx,
    producer: &Producer,
    topic: &str,
    partition: i32,
    offset: i64,
    mut record: Record,
    rej: Reject,
) {
    ctx.stats.dead_lettered(rej.reason);
    tracing::warn!(topic, partition, offset, reason = rej.reason, detail = %rej.detail, "unroutable record");
    let Some(dlq) = &ctx.cfg.dead_letter_topic else {
        return;
    };
    let headers = [
        ("gateway-error", rej.reason.to_string()),
        ("gateway-error-detail", rej.detail),
        ("gateway-source", format!("{topic}:{partition}:{offset}")),
    ];
    for (k, v) in headers {
        record.headers.insert(k.to_string(), v.into_bytes());
    }
    if let Err(e) = producer.produce(dlq, record).await {
        tracing::warn!(error = %format!("{e:#}"), "could not write to the dead-letter topic");
    }
}
