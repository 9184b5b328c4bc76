//! GNU Mach integration tests: the real Debian kernel under TCG, booted from a GRUB ISO with
//! kstorm's bootstrap task. Each boot is bounded by deadlines and QEMU is killed at the end.
//! Needs: apt (to fetch `gnumach-image-1.8-486`), gcc-multilib, grub-pc-bin, xorriso, mtools,
//! qemu-system-x86.

use kstorm::images::mach_boot::{boot_and_watch, qemu_argv, Ending, Limits, MachSetup, Observed};
use kstorm::images::mach_task::MachScenario;
use kstorm_payload::frame::{Message, Outcome};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

const PACKAGE: &str = "gnumach-image-1.8-486";

/// One guest at a time: the machine has 2 cores and other work runs beside the tests.
static ONE_GUEST: Mutex<()> = Mutex::new(());

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kstorm-cache")
}

fn setup(patched: bool) -> &'static MachSetup {
    static PATCHED: OnceLock<MachSetup> = OnceLock::new();
    static PLAIN: OnceLock<MachSetup> = OnceLock::new();
    let cell = if patched { &PATCHED } else { &PLAIN };
    cell.get_or_init(|| MachSetup::new(PACKAGE, patched, &cache_dir()).expect("preparing GNU Mach"))
}

fn scenario(name: &str, params: serde_json::Value) -> MachScenario {
    MachScenario {
        name: name.into(),
        params: params.as_object().unwrap().clone(),
    }
}

fn limits(heartbeat_s: u64) -> Limits {
    Limits {
        boot: Duration::from_secs(30),
        heartbeat: Duration::from_secs(heartbeat_s),
        total: Duration::from_secs(120),
    }
}

fn boot(
    patched: bool,
    cell: &str,
    ram: u64,
    scenarios: &[MachScenario],
    limits: Limits,
) -> Observed {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let iso = setup(patched).iso(cell, 250, scenarios).unwrap();
    let seen = boot_and_watch(&qemu_argv(&iso, ram), limits).unwrap();
    assert_qemu_gone(&seen);
    seen
}

fn assert_qemu_gone(seen: &Observed) {
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", seen.qemu_pid)).unwrap_or_default();
    assert!(
        !comm.starts_with("qemu"),
        "QEMU {} still runs",
        seen.qemu_pid
    );
}

fn results(seen: &Observed) -> Vec<&kstorm_payload::frame::ScenarioResult> {
    seen.frames
        .iter()
        .filter_map(|f| match &f.message {
            Message::Result(r) => Some(r),
            _ => None,
        })
        .collect()
}

fn console(seen: &Observed) -> String {
    seen.console.join("\n")
}

#[test]
fn smoke_cell_speaks_frames_and_reboots_cleanly() {
    let seen = boot(
        true,
        "smoke",
        128,
        &[scenario("port-churn", serde_json::json!({"limit": 100}))],
        limits(10),
    );
    assert_eq!(
        seen.ending,
        Ending::Exited { code: Some(0) },
        "{}",
        console(&seen)
    );
    let kinds: Vec<&str> = seen
        .frames
        .iter()
        .map(|f| match &f.message {
            Message::Hello { .. } => "hello",
            Message::Start { .. } => "start",
            Message::Hb { .. } => "hb",
            Message::Result(_) => "result",
            Message::Log { .. } => "log",
            Message::Done => "done",
        })
        .collect();
    assert_eq!(kinds.first(), Some(&"hello"));
    assert_eq!(kinds.last(), Some(&"done"));
    assert!(
        kinds.contains(&"start") && kinds.contains(&"result"),
        "{kinds:?}"
    );
    match &seen.frames[0].message {
        Message::Hello { agent, kernel, .. } => {
            assert_eq!(agent, "mach-bootstrap");
            assert!(kernel.starts_with("GNU Mach 1.8"), "{kernel}");
        }
        other => panic!("first frame {other:?}"),
    }
    // Sequence numbers count from 0 without gaps, and every frame names this cell.
    for (i, f) in seen.frames.iter().enumerate() {
        assert_eq!((f.seq, f.cell.as_str()), (i as u64, "smoke"));
    }
    assert!(seen.first_frame_after.unwrap() < Duration::from_secs(30));
}

#[test]
fn port_churn_with_cleanup_passes() {
    let cases = [scenario(
        "port-churn",
        serde_json::json!({"limit": 100000, "batch": 100}),
    )];
    let seen = boot(true, "churn", 64, &cases, limits(10));
    assert_eq!(
        seen.ending,
        Ending::Exited { code: Some(0) },
        "{}",
        console(&seen)
    );
    let r = results(&seen);
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].outcome, Outcome::Pass, "{:?}", r[0]);
    assert_eq!(r[0].measurements["count"].value, 100000.0);
    assert_eq!(r[0].facts["stop"], "limit");
    // Ports given back at once cost nothing that stays: free memory before and after agree
    // within 1000 pages (4 MiB) after 100000 rights.
    let (before, after) = (
        r[0].measurements["free_pages_before"].value,
        r[0].measurements["free_pages_after"].value,
    );
    assert!(
        before > 1000.0 && (before - after).abs() < 1000.0,
        "{before} -> {after}"
    );
}

#[test]
fn unknown_scenario_and_parameter_fail_with_a_reason() {
    let cases = [
        scenario("no-such-scenario", serde_json::json!({})),
        scenario("task-churn", serde_json::json!({"limit": 10, "colour": 3})),
    ];
    let seen = boot(true, "bad", 128, &cases, limits(10));
    assert_eq!(
        seen.ending,
        Ending::Exited { code: Some(0) },
        "{}",
        console(&seen)
    );
    let r = results(&seen);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (r[0].outcome, r[0].error.as_deref()),
        (Outcome::Fail, Some("unknown scenario"))
    );
    assert_eq!(
        (r[1].outcome, r[1].error.as_deref()),
        (Outcome::Fail, Some("unknown parameter"))
    );
    assert_eq!(r[1].facts["unknown_parameter"], "colour");
}

#[test]
fn unpatched_kernel_panics_on_the_first_trap() {
    let seen = boot(
        false,
        "unpatched",
        128,
        &[scenario("port-churn", serde_json::json!({"limit": 10}))],
        limits(10),
    );
    match &seen.ending {
        Ending::Panic { line } => assert!(
            line.contains("panic ../i386/i386/trap.c:346: kernel_trap: trap"),
            "{line}"
        ),
        other => panic!("expected a panic, got {other:?}\n{}", console(&seen)),
    }
    assert!(console(&seen).contains("Kernel Invalid opcode trap"));
    assert!(seen.frames.is_empty());
    // Acting on the panic line beats waiting for the kernel's own reboot (about 17 s).
    assert!(seen.elapsed < Duration::from_secs(10), "{:?}", seen.elapsed);
}

#[test]
fn no_bootstrap_module_panics_in_bootstrap_create() {
    let seen = boot(true, "nomodule", 128, &[], limits(10));
    match &seen.ending {
        Ending::Panic { line } => assert!(
            line.contains("bootstrap_create: No bootstrap code loaded with the kernel!"),
            "{line}"
        ),
        other => panic!("expected a panic, got {other:?}\n{}", console(&seen)),
    }
}

#[test]
fn exhausting_cell_ends_as_hang_with_its_last_count() {
    // Port hoarding at 64 MiB stops the kernel within a second or two (see the notes).
    let seen = boot(
        true,
        "exhaust",
        64,
        &[scenario("port-hoard", serde_json::json!({"seconds": 60}))],
        limits(5),
    );
    match seen.ending {
        Ending::Hang { silent_for } => assert!(silent_for < Duration::from_secs(7)),
        ref other => panic!("expected a hang, got {other:?}\n{}", console(&seen)),
    }
    let (scenario, count) = seen
        .last_progress
        .clone()
        .expect("heartbeats before the hang");
    assert_eq!(scenario, "port-hoard");
    assert!(count > 10_000, "{count}");
    assert!(
        results(&seen).is_empty(),
        "a hung scenario reports no result"
    );
}

/// Not a check: measures the count each exhausting scenario reaches per RAM size, over
/// repeats, and prints a table (`cargo test -p xtask --test mach -- --ignored --nocapture`).
/// `KSTORM_MACH_REPEATS` (default 3) and `KSTORM_MACH_RAM` (default "64,128,256") tune it.
#[test]
#[ignore]
fn measure_counts_per_ram() {
    let repeats: usize = std::env::var("KSTORM_MACH_REPEATS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let rams: Vec<u64> = std::env::var("KSTORM_MACH_RAM")
        .unwrap_or_else(|_| "64,128,256".into())
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let only = std::env::var("KSTORM_MACH_ONLY").ok();
    let cases: Vec<(&str, MachScenario)> = vec![
        (
            "task-hoard",
            scenario("task-hoard", serde_json::json!({"seconds": 60})),
        ),
        (
            "task-churn cleanup=0",
            scenario(
                "task-churn",
                serde_json::json!({"cleanup": 0, "seconds": 60}),
            ),
        ),
        (
            "task-churn cleanup=1",
            scenario(
                "task-churn",
                serde_json::json!({"cleanup": 1, "limit": 20000, "seconds": 60}),
            ),
        ),
        (
            "port-hoard",
            scenario("port-hoard", serde_json::json!({"seconds": 60})),
        ),
        (
            "port-churn",
            scenario(
                "port-churn",
                serde_json::json!({"batch": 1000, "limit": 2000000, "seconds": 60}),
            ),
        ),
        (
            "no-senders-flood",
            scenario("no-senders-flood", serde_json::json!({"seconds": 60})),
        ),
        (
            "spawn-kill quick",
            scenario("spawn-kill", serde_json::json!({"seconds": 60})),
        ),
        (
            "spawn-kill delay=20ms",
            scenario(
                "spawn-kill",
                serde_json::json!({"kill_delay_ms": 20, "seconds": 60}),
            ),
        ),
    ];
    println!("| scenario | RAM | verdict per run: count | min | median | max |");
    println!("|---|---|---|---|---|---|");
    for (label, case) in &cases {
        if only.as_deref().is_some_and(|o| !label.starts_with(o)) {
            continue;
        }
        for &ram in &rams {
            let mut counts = Vec::new();
            let mut runs = Vec::new();
            for i in 0..repeats {
                let iso = setup(true)
                    .iso(&format!("m{ram}-{i}"), 50, std::slice::from_ref(case))
                    .unwrap();
                let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
                let l = Limits {
                    boot: Duration::from_secs(30),
                    heartbeat: Duration::from_secs(5),
                    total: Duration::from_secs(100),
                };
                let seen = boot_and_watch(&qemu_argv(&iso, ram), l).unwrap();
                let (verdict, count) = match (&seen.ending, results(&seen).first()) {
                    (Ending::Exited { .. }, Some(r)) => (
                        format!("{:?}/{}", r.outcome, r.facts["stop"]),
                        r.measurements["count"].value as u64,
                    ),
                    (Ending::Hang { .. }, _) => (
                        "hang".to_string(),
                        seen.last_progress.as_ref().map(|p| p.1).unwrap_or(0),
                    ),
                    (other, _) => (
                        format!("{other:?}"),
                        seen.last_progress.as_ref().map(|p| p.1).unwrap_or(0),
                    ),
                };
                counts.push(count);
                runs.push(format!("{verdict}: {count}"));
            }
            counts.sort();
            println!(
                "| {label} | {ram}M | {} | {} | {} | {} |",
                runs.join(", "),
                counts[0],
                counts[counts.len() / 2],
                counts[counts.len() - 1]
            );
        }
    }
}

/// Through the harness itself: the Mach cells of the hurd-zone suite, prepared by `images::prepare`
/// and `cell_artifacts`, run by `cell::run`, judged by its verdict logic.
mod through_the_harness {
    use super::ONE_GUEST;
    use kstorm::cell::{self, CellEnv};
    use kstorm::config::{Catalog, RamSize};
    use kstorm::images;
    use kstorm::matrix::{expand, Selection};
    use kstorm::qemu::Accel;
    use kstorm::verdict::Verdict;
    use std::path::Path;

    fn run_cells(filter: &str, ram: u64) -> Vec<cell::CellRecord> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let catalog = Catalog::load(&root).unwrap();
        let suite = catalog.suite("hurd-zone").unwrap();
        let sel = Selection {
            images: Some(vec!["gnumach".into()]),
            ram: Some(vec![RamSize(ram)]),
            filters: vec![filter.into()],
            ..Selection::default()
        };
        let cells = expand(suite, &catalog, &sel).unwrap();
        assert!(!cells.is_empty(), "no cell matches {filter}");
        let cache = super::cache_dir();
        let out = tempfile::tempdir().unwrap();
        let mut records = Vec::new();
        for c in &cells {
            let prepared = images::prepare(&c.image, &cache).unwrap();
            let plan = kstorm::run::plan_for(c);
            let boot = images::cell_artifacts(
                &prepared,
                &c.image,
                &[format!("kstorm.cell={}", c.id)],
                &[],
                &serde_json::to_vec(&plan).unwrap(),
                &cache,
            )
            .unwrap();
            assert!(boot.cdrom.is_some() && boot.kernel.is_none());
            assert!(boot.provenance.contains_key("patched_kernel_sha256"));
            let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
            records.push(cell::run(
                c,
                CellEnv {
                    boot,
                    accel: Accel::Tcg,
                    dir: out.path().join(&c.id),
                    progress: &|_| {},
                    guest: None,
                    faults: Default::default(),
                },
            ));
        }
        records
    }

    #[test]
    fn smoke_cell_passes() {
        let recs = run_cells("mach-smoke@", 128);
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].verdict, Verdict::Pass, "{:?}", recs[0].reports);
        assert!(recs[0].as_expected);
        let hello = recs[0].hello.as_ref().expect("hello frame");
        assert_eq!(hello["agent"], "mach-bootstrap");
    }

    #[test]
    fn port_hoard_at_64m_is_a_hang_with_its_count() {
        let recs = run_cells("mach-port-hoard@", 64);
        assert_eq!(recs.len(), 1);
        match &recs[0].verdict {
            Verdict::Hang {
                last_progress: Some(n),
                scenario: Some(s),
            } => {
                assert_eq!(s, "port-hoard");
                assert!(*n > 100_000, "{n}");
            }
            other => panic!("expected a hang, got {other:?}"),
        }
        assert!(recs[0].as_expected);
    }
}
