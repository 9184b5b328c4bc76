//! `local-kernel: {path}` and `run --kernel PATH`: a kernel on the user's disk. What the file is
//! (a PVH `vmlinux`, a bzImage, a Linux build tree, a GNU Mach kernel, gzipped or not) is
//! decided from its bytes before anything boots; anything else is a usage error naming the path.

use super::gnumach::write_cached;
use super::linux::{has_pvh_note, LinuxKernel};
use super::provenance::{Provenance, SourceKind};
use crate::error::UsageError;
use anyhow::Result;
use object::{Architecture, Object};
use std::io::Read;
use std::path::{Path, PathBuf};

/// What a local path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalKind {
    /// Linux: the PVH-bootable ELF (microvm), the bzImage (pc), or both (a build tree).
    Linux {
        vmlinux: Option<PathBuf>,
        bzimage: Option<PathBuf>,
    },
    /// A GNU Mach multiboot ELF, gzipped when `gzipped`.
    Mach { path: PathBuf, gzipped: bool },
}

impl LocalKind {
    pub fn os(&self) -> crate::detect::Os {
        match self {
            LocalKind::Linux { .. } => crate::detect::Os::Linux,
            LocalKind::Mach { .. } => crate::detect::Os::Mach,
        }
    }
}

fn usage(path: &Path, option: &str, message: impl std::fmt::Display) -> UsageError {
    UsageError::option(option, format!("{}: {message}", path.display()))
}

/// Decides what `path` is; `option` names where it was given (`--kernel`, `local-kernel.path`).
pub fn inspect(path: &Path, option: &str) -> Result<LocalKind, UsageError> {
    let meta = std::fs::metadata(path).map_err(|e| usage(path, option, e))?;
    if meta.is_dir() {
        return inspect_tree(path, option);
    }
    let data = std::fs::read(path).map_err(|e| usage(path, option, e))?;
    match classify(&data) {
        Some(Bytes::Pvh) => Ok(LocalKind::Linux {
            vmlinux: Some(path.to_path_buf()),
            bzimage: None,
        }),
        Some(Bytes::BzImage) => Ok(LocalKind::Linux {
            vmlinux: None,
            bzimage: Some(path.to_path_buf()),
        }),
        Some(Bytes::Mach { gzipped }) => Ok(LocalKind::Mach {
            path: path.to_path_buf(),
            gzipped,
        }),
        Some(Bytes::ElfWithoutPvh) => Err(usage(
            path,
            option,
            "an x86-64 ELF without a PVH note cannot be booted directly: give the bzImage \
             (arch/x86/boot/bzImage) or the build tree",
        )),
        None => Err(usage(
            path,
            option,
            "not a kernel (expected a vmlinux, a bzImage, a Linux build tree or a GNU Mach \
             kernel, gzipped or not)",
        )),
    }
}

/// A Linux build tree: `vmlinux` (when it has a PVH note) and `arch/x86/boot/bzImage`.
fn inspect_tree(dir: &Path, option: &str) -> Result<LocalKind, UsageError> {
    let vmlinux = dir.join("vmlinux");
    let bzimage = dir.join("arch/x86/boot/bzImage");
    let is = |p: &Path, want: Bytes| std::fs::read(p).ok().and_then(|d| classify(&d)) == Some(want);
    let vmlinux = is(&vmlinux, Bytes::Pvh).then_some(vmlinux);
    let bzimage = is(&bzimage, Bytes::BzImage).then_some(bzimage);
    if vmlinux.is_none() && bzimage.is_none() {
        return Err(usage(
            dir,
            option,
            "a directory without a built kernel: neither vmlinux (with a PVH note) nor \
             arch/x86/boot/bzImage",
        ));
    }
    Ok(LocalKind::Linux { vmlinux, bzimage })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bytes {
    Pvh,
    ElfWithoutPvh,
    BzImage,
    Mach { gzipped: bool },
}

const MULTIBOOT_MAGIC: [u8; 4] = 0x1BAD_B002u32.to_le_bytes();

fn classify(data: &[u8]) -> Option<Bytes> {
    // The Linux boot protocol's header magic, at 0x202 of every bzImage.
    if data.get(0x202..0x206) == Some(b"HdrS") {
        return Some(Bytes::BzImage);
    }
    if data.starts_with(&[0x1f, 0x8b]) {
        let mut head = Vec::new();
        flate2::read::GzDecoder::new(data)
            .take(64 * 1024)
            .read_to_end(&mut head)
            .ok()?;
        return is_mach_elf(&head).then_some(Bytes::Mach { gzipped: true });
    }
    if is_mach_elf(data) {
        return Some(Bytes::Mach { gzipped: false });
    }
    let elf = object::File::parse(data).ok()?;
    if elf.architecture() != Architecture::X86_64 {
        return None;
    }
    Some(if has_pvh_note(data) {
        Bytes::Pvh
    } else {
        Bytes::ElfWithoutPvh
    })
}

/// An x86 ELF (32-bit, or x86-64 as Debian's `gnumach-1.8-486` is) with a multiboot header in
/// its first 8 KiB: what GNU Mach is. The header must be where the multiboot specification puts
/// it (4-byte aligned, magic + flags + checksum = 0), so a Linux vmlinux whose bytes happen to
/// hold the magic is not taken for one. (Only the head is read, so a gunzipped prefix will do.)
fn is_mach_elf(data: &[u8]) -> bool {
    let i386 = data.starts_with(b"\x7fELF\x01\x01") && data.get(18..20) == Some(&[3, 0]);
    let x86_64 = data.starts_with(b"\x7fELF\x02\x01") && data.get(18..20) == Some(&[0x3e, 0]);
    let head = &data[..data.len().min(8192)];
    let word = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().unwrap());
    let multiboot = (0..head.len().saturating_sub(11)).step_by(4).any(|at| {
        head[at..at + 4] == MULTIBOOT_MAGIC
            && word(at)
                .wrapping_add(word(at + 4))
                .wrapping_add(word(at + 8))
                == 0
    });
    (i386 || x86_64) && multiboot
}

/// Path, SHA-256 and, inside a git work tree, the commit and `git describe --always --dirty`.
pub fn provenance(path: &Path, booted: &Path) -> Result<Provenance> {
    let data = std::fs::read(booted)?;
    let sha = crate::host::sha256_hex(&data);
    let mut p = Provenance {
        source: SourceKind::LocalFile,
        origin: path.display().to_string(),
        version: booted
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: sha,
        ..Provenance::default()
    };
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    if let Some((commit, describe)) = git_identity(dir) {
        p.version = describe.clone();
        p = p.with("git.commit", commit).with("git.describe", describe);
    }
    Ok(p)
}

/// The commit and `git describe --always --dirty` of the work tree `dir` is in, if any.
pub fn git_identity(dir: &Path) -> Option<(String, String)> {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    Some((
        git(&["rev-parse", "HEAD"])?,
        git(&["describe", "--always", "--dirty"])?,
    ))
}

/// A local Linux kernel, ready to boot. A bare vmlinux also stands in as the `pc` kernel
/// (QEMU boots a PVH ELF on `pc` as well).
pub fn linux(
    path: &Path,
    vmlinux: Option<PathBuf>,
    bzimage: Option<PathBuf>,
) -> Result<LinuxKernel> {
    let booted = vmlinux
        .clone()
        .or(bzimage.clone())
        .expect("inspect found a kernel");
    let mut prov = provenance(path, &booted)?;
    if let (Some(_), Some(bz)) = (&vmlinux, &bzimage) {
        prov = prov.with(
            "bzimage.sha256",
            crate::host::sha256_hex(&std::fs::read(bz)?),
        );
    }
    Ok(LinuxKernel {
        origin: path.display().to_string(),
        version: prov.version.clone(),
        origin_sha256: prov.sha256.clone(),
        bzimage: bzimage.unwrap_or(booted),
        vmlinux,
        unpacked: None,
        local: Some(prov),
    })
}

/// A local GNU Mach kernel: gunzipped into the cache when needed, and with `patch` its syscall
/// trap patched as `debian-gnumach` does (when the kernel has the pattern; a kernel built
/// without the broken trap boots as it is).
pub fn mach(
    path: &Path,
    gzipped: bool,
    patch: bool,
    cache: &Path,
) -> Result<super::gnumach::MachKernel> {
    let data = std::fs::read(path)?;
    let elf = if gzipped {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&data[..]).read_to_end(&mut out)?;
        out
    } else {
        data
    };
    let image_sha256 = crate::host::sha256_hex(&elf);
    let kernels = cache.join("gnumach/kernel");
    let out = kernels.join(format!("{image_sha256}.elf"));
    write_cached(&out, &elf)?;
    let mut prov = provenance(path, path)?.with("kernel.sha256", image_sha256.clone());
    let mut kernel = super::gnumach::MachKernel {
        path: out,
        package: path.display().to_string(),
        version: prov.version.clone(),
        deb_sha256: prov.sha256.clone(),
        image_sha256: image_sha256.clone(),
        patched: None,
        local: None,
    };
    if patch {
        use super::gnumach::{patch_syscall_trap, PatchError};
        match patch_syscall_trap(&elf) {
            Ok((patched, offset)) => {
                let sha = crate::host::sha256_hex(&patched);
                let at = kernels.join(format!("{image_sha256}.syscall-trap-patched.elf"));
                write_cached(&at, &patched)?;
                kernel.patched = Some((sha, offset as u64));
                kernel.path = at;
                prov = prov.with("syscall_trap_patch", format!("applied at {offset:#x}"));
            }
            Err(PatchError::NotFound) => {
                prov = prov.with("syscall_trap_patch", "pattern absent: booted as built");
            }
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        }
    }
    kernel.local = Some(prov);
    Ok(kernel)
}

/// `run --kernel PATH`: that kernel in place of the image's, on every cell whose image runs
/// the same OS and boots no disk of its own (the others are left out, and said so); then every
/// local kernel of the cells is checked. All before anything is built or booted.
pub fn apply(
    cells: Vec<crate::matrix::Cell>,
    kernel: Option<&Path>,
) -> Result<Vec<crate::matrix::Cell>, UsageError> {
    use crate::config::Source;
    let mut cells = cells;
    if let Some(path) = kernel {
        let os = inspect(path, "--kernel")?.os();
        let path = std::path::absolute(path).map_err(|e| usage(path, "--kernel", e))?;
        let before = cells.len();
        cells.retain(|c| c.image.os == os && c.image.disk.is_none());
        if cells.is_empty() {
            return Err(usage(
                &path,
                "--kernel",
                format!("no selected cell runs a {os:?} image without a disk"),
            ));
        }
        if cells.len() < before {
            eprintln!(
                "kstorm: --kernel: left out {} cells on images of another OS or with a disk",
                before - cells.len()
            );
        }
        for c in &mut cells {
            // A GNU Mach image's quirk (the syscall-trap patch) stays with the image.
            let patch_syscall_trap = matches!(
                c.image.source,
                Source::DebianGnumach {
                    patch_syscall_trap: true,
                    ..
                }
            );
            c.image.source = Source::LocalKernel {
                path: path.clone(),
                patch_syscall_trap,
            };
        }
    }
    for c in &cells {
        match &c.image.source {
            Source::LocalKernel { path, .. } => {
                inspect(path, &format!("image {}: local-kernel.path", c.image.name))?;
            }
            Source::KernelTree { path, .. } if !path.join("Makefile").is_file() => {
                let field = format!("image {}: kernel-tree.path", c.image.name);
                return Err(usage(
                    path,
                    &field,
                    "not a kernel source tree (no Makefile)",
                ));
            }
            _ => {}
        }
    }
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_kernels_are_usage_errors_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "hello").unwrap();
        let e = inspect(&text, "--kernel").unwrap_err().to_string();
        assert!(
            e.contains("--kernel") && e.contains("notes.txt") && e.contains("not a kernel"),
            "{e}"
        );
        let missing = dir.path().join("nope/vmlinux");
        let e = inspect(&missing, "--kernel").unwrap_err().to_string();
        assert!(e.contains("nope/vmlinux"), "{e}");
        let e = inspect(dir.path(), "--kernel").unwrap_err().to_string();
        assert!(e.contains("without a built kernel"), "{e}");
    }

    #[test]
    fn a_bzimage_header_and_a_multiboot_elf_are_recognised() {
        let mut bz = vec![0u8; 0x400];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(classify(&bz), Some(Bytes::BzImage));
        // A multiboot header: magic, flags, checksum (the three sum to zero).
        let header = |magic: u32| {
            let flags = 0x0001_0003u32;
            [magic, flags, 0u32.wrapping_sub(magic).wrapping_sub(flags)]
                .iter()
                .flat_map(|w| w.to_le_bytes())
                .collect::<Vec<u8>>()
        };
        let mut mach = b"\x7fELF\x01\x01\x01".to_vec();
        mach.resize(64, 0);
        mach[18] = 3;
        mach.extend_from_slice(&header(0x1BAD_B002));
        assert_eq!(classify(&mach), Some(Bytes::Mach { gzipped: false }));
        // Debian's gnumach-1.8-486 is an x86-64 ELF; the magic alone, without a valid
        // checksum, is not a multiboot header.
        let mut mach64 = b"\x7fELF\x02\x01\x01".to_vec();
        mach64.resize(4100, 0);
        mach64[18] = 0x3e;
        let mut bare = mach64.clone();
        mach64.extend_from_slice(&header(0x1BAD_B002));
        assert_eq!(classify(&mach64), Some(Bytes::Mach { gzipped: false }));
        bare.extend_from_slice(&MULTIBOOT_MAGIC);
        bare.extend_from_slice(&[0; 8]);
        assert_ne!(classify(&bare), Some(Bytes::Mach { gzipped: false }));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &mach).unwrap();
        assert_eq!(
            classify(&gz.finish().unwrap()),
            Some(Bytes::Mach { gzipped: true })
        );
    }
}
