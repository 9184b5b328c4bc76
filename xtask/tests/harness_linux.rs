//! The harness against the real Debian kernel under QEMU: each verdict the harness can give is
//! provoked for real and checked, and no QEMU may outlive a test.

mod common;

use common::*;
use kstorm::detect::Kind;
use kstorm::verdict::Verdict;

#[test]
fn smoke_passes_at_128m_and_256m() {
    let (records, _dir) = run_suite(
        r#"
name: inline
description: smoke at two RAM sizes
images: [linux]
ram: [128M, 256M]
cases:
  - {name: smoke, scenario: smoke, expect: pass}
"#,
        vec![],
    );
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(
            r.verdict,
            Verdict::Pass,
            "{}: {}",
            r.id,
            r.verdict.describe()
        );
        assert!(r.as_expected);
        assert_eq!(r.results.len(), 1);
        let hello = r.hello.as_ref().expect("payload said hello");
        assert!(
            hello["kernel"].as_str().unwrap().ends_with("-amd64"),
            "{hello}"
        );
        assert!(r.provenance.origin.starts_with("debian:linux-image-"));
        assert_eq!(
            r.provenance.source,
            kstorm::images::SourceKind::DebianPackage
        );
        assert_eq!(r.provenance.sha256.len(), 64);
        assert!(r.timings.boot_s.unwrap() > 0.0);
        assert_eq!(
            r.frames.channel,
            Some(kstorm::cell::FrameChannel::ResultsPort)
        );
        assert_eq!(r.frames.bad_checksum + r.frames.missing, 0);
    }
    let rams: Vec<u64> = records.iter().map(|r| r.ram_mib).collect();
    assert_eq!(rams, vec![128, 256]);
}

#[test]
fn sysrq_panic_is_a_crash_with_its_title() {
    let (records, dir) = run_suite(
        r#"
name: inline
description: sysrq panic
images: [linux]
ram: [128M]
cases:
  - {name: panic, scenario: panic, expect: crash, expect_title: sysrq triggered crash}
"#,
        vec![],
    );
    let r = only(records);
    match &r.verdict {
        Verdict::Crash { kind, title } => {
            assert_eq!(*kind, Kind::Panic);
            assert!(title.contains("sysrq triggered crash"), "{title}");
        }
        v => panic!("expected a crash, got {}", v.describe()),
    }
    assert!(r.as_expected);
    let log = std::fs::read_to_string(
        dir.path()
            .join("results/latest/cells")
            .join(&r.id)
            .join("console.log"),
    )
    .unwrap();
    assert!(
        log.contains("Kernel panic - not syncing"),
        "console.log holds the panic"
    );
    assert!(
        !r.reports.is_empty() && r.reports[0].lines.len() > 1,
        "the report keeps the trace lines"
    );
}

#[test]
fn blocked_payload_is_a_hang_within_the_heartbeat_deadline() {
    let (records, _dir) = run_suite(
        r#"
name: inline
description: heartbeat stops
images: [linux]
ram: [128M]
deadlines: {heartbeat: 5s, cell: 120s}
cases:
  - {name: hang, scenario: hang, expect: hang}
"#,
        vec![],
    );
    let r = only(records);
    assert!(
        matches!(r.verdict, Verdict::Hang { .. }),
        "{}",
        r.verdict.describe()
    );
    let boot = r.timings.boot_s.unwrap();
    // Detected after 5 s of silence, not at the cell deadline (120 s).
    assert!(
        r.timings.total_s < boot + 5.0 + 5.0,
        "hang took {}s to detect (boot {boot}s)",
        r.timings.total_s
    );
    assert!(r
        .reports
        .iter()
        .any(|rep| rep.event.kind == Kind::NoProgress));
}

#[test]
fn missing_kernel_package_is_infra_not_crash() {
    let dir = tempfile::tempdir().unwrap();
    let image = inline_image(
        dir.path(),
        "linux-missing",
        r#"
name: linux-missing
description: a metapackage that does not exist
os: linux
source: {debian-kernel: {metapackage: linux-image-kstorm-does-not-exist}}
boot: {machine: microvm, cmdline: [console=ttyS0]}
"#,
    );
    let (records, _d) = run_suite(
        r#"
name: inline
description: missing kernel
images: [linux-missing]
ram: [128M]
cases:
  - {name: smoke, scenario: smoke, expect: pass}
"#,
        vec![image],
    );
    let r = only(records);
    match &r.verdict {
        Verdict::Infra { cause, reason } => {
            assert_eq!(*cause, kstorm::error::InfraCause::Download);
            assert!(
                reason.contains("linux-image-kstorm-does-not-exist"),
                "{reason}"
            )
        }
        v => panic!("expected infra, got {}", v.describe()),
    }
    assert!(!r.as_expected);
}

#[test]
fn wrong_sha256_of_a_downloaded_kernel_is_infra() {
    // A real HTTP server on 127.0.0.1 serves a real file; the image pins the wrong hash.
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let handle = std::thread::spawn(move || {
        if let Ok(Some(req)) = server.recv_timeout(std::time::Duration::from_secs(60)) {
            let _ = req.respond(tiny_http::Response::from_data(
                b"not the kernel you pinned".to_vec(),
            ));
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
name: linux-badsha
description: a kernel whose pinned hash does not match
os: linux
source: {{downloaded-kernel: {{url: "http://127.0.0.1:{port}/bzImage", sha256: "{}"}}}}
boot: {{machine: pc, cmdline: [console=ttyS0]}}
"#,
        "0".repeat(64)
    );
    let image = inline_image(dir.path(), "linux-badsha", &yaml);
    let cache = dir.path().join("cache");
    let (records, _d) = run_suite_with(
        r#"
name: inline
description: wrong hash
images: [linux-badsha]
ram: [128M]
cases:
  - {name: smoke, scenario: smoke, expect: pass}
"#,
        vec![image],
        |opts| opts.session.cache = cache,
    );
    handle.join().unwrap();
    let r = only(records);
    match &r.verdict {
        Verdict::Infra { cause, reason } => {
            assert_eq!(*cause, kstorm::error::InfraCause::Download);
            assert!(reason.contains("SHA-256 mismatch"), "{reason}")
        }
        v => panic!("expected infra, got {}", v.describe()),
    }
}

#[test]
fn bzimage_on_pc_fallback_path_passes_smoke() {
    let (records, _dir) = run_suite(
        r#"
name: inline
description: the slow path
images: [linux-pc]
ram: [128M]
cases:
  - {name: smoke, scenario: smoke, expect: pass}
"#,
        vec![],
    );
    let r = only(records);
    assert_eq!(r.verdict, Verdict::Pass, "{}", r.verdict.describe());
    assert_eq!(r.machine, Some(kstorm::qemu::MachineKind::Pc));
    assert!(
        r.provenance
            .boot
            .as_deref()
            .is_some_and(|b| b.contains("vmlinuz") && b.ends_with("on pc")),
        "{:?}",
        r.provenance
    );
}
