//! Resuming connections (`--resume`): a stable connection that is closed, reset or cut (a node
//! killed, drained with 1001, a load balancer dropping it) reconnects through the same address and
//! subscribes again with `since` = the last `pos` it saw, as docs/protocol.md tells clients to. Its
//! sequence track lives across the reconnections, so lost and duplicate counts cover every
//! resumed connection; the time from noticing the loss to the resubscribe's `ok` is the reconnect
//! time.

use crate::counts::{close, State};
use crate::open::{open_counted, NotOpened};
use crate::resume_frames::{pos_of, reply_of, subscribe_text, Reply};
use crate::stats::{self, SeqTrack};
use crate::worker::{room_name, WorkerCfg};
use crate::ws::{self, Frame, Target};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// Longest wait between two reconnect attempts (the waits double from 50 ms, with jitter so that
/// a thousand clients of a dead node do not come back in lockstep).
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long a reconnected client waits for the reply to its resubscribe before it tries again.
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A worker's resume counts (kept in `State`).
#[derive(Default)]
pub(crate) struct Counts {
    /// Connections lost and then resumed (the resubscribe answered `ok`).
    pub(crate) reconnects: u64,
    /// Of those, resubscribes with `since` answered `recovered: true`.
    pub(crate) recovered: u64,
    /// Resubscribes with `since` answered `recovered: false`: the gateway could not replay (the
    /// gap then shows as lost messages).
    pub(crate) unrecovered: u64,
    /// Resumes without a `pos` (nothing had arrived yet), so without `since`.
    pub(crate) without_pos: u64,
    /// Attempts that failed (connect refused, HTTP error, the resubscribe refused or unanswered)
    /// before one succeeded.
    pub(crate) failed_attempts: u64,
    /// Time from noticing the loss to the resubscribe's `ok`, in microseconds.
    pub(crate) time: Option<Histogram<u64>>,
}

/// What a worker reports about resumes (one JSON line with its result).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ResumeResult {
    pub reconnects: u64,
    pub recovered: u64,
    pub unrecovered: u64,
    pub without_pos: u64,
    pub failed_attempts: u64,
    /// The reconnect-time histogram (base64 HdrHistogram V2), empty if none.
    pub time_hist: String,
}

impl Counts {
    /// The counts as a worker reports them.
    pub(crate) fn result(&self) -> anyhow::Result<ResumeResult> {
        Ok(ResumeResult {
            reconnects: self.reconnects,
            recovered: self.recovered,
            unrecovered: self.unrecovered,
            without_pos: self.without_pos,
            failed_attempts: self.failed_attempts,
            time_hist: match &self.time {
                Some(h) => stats::encode(h)?,
                None => String::new(),
            },
        })
    }
}

impl ResumeResult {
    /// Adds another worker's counts; `time` collects the histograms.
    pub fn merge(&mut self, other: &ResumeResult, time: &mut Histogram<u64>) -> anyhow::Result<()> {
        self.reconnects += other.reconnects;
        self.recovered += other.recovered;
        self.unrecovered += other.unrecovered;
        self.without_pos += other.without_pos;
        self.failed_attempts += other.failed_attempts;
        if !other.time_hist.is_empty() {
            time.add(stats::decode(&other.time_hist)?)
                .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        }
        Ok(())
    }
}

/// The resume figures of the summary: counts and reconnect time percentiles.
pub fn summary(r: &ResumeResult, time: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "reconnects": r.reconnects,
        "recovered": r.recovered,
        "unrecovered": r.unrecovered,
        "without_pos": r.without_pos,
        "failed_attempts": r.failed_attempts,
        "reconnect_time": crate::report::percentiles(time),
    })
}

/// The resume figures as one line of the text report.
pub fn line(r: &ResumeResult, time: &Histogram<u64>) -> String {
    let ms = |q: f64| time.value_at_quantile(q) as f64 / 1000.0;
    format!(
        "resumed {} times ({} recovered, {} not recoverable, {} without a pos; {} failed attempts); reconnect time p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        r.reconnects, r.recovered, r.unrecovered, r.without_pos, r.failed_attempts,
        ms(0.5), ms(0.99), time.max() as f64 / 1000.0
    )
}

/// The wait before reconnect attempt `n` (0 = at once).
pub fn backoff(n: u32) -> Duration {
    if n == 0 {
        return Duration::ZERO;
    }
    let base = Duration::from_millis(50).saturating_mul(1 << n.min(5));
    base.min(MAX_BACKOFF).mul_f64(rand::random_range(0.5..1.0))
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// How one attempt ended.
enum Outcome {
    /// The run is over.
    Stopped,
    /// Connect or resubscribe failed: try again.
    Failed,
    /// The connection was up (resubscribed) and then ended: resume.
    Lost,
}

/// A stable connection that resumes until the run stops. Its track is added to the worker's when
/// it ends, unless its first connect failed.
pub(crate) async fn connection(
    cfg: &WorkerCfg,
    target: &Target,
    g: usize,
    state: &Rc<RefCell<State>>,
    mut stop: watch::Receiver<bool>,
) {
    let room = g % cfg.rooms;
    let mut c = Conn {
        room,
        room_name: room_name(&cfg.room_prefix, room),
        track: SeqTrack::default(),
        pos: None,
        requests: 0,
    };
    // The first connection counts like any other loadgen connection: no retries.
    match c.attempt(cfg, target, g, state, &mut stop, None).await {
        Outcome::Stopped => {}
        Outcome::Failed => return,
        Outcome::Lost => c.resume(cfg, target, g, state, &mut stop).await,
    }
    state.borrow_mut().tracks.push((room, c.track));
}

/// One resuming connection's progress through its room.
struct Conn {
    room: usize,
    room_name: String,
    track: SeqTrack,
    /// The last `pos` received, for `since`.
    pos: Option<String>,
    /// Subscribe requests sent (their ids).
    requests: u64,
}

impl Conn {
    /// Reconnects after each loss until the run stops.
    async fn resume(
        &mut self,
        cfg: &WorkerCfg,
        target: &Target,
        g: usize,
        state: &Rc<RefCell<State>>,
        stop: &mut watch::Receiver<bool>,
    ) {
        let mut lost_at = Instant::now();
        let mut n = 0;
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(backoff(n)) => {}
            }
            match self
                .attempt(cfg, target, g, state, stop, Some(lost_at))
                .await
            {
                Outcome::Stopped => return,
                Outcome::Failed => {
                    n += 1;
                    state.borrow_mut().resume.failed_attempts += 1;
                }
                Outcome::Lost => {
                    n = 0;
                    lost_at = Instant::now();
                }
            }
        }
    }

    /// Connects, subscribes (with `since` when resuming) and reads until the connection ends.
    /// `lost_at` is when the previous connection was lost (None for the first one).
    async fn attempt(
        &mut self,
        cfg: &WorkerCfg,
        target: &Target,
        g: usize,
        state: &Rc<RefCell<State>>,
        stop: &mut watch::Receiver<bool>,
        lost_at: Option<Instant>,
    ) -> Outcome {
        let first = lost_at.is_none();
        let opened = open_counted(cfg, target, g, &self.room_name, state, stop, first).await;
        let (mut stream, rest) = match opened {
            Ok(v) => v,
            Err(NotOpened::Stopped) => return Outcome::Stopped,
            Err(NotOpened::Failed) => return Outcome::Failed,
        };
        self.requests += 1;
        let since = if first { None } else { self.pos.as_deref() };
        let req = subscribe_text(&self.room_name, self.requests, since);
        if stream
            .write_all(&ws::client_frame(1, req.as_bytes()))
            .await
            .is_err()
        {
            close(state, "write_error");
            return if first {
                Outcome::Lost
            } else {
                Outcome::Failed
            };
        }
        let mut answered = first;
        let reply_deadline = tokio::time::Instant::now() + REPLY_TIMEOUT;
        let mut reader = ws::Reader::new(rest, 4096);
        let why = 'conn: loop {
            while let Some(frame) = match reader.next() {
                Ok(f) => f,
                Err(_) => break 'conn "protocol_error",
            } {
                match frame {
                    Frame::Text(p) => {
                        if let Some(reply) = reply_of(p) {
                            if answered {
                                continue;
                            }
                            let recovered = match reply {
                                Reply::Ok(r) => r,
                                Reply::Refused(why) => {
                                    close(state, &format!("resubscribe refused ({why})"));
                                    break 'conn "";
                                }
                            };
                            answered = true;
                            let mut s = state.borrow_mut();
                            let r = &mut s.resume;
                            r.reconnects += 1;
                            match recovered {
                                Some(true) => r.recovered += 1,
                                Some(false) => r.unrecovered += 1,
                                None => r.without_pos += 1,
                            }
                            let took = lost_at.map_or(0, |t| t.elapsed().as_micros() as u64);
                            stats::record(r.time.get_or_insert_with(stats::histogram), took);
                            continue;
                        }
                        self.on_message(p, state);
                    }
                    Frame::Ping(p) => {
                        if stream.write_all(&ws::client_frame(0xa, p)).await.is_err() {
                            break 'conn "write_error";
                        }
                    }
                    Frame::Close(code) => {
                        let label = code.map_or("close_no_code".into(), |c| c.to_string());
                        close(state, &label);
                        break 'conn "";
                    }
                    // Never compressed: --deflate and --resume exclude each other.
                    Frame::Binary | Frame::Packed(_) | Frame::Pong => {}
                }
            }
            let reply_wait = async {
                if answered {
                    std::future::pending().await
                } else {
                    tokio::time::sleep_until(reply_deadline).await
                }
            };
            tokio::select! {
                _ = stop.changed() => {
                    goodbye(&mut stream).await;
                    return Outcome::Stopped;
                }
                _ = reply_wait => break 'conn "resubscribe_timeout",
                r = reader.fill(&mut stream) => match r {
                    Ok(true) => {}
                    Ok(false) => break 'conn "eof",
                    Err(_) => break 'conn "reset",
                },
            }
        };
        if !why.is_empty() {
            close(state, why);
        }
        if answered {
            Outcome::Lost
        } else {
            Outcome::Failed
        }
    }

    /// A room message: sequence accounting, latency, and its `pos` for the next `since`.
    fn on_message(&mut self, p: &[u8], state: &Rc<RefCell<State>>) {
        let (Some(seq), Some(t)) = (
            ws::number_after(p, br#""s":"#),
            ws::number_after(p, br#""t":"#),
        ) else {
            return;
        };
        if let Some(pos) = pos_of(p) {
            if self.pos.as_deref() != Some(pos) {
                self.pos = Some(pos.to_string());
            }
        }
        self.track.on(seq);
        let now = now_ns();
        let mut s = state.borrow_mut();
        if let Some(h) = s.delivery.as_mut() {
            stats::record(h, now.saturating_sub(t) / 1000);
        }
        let e = s.last_rx.entry((self.room as u32, seq)).or_default();
        *e = (*e).max(now);
    }
}

/// Ends a connection at the end of the run: our close frame, then a short wait for the server's.
async fn goodbye(stream: &mut TcpStream) {
    let _ = stream
        .write_all(&ws::client_frame(0x8, &1000u16.to_be_bytes()))
        .await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_bound() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert!(backoff(1) <= Duration::from_millis(100));
        for n in 1..40 {
            assert!(backoff(n) <= MAX_BACKOFF);
        }
    }

    #[test]
    fn a_track_across_resumes_counts_gaps_and_repeats() {
        // The first connection saw 0..=4; the resumed one replays from 5 (no gap, no repeat),
        // then a repeat (a record read twice) and a gap.
        let mut t = SeqTrack::default();
        (0..5).for_each(|s| t.on(s));
        (5..8).for_each(|s| t.on(s));
        t.on(7);
        t.on(9);
        t.finish(10);
        assert_eq!((t.received, t.lost, t.duplicates), (10, 1, 1));
    }
}
