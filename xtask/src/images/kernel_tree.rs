//! `kernel-tree: {path, base, config}`: a Linux source tree built out of tree by kstorm.
//!
//! Every commit of one tree and configuration is built in one build folder (`make O=`): `git
//! checkout` rewrites only the files that differ between two commits, they are then newer than
//! their objects, and make recompiles exactly what depends on them. Finished kernels (vmlinux,
//! bzImage, the `.config` and the build's record) are copied out of the folder into the cache,
//! keyed by the commit, the configuration and the uncommitted diff, so a commit seen before is
//! not built again.
//!
//! ```text
//! <cache>/kernel-tree/build-<tree, config>/    make's O= folder, with kstorm-folder.json
//! <cache>/kernel-tree/kernel-<commit, config, diff>/   vmlinux bzImage config kstorm-build.json
//! ```

mod kconfig;

pub use kconfig::{dropped_options, parse_config, Dropped, Options};

use super::linux::LinuxKernel;
use super::provenance::SourceKind;
use crate::error::{InfraCause, InfraError};
use crate::host::{CacheKey, CacheLock};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What to build.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    pub path: PathBuf,
    /// `tinyconfig`, `defconfig`, or the path of a `.config`.
    pub base: String,
    pub fragments: Vec<PathBuf>,
}

/// What one build did, kept as `kstorm-build.json` next to the kernel it made (written last,
/// so its presence means the kernel is complete). bisect-run logs it; benches read the times.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRecord {
    /// The finished kernel's folder: `vmlinux`, `bzImage`, `config` and this record.
    pub dir: PathBuf,
    /// The build folder (make's `O=`) shared by every commit of this tree and configuration.
    #[serde(default)]
    pub build_dir: PathBuf,
    pub tree: PathBuf,
    pub commit: String,
    pub config_hash: String,
    /// What the build folder held when this build began; `None` for an empty folder (a cold
    /// build).
    #[serde(default)]
    pub built_over: Option<FolderState>,
    /// Seconds spent building: configuration and make.
    pub build_s: f64,
    /// When the build began, in seconds since the epoch: an object newer than this was
    /// compiled by this build.
    #[serde(default)]
    pub started_unix: f64,
    pub finished_unix: f64,
    /// True when this call found the kernel already built.
    #[serde(skip)]
    pub cached: bool,
}

impl BuildRecord {
    /// How this kernel came to be, for a progress line.
    pub fn how(&self) -> String {
        match (&self.built_over, self.cached) {
            (_, true) => "built before, taken from the cache".into(),
            (Some(before), false) => format!(
                "incrementally, in the build folder that last built {}{}",
                short(&before.commit),
                match before.outcome {
                    Outcome::Finished => "",
                    Outcome::Failed => " (that build failed)",
                    Outcome::Building => " (that build was cut off)",
                }
            ),
            (None, false) => "from scratch".into(),
        }
    }
}

/// `kstorm-folder.json` in a build folder: the commit it was last configured for and how that
/// build ended. Written before the configuration and again after make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FolderState {
    pub commit: String,
    /// SHA-256 of the uncommitted diff that build had.
    pub diff_sha256: String,
    pub outcome: Outcome,
    pub started_unix: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Still building, or cut off (the process died): its newest objects may be half written.
    Building,
    /// make failed: make deleted the target it was making, the rest is whole.
    Failed,
    Finished,
}

const RECORD: &str = "kstorm-build.json";
const FOLDER_STATE: &str = "kstorm-folder.json";

/// Builds `spec` (once per commit, configuration and diff) and returns the kernel; a failure is
/// `Infra` (image build) carrying the last lines of the compiler's output.
pub fn build(spec: &TreeSpec, cache: &Path) -> Result<LinuxKernel> {
    build_recorded(spec, cache).map(|(k, _)| k)
}

/// [`build`], and what the build did.
pub fn build_recorded(spec: &TreeSpec, cache: &Path) -> Result<(LinuxKernel, BuildRecord)> {
    let id = Identity::resolve(spec)?;
    let root = cache.join("kernel-tree");
    let kernel_dir = root.join(format!("kernel-{}", id.kernel_key()));
    let record = match read_record(&kernel_dir) {
        Some(r) => BuildRecord { cached: true, ..r },
        None => {
            let folder = id.folder_key();
            // One make at a time in a build folder. A build that waited here may find its
            // kernel made meanwhile.
            let _lock = CacheLock::acquire(cache, &format!("kernel-tree-build-{folder}"))?;
            match read_record(&kernel_dir) {
                Some(r) => BuildRecord { cached: true, ..r },
                None => {
                    let build_dir = root.join(format!("build-{folder}"));
                    build_in_folder(spec, &id, &build_dir, &kernel_dir)?
                }
            }
        }
    };
    let vmlinux = record.dir.join("vmlinux");
    let bzimage = record.dir.join("bzImage");
    let mut k = super::local::linux(&record.dir, Some(vmlinux), Some(bzimage))?;
    if let Some(p) = k.local.as_mut() {
        p.source = SourceKind::KernelTree;
        p.origin = spec.path.display().to_string();
        p.version = id.describe.clone();
        p.config_hash = Some(id.config_hash.clone());
        p.extra.insert("git.commit".into(), id.commit.clone());
        p.extra.insert("git.describe".into(), id.describe.clone());
    }
    Ok((k, record))
}

/// What a build is of: the tree, its commit and uncommitted diff, and the configuration.
struct Identity {
    tree: PathBuf,
    commit: String,
    describe: String,
    diff_sha256: String,
    /// The base and the fragments' text.
    config_hash: String,
    fragments: String,
}

impl Identity {
    fn resolve(spec: &TreeSpec) -> Result<Identity> {
        let tree = std::path::absolute(&spec.path)?;
        let (commit, describe) =
            super::local::git_identity(&tree).unwrap_or_else(|| ("none".into(), "none".into()));
        let mut fragments = String::new();
        for f in &spec.fragments {
            fragments +=
                &std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            fragments.push('\n');
        }
        let base_text = match spec.base.as_str() {
            "tinyconfig" | "defconfig" => spec.base.clone(),
            file => std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?,
        };
        let diff = git_output(&tree, &["diff", "HEAD"]).unwrap_or_default();
        let sha = crate::host::sha256_hex;
        Ok(Identity {
            config_hash: sha(format!("{base_text}\n{fragments}").as_bytes()),
            diff_sha256: sha(diff.as_bytes()),
            tree,
            commit,
            describe,
            fragments,
        })
    }

    /// Names the finished kernel.
    fn kernel_key(&self) -> String {
        let key = CacheKey::new()
            .part(&self.commit)
            .part(&self.config_hash)
            .part(&self.diff_sha256);
        key.hex()[..16].to_string()
    }

    /// Names the build folder: the same tree (its dependency files name the sources by
    /// absolute path) and the same configuration.
    fn folder_key(&self) -> String {
        let key = CacheKey::new()
            .part(self.tree.as_os_str().as_encoded_bytes())
            .part(&self.config_hash);
        key.hex()[..16].to_string()
    }
}

/// Configures and makes the checked-out commit in `build_dir`, then copies the kernel out into
/// `kernel_dir`. The folder's state says, for the next build, what it holds.
fn build_in_folder(
    spec: &TreeSpec,
    id: &Identity,
    build_dir: &Path,
    kernel_dir: &Path,
) -> Result<BuildRecord> {
    std::fs::create_dir_all(build_dir)?;
    let before = read_folder_state(build_dir);
    if let Some(cut) = before.as_ref().filter(|b| b.outcome == Outcome::Building) {
        discard_half_written(build_dir, cut)?;
    }
    let started = Instant::now();
    let mut state = FolderState {
        commit: id.commit.clone(),
        diff_sha256: id.diff_sha256.clone(),
        outcome: Outcome::Building,
        started_unix: unix_now(),
    };
    write_folder_state(build_dir, &state)?;
    let make = |targets: &[&str]| make(&spec.path, build_dir, targets);
    let built = kconfig::configure(&make, &spec.base, build_dir, &id.fragments)
        .and_then(|()| make(&["vmlinux", "bzImage"]));
    state.outcome = match built {
        Ok(()) => Outcome::Finished,
        Err(_) => Outcome::Failed,
    };
    let record = BuildRecord {
        dir: kernel_dir.to_path_buf(),
        build_dir: build_dir.to_path_buf(),
        tree: id.tree.clone(),
        commit: id.commit.clone(),
        config_hash: id.config_hash.clone(),
        built_over: before,
        build_s: started.elapsed().as_secs_f64(),
        started_unix: state.started_unix,
        finished_unix: unix_now(),
        cached: false,
    };
    let stored = built.and_then(|()| store_kernel(build_dir, &record));
    write_folder_state(build_dir, &state)?;
    stored.map(|()| record)
}

/// A build that was cut off (SIGKILL, a power cut) may have left objects half written, newer
/// than their sources, which make would take as done: they are deleted, and built again.
/// (make deletes the target it is making when it is interrupted or fails itself.)
fn discard_half_written(build_dir: &Path, cut: &FolderState) -> Result<()> {
    crate::host::Cmd::new("find")
        .arg(build_dir)
        .args(["-type", "f", "(", "-name", "*.o", "-o", "-name", "*.a", ")"])
        .args(["-newermt", &format!("@{}", cut.started_unix), "-delete"])
        .timeout(Duration::from_secs(10 * 60))
        .run()
}

/// Copies the kernel, its configuration and `record` into `record.dir` (a temporary folder
/// renamed into place: a kernel folder is complete or absent).
fn store_kernel(build_dir: &Path, record: &BuildRecord) -> Result<()> {
    let parent = record.dir.parent().context("kernel folder has no parent")?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-kernel-")
        .tempdir_in(parent)?;
    for (from, to) in [
        ("vmlinux", "vmlinux"),
        ("arch/x86/boot/bzImage", "bzImage"),
        (".config", "config"),
    ] {
        std::fs::copy(build_dir.join(from), tmp.path().join(to))
            .with_context(|| format!("copying {} out of {}", from, build_dir.display()))?;
    }
    let json = serde_json::to_string_pretty(record)?;
    std::fs::write(tmp.path().join(RECORD), json)?;
    let tmp = tmp.keep();
    std::fs::rename(&tmp, &record.dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), record.dir.display()))
}

pub fn read_record(dir: &Path) -> Option<BuildRecord> {
    let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

fn read_folder_state(build_dir: &Path) -> Option<FolderState> {
    let text = std::fs::read_to_string(build_dir.join(FOLDER_STATE)).ok()?;
    serde_json::from_str(&text).ok()
}

fn write_folder_state(build_dir: &Path, state: &FolderState) -> Result<()> {
    let json = serde_json::to_string_pretty(state)?;
    crate::host::write_atomic(&build_dir.join(FOLDER_STATE), json.as_bytes())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn short(commit: &str) -> &str {
    &commit[..12.min(commit.len())]
}

/// `make -C tree O=out -jN targets`, with ccache when it is installed. Bounded: a kernel
/// build that has not finished in three hours is stuck.
fn make(tree: &Path, out: &Path, targets: &[&str]) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd = crate::host::Cmd::new("make")
        .arg("-C")
        .arg(tree)
        .arg(format!("O={}", out.display()))
        .arg(format!("-j{jobs}"))
        .timeout(Duration::from_secs(3 * 3600));
    if crate::host::find_program("ccache").is_some() {
        cmd = cmd.arg("CC=ccache gcc");
    }
    let Err(e) = cmd.args(targets).read() else {
        return Ok(());
    };
    let text = format!("{e:#}");
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(InfraError::new(
        InfraCause::ImageBuild,
        format!("make {} failed:\n{}", targets.join(" "), tail.join("\n")),
    )
    .into())
}

fn git_output(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests;
