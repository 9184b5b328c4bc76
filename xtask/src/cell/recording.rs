//! A recorded cell: QEMU's record/replay log (`replay.bin`) and the start snapshot
//! (`replay-snap.qcow2`) beside its `console.log`, and what a replay must find unchanged to be
//! valid (QEMU's version, the exact command line, the kernel's and initramfs's hashes).
//!
//! The monitor, the detector and the judge do not know a cell was recorded.

use super::CellRecord;
use crate::detect::Os;
use crate::qemu::{self, Record, RrMode};
use crate::verdict::Verdict;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::ffi::OsString;
use std::path::Path;

pub const REPLAY_FILE: &str = "replay.bin";
pub const SNAPSHOT_FILE: &str = "replay-snap.qcow2";

/// What `result.json` says of a recording kept beside the cell's console.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplayInfo {
    /// The log, in the cell's folder.
    pub file: String,
    pub size_bytes: u64,
    /// The start snapshot (for reverse debugging), in the cell's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<String>,
    /// `qemu-system-x86_64 --version` (first line) of the QEMU that recorded it.
    pub qemu_version: String,
    /// The recorded QEMU command line, word by word (`qemu.cmd` is the same, shell-quoted).
    pub argv: Vec<String>,
    /// The inputs the replay must find unchanged: path and SHA-256.
    pub inputs: Vec<ReplayInput>,
    /// How many bytes of console the recording produced (`console.log`).
    pub console_bytes: u64,
    /// The detector's table for the console.
    pub os: Os,
    /// Wall time of the recorded QEMU, to bound the replay.
    pub recorded_s: f64,
}

/// A file the recorded QEMU read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayInput {
    /// `kernel` or `initrd`.
    pub role: String,
    pub path: String,
    pub sha256: String,
}

/// The recording of a cell whose folder is `dir`: creates the snapshot image (QEMU writes the
/// `init` snapshot into it as the guest starts).
pub fn prepare(dir: &Path) -> Result<Record> {
    let snap = dir.join(SNAPSHOT_FILE);
    let _ = std::fs::remove_file(&snap);
    let _ = std::fs::remove_file(dir.join(REPLAY_FILE));
    crate::host::Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&snap)
        .arg("1G")
        .timeout(std::time::Duration::from_secs(30))
        .run_silent()
        .context("creating the snapshot image of the recording")?;
    Ok(Record {
        mode: RrMode::Record,
        file: dir.join(REPLAY_FILE),
        snapshots: Some(snap),
    })
}

/// What the record of a recorded cell says of its recording, once QEMU is gone.
pub fn describe(
    dir: &Path,
    argv: &[OsString],
    kernel: Option<&Path>,
    initrd: Option<&Path>,
    os: Os,
    recorded_s: f64,
) -> Result<ReplayInfo> {
    let size_bytes = std::fs::metadata(dir.join(REPLAY_FILE))
        .with_context(|| format!("the recording {}", dir.join(REPLAY_FILE).display()))?
        .len();
    let mut inputs = Vec::new();
    for (role, path) in [("kernel", kernel), ("initrd", initrd)] {
        if let Some(p) = path {
            inputs.push(ReplayInput {
                role: role.into(),
                path: p.display().to_string(),
                sha256: crate::host::sha256_file(p)?,
            });
        }
    }
    Ok(ReplayInfo {
        file: REPLAY_FILE.into(),
        size_bytes,
        snapshots: dir
            .join(SNAPSHOT_FILE)
            .exists()
            .then(|| SNAPSHOT_FILE.into()),
        qemu_version: qemu::replay::version()?,
        argv: argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        inputs,
        console_bytes: std::fs::metadata(dir.join("console.log")).map_or(0, |m| m.len()),
        os,
        recorded_s,
    })
}

/// True when a cell's recording is worth its disk space: it ended in a crash, a hang or an
/// OOM kill, or not as expected.
pub fn worth_keeping(record: &CellRecord) -> bool {
    !record.as_expected
        || matches!(
            record.verdict,
            Verdict::Crash { .. } | Verdict::Hang { .. } | Verdict::OomKilled { .. }
        )
}

/// Deletes the recording of a cell that ended well (unless `keep_all`), and says so in its
/// record.
pub fn keep_or_discard(record: &mut CellRecord, dir: &Path, keep_all: bool) {
    if record.replay.is_none() || keep_all || worth_keeping(record) {
        return;
    }
    let _ = std::fs::remove_file(dir.join(REPLAY_FILE));
    let _ = std::fs::remove_file(dir.join(SNAPSHOT_FILE));
    record.replay = None;
}
