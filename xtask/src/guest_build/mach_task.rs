//! kstorm's GNU Mach bootstrap task (`guest-payload/mach/`), compiled on the host: the task
//! is the payload of a GNU Mach cell.

use crate::host::{CacheKey, Cmd};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// The C sources of the task, in link order.
const SOURCES: [&str; 4] = ["bootstrap.c", "scenarios.c", "frame.c", "mach.c"];
const HEADERS: [&str; 3] = ["mach.h", "frame.h", "scenario.h"];

/// A freestanding static 32-bit ELF (the kernel runs USER32 tasks), no libc, no libgcc.
const GCC_FLAGS: [&str; 14] = [
    "-m32",
    "-ffreestanding",
    "-nostdlib",
    "-static",
    "-no-pie",
    "-fno-pic",
    "-fno-stack-protector",
    "-fno-builtin",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wl,-m,elf_i386",
    "-Wl,--build-id=none",
];

/// The directory holding the task's sources.
pub fn source_dir() -> PathBuf {
    crate::host::workspace_root()
        .join("guest-payload")
        .join("mach")
}

/// Compiles the bootstrap task into `out_dir` (`gcc -m32`; freestanding, so plain gcc does)
/// and returns the
/// ELF's path. The output is named by the hash of sources and flags, so an unchanged task is
/// not rebuilt.
pub fn build(out_dir: &Path) -> Result<PathBuf> {
    let src = source_dir();
    let mut key = CacheKey::new();
    for name in SOURCES.iter().chain(HEADERS.iter()) {
        let path = src.join(name);
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        key = key.part(name).part(text);
    }
    let key = key.part(GCC_FLAGS.join(" ")).hex();
    let out = out_dir.join(format!("mach-bootstrap-{}", &key[..16]));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let tmp = out_dir.join(format!(
        ".mach-bootstrap-{}.{}",
        &key[..16],
        std::process::id()
    ));
    Cmd::new("gcc")
        .args(GCC_FLAGS)
        .arg("-o")
        .arg(&tmp)
        .args(SOURCES.iter().map(|n| src.join(n)))
        .read()
        .context("building the GNU Mach bootstrap task")?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_32bit_elf() {
        let dir = tempfile::tempdir().unwrap();
        let elf = build(dir.path()).unwrap();
        let bytes = std::fs::read(&elf).unwrap();
        use object::Object;
        let file = object::File::parse(&bytes[..]).unwrap();
        assert!(!file.is_64(), "ELFCLASS32");
        assert_eq!(file.architecture(), object::Architecture::I386);
        // Cached: the second build returns the same file without compiling.
        assert_eq!(build(dir.path()).unwrap(), elf);
    }
}
