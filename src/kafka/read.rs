//! `since` read-back: old records of one channel, read from the broker in bounded pages.
//!
//! Each partition has one reader task that serves pages strictly one at a time, in the order they
//! were asked for, never merging ranges: a client asking for a huge or ancient range costs one
//! bounded page before every other client's next page, not a full pass before anyone's answer.
//! While scanning, records are filtered by key (or, for keyless envelopes, by a substring check)
//! so only records that can belong to the channel are JSON-decoded (`page`).

mod page;

use super::client;
use super::{stream_partition, stream_topic_index, Command, FromKafka, ReadPage, Stream};
use anyhow::{anyhow, Result};
use page::{Fed, Page};
use rskafka::client::error::{Error as KError, ProtocolError};
use rskafka::client::partition::{OffsetAt, PartitionClient};
use rskafka::client::Client;
use rskafka::record::RecordAndOffset;
use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one page may take (fetches included) before it is answered with an error, so a stuck
/// broker cannot hold a partition's queue forever.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetches without progress after which a page gives up (more than enough to back off across the
/// whole offset range, which takes at most 63 doublings).
const MAX_STALLS: u32 = 64;

/// The most a fetch is allowed to grow to when one record batch fills it (see `read_page`).
const MAX_FETCH_BYTES: i32 = 64 << 20;

/// One page asked for: the fields of `Command::Read` but the stream, which picks the reader.
pub(super) struct ReadReq {
    /// Echoed in the answer.
    pub token: u64,
    pub channel: Arc<str>,
    /// Offsets `from..to`.
    pub from: i64,
    pub to: i64,
    /// Budgets: value bytes kept, records scanned.
    pub max_bytes: usize,
    pub max_scan: usize,
}

/// The settings a reader needs, copied out of the I/O thread's configuration.
#[derive(Clone, Copy)]
pub(super) struct ReadCfg {
    /// Upper bound of one fetch, as for consuming.
    pub fetch_max_bytes: i32,
    /// Records whose channel is longer do not decode, as when consumed.
    pub max_channel_len: usize,
}

/// The reader tasks of one I/O thread, by partition, each started when first asked.
pub(super) struct Readers {
    topics: Arc<Vec<String>>,
    partitions: Arc<[AtomicI32]>,
    out: mpsc::Sender<FromKafka>,
    cfg: ReadCfg,
    /// Unbounded: the router has one page in flight per connection, and a refused page would
    /// cost a legitimate client its recovery during a reconnect storm.
    queues: HashMap<Stream, mpsc::UnboundedSender<ReadReq>>,
}

impl Readers {
    /// No reader yet; `partitions` is the count `discover` keeps up to date.
    pub fn new(
        topics: Arc<Vec<String>>,
        partitions: Arc<[AtomicI32]>,
        out: mpsc::Sender<FromKafka>,
        cfg: ReadCfg,
    ) -> Self {
        let queues = HashMap::new();
        Readers {
            topics,
            partitions,
            out,
            cfg,
            queues,
        }
    }

    /// Queues a `Command::Read` (other commands are not for readers) behind its partition's
    /// earlier pages, or answers at once why it cannot be read.
    pub fn queue(&mut self, client: &Arc<Client>, cmd: Command) {
        let Command::Read {
            token,
            stream,
            channel,
            from,
            to,
            max_bytes,
            max_scan,
        } = cmd
        else {
            return;
        };
        let req = ReadReq {
            token,
            channel,
            from,
            to,
            max_bytes,
            max_scan,
        };
        if let Err(e) = self.try_queue(client, stream, req) {
            // From a task: the command loop must not wait on the shard's ring.
            let out = self.out.clone();
            tokio::task::spawn_local(async move {
                let _ = out
                    .send(FromKafka::Read {
                        token,
                        result: Err(e),
                    })
                    .await;
            });
        }
    }

    /// Refuses a stream that is not a known partition, so that bad input cannot start readers
    /// that live for ever.
    fn try_queue(
        &mut self,
        client: &Arc<Client>,
        stream: Stream,
        req: ReadReq,
    ) -> Result<(), String> {
        let (ti, p) = (stream_topic_index(stream), stream_partition(stream));
        let known = self.partitions.get(ti).map(|n| n.load(Ordering::Relaxed));
        let (Some(topic), Some(n)) = (self.topics.get(ti), known) else {
            return Err(format!("no consumed topic for stream {stream:#x}"));
        };
        if p < 0 || (n > 0 && p >= n) {
            return Err(format!("{topic} has no partition {p}"));
        }
        let tx = self.queues.entry(stream).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            let (client, topic, out) = (client.clone(), topic.clone(), self.out.clone());
            tokio::task::spawn_local(reader(client, topic, p, out, self.cfg, rx));
            tx
        });
        // Fails only if the reader is gone, which happens when the shard is.
        tx.send(req)
            .map_err(|_| format!("the reader of {topic}/{p} has stopped"))
    }
}

/// Serves pages of one partition, one each, in arrival order.
async fn reader(
    client: Arc<Client>,
    topic: String,
    p: i32,
    out: mpsc::Sender<FromKafka>,
    cfg: ReadCfg,
    mut rx: mpsc::UnboundedReceiver<ReadReq>,
) {
    // Opened on first use and kept: rskafka follows leader changes itself.
    let mut pc: Option<PartitionClient> = None;
    while let Some(req) = rx.recv().await {
        let page = async {
            if pc.is_none() {
                pc = Some(client::partition_client(&client, &topic, p).await?);
            }
            match &pc {
                Some(pc) => read_page(pc, cfg, &req).await,
                None => Err(anyhow!("partition {topic}/{p} unavailable")),
            }
        };
        let result = match tokio::time::timeout(PAGE_TIMEOUT, page).await {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(e)) => Err(format!("reading {topic}/{p} at {}: {e:#}", req.from)),
            Err(_) => Err(format!(
                "reading {topic}/{p} at {} timed out after {PAGE_TIMEOUT:?}",
                req.from
            )),
        };
        let token = req.token;
        if out.send(FromKafka::Read { token, result }).await.is_err() {
            return;
        }
    }
}

/// An answer to a fetch.
enum Fetched {
    /// The records from the offset asked for (as the broker chose them) and the high watermark.
    Records(Vec<RecordAndOffset>, i64),
    /// The offset is before the log start or after its end.
    OutOfRange,
}

/// What a page needs of a partition: a trait so that the fetch loop is tested against simulated
/// brokers.
trait Log {
    /// Records from `at`, about `max_bytes` of them at most.
    async fn fetch(&self, at: i64, max_bytes: i32) -> Result<Fetched>;
    /// The log start offset.
    async fn earliest(&self) -> Result<i64>;
}

impl Log for PartitionClient {
    async fn fetch(&self, at: i64, max_bytes: i32) -> Result<Fetched> {
        match self.fetch_records(at, 1..max_bytes, 0).await {
            Ok((records, hwm)) => Ok(Fetched::Records(records, hwm)),
            Err(KError::ServerError {
                protocol_error: ProtocolError::OffsetOutOfRange,
                ..
            }) => Ok(Fetched::OutOfRange),
            Err(e) => Err(anyhow!("fetching at {at}: {e}")),
        }
    }

    async fn earliest(&self) -> Result<i64> {
        self.get_offset(OffsetAt::Earliest)
            .await
            .map_err(|e| anyhow!("reading the earliest offset: {e}"))
    }
}

/// Reads one page: fetches until `Page` says it is complete.
///
/// Some brokers (Tansu 0.6), asked for an offset inside a record batch, answer with only the
/// batches after it (or nothing). So an answer is trusted only if it reaches back to the scan
/// position, or if it was asked for where nothing can be skipped (the log start, or exactly where
/// the previous, complete, answer ended); otherwise the fetch is repeated from further back.
async fn read_page(log: &impl Log, cfg: ReadCfg, req: &ReadReq) -> Result<ReadPage> {
    if req.from < 0 || req.from > req.to {
        return Err(anyhow!("bad range {}..{}", req.from, req.to));
    }
    let mut page = Page::new(req, cfg.max_channel_len);
    // The log start, once known; asked only when an answer does not reach back to the position.
    let mut earliest: Option<i64> = None;
    let mut back = 0i64;
    let mut resume: Option<i64> = None;
    let mut fetch_bytes = cfg.fetch_max_bytes;
    let mut stalls = 0;
    while !page.done {
        stalls += 1;
        if stalls > MAX_STALLS {
            return Err(anyhow!(
                "no progress at offset {} after {MAX_STALLS} fetches",
                page.cur
            ));
        }
        let floor = earliest.unwrap_or(0);
        let at = resume.unwrap_or_else(|| page.cur.saturating_sub(back).max(floor));
        let (records, hwm) = match log.fetch(at, fetch_bytes).await? {
            Fetched::Records(records, hwm) => (records, hwm),
            Fetched::OutOfRange => {
                let e = log.earliest().await?;
                earliest = Some(e);
                if e > page.cur {
                    // Retention removed what was to be read: go on from the oldest record kept.
                    page.skip_to(e);
                    back = 0;
                } else if at >= e {
                    // Past the log's end, which is before `to`: the log lost its tail.
                    page.lost_tail();
                }
                // Else `at` was below the log start (now known) while backing off: the next
                // fetch is at least at the log start.
                resume = None;
                continue;
            }
        };
        let covers = records.iter().any(|r| r.offset <= page.cur);
        if !covers {
            if records.is_empty() && hwm <= page.cur {
                page.lost_tail();
                continue;
            }
            if earliest.is_none() && at > 0 {
                let e = log.earliest().await?;
                earliest = Some(e);
                if e > page.cur {
                    page.skip_to(e);
                    (back, resume) = (0, None);
                    continue;
                }
            }
            let trusted = at <= earliest.unwrap_or(0) || resume == Some(at);
            if !trusted {
                back = if back == 0 { 1 } else { back.saturating_mul(2) };
                resume = None;
                continue;
            }
            // Trusted: the offsets before the first record do not exist (compaction, markers).
        }
        match page.feed(records) {
            Fed::Done => {}
            Fed::Progressed => {
                (back, resume, stalls) = (0, None, 0);
                fetch_bytes = cfg.fetch_max_bytes;
            }
            Fed::Behind(Some(last)) => {
                // The answer was cut before the position: ask exactly where it ended.
                (resume, stalls) = (Some(last + 1), 0);
            }
            // Nothing from a trusted position on although the log goes on: the batch the position
            // falls in fills the fetch, its later records compacted away. Only a larger fetch
            // reaches the next batch (rskafka does not tell where a batch ends).
            Fed::Behind(None) => {
                fetch_bytes = fetch_bytes
                    .saturating_mul(2)
                    .min(MAX_FETCH_BYTES.max(cfg.fetch_max_bytes));
            }
        }
    }
    Ok(page.finish())
}

#[cfg(test)]
mod tests;
