//! GNU Mach cells boot a GRUB ISO: the kernel, kstorm's bootstrap task (built by
//! `guest_build::mach_task`) as its module, and the cell's plan on the module's command line.

use super::gnumach::MachKernel;
use super::grub::{build_iso, grub_cfg, MultibootEntry};
use crate::host::sha256_hex;
use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

/// One scenario of a Mach cell.
#[derive(Debug, Clone, PartialEq)]
pub struct MachScenario {
    pub name: String,
    /// Parameters as the suite gives them; the task takes non-negative integers (and booleans,
    /// passed as 0/1). Which names each scenario reads is `kstorm_payload::params::mach`,
    /// checked when a suite is expanded.
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// The module command line for a cell: the task's name, the kernel's port substitutions, the
/// cell and its scenarios, and GNU Mach's task-creation words. It checks only what the line
/// can carry (a scenario or parameter the task does not know is its own to report).
pub fn module_args(cell: &str, hb_ms: u32, scenarios: &[MachScenario]) -> Result<Vec<String>> {
    // Printable ASCII without quotes: GRUB passes it through and the task echoes it in JSON.
    let word_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_graphic() && c != '\'');
    if !word_ok(cell) {
        bail!("cell id {cell:?} cannot go on the GNU Mach module line");
    }
    if !(1..=1000).contains(&hb_ms) {
        bail!("heartbeat period {hb_ms} ms: the Mach task takes 1 to 1000 ms");
    }
    if scenarios.is_empty() || scenarios.len() > 8 {
        bail!(
            "cell {cell}: a Mach cell runs 1 to 8 scenarios, not {}",
            scenarios.len()
        );
    }
    let mut args: Vec<String> = vec![
        "payload".into(),
        "${host-port}".into(),
        "${device-port}".into(),
    ];
    args.push(format!("cell={cell}"));
    args.push(format!("hb_ms={hb_ms}"));
    for s in scenarios {
        if !word_ok(&s.name) {
            bail!(
                "cell {cell}: scenario name {:?} cannot go on the GNU Mach module line",
                s.name
            );
        }
        args.push(format!("scenario={}", s.name));
        if s.params.len() > 16 {
            bail!("cell {cell}: scenario {}: at most 16 parameters", s.name);
        }
        for (key, value) in &s.params {
            if key.is_empty()
                || !key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                bail!("cell {cell}: scenario {}: parameter name {key:?} must be lower-case letters, digits, '_'", s.name);
            }
            let n = kstorm_payload::params::mach::word(value).map_err(|e| {
                anyhow::anyhow!("cell {cell}: scenario {}: parameter {key}: {e}", s.name)
            })?;
            args.push(format!("{key}={}", n.0));
        }
    }
    args.push("$(task-create)".into());
    args.push("$(task-resume)".into());
    Ok(args)
}

/// The heartbeat period the task uses at most: silence is judged by the clock. The count a
/// hang reports does not depend on it, since the task also beats every 1/64 of its count.
pub const MACH_MAX_HEARTBEAT_MS: u32 = 100;

/// The ISO for one cell of the harness: `kernel`, the `bootstrap` task with the plan's
/// scenarios on its command line.
pub fn cell_iso(
    kernel: &MachKernel,
    bootstrap: &Path,
    plan: &kstorm_payload::plan::Plan,
    kernel_args: &[String],
    cache_dir: &Path,
) -> Result<MachBoot> {
    let scenarios: Vec<MachScenario> = plan
        .scenarios
        .iter()
        .map(|s| MachScenario {
            name: s.name.clone(),
            params: s.params.clone(),
        })
        .collect();
    if !plan.sysctl.is_empty() {
        bail!(
            "cell {}: GNU Mach has no sysctls (variant sets {:?})",
            plan.cell,
            plan.sysctl
        );
    }
    let hb_ms = (plan.heartbeat_ms.clamp(1, 1000) as u32).min(MACH_MAX_HEARTBEAT_MS);
    let args = module_args(&plan.cell, hb_ms, &scenarios)?;
    prepare_iso(kernel, Some((bootstrap, args)), kernel_args, cache_dir)
}

/// The GRUB ISO for one cell and what went into it.
#[derive(Debug, Clone)]
pub struct MachBoot {
    pub cdrom: PathBuf,
    pub provenance: super::provenance::Provenance,
}

/// Kernel command line words every Mach cell gets.
pub fn kernel_args(extra: &[String]) -> Vec<String> {
    let mut words = vec!["console=com0".to_string()];
    words.extend(extra.iter().cloned());
    words
}

/// Builds (or finds cached) the ISO booting `kernel` with `bootstrap` (None: no bootstrap
/// module, which makes the kernel panic) and the given module line.
pub fn prepare_iso(
    kernel: &MachKernel,
    bootstrap: Option<(&Path, Vec<String>)>,
    extra_kernel_args: &[String],
    cache_dir: &Path,
) -> Result<MachBoot> {
    let (module, module_args) = match bootstrap {
        Some((path, args)) => (Some(path), Some(args)),
        None => (None, None),
    };
    let cfg = grub_cfg(&MultibootEntry {
        kernel_args: kernel_args(extra_kernel_args),
        module_args,
    })?;
    let cdrom = build_iso(&kernel.path, module, &cfg, cache_dir)?;
    let mut provenance = kernel.provenance();
    if let Some(m) = module {
        provenance = provenance.with("bootstrap_sha256", sha256_hex(&std::fs::read(m)?));
    }
    provenance.boot = Some("grub-mkrescue ISO, multiboot".into());
    Ok(MachBoot { cdrom, provenance })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scenario(name: &str, params: serde_json::Value) -> MachScenario {
        MachScenario {
            name: name.into(),
            params: params.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn module_line_carries_cell_and_scenarios() {
        let args = module_args(
            "c7",
            250,
            &[
                scenario("task-churn", json!({"limit": 2000, "cleanup": false})),
                scenario("port-hoard", json!({})),
            ],
        )
        .unwrap();
        assert_eq!(
            args,
            [
                "payload",
                "${host-port}",
                "${device-port}",
                "cell=c7",
                "hb_ms=250",
                "scenario=task-churn",
                "cleanup=0",
                "limit=2000",
                "scenario=port-hoard",
                "$(task-create)",
                "$(task-resume)"
            ]
        );
    }

    #[test]
    fn bad_parameters_are_named() {
        let err =
            module_args("c1", 250, &[scenario("port-hoard", json!({"limit": -1}))]).unwrap_err();
        assert!(
            err.to_string()
                .contains("parameter limit: -1 is not a non-negative integer"),
            "{err}"
        );
        let err = module_args(
            "c1",
            250,
            &[scenario("port-hoard", json!({"limit": "lots"}))],
        )
        .unwrap_err();
        assert!(err.to_string().contains("parameter limit"), "{err}");
        let err =
            module_args("c1", 250, &[scenario("port-hoard", json!({"Bad Key": 1}))]).unwrap_err();
        assert!(err.to_string().contains("parameter name"), "{err}");
        assert!(module_args("c 1", 250, &[scenario("port-hoard", json!({}))]).is_err());
        assert!(module_args("c1", 0, &[scenario("port-hoard", json!({}))]).is_err());
    }
}

#[cfg(test)]
mod suite_tests {
    use super::*;

    /// The Mach suite loads and every case turns into a module line the task accepts.
    #[test]
    fn mach_suite_cases_make_valid_module_lines() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let catalog = crate::config::Catalog::load(&root).unwrap();
        let suite = catalog.suite("hurd-zone").unwrap().clone();
        let mach_cases: Vec<_> = suite
            .cases
            .iter()
            .filter(|c| {
                c.images
                    .iter()
                    .flatten()
                    .any(|i| i.as_str().starts_with("gnumach"))
            })
            .collect();
        assert!(mach_cases.len() >= 10, "the Mach cases of hurd-zone");
        let known = kstorm_payload::registry::names(kstorm_payload::registry::Route::MachTask);
        let source = std::fs::read_to_string(
            crate::guest_build::mach_task::source_dir().join("scenarios.c"),
        )
        .unwrap();
        // The host's table of the task's scenarios is the task's own.
        let in_c = source.matches("\n    {\"").count();
        assert_eq!(
            in_c,
            known.len(),
            "scenarios.c and the registry's mach-task route"
        );
        for case in mach_cases {
            assert!(known.contains(&case.scenario.as_str()), "{}", case.scenario);
            assert!(
                source.contains(&format!("{{\"{}\",", case.scenario)),
                "{} not in scenarios.c",
                case.scenario
            );
            for params in [&case.params, &case.deep] {
                let s = MachScenario {
                    name: case.scenario.0.clone(),
                    params: params.clone(),
                };
                module_args("mach-smoke@gnumach-64M-base", 100, &[s]).unwrap();
            }
        }
    }
}
