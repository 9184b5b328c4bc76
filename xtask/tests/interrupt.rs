//! Ctrl-C on `cargo xtask run` stops every QEMU and keeps the finished results.

mod common;

use std::time::{Duration, Instant};

/// Pids of qemu processes whose parent is `parent`.
fn qemu_children(parent: u32) -> Vec<u32> {
    common::qemu_processes()
        .into_iter()
        .filter(|(pid, _)| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .map(|s| {
                    s.lines().any(|l| {
                        l.split_whitespace().collect::<Vec<_>>() == ["PPid:", &parent.to_string()]
                    })
                })
                .unwrap_or(false)
        })
        .map(|(pid, _)| pid)
        .collect()
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purpose; only a running or sleeping process counts.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
        .unwrap_or(false)
}

#[test]
fn sigint_kills_qemu_and_keeps_results() {
    let results = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args([
            "run",
            "--filter",
            "hang@linux-128M",
            "--jobs",
            "1",
            "--results",
        ])
        .arg(results.path())
        .env("KSTORM_QUIET", "1")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    let mut qemus = Vec::new();
    while qemus.is_empty() && start.elapsed() < Duration::from_secs(240) {
        std::thread::sleep(Duration::from_millis(200));
        qemus = qemu_children(pid);
    }
    assert!(!qemus.is_empty(), "no QEMU started within 240 s");
    // Let the guest boot into the hang scenario, then interrupt as a terminal would.
    std::thread::sleep(Duration::from_secs(3));
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "xtask did not stop within 20 s of SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(2), "interrupted run is an infra exit");
    for q in qemus {
        assert!(!alive(q), "QEMU {q} survived the interrupt");
    }
    let latest = results.path().join("latest");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(latest.join("summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["complete"], false);
    let cell = latest.join("cells/hang@linux-128M-base");
    assert!(cell.join("console.log").exists());
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cell.join("result.json")).unwrap()).unwrap();
    assert_eq!(record["verdict"], "infra");
}
