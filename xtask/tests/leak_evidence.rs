//! Leak checks that explain: `tmpfs-fill` under the real Debian kernel, once with nothing
//! held (under raised watermarks, where MemAvailable alone used to cry leak) and twice with a
//! leak provoked on purpose from the guest (files held open past their removal, memory pinned
//! with mlock by a live process). Each result must carry evidence whose numbers show it.

mod common;

use common::*;
use kstorm::cell::CellRecord;
use kstorm_payload::frame::{Outcome, ScenarioResult};
use kstorm_payload::memory_evidence::MemoryEvidence;

const SUITE: &str = r#"
name: inline
description: tmpfs-fill leak evidence at 128M
images: [linux]
ram: [128M]
variants:
  - name: base
  - name: min-free-8m
    sysctl: {vm.min_free_kbytes: "8192"}
deadlines: {heartbeat: 20s, cell: 240s}
cases:
  - {name: nothing-held, scenario: tmpfs-fill, params: {phases: [limited], limit_mib: 16}, expect: pass, variants: [min-free-8m]}
  - {name: held-open, scenario: tmpfs-fill, params: {phases: [limited], limit_mib: 16, test_provoke_leak: held-open}, expect: fail, variants: [base]}
  - {name: mlocked, scenario: tmpfs-fill, params: {phases: [limited], limit_mib: 16, test_provoke_leak: mlocked, test_provoke_mib: 12}, expect: fail, variants: [base]}
"#;

/// 90% of `mib`, in KiB: what "most of it" means below.
fn most_of(mib: i64) -> i64 {
    mib * 1024 * 9 / 10
}

fn evidence<'a>(records: &'a [CellRecord], case: &str) -> (&'a ScenarioResult, &'a MemoryEvidence) {
    let r = records
        .iter()
        .find(|r| r.case == case)
        .unwrap_or_else(|| panic!("no cell for {case}"));
    assert!(r.as_expected, "{}: {}", r.id, r.verdict.describe());
    let res = r
        .results
        .first()
        .unwrap_or_else(|| panic!("{case}: no result"));
    assert_eq!(
        res.evidence.len(),
        1,
        "{case}: one phase, one piece of evidence"
    );
    (res, &res.evidence[0])
}

#[test]
fn leaks_show_in_the_evidence_and_non_leaks_do_not() {
    let (live, dir) = run_suite(SUITE, vec![]);
    // The evidence reaches the cells' result.json: judge what was written, not what was held.
    let run_dir = std::fs::read_dir(dir.path().join("results"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.join("summary.json").exists())
        .expect("a run folder");
    let records = kstorm::results::Run::load(&run_dir)
        .expect("results load")
        .records;
    assert_eq!(records.len(), live.len());

    // 16 MiB in tmpfs and back: Shmem rose by the fill and fell back, and nothing obtainable
    // is missing, whatever MemAvailable says under vm.min_free_kbytes=8192.
    let (res, e) = evidence(&records, "nothing-held");
    assert_eq!(res.outcome, Outcome::Pass, "{:?}", res.error);
    assert!(!e.leaked, "{}", e.summary());
    let shmem = e
        .fields
        .iter()
        .find(|a| a.name == "Shmem")
        .expect("Shmem listed");
    let peak_growth = shmem.peak_kib.unwrap() as i64 - shmem.before_kib as i64;
    assert!(
        peak_growth >= most_of(16),
        "Shmem at the peak: {}",
        e.summary()
    );
    assert!(e.delta_kib("Shmem").abs() < 512, "{}", e.summary());
    assert!(e.missing_kib.abs() < 1024, "{}", e.summary());
    // Where MemFree went down, the per-CPU free lists took the pages (not lost).
    let free_drop = -e.delta_kib("MemFree");
    if free_drop > 1024 {
        assert!(
            e.delta_kib("per-CPU free lists") >= free_drop * 8 / 10,
            "{}",
            e.summary()
        );
    }

    // Files kept open after their removal: their 16 MiB stay in Shmem, held by the kernel.
    let (res, e) = evidence(&records, "held-open");
    assert_eq!(res.outcome, Outcome::Fail);
    assert!(
        res.error
            .as_deref()
            .unwrap_or("")
            .contains("did not come back"),
        "{:?}",
        res.error
    );
    assert!(e.leaked, "{}", e.summary());
    assert!(e.delta_kib("Shmem") >= most_of(16), "{}", e.summary());
    assert!(e.kernel_held_kib >= most_of(16), "{}", e.summary());
    assert!(e.missing_kib >= most_of(16), "{}", e.summary());

    // 12 MiB pinned by a live process: Mlocked and AnonPages, held by a process, not the kernel.
    let (res, e) = evidence(&records, "mlocked");
    assert_eq!(res.outcome, Outcome::Fail);
    assert!(e.leaked, "{}", e.summary());
    assert!(e.delta_kib("Mlocked") >= most_of(12), "{}", e.summary());
    assert!(e.process_held_kib >= most_of(12), "{}", e.summary());
    assert!(e.missing_kib >= most_of(12), "{}", e.summary());
    assert!(e.kernel_held_kib < 2048, "{}", e.summary());

    // The run's output and its report name the leaking cells and where the memory went.
    let text = kstorm::render::text::leak_evidence(&records).expect("leaks listed");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.contains("held-open@linux-128M-base: ") && text.contains("Shmem +"),
        "{text}"
    );
    assert!(
        text.contains("mlocked@linux-128M-base: ") && text.contains("Mlocked +"),
        "{text}"
    );
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("did not come back") && html.contains("per-CPU free lists"));
}
