//! A running QEMU: its own process group, killed with the harness (PDEATHSIG), on Ctrl-C or
//! SIGTERM (every group at once), and when its handle is dropped. No QEMU outlives its cell.

use crate::error::{InfraCause, InfraError};
use crate::host::{self};
use anyhow::{Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::QEMU;

/// Process groups of the QEMUs now running, so a signal handler can kill them all.
static LIVE: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// True once Ctrl-C or SIGTERM arrived; running cells stop and report `Infra`.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// On SIGINT/SIGTERM/SIGHUP: kill every QEMU at once, then let the run write what it finished.
pub fn install_signal_handler() -> Result<()> {
    ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            // A second Ctrl-C: stop waiting for results to be written.
            kill_all();
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping all QEMU processes, keeping finished results");
        kill_all();
    })
    .context("installing the Ctrl-C handler")
}

fn kill_all() {
    for pgid in LIVE.lock().map(|l| l.clone()).unwrap_or_default() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// A running QEMU. Dropping it kills it (and everything in its process group) and reaps it.
pub struct QemuProcess {
    child: Child,
    pgid: i32,
    reaped: Option<ExitStatus>,
}

impl QemuProcess {
    /// Starts QEMU with `argv`; its stdout (the console) is piped, stderr goes to `stderr_log`.
    /// With `console_input`, its stdin (the console's input) is piped too, for logging in on
    /// the serial console; otherwise it reads nothing.
    pub fn spawn(argv: &[OsString], stderr_log: &Path, console_input: bool) -> Result<QemuProcess> {
        host::require_tools(&[QEMU])?;
        host::echo(QEMU, argv);
        let stderr = std::fs::File::create(stderr_log)
            .with_context(|| format!("creating {}", stderr_log.display()))?;
        let mut cmd = Command::new(QEMU);
        cmd.args(argv)
            .stdin(if console_input {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(stderr)
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only makes one prctl call, which
        // is async-signal-safe. It makes the kernel kill QEMU if the harness thread that
        // started it dies, whatever the reason (even SIGKILL).
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        // Holding the lock while spawning: a Ctrl-C arriving now either sees this group in
        // LIVE or is seen here before QEMU starts.
        let mut live = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        if interrupted() {
            return Err(InfraError::new(InfraCause::Interrupted, "interrupted").into());
        }
        let child = cmd
            .spawn()
            .map_err(|e| InfraError::new(InfraCause::QemuStart, format!("starting {QEMU}: {e}")))?;
        let pgid = child.id() as i32;
        live.insert(pgid);
        Ok(QemuProcess {
            child,
            pgid,
            reaped: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// The console's input, when QEMU was started with `console_input`.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// The exit status if QEMU has exited (non-blocking).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped(st);
            }
        }
        self.reaped
    }

    /// Waits up to `limit` for QEMU to exit by itself.
    pub fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        use wait_timeout::ChildExt;
        if self.reaped.is_none() {
            if let Ok(Some(st)) = self.child.wait_timeout(limit) {
                self.reaped(st);
            }
        }
        self.reaped
    }

    /// Kills QEMU's whole process group and reaps it.
    pub fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
        if let Ok(st) = self.child.wait() {
            self.reaped(st);
        }
    }

    /// Asks QEMU to exit (SIGTERM: a clean shutdown, which writes a recording's header and
    /// flushes its log), waits up to `grace`, then kills it.
    pub fn terminate(&mut self, grace: Duration) {
        if self.try_wait().is_some() {
            return;
        }
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pgid), Signal::SIGTERM);
        if self.wait_for(grace).is_none() {
            self.kill();
        }
    }

    fn reaped(&mut self, st: ExitStatus) {
        self.reaped = Some(st);
        LIVE.lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.pgid);
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
