//! The fetch loop against simulated brokers: Kafka's answers, Tansu's (a fetch inside a record
//! batch answered with the following batches only), answers cut at the size limit, repeated
//! records, compacted offsets, retention and a log that lost its tail. Reading a range page after
//! page must give exactly the channel's records, each page within its budgets.

use super::*;
use rskafka::record::Record;
use std::cell::Cell;
use std::collections::BTreeMap;

/// A partition's log as a simulated broker serves it.
struct Sim {
    /// Record batches in offset order: base offset and records (None: compacted away).
    batches: Vec<(i64, Vec<Option<Record>>)>,
    /// The log start: earlier offsets are gone.
    earliest: i64,
    /// The high watermark.
    end: i64,
    /// A fetch inside a batch is answered from the next batch on (Tansu 0.6).
    tansu: bool,
    /// A fetch below the log start is answered from the log start instead of with an error.
    lenient: bool,
    /// Batches in one answer of `CFG.fetch_max_bytes` at most (the fetch size limit).
    per_answer: usize,
    /// Every answer holds its records twice.
    twice: bool,
    fetches: Cell<usize>,
}

impl Log for Sim {
    async fn fetch(&self, at: i64, max_bytes: i32) -> Result<Fetched> {
        self.fetches.set(self.fetches.get() + 1);
        if at > self.end || (at < self.earliest && !self.lenient) {
            return Ok(Fetched::OutOfRange);
        }
        let mut out = Vec::new();
        let batches = self.batches.iter().filter(|(base, recs)| {
            let last = base + recs.len() as i64 - 1;
            *base >= self.earliest && last >= at && !(self.tansu && *base < at)
        });
        // A larger fetch holds more batches.
        let room = (max_bytes / CFG.fetch_max_bytes).max(1) as usize;
        let mut full = 0;
        for (base, recs) in batches {
            if full == self.per_answer.saturating_mul(room) {
                break;
            }
            // Batches compacted to nothing are kept (for producer state) but take no room.
            if recs.iter().any(Option::is_some) {
                full += 1;
            }
            for (o, r) in (*base..).zip(recs) {
                // rskafka drops the records of the first batch before `at`.
                if let (Some(record), true) = (r, o >= at) {
                    let record = record.clone();
                    out.push(RecordAndOffset { record, offset: o });
                }
            }
        }
        if self.twice {
            out.extend(out.clone());
        }
        Ok(Fetched::Records(out, self.end))
    }

    async fn earliest(&self) -> Result<i64> {
        Ok(self.earliest)
    }
}

/// The record at offset `o`: on channel `c` (keyed, or as an envelope) or another one, keyed or
/// as an envelope that mentions `c`.
fn record(o: i64) -> Record {
    let (key, value) = match o % 6 {
        0 => (Some("c"), format!("{o}")),
        1 => (None, format!(r#"{{"channel":"c","data":{o}}}"#)),
        2 => (None, format!(r#"{{"channel":"n","data":"c{o}"}}"#)),
        3 => (Some("c"), format!("[{o}]")),
        _ => (Some("n"), format!("{o}")),
    };
    Record {
        key: key.map(|k| k.as_bytes().to_vec()),
        value: Some(value.into_bytes()),
        headers: BTreeMap::new(),
        timestamp: chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap(),
    }
}

fn on_channel(o: i64) -> bool {
    matches!(o % 6, 0 | 1 | 3)
}

/// A log of batches of 1 to 5 records; with `gaps`, some offsets and one whole batch are
/// compacted away.
fn sim(gaps: bool) -> Sim {
    let mut batches = Vec::new();
    let mut base = 0;
    for (i, n) in [3, 1, 5, 2, 4, 1, 1, 5, 3, 2, 4].into_iter().enumerate() {
        let recs = (base..base + n)
            .map(|o| {
                let gone = gaps && (o % 5 == 2 || i == 4);
                (!gone).then(|| record(o))
            })
            .collect();
        batches.push((base, recs));
        base += n;
    }
    Sim {
        batches,
        earliest: 0,
        end: base,
        tansu: false,
        lenient: false,
        per_answer: usize::MAX,
        twice: false,
        fetches: Cell::new(0),
    }
}

fn exists(s: &Sim, o: i64) -> bool {
    s.batches.iter().any(|(base, recs)| {
        o >= *base && recs.get((o - base) as usize).is_some_and(Option::is_some)
    })
}

const CFG: ReadCfg = ReadCfg {
    fetch_max_bytes: 1 << 20,
    max_channel_len: 100,
};

fn page(s: &Sim, from: i64, to: i64, max_bytes: usize, max_scan: usize) -> Result<ReadPage> {
    let req = ReadReq {
        token: 1,
        channel: Arc::from("c"),
        from,
        to,
        max_bytes,
        max_scan,
    };
    futures_lite::future::block_on(read_page(s, CFG, &req))
}

/// Reads `from..to` page after page, checking each page; the offsets read, and whether any page
/// was truncated.
fn read_all(s: &Sim, from: i64, to: i64, max_bytes: usize, max_scan: usize) -> (Vec<i64>, bool) {
    let (mut got, mut truncated, mut at) = (Vec::new(), false, from);
    for _ in 0..1000 {
        if at >= to {
            return (got, truncated);
        }
        let p = page(s, at, to, max_bytes, max_scan).unwrap_or_else(|e| {
            panic!("page {at}..{to} ({from}..{to}, {max_bytes} B, {max_scan} scans): {e:#}")
        });
        assert!(
            p.next > at || p.truncated,
            "page from {at} made no progress"
        );
        assert!(
            p.next <= to && p.scanned <= max_scan.max(1),
            "page from {at}"
        );
        let size = |o: i64| record(o).value.map_or(0, |v| v.len());
        let bytes: usize = p.records.iter().map(|d| size(d.offset)).sum();
        assert!(
            bytes <= max_bytes || p.records.len() == 1,
            "page from {at}: {bytes} bytes"
        );
        for d in &p.records {
            assert!(
                d.offset >= at && d.offset < p.next,
                "{} in {at}..{}",
                d.offset,
                p.next
            );
            assert_eq!(d.publish.channel, "c");
        }
        got.extend(p.records.iter().map(|d| d.offset));
        truncated |= p.truncated;
        at = p.next;
    }
    panic!("{from}..{to} not read in 1000 pages");
}

#[test]
fn every_broker_behaviour_gives_exactly_the_channel_s_records() {
    for (tansu, per_answer, twice, gaps) in [
        (false, usize::MAX, false, false),
        (true, usize::MAX, false, false),
        (true, 1, false, false),
        (true, 2, true, false),
        (false, 1, true, true),
        (true, usize::MAX, false, true),
        (true, 1, false, true),
        (true, 3, true, true),
    ] {
        let s = Sim {
            tansu,
            per_answer,
            twice,
            ..sim(gaps)
        };
        let case =
            format!("tansu {tansu}, {per_answer} batches an answer, twice {twice}, gaps {gaps}");
        for from in 0..s.end {
            for to in [from + 1, from + 7, s.end] {
                let to = to.min(s.end);
                let want: Vec<i64> = (from..to)
                    .filter(|o| on_channel(*o) && exists(&s, *o))
                    .collect();
                for (max_bytes, max_scan) in [(1 << 20, 1000), (1 << 20, 1), (4, 3), (1, 1000)] {
                    let (got, truncated) = read_all(&s, from, to, max_bytes, max_scan);
                    assert_eq!(
                        got, want,
                        "{case}: {from}..{to}, {max_bytes} B, {max_scan} scans"
                    );
                    assert!(!truncated, "{case}: {from}..{to}");
                }
            }
        }
    }
}

#[test]
fn one_page_scans_the_whole_range_when_the_budgets_allow() {
    let s = Sim {
        tansu: true,
        ..sim(false)
    };
    let p = page(&s, 5, s.end, 1 << 20, 1000).unwrap();
    assert_eq!(
        (p.next, p.scanned, p.truncated),
        (s.end, (s.end - 5) as usize, false)
    );
    // Within one fetch on from the position, plus the back-off into its batch.
    assert!(s.fetches.get() <= 4, "{} fetches", s.fetches.get());
}

#[test]
fn records_removed_by_retention_are_reported() {
    for (tansu, lenient) in [(false, false), (true, false), (true, true), (false, true)] {
        // The log starts at batch 3 (offset 9).
        let s = Sim {
            tansu,
            lenient,
            earliest: 9,
            ..sim(false)
        };
        let case = format!("tansu {tansu}, lenient {lenient}");
        let p = page(&s, 2, s.end, 1 << 20, 1000).unwrap();
        assert!(p.truncated, "{case}");
        let want: Vec<i64> = (9..s.end).filter(|o| on_channel(*o)).collect();
        let got: Vec<i64> = p.records.iter().map(|d| d.offset).collect();
        assert_eq!((got, p.next), (want, s.end), "{case}");
        // All of the range gone: complete, truncated, empty.
        let p = page(&s, 2, 8, 1 << 20, 1000).unwrap();
        assert_eq!(
            (p.records.len(), p.next, p.truncated),
            (0, 8, true),
            "{case}"
        );
        // From the log start on, nothing is missing.
        let p = page(&s, 9, s.end, 1 << 20, 1000).unwrap();
        assert!(!p.truncated, "{case}");
    }
}

#[test]
fn a_log_that_lost_its_tail_ends_the_range_truncated() {
    for tansu in [false, true] {
        let s = Sim {
            tansu,
            ..sim(false)
        };
        let p = page(&s, s.end - 3, s.end + 5, 1 << 20, 1000).unwrap();
        assert_eq!((p.next, p.scanned, p.truncated), (s.end + 5, 3, true));
        let p = page(&s, s.end + 2, s.end + 5, 1 << 20, 1000).unwrap();
        assert_eq!((p.next, p.scanned, p.truncated), (s.end + 5, 0, true));
    }
}

#[test]
fn bad_ranges_are_refused_and_empty_ones_answered_at_once() {
    let s = sim(false);
    assert!(page(&s, 5, 4, 1, 1).is_err());
    assert!(page(&s, -1, 4, 1, 1).is_err());
    let p = page(&s, 4, 4, 1, 1).unwrap();
    assert_eq!((p.next, p.scanned), (4, 0));
    assert_eq!(s.fetches.get(), 0);
}

#[test]
fn a_broker_that_never_answers_usefully_is_given_up_on() {
    // Every answer is empty although the log goes on.
    let s = Sim {
        per_answer: 0,
        ..sim(false)
    };
    let e = page(&s, 3, 10, 1 << 20, 1000).err().expect("an error");
    assert!(format!("{e:#}").contains("no progress"), "{e:#}");
    assert!(s.fetches.get() <= MAX_STALLS as usize + 1);
}
