//! The router and Kafka: client publishes produced upstream, records consumed by this shard handed to
//! their channels' owners, records of owned channels sequenced by offset, and `since` pages read back
//! from the broker.

use super::{KafkaWait, Router};
use crate::kafka::{self, Batch, Command, Decoded, FromKafka, ReadPage};
use crate::mesh::{ConnAck, Control, Corr, PageResult};
use crate::message::{Msg, Publish};
use crate::protocol::{self, ErrorCode, Refusal};
use crate::topology::{self, SincePos, Stream, UNRECOVERABLE};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

impl Router {
    /// Produces a client publish to the upstream topic: key = channel, headers `user` and `id`.
    pub(super) fn produce(&self, p: Publish, ack: Option<ConnAck>) {
        let Some(kafka) = &self.kafka else { return };
        let token = self.gen();
        let (conn, id) = ack.map(|a| (a.conn, a.id)).unwrap_or((0, Value::Null));
        let mut headers = BTreeMap::new();
        let msg_id =
            p.id.unwrap_or_else(|| format!("{:x}-{:x}-{token}", self.epoch, conn));
        headers.insert("id".to_string(), msg_id.into_bytes());
        if let Some(user) = p.from {
            headers.insert("user".to_string(), user.into_bytes());
        }
        if let Some(event) = p.event {
            headers.insert("event".to_string(), event.into_bytes());
        }
        if p.priority != 3 {
            headers.insert("priority".to_string(), p.priority.to_string().into_bytes());
        }
        let record = rskafka::record::Record {
            key: Some(p.channel.into_bytes()),
            value: Some(p.data.to_string().into_bytes()),
            headers,
            timestamp: chrono::Utc::now(),
        };
        let topic = kafka.upstream.clone();
        if kafka
            .commands
            .try_send(Command::Produce {
                token,
                topic,
                record,
            })
            .is_err()
        {
            let busy = Refusal::new(ErrorCode::Internal, "Kafka producer busy, retry");
            self.reply(conn, &protocol::reply_err(&id, &busy));
            return;
        }
        self.waits
            .borrow_mut()
            .insert(token, KafkaWait::Produce { conn, id });
    }

    /// Asks the Kafka I/O thread for the channel's records after `after`, before `to`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn read_page(
        &self,
        corr: Corr,
        channel: &Arc<str>,
        stream: Stream,
        after: u64,
        to: u64,
        max_bytes: usize,
        max_scan: usize,
    ) -> Option<PageResult> {
        let Some(k) = &self.kafka else {
            return Some(PageResult::Unreachable);
        };
        let token = self.gen();
        let cmd = Command::Read {
            token,
            stream,
            channel: channel.clone(),
            from: i64::try_from(after + 1).unwrap_or(i64::MAX),
            to: i64::try_from(to).unwrap_or(i64::MAX),
            max_bytes,
            max_scan,
        };
        if k.commands.try_send(cmd).is_err() {
            return Some(PageResult::Failed("the Kafka reader is busy".into()));
        }
        let wait = KafkaWait::Page {
            corr,
            channel: channel.clone(),
            stream,
            after,
        };
        self.waits.borrow_mut().insert(token, wait);
        None
    }

    /// Records read back from Kafka, as a page of messages of `channel`.
    fn read_back(&self, channel: &Arc<str>, stream: Stream, after: u64, p: ReadPage) -> PageResult {
        if p.truncated {
            return PageResult::Unreachable;
        }
        let topic = self
            .kafka
            .as_ref()
            .and_then(|k| k.topics.get(kafka::stream_topic_index(stream)).cloned())
            .unwrap_or_default();
        let partition = kafka::stream_partition(stream);
        let msgs = p
            .records
            .into_iter()
            .map(|d| {
                let pos = kafka::format_pos(&topic, partition, d.offset);
                let seq = u64::try_from(d.offset).unwrap_or(0);
                Arc::new(Msg::new(d.publish, channel.clone(), stream, seq, pos))
            })
            .collect();
        let next_after = u64::try_from(p.next - 1).unwrap_or(0).max(after);
        PageResult::Msgs {
            msgs,
            next_after,
            done: false,
            scanned: p.scanned,
        }
    }

    /// What the shard's Kafka I/O thread hands over.
    pub fn on_kafka(&self, item: FromKafka) {
        match item {
            FromKafka::Records(batch) => self.consumed(batch),
            FromKafka::Produced { token, result } => {
                let wait = self.waits.borrow_mut().remove(&token);
                let Some(KafkaWait::Produce { conn, id }) = wait else {
                    return;
                };
                let result = result.map_err(|e| {
                    tracing::warn!(error = %e, "client publish to Kafka failed");
                    Refusal::new(ErrorCode::Internal, "publish failed: Kafka unavailable")
                });
                self.send_ack(conn, &id, &result);
            }
            FromKafka::Read { token, result } => {
                let wait = self.waits.borrow_mut().remove(&token);
                let Some(KafkaWait::Page {
                    corr,
                    channel,
                    stream,
                    after,
                }) = wait
                else {
                    return;
                };
                let page = match result {
                    Ok(p) => self.read_back(&channel, stream, after, p),
                    Err(e) => PageResult::Failed(e),
                };
                self.send_page(corr, channel, page);
            }
        }
    }

    /// A batch of a partition this shard consumes: each record goes to its channel's owner.
    fn consumed(&self, batch: Batch) {
        if batch.msgs.is_empty() {
            // A partition starts: every shard learns where, for the recoveries it answers.
            for peer in (0..self.shards).filter(|p| *p != self.shard) {
                let (stream, next) = (batch.stream, batch.next);
                self.peers.control(peer, Control::Position { stream, next });
            }
        }
        let mut mine = Vec::new();
        let mut theirs: HashMap<usize, Vec<Decoded>> = HashMap::new();
        for d in batch.msgs {
            match self.owner(&d.publish.channel) {
                o if o == self.shard => mine.push(d),
                o => theirs.entry(o).or_default().push(d),
            }
        }
        for (owner, msgs) in theirs {
            let c = Control::Records {
                stream: batch.stream,
                topic: batch.topic.clone(),
                partition: batch.partition,
                msgs,
                next: batch.next,
            };
            self.peers.records(owner, c);
        }
        self.take_records(
            batch.stream,
            &batch.topic,
            batch.partition,
            mine,
            batch.next,
        );
    }

    /// Records of channels this shard owns: sequenced by their offsets, kept, fanned out.
    pub(super) fn take_records(
        &self,
        stream: Stream,
        topic: &str,
        partition: i32,
        msgs: Vec<Decoded>,
        next: i64,
    ) {
        for d in msgs {
            let channel: Arc<str> = Arc::from(d.publish.channel.as_str());
            let pos = kafka::format_pos(topic, partition, d.offset);
            let seq = u64::try_from(d.offset).unwrap_or(0);
            let msg = Arc::new(Msg::new(d.publish, channel, stream, seq, pos));
            self.metrics.kafka_routed.inc();
            self.keep_and_fan_out(&msg);
        }
        self.advance_position(stream, next);
    }

    pub(super) fn advance_position(&self, stream: Stream, next: i64) {
        let mut p = self.positions.borrow_mut();
        let e = p.entry(stream).or_insert(next);
        *e = (*e).max(next);
    }

    /// Waits until every peer can take more deliveries: the Kafka consumer pauses here.
    pub async fn room_for_records(&self) {
        self.peers.room().await
    }

    /// Reads a client's `since`: the in-process form, or a Kafka record's position. A Kafka
    /// position must name the partition the channel maps to; one that cannot be answered here
    /// is marked `UNRECOVERABLE` (answered `recovered: false`).
    pub fn parse_since(&self, channel: &str, pos: &str) -> Option<SincePos> {
        let Some(k) = &self.kafka else {
            let (epoch, seq) = topology::parse_pos(pos)?;
            let stream = if epoch == self.epoch {
                0
            } else {
                UNRECOVERABLE
            };
            return Some(SincePos { stream, seq });
        };
        let (topic, partition, offset) = kafka::parse_pos(pos)?;
        let seq = u64::try_from(offset).ok()?;
        let stream = match k.topic_index(topic) {
            Some(ti) => match k.partitions(ti) {
                Some(n)
                    if kafka::client::partition_for(channel.as_bytes(), n as usize)
                        != partition =>
                {
                    UNRECOVERABLE
                }
                _ => kafka::stream_id(ti, partition),
            },
            None => UNRECOVERABLE,
        };
        Some(SincePos { stream, seq })
    }
}
