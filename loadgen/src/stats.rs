//! What a worker measures and how results are merged: HDR histograms (microseconds), per-receiver
//! sequence accounting (gaps = lost, repeats = duplicates), counts by cause.

use anyhow::{Context, Result};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// 1 us .. 10 min at 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("static histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.max(1));
}

/// Compressed, base64 (the HdrHistogram V2 interchange format).
pub fn encode(h: &Histogram<u64>) -> Result<String> {
    let mut buf = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("serializing histogram: {e:?}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(buf))
}

pub fn decode(s: &str) -> Result<Histogram<u64>> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .context("histogram is not base64")?;
    let mut h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut std::io::Cursor::new(bytes))
        .map_err(|e| anyhow::anyhow!("deserializing histogram: {e:?}"))?;
    h.auto(true);
    Ok(h)
}

/// Sequence accounting for one receiver of one room. Messages of a room are numbered 0, 1, 2...
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeqTrack {
    next: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
}

impl SeqTrack {
    pub fn on(&mut self, seq: u64) {
        self.received += 1;
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            self.lost += seq - self.next;
            self.next = seq + 1;
        } else {
            // Within a channel order is guaranteed, so an earlier number is a repeat.
            self.duplicates += 1;
        }
    }

    /// At the end: what was published to the room and never arrived is lost too.
    pub fn finish(&mut self, published: u64) {
        if published > self.next {
            self.lost += published - self.next;
            self.next = published;
        }
    }
}

/// A worker's result, sent to the main process as one JSON line.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    pub connect_hist: String,
    pub delivery_hist: String,
    pub connected: u64,
    pub failed: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// (room, seq, latest receive time in unix ns) for each message this worker saw.
    pub last_rx: Vec<(u32, u64, u64)>,
    pub cpu_secs: f64,
    /// Reconnections made by churning connections, and what they received (not loss-checked).
    #[serde(default)]
    pub churn_cycles: u64,
    #[serde(default)]
    pub churn_received: u64,
    /// How each stalled (never-reading) connection ended, by cause.
    #[serde(default)]
    pub stalled: BTreeMap<String, u64>,
    /// Bytes of the message frames received (headers and payloads as on the wire).
    #[serde(default)]
    pub frame_bytes: u64,
    /// Resumes of `--resume` connections.
    #[serde(default)]
    pub resume: crate::resume::ResumeResult,
}

/// Everything merged.
#[derive(Debug)]
pub struct Merged {
    pub connect: Histogram<u64>,
    pub delivery: Histogram<u64>,
    pub connected: u64,
    pub failed: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub last_rx: BTreeMap<(u32, u64), u64>,
    pub worker_cpu_secs: f64,
    pub churn_cycles: u64,
    pub churn_received: u64,
    pub stalled: BTreeMap<String, u64>,
    pub frame_bytes: u64,
    pub resume: crate::resume::ResumeResult,
    /// Reconnect times of resumed connections (microseconds).
    pub reconnect: Histogram<u64>,
}

pub fn merge(results: &[WorkerResult]) -> Result<Merged> {
    let mut m = Merged {
        connect: histogram(),
        delivery: histogram(),
        connected: 0,
        failed: BTreeMap::new(),
        closes: BTreeMap::new(),
        received: 0,
        lost: 0,
        duplicates: 0,
        last_rx: BTreeMap::new(),
        worker_cpu_secs: 0.0,
        churn_cycles: 0,
        churn_received: 0,
        frame_bytes: 0,
        stalled: BTreeMap::new(),
        resume: Default::default(),
        reconnect: histogram(),
    };
    for r in results {
        m.connect
            .add(decode(&r.connect_hist)?)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        m.delivery
            .add(decode(&r.delivery_hist)?)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        m.connected += r.connected;
        for (k, v) in &r.failed {
            *m.failed.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &r.closes {
            *m.closes.entry(k.clone()).or_default() += v;
        }
        m.received += r.received;
        m.lost += r.lost;
        m.duplicates += r.duplicates;
        for (room, seq, t) in &r.last_rx {
            let e = m.last_rx.entry((*room, *seq)).or_default();
            *e = (*e).max(*t);
        }
        m.worker_cpu_secs += r.cpu_secs;
        m.churn_cycles += r.churn_cycles;
        m.churn_received += r.churn_received;
        m.frame_bytes += r.frame_bytes;
        for (k, v) in &r.stalled {
            *m.stalled.entry(k.clone()).or_default() += v;
        }
        m.resume.merge(&r.resume, &mut m.reconnect)?;
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_duplicates_and_tail_loss() {
        let mut t = SeqTrack::default();
        for s in [0, 1, 3, 3, 4, 2] {
            t.on(s);
        }
        assert_eq!((t.received, t.lost, t.duplicates), (6, 1, 2));
        t.finish(8);
        assert_eq!(t.lost, 4);
        let mut clean = SeqTrack::default();
        (0..5).for_each(|s| clean.on(s));
        clean.finish(5);
        assert_eq!((clean.lost, clean.duplicates), (0, 0));
    }

    #[test]
    fn histograms_round_trip_and_merge() {
        let mut a = histogram();
        let mut b = histogram();
        for v in 1..=1000 {
            record(&mut a, v);
            record(&mut b, v * 1000);
        }
        let ra = WorkerResult {
            connect_hist: encode(&histogram()).unwrap(),
            delivery_hist: encode(&a).unwrap(),
            received: 1000,
            last_rx: vec![(0, 1, 10), (0, 2, 5)],
            ..Default::default()
        };
        let rb = WorkerResult {
            connect_hist: encode(&histogram()).unwrap(),
            delivery_hist: encode(&b).unwrap(),
            received: 1000,
            last_rx: vec![(0, 1, 7), (1, 1, 3)],
            ..Default::default()
        };
        let m = merge(&[ra, rb]).unwrap();
        assert_eq!(m.delivery.len(), 2000);
        assert_eq!(m.delivery.max(), b.max());
        assert!(m.delivery.value_at_quantile(0.5) <= 1001);
        assert_eq!(m.received, 2000);
        assert_eq!(m.last_rx[&(0, 1)], 10);
        assert_eq!(m.last_rx.len(), 3);
        assert!(decode("not base64!").is_err());
    }
}
