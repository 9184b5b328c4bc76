//! `cargo xtask bench ...`: speed targets, measured as ratios against a baseline taken in the
//! same run (absolute times under TCG vary too much between machines to mean anything alone).

use super::run;
use crate::cell::{self, CellEnv, CellRecord};
use crate::config::Catalog;
use crate::host;
use crate::images;
use crate::matrix::Cell;
use crate::qemu::{Accel, QemuSpec};
use crate::results::{RunInfo, Store};
use crate::session::{self, accel, Session, SessionOptions};
use crate::stats::median;
use anyhow::{bail, Context, Result};
use kstorm_payload::plan::{Plan, ScenarioSpec};
use std::time::{Duration, Instant};

/// A session on Debian's Linux image, for the benches that boot it.
struct LinuxBench {
    image: crate::config::Image,
    session: Session,
}

fn linux_bench() -> Result<LinuxBench> {
    std::env::set_var("KSTORM_QUIET", "1");
    let catalog = Catalog::load(&host::workspace_root())?;
    let image = catalog
        .images
        .get("linux")
        .context("images/linux.yaml is missing")?
        .clone();
    let probe = smoke_cell(&image)?;
    let session = Session::prepare(&[probe], bench_session())?;
    Ok(LinuxBench { image, session })
}

/// One cell at a time, no progress bars: the benches time cells, not the queue.
fn bench_session() -> SessionOptions {
    SessionOptions {
        jobs: 1,
        progress: false,
        ..SessionOptions::default()
    }
}

/// What `session` boots for `cell` under `plan`.
fn artifacts(session: &Session, cell: &Cell, plan: &Plan) -> Result<images::BootArtifacts> {
    session
        .artifacts(cell, plan, &serde_json::to_vec(plan)?)
        .map_err(|v| anyhow::anyhow!("{}", v.describe()))
}

/// (a) bare QEMU booting the same kernel and the payload running `smoke` with its frames on the
/// console, timed from spawn to exit, against (b) a whole kstorm cell running `smoke`.
pub fn boot(rounds: usize) -> Result<()> {
    let b = linux_bench()?;
    let bare_plan = Plan {
        cell: "bench-bare".into(),
        results_device: "/dev/console".into(),
        heartbeat_ms: 500,
        sysctl: Vec::new(),
        vmstat: Vec::new(),
        scenarios: vec![ScenarioSpec {
            name: "smoke".into(),
            params: Default::default(),
        }],
    };
    let cell = smoke_cell(&b.image)?;
    let boot = artifacts(&b.session, &cell, &bare_plan)?;
    let argv = QemuSpec::new(boot.medium, 256, b.session.accel()).argv();
    let out = tempfile::tempdir()?;

    let bare_once = || time_quiet(crate::qemu::QEMU, &argv);
    let kstorm_once = |i: usize| -> Result<f64> {
        let t = Instant::now();
        let dir = out.path().join(format!("cell{i}"));
        let rec = run_pid1_cell(&b, &cell, dir.clone())?;
        host::write_atomic(
            &dir.join("result.json"),
            serde_json::to_string_pretty(&rec)?.as_bytes(),
        )?;
        if !rec.as_expected {
            bail!("kstorm smoke cell ended in {}", rec.verdict.describe());
        }
        Ok(t.elapsed().as_secs_f64())
    };
    // The whole process a user runs: `cargo xtask run` on one smoke cell, from exec to exit
    // (suite loading, kernel resolution, payload and initramfs from the cache, the cell, the
    // results), against the same bare QEMU.
    let mut run_args = host::args([
        "run",
        "--suite",
        "default",
        "--filter",
        "smoke@linux-256M",
        "--jobs",
        "1",
        "--results",
    ]);
    run_args.push(out.path().join("runs").into());
    let exe = std::env::current_exe()?;
    let exe = exe.to_string_lossy();
    let process_once = || time_quiet(&exe, &run_args);
    // Warm the page cache and the initramfs cache first.
    bare_once()?;
    kstorm_once(0)?;
    process_once()?;
    let (mut bare, mut full, mut process) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..rounds {
        bare.push(bare_once()?);
        full.push(kstorm_once(i + 1)?);
        process.push(process_once()?);
        eprintln!(
            "round {}: bare {:.3}s, kstorm cell {:.3}s, kstorm process {:.3}s",
            i + 1,
            bare[i],
            full[i],
            process[i]
        );
    }
    let (a, k, p) = (median(&bare), median(&full), median(&process));
    println!(
        "bench boot ({rounds} rounds, {}): bare QEMU median {a:.3}s",
        b.session.accel()
    );
    println!(
        "  kstorm smoke cell median {k:.3}s, ratio {:.3} (target <= 1.15)",
        k / a
    );
    println!(
        "  `cargo xtask run --filter smoke@linux-256M` median {p:.3}s, ratio {:.3} (target <= 1.3)",
        p / a
    );
    Ok(())
}

/// GNU Mach: QEMU start to the bootstrap task's first frame, with the cell's ISO cached, booted
/// the way the harness boots a Mach cell (TCG). Target: median <= 1.5 s.
pub fn mach(boots: usize) -> Result<()> {
    std::env::set_var("KSTORM_QUIET", "1");
    let catalog = Catalog::load(&host::workspace_root())?;
    let image = catalog
        .images
        .get("gnumach")
        .context("images/gnumach.yaml is missing")?
        .clone();
    let mut cell = smoke_cell(&image)?;
    cell.ram = crate::config::RamSize(128);
    let session = Session::prepare(std::slice::from_ref(&cell), bench_session())?;
    let plan = Plan {
        cell: "bench-mach".into(),
        results_device: "console".into(),
        heartbeat_ms: 100,
        sysctl: Vec::new(),
        vmstat: Vec::new(),
        scenarios: vec![ScenarioSpec {
            name: "port-churn".into(),
            params: serde_json::json!({"limit": 1})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }],
    };
    cell.id = plan.cell.clone();
    let boot = artifacts(&session, &cell, &plan)?;
    let out = tempfile::tempdir()?;
    let mut samples = Vec::new();
    for i in 0..boots.max(1) {
        // The same path as every Mach cell: the one runner, its monitor and judge.
        let rec = cell::run(
            &cell,
            CellEnv {
                boot: boot.clone(),
                accel: Accel::Tcg,
                dir: out.path().join(format!("boot{i}")),
                progress: &|_| {},
                guest: None,
                faults: Default::default(),
            },
        );
        let first = rec
            .timings
            .boot_s
            .with_context(|| format!("bench boot {i}: no frame ({})", rec.verdict.describe()))?;
        eprintln!("boot {}: first frame after {first:.3}s", i + 1);
        samples.push(first);
    }
    let n = samples.len();
    let m = median(&samples);
    println!(
        "bench mach ({n} boots, tcg): QEMU start to first payload frame, median {m:.3}s (target <= 1.5s){}",
        if m <= 1.5 { "" } else { "  ABOVE TARGET" }
    );
    Ok(())
}

/// Detector throughput, then the live latencies of a real panic: line to event, event to QEMU gone.
pub fn detect() -> Result<()> {
    let fixtures = host::workspace_root().join("xtask/tests/fixtures/detect");
    crate::detect::bench::bench_detect_throughput(
        &fixtures,
        crate::detect::Os::Linux,
        100_000_000,
    )?;
    let b = linux_bench()?;
    let mut cell = smoke_cell(&b.image)?;
    cell.case.scenario = crate::config::Name("panic".into());
    cell.case.expect = crate::config::Expect::Crash;
    cell.id = "bench-panic".into();
    let out = tempfile::tempdir()?;
    let (mut detect_ms, mut exit_ms) = (Vec::new(), Vec::new());
    for i in 0..5 {
        let rec = run_pid1_cell(&b, &cell, out.path().join(format!("p{i}")))?;
        match (rec.timings.detect_ms, rec.timings.crash_to_exit_ms) {
            (Some(d), Some(e)) => {
                detect_ms.push(d);
                exit_ms.push(e);
            }
            _ => bail!("panic cell did not crash: {}", rec.verdict.describe()),
        }
    }
    println!(
        "bench detect live (5 panics): line->event median {:.2} ms (max {:.2}; target <= 50), event->QEMU gone median {:.1} ms (max {:.1}; target <= 500)",
        median(&detect_ms),
        detect_ms.iter().cloned().fold(0.0, f64::max),
        median(&exit_ms),
        exit_ms.iter().cloned().fold(0.0, f64::max)
    );
    let _ = Duration::ZERO;
    Ok(())
}

fn smoke_cell(image: &crate::config::Image) -> Result<crate::matrix::Cell> {
    let mut cell = accel::probe_cell()?;
    cell.id = "bench-smoke".into();
    cell.image = image.clone();
    cell.ram = crate::config::RamSize(256);
    cell.deadlines = Default::default();
    Ok(cell)
}

/// Time to the first command and the rate of the upload every cell makes (the payload and the
/// plan), over ssh and over the serial shell on `linux-disk`, against the PID-1 path (time to
/// the payload's first frame) booting the same kernel. Every cell runs through the session and
/// the cell runner as in any run; the figures are the transport's own counters.
pub fn transport() -> Result<()> {
    let b = linux_bench()?;
    let catalog = Catalog::load(&host::workspace_root())?;
    let disk_image = catalog
        .images
        .get("linux-disk")
        .context("images/linux-disk.yaml is missing")?
        .clone();
    let out = tempfile::tempdir()?;
    let pid1_cell = smoke_cell(&b.image)?;
    let rec = run_pid1_cell(&b, &pid1_cell, out.path().join("pid1"))?;
    let pid1_first = rec
        .timings
        .boot_s
        .with_context(|| format!("PID-1 smoke cell: {}", rec.verdict.describe()))?;
    println!(
        "bench transport ({}): pid1   first frame {pid1_first:.2}s (payload in the initramfs, no upload)",
        b.session.accel()
    );
    let mut cells = Vec::new();
    for kind in [
        crate::config::TransportKind::Ssh,
        crate::config::TransportKind::Serial,
    ] {
        let mut cell = smoke_cell(&disk_image)?;
        cell.id = format!("bench-{kind}");
        cell.transport = disk_image.transport(Some(kind))?.clone();
        cell.deadlines.cell = Some(crate::config::HumanDuration(Duration::from_secs(900)));
        cells.push(cell);
    }
    let session = Session::prepare(&cells, bench_session())?;
    let info = RunInfo::new(
        "bench",
        "bench-transport",
        std::env::args().skip(1).collect(),
    );
    let store = Store::create_at(&out.path().join("disk"), info)?;
    for rec in session.run(cells, &store) {
        let stats = rec
            .transport
            .clone()
            .with_context(|| format!("{}: {}", rec.id, rec.verdict.describe()))?;
        let first = stats
            .connect_s
            .with_context(|| format!("{} never connected: {}", rec.id, rec.verdict.describe()))?;
        let mb = stats.uploaded_bytes as f64 / 1e6;
        println!(
            "bench transport ({}): {:<6} first command {first:.2}s ({:.2}x pid1's first frame), upload {mb:.1} MB at {:.3} MB/s ({:.1}s), payload's first frame {:.2}s, retries {}, verdict {}",
            session.accel(),
            stats.kind.to_string(),
            first / pid1_first,
            mb / stats.upload_s,
            stats.upload_s,
            rec.timings.boot_s.unwrap_or(f64::NAN),
            stats.retries,
            rec.verdict.word(),
        );
    }
    Ok(())
}

/// One cell per scenario at 256M: wall time per scenario and the payload's own overhead
/// (heartbeat and result framing, measured by the payload's supervisor) as a share of it.
pub fn scenarios() -> Result<()> {
    std::env::set_var("KSTORM_QUIET", "1");
    let yaml = r#"
name: bench-scenarios
description: one cell per scenario at 256M
images: [linux]
ram: [256M]
deadlines: {heartbeat: 20s, cell: 300s}
cases:
  - {name: smoke, scenario: smoke, expect: pass}
  - {name: fork-hold, scenario: fork-hold, params: {children: 200, fds_per_child: 16}, expect: pass}
  - {name: spawn-kill, scenario: spawn-kill, params: {cycles: 10, batch: 8, fds: 64}, expect: pass}
  - {name: fd-churn, scenario: fd-churn, params: {procs: 2, duration_s: 3}, expect: pass}
  - {name: copies, scenario: copies, params: {counts: [1, 10, 50]}, expect: pass}
  - {name: mmap-group, scenario: mmap-group, params: {counts: [1, 10, 50]}, expect: pass}
  - {name: mem-profile, scenario: mem-profile, expect: pass}
  - {name: oom, scenario: oom, expect: oom}
  - {name: rlimits, scenario: rlimits, expect: pass}
  - {name: tmpfs-fill, scenario: tmpfs-fill, expect: pass}
  - {name: overcommit, scenario: overcommit, params: {modes: [2]}, expect: pass}
  - {name: cgroup-limit, scenario: cgroup-limit, expect: oom}
"#;
    let catalog = Catalog::load(&host::workspace_root())?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("bench-scenarios.yaml");
    std::fs::write(&path, yaml)?;
    let suite = crate::config::load_suite(&path, &catalog.images)?;
    let cells = crate::matrix::expand(&suite, &catalog, &Default::default())?;
    let mut opts = run::RunOptions::new("bench-scenarios");
    opts.results_root = dir.path().join("results");
    opts.session.progress = false;
    opts.session.jobs = 1;
    let outcome = run::run_cells("bench-scenarios", cells, &opts)?;
    println!(
        "{:<14} {:>9} {:>12} {:>10}  verdict",
        "scenario", "wall [s]", "overhead [s]", "overhead"
    );
    let (mut busy_total, mut wall_total) = (0.0, 0.0);
    for r in &outcome.records {
        let Some(res) = r.results.first() else {
            println!("{:<14} no result: {}", r.scenario, r.verdict.describe());
            continue;
        };
        let get = |k: &str| res.measurements.get(k).map(|m| m.value).unwrap_or(f64::NAN);
        let (wall, busy) = (get("payload_wall"), get("payload_supervisor_busy"));
        busy_total += busy;
        wall_total += wall;
        println!(
            "{:<14} {wall:>9.3} {busy:>12.4} {:>9.2}%  {}",
            r.scenario,
            100.0 * busy / wall,
            r.verdict.word()
        );
    }
    println!(
        "bench scenarios: payload overhead {:.2}% of scenario time overall (target < 2%)",
        100.0 * busy_total / wall_total
    );
    Ok(())
}

/// QEMU start to the payload's hello at 256M, for a smoke cell (no tools) and a stress-ng cell
/// (stress-ng and its libraries appended to the initramfs), alternating: medians and ratio.
pub fn stress_ng(rounds: usize) -> Result<()> {
    let b = linux_bench()?;
    let plain = smoke_cell(&b.image)?;
    let mut with_tools = plain.clone();
    with_tools.id = "bench-stress-ng".into();
    with_tools.case.scenario = crate::config::Name("stress-ng".into());
    with_tools.params = serde_json::from_str(r#"{"stressors": {"fork": 1}, "timeout_s": 1}"#)?;
    let out = tempfile::tempdir()?;
    let (mut without_s, mut with_s) = (Vec::new(), Vec::new());
    for i in 0..rounds.max(1) {
        for (cell, times) in [(&plain, &mut without_s), (&with_tools, &mut with_s)] {
            let rec = run_pid1_cell(&b, cell, out.path().join(format!("{}-{i}", cell.id)))?;
            let boot = rec
                .timings
                .boot_s
                .with_context(|| format!("{}: no hello ({})", cell.id, rec.verdict.describe()))?;
            eprintln!("round {}: {} boot {boot:.3}s", i + 1, cell.id);
            times.push(boot);
        }
    }
    let (a, c) = (median(&without_s), median(&with_s));
    println!(
        "bench stress-ng ({rounds} rounds, {}): boot to payload start without stress-ng {a:.3}s, with {c:.3}s, ratio {:.2}",
        b.session.accel(),
        c / a
    );
    Ok(())
}

/// Runs `program` with no input or output and times it from spawn to exit; it must succeed
/// within two minutes.
fn time_quiet(program: &str, args: &[std::ffi::OsString]) -> Result<f64> {
    let t = Instant::now();
    host::Cmd::new(program)
        .args(args)
        .timeout(Duration::from_secs(120))
        .run_silent()?;
    Ok(t.elapsed().as_secs_f64())
}

/// Boots `cell` on the bench's Linux kernel with the payload as PID 1, through the cell runner
/// (no results store: the benches time the cell itself).
fn run_pid1_cell(b: &LinuxBench, cell: &Cell, dir: std::path::PathBuf) -> Result<CellRecord> {
    let boot = artifacts(&b.session, cell, &session::plan_for(cell))?;
    let env = CellEnv {
        boot,
        accel: b.session.accel(),
        dir,
        progress: &|_| {},
        guest: None,
        faults: Default::default(),
    };
    Ok(cell::run(cell, env))
}

/// Record/replay's cost: the default suite's Linux cells (128M) unrecorded and recorded in
/// the same run, then each recording replayed. Medians per cell; ratios recorded/unrecorded and
/// replay/recorded; the log sizes.
pub fn record(rounds: usize) -> Result<()> {
    let b = linux_bench()?;
    let catalog = Catalog::load(&host::workspace_root())?;
    let suite = catalog.suite("default")?;
    let sel = |record| crate::matrix::Selection {
        images: Some(vec!["linux".into()]),
        ram: Some(vec![crate::config::RamSize(128)]),
        record,
        ..Default::default()
    };
    let plain = crate::matrix::expand(suite, &catalog, &sel(false))?;
    let recorded = crate::matrix::expand(suite, &catalog, &sel(true))?;
    let out = tempfile::tempdir()?;
    let mut ratios = (Vec::new(), Vec::new());
    for (p, r) in plain.iter().zip(&recorded) {
        let (mut t_plain, mut t_rec, mut t_replay, mut size) = (vec![], vec![], vec![], 0);
        for i in 0..rounds.max(1) {
            t_plain.push(
                run_pid1_cell(&b, p, out.path().join(format!("{}-{i}", p.id)))?
                    .timings
                    .total_s,
            );
            let dir = out.path().join(format!("{}-rec-{i}", r.id));
            let rec = run_pid1_cell(&b, r, dir.clone())?;
            let info = rec
                .replay
                .with_context(|| format!("{}: no recording", r.id))?;
            t_rec.push(info.recorded_s);
            size = info.size_bytes;
            let timeout = Duration::from_secs_f64((info.recorded_s * 10.0).max(120.0));
            let replayed = cell::replay::run(&dir, &info, None, timeout)?;
            t_replay.push(replayed.wall_s);
            eprintln!(
                "round {}: {}: {:.2}s, recorded {:.2}s, replay {:.2}s{}",
                i + 1,
                p.id,
                t_plain[i],
                t_rec[i],
                t_replay[i],
                if replayed.first_difference.is_none() {
                    ""
                } else {
                    " (diverged)"
                }
            );
            let _ = std::fs::remove_dir_all(&dir);
        }
        let (a, c, d) = (median(&t_plain), median(&t_rec), median(&t_replay));
        println!(
            "{:<24} unrecorded {a:6.2}s  recorded {c:6.2}s ({:.2}x)  replay {d:6.2}s ({:.2}x the recording)  log {:.1} MB",
            p.id,
            c / a,
            d / c,
            size as f64 / 1e6
        );
        ratios.0.push(c / a);
        ratios.1.push(d / c);
    }
    println!(
        "bench record ({rounds} rounds, TCG): median over cells: recording {:.2}x an unrecorded cell (goal <= 2), replay {:.2}x the recording (goal <= 2)",
        median(&ratios.0),
        median(&ratios.1)
    );
    Ok(())
}
