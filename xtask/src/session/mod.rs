//! The engine under every verb: a [`Session`] is prepared once for a set of cells (the host's
//! packages, the signal handler, the guest payload, every image, the accelerator probe), then
//! runs cells into a results [`Store`] as often as its verb asks: all of a suite at once
//! ([`Session::run`]), or one decision at a time ([`Session::run_fed`], for `bisect-run` and
//! `sweep`).
//!
//! Each cell goes through the cell runner ([`crate::cell`]); the session only builds what the
//! cell boots and keeps the workers busy. It prints progress, never tables: verbs do that.

pub mod accel;
mod progress;

pub use accel::AccelChoice;

use crate::cell::{self, CellEnv, CellRecord};
use crate::error::InfraCause;
use crate::images::initramfs::ToolArchive;
use crate::images::{self, PreparedImage};
use crate::matrix::{self, Cell};
use crate::qemu::{self, Accel};
use crate::results::Store;
use crate::verdict::Verdict;
use anyhow::{Context, Result};
use kstorm_payload::plan::{Plan, ScenarioSpec};
use kstorm_payload::registry;
use progress::Bars;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

/// How a session runs its cells.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Cells at once (one TCG guest per core: a guest with one vCPU keeps one core busy).
    pub jobs: usize,
    pub accel: AccelChoice,
    /// Downloads and built artifacts (default: [`crate::host::cache_dir`]).
    pub cache: PathBuf,
    /// Show progress bars (off for tests and when stderr is not a terminal).
    pub progress: bool,
    /// Test-only fault injection into the transports; empty in real runs.
    pub faults: crate::transport::Faults,
    /// Keep every recorded cell's replay, not only those that crashed, hung, ran out of
    /// memory or ended not as expected (`run --keep-replays`).
    pub keep_replays: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            jobs: default_jobs(),
            accel: AccelChoice::Auto,
            cache: crate::host::cache_dir(),
            progress: true,
            faults: Default::default(),
            keep_replays: false,
        }
    }
}

/// One job per core.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// What a fed run does next.
pub enum Next {
    Run(Cell),
    /// Nothing to start until a running cell finishes (the decision waits for it).
    Wait,
    /// No more cells: the verb has its answer, or nothing is left.
    Done,
}

/// The verb's side of [`Session::run_fed`]: given every record of this run so far (in the order
/// the cells finished) and how many cells are still running, the next thing to do.
pub trait Feed: Send {
    fn next(&mut self, finished: &[CellRecord], running: usize) -> Next;
}

/// Prepared once; runs cells as often as asked.
pub struct Session {
    opts: SessionOptions,
    /// The static payload, or why it did not build (every cell then says so).
    payload: Result<Arc<Vec<u8>>, Verdict>,
    /// Each image's prepared kernel files, or the infra verdict its cells get; an image first
    /// seen in a later call is prepared then.
    prepared: Mutex<BTreeMap<String, Result<PreparedImage, Verdict>>>,
    /// Guest tool bundles, by the tools they hold.
    tools: Mutex<BTreeMap<String, Result<Arc<ToolArchive>, Verdict>>>,
    /// The GNU Mach bootstrap task, once a Mach cell needed it.
    mach_task: Mutex<Option<Result<PathBuf, Verdict>>>,
    accel: Accel,
    accel_reason: String,
}

impl Session {
    /// Installs what `cells` need on the host, builds the payload, prepares their images and
    /// chooses the accelerator. A host without its packages is an error here (nothing booted);
    /// a payload or image that fails to build is each concerned cell's infra verdict.
    pub fn prepare(cells: &[Cell], opts: SessionOptions) -> Result<Session> {
        crate::host::packages::ensure(&matrix::host_uses(cells))?;
        qemu::install_signal_handler().ok();
        let payload = crate::guest_build::payload::build()
            .and_then(|p| std::fs::read(&p).with_context(|| format!("reading {}", p.display())))
            .map(Arc::new)
            .map_err(|e| Verdict::from_error(&e, InfraCause::PayloadBuild));
        let mut session = Session {
            opts,
            payload,
            prepared: Mutex::new(BTreeMap::new()),
            tools: Mutex::new(BTreeMap::new()),
            mach_task: Mutex::new(None),
            accel: Accel::Tcg,
            accel_reason: "payload not built".into(),
        };
        for cell in cells {
            let _ = session.image(cell);
        }
        if let Ok(bytes) = &session.payload {
            let prepared = session.prepared.lock().unwrap();
            let (accel, reason) =
                accel::choose(session.opts.accel, &prepared, bytes, &session.opts.cache);
            drop(prepared);
            session.accel = accel;
            session.accel_reason = reason;
        }
        eprintln!(
            "kstorm: accelerator {} ({})",
            session.accel, session.accel_reason
        );
        Ok(session)
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    pub fn accel_reason(&self) -> &str {
        &self.accel_reason
    }

    pub fn jobs(&self) -> usize {
        self.opts.jobs.max(1)
    }

    /// Records the session's accelerator in the store's `run.json`.
    pub fn stamp(&self, store: &Store) -> Result<()> {
        store.update_info(|info| {
            info.accel = self.accel.to_string();
            info.accel_reason = self.accel_reason.clone();
        })
    }

    /// Runs `cells` on the session's workers into `store` (each record written as its cell
    /// ends, so an interrupted run keeps what it finished); returns their records, by id.
    pub fn run(&self, cells: Vec<Cell>, store: &Store) -> Vec<CellRecord> {
        let planned = cells.len();
        let mut feed = Queue(cells.into());
        let mut records = self.run_fed(&mut feed, planned, store);
        records.sort_by(|a, b| a.id.cmp(&b.id));
        records
    }

    /// Runs what `feed` asks for until it says done (or an interrupt), `jobs` cells at a time;
    /// returns the records in the order the cells finished. `planned` sizes the progress bar.
    pub fn run_fed(&self, feed: &mut dyn Feed, planned: usize, store: &Store) -> Vec<CellRecord> {
        let bars = Bars::new(self.opts.progress, planned);
        let state = Mutex::new(Workers {
            feed,
            finished: Vec::new(),
            running: 0,
            done: false,
        });
        let changed = Condvar::new();
        std::thread::scope(|s| {
            for _ in 0..self.jobs() {
                s.spawn(|| {
                    while let Some(cell) = take_next(&state, &changed) {
                        let record = self.run_one_cell(&cell, store, &bars);
                        let mut w = state.lock().unwrap();
                        w.running -= 1;
                        w.finished.push(record);
                        changed.notify_all();
                    }
                });
            }
        });
        bars.done();
        state.into_inner().unwrap().finished
    }

    /// Runs one cell with progress and writes its result (marked as cut by an interrupt).
    fn run_one_cell(&self, cell: &Cell, store: &Store, bars: &Bars) -> CellRecord {
        let bar = bars.cell(&cell.id);
        let mut record = self.boot_cell(cell, store, &|m: &str| bar.set_message(m.to_string()));
        let dir = store.cell_dir(&cell.id);
        cell::recording::keep_or_discard(&mut record, &dir, self.opts.keep_replays);
        bars.finish_cell(&bar, &record);
        if let Err(e) = store.add(record.clone()) {
            eprintln!("kstorm: writing result of {}: {e:#}", record.id);
        }
        if qemu::interrupted() {
            if let Err(e) = store.mark_cut(&record.id) {
                eprintln!("kstorm: marking {} as cut: {e:#}", record.id);
            }
        }
        record
    }

    /// The prepared image of `cell`, preparing it on first use.
    fn image(&self, cell: &Cell) -> Result<PreparedImage, Verdict> {
        let name = cell.image.name.as_str();
        if let Some(p) = self.prepared.lock().unwrap().get(name) {
            return p.clone();
        }
        // Preparing can take minutes (a download, a kernel build): not under the lock. Two
        // workers may both prepare; images' own cache lock makes the second find it done.
        let p = images::prepare(&cell.image, &self.opts.cache)
            .with_context(|| format!("preparing image {name}"))
            .map_err(|e| Verdict::from_error(&e, InfraCause::ImageBuild));
        if let Err(v) = &p {
            eprintln!("kstorm: {}", v.describe());
        }
        self.prepared
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_insert(p)
            .clone()
    }

    /// Builds what one cell boots and runs it; every failure before QEMU starts becomes an
    /// `Infra` verdict.
    fn boot_cell(
        &self,
        cell: &Cell,
        store: &Store,
        progress: &(dyn Fn(&str) + Sync),
    ) -> CellRecord {
        let accel = self.accel;
        let plan = plan_for(cell);
        let plan_json = match serde_json::to_vec(&plan) {
            Ok(p) => p,
            Err(e) => {
                let why = Verdict::infra(InfraCause::Harness, format!("plan: {e}"));
                return CellRecord::unstarted(cell, accel, why);
            }
        };
        let guest = self.payload.as_ref().ok().map(|p| cell::GuestFiles {
            payload: p.clone(),
            plan_json: plan_json.clone(),
            job: crate::guest::driver::job_for(cell),
        });
        let boot = self.artifacts(cell, &plan, &plan_json);
        match boot {
            Ok(boot) => cell::run(
                cell,
                CellEnv {
                    boot,
                    accel,
                    dir: store.cell_dir(&cell.id),
                    progress,
                    guest,
                    faults: self.opts.faults.clone(),
                },
            ),
            Err(verdict) => CellRecord::unstarted(cell, accel, verdict),
        }
    }

    /// What QEMU boots for `cell` following `plan` (`plan_json` is the plan as the guest reads
    /// it): the prepared image with the cell's initramfs or ISO and command line.
    pub fn artifacts(
        &self,
        cell: &Cell,
        plan: &Plan,
        plan_json: &[u8],
    ) -> Result<images::BootArtifacts, Verdict> {
        let payload = self.payload.as_ref().map_err(Clone::clone)?;
        let image = self.image(cell)?;
        let tools = self.guest_tools(cell)?;
        let mach_task = match image {
            PreparedImage::Mach(_) => Some(self.mach_task()?),
            _ => None,
        };
        let parts = images::GuestParts {
            payload,
            plan,
            plan_json,
            tools: &tools,
            mach_task: mach_task.as_deref(),
        };
        let mut cmdline = cell.variant.cmdline.clone();
        cmdline.push(format!("kstorm.cell={}", cell.id));
        images::cell_artifacts(&image, &cell.image, &cmdline, &parts, &self.opts.cache)
            .map_err(|e| Verdict::from_error(&e, InfraCause::ImageBuild))
    }

    /// The tools the cell's scenario runs in the guest (the registry says which), bundled once
    /// per set of tools; none for guests that boot their own root filesystem.
    fn guest_tools(&self, cell: &Cell) -> Result<Arc<ToolArchive>, Verdict> {
        let wanted: Vec<&str> = registry::find(cell.image.route(), cell.case.scenario.as_str())
            .map(|d| d.guest_tools.to_vec())
            .unwrap_or_default();
        let key = wanted.join(",");
        if let Some(t) = self.tools.lock().unwrap().get(&key) {
            return t.clone();
        }
        let built = crate::guest_build::tools::bundle(&wanted, &self.opts.cache)
            .map(Arc::new)
            .map_err(|e| Verdict::from_error(&e, InfraCause::ImageBuild));
        self.tools
            .lock()
            .unwrap()
            .entry(key)
            .or_insert(built)
            .clone()
    }

    /// kstorm's GNU Mach bootstrap task, built on first use.
    fn mach_task(&self) -> Result<PathBuf, Verdict> {
        let mut task = self.mach_task.lock().unwrap();
        task.get_or_insert_with(|| {
            let dir = self.opts.cache.join("gnumach").join("bootstrap");
            crate::guest_build::mach_task::build(&dir)
                .map_err(|e| Verdict::from_error(&e, InfraCause::PayloadBuild))
        })
        .clone()
    }
}

/// The workers' shared state in [`Session::run_fed`].
struct Workers<'f> {
    feed: &'f mut dyn Feed,
    finished: Vec<CellRecord>,
    running: usize,
    /// The feed said done (or an interrupt came): no worker starts anything more.
    done: bool,
}

/// The next cell for a worker, waiting while the feed waits; `None` when the run is over.
fn take_next(state: &Mutex<Workers<'_>>, changed: &Condvar) -> Option<Cell> {
    let mut w = state.lock().unwrap();
    loop {
        if w.done || qemu::interrupted() {
            w.done = true;
            changed.notify_all();
            return None;
        }
        let running = w.running;
        let Workers { feed, finished, .. } = &mut *w;
        match feed.next(finished, running) {
            Next::Run(cell) => {
                w.running += 1;
                return Some(cell);
            }
            Next::Done => {
                w.done = true;
                changed.notify_all();
                return None;
            }
            // Only a finishing cell can change the feed's mind; with none running, it never will.
            Next::Wait if running == 0 => {
                w.done = true;
                changed.notify_all();
                return None;
            }
            Next::Wait => {
                // Woken when a cell finishes; the timeout only re-checks for an interrupt.
                w = changed
                    .wait_timeout(w, std::time::Duration::from_millis(500))
                    .unwrap()
                    .0;
            }
        }
    }
}

/// A fixed list of cells, in order.
struct Queue(std::collections::VecDeque<Cell>);

impl Feed for Queue {
    fn next(&mut self, _: &[CellRecord], _: usize) -> Next {
        match self.0.pop_front() {
            Some(cell) => Next::Run(cell),
            None => Next::Done,
        }
    }
}

/// The plan the payload follows in this cell. Its frames go to the guest side of the results
/// port of the image's machine (`xtask/machines.yaml`), else the console.
pub fn plan_for(cell: &Cell) -> Plan {
    let machine = qemu::MachineKind::direct(cell.image.boot.machine).spec();
    let results_device = match &machine.results_port {
        Some(port) => port.guest.clone(),
        None => "/dev/console".into(),
    };
    Plan {
        cell: cell.id.clone(),
        results_device,
        heartbeat_ms: kstorm_payload::plan::DEFAULT_HEARTBEAT_MS,
        sysctl: cell
            .variant
            .sysctl
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        vmstat: match cell.image.route() {
            kstorm_payload::registry::Route::LinuxPayload => {
                crate::config::vmstat::counters().to_vec()
            }
            _ => Vec::new(),
        },
        scenarios: vec![ScenarioSpec {
            name: cell.case.scenario.0.clone(),
            params: cell.params.clone(),
        }],
    }
}
