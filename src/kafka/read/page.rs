//! What one page keeps and where it stops, fed the records of successive fetches: pure, so the
//! key filter and the stop rules are tested without a broker.

use super::ReadReq;
use crate::kafka::decode::decode;
use crate::kafka::{Decoded, ReadPage};
use rskafka::record::{Record, RecordAndOffset};

/// Tells, without decoding, whether a record may belong to a channel.
pub(super) struct ChannelFilter<'a> {
    channel: &'a str,
    /// Whether JSON encoders may escape some of the channel's characters (`"`, `\`, `/`, HTML
    /// characters, non-ASCII…), so that the name need not appear as it is in an envelope.
    escapable: bool,
}

impl<'a> ChannelFilter<'a> {
    /// The filter of `channel`.
    pub fn new(channel: &'a str) -> Self {
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"-_.:@#$%,;=~!*|?^()[]{}".contains(&b);
        ChannelFilter {
            channel,
            escapable: !channel.bytes().all(plain),
        }
    }

    /// False only if the record cannot decode to a message of the channel: its key differs
    /// from the channel, or it is a keyless envelope that does not mention the channel.
    pub fn may_match(&self, rec: &Record) -> bool {
        match &rec.key {
            Some(key) => key.as_slice() == self.channel.as_bytes(),
            None => {
                // No value: not an envelope. Not UTF-8: simd-json refuses it, it cannot decode.
                let Some(Ok(text)) = rec.value.as_deref().map(std::str::from_utf8) else {
                    return false;
                };
                // An encoder may have escaped the channel's name: any escape could hide it.
                text.contains(self.channel) || (self.escapable && text.contains('\\'))
            }
        }
    }
}

/// What one batch of fetched records did to a page.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fed {
    /// The page is complete: `to` reached, or a budget spent.
    Done,
    /// Records at or after the position were scanned.
    Progressed,
    /// No record at or after the position; the offset of the last record, if any.
    Behind(Option<i64>),
}

/// A page being scanned, fed the answers of successive fetches.
pub(super) struct Page<'a> {
    filter: ChannelFilter<'a>,
    to: i64,
    max_bytes: usize,
    max_scan: usize,
    max_channel_len: usize,
    /// The next offset to scan: every record of the channel before it (from `from`) is kept.
    pub cur: i64,
    /// Value bytes of the records kept.
    bytes: usize,
    /// Nothing more to scan: `to` reached, or a budget spent.
    pub done: bool,
    out: ReadPage,
}

impl<'a> Page<'a> {
    /// A page at the start of `req`'s range, nothing scanned yet.
    pub fn new(req: &'a ReadReq, max_channel_len: usize) -> Self {
        Page {
            filter: ChannelFilter::new(&req.channel),
            to: req.to,
            max_bytes: req.max_bytes,
            // At least one record, so that every page moves on.
            max_scan: req.max_scan.max(1),
            max_channel_len,
            cur: req.from,
            bytes: 0,
            done: req.from >= req.to,
            out: ReadPage {
                records: Vec::new(),
                next: req.from,
                scanned: 0,
                truncated: false,
            },
        }
    }

    /// Scans fetched records, in offset order, from the position on; records before it (the head
    /// of a batch, or records that came back twice) are passed over.
    pub fn feed(&mut self, records: Vec<RecordAndOffset>) -> Fed {
        let mut progressed = false;
        let mut last = None;
        for r in records {
            last = Some(r.offset);
            if self.done {
                break;
            }
            if r.offset < self.cur {
                continue;
            }
            if r.offset >= self.to {
                // Whatever lies between the position and `to` does not exist.
                self.end();
                break;
            }
            if self.filter.may_match(&r.record) {
                // Undecodable records were dead-lettered when consumed: skipped here.
                let kept = decode(&r.record, self.max_channel_len)
                    .ok()
                    .filter(|p| p.channel == self.filter.channel);
                if let Some(publish) = kept {
                    let size = frame_size(&r.record, &publish.channel);
                    // Over the byte budget: the next page starts with this record (a page holds
                    // at least one, however large). The offsets between the position and it do
                    // not exist: a page is only fed answers that hold the log from the position on.
                    if !self.out.records.is_empty() && self.bytes + size > self.max_bytes {
                        self.cur = r.offset;
                        self.done = true;
                        break;
                    }
                    self.bytes += size;
                    self.out.records.push(Decoded {
                        offset: r.offset,
                        publish,
                    });
                }
            }
            self.out.scanned += 1;
            self.cur = r.offset + 1;
            progressed = true;
            if self.out.scanned >= self.max_scan
                || (!self.out.records.is_empty() && self.bytes >= self.max_bytes)
            {
                self.done = true;
            }
        }
        if self.cur >= self.to {
            self.end();
        }
        match (self.done, progressed) {
            (true, _) => Fed::Done,
            (false, true) => Fed::Progressed,
            (false, false) => Fed::Behind(last),
        }
    }

    /// Retention removed records from the position on: go on from `earliest`.
    pub fn skip_to(&mut self, earliest: i64) {
        self.out.truncated = true;
        self.cur = earliest;
        if self.cur >= self.to {
            self.end();
        }
    }

    /// The log ends before `to` although `to` was read once: the rest of the range is gone.
    pub fn lost_tail(&mut self) {
        self.out.truncated = true;
        self.end();
    }

    /// The range is scanned to its end.
    fn end(&mut self) {
        self.cur = self.to;
        self.done = true;
    }

    /// The answer: what was kept, and where the scan stopped.
    pub fn finish(mut self) -> ReadPage {
        self.out.next = self.cur;
        self.out
    }
}

/// What the gateway adds around a record's value in the frame a client gets (`type`, `channel`,
/// `id`, `pos`, `priority`, `ts` and the frame header): a page's byte budget is about the frames
/// it becomes, which for small records are mostly envelope.
const FRAME_OVERHEAD: usize = 160;

/// The size of the frame a record becomes, about.
fn frame_size(record: &rskafka::record::Record, channel: &str) -> usize {
    let value = record.value.as_ref().map_or(0, Vec::len);
    let headers: usize = record.headers.values().map(Vec::len).sum();
    value + headers + channel.len() + FRAME_OVERHEAD
}

#[cfg(test)]
mod tests;
