//! Resumable HTTP(S) downloads with a pinned SHA-256 (kernels and disk images published on the
//! web: FreeBSD's CI images, Debian GNU/Hurd's images, a kernel under test).
//!
//! A partial download is kept as `<file>.part` and resumed with a `Range` request; the file
//! appears under its final name only once its hash matches.

use crate::host::{self, InfraCause, InfraError};
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Downloads `url` to `dest` unless `dest` already has the hash `sha256`; returns `dest`.
pub fn fetch(url: &str, sha256: &str, dest: &Path) -> Result<PathBuf> {
    if dest.exists() && host::sha256_file(dest)?.eq_ignore_ascii_case(sha256) {
        return Ok(dest.to_path_buf());
    }
    let dir = dest
        .parent()
        .context("download destination has no parent")?;
    std::fs::create_dir_all(dir)?;
    let part = dest.with_extension("part");
    let have = part.metadata().map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "downloading {url}{}",
        if have > 0 {
            format!(" (resuming at {have} bytes)")
        } else {
            String::new()
        }
    );
    // Bound each connect and each read, not the whole transfer: disk images take minutes.
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout_read(std::time::Duration::from_secs(60))
        .build();
    let mut request = agent.get(url);
    if have > 0 {
        request = request.set("Range", &format!("bytes={have}-"));
    }
    let response = request.call().map_err(|e| {
        InfraError::new(
            InfraCause::Download,
            format!("download of {url} failed: {e}"),
        )
    })?;
    // 206: the server resumed where we stopped; 200: it sent everything again.
    let append = have > 0 && response.status() == 206;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(&part)
        .with_context(|| format!("opening {}", part.display()))?;
    let mut reader = response.into_reader();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).map_err(|e| {
            InfraError::new(
                InfraCause::Download,
                format!("download of {url} broke off: {e} (run again to resume)"),
            )
        })?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n])?;
    }
    file.sync_all()?;
    drop(file);
    let actual = host::sha256_file(&part)?;
    if !actual.eq_ignore_ascii_case(sha256) {
        std::fs::remove_file(&part).ok();
        return Err(InfraError::new(
            InfraCause::Download,
            format!("{url}: SHA-256 mismatch: expected {sha256}, got {actual}"),
        )
        .into());
    }
    std::fs::rename(&part, dest)?;
    Ok(dest.to_path_buf())
}
