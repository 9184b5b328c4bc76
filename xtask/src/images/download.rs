//! Resumable HTTP(S) downloads with a pinned SHA-256 (kernels and disk images published on the
//! web: FreeBSD's CI images, Debian GNU/Hurd's images, a kernel under test).
//!
//! A partial download is kept as `<file>.part` and resumed with a `Range` request; the file
//! appears under its final name only once its hash matches.

use crate::error::{InfraCause, InfraError};
use crate::host::{self};
use anyhow::{Context, Result};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// The hash a download must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Digest<'a> {
    Sha256(&'a str),
    Sha512(&'a str),
}

impl<'a> Digest<'a> {
    fn name(self) -> &'static str {
        match self {
            Digest::Sha256(_) => "SHA-256",
            Digest::Sha512(_) => "SHA-512",
        }
    }

    fn expected(self) -> &'a str {
        match self {
            Digest::Sha256(h) | Digest::Sha512(h) => h,
        }
    }

    /// This kind of hash of `path`, hex.
    pub fn of_file(self, path: &Path) -> Result<String> {
        match self {
            Digest::Sha256(_) => host::sha256_file(path),
            Digest::Sha512(_) => {
                use sha2::Digest as _;
                let mut f = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let mut h = sha2::Sha512::new();
                std::io::copy(&mut f, &mut h)
                    .with_context(|| format!("reading {}", path.display()))?;
                Ok(hex::encode(h.finalize()))
            }
        }
    }

    /// True when `path` has this hash.
    pub fn matches(self, path: &Path) -> Result<bool> {
        Ok(self.of_file(path)?.eq_ignore_ascii_case(self.expected()))
    }
}

/// Downloads `url` to `dest` unless `dest` already has the hash `sha256`; returns `dest`.
pub fn fetch(url: &str, sha256: &str, dest: &Path) -> Result<PathBuf> {
    fetch_checked(url, Digest::Sha256(sha256), dest)
}

/// Downloads `url` to `dest` unless `dest` already has `digest`; returns `dest`.
pub fn fetch_checked(url: &str, digest: Digest<'_>, dest: &Path) -> Result<PathBuf> {
    if dest.exists() && digest.matches(dest)? {
        return Ok(dest.to_path_buf());
    }
    let dir = dest
        .parent()
        .context("download destination has no parent")?;
    std::fs::create_dir_all(dir)?;
    let part = dest.with_extension("part");
    let have = part.metadata().map(|m| m.len()).unwrap_or(0);
    crate::host::fast_tier::refuse_download(url)?;
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
    // Said once the server answered: an unreachable one gets the caller's one-line error only.
    eprintln!(
        "downloading {url}{}",
        if have > 0 {
            format!(" (resuming at {have} bytes)")
        } else {
            String::new()
        }
    );
    // 206: the server resumed where we stopped; 200: it sent everything again.
    let append = have > 0 && response.status() == 206;
    if append {
        check_content_range(url, response.header("Content-Range"), have, &part)?;
    }
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
    let actual = digest.of_file(&part)?;
    if !actual.eq_ignore_ascii_case(digest.expected()) {
        std::fs::remove_file(&part).ok();
        return Err(InfraError::new(
            InfraCause::Download,
            format!(
                "{url}: {} mismatch: expected {}, got {actual}",
                digest.name(),
                digest.expected()
            ),
        )
        .into());
    }
    std::fs::rename(&part, dest)?;
    Ok(dest.to_path_buf())
}

/// A 206 answer must resume exactly where the partial file ends (`bytes START-END/TOTAL`);
/// anything else would splice the wrong bytes in. The partial file is dropped then, so the
/// next attempt starts over.
fn check_content_range(url: &str, header: Option<&str>, have: u64, part: &Path) -> Result<()> {
    let start = header
        .and_then(|h| h.trim().strip_prefix("bytes "))
        .and_then(|r| r.split('-').next())
        .and_then(|s| s.trim().parse::<u64>().ok());
    if start == Some(have) {
        return Ok(());
    }
    std::fs::remove_file(part).ok();
    Err(InfraError::new(
        InfraCause::Download,
        format!(
            "{url}: asked to resume at byte {have}, the server answered Content-Range {:?}; the partial file was dropped (run again to start over)",
            header.unwrap_or("(none)")
        ),
    )
    .into())
}
