//! The floor: what writing the gateway's deliveries costs when nothing else is done.
//!
//! `floor` holds N loopback TCP connections (the server ends; a child process pinned to another
//! CPU holds and reads the client ends) and writes the same pre-built WebSocket text frame to them
//! in the pattern of a benchmark run: connection g is in room g % rooms, the rooms get
//! `rooms x per-conn-rate` messages per second between them, open loop, and every message is one
//! `send` to each member of its room. `--frames-per-send K` instead sends K frames in one `send`
//! (a perfectly coalesced writer). It prints one JSON object: frames written, the sender's CPU
//! time (utime + stime, as the benchmark reads the servers') and the CPU per frame and per send.
//!
//! On loopback the sender's `send` also runs the receiving socket's TCP input, so this is the
//! least a server can spend per frame at one frame per send (bench/README.md).

mod recv;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Writes pre-built WebSocket frames to loopback sockets, one send per frame, and reports the
/// CPU it took.
#[derive(Parser, Debug)]
#[command(version, about)]
pub struct Args {
    /// Connections (server ends held here, client ends in the reader process).
    #[arg(long, default_value_t = 5000)]
    pub conns: usize,
    /// Connections per room; connection g is in room g % (conns / room_size).
    #[arg(long, default_value_t = 100)]
    pub room_size: usize,
    /// Messages per second each connection receives.
    #[arg(long, default_value_t = 1.0)]
    pub per_conn_rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Bytes of each WebSocket frame, header included.
    #[arg(long, default_value_t = 256)]
    pub frame_bytes: usize,
    /// Frames per `send`: 1 is the gateway without coalescing; K > 1 writes every K messages of a
    /// room as one send of K frames (what perfect coalescing would reach).
    #[arg(long, default_value_t = 1)]
    pub frames_per_send: usize,
    /// SO_SNDBUF of the server ends (the gateway's limits.socket_send_buffer_bytes; 0 = autotuning).
    #[arg(long, default_value_t = 65536)]
    pub sndbuf: usize,
    /// CPU the reader process pins itself to (none: not pinned).
    #[arg(long)]
    pub recv_cpu: Option<usize>,
    /// Source addresses the reader spreads its connections over, e.g. 127.0.0.1,127.0.0.2.
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Seconds between the last connection and the first frame.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
}

fn main() {
    let result = match std::env::args().nth(1).as_deref() {
        Some("recv") => recv::main(),
        _ => run(Args::parse()),
    };
    if let Err(e) = result {
        eprintln!("floor: {e:#}");
        std::process::exit(1);
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit (each process holds one end of every socket).
pub fn raise_nofile() -> u64 {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    rl.rlim_cur
}

/// This process's CPU time so far (user, system), in seconds.
pub fn cpu_secs() -> (f64, f64) {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(ru.ru_utime), secs(ru.ru_stime))
}

/// One unmasked text frame of exactly `total` bytes (header included), JSON-looking payload.
fn text_frame(total: usize) -> Result<Vec<u8>> {
    let header = match total {
        0..=2 => bail!("--frame-bytes must be at least 3"),
        3..=127 => 2,
        128..=65539 => 4,
        _ => bail!("--frame-bytes must be at most 65539"),
    };
    let len = total - header;
    let mut f = vec![0x81u8];
    if header == 2 {
        f.push(len as u8);
    } else {
        f.push(126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    }
    let mut payload = br#"{"type":"message","channel":"room_0","data":{"p":""#.to_vec();
    payload.resize(len.saturating_sub(3), b'x');
    payload.extend_from_slice(br#""}}"#);
    payload.truncate(len);
    f.extend_from_slice(&payload);
    Ok(f)
}

fn run(args: Args) -> Result<()> {
    if args.conns == 0 || args.room_size == 0 || args.frames_per_send == 0 {
        bail!("--conns, --room-size and --frames-per-send must be positive");
    }
    if args.per_conn_rate <= 0.0 || args.duration <= 0.0 {
        bail!("--per-conn-rate and --duration must be positive");
    }
    let limit = raise_nofile();
    if args.conns as u64 + 64 > limit {
        bail!(
            "{} connections need more descriptors than RLIMIT_NOFILE {limit}",
            args.conns
        );
    }
    let frame = text_frame(args.frame_bytes)?;
    let buf = frame.repeat(args.frames_per_send);

    let listener = TcpListener::bind("127.0.0.1:0").context("binding the listener")?;
    // std listens with a backlog of 128; a larger one keeps the reader's connects from stalling.
    // SAFETY: listen on a descriptor we own.
    unsafe { libc::listen(listener.as_raw_fd(), 4096) };
    let port = listener.local_addr()?.port();
    let exe = std::env::current_exe().context("finding this program")?;
    let mut child = Command::new(exe)
        .arg("recv")
        .arg(port.to_string())
        .arg(args.conns.to_string())
        .arg(args.recv_cpu.map_or("-".into(), |c| c.to_string()))
        .arg(
            args.source_ips
                .iter()
                .map(|ip| ip.to_string())
                .collect::<Vec<_>>()
                .join(","),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the reader process")?;

    let mut socks: Vec<TcpStream> = Vec::with_capacity(args.conns);
    let accept_start = Instant::now();
    while socks.len() < args.conns {
        let (s, _) = listener.accept().context("accepting")?;
        s.set_nodelay(true)?;
        if args.sndbuf > 0 {
            let v = args.sndbuf as libc::c_int;
            // SAFETY: setsockopt with a pointer to a local int of the right size.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&v as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        socks.push(s);
        if accept_start.elapsed() > Duration::from_secs(120) {
            bail!(
                "only {} of {} connections within 120 s",
                socks.len(),
                args.conns
            );
        }
    }
    let rooms = (args.conns / args.room_size).max(1);
    let mut members: Vec<Vec<i32>> = vec![Vec::new(); rooms];
    for (g, s) in socks.iter().enumerate() {
        members[g % rooms].push(s.as_raw_fd());
    }
    std::thread::sleep(Duration::from_secs_f64(args.warmup));

    let rate = rooms as f64 * args.per_conn_rate;
    let total = (rate * args.duration).round() as u64;
    let mut per_room = vec![0usize; rooms];
    let (mut frames, mut sends, mut short) = (0u64, 0u64, 0u64);
    let mut max_lag = Duration::ZERO;
    let (u0, s0) = cpu_secs();
    let t0 = Instant::now();
    for i in 0..total {
        let due = t0 + Duration::from_secs_f64(i as f64 / rate);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            max_lag = max_lag.max(now - due);
        }
        let room = (i as usize) % rooms;
        per_room[room] += 1;
        if !per_room[room].is_multiple_of(args.frames_per_send) {
            continue;
        }
        for &fd in &members[room] {
            // SAFETY: `buf` outlives the call; `fd` is an open socket held in `socks`.
            let n = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) };
            if n != buf.len() as isize {
                short += 1;
            }
            sends += 1;
            frames += args.frames_per_send as u64;
        }
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let (u1, s1) = cpu_secs();
    drop(socks);
    drop(child.stdin.take());
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        BufReader::new(out).read_line(&mut line)?;
    }
    child.wait()?;
    let receiver: serde_json::Value =
        serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
    let (user, sys) = (u1 - u0, s1 - s0);
    let cpu = user + sys;
    let per = |n: u64| if n > 0 { cpu * 1e6 / n as f64 } else { 0.0 };
    let out = serde_json::json!({
        "program": "floor",
        "conns": args.conns,
        "rooms": rooms,
        "room_size": args.room_size,
        "per_conn_rate": args.per_conn_rate,
        "frames_per_send": args.frames_per_send,
        "frame_bytes": frame.len(),
        "duration_secs": elapsed,
        "messages": total,
        "frames": frames,
        "sends": sends,
        "short_or_failed_sends": short,
        "frames_per_sec": frames as f64 / elapsed,
        "max_lag_ms": max_lag.as_secs_f64() * 1e3,
        "cpu_secs": {"user": user, "system": sys},
        "cpu_us_per_frame": per(frames),
        "cpu_us_per_send": per(sends),
        "bytes_expected": sends * buf.len() as u64,
        "receiver": receiver,
    });
    println!("{out}");
    Ok(())
}
