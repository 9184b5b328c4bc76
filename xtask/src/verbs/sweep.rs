//! The `sweep` verb: where a case stops surviving along an axis (a case parameter, the guest's
//! RAM, a kernel command-line word, a sysctl, a loader tunable), per image, RAM size and
//! variant, and optionally per value of a second axis (`--over`) with a line fitted through the
//! breaking points.
//!
//! Each (image, RAM, variant, over value) of the case is a group with its own [`Search`]. One
//! session is prepared for all groups; every step runs the next cell of each group still
//! searching (real cells), feeds the verdicts back, and stops at the cell or time cap or when
//! every interval is narrow enough. Results: `sweep.json` and, like a run, `cells/`,
//! `summary.json` and `report.html` in `results/sweep-<id>/`.

use super::run::RunOptions;
use crate::cell::CellRecord;
use crate::config::Catalog;
use crate::error::{InfraCause, UsageError};
use crate::host;
use crate::matrix::axis::Axis;
use crate::matrix::{self, Cell, Selection};
use crate::render;
use crate::results::sweep::{Group, Methods, Over, SweepFile, SweptCell, SWEEP_FILE};
use crate::results::{RunInfo, Store};
use crate::session::Session;
use crate::stats::breaking_point::{Harder, Limits, Next, Observation, Search};
use crate::verdict::Verdict;
use anyhow::Result;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub struct SweepOptions {
    pub case: String,
    /// What to vary (`--axis`, or `--param NAME` as `param:NAME`).
    pub axis: Axis,
    /// Which way is harder (default: the axis's own, see [`Axis::default_harder`]).
    pub harder: Option<Harder>,
    /// `--over AXIS=v1,v2,...`: one sweep per value of a second axis.
    pub over: Option<(Axis, Vec<f64>)>,
    /// Only these variants (all of the case's when empty).
    pub variants: Vec<String>,
    pub max_cells: usize,
    pub max_time: Duration,
    pub seed: u64,
    /// The axis's range, as the user wrote it (`48M`; default: for a parameter 1 up to 1000
    /// times the case's value; for the others required unless the cell sets a value).
    pub from: Option<String>,
    pub to: Option<String>,
    /// Stop a group once its interval is at most this fraction of its estimate.
    pub target_width: f64,
    /// Suite, RAM sizes, images, jobs, accelerator, results folder.
    pub run: RunOptions,
}

/// `--over AXIS=v1,v2,...` parsed (values as the axis reads them: `ram=64M,128M`).
pub fn parse_over(s: &str) -> Result<(Axis, Vec<f64>), UsageError> {
    let Some((axis, values)) = s.split_once('=') else {
        return Err(UsageError::option(
            "--over",
            format!("{s:?}: write AXIS=v1,v2,... (e.g. ram=64M,128M,256M)"),
        ));
    };
    let axis: Axis = axis.parse().map_err(|e: UsageError| UsageError {
        field: "--over".into(),
        ..e
    })?;
    let values = values
        .split(',')
        .map(|v| axis.parse_value("--over", v))
        .collect::<Result<Vec<f64>, _>>()?;
    if values.len() < 2 {
        return Err(UsageError::option(
            "--over",
            format!("{s:?}: give at least two values to fit a line through"),
        ));
    }
    Ok((axis, values))
}

/// A group while it is being searched.
struct Live {
    template: Cell,
    over: Option<f64>,
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
        "kstorm: sweeping {} of {} toward {} values over {} group(s), results in {}",
        opts.axis,
        opts.case,
        harder_word(harder(opts)),
        groups.len(),
        store.root().display()
    );
    let start = Instant::now();
    let mut ran = 0;
    // Cell id -> (group, value asked), for the cells of the running step.
    let mut pending: HashMap<String, (usize, f64)> = HashMap::new();
    loop {
        let budget = opts.max_cells.saturating_sub(ran);
        if budget == 0 || start.elapsed() >= opts.max_time || crate::qemu::interrupted() {
            let why = if budget == 0 { "cell cap" } else { "time cap" };
            stop_all(&mut groups, why);
            break;
        }
        let batch = next_cells(&mut groups, &opts.axis, budget, &mut pending);
        if batch.is_empty() {
            break;
        }
        for record in session.run(batch, &store) {
            if let Some((g, value)) = pending.remove(&record.id) {
                observe(&mut groups[g], &record, value, &opts.axis);
            }
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

fn harder(opts: &SweepOptions) -> Harder {
    opts.harder.unwrap_or(opts.axis.default_harder())
}

fn harder_word(h: Harder) -> &'static str {
    match h {
        Harder::Higher => "higher",
        Harder::Lower => "lower",
    }
}

/// The case's cells, checked before anything boots: one per image x RAM x variant, except
/// that when RAM is swept (or is the `--over` axis) the suite's RAM sizes do not make groups.
fn base_cells(
    suite: &crate::config::Suite,
    catalog: &Catalog,
    opts: &SweepOptions,
) -> Result<Vec<Cell>> {
    if !suite.cases.iter().any(|c| c.name.as_str() == opts.case) {
        let names: Vec<&str> = suite.cases.iter().map(|c| c.name.as_str()).collect();
        return Err(UsageError::option(
            "--case",
            format!(
                "{}: suite {} has no such case (has: {})",
                opts.case,
                opts.run.suite,
                names.join(", ")
            ),
        )
        .into());
    }
    let selection = Selection {
        repeat: 1,
        ..opts.run.selection.clone()
    };
    let ram_free = opts.axis == Axis::Ram || opts.over.as_ref().is_some_and(|o| o.0 == Axis::Ram);
    let mut out: Vec<Cell> = Vec::new();
    for mut cell in matrix::expand(suite, catalog, &selection)? {
        let wanted_variant =
            opts.variants.is_empty() || opts.variants.contains(&cell.variant.name.0);
        if cell.case.name.as_str() != opts.case || !wanted_variant {
            continue;
        }
        opts.axis.check(&cell, "--axis")?;
        if let Some((over, _)) = &opts.over {
            over.check(&cell, "--over")?;
        }
        if ram_free {
            let same =
                |c: &Cell| c.image.name == cell.image.name && c.variant.name == cell.variant.name;
            if out.iter().any(same) {
                continue;
            }
            cell.id = format!(
                "{}@{}-{}",
                cell.case.name, cell.image.name, cell.variant.name
            );
        }
        out.push(cell);
    }
    if out.is_empty() {
        return Err(UsageError::option(
            "--case",
            format!(
                "case {} has no cells with these options (check --ram, --image, --variant)",
                opts.case
            ),
        )
        .into());
    }
    Ok(out)
}

/// One group per base cell and `--over` value, each with its search's limits.
fn groups(
    suite: &crate::config::Suite,
    catalog: &Catalog,
    opts: &SweepOptions,
) -> Result<Vec<Live>> {
    let from = opts
        .from
        .as_deref()
        .map(|v| opts.axis.parse_value("--from", v))
        .transpose()?;
    let to = opts
        .to
        .as_deref()
        .map(|v| opts.axis.parse_value("--to", v))
        .transpose()?;
    if let (Some(f), Some(t)) = (from, to) {
        if f >= t {
            return Err(UsageError::option("--to", "must be above --from").into());
        }
    }
    let overs: Vec<Option<f64>> = match &opts.over {
        Some((axis, _)) if *axis == opts.axis => {
            return Err(UsageError::option("--over", "must differ from the swept axis").into())
        }
        Some((_, values)) => values.iter().copied().map(Some).collect(),
        None => vec![None],
    };
    let mut out = Vec::new();
    for base in base_cells(suite, catalog, opts)? {
        for over in &overs {
            let mut template = base.clone();
            if let (Some((axis, _)), Some(v)) = (&opts.over, over) {
                axis.apply(&mut template, *v);
                template.id = format!("{}.{}", base.id, axis.id_part(*v));
            }
            let limits = limits(opts, &template, from, to)?;
            let start = opts.axis.current(&template).unwrap_or(match limits.harder {
                Harder::Higher => limits.min,
                Harder::Lower => limits.max,
            });
            out.push(Live {
                search: Search::new(start, limits, opts.seed),
                template,
                over: *over,
                cells: Vec::new(),
                stopped: None,
                infra_in_a_row: 0,
            });
        }
    }
    Ok(out)
}

/// The range: what the user gave, else for a parameter 1 to 1000 times its value, else an
/// error naming the option (a kernel knob has no range kstorm could guess).
fn limits(opts: &SweepOptions, cell: &Cell, from: Option<f64>, to: Option<f64>) -> Result<Limits> {
    let current = opts.axis.current(cell);
    let (min, max) = match (&opts.axis, from, to) {
        (_, Some(f), Some(t)) => (f, t),
        (Axis::Param(_), f, t) => {
            let start = current.unwrap_or(1.0);
            (f.unwrap_or(1.0), t.unwrap_or(start.abs().max(1.0) * 1000.0))
        }
        (Axis::Ram, f, t) => (f.unwrap_or(16.0), t.unwrap_or(cell.ram.mib() as f64 * 4.0)),
        (axis, _, _) => {
            return Err(UsageError::option(
                if from.is_none() { "--from" } else { "--to" },
                format!("sweeping {axis} needs --from and --to (the range to search)"),
            )
            .into())
        }
    };
    Ok(Limits {
        min,
        max,
        integer: opts.axis.integer(cell),
        target_width: opts.target_width,
        min_repeats: 5,
        harder: harder(opts),
        counting: opts.axis.counts(),
    })
}

fn stop_all(groups: &mut [Live], why: &str) {
    for g in groups.iter_mut().filter(|g| g.stopped.is_none()) {
        g.stopped = Some(why.to_string());
    }
}

/// The next cell of every group still searching, at most `budget` of them.
fn next_cells(
    groups: &mut [Live],
    axis: &Axis,
    budget: usize,
    pending: &mut HashMap<String, (usize, f64)>,
) -> Vec<Cell> {
    let mut batch = Vec::new();
    for (i, g) in groups.iter_mut().enumerate() {
        if g.stopped.is_some() || batch.len() == budget {
            continue;
        }
        match g.search.next_step() {
            Next::Done(why) => g.stopped = Some(why),
            Next::Run(value) => {
                let mut cell = g.template.clone();
                axis.apply(&mut cell, value);
                cell.id = format!(
                    "{}.{}.s{}",
                    g.template.id,
                    axis.id_part(value),
                    g.cells.len() + 1
                );
                pending.insert(cell.id.clone(), (i, value));
                batch.push(cell);
            }
        }
    }
    batch
}

/// Whether a cell that did not pass is the axis's outcome rather than the host's failure: on
/// the RAM axis a guest tool that could not start for want of memory did not survive.
fn is_infra(verdict: &Verdict, axis: &Axis) -> bool {
    match verdict {
        Verdict::Infra {
            cause: InfraCause::GuestTool,
            ..
        } if *axis == Axis::Ram => false,
        v => v.is_infra(),
    }
}

fn observe(g: &mut Live, record: &CellRecord, value: f64, axis: &Axis) {
    if is_infra(&record.verdict, axis) {
        g.infra_in_a_row += 1;
        if g.infra_in_a_row >= MAX_INFRA_IN_A_ROW {
            g.stopped = Some(format!("{MAX_INFRA_IN_A_ROW} infra failures in a row"));
        }
        return;
    }
    g.infra_in_a_row = 0;
    let observation = Observation {
        value,
        survived: matches!(record.verdict, Verdict::Pass),
        count: record.last_progress.map(|c| c as f64),
    };
    g.search.record(observation.clone());
    g.cells.push(SweptCell {
        cell: record.id.clone(),
        verdict: record.verdict.describe(),
        observation,
        reported: axis.reported(&record.results),
    });
}

fn sweep_file(opts: &SweepOptions, groups: &[Live]) -> SweepFile {
    let groups: Vec<Group> = groups
        .iter()
        .map(|g| Group {
            image: g.template.image.name.0.clone(),
            ram_mib: g.template.ram.mib(),
            variant: g.template.variant.name.0.clone(),
            over: g.over,
            mode: g.search.mode,
            cells: g.cells.clone(),
            estimate: g.search.estimate(),
            stopped: g.stopped.clone().unwrap_or_else(|| "running".into()),
        })
        .collect();
    let over = opts.over.as_ref().map(|(axis, values)| Over {
        axis: axis.clone(),
        values: values.clone(),
        fit: over_fit(&groups),
    });
    SweepFile {
        suite: opts.run.suite.clone(),
        case: opts.case.clone(),
        param: opts.axis.label().to_string(),
        axis: Some(opts.axis.clone()),
        harder: harder(opts),
        over,
        seed: opts.seed,
        methods: Methods::default(),
        groups,
    }
}

/// The line through each group's estimate against its `--over` value (per image and variant
/// when there are several, the first of them: one line is what is printed).
fn over_fit(groups: &[Group]) -> Option<crate::stats::LinearFit> {
    let first = groups.first()?;
    let points: Vec<(f64, f64)> = groups
        .iter()
        .filter(|g| g.image == first.image && g.variant == first.variant)
        .filter_map(|g| Some((g.over?, g.estimate.point()?)))
        .collect();
    crate::stats::fit_line(&points)
}
