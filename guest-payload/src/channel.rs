//! The results channel: frames go out one `write()` per line, numbered in order. Only the
//! supervising process writes frames, so sequence numbers never interleave.

use crate::sys::{self, OFlag};
use kstorm_payload::frame::{encode, Message};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
use std::os::fd::OwnedFd;

pub struct Channel {
    cell: String,
    seq: u64,
    /// `None`: standard output.
    out: Option<OwnedFd>,
    /// What the frames are written to, for the log.
    pub target: String,
}

impl Channel {
    /// Frames to standard output (not PID 1: tests, runs over ssh).
    pub fn stdout(cell: &str) -> Channel {
        Channel {
            cell: cell.to_string(),
            seq: 0,
            out: None,
            target: "stdout".into(),
        }
    }

    /// Frames to an opened file (a serial port or the console).
    fn to_file(cell: &str, fd: OwnedFd, target: &str) -> Channel {
        Channel {
            cell: cell.to_string(),
            seq: 0,
            out: Some(fd),
            target: target.into(),
        }
    }

    /// Frames to `device` (a serial port of their own), or to /dev/console when it can't be
    /// opened (no such port on this machine). `why_not` says why the device was not used.
    pub fn device_or_console(cell: &str, device: &str) -> (Channel, Option<String>) {
        let e = match open_raw_tty(device) {
            Ok(fd) => return (Channel::to_file(cell, fd, device), None),
            Err(e) => e,
        };
        let why = format!("results device {device}: {e}; using /dev/console");
        match sys::open("/dev/console", OFlag::O_WRONLY | OFlag::O_NOCTTY) {
            Ok(fd) => (Channel::to_file(cell, fd, "/dev/console"), Some(why)),
            Err(_) => (Channel::stdout(cell), Some(why)),
        }
    }

    /// Sends one frame. A lost channel is reported on stderr (the console) and otherwise
    /// ignored: the payload must still power off.
    pub fn send(&mut self, msg: &Message) {
        let line = encode(&self.cell, self.seq, msg);
        self.seq += 1;
        let written = match &self.out {
            Some(fd) => sys::write_all(fd, line.as_bytes()),
            None => sys::write_all(std::io::stdout(), line.as_bytes()),
        };
        if let Err(e) = written {
            eprintln!("kstorm-payload: writing a frame to {}: {e}", self.target);
        }
    }

    pub fn log(&mut self, msg: impl Into<String>) {
        self.send(&Message::Log { msg: msg.into() });
    }
}

/// Opens a serial port for writing, without making it our controlling terminal, and turns
/// off output processing so a frame goes out byte for byte.
fn open_raw_tty(device: &str) -> std::io::Result<OwnedFd> {
    let fd = sys::open(device, OFlag::O_WRONLY | OFlag::O_NOCTTY)?;
    if let Ok(mut t) = tcgetattr(&fd) {
        cfmakeraw(&mut t);
        let _ = tcsetattr(&fd, SetArg::TCSANOW, &t);
    }
    Ok(fd)
}
