//! The progress counter a scenario shares with the payload's supervising process.
//!
//! It lives in anonymous shared memory mapped before the scenario is forked, so the supervisor
//! reads the count without the scenario ever having to stop and report it: a busy or stuck
//! scenario never starves the heartbeat. Workers forked by the scenario inherit the mapping
//! and may add to the same counter.

use crate::sys;
use std::sync::atomic::{AtomicU64, Ordering};

#[repr(C)]
struct Shared {
    progress: AtomicU64,
    /// Non-zero: the scenario asked the supervisor to stop sending heartbeats (`hang`).
    heartbeat_paused: AtomicU64,
    /// The scenario's own deadline (monotonic clock, f64 bits); 0 until it is known. The
    /// supervisor kills a scenario that overruns it by a grace period.
    deadline_bits: AtomicU64,
}

/// A handle to the shared page. Cheap to copy into forked children (same mapping).
pub struct Progress {
    map: sys::AnonMap,
}

impl Progress {
    pub fn new() -> std::io::Result<Progress> {
        // Anonymous shared memory starts zeroed.
        Ok(Progress {
            map: sys::AnonMap::shared(sys::page_size())?,
        })
    }

    fn shared(&self) -> &Shared {
        // SAFETY: the mapping is a zeroed page, larger than `Shared`, of atomics only, and
        // lives as long as `self`.
        unsafe { &*(self.map.as_ptr() as *const Shared) }
    }

    /// Adds `n` to the progress count.
    pub fn add(&self, n: u64) {
        self.shared().progress.fetch_add(n, Ordering::Relaxed);
    }

    /// Sets the progress count.
    pub fn set(&self, n: u64) {
        self.shared().progress.store(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.shared().progress.load(Ordering::Relaxed)
    }

    /// Stops the heartbeat until the scenario ends (used by `hang` only).
    pub fn pause_heartbeat(&self) {
        self.shared().heartbeat_paused.store(1, Ordering::SeqCst);
    }

    pub fn heartbeat_paused(&self) -> bool {
        self.shared().heartbeat_paused.load(Ordering::SeqCst) != 0
    }

    /// Publishes the scenario's deadline so the supervisor can enforce it.
    pub fn publish_deadline(&self, d: sys::Deadline) {
        self.shared()
            .deadline_bits
            .store(d.at().to_bits(), Ordering::SeqCst);
    }

    pub fn deadline(&self) -> Option<f64> {
        let bits = self.shared().deadline_bits.load(Ordering::SeqCst);
        (bits != 0).then(|| f64::from_bits(bits))
    }

    /// Back to zero for the next scenario.
    pub fn reset(&self) {
        let s = self.shared();
        s.progress.store(0, Ordering::SeqCst);
        s.heartbeat_paused.store(0, Ordering::SeqCst);
        s.deadline_bits.store(0, Ordering::SeqCst);
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

/// Counters in shared memory for workers forked after it was made (each hog's allocated
/// MiB, a first-failure timestamp...): the coordinator reads them even after a worker was
/// killed.
pub struct SharedCounters {
    map: sys::AnonMap,
    n: usize,
}

impl SharedCounters {
    pub fn new(n: usize) -> std::io::Result<SharedCounters> {
        let bytes = (n * 8).div_ceil(sys::page_size()).max(1) * sys::page_size();
        Ok(SharedCounters {
            map: sys::AnonMap::shared(bytes)?,
            n,
        })
    }

    pub fn slot(&self, i: usize) -> &AtomicU64 {
        assert!(i < self.n, "counter {i} of {}", self.n);
        // SAFETY: zeroed shared memory holding n u64 slots, aligned to a page.
        unsafe { &*(self.map.as_ptr() as *const AtomicU64).add(i) }
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
