//! QEMU: the argument vector (built as data, never a shell string), starting and stopping the
//! process so none is ever left behind, and choosing the accelerator by a real probe.

use crate::config::Machine;
use crate::host::{self, InfraError};
use crate::images::BootArtifacts;
use anyhow::{Context, Result};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub const QEMU: &str = "qemu-system-x86_64";

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// Everything QEMU needs to boot one cell.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub boot: BootArtifacts,
    pub ram_mib: u64,
    pub accel: Accel,
    /// Unix socket QEMU listens on for the results serial port (COM2, 0x2f8). QEMU waits for the
    /// harness to connect before starting the guest, so no frame is lost.
    pub results_socket: Option<PathBuf>,
    /// Shown in `ps` as the guest's name: the cell's results folder, so a QEMU process can
    /// always be traced back to its cell.
    pub name: Option<String>,
    /// The cell's qcow2 overlay of a disk image, attached as the first virtio disk.
    pub disk: Option<PathBuf>,
    /// User networking with `127.0.0.1:<host port>` forwarded to the guest's `<guest port>`.
    pub ssh_forward: Option<(u16, u16)>,
}

impl QemuSpec {
    /// The argument vector. The console (COM1) is QEMU's standard output.
    pub fn argv(&self) -> Vec<OsString> {
        let machine = match self.boot.machine {
            // No PCI, no firmware option ROMs, no legacy devices beyond what is asked for.
            Machine::Microvm => "microvm,x-option-roms=off,rtc=on",
            Machine::Pc => "pc",
        };
        let mut a: Vec<OsString> = vec!["-M".into(), machine.into()];
        let words = |a: &mut Vec<OsString>, ws: &[&str]| a.extend(ws.iter().map(OsString::from));
        if let Some(name) = &self.name {
            // ',' separates QEMU sub-options; it can't appear in the value.
            a.push("-name".into());
            a.push(name.replace(',', "_").into());
        }
        words(
            &mut a,
            &[
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ],
        );
        match self.accel {
            Accel::Kvm => words(&mut a, &["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => words(&mut a, &["-accel", "tcg"]),
        }
        words(&mut a, &["-smp", "1", "-m"]);
        a.push(format!("{}M", self.ram_mib).into());
        words(
            &mut a,
            &[
                "-chardev",
                "stdio,id=console,signal=off",
                "-serial",
                "chardev:console",
            ],
        );
        if let Some(sock) = &self.results_socket {
            let mut spec = OsString::from("socket,id=results,server=on,wait=on,path=");
            spec.push(sock);
            a.push("-chardev".into());
            a.push(spec);
            words(
                &mut a,
                &["-device", "isa-serial,chardev=results,iobase=0x2f8,irq=3"],
            );
        }
        // microvm has virtio-mmio transports, pc has PCI.
        let (blk, net) = match self.boot.machine {
            Machine::Microvm => ("virtio-blk-device", "virtio-net-device"),
            Machine::Pc => ("virtio-blk-pci", "virtio-net-pci"),
        };
        if let Some(disk) = &self.disk {
            let mut spec = OsString::from("if=none,id=disk0,format=qcow2,file=");
            // ',' would end QEMU's option value: it is escaped by doubling.
            spec.push(disk.to_string_lossy().replace(',', ",,"));
            a.push("-drive".into());
            a.push(spec);
            a.push("-device".into());
            a.push(format!("{blk},drive=disk0").into());
        }
        if let Some((host, guest)) = self.ssh_forward {
            a.push("-netdev".into());
            a.push(format!("user,id=net0,hostfwd=tcp:127.0.0.1:{host}-:{guest}").into());
            a.push("-device".into());
            a.push(format!("{net},netdev=net0").into());
        }
        if let Some(k) = &self.boot.kernel {
            a.push("-kernel".into());
            a.push(k.into());
        }
        if let Some(i) = &self.boot.initrd {
            a.push("-initrd".into());
            a.push(i.into());
        }
        if let Some(c) = &self.boot.cmdline {
            a.push("-append".into());
            a.push(c.into());
        }
        if let Some(iso) = &self.boot.cdrom {
            a.push("-cdrom".into());
            a.push(iso.into());
            words(&mut a, &["-boot", "d"]);
        }
        a
    }
}

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
        // SAFETY: plain syscall on a process group we created.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
    }
}

/// A running QEMU. Dropping it kills it (and everything in its process group) and reaps it.
pub struct QemuProcess {
    child: Child,
    pgid: i32,
    reaped: Option<std::process::ExitStatus>,
}

impl QemuProcess {
    /// Starts QEMU with `argv`; its stdout (the console) is piped, stderr goes to `stderr_log`.
    pub fn spawn(argv: &[OsString], stderr_log: &Path) -> Result<QemuProcess> {
        Self::spawn_with(argv, stderr_log, false)
    }

    /// [`spawn`](Self::spawn), with QEMU's stdin (the console's input) piped when `console_input`
    /// (for logging in on the serial console); otherwise it reads nothing.
    pub fn spawn_with(
        argv: &[OsString],
        stderr_log: &Path,
        console_input: bool,
    ) -> Result<QemuProcess> {
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
        // SAFETY: prctl is async-signal-safe; it makes the kernel kill QEMU if the harness
        // thread that started it dies, whatever the reason (even SIGKILL).
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut live = LIVE.lock().unwrap();
        if interrupted() {
            return Err(InfraError("interrupted".into()).into());
        }
        let child = cmd
            .spawn()
            .map_err(|e| InfraError(format!("starting {QEMU}: {e}")))?;
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
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        if self.reaped.is_none() {
            if let Ok(Some(st)) = self.child.try_wait() {
                self.reaped = Some(st);
                LIVE.lock().unwrap().remove(&self.pgid);
            }
        }
        self.reaped
    }

    /// Waits up to `limit` for QEMU to exit by itself.
    pub fn wait_for(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        use wait_timeout::ChildExt;
        if self.reaped.is_none() {
            if let Ok(Some(st)) = self.child.wait_timeout(limit) {
                self.reaped = Some(st);
                LIVE.lock().unwrap().remove(&self.pgid);
            }
        }
        self.reaped
    }

    /// Kills QEMU's whole process group and reaps it.
    pub fn kill(&mut self) {
        if self.try_wait().is_some() {
            return;
        }
        // SAFETY: plain syscall on the process group we created.
        unsafe { libc::killpg(self.pgid, libc::SIGKILL) };
        if let Ok(st) = self.child.wait() {
            self.reaped = Some(st);
        }
        LIVE.lock().unwrap().remove(&self.pgid);
    }
}

impl Drop for QemuProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// True when `/dev/kvm` can be opened for reading and writing. Necessary, not sufficient: see
/// [`crate::run`]'s probe, which boots a real guest before trusting KVM.
pub fn kvm_device_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Identifies this boot of the host, so a KVM probe answer is reused until the host reboots.
pub fn host_boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(machine: Machine) -> QemuSpec {
        QemuSpec {
            boot: BootArtifacts {
                machine,
                kernel: Some("/k/vmlinux".into()),
                initrd: Some("/k/i.cpio".into()),
                cmdline: Some("console=ttyS0 panic=-1 it's".into()),
                cdrom: None,
                disk_base: None,
                provenance: BTreeMap::new(),
            },
            ram_mib: 128,
            accel: Accel::Tcg,
            results_socket: Some("/tmp/x/r.sock".into()),
            name: Some("cells/a,b".into()),
            disk: None,
            ssh_forward: None,
        }
    }

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn microvm_argv() {
        let a = strs(&spec(Machine::Microvm).argv());
        assert_eq!(&a[..2], ["-M", "microvm,x-option-roms=off,rtc=on"]);
        assert!(a.windows(2).any(|w| w == ["-m", "128M"]));
        assert!(a.windows(2).any(|w| w == ["-accel", "tcg"]));
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(a.windows(2).any(|w| w == ["-name", "cells/a_b"]));
        // The command line stays one argument, quotes and all: no shell in between.
        assert!(a
            .windows(2)
            .any(|w| w == ["-append", "console=ttyS0 panic=-1 it's"]));
        assert!(a.windows(2).any(|w| w
            == [
                "-chardev",
                "socket,id=results,server=on,wait=on,path=/tmp/x/r.sock"
            ]));
        assert!(a
            .windows(2)
            .any(|w| w == ["-device", "isa-serial,chardev=results,iobase=0x2f8,irq=3"]));
    }

    #[test]
    fn pc_argv_and_kvm() {
        let mut s = spec(Machine::Pc);
        s.accel = Accel::Kvm;
        s.results_socket = None;
        let a = strs(&s.argv());
        assert_eq!(&a[..2], ["-M", "pc"]);
        assert!(a.windows(4).any(|w| w == ["-accel", "kvm", "-cpu", "host"]));
        assert!(!a.iter().any(|x| x.contains("results")));
    }
}
