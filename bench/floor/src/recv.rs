//! The reader process: connects the client ends (spread over source addresses), pins itself to
//! its CPU, reads everything with epoll until every socket ends, and prints the bytes it got.
//! Arguments (from the sender, not for people): PORT CONNS CPU|- SOURCE_IPS.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};

/// Connects one client end from `source` (port chosen by the kernel).
fn connect_from(source: Option<IpAddr>, port: u16) -> Result<TcpStream> {
    let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    let Some(ip) = source else {
        return TcpStream::connect(target).context("connecting");
    };
    let IpAddr::V4(v4) = ip else {
        bail!("source addresses must be IPv4 loopback");
    };
    // SAFETY: a fresh socket, bound and connected with local structs; owned by the TcpStream after.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("socket");
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        let src = sin(v4, 0);
        if libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error()).context("binding the source address");
        }
        let dst = sin(Ipv4Addr::LOCALHOST, port);
        if libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error()).context("connecting");
        }
        Ok(stream)
    }
}

pub fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().skip(2).collect();
    let [port, conns, cpu, sources] = a.as_slice() else {
        bail!("usage: floor recv PORT CONNS CPU|- SOURCE_IPS (started by floor itself)");
    };
    let port: u16 = port.parse().context("port")?;
    let conns: usize = conns.parse().context("conns")?;
    let sources: Vec<IpAddr> = sources
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().context("source address"))
        .collect::<Result<_>>()?;
    if cpu != "-" {
        let cpu: usize = cpu.parse().context("cpu")?;
        // SAFETY: a zeroed cpu_set_t with one bit set, for this process.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }
    super::raise_nofile();
    let mut socks = Vec::with_capacity(conns);
    for g in 0..conns {
        let source = (!sources.is_empty()).then(|| sources[g % sources.len()]);
        socks.push(connect_from(source, port).with_context(|| format!("connection {g}"))?);
    }
    // SAFETY: epoll on descriptors owned by `socks`, which outlive the loop.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(std::io::Error::last_os_error()).context("epoll_create1");
    }
    for (i, s) in socks.iter().enumerate() {
        s.set_nonblocking(true)?;
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: i as u64,
        };
        // SAFETY: see above.
        unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s.as_raw_fd(), &mut ev) };
    }
    let (u0, s0) = super::cpu_secs();
    let mut open = socks.len();
    let mut bytes = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    while open > 0 {
        // SAFETY: `events` has room for the count passed.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 1000) };
        for ev in events.iter().take(n.max(0) as usize) {
            let s = &mut socks[ev.u64 as usize];
            loop {
                match s.read(&mut buf) {
                    Ok(k) if k > 0 => bytes += k as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    // End of stream or a failed read: the socket is done.
                    _ => {
                        // SAFETY: removing a descriptor we registered.
                        unsafe {
                            libc::epoll_ctl(
                                ep,
                                libc::EPOLL_CTL_DEL,
                                s.as_raw_fd(),
                                std::ptr::null_mut(),
                            )
                        };
                        open -= 1;
                        break;
                    }
                }
            }
        }
    }
    let (u1, s1) = super::cpu_secs();
    println!(
        "{}",
        serde_json::json!({"bytes": bytes, "cpu_secs": (u1 - u0) + (s1 - s0)})
    );
    Ok(())
}
