//! The GitLab pipeline, `ci/gitlab-ci.yml` as it is, run for real on this machine by
//! gitlab-ci-local (shell executor, every job in its own copy of the project): a scheduled
//! pipeline's `nightly` shards (`parallel: matrix`) and its `merge` (`needs`, the shards'
//! artifacts), on two small suites chosen with the pipeline variable KSTORM_SUITES. The merge
//! must hold exactly the cells of an unsharded run of the same suites, with the same verdicts,
//! and the shard holding a cell with a wrong expectation must fail its job, the merge and the
//! pipeline. Full tier: boots QEMU, installs gitlab-ci-local with npm (Node.js 20, as on this
//! machine kind) into kstorm's cache on first use.

mod common;

use kstorm::matrix::Shard;
use kstorm::session::AccelChoice;
use kstorm::verbs::run::RunOptions;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use wait_timeout::ChildExt;

/// The newest gitlab-ci-local that runs on Node.js 20 (4.74 calls `Set.prototype.union`, which
/// needs Node.js 22).
const GITLAB_CI_LOCAL: &str = "4.73.0";
const SHARDS: usize = 4;
/// Bounds the whole pipeline (on an idle 2-core machine it takes about a minute).
const PIPELINE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Distinct verdicts, every cell as expected.
const PROBE: &str = "\
# A small suite for ci_pipeline.rs: every cell as expected.
name: ci-probe
description: smoke at two RAM sizes, a small fork-hold and the provoked panic
images: [linux]
ram: [128M]
deadlines: {heartbeat: 30s, cell: 180s}
cases:
  - name: smoke
    scenario: smoke
    expect: pass
    ram: [128M, 256M]
  - name: fork-hold
    scenario: fork-hold
    params: {children: 16, fds_per_child: 4, deadline_s: 30}
    expect: pass
  - name: panic
    scenario: panic
    expect: crash
    expect_title: sysrq triggered crash
";

/// One cell with a wrong expectation (the kernel passes it), one as expected.
const WRONG: &str = "\
# A small suite for ci_pipeline.rs: one cell expects a crash that never comes.
name: ci-wrong
description: a wrong expectation next to a right one
images: [linux]
ram: [128M]
deadlines: {heartbeat: 30s, cell: 180s}
cases:
  - name: smoke-expecting-crash
    scenario: smoke
    expect: crash
  - name: smoke
    scenario: smoke
    expect: pass
";
const WRONG_CELL: &str = "smoke-expecting-crash@linux-128M-base";

#[test]
fn gitlab_pipeline_shards_and_merges_like_one_run() {
    let tool = gitlab_ci_local();
    let work = tempfile::tempdir().unwrap();
    let project = scratch_project(work.path());
    // gitlab-ci-local's output, kept for a reader (the job times in the README come from it).
    let log = kstorm::host::workspace_root().join("target/test-artifacts/ci-pipeline.log");
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    let reference = ["ci-probe", "ci-wrong"].map(|suite| {
        let suite_file = project.join("suites").join(format!("{suite}.yaml"));
        (
            suite,
            unsharded_run(&suite_file, &work.path().join("unsharded")),
        )
    });
    for r in &reference[0].1 {
        assert!(r.as_expected, "ci-probe: {} is {:?}", r.id, r.verdict);
    }

    let started = Instant::now();
    let pipeline = run_pipeline(&tool, &project, &log);
    let wall = started.elapsed();
    common::assert_no_qemu_mentioning(&project);
    eprintln!(
        "pipeline: {:.0} s wall; jobs: {:?}",
        wall.as_secs_f64(),
        pipeline.durations
    );

    // The file the engine ran is the repository's, byte for byte; only variables differ.
    assert_eq!(
        std::fs::read(project.join("ci/gitlab-ci.yml")).unwrap(),
        std::fs::read(kstorm::host::workspace_root().join("ci/gitlab-ci.yml")).unwrap()
    );
    // The set-up ran in every job and found cargo and a C compiler: nothing was downloaded.
    let jobs: Vec<String> = (1..=SHARDS)
        .map(|i| format!("nightly: [{i}]"))
        .chain(["merge".to_string()])
        .collect();
    for job in &jobs {
        let log = pipeline.job_log(job);
        assert!(log.contains("is there: rustup skipped"), "{job}:\n{log}");
        assert!(log.contains("apt-get skipped"), "{job}:\n{log}");
    }

    // Only the shard holding the wrong cell fails, then the merge, then the pipeline.
    let wrong_ids: Vec<&str> = reference[1].1.iter().map(|r| r.id.as_str()).collect();
    for index in 1..=SHARDS {
        let holds_wrong = Shard {
            index,
            count: SHARDS,
        }
        .ids(&wrong_ids)
        .iter()
        .any(|id| id == WRONG_CELL);
        let job = format!("nightly: [{index}]");
        let expected = if holds_wrong { "FAIL" } else { "PASS" };
        assert_eq!(pipeline.status(&job), expected, "{job}:\n{}", pipeline.text);
    }
    assert_eq!(pipeline.status("merge"), "FAIL", "{}", pipeline.text);
    assert!(!pipeline.success, "the pipeline passed:\n{}", pipeline.text);

    // Each suite's merge holds exactly the unsharded run's cells, once, with its verdicts.
    for (suite, records) in &reference {
        let merged = project.join("merged").join(suite);
        let expected: BTreeMap<String, (String, bool)> = records
            .iter()
            .map(|r| (r.id.clone(), (r.verdict.describe(), r.as_expected)))
            .collect();
        assert_eq!(summary_cells(&merged), expected, "{suite}: summary.json");
        let junit: BTreeMap<String, bool> = expected
            .iter()
            .map(|(id, (_, ok))| (id.clone(), *ok))
            .collect();
        assert_eq!(junit_cases(&merged), junit, "{suite}: junit.xml");
        let html = std::fs::read_to_string(merged.join("report.html")).unwrap();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert!(
            html.contains(host.trim()),
            "{suite}: report.html names no host"
        );
    }
    let wrong = &reference[1].1;
    assert!(wrong.iter().any(|r| r.id == WRONG_CELL && !r.as_expected));
    let merge_log = pipeline.job_log("merge");
    assert!(merge_log.contains("ci-wrong: exit 1"), "{merge_log}");
    assert!(merge_log.contains("ci-probe: exit 0"), "{merge_log}");
}

/// The cells of one suite file run on this machine, unsharded, as the shards run them
/// (quick profile, one repeat).
fn unsharded_run(suite_file: &Path, results: &Path) -> Vec<kstorm::cell::CellRecord> {
    std::env::set_var("KSTORM_QUIET", "1");
    let mut opts = RunOptions::new(suite_file.to_str().unwrap());
    opts.results_root = results.to_path_buf();
    opts.session.progress = false;
    opts.session.accel = AccelChoice::Auto;
    let outcome = kstorm::verbs::run::run(&opts).expect("the unsharded run completes");
    common::assert_no_qemu_mentioning(results);
    outcome.records
}

/// gitlab-ci-local at the pinned version, installed with npm into kstorm's cache once.
fn gitlab_ci_local() -> PathBuf {
    let dir = kstorm::host::cache_dir()
        .join("tools")
        .join(format!("gitlab-ci-local-{GITLAB_CI_LOCAL}"));
    let bin = dir.join("node_modules/.bin/gitlab-ci-local");
    if bin.exists() {
        return bin;
    }
    for tool in ["node", "npm", "rsync", "git"] {
        assert!(
            kstorm::host::find_program(tool).is_some(),
            "this test needs {tool} on PATH (gitlab-ci-local {GITLAB_CI_LOCAL} runs on Node.js \
             20 and copies each job's project with rsync)"
        );
    }
    let node = Command::new("node").arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&node.stdout).trim().to_string();
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "gitlab-ci-local {GITLAB_CI_LOCAL} needs Node.js 20 or later; this machine has {version}"
    );
    let staging = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).unwrap();
    let mut npm = Command::new("npm");
    npm.args(["install", "--no-audit", "--no-fund", "--prefix"])
        .arg(&staging)
        .arg(format!("gitlab-ci-local@{GITLAB_CI_LOCAL}"));
    run_bounded(
        npm,
        Duration::from_secs(5 * 60),
        &format!("npm install gitlab-ci-local@{GITLAB_CI_LOCAL}"),
    );
    std::fs::rename(&staging, &dir).unwrap();
    bin
}

/// A git repository holding the workspace's files (tracked and new, with their modification
/// times, so cargo finds the shared build fresh) and the two test suites.
fn scratch_project(work: &Path) -> PathBuf {
    let root = kstorm::host::workspace_root();
    let project = work.join("project");
    std::fs::create_dir_all(&project).unwrap();
    let listed = git(
        &root,
        &[
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
    );
    let files: Vec<&str> = listed
        .split('\0')
        .filter(|f| !f.is_empty() && root.join(f).is_file())
        .collect();
    let mut rsync = Command::new("rsync")
        .args(["-a", "--from0", "--files-from=-"])
        .arg(format!("{}/", root.display()))
        .arg(&project)
        .stdin(Stdio::piped())
        .spawn()
        .expect("rsync starts");
    use std::io::Write;
    rsync
        .stdin
        .take()
        .unwrap()
        .write_all(files.join("\0").as_bytes())
        .unwrap();
    assert!(rsync.wait().unwrap().success(), "rsync of the workspace");
    std::fs::write(project.join("suites/ci-probe.yaml"), PROBE).unwrap();
    std::fs::write(project.join("suites/ci-wrong.yaml"), WRONG).unwrap();
    git(&project, &["init", "-q"]);
    git(&project, &["add", "-A"]);
    git(&project, &["commit", "-q", "-m", "kstorm as tested"]);
    project
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=kstorm",
            "-c",
            "user.email=kstorm@localhost",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git starts");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Where the test's own cargo built the harness (…/target/debug/xtask). The jobs build there
/// too: with the sources' times kept in every copy of the project, cargo finds the harness and
/// the payload fresh, as a runner would with a warm cache of `target/`. `cargo xtask` builds
/// the harness without the tests' dev-dependencies: built here first, so no job waits on it.
fn shared_target() -> PathBuf {
    let target = Path::new(env!("CARGO_BIN_EXE_xtask"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_path_buf();
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    without_test_env(&mut cargo);
    cargo
        .args(["build", "--quiet", "--package", "xtask", "--target-dir"])
        .arg(&target)
        .current_dir(kstorm::host::workspace_root());
    run_bounded(
        cargo,
        Duration::from_secs(20 * 60),
        "cargo build --package xtask",
    );
    target
}

/// The machine's environment, without what `cargo test` adds for this test (CARGO_PKG_NAME and
/// the like) or the test set (KSTORM_QUIET): build scripts that watch such a variable (ring's
/// does) would make every cargo below rebuild what the test's cargo built.
fn without_test_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let from_test = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || key.starts_with("KSTORM_")
            || key == "RUSTFLAGS";
        if from_test {
            cmd.env_remove(key.as_ref());
        }
    }
}

/// Runs a command to its end within `limit`, or kills it and fails the test.
fn run_bounded(mut cmd: Command, limit: Duration, what: &str) {
    let mut child = cmd.stdin(Stdio::null()).spawn().expect(what);
    let Some(status) = child.wait_timeout(limit).unwrap() else {
        child.kill().ok();
        child.wait().ok();
        panic!("{what} took over {} s", limit.as_secs());
    };
    assert!(status.success(), "{what} failed: {status}");
}

/// What gitlab-ci-local printed, and the pipeline's outcome.
struct Pipeline {
    text: String,
    success: bool,
    /// Job name to how long gitlab-ci-local says it took.
    durations: BTreeMap<String, String>,
}

impl Pipeline {
    /// PASS, FAIL or WARN, from the summary gitlab-ci-local prints at the end.
    fn status(&self, job: &str) -> &str {
        self.text
            .lines()
            .rev()
            .filter_map(|l| l.trim().split_once(char::is_whitespace))
            .filter(|(word, rest)| ["PASS", "FAIL", "WARN"].contains(word) && rest.trim() == job)
            .map(|(word, _)| word)
            .next()
            .unwrap_or("missing")
    }

    /// The lines a job printed (gitlab-ci-local starts each with the job's name).
    fn job_log(&self, job: &str) -> String {
        self.text
            .lines()
            .filter(|l| {
                l.strip_prefix(job)
                    .is_some_and(|rest| rest.starts_with(char::is_whitespace))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs the scheduled pipeline of `ci/gitlab-ci.yml` in `project`, bounded in time; every
/// process it started is killed with it.
fn run_pipeline(tool: &Path, project: &Path, log: &Path) -> Pipeline {
    let target = shared_target();
    let variables = [
        "CI_PIPELINE_SOURCE=schedule".to_string(),
        "KSTORM_SUITES=ci-probe ci-wrong".to_string(),
        "KSTORM_PROFILE=quick".to_string(),
        "KSTORM_REPEAT=1".to_string(),
        format!("KSTORM_CACHE={}", kstorm::host::cache_dir().display()),
        format!("CARGO_TARGET_DIR={}", target.display()),
    ];
    // One file for both streams: gitlab-ci-local reports a failed job's end on stderr.
    let output = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(tool);
    cmd.args(["--file", "ci/gitlab-ci.yml", "--shell-isolation"])
        .args(["--force-shell-executor", "--no-color", "--concurrency", "2"])
        .args(variables.iter().flat_map(|v| ["--variable", v.as_str()]))
        .current_dir(project)
        .stdin(Stdio::null())
        .stdout(output.try_clone().unwrap())
        .stderr(output);
    without_test_env(&mut cmd);
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    let mut child = cmd.spawn().expect("gitlab-ci-local starts");
    let status = child.wait_timeout(PIPELINE_TIMEOUT).unwrap();
    let Some(status) = status else {
        unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
        child.wait().ok();
        panic!(
            "the pipeline took over {} s; its output: {}",
            PIPELINE_TIMEOUT.as_secs(),
            log.display()
        );
    };
    let text = std::fs::read_to_string(log).unwrap();
    let durations = text
        .lines()
        .filter_map(|l| l.split_once(" finished in "))
        .map(|(job, took)| (job.trim().to_string(), took.trim().to_string()))
        .collect();
    Pipeline {
        text,
        success: status.success(),
        durations,
    }
}

/// (verdict, as expected) per cell id in a run folder's summary.json.
fn summary_cells(run: &Path) -> BTreeMap<String, (String, bool)> {
    let path = run.join("summary.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let summary: Value = serde_json::from_str(&text).unwrap();
    let mut cells = BTreeMap::new();
    for c in summary["cells"].as_array().unwrap() {
        let id = c["id"].as_str().unwrap().to_string();
        let line = (
            c["verdict"].as_str().unwrap().to_string(),
            c["as_expected"].as_bool().unwrap(),
        );
        assert!(cells.insert(id.clone(), line).is_none(), "{id} twice");
    }
    cells
}

/// Test case name to "passed" in a run folder's junit.xml.
fn junit_cases(run: &Path) -> BTreeMap<String, bool> {
    let xml = std::fs::read_to_string(run.join("junit.xml")).unwrap();
    let name = regex::Regex::new(r#"^\s*name="([^"]+)""#).unwrap();
    let mut cases = BTreeMap::new();
    for case in xml.split("<testcase").skip(1) {
        let body = case.split("</testcase>").next().unwrap();
        let id = name
            .captures(body)
            .unwrap_or_else(|| panic!("a test case without a name: {body}"))[1]
            .to_string();
        let passed = !body.contains("<failure") && !body.contains("<error");
        assert!(cases.insert(id.clone(), passed).is_none(), "{id} twice");
    }
    cases
}
