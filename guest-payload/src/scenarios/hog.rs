//! A memory hog: allocates and writes memory in steps until a cap, a deadline or an error;
//! shared by oom, overcommit and cgroup-limit.

use crate::sys;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a hog's loop ended (when it was not killed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HogEnd {
    Cap,
    Deadline,
    Errno(i32),
}

impl HogEnd {
    /// As an exit code for the hog process: 0 cap, 1 deadline, 100 + errno.
    pub fn code(self) -> i32 {
        match self {
            HogEnd::Cap => 0,
            HogEnd::Deadline => 1,
            HogEnd::Errno(e) => 100 + e,
        }
    }

    pub fn describe_exit(exit: sys::Exit) -> String {
        match exit {
            sys::Exit::Code(0) => "cap".into(),
            sys::Exit::Code(1) => "deadline".into(),
            sys::Exit::Code(c) if c > 100 => sys::errno_name(c - 100),
            sys::Exit::Signal(sys::Signal::SIGKILL) => "oom-kill".into(),
            other => other.describe(),
        }
    }
}

/// Allocates `step_mib` at a time, writing every page when `touch`, adding each step to
/// `mib`, until `cap_mib`, `deadline` or an allocation error. Keeps what it got.
pub fn hog(
    step_mib: u64,
    cap_mib: u64,
    touch: bool,
    deadline: f64,
    mib: &AtomicU64,
) -> (Vec<sys::Mapping>, HogEnd) {
    let mut held = Vec::new();
    let step = step_mib.max(1);
    loop {
        if mib.load(Ordering::Relaxed) + step > cap_mib {
            return (held, HogEnd::Cap);
        }
        if sys::now() >= deadline {
            return (held, HogEnd::Deadline);
        }
        match sys::Mapping::anon(step as usize * sys::MIB) {
            Ok(mut m) => {
                if touch {
                    m.touch_write(0xa5);
                }
                held.push(m);
                mib.fetch_add(step, Ordering::Relaxed);
            }
            Err(e) => return (held, HogEnd::Errno(sys::errno_of(&e))),
        }
    }
}
