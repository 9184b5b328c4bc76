//! The results store: the one module that owns a run folder's format, written and read back as
//! the same types.
//!
//! `results/<run-id>/` holds `run.json` ([`RunInfo`]: what ran, where, with which kstorm),
//! `summary.json` ([`Summary`]) and `junit.xml`, and per cell `cells/<cell-id>/result.json`
//! ([`CellRecord`]) beside the cell's `console.log`, `qemu.cmd` and `qemu.stderr`. Verbs add
//! their own files (`sweep.json`, `compare.json`, `report.html`) through [`Store::write_json`]
//! and [`Store::write_text`].
//!
//! Every file is written atomically. A [`Store`] rewrites `summary.json` after every cell, so an
//! interrupted run keeps what it finished; a cell cut by the interrupt is marked, and runs again
//! on `--resume`. A reader ([`Run::load`]) that meets a missing or damaged file says which file
//! and stops: it never takes "nothing read" for "nothing wrong".

pub mod info;
pub mod junit;
pub mod merge;
pub mod summary;
pub mod sweep;

pub use info::{HostFacts, KstormVersion, RunInfo};
pub use summary::Summary;

use crate::cell::CellRecord;
use crate::error::UsageError;
use crate::host;
use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The version of this folder format; a reader refuses folders of another.
pub const FORMAT_VERSION: u32 = 2;

pub const INFO_FILE: &str = "run.json";
pub const SUMMARY_FILE: &str = "summary.json";
pub const JUNIT_FILE: &str = "junit.xml";
pub const RECORD_FILE: &str = "result.json";
/// The marker a cell cut by an interrupt leaves in its folder.
const CUT_MARKER: &str = "interrupted";

/// A run folder being written.
pub struct Store {
    root: PathBuf,
    state: Mutex<State>,
}

struct State {
    info: RunInfo,
    /// Sorted by cell id.
    records: Vec<CellRecord>,
}

impl Store {
    /// Creates `results_root/<prefix><time>-<pid>`, points `results_root/latest` at it and
    /// writes its `run.json` and an empty summary.
    pub fn create(results_root: &Path, prefix: &str, info: RunInfo) -> Result<Store> {
        let id = format!(
            "{prefix}{}-{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S"),
            std::process::id()
        );
        let store = Store::create_at(&results_root.join(&id), info)?;
        let latest = results_root.join("latest");
        let _ = std::fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(&id, &latest);
        Ok(store)
    }

    /// Creates the run folder `root` itself (its name is the run id).
    pub fn create_at(root: &Path, mut info: RunInfo) -> Result<Store> {
        std::fs::create_dir_all(root.join("cells"))
            .with_context(|| format!("creating {}", root.display()))?;
        info.run_id = file_name(root);
        info.format_version = FORMAT_VERSION;
        let store = Store {
            root: root.to_path_buf(),
            state: Mutex::new(State {
                info,
                records: Vec::new(),
            }),
        };
        store.write_state(&store.state.lock().unwrap())?;
        Ok(store)
    }

    /// Reopens an interrupted run to continue it: its facts and the cells it finished. The
    /// folders of cells that did not finish (cut, or killed before writing) are cleared.
    pub fn reopen(root: &Path) -> Result<Store> {
        let run = Run::load(root)?;
        let (finished, unfinished): (Vec<CellRecord>, Vec<CellRecord>) = run
            .records
            .into_iter()
            .partition(|r| !root.join("cells").join(&r.id).join(CUT_MARKER).exists());
        let clear = unfinished
            .iter()
            .map(|r| r.id.clone())
            .chain(run.unfinished);
        for id in clear {
            let d = root.join("cells").join(&id);
            std::fs::remove_dir_all(&d).with_context(|| format!("clearing {}", d.display()))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
            state: Mutex::new(State {
                info: run.info,
                records: finished,
            }),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn id(&self) -> String {
        self.state.lock().unwrap().info.run_id.clone()
    }

    pub fn cell_dir(&self, cell_id: &str) -> PathBuf {
        self.root.join("cells").join(cell_id)
    }

    pub fn info(&self) -> RunInfo {
        self.state.lock().unwrap().info.clone()
    }

    /// The records written so far, sorted by cell id.
    pub fn records(&self) -> Vec<CellRecord> {
        self.state.lock().unwrap().records.clone()
    }

    /// Changes the run's facts and rewrites `run.json` and the summary.
    pub fn update_info(&self, change: impl FnOnce(&mut RunInfo)) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        change(&mut state.info);
        self.write_state(&state)
    }

    /// Writes a finished cell's `result.json`, then the summary with it.
    pub fn add(&self, record: CellRecord) -> Result<()> {
        let path = self.cell_dir(&record.id).join(RECORD_FILE);
        host::write_atomic(&path, serde_json::to_string_pretty(&record)?.as_bytes())?;
        let mut state = self.state.lock().unwrap();
        state.records.retain(|r| r.id != record.id);
        let at = state.records.partition_point(|r| r.id < record.id);
        state.records.insert(at, record);
        self.write_state(&state)
    }

    /// Marks a cell as cut by an interrupt, so a resume runs it again.
    pub fn mark_cut(&self, cell_id: &str) -> Result<()> {
        host::write_atomic(
            &self.cell_dir(cell_id).join(CUT_MARKER),
            b"cut by an interrupt\n",
        )
    }

    /// Records the end of the run: when, and whether it is complete.
    pub fn finish(&self, complete: bool) -> Result<()> {
        self.update_info(|info| {
            info.complete = complete;
            info.finished_at = Some(chrono::Local::now().to_rfc3339());
        })
    }

    /// A verb's own JSON file in the run folder (`sweep.json`, `compare.json`).
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        write_json(&self.root.join(name), value)
    }

    /// A verb's own text file in the run folder (`report.html`).
    pub fn write_text(&self, name: &str, text: &str) -> Result<()> {
        host::write_atomic(&self.root.join(name), text.as_bytes())
    }

    fn write_state(&self, state: &State) -> Result<()> {
        write_json(&self.root.join(INFO_FILE), &state.info)?;
        write_json(
            &self.root.join(SUMMARY_FILE),
            &Summary::new(&state.info, &state.records),
        )?;
        host::write_atomic(
            &self.root.join(JUNIT_FILE),
            junit::render(&state.info, &state.records)?.as_bytes(),
        )
    }
}

/// A run folder read back.
#[derive(Debug, Clone)]
pub struct Run {
    pub root: PathBuf,
    pub info: RunInfo,
    pub summary: Summary,
    /// Every cell's record, sorted by cell id.
    pub records: Vec<CellRecord>,
    /// Cell folders without a `result.json`: cells that were running when the run was killed.
    pub unfinished: Vec<String>,
}

impl Run {
    /// Reads `run.json`, `summary.json` and every `cells/*/result.json`; a missing or damaged
    /// file is an error naming it.
    pub fn load(root: &Path) -> Result<Run> {
        let info = read_info(root)?;
        let summary: Summary = read_json(&root.join(SUMMARY_FILE))?;
        let (records, unfinished) = read_records(root)?;
        Ok(Run {
            root: root.to_path_buf(),
            info,
            summary,
            records,
            unfinished,
        })
    }

    /// A verb's own JSON file (`sweep.json`), if the run has one; damaged is an error.
    pub fn optional_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let path = self.root.join(name);
        if !path.exists() {
            return Ok(None);
        }
        read_json(&path).map(Some)
    }

    pub fn cell_dir(&self, cell_id: &str) -> PathBuf {
        self.root.join("cells").join(cell_id)
    }
}

/// One cell's `result.json`, read from its folder.
pub fn read_cell(cell_dir: &Path) -> Result<CellRecord> {
    read_json(&cell_dir.join(RECORD_FILE))
}

/// A run folder's `run.json`, of this format version.
pub fn read_info(root: &Path) -> Result<RunInfo> {
    read_versioned(&root.join(INFO_FILE))
}

/// Every `cells/*/result.json` (sorted by cell id) and the cell folders that have none.
fn read_records(root: &Path) -> Result<(Vec<CellRecord>, Vec<String>)> {
    let cells = root.join("cells");
    let entries = std::fs::read_dir(&cells).map_err(|e| damaged(&cells, e))?;
    let mut records = Vec::new();
    let mut unfinished = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| damaged(&cells, e))?;
        if !entry.path().is_dir() {
            continue;
        }
        let path = entry.path().join(RECORD_FILE);
        if path.exists() {
            records.push(read_json::<CellRecord>(&path)?);
        } else {
            unfinished.push(entry.file_name().to_string_lossy().to_string());
        }
    }
    records.sort_by(|a, b| a.id.cmp(&b.id));
    unfinished.sort();
    Ok((records, unfinished))
}

/// `run.json`, refusing another format version with a message that says so.
fn read_versioned<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let value: serde_json::Value = read_json(path)?;
    match value.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(damaged(
                path,
                format!("results format {v}; this kstorm reads format {FORMAT_VERSION}"),
            ))
        }
        None => {
            return Err(damaged(
                path,
                format!(
                    "no format_version: written by a kstorm older than results format \
                     {FORMAT_VERSION} (or not kstorm's); run it again"
                ),
            ))
        }
    }
    serde_json::from_value(value).map_err(|e| damaged(path, e))
}

/// A typed JSON file; missing or damaged is an error naming it (and the line, if JSON says).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| damaged(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        let line = (e.line() > 0).then_some(e.line() as u64);
        UsageError {
            file: Some(path.to_path_buf()),
            line,
            field: String::new(),
            message: format!("not a kstorm results file: {e}"),
        }
        .into()
    })
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    host::write_atomic(path, serde_json::to_string_pretty(value)?.as_bytes())
}

fn damaged(path: &Path, why: impl std::fmt::Display) -> anyhow::Error {
    UsageError {
        file: Some(path.to_path_buf()),
        line: None,
        field: String::new(),
        message: why.to_string(),
    }
    .into()
}

fn file_name(root: &Path) -> String {
    root.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| "run".into())
}
