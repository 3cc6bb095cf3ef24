//! A `loadgen hold` worker process: holds its share of the connections through the phases.
//!
//! Protocol with the main process: the config (`HoldCfg`) comes as the first line on stdin. The
//! worker opens its connections at its share of the ramp and prints `{"connected":PhaseReport}` once
//! each was tried; on a line `subscribe` it sends one subscribe request per connection at its share
//! of the subscribe rate and prints `{"subscribed":PhaseReport}` once each was answered (or timed
//! out); on `stop` or the end of stdin it closes them all and prints
//! `{"done":{"closes":{…},"cpu_secs":…}}`.

use crate::common::emit;
use crate::hold_conn;
use crate::stats;
use crate::ws::Target;
use anyhow::Result;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// One worker's share of the run, as sent by `loadgen hold`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HoldCfg {
    /// This worker's number, of `workers`.
    pub index: usize,
    pub workers: usize,
    /// The gateway's address, Host header and WebSocket path.
    pub addr: SocketAddr,
    pub host: String,
    pub path: String,
    /// All connections of the run; this worker holds `index, index + workers, …`.
    pub conns: usize,
    /// Connection g subscribes to `<room_prefix><g % rooms>`.
    pub rooms: usize,
    pub room_prefix: String,
    /// Connects and subscribe requests per second over all workers.
    pub ramp_per_sec: f64,
    pub subscribe_per_sec: f64,
    /// HS256 secret; connection g's token has sub = `<sub_prefix><g>`, channels = `<room_prefix>*`.
    pub secret: String,
    pub sub_prefix: String,
    /// Source addresses, used round-robin by connection number.
    pub sources: Vec<IpAddr>,
    /// Connect-to-welcome and subscribe-to-reply timeout.
    pub timeout_ms: u64,
}

/// One worker's outcome of a phase: successes, failures by cause, latency (HDR, microseconds,
/// encoded with `stats::encode`).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PhaseReport {
    pub ok: u64,
    pub failed: BTreeMap<String, u64>,
    pub hist: String,
}

/// Where the run is, as seen by every connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening the connections.
    Connect,
    /// Subscribing since this instant; connection k sends its request k intervals later.
    Subscribe(Instant),
    /// Close and end.
    Stop,
}

/// What a worker's connections counted; shared by its tasks (one thread).
pub struct State {
    pub connect: Histogram<u64>,
    pub subscribe: Histogram<u64>,
    pub attempted: usize,
    pub connected: u64,
    pub connect_failed: BTreeMap<String, u64>,
    /// Connected and not ended.
    pub alive: usize,
    pub answered: usize,
    pub subscribed: u64,
    pub subscribe_failed: BTreeMap<String, u64>,
    pub closes: BTreeMap<String, u64>,
}

/// Runs a hold worker: reads its config and then commands from stdin, reports on stdout.
pub fn main() -> Result<()> {
    let cfg: HoldCfg = crate::common::read_config("hold worker config")?;
    let (tx, commands) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if tx.send(line.trim().to_string()).is_err() {
                return;
            }
        }
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, run(cfg, commands))
}

/// Polls until `done` holds or `deadline` passes.
async fn wait_for(deadline: Instant, done: impl Fn() -> bool) {
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn report(ok: u64, failed: &BTreeMap<String, u64>, h: &Histogram<u64>) -> Result<PhaseReport> {
    Ok(PhaseReport {
        ok,
        failed: failed.clone(),
        hist: stats::encode(h)?,
    })
}

async fn run(cfg: HoldCfg, mut commands: mpsc::UnboundedReceiver<String>) -> Result<()> {
    let state = Rc::new(RefCell::new(State {
        connect: stats::histogram(),
        subscribe: stats::histogram(),
        attempted: 0,
        connected: 0,
        connect_failed: BTreeMap::new(),
        alive: 0,
        answered: 0,
        subscribed: 0,
        subscribe_failed: BTreeMap::new(),
        closes: BTreeMap::new(),
    }));
    let mine: Vec<usize> = (cfg.index..cfg.conns).step_by(cfg.workers.max(1)).collect();
    let interval = Duration::from_secs_f64(cfg.workers as f64 / cfg.ramp_per_sec.max(0.001));
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let target = Rc::new(Target {
        addr: cfg.addr,
        host: cfg.host.clone(),
    });
    let cfg = Rc::new(cfg);
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(mine.len());
    for (k, g) in mine.iter().copied().enumerate() {
        let due = start + interval * k as u32;
        let (cfg, target, state, phase) =
            (cfg.clone(), target.clone(), state.clone(), phase_rx.clone());
        tasks.push(tokio::task::spawn_local(async move {
            tokio::time::sleep_until(due).await;
            hold_conn::connection(&cfg, &target, g, k, &state, phase).await;
        }));
    }
    // Every connection was tried within its slot plus the timeout.
    let deadline = start + interval * mine.len() as u32 + timeout + Duration::from_secs(5);
    wait_for(deadline, || state.borrow().attempted >= mine.len()).await;
    {
        let mut s = state.borrow_mut();
        let missing = mine.len().saturating_sub(s.attempted) as u64;
        if missing > 0 {
            *s.connect_failed.entry("not_tried".into()).or_default() += missing;
        }
        emit(serde_json::json!({"connected": report(s.connected, &s.connect_failed, &s.connect)?}));
    }

    let mut cmd = commands.recv().await.unwrap_or_default();
    if cmd == "subscribe" {
        let expected = state.borrow().alive;
        let now = Instant::now();
        let sub_interval =
            Duration::from_secs_f64(cfg.workers as f64 / cfg.subscribe_per_sec.max(0.001));
        let _ = phase_tx.send(Phase::Subscribe(now));
        let deadline = now + sub_interval * mine.len() as u32 + timeout;
        wait_for(deadline, || state.borrow().answered >= expected).await;
        {
            let mut s = state.borrow_mut();
            let missing = expected.saturating_sub(s.answered) as u64;
            if missing > 0 {
                *s.subscribe_failed.entry("no_reply".into()).or_default() += missing;
            }
            let r = report(s.subscribed, &s.subscribe_failed, &s.subscribe)?;
            emit(serde_json::json!({ "subscribed": r }));
        }
        cmd = commands.recv().await.unwrap_or_default();
    }
    while !(cmd == "stop" || cmd.is_empty()) {
        cmd = commands.recv().await.unwrap_or_default();
    }
    let _ = phase_tx.send(Phase::Stop);
    let deadline = Instant::now() + Duration::from_secs(3);
    for t in tasks {
        let _ = tokio::time::timeout_at(deadline, t).await;
    }
    let closes = std::mem::take(&mut state.borrow_mut().closes);
    emit(serde_json::json!({"done": {"closes": closes, "cpu_secs": crate::worker::cpu_secs()}}));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips() {
        let cfg = HoldCfg {
            index: 1,
            workers: 2,
            addr: "127.0.0.1:1".parse().unwrap(),
            host: "127.0.0.1:1".into(),
            path: "/ws".into(),
            conns: 10,
            rooms: 3,
            room_prefix: "room_".into(),
            ramp_per_sec: 100.0,
            subscribe_per_sec: 100.0,
            secret: "s".into(),
            sub_prefix: "u".into(),
            sources: vec!["127.0.0.2".parse().unwrap()],
            timeout_ms: 1000,
        };
        let back: HoldCfg = serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!((back.index, back.sources), (1, cfg.sources));
    }
}
