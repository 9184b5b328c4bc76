//! Child processes that each open K file descriptors and hold them until released: the
//! "processes with many ports open" of seed 000, shared by fork-hold and spawn-kill.

use super::FdKind;
use crate::sys::{self, OFlag};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// What a holder reported after opening its descriptors.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fds: u64,
    /// errno that stopped it before it had all K, 0 when it got them all.
    pub errno: i32,
}

/// A group of holders sharing one release gate: opening it lets them all exit.
pub struct Holders {
    release: sys::Gate,
    /// Taken (closed) only in holder children, which do not read reports.
    status_r: Option<OwnedFd>,
    status_w: OwnedFd,
    pub pids: Vec<i32>,
}

impl Holders {
    pub fn new() -> std::io::Result<Holders> {
        let release = sys::Gate::new()?;
        let (status_r, status_w) = sys::pipe()?;
        Ok(Holders {
            release,
            status_r: Some(status_r),
            status_w,
            pids: Vec::new(),
        })
    }

    fn status_r(&self) -> BorrowedFd<'_> {
        self.status_r
            .as_ref()
            .expect("the coordinator keeps the status pipe")
            .as_fd()
    }

    /// Forks one holder that opens `fds` descriptors of `kind`. Err(errno) when fork fails.
    pub fn fork_one(&mut self, fds: u32, kind: FdKind) -> Result<i32, i32> {
        let (release, status_r, status_w) =
            (&mut self.release, &mut self.status_r, self.status_w.as_fd());
        let pid = sys::fork_run(move || {
            // Named, so an OOM kill of a holder reads as one in the console and the verdict.
            sys::linux_set_name("fd-holder");
            // Our copies of the coordinator's ends: the descriptors count against our limit.
            release.release();
            drop(status_r.take());
            // The coordinator may be protected from the OOM killer; holders are not.
            let _ = sys::linux_set_oom_score_adj(0);
            let (held, errno) = open_fds(fds, kind);
            let _ = sys::send_words(status_w, &[held.len() as i64, errno as i64]);
            release.wait();
            drop(held);
            0
        })
        .map_err(|e| sys::errno_of(&e))?;
        self.pids.push(pid);
        Ok(pid)
    }

    /// Reads one holder's report like `read_report`, but gives up as soon as any holder has
    /// died (the OOM killer takes holders, not the protected coordinator): `Err(why)`.
    pub fn read_report_or_death(&mut self, deadline: f64) -> Result<Opened, String> {
        loop {
            if let Some((pid, exit)) = self.reap_dead() {
                return Err(format!("holder {pid} {}", exit.describe()));
            }
            let slice = (sys::now() + 0.2).min(deadline);
            match sys::wait_readable(self.status_r(), slice - sys::now()) {
                Ok(true) => {
                    return self
                        .read_report(deadline)
                        .map_err(|e| format!("child report: {e}"))
                }
                Ok(false) if sys::now() >= deadline => return Err("deadline".into()),
                Ok(false) => {}
                Err(e) => return Err(format!("child report: {e}")),
            }
        }
    }

    /// A holder that has ended, if any (reaped and forgotten).
    pub fn reap_dead(&mut self) -> Option<(i32, sys::Exit)> {
        for (i, pid) in self.pids.iter().enumerate() {
            if let Ok(Some(exit)) = sys::try_wait(*pid) {
                let pid = *pid;
                self.pids.swap_remove(i);
                return Some((pid, exit));
            }
        }
        None
    }

    /// Reads one holder's report, waiting until `deadline` (monotonic seconds).
    pub fn read_report(&self, deadline: f64) -> std::io::Result<Opened> {
        let fds = sys::recv_word(self.status_r(), deadline)?;
        let errno = sys::recv_word(self.status_r(), deadline)?;
        Ok(Opened {
            fds: fds.max(0) as u64,
            errno: errno as i32,
        })
    }

    /// Lets every holder exit (close the release pipe) and reaps them; returns the seconds it
    /// took until the last one was gone.
    pub fn release_and_reap(&mut self) -> f64 {
        let t0 = sys::now();
        self.release.release();
        for pid in self.pids.drain(..) {
            let _ = sys::wait(pid);
        }
        sys::now() - t0
    }

    /// SIGKILLs every holder, sleeping `interval` seconds between kills, then reaps them all.
    /// Returns the seconds from the first kill until the last holder was reaped.
    pub fn kill_and_reap(&mut self, interval: f64) -> f64 {
        let t0 = sys::now();
        for (i, pid) in self.pids.iter().enumerate() {
            if i > 0 {
                sys::sleep_secs(interval);
            }
            let _ = sys::sigkill(*pid);
        }
        for pid in self.pids.drain(..) {
            let _ = sys::wait(pid);
        }
        sys::now() - t0
    }
}

impl Drop for Holders {
    fn drop(&mut self) {
        for pid in self.pids.drain(..) {
            let _ = sys::sigkill(pid);
            let _ = sys::wait(pid);
        }
    }
}

/// Opens up to `n` descriptors of `kind`; stops at the first error and returns its errno.
pub fn open_fds(n: u32, kind: FdKind) -> (Vec<OwnedFd>, i32) {
    let mut held = Vec::with_capacity(n as usize);
    while held.len() < n as usize {
        match open_one(kind) {
            Ok(fds) => held.extend(fds),
            Err(e) => return (held, e),
        }
    }
    held.truncate(n as usize);
    (held, 0)
}

/// One open of `kind`: one descriptor for /dev/null, two for a pipe or a socket pair.
pub fn open_one(kind: FdKind) -> Result<Vec<OwnedFd>, i32> {
    match kind {
        FdKind::Devnull => sys::open("/dev/null", OFlag::O_RDWR).map(|f| vec![f]),
        FdKind::Pipe => sys::pipe().map(|(a, b)| vec![a, b]),
        // socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC).
        FdKind::Socket => {
            std::os::unix::net::UnixStream::pair().map(|(a, b)| vec![a.into(), b.into()])
        }
    }
    .map_err(|e| sys::errno_of(&e))
}
