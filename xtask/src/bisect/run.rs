//! One `git bisect run` step: run one cell under [`super::rule`] on the commit checked out,
//! print every run and the decision, append the step to the bisection's log, and exit 0 (good),
//! 1 (bad) or 125 (skip). Problems of this command line itself exit 128, which makes
//! `git bisect run` stop instead of blaming or skipping anything.

use super::log::{BisectLog, RunEntry, Step};
use super::rule::{Decision, Rule, RunClass, SkipReason, Tally};
use crate::config::Catalog;
use crate::host;
use crate::images::kernel_tree::BuildRecord;
use crate::matrix::{self, Cell, Selection};
use crate::run::{self, AccelChoice, RunOptions};
use crate::verdict::{InfraCause, Verdict};
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
    let (decision, tally, runs) = match select_cell(a).and_then(|c| build_first(c, &mut build)) {
        Ok(cell) => {
            let dir = root.join(&commit);
            let known = title.is_some();
            let Some(r) = judge_commit(&rule, &cell, a, &dir, &mut title) else {
                eprintln!("kstorm: interrupted: the bisection stops here");
                return ABORT;
            };
            if !known && title.is_some() {
                title_from = Some(format!("first crash, at commit {commit}"));
            }
            r
        }
        Err(e) => {
            println!("commit {commit}: the suite or the kernel does not load or build here ({e:#}): skip");
            (
                Decision::Skip(SkipReason::BuildFailure),
                Tally::default(),
                Vec::new(),
            )
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

/// The one cell of this commit's suite, with the kernel in place. Any error here is the
/// commit's (its suite, its kernel path), so the caller skips the commit.
fn select_cell(a: &BisectArgs) -> anyhow::Result<Cell> {
    let catalog = Catalog::load(&host::workspace_root())?;
    let suite = catalog.resolve_suite(&a.suite)?;
    let sel = Selection {
        filters: vec![a.filter.clone()],
        ..Selection::default()
    };
    let cells = matrix::expand(&suite, &catalog, &sel)?;
    let mut cells = crate::images::local::apply(cells, a.kernel.as_deref())?;
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
    match cells.len() {
        1 => Ok(cells.remove(0)),
        n => anyhow::bail!("--filter {:?} selects {n} cells, not one", a.filter),
    }
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

/// Runs `cell` until the rule decides. `None` when interrupted.
fn judge_commit(
    rule: &Rule,
    cell: &Cell,
    a: &BisectArgs,
    dir: &Path,
    title: &mut Option<String>,
) -> Option<(Decision, Tally, Vec<RunEntry>)> {
    let mut tally = Tally::default();
    let mut runs = Vec::new();
    loop {
        let n = tally.attempts + 1;
        let mut opts = RunOptions::new(&a.suite);
        opts.jobs = 1;
        opts.accel = a.accel;
        opts.progress = false;
        opts.results_root = dir.join(format!("run-{n:02}"));
        let (verdict, hello, where_) = match run::run_cells(&cell.suite, vec![cell.clone()], &opts)
        {
            Ok(out) if crate::qemu::interrupted() || !out.complete => return None,
            Ok(out) => {
                let r = &out.records[0];
                (
                    r.verdict.clone(),
                    r.hello.is_some(),
                    out.dir.root.display().to_string(),
                )
            }
            Err(e) => (
                Verdict::from_error(&e, InfraCause::Harness),
                false,
                String::new(),
            ),
        };
        let class = classify(&verdict, hello, title);
        println!("run {n}: {} -> {class:?}", verdict.describe());
        runs.push(RunEntry {
            n,
            verdict: verdict.describe(),
            class,
            dir: where_,
        });
        if let Some(d) = rule.record(&mut tally, class) {
            return Some((d, tally, runs));
        }
    }
}

/// What a run's verdict says about the target crash. Without a title yet, the first crash
/// becomes the target (and its title is kept in the log for the later steps).
pub fn classify(verdict: &Verdict, booted: bool, title: &mut Option<String>) -> RunClass {
    match verdict {
        Verdict::Crash { title: t, .. } => match title {
            Some(want) if t.contains(want.as_str()) => RunClass::Target,
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
            classify(&crash("kernel panic: A"), true, &mut title),
            RunClass::Target
        );
        assert_eq!(title.as_deref(), Some("kernel panic: A"));
        assert_eq!(
            classify(&crash("kernel panic: A"), true, &mut title),
            RunClass::Target
        );
        assert_eq!(
            classify(&crash("BUG: B"), true, &mut title),
            RunClass::OtherCrash
        );
        assert_eq!(classify(&Verdict::Pass, true, &mut title), RunClass::Clean);
        let silent = Verdict::Hang {
            last_progress: None,
            scenario: None,
        };
        assert_eq!(classify(&silent, false, &mut title), RunClass::BootFailure);
        let build = Verdict::infra(InfraCause::ImageBuild, "make failed");
        assert_eq!(classify(&build, false, &mut title), RunClass::BuildFailure);
        let qemu = Verdict::infra(InfraCause::QemuStart, "x");
        assert_eq!(classify(&qemu, false, &mut title), RunClass::Infra);
    }
}
