//! Re-executes a recorded cell (`rr=replay`): the recorded command line, its console into
//! `replay-console.log` and its results port into `replay-results.log`, bounded by a timeout;
//! then the replayed console against the recorded one, byte for byte, and the detector on it.

use super::recording::{ReplayInfo, REPLAY_FILE};
use crate::detect::{scan, Signatures};
use crate::error::{InfraCause, InfraError, UsageError};
use crate::qemu::{self, replay::ReplayPlan, QemuProcess, Record, RrMode};
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub const CONSOLE_FILE: &str = "replay-console.log";
pub const RESULTS_FILE: &str = "replay-results.log";
pub const STDERR_FILE: &str = "replay-qemu.stderr";

/// What a replay did.
#[derive(Debug, Clone)]
pub struct Replayed {
    pub console: PathBuf,
    pub wall_s: f64,
    /// QEMU ended by itself (the log's recorded end); false: the timeout killed it.
    pub ended: bool,
    /// The first byte at which the replayed console differs from the recorded one (within the
    /// recorded length), or where it stopped short; `None`: identical.
    pub first_difference: Option<u64>,
    pub replayed_bytes: u64,
    /// The results port, replayed against recorded (`results.log`): the first differing
    /// byte, `Some(None)` when identical; `None` for recordings made before it was kept.
    pub results_difference: Option<Option<u64>>,
    /// The detector's reading of the replayed console.
    pub scan: scan::FileScan,
    /// QEMU exited with an error (a damaged log, a changed command line): status and its
    /// last line of stderr.
    pub qemu_error: Option<String>,
}

/// Every reason a recording cannot be replayed here, as a usage error: a missing file, another
/// QEMU, a kernel or initramfs that changed since it was recorded.
pub fn check(dir: &Path, info: &ReplayInfo) -> Result<()> {
    let file = dir.join(&info.file);
    if !file.exists() {
        return Err(
            UsageError::option("CELL_DIR", format!("{}: no recording", file.display())).into(),
        );
    }
    let now = qemu::replay::version()?;
    if now != info.qemu_version {
        return Err(UsageError::option(
            "CELL_DIR",
            format!(
                "recorded with {:?}, this host has {now:?}: a replay needs the same QEMU",
                info.qemu_version
            ),
        )
        .into());
    }
    for input in &info.inputs {
        let path = Path::new(&input.path);
        let changed = match crate::host::sha256_file(path) {
            Ok(h) if h == input.sha256 => continue,
            Ok(h) => format!("its SHA-256 is {h}, recorded {}", input.sha256),
            Err(e) => format!("{e:#}"),
        };
        return Err(UsageError::option(
            "CELL_DIR",
            format!(
                "the {} {} changed since it was recorded: {changed}",
                input.role, input.path
            ),
        )
        .into());
    }
    Ok(())
}

/// Replays the recording of the cell in `dir` (checked by [`check`]), waiting at most
/// `timeout` for it to end; with `gdb_port`, QEMU starts stopped and waits for gdb.
pub fn run(
    dir: &Path,
    info: &ReplayInfo,
    gdb_port: Option<u16>,
    timeout: Duration,
) -> Result<Replayed> {
    let plan = ReplayPlan {
        record: Record {
            mode: RrMode::Replay,
            file: dir.join(&info.file),
            snapshots: info.snapshots.as_ref().map(|s| dir.join(s)),
        },
        results_file: dir.join(RESULTS_FILE),
        gdb_port,
    };
    let argv = qemu::replay::replay_argv(&info.argv, &plan).with_context(|| {
        format!(
            "{}: the recorded command line",
            dir.join(REPLAY_FILE).display()
        )
    })?;
    let console_path = dir.join(CONSOLE_FILE);
    let mut console = std::fs::File::create(&console_path)
        .with_context(|| format!("creating {}", console_path.display()))?;
    let start = Instant::now();
    let mut qemu = QemuProcess::spawn(&argv, &dir.join(STDERR_FILE), false)?;
    let mut stdout = qemu.take_stdout().context("QEMU's stdout is not piped")?;
    let copier = std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || console.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = console.flush();
    });
    let status = qemu.wait_for(timeout);
    qemu.kill();
    let _ = copier.join();
    let wall_s = start.elapsed().as_secs_f64();
    let mut r = compare(dir, info, &console_path, status.is_some(), wall_s)?;
    if let Some(st) = status.filter(|st| !st.success()) {
        let stderr = std::fs::read_to_string(dir.join(STDERR_FILE)).unwrap_or_default();
        r.qemu_error = Some(format!("{st}: {}", super::judge::last_line(&stderr)));
    }
    Ok(r)
}

/// The replayed console against the recorded one, and what the detector reads in it.
fn compare(
    dir: &Path,
    info: &ReplayInfo,
    console: &Path,
    ended: bool,
    wall_s: f64,
) -> Result<Replayed> {
    let recorded = std::fs::read(dir.join("console.log"))
        .with_context(|| format!("reading {}", dir.join("console.log").display()))?;
    let replayed =
        std::fs::read(console).with_context(|| format!("reading {}", console.display()))?;
    let sigs = Signatures::builtin(info.os)
        .map_err(|e| InfraError::new(InfraCause::Harness, format!("signatures: {e:#}")))?;
    Ok(Replayed {
        console: console.to_path_buf(),
        wall_s,
        ended,
        first_difference: first_difference(&recorded, &replayed),
        replayed_bytes: replayed.len() as u64,
        results_difference: results_difference(dir),
        scan: scan::scan_file(&sigs, console)?,
        qemu_error: None,
    })
}

/// The replayed results port against the recorded one, when the recording kept it.
fn results_difference(dir: &Path) -> Option<Option<u64>> {
    let recorded = std::fs::read(dir.join(crate::cell::backend::RECORDED_RESULTS)).ok()?;
    let replayed = std::fs::read(dir.join(RESULTS_FILE)).unwrap_or_default();
    Some(first_difference(&recorded, &replayed))
}

/// The first offset within `recorded` where `replayed` differs or ends.
pub fn first_difference(recorded: &[u8], replayed: &[u8]) -> Option<u64> {
    let same = recorded
        .iter()
        .zip(replayed)
        .take_while(|(a, b)| a == b)
        .count();
    (same < recorded.len()).then_some(same as u64)
}

#[cfg(test)]
mod tests {
    use super::first_difference;

    #[test]
    fn differences_are_found_within_the_recorded_length() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"abc", b"abcdef"), None);
        assert_eq!(first_difference(b"abc", b"abX"), Some(2));
        assert_eq!(first_difference(b"abc", b"ab"), Some(2));
        assert_eq!(first_difference(b"", b""), None);
    }
}
