//! Which accelerator the session's cells run with: KVM only when a real guest boots with it
//! (`/dev/kvm` can exist and open while guests hang or QEMU aborts), else TCG. The probe's
//! answer is cached until the host reboots.

use super::plan_for;
use crate::cell::{self, CellEnv};
use crate::config::RamSize;
use crate::host;
use crate::images::{self, PreparedImage};
use crate::matrix::Cell;
use crate::qemu::{self, Accel};
use crate::verdict::Verdict;
use anyhow::Result;
use std::collections::BTreeMap;
use std::path::Path;

/// How to choose the accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    /// KVM when a real probe boots with it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

/// Chooses KVM only when a real guest boots with it; the answer is cached until the host reboots.
pub fn choose(
    choice: AccelChoice,
    prepared: &BTreeMap<String, Result<PreparedImage, Verdict>>,
    payload: &[u8],
    cache: &Path,
) -> (Accel, String) {
    match choice {
        AccelChoice::Tcg => return (Accel::Tcg, "--accel tcg".into()),
        AccelChoice::Kvm => return (Accel::Kvm, "--accel kvm".into()),
        AccelChoice::Auto => {}
    }
    if !qemu::kvm_device_usable() {
        return (Accel::Tcg, "/dev/kvm cannot be opened".into());
    }
    let stamp = cache.join("kvm-probe.json");
    let boot_id = qemu::host_boot_id();
    if let Ok(text) = std::fs::read_to_string(&stamp) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            if v["boot_id"] == boot_id.as_str() {
                let works = v["kvm_works"].as_bool().unwrap_or(false);
                let accel = if works { Accel::Kvm } else { Accel::Tcg };
                return (
                    accel,
                    format!(
                        "KVM probe (cached for this host boot): {}",
                        v["detail"].as_str().unwrap_or("")
                    ),
                );
            }
        }
    }
    // The probe cell is a Linux payload cell: probe with a Linux kernel.
    let Some(linux) = prepared.values().find_map(|p| {
        p.as_ref()
            .ok()
            .filter(|p| matches!(p, PreparedImage::Linux(_)))
    }) else {
        return (Accel::Tcg, "no kernel to probe KVM with".into());
    };
    let (works, detail) = probe_kvm(linux, payload, cache);
    let record = serde_json::json!({"boot_id": boot_id, "kvm_works": works, "detail": detail});
    let _ = host::write_atomic(&stamp, record.to_string().as_bytes());
    (
        if works { Accel::Kvm } else { Accel::Tcg },
        format!("KVM probe: {detail}"),
    )
}

/// Boots the smoke scenario with KVM; KVM works only if the payload says hello within seconds.
/// (`/dev/kvm` can exist and open while guests hang or QEMU aborts: see the environment notes.)
fn probe_kvm(image: &PreparedImage, payload: &[u8], cache: &Path) -> (bool, String) {
    let Ok(probe) = probe_cell() else {
        return (false, "could not build the probe cell".into());
    };
    let plan = plan_for(&probe);
    let Ok(plan_json) = serde_json::to_vec(&plan) else {
        return (false, "plan".into());
    };
    let tools = images::initramfs::ToolArchive::default();
    let parts = images::GuestParts {
        payload,
        plan: &plan,
        plan_json: &plan_json,
        tools: &tools,
        mach_task: None,
    };
    let boot = match images::cell_artifacts(image, &probe.image, &[], &parts, cache) {
        Ok(b) => b,
        Err(e) => return (false, format!("{e:#}")),
    };
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return (false, e.to_string()),
    };
    let rec = cell::run(
        &probe,
        CellEnv {
            boot,
            accel: Accel::Kvm,
            dir: dir.path().to_path_buf(),
            progress: &|_| {},
            guest: None,
            faults: Default::default(),
        },
    );
    match (&rec.verdict, rec.timings.boot_s) {
        (Verdict::Pass, Some(b)) => (true, format!("guest booted with KVM in {b:.2}s")),
        (v, _) => {
            let stderr =
                std::fs::read_to_string(dir.path().join("qemu.stderr")).unwrap_or_default();
            let why = stderr
                .lines()
                .rfind(|l| !l.contains("info:"))
                .map(str::to_string)
                .unwrap_or_else(|| v.describe());
            (
                false,
                format!("guest did not boot with KVM ({why}); using TCG"),
            )
        }
    }
}

/// A smoke cell on Debian's Linux kernel, with short deadlines, for the KVM probe.
pub fn probe_cell() -> Result<Cell> {
    let yaml = r#"
name: kvm-probe
description: boots the smoke scenario with KVM; KVM is used only if this passes
images: [linux]
ram: [128M]
deadlines: {boot: 10s, cell: 20s, heartbeat: 10s}
cases:
  - {name: probe, scenario: smoke, expect: pass}
"#;
    let suite: crate::config::Suite = serde_saphyr::from_str(yaml)?;
    let image = crate::config::load_image(&host::workspace_root().join("images/linux.yaml"))?;
    let case = suite.cases[0].clone();
    Ok(Cell {
        id: "kvm-probe".into(),
        suite: "kvm-probe".into(),
        params: case.params.clone(),
        case,
        image,
        ram: RamSize(128),
        variant: suite.variants[0].clone(),
        repeat: 1,
        deadlines: suite.deadlines,
        transport: crate::config::TransportSpec::Pid1,
        record: false,
    })
}
