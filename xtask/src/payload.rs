//! Builds the static guest payload (`guest-payload`, binary `kstorm-payload`).
//!
//! It is built by a nested `cargo build` with its own target directory, so its static-linking
//! flags never invalidate the harness's own build, and cargo's freshness checks make a rebuild
//! cost nothing when the sources did not change.

use crate::host::{self, InfraCause, InfraError};
use anyhow::{Context, Result};
use std::ffi::OsString;
use std::path::PathBuf;

pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds the payload and returns the path of the static binary.
pub fn build() -> Result<PathBuf> {
    let root = host::workspace_root();
    let target_dir = root.join("target").join("payload");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let argv = host::args([
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
    ]);
    let mut argv = argv;
    argv.push(target_dir.clone().into());
    host::echo(&cargo.to_string_lossy(), &argv);
    let status = std::process::Command::new(&cargo)
        .args(&argv)
        .current_dir(&root)
        // Static, so it runs as PID 1 in an initramfs with no libc beside it.
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .status()
        .context("starting cargo to build the guest payload")?;
    if !status.success() {
        return Err(InfraError::new(
            InfraCause::PayloadBuild,
            format!("building the guest payload failed ({status})"),
        )
        .into());
    }
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

/// True for an x86-64 ELF executable with no program interpreter (no dynamic loader needed).
pub fn is_static_elf(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let rd64 = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    };
    let rd16 = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let rd32 = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd64(0x20), rd16(0x36), rd16(0x38)) else {
        return false;
    };
    (0..phnum as usize).all(|i| rd32(phoff as usize + i * phentsize as usize) != Some(PT_INTERP))
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
}
