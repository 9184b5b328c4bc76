//! `report --merge`: shard runs (`run --shard I/N` on several machines) merged into one run
//! folder: every cell folder, one summary and JUnit file, and a `run.json` that keeps each
//! shard's own facts (its host, kstorm commit, accelerator).

use super::{Run, RunInfo, Store};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// Merges the shard runs into the new run folder `out`. A cell found in two shards is an error
/// (the shards overlap), and so is a shard folder that does not read back whole.
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<Store> {
    if shards.is_empty() {
        bail!("report --merge: name at least one run folder");
    }
    let runs = shards
        .iter()
        .map(|dir| Run::load(dir))
        .collect::<Result<Vec<Run>>>()?;
    let mut ids = std::collections::BTreeMap::new();
    for run in &runs {
        for r in &run.records {
            if let Some(other) = ids.insert(r.id.clone(), &run.root) {
                bail!(
                    "cell {} is in two shards ({} and {})",
                    r.id,
                    other.display(),
                    run.root.display()
                );
            }
        }
    }
    let store = Store::create_at(out, merged_info(&runs))?;
    for run in &runs {
        for r in &run.records {
            let from = run.cell_dir(&r.id);
            if from.exists() {
                copy_dir(&from, &store.cell_dir(&r.id))?;
            }
            store.add(r.clone())?;
        }
    }
    Ok(store)
}

/// The merged run's facts: the first shard's suite and profile, every shard's own facts, the
/// cells planned summed over shards, complete only when every shard is.
fn merged_info(runs: &[Run]) -> RunInfo {
    let first = &runs[0].info;
    let mut info = RunInfo::new("merge", &first.suite, std::env::args().skip(1).collect());
    info.profile = first.profile.clone();
    info.accel = join_distinct(runs.iter().map(|r| r.info.accel.as_str()));
    info.accel_reason = "per shard: see each shard".into();
    info.cells_planned = runs.iter().map(|r| r.info.cells_planned).sum();
    info.complete = runs.iter().all(|r| r.info.complete);
    info.shards = runs.iter().map(|r| r.info.clone()).collect();
    info
}

fn join_distinct<'a>(words: impl Iterator<Item = &'a str>) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for w in words {
        if !seen.contains(&w) {
            seen.push(w);
        }
    }
    seen.join(", ")
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from)?.flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}
