//! What a worker counts while it runs: connects, failures and closes by cause, latency histograms,
//! sequence tracks, and the stalled clients' outcomes.

use crate::stats::SeqTrack;
use hdrhistogram::Histogram;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

/// A worker's counts.
#[derive(Default)]
pub(crate) struct State {
    pub(crate) connect: Option<Histogram<u64>>,
    pub(crate) delivery: Option<Histogram<u64>>,
    pub(crate) connected: u64,
    pub(crate) failed: BTreeMap<String, u64>,
    pub(crate) closes: BTreeMap<String, u64>,
    pub(crate) tracks: Vec<(usize, SeqTrack)>,
    pub(crate) last_rx: HashMap<(u32, u64), u64>,
    pub(crate) attempted: usize,
    pub(crate) churn_cycles: u64,
    pub(crate) churn_received: u64,
    pub(crate) stalled: BTreeMap<String, u64>,
    /// Bytes of the message frames received.
    pub(crate) frame_bytes: u64,
    /// Resumes of `--resume` connections.
    pub(crate) resume: crate::resume::Counts,
}

/// A failed connect; a churning connection's failed reconnects are counted apart.
pub(crate) fn fail(state: &Rc<RefCell<State>>, label: String, first: bool) {
    let mut s = state.borrow_mut();
    if first {
        s.attempted += 1;
        *s.failed.entry(label).or_default() += 1;
    } else {
        *s.failed.entry(format!("reconnect {label}")).or_default() += 1;
    }
}

/// A connection closed, and why.
pub(crate) fn close(state: &Rc<RefCell<State>>, why: &str) {
    *state
        .borrow_mut()
        .closes
        .entry(why.to_string())
        .or_default() += 1;
}
