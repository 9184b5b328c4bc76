//! Transports: how the harness reaches the payload in a guest that boots its own init.
//!
//! - [`ssh`]: QEMU user networking forwards a host port to the guest's sshd; libssh2 (the
//!   `ssh2` crate) logs in, uploads, runs commands with their exit status.
//! - [`serial`]: logs in on the serial console (QEMU's stdin/stdout), runs commands between
//!   markers, moves files as checksummed base64 chunks.
//!
//! Both run the payload as `kstorm-payload --plan FILE` and hand its output lines (frames) to
//! the cell, which parses them exactly as on the PID-1 path. Failures come back typed, so the
//! cell can tell the guest refusing from the channel dying ([`TransportError`]); whether the
//! kernel crashed is the console detector's call, never the transport's.

pub mod serial;
pub mod ssh;
pub mod wire;

use crate::config::TransportKind;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Where the payload and its plan go in the guest (a tmpfs in the disk image).
pub const GUEST_DIR: &str = "/run/kstorm";

/// Why a transport operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportError {
    /// The guest answered and said no: authentication failed, a command failed, a checksum
    /// never matched.
    Refused(String),
    /// The channel died (connection reset, EOF without an exit status, console closed).
    Lost(String),
    /// The boot or cell deadline passed before the guest answered.
    Deadline(String),
    /// The cell is being torn down (QEMU killed, Ctrl-C).
    Stopped,
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransportError::Refused(m) => write!(f, "guest refused: {m}"),
            TransportError::Lost(m) => write!(f, "lost connection: {m}"),
            TransportError::Deadline(m) => write!(f, "deadline passed: {m}"),
            TransportError::Stopped => f.write_str("stopped"),
        }
    }
}

pub type TResult<T> = Result<T, TransportError>;

/// A way to run commands and move files in a running guest.
pub trait Transport: Send {
    /// Waits until the guest accepts commands (sshd up / logged in), at most until `deadline`.
    fn connect(&mut self, deadline: Instant) -> TResult<()>;
    /// Writes `data` to `path` in the guest with `mode`, and checks it arrived whole.
    fn upload(&mut self, data: &[u8], path: &str, mode: u32) -> TResult<()>;
    /// Runs a shell command line, handing each output line to `on_line`; returns its status.
    fn run(&mut self, command: &str, on_line: &mut dyn FnMut(&str)) -> TResult<i32>;
    /// Reads a file from the guest.
    fn download(&mut self, path: &str) -> TResult<Vec<u8>>;
    /// What the transport counted (retries, bytes moved).
    fn stats(&self) -> TransportStats;
}

/// Counters kept in the cell's result (`transport` field).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportStats {
    pub kind: TransportKind,
    /// QEMU start to the first command accepted.
    pub connect_s: Option<f64>,
    /// Connection attempts before sshd answered / login prompts seen.
    pub attempts: u32,
    pub uploaded_bytes: u64,
    pub upload_s: f64,
    /// Serial: chunks sent again or re-checked because a checksum or marker was damaged.
    pub retries: u32,
    /// Serial: end markers asked for again.
    pub requeries: u32,
    /// Why the channel ended early, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lost: Option<String>,
}

/// Faults injected by tests only, to check how the cell reports them. Empty in every real run.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// ssh: once the first scenario starts, run this in the guest on a second channel (e.g.
    /// kill the sshd).
    pub ssh_on_start: Option<String>,
    /// serial: after login, drop one byte in every N the harness reads from the console.
    pub serial_drop_every: Option<u64>,
    /// The isolation test's control: user networking without `restrict=on`, to show that the
    /// test would see a connection if the guest could make one.
    pub unrestricted_net: bool,
}

/// Uploads the payload and the plan, runs the plan, and returns the payload's exit status.
/// The payload runs `--disposable`: every cell boots a throwaway overlay of the disk, so the
/// scenarios that harm the machine (panic, oom) may run.
/// Output lines go to `on_line`. With `results_file`, the payload also writes its frames to a
/// file that is read back at the end (the serial console may damage lines on the way; frames
/// read back fill the gaps, the cell ignores duplicates).
pub fn run_plan(
    t: &mut dyn Transport,
    payload: &[u8],
    plan_json: &[u8],
    results_file: bool,
    on_line: &mut dyn FnMut(&str),
) -> TResult<i32> {
    let bin = format!("{GUEST_DIR}/kstorm-payload");
    let plan = format!("{GUEST_DIR}/plan.json");
    let results = format!("{GUEST_DIR}/results.log");
    let q = wire::sh_quote;
    if results_file {
        // A serial line is slow: send the payload xz-compressed (about a third of the bytes);
        // xz's own CRC and the upload's SHA-256 both guard it.
        let xz = compress_xz(payload)?;
        let packed = format!("{bin}.xz");
        t.upload(&xz, &packed, 0o644)?;
        let mut out = Vec::new();
        let st = t.run(
            &format!(
                "unxz -c {} > {} && chmod 755 {}",
                q(&packed),
                q(&bin),
                q(&bin)
            ),
            &mut |l| out.push(l.to_string()),
        )?;
        if st != 0 {
            return Err(TransportError::Refused(format!(
                "unpacking the payload failed (status {st}): {}",
                out.join(" | ")
            )));
        }
    } else {
        t.upload(payload, &bin, 0o755)?;
    }
    t.upload(plan_json, &plan, 0o644)?;
    let command = if results_file {
        // pipefail: the status is the payload's, not tee's.
        format!(
            "set -o pipefail; {} --plan {} --disposable | tee {}",
            q(&bin),
            q(&plan),
            q(&results)
        )
    } else {
        format!("{} --plan {} --disposable", q(&bin), q(&plan))
    };
    let status = t.run(&command, on_line)?;
    if results_file {
        let data = t.download(&results)?;
        for line in String::from_utf8_lossy(&data).lines() {
            on_line(line);
        }
    }
    Ok(status)
}

fn compress_xz(data: &[u8]) -> TResult<Vec<u8>> {
    use std::io::Write;
    // CRC32 check: busybox's unxz does not support xz's default CRC64.
    let stream = xz2::stream::Stream::new_easy_encoder(6, xz2::stream::Check::Crc32)
        .map_err(|e| TransportError::Refused(format!("xz: {e}")))?;
    let mut enc = xz2::write::XzEncoder::new_stream(Vec::new(), stream);
    enc.write_all(data)
        .and_then(|_| enc.finish())
        .map_err(|e| TransportError::Refused(format!("xz: {e}")))
}
