//! Child processes that each open K file descriptors and hold them until released: the
//! "processes with many ports open" of seed 000, shared by fork-hold and spawn-kill.

use super::FdKind;
use crate::sys;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// What a holder reported after opening its descriptors.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fds: u64,
    /// errno that stopped it before it had all K, 0 when it got them all.
    pub errno: i32,
}

/// A group of holders sharing one release pipe: closing its write end lets them all exit.
pub struct Holders {
    release_r: OwnedFd,
    release_w: Option<OwnedFd>,
    status_r: OwnedFd,
    status_w: OwnedFd,
    pub pids: Vec<i32>,
}

impl Holders {
    pub fn new() -> std::io::Result<Holders> {
        let (release_r, release_w) = sys::pipe(false)?;
        let (status_r, status_w) = sys::pipe(false)?;
        Ok(Holders {
            release_r,
            release_w: Some(release_w),
            status_r,
            status_w,
            pids: Vec::new(),
        })
    }

    /// Forks one holder that opens `fds` descriptors of `kind`. Err(errno) when fork fails.
    pub fn fork_one(&mut self, fds: u32, kind: FdKind) -> Result<i32, i32> {
        let release_r = self.release_r.as_raw_fd();
        let release_w = self.release_w.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        let status_w = self.status_w.as_raw_fd();
        let status_r = self.status_r.as_raw_fd();
        let pid = sys::fork_run(move || {
            // Named, so an OOM kill of a holder reads as one in the console and the verdict.
            sys::linux_set_name("fd-holder");
            // SAFETY: closing our copies of the coordinator's ends.
            unsafe {
                libc::close(release_w);
                libc::close(status_r);
            }
            // The coordinator may be protected from the OOM killer; holders are not.
            let _ = sys::linux_set_oom_score_adj(0);
            let (held, errno) = open_fds(fds, kind);
            let _ = sys::send_words(status_w, &[held.len() as i64, errno as i64]);
            sys::block_until_eof(release_r);
            drop(held);
            0
        })
        .map_err(|e| e.raw_os_error().unwrap_or(0))?;
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
            match sys::wait_readable(self.status_r.as_raw_fd(), slice - sys::now()) {
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
        let fds = sys::recv_word(self.status_r.as_raw_fd(), deadline)?;
        let errno = sys::recv_word(self.status_r.as_raw_fd(), deadline)?;
        Ok(Opened {
            fds: fds.max(0) as u64,
            errno: errno as i32,
        })
    }

    /// Lets every holder exit (close the release pipe) and reaps them; returns the seconds it
    /// took until the last one was gone.
    pub fn release_and_reap(&mut self) -> f64 {
        let t0 = sys::now();
        self.release_w = None;
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
            let _ = sys::kill(*pid, libc::SIGKILL);
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
            let _ = sys::kill(pid, libc::SIGKILL);
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
        FdKind::Devnull => sys::open("/dev/null", libc::O_RDWR)
            .map(|f| vec![f])
            .map_err(|e| e.raw_os_error().unwrap_or(0)),
        FdKind::Pipe => sys::pipe(false)
            .map(|(a, b)| vec![a, b])
            .map_err(|e| e.raw_os_error().unwrap_or(0)),
        FdKind::Socket => {
            let mut fds = [0; 2];
            // SAFETY: valid out-array.
            let r = unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    fds.as_mut_ptr(),
                )
            };
            if r == -1 {
                return Err(sys::errno());
            }
            // SAFETY: fresh fds we own.
            Ok(unsafe { vec![OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])] })
        }
    }
}
