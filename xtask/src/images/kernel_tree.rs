//! `kernel-tree: {path, base, config}`: a Linux source tree built out of tree into the cache.
//! The base configuration (`tinyconfig`, `defconfig` or a file) gets the fragments appended,
//! `make olddefconfig` settles it, and every option a fragment asked for is checked to have
//! survived (Kconfig drops what it cannot satisfy without saying so). The build is keyed by the
//! commit, the hash of the merged configuration and the hash of the uncommitted diff.

use super::linux::LinuxKernel;
use super::provenance::SourceKind;
use crate::host::{InfraCause, InfraError};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Builds `spec` (once per key) and returns the kernel; a failure is `Infra` (image build)
/// carrying the last lines of the compiler's output.
pub fn build(spec: &TreeSpec, cache: &Path) -> Result<LinuxKernel> {
    let (commit, describe) =
        super::local::git_identity(&spec.path).unwrap_or_else(|| ("none".into(), "none".into()));
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
    let diff = git_output(&spec.path, &["diff", "HEAD"]).unwrap_or_default();
    let sha = crate::host::sha256_hex;
    let config_hash = sha(format!("{base_text}\n{fragments}").as_bytes());
    let key = sha(format!("{commit}\n{config_hash}\n{}", sha(diff.as_bytes())).as_bytes());
    let out = cache.join("kernel-tree").join(&key[..16]);
    let _lock = crate::host::CacheLock::acquire(cache, &format!("kernel-tree-{}", &key[..16]))?;
    let vmlinux = out.join("vmlinux");
    let bzimage = out.join("arch/x86/boot/bzImage");
    if !(vmlinux.exists() && bzimage.exists()) {
        configure(spec, &out, &fragments)?;
        make(spec, &out, &["vmlinux", "bzImage"])?;
    }
    let mut k = super::local::linux(&out, Some(vmlinux), Some(bzimage))?;
    if let Some(p) = k.local.as_mut() {
        p.source = SourceKind::KernelTree;
        p.origin = spec.path.display().to_string();
        p.version = describe.clone();
        p.config_hash = Some(config_hash);
        p.extra.insert("git.commit".into(), commit);
        p.extra.insert("git.describe".into(), describe);
    }
    Ok(k)
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

/// `make -C tree O=out -jN targets`, with ccache when it is installed.
fn make(spec: &TreeSpec, out: &Path, targets: &[&str]) -> Result<()> {
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(&spec.path)
        .arg(format!("O={}", out.display()))
        .arg(format!("-j{jobs}"));
    if crate::host::find_program("ccache").is_some() {
        cmd.arg("CC=ccache gcc");
    }
    let output = cmd.args(targets).output().context("starting make")?;
    if output.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    let tail: Vec<&str> = text.lines().rev().take(20).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(InfraError::new(
        InfraCause::ImageBuild,
        format!(
            "make {} failed ({}):\n{}",
            targets.join(" "),
            output.status,
            tail.join("\n")
        ),
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
