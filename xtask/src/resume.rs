//! `run --resume RUN_DIR`: continue an interrupted run in its own folder.
//!
//! A cell is finished when its `result.json` exists and it was not cut: a cell still running
//! when the run was interrupted gets an `interrupted` marker next to its result, and runs again
//! on resume (its folder is cleared first). A cell killed without a chance to write anything has
//! no `result.json` and runs again too. `run.json` keeps the command line of the first run, so
//! the resumed run expands the same matrix.

use crate::cell::CellRecord;
use crate::host;
use crate::html_report;
use crate::matrix::Cell;
use crate::report::RunDir;
use anyhow::{bail, Context, Result};
use std::path::Path;

/// The marker a cut cell leaves in its folder.
const CUT_MARKER: &str = "interrupted";
/// The first run's command line (the `run` verb's arguments), for `--resume`.
pub const REQUEST_FILE: &str = "run.json";

/// Marks `cell` as cut by the interrupt, so a resume runs it again.
pub fn mark_cut(dir: &RunDir, cell: &str) -> Result<()> {
    host::write_atomic(
        &dir.cell_dir(cell).join(CUT_MARKER),
        b"cut by an interrupt\n",
    )
}

/// Writes the command line that made this run.
pub fn write_request(dir: &RunDir, args: &[String]) -> Result<()> {
    host::write_atomic(
        &dir.root.join(REQUEST_FILE),
        serde_json::to_string_pretty(&serde_json::json!({ "args": args }))?.as_bytes(),
    )
}

/// The first run's `run` arguments.
pub fn read_request(root: &Path) -> Result<Vec<String>> {
    let path = root.join(REQUEST_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "--resume: reading {} (is this a run folder?)",
            path.display()
        )
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    v["args"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .with_context(|| format!("{}: no args list", path.display()))
}

/// Reopens the run folder: its finished records, and the cells still to run (whose folders
/// are cleared). Fails when the folder holds cells the matrix does not have (another run).
pub fn reopen(root: &Path, cells: Vec<Cell>) -> Result<(RunDir, Vec<CellRecord>, Vec<Cell>)> {
    let id = root
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .context("--resume: the run folder has no name")?;
    let dir = RunDir {
        root: root.to_path_buf(),
        id,
    };
    let finished: Vec<CellRecord> = html_report::load_records(root)?
        .into_iter()
        .filter(|r| !dir.cell_dir(&r.id).join(CUT_MARKER).exists())
        .collect();
    if let Some(stranger) = finished
        .iter()
        .find(|r| !cells.iter().any(|c| c.id == r.id))
    {
        bail!(
            "--resume {}: cell {} is not in this run's matrix (was the suite changed?)",
            root.display(),
            stranger.id
        );
    }
    let pending: Vec<Cell> = cells
        .into_iter()
        .filter(|c| !finished.iter().any(|r| r.id == c.id))
        .collect();
    for c in &pending {
        let d = dir.cell_dir(&c.id);
        if d.exists() {
            std::fs::remove_dir_all(&d).with_context(|| format!("clearing {}", d.display()))?;
        }
    }
    eprintln!(
        "kstorm: resuming {}: {} cells finished, {} to run",
        root.display(),
        finished.len(),
        pending.len()
    );
    Ok((dir, finished, pending))
}
