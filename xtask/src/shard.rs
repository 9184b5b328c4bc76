//! `--shard I/N` and `report --merge`: one matrix spread over the runners of a CI engine.
//!
//! A shard is chosen from the cell ids alone (ordered by a hash of the id, then dealt out in
//! turn), so every machine given the same suite and options picks the same cells, the shards
//! are disjoint, together they are the whole matrix, and their sizes differ by at most one.

use crate::cell::CellRecord;
use crate::html_report;
use crate::matrix::Cell;
use crate::report::{RunDir, RunMeta};
use crate::run::RunOutcome;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based.
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {s}: expected I/N with 1 <= I <= N, e.g. 2/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's cells, in their original order.
    pub fn select(&self, cells: Vec<Cell>) -> Vec<Cell> {
        let ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
        let mine = self.ids(&ids);
        cells.into_iter().filter(|c| mine.contains(&c.id)).collect()
    }

    /// The ids among `ids` that fall to this shard.
    pub fn ids(&self, ids: &[&str]) -> Vec<String> {
        let mut keyed: Vec<([u8; 32], &str)> = ids
            .iter()
            .map(|id| (Sha256::digest(id.as_bytes()).into(), *id))
            .collect();
        keyed.sort();
        keyed
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index - 1)
            .map(|(_, (_, id))| id.to_string())
            .collect()
    }
}

/// Merges shard runs into one run folder `out`: every cell folder, one `summary.json`, one
/// `junit.xml`, one `report.html`. A cell found in two shards is an error (shards overlap).
/// The outcome is the merged run's, as if it had run on one machine.
pub fn merge(shards: &[PathBuf], out: &Path) -> Result<RunOutcome> {
    if shards.is_empty() {
        bail!("report --merge: name at least one run folder");
    }
    let mut records: Vec<CellRecord> = Vec::new();
    let mut metas: Vec<serde_json::Value> = Vec::new();
    // Where each record's cell folder is, in the order of `records`.
    let mut sources: Vec<PathBuf> = Vec::new();
    for dir in shards {
        let summary = dir.join("summary.json");
        let text = std::fs::read_to_string(&summary)
            .with_context(|| format!("reading {}", summary.display()))?;
        metas.push(
            serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", summary.display()))?,
        );
        for r in html_report::load_records(dir)? {
            if let Some(other) = records.iter().find(|o| o.id == r.id) {
                bail!(
                    "cell {} is in two shards (the second: {})",
                    other.id,
                    dir.display()
                );
            }
            sources.push(dir.join("cells").join(&r.id));
            records.push(r);
        }
    }
    let id = out
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "merged".into());
    std::fs::create_dir_all(out.join("cells"))
        .with_context(|| format!("creating {}", out.display()))?;
    let run = RunDir {
        root: out.to_path_buf(),
        id,
    };
    for (from, r) in sources.iter().zip(&records) {
        if from.exists() {
            copy_dir(from, &run.cell_dir(&r.id))?;
        }
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let text = |k: &str| metas[0][k].as_str().unwrap_or("").to_string();
    let meta = RunMeta {
        run_id: run.id.clone(),
        suite: text("suite"),
        accel: text("accel"),
        accel_reason: text("accel_reason"),
        profile: text("profile"),
        cells_planned: metas
            .iter()
            .map(|m| m["cells_planned"].as_u64().unwrap_or(0) as usize)
            .sum(),
        complete: metas.iter().all(|m| m["complete"] == true),
    };
    run.write_summary(&meta, &records)?;
    html_report::write(&run.root)?;
    Ok(RunOutcome {
        dir: run,
        records,
        complete: meta.complete,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_and_balance() {
        let ids: Vec<String> = (0..37)
            .map(|i| format!("case{i}@linux-128M-base"))
            .collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut all: Vec<String> = Vec::new();
        for index in 1..=4 {
            let part = Shard { index, count: 4 }.ids(&refs);
            assert!((9..=10).contains(&part.len()), "{}", part.len());
            all.extend(part);
        }
        all.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "x/2", "3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
