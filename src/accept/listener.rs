//! The WebSocket listener of one shard: its own SO_REUSEPORT socket, so the kernel spreads
//! connections across shards and each connection lives its whole life on the shard that accepted it.

use crate::accept::handshake;
use crate::shard::Shard;
use glommio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::Duration;

/// Deep enough for a fast ramp of tens of thousands of connections (capped by somaxconn).
pub const BACKLOG: i32 = 4096;

/// Kernel settings that would quietly limit the listener, with what to set (docs/deploy.md).
pub fn kernel_warnings() -> Vec<String> {
    warnings_from(|path| std::fs::read_to_string(path).ok()?.trim().parse().ok())
}

/// The warnings for the values `read` gives for each /proc/sys path.
fn warnings_from(read: impl Fn(&str) -> Option<i64>) -> Vec<String> {
    let mut out = Vec::new();
    let backlog = i64::from(BACKLOG);
    if let Some(n) = read("/proc/sys/net/core/somaxconn").filter(|n| *n < backlog) {
        out.push(format!(
            "net.core.somaxconn is {n}: each shard's listen backlog of {backlog} is clamped to it, and a connect \
             storm beyond it is dropped or delayed; set net.core.somaxconn={backlog} or more"
        ));
    }
    if let Some(n) = read("/proc/sys/net/ipv4/tcp_max_syn_backlog").filter(|n| *n < backlog) {
        out.push(format!(
            "net.ipv4.tcp_max_syn_backlog is {n}: half-open connections beyond it are dropped under a connect \
             storm; set it to {backlog} or more"
        ));
    }
    out
}

fn socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let sk = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sk.set_reuse_address(true)?;
    sk.set_reuse_port(true)?;
    Ok(sk)
}

/// Binds without listening, to learn the port when asked for port 0; the shards then bind the
/// same port. Keep it open until they have.
pub fn reserve(addr: SocketAddr) -> std::io::Result<(Socket, SocketAddr)> {
    let sk = socket(addr)?;
    sk.bind(&addr.into())?;
    let local = sk
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("listener has no inet address"))?;
    Ok((sk, local))
}

/// `send_buffer` (bytes, 0 = kernel autotuning) is inherited by every accepted socket.
pub fn bind(addr: SocketAddr, send_buffer: usize) -> std::io::Result<TcpListener> {
    let sk = socket(addr)?;
    if send_buffer > 0 {
        sk.set_send_buffer_size(send_buffer)?;
    }
    sk.bind(&addr.into())?;
    sk.listen(BACKLOG)?;
    // SAFETY: the descriptor was just created here and is handed over whole.
    Ok(unsafe { TcpListener::from_raw_fd(sk.into_raw_fd()) })
}

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                glommio::spawn_local(handshake::serve(shard.clone(), stream)).detach();
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning; clients wait in the backlog.
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_settings_below_the_listen_backlog_are_named() {
        let low = warnings_from(|p| Some(if p.ends_with("somaxconn") { 128 } else { 4096 }));
        assert_eq!(low.len(), 1);
        assert!(low[0].contains("net.core.somaxconn is 128"), "{low:?}");
        let both = warnings_from(|_| Some(1024));
        assert_eq!(both.len(), 2);
        assert!(warnings_from(|_| Some(65535)).is_empty());
        assert!(
            warnings_from(|_| None).is_empty(),
            "unreadable settings are not guessed at"
        );
    }
}
