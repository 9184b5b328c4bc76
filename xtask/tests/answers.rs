//! Answers from real runs: the HTML report (rendered in headless Chromium), shards and their
//! merge, comparison of runs, resume after SIGINT, and real breaking-point sweeps: a case
//! parameter on GNU Mach, the RAM and a sysctl axis on Linux, and a sweep over RAM sizes.
//! Every cell boots a real kernel in QEMU; run with `--test-threads=1`.

mod common;

use kstorm::matrix::Selection;
use kstorm::session::AccelChoice;
use kstorm::stats::breaking_point::Mode;
use kstorm::verbs::run::{self, RunOptions};
use kstorm::verbs::sweep::SweepOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn options(results: &Path, filters: &[&str]) -> RunOptions {
    std::env::set_var("KSTORM_QUIET", "1");
    let mut opts = RunOptions::new("default");
    opts.selection = Selection {
        filters: filters.iter().map(|f| f.to_string()).collect(),
        ..Selection::default()
    };
    opts.results_root = results.to_path_buf();
    opts.session.progress = false;
    opts.session.jobs = 1;
    opts.session.accel = AccelChoice::Auto;
    opts
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The summary without what differs between two runs of the same cells: timings, run ids,
/// and the measured numbers themselves (a rate or an uptime is never the same twice).
fn comparable(summary: &serde_json::Value) -> serde_json::Value {
    let cells: Vec<serde_json::Value> = summary["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let mut c = c.clone();
            let o = c.as_object_mut().unwrap();
            o.remove("boot_s");
            o.remove("total_s");
            c
        })
        .collect();
    let tables: serde_json::Map<String, serde_json::Value> = summary["tables"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, t)| {
            let rows: Vec<_> = t["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["cell"].clone(), r["verdict"].clone()))
                .collect();
            (
                k.clone(),
                serde_json::json!({"columns": t["columns"], "rows": rows}),
            )
        })
        .collect();
    serde_json::json!({
        "suite": summary["suite"], "counts": summary["counts"], "as_expected": summary["as_expected"],
        "cells_planned": summary["cells_planned"], "complete": summary["complete"],
        "cells": cells, "tables": tables,
    })
}

/// Renders `html` in headless Chromium to `png`; returns the PNG's width and height.
fn screenshot(html: &Path, png: &Path) -> (u32, u32) {
    // `cargo xtask test` installs it (host-packages.yaml, needs.tests).
    kstorm::host::require_tools(&["chromium"]).expect("chromium (Debian package chromium)");
    let profile = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg("--window-size=1280,2000")
        .arg(format!("file://{}", html.display()))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "chromium: {status}");
    let bytes = std::fs::read(png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    // A blank page compresses to a few KB; text, tables and plots do not.
    assert!(
        bytes.len() > 40_000,
        "screenshot only {} bytes",
        bytes.len()
    );
    (be(16), be(20))
}

/// Report, shards, merge and compare on the default suite's smoke and panic cells on Linux
/// (smoke at 128M and 256M, panic at 128M).
#[test]
fn report_shards_merge_and_compare() {
    let tmp = tempfile::tempdir().unwrap();
    let filters = ["smoke@linux-", "panic@linux-"];
    let single = run::run(&options(&tmp.path().join("single"), &filters)).unwrap();
    let ids: Vec<String> = single.records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");

    // The report holds every cell and its plots, and opens in a browser.
    let html = std::fs::read_to_string(single.root.join("report.html")).unwrap();
    for id in &ids {
        assert!(
            html.contains(&format!("data-cell=\"{id}\"")),
            "{id} not in the matrix"
        );
        assert!(
            html.contains(&format!("id=\"cell-{id}\"")),
            "{id} has no details"
        );
    }
    assert!(html.contains("<svg"), "no plots");
    assert!(
        html.contains("sysrq triggered crash"),
        "crash excerpt missing"
    );
    // (SVG's xmlns names a namespace; nothing may be fetched.)
    for fetch in ["src=\"http", "href=\"http", "@import", "url(http"] {
        assert!(
            !html.contains(fetch),
            "the report fetches from the network: {fetch}"
        );
    }
    let png = kstorm::host::workspace_root().join("target/test-artifacts/report.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    let (w, h) = screenshot(&single.root.join("report.html"), &png);
    assert_eq!((w, h), (1280, 2000));

    // Two shards: disjoint, together every cell, and merged equal to the single run.
    let mut shard_dirs: Vec<PathBuf> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for index in 1..=2 {
        let mut opts = options(&tmp.path().join(format!("shard{index}")), &filters);
        opts.shard = Some(kstorm::matrix::Shard { index, count: 2 });
        let out = run::run(&opts).unwrap();
        seen.extend(out.records.iter().map(|r| r.id.clone()));
        shard_dirs.push(out.root.clone());
    }
    seen.sort();
    assert_eq!(seen, ids, "shards must cover every cell exactly once");
    let merged = tmp.path().join("merged");
    kstorm::verbs::report::merge_shards(&shard_dirs, Some(merged.clone())).unwrap();
    let m = json(&merged.join("summary.json"));
    let s = json(&single.root.join("summary.json"));
    assert_eq!(comparable(&m), comparable(&s));
    let junit = std::fs::read_to_string(merged.join("junit.xml")).unwrap();
    for id in &ids {
        assert!(
            junit.contains(id.as_str()),
            "{id} not in the merged junit.xml"
        );
    }
    assert!(merged.join("report.html").exists());

    // Compare: the merged run is not worse than the single one; a shard without the panic
    // cell against the single run shows the crash as new, and the verb exits 1.
    let same = kstorm::verbs::compare::compare_dirs(&single.root, &merged, false).unwrap();
    assert!(!same.worse(), "{}", kstorm::verbs::compare::text(&same));
    assert!(same.new_crashes.is_empty() && same.verdict_changes.is_empty());
    let without_panic = shard_dirs
        .iter()
        .find(|d| !d.join("cells/panic@linux-128M-base").exists())
        .expect("one shard lacks the panic cell");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("compare")
        .arg(without_panic)
        .arg(&single.root)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("new crashes:\n  kernel panic"), "{text}");
    let report = std::fs::read_to_string(single.root.join("report.html")).unwrap();
    assert!(
        report.contains("Compared with"),
        "no compare section in the report"
    );
}

/// Interrupt a real run with SIGINT while its second cell runs, resume it, and check that the
/// finished cell was kept (not run again) and the cut one ran to its verdict.
#[test]
fn resume_after_sigint() {
    let results = tempfile::tempdir().unwrap();
    let xtask = env!("CARGO_BIN_EXE_xtask");
    let mut child = std::process::Command::new(xtask)
        .args([
            "run",
            "--filter",
            "smoke@linux-128M",
            "--filter",
            "hang@linux-128M",
        ])
        .args(["--jobs", "1", "--results"])
        .arg(results.path())
        .env("KSTORM_QUIET", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dir = results.path().join("latest");
    let smoke = dir.join("cells/smoke@linux-128M-base");
    let hang = dir.join("cells/hang@linux-128M-base");
    let start = Instant::now();
    while !(smoke.join("result.json").exists() && hang.join("console.log").exists()) {
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "cells did not start"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(2),
        "an interrupted run is an infra exit"
    );
    assert!(
        hang.join("interrupted").exists(),
        "the cut cell is not marked"
    );
    let first = json(&smoke.join("result.json"));
    let log_time = std::fs::metadata(smoke.join("console.log"))
        .unwrap()
        .modified()
        .unwrap();

    let run_dir = std::fs::canonicalize(&dir).unwrap();
    let status = std::process::Command::new(xtask)
        .arg("run")
        .arg("--resume")
        .arg(&run_dir)
        .env("KSTORM_QUIET", "1")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "resumed run: every cell as expected"
    );
    let again = json(&smoke.join("result.json"));
    assert_eq!(
        first["started_at"], again["started_at"],
        "finished cell ran twice"
    );
    let log_again = std::fs::metadata(smoke.join("console.log"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(log_time, log_again, "finished cell's console was rewritten");
    assert_eq!(json(&hang.join("result.json"))["verdict"], "hang");
    assert!(!hang.join("interrupted").exists());
    let summary = json(&run_dir.join("summary.json"));
    assert_eq!(summary["complete"], true);
    let ids: Vec<&str> = summary["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["hang@linux-128M-base", "smoke@linux-128M-base"]);
    common::assert_no_qemu_mentioning(results.path());
}

/// A real sweep with small bounds: GNU Mach's task-hoard at 64M, three cells. The kernel stops
/// at a count well below the limit, so the sweep counts; the notes measured 784-1008.
#[test]
fn sweep_mach_task_hoard() {
    let results = tempfile::tempdir().unwrap();
    let mut run = options(results.path(), &[]);
    run.suite = "hurd-zone".into();
    run.selection.images = Some(vec!["gnumach".into()]);
    run.selection.ram = Some(vec!["64M".parse().unwrap()]);
    let file = kstorm::verbs::sweep::sweep(&kstorm::verbs::sweep::SweepOptions {
        case: "mach-task-hoard".into(),
        axis: kstorm::matrix::axis::Axis::Param("limit".into()),
        harder: None,
        over: None,
        variants: Vec::new(),
        max_cells: 3,
        max_time: Duration::from_secs(150),
        seed: 1,
        from: None,
        to: None,
        target_width: 0.1,
        run,
    })
    .unwrap();
    assert_eq!(file.groups.len(), 1);
    let g = &file.groups[0];
    assert_eq!(
        g.mode,
        Some(kstorm::stats::breaking_point::Mode::Counting),
        "{g:?}"
    );
    assert!(g.cells.len() >= 2, "{g:?}");
    let interval = g.estimate.interval().expect("an interval");
    assert!(
        (300.0..3000.0).contains(&interval.estimate),
        "median {interval:?}"
    );
    assert!(interval.contains(interval.estimate));
    let dir = std::fs::read_dir(results.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("sweep-"))
        .unwrap()
        .path();
    let html = std::fs::read_to_string(dir.join("report.html")).unwrap();
    assert!(html.contains("Breaking point") && html.contains("<svg"));
    common::assert_no_qemu_mentioning(results.path());
}

fn sweep_options(run: RunOptions, case: &str, axis: &str, cells: usize) -> SweepOptions {
    SweepOptions {
        case: case.into(),
        axis: axis.parse().unwrap(),
        harder: None,
        over: None,
        variants: Vec::new(),
        max_cells: cells,
        max_time: Duration::from_secs(600),
        seed: 1,
        from: None,
        to: None,
        target_width: 0.1,
        run,
    }
}

/// The RAM axis on Debian's kernel: the suite's two RAM sizes make one group, the search
/// halves from 128M toward 48M, and a guest too small to boot is an outcome (did not survive),
/// never infra. The notes say this kernel does not boot below 96M; smoke needs less than 128M.
#[test]
fn sweep_ram_axis_finds_where_smoke_stops_booting() {
    let results = tempfile::tempdir().unwrap();
    let mut opts = sweep_options(options(results.path(), &[]), "smoke", "ram", 5);
    opts.from = Some("48M".into());
    opts.to = Some("256M".into());
    let file = kstorm::verbs::sweep::sweep(&opts).unwrap();
    assert_eq!(file.groups.len(), 1, "{file:?}");
    assert_eq!(file.param, "ram");
    let g = &file.groups[0];
    assert_eq!(g.mode, Some(Mode::Survival), "{g:?}");
    let values: Vec<f64> = g.cells.iter().map(|c| c.observation.value).collect();
    assert_eq!(&values[..3], &[128.0, 64.0, 96.0], "{g:?}");
    assert!(g.cells[0].observation.survived, "{g:?}");
    assert!(!g.cells[1].observation.survived, "64M must not boot: {g:?}");
    assert!(
        g.cells.iter().all(|c| !c.verdict.starts_with("infra")),
        "{g:?}"
    );
    let point = g.estimate.point().expect("both outcomes seen");
    assert!((64.0..128.0).contains(&point), "{g:?}");
    for c in &g.cells {
        let record = json(
            &results_dir(results.path())
                .join("cells")
                .join(&c.cell)
                .join("result.json"),
        );
        assert_eq!(
            record["ram_mib"].as_f64(),
            Some(c.observation.value),
            "{}",
            c.cell
        );
    }
    let html = std::fs::read_to_string(results_dir(results.path()).join("report.html")).unwrap();
    assert!(
        html.contains("ram (MiB)"),
        "the survival plot names the axis"
    );
    common::assert_no_qemu_mentioning(results.path());
}

/// A sysctl axis on Linux: the payload sets the value asked before the scenario and reports
/// what the kernel kept; the sweep records both (smoke survives, so it walks down from --to).
#[test]
fn sweep_sysctl_axis_records_what_the_kernel_reported() {
    let results = tempfile::tempdir().unwrap();
    let mut run = options(results.path(), &[]);
    run.selection.ram = Some(vec!["128M".parse().unwrap()]);
    let mut opts = sweep_options(run, "smoke", "sysctl:vm.min_free_kbytes", 2);
    opts.from = Some("1024".into());
    opts.to = Some("8192".into());
    let file = kstorm::verbs::sweep::sweep(&opts).unwrap();
    let g = &file.groups[0];
    assert_eq!(g.cells.len(), 2, "{g:?}");
    for (c, want) in g.cells.iter().zip([8192.0, 4096.0]) {
        assert_eq!(c.observation.value, want, "{g:?}");
        assert!(c.observation.survived, "{g:?}");
        assert_eq!(
            c.reported.as_deref(),
            Some(format!("{want}").as_str()),
            "{g:?}"
        );
    }
    let text = kstorm::render::text::sweep_table(&file);
    assert!(text.contains("8192 -> 8192"), "{text}");
    // The payload also recorded the /proc/vmstat counters of xtask/vmstat.yaml around it.
    let cell = results_dir(results.path())
        .join("cells")
        .join(&g.cells[0].cell);
    let record = json(&cell.join("result.json"));
    let vmstat = record["results"][0]["vmstat"]
        .as_object()
        .expect("vmstat deltas");
    assert!(
        vmstat.contains_key("oom_kill") && vmstat.contains_key("pgscan_kswapd"),
        "{vmstat:?}"
    );
}

/// The sweep's results folder under `root` (one per test).
fn results_dir(root: &Path) -> std::path::PathBuf {
    std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("sweep-"))
        .unwrap()
        .path()
}

/// `--over ram=64M,128M`: one counting sweep of task-hoard's limit per RAM size on GNU Mach,
/// and a line through the counts at failure (they grow with RAM, per the notes).
#[test]
fn sweep_over_ram_fits_the_count_against_ram() {
    let results = tempfile::tempdir().unwrap();
    let mut run = options(results.path(), &[]);
    run.suite = "hurd-zone".into();
    run.selection.images = Some(vec!["gnumach".into()]);
    let mut opts = sweep_options(run, "mach-task-hoard", "param:limit", 4);
    opts.over = Some(kstorm::verbs::sweep::parse_over("ram=64M,128M").unwrap());
    let file = kstorm::verbs::sweep::sweep(&opts).unwrap();
    assert_eq!(file.groups.len(), 2, "{file:?}");
    let over: Vec<(Option<f64>, u64)> = file.groups.iter().map(|g| (g.over, g.ram_mib)).collect();
    assert_eq!(over, [(Some(64.0), 64), (Some(128.0), 128)]);
    let fit = file
        .over
        .as_ref()
        .unwrap()
        .fit
        .as_ref()
        .expect("two counts, one line");
    assert_eq!(fit.n, 2);
    assert!(fit.slope.estimate > 0.0, "{fit:?}");
    let text = kstorm::render::text::sweep_table(&file);
    assert!(
        text.contains("against ram: breaking point = slope"),
        "{text}"
    );
    let html = std::fs::read_to_string(results_dir(results.path()).join("report.html")).unwrap();
    assert!(html.contains("against ram"), "the fitted line is plotted");
    common::assert_no_qemu_mentioning(results.path());
}

/// `ab` with Debian's kernel as both A and B, three repeats of smoke and fork-hold at 128M,
/// interleaved: every measurement gets a row, none is marked significant, nothing is worse
/// (exit 0), and compare.json and B's report.html carry the table.
#[test]
fn ab_same_kernel_twice_marks_nothing_significant() {
    let catalog = common::catalog();
    let vmlinux =
        match kstorm::images::prepare(&catalog.images["linux"], &kstorm::host::cache_dir())
            .expect("Debian kernel prepares")
        {
            kstorm::images::PreparedImage::Linux(k) => k.vmlinux.expect("PVH vmlinux"),
            other => panic!("{other:?}"),
        };
    let results = tempfile::tempdir().unwrap();
    let mut run = options(
        results.path(),
        &["smoke@linux-128M", "fork-hold@linux-128M"],
    );
    run.selection.repeat = 3;
    let t = kstorm::verbs::ab::ab(&kstorm::verbs::ab::AbOptions {
        kernels: [vmlinux.clone(), vmlinux],
        run,
    })
    .unwrap();
    assert!(t.rows.len() >= 10, "{:?}", t.rows);
    assert!(
        t.rows.iter().all(|r| r.a.n == 3 && r.b.n == 3),
        "{:?}",
        t.rows
    );
    let marked: Vec<&str> = t
        .rows
        .iter()
        .filter(|r| r.significant)
        .map(|r| r.measurement.as_str())
        .collect();
    assert!(marked.is_empty(), "same kernel, marked: {marked:?}");
    assert!(
        t.rows.iter().any(|r| r.gate.is_some()),
        "the default suite gates fork_rate"
    );
    assert!(!t.worse(), "{}", kstorm::verbs::ab::text(&t));
    assert_eq!(t.wall.len(), 2);
    let ab = std::fs::read_dir(results.path())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("ab-"))
        .unwrap()
        .path();
    let json = json(&ab.join("compare.json"));
    assert!(json["rows"].as_array().is_some_and(|r| !r.is_empty()));
    let html = std::fs::read_to_string(ab.join("b/report.html")).unwrap();
    assert!(html.contains("A/B:") && html.contains("geometric mean"));
    common::assert_no_qemu_mentioning(results.path());
}
