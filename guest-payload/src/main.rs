//! Interim PID-1 payload used while the full payload (issue 3/4) is written on its own branch:
//! enough to drive the harness (smoke, panic, hang).

use kstorm_payload::frame::{self, Message, Outcome, ScenarioResult};
use kstorm_payload::plan::Plan;
use std::collections::BTreeMap;
use std::io::Write;

fn mount(src: &str, target: &str, fstype: &str) {
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let _ = std::fs::create_dir_all(target);
    unsafe {
        libc::mount(
            c(src).as_ptr(),
            c(target).as_ptr(),
            c(fstype).as_ptr(),
            0,
            std::ptr::null(),
        )
    };
}

fn main() {
    let pid1 = std::process::id() == 1;
    if pid1 {
        mount("proc", "/proc", "proc");
        mount("sysfs", "/sys", "sysfs");
        mount("devtmpfs", "/dev", "devtmpfs");
    }
    let plan: Plan =
        serde_json::from_slice(&std::fs::read(kstorm_payload::plan::PLAN_PATH).unwrap()).unwrap();
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .open(&plan.results_device)
        .unwrap();
    let mut seq = 0;
    let mut send = |m: &Message| {
        let _ = out.write_all(frame::encode(&plan.cell, seq, m).as_bytes());
        seq += 1;
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    send(&Message::Hello {
        agent: "linux-payload".into(),
        agent_version: "interim".into(),
        kernel,
        mem_total_kib: None,
        ncpu: None,
    });
    for (i, s) in plan.scenarios.iter().enumerate() {
        send(&Message::Start {
            scenario: s.name.clone(),
            index: i as u32,
        });
        match s.name.as_str() {
            "panic" => {
                let _ = std::fs::write("/proc/sysrq-trigger", "c");
            }
            "hang" => std::thread::sleep(std::time::Duration::from_secs(600)),
            _ => {}
        }
        send(&Message::Result(ScenarioResult {
            scenario: s.name.clone(),
            index: i as u32,
            outcome: Outcome::Pass,
            error: None,
            measurements: BTreeMap::new(),
            facts: BTreeMap::new(),
            series: BTreeMap::new(),
        }));
    }
    send(&Message::Done);
    if pid1 {
        unsafe {
            libc::sync();
            libc::reboot(libc::RB_POWER_OFF);
        }
    }
}
