//! Writing a connection's queue: everything queued leaves in one vectored `sendmsg` per wake.

use super::{Session, WRITES_PER_POLL};
use crate::outq::MAX_IOV;
use futures_lite::AsyncWrite;
use socket2::SockRef;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

impl Session {
    /// A socket2 view of the stream's descriptor, for calls glommio does not offer.
    pub(super) fn sock<T>(&self, f: impl FnOnce(SockRef<'_>) -> T) -> T {
        // SAFETY: the descriptor belongs to `self.stream`, alive for this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.stream.as_raw_fd()) };
        f(SockRef::from(&fd))
    }

    /// Writes what is queued, many frames per syscall. Ok(true) when the queue is empty.
    pub(super) fn flush(&mut self, cx: &mut Context<'_>) -> io::Result<bool> {
        for _ in 0..WRITES_PER_POLL {
            let written = {
                let q = self.conn.queue();
                if q.is_empty() {
                    drop(q);
                    self.conn.set_waker(cx.waker());
                    return Ok(true);
                }
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = q.slices(&mut iov);
                let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                match self.sock(|s| s.send_vectored_with_flags(&iov[..n], flags)) {
                    Ok(w) => w,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Let glommio wait for writability (it retries the send itself first).
                        let front = q.front().unwrap_or(&[]);
                        match Pin::new(&mut self.stream).poll_write(cx, front) {
                            Poll::Ready(Ok(w)) => w,
                            Poll::Ready(Err(e)) => return Err(e),
                            Poll::Pending => {
                                drop(q);
                                self.conn.set_waker(cx.waker());
                                return Ok(false);
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                    Err(e) => return Err(e),
                }
            };
            if written > 0 {
                self.shard.metrics.socket_writes.inc();
            }
            self.advance(written);
        }
        // More to write: let other connections run first.
        cx.waker().wake_by_ref();
        Ok(false)
    }

    pub(super) fn advance(&mut self, n: usize) {
        let now = Instant::now();
        let shard = &self.shard;
        let mut q = self.conn.queue();
        let before = q.bytes();
        let mut now_ms = None;
        q.advance(n, |f| {
            if f.message {
                shard.metrics.delivered.inc();
                if let Some(born) = f.born {
                    shard.record_latency(now.duration_since(born));
                }
                if let Some(origin) = f.origin_ms {
                    let now_ms = *now_ms.get_or_insert_with(crate::message::now_ms);
                    let d = Duration::from_millis(now_ms.saturating_sub(origin));
                    shard.metrics.record_to_socket.observe(d);
                }
            }
        });
        let after = q.bytes();
        drop(q);
        self.conn.track_bytes(before, after);
        if self.conn.room_for_recovery() {
            self.shard.router.room(self.conn.id);
        }
    }
}
