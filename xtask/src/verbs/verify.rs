//! `cargo xtask verify-suites`: every suite's full matrix (each of its images, RAM sizes and
//! variants, not only `base`) on the suite's own images, then one table per suite and the list
//! of cells that were not as expected, with their reason.
//!
//! An expectation that does not hold in a full run is a defect of the suite file (to fix, or to
//! explain there), so this is run by hand or nightly on the kernel of the day; it is too long
//! for CI under TCG.

use super::run::{self, RunOptions};
use crate::cell::CellRecord;
use crate::config::Catalog;
use crate::host;
use crate::matrix::{self, Selection};
use crate::results::{RunInfo, Store};
use crate::session::Session;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

pub struct VerifyOptions {
    /// Suites to verify (empty: every suite of `suites/`).
    pub suites: Vec<String>,
    /// Runs of every cell: a flaky expectation shows as a cell that is as expected only some
    /// of the times.
    pub repeat: u32,
    /// Jobs, accelerator, results root and cache for each suite's run.
    pub run: RunOptions,
}

/// What one suite's full run gave.
#[derive(Debug, Serialize)]
pub struct SuiteOutcome {
    pub suite: String,
    /// The suite's run folder, or why it did not run.
    pub run_dir: Option<PathBuf>,
    pub not_run: Option<String>,
    pub cells: usize,
    pub as_expected: usize,
    pub infra: usize,
    pub wall_s: f64,
    pub kernels: Vec<String>,
    pub misses: Vec<Miss>,
}

/// A cell (over its repeats) that was not as expected at least once.
#[derive(Debug, Serialize)]
pub struct Miss {
    pub cell: String,
    pub expected: String,
    /// How many of its runs were not as expected, out of how many.
    pub missed: usize,
    pub runs: usize,
    /// Each distinct outcome that was not as expected.
    pub got: Vec<String>,
}

/// The whole verification, as written to `verify.json`.
#[derive(Debug, Serialize)]
pub struct Verification {
    pub kernel: Vec<String>,
    pub suites: Vec<SuiteOutcome>,
}

impl Verification {
    /// 0: every cell of every suite as expected; 1: some cell not, because of the kernel;
    /// 2: a suite did not run or a cell ended in an infra failure.
    pub fn exit_code(&self) -> i32 {
        if self
            .suites
            .iter()
            .any(|s| s.not_run.is_some() || s.infra > 0)
        {
            2
        } else if self.suites.iter().any(|s| !s.misses.is_empty()) {
            1
        } else {
            0
        }
    }
}

/// Runs every selected suite in full, writes `verify.json` and `verify.txt` into
/// `results/verify-<time>/`, and prints the table. Every suite is loaded and expanded before
/// the first boots, so a bad suite file stops the verification before anything runs.
pub fn verify(opts: &VerifyOptions) -> Result<Verification> {
    let catalog = Catalog::load(&host::workspace_root())?;
    let names: Vec<String> = if opts.suites.is_empty() {
        catalog.suites.keys().cloned().collect()
    } else {
        opts.suites.clone()
    };
    let selection = Selection {
        repeat: opts.repeat.max(1),
        ..Selection::default()
    };
    let mut planned = Vec::new();
    for name in &names {
        let suite = catalog.resolve_suite(name)?;
        let cells = matrix::expand(&suite, &catalog, &selection)?;
        planned.push((suite.name.0.clone(), cells));
    }
    let root = opts.run.results_root.join(format!(
        "verify-{}",
        chrono::Local::now().format("%Y%m%d-%H%M%S")
    ));
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut verification = Verification {
        kernel: Vec::new(),
        suites: Vec::new(),
    };
    // One session for every suite: packages, payload, images and the probe, once (a suite
    // whose published image cannot be had says so in its row and is left out of it).
    let cache = &opts.run.session.cache;
    let has_images = |cells: &[matrix::Cell]| {
        crate::images::published::ensure_all(cells.iter().map(|c| &c.image), cache)
    };
    let all: Vec<matrix::Cell> = planned
        .iter()
        .filter(|(_, c)| has_images(c).is_ok())
        .flat_map(|(_, c)| c.clone())
        .collect();
    let session = Session::prepare(&all, opts.run.session.clone())?;
    for (name, cells) in planned {
        if crate::qemu::interrupted() {
            break;
        }
        verification
            .suites
            .push(verify_suite(&session, &name, cells, opts, &root));
        verification.kernel = kernels(&verification.suites);
        // Rewritten after each suite, so an interrupted verification keeps what it finished.
        write(&root, &verification)?;
    }
    print!("{}", text(&verification));
    println!("verification in {}", root.display());
    Ok(verification)
}

fn verify_suite(
    session: &Session,
    name: &str,
    cells: Vec<matrix::Cell>,
    opts: &VerifyOptions,
    root: &std::path::Path,
) -> SuiteOutcome {
    let started = Instant::now();
    let mut outcome = SuiteOutcome {
        suite: name.to_string(),
        run_dir: None,
        not_run: None,
        cells: cells.len(),
        as_expected: 0,
        infra: 0,
        wall_s: 0.0,
        kernels: Vec::new(),
        misses: Vec::new(),
    };
    eprintln!("kstorm: verify: suite {name}, {} cells", cells.len());
    let ran = crate::images::published::ensure_all(
        cells.iter().map(|c| &c.image),
        &opts.run.session.cache,
    )
    .and_then(|()| {
        let mut info = RunInfo::new("verify-suites", name, std::env::args().skip(1).collect());
        info.cells_planned = cells.len();
        let store = Store::create(&root.join(name), "", info)?;
        run::run_in(session, &store, cells)
    });
    match ran {
        Ok(run) => {
            outcome.run_dir = Some(run.root.clone());
            outcome.cells = run.records.len();
            outcome.as_expected = run.records.iter().filter(|r| r.as_expected).count();
            outcome.infra = run.records.iter().filter(|r| r.verdict.is_infra()).count();
            outcome.misses = misses(&run.records);
            outcome.kernels = run.records.iter().filter_map(kernel_of).collect();
            outcome.kernels.sort();
            outcome.kernels.dedup();
            if !run.complete {
                outcome.not_run = Some("interrupted: partial results".into());
            }
        }
        Err(e) => outcome.not_run = Some(format!("{e:#}")),
    }
    outcome.wall_s = started.elapsed().as_secs_f64();
    outcome
}

/// The cells not as expected in some run, grouped over repeats (`.rN` suffixes).
fn misses(records: &[CellRecord]) -> Vec<Miss> {
    let mut by_cell: BTreeMap<String, Vec<&CellRecord>> = BTreeMap::new();
    for r in records {
        let base = match r.id.rsplit_once(".r") {
            Some((base, n)) if n.parse::<u32>().is_ok() => base,
            _ => r.id.as_str(),
        };
        by_cell.entry(base.to_string()).or_default().push(r);
    }
    by_cell
        .into_iter()
        .filter(|(_, runs)| runs.iter().any(|r| !r.as_expected))
        .map(|(cell, runs)| {
            let mut got: Vec<String> = runs
                .iter()
                .filter(|r| !r.as_expected)
                .map(|r| r.verdict.describe())
                .collect();
            got.sort();
            got.dedup();
            Miss {
                expected: crate::results::summary::expected_text(runs[0]),
                missed: runs.iter().filter(|r| !r.as_expected).count(),
                runs: runs.len(),
                cell,
                got,
            }
        })
        .collect()
}

fn write(root: &std::path::Path, verification: &Verification) -> Result<()> {
    host::write_atomic(
        &root.join("verify.json"),
        serde_json::to_string_pretty(verification)?.as_bytes(),
    )?;
    host::write_atomic(&root.join("verify.txt"), text(verification).as_bytes())
}

/// The kernels the suites booted, as their guests named them (`uname -r`) or, for guests
/// that do not say, as the image's provenance does.
fn kernels(suites: &[SuiteOutcome]) -> Vec<String> {
    let mut out: Vec<String> = suites.iter().flat_map(|s| s.kernels.clone()).collect();
    out.sort();
    out.dedup();
    out
}

fn kernel_of(r: &CellRecord) -> Option<String> {
    let said = r.hello.as_ref().and_then(|h| h["kernel"].as_str());
    said.map(str::to_string)
        .or_else(|| Some(r.provenance.version.clone()))
        .filter(|k| !k.is_empty())
}

/// The verification as text: a row per suite, then each miss with its reason.
pub fn text(v: &Verification) -> String {
    let header: Vec<String> = ["suite", "cells", "as expected", "infra", "time", "note"]
        .iter()
        .map(|h| h.to_string())
        .collect();
    let rows: Vec<Vec<String>> = v
        .suites
        .iter()
        .map(|s| {
            vec![
                s.suite.clone(),
                s.cells.to_string(),
                format!("{}/{}", s.as_expected, s.cells),
                s.infra.to_string(),
                format!("{:.0}s", s.wall_s),
                s.not_run.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let mut out = format!("kernels: {}\n", v.kernel.join(", "));
    out.push_str(&crate::render::text::text_table(&header, &rows));
    for s in &v.suites {
        for m in &s.misses {
            out.push_str(&format!(
                "NOT AS EXPECTED {} {} ({}/{} runs): expected {}, got {}\n",
                s.suite,
                m.cell,
                m.missed,
                m.runs,
                m.expected,
                m.got.join(" | ")
            ));
        }
    }
    out
}
