//! Debian packages as a kernel source: resolve the current package behind a metapackage, fetch
//! it with `apt-get download`, check it against the archive's SHA-256, unpack it.
//!
//! The archive moves (a kernel ABI pinned today is gone in a few weeks), so versions are
//! resolved at run time and recorded in every result.

use crate::host::{self, args, InfraCause, InfraError};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// A package as the archive describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

/// The package a metapackage currently depends on whose name starts with `prefix`
/// (`linux-image-amd64` -> `linux-image-6.1.0-56-amd64`).
pub fn resolve_metapackage(metapackage: &str, prefix: &str) -> Result<String> {
    let out =
        host::run_capture("apt-cache", &args(["depends", metapackage]), None).map_err(|e| {
            InfraError::new(
                InfraCause::Download,
                format!("cannot resolve {metapackage}: {e:#}"),
            )
        })?;
    parse_depends(&out, prefix).ok_or_else(|| {
        InfraError::new(InfraCause::Download, format!(
            "{metapackage} names no {prefix}* dependency in apt's lists (run `apt-get update` as root?)"
        ))
        .into()
    })
}

fn parse_depends(out: &str, prefix: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends:"))
        .map(|d| {
            d.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
        .find(|d| d.starts_with(prefix))
}

/// Version and SHA-256 of the candidate version of `package`.
pub fn package_info(package: &str) -> Result<PackageInfo> {
    let out = host::run_capture(
        "apt-cache",
        &args(["show", "--no-all-versions", package]),
        None,
    )
    .map_err(|e| {
        InfraError::new(
            InfraCause::Download,
            format!("package {package} is not in apt's lists: {e:#}"),
        )
    })?;
    parse_show(package, &out).ok_or_else(|| {
        InfraError::new(
            InfraCause::Download,
            format!("apt-cache show {package} gave no Version/SHA256 (run `apt-get update`?)"),
        )
        .into()
    })
}

fn parse_show(package: &str, out: &str) -> Option<PackageInfo> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
    };
    Some(PackageInfo {
        package: package.to_string(),
        version: field("Version:")?,
        sha256: field("SHA256:")?,
    })
}

/// Downloads the package into `dir` (skipped when a file with the right hash is there) and
/// checks its SHA-256 against the archive's. Returns the `.deb`'s path.
pub fn download(info: &PackageInfo, dir: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(deb) = find_deb(dir, &info.package)? {
        if host::sha256_file(&deb)? == info.sha256 {
            return Ok(deb);
        }
        std::fs::remove_file(&deb)?;
    }
    let spec = format!("{}={}", info.package, info.version);
    host::run_capture("apt-get", &args(["download", spec.as_str()]), Some(dir)).map_err(|e| {
        InfraError::new(
            InfraCause::Download,
            format!("apt-get download {spec} failed: {e:#}"),
        )
    })?;
    let deb = find_deb(dir, &info.package)?.ok_or_else(|| {
        InfraError::new(
            InfraCause::Download,
            format!("apt-get download {spec} left no .deb in {}", dir.display()),
        )
    })?;
    verify_sha256(&deb, &info.sha256)?;
    Ok(deb)
}

/// Fails with an infra error when the file's SHA-256 is not `expected`.
pub fn verify_sha256(path: &Path, expected: &str) -> Result<()> {
    let actual = host::sha256_file(path)?;
    if !actual.eq_ignore_ascii_case(expected) {
        bail!(InfraError::new(
            InfraCause::Download,
            format!(
                "{}: SHA-256 mismatch: expected {expected}, got {actual}",
                path.display()
            )
        ));
    }
    Ok(())
}

fn find_deb(dir: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Unpacks a `.deb`'s files into `dest` with `dpkg-deb -x`.
pub fn unpack(deb: &Path, dest: &Path) -> Result<()> {
    std::fs::create_dir_all(dest)?;
    let argv = vec![std::ffi::OsString::from("-x"), deb.into(), dest.into()];
    host::run_capture("dpkg-deb", &argv, None).map_err(|e| {
        InfraError::new(
            InfraCause::ImageBuild,
            format!("dpkg-deb -x {} failed: {e:#}", deb.display()),
        )
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_picks_the_kernel_package() {
        let out =
            "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n  Depends: <virtual-x>\n";
        assert_eq!(
            parse_depends(out, "linux-image-").as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(parse_depends(out, "gnumach-"), None);
    }

    #[test]
    fn show_fields() {
        let out = "Package: x\nVersion: 6.1.192-2\nSHA256: abc\nSize: 3\n";
        let info = parse_show("x", out).unwrap();
        assert_eq!(info.version, "6.1.192-2");
        assert_eq!(info.sha256, "abc");
        assert!(parse_show("x", "Package: x\n").is_none());
    }
}
