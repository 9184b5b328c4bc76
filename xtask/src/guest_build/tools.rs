//! stress-ng for the PID-1 initramfs: Debian's dynamically linked binary with the dynamic
//! loader and the shared libraries it loads, carried only by cells that run a `stress-ng` case.
//!
//! Nothing is listed by hand. The libraries are what the ELF files ask for (`PT_INTERP`,
//! `DT_NEEDED`, transitively), and each is looked up in the Debian packages that the asking
//! file's own package depends on (Debian's shlibs guarantee it is there), fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` into the cache. The result is a guest
//! tree (`/usr/bin/stress-ng`, `/lib64/ld-linux-x86-64.so.2`, `/lib/x86_64-linux-gnu/*`)
//! cached by the package's hash, with stress-ng's `--version` for the cell's provenance.

use crate::error::{InfraCause, InfraError};
use crate::host::{self, Cmd};
use crate::images::initramfs::ToolArchive;
use crate::images::{debian, disk};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PACKAGE: &str = "stress-ng";
/// Where libraries go in the guest: a directory the loader searches without a cache.
const GUEST_LIB_DIR: &str = "lib/x86_64-linux-gnu";
/// Where packages keep shared libraries.
const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "lib",
    "usr/lib",
];
/// Bounds on the resolution: files carried and packages fetched.
const MAX_FILES: usize = 80;
const MAX_PACKAGES: usize = 80;

/// The guest tree and what the cell's provenance records about it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bundle {
    /// Guest path (relative, `usr/bin/stress-ng`) to the host file holding its bytes.
    pub files: BTreeMap<String, PathBuf>,
    /// `stress-ng.version`, `stress-ng.package`, `stress-ng.libraries`.
    pub provenance: BTreeMap<String, String>,
    /// The files as a compressed archive to append to a cell's initramfs.
    pub archive: PathBuf,
}

/// The bundle of Debian's current stress-ng, built once per package hash.
pub fn prepare(cache: &Path) -> Result<Bundle> {
    host::require_tools(&["apt-get", "apt-cache", "dpkg-deb"])?;
    let info = debian::package_info(PACKAGE, cache)?;
    let dir = cache.join("stress-ng").join(&info.sha256[..32]);
    let manifest = dir.join("bundle.json");
    let _lock = host::CacheLock::acquire(cache, "stress-ng")?;
    if let Some(b) = std::fs::read(&manifest)
        .ok()
        .and_then(|b| serde_json::from_slice::<Bundle>(&b).ok())
        .filter(|b| b.archive.exists() && b.files.values().all(|p| p.exists()))
    {
        return Ok(b);
    }
    let mut r = Resolver {
        cache,
        pkgs_dir: dir.join("pkgs"),
        unpacked: BTreeMap::new(),
        files: BTreeMap::new(),
    };
    let root = r.unpack(PACKAGE)?;
    let binary = root.join("usr/bin/stress-ng");
    r.carry("usr/bin/stress-ng", &binary, PACKAGE)?;
    let (version, build_info) = parse_version(&run_version(&r.files)?);
    let mut provenance = BTreeMap::from([
        ("stress-ng.version".to_string(), version),
        ("stress-ng.build-info".to_string(), build_info),
        (
            "stress-ng.package".to_string(),
            format!("{}={} sha256 {}", info.package, info.version, info.sha256),
        ),
        (
            "stress-ng.libraries".to_string(),
            r.unpacked.keys().cloned().collect::<Vec<_>>().join(" "),
        ),
    ]);
    provenance.insert("stress-ng.files".into(), r.files.len().to_string());
    let files = r
        .files
        .iter()
        .map(|(guest, host)| Ok((guest.clone(), std::fs::read(host)?)))
        .collect::<Result<Vec<_>>>()?;
    let archive = dir.join("tools.cpio.gz");
    host::write_atomic(&archive, &crate::images::initramfs::tools_archive(&files)?)?;
    let bundle = Bundle {
        files: r.files,
        provenance,
        archive,
    };
    host::write_atomic(&manifest, &serde_json::to_vec_pretty(&bundle)?)?;
    Ok(bundle)
}

struct Resolver<'a> {
    cache: &'a Path,
    pkgs_dir: PathBuf,
    /// Package name to the folder it was unpacked in.
    unpacked: BTreeMap<String, PathBuf>,
    files: BTreeMap<String, PathBuf>,
}

impl Resolver<'_> {
    /// Downloads and unpacks `package` once; returns its folder.
    fn unpack(&mut self, package: &str) -> Result<PathBuf> {
        if let Some(root) = self.unpacked.get(package) {
            return Ok(root.clone());
        }
        if self.unpacked.len() >= MAX_PACKAGES {
            bail!(image_error(format!(
                "more than {MAX_PACKAGES} packages needed for {PACKAGE}'s libraries"
            )));
        }
        let info = debian::package_info(package, self.cache)?;
        let deb = debian::download(&info, &self.cache.join("debs"))?;
        let root = self.pkgs_dir.join(package);
        if !root.exists() {
            let tmp = self.pkgs_dir.join(format!("{package}.tmp"));
            let _ = std::fs::remove_dir_all(&tmp);
            debian::unpack(&deb, &tmp)?;
            std::fs::rename(&tmp, &root)?;
        }
        self.unpacked.insert(package.to_string(), root.clone());
        Ok(root)
    }

    /// Carries the ELF file `host` (from `package`) as `guest`, then its loader and every
    /// library it needs, found in the packages `package` depends on.
    fn carry(&mut self, guest: &str, host: &Path, package: &str) -> Result<()> {
        if self.files.contains_key(guest) {
            return Ok(());
        }
        if self.files.len() >= MAX_FILES {
            bail!(image_error(format!(
                "more than {MAX_FILES} files needed for {PACKAGE}"
            )));
        }
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        let needs = elf_needs(&data).with_context(|| format!("reading ELF {}", host.display()))?;
        self.files.insert(guest.to_string(), host.to_path_buf());
        if let Some(interp) = needs.interpreter {
            let name = file_name(&interp);
            let (path, owner) = self.find_library(name, package)?;
            self.carry(interp.trim_start_matches('/'), &path, &owner)?;
        }
        for soname in needs.libraries {
            let (path, owner) = self.find_library(&soname, package)?;
            self.carry(&format!("{GUEST_LIB_DIR}/{soname}"), &path, &owner)?;
        }
        Ok(())
    }

    /// The file named `soname` in `package` or one of its hard dependencies, and its package.
    fn find_library(&mut self, soname: &str, package: &str) -> Result<(PathBuf, String)> {
        let deps = debian::depends(package, self.cache)
            .map_err(|e| image_error(format!("dependencies of {package}: {e:#}")))?;
        let mut candidates = vec![package.to_string()];
        candidates.extend(disk::parse_hard_depends(&deps));
        let mut seen = BTreeSet::new();
        for candidate in candidates.into_iter().filter(|c| seen.insert(c.clone())) {
            let root = self.unpack(&candidate)?;
            if let Some(path) = LIB_DIRS
                .iter()
                .find_map(|d| resolve_in_root(&root, &format!("{d}/{soname}")))
            {
                return Ok((path, candidate));
            }
        }
        bail!(image_error(format!(
            "{soname}, needed by a file of {package}, is in none of {package}'s dependencies ({})",
            seen.into_iter().collect::<Vec<_>>().join(", ")
        )))
    }
}

/// What an ELF file asks the dynamic loader for.
#[derive(Debug, Default, PartialEq)]
pub struct ElfNeeds {
    pub interpreter: Option<String>,
    pub libraries: Vec<String>,
}

/// `PT_INTERP` and the `DT_NEEDED` entries of a 64-bit ELF file.
pub fn elf_needs(data: &[u8]) -> Result<ElfNeeds> {
    use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
    let file = ElfFile64::<object::Endianness>::parse(data)?;
    let endian = file.endian();
    let mut needs = ElfNeeds::default();
    for ph in file.elf_program_headers() {
        if let Some(interp) = ph.interpreter(endian, data)? {
            needs.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
    }
    let header = file.elf_header();
    let sections = header.sections(endian, data)?;
    let table = sections.dynamic_table(endian, data)?;
    for entry in &table {
        if entry.tag == object::elf::DT_NEEDED {
            let name = table.string(entry)?;
            needs
                .libraries
                .push(String::from_utf8_lossy(name).into_owned());
        }
    }
    Ok(needs)
}

/// `rel` inside the unpacked package at `root`, following symbolic links inside the package
/// (an absolute link target is taken relative to `root`); `None` when it is not a file there.
fn resolve_in_root(root: &Path, rel: &str) -> Option<PathBuf> {
    let mut path = root.join(rel);
    for _ in 0..16 {
        let meta = std::fs::symlink_metadata(&path).ok()?;
        if !meta.file_type().is_symlink() {
            return meta.is_file().then_some(path);
        }
        let target = std::fs::read_link(&path).ok()?;
        path = if target.is_absolute() {
            root.join(target.strip_prefix("/").ok()?)
        } else {
            path.parent()?.join(target)
        };
    }
    None
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// `stress-ng --version`, run on the host through the bundle's own loader and libraries.
fn run_version(files: &BTreeMap<String, PathBuf>) -> Result<String> {
    let stage = tempfile::tempdir()?;
    for (guest, host) in files {
        let dest = stage.path().join(guest);
        std::fs::create_dir_all(dest.parent().context("no parent")?)?;
        std::fs::copy(host, &dest)?;
    }
    let loader = files
        .keys()
        .find(|g| g.contains("ld-linux"))
        .context("the bundle has no dynamic loader")?;
    let out = Cmd::new(stage.path().join(loader).display().to_string())
        .arg("--library-path")
        .arg(stage.path().join(GUEST_LIB_DIR))
        .arg(stage.path().join("usr/bin/stress-ng"))
        .arg("--version")
        .timeout(Duration::from_secs(30))
        .read()
        .map_err(|e| image_error(format!("stress-ng --version: {e:#}")))?;
    Ok(out.trim().to_string())
}

/// Version and toolchain from `--version` (`stress-ng, version 0.15.06 (gcc 12.2.0, x86_64
/// Linux <release>)`). The system part describes the host it ran on, not the guest, so it is
/// left out. 0.15.06 has no `--build-info`: the toolchain is what it says of its build.
fn parse_version(out: &str) -> (String, String) {
    let line = out.lines().next().unwrap_or_default();
    let rest = line.split("version ").nth(1).unwrap_or(line);
    let (version, paren) = rest.split_once(" (").unwrap_or((rest, ""));
    let toolchain = paren
        .split(',')
        .next()
        .unwrap_or_default()
        .trim_end_matches(')');
    (version.trim().to_string(), format!("toolchain {toolchain}"))
}

fn image_error(message: String) -> InfraError {
    InfraError::new(InfraCause::ImageBuild, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dynamic_host_binary_needs_its_loader_and_libc() {
        let sh = std::fs::read("/bin/sh").unwrap();
        let needs = elf_needs(&sh).unwrap();
        assert_eq!(
            needs.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(
            needs.libraries.iter().any(|l| l == "libc.so.6"),
            "{needs:?}"
        );
    }

    #[test]
    fn version_leaves_out_the_host() {
        let out = "stress-ng, version 0.15.06 (gcc 12.2.0, x86_64 Linux 6.18.44-fc-v1045)\n";
        let (v, build) = parse_version(out);
        assert_eq!(v, "0.15.06");
        assert_eq!(build, "toolchain gcc 12.2.0");
    }

    #[test]
    fn links_resolve_inside_the_package() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib/x86_64-linux-gnu");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::write(lib.join("libz.so.1.2.13"), b"elf").unwrap();
        std::os::unix::fs::symlink("libz.so.1.2.13", lib.join("libz.so.1")).unwrap();
        std::fs::create_dir_all(root.path().join("lib64")).unwrap();
        std::os::unix::fs::symlink(
            "/lib/x86_64-linux-gnu/libz.so.1",
            root.path().join("lib64/ld.so"),
        )
        .unwrap();
        let found = resolve_in_root(root.path(), "lib64/ld.so").unwrap();
        assert_eq!(found, lib.join("libz.so.1.2.13"));
        assert_eq!(resolve_in_root(root.path(), "lib/none.so"), None);
    }
}

/// The bundles of `tools` (names from the scenario registry's `guest_tools`), in one archive.
pub fn bundle(tools: &[&str], cache: &Path) -> Result<ToolArchive> {
    let mut out = ToolArchive::default();
    for tool in tools {
        let b = match *tool {
            PACKAGE => prepare(cache)?,
            other => bail!("no bundle recipe for guest tool {other:?}"),
        };
        // Each archive is a complete compressed cpio: the kernel unpacks them one after another.
        out.archive.extend(
            std::fs::read(&b.archive)
                .with_context(|| format!("reading {}", b.archive.display()))?,
        );
        out.provenance.extend(b.provenance);
    }
    Ok(out)
}
