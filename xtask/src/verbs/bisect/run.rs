//! One `git bisect run` step: run one cell under [`super::rule`] on the commit checked out,
//! print every run and the decision, append the step to the bisection's log, and exit 0 (good),
//! 1 (bad) or 125 (skip). Problems of this command line itself exit 128, which makes
//! `git bisect run` stop instead of blaming or skipping anything.

use super::log::{BisectLog, RunEntry, Step};
use super::rule::{Decision, Rule, RunClass, SkipReason, Tally};
use crate::cell::CellRecord;
use crate::config::Catalog;
use crate::detect::title::CrashTitles;
use crate::error::{InfraCause, UsageError};
use crate::host;
use crate::images::kernel_tree::BuildRecord;
use crate::matrix::{self, Cell, Selection};
use crate::results::{RunInfo, Store};
use crate::session::{AccelChoice, Feed, Next, Session, SessionOptions};
use crate::verdict::Verdict;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Exit code that makes `git bisect run` abort.
pub const ABORT: i32 = 128;

#[derive(Debug, Clone, clap::Args)]
pub struct BisectArgs {
    /// Suite name or path (read at each commit: a suite that does not load skips the commit).
    #[arg(long)]
    pub suite: String,
    /// The cell to run: text its id contains (it must select exactly one cell).
    #[arg(long)]
    pub filter: String,
    /// The kernel to boot in place of the image's (resolved at each commit).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// A Linux source tree to build (out of tree, into the cache) and boot; its HEAD names the
    /// step. A build failure skips the commit.
    #[arg(long, conflicts_with = "kernel")]
    pub kernel_tree: Option<PathBuf>,
    /// The tree's base configuration: tinyconfig, defconfig or a .config file.
    #[arg(long, default_value = "tinyconfig")]
    pub base: String,
    /// Config fragments merged over the base (default: images/kconfig/kstorm.config).
    #[arg(long = "config")]
    pub fragments: Vec<PathBuf>,
    /// Attempts per commit, retries included (default: twice the clean runs needed, plus 10).
    #[arg(long)]
    pub max_runs: Option<u32>,
    /// The crash title being bisected (a substring); default: the first crash's title.
    #[arg(long)]
    pub title: Option<String>,
    /// Least probability that a run of a bad commit reproduces the crash.
    #[arg(long, default_value_t = 0.3)]
    pub p: f64,
    /// Bound on the probability of calling a bad commit good.
    #[arg(long, default_value_t = 0.001)]
    pub alpha: f64,
    /// Bisection id (default: from the repository's BISECT_START).
    #[arg(long)]
    pub id: Option<String>,
    /// Where results go (default: results/ in the workspace).
    #[arg(long)]
    pub results: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    pub accel: AccelChoice,
    /// Runs of the step at once (the rule and its error bound are unchanged: a target crash in
    /// any run makes the step bad, clean runs add up).
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Record the runs with QEMU's record/replay: the replay of a crashing run is kept (in its
    /// cell folder under the step's), so the bad commit comes with a crash that replays.
    #[arg(long)]
    pub record: bool,
}

/// Runs one step; returns the exit code.
pub fn bisect_run(a: &BisectArgs) -> i32 {
    let rule = match Rule::new(a.p, a.alpha, a.max_runs) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kstorm: usage error: --p/--alpha/--max-runs: {e}");
            return ABORT;
        }
    };
    let repo = a.kernel_tree.clone().unwrap_or_else(|| PathBuf::from("."));
    let (commit, describe) = crate::images::local::git_identity(&repo)
        .unwrap_or_else(|| ("no-commit".into(), "no-commit".into()));
    let id = a.id.clone().unwrap_or_else(|| bisection_id(&repo));
    let root = a
        .results
        .clone()
        .unwrap_or_else(|| host::workspace_root().join("results"))
        .join(format!("bisect-{id}"));
    let log_path = root.join("bisect.json");
    let log = match BisectLog::load(&log_path, &id) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("kstorm: error: {e:#}");
            return ABORT;
        }
    };
    let mut title = a.title.clone().or(log.title.clone());
    let mut title_from = a
        .title
        .as_ref()
        .map(|_| "--title".to_string())
        .or(log.title_from);
    println!(
        "bisect {id}: commit {commit} ({describe}), step {}",
        log.steps.len() + 1
    );
    println!("{}", rule.describe(6));
    match &title {
        Some(t) => println!("target crash: title contains {t:?}"),
        None => println!("target crash: the first crash seen (give --title to name it)"),
    }
    let started = Instant::now();
    let mut build = None;
    let first_step = log.steps.is_empty();
    let judged = select_cell(a).and_then(|c| match build_first(c, &mut build) {
        Ok(cell) => Ok(cell),
        Err(e) => Err(NotHere::Build(e)),
    });
    let (decision, tally, runs) = match judged {
        Ok(cell) => {
            let dir = root.join(&commit);
            let known = title.is_some();
            let r = match judge_commit(&rule, &cell, a, &dir, &mut title) {
                Ok(Some(r)) => r,
                Ok(None) => {
                    eprintln!("kstorm: interrupted: the bisection stops here");
                    return ABORT;
                }
                // The host cannot run cells at all (no QEMU, a results folder it cannot
                // write): no commit can be judged, so the bisection stops.
                Err(e) => {
                    eprintln!("kstorm: error: {e:#}\nkstorm: the bisection stops here");
                    return ABORT;
                }
            };
            if !known && title.is_some() {
                title_from = Some(format!("first crash, at commit {commit}"));
            }
            r
        }
        // At the first step a selection or suite that does not work is the command line's
        // fault: skipping would make `git bisect run` skip every commit.
        Err(NotHere::Selection(e)) | Err(NotHere::DoesNotLoad(e)) if first_step => {
            eprintln!("kstorm: usage error: {e:#}\nkstorm: the bisection stops here");
            return ABORT;
        }
        Err(not_here) => {
            let (reason, e) = not_here.reason();
            println!("commit {commit}: {e:#}: skip ({reason:?})");
            (Decision::Skip(reason), Tally::default(), Vec::new())
        }
    };
    let step = Step {
        commit: commit.clone(),
        describe,
        rule,
        decision,
        exit_code: decision.exit_code(),
        tally,
        runs,
        build,
        wall_s: started.elapsed().as_secs_f64(),
    };
    let wall = step.wall_s;
    if let Err(e) = BisectLog::append(&log_path, &id, (&title, &title_from), step) {
        eprintln!("kstorm: error: writing {}: {e:#}", log_path.display());
        return ABORT;
    }
    println!(
        "commit {commit}: {decision:?} after {} runs ({} clean, {} unrelated crashes, {} infra) \
         in {wall:.1}s -> exit {}; log {}",
        tally.attempts,
        tally.clean,
        tally.other,
        tally.infra,
        decision.exit_code(),
        log_path.display()
    );
    decision.exit_code()
}

/// Why a commit cannot be judged.
enum NotHere {
    /// `--filter` selects no cell, or several, in this commit's suite.
    Selection(anyhow::Error),
    /// The suite does not load at this commit.
    DoesNotLoad(anyhow::Error),
    /// The kernel tree does not build, or `--kernel` names no kernel at this commit.
    Build(anyhow::Error),
}

impl NotHere {
    fn reason(self) -> (SkipReason, anyhow::Error) {
        match self {
            NotHere::Selection(e) => (SkipReason::NoCell, e),
            NotHere::DoesNotLoad(e) => (SkipReason::DoesNotLoad, e),
            NotHere::Build(e) => (SkipReason::BuildFailure, e),
        }
    }
}

/// The one cell of this commit's suite, with the kernel in place.
fn select_cell(a: &BisectArgs) -> Result<Cell, NotHere> {
    // The whole matrix, then the filter: a filter that matches nothing is a selection problem,
    // not a suite that does not load.
    let cells = (|| {
        let catalog = Catalog::load(&host::workspace_root())?;
        let suite = catalog.resolve_suite(&a.suite)?;
        let mut cells = matrix::expand(&suite, &catalog, &Selection::default())?;
        cells.retain(|c| c.id.contains(a.filter.as_str()));
        if a.record {
            cells.iter_mut().try_for_each(matrix::record_cell)?;
        }
        anyhow::Ok(cells)
    })()
    .map_err(NotHere::DoesNotLoad)?;
    // A `--kernel` that is missing or no kernel at this commit is what a failed build leaves
    // (`make; xtask bisect-run --kernel vmlinux`): the commit is skipped, at any step.
    let cells = crate::images::local::apply(cells, a.kernel.as_deref())
        .map_err(|e| NotHere::Build(anyhow::Error::from(e)))?;
    let mut cells = with_tree(cells, a).map_err(NotHere::DoesNotLoad)?;
    match cells.len() {
        1 => Ok(cells.remove(0)),
        n => Err(NotHere::Selection(
            UsageError::option(
                "--filter",
                format!(
                    "{:?} selects {n} cells of suite {}, not one",
                    a.filter, a.suite
                ),
            )
            .into(),
        )),
    }
}

/// With `--kernel-tree`, the cells boot the tree's build.
fn with_tree(mut cells: Vec<Cell>, a: &BisectArgs) -> anyhow::Result<Vec<Cell>> {
    if let Some(tree) = &a.kernel_tree {
        let default = host::workspace_root().join("images/kconfig/kstorm.config");
        let config = match a.fragments.is_empty() {
            true => vec![default],
            false => a
                .fragments
                .iter()
                .map(|f| std::path::absolute(f).unwrap_or(f.clone()))
                .collect(),
        };
        for c in &mut cells {
            c.image.source = crate::config::Source::KernelTree {
                path: std::path::absolute(tree)?,
                base: a.base.clone(),
                config: config.clone(),
            };
        }
    }
    Ok(cells)
}

/// Builds the cell's kernel tree before the first run, so that the build is timed on its own
/// and a build failure skips the commit before anything boots. The runs then find it built.
fn build_first(cell: Cell, record: &mut Option<BuildRecord>) -> anyhow::Result<Cell> {
    let crate::config::Source::KernelTree { path, base, config } = &cell.image.source else {
        return Ok(cell);
    };
    let spec = crate::images::kernel_tree::TreeSpec {
        path: path.clone(),
        base: base.clone(),
        fragments: config.clone(),
    };
    println!(
        "building {} ({base} + {} fragments)",
        path.display(),
        config.len()
    );
    let (_, built) = crate::images::kernel_tree::build_recorded(&spec, &host::cache_dir())?;
    println!(
        "kernel built in {:.1}s, {}: {}",
        built.build_s,
        built.how(),
        built.dir.display()
    );
    *record = Some(built);
    Ok(cell)
}

/// Runs `cell` until the rule decides, `--jobs` runs at a time, in one session and one run
/// folder for the commit (`dir`). `None` when interrupted.
fn judge_commit(
    rule: &Rule,
    cell: &Cell,
    a: &BisectArgs,
    dir: &Path,
    title: &mut Option<String>,
) -> anyhow::Result<Option<(Decision, Tally, Vec<RunEntry>)>> {
    let opts = SessionOptions {
        jobs: a.jobs,
        accel: a.accel,
        progress: false,
        ..SessionOptions::default()
    };
    let mut info = RunInfo::new(
        "bisect-run",
        &cell.suite,
        std::env::args().skip(1).collect(),
    );
    info.cells_planned = rule.clean_needed as usize;
    if dir.exists() {
        // The same commit judged again (a bisection restarted): its old runs are not evidence.
        std::fs::remove_dir_all(dir)?;
    }
    let session = Session::prepare(std::slice::from_ref(cell), opts)?;
    let store = Store::create_at(dir, info)?;
    session.stamp(&store)?;
    let mut feed = RuleFeed {
        rule,
        template: cell,
        title: title.clone(),
        tally: Tally::default(),
        runs: Vec::new(),
        started: 0,
        seen: 0,
        decision: None,
        root: store.root().to_path_buf(),
    };
    session.run_fed(&mut feed, rule.clean_needed as usize, &store);
    store.finish(feed.decision.is_some())?;
    // Recorded runs keep their replay only when they crashed (or were not as expected).
    for r in store.records().iter().filter(|r| r.replay.is_some()) {
        println!(
            "replay kept: cargo xtask replay {}",
            store.cell_dir(&r.id).display()
        );
    }
    *title = feed.title.clone();
    Ok(feed.decision.map(|d| (d, feed.tally, feed.runs)))
}

/// The rule as a session's feed: starts runs while the rule can still need them, reads the
/// finished ones in the order they ended, and stops once it has decided and every run it
/// started is in (a target crash in a run still going when "good" was reached makes it bad).
struct RuleFeed<'a> {
    rule: &'a Rule,
    template: &'a Cell,
    title: Option<String>,
    tally: Tally,
    runs: Vec<RunEntry>,
    /// Runs started so far.
    started: u32,
    /// Records already read.
    seen: usize,
    decision: Option<Decision>,
    root: PathBuf,
}

impl Feed for RuleFeed<'_> {
    fn next(&mut self, finished: &[CellRecord], running: usize) -> Next {
        for r in &finished[self.seen..] {
            self.read(r);
        }
        self.seen = finished.len();
        if self.decision.is_some() {
            return if running == 0 { Next::Done } else { Next::Wait };
        }
        let pending = self.tally.clean + running as u32;
        let budget_left = self.tally.attempts + (running as u32) < self.rule.max_runs;
        // Clean runs already in flight may be all the rule needs: wait for them.
        if pending >= self.rule.clean_needed || !budget_left {
            return Next::Wait;
        }
        self.started += 1;
        let mut cell = self.template.clone();
        cell.id = format!("{}.run-{:02}", self.template.id, self.started);
        Next::Run(cell)
    }
}

impl RuleFeed<'_> {
    /// One finished run: its class printed, logged and counted; after a decision, only a target
    /// crash still counts (it turns the decision to bad).
    fn read(&mut self, r: &CellRecord) {
        let alts = crate::detect::Summary::of(&r.reports)
            .crash
            .map(|e| e.alt_titles)
            .unwrap_or_default();
        let class = classify(&r.verdict, &alts, r.hello.is_some(), &mut self.title);
        let n = self.runs.len() as u32 + 1;
        println!("run {n}: {} -> {class:?}", r.verdict.describe());
        self.runs.push(RunEntry {
            n,
            verdict: r.verdict.describe(),
            class,
            dir: self.root.join("cells").join(&r.id).display().to_string(),
        });
        match self.decision {
            None => self.decision = self.rule.record(&mut self.tally, class),
            Some(_) if class == RunClass::Target => {
                self.tally.attempts += 1;
                self.decision = Some(Decision::Bad);
            }
            Some(_) => self.tally.attempts += 1,
        }
    }
}

/// What a run's verdict says about the target crash: its title, or one of the alternative
/// titles of the same bug (`alts`, from the detector), contains the target. Without a title
/// yet, the first crash becomes the target (and its title is kept in the log for later steps).
pub fn classify(
    verdict: &Verdict,
    alts: &[String],
    booted: bool,
    title: &mut Option<String>,
) -> RunClass {
    match verdict {
        Verdict::Crash { title: t, .. } => match title {
            Some(want) if CrashTitles::new(t, alts).mentions(want) => RunClass::Target,
            Some(_) => RunClass::OtherCrash,
            None => {
                *title = Some(t.clone());
                RunClass::Target
            }
        },
        Verdict::Infra {
            cause: InfraCause::ImageBuild,
            ..
        } => RunClass::BuildFailure,
        Verdict::Infra { .. } => RunClass::Infra,
        // Silence before the payload said hello: the kernel booted to nothing.
        Verdict::Hang { .. } if !booted => RunClass::BootFailure,
        _ => RunClass::Clean,
    }
}

/// A stable id for the bisection in progress in `repo`: a hash of its `BISECT_START` file
/// (written once by `git bisect start`), else of the repository path.
fn bisection_id(repo: &Path) -> String {
    let start = std::process::Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["rev-parse", "--absolute-git-dir"])
        .output()
        .ok()
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()).join("BISECT_START"));
    let key = start
        .and_then(|p| {
            let modified = std::fs::metadata(&p).ok()?.modified().ok()?;
            Some(format!("{}{modified:?}", p.display()))
        })
        .unwrap_or_else(|| {
            std::path::absolute(repo)
                .unwrap_or_default()
                .display()
                .to_string()
        });
    crate::host::sha256_hex(key.as_bytes())[..12].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_crash_blames() {
        let kind = crate::detect::Kind::Panic;
        let crash = |t: &str| Verdict::Crash {
            kind,
            title: t.into(),
        };
        let mut title = None;
        // No title yet: the first crash becomes the target.
        assert_eq!(
            classify(&crash("kernel panic: A"), &[], true, &mut title),
            RunClass::Target
        );
        assert_eq!(title.as_deref(), Some("kernel panic: A"));
        assert_eq!(
            classify(&crash("kernel panic: A"), &[], true, &mut title),
            RunClass::Target
        );
        assert_eq!(
            classify(&crash("BUG: B"), &[], true, &mut title),
            RunClass::OtherCrash
        );
        assert_eq!(
            classify(&Verdict::Pass, &[], true, &mut title),
            RunClass::Clean
        );
        let silent = Verdict::Hang {
            last_progress: None,
            scenario: None,
        };
        assert_eq!(
            classify(&silent, &[], false, &mut title),
            RunClass::BootFailure
        );
        let build = Verdict::infra(InfraCause::ImageBuild, "make failed");
        assert_eq!(
            classify(&build, &[], false, &mut title),
            RunClass::BuildFailure
        );
        let qemu = Verdict::infra(InfraCause::QemuStart, "x");
        assert_eq!(classify(&qemu, &[], false, &mut title), RunClass::Infra);
    }

    #[test]
    fn the_same_bug_under_an_alternative_title_blames() {
        let crash = Verdict::Crash {
            kind: crate::detect::Kind::GeneralProtectionFault,
            title: "general protection fault in f".into(),
        };
        let mut title = Some("bad-access in f".to_string());
        assert_eq!(
            classify(&crash, &[], true, &mut title),
            RunClass::OtherCrash
        );
        let alts = ["bad-access in f".to_string()];
        assert_eq!(classify(&crash, &alts, true, &mut title), RunClass::Target);
        // Still a substring: part of an alternative names it too.
        let mut part = Some("bad-access".to_string());
        assert_eq!(classify(&crash, &alts, true, &mut part), RunClass::Target);
    }
}
