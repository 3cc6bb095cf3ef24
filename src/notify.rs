//! systemd readiness protocol (`sd_notify(3)`): one datagram to `$NOTIFY_SOCKET`.
//!
//! `serve` sends `READY=1` once every shard listens (right after the "gateway ready" line) and
//! `STOPPING=1` when the drain starts, so a `Type=notify` unit is "active" only when clients can connect.
//! Without `NOTIFY_SOCKET` (not started by systemd) every call does nothing. A failure to notify is
//! logged, never fatal: the gateway itself works either way.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// The datagram for "ready": `READY=1` and a one-line status.
pub fn ready_message(status: &str) -> String {
    format!("READY=1\nSTATUS={}\n", one_line(status))
}

/// The datagram for "stopping": `STOPPING=1` and a one-line status.
pub fn stopping_message(status: &str) -> String {
    format!("STOPPING=1\nSTATUS={}\n", one_line(status))
}

/// A STATUS value must not span lines (each line of the datagram is one assignment).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The address `$NOTIFY_SOCKET` names: an absolute path, or `@name` for Linux's abstract namespace.
pub fn socket_addr(value: &OsStr) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(value),
        Some(b'@') if bytes.len() > 1 => abstract_addr(&bytes[1..]),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{NOTIFY_SOCKET} must be an absolute path or @name, got {value:?}"),
        )),
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn abstract_addr(name: &[u8]) -> io::Result<SocketAddr> {
    #[cfg(target_os = "android")]
    use std::os::android::net::SocketAddrExt;
    #[cfg(target_os = "linux")]
    use std::os::linux::net::SocketAddrExt;
    SocketAddr::from_abstract_name(name)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn abstract_addr(_name: &[u8]) -> io::Result<SocketAddr> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract unix sockets need Linux",
    ))
}

/// Sends `message` to the socket `$NOTIFY_SOCKET` names (`value`) in one datagram.
pub fn send_to(value: &OsStr, message: &str) -> io::Result<()> {
    let addr = socket_addr(value)?;
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message.as_bytes(), &addr)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            "short notify datagram",
        ));
    }
    Ok(())
}

/// Sends `message` to `$NOTIFY_SOCKET` if set. Ok(false): not set, nothing sent.
pub fn notify(message: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(value) if !value.is_empty() => send_to(&value, message).map(|()| true),
        _ => Ok(false),
    }
}

fn notify_logged(message: &str) {
    match notify(message) {
        Ok(true) => tracing::debug!(message = message.trim_end(), "notified the service manager"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not notify the service manager ({NOTIFY_SOCKET})")
        }
    }
}

/// `READY=1`: every shard listens. No-op without `NOTIFY_SOCKET`; errors are logged.
pub fn ready(status: &str) {
    notify_logged(&ready_message(status));
}

/// `STOPPING=1`: the drain has started. No-op without `NOTIFY_SOCKET`; errors are logged.
pub fn stopping(status: &str) {
    notify_logged(&stopping_message(status));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn temp_socket_path(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gateway-notify-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("notify.sock")
    }

    #[test]
    fn messages() {
        assert_eq!(
            ready_message("ws=1.2.3.4:80 shards=2"),
            "READY=1\nSTATUS=ws=1.2.3.4:80 shards=2\n"
        );
        assert_eq!(
            stopping_message("draining\nnow"),
            "STOPPING=1\nSTATUS=draining now\n"
        );
    }

    #[test]
    fn addresses() {
        let p = socket_addr(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            p.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let a = socket_addr(OsStr::new("@gateway/notify")).unwrap();
            assert_eq!(a.as_abstract_name(), Some(&b"gateway/notify"[..]));
            assert!(a.as_pathname().is_none());
        }
        for bad in ["", "@", "relative/path", "vsock:2:1234"] {
            assert!(socket_addr(OsStr::new(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sends_to_a_path_socket() {
        let path = temp_socket_path("path");
        let rx = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), &ready_message("ok")).unwrap();
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=ok\n");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("gateway-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
            .unwrap();
        send_to(
            OsStr::new(&format!("@{name}")),
            &stopping_message("draining"),
        )
        .unwrap();
        let mut buf = [0u8; 256];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=draining\n");
    }

    #[test]
    fn missing_socket_is_an_error_not_a_panic() {
        let path = temp_socket_path("missing");
        assert!(send_to(path.as_os_str(), "READY=1\n").is_err());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
