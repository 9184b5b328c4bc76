//! The `run` verb: expand the suite, build the payload, prepare the images, choose the
//! accelerator, run the cells in parallel with progress bars, write results, print the table.

use crate::cell::{self, CellEnv, CellRecord};
use crate::config::{Catalog, RamSize};
use crate::error::InfraCause;
use crate::host;
use crate::images::{self, PreparedImage};
use crate::matrix::{self, Cell, Selection};
use crate::qemu::{self, Accel};
use crate::report::{self, RunDir, RunMeta};
use crate::verdict::Verdict;
use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kstorm_payload::plan::{Plan, ScenarioSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

/// How to choose the accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when a real probe boots with it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub suite: String,
    pub selection: Selection,
    pub jobs: usize,
    pub accel: AccelChoice,
    pub results_root: PathBuf,
    /// Downloads and built artifacts (default: [`host::cache_dir`]).
    pub cache: PathBuf,
    /// Show progress bars (off for tests and when stderr is not a terminal).
    pub progress: bool,
    /// Test-only fault injection into the transports; empty in real runs.
    pub faults: crate::transport::Faults,
    /// Only this shard of the matrix (`--shard I/N`).
    pub shard: Option<crate::shard::Shard>,
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
            jobs: default_jobs(),
            accel: AccelChoice::Auto,
            results_root: host::workspace_root().join("results"),
            cache: host::cache_dir(),
            progress: true,
            faults: Default::default(),
            shard: None,
            resume: None,
            request: Vec::new(),
            kernel: None,
        }
    }
}

/// One TCG guest per core: a guest with one vCPU keeps one core busy.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The outcome of a run.
pub struct RunOutcome {
    pub dir: RunDir,
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

/// Runs a suite end to end. The suite and the selection are checked (parameters included)
/// before anything is built or booted: a [`crate::error::UsageError`] starts nothing.
pub fn run(opts: &RunOptions) -> Result<RunOutcome> {
    let catalog = Catalog::load(&host::workspace_root())?;
    let suite = catalog.resolve_suite(&opts.suite)?;
    let cells = matrix::expand(&suite, &catalog, &opts.selection)?;
    let mut cells = images::local::apply(cells, opts.kernel.as_deref())?;
    // A published image that cannot be had stops the run here, in one line, before anything
    // is built or booted.
    images::published::ensure_all(cells.iter().map(|c| &c.image), &opts.cache)?;
    if let Some(shard) = opts.shard {
        cells = shard.select(cells);
        eprintln!(
            "kstorm: shard {}/{}: {} cells",
            shard.index,
            shard.count,
            cells.len()
        );
    }
    run_cells(suite.name.as_str(), cells, opts)
}

/// What every cell of a run shares: built once, before the first cell.
struct Shared<'a> {
    /// The static payload, or why it did not build (every cell then says so).
    payload: Result<std::sync::Arc<Vec<u8>>>,
    /// Each image's prepared kernel files, or the infra verdict its cells get.
    prepared: BTreeMap<String, Result<PreparedImage, Verdict>>,
    accel: Accel,
    cache: PathBuf,
    faults: &'a crate::transport::Faults,
}

/// Runs given cells (the suite name labels the results).
pub fn run_cells(suite_name: &str, cells: Vec<Cell>, opts: &RunOptions) -> Result<RunOutcome> {
    // Every Debian package the cells need, installed (as root) before anything is built.
    host::packages::ensure(&matrix::host_uses(&cells))?;
    qemu::install_signal_handler().ok();
    let planned = cells.len();
    let (dir, finished, cells) = open_run_dir(cells, opts)?;
    eprintln!(
        "kstorm: {} cells of suite {suite_name}, results in {}",
        cells.len(),
        dir.root.display()
    );
    let (shared, accel_reason) = prepare_shared(&cells, opts);
    eprintln!("kstorm: accelerator {} ({accel_reason})", shared.accel);
    let mut meta = RunMeta {
        run_id: dir.id.clone(),
        suite: suite_name.to_string(),
        accel: shared.accel.to_string(),
        accel_reason,
        profile: format!("{:?}", opts.selection.profile).to_lowercase(),
        cells_planned: planned,
        complete: false,
    };
    let mut records = run_queue(cells, finished, &shared, &dir, &meta, opts);
    records.sort_by(|a, b| a.id.cmp(&b.id));
    meta.complete = !qemu::interrupted() && records.len() == meta.cells_planned;
    dir.write_summary(&meta, &records)?;
    if let Err(e) = crate::html_report::write(&dir.root) {
        eprintln!("kstorm: writing report.html: {e:#}");
    }
    print_outcome(&records, &meta, &dir);
    Ok(RunOutcome {
        dir,
        records,
        complete: meta.complete,
    })
}

/// Builds the payload, prepares every image once and chooses the accelerator. A failure here
/// is the host's, and every cell it concerns says so.
fn prepare_shared<'a>(cells: &[Cell], opts: &'a RunOptions) -> (Shared<'a>, String) {
    let payload = crate::payload::build()
        .and_then(|p| std::fs::read(&p).with_context(|| format!("reading {}", p.display())))
        .map(std::sync::Arc::new);
    let mut prepared: BTreeMap<String, Result<PreparedImage, Verdict>> = BTreeMap::new();
    for cell in cells {
        let name = cell.image.name.0.clone();
        if let std::collections::btree_map::Entry::Vacant(slot) = prepared.entry(name) {
            let p = images::prepare(&cell.image, &opts.cache)
                .with_context(|| format!("preparing image {}", slot.key()))
                .map_err(|e| Verdict::from_error(&e, InfraCause::ImageBuild));
            if let Err(v) = &p {
                eprintln!("kstorm: {}", v.describe());
            }
            slot.insert(p);
        }
    }
    let (accel, reason) = match &payload {
        Ok(bytes) => choose_accel(opts.accel, &prepared, bytes, &opts.cache),
        Err(_) => (Accel::Tcg, "payload not built".to_string()),
    };
    let shared = Shared {
        payload,
        prepared,
        accel,
        cache: opts.cache.clone(),
        faults: &opts.faults,
    };
    (shared, reason)
}

/// Runs the cells on `opts.jobs` workers; after each cell its result and the run's summary are
/// written, so an interrupted run keeps what it finished.
fn run_queue(
    cells: Vec<Cell>,
    finished: Vec<CellRecord>,
    shared: &Shared<'_>,
    dir: &RunDir,
    meta: &RunMeta,
    opts: &RunOptions,
) -> Vec<CellRecord> {
    let bars = Bars::new(opts.progress, cells.len());
    let records: Mutex<Vec<CellRecord>> = Mutex::new(finished);
    let queue: Mutex<std::collections::VecDeque<Cell>> = Mutex::new(cells.into_iter().collect());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            s.spawn(|| loop {
                if qemu::interrupted() {
                    break;
                }
                let Some(cell) = queue.lock().unwrap().pop_front() else {
                    break;
                };
                let bar = bars.cell(&cell.id);
                let record = run_one(&cell, shared, dir, &|m: &str| {
                    bar.set_message(m.to_string())
                });
                bars.finish_cell(&bar, &record);
                if let Err(e) = dir.write_cell(&record) {
                    eprintln!("kstorm: writing result of {}: {e:#}", record.id);
                }
                if qemu::interrupted() {
                    if let Err(e) = crate::resume::mark_cut(dir, &record.id) {
                        eprintln!("kstorm: marking {} as cut: {e:#}", record.id);
                    }
                }
                let mut all = records.lock().unwrap();
                all.push(record);
                if let Err(e) = dir.write_summary(meta, &all) {
                    eprintln!("kstorm: writing summary: {e:#}");
                }
            });
        }
    });
    bars.done();
    records.into_inner().unwrap()
}

/// The verdict table, the measurement tables and the one-line summary.
fn print_outcome(records: &[CellRecord], meta: &RunMeta, dir: &RunDir) {
    println!("{}", report::table(records));
    println!(
        "measurements per scenario (all of them in summary.json):{}",
        report::measurement_tables(records)
    );
    if let Some(evidence) = report::leak_evidence(records) {
        println!("memory that did not come back, with its evidence:\n{evidence}");
    }
    if let Some(stats) = report::repeat_stats(records) {
        println!("count reached over repeats:\n{stats}");
    }
    let ok = records.iter().filter(|r| r.as_expected).count();
    println!(
        "{ok}/{} cells as expected{}; accelerator {}; results in {}",
        records.len(),
        if meta.complete {
            ""
        } else {
            " (run interrupted: partial results)"
        },
        meta.accel,
        dir.root.display()
    );
}

/// A new run folder, or with `--resume` the old one: its finished records and the cells left.
fn open_run_dir(
    cells: Vec<Cell>,
    opts: &RunOptions,
) -> Result<(RunDir, Vec<CellRecord>, Vec<Cell>)> {
    if let Some(root) = &opts.resume {
        return crate::resume::reopen(root, cells);
    }
    let dir = RunDir::create(&opts.results_root)?;
    crate::resume::write_request(&dir, &opts.request)?;
    Ok((dir, Vec::new(), cells))
}

/// Prepares and runs one cell; every failure before QEMU starts becomes an `Infra` verdict.
fn run_one(
    cell: &Cell,
    shared: &Shared<'_>,
    dir: &RunDir,
    progress: &(dyn Fn(&str) + Sync),
) -> CellRecord {
    let accel = shared.accel;
    let plan_json = match serde_json::to_vec(&plan_for(cell)) {
        Ok(p) => p,
        Err(e) => {
            let why = Verdict::infra(InfraCause::Harness, format!("plan: {e}"));
            return CellRecord::unstarted(cell, accel, why);
        }
    };
    let guest = shared.payload.as_ref().ok().map(|p| cell::GuestFiles {
        payload: p.clone(),
        plan_json: plan_json.clone(),
        job: crate::guest::driver::job_for(cell),
    });
    let boot = (|| -> Result<images::BootArtifacts, Verdict> {
        let payload = shared
            .payload
            .as_ref()
            .map_err(|e| Verdict::from_error(e, InfraCause::PayloadBuild))?;
        let image = shared.prepared[cell.image.name.as_str()]
            .as_ref()
            .map_err(Clone::clone)?;
        let mut cmdline = cell.variant.cmdline.clone();
        cmdline.push(format!("kstorm.cell={}", cell.id));
        images::cell_artifacts(
            image,
            &cell.image,
            &cmdline,
            payload,
            &plan_json,
            &shared.cache,
        )
        .map_err(|e| Verdict::from_error(&e, InfraCause::ImageBuild))
    })();
    match boot {
        Ok(boot) => cell::run(
            cell,
            CellEnv {
                boot,
                accel,
                dir: dir.cell_dir(&cell.id),
                progress,
                guest,
                faults: shared.faults.clone(),
            },
        ),
        Err(verdict) => CellRecord::unstarted(cell, accel, verdict),
    }
}

/// The plan the payload follows in this cell.
pub fn plan_for(cell: &Cell) -> Plan {
    Plan {
        cell: cell.id.clone(),
        results_device: "/dev/ttyS1".into(),
        heartbeat_ms: 500,
        sysctl: cell
            .variant
            .sysctl
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        scenarios: vec![ScenarioSpec {
            name: cell.case.scenario.0.clone(),
            params: cell.params.clone(),
        }],
    }
}

/// Chooses KVM only when a real guest boots with it; the answer is cached until the host reboots.
pub fn choose_accel(
    choice: AccelChoice,
    prepared: &BTreeMap<String, Result<PreparedImage, Verdict>>,
    payload: &[u8],
    cache: &Path,
) -> (Accel, String) {
    match choice {
        AccelChoice::Tcg => return (Accel::Tcg, "--accel tcg".into()),
        AccelChoice::Kvm => return (Accel::Kvm, "--accel kvm".into()),
        AccelChoice::Auto => {}
    }
    if !qemu::kvm_device_usable() {
        return (Accel::Tcg, "/dev/kvm cannot be opened".into());
    }
    let stamp = cache.join("kvm-probe.json");
    let boot_id = qemu::host_boot_id();
    if let Ok(text) = std::fs::read_to_string(&stamp) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if v["boot_id"] == boot_id.as_str() {
                let works = v["kvm_works"].as_bool().unwrap_or(false);
                let accel = if works { Accel::Kvm } else { Accel::Tcg };
                return (
                    accel,
                    format!(
                        "KVM probe (cached for this host boot): {}",
                        v["detail"].as_str().unwrap_or("")
                    ),
                );
            }
        }
    }
    // The probe cell is a Linux payload cell: probe with a Linux kernel.
    let Some(linux) = prepared.values().find_map(|p| {
        p.as_ref()
            .ok()
            .filter(|p| matches!(p, PreparedImage::Linux(_)))
    }) else {
        return (Accel::Tcg, "no kernel to probe KVM with".into());
    };
    let (works, detail) = probe_kvm(linux, payload, cache);
    let record = serde_json::json!({"boot_id": boot_id, "kvm_works": works, "detail": detail});
    let _ = host::write_atomic(&stamp, record.to_string().as_bytes());
    (
        if works { Accel::Kvm } else { Accel::Tcg },
        format!("KVM probe: {detail}"),
    )
}

/// Boots the smoke scenario with KVM; KVM works only if the payload says hello within seconds.
/// (`/dev/kvm` can exist and open while guests hang or QEMU aborts: see the environment notes.)
fn probe_kvm(image: &PreparedImage, payload: &[u8], cache: &Path) -> (bool, String) {
    let Ok(probe) = probe_cell() else {
        return (false, "could not build the probe cell".into());
    };
    let plan = plan_for(&probe);
    let Ok(plan_json) = serde_json::to_vec(&plan) else {
        return (false, "plan".into());
    };
    let boot = match images::cell_artifacts(image, &probe.image, &[], payload, &plan_json, cache) {
        Ok(b) => b,
        Err(e) => return (false, format!("{e:#}")),
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return (false, e.to_string()),
    };
    let rec = cell::run(
        &probe,
        CellEnv {
            boot,
            accel: Accel::Kvm,
            dir: dir.path().to_path_buf(),
            progress: &|_| {},
            guest: None,
            faults: Default::default(),
        },
    );
    match (&rec.verdict, rec.timings.boot_s) {
        (Verdict::Pass, Some(b)) => (true, format!("guest booted with KVM in {b:.2}s")),
        (v, _) => {
            let stderr =
                std::fs::read_to_string(dir.path().join("qemu.stderr")).unwrap_or_default();
            let why = stderr
                .lines()
                .rfind(|l| !l.contains("info:"))
                .map(str::to_string)
                .unwrap_or_else(|| v.describe());
            (
                false,
                format!("guest did not boot with KVM ({why}); using TCG"),
            )
        }
    }
}

/// A smoke cell on Debian's Linux kernel, with short deadlines, for the KVM probe.
pub fn probe_cell() -> Result<Cell> {
    let yaml = r#"
name: kvm-probe
description: boots the smoke scenario with KVM; KVM is used only if this passes
images: [linux]
ram: [128M]
deadlines: {boot: 10s, cell: 20s, heartbeat: 10s}
cases:
  - {name: probe, scenario: smoke, expect: pass}
"#;
    let suite: crate::config::Suite = serde_saphyr::from_str(yaml)?;
    let image = crate::config::load_image(&host::workspace_root().join("images/linux.yaml"))?;
    let case = suite.cases[0].clone();
    Ok(Cell {
        id: "kvm-probe".into(),
        suite: "kvm-probe".into(),
        params: case.params.clone(),
        case,
        image,
        ram: RamSize(128),
        variant: suite.variants[0].clone(),
        repeat: 1,
        deadlines: suite.deadlines,
        transport: crate::config::TransportSpec::Pid1,
    })
}

/// Progress: a line per running cell and an overall bar.
struct Bars {
    multi: Option<MultiProgress>,
    overall: ProgressBar,
}

impl Bars {
    fn new(enabled: bool, total: usize) -> Bars {
        use std::io::IsTerminal;
        if !enabled || !std::io::stderr().is_terminal() {
            return Bars {
                multi: None,
                overall: ProgressBar::hidden(),
            };
        }
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} cells {msg}")
                .unwrap()
                .progress_chars("=> "),
        );
        Bars {
            multi: Some(multi),
            overall,
        }
    }

    fn cell(&self, id: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            eprintln!("kstorm: {id}: starting");
            return ProgressBar::hidden();
        };
        let bar = multi.insert_before(&self.overall, ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {prefix} {elapsed} {msg}").unwrap(),
        );
        bar.set_prefix(id.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    fn finish_cell(&self, bar: &ProgressBar, record: &CellRecord) {
        let mark = if record.as_expected { "ok " } else { "NOT OK" };
        let line = format!("{mark} {} -> {}", record.id, record.verdict.describe());
        if self.multi.is_some() {
            bar.finish_and_clear();
            self.overall.println(line);
            self.overall.inc(1);
        } else {
            eprintln!("kstorm: {line}");
        }
    }

    fn done(&self) {
        self.overall.finish_and_clear();
    }
}

/// The `build` verb: the payload and the images of a suite, nothing booted.
pub fn build(suite_name: &str) -> Result<()> {
    let catalog = Catalog::load(&host::workspace_root())?;
    let suite = catalog.suite(suite_name)?;
    host::packages::ensure(&matrix::host_uses(&matrix::expand(
        suite,
        &catalog,
        &Selection::default(),
    )?))?;
    let bin = crate::payload::build()?;
    eprintln!("payload: {}", bin.display());
    let cache = host::cache_dir();
    let mut names: Vec<&str> = suite.images.iter().map(|n| n.as_str()).collect();
    for case in &suite.cases {
        names.extend(case.images.iter().flatten().map(|n| n.as_str()));
    }
    names.sort();
    names.dedup();
    for name in names {
        let prepared = images::prepare(&catalog.images[name], &cache)?;
        eprintln!("image {name}: {:?}", prepared.provenance());
    }
    Ok(())
}
