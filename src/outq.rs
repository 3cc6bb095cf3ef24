//! A connection's send queue: shared frame handles, bounded in bytes, drained by vectored writes.

use crate::message::Frame;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

/// At most this many frames go into one `sendmsg`.
pub const MAX_IOV: usize = 64;

#[derive(Debug, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The frame (priority 4) did not fit and was dropped.
    Dropped,
    /// The frame does not fit even after dropping priority-4 frames: the client is too slow.
    Overflow,
}

pub struct OutQueue {
    frames: VecDeque<Rc<Frame>>,
    /// Bytes of the front frame already written.
    head_off: usize,
    /// Unwritten bytes in the queue.
    bytes: usize,
    max_bytes: usize,
}

impl OutQueue {
    pub fn new(max_bytes: usize) -> OutQueue {
        OutQueue {
            frames: VecDeque::new(),
            head_off: 0,
            bytes: 0,
            max_bytes,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Queues `f`; under pressure drops queued priority-4 frames first. Returns what happened and
    /// how many queued frames were dropped to make room.
    pub fn push(&mut self, f: Rc<Frame>) -> (Push, u64) {
        if self.bytes + f.len() <= self.max_bytes {
            self.bytes += f.len();
            self.frames.push_back(f);
            return (Push::Queued, 0);
        }
        let dropped = self.drop_low_priority();
        if self.bytes + f.len() <= self.max_bytes {
            self.bytes += f.len();
            self.frames.push_back(f);
            (Push::Queued, dropped)
        } else if f.priority >= 4 {
            (Push::Dropped, dropped)
        } else {
            (Push::Overflow, dropped)
        }
    }

    /// Queues a frame regardless of the bound (a close frame must always go out).
    pub fn push_unbounded(&mut self, f: Rc<Frame>) {
        self.bytes += f.len();
        self.frames.push_back(f);
    }

    /// Puts a frame ahead of everything queued; only before anything has been written.
    pub fn push_front(&mut self, f: Rc<Frame>) {
        debug_assert_eq!(self.head_off, 0);
        self.bytes += f.len();
        self.frames.push_front(f);
    }

    /// Removes every queued priority-4 frame except a partly written front one.
    fn drop_low_priority(&mut self) -> u64 {
        let keep_front = self.head_off > 0;
        let before = self.frames.len();
        let mut i = 0usize;
        let mut freed = 0usize;
        self.frames.retain(|f| {
            let keep = (keep_front && i == 0) || f.priority < 4;
            if !keep {
                freed += f.len();
            }
            i += 1;
            keep
        });
        self.bytes -= freed;
        (before - self.frames.len()) as u64
    }

    /// Drops everything not yet started (before a 1013 close); keeps a partly written front frame so
    /// the stream stays well framed.
    pub fn clear_unstarted(&mut self) {
        let keep = usize::from(self.head_off > 0);
        while self.frames.len() > keep {
            if let Some(f) = self.frames.pop_back() {
                self.bytes -= f.len();
            }
        }
        if keep == 1 {
            self.bytes = self.frames[0].len() - self.head_off;
        }
    }

    /// Fills `iov` with the unwritten bytes; returns how many slices were filled.
    pub fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>; MAX_IOV]) -> usize {
        let mut n = 0;
        for (i, f) in self.frames.iter().take(MAX_IOV).enumerate() {
            let start = if i == 0 { self.head_off } else { 0 };
            iov[i] = IoSlice::new(&f.bytes[start..]);
            n += 1;
        }
        n
    }

    /// The unwritten part of the front frame.
    pub fn front(&self) -> Option<&[u8]> {
        self.frames.front().map(|f| &f.bytes[self.head_off..])
    }

    /// Marks `n` bytes as written; calls `done` for every frame completed.
    pub fn advance(&mut self, mut n: usize, mut done: impl FnMut(&Frame)) {
        self.bytes -= n;
        while n > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = front.len() - self.head_off;
            if n >= left {
                n -= left;
                self.head_off = 0;
                if let Some(f) = self.frames.pop_front() {
                    done(&f);
                }
            } else {
                self.head_off += n;
                n = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize, priority: u8) -> Rc<Frame> {
        Rc::new(Frame {
            bytes: vec![0u8; len].into_boxed_slice(),
            priority,
            born: None,
            message: true,
            origin_ms: None,
        })
    }

    #[test]
    fn low_priority_goes_first_then_overflow() {
        let mut q = OutQueue::new(100);
        assert_eq!(q.push(frame(40, 4)).0, Push::Queued);
        assert_eq!(q.push(frame(40, 3)).0, Push::Queued);
        // Room is made by dropping the priority-4 frame.
        assert_eq!(q.push(frame(40, 3)), (Push::Queued, 1));
        assert_eq!(q.bytes(), 80);
        assert_eq!(q.push(frame(30, 4)).0, Push::Dropped);
        assert_eq!(q.push(frame(30, 2)).0, Push::Overflow);
    }

    #[test]
    fn partial_writes_and_iov() {
        let mut q = OutQueue::new(1000);
        for _ in 0..3 {
            q.push(frame(10, 3));
        }
        let mut done = 0;
        q.advance(15, |_| done += 1);
        assert_eq!(done, 1);
        assert_eq!(q.front().unwrap().len(), 5);
        let mut iov = [IoSlice::new(&[]); MAX_IOV];
        assert_eq!(q.slices(&mut iov), 2);
        assert_eq!(iov[0].len() + iov[1].len(), 15);
        q.clear_unstarted();
        assert_eq!((q.len(), q.bytes()), (1, 5));
        q.advance(5, |_| done += 1);
        assert!(q.is_empty());
        assert_eq!(done, 2);
    }
}
