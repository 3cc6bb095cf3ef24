//! loadgen: drives the gateway (or Nchan) with tens of thousands of WebSocket connections spread over
//! rooms, publishes open-loop at a fixed rate, and reports HDR latency histograms.
//!
//! The main process spawns worker processes (each holds its share of the sockets, under its own
//! RLIMIT_NOFILE), runs the publisher, then merges the workers' histograms and counts.
//! `loadgen hold` (see `hold`) instead connects, subscribes and holds idle in separate phases.

mod args;
mod common;
mod counts;
mod hold;
mod hold_conn;
mod hold_worker;
mod open;
mod publish;
mod report;
mod resume;
mod resume_frames;
mod stalled;
mod stats;
mod worker;
mod ws;

use anyhow::{bail, Context, Result};
use args::Args;
use clap::Parser;
use common::{mint, parse_url, proc_cpu, Event};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::io::Write;
use std::net::ToSocketAddrs;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use worker::{Server, WorkerCfg};

fn main() {
    let (who, result, code) = match std::env::args().nth(1).as_deref() {
        Some("worker") => ("loadgen worker", worker::main(), 1),
        Some("hold-worker") => ("loadgen hold-worker", hold_worker::main(), 1),
        Some("hold") => ("loadgen hold: error", hold::main(), 2),
        _ => ("loadgen: error", run(Args::parse()), 2),
    };
    if let Err(e) = result {
        eprintln!("{who}: {e:#}");
        std::process::exit(code);
    }
}

fn run(args: Args) -> Result<()> {
    if args.conns == 0 || args.rooms == 0 || args.rate <= 0.0 || args.duration <= 0.0 {
        bail!("--conns, --rooms, --rate and --duration must be positive");
    }
    if !(0.0..1.0).contains(&args.churn) || args.churn_lifetime <= 0.0 {
        bail!("--churn must be in [0, 1) and --churn-lifetime positive");
    }
    let (addr, host, path) = parse_url(&args.url)?;
    let mode = args.publish.unwrap_or(match args.server {
        Server::Gateway => publish::Mode::Http,
        Server::Nchan => publish::Mode::Nchan,
    });
    let tokens: Vec<String> = match (&args.token_file, args.server) {
        (Some(f), _) => std::fs::read_to_string(f)
            .with_context(|| format!("reading --token-file {}", f.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        (None, Server::Gateway) => {
            let channels = vec![format!("{}*", args.room_prefix)];
            (0..args.conns)
                .map(|i| {
                    mint(
                        &args.secret,
                        &format!("{}{i}", args.sub_prefix),
                        channels.clone(),
                        None,
                    )
                })
                .collect::<Result<_>>()?
        }
        (None, Server::Nchan) => vec![String::new()],
    };
    if tokens.is_empty() {
        bail!("--token-file has no tokens");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();

    // Preflight: a clear error for a wrong URL, a refused token, a server that is not there.
    let target = ws::Target {
        addr,
        host: host.clone(),
    };
    let probe_path = match args.server {
        Server::Gateway => format!("{path}?token={}", tokens[0]),
        Server::Nchan => format!("{path}?id={}0", args.room_prefix),
    };
    match local.block_on(&rt, ws::connect(&target, None, &probe_path)) {
        Ok(_) => {}
        Err(ws::ConnectError::Refused) => bail!("nothing is listening at {} ({addr})", args.url),
        Err(ws::ConnectError::Http(401)) => {
            bail!("the server refused the token (HTTP 401): check --secret or --token-file")
        }
        Err(ws::ConnectError::Http(404)) => bail!("no WebSocket endpoint at {path} on {addr}"),
        Err(e) => bail!("test connection to {} failed: {}", args.url, e.label()),
    }

    let all_conns = args.conns + args.stalled;
    let workers = common::worker_count(all_conns, args.workers)?;
    let (tx, rx) = mpsc::channel::<Event>();
    let mut procs = Vec::with_capacity(workers);
    for index in 0..workers {
        let cfg = WorkerCfg {
            index,
            workers,
            server: args.server,
            addr,
            host: host.clone(),
            path: path.clone(),
            conns: args.conns,
            rooms: args.rooms,
            room_prefix: args.room_prefix.clone(),
            ramp_per_sec: args.ramp,
            tokens: tokens.clone(),
            sources: args.source_ips.clone(),
            connect_timeout_ms: args.connect_timeout_ms,
            stalled: args.stalled,
            stalled_recv_buffer: (args.stalled_recv_buffer > 0).then_some(args.stalled_recv_buffer),
            churn_fraction: args.churn,
            churn_lifetime_ms: (args.churn_lifetime * 1000.0) as u64,
            deflate: args.deflate,
            resume: args.resume,
        };
        procs.push(common::spawn_worker("worker", index, &cfg, &tx)?);
    }

    // Ramp-up.
    let quiet = args.json;
    let bar = |len: u64, msg: &str| {
        let b = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(len)
        };
        b.set_style(
            ProgressStyle::with_template(
                "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b.set_message(msg.to_string());
        b
    };
    let ramp_bar = bar(all_conns as u64, "connecting");
    let mut attempted = vec![0u64; workers];
    let mut ready = 0;
    while ready < workers {
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(Event::Line(i, v)) => {
                if let Some(p) = v.get("progress") {
                    attempted[i] = p["attempted"].as_u64().unwrap_or(0);
                    ramp_bar.set_position(attempted.iter().sum());
                } else if v.get("ready").is_some() {
                    ready += 1;
                }
            }
            Ok(Event::Exit(i)) => bail!("worker {i} exited during ramp-up"),
            Err(_) => bail!("ramp-up stalled (no progress for 120 s)"),
        }
    }
    ramp_bar.finish();
    std::thread::sleep(Duration::from_secs_f64(args.warmup));

    // Publish.
    let publish_addr = match mode {
        publish::Mode::Ws => Some(addr),
        publish::Mode::Http | publish::Mode::Nchan => Some(
            args.publish_addr
                .to_socket_addrs()
                .with_context(|| format!("cannot resolve --publish-addr {}", args.publish_addr))?
                .next()
                .context("--publish-addr has no address")?,
        ),
        publish::Mode::Kafka => None,
    };
    let ws_token = if mode == publish::Mode::Ws {
        let pattern = vec![format!("{}*", args.room_prefix)];
        mint(
            &args.secret,
            "loadgen-publisher",
            pattern.clone(),
            Some(pattern),
        )?
    } else {
        String::new()
    };
    let plan = publish::Plan {
        mode,
        rate: args.rate,
        duration: Duration::from_secs_f64(args.duration),
        rooms: args.rooms,
        random_rooms: args.random_rooms,
        room_prefix: args.room_prefix.clone(),
        payload_bytes: args.payload_bytes,
        payload_json: args.payload_json,
        connections: args.publishers,
        addr: publish_addr,
        api_key: args.api_key.clone(),
        ws_path: path.clone(),
        ws_token,
        kafka_brokers: args.kafka_brokers.clone(),
        kafka_topic: args.kafka_topic.clone(),
    };
    let total = (args.rate * args.duration).round() as u64;
    let pub_bar = bar(total, "publishing");
    let server_cpu0 = args.server_pid.and_then(proc_cpu);
    let started = Instant::now();
    let sent = local.block_on(&rt, publish::run(&plan, |n| pub_bar.set_position(n)))?;
    let publish_secs = started.elapsed().as_secs_f64();
    pub_bar.finish();
    std::thread::sleep(Duration::from_secs_f64(args.drain));
    let server_cpu = args
        .server_pid
        .and_then(proc_cpu)
        .zip(server_cpu0)
        .map(|(b, a)| b - a);

    // Stop and collect.
    let per_room = serde_json::to_string(&sent.per_room)?;
    for w in procs.iter_mut() {
        let _ = writeln!(w.stdin, "stop {per_room}");
    }
    let mut results = Vec::new();
    let mut reported = vec![false; workers];
    while results.len() < workers {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Event::Line(i, v)) => {
                if let Some(r) = v.get("result") {
                    results.push(serde_json::from_value::<stats::WorkerResult>(r.clone())?);
                    reported[i] = true;
                }
            }
            Ok(Event::Exit(i)) if !reported[i] => bail!("worker {i} exited without a result"),
            Ok(Event::Exit(_)) => {}
            Err(_) => bail!("workers did not report within 60 s"),
        }
    }
    for mut w in procs {
        let _ = w.child.wait();
    }
    let merged = stats::merge(&results)?;
    let mut last = stats::histogram();
    for ((room, seq), due) in &sent.due_ns {
        if let Some(t) = merged.last_rx.get(&(*room, *seq)) {
            stats::record(&mut last, t.saturating_sub(*due) / 1000);
        }
    }
    // Every stable (non-churning) member must receive every message of its room.
    let mut members = vec![0u64; args.rooms];
    for g in (0..args.conns).filter(|g| !worker::churns(*g, args.churn)) {
        members[g % args.rooms] += 1;
    }
    let expected: u64 = sent
        .per_room
        .iter()
        .map(|(room, n)| n * members.get(*room).copied().unwrap_or(0))
        .sum();
    let stable = members.iter().sum::<u64>();
    let client_cpu = merged.worker_cpu_secs + worker::cpu_secs();
    // Per-delivery costs count what churning connections received too.
    let all_received = (merged.received + merged.churn_received).max(1) as f64;
    let summary = json!({
        "server": format!("{:?}", args.server).to_lowercase(),
        "url": args.url,
        "publish": format!("{mode:?}").to_lowercase(),
        "connections": {"requested": args.conns, "connected": merged.connected, "failed": merged.failed},
        "rooms": args.rooms,
        "rate": args.rate,
        "duration_secs": args.duration,
        "published": total,
        "publish_errors": sent.errors,
        "publish_first_error": sent.first_error,
        "deliveries": merged.received,
        "expected_deliveries": expected,
        "deliveries_per_sec": merged.received as f64 / publish_secs,
        "lost": merged.lost,
        "duplicates": merged.duplicates,
        "closes": merged.closes,
        "churn": {
            "fraction": args.churn,
            "mean_lifetime_secs": args.churn_lifetime,
            "stable_connections": stable,
            "reconnects": merged.churn_cycles,
            "received": merged.churn_received,
        },
        "stalled": {"connections": args.stalled, "ended": merged.stalled},
        "resume": resume::summary(&merged.resume, &merged.reconnect),
        "latency": {
            "connect": report::percentiles(&merged.connect),
            "delivery": report::percentiles(&merged.delivery),
            "last_member": report::percentiles(&last),
        },
        "client_cpu_secs": client_cpu,
        "client_cpu_us_per_delivery": client_cpu * 1e6 / all_received,
        "server_cpu_secs": server_cpu,
        "server_cpu_us_per_delivery": server_cpu.map(|c| c * 1e6 / all_received),
        "deflate": args.deflate,
        "frame_bytes_per_delivery": merged.frame_bytes as f64 / all_received,
        "workers": workers,
    });
    let rows = [
        ("connect + upgrade", &merged.connect),
        ("delivery (send -> each)", &merged.delivery),
        ("last member (per message)", &last),
    ];
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("\n{}", report::table(&rows));
        println!(
            "connections {} of {} (failed: {:?}); published {} ({} errors); deliveries {} of {} expected, {:.0}/s; lost {}, duplicates {}; closes {:?}",
            merged.connected, args.conns, merged.failed, total, sent.errors, merged.received,
            expected, merged.received as f64 / publish_secs, merged.lost, merged.duplicates, merged.closes
        );
        if let Some(e) = &sent.first_error {
            println!("first publish error: {e}");
        }
        if args.churn > 0.0 {
            println!(
                "churn: {} of {} connections stable (checked for loss); {} reconnects, {} messages to churning connections",
                stable, args.conns, merged.churn_cycles, merged.churn_received
            );
        }
        if args.resume {
            println!("{}", resume::line(&merged.resume, &merged.reconnect));
        }
        if args.stalled > 0 {
            println!(
                "stalled connections: {}; ended {:?}",
                args.stalled, merged.stalled
            );
        }
        print!(
            "client CPU {client_cpu:.2} s ({:.2} us per delivery)",
            client_cpu * 1e6 / all_received
        );
        match server_cpu {
            Some(c) => println!(
                ", server CPU {c:.2} s ({:.2} us per delivery)",
                c * 1e6 / all_received
            ),
            None => println!(),
        }
    }
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(
            dir.join("summary.json"),
            serde_json::to_string_pretty(&summary)?,
        )?;
        for (name, h) in [
            ("connect", &merged.connect),
            ("delivery", &merged.delivery),
            ("last_member", &last),
        ] {
            std::fs::write(dir.join(format!("{name}.hgrm")), report::hgrm(h))?;
        }
        let title = format!(
            "{} conns, {} rooms, {}/s ({:?})",
            args.conns, args.rooms, args.rate, args.server
        );
        report::plot(&dir.join("latency.svg"), &title, &rows[1..])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_errors() {
        let bad = Args::try_parse_from(["loadgen", "--conns", "many"]);
        assert!(bad.is_err());
        let bad = Args::try_parse_from(["loadgen", "--publish", "carrier-pigeon"]);
        assert!(bad.is_err());
        let ok = Args::try_parse_from([
            "loadgen",
            "--server",
            "nchan",
            "--url",
            "ws://127.0.0.1:1/sub",
        ])
        .unwrap();
        assert_eq!(ok.server, Server::Nchan);
        let zero = Args::try_parse_from(["loadgen", "--conns", "0"]).unwrap();
        assert!(format!("{:#}", run(zero).unwrap_err()).contains("positive"));
    }
}
