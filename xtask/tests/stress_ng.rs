//! stress-ng under kstorm: the YAML parser on real output (captured from real guest runs of
//! Debian's stress-ng 0.15.06 on Debian's 6.1 kernel), and real cells on the real kernel, one
//! per verdict stress-ng can end in here: pass, an OOM kill, a panic during a stressor
//! (`vm.panic_on_oom`, a real kernel panic) and a stressor that cannot run (infra).

mod common;

use common::*;
use kstorm::error::InfraCause;
use kstorm::verdict::Verdict;
use kstorm_payload::frame::Outcome;
use kstorm_payload::stress_ng;
use std::path::PathBuf;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/stress-ng")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_yaml_parser_reads_real_output() {
    let open = stress_ng::measurements(&fixture("open.yaml")).unwrap();
    assert_eq!(open["open.bogo-ops"].value, 14964.0);
    assert_eq!(open["open.bogo-ops"].unit, "count");
    assert_eq!(open["open.max-rss"].value, 3112.0);
    assert_eq!(open["open.max-rss"].unit, "KiB");
    // The stressor's own extra metric.
    assert!((open["open.nanosecs-per-open"].value - 140225.673666).abs() < 1e-6);
    // Real output is consistent with itself: the real-time rate is ops over wall time.
    for (file, s) in [
        ("open.yaml", "open"),
        ("zombie.yaml", "zombie"),
        ("bigheap-oom.yaml", "bigheap"),
    ] {
        let m = stress_ng::measurements(&fixture(file)).unwrap();
        let get = |k: &str| m[&format!("{s}.{k}")].value;
        let rate = get("bogo-ops") / get("wall-clock-time");
        let reported = get("bogo-ops-per-second-real-time");
        assert!(
            (rate - reported).abs() / reported < 0.01,
            "{file}: {rate} vs {reported}"
        );
        let usr_sys = get("bogo-ops") / (get("user-time") + get("system-time"));
        let reported = get("bogo-ops-per-second-usr-sys-time");
        assert!(
            (usr_sys - reported).abs() / reported < 0.01,
            "{file}: {usr_sys} vs {reported}"
        );
    }
    let zombie = stress_ng::measurements(&fixture("zombie.yaml")).unwrap();
    assert_eq!(zombie["zombie.created-zombies-per-stressor"].value, 515.0);
    assert_eq!(
        stress_ng::version(&fixture("open.yaml")).as_deref(),
        Some("0.15.06")
    );
    // Output without metrics is an error, not zero numbers.
    let no_metrics = fixture("open.yaml").replace("metrics:", "other:");
    assert!(stress_ng::measurements(&no_metrics).is_err());
}

const SUITE: &str = r#"
name: inline
description: stress-ng verdicts on the real kernel
images: [linux]
ram: [256M]
variants:
  - name: base
  # A real panic during a stressor: the kernel panics instead of OOM-killing.
  - name: panic-on-oom
    sysctl: {vm.panic_on_oom: "1"}
deadlines: {heartbeat: 20s, cell: 150s}
cases:
  - {name: pass, scenario: stress-ng, params: {stressors: {fork: 2}, timeout_s: 3}, expect: pass, variants: [base]}
  - {name: oom, scenario: stress-ng, params: {stressors: {bigheap: 1}, timeout_s: 20}, expect: oom, variants: [base]}
  - {name: panic, scenario: stress-ng, params: {stressors: {bigheap: 1}, timeout_s: 20}, expect: crash, variants: [panic-on-oom]}
  # Infra never meets an expectation: this cell is judged below, not by `expect`.
  - {name: skipped, scenario: stress-ng, params: {stressors: {exec: 1}, timeout_s: 3}, expect: pass, variants: [base]}
"#;

#[test]
fn stress_ng_cells_end_in_their_verdicts_on_the_real_kernel() {
    let (records, _dir) = run_suite_with(SUITE, vec![], |_| {});
    let cell = |case: &str| {
        records
            .iter()
            .find(|r| r.case == case)
            .unwrap_or_else(|| panic!("no cell {case}"))
    };

    let pass = cell("pass");
    assert_eq!(pass.verdict, Verdict::Pass, "{}", pass.verdict.describe());
    let res = &pass.results[0];
    assert_eq!(res.outcome, Outcome::Pass);
    assert!(res.measurements["fork.bogo-ops"].value > 0.0);
    assert!(res.measurements["fork.bogo-ops-per-second-real-time"].value > 0.0);
    assert_eq!(res.facts["stress_ng_exit"], "exit code 0");
    assert!(res.facts["stress_ng_args"].contains("--oomable"));
    let extra = &pass.provenance.extra;
    assert_eq!(extra["stress-ng.version"], "0.15.06");
    assert!(extra["stress-ng.build-info"].contains("gcc"), "{extra:?}");
    assert!(extra["stress-ng.libraries"].contains("libc6"), "{extra:?}");

    let oom = cell("oom");
    match &oom.verdict {
        Verdict::OomKilled { victim } => assert!(victim.contains("stress-ng"), "{victim}"),
        other => panic!("oom: {}", other.describe()),
    }

    let panic = cell("panic");
    match &panic.verdict {
        Verdict::Crash { title, .. } => assert!(title.contains("Out of memory"), "{title}"),
        other => panic!("panic: {}", other.describe()),
    }
    assert!(
        panic.results.is_empty(),
        "the kernel died before stress-ng reported"
    );

    // As root, the exec stressor skips itself and stress-ng still exits 0: not a pass.
    let skipped = cell("skipped");
    match &skipped.verdict {
        Verdict::Infra { cause, reason } => {
            assert_eq!(*cause, InfraCause::GuestTool);
            assert!(
                reason.contains("exec did not run") && reason.contains("root"),
                "{reason}"
            );
        }
        other => panic!("skipped: {}", other.describe()),
    }
    for r in records.iter().filter(|r| r.case != "skipped") {
        assert!(r.as_expected, "{}: {}", r.id, r.verdict.describe());
    }
}
