//! `verify-suites` runs a suite's full matrix (every variant, not only `base`) on real kernels
//! and lists what was not as expected, with the reason.

mod common;

use kstorm::verbs::run::RunOptions;
use kstorm::verbs::verify::{verify, VerifyOptions};

#[test]
fn every_variant_and_repeat_runs_and_a_wrong_expectation_is_listed_with_its_reason() {
    std::env::set_var("KSTORM_QUIET", "1");
    let dir = tempfile::tempdir().unwrap();
    let suite = dir.path().join("two-variants.yaml");
    // `smoke-expects-crash` is deliberately wrong: smoke passes.
    std::fs::write(
        &suite,
        r#"
name: two-variants
description: verify-suites over two variants
images: [linux]
ram: [128M]
variants:
  - name: base
  - name: init-on-free
    cmdline: [init_on_free=1]
cases:
  - {name: smoke, scenario: smoke, expect: pass}
  - {name: smoke-expects-crash, scenario: smoke, expect: crash}
"#,
    )
    .unwrap();
    let mut run = RunOptions::new("two-variants");
    run.results_root = dir.path().join("results");
    run.session.progress = false;
    run.session.jobs = 1;
    let opts = VerifyOptions {
        suites: vec![suite.display().to_string()],
        repeat: 2,
        run,
    };
    let v = verify(&opts).expect("verification runs");
    common::assert_no_qemu_mentioning(dir.path());

    assert_eq!(v.suites.len(), 1);
    let s = &v.suites[0];
    assert_eq!(s.not_run, None);
    assert_eq!((s.cells, s.as_expected, s.infra), (8, 4, 0), "{s:?}");
    let missed: Vec<&str> = s.misses.iter().map(|m| m.cell.as_str()).collect();
    assert_eq!(
        missed,
        [
            "smoke-expects-crash@linux-128M-base",
            "smoke-expects-crash@linux-128M-init-on-free"
        ]
    );
    for m in &s.misses {
        assert_eq!(m.expected, "crash");
        assert_eq!(m.got, ["pass"]);
        assert_eq!(
            (m.missed, m.runs),
            (2, 2),
            "the two repeats of a cell are one row"
        );
    }
    assert_eq!(v.exit_code(), 1);
    assert!(v.kernel.iter().all(|k| k.ends_with("-amd64")) && !v.kernel.is_empty());

    let root = std::fs::read_dir(dir.path().join("results"))
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.file_name().to_string_lossy().starts_with("verify-"))
        .expect("a verify- folder")
        .path();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("verify.json")).unwrap()).unwrap();
    assert_eq!(written["suites"][0]["misses"].as_array().unwrap().len(), 2);
    let text = std::fs::read_to_string(root.join("verify.txt")).unwrap();
    assert!(
        text.contains("NOT AS EXPECTED two-variants smoke-expects-crash@linux-128M-init-on-free"),
        "{text}"
    );
}
