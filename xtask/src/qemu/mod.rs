//! QEMU: the one builder of its argument vector (data, never a shell string), the process that
//! is never left behind, and the accelerator chosen by a real probe.
//!
//! What differs between machines (microvm, pc, a GRUB ISO, a disk boot) is data, in
//! `xtask/machines.yaml` ([`profile`]); this builder only assembles it.

pub mod process;
pub mod profile;
pub mod replay;

pub use process::{install_signal_handler, interrupted, QemuProcess};
pub use profile::{MachineKind, MachineProfile};
pub use replay::{Record, RrMode};

use std::ffi::OsString;
use std::path::{Path, PathBuf};

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

/// A host port forwarded to a guest port over QEMU's user networking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub host_port: u16,
    pub guest_port: u16,
    /// `restrict=on`: the guest reaches nothing but what is forwarded (not the host's other
    /// ports, not the host's network). Only a test that proves the restriction turns it off.
    pub restrict: bool,
}

/// What QEMU boots: the machine profile and the boot media (kernel, initrd, command line, CD,
/// base disk). `images` prepares it; this module turns it into an argument vector.
#[derive(Debug, Clone)]
pub struct BootMedium {
    /// How the machine is set up (`xtask/machines.yaml`).
    pub profile: MachineKind,
    /// `-kernel`
    pub kernel: Option<PathBuf>,
    /// `-initrd`
    pub initrd: Option<PathBuf>,
    /// `-append`, word by word (the profile may add words of its own).
    pub cmdline: Vec<String>,
    /// `-cdrom` (a GRUB rescue ISO)
    pub cdrom: Option<PathBuf>,
    /// A read-only base disk image; the cell boots a qcow2 overlay of it, never the base.
    pub disk_base: Option<PathBuf>,
}

/// A path inside a QEMU option value: ',' would end the value, so it is escaped by doubling.
pub fn option_value(p: &Path) -> String {
    p.to_string_lossy().replace(',', ",,")
}

/// Everything QEMU needs to boot one cell.
#[derive(Debug, Clone)]
pub struct QemuSpec {
    pub boot: BootMedium,
    pub ram_mib: u64,
    pub accel: Accel,
    /// Unix socket QEMU listens on for the results serial port (COM2), on profiles that have
    /// one. QEMU waits for the harness to connect before starting the guest: no frame is lost.
    pub results_socket: Option<PathBuf>,
    /// Instead of the socket, a file QEMU writes the results port to, which the harness
    /// follows: a recording's socket writes do not replay (the replay stalls mid-frame), a
    /// file's do.
    pub results_file: Option<PathBuf>,
    /// Shown in `ps` as the guest's name: the cell's results folder, so a QEMU process can
    /// always be traced back to its cell.
    pub name: Option<String>,
    /// The cell's qcow2 overlay of a disk image, attached as the first virtio disk.
    pub disk: Option<PathBuf>,
    /// User networking, with this one forward (the ssh transport).
    pub forward: Option<Forward>,
    /// The guest reboots once on purpose (boot-loader tunables): QEMU resets it instead of
    /// exiting (no `-no-reboot`). A panic still ends the cell through the detector.
    pub guest_reboots: bool,
    /// Record (or replay) the whole execution with QEMU's record/replay (TCG only).
    pub record: Option<Record>,
}

impl QemuSpec {
    /// A spec with only what every cell has: no results socket, name, disk or network.
    pub fn new(boot: BootMedium, ram_mib: u64, accel: Accel) -> QemuSpec {
        QemuSpec {
            boot,
            ram_mib,
            accel,
            results_socket: None,
            results_file: None,
            name: None,
            disk: None,
            forward: None,
            guest_reboots: false,
            record: None,
        }
    }

    pub fn profile(&self) -> &'static MachineProfile {
        self.boot.profile.spec()
    }

    /// True when this boot's frames come on a results port of their own.
    pub fn has_results_port(&self) -> bool {
        self.profile().results_port.is_some()
    }

    /// The argument vector. The console (COM1) is QEMU's standard output.
    pub fn argv(&self) -> Vec<OsString> {
        let p = self.profile();
        let mut a = Args::default();
        a.pair("-M", &p.qemu_machine);
        if let Some(name) = &self.name {
            // ',' separates QEMU sub-options; it can't appear in the value.
            a.pair("-name", &name.replace(',', "_"));
        }
        a.words(&["-nodefaults", "-no-user-config", "-display", "none"]);
        if !self.guest_reboots {
            a.words(&["-no-reboot"]);
        }
        match self.accel {
            Accel::Kvm => a.words(&["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => a.words(&["-accel", "tcg"]),
        }
        a.words(&["-smp", "1"]);
        a.pair("-m", &format!("{}M", self.ram_mib));
        a.words(&[
            "-chardev",
            "stdio,id=console,signal=off",
            "-serial",
            "chardev:console",
        ]);
        if let (Some(sock), Some(port)) = (&self.results_socket, &p.results_port) {
            a.pair(
                "-chardev",
                &format!(
                    "socket,id=results,server=on,wait=on,path={}",
                    sock.display()
                ),
            );
            a.pair("-device", &format!("{},chardev=results", port.device));
        } else if let (Some(file), Some(port)) = (&self.results_file, &p.results_port) {
            let path = option_value(file);
            a.pair("-chardev", &format!("file,id=results,path={path}"));
            a.pair("-device", &format!("{},chardev=results", port.device));
        }
        if let Some(disk) = &self.disk {
            // ',' would end QEMU's option value: it is escaped by doubling.
            let file = option_value(disk);
            a.pair(
                "-drive",
                &format!("if=none,id=disk0,format=qcow2,file={file}"),
            );
            a.pair("-device", &format!("{},drive=disk0", p.block_device));
        }
        if let Some(f) = self.forward {
            let restrict = if f.restrict { "on" } else { "off" };
            a.pair(
                "-netdev",
                &format!(
                    "user,id=net0,restrict={restrict},hostfwd=tcp:127.0.0.1:{}-:{}",
                    f.host_port, f.guest_port
                ),
            );
            a.pair("-device", &format!("{},netdev=net0", p.net_device));
        }
        if let Some(r) = &self.record {
            r.push(&mut a);
        }
        self.boot_medium(&mut a, p);
        a.words(&p.extra_args.iter().map(String::as_str).collect::<Vec<_>>());
        a.0
    }

    fn boot_medium(&self, a: &mut Args, p: &MachineProfile) {
        if let Some(k) = &self.boot.kernel {
            a.pair_os("-kernel", k.as_os_str());
            if let Some(i) = &self.boot.initrd {
                a.pair_os("-initrd", i.as_os_str());
            }
            let words: Vec<String> = self
                .boot
                .cmdline
                .iter()
                .cloned()
                .chain(p.kernel_words())
                .collect();
            if !words.is_empty() {
                a.pair("-append", &words.join(" "));
            }
        }
        if let Some(iso) = &self.boot.cdrom {
            a.pair_os("-cdrom", iso.as_os_str());
        }
    }
}

/// An argument vector being built.
#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn words(&mut self, ws: &[&str]) {
        self.0.extend(ws.iter().map(OsString::from));
    }
    fn pair(&mut self, flag: &str, value: &str) {
        self.words(&[flag, value]);
    }
    fn pair_os(&mut self, flag: &str, value: &std::ffi::OsStr) {
        self.0.push(flag.into());
        self.0.push(value.to_os_string());
    }
}

/// True when `/dev/kvm` can be opened for reading and writing. Necessary, not sufficient: see
/// [`crate::session::accel`]'s probe, which boots a real guest before trusting KVM.
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

    fn spec(profile: MachineKind) -> QemuSpec {
        let boot = BootMedium {
            profile,
            kernel: Some("/k/vmlinux".into()),
            initrd: Some("/k/i.cpio".into()),
            cmdline: vec!["console=ttyS0".into(), "panic=-1".into(), "it's".into()],
            cdrom: None,
            disk_base: None,
        };
        let mut s = QemuSpec::new(boot, 128, Accel::Tcg);
        s.results_socket = Some("/tmp/x/r.sock".into());
        s.name = Some("cells/a,b".into());
        s
    }

    fn strs(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn has(a: &[String], pair: [&str; 2]) -> bool {
        a.windows(2).any(|w| w == pair)
    }

    #[test]
    fn microvm_argv() {
        let a = strs(&spec(MachineKind::Microvm).argv());
        assert_eq!(&a[..2], ["-M", "microvm,x-option-roms=off,rtc=on"]);
        assert!(has(&a, ["-m", "128M"]));
        assert!(has(&a, ["-accel", "tcg"]));
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(has(&a, ["-name", "cells/a_b"]));
        // The command line stays one argument, quotes and all: no shell in between. The
        // profile adds its own words (the TSC frequency) after the image's.
        let append = &a[a.iter().position(|x| x == "-append").unwrap() + 1];
        assert!(
            append.starts_with("console=ttyS0 panic=-1 it's tsc_early_khz="),
            "{append}"
        );
        assert!(has(
            &a,
            [
                "-chardev",
                "socket,id=results,server=on,wait=on,path=/tmp/x/r.sock"
            ]
        ));
        assert!(has(
            &a,
            ["-device", "isa-serial,iobase=0x2f8,irq=3,chardev=results"]
        ));
    }

    #[test]
    fn pc_argv_and_kvm() {
        let mut s = spec(MachineKind::Pc);
        s.accel = Accel::Kvm;
        s.results_socket = None;
        let a = strs(&s.argv());
        assert_eq!(&a[..2], ["-M", "pc"]);
        assert!(a.windows(4).any(|w| w == ["-accel", "kvm", "-cpu", "host"]));
        assert!(!a
            .iter()
            .any(|x| x.contains("results") || x.contains("tsc_early")));
    }

    #[test]
    fn a_grub_iso_has_no_results_port_and_boots_from_the_cdrom() {
        let mut s = spec(MachineKind::GrubIso);
        s.boot.kernel = None;
        s.boot.cdrom = Some("/c/mach.iso".into());
        assert!(!s.has_results_port());
        let a = strs(&s.argv());
        assert!(has(&a, ["-cdrom", "/c/mach.iso"]) && has(&a, ["-boot", "d"]));
        assert!(!a
            .iter()
            .any(|x| x.contains("results") || x == "-append" || x == "-kernel"));
    }

    #[test]
    fn user_networking_is_restricted_to_the_forward() {
        let mut s = spec(MachineKind::Microvm);
        s.disk = Some("/r/c,1/disk.qcow2".into());
        s.forward = Some(Forward {
            host_port: 2222,
            guest_port: 22,
            restrict: true,
        });
        let a = strs(&s.argv());
        assert!(has(
            &a,
            [
                "-netdev",
                "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22"
            ]
        ));
        assert!(has(&a, ["-device", "virtio-net-device,netdev=net0"]));
        assert!(has(
            &a,
            [
                "-drive",
                "if=none,id=disk0,format=qcow2,file=/r/c,,1/disk.qcow2"
            ]
        ));
        assert!(has(&a, ["-device", "virtio-blk-device,drive=disk0"]));
    }
}
