//! Debian packages as a kernel source: resolve the current package behind a metapackage, fetch
//! it with `apt-get download`, check it against the archive's SHA-256, unpack it.
//!
//! The archive moves (a kernel ABI pinned today is gone in a few weeks), so versions are
//! resolved at run time and recorded in every result. They only move when apt's lists do, so
//! each answer of `apt-cache` is kept in the cache until the lists (or the installed packages)
//! change: a run on an unchanged host asks apt nothing.
//!
//! Every Debian package kstorm fetches (kernels, GNU Mach, the packages of disk images) goes
//! through [`package_info`], [`download`] and [`unpack`].

use crate::error::{InfraCause, InfraError};
use crate::host::{self, Cmd};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What apt's answers depend on: the fetched lists (`apt-get update` replaces files there) and
/// the installed packages (an installed version can be the candidate).
const APT_STATE: [&str; 2] = ["/var/lib/apt/lists", "/var/lib/dpkg/status"];

/// A package as the archive describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageInfo {
    pub package: String,
    pub version: String,
    pub sha256: String,
}

/// The package a metapackage currently depends on whose name starts with `prefix`
/// (`linux-image-amd64` -> `linux-image-6.1.0-56-amd64`).
pub fn resolve_metapackage(metapackage: &str, prefix: &str, cache: &Path) -> Result<String> {
    let out = apt_cache(&["depends", metapackage], cache).map_err(|e| {
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

/// `apt-cache` dependencies of `package`, as `apt-cache depends` prints them.
pub fn depends(package: &str, cache: &Path) -> Result<String> {
    apt_cache(&["depends", package], cache)
}

/// Version and SHA-256 of the candidate version of `package`.
pub fn package_info(package: &str, cache: &Path) -> Result<PackageInfo> {
    let out = apt_cache(&["show", "--no-all-versions", package], cache).map_err(|e| {
        InfraError::new(
            InfraCause::Download,
            format!("package {package} is not in apt's lists: {e:#}"),
        )
    })?;
    parse_show(package, &out).map_err(|e| {
        InfraError::new(InfraCause::Download, format!("{e} (run `apt-get update`?)")).into()
    })
}

fn parse_show(package: &str, out: &str) -> Result<PackageInfo, String> {
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .ok_or_else(|| format!("apt-cache show {package}: no {name} field"))
    };
    let info = PackageInfo {
        package: package.to_string(),
        version: field("Version:")?,
        sha256: field("SHA256:")?,
    };
    if info.sha256.len() != 64 || !info.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "apt-cache show {package}: SHA256 {:?} is not a SHA-256",
            info.sha256
        ));
    }
    Ok(info)
}

/// apt's lists older than this are fetched again before "current" is resolved, so two fresh
/// machines test the same kernel (a machine's lists can be months old).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// The age of apt's newest index file, if there is one. apt gives each file the archive's own
/// date, so this is how old the archive snapshot is, not when it was fetched.
fn lists_age() -> Option<Duration> {
    let newest = std::fs::read_dir(APT_STATE[0])
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.ends_with("_Packages") || n.ends_with("InRelease") || n.ends_with("_Release")
        })
        .filter_map(|e| e.metadata().ok()?.modified().ok())
        .max()?;
    newest.elapsed().ok()
}

/// Once per process: when apt's lists are older than [`LISTS_MAX_AGE`], runs `apt-get update`
/// (as root, unless `KSTORM_NO_INSTALL` is set) and says so; otherwise says how old they are.
/// An update kstorm ran less than [`LISTS_MAX_AGE`] ago (a stamp in `cache`) also counts as
/// fresh: an archive that published nothing since is not fetched again on every run.
fn refresh_stale_lists(cache: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let stamp = cache.join("apt").join("updated");
        let updated_lately = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|a| a < LISTS_MAX_AGE);
        let Some(age) = lists_age().filter(|a| *a > LISTS_MAX_AGE && !updated_lately) else {
            return;
        };
        let days = age.as_secs_f64() / 86400.0;
        let may = host::is_root() && std::env::var_os("KSTORM_NO_INSTALL").is_none();
        if !may {
            eprintln!(
                "kstorm: note: apt's lists are {days:.0} days old; \"current\" Debian packages \
                 are what they say (run `apt-get update` as root for today's)"
            );
            return;
        }
        eprintln!("kstorm: apt's lists are {days:.1} days old: apt-get update, so that \"current\" means today's archive");
        match Cmd::new("apt-get")
            .args(["update", "-q"])
            .timeout(Duration::from_secs(600))
            .run()
        {
            Ok(()) => {
                let _ = host::write_atomic(&stamp, b"apt-get update by kstorm\n");
            }
            Err(e) => {
                eprintln!("kstorm: note: apt-get update failed ({e:#}); resolving with the old lists")
            }
        }
    });
}

/// `apt-cache ARGS`, answered from the cache while apt's state is unchanged (apt's lists are
/// refreshed first when they are stale).
fn apt_cache(args: &[&str], cache: &Path) -> Result<String> {
    refresh_stale_lists(cache);
    #[derive(serde::Serialize, serde::Deserialize)]
    struct Remembered {
        state: String,
        output: String,
    }
    let key = args
        .iter()
        .fold(host::CacheKey::new(), |k, a| k.part(a))
        .hex();
    let path = cache.join("apt").join(format!("{}.json", &key[..32]));
    let state = apt_state();
    let remembered = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Remembered>(&b).ok());
    if let Some(r) = remembered.filter(|r| state.as_ref() == Some(&r.state)) {
        return Ok(r.output);
    }
    let output = Cmd::new("apt-cache").args(args).read()?;
    if let Some(state) = state {
        let r = Remembered { state, output };
        host::write_atomic(&path, &serde_json::to_vec(&r)?)?;
        return Ok(r.output);
    }
    Ok(output)
}

/// The modification times of [`APT_STATE`], or `None` when one cannot be read (then nothing
/// is remembered).
fn apt_state() -> Option<String> {
    let times: Option<Vec<String>> = APT_STATE
        .iter()
        .map(|p| {
            let t = std::fs::metadata(p).ok()?.modified().ok()?;
            let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
            Some(format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
        })
        .collect();
    times.map(|t| t.join(" "))
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
    Cmd::new("apt-get")
        .args(["download", "-q", spec.as_str()])
        .dir(dir)
        // A 70 MB kernel on a slow mirror.
        .timeout(Duration::from_secs(30 * 60))
        .read()
        .map_err(|e| {
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
    Cmd::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(dest)
        .read()
        .map_err(|e| {
            InfraError::new(
                InfraCause::Download,
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
        let sha = "3045e6ea88b136ae5a2bbf27835129b6e841d5a54ef290f1ba0932db0c2d072e";
        let out = format!("Package: x\nVersion: 2:1.8+git20221224-2\nSHA256: {sha}\nSize: 3\n");
        let info = parse_show("x", &out).unwrap();
        assert_eq!(info.version, "2:1.8+git20221224-2");
        assert_eq!(info.sha256, sha);
        let err = parse_show("x", "Package: x\nVersion: 1\n").unwrap_err();
        assert!(err.contains("no SHA256: field"), "{err}");
        let err = parse_show("x", "Version: 1\nSHA256: abc\n").unwrap_err();
        assert!(err.contains("is not a SHA-256"), "{err}");
    }

    /// A second question with apt's state unchanged is answered without running apt-cache.
    #[test]
    fn apt_answers_are_remembered_until_the_lists_change() {
        let Some(state) = apt_state() else {
            return; // not a Debian host
        };
        let dir = tempfile::tempdir().unwrap();
        let first = apt_cache(&["policy", "dpkg"], dir.path()).unwrap();
        assert!(first.contains("dpkg:"), "{first}");
        let file = std::fs::read_dir(dir.path().join("apt"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        // Replace the remembered answer: it comes back while the state matches...
        let fake = serde_json::json!({"state": state, "output": "remembered"});
        std::fs::write(&file, fake.to_string()).unwrap();
        assert_eq!(
            apt_cache(&["policy", "dpkg"], dir.path()).unwrap(),
            "remembered"
        );
        // ...and apt is asked again once it does not.
        let stale = serde_json::json!({"state": "0.0 0.0", "output": "remembered"});
        std::fs::write(&file, stale.to_string()).unwrap();
        assert_eq!(apt_cache(&["policy", "dpkg"], dir.path()).unwrap(), first);
    }
}
