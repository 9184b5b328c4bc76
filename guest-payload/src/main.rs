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
    // Not PID 1 (run over ssh or a serial shell): `--plan FILE [--results FILE]`, frames on
    // stdout unless --results names a file; no mounts, no power-off.
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let plan_path = arg("--plan").unwrap_or_else(|| kstorm_payload::plan::PLAN_PATH.into());
    let plan: Plan = serde_json::from_slice(&std::fs::read(plan_path).unwrap()).unwrap();
    let mut out: Box<dyn Write> = match (pid1, arg("--results")) {
        (false, Some(path)) => Box::new(std::fs::File::create(path).unwrap()),
        (false, None) => Box::new(std::io::stdout()),
        (true, _) => Box::new(
            std::fs::OpenOptions::new()
                .write(true)
                .open(&plan.results_device)
                .unwrap(),
        ),
    };
    let mut seq = 0;
    let mut send = |m: &Message| {
        let _ = out.write_all(frame::encode(&plan.cell, seq, m).as_bytes());
        let _ = out.flush();
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
