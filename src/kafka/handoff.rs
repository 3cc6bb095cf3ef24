//! Lock-free, bounded hand-over from a shard's Kafka I/O thread (tokio) to the shard (glommio): a
//! single-producer single-consumer ring (rtrb) with an atomic waker on each side. When the ring is
//! full the producer waits, which pauses fetching; nothing is dropped.

use atomic_waker::AtomicWaker;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

struct Shared {
    /// Wakes the consumer (the shard) when an item arrives or the producer goes away.
    consumer: AtomicWaker,
    /// Wakes the producer when room appears or the consumer goes away.
    producer: AtomicWaker,
    closed: AtomicBool,
}

pub struct Sender<T> {
    ring: rtrb::Producer<T>,
    shared: Arc<Shared>,
}

pub struct Receiver<T> {
    ring: rtrb::Consumer<T>,
    shared: Arc<Shared>,
}

pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (p, c) = rtrb::RingBuffer::new(capacity);
    let shared = Arc::new(Shared {
        consumer: AtomicWaker::new(),
        producer: AtomicWaker::new(),
        closed: AtomicBool::new(false),
    });
    (
        Sender {
            ring: p,
            shared: shared.clone(),
        },
        Receiver { ring: c, shared },
    )
}

impl<T> Sender<T> {
    /// Waits for room, then hands `item` over. Err(item) if the receiver is gone.
    pub async fn send(&mut self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        poll_fn(|cx| {
            let Some(it) = item.take() else {
                return Poll::Ready(Ok(()));
            };
            if self.shared.closed.load(Ordering::Acquire) {
                return Poll::Ready(Err(it));
            }
            let it = match self.ring.push(it) {
                Ok(()) => {
                    self.shared.consumer.wake();
                    return Poll::Ready(Ok(()));
                }
                Err(rtrb::PushError::Full(it)) => it,
            };
            self.shared.producer.register(cx.waker());
            // Room may have appeared between the failed push and the registration.
            match self.ring.push(it) {
                Ok(()) => {
                    self.shared.consumer.wake();
                    Poll::Ready(Ok(()))
                }
                Err(rtrb::PushError::Full(it)) => {
                    item = Some(it);
                    Poll::Pending
                }
            }
        })
        .await
    }
}

impl<T> Receiver<T> {
    /// The next item; None once the sender is gone and the ring is empty.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            if let Ok(it) = self.ring.pop() {
                self.shared.producer.wake();
                return Poll::Ready(Some(it));
            }
            self.shared.consumer.register(cx.waker());
            match self.ring.pop() {
                Ok(it) => {
                    self.shared.producer.wake();
                    Poll::Ready(Some(it))
                }
                Err(_) if self.ring.is_abandoned() => Poll::Ready(None),
                Err(_) => Poll::Pending,
            }
        })
        .await
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.consumer.wake();
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.producer.wake();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo_across_threads() {
        let (mut tx, mut rx) = channel::<u32>(4);
        let producer = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                for i in 0..10_000 {
                    tx.send(i).await.unwrap();
                }
            });
        });
        let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
        ex.run(async move {
            for i in 0..10_000 {
                assert_eq!(rx.recv().await, Some(i));
            }
            assert_eq!(rx.recv().await, None);
        });
        producer.join().unwrap();
    }
}
