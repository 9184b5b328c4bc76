//! Kernels and what boots them: each image source prepares, once per run, the kernel files it
//! needs (cached by content), and then, per cell, the [`BootArtifacts`] QEMU boots.

pub mod debian;
pub mod download;
pub mod gnumach;
pub mod grub;
pub mod initramfs;
pub mod linux;
pub mod mach_boot;
pub mod mach_task;

use crate::config::{Image, Machine, Source};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What QEMU boots for one cell.
#[derive(Debug, Clone)]
pub struct BootArtifacts {
    pub machine: Machine,
    /// `-kernel`
    pub kernel: Option<PathBuf>,
    /// `-initrd`
    pub initrd: Option<PathBuf>,
    /// `-append`
    pub cmdline: Option<String>,
    /// `-cdrom` (a GRUB rescue ISO)
    pub cdrom: Option<PathBuf>,
    /// Versions and hashes of what was booted, recorded in every result.
    pub provenance: BTreeMap<String, String>,
}

/// An image whose kernel files are ready on disk.
#[derive(Debug, Clone)]
pub enum PreparedImage {
    Linux(linux::LinuxKernel),
    /// GNU Mach and kstorm's bootstrap task (the task is the payload there).
    Mach(mach_task::MachPrepared),
}

impl PreparedImage {
    pub fn provenance(&self) -> BTreeMap<String, String> {
        match self {
            PreparedImage::Linux(k) => k.provenance(),
            PreparedImage::Mach(m) => m.kernel.provenance(),
        }
    }
}

/// Fetches and unpacks what `image` needs (cached under `cache`).
pub fn prepare(image: &Image, cache: &Path) -> Result<PreparedImage> {
    match &image.source {
        Source::DebianKernel { metapackage } => Ok(PreparedImage::Linux(
            linux::LinuxKernel::from_debian(metapackage, cache)?,
        )),
        Source::DownloadedKernel { url, sha256 } => Ok(PreparedImage::Linux(
            linux::LinuxKernel::from_url(url, sha256, cache)?,
        )),
        Source::DebianGnumach {
            package,
            patch_syscall_trap,
        } => Ok(PreparedImage::Mach(mach_task::MachPrepared::new(
            package,
            *patch_syscall_trap,
            cache,
        )?)),
    }
}

/// The boot artifacts of one cell: the prepared kernel plus the cell's own initramfs (payload
/// as `/init`, the plan) and command line. For GNU Mach: a GRUB ISO with the kernel and the
/// bootstrap task, the plan on the task's command line (the Linux payload is not used).
pub fn cell_artifacts(
    prepared: &PreparedImage,
    image: &Image,
    extra_cmdline: &[String],
    payload: &[u8],
    plan_json: &[u8],
    cache: &Path,
) -> Result<BootArtifacts> {
    match prepared {
        PreparedImage::Linux(kernel) => {
            let initrd = initramfs::build(cache, payload, plan_json)?;
            let mut provenance = kernel.provenance();
            // The fast path needs the PVH-bootable vmlinux; without it, boot the bzImage on pc.
            let (machine, kernel_file) = match (image.boot.machine, &kernel.vmlinux) {
                (Machine::Microvm, Some(vmlinux)) => (Machine::Microvm, vmlinux.clone()),
                (Machine::Microvm, None) => {
                    provenance.insert(
                        "boot.fallback".into(),
                        "no PVH vmlinux: bzImage on pc".into(),
                    );
                    (Machine::Pc, kernel.bzimage.clone())
                }
                (Machine::Pc, _) => (Machine::Pc, kernel.bzimage.clone()),
            };
            provenance.insert("boot.kernel_file".into(), kernel_file.display().to_string());
            let mut cmdline: Vec<String> = image
                .boot
                .cmdline
                .iter()
                .chain(extra_cmdline.iter())
                .cloned()
                .collect();
            if machine == Machine::Microvm {
                // microvm has no HPET or ACPI PM timer to calibrate the TSC against, and the PIT
                // calibration fails when the host is busy (the vCPU thread gets descheduled): the
                // guest then hangs at boot. Under TCG the guest's TSC is the host's, so tell the
                // kernel its frequency.
                cmdline.push(format!("tsc_early_khz={}", crate::host::tsc_khz()));
            }
            Ok(BootArtifacts {
                machine,
                kernel: Some(kernel_file),
                initrd: Some(initrd),
                cmdline: Some(cmdline.join(" ")),
                cdrom: None,
                provenance,
            })
        }
        PreparedImage::Mach(mach) => {
            let plan: kstorm_payload::plan::Plan =
                serde_json::from_slice(plan_json).context("reading back the cell's plan")?;
            let kernel_args: Vec<String> = image
                .boot
                .cmdline
                .iter()
                .chain(extra_cmdline.iter())
                .cloned()
                .collect();
            let boot = mach.cell_iso(&plan, &kernel_args, cache)?;
            Ok(BootArtifacts {
                machine: Machine::Pc,
                kernel: None,
                initrd: None,
                cmdline: None,
                cdrom: Some(boot.cdrom),
                provenance: boot.provenance,
            })
        }
    }
}
