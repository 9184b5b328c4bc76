//! Builds the static guest payload (`guest-payload`, binary `kstorm-payload`).
//!
//! It is built by a nested `cargo build` with its own target directory, so its static-linking
//! flags never invalidate the harness's own build, and cargo's freshness checks make a rebuild
//! cost nothing when the sources did not change.

use crate::error::{InfraCause, InfraError};
use crate::host::{self, Cmd};
use anyhow::{Context, Result};
use std::path::PathBuf;
use std::time::Duration;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the payload and returns the path of the static binary.
pub fn build() -> Result<PathBuf> {
    let root = host::workspace_root();
    let target_dir = target_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    Cmd::new(cargo)
        .args([
            "build",
            "--quiet",
            "--release",
            "--package",
            "guest-payload",
            "--bin",
            "kstorm-payload",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .dir(&root)
        // Static, so it runs as PID 1 in an initramfs with no libc beside it.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        // A first build on a small machine compiles every dependency.
        .timeout(Duration::from_secs(30 * 60))
        .run()
        .map_err(|e| {
            InfraError::new(
                InfraCause::PayloadBuild,
                format!("building the guest payload failed: {e:#}"),
            )
        })?;
    let bin = target_dir
        .join(TARGET)
        .join("release")
        .join("kstorm-payload");
    let bytes = std::fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if !is_static_elf(&bytes) {
        return Err(InfraError::new(
            InfraCause::PayloadBuild,
            format!("{} is not a static executable", bin.display()),
        )
        .into());
    }
    Ok(bin)
}

/// Where the payload is built: `payload/` in cargo's target folder (`$CARGO_TARGET_DIR`, else
/// the workspace's `target/`), so a CI cache of that folder keeps the payload too.
pub fn target_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(std::path::absolute)
        .and_then(Result::ok)
        .unwrap_or_else(|| host::workspace_root().join("target"));
    target.join("payload")
}

/// True for an x86-64 ELF executable with no program interpreter (no dynamic loader needed).
pub fn is_static_elf(elf: &[u8]) -> bool {
    use object::read::elf::{ElfFile64, ProgramHeader};
    use object::Object;
    let Ok(file) = ElfFile64::<object::Endianness>::parse(elf) else {
        return false;
    };
    let endian = file.endian();
    file.architecture() == object::Architecture::X86_64
        && file
            .elf_program_headers()
            .iter()
            .all(|segment| segment.p_type(endian) != object::elf::PT_INTERP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_host_binary_is_not_static() {
        // /bin/sh on Debian is dynamically linked.
        let sh = std::fs::read("/bin/sh").unwrap();
        assert!(!is_static_elf(&sh));
        assert!(!is_static_elf(b"#!/bin/sh\n"));
    }

    #[test]
    fn the_built_payload_is_static() {
        let bin = build().unwrap();
        assert!(is_static_elf(&std::fs::read(bin).unwrap()));
    }
}
