//! Thin wrappers over what the payload asks of the kernel (through nix and std), so scenario
//! code reads as what it does. Everything here is portable POSIX unless its name says Linux.
//!
//! Only two files hold code the compiler cannot check: `process.rs` (the one fork) and
//! `memory.rs` (the one mapping type and its page touches).

mod linux;
mod memory;
mod pipe;
mod process;

pub use linux::{
    linux_clocksource, linux_loopback_up, linux_meminfo, linux_meminfo_field, linux_mount,
    linux_process_count, linux_set_child_subreaper, linux_set_name, linux_set_oom_score_adj,
    linux_umount, oom_killed_pid, LinuxKmsg,
};
pub use memory::Mapping;
pub use nix::errno::Errno;
pub use nix::fcntl::OFlag;
pub use nix::sys::resource::Resource;
pub use nix::sys::signal::Signal;
pub use pipe::{
    block_until_eof, pipe, read_some, recv_time, recv_word, send_time, send_word, send_words,
    wait_readable, write_all, Gate,
};
pub use process::{
    drop_root_to, fork_run, kill_group, new_process_group, reap_any, set_rlimit, sigkill, try_wait,
    wait, Exit,
};

use nix::sys::stat::Mode;
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{sysconf, SysconfVar};
use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

/// `EAGAIN`, `ENOMEM`, ... (or `errno N` for one nix does not know).
pub fn errno_name(e: i32) -> String {
    let name = format!("{:?}", Errno::from_raw(e));
    if name == "UnknownErrno" {
        format!("errno {e}")
    } else {
        name
    }
}

/// The errno name of an `io::Error`, or its text when it has no errno.
pub fn err_name(e: &io::Error) -> String {
    e.raw_os_error()
        .map(errno_name)
        .unwrap_or_else(|| e.to_string())
}

/// The errno of an `io::Error` (0 when it has none), as the scenarios report it.
pub fn errno_of(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(0)
}

/// Seconds on the monotonic clock. The clock is system-wide, so times taken in different
/// processes can be subtracted.
pub fn now() -> f64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map(|ts| ts.tv_sec() as f64 + ts.tv_nsec() as f64 * 1e-9)
        .unwrap_or(0.0)
}

/// A point in time after which a loop must stop.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: f64,
}

impl Deadline {
    pub fn after_secs(secs: f64) -> Deadline {
        Deadline { at: now() + secs }
    }
    pub fn passed(&self) -> bool {
        now() >= self.at
    }
    pub fn remaining(&self) -> f64 {
        (self.at - now()).max(0.0)
    }
    pub fn at(&self) -> f64 {
        self.at
    }
}

pub fn sleep_secs(secs: f64) {
    if secs > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(secs));
    }
}

pub fn getpid() -> i32 {
    nix::unistd::getpid().as_raw()
}

/// Opens `path` close-on-exec (creating nothing: `flags` without `O_CREAT`).
pub fn open(path: &str, flags: OFlag) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        flags | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?)
}

pub fn read_file(path: &str) -> io::Result<String> {
    std::fs::read_to_string(path)
}

/// Writes `value` to a (proc/sys/cgroup) file in one write, as such files want.
pub fn write_file(path: &str, value: &str) -> io::Result<()> {
    write_all(open(path, OFlag::O_WRONLY)?, value.as_bytes())
}

/// A uniform draw in [0, 1) from the kernel's random source (getrandom(2), which waits for
/// the pool to be initialised): differs from run to run, replays identically.
pub fn random_unit() -> io::Result<f64> {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for writes of its whole length for the duration of the call.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(io::Error::last_os_error());
    }
    // The top 53 bits: every f64 in [0, 1) this can give is equally likely.
    Ok((u64::from_le_bytes(buf) >> 11) as f64 / (1u64 << 53) as f64)
}

/// Online CPUs.
pub fn ncpu() -> u32 {
    match sysconf(SysconfVar::_NPROCESSORS_ONLN) {
        Ok(Some(n)) => n.max(1) as u32,
        _ => 1,
    }
}

pub fn page_size() -> usize {
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(n)) => n.max(4096) as usize,
        _ => 4096,
    }
}

pub const MIB: usize = 1024 * 1024;

/// The smallest step the monotonic clock is seen to take, in seconds (a guest whose
/// clocksource fell back to jiffies steps by 4 ms). Measured, since clock_getres reports
/// the timer resolution, not the clock's.
pub fn clock_step() -> f64 {
    let start = now();
    let mut prev = start;
    let mut step = f64::INFINITY;
    for _ in 0..100_000 {
        let t = now();
        if t > prev {
            step = step.min(t - prev);
        }
        prev = t;
        if t - start > 0.05 {
            break;
        }
    }
    step
}

/// `uname -r`, `uname -v` and `uname -m`.
pub fn uname() -> (String, String, String) {
    match nix::sys::utsname::uname() {
        Ok(u) => {
            let s = |f: &std::ffi::OsStr| f.to_string_lossy().into_owned();
            (s(u.release()), s(u.version()), s(u.machine()))
        }
        Err(_) => Default::default(),
    }
}

pub fn mkdir_p(path: &str) -> io::Result<()> {
    std::fs::create_dir_all(path)
}
