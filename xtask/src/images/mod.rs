//! Kernels and what boots them: each image source prepares, once per run, the kernel files it
//! needs (cached by content), and then, per cell, the [`BootArtifacts`] QEMU boots.

pub mod debian;
pub mod disk;
pub mod download;
pub mod gnumach;
pub mod grub;
pub mod initramfs;
pub mod kernel_tree;
pub mod linux;
pub mod local;
pub mod mach_iso;
pub mod provenance;
pub mod published;
pub mod symbols;

pub use provenance::{Provenance, SourceKind};

use crate::config::{Image, Machine, Source};
use crate::qemu::{BootMedium, MachineKind};
use anyhow::{Context, Result};
use kstorm_payload::plan::Plan;
use std::path::Path;

/// What QEMU boots for one cell, and where it came from.
#[derive(Debug, Clone)]
pub struct BootArtifacts {
    pub medium: BootMedium,
    /// Versions and hashes of what was booted, recorded in every result.
    pub provenance: Provenance,
}

/// An image whose kernel files are ready on disk.
#[derive(Debug, Clone)]
pub enum PreparedImage {
    Linux(linux::LinuxKernel),
    /// GNU Mach and kstorm's bootstrap task (the task is the payload there).
    Mach(gnumach::MachKernel),
    /// A Linux kernel with a root filesystem that boots its own init.
    LinuxDisk(linux::LinuxKernel, disk::DiskImage),
    /// A whole published disk image (FreeBSD, GNU/Hurd) that boots its own loader and init.
    Published(published::PreparedDisk),
}

impl PreparedImage {
    pub fn provenance(&self) -> Provenance {
        match self {
            PreparedImage::Linux(k) => k.provenance(),
            PreparedImage::Mach(m) => m.provenance(),
            PreparedImage::LinuxDisk(k, d) => k
                .provenance()
                .with("disk.hash", d.hash.clone())
                .with("disk.packages", d.packages.join(" ")),
            PreparedImage::Published(d) => Provenance {
                source: SourceKind::Download,
                origin: d.url.clone(),
                sha256: d.pin.strip_prefix("sha256:").unwrap_or_default().into(),
                ..Provenance::default()
            }
            .with("disk.pin", d.pin.clone()),
        }
    }
}

/// Fetches and unpacks what `image` needs (cached under `cache`).
pub fn prepare(image: &Image, cache: &Path) -> Result<PreparedImage> {
    // Cells, test threads and whole runs may prepare images at once on a fresh cache, and
    // different images share kernels (linux and linux-pc unpack the same package): one prepares
    // while the others wait, then find it done.
    // A kernel build takes many minutes: it holds a lock of its own (per build), not this one.
    let _lock = match image.source {
        Source::KernelTree { .. } => None,
        _ => Some(crate::host::CacheLock::acquire(cache, "prepare-images")?),
    };
    let kernel = match &image.source {
        Source::DebianKernel { metapackage } => {
            linux::LinuxKernel::from_debian(metapackage, cache)?
        }
        Source::DownloadedKernel { url, sha256 } => {
            linux::LinuxKernel::from_url(url, sha256, cache)?
        }
        Source::KernelTree { path, base, config } => {
            let images_dir = crate::host::workspace_root().join("images");
            let spec = kernel_tree::TreeSpec {
                path: path.clone(),
                base: base.clone(),
                fragments: config.iter().map(|f| images_dir.join(f)).collect(),
            };
            kernel_tree::build(&spec, cache)?
        }
        Source::LocalKernel {
            path,
            patch_syscall_trap,
        } => match local::inspect(path, "local-kernel.path")? {
            local::LocalKind::Linux { vmlinux, bzimage } => local::linux(path, vmlinux, bzimage)?,
            local::LocalKind::Mach { path: p, gzipped } => {
                let kernel = local::mach(&p, gzipped, *patch_syscall_trap, cache)?;
                return Ok(PreparedImage::Mach(kernel));
            }
        },
        Source::DebianGnumach {
            package,
            patch_syscall_trap,
        } => {
            let kernel = gnumach::prepare_kernel(package, *patch_syscall_trap, cache)?;
            return Ok(PreparedImage::Mach(kernel));
        }
        Source::PublishedDisk(p) => {
            let images_dir = crate::host::workspace_root().join("images");
            let disk = published::prepare(image.name.as_str(), p, &images_dir, cache)?;
            return Ok(PreparedImage::Published(disk));
        }
    };
    match &image.disk {
        None => Ok(PreparedImage::Linux(kernel)),
        Some(recipe) => {
            let images_dir = crate::host::workspace_root().join("images");
            let d = disk::build(recipe, &kernel, &images_dir, cache)
                .with_context(|| format!("building the disk of image {}", image.name))?;
            Ok(PreparedImage::LinuxDisk(kernel, d))
        }
    }
}

/// What the guest side of one cell brings, built by the session (`guest_build`).
pub struct GuestParts<'a> {
    /// The static Linux payload (`/init` of the cell's initramfs).
    pub payload: &'a [u8],
    pub plan: &'a Plan,
    /// The plan as the payload reads it (`/kstorm/plan.json`).
    pub plan_json: &'a [u8],
    /// Tools the plan's scenarios run in the guest, as an archive appended to the initramfs.
    pub tools: &'a initramfs::ToolArchive,
    /// GNU Mach images: the built bootstrap task.
    pub mach_task: Option<&'a Path>,
}

/// The boot artifacts of one cell: the prepared kernel plus the cell's own initramfs (payload
/// as `/init`, the plan, the tools) and command line. For GNU Mach: a GRUB ISO with the kernel
/// and the bootstrap task, the plan on the task's command line (the Linux payload is not used).
pub fn cell_artifacts(
    prepared: &PreparedImage,
    image: &Image,
    extra_cmdline: &[String],
    guest: &GuestParts<'_>,
    cache: &Path,
) -> Result<BootArtifacts> {
    let (kernel, disk) = match prepared {
        PreparedImage::Linux(k) => (k, None),
        PreparedImage::LinuxDisk(k, d) => (k, Some(d)),
        PreparedImage::Mach(mach) => {
            let task = guest
                .mach_task
                .context("no GNU Mach bootstrap task was built")?;
            return mach_artifacts(mach, task, image, extra_cmdline, guest.plan, cache);
        }
        PreparedImage::Published(d) => {
            return published_artifacts(prepared, d, image, extra_cmdline, cache)
        }
    };
    let mut provenance = prepared.provenance();
    // A disk image boots its own init; the payload and plan travel over the transport.
    let initrd = match disk {
        Some(d) => d.initrd.clone(),
        None => {
            provenance.extra.extend(guest.tools.provenance.clone());
            initramfs::build(cache, guest.payload, guest.plan_json, &guest.tools.archive)?
        }
    };
    // The fast path needs the PVH-bootable vmlinux; without it, boot the bzImage on pc.
    let (profile, kernel_file) = match (image.boot.machine, &kernel.vmlinux) {
        (Machine::Microvm, Some(vmlinux)) => (MachineKind::Microvm, vmlinux.clone()),
        (Machine::Microvm, None) => {
            provenance = provenance.with("boot.fallback", "no PVH vmlinux: bzImage on pc");
            (MachineKind::Pc, kernel.bzimage.clone())
        }
        (Machine::Pc, _) => (MachineKind::Pc, kernel.bzimage.clone()),
    };
    provenance.boot = Some(format!("{} on {profile}", kernel_file.display()));
    Ok(BootArtifacts {
        medium: BootMedium {
            profile,
            kernel: Some(kernel_file),
            initrd: Some(initrd),
            cmdline: kernel_command_line(image, extra_cmdline),
            cdrom: None,
            disk_base: disk.map(|d| d.base.clone()),
        },
        provenance,
    })
}

/// GNU Mach: a GRUB ISO per cell with kstorm's bootstrap task, the plan on the task's command
/// line (the Linux payload is not used).
fn mach_artifacts(
    kernel: &gnumach::MachKernel,
    task: &Path,
    image: &Image,
    extra_cmdline: &[String],
    plan: &Plan,
    cache: &Path,
) -> Result<BootArtifacts> {
    let kernel_args = kernel_command_line(image, extra_cmdline);
    let boot = mach_iso::cell_iso(kernel, task, plan, &kernel_args, cache)?;
    Ok(BootArtifacts {
        medium: BootMedium {
            profile: MachineKind::GrubIso,
            kernel: None,
            initrd: None,
            cmdline: Vec::new(),
            cdrom: Some(boot.cdrom),
            disk_base: None,
        },
        provenance: boot.provenance,
    })
}

/// A published disk boots through the firmware and its own loader: only the base to overlay.
/// An image whose kernel kstorm boots itself (GNU/Hurd) gets kstorm's GRUB menu on a CD, the
/// kernel and modules read from the disk.
fn published_artifacts(
    prepared: &PreparedImage,
    d: &published::PreparedDisk,
    image: &Image,
    extra_cmdline: &[String],
    cache: &Path,
) -> Result<BootArtifacts> {
    let mut provenance = prepared.provenance();
    let grub = match &image.source {
        Source::PublishedDisk(p) => p.boot.as_ref(),
        _ => None,
    };
    let (profile, cdrom) = match grub {
        None => (MachineKind::Disk, None),
        Some(boot) => {
            let menu = published::grub_menu(boot, &kernel_command_line(image, extra_cmdline))?;
            (
                MachineKind::GrubIde,
                Some(grub::build_cfg_iso(&menu, cache)?),
            )
        }
    };
    provenance.boot = Some(format!("{} on {profile}", d.base.display()));
    Ok(BootArtifacts {
        medium: BootMedium {
            profile,
            kernel: None,
            initrd: None,
            cmdline: Vec::new(),
            cdrom,
            disk_base: Some(d.base.clone()),
        },
        provenance,
    })
}

/// The image's kernel command line followed by the cell's own words.
fn kernel_command_line(image: &Image, extra: &[String]) -> Vec<String> {
    image.boot.cmdline.iter().chain(extra).cloned().collect()
}
