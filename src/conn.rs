//! The part of a connection that its shard's router sees: the bounded send queue and a way to wake
//! or close the session task. Shard-local (`Rc`), never shared across threads.

use crate::coalesce::Coalescer;
use crate::deflate::Agreed;
use crate::message::Frame;
use crate::metrics::ShardMetrics;
use crate::outq::{OutQueue, Push};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Waker;

/// Why the gateway is closing a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: &'static str,
}

pub const CLOSE_SLOW: CloseReason = CloseReason {
    code: 1013,
    reason: "send queue overflow: reconnect and resubscribe with since",
};
pub const CLOSE_SHUTDOWN: CloseReason = CloseReason {
    code: 1001,
    reason: "gateway shutting down",
};
pub const CLOSE_LOST: CloseReason = CloseReason {
    code: 1013,
    reason: "messages could not reach this connection: reconnect and resubscribe with since",
};
pub const CLOSE_EXPIRED: CloseReason = CloseReason {
    code: 1008,
    reason: "token expired",
};

pub struct ConnHandle {
    pub id: u64,
    queue: RefCell<OutQueue>,
    waker: Cell<Option<Waker>>,
    close: Cell<Option<CloseReason>>,
    /// A recovery waits for the queue to drain below half its bound before its next page.
    room_wanted: Cell<bool>,
    /// permessage-deflate as negotiated at the upgrade (None: plain frames only).
    deflate: Option<Agreed>,
    metrics: ShardMetrics,
    /// With write coalescing on: the shard's timer that wakes this connection for message frames.
    coalesce: Option<Rc<Coalescer>>,
    /// Whether this connection waits for the coalescing timer's next tick.
    listed: Rc<Cell<bool>>,
}

impl ConnHandle {
    pub fn new(id: u64, queue_bytes: usize, metrics: ShardMetrics) -> ConnHandle {
        ConnHandle {
            id,
            queue: RefCell::new(OutQueue::new(queue_bytes)),
            waker: Cell::new(None),
            close: Cell::new(None),
            room_wanted: Cell::new(false),
            deflate: None,
            metrics,
            coalesce: None,
            listed: Rc::default(),
        }
    }

    /// Message frames wait for `coalesce`'s tick instead of waking the session at once.
    pub fn with_coalescer(mut self, coalesce: Option<Rc<Coalescer>>) -> ConnHandle {
        self.coalesce = coalesce;
        self
    }

    /// The connection negotiated permessage-deflate.
    pub fn with_deflate(mut self, deflate: Option<Agreed>) -> ConnHandle {
        self.deflate = deflate;
        self
    }

    /// What the connection agreed for permessage-deflate, if anything.
    pub fn deflate(&self) -> Option<Agreed> {
        self.deflate
    }

    /// Queues a frame for the socket. A full queue drops priority-4 frames, then closes with 1013.
    pub fn send(&self, frame: &Rc<Frame>) {
        if self.close.get().is_some() {
            return;
        }
        let mut q = self.queue.borrow_mut();
        let before = q.bytes();
        let (outcome, dropped) = q.push(frame.clone());
        let after = q.bytes();
        drop(q);
        self.track_bytes(before, after);
        if dropped > 0 {
            self.metrics.dropped_low_priority.inc_by(dropped);
        }
        match outcome {
            Push::Queued => match &self.coalesce {
                Some(c) if frame.message => self.hold(c),
                _ => self.wake(),
            },
            Push::Dropped => {
                self.metrics.dropped_low_priority.inc();
            }
            Push::Overflow => {
                self.metrics.slow_consumer_closes.inc();
                let mut q = self.queue.borrow_mut();
                let before = q.bytes();
                q.clear_unstarted();
                let after = q.bytes();
                drop(q);
                self.track_bytes(before, after);
                self.request_close(CLOSE_SLOW);
            }
        }
    }

    /// A recovery of this connection waits for room in the queue.
    pub fn want_room(&self) {
        self.room_wanted.set(true);
    }

    /// Whether a recovery waits for room and the queue now has it (below half its bound); clears
    /// the wish when it does.
    pub fn room_for_recovery(&self) -> bool {
        if !self.room_wanted.get() {
            return false;
        }
        let q = self.queue.borrow();
        if q.bytes() >= q.max_bytes() / 2 {
            return false;
        }
        self.room_wanted.set(false);
        true
    }

    /// Asks the session to close with `reason` (the first request wins).
    pub fn request_close(&self, reason: CloseReason) {
        if self.close.get().is_none() {
            self.close.set(Some(reason));
        }
        self.wake();
    }

    pub fn close_requested(&self) -> Option<CloseReason> {
        self.close.get()
    }

    pub fn set_waker(&self, w: &Waker) {
        let cur = self.waker.take();
        match cur {
            Some(c) if c.will_wake(w) => self.waker.set(Some(c)),
            _ => self.waker.set(Some(w.clone())),
        }
    }

    /// Lists the parked session for the coalescing tick (its waker stays, so a reply or a close
    /// request can still wake it at once). A session that is not parked writes on its next run.
    fn hold(&self, c: &Coalescer) {
        let w = self.waker.take();
        if let Some(w) = &w {
            c.hold(&self.listed, w.clone());
        }
        self.waker.set(w);
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    /// Queues a frame that must go out whatever the bound (close frames).
    pub fn send_unbounded(&self, frame: Frame) {
        let len = frame.len();
        self.queue.borrow_mut().push_unbounded(Rc::new(frame));
        self.metrics.queue_bytes.inc_by(len as i64);
        self.wake();
    }

    pub fn queue(&self) -> std::cell::RefMut<'_, OutQueue> {
        self.queue.borrow_mut()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queue.borrow().bytes()
    }

    /// Keeps the shard's queue-depth gauge in step with this queue.
    pub fn track_bytes(&self, before: usize, after: usize) {
        let delta = after as i64 - before as i64;
        if delta != 0 {
            self.metrics.queue_bytes.inc_by(delta);
        }
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        let left = self.queue.get_mut().bytes();
        self.metrics.queue_bytes.dec_by(left as i64);
    }
}
