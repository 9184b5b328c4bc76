//! The `test` verb. The full tier installs what the tests use (as root, from Debian) and runs
//! every test of the workspace; `--fast` runs the tests of `xtask/test-tiers.yaml` that need no
//! root, no QEMU and no network, with the harness's fast-tier guard on.

use crate::host::{self, fast_tier};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::ffi::OsString;

/// `xtask/test-tiers.yaml`.
const TIERS_FILE: &str = "xtask/test-tiers.yaml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiers {
    /// Every crate's own tests (`--lib --bins`).
    pub unit: bool,
    /// Integration test files by package, and which of their tests.
    pub targets: BTreeMap<String, BTreeMap<String, Selection>>,
}

/// Which tests of one file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Selection {
    /// `all`
    All(AllWord),
    Only {
        only: Vec<String>,
    },
    Skip {
        skip: Vec<String>,
    },
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AllWord {
    All,
}

impl Tiers {
    pub fn load() -> Result<Tiers> {
        let path = host::workspace_root().join(TIERS_FILE);
        let text = crate::yaml::read(&path)?;
        Ok(crate::yaml::parse_yaml::<Tiers>(&path, &text)?.0)
    }

    /// The `cargo test` argument vectors of the fast tier, in order.
    pub fn fast_runs(&self) -> Vec<Vec<String>> {
        let mut runs = Vec::new();
        if self.unit {
            runs.push(words(&["test", "--workspace", "--lib", "--bins"]));
        }
        for files in self.targets.values() {
            for (file, selection) in files {
                let mut argv = words(&["test", "--workspace", "--test", file]);
                match selection {
                    Selection::All(_) => {}
                    Selection::Only { only } => {
                        argv.extend(words(&["--", "--exact"]));
                        argv.extend(only.iter().cloned());
                    }
                    Selection::Skip { skip } => {
                        argv.push("--".into());
                        for prefix in skip {
                            argv.extend(["--skip".to_string(), prefix.clone()]);
                        }
                    }
                }
                runs.push(argv);
            }
        }
        runs
    }
}

fn words(w: &[&str]) -> Vec<String> {
    w.iter().map(|s| s.to_string()).collect()
}

/// `cargo xtask test [--fast] [ARGS]`: its exit code.
pub fn test(fast: bool, cargo_args: &[String]) -> i32 {
    let result = if fast {
        run_fast(cargo_args)
    } else {
        run_full(cargo_args)
    };
    result.unwrap_or_else(|e| {
        eprintln!("kstorm: error: {e:#}");
        2
    })
}

/// The full tier: the host's packages first (as another user: the line to run, before any
/// test is compiled), then every test.
fn run_full(cargo_args: &[String]) -> Result<i32> {
    if let Err(e) = host::packages::ensure_for_tests() {
        eprintln!(
            "kstorm: the full test tier boots QEMU and needs the Debian packages above; without \
             root, `cargo xtask test --fast` runs the tests that need no root, QEMU or network"
        );
        return Err(e);
    }
    let mut argv = words(&["test", "--workspace"]);
    argv.extend(cargo_args.iter().cloned());
    cargo(&argv, false)
}

/// The fast tier: each run of [`Tiers::fast_runs`] with the guard on; the first failure's code.
fn run_fast(cargo_args: &[String]) -> Result<i32> {
    let tiers = Tiers::load()?;
    let started = std::time::Instant::now();
    let mut worst = 0;
    for mut argv in tiers.fast_runs() {
        // Extra arguments go before the test binary's own (`--`).
        let at = argv.iter().position(|w| w == "--").unwrap_or(argv.len());
        argv.splice(at..at, cargo_args.iter().cloned());
        let code = cargo(&argv, true)?;
        if code != 0 && worst == 0 {
            worst = code;
        }
    }
    eprintln!(
        "kstorm: fast tier {} in {:.0}s",
        if worst == 0 { "passed" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Ok(worst)
}

fn cargo(argv: &[String], fast: bool) -> Result<i32> {
    let program = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let argv: Vec<OsString> = argv.iter().map(Into::into).collect();
    host::echo(&program.to_string_lossy(), &argv);
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&argv).current_dir(host::workspace_root());
    // `cargo xtask` runs this binary with the variables cargo sets for a package
    // (CARGO_PKG_NAME=xtask, ...). Build scripts that watch them (ring's) would see them change
    // and rebuild half the workspace on every call: the inner cargo gets the user's own.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let users = ["CARGO_HOME", "CARGO_TARGET_DIR", "CARGO_BUILD_JOBS"];
        if key.starts_with("CARGO_") && !users.contains(&key.as_ref()) {
            cmd.env_remove(key.as_ref());
        }
    }
    if fast {
        cmd.env(fast_tier::VAR, "1");
    }
    let status = cmd.status().context("starting cargo")?;
    Ok(status.code().unwrap_or(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every test the tier file names exists in its file (the list cannot rot silently), and
    /// every listed file exists.
    #[test]
    fn the_fast_tier_names_tests_that_exist() {
        let tiers = Tiers::load().unwrap();
        let root = host::workspace_root();
        for (package, files) in &tiers.targets {
            let dir = match package.as_str() {
                "xtask" => root.join("xtask/tests"),
                other => root.join(other).join("tests"),
            };
            for (file, selection) in files {
                let path = dir.join(format!("{file}.rs"));
                let text = std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                let names: Vec<&String> = match selection {
                    Selection::Only { only } => only.iter().collect(),
                    Selection::Skip { skip } => skip.iter().collect(),
                    Selection::All(_) => Vec::new(),
                };
                for name in names {
                    assert!(
                        text.contains(&format!("fn {name}")),
                        "{}: no test {name}",
                        path.display()
                    );
                }
            }
        }
        let runs = tiers.fast_runs();
        assert!(runs.iter().any(|r| r.contains(&"--exact".to_string())));
    }
}
