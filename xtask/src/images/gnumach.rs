//! Debian's GNU Mach kernel as a test target: fetch the package (through [`debian`], like every
//! Debian package), gunzip the image and apply the one patch that lets the stock kernel run user
//! tasks.
//!
//! Kernels are cached under `<cache>/gnumach/kernel/` by the SHA-256 of the gunzipped image (the
//! patched copy is keyed by its input's hash, and the input is never modified).
//!
//! Why the patch: Debian builds this x86-64 kernel for 32-bit user tasks (`USER32`), and its
//! `lcall` system-call entry in `x86_64/locore.S` still holds a `ud2`, so the first trap of any
//! task panics the kernel ("Kernel Invalid opcode trap"). Replacing those two bytes by a 2-byte
//! no-op makes traps work. The unpatched kernel is kept as a
//! target too: that panic is a real, reproducible crash the detector must catch.

use super::debian;
use crate::host::{self, sha256_hex};
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The bytes that end in the `ud2` of the syscall entry: `pushf; cld; push %rax; push $0; ud2`.
pub const SYSCALL_TRAP_PATTERN: [u8; 7] = [0x9c, 0xfc, 0x50, 0x6a, 0x00, 0x0f, 0x0b];
/// What replaces the `ud2` (`0f 0b`): a 2-byte no-op (`xchg %ax,%ax`).
pub const SYSCALL_TRAP_REPLACEMENT: [u8; 2] = [0x66, 0x90];

/// A kernel image ready to boot, and where it came from.
#[derive(Debug, Clone)]
pub struct MachKernel {
    /// The ELF to boot (patched or not).
    pub path: PathBuf,
    pub package: String,
    pub version: String,
    /// SHA-256 of the `.deb`, checked against the archive's metadata.
    pub deb_sha256: String,
    /// SHA-256 of the gunzipped image as shipped.
    pub image_sha256: String,
    /// SHA-256 of the patched image and the file offset of the patched bytes, when patched.
    pub patched: Option<(String, u64)>,
    /// Provenance of a kernel from the user's disk (`local-kernel`, `--kernel`).
    pub local: Option<super::provenance::Provenance>,
}

impl MachKernel {
    /// What goes into a result's provenance.
    pub fn provenance(&self) -> super::provenance::Provenance {
        if let Some(local) = &self.local {
            return local.clone();
        }
        let (kernel_sha256, patch) = match &self.patched {
            Some((sha, offset)) => (
                sha.clone(),
                Some(format!(
                    "syscall-trap ud2 -> nop at file offset {offset:#x} of {}",
                    self.image_sha256
                )),
            ),
            None => (self.image_sha256.clone(), None),
        };
        super::provenance::Provenance {
            source: super::provenance::SourceKind::DebianPackage,
            origin: format!("debian:{}", self.package),
            version: self.version.clone(),
            sha256: self.deb_sha256.clone(),
            kernel_sha256: Some(kernel_sha256),
            patch,
            ..Default::default()
        }
    }
}

/// Why the syscall-trap patch could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchError {
    NotFound,
    Ambiguous { offsets: Vec<usize> },
}

impl std::fmt::Display for PatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pattern = hex::encode(SYSCALL_TRAP_PATTERN);
        match self {
            PatchError::NotFound => write!(
                f,
                "syscall-trap pattern {pattern} not found: this is not the kernel the patch was made for"
            ),
            PatchError::Ambiguous { offsets } => write!(
                f,
                "syscall-trap pattern {pattern} found {} times (at {}): refusing to guess which to patch",
                offsets.len(),
                offsets.iter().map(|o| format!("{o:#x}")).collect::<Vec<_>>().join(", ")
            ),
        }
    }
}

impl std::error::Error for PatchError {}

/// The file offset of the `ud2` to replace; the pattern must occur exactly once.
pub fn find_syscall_trap(image: &[u8]) -> Result<usize, PatchError> {
    let offsets: Vec<usize> = memchr::memmem::find_iter(image, &SYSCALL_TRAP_PATTERN)
        .map(|start| start + 5)
        .collect();
    match offsets.as_slice() {
        [] => Err(PatchError::NotFound),
        [one] => Ok(*one),
        _ => Err(PatchError::Ambiguous { offsets }),
    }
}

/// A patched copy of `image` and the offset of the patched bytes.
pub fn patch_syscall_trap(image: &[u8]) -> Result<(Vec<u8>, usize), PatchError> {
    let at = find_syscall_trap(image)?;
    let mut out = image.to_vec();
    out[at..at + 2].copy_from_slice(&SYSCALL_TRAP_REPLACEMENT);
    Ok((out, at))
}

/// The gunzipped kernel image from the `.deb` (`/boot/gnumach-*.gz`).
pub fn extract_image(deb: &Path) -> Result<Vec<u8>> {
    let tmp = tempfile::tempdir()?;
    debian::unpack(deb, tmp.path())?;
    let boot = tmp.path().join("boot");
    let gz = std::fs::read_dir(&boot)
        .with_context(|| format!("{}: no /boot in the package", deb.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            name.starts_with("gnumach") && name.ends_with(".gz")
        })
        .with_context(|| format!("{}: no /boot/gnumach-*.gz in the package", deb.display()))?;
    let mut image = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&gz)?)
        .read_to_end(&mut image)
        .with_context(|| format!("gunzipping {}", gz.display()))?;
    if !matches!(
        object::FileKind::parse(&image[..]),
        Ok(object::FileKind::Elf32 | object::FileKind::Elf64)
    ) {
        bail!("{}: gunzipped image is not an ELF file", gz.display());
    }
    Ok(image)
}

/// Writes `data` to `path` unless it is already there (atomically).
pub(crate) fn write_cached(path: &Path, data: &[u8]) -> Result<()> {
    if path.exists() {
        return Ok(());
    }
    host::write_atomic(path, data)
}

/// Fetches `package`, gunzips its image and, with `patch`, patches the syscall trap. The
/// results are cached; a second call costs a hash of the (small) `.deb`.
pub fn prepare_kernel(package: &str, patch: bool, cache_dir: &Path) -> Result<MachKernel> {
    let rec = debian::package_info(package, cache_dir)?;
    let deb = debian::download(&rec, &cache_dir.join("debs"))?;
    let kernels = cache_dir.join("gnumach").join("kernel");
    // The image's hash is recorded by the .deb's, so that a warm cache skips the gunzip.
    let image_sha_file = kernels.join(format!("{}.image-sha256", rec.sha256));
    let known = std::fs::read_to_string(&image_sha_file)
        .ok()
        .map(|s| s.trim().to_string());
    let image_sha256 = match known.filter(|sha| kernels.join(format!("{sha}.elf")).exists()) {
        Some(sha) => sha,
        None => {
            let image = extract_image(&deb)?;
            let sha = sha256_hex(&image);
            write_cached(&kernels.join(format!("{sha}.elf")), &image)?;
            host::write_atomic(&image_sha_file, sha.as_bytes())?;
            sha
        }
    };
    let plain = kernels.join(format!("{image_sha256}.elf"));
    let mut kernel = MachKernel {
        path: plain.clone(),
        package: package.to_string(),
        version: rec.version,
        deb_sha256: rec.sha256,
        image_sha256: image_sha256.clone(),
        patched: None,
        local: None,
    };
    if patch {
        let out = kernels.join(format!("{image_sha256}.syscall-trap-patched.elf"));
        let image = std::fs::read(&plain)?;
        let (patched, offset) = patch_syscall_trap(&image)
            .map_err(|e| anyhow::anyhow!("{}: {e}", plain.display()))
            .with_context(|| format!("patching {package}={}", kernel.version))?;
        write_cached(&out, &patched)?;
        kernel.patched = Some((sha256_hex(&patched), offset as u64));
        kernel.path = out;
    }
    Ok(kernel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image_with(patterns_at: &[usize]) -> Vec<u8> {
        let mut image = vec![0x90u8; 4096];
        for &at in patterns_at {
            image[at..at + SYSCALL_TRAP_PATTERN.len()].copy_from_slice(&SYSCALL_TRAP_PATTERN);
        }
        image
    }

    #[test]
    fn patch_finder_zero_matches_is_an_error() {
        let image = image_with(&[]);
        assert_eq!(find_syscall_trap(&image), Err(PatchError::NotFound));
        assert!(patch_syscall_trap(&image)
            .unwrap_err()
            .to_string()
            .contains("not found"));
    }

    #[test]
    fn patch_finder_one_match_patches_only_the_ud2() {
        let image = image_with(&[100]);
        assert_eq!(find_syscall_trap(&image), Ok(105));
        let (patched, at) = patch_syscall_trap(&image).unwrap();
        assert_eq!(at, 105);
        assert_eq!(
            &patched[100..107],
            &[0x9c, 0xfc, 0x50, 0x6a, 0x00, 0x66, 0x90]
        );
        let differing: Vec<usize> = (0..image.len())
            .filter(|&i| image[i] != patched[i])
            .collect();
        assert_eq!(differing, vec![105, 106]);
        // The input is untouched and the patched copy no longer matches.
        assert_eq!(find_syscall_trap(&image), Ok(105));
        assert_eq!(find_syscall_trap(&patched), Err(PatchError::NotFound));
    }

    #[test]
    fn patch_finder_two_matches_is_an_error_naming_both() {
        let image = image_with(&[10, 2000]);
        assert_eq!(
            find_syscall_trap(&image),
            Err(PatchError::Ambiguous {
                offsets: vec![15, 2005]
            })
        );
        let msg = patch_syscall_trap(&image).unwrap_err().to_string();
        assert!(
            msg.contains("2 times") && msg.contains("0xf") && msg.contains("0x7d5"),
            "{msg}"
        );
    }
}

#[cfg(test)]
mod image_file_tests {
    use crate::config::{load_image, Source};
    use std::path::Path;

    #[test]
    fn gnumach_image_files_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("images");
        for (name, patched) in [("gnumach", true), ("gnumach-unpatched", false)] {
            let image = load_image(&root.join(format!("{name}.yaml"))).unwrap();
            match image.source {
                Source::DebianGnumach {
                    package,
                    patch_syscall_trap,
                } => {
                    assert_eq!(package, "gnumach-image-1.8-486");
                    assert_eq!(patch_syscall_trap, patched);
                }
                other => panic!("{name}: unexpected source {other:?}"),
            }
            assert_eq!(image.os, crate::detect::Os::Mach);
        }
    }
}
