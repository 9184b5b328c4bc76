//! The `sweep` verb: where a case stops surviving, per image, RAM size and variant.
//!
//! Each (image, RAM, variant) of the case is a group with its own [`Search`]. One session is
//! prepared for all groups; every step runs the next cell of each group still searching (real
//! cells), feeds the verdicts back, and stops at the cell or time cap or when every interval is
//! narrow enough. Results: `sweep.json` and, like a run, `cells/`, `summary.json` and
//! `report.html` in `results/sweep-<id>/`.

use super::run::RunOptions;
use crate::cell::CellRecord;
use crate::config::Catalog;
use crate::host;
use crate::matrix::{self, Cell, Selection};
use crate::render;
use crate::results::sweep::{Group, Methods, SweepFile, SweptCell, SWEEP_FILE};
use crate::results::{RunInfo, Store};
use crate::session::Session;
use crate::stats::breaking_point::{Limits, Next, Observation, Search};
use crate::verdict::Verdict;
use anyhow::{bail, Result};
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
    let mut info = RunInfo::new("sweep", &opts.run.suite, std::env::args().skip(1).collect());
    info.profile = format!("{:?}", opts.run.selection.profile).to_lowercase();
    info.cells_planned = opts.max_cells;
    let templates: Vec<Cell> = groups.iter().map(|g| g.template.clone()).collect();
    let session = Session::prepare(&templates, opts.run.session.clone())?;
    let store = Store::create(&opts.run.results_root, "sweep-", info)?;
    session.stamp(&store)?;
    eprintln!(
        "kstorm: sweeping {} of {} over {} group(s), results in {}",
        opts.param,
        opts.case,
        groups.len(),
        store.root().display()
    );
    let start = Instant::now();
    let mut ran = 0;
    loop {
        let budget = opts.max_cells.saturating_sub(ran);
        if budget == 0 || start.elapsed() >= opts.max_time || crate::qemu::interrupted() {
            let why = if budget == 0 { "cell cap" } else { "time cap" };
            stop_all(&mut groups, why);
            break;
        }
        let batch = next_cells(&mut groups, &opts.param, budget);
        if batch.is_empty() {
            break;
        }
        for record in session.run(batch, &store) {
            observe(&mut groups, &record, &opts.param);
            ran += 1;
        }
        store.write_json(SWEEP_FILE, &sweep_file(opts, &groups))?;
    }
    let file = sweep_file(opts, &groups);
    store.write_json(SWEEP_FILE, &file)?;
    store.finish(file.groups.iter().all(|g| g.stopped != "running"))?;
    render::html::write(store.root())?;
    println!("{}", render::text::sweep_table(&file));
    println!("sweep results in {}", store.root().display());
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
fn next_cells(groups: &mut [Live], param: &str, budget: usize) -> Vec<Cell> {
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
