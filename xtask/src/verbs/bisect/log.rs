//! `results/bisect-<id>/bisect.json`: one log per bisection that every step appends to
//! (rewritten atomically), holding the target crash title once it is known.

use super::rule::{Decision, Rule, RunClass, Tally};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BisectLog {
    pub id: String,
    /// The crash being bisected: `--title`, or the title of the first target crash seen.
    pub title: Option<String>,
    /// Where the title came from.
    pub title_from: Option<String>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub commit: String,
    pub describe: String,
    pub rule: Rule,
    #[serde(flatten)]
    pub decision: Decision,
    pub exit_code: i32,
    pub tally: Tally,
    pub runs: Vec<RunEntry>,
    /// The kernel tree's build at this commit (`--kernel-tree`).
    #[serde(default)]
    pub build: Option<crate::images::kernel_tree::BuildRecord>,
    /// The step's wall time, the build included.
    pub wall_s: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunEntry {
    pub n: u32,
    pub verdict: String,
    pub class: RunClass,
    /// The run's results directory.
    pub dir: String,
}

impl BisectLog {
    pub fn load(path: &Path, id: &str) -> Result<BisectLog> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BisectLog {
                id: id.to_string(),
                ..BisectLog::default()
            }),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Appends `step` to the log on disk (read again first, then written atomically).
    pub fn append(
        path: &Path,
        id: &str,
        title: (&Option<String>, &Option<String>),
        step: Step,
    ) -> Result<()> {
        let mut log = BisectLog::load(path, id)?;
        if log.title.is_none() {
            log.title = title.0.clone();
            log.title_from = title.1.clone();
        }
        log.steps.push(step);
        crate::host::write_atomic(path, serde_json::to_string_pretty(&log)?.as_bytes())
    }
}
