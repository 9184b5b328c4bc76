//! The `sweep` verb: where a case stops surviving, per image, RAM size and variant.
//!
//! Each (image, RAM, variant) of the case is a group with its own [`search::Search`]. Every step
//! runs the next cell of each group still searching (real cells, through [`run::run_cells`]),
//! feeds the verdicts back, and stops at the cell or time cap or when every interval is narrow
//! enough. Results: `sweep.json` and, like a run, `cells/`, `summary.json` and `report.html`
//! in `results/sweep-<id>/`.

pub mod search;
pub mod stats;

use crate::cell::CellRecord;
use crate::config::Catalog;
use crate::host;
use crate::matrix::{self, Cell, Selection};
use crate::report::{RunDir, RunMeta};
use crate::run::{self, RunOptions};
use crate::verdict::Verdict;
use anyhow::{bail, Context, Result};
use search::{Estimate, Limits, Mode, Next, Observation, Search};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct SweepOptions {
    pub case: String,
    pub param: String,
    /// Only these variants (all of the case's when empty).
    pub variants: Vec<String>,
    pub max_cells: usize,
    pub max_time: Duration,
    pub seed: u64,
    /// The parameter's range (default: 1 up to 1000 times the case's value).
    pub from: Option<f64>,
    pub to: Option<f64>,
    /// Stop a group once its interval is at most this fraction of its estimate.
    pub target_width: f64,
    /// Suite, RAM sizes, images, jobs, accelerator, results folder.
    pub run: RunOptions,
}

/// `sweep.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepFile {
    pub suite: String,
    pub case: String,
    pub param: String,
    pub seed: u64,
    pub methods: Methods,
    pub groups: Vec<Group>,
}

/// Which statistics produced the intervals (written out so a reader need not guess).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Methods {
    pub counting: String,
    pub survival: String,
}

impl Default for Methods {
    fn default() -> Self {
        Methods {
            counting: "median count at failure; 95% percentile bootstrap (4000 resamples)".into(),
            survival: "logistic fit by maximum likelihood; value at 50% survival with a 95% \
                       profile-likelihood interval"
                .into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub image: String,
    pub ram_mib: u64,
    pub variant: String,
    pub mode: Option<Mode>,
    pub cells: Vec<SweptCell>,
    pub estimate: Estimate,
    /// Why the search stopped (target reached, a cap, or what the data showed).
    pub stopped: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweptCell {
    pub cell: String,
    pub verdict: String,
    #[serde(flatten)]
    pub observation: Observation,
}

/// A group while it is being searched.
struct Live {
    template: Cell,
    search: Search,
    cells: Vec<SweptCell>,
    stopped: Option<String>,
    infra_in_a_row: u32,
}

/// After this many infra failures in a row a group stops: the host, not the kernel, is failing.
const MAX_INFRA_IN_A_ROW: u32 = 3;

pub fn sweep(opts: &SweepOptions) -> Result<SweepFile> {
    let catalog = Catalog::load(&host::workspace_root())?;
    let suite = catalog.suite(&opts.run.suite)?;
    let mut groups = groups(suite, &catalog, opts)?;
    let dir = RunDir::create_prefixed(&opts.run.results_root, "sweep-")?;
    eprintln!(
        "kstorm: sweeping {} of {} over {} group(s), results in {}",
        opts.param,
        opts.case,
        groups.len(),
        dir.root.display()
    );
    let start = Instant::now();
    let mut records: Vec<CellRecord> = Vec::new();
    let mut step = 0;
    loop {
        let budget = opts.max_cells.saturating_sub(records.len());
        if budget == 0 || start.elapsed() >= opts.max_time || crate::qemu::interrupted() {
            let why = if budget == 0 { "cell cap" } else { "time cap" };
            stop_all(&mut groups, why);
            break;
        }
        let batch = next_cells(&mut groups, &opts.param, budget, &mut step);
        if batch.is_empty() {
            break;
        }
        let mut step_opts = opts.run.clone();
        step_opts.results_root = dir.root.join("steps").join(format!("{step:03}"));
        let outcome = run::run_cells(&opts.run.suite, batch, &step_opts)?;
        for record in outcome.records {
            adopt_cell_dir(&outcome.dir, &dir, &record.id)?;
            dir.write_cell(&record)?;
            observe(&mut groups, &record, &opts.param);
            records.push(record);
        }
        write(&dir, &sweep_file(opts, &groups), &records, opts)?;
    }
    let file = sweep_file(opts, &groups);
    write(&dir, &file, &records, opts)?;
    println!("{}", table(&file));
    println!("sweep results in {}", dir.root.display());
    Ok(file)
}

/// One group per cell of the case (image x RAM x variant), checked before anything boots.
fn groups(
    suite: &crate::config::Suite,
    catalog: &Catalog,
    opts: &SweepOptions,
) -> Result<Vec<Live>> {
    if !suite.cases.iter().any(|c| c.name.as_str() == opts.case) {
        bail!(
            "--case {}: suite {} has no such case (has: {})",
            opts.case,
            opts.run.suite,
            suite
                .cases
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let selection = Selection {
        repeat: 1,
        ..opts.run.selection.clone()
    };
    let cells = matrix::expand(suite, catalog, &selection)?;
    let mut out = Vec::new();
    for cell in cells {
        let wanted_variant =
            opts.variants.is_empty() || opts.variants.contains(&cell.variant.name.0);
        if cell.case.name.as_str() != opts.case || !wanted_variant {
            continue;
        }
        let Some(start) = cell.params.get(&opts.param).and_then(|v| v.as_f64()) else {
            bail!(
                "--param {}: case {} has no numeric parameter of that name (has: {})",
                opts.param,
                opts.case,
                cell.params.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let integer = cell.params[&opts.param].is_i64() || cell.params[&opts.param].is_u64();
        let limits = Limits {
            min: opts.from.unwrap_or(1.0),
            max: opts.to.unwrap_or(start.abs().max(1.0) * 1000.0),
            integer,
            target_width: opts.target_width,
            min_repeats: 5,
        };
        out.push(Live {
            search: Search::new(start, limits, opts.seed),
            template: cell,
            cells: Vec::new(),
            stopped: None,
            infra_in_a_row: 0,
        });
    }
    if out.is_empty() {
        bail!(
            "case {} has no cells with these options (check --ram, --image, --variant)",
            opts.case
        );
    }
    Ok(out)
}

fn stop_all(groups: &mut [Live], why: &str) {
    for g in groups.iter_mut().filter(|g| g.stopped.is_none()) {
        g.stopped = Some(why.to_string());
    }
}

/// The next cell of every group still searching, at most `budget` of them.
fn next_cells(groups: &mut [Live], param: &str, budget: usize, step: &mut usize) -> Vec<Cell> {
    *step += 1;
    let mut batch = Vec::new();
    for g in groups.iter_mut().filter(|g| g.stopped.is_none()) {
        if batch.len() == budget {
            break;
        }
        match g.search.next_step() {
            Next::Done(why) => g.stopped = Some(why),
            Next::Run(value) => {
                let mut cell = g.template.clone();
                let json = if g.search.limits.integer {
                    serde_json::Value::from(value as i64)
                } else {
                    serde_json::Value::from(value)
                };
                cell.params.insert(param.to_string(), json);
                cell.id = format!("{}.{param}-{value}.s{}", g.template.id, g.cells.len() + 1);
                batch.push(cell);
            }
        }
    }
    batch
}

/// Moves a cell's folder from a step's run into the sweep's own `cells/`.
fn adopt_cell_dir(step: &RunDir, sweep: &RunDir, cell: &str) -> Result<()> {
    let from = step.cell_dir(cell);
    if !from.exists() {
        return Ok(());
    }
    let to: PathBuf = sweep.cell_dir(cell);
    std::fs::rename(&from, &to)
        .with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

fn observe(groups: &mut [Live], record: &CellRecord, param: &str) {
    let Some(g) = groups.iter_mut().find(|g| {
        record
            .id
            .strip_prefix(g.template.id.as_str())
            .is_some_and(|rest| rest.starts_with(&format!(".{param}-")))
    }) else {
        return;
    };
    let value = record.params.get(param).and_then(|v| v.as_f64());
    if record.verdict.is_infra() || value.is_none() {
        g.infra_in_a_row += 1;
        if g.infra_in_a_row >= MAX_INFRA_IN_A_ROW {
            g.stopped = Some(format!("{MAX_INFRA_IN_A_ROW} infra failures in a row"));
        }
        return;
    }
    g.infra_in_a_row = 0;
    let observation = Observation {
        value: value.unwrap_or_default(),
        survived: matches!(record.verdict, Verdict::Pass),
        count: record.last_progress.map(|c| c as f64),
    };
    g.search.record(observation.clone());
    g.cells.push(SweptCell {
        cell: record.id.clone(),
        verdict: record.verdict.describe(),
        observation,
    });
}

fn sweep_file(opts: &SweepOptions, groups: &[Live]) -> SweepFile {
    SweepFile {
        suite: opts.run.suite.clone(),
        case: opts.case.clone(),
        param: opts.param.clone(),
        seed: opts.seed,
        methods: Methods::default(),
        groups: groups
            .iter()
            .map(|g| Group {
                image: g.template.image.name.0.clone(),
                ram_mib: g.template.ram.mib(),
                variant: g.template.variant.name.0.clone(),
                mode: g.search.mode,
                cells: g.cells.clone(),
                estimate: g.search.estimate(),
                stopped: g.stopped.clone().unwrap_or_else(|| "running".into()),
            })
            .collect(),
    }
}

/// `sweep.json`, the run files of the cells so far, and the HTML report (atomically, each).
fn write(
    dir: &RunDir,
    file: &SweepFile,
    records: &[CellRecord],
    opts: &SweepOptions,
) -> Result<()> {
    host::write_atomic(
        &dir.root.join("sweep.json"),
        serde_json::to_string_pretty(file)?.as_bytes(),
    )?;
    let accel = records
        .first()
        .map(|r| r.accel.to_string())
        .unwrap_or_default();
    let meta = RunMeta {
        run_id: dir.id.clone(),
        suite: opts.run.suite.clone(),
        accel,
        accel_reason: "chosen per step".into(),
        profile: format!("{:?}", opts.run.selection.profile).to_lowercase(),
        cells_planned: opts.max_cells,
        complete: file.groups.iter().all(|g| g.stopped != "running"),
    };
    dir.write_summary(&meta, records)?;
    crate::html_report::write(&dir.root)
}

/// The terminal table: one line per group.
pub fn table(file: &SweepFile) -> String {
    let mut out = format!(
        "breaking point of {} in {} ({} = swept parameter)\n",
        file.case, file.suite, file.param
    );
    out.push_str(&format!(
        "{:<12} {:>6} {:<14} {:<9} {:>5} {:>12} {:>25}  stopped\n",
        "image", "RAM", "variant", "mode", "cells", "estimate", "95% interval"
    ));
    for g in &file.groups {
        let (mode, estimate, interval) = describe(&g.estimate);
        out.push_str(&format!(
            "{:<12} {:>5}M {:<14} {:<9} {:>5} {:>12} {:>25}  {}\n",
            g.image,
            g.ram_mib,
            g.variant,
            mode,
            g.cells.len(),
            estimate,
            interval,
            g.stopped
        ));
    }
    out.push_str(&format!(
        "counting: {}\nsurvival: {}\n",
        file.methods.counting, file.methods.survival
    ));
    out
}

/// (mode, estimate, interval) as short texts.
pub fn describe(e: &Estimate) -> (&'static str, String, String) {
    let end = |v: Option<f64>| {
        v.map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "open".into())
    };
    match e {
        Estimate::Counting { median, .. } => (
            "counting",
            format!("{:.0}", median.estimate),
            format!("{} - {}", end(median.lo), end(median.hi)),
        ),
        Estimate::Survival {
            fit: stats::SurvivalFit::Logistic { x50, .. },
        } => (
            "survival",
            format!("{:.1}", x50.estimate),
            format!("{} - {}", end(x50.lo), end(x50.hi)),
        ),
        Estimate::Survival {
            fit:
                stats::SurvivalFit::Separated {
                    last_survived,
                    first_failed,
                },
        } => (
            "survival",
            "-".into(),
            format!("between {} and {}", end(*last_survived), end(*first_failed)),
        ),
        Estimate::None => ("-", "-".into(), "-".into()),
    }
}
