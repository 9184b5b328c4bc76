//! QEMU's record/replay (`-icount shift=auto,rr=record|replay,rrfile=F`) as argument-vector
//! data: a recorded cell's command line, and the replay's command line derived from the one that
//! was recorded (the same vector, with `rr=replay`, the results port written to a file and,
//! for a debugger, stopped at the start with the gdb stub).
//!
//! Record/replay needs TCG (icount) and replays only what it recorded: character devices and
//! clocks, not a block device unless it goes through `blkreplay` (not built here), nor a
//! network without `filter-replay`. So only a kernel booted directly with an initramfs, no
//! disk and no network, is recorded (`crate::matrix::check_record` says so before boot).

use super::Args;
use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::PathBuf;

/// The snapshot QEMU takes at the start of a recording, and loads to step backwards.
pub const SNAPSHOT: &str = "init";
/// The drive (never attached to a device, so the guest cannot see it) that holds it.
const SNAPSHOT_DRIVE: &str = "rr-snapshots";

/// The icount shift a recording runs with: each guest instruction is 2^SHIFT ns of the guest's
/// clock. A fixed shift, not `auto`: with `auto`, QEMU 7.2 adapts the shift to the host's speed
/// as it goes, and stepping backwards (which reloads the start snapshot mid-replay) then lost
/// its place in 5 of 12 gdb sessions (a hang, or "Missing character write event in the replay
/// log"); with shift 5, in 1 of 32 (shift 4: 1 of 4, shift 2: 0 of 5 but three times slower).
/// A fixed shift makes the fault rarer; it does not remove it (see `verbs::replay`). Shift 5
/// (31 M instructions per guest second) also replays about twice as fast as `auto` here, since
/// a busy wait in the guest costs fewer instructions; the guest's clock then runs some 3-5
/// times faster than the host's on TCG, which shortens the guest's own time bounds, never the
/// harness's.
pub const SHIFT: &str = "5";

/// Whether QEMU records this execution or replays one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RrMode {
    Record,
    Replay,
}

/// Record/replay of one QEMU execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub mode: RrMode,
    /// The log of every non-deterministic input (`rrfile=`).
    pub file: PathBuf,
    /// A qcow2 image for the start snapshot (`rrsnapshot=init`), which reverse debugging
    /// (`reverse-stepi`) rewinds to; `None`: no snapshot, forward replay only.
    pub snapshots: Option<PathBuf>,
}

impl Record {
    /// Appends `-icount ...` (and the snapshot drive) to `a`.
    pub(super) fn push(&self, a: &mut Args) {
        a.pair("-icount", &self.icount_value(SHIFT));
        if let Some(drive) = self.drive_value() {
            a.pair("-drive", &drive);
        }
    }

    fn drive_value(&self) -> Option<String> {
        let snap = self.snapshots.as_ref()?;
        Some(format!(
            "file={},if=none,id={SNAPSHOT_DRIVE},format=qcow2",
            super::option_value(snap)
        ))
    }

    fn icount_value(&self, shift: &str) -> String {
        let mode = match self.mode {
            RrMode::Record => "record",
            RrMode::Replay => "replay",
        };
        let mut v = format!(
            "shift={shift},rr={mode},rrfile={}",
            super::option_value(&self.file)
        );
        if self.snapshots.is_some() {
            v.push_str(&format!(",rrsnapshot={SNAPSHOT}"));
        }
        v
    }
}

/// How a recorded command line is replayed.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    /// The recording where it is now (the cell's folder may have moved since): its log and
    /// snapshot image replace the recorded paths.
    pub record: Record,
    /// Where the results port (COM2) writes during the replay: a file, since nobody is
    /// connected to the recording's socket any more. Its writes were recorded, not its backend.
    pub results_file: PathBuf,
    /// Stop before the first instruction and serve gdb on 127.0.0.1:PORT.
    pub gdb_port: Option<u16>,
}

/// The replay's command line: the recorded `argv` with `plan.record` (`rr=replay`, the
/// recording's files where they are now, the recorded shift), the results socket replaced by
/// `plan.results_file`, and the gdb stub if asked. An argv that was not recorded is an error
/// saying so.
pub fn replay_argv(recorded: &[String], plan: &ReplayPlan) -> Result<Vec<OsString>> {
    let mut out: Vec<String> = Vec::with_capacity(recorded.len() + 4);
    let mut it = recorded.iter();
    let mut icount = false;
    let snapshot_drive = format!("id={SNAPSHOT_DRIVE},");
    while let Some(arg) = it.next() {
        out.push(arg.clone());
        let value = match arg.as_str() {
            "-icount" | "-chardev" | "-drive" => it.next().context("a flag without its value")?,
            _ => continue,
        };
        if arg == "-icount" {
            if !value.contains(",rr=record,") {
                bail!("-icount {value}: not a recording (no rr=record)");
            }
            icount = true;
            let shift = value
                .split(',')
                .find_map(|kv| kv.strip_prefix("shift="))
                .with_context(|| format!("-icount {value}: no shift="))?;
            out.push(plan.record.icount_value(shift));
        } else if value.contains(&snapshot_drive) {
            out.push(plan.record.drive_value().unwrap_or_else(|| value.clone()));
        } else if value.starts_with("socket,id=results,") || value.starts_with("file,id=results,") {
            out.push(format!(
                "file,id=results,path={}",
                super::option_value(&plan.results_file)
            ));
        } else {
            out.push(value.clone());
        }
    }
    if !icount {
        bail!("the command line has no -icount ...,rr=record: it was not recorded");
    }
    if let Some(port) = plan.gdb_port {
        out.extend(["-S".into(), "-gdb".into(), format!("tcp:127.0.0.1:{port}")]);
    }
    Ok(out.into_iter().map(OsString::from).collect())
}

/// `qemu-system-x86_64 --version`, first line, asked once per process: a replay is only valid
/// on the QEMU that recorded it.
pub fn version() -> Result<String> {
    static VERSION: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(v) = VERSION.get() {
        return Ok(v.clone());
    }
    let out = crate::host::Cmd::new(super::QEMU)
        .arg("--version")
        .timeout(std::time::Duration::from_secs(20))
        .read()?;
    let first = out.lines().next().unwrap_or_default().trim().to_string();
    Ok(VERSION.get_or_init(|| first).clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn record_args_escape_commas_and_name_the_snapshot() {
        let mut a = Args::default();
        Record {
            mode: RrMode::Record,
            file: "/r/c,1/replay.bin".into(),
            snapshots: Some("/r/c,1/snap.qcow2".into()),
        }
        .push(&mut a);
        let icount = format!("shift={SHIFT},rr=record,rrfile=/r/c,,1/replay.bin,rrsnapshot=init");
        assert_eq!(
            strs(&a.0),
            [
                "-icount",
                icount.as_str(),
                "-drive",
                "file=/r/c,,1/snap.qcow2,if=none,id=rr-snapshots,format=qcow2",
            ]
        );
    }

    #[test]
    fn the_replay_argv_is_the_recorded_one_with_rr_replay_and_its_shift() {
        let recorded: Vec<String> = [
            "-M",
            "microvm",
            "-chardev",
            "stdio,id=console,signal=off",
            "-chardev",
            "socket,id=results,server=on,wait=on,path=/tmp/k/results.sock",
            "-icount",
            "shift=auto,rr=record,rrfile=/c/replay.bin",
            "-kernel",
            "/k/vmlinux",
        ]
        .map(String::from)
        .to_vec();
        let plan = ReplayPlan {
            record: Record {
                mode: RrMode::Replay,
                file: "/moved/replay.bin".into(),
                snapshots: None,
            },
            results_file: "/c/replay-results.log".into(),
            gdb_port: Some(1234),
        };
        let a = strs(&replay_argv(&recorded, &plan).unwrap());
        assert_eq!(a[3], "stdio,id=console,signal=off");
        assert_eq!(a[5], "file,id=results,path=/c/replay-results.log");
        assert_eq!(a[7], "shift=auto,rr=replay,rrfile=/moved/replay.bin");
        assert_eq!(&a[8..10], ["-kernel", "/k/vmlinux"]);
        assert_eq!(&a[10..], ["-S", "-gdb", "tcp:127.0.0.1:1234"]);
        let unrecorded: Vec<String> = recorded[..6].to_vec();
        let err = replay_argv(&unrecorded, &plan).unwrap_err().to_string();
        assert!(err.contains("not recorded"), "{err}");
    }
}
