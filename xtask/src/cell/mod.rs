//! Runs one cell, whatever the target: Linux with the payload as PID 1, a disk image reached
//! over ssh or the serial shell, GNU Mach with kstorm's bootstrap task (and, on the same path,
//! FreeBSD and GNU/Hurd disk images).
//!
//! [`backend`] starts QEMU and turns all that comes back into one stream of events;
//! [`monitor`] decides, purely, when and why the cell ends; [`judge`] turns that ending and
//! what was observed into the verdict. This file ties them together and writes the record.

pub mod backend;
pub mod judge;
pub mod monitor;
pub mod recording;
pub mod replay;

use crate::config::{Expect, TransportSpec};
use crate::detect::{CrashReport, Detector};
use crate::error::InfraCause;
use crate::images::{BootArtifacts, Provenance};
use crate::matrix::Cell;
use crate::qemu::{Accel, MachineKind, QemuSpec};
use crate::transport::{Faults, TransportStats};
use crate::verdict::{self, Verdict};
use anyhow::{Context, Result};
use backend::{Backend, Launch};
use kstorm_payload::frame::ScenarioResult;
use monitor::{Ending, Monitor, Observed};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the loop looks at the clock when nothing arrives.
const TICK: Duration = Duration::from_millis(50);

/// Everything known about a finished cell; written as its `result.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellRecord {
    pub id: String,
    pub suite: String,
    pub case: String,
    pub scenario: String,
    pub image: String,
    pub ram_mib: u64,
    pub variant: String,
    pub repeat: u32,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub expect: Expect,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect_title: Option<String>,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub as_expected: bool,
    pub accel: Accel,
    /// The machine profile it booted on (`xtask/machines.yaml`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineKind>,
    #[serde(default)]
    pub provenance: Provenance,
    /// The payload's hello: agent, kernel version, memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<serde_json::Value>,
    pub results: Vec<ScenarioResult>,
    /// Everything the detector saw, crashes and OOM kills, with their report lines.
    pub reports: Vec<CrashReport>,
    pub timings: Timings,
    pub frames: FrameStats,
    /// ssh or serial-shell cells: what the transport did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress: Option<u64>,
    pub started_at: String,
    /// A recorded cell whose recording was kept: what `cargo xtask replay` needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<recording::ReplayInfo>,
}

impl CellRecord {
    /// The record of a cell that did not boot, with the `Infra` verdict that says why.
    pub fn unstarted(cell: &Cell, accel: Accel, verdict: Verdict) -> CellRecord {
        CellRecord {
            id: cell.id.clone(),
            suite: cell.suite.clone(),
            case: cell.case.name.0.clone(),
            scenario: cell.case.scenario.0.clone(),
            image: cell.image.name.0.clone(),
            ram_mib: cell.ram.mib(),
            variant: cell.variant.name.0.clone(),
            repeat: cell.repeat,
            params: cell.params.clone(),
            expect: cell.case.expect,
            expect_title: cell.case.expect_title.clone(),
            verdict,
            as_expected: false,
            accel,
            machine: None,
            provenance: Provenance::default(),
            hello: None,
            results: Vec::new(),
            reports: Vec::new(),
            timings: Timings::default(),
            frames: FrameStats::default(),
            transport: None,
            last_progress: None,
            started_at: chrono::Local::now().to_rfc3339(),
            replay: None,
        }
    }
}

/// What the cell needs beyond its own description.
pub struct CellEnv<'a> {
    pub boot: BootArtifacts,
    pub accel: Accel,
    /// The cell's results folder (console.log, qemu.stderr, result.json).
    pub dir: PathBuf,
    /// Called with short progress messages for the progress bar.
    pub progress: &'a (dyn Fn(&str) + Sync),
    /// For images that boot their own init: the payload and the plan to send over the
    /// transport (the PID-1 path has them in its initramfs).
    pub guest: Option<GuestFiles>,
    /// Test-only fault injection; empty in real runs.
    pub faults: Faults,
}

/// What a transport uploads before running the plan.
#[derive(Clone)]
pub struct GuestFiles {
    pub payload: Arc<Vec<u8>>,
    pub plan_json: Vec<u8>,
    /// A non-Linux guest: its recipe's steps replace the Linux payload (`guest::driver`).
    pub job: Option<Arc<crate::guest::GuestJob>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timings {
    /// QEMU start to the payload's hello.
    pub boot_s: Option<f64>,
    /// QEMU start to QEMU gone.
    pub total_s: f64,
    /// From the first crash line arriving to the detector's event.
    pub detect_ms: Option<f64>,
    /// From the detector's event to QEMU gone.
    pub crash_to_exit_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FrameStats {
    pub received: u64,
    pub bad_checksum: u64,
    pub malformed: u64,
    /// Frames of another cell (a stale guest): ignored.
    pub foreign: u64,
    /// Sequence numbers that never arrived.
    pub missing: u64,
    /// Which channel carried them.
    pub channel: Option<FrameChannel>,
    /// Frames received twice (a serial cell reads its frames back at the end): ignored.
    #[serde(default)]
    pub duplicate: u64,
}

/// Where a cell's frames come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameChannel {
    /// COM2, a serial port of their own (the payload as PID 1).
    ResultsPort,
    /// The console, between the kernel's own lines (GNU Mach's bootstrap task).
    Console,
    /// The output of the payload's command over ssh.
    Ssh,
    /// The output of the payload's command on the serial shell.
    Serial,
}

impl FrameChannel {
    /// The channel of a cell reached by `transport` on a machine of `profile`.
    pub fn of(transport: &TransportSpec, profile: MachineKind) -> FrameChannel {
        match transport {
            TransportSpec::Ssh(_) => FrameChannel::Ssh,
            TransportSpec::SerialShell(_) => FrameChannel::Serial,
            TransportSpec::Pid1 if profile.spec().results_port.is_some() => {
                FrameChannel::ResultsPort
            }
            TransportSpec::Pid1 => FrameChannel::Console,
        }
    }
}

/// Runs the cell and returns its record (the verdict is `Infra` when the harness failed).
pub fn run(cell: &Cell, env: CellEnv<'_>) -> CellRecord {
    let mut record = CellRecord::unstarted(
        cell,
        env.accel,
        Verdict::infra(InfraCause::Harness, "not run"),
    );
    record.machine = Some(env.boot.medium.profile);
    record.provenance = env.boot.provenance.clone();
    if let Err(e) = boot_and_watch(cell, &env, &mut record) {
        record.verdict = Verdict::from_error(&e, InfraCause::QemuStart);
    }
    record.as_expected = verdict::meets(
        cell.case.expect,
        cell.case.expect_title.as_deref(),
        &record.verdict,
    );
    record
}

/// Boots the cell, feeds the monitor until it decides, stops QEMU and fills in the record.
fn boot_and_watch(cell: &Cell, env: &CellEnv<'_>, record: &mut CellRecord) -> Result<()> {
    std::fs::create_dir_all(&env.dir).with_context(|| format!("creating {}", env.dir.display()))?;
    let mut spec = QemuSpec::new(env.boot.medium.clone(), cell.ram.mib(), env.accel);
    spec.name = Some(env.dir.display().to_string());
    spec.guest_reboots = env
        .guest
        .as_ref()
        .and_then(|g| g.job.as_ref())
        .is_some_and(|j| !j.tunables.is_empty());
    if let Some(base) = &env.boot.medium.disk_base {
        // The base image is shared and never written: the guest writes to an overlay.
        let overlay = env.dir.join("disk.qcow2");
        let _ = std::fs::remove_file(&overlay);
        crate::images::disk::overlay(base, &overlay)?;
        spec.disk = Some(overlay);
    }
    if cell.record {
        // icount, which record/replay needs, is TCG's.
        spec.accel = Accel::Tcg;
        spec.record = Some(recording::prepare(&env.dir)?);
    }
    let channel = FrameChannel::of(&cell.transport, env.boot.medium.profile);
    let detector = Detector::new(cell.image.os)?;
    let backend = Backend::start(
        spec,
        Launch {
            transport: &cell.transport,
            guest: env.guest.clone(),
            faults: env.faults.clone(),
            dir: &env.dir,
            boot_deadline: cell.deadlines.boot(),
        },
    )?;
    (env.progress)("booting");
    let start = backend.start;
    let mut monitor = Monitor::new(&cell.id, start, cell.deadlines, channel, detector);
    let mut backend = backend;
    loop {
        let event = backend.next(TICK);
        let ending = monitor.on(event, Instant::now());
        if let Some(note) = monitor.take_note() {
            (env.progress)(&note);
        }
        if ending.is_some() {
            break;
        }
    }
    let stderr = backend.qemu_stderr();
    let argv = backend.argv.clone();
    let (rest, gone) = backend.stop();
    // Whatever arrived between the ending and QEMU's death still counts as observed.
    for event in rest {
        monitor.on(event, Instant::now());
    }
    let (ending, seen, reports) = monitor.finish();
    record.timings.total_s = start.elapsed().as_secs_f64();
    record.verdict = judge::verdict(&ending, &seen, record.timings.total_s, &stderr);
    fill_record(record, &ending, seen, reports, gone);
    if cell.record {
        record.accel = Accel::Tcg;
        let medium = &env.boot.medium;
        let info = recording::describe(
            &env.dir,
            &argv,
            medium.kernel.as_deref(),
            medium.initrd.as_deref(),
            cell.image.os,
            record.timings.total_s,
        );
        // The verdict stands (it is the kernel's); the recording that failed is the host's.
        match info {
            Ok(info) => record.replay = Some(info),
            Err(e) => eprintln!("kstorm: {}: no replay: {e:#}", cell.id),
        }
    }
    Ok(())
}

/// Copies what the monitor observed into the record.
fn fill_record(
    record: &mut CellRecord,
    ending: &Ending,
    seen: Observed,
    reports: Vec<CrashReport>,
    gone: Instant,
) {
    record.timings.boot_s = seen.boot_s;
    record.timings.detect_ms = seen.detect_ms;
    if let (Ending::Crash(_), Some((_, at))) = (ending, &seen.crash) {
        record.timings.crash_to_exit_ms =
            Some(gone.saturating_duration_since(*at).as_secs_f64() * 1000.0);
    }
    record.hello = seen.hello;
    record.results = seen.results;
    record.frames = seen.frames;
    record.last_progress = seen.last_progress;
    record.transport = seen.transport;
    record.reports = reports;
}
