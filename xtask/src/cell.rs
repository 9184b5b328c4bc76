//! Runs one cell: boots QEMU, streams the console into the detector and the log, reads the
//! payload's frames, enforces the deadlines, and decides the verdict.
//!
//! Two channels come back from the guest: the console (COM1, QEMU's stdout), which the detector
//! reads, and the results port (COM2, a Unix socket), which carries the payload's frames. Frames
//! found on the console are accepted too (agents with only a console use it).

use crate::config::{Expect, Machine, TransportSpec};
use crate::detect::{Detector, Event, Kind, Report};
use crate::host::{self, InfraError};
use crate::images::BootArtifacts;
use crate::matrix::Cell;
use crate::qemu::{self, Accel, QemuProcess, QemuSpec};
use crate::transport::{self, Faults, Transport, TransportError, TransportStats};
use crate::verdict::{self, Verdict};
use anyhow::{Context, Result};
use kstorm_payload::frame::{self, Message, ScenarioResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// After a crash report starts, how long to keep reading its trace before killing QEMU.
const CRASH_GRACE: Duration = Duration::from_millis(250);
/// After the payload says it is done, how long it may take to power off.
const POWEROFF_GRACE: Duration = Duration::from_secs(15);
/// After a transport failed, how long to keep watching the console for a crash report (the
/// detector wins: a kernel that died also kills the channel) and for signs of life.
const TRANSPORT_LOSS_GRACE: Duration = Duration::from_secs(3);

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<Machine>,
    pub provenance: BTreeMap<String, String>,
    /// The payload's hello: agent, kernel version, memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<serde_json::Value>,
    pub results: Vec<ScenarioResult>,
    /// Everything the detector saw, crashes and OOM kills, with their report lines.
    pub reports: Vec<Report>,
    pub timings: Timings,
    pub frames: FrameStats,
    /// ssh or serial-shell cells: what the transport did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportStats>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_progress: Option<u64>,
    pub started_at: String,
}

impl CellRecord {
    /// The record of a cell that did not boot (yet), with an `Infra` verdict giving `reason`.
    pub fn unstarted(cell: &Cell, accel: Accel, reason: String) -> CellRecord {
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
            verdict: Verdict::Infra { reason },
            as_expected: false,
            accel,
            machine: None,
            provenance: BTreeMap::new(),
            hello: None,
            results: Vec::new(),
            reports: Vec::new(),
            timings: Timings::default(),
            frames: FrameStats::default(),
            transport: None,
            last_progress: None,
            started_at: chrono::Local::now().to_rfc3339(),
        }
    }
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
    /// Which channel carried them: "results-port", "console", "ssh" or "serial".
    pub channel: Option<String>,
    /// Frames received twice (a serial cell reads its frames back at the end): ignored.
    #[serde(default)]
    pub duplicate: u64,
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
}

/// What the reader threads send to the cell's loop.
enum Input {
    Console(Vec<u8>, Instant),
    ConsoleClosed,
    ResultsLine(String),
    ResultsClosed,
    /// The transport's driver finished: the payload's status, or why it could not run.
    TransportDone(Result<i32, TransportError>, TransportStats),
}

/// Runs the cell and returns its record (the verdict is `Infra` when the harness failed).
pub fn run(cell: &Cell, env: CellEnv<'_>) -> CellRecord {
    let mut record = CellRecord::unstarted(cell, env.accel, "not run".into());
    record.machine = Some(env.boot.machine);
    record.provenance = env.boot.provenance.clone();
    if let Err(e) = boot_and_watch(cell, &env, &mut record) {
        record.verdict = Verdict::Infra {
            reason: format!("{e:#}"),
        };
    }
    record.as_expected = verdict::meets(
        cell.case.expect,
        cell.case.expect_title.as_deref(),
        &record.verdict,
    );
    record
}

/// What the loop learned, before it becomes a verdict.
#[derive(Default)]
struct Watch {
    /// Console bytes not yet ending in a newline (frames on the console are read by line).
    console_lines: LineSplitter,
    /// When the last frame arrived (None: since QEMU started).
    last_beat: Option<Instant>,
    /// When the loop stops and QEMU is killed (a crash's grace, power-off, transport loss).
    kill_at: Option<Instant>,
    crash: Option<(Event, Instant)>,
    oom_victims: Vec<String>,
    done: bool,
    hang: bool,
    boot_silent: bool,
    timed_out: bool,
    interrupted: bool,
    running: Option<String>,
    seq_next: u64,
    qemu_status: Option<std::process::ExitStatus>,
    console_bytes: u64,
    /// Sequence numbers of the frames taken (duplicates are ignored).
    seen: std::collections::BTreeSet<u64>,
    /// The transport driver's end, once it ended.
    transport_end: Option<Result<i32, TransportError>>,
    /// Console bytes seen when the transport failed (more afterwards: the kernel is alive).
    console_bytes_at_loss: u64,
    /// QEMU ended by itself (the console closed) rather than being killed by the harness.
    qemu_exited: bool,
    bench_upload_mb_s: Option<f64>,
}

fn boot_and_watch(cell: &Cell, env: &CellEnv<'_>, record: &mut CellRecord) -> Result<()> {
    std::fs::create_dir_all(&env.dir).with_context(|| format!("creating {}", env.dir.display()))?;
    // Unix socket paths are limited to 108 bytes: keep the socket in a short temporary folder.
    let sock_dir = tempfile::Builder::new()
        .prefix("kstorm-")
        .tempdir_in("/tmp")
        .context("creating a socket folder")?;
    let sock = sock_dir.path().join("results.sock");
    let pid1 = cell.transport == TransportSpec::Pid1;
    let disk = match &env.boot.disk_base {
        Some(base) => {
            // The base image is shared and never written: the guest writes to an overlay.
            let overlay = env.dir.join("disk.qcow2");
            let _ = std::fs::remove_file(&overlay);
            crate::images::disk::overlay(base, &overlay)?;
            Some(overlay)
        }
        None => None,
    };
    let mut spec = QemuSpec {
        boot: env.boot.clone(),
        ram_mib: cell.ram.mib(),
        accel: env.accel,
        results_socket: pid1.then(|| sock.clone()),
        name: Some(env.dir.display().to_string()),
        disk,
        ssh_forward: None,
    };
    let stderr_log = env.dir.join("qemu.stderr");
    let (start, mut qemu) = spawn_qemu(&mut spec, cell, env, &stderr_log)?;
    let (tx, rx) = mpsc::channel();

    let stdout = qemu.take_stdout().context("QEMU's stdout is not piped")?;
    let console_log =
        std::fs::File::create(env.dir.join("console.log")).context("creating console.log")?;
    let console_tx = tx.clone();
    let (tap_tx, tap_rx) = mpsc::channel();
    let tap = matches!(cell.transport, TransportSpec::SerialShell(_)).then_some(tap_tx);
    let console_thread =
        std::thread::spawn(move || read_console(stdout, console_log, console_tx, tap));

    let stop = Arc::new(AtomicBool::new(false));
    let mut console_input = qemu.take_stdin();
    let (results_thread, driver_thread) = if pid1 {
        let results = connect_results(&sock, &mut qemu, &stderr_log)?;
        (
            Some(std::thread::spawn(move || read_results(results, tx))),
            None,
        )
    } else {
        let guest = env
            .guest
            .clone()
            .context("an image with its own init needs the payload to upload")?;
        let t: Box<dyn Transport> = match &cell.transport {
            TransportSpec::Ssh(ssh) => Box::new(transport::ssh::SshTransport::new(
                spec.ssh_forward.map(|(h, _)| h).unwrap_or_default(),
                ssh.clone(),
                crate::host::workspace_root().join("images"),
                env.faults.clone(),
                stop.clone(),
                start,
            )),
            TransportSpec::SerialShell(serial) => {
                Box::new(transport::serial::SerialTransport::new(
                    Box::new(console_input.take().context("QEMU's stdin is not piped")?),
                    tap_rx,
                    serial.clone(),
                    env.faults.clone(),
                    stop.clone(),
                    start,
                ))
            }
            TransportSpec::Pid1 => unreachable!(),
        };
        let boot_deadline = start + cell.deadlines.boot();
        let bench_upload = env.faults.bench_upload;
        (
            None,
            Some(std::thread::spawn(move || {
                drive(t, guest, boot_deadline, bench_upload, tx)
            })),
        )
    };
    (env.progress)("booting");

    let mut detector = Detector::new(cell.image.os)?;
    let mut watch = Watch::default();
    let deadlines = cell.deadlines;
    let mut console_open = true;

    loop {
        let now = Instant::now();
        if qemu::interrupted() {
            watch.interrupted = true;
            break;
        }
        if watch.kill_at.is_some_and(|k| now >= k) {
            break;
        }
        if now.duration_since(start) >= deadlines.cell() {
            watch.timed_out = true;
            break;
        }
        // With a transport, the driver enforces the boot deadline while it connects (an upload
        // over a serial line may then take longer than a boot).
        if pid1 && record.hello.is_none() && now.duration_since(start) >= deadlines.boot() {
            watch.hang = true;
            watch.boot_silent = watch.console_bytes == 0;
            break;
        }
        if watch.running.is_some()
            && now.duration_since(watch.last_beat.unwrap_or(start)) >= deadlines.heartbeat()
        {
            watch.hang = true;
            break;
        }
        if !console_open {
            // QEMU closed the console: it is exiting. Collect what the results port still holds.
            watch.qemu_exited = true;
            watch.qemu_status = qemu.wait_for(Duration::from_secs(5));
            drain(&rx, &mut |input| {
                handle(input, cell, &mut detector, &mut watch, record, start, env)
            });
            break;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Input::ConsoleClosed) => console_open = false,
            Ok(Input::TransportDone(end, stats)) => {
                record.transport = Some(stats);
                let grace = match &end {
                    Ok(_) if watch.done => Duration::ZERO,
                    Err(TransportError::Stopped) => Duration::ZERO,
                    _ => {
                        // Poke the console: a live kernel echoes (the getty answers), a dead
                        // one stays silent. Kept for the verdict's reason.
                        watch.console_bytes_at_loss = watch.console_bytes;
                        if let Some(input) = console_input.as_mut() {
                            let _ = input.write_all(b"\r").and_then(|_| input.flush());
                        }
                        TRANSPORT_LOSS_GRACE
                    }
                };
                watch.transport_end = Some(end);
                let at = Instant::now() + grace;
                watch.kill_at = Some(watch.kill_at.map_or(at, |k| k.min(at)));
            }
            Ok(input) => handle(input, cell, &mut detector, &mut watch, record, start, env),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => console_open = false,
        }
        if pid1 && watch.done && watch.kill_at.is_none() {
            // The payload finished: give the guest time to power off by itself.
            watch.kill_at = Some(Instant::now() + POWEROFF_GRACE);
        }
    }

    stop.store(true, Ordering::SeqCst);
    qemu.kill();
    let gone = Instant::now();
    if watch.qemu_status.is_none() {
        watch.qemu_status = qemu.try_wait();
    }
    drop(qemu);
    let _ = console_thread.join();
    if let Some(t) = results_thread {
        let _ = t.join();
    }
    if let Some(t) = driver_thread {
        let _ = t.join();
    }
    // Whatever arrived between the loop's end and QEMU's death still counts.
    drain(&rx, &mut |input| {
        handle(input, cell, &mut detector, &mut watch, record, start, env)
    });

    record.timings.total_s = start.elapsed().as_secs_f64();
    if let Some(stats) = record.transport.as_mut() {
        stats.bench_upload_mb_s = watch.bench_upload_mb_s;
    }
    // Gaps in the sequence: frames that never arrived by any channel.
    if let Some(&max) = watch.seen.iter().next_back() {
        record.frames.missing = max + 1 - watch.seen.len() as u64;
    }
    if let Some((_, at)) = &watch.crash {
        record.timings.crash_to_exit_ms =
            Some(gone.saturating_duration_since(*at).as_secs_f64() * 1000.0);
    }
    record.reports = detector.finish();
    if let Some((event, _)) = &mut watch.crash {
        // The live event's title is provisional; the finished report may name the guilty
        // function from lines that came after the first (RIP:, the call trace).
        if let Some(first) = crate::detect::summary::Summary::of(&record.reports).crash {
            *event = first;
        }
    }
    if watch.hang {
        // Silence is a finding too: keep it next to the console's own reports.
        let (kind, title) = match (&watch.running, watch.boot_silent) {
            (_, true) => (
                Kind::NoOutput,
                "no console output before the boot deadline".to_string(),
            ),
            (Some(s), _) => (
                Kind::NoProgress,
                format!(
                    "no heartbeat from {s} for {}s",
                    deadlines.heartbeat().as_secs()
                ),
            ),
            (None, _) => (
                Kind::NoProgress,
                "payload never started before the boot deadline".to_string(),
            ),
        };
        let event = Event {
            kind,
            title,
            line: 0,
            crash: false,
            victim: None,
        };
        record.reports.push(Report {
            event,
            lines: Vec::new(),
        });
    }
    record.verdict = decide(&watch, record, &stderr_log, start);
    Ok(())
}

/// Handles one input from the reader threads.
fn handle(
    input: Input,
    cell: &Cell,
    detector: &mut Detector,
    watch: &mut Watch,
    record: &mut CellRecord,
    start: Instant,
    env: &CellEnv<'_>,
) {
    match input {
        Input::Console(bytes, arrived) => {
            watch.console_bytes += bytes.len() as u64;
            for event in detector.feed(&bytes) {
                if event.kind == Kind::OomKill {
                    watch
                        .oom_victims
                        .push(event.victim.clone().unwrap_or_else(|| "?".into()));
                    (env.progress)(&event.title);
                } else if event.crash && watch.crash.is_none() {
                    let now = Instant::now();
                    record.timings.detect_ms =
                        Some(now.saturating_duration_since(arrived).as_secs_f64() * 1000.0);
                    (env.progress)(&event.title);
                    watch.crash = Some((event, now));
                    watch.kill_at = Some(now + CRASH_GRACE);
                }
            }
            // With a serial shell the console's frames reach the cell through the transport,
            // which checks what it reads; elsewhere frames on the console are taken as they are.
            if !matches!(cell.transport, TransportSpec::SerialShell(_)) {
                for line in watch.console_lines.push(&bytes) {
                    if line.contains(frame::MAGIC) {
                        on_frame_line(&line, "console", cell, watch, record, start, env);
                    }
                }
            }
        }
        Input::ResultsLine(line) if line.starts_with("kstorm-bench-upload ") => {
            let rate = line["kstorm-bench-upload ".len()..].parse().ok();
            watch.bench_upload_mb_s = rate;
        }
        Input::ResultsLine(line) => on_frame_line(
            &line,
            match cell.transport {
                TransportSpec::Pid1 => "results-port",
                TransportSpec::Ssh(_) => "ssh",
                TransportSpec::SerialShell(_) => "serial",
            },
            cell,
            watch,
            record,
            start,
            env,
        ),
        Input::TransportDone(end, stats) => {
            // Arrived after the loop ended.
            record.transport = Some(stats);
            watch.transport_end.get_or_insert(end);
        }
        Input::ConsoleClosed | Input::ResultsClosed => {}
    }
}

fn on_frame_line(
    line: &str,
    channel: &str,
    cell: &Cell,
    watch: &mut Watch,
    record: &mut CellRecord,
    start: Instant,
    env: &CellEnv<'_>,
) {
    let f = match frame::decode(line) {
        Ok(f) => f,
        Err(frame::FrameError::NotAFrame) => return,
        Err(frame::FrameError::BadChecksum { .. }) => {
            record.frames.bad_checksum += 1;
            return;
        }
        Err(_) => {
            record.frames.malformed += 1;
            return;
        }
    };
    if f.cell != cell.id {
        record.frames.foreign += 1;
        return;
    }
    if !watch.seen.insert(f.seq) {
        record.frames.duplicate += 1;
        return;
    }
    record.frames.received += 1;
    record
        .frames
        .channel
        .get_or_insert_with(|| channel.to_string());
    watch.seq_next = watch.seq_next.max(f.seq + 1);
    watch.last_beat = Some(Instant::now());
    match f.message {
        Message::Hello { .. } => {
            record.timings.boot_s = Some(start.elapsed().as_secs_f64());
            record.hello = serde_json::to_value(&f.message).ok();
            (env.progress)("payload up");
        }
        Message::Start { scenario, .. } => {
            (env.progress)(&format!("running {scenario}"));
            watch.running = Some(scenario);
        }
        Message::Hb { scenario, progress } => {
            record.last_progress = Some(progress);
            (env.progress)(&format!("{scenario}: {progress}"));
        }
        Message::Result(r) => {
            watch.running = None;
            record.results.push(r);
        }
        Message::Log { .. } => {}
        Message::Done => watch.done = true,
    }
}

/// Turns what was seen into the verdict. Order matters: a crash on the console wins over
/// everything (a crash that also broke the channel is a crash); then the harness's own state.
fn decide(watch: &Watch, record: &CellRecord, stderr_log: &Path, start: Instant) -> Verdict {
    if let Some((event, _)) = &watch.crash {
        return Verdict::Crash {
            kind: event.kind,
            title: event.title.clone(),
        };
    }
    if watch.interrupted {
        return Verdict::Infra {
            reason: "interrupted (Ctrl-C or SIGTERM)".into(),
        };
    }
    if watch.hang {
        return Verdict::Hang {
            last_progress: record.last_progress,
            scenario: watch.running.clone(),
        };
    }
    if watch.timed_out {
        return Verdict::Timeout {
            after_s: start.elapsed().as_secs_f64(),
        };
    }
    if watch.done {
        if let Some(failed) = record
            .results
            .iter()
            .find(|r| r.outcome == frame::Outcome::Fail)
        {
            return Verdict::Fail {
                reason: format!(
                    "{}: {}",
                    failed.scenario,
                    failed.error.as_deref().unwrap_or("scenario checks failed")
                ),
            };
        }
        if let Some(victim) = watch.oom_victims.first() {
            return Verdict::OomKilled {
                victim: victim.clone(),
            };
        }
        return Verdict::Pass;
    }
    if let (Some(end), false) = (&watch.transport_end, watch.qemu_exited) {
        if let Some(victim) = watch.oom_victims.first() {
            // The OOM killer may take the payload or the sshd: either way the kernel acted.
            return Verdict::OomKilled {
                victim: victim.clone(),
            };
        }
        let alive = if watch.console_bytes > watch.console_bytes_at_loss {
            "kernel alive: the console answered after the failure"
        } else {
            "the console was silent after the failure, no crash report"
        };
        return Verdict::Infra {
            reason: match end {
                Ok(st) => format!("guest refused: the payload exited with status {st} before finishing its plan ({alive})"),
                Err(e @ TransportError::Lost(_)) => format!("{e} ({alive})"),
                Err(e) => e.to_string(),
            },
        };
    }
    // QEMU ended without the payload finishing and without a kernel report.
    let stderr = std::fs::read_to_string(stderr_log).unwrap_or_default();
    match watch.qemu_status {
        Some(st) if st.success() => {
            if let Some(victim) = watch.oom_victims.first() {
                // The OOM killer took the payload's scenario down with the guest still sane.
                return Verdict::OomKilled {
                    victim: victim.clone(),
                };
            }
            Verdict::Crash {
                kind: Kind::LostConnection,
                title: "guest reset or powered off without a report".into(),
            }
        }
        Some(st) => Verdict::Infra {
            reason: format!("QEMU exited with {st}: {}", last_line(&stderr)),
        },
        None => Verdict::Infra {
            reason: format!("QEMU could not be waited for: {}", last_line(&stderr)),
        },
    }
}

/// Starts QEMU. For ssh, picks a free host port for the forward and retries with another
/// when QEMU could not bind it (another process took it in between).
fn spawn_qemu(
    spec: &mut QemuSpec,
    cell: &Cell,
    env: &CellEnv<'_>,
    stderr_log: &Path,
) -> Result<(Instant, QemuProcess)> {
    let console_input = cell.transport != TransportSpec::Pid1;
    for attempt in 0..5 {
        if let TransportSpec::Ssh(ssh) = &cell.transport {
            let port = transport::ssh::free_port().context("finding a free port for ssh")?;
            spec.ssh_forward = Some((port, ssh.port));
        }
        let argv = spec.argv();
        write_command_file(&env.dir.join("qemu.cmd"), &argv)?;
        let start = Instant::now();
        let mut qemu = QemuProcess::spawn_with(&argv, stderr_log, console_input)?;
        let Some((port, _)) = spec.ssh_forward else {
            return Ok((start, qemu));
        };
        // QEMU binds the forward before the guest runs: wait until the port accepts, or QEMU
        // gives up on it.
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = qemu.try_wait() {
                let stderr = std::fs::read_to_string(stderr_log).unwrap_or_default();
                if stderr.contains("forward") && attempt < 4 {
                    break; // port taken: next attempt
                }
                return Err(InfraError(format!(
                    "QEMU exited at start ({st}): {}",
                    last_line(&stderr)
                ))
                .into());
            }
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok((start, qemu));
            }
            if Instant::now() > until {
                return Ok((start, qemu));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Err(InfraError("no free port for the ssh forward after 5 attempts".into()).into())
}

/// The transport's side of a cell, on its own thread: connect, upload, run the plan, and
/// report every output line and the end to the cell's loop.
fn drive(
    mut t: Box<dyn Transport>,
    guest: GuestFiles,
    boot_deadline: Instant,
    bench_upload: Option<usize>,
    tx: mpsc::Sender<Input>,
) {
    let serial = t.stats().kind == "serial";
    let end = t.connect(boot_deadline).and_then(|()| {
        if let Some(n) = bench_upload {
            let data: Vec<u8> = (0..n).map(|_| rand::random::<u8>()).collect();
            let t0 = Instant::now();
            t.upload(&data, &format!("{}/bench.bin", transport::GUEST_DIR), 0o644)?;
            let rate = n as f64 / 1e6 / t0.elapsed().as_secs_f64();
            let _ = tx.send(Input::ResultsLine(format!("kstorm-bench-upload {rate}")));
        }
        let tx = tx.clone();
        transport::run_plan(
            t.as_mut(),
            &guest.payload,
            &guest.plan_json,
            serial,
            &mut |line| {
                let _ = tx.send(Input::ResultsLine(line.to_string()));
            },
        )
    });
    let _ = tx.send(Input::TransportDone(end, t.stats()));
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}

fn drain(rx: &mpsc::Receiver<Input>, f: &mut dyn FnMut(Input)) {
    while let Ok(input) = rx.try_recv() {
        f(input);
    }
}

/// Connects to QEMU's results socket. QEMU waits for this before it starts the guest.
fn connect_results(
    sock: &Path,
    qemu: &mut QemuProcess,
    stderr_log: &Path,
) -> Result<std::os::unix::net::UnixStream> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(s) => return Ok(s),
            Err(_) if Instant::now() < deadline => {
                if let Some(st) = qemu.try_wait() {
                    let stderr = std::fs::read_to_string(stderr_log).unwrap_or_default();
                    return Err(InfraError(format!(
                        "QEMU exited at start ({st}): {}",
                        last_line(&stderr)
                    ))
                    .into());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                return Err(InfraError(format!("QEMU's results socket never opened: {e}")).into())
            }
        }
    }
}

/// Reads the console; `tap` gets a copy of every byte (for the serial-shell transport).
fn read_console(
    mut stdout: std::process::ChildStdout,
    mut log: std::fs::File,
    tx: mpsc::Sender<Input>,
    tap: Option<mpsc::Sender<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let arrived = Instant::now();
                let _ = log.write_all(&buf[..n]);
                if let Some(tap) = &tap {
                    let _ = tap.send(buf[..n].to_vec());
                }
                if tx.send(Input::Console(buf[..n].to_vec(), arrived)).is_err() {
                    break;
                }
            }
        }
    }
    let _ = log.flush();
    let _ = tx.send(Input::ConsoleClosed);
}

fn read_results(stream: std::os::unix::net::UnixStream, tx: mpsc::Sender<Input>) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if tx
                    .send(Input::ResultsLine(
                        String::from_utf8_lossy(&line).into_owned(),
                    ))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    let _ = tx.send(Input::ResultsClosed);
}

/// Splits a byte stream into lines (for frames that come on the console), bounded in size.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    const MAX: usize = 64 * 1024;

    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                self.partial.clear();
            } else if self.partial.len() < Self::MAX {
                self.partial.push(b);
            }
        }
        lines
    }
}

/// Saves the QEMU command as a user would type it, to rerun a cell by hand.
fn write_command_file(path: &Path, argv: &[std::ffi::OsString]) -> Result<()> {
    let mut line = String::from(qemu::QEMU);
    for a in argv {
        line.push(' ');
        line.push_str(&host::shell_quote(&a.to_string_lossy()));
    }
    line.push('\n');
    host::write_atomic(path, line.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_splitter_keeps_partial_lines() {
        let mut s = LineSplitter::default();
        assert!(s.push(b"KSTORM1 a").is_empty());
        assert_eq!(s.push(b" b\nnext"), vec!["KSTORM1 a b".to_string()]);
        assert_eq!(s.push(b"\n"), vec!["next".to_string()]);
    }
}
