//! `cargo xtask bench real-bisect`: a real bisection, timed end to end. A git repository is
//! made from Debian's `linux-source-6.1` with the patches of `xtask/bench-data/real-bisect/`
//! as commits (one plants a flaky crash on the exit path), the pristine commit is built cold
//! (tinyconfig + `kstorm.config`), then `git bisect run xtask bisect-run --kernel-tree` runs
//! between the pristine source and the last patch, each step's kernel built by make in the one
//! build folder of this tree and configuration. It must land on the planted commit; it prints
//! per step the runs and their mean `total_s`, the build time and the wall time.

use super::log::{BisectLog, RunEntry, Step};
use crate::host::{self, Cmd};
use crate::images::kernel_tree::{self, BuildRecord, TreeSpec};
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `bench-data/real-bisect/bisect.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BenchPlan {
    package: String,
    tarball: PathBuf,
    base: String,
    patches: Vec<String>,
    culprit: String,
    suite: String,
    filter: String,
    title: String,
}

/// The repository: its pristine commit and one commit per patch, in order.
struct Repo {
    path: PathBuf,
    base: String,
    commits: Vec<(String, String)>,
}

fn data_dir() -> PathBuf {
    host::workspace_root().join("xtask/bench-data/real-bisect")
}

fn load_plan(dir: &Path) -> Result<BenchPlan> {
    let path = dir.join("bisect.yaml");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let plan: BenchPlan =
        serde_saphyr::from_str(&text).with_context(|| format!("{}", path.display()))?;
    if !plan.patches.contains(&plan.culprit) {
        bail!(
            "{}: culprit {} is not one of the patches",
            path.display(),
            plan.culprit
        );
    }
    Ok(plan)
}

pub fn bench(work: Option<PathBuf>) -> Result<()> {
    let started = Instant::now();
    let data = data_dir();
    let plan = load_plan(&data)?;
    host::packages::ensure_for_bench("real-bisect")?;
    if !plan.tarball.is_file() {
        bail!(
            "{} is missing: install Debian's {} (apt-get install {})",
            plan.tarball.display(),
            plan.package,
            plan.package
        );
    }
    check_cell(&plan, &data)?;
    let work = work.unwrap_or_else(|| host::workspace_root().join("target/real-bisect"));
    let t = Instant::now();
    let repo = prepare_repo(&plan, &data, &work)?;
    println!(
        "repository {}: {} commits over {} ({:.0}s to prepare)",
        repo.path.display(),
        repo.commits.len(),
        plan.package,
        t.elapsed().as_secs_f64()
    );
    let cold = cold_build(&plan, &repo)?;
    let (first_bad, log, bisect_s) = bisect(&plan, &data, &repo, &work)?;
    report(&repo, &cold, &log, bisect_s)?;
    check_rebuilt(&repo, &log)?;
    check_runs_end_promptly(&log)?;
    let culprit = culprit_commit(&plan, &repo);
    println!(
        "bench real-bisect: {} commits, {} steps, bisection {:.0}s, whole bench {:.0}s",
        repo.commits.len(),
        log.steps.len(),
        bisect_s,
        started.elapsed().as_secs_f64()
    );
    if first_bad != culprit {
        bail!(
            "the bisection named {first_bad} ({}), the planted bug is {culprit} ({})",
            subject(&repo, &first_bad),
            plan.culprit
        );
    }
    println!(
        "landed on the planted commit {culprit} ({})",
        subject(&repo, &culprit)
    );
    Ok(())
}

/// The bench's suite loads and its filter selects one cell, before anything is built.
fn check_cell(plan: &BenchPlan, data: &Path) -> Result<()> {
    let catalog = crate::config::Catalog::load(&host::workspace_root())?;
    let suite = catalog.resolve_suite(&data.join(&plan.suite).display().to_string())?;
    let sel = crate::matrix::Selection {
        filters: vec![plan.filter.clone()],
        ..Default::default()
    };
    let cells = crate::matrix::expand(&suite, &catalog, &sel)?;
    if cells.len() != 1 {
        bail!(
            "{}: --filter {} selects {} cells, not one",
            plan.suite,
            plan.filter,
            cells.len()
        );
    }
    Ok(())
}

fn git(repo: &Path) -> Cmd {
    Cmd::new("git")
        .arg("-C")
        .arg(repo)
        .timeout(Duration::from_secs(30 * 60))
}

/// `git` committing as the bench.
fn committer(repo: &Path) -> Cmd {
    let who = ["user.name=kstorm bench", "user.email=bench@kstorm.invalid"];
    git(repo).args(who.iter().flat_map(|w| ["-c", w]))
}

/// Reuses `work/linux-6.1` when it holds exactly the pristine commit and the patches; else
/// unpacks the tarball and commits the source and each patch (`git am`).
fn prepare_repo(plan: &BenchPlan, data: &Path, work: &Path) -> Result<Repo> {
    let path = work.join("linux-6.1");
    if let Some(repo) = existing_repo(plan, &path) {
        return Ok(repo);
    }
    let tmp = work.join("linux-6.1.tmp");
    for dir in [&path, &tmp] {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
    }
    std::fs::create_dir_all(&tmp)?;
    Cmd::new("tar")
        .arg("-xf")
        .arg(&plan.tarball)
        .arg("-C")
        .arg(&tmp)
        .arg("--strip-components=1")
        .timeout(Duration::from_secs(30 * 60))
        .run()?;
    let when = "2026-11-10T10:00:00Z";
    git(&tmp).args(["init", "-q", "."]).run()?;
    git(&tmp).args(["config", "gc.auto", "0"]).run()?;
    // Debian's .gitignore ignores everything at the top level (its packaging's repository).
    git(&tmp).args(["add", "-A", "-f"]).run()?;
    committer(&tmp)
        .args(["commit", "-q", "-m", &format!("Debian {}", plan.package)])
        .env("GIT_AUTHOR_DATE", when)
        .env("GIT_COMMITTER_DATE", when)
        .run()?;
    committer(&tmp)
        .args(["am", "-q", "--committer-date-is-author-date"])
        .args(plan.patches.iter().map(|p| data.join(p)))
        .run()?;
    host::write_atomic(&tmp.join(PATCHES_MARK), patches_digest(plan).as_bytes())?;
    std::fs::rename(&tmp, &path)?;
    existing_repo(plan, &path).context("the new repository does not hold the patches")
}

/// Where a repository made by the bench records the digest of the patches it was made from.
const PATCHES_MARK: &str = ".git/kstorm-patches.sha256";

/// The patches' contents, so an edited patch (same subject, other code) makes a new repository.
fn patches_digest(plan: &BenchPlan) -> String {
    let mut all = Vec::new();
    for p in &plan.patches {
        all.extend_from_slice(p.as_bytes());
        all.extend(std::fs::read(data_dir().join(p)).unwrap_or_default());
    }
    host::sha256_hex(&all)
}

/// The repository at `path` when its history is the pristine commit and then one commit per
/// patch, with the patches' subjects, made from these very patches, and its work tree is clean.
fn existing_repo(plan: &BenchPlan, path: &Path) -> Option<Repo> {
    let mark = std::fs::read_to_string(path.join(PATCHES_MARK)).ok()?;
    if mark != patches_digest(plan) {
        return None;
    }
    let read = |args: &[&str]| git(path).args(args).read().ok();
    let log = read(&["log", "--reverse", "--format=%H %s", "master"])?;
    let lines: Vec<(String, String)> = log
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(h, s)| (h.to_string(), s.to_string()))
        .collect();
    let (base, commits) = lines.split_first()?;
    let subjects_match = commits.len() == plan.patches.len()
        && commits
            .iter()
            .zip(&plan.patches)
            .all(|((_, s), p)| patch_subject(&data_dir().join(p)).as_deref() == Some(s));
    let clean = read(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    (subjects_match && clean).then(|| Repo {
        path: path.to_path_buf(),
        base: base.0.clone(),
        commits: commits.to_vec(),
    })
}

/// The `Subject:` of a `git format-patch` file, without its `[PATCH n/m]`.
fn patch_subject(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find_map(|l| l.strip_prefix("Subject: "))?;
    let line = match line.strip_prefix('[') {
        Some(rest) => rest.split_once("] ")?.1,
        None => line,
    };
    Some(line.trim().to_string())
}

fn culprit_commit(plan: &BenchPlan, repo: &Repo) -> String {
    let i = plan.patches.iter().position(|p| *p == plan.culprit);
    i.map(|i| repo.commits[i].0.clone()).unwrap_or_default()
}

fn subject(repo: &Repo, commit: &str) -> String {
    let found = repo.commits.iter().find(|(h, _)| h == commit);
    found.map_or_else(|| "not a patch".into(), |(_, s)| s.clone())
}

fn spec(plan: &BenchPlan, repo: &Repo) -> TreeSpec {
    TreeSpec {
        path: repo.path.clone(),
        base: plan.base.clone(),
        fragments: vec![host::workspace_root().join("images/kconfig/kstorm.config")],
    }
}

/// Builds the pristine commit, the good end of the bisection: from scratch the first time (the
/// cold build), found in the cache on later runs.
fn cold_build(plan: &BenchPlan, repo: &Repo) -> Result<BuildRecord> {
    git(&repo.path)
        .args(["checkout", "-q", "--detach", &repo.base])
        .run()?;
    println!(
        "building the pristine commit {} ({} + kstorm.config)",
        repo.base, plan.base
    );
    let (_, record) = kernel_tree::build_recorded(&spec(plan, repo), &host::cache_dir())?;
    let how = match record.cached {
        true => "measured by an earlier run; its kernel is in the cache".into(),
        false => record.how(),
    };
    println!("cold build: {:.0}s ({how})", record.build_s);
    Ok(record)
}

/// `git bisect start LAST PRISTINE` and `git bisect run xtask bisect-run ...`; returns the
/// first bad commit, the step log and the bisection's wall time.
fn bisect(
    plan: &BenchPlan,
    data: &Path,
    repo: &Repo,
    work: &Path,
) -> Result<(String, BisectLog, f64)> {
    let last = &repo.commits.last().context("no patches")?.0;
    let id = format!("real-{}", chrono::Local::now().format("%Y%m%d-%H%M%S"));
    let results = work.join("results");
    git(&repo.path).args(["bisect", "reset"]).run().ok();
    git(&repo.path)
        .args(["bisect", "start", last, &repo.base])
        .run()?;
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    let ran = git(&repo.path)
        .args(["bisect", "run"])
        .arg(&exe)
        .args([
            "bisect-run",
            "--filter",
            &plan.filter,
            "--title",
            &plan.title,
        ])
        .arg("--suite")
        .arg(data.join(&plan.suite))
        .arg("--kernel-tree")
        .arg(&repo.path)
        .arg("--results")
        .arg(&results)
        .args(["--id", &id])
        .timeout(Duration::from_secs(4 * 3600))
        .run();
    let bisect_s = started.elapsed().as_secs_f64();
    let first_bad = git(&repo.path)
        .args(["rev-parse", "refs/bisect/bad"])
        .read();
    git(&repo.path).args(["bisect", "reset"]).run().ok();
    ran.context("git bisect run")?;
    let log_path = results.join(format!("bisect-{id}/bisect.json"));
    let log = BisectLog::load(&log_path, &id)?;
    Ok((first_bad?.trim().to_string(), log, bisect_s))
}

/// One line per step: the commit, its decision, runs and their mean `total_s`, build time and
/// how it was built, wall time; then the builds against the cold one.
fn report(repo: &Repo, cold: &BuildRecord, log: &BisectLog, bisect_s: f64) -> Result<()> {
    println!(
        "{:<4} {:<12} {:<40} {:>8} {:>4} {:>8} {:>7} {:>6}  build",
        "step", "commit", "subject", "decision", "runs", "total_s", "build s", "wall s"
    );
    let mut all_runs = Vec::new();
    for (i, s) in log.steps.iter().enumerate() {
        let totals = run_totals(s)?;
        let (build_s, how) = match &s.build {
            Some(b) => (b.build_s, b.how()),
            None => (f64::NAN, "-".into()),
        };
        println!(
            "{:<4} {:<12} {:<40.40} {:>8} {:>4} {:>8.2} {build_s:>7.0} {:>6.0}  {how}",
            i + 1,
            &s.commit[..12.min(s.commit.len())],
            subject(repo, &s.commit),
            decision_word(s),
            s.tally.attempts,
            mean(&totals),
            s.wall_s
        );
        all_runs.extend(totals);
    }
    let incremental: Vec<f64> = incremental_builds(log).map(|b| b.build_s).collect();
    let worst = incremental.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "kernel build: cold {:.0}s; incremental {} builds, mean {:.0}s, worst {:.0}s \
         (worst / cold {:.2}, target <= 0.30)",
        cold.build_s,
        incremental.len(),
        mean(&incremental),
        worst,
        worst / cold.build_s
    );
    let slowest = all_runs.iter().copied().fold(f64::NAN, f64::max);
    println!(
        "runs: {} over {} steps, total_s mean {:.2}s, slowest {:.2}s (target <= 3 s); \
         bisection {bisect_s:.0}s after the cold build",
        all_runs.len(),
        log.steps.len(),
        mean(&all_runs),
        slowest
    );
    Ok(())
}

fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// The builds a bisection step made in a folder that had built another commit before.
fn incremental_builds(log: &BisectLog) -> impl Iterator<Item = &BuildRecord> {
    log.steps
        .iter()
        .filter_map(|s| s.build.as_ref())
        .filter(|b| !b.cached && b.built_over.is_some())
}

/// Each run's `total_s` (QEMU start to QEMU gone) of one step, read from its results.
fn run_totals(step: &Step) -> Result<Vec<f64>> {
    let mut totals = Vec::new();
    for run in &step.runs {
        totals.extend(run_total(run)?);
    }
    Ok(totals)
}

/// `None` for a run that left no results (the harness failed before the cell). A run's folder is
/// its cell's folder in the commit's run.
fn run_total(run: &RunEntry) -> Result<Option<f64>> {
    if run.dir.is_empty() {
        return Ok(None);
    }
    let path = Path::new(&run.dir).join(crate::results::RECORD_FILE);
    let record: crate::cell::CellRecord = crate::results::read_json(&path)?;
    Ok(Some(record.timings.total_s))
}

/// A passing run that still took the power-off grace: its guest stopped in a way the cell
/// runner did not notice, and every run of a bisection would pay for it.
fn check_runs_end_promptly(log: &BisectLog) -> Result<()> {
    let grace = crate::cell::monitor::POWEROFF_GRACE.as_secs_f64();
    for run in log.steps.iter().flat_map(|s| &s.runs) {
        let Some(total) = run_total(run)? else {
            continue;
        };
        if run.verdict == "pass" && total >= grace {
            bail!(
                "{}: the cell took {total:.1}s, the power-off grace ({grace:.0}s) ran out: \
                 the guest's stop went unnoticed",
                run.dir
            );
        }
    }
    Ok(())
}

fn decision_word(s: &Step) -> &'static str {
    match s.exit_code {
        0 => "good",
        1 => "bad",
        125 => "skip",
        _ => "abort",
    }
}

/// For every incremental build: each C file that differs between the commit the folder held
/// before and the step's commit has its object rebuilt by this build (make's mtime check after
/// `git checkout` is the whole mechanism), and the number of objects compiled is printed.
fn check_rebuilt(repo: &Repo, log: &BisectLog) -> Result<()> {
    for b in incremental_builds(log) {
        let before = b.built_over.as_ref().context("an incremental build")?;
        let changed = git(&repo.path)
            .args([
                "diff",
                "--name-only",
                &before.commit,
                &b.commit,
                "--",
                "*.c",
            ])
            .read()?;
        let mut rebuilt = Vec::new();
        for c in changed.lines() {
            let object = b.build_dir.join(Path::new(c).with_extension("o"));
            let Ok(meta) = std::fs::metadata(&object) else {
                continue; // not part of this configuration
            };
            let built = meta.modified()?.duration_since(std::time::UNIX_EPOCH)?;
            if built.as_secs_f64() <= b.started_unix {
                bail!(
                    "{}: {c} changed since {} but its object was not rebuilt",
                    b.build_dir.display(),
                    before.commit
                );
            }
            rebuilt.push(c.to_string());
        }
        let newer = Cmd::new("find")
            .arg(&b.build_dir)
            .args(["-name", "*.o", "-newermt", &format!("@{}", b.started_unix)])
            .read()?;
        println!(
            "build of {}: {} objects compiled; changed C files rebuilt: {}",
            &b.commit[..12],
            newer.lines().count(),
            if rebuilt.is_empty() {
                "none in this configuration".to_string()
            } else {
                rebuilt.join(", ")
            }
        );
    }
    Ok(())
}
