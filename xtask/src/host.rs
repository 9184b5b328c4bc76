//! The host side: where things live (workspace, cache), which host tools exist and which Debian
//! packages provide them ([`packages`]), and the one helper every short-lived command goes
//! through ([`cmd`]: echoed so a user can rerun it, bounded by a timeout).

pub mod cmd;
pub mod fast_tier;
pub mod packages;

pub use cmd::{args, echo, shell_quote, Cmd};

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

pub use crate::error::{InfraCause, InfraError};

/// The workspace root (where `Cargo.toml`, `images/` and `suites/` are): that of the checkout
/// cargo runs this binary from (`cargo xtask` and `cargo test` set `CARGO_MANIFEST_DIR`), else
/// the one it was built in. A build that cargo finds fresh in another checkout (a CI job's copy
/// of the sources with their times, sharing one target folder) then reads that checkout's files.
pub fn workspace_root() -> PathBuf {
    let at_run = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .filter(|dir| dir.join("Cargo.toml").is_file() && dir.join("../suites").is_dir());
    at_run
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
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

/// Looks a program up on `PATH` (a path with a `/` is taken as it is).
pub fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return is_executable(Path::new(name)).then(|| PathBuf::from(name));
    }
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

/// Fails with an infra error that prints the exact install line when `tools` are missing (the
/// packages come from `xtask/host-packages.yaml`). Installing is [`packages`]' job, done once
/// before the first cell; this is the check at the point of use.
pub fn require_tools(tools: &[&str]) -> Result<()> {
    for t in tools {
        fast_tier::refuse_tool(t)?;
    }
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| find_program(t).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let table = packages::PackageTable::builtin();
    let mut names: Vec<&str> = missing
        .iter()
        .map(|m| table.package_of(m).unwrap_or(m))
        .collect();
    names.sort();
    names.dedup();
    Err(InfraError::new(
        InfraCause::ToolMissing,
        format!(
            "missing host tool(s): {}. Install them as root with:\n    apt-get install -y {}",
            missing.join(", "),
            names.join(" ")
        ),
    )
    .into())
}

/// True when kstorm runs as root (and so may install Debian packages).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
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

/// SHA-256 of bytes, hex (a content hash for provenance).
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// The key a cached artifact is named by: SHA-256 over its inputs, each prefixed by its length
/// (so the inputs `ab`, `c` and `a`, `bc` give different keys). Every cache in kstorm names its
/// files with one.
#[derive(Clone, Default)]
pub struct CacheKey(sha2::Sha256);

impl CacheKey {
    pub fn new() -> CacheKey {
        CacheKey::default()
    }

    /// Adds one input.
    pub fn part(mut self, bytes: impl AsRef<[u8]>) -> CacheKey {
        use sha2::Digest;
        let bytes = bytes.as_ref();
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// The key, hex.
    pub fn hex(self) -> String {
        use sha2::Digest;
        hex::encode(self.0.finalize())
    }
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
    fn cache_key_separates_its_parts() {
        let key = |parts: &[&str]| parts.iter().fold(CacheKey::new(), |k, p| k.part(p)).hex();
        assert_ne!(key(&["ab", "c"]), key(&["a", "bc"]));
        assert_eq!(key(&["ab", "c"]), key(&["ab", "c"]));
        assert_eq!(key(&[]).len(), 64);
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
