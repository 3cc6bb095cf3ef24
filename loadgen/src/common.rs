//! Helpers shared by loadgen's modes (`loadgen` and `loadgen hold`): the target URL, the descriptor
//! limit, tokens, process CPU time, and worker processes that report JSON lines.

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;

/// ws://host:port/path -> (address, host header, path).
pub fn parse_url(url: &str) -> Result<(SocketAddr, String, String)> {
    let rest = url
        .strip_prefix("ws://")
        .with_context(|| format!("--url must start with ws:// (got {url:?})"))?;
    let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
    let addr = hostport
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {hostport:?} in --url"))?
        .next()
        .with_context(|| format!("no address for {hostport:?}"))?;
    Ok((addr, hostport.to_string(), format!("/{path}")))
}

/// The hard RLIMIT_NOFILE: how many sockets one process may hold.
pub fn nofile() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    lim.rlim_max as usize
}

/// Worker processes needed for `conns` sockets under RLIMIT_NOFILE (or `wanted`, checked).
pub fn worker_count(conns: usize, wanted: Option<usize>) -> Result<usize> {
    let per_process = nofile().saturating_sub(200).max(100);
    let workers = wanted.unwrap_or(conns.div_ceil(per_process)).max(1);
    if conns.div_ceil(workers) > per_process {
        anyhow::bail!(
            "{workers} workers cannot hold {conns} connections under RLIMIT_NOFILE {}",
            nofile()
        );
    }
    Ok(workers)
}

/// Another process's user+system CPU time in seconds, from /proc.
pub fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    Some((fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / tick)
}

/// An HS256 token valid for a day.
pub fn mint(
    secret: &str,
    sub: &str,
    channels: Vec<String>,
    publish: Option<Vec<String>>,
) -> Result<String> {
    let claims = gateway::auth::Claims {
        sub: sub.to_string(),
        exp: gateway::message::now_ms() / 1000 + 24 * 3600,
        nbf: None,
        channels: Some(channels),
        publish,
    };
    gateway::auth::mint_hs256(secret, &claims)
}

/// What a worker process said: one parsed JSON line, or that its stdout ended.
pub enum Event {
    Line(usize, Value),
    Exit(usize),
}

/// A worker process and the pipe that commands it.
pub struct Worker {
    pub child: Child,
    pub stdin: ChildStdin,
}

/// Starts `loadgen <subcommand>` as worker `index`, sends it `cfg` as its first stdin line, and
/// forwards every JSON line it prints to `tx` (then `Event::Exit` when its stdout closes).
pub fn spawn_worker(
    subcommand: &str,
    index: usize,
    cfg: &impl Serialize,
    tx: &mpsc::Sender<Event>,
) -> Result<Worker> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(&exe)
        .arg(subcommand)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting a worker process")?;
    let mut stdin = child.stdin.take().context("worker stdin")?;
    writeln!(stdin, "{}", serde_json::to_string(cfg)?)?;
    let stdout = child.stdout.take().context("worker stdout")?;
    let tx = tx.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(Event::Line(index, v));
            }
        }
        let _ = tx.send(Event::Exit(index));
    });
    Ok(Worker { child, stdin })
}

/// One JSON report line on stdout, flushed at once (the parent reads them as they come).
pub fn emit(v: Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// A worker's configuration: the first line of its stdin, as JSON.
pub fn read_config<T: serde::de::DeserializeOwned>(what: &str) -> Result<T> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    serde_json::from_str(&line).with_context(|| what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_errors_are_clear() {
        let e = parse_url("http://x/ws").unwrap_err();
        assert!(format!("{e:#}").contains("ws://"));
        let e = parse_url("ws://no-such-host.invalid:1/ws").unwrap_err();
        assert!(format!("{e:#}").contains("resolve"));
        let (addr, host, path) = parse_url("ws://127.0.0.1:8080/sub").unwrap();
        assert_eq!(
            (addr.port(), host.as_str(), path.as_str()),
            (8080, "127.0.0.1:8080", "/sub")
        );
    }

    #[test]
    fn workers_fit_the_descriptor_limit() {
        assert_eq!(worker_count(10, None).unwrap(), 1);
        assert_eq!(worker_count(10, Some(3)).unwrap(), 3);
        let too_many = nofile() * 4;
        assert!(worker_count(too_many, Some(1)).is_err());
        assert!(worker_count(too_many, None).unwrap() >= 4);
    }
}
