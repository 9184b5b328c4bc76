//! The host side: where things live (workspace, cache), which host tools exist, and the one
//! helper every external command goes through (it echoes the command so a user can rerun it).

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// An error that is the host's or the harness's fault, never the kernel's. Cells that hit one
/// get an `Infra` verdict; the CLI exits with 2 (or 125 under `--bisect`).
#[derive(Debug)]
pub struct InfraError(pub String);

impl std::fmt::Display for InfraError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InfraError {}

/// The workspace root (where `Cargo.toml`, `images/` and `suites/` are).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where downloads and built artifacts are kept, keyed by content: `$KSTORM_CACHE`, else
/// `$XDG_CACHE_HOME/kstorm`, else `~/.cache/kstorm`. Delete it at will (`cargo xtask clean`).
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KSTORM_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("kstorm");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache").join("kstorm")
}

/// Host tools kstorm runs, with the Debian package that provides each.
pub const TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-img", "qemu-utils"),
    ("apt-get", "apt"),
    ("apt-cache", "apt"),
    ("dpkg-deb", "dpkg"),
    ("grub-mkrescue", "grub-pc-bin xorriso mtools"),
    ("gcc", "gcc-multilib"),
    // Disk images (images::disk): the ext4 root and the root password's crypt hash.
    ("mke2fs", "e2fsprogs"),
    ("openssl", "openssl"),
    // The report test renders report.html headless.
    ("chromium", "chromium"),
];

/// Looks a program up on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Fails with an infra error that prints the exact install line when `tools` are missing.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_program(t).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing
        .iter()
        .map(|m| {
            TOOLS
                .iter()
                .find(|(t, _)| t == m)
                .map(|(_, p)| *p)
                .unwrap_or(m)
        })
        .flat_map(|p| p.split(' '))
        .collect();
    packages.sort();
    packages.dedup();
    Err(InfraError(format!(
        "missing host tool(s): {}. Install them as root with:\n    apt-get update && apt-get install -y {}",
        missing.join(", "),
        packages.join(" ")
    ))
    .into())
}

/// Like [`require_tools`], but as root installs the missing tools' Debian packages first (one
/// `apt-get install` per package, echoed; `apt-get update` once if the lists are stale). Set
/// `KSTORM_NO_INSTALL=1` to only report.
pub fn ensure_tools(tools: &[&str]) -> Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_program(t).is_none())
        .collect();
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if missing.is_empty()
        || !root
        || std::env::var_os("KSTORM_NO_INSTALL").is_some()
        || find_program("apt-get").is_none()
    {
        return require_tools(tools);
    }
    let mut packages: Vec<&str> = missing
        .iter()
        .filter_map(|m| TOOLS.iter().find(|(t, _)| t == m).map(|(_, p)| *p))
        .flat_map(|p| p.split(' '))
        .collect();
    packages.sort();
    packages.dedup();
    let mut updated = false;
    for package in packages {
        let install = args(["install", "-y", "-q", package]);
        if run_capture("apt-get", &install, None).is_err() && !updated {
            run_capture("apt-get", &args(["update", "-q"]), None)?;
            updated = true;
            run_capture("apt-get", &install, None)?;
        }
    }
    require_tools(tools)
}

/// Runs a command (argument vector, never a shell string), echoing it to stderr first, and
/// returns its standard output. Fails with its stderr when it exits non-zero.
pub fn run_capture(program: &str, args: &[OsString], cwd: Option<&Path>) -> Result<String> {
    require_tools(&[program])?;
    echo(program, args);
    let mut expr = duct::cmd(program, args)
        .stdout_capture()
        .stderr_capture()
        .unchecked();
    if let Some(dir) = cwd {
        expr = expr.dir(dir);
    }
    let out = expr.run().with_context(|| format!("starting {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Prints a command line the way a user would type it.
pub fn echo(program: &str, args: &[OsString]) {
    if std::env::var_os("KSTORM_QUIET").is_some() {
        return;
    }
    let mut line = String::from("$ ");
    line.push_str(program);
    for a in args {
        line.push(' ');
        line.push_str(&shell_quote(&a.to_string_lossy()));
    }
    eprintln!("{line}");
}

/// Quotes a word for display only (commands are never run through a shell).
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Converts `&str`s to an argument vector.
pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(items: I) -> Vec<OsString> {
    items.into_iter().map(Into::into).collect()
}

/// The host's TSC frequency in kHz, measured once (about 50 ms) against the monotonic clock.
pub fn tsc_khz() -> u64 {
    static KHZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *KHZ.get_or_init(|| {
        // SAFETY: rdtsc has no preconditions on x86-64.
        let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
        let (t0, c0) = (std::time::Instant::now(), tsc());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (c1, t1) = (tsc(), std::time::Instant::now());
        let khz = (c1 - c0) as f64 / t1.duration_since(t0).as_secs_f64() / 1000.0;
        // Round to 1 MHz: the measurement's noise is well below that.
        ((khz / 1000.0).round() * 1000.0) as u64
    })
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// SHA-256 of bytes, hex.
pub fn sha256_bytes(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

/// An exclusive lock on a named lock file in the cache, held until dropped (flock: the kernel
/// releases it if the process dies).
pub struct CacheLock {
    _file: std::fs::File,
}

impl CacheLock {
    pub fn acquire(cache: &Path, name: &str) -> Result<CacheLock> {
        let dir = cache.join("locks");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join(format!("{name}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(CacheLock { _file: file })
    }
}

/// Writes a file atomically: a temporary file in the same directory, renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().context("path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_apt_line() {
        let err = require_tools(&["qemu-system-x86_64-definitely-missing"]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("apt-get install -y qemu-system-x86_64-definitely-missing"),
            "{msg}"
        );
        assert!(err.downcast_ref::<InfraError>().is_some());
    }

    #[test]
    fn tsc_frequency_is_plausible() {
        let khz = tsc_khz();
        assert!((500_000..10_000_000).contains(&khz), "{khz} kHz");
    }

    #[test]
    fn cache_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let held = CacheLock::acquire(dir.path(), "x").unwrap();
        let path = dir.path().join("locks/x.lock");
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(matches!(
            other.try_lock(),
            Err(std::fs::TryLockError::WouldBlock)
        ));
        drop(held);
        other.try_lock().unwrap();
    }

    #[test]
    fn quoting_for_display() {
        assert_eq!(shell_quote("console=ttyS0"), "console=ttyS0");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn atomic_write_replaces_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x/result.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(p.parent().unwrap()).unwrap().count(), 1);
    }
}
