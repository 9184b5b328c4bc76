//! The `report` verb: renders a run folder's `report.html` again (from its stored files alone),
//! or merges shard runs into one run folder and renders that.

use super::run::RunOutcome;
use crate::host;
use crate::render;
use crate::results::merge;
use anyhow::Result;
use std::path::{Path, PathBuf};

/// `report RUN_DIR`: the path of the written `report.html`.
pub fn render_again(run_dir: &Path) -> Result<PathBuf> {
    render::html::write(run_dir)?;
    Ok(run_dir.join("report.html"))
}

/// `report --merge DIR... [--out DIR]`: the merged run, as if it had run on one machine.
pub fn merge_shards(shards: &[PathBuf], out: Option<PathBuf>) -> Result<RunOutcome> {
    let out = out.unwrap_or_else(|| {
        host::workspace_root().join("results").join(format!(
            "merged-{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S")
        ))
    });
    let store = merge::merge(shards, &out)?;
    let complete = store.info().complete;
    store.finish(complete)?;
    render::html::write(store.root())?;
    Ok(RunOutcome {
        root: out,
        records: store.records(),
        complete,
    })
}
