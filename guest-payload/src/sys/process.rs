//! Child processes: the one fork of the payload, and how children are waited for, killed and
//! limited.

use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, geteuid, setgid, setgroups, setpgid, setuid, ForkResult, Gid, Pid, Uid};
use std::io;

/// Forks; the child runs `f` and exits with its return value without unwinding or running
/// the parent's exit handlers. Returns the child's pid in the parent. Every fork of the
/// payload goes through here.
///
/// What `f` owns is dropped in the parent without `f` having run: a descriptor moved into `f`
/// ends up open in the child only.
pub fn fork_run(f: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: the payload never starts a thread, so the child's copy of every lock (the
    // allocator's included) is consistent and it may allocate freely (the unit tests that
    // fork from the test harness's threads only touch atomics in the child); the child
    // leaves through `exit_now` and never returns into the caller's frames.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(child.as_raw()),
        ForkResult::Child => {
            let code = f();
            exit_now(code)
        }
    }
}

/// `_exit`: no destructors, no atexit handlers, no flushing of buffers shared with the parent.
fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` has no preconditions; it is only unchecked because it is foreign.
    unsafe { libc::_exit(code) }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    pub fn describe(&self) -> String {
        match self {
            Exit::Code(c) => format!("exit code {c}"),
            Exit::Signal(s) => format!("killed by {}", s.as_str()),
        }
    }
}

/// The pid and the end of a child that ended; `None` for "still running" (we never ask
/// for stops or continues).
fn ended(status: WaitStatus) -> Option<(i32, Exit)> {
    match status {
        WaitStatus::Exited(pid, code) => Some((pid.as_raw(), Exit::Code(code))),
        WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), Exit::Signal(sig))),
        _ => None,
    }
}

/// Waits for `pid` (blocking).
pub fn wait(pid: i32) -> io::Result<Exit> {
    loop {
        match waitpid(Pid::from_raw(pid), None) {
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(status) => {
                return ended(status)
                    .map(|(_, exit)| exit)
                    .ok_or_else(|| io::Error::other(format!("wait: {status:?}")))
            }
        }
    }
}

/// Reaps one ended child of any pid without blocking: `Some((pid, exit))`, or `None` when no
/// child has ended (or there are none).
pub fn reap_any() -> Option<(i32, Exit)> {
    waitpid(None, Some(WaitPidFlag::WNOHANG))
        .ok()
        .and_then(ended)
}

/// Non-blocking check of one child: `Some(exit)` once it has ended.
pub fn try_wait(pid: i32) -> io::Result<Option<Exit>> {
    let status = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))?;
    Ok(ended(status)
        .filter(|(p, _)| *p == pid)
        .map(|(_, exit)| exit))
}

/// SIGKILLs one process.
pub fn sigkill(pid: i32) -> io::Result<()> {
    Ok(kill(Pid::from_raw(pid), Signal::SIGKILL)?)
}

/// SIGKILLs every process of the process group `pgid`.
pub fn kill_group(pgid: i32) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Makes `pid` (0: this process) the leader of a process group of its own, so everything
/// it forks can be killed together.
pub fn new_process_group(pid: i32) {
    let _ = setpgid(Pid::from_raw(pid), Pid::from_raw(pid));
}

/// Lowers or raises a resource limit (soft and hard).
pub fn set_rlimit(resource: Resource, value: u64) -> io::Result<()> {
    Ok(setrlimit(resource, value, value)?)
}

/// As root, becomes user and group `id` with no supplementary groups (limits such as
/// RLIMIT_NPROC do not bind root); anyone else is left as they are.
pub fn drop_root_to(id: u32) -> io::Result<()> {
    if geteuid().is_root() {
        setgroups(&[])?;
        setgid(Gid::from_raw(id))?;
        setuid(Uid::from_raw(id))?;
    }
    Ok(())
}
