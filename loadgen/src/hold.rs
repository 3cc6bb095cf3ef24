//! `loadgen hold`: connections in separate phases, to measure what connections and subscriptions
//! cost the server (memory, cross-shard messages) rather than how fast it delivers. Nothing is
//! published.
//!
//! 1. connect: every connection is opened at the ramp rate and waits for the gateway's `welcome`
//!    (latency = TCP connect to welcome frame);
//! 2. subscribe: each connection subscribes to one room (round-robin) and waits for its reply;
//! 3. hold: the connections stay open and idle (answering pings) until told to stop.
//!
//! It is driven over stdin and stdout so that a script can measure the server between phases: one
//! JSON line on stdout as each phase ends (`{"phase":"connected",…}`, `{"phase":"subscribed",…}`,
//! `{"phase":"done",…}`); a line `subscribe` on stdin starts phase 2, `stop` (or the end of stdin)
//! ends the run. With `--auto SECS` stdin is not read: it waits SECS between the phases and holds for
//! SECS before stopping.

use crate::common::{self, Event};
use crate::hold_worker::{HoldCfg, PhaseReport};
use crate::{report, stats};
use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Connect, subscribe and hold idle in separate phases (see `loadgen hold` in the README).
#[derive(Parser, Debug)]
#[command(name = "loadgen hold")]
pub struct HoldArgs {
    /// The gateway's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Connections to open, each as its own user (sub = <sub-prefix><i>).
    #[arg(long, default_value_t = 1000)]
    conns: usize,
    /// New connections per second.
    #[arg(long, default_value_t = 2000.0)]
    ramp: f64,
    /// Subscribe requests per second in phase 2.
    #[arg(long, default_value_t = 2000.0)]
    subscribe_rate: f64,
    /// Rooms; connection i subscribes to <room-prefix><i % rooms>.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Room names are this prefix and a number.
    #[arg(long, default_value = "room_")]
    room_prefix: String,
    /// HS256 secret to mint the tokens (their `channels` claim is <room-prefix>*).
    #[arg(long, default_value = gateway::config::DEV_JWT_SECRET)]
    secret: String,
    /// User ids are this prefix and the connection's number.
    #[arg(long, default_value = "hold")]
    sub_prefix: String,
    /// Source addresses to spread connections over, e.g. 127.0.0.1,127.0.0.2 (more ephemeral ports).
    #[arg(long, value_delimiter = ',')]
    source_ips: Vec<IpAddr>,
    /// Worker processes (default: enough to stay under RLIMIT_NOFILE).
    #[arg(long)]
    workers: Option<usize>,
    /// Time allowed from TCP connect to the welcome frame, and for a subscribe reply.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Do not read stdin: wait this many seconds between phases and hold this long before stopping.
    #[arg(long)]
    auto: Option<f64>,
}

/// Parses `loadgen hold …` and runs it.
pub fn main() -> Result<()> {
    let args = HoldArgs::parse_from(
        std::iter::once("loadgen hold".to_string()).chain(std::env::args().skip(2)),
    );
    run(&args)
}

/// What the controlling script asked for next.
#[derive(Debug, PartialEq, Eq)]
enum Command {
    Subscribe,
    Stop,
}

/// Commands from stdin (`subscribe`, `stop`; the end of stdin is `stop`), or timed with `--auto`.
struct Commands {
    rx: Option<mpsc::Receiver<Command>>,
    auto: Duration,
}

impl Commands {
    fn new(auto: Option<f64>) -> Commands {
        if let Some(secs) = auto {
            return Commands {
                rx: None,
                auto: Duration::from_secs_f64(secs.max(0.0)),
            };
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines().map_while(Result::ok) {
                let cmd = match line.trim() {
                    "subscribe" => Command::Subscribe,
                    "stop" => Command::Stop,
                    "" => continue,
                    other => {
                        eprintln!("loadgen hold: unknown command {other:?} (subscribe, stop)");
                        continue;
                    }
                };
                if tx.send(cmd).is_err() {
                    return;
                }
            }
            let _ = tx.send(Command::Stop);
        });
        Commands {
            rx: Some(rx),
            auto: Duration::ZERO,
        }
    }

    /// The next command; with `--auto`, `timed` after the pause.
    fn next(&self, timed: Command) -> Command {
        match &self.rx {
            Some(rx) => rx.recv().unwrap_or(Command::Stop),
            None => {
                std::thread::sleep(self.auto);
                timed
            }
        }
    }
}

fn print_line(v: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}")?;
    out.flush()?;
    Ok(())
}

/// Waits for every worker's line carrying `key`; a worker that exits first is an error.
fn collect(
    rx: &mpsc::Receiver<Event>,
    workers: usize,
    key: &str,
    timeout: Duration,
) -> Result<Vec<Value>> {
    let mut got: Vec<Option<Value>> = vec![None; workers];
    let deadline = Instant::now() + timeout;
    while got.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Line(i, mut v)) => {
                if let Some(x) = v.get_mut(key) {
                    got[i] = Some(x.take());
                }
            }
            Ok(Event::Exit(i)) if got[i].is_none() => {
                bail!("worker {i} exited before reporting {key:?}")
            }
            Ok(Event::Exit(_)) => {}
            Err(_) => bail!("workers did not report {key:?} within {timeout:?}"),
        }
    }
    Ok(got.into_iter().flatten().collect())
}

/// Merges the workers' reports of one phase into the line printed for it.
fn merge(phase: &str, requested: usize, secs: f64, parts: &[Value]) -> Result<Value> {
    let mut hist = stats::histogram();
    let mut ok = 0;
    let mut failed: BTreeMap<String, u64> = BTreeMap::new();
    for p in parts {
        let r: PhaseReport = serde_json::from_value(p.clone()).context("worker phase report")?;
        hist.add(stats::decode(&r.hist)?)
            .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))?;
        ok += r.ok;
        for (k, v) in r.failed {
            *failed.entry(k).or_default() += v;
        }
    }
    Ok(json!({
        "phase": phase,
        "requested": requested,
        "ok": ok,
        "failed": failed,
        "secs": secs,
        "latency": report::percentiles(&hist),
    }))
}

/// Runs the three phases with worker processes holding the sockets.
pub fn run(args: &HoldArgs) -> Result<()> {
    if args.conns == 0 || args.rooms == 0 || args.ramp <= 0.0 || args.subscribe_rate <= 0.0 {
        bail!("--conns, --rooms, --ramp and --subscribe-rate must be positive");
    }
    let (addr, host, path) = common::parse_url(&args.url)?;
    let workers = common::worker_count(args.conns, args.workers)?;
    let commands = Commands::new(args.auto);
    let (tx, rx) = mpsc::channel::<Event>();
    let mut procs = Vec::with_capacity(workers);
    for index in 0..workers {
        let cfg = HoldCfg {
            index,
            workers,
            addr,
            host: host.clone(),
            path: path.clone(),
            conns: args.conns,
            rooms: args.rooms,
            room_prefix: args.room_prefix.clone(),
            ramp_per_sec: args.ramp,
            subscribe_per_sec: args.subscribe_rate,
            secret: args.secret.clone(),
            sub_prefix: args.sub_prefix.clone(),
            sources: args.source_ips.clone(),
            timeout_ms: args.timeout_ms,
        };
        procs.push(common::spawn_worker("hold-worker", index, &cfg, &tx)?);
    }
    let slack = Duration::from_millis(args.timeout_ms) + Duration::from_secs(30);

    let started = Instant::now();
    let connect_time = Duration::from_secs_f64(args.conns as f64 / args.ramp);
    let parts = collect(&rx, workers, "connected", connect_time + slack)?;
    let secs = started.elapsed().as_secs_f64();
    let connected = merge("connected", args.conns, secs, &parts)?;
    print_line(&connected)?;
    let connected = connected["ok"].as_u64().unwrap_or(0);
    if connected == 0 {
        // Dropping the workers' stdin stops them.
        bail!(
            "no connection was made to {} (see \"failed\" above)",
            args.url
        );
    }

    let mut cmd = commands.next(Command::Subscribe);
    if cmd == Command::Subscribe {
        for w in procs.iter_mut() {
            writeln!(w.stdin, "subscribe").context("commanding a worker")?;
        }
        let started = Instant::now();
        let sub_time = Duration::from_secs_f64(args.conns as f64 / args.subscribe_rate);
        let parts = collect(&rx, workers, "subscribed", sub_time + slack)?;
        let secs = started.elapsed().as_secs_f64();
        print_line(&merge("subscribed", connected as usize, secs, &parts)?)?;
        cmd = commands.next(Command::Stop);
    }
    while cmd != Command::Stop {
        eprintln!("loadgen hold: already subscribed; waiting for stop");
        cmd = commands.next(Command::Stop);
    }

    for w in procs.iter_mut() {
        let _ = writeln!(w.stdin, "stop");
    }
    let parts = collect(&rx, workers, "done", Duration::from_secs(30))?;
    let mut closes: BTreeMap<String, u64> = BTreeMap::new();
    let mut cpu = crate::worker::cpu_secs();
    for p in &parts {
        for (k, v) in p["closes"].as_object().into_iter().flatten() {
            *closes.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
        }
        cpu += p["cpu_secs"].as_f64().unwrap_or(0.0);
    }
    for mut w in procs {
        let _ = w.child.wait();
    }
    print_line(&json!({
        "phase": "done",
        "closes_while_held": closes,
        "client_cpu_secs": cpu,
        "workers": workers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        let a =
            HoldArgs::try_parse_from(["loadgen hold", "--conns", "5", "--auto", "0.5"]).unwrap();
        assert_eq!((a.conns, a.rooms, a.auto), (5, 100, Some(0.5)));
        let a = HoldArgs::try_parse_from(["x", "--source-ips", "127.0.0.1,127.0.0.2"]).unwrap();
        assert_eq!(a.source_ips.len(), 2);
        assert!(HoldArgs::try_parse_from(["x", "--conns", "many"]).is_err());
        let zero = HoldArgs::try_parse_from(["x", "--rooms", "0"]).unwrap();
        assert!(format!("{:#}", run(&zero).unwrap_err()).contains("positive"));
    }

    #[test]
    fn merges_phase_reports() {
        let mut h = stats::histogram();
        stats::record(&mut h, 2000);
        let part = |ok, failed: &[(&str, u64)]| {
            serde_json::to_value(PhaseReport {
                ok,
                failed: failed.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
                hist: stats::encode(&h).unwrap(),
            })
            .unwrap()
        };
        let m = merge(
            "connected",
            10,
            1.5,
            &[part(4, &[("timeout", 1)]), part(5, &[("timeout", 1)])],
        )
        .unwrap();
        assert_eq!(m["ok"], 9);
        assert_eq!(m["failed"]["timeout"], 2);
        assert_eq!(m["latency"]["count"], 2);
        assert_eq!(m["latency"]["p50_ms"], 2.0);
    }
}
