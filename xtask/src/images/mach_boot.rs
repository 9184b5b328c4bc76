//! Booting a GNU Mach cell in QEMU and watching its console: used by the Mach integration
//! tests and `bench_mach` until (and alongside) the harness's general cell runner.
//!
//! The console is COM1 on QEMU's stdout. Frames come on it too (the task has only the console
//! device). A cell ends when QEMU exits (the task calls `host_reboot` after `done`, and QEMU
//! runs with `-no-reboot`), when the heartbeat stops (this kernel hangs silently when
//! exhausted), on a deadline, or shortly after a kernel panic line (the kernel would otherwise
//! wait about 16 s before rebooting).

use crate::images::mach_task::{module_args, prepare_iso, MachPrepared, MachScenario};
use anyhow::{Context, Result};
use kstorm_payload::frame::{decode, Frame, Message};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// QEMU's argument vector for a Mach cell: PC machine, the GRUB ISO, COM1 on stdout.
pub fn qemu_argv(cdrom: &Path, ram_mib: u64) -> Vec<String> {
    let mut argv: Vec<String> = [
        "qemu-system-x86_64",
        "-M",
        "pc",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-m",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    argv.push(ram_mib.to_string());
    argv.push("-cdrom".into());
    argv.push(cdrom.to_string_lossy().into_owned());
    argv
}

/// Time limits of one watched boot.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// QEMU start to the first frame.
    pub boot: Duration,
    /// Longest gap between frames once the task runs.
    pub heartbeat: Duration,
    /// The whole boot.
    pub total: Duration,
}

/// How a watched boot ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// QEMU exited by itself (the task rebooted the host, or the kernel did after a panic).
    Exited { code: Option<i32> },
    /// The kernel printed a panic line; QEMU was stopped shortly after.
    Panic { line: String },
    /// No frame before the boot deadline.
    NoBoot,
    /// The task stopped sending frames: the kernel made no progress.
    Hang { silent_for: Duration },
    /// The whole-boot deadline passed while frames still came.
    Timeout,
}

/// What a watched boot saw.
#[derive(Debug, Clone)]
pub struct Observed {
    pub ending: Ending,
    /// Console lines (frames included), carriage returns stripped.
    pub console: Vec<String>,
    pub frames: Vec<Frame>,
    /// QEMU start to the first frame.
    pub first_frame_after: Option<Duration>,
    /// The last heartbeat's scenario and count.
    pub last_progress: Option<(String, u64)>,
    pub elapsed: Duration,
    /// QEMU's process id (gone by the time this is returned).
    pub qemu_pid: u32,
}

/// Kills QEMU when dropped, so no guest outlives its watcher (a test that fails included).
struct Guest(Child);

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The kernel's panic line (`panic ../kern/bootstrap.c:181: ...`), as GNU Mach prints it.
fn is_mach_panic(line: &str) -> bool {
    line.trim_start().starts_with("panic ")
}

/// Boots `argv` and watches the console until one of the endings above.
pub fn boot_and_watch(argv: &[String], limits: Limits) -> Result<Observed> {
    let start = Instant::now();
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {argv:?}"))?;
    let mut guest = Guest(child);
    let stdout = guest.0.stdout.take().context("QEMU stdout")?;
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        let mut reader = std::io::BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\r', '\n'])
                .to_string();
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
            buf.clear();
        }
    });

    let mut seen = Observed {
        ending: Ending::Timeout,
        console: Vec::new(),
        frames: Vec::new(),
        first_frame_after: None,
        last_progress: None,
        elapsed: Duration::ZERO,
        qemu_pid: guest.0.id(),
    };
    let mut last_frame: Option<Instant> = None;
    let mut panic_at: Option<(Instant, String)> = None;
    let ending = loop {
        let now = Instant::now();
        if let Some((at, line)) = &panic_at {
            // A second for the lines after the panic, then stop: no need to wait for the reboot.
            if now.duration_since(*at) > Duration::from_secs(1) {
                break Ending::Panic { line: line.clone() };
            }
        } else if now.duration_since(start) > limits.total {
            break Ending::Timeout;
        } else if let Some(t) = last_frame {
            if now.duration_since(t) > limits.heartbeat {
                break Ending::Hang {
                    silent_for: now.duration_since(t),
                };
            }
        } else if now.duration_since(start) > limits.boot {
            break Ending::NoBoot;
        }
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((at, line)) => {
                if let Ok(frame) = decode(&line) {
                    seen.first_frame_after
                        .get_or_insert(at.duration_since(start));
                    last_frame = Some(at);
                    if let Message::Hb { scenario, progress } = &frame.message {
                        seen.last_progress = Some((scenario.clone(), *progress));
                    }
                    seen.frames.push(frame);
                } else if panic_at.is_none() && is_mach_panic(&line) {
                    panic_at = Some((at, line.clone()));
                }
                seen.console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Stdout closed: QEMU is exiting.
                let code = guest.0.wait().ok().and_then(|s| s.code());
                break match panic_at.take() {
                    Some((_, line)) => Ending::Panic { line },
                    None => Ending::Exited { code },
                };
            }
        }
    };
    drop(guest);
    seen.ending = ending;
    seen.elapsed = start.elapsed();
    Ok(seen)
}

/// Everything a Mach boot needs, prepared once: kernel, bootstrap task, cache.
pub struct MachSetup {
    pub prepared: MachPrepared,
    pub cache_dir: PathBuf,
}

impl MachSetup {
    pub fn new(package: &str, patch: bool, cache_dir: &Path) -> Result<MachSetup> {
        Ok(MachSetup {
            prepared: MachPrepared::new(package, patch, cache_dir)?,
            cache_dir: cache_dir.to_path_buf(),
        })
    }

    /// The ISO for a cell running `scenarios` (empty: no bootstrap module at all).
    pub fn iso(&self, cell: &str, hb_ms: u32, scenarios: &[MachScenario]) -> Result<PathBuf> {
        let module = if scenarios.is_empty() {
            None
        } else {
            Some((
                self.prepared.bootstrap.as_path(),
                module_args(cell, hb_ms, scenarios)?,
            ))
        };
        Ok(prepare_iso(&self.prepared.kernel, module, &[], &self.cache_dir)?.cdrom)
    }
}

/// Boot-time benchmark result: QEMU start to the first payload frame.
#[derive(Debug, Clone)]
pub struct BenchMach {
    pub samples: Vec<Duration>,
    pub median: Duration,
}

/// Boots `argv` (a Mach cell's QEMU command, ISO cached) `boots` times, one after another, and
/// measures QEMU start to the first frame (`hello`).
pub fn bench_first_frame(argv: &[String], boots: usize) -> Result<BenchMach> {
    let limits = Limits {
        boot: Duration::from_secs(20),
        heartbeat: Duration::from_secs(10),
        total: Duration::from_secs(30),
    };
    let mut samples = Vec::new();
    for i in 0..boots.max(1) {
        let seen = boot_and_watch(argv, limits)?;
        let first = seen
            .first_frame_after
            .with_context(|| format!("bench boot {i}: no frame ({:?})", seen.ending))?;
        samples.push(first);
    }
    let mut sorted = samples.clone();
    sorted.sort();
    let median = sorted[sorted.len() / 2];
    Ok(BenchMach { samples, median })
}
