//! The `run` verb: expand the suite (everything checked before anything boots), open the run
//! folder (or reopen it with `--resume`), prepare a session, run the cells, render
//! `report.html` and print the tables.

use crate::cell::CellRecord;
use crate::config::Catalog;
use crate::error::UsageError;
use crate::host;
use crate::images;
use crate::matrix::{self, Cell, Selection, Shard};
use crate::qemu;
use crate::render;
use crate::results::{RunInfo, Store};
use crate::session::{Session, SessionOptions};
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub suite: String,
    pub selection: Selection,
    /// Jobs, accelerator, cache, progress.
    pub session: SessionOptions,
    pub results_root: PathBuf,
    /// Only this shard of the matrix (`--shard I/N`).
    pub shard: Option<Shard>,
    /// Continue the interrupted run in this folder instead of starting a new one.
    pub resume: Option<PathBuf>,
    /// The command line, kept in `run.json` so `--resume` expands the same matrix.
    pub request: Vec<String>,
    /// `--kernel PATH`: this kernel in place of each image's.
    pub kernel: Option<PathBuf>,
}

impl RunOptions {
    pub fn new(suite: &str) -> RunOptions {
        RunOptions {
            suite: suite.to_string(),
            selection: Selection::default(),
            session: SessionOptions::default(),
            results_root: host::workspace_root().join("results"),
            shard: None,
            resume: None,
            request: Vec::new(),
            kernel: None,
        }
    }
}

/// The outcome of a run.
pub struct RunOutcome {
    /// The run folder.
    pub root: PathBuf,
    /// Every cell's record (a resumed run's earlier cells included), by id.
    pub records: Vec<CellRecord>,
    pub complete: bool,
}

impl RunOutcome {
    /// 0: every cell as expected; 1: some cell not as expected because of the kernel;
    /// 2: some infra failure (125 with `bisect`, so `git bisect run` skips the commit).
    pub fn exit_code(&self, bisect: bool) -> i32 {
        let infra = !self.complete || self.records.iter().any(|r| r.verdict.is_infra());
        if infra {
            return if bisect { 125 } else { 2 };
        }
        if self.records.iter().all(|r| r.as_expected) {
            0
        } else {
            1
        }
    }
}

/// The cells a run of `opts` runs: the suite's matrix under the selection, the kernel put in
/// place, the shard taken. Every check that can fail on what the user wrote happens here.
pub fn cells_of(opts: &RunOptions) -> Result<(String, Vec<Cell>)> {
    if opts.selection.repeat == 0 {
        bail!(UsageError::option("--repeat", "must be at least 1"));
    }
    if opts.session.jobs == 0 {
        bail!(UsageError::option("--jobs", "must be at least 1"));
    }
    if opts.selection.record && opts.session.accel == crate::session::AccelChoice::Kvm {
        bail!(UsageError::option(
            "--record",
            "record/replay needs TCG (icount): not with --accel kvm"
        ));
    }
    let catalog = Catalog::load(&host::workspace_root())?;
    let suite = catalog.resolve_suite(&opts.suite)?;
    let cells = matrix::expand(&suite, &catalog, &opts.selection)?;
    let mut cells = images::local::apply(cells, opts.kernel.as_deref())?;
    // A published image that cannot be had stops the run here, in one line, before anything
    // is built or booted.
    images::published::ensure_all(cells.iter().map(|c| &c.image), &opts.session.cache)?;
    if let Some(shard) = opts.shard {
        cells = shard.select(cells);
        eprintln!(
            "kstorm: shard {}/{}: {} cells",
            shard.index,
            shard.count,
            cells.len()
        );
    }
    Ok((suite.name.0.clone(), cells))
}

/// Runs a suite end to end (the `run` verb).
pub fn run(opts: &RunOptions) -> Result<RunOutcome> {
    let (suite, cells) = cells_of(opts)?;
    run_cells(&suite, cells, opts)
}

/// Runs given cells as the `run` verb would (the suite name labels the results): a session of
/// their own, a new run folder (or the one to resume), the report and the tables.
pub fn run_cells(suite: &str, cells: Vec<Cell>, opts: &RunOptions) -> Result<RunOutcome> {
    // A new run prepares its session first: a host that cannot run cells (no QEMU, no root to
    // install it) is told so before any results folder exists.
    let Some(root) = &opts.resume else {
        let session = Session::prepare(&cells, opts.session.clone())?;
        let store = new_store(suite, cells.len(), opts)?;
        return run_in(&session, &store, cells);
    };
    let (store, pending) = reopen_store(root, cells)?;
    let session = Session::prepare(&pending, opts.session.clone())?;
    run_in(&session, &store, pending)
}

/// Runs `cells` of `store`'s run in a prepared session; renders the report, prints the tables.
pub fn run_in(session: &Session, store: &Store, cells: Vec<Cell>) -> Result<RunOutcome> {
    eprintln!(
        "kstorm: {} cells of suite {}, results in {}",
        cells.len(),
        store.info().suite,
        store.root().display()
    );
    session.stamp(store)?;
    session.run(cells, store);
    let records = store.records();
    let complete = !qemu::interrupted() && records.len() == store.info().cells_planned;
    store.finish(complete)?;
    if let Err(e) = render::html::write(store.root()) {
        eprintln!("kstorm: writing report.html: {e:#}");
    }
    print_outcome(&records, &store.info(), store.root());
    Ok(RunOutcome {
        root: store.root().to_path_buf(),
        records,
        complete,
    })
}

/// A new run folder for `planned` cells.
fn new_store(suite: &str, planned: usize, opts: &RunOptions) -> Result<Store> {
    let mut info = RunInfo::new("run", suite, opts.request.clone());
    info.profile = format!("{:?}", opts.selection.profile).to_lowercase();
    info.cells_planned = planned;
    Store::create(&opts.results_root, "", info)
}

/// With `--resume`, the old run folder and the cells still to run.
fn reopen_store(root: &Path, cells: Vec<Cell>) -> Result<(Store, Vec<Cell>)> {
    let store = Store::reopen(root)?;
    let finished = store.records();
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
    eprintln!(
        "kstorm: resuming {}: {} cells finished, {} to run",
        root.display(),
        finished.len(),
        pending.len()
    );
    Ok((store, pending))
}

/// The first run's command line, to parse again for `--resume`.
pub fn resumed_request(root: &Path) -> Result<Vec<String>> {
    let info = crate::results::read_info(root)?;
    if info.verb != "run" {
        bail!(
            "--resume {}: made by `{}`, not by `run`",
            root.display(),
            info.verb
        );
    }
    Ok(info.request)
}

/// The verdict table, the measurement tables and the one-line summary.
fn print_outcome(records: &[CellRecord], info: &RunInfo, root: &Path) {
    use render::text;
    println!("{}", text::table(records));
    println!(
        "measurements per scenario (all of them in summary.json):{}",
        text::measurement_tables(records)
    );
    if let Some(evidence) = text::leak_evidence(records) {
        println!("memory that did not come back, with its evidence:\n{evidence}");
    }
    if let Some(stats) = text::repeat_stats(records) {
        println!("count reached over repeats:\n{stats}");
    }
    if let Some(line) = replays_line(records, root) {
        println!("{line}");
    }
    let ok = records.iter().filter(|r| r.as_expected).count();
    println!(
        "{ok}/{} cells as expected{}; accelerator {}; results in {}",
        records.len(),
        if info.complete {
            ""
        } else {
            " (run interrupted: partial results)"
        },
        info.accel,
        root.display()
    );
}

/// The crash rate of the fresh runs beside the replays kept, when cells were recorded.
fn replays_line(records: &[CellRecord], root: &Path) -> Option<String> {
    let kept: Vec<&CellRecord> = records.iter().filter(|r| r.replay.is_some()).collect();
    if kept.is_empty() {
        return None;
    }
    let crashed = records
        .iter()
        .filter(|r| matches!(r.verdict, crate::verdict::Verdict::Crash { .. }))
        .count();
    // The example to replay: a crashed run when there is one, since that is what is wanted.
    let crashed_kept = kept
        .iter()
        .find(|r| matches!(r.verdict, crate::verdict::Verdict::Crash { .. }));
    let example = crashed_kept.unwrap_or(&kept[0]);
    Some(format!(
        "fresh runs that crashed: {crashed} of {} ({:.0}%); replays kept: {} (cargo xtask replay {})",
        records.len(),
        100.0 * crashed as f64 / records.len() as f64,
        kept.len(),
        root.join("cells").join(&example.id).display()
    ))
}
