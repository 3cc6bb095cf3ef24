//! Write coalescing (`session.write_delay_ms`): a connection that gets a message frame is not woken
//! at once but listed here; one timer per shard wakes every listed connection `delay` after the
//! first listing, and each writes whatever it has queued by then in one vectored write. A frame
//! waits at most `delay` (plus the shard's scheduling), frames that arrive meanwhile go with it.
//!
//! Only message frames wait: replies, pongs and close frames wake their connection at once (and
//! take anything held with them, in order). The list holds at most one entry per connection of
//! the shard (a connection is listed again only after its tick), so it is bounded by the shard's
//! connections.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::Duration;

/// One shard's coalescing timer and the connections waiting for it.
pub struct Coalescer {
    delay: Duration,
    /// Waiting connections: their "listed" flag (cleared at the tick) and their session's waker.
    held: RefCell<Vec<(Rc<Cell<bool>>, Waker)>>,
    /// The tick task, parked while nothing is held.
    ticker: Cell<Option<Waker>>,
}

impl Coalescer {
    /// A coalescer for `delay_ms`; None when coalescing is off (0).
    pub fn new(delay_ms: u64) -> Option<Rc<Coalescer>> {
        (delay_ms > 0).then(|| {
            Rc::new(Coalescer {
                delay: Duration::from_millis(delay_ms),
                held: RefCell::default(),
                ticker: Cell::new(None),
            })
        })
    }

    /// Lists a connection for the next tick, unless `listed` says it already is.
    pub fn hold(&self, listed: &Rc<Cell<bool>>, waker: Waker) {
        if listed.replace(true) {
            return;
        }
        let mut held = self.held.borrow_mut();
        held.push((listed.clone(), waker));
        if held.len() == 1 {
            if let Some(t) = self.ticker.take() {
                t.wake();
            }
        }
    }

    /// Connections waiting for the tick.
    pub fn len(&self) -> usize {
        self.held.borrow().len()
    }

    /// Whether no connection waits.
    pub fn is_empty(&self) -> bool {
        self.held.borrow().is_empty()
    }

    /// Wakes every listed connection and clears their flags.
    pub fn release(&self) {
        let held = std::mem::take(&mut *self.held.borrow_mut());
        for (listed, waker) in held {
            listed.set(false);
            waker.wake();
        }
    }

    /// The shard's tick task: waits for a first listing, sleeps `delay`, releases; forever.
    pub async fn run(self: Rc<Self>) {
        loop {
            poll_fn(|cx| {
                if self.is_empty() {
                    self.ticker.set(Some(cx.waker().clone()));
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            glommio::timer::sleep(self.delay).await;
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn one_entry_per_connection_until_released() {
        let c = Coalescer::new(20).expect("on");
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let (a, b) = (Rc::new(Cell::new(false)), Rc::new(Cell::new(false)));
        for _ in 0..3 {
            c.hold(&a, waker.clone());
        }
        c.hold(&b, waker.clone());
        assert_eq!(c.len(), 2);
        c.release();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(c.is_empty() && !a.get() && !b.get());
        // Listed again after the tick.
        c.hold(&a, waker);
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn zero_is_off() {
        assert!(Coalescer::new(0).is_none());
    }
}
