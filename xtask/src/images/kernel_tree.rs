//! `kernel-tree: {path, base, config}`: a Linux source tree built out of tree into the cache.
//! The base configuration (`tinyconfig`, `defconfig` or a file) gets the fragments appended,
//! `make olddefconfig` settles it, and every option a fragment asked for is checked to have
//! survived (Kconfig drops what it cannot satisfy without saying so). The build is keyed by the
//! commit, the hash of the merged configuration and the hash of the uncommitted diff.

use super::linux::LinuxKernel;
use super::provenance::SourceKind;
use crate::error::{InfraCause, InfraError};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// `CONFIG_X` -> its value (`y`, `m`, a number, a quoted string), `n` for "is not set".
pub type Options = BTreeMap<String, String>;

/// Reads `.config` or fragment text: `CONFIG_X=v` and `# CONFIG_X is not set` lines.
pub fn parse_config(text: &str) -> Options {
    let mut out = Options::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            out.insert(name.to_string(), "n".into());
        } else if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") && !line.starts_with('#') {
                out.insert(name.to_string(), value.to_string());
            }
        }
    }
    out
}

/// An option a fragment asked for that the final configuration does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub name: String,
    pub wanted: String,
    /// `None` when the option is absent altogether (its dependencies are off).
    pub got: Option<String>,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.got {
            Some(got) => write!(f, "{}={} became {got}", self.name, self.wanted),
            None => write!(
                f,
                "{}={} is gone (unmet dependencies)",
                self.name, self.wanted
            ),
        }
    }
}

/// The options of `wanted` that `final_config` does not hold as asked. "Not set" is satisfied
/// by an absent option too.
pub fn dropped_options(wanted: &Options, final_config: &Options) -> Vec<Dropped> {
    wanted
        .iter()
        .filter_map(|(name, want)| {
            let got = final_config.get(name);
            let ok = match got {
                Some(g) => g == want,
                None => want == "n",
            };
            (!ok).then(|| Dropped {
                name: name.clone(),
                wanted: want.clone(),
                got: got.cloned(),
            })
        })
        .collect()
}

/// What to build.
#[derive(Debug, Clone)]
pub struct TreeSpec {
    pub path: PathBuf,
    /// `tinyconfig`, `defconfig`, or the path of a `.config`.
    pub base: String,
    pub fragments: Vec<PathBuf>,
}

/// What one build did, kept as `kstorm-build.json` in its folder (written last, so its presence
/// means the build finished). Later builds of the same tree and configuration start from the
/// newest of these; benches read the times.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BuildRecord {
    pub dir: PathBuf,
    pub tree: PathBuf,
    pub commit: String,
    pub config_hash: String,
    /// The finished build this one was copied from before `make` rebuilt what changed.
    pub seeded_from: Option<Seed>,
    /// Seconds spent building (configuration and make; the seed's copy not included).
    pub build_s: f64,
    /// When it finished, in seconds since the epoch (the newest seed wins).
    pub finished_unix: f64,
    /// True when this call found the build already done.
    #[serde(skip)]
    pub cached: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Seed {
    pub dir: PathBuf,
    pub commit: String,
    pub copy_s: f64,
    /// When the copy ended, in seconds since the epoch: an object newer than this was rebuilt.
    pub copied_unix: f64,
}

const RECORD: &str = "kstorm-build.json";

/// Builds `spec` (once per key) and returns the kernel; a failure is `Infra` (image build)
/// carrying the last lines of the compiler's output.
pub fn build(spec: &TreeSpec, cache: &Path) -> Result<LinuxKernel> {
    build_recorded(spec, cache).map(|(k, _)| k)
}

/// [`build`], and what the build did.
pub fn build_recorded(spec: &TreeSpec, cache: &Path) -> Result<(LinuxKernel, BuildRecord)> {
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
    let config_hash = sha(format!("{base_text}\n{fragments}").as_bytes());
    let key = sha(format!("{commit}\n{config_hash}\n{}", sha(diff.as_bytes())).as_bytes());
    let builds = cache.join("kernel-tree");
    let out = builds.join(&key[..16]);
    let _lock = crate::host::CacheLock::acquire(cache, &format!("kernel-tree-{}", &key[..16]))?;
    let record = match read_record(&out) {
        Some(r) => BuildRecord { cached: true, ..r },
        None => {
            let seed = (!out.join(".config").exists())
                .then(|| newest_seed(&builds, &tree, &config_hash))
                .flatten();
            let seeded_from = seed.map(|s| copy_seed(&s, &out)).transpose()?;
            let started = Instant::now();
            if seeded_from.is_some() {
                settle_config(spec, &out, &fragments)?;
            } else {
                configure(spec, &out, &fragments)?;
            }
            make(spec, &out, &["vmlinux", "bzImage"])?;
            let record = BuildRecord {
                dir: out.clone(),
                tree: tree.clone(),
                commit: commit.clone(),
                config_hash: config_hash.clone(),
                seeded_from,
                build_s: started.elapsed().as_secs_f64(),
                finished_unix: unix_now(),
                cached: false,
            };
            crate::host::write_atomic(
                &out.join(RECORD),
                serde_json::to_string_pretty(&record)?.as_bytes(),
            )?;
            record
        }
    };
    let vmlinux = out.join("vmlinux");
    let bzimage = out.join("arch/x86/boot/bzImage");
    let mut k = super::local::linux(&out, Some(vmlinux), Some(bzimage))?;
    if let Some(p) = k.local.as_mut() {
        p.source = SourceKind::KernelTree;
        p.origin = spec.path.display().to_string();
        p.version = describe.clone();
        p.config_hash = Some(config_hash);
        p.extra.insert("git.commit".into(), commit);
        p.extra.insert("git.describe".into(), describe);
    }
    Ok((k, record))
}

pub fn read_record(dir: &Path) -> Option<BuildRecord> {
    let text = std::fs::read_to_string(dir.join(RECORD)).ok()?;
    serde_json::from_str(&text).ok()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The newest finished build of the same tree (the same path: the build's dependency files
/// name the sources by absolute path) and the same configuration.
fn newest_seed(builds: &Path, tree: &Path, config_hash: &str) -> Option<BuildRecord> {
    std::fs::read_dir(builds)
        .ok()?
        .filter_map(|e| read_record(&e.ok()?.path()))
        .filter(|r| r.tree == tree && r.config_hash == config_hash)
        .max_by(|a, b| a.finished_unix.total_cmp(&b.finished_unix))
}

/// Copies a finished build into `out`, keeping modification times. `git checkout` rewrites only
/// the files that differ, so they are newer than the copied objects and make rebuilds exactly
/// what changed (the bench checks that it did).
fn copy_seed(seed: &BuildRecord, out: &Path) -> Result<Seed> {
    let started = Instant::now();
    std::fs::create_dir_all(out)?;
    crate::host::Cmd::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(seed.dir.join("."))
        .arg(out)
        .timeout(Duration::from_secs(20 * 60))
        .run()?;
    std::fs::remove_file(out.join(RECORD))?;
    Ok(Seed {
        dir: seed.dir.clone(),
        commit: seed.commit.clone(),
        copy_s: started.elapsed().as_secs_f64(),
        copied_unix: unix_now(),
    })
}

/// The base, the fragments appended (later assignments win in Kconfig), `olddefconfig`, and
/// the check that every fragment option survived.
fn configure(spec: &TreeSpec, out: &Path, fragments: &str) -> Result<()> {
    std::fs::create_dir_all(out)?;
    match spec.base.as_str() {
        "tinyconfig" | "defconfig" => make(spec, out, &[spec.base.as_str()])?,
        file => {
            std::fs::copy(file, out.join(".config")).with_context(|| format!("copying {file}"))?;
        }
    }
    let config = out.join(".config");
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(fragments);
    std::fs::write(&config, text)?;
    settle_config(spec, out, fragments)
}

/// `olddefconfig` over the `.config` in `out`, then the check that every fragment option
/// survived. A seeded build starts here: its `.config` is the settled one of the same base and
/// fragments, and `olddefconfig` adapts it to this commit's Kconfig files.
fn settle_config(spec: &TreeSpec, out: &Path, fragments: &str) -> Result<()> {
    let config = out.join(".config");
    make(spec, out, &["olddefconfig"])?;
    let dropped = dropped_options(
        &parse_config(fragments),
        &parse_config(&std::fs::read_to_string(&config)?),
    );
    if !dropped.is_empty() {
        let names: Vec<String> = dropped.iter().map(ToString::to_string).collect();
        return Err(InfraError::new(
            InfraCause::ImageBuild,
            format!(
                "olddefconfig dropped fragment options: {}",
                names.join("; ")
            ),
        )
        .into());
    }
    Ok(())
}

/// `make -C tree O=out -jN targets`, with ccache when it is installed. Bounded: a kernel
/// build that has not finished in three hours is stuck.
fn make(spec: &TreeSpec, out: &Path, targets: &[&str]) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd = crate::host::Cmd::new("make")
        .arg("-C")
        .arg(&spec.path)
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
mod tests {
    use super::*;

    #[test]
    fn an_option_olddefconfig_dropped_is_named() {
        let fragment = "CONFIG_PVH=y\nCONFIG_MEMCG=y\n# CONFIG_SWAP is not set\nCONFIG_NR_CPUS=4\n";
        // What olddefconfig wrote: PVH lost its dependency, MEMCG kept, NR_CPUS changed.
        let generated = "#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_64BIT=y\n\
                         # CONFIG_PVH is not set\nCONFIG_MEMCG=y\nCONFIG_NR_CPUS=8\n";
        let dropped = dropped_options(&parse_config(fragment), &parse_config(generated));
        let text: Vec<String> = dropped.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["CONFIG_NR_CPUS=4 became 8", "CONFIG_PVH=y became n"]);
        let gone = dropped_options(
            &parse_config("CONFIG_PSI=y\n"),
            &parse_config("CONFIG_64BIT=y\n"),
        );
        assert_eq!(
            gone[0].to_string(),
            "CONFIG_PSI=y is gone (unmet dependencies)"
        );
        assert!(dropped_options(&parse_config(fragment), &parse_config(fragment)).is_empty());
    }

    #[test]
    fn the_seed_is_the_newest_finished_build_of_the_same_tree_and_config() {
        let builds = tempfile::tempdir().unwrap();
        let record = |name: &str, tree: &str, config: &str, finished: f64| {
            let dir = builds.path().join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let r = BuildRecord {
                dir: dir.clone(),
                tree: tree.into(),
                commit: name.into(),
                config_hash: config.into(),
                seeded_from: None,
                build_s: 1.0,
                finished_unix: finished,
                cached: false,
            };
            std::fs::write(dir.join(RECORD), serde_json::to_string(&r).unwrap()).unwrap();
        };
        record("old", "/src/linux", "c1", 100.0);
        record("new", "/src/linux", "c1", 200.0);
        record("other-config", "/src/linux", "c2", 300.0);
        record("other-tree", "/src/elsewhere", "c1", 400.0);
        // A build that never finished has no record and is never a seed.
        std::fs::create_dir_all(builds.path().join("unfinished")).unwrap();
        let seed = newest_seed(builds.path(), Path::new("/src/linux"), "c1").unwrap();
        assert_eq!(seed.commit, "new");
        assert!(newest_seed(builds.path(), Path::new("/src/linux"), "c3").is_none());
    }

    #[test]
    fn the_shipped_fragment_parses() {
        let path = crate::host::workspace_root().join("images/kconfig/kstorm.config");
        let opts = parse_config(&std::fs::read_to_string(path).unwrap());
        for name in [
            "CONFIG_PVH",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_MEMCG",
            "CONFIG_TMPFS",
        ] {
            assert_eq!(opts.get(name).map(String::as_str), Some("y"), "{name}");
        }
    }
}
