//! The progress counter a scenario shares with the payload's supervising process.
//!
//! It lives in anonymous shared memory mapped before the scenario is forked, so the supervisor
//! reads the count without the scenario ever having to stop and report it: a busy or stuck
//! scenario never starves the heartbeat. Workers forked by the scenario inherit the mapping
//! and may add to the same counter.

use crate::sys;
use std::sync::atomic::{AtomicU64, Ordering};

/// The progress count.
const PROGRESS: usize = 0;
/// Non-zero: the scenario asked the supervisor to stop sending heartbeats (`hang`).
const HEARTBEAT_PAUSED: usize = 1;
/// The scenario's own deadline (monotonic clock, f64 bits); 0 until it is known. The
/// supervisor kills a scenario that overruns it by a grace period.
const DEADLINE: usize = 2;

/// A handle to the shared page. Cheap to copy into forked children (same mapping).
pub struct Progress {
    shared: SharedCounters,
}

impl Progress {
    pub fn new() -> std::io::Result<Progress> {
        Ok(Progress {
            shared: SharedCounters::new(3)?,
        })
    }

    fn slot(&self, i: usize) -> &AtomicU64 {
        self.shared.slot(i)
    }

    /// Adds `n` to the progress count.
    pub fn add(&self, n: u64) {
        self.slot(PROGRESS).fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the progress count.
    pub fn set(&self, n: u64) {
        self.slot(PROGRESS).store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.slot(PROGRESS).load(Ordering::Relaxed)
    }

    /// Stops the heartbeat until the scenario ends (used by `hang` only).
    pub fn pause_heartbeat(&self) {
        self.slot(HEARTBEAT_PAUSED).store(1, Ordering::SeqCst);
    }

    pub fn heartbeat_paused(&self) -> bool {
        self.slot(HEARTBEAT_PAUSED).load(Ordering::SeqCst) != 0
    }

    /// Publishes the scenario's deadline so the supervisor can enforce it.
    pub fn publish_deadline(&self, d: sys::Deadline) {
        self.slot(DEADLINE)
            .store(d.at().to_bits(), Ordering::SeqCst);
    }

    pub fn deadline(&self) -> Option<f64> {
        self.shared.time(DEADLINE)
    }

    /// Back to zero for the next scenario.
    pub fn reset(&self) {
        for i in [PROGRESS, HEARTBEAT_PAUSED, DEADLINE] {
            self.slot(i).store(0, Ordering::SeqCst);
        }
    }
}

/// Counters in shared memory for workers forked after it was made (each hog's allocated
/// MiB, a first-failure timestamp...): the coordinator reads them even after a worker was
/// killed.
pub struct SharedCounters {
    map: sys::Mapping,
    n: usize,
}

impl SharedCounters {
    pub fn new(n: usize) -> std::io::Result<SharedCounters> {
        let bytes = (n * 8).div_ceil(sys::page_size()).max(1) * sys::page_size();
        Ok(SharedCounters {
            map: sys::Mapping::anon_shared(bytes)?,
            n,
        })
    }

    pub fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.n, "counter {i} of {}", self.n);
        &self.map.atomics()[i]
    }

    pub fn get(&self, i: usize) -> u64 {
        self.slot(i).load(Ordering::SeqCst)
    }

    /// Stores a monotonic timestamp in slot `i` unless one is already there.
    pub fn mark_time_once(&self, i: usize) {
        let _ = self.slot(i).compare_exchange(
            0,
            sys::now().to_bits(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    pub fn time(&self, i: usize) -> Option<f64> {
        let b = self.get(i);
        (b != 0).then(|| f64::from_bits(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_progress_is_seen_by_parent() {
        let p = Progress::new().unwrap();
        let pid = sys::fork_run(|| {
            p.add(41);
            p.add(1);
            p.pause_heartbeat();
            0
        })
        .unwrap();
        assert_eq!(sys::wait(pid).unwrap(), sys::Exit::Code(0));
        assert_eq!(p.get(), 42);
        assert!(p.heartbeat_paused());
        p.reset();
        assert_eq!(p.get(), 0);
        assert!(!p.heartbeat_paused());
    }
}
