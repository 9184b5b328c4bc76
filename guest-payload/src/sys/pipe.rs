//! Pipes between the coordinator of a scenario and the children it forks: status words,
//! timestamps, and the gate that holds children until they are released.

use super::now;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A pipe, both ends close-on-exec: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// Writes all of `buf` (retrying short writes and EINTR).
pub fn write_all(fd: impl AsFd, mut buf: &[u8]) -> io::Result<()> {
    let fd = fd.as_fd();
    while !buf.is_empty() {
        match nix::unistd::write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// One `read`, retrying EINTR; `Ok(0)` at end of file.
pub fn read_some(fd: impl AsFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match nix::unistd::read(fd.as_fd(), buf) {
            Err(Errno::EINTR) => continue,
            r => return Ok(r?),
        }
    }
}

/// Waits until `fd` is readable or `timeout` seconds pass; true when readable (or hung up).
pub fn wait_readable(fd: impl AsFd, timeout: f64) -> io::Result<bool> {
    let ms = (timeout * 1000.0).ceil().clamp(0.0, i32::MAX as f64) as i32;
    let timeout = PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX);
    match poll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], timeout) {
        Ok(n) => Ok(n > 0),
        Err(Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Reads exactly `buf.len()` bytes unless the deadline passes first (`TimedOut`) or the writer
/// closes (`UnexpectedEof`).
fn read_exact_until(fd: BorrowedFd, buf: &mut [u8], deadline: f64) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline - now();
        if left <= 0.0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        if !wait_readable(fd, left)? {
            continue;
        }
        match read_some(fd, &mut buf[got..])? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "pipe closed")),
            n => got += n,
        }
    }
    Ok(())
}

/// Sends a small status word over a pipe (child -> coordinator).
pub fn send_word(fd: impl AsFd, v: i64) -> io::Result<()> {
    write_all(fd, &v.to_le_bytes())
}

/// Sends several words in one write: up to PIPE_BUF bytes a pipe write is atomic, so
/// reports of children sharing one pipe never interleave.
pub fn send_words(fd: impl AsFd, vs: &[i64]) -> io::Result<()> {
    let bytes: Vec<u8> = vs.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_all(fd, &bytes)
}

/// Receives a status word, waiting until `deadline` at the latest.
pub fn recv_word(fd: impl AsFd, deadline: f64) -> io::Result<i64> {
    let mut b = [0u8; 8];
    read_exact_until(fd.as_fd(), &mut b, deadline)?;
    Ok(i64::from_le_bytes(b))
}

/// Sends a timestamp (f64 seconds on the monotonic clock).
pub fn send_time(fd: impl AsFd, t: f64) -> io::Result<()> {
    write_all(fd, &t.to_le_bytes())
}

pub fn recv_time(fd: impl AsFd, deadline: f64) -> io::Result<f64> {
    let mut b = [0u8; 8];
    read_exact_until(fd.as_fd(), &mut b, deadline)?;
    Ok(f64::from_le_bytes(b))
}

/// Blocks until the other end of `fd` is closed (the "release" signal to held children).
pub fn block_until_eof(fd: impl AsFd) {
    let fd = fd.as_fd();
    let mut b = [0u8; 64];
    while let Ok(n) = read_some(fd, &mut b) {
        if n == 0 {
            break;
        }
    }
}

/// Holds forked children until the coordinator releases them all at once: each child waits
/// for end of file on the gate's pipe, which comes when the last copy of its write end is
/// closed (the coordinator's, by `release` or by dying; a child drops its own copy first).
pub struct Gate {
    reader: OwnedFd,
    writer: Option<OwnedFd>,
}

impl Gate {
    pub fn new() -> io::Result<Gate> {
        let (reader, writer) = pipe()?;
        Ok(Gate {
            reader,
            writer: Some(writer),
        })
    }

    /// The end children wait on (to hand to an exec'd program).
    pub fn reader(&self) -> BorrowedFd<'_> {
        self.reader.as_fd()
    }

    /// Closes this process's copy of the write end: in the coordinator it lets every child
    /// go; in a forked child it must come before waiting, or the child holds itself.
    pub fn release(&mut self) {
        self.writer = None;
    }

    /// In a forked child: drops its copy of the write end and blocks until released.
    pub fn wait(&mut self) {
        self.release();
        block_until_eof(&self.reader);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{fork_run, sigkill, sleep_secs, try_wait, wait, Exit, Signal};

    #[test]
    fn gate_holds_children_until_released() {
        let mut gate = Gate::new().unwrap();
        let mut kids = Vec::new();
        for _ in 0..3 {
            let g = &mut gate;
            kids.push(
                fork_run(move || {
                    g.wait();
                    0
                })
                .unwrap(),
            );
        }
        sleep_secs(0.1);
        for k in &kids {
            assert_eq!(
                try_wait(*k).unwrap(),
                None,
                "released before the gate opened"
            );
        }
        gate.release();
        for k in kids {
            assert_eq!(wait(k).unwrap(), Exit::Code(0));
        }
    }

    #[test]
    fn words_and_times_cross_a_pipe_and_a_killed_child_reads_as_killed() {
        let (r, w) = pipe().unwrap();
        let ww = w.as_fd();
        let pid = fork_run(move || {
            let _ = send_words(ww, &[5, -7]);
            let _ = send_time(ww, 1.5);
            sleep_secs(30.0);
            0
        })
        .unwrap();
        drop(w);
        let deadline = now() + 10.0;
        assert_eq!(recv_word(&r, deadline).unwrap(), 5);
        assert_eq!(recv_word(&r, deadline).unwrap(), -7);
        assert_eq!(recv_time(&r, deadline).unwrap(), 1.5);
        let e = recv_word(&r, now() + 0.1).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        sigkill(pid).unwrap();
        let exit = wait(pid).unwrap();
        assert_eq!(exit, Exit::Signal(Signal::SIGKILL));
        assert_eq!(exit.describe(), "killed by SIGKILL");
        let e = recv_word(&r, now() + 1.0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
