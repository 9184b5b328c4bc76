//! GNU Mach integration tests: the real Debian kernel under TCG, booted from a GRUB ISO with
//! kstorm's bootstrap task, through the harness's one cell runner (`cell::run`). Each boot is
//! bounded by deadlines and QEMU is killed at the end.
//! Needs: apt (to fetch `gnumach-image-1.8-486`), gcc-multilib, grub-pc-bin, xorriso, mtools,
//! qemu-system-x86.

mod common;

use kstorm::cell::{self, CellEnv, CellRecord};
use kstorm::config::{Deadlines, HumanDuration, Image, Name, RamSize};
use kstorm::images::{self, BootArtifacts, PreparedImage};
use kstorm::qemu::{Accel, BootMedium, MachineKind};
use kstorm::verdict::Verdict;
use kstorm_payload::frame::{decode, Frame, Message, Outcome};
use kstorm_payload::plan::{Plan, ScenarioSpec};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

/// One guest at a time: the machine has 2 cores and other work runs beside the tests.
static ONE_GUEST: Mutex<()> = Mutex::new(());

fn cache_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("kstorm-cache")
}

/// The `gnumach` (patched) or `gnumach-unpatched` image and its prepared kernel and task.
fn image(patched: bool) -> &'static (Image, PreparedImage) {
    static PATCHED: OnceLock<(Image, PreparedImage)> = OnceLock::new();
    static PLAIN: OnceLock<(Image, PreparedImage)> = OnceLock::new();
    let (slot, name) = if patched {
        (&PATCHED, "gnumach")
    } else {
        (&PLAIN, "gnumach-unpatched")
    };
    slot.get_or_init(|| {
        let image = common::catalog().images[name].clone();
        let prepared = images::prepare(&image, &cache_dir()).expect("preparing GNU Mach");
        (image, prepared)
    })
}

fn scenario(name: &str, params: serde_json::Value) -> ScenarioSpec {
    ScenarioSpec {
        name: name.into(),
        params: params.as_object().unwrap().clone(),
    }
}

/// What one boot left: its record, its console and the frames the console carried.
struct Boot {
    record: CellRecord,
    console: String,
    frames: Vec<Frame>,
    _dir: tempfile::TempDir,
}

/// What a GNU Mach cell's guest side brings: the plan and the bootstrap task (no Linux payload).
struct MachParts<'a> {
    plan: &'a Plan,
    plan_json: &'a [u8],
    task: PathBuf,
    tools: images::initramfs::ToolArchive,
}

impl MachParts<'_> {
    fn parts(&self) -> images::GuestParts<'_> {
        images::GuestParts {
            payload: &[],
            plan: self.plan,
            plan_json: self.plan_json,
            tools: &self.tools,
            mach_task: Some(&self.task),
        }
    }
}

fn mach_parts<'a>(plan: &'a Plan, plan_json: &'a [u8]) -> MachParts<'a> {
    let dir = cache_dir().join("gnumach").join("bootstrap");
    MachParts {
        plan,
        plan_json,
        task: kstorm::guest_build::mach_task::build(&dir).unwrap(),
        tools: Default::default(),
    }
}

/// Boots `scenarios` on GNU Mach through `cell::run`. With no scenarios the ISO has no
/// bootstrap module at all.
fn boot(patched: bool, id: &str, ram: u64, scenarios: Vec<ScenarioSpec>, heartbeat_s: u64) -> Boot {
    let (image, prepared) = image(patched);
    let plan = Plan {
        cell: id.into(),
        results_device: "console".into(),
        heartbeat_ms: 250,
        sysctl: Vec::new(),
        vmstat: Vec::new(),
        scenarios,
    };
    let boot = if plan.scenarios.is_empty() {
        no_module_boot(prepared)
    } else {
        let plan_json = serde_json::to_vec(&plan).unwrap();
        let parts = mach_parts(&plan, &plan_json);
        images::cell_artifacts(prepared, image, &[], &parts.parts(), &cache_dir()).unwrap()
    };
    let mut cell = kstorm::session::accel::probe_cell().unwrap();
    cell.id = id.into();
    cell.image = image.clone();
    cell.ram = RamSize(ram);
    cell.case.scenario = Name(
        plan.scenarios
            .first()
            .map_or("none".into(), |s| s.name.clone()),
    );
    let secs = |s: u64| Some(HumanDuration(Duration::from_secs(s)));
    cell.deadlines = Deadlines {
        boot: secs(30),
        heartbeat: secs(heartbeat_s),
        cell: secs(120),
    };
    let dir = tempfile::tempdir().unwrap();
    let record = {
        let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
        cell::run(
            &cell,
            CellEnv {
                boot,
                accel: Accel::Tcg,
                dir: dir.path().join("cell"),
                progress: &|_| {},
                guest: None,
                faults: Default::default(),
            },
        )
    };
    common::assert_no_qemu_mentioning(dir.path());
    let console = std::fs::read_to_string(dir.path().join("cell/console.log")).unwrap_or_default();
    let frames = console.lines().filter_map(|l| decode(l).ok()).collect();
    Boot {
        record,
        console,
        frames,
        _dir: dir,
    }
}

/// A GRUB ISO with the kernel alone: the kernel panics for want of a bootstrap task.
fn no_module_boot(prepared: &PreparedImage) -> BootArtifacts {
    let PreparedImage::Mach(mach) = prepared else {
        panic!("not a Mach image")
    };
    let iso = images::mach_iso::prepare_iso(mach, None, &[], &cache_dir()).unwrap();
    BootArtifacts {
        medium: BootMedium {
            profile: MachineKind::GrubIso,
            kernel: None,
            initrd: None,
            cmdline: Vec::new(),
            cdrom: Some(iso.cdrom),
            disk_base: None,
        },
        provenance: iso.provenance,
    }
}

fn results(b: &Boot) -> &[kstorm_payload::frame::ScenarioResult] {
    &b.record.results
}

#[test]
fn smoke_cell_speaks_frames_and_reboots_cleanly() {
    let b = boot(
        true,
        "smoke",
        128,
        vec![scenario("port-churn", serde_json::json!({"limit": 100}))],
        10,
    );
    assert_eq!(b.record.verdict, Verdict::Pass, "{}", b.console);
    let kinds: Vec<&str> = b
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
    match &b.frames[0].message {
        Message::Hello { agent, kernel, .. } => {
            assert_eq!(agent, "mach-bootstrap");
            assert!(kernel.starts_with("GNU Mach 1.8"), "{kernel}");
        }
        other => panic!("first frame {other:?}"),
    }
    // Sequence numbers count from 0 without gaps, and every frame names this cell.
    for (i, f) in b.frames.iter().enumerate() {
        assert_eq!((f.seq, f.cell.as_str()), (i as u64, "smoke"));
    }
    assert_eq!(b.record.frames.received, b.frames.len() as u64);
    assert_eq!(b.record.frames.missing, 0);
    assert_eq!(b.record.machine, Some(MachineKind::GrubIso));
    assert!(b.record.timings.boot_s.unwrap() < 30.0);
}

#[test]
fn port_churn_with_cleanup_passes() {
    let cases = vec![scenario(
        "port-churn",
        serde_json::json!({"limit": 100000, "batch": 100}),
    )];
    let b = boot(true, "churn", 64, cases, 10);
    assert_eq!(b.record.verdict, Verdict::Pass, "{}", b.console);
    let r = results(&b);
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
    // The task checks its own plan too (the harness validates it before booting; this boots
    // around that check on purpose).
    let cases = vec![
        scenario("no-such-scenario", serde_json::json!({})),
        scenario("task-churn", serde_json::json!({"limit": 10, "colour": 3})),
    ];
    let b = boot(true, "bad", 128, cases, 10);
    assert!(
        matches!(b.record.verdict, Verdict::Fail { .. }),
        "{:?}\n{}",
        b.record.verdict,
        b.console
    );
    let r = results(&b);
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

/// The crash reports, as the detector (`signatures/mach.yaml`) kept them (a trap, then the
/// kernel's panic line after its register dump).
fn crash_report(b: &Boot) -> String {
    let lines: Vec<&str> = b
        .record
        .reports
        .iter()
        .filter(|r| r.event.crash)
        .flat_map(|r| r.lines.iter().map(String::as_str))
        .collect();
    assert!(
        !lines.is_empty(),
        "no crash report: {:?}\n{}",
        b.record.verdict,
        b.console
    );
    lines.join("\n")
}

#[test]
fn unpatched_kernel_panics_on_the_first_trap() {
    let b = boot(
        false,
        "unpatched",
        128,
        vec![scenario("port-churn", serde_json::json!({"limit": 10}))],
        10,
    );
    assert_eq!(b.record.verdict.word(), "crash", "{}", b.console);
    let report = crash_report(&b);
    assert!(
        report.contains("panic ../i386/i386/trap.c:346: kernel_trap: trap"),
        "{report}"
    );
    assert!(b.console.contains("Kernel Invalid opcode trap"));
    assert!(b.frames.is_empty());
    // Acting on the panic line beats waiting for the kernel's own reboot (about 17 s).
    assert!(
        b.record.timings.total_s < 10.0,
        "{}",
        b.record.timings.total_s
    );
}

#[test]
fn no_bootstrap_module_panics_in_bootstrap_create() {
    let b = boot(true, "nomodule", 128, Vec::new(), 10);
    assert_eq!(b.record.verdict.word(), "crash", "{}", b.console);
    let report = crash_report(&b);
    assert!(
        report.contains("bootstrap_create: No bootstrap code loaded with the kernel!"),
        "{report}"
    );
}

#[test]
fn exhausting_cell_ends_as_hang_with_its_last_count() {
    // Port hoarding at 64 MiB stops the kernel within a second or two (see the notes).
    let b = boot(
        true,
        "exhaust",
        64,
        vec![scenario("port-hoard", serde_json::json!({"seconds": 60}))],
        5,
    );
    match &b.record.verdict {
        Verdict::Hang {
            last_progress: Some(count),
            scenario: Some(s),
        } => {
            assert_eq!(s, "port-hoard");
            assert!(*count > 10_000, "{count}");
        }
        other => panic!("expected a hang, got {other:?}\n{}", b.console),
    }
    // The task beats every 1/64 of its count too (at least 16), not only by the clock, so the
    // count a hang reports is within 1.6% of the true one whatever the host's speed.
    let beats: Vec<u64> = b
        .frames
        .iter()
        .filter_map(|f| match &f.message {
            Message::Hb { progress, .. } => Some(*progress),
            _ => None,
        })
        .collect();
    assert!(beats.len() > 64, "{beats:?}");
    for w in beats.windows(2) {
        assert!(w[1] - w[0] <= (w[0] / 64).max(16), "{w:?} in {beats:?}");
    }
    // Silence is kept as a report of its own; QEMU went soon after the heartbeat deadline.
    assert!(b
        .record
        .reports
        .iter()
        .any(|r| r.event.title.contains("no heartbeat from port-hoard")));
    assert!(b.record.timings.total_s < 60.0);
    assert!(results(&b).is_empty(), "a hung scenario reports no result");
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
    let cases: Vec<(&str, ScenarioSpec)> = vec![
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
                let b = boot(true, &format!("m{ram}-{i}"), ram, vec![case.clone()], 5);
                let count = b
                    .record
                    .results
                    .first()
                    .map(|r| r.measurements["count"].value as u64)
                    .or(b.record.last_progress)
                    .unwrap_or(0);
                counts.push(count);
                runs.push(format!("{}: {count}", b.record.verdict.word()));
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
    use kstorm::qemu::MachineKind;
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
            let plan = kstorm::session::plan_for(c);
            let plan_json = serde_json::to_vec(&plan).unwrap();
            let parts = super::mach_parts(&plan, &plan_json);
            let boot = images::cell_artifacts(
                &prepared,
                &c.image,
                &[format!("kstorm.cell={}", c.id)],
                &parts.parts(),
                &cache,
            )
            .unwrap();
            assert!(boot.medium.cdrom.is_some() && boot.medium.kernel.is_none());
            assert_eq!(boot.medium.profile, MachineKind::GrubIso);
            assert!(boot.provenance.patch.is_some() && boot.provenance.kernel_sha256.is_some());
            assert!(boot.provenance.extra.contains_key("bootstrap_sha256"));
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
