//! Machine profiles: what differs between the ways kstorm boots a guest (devices, results port,
//! command-line words), read from `xtask/machines.yaml` so that the QEMU builder stays generic.

use crate::config::Machine;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The ways a guest boots. Every one has an entry in `xtask/machines.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MachineKind {
    /// A kernel booted directly on `-M microvm` (PVH `vmlinux`).
    Microvm,
    /// A kernel booted directly on `-M pc` (bzImage).
    Pc,
    /// A GRUB rescue ISO on `-M pc` (GNU Mach and its bootstrap task).
    GrubIso,
    /// A disk image booted by the firmware and the image's own boot loader.
    Disk,
    /// kstorm's GRUB ISO booting a kernel and modules from an IDE disk (GNU/Hurd: its disk
    /// drivers know IDE and AHCI, not virtio).
    GrubIde,
}

impl MachineKind {
    pub const ALL: [MachineKind; 5] = [
        MachineKind::Microvm,
        MachineKind::Pc,
        MachineKind::GrubIso,
        MachineKind::Disk,
        MachineKind::GrubIde,
    ];

    /// The profile of a kernel booted directly on `machine`.
    pub fn direct(machine: Machine) -> MachineKind {
        match machine {
            Machine::Microvm => MachineKind::Microvm,
            Machine::Pc => MachineKind::Pc,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MachineKind::Microvm => "microvm",
            MachineKind::Pc => "pc",
            MachineKind::GrubIso => "grub-iso",
            MachineKind::Disk => "disk",
            MachineKind::GrubIde => "grub-ide",
        }
    }

    /// This profile's entry of the table.
    pub fn spec(self) -> &'static MachineProfile {
        &table()[&self]
    }
}

impl std::fmt::Display for MachineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of `xtask/machines.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineProfile {
    pub description: String,
    pub qemu_machine: String,
    pub block_device: String,
    pub net_device: String,
    /// The results serial port; `None`: frames come on the console.
    pub results_port: Option<ResultsPort>,
    /// Words added to a directly booted kernel's command line (`{tsc_khz}` expanded).
    #[serde(default)]
    pub kernel_cmdline: Vec<String>,
    #[serde(default)]
    pub extra_args: Vec<String>,
}

/// The serial port the payload writes its frames to, seen from both sides.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsPort {
    /// QEMU's `-device` (without its `chardev=`).
    pub device: String,
    /// The device the guest opens (`/dev/ttyS1`).
    pub guest: String,
}

impl MachineProfile {
    /// The kernel command-line words, with the host's TSC frequency filled in.
    pub fn kernel_words(&self) -> Vec<String> {
        self.kernel_cmdline
            .iter()
            .map(|w| {
                if w.contains("{tsc_khz}") {
                    w.replace("{tsc_khz}", &crate::host::tsc_khz().to_string())
                } else {
                    w.clone()
                }
            })
            .collect()
    }
}

/// The table, loaded and checked once. It ships with the repository: a broken one is a bug
/// the tests catch, so it panics with the file's own error.
fn table() -> &'static BTreeMap<MachineKind, MachineProfile> {
    static TABLE: OnceLock<BTreeMap<MachineKind, MachineProfile>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let path = crate::host::workspace_root().join("xtask/machines.yaml");
        load(&path).unwrap_or_else(|e| panic!("{e:#}"))
    })
}

/// Reads a machine table and checks that it describes every profile.
pub fn load(path: &std::path::Path) -> Result<BTreeMap<MachineKind, MachineProfile>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (table, _): (BTreeMap<MachineKind, MachineProfile>, _) =
        crate::yaml::parse_yaml(path, &text)?;
    for p in MachineKind::ALL {
        if !table.contains_key(&p) {
            bail!("{}: no entry for the machine profile {p}", path.display());
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_table_covers_every_profile() {
        let t = load(&crate::host::workspace_root().join("xtask/machines.yaml")).unwrap();
        assert_eq!(t.len(), MachineKind::ALL.len());
        assert_eq!(t[&MachineKind::GrubIso].results_port, None);
        assert!(t[&MachineKind::Microvm].qemu_machine.starts_with("microvm"));
        let words = t[&MachineKind::Microvm].kernel_words();
        assert!(words.iter().any(|w| w.starts_with("tsc_early_khz=")
            && w["tsc_early_khz=".len()..].parse::<u64>().is_ok()));
        // A directly booted Linux resets by triple fault, on which -no-reboot exits QEMU.
        for p in [MachineKind::Microvm, MachineKind::Pc] {
            assert!(
                t[&p].kernel_words().contains(&"reboot=t".to_string()),
                "{p}"
            );
        }
    }

    #[test]
    fn a_table_missing_a_profile_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("machines.yaml");
        std::fs::write(
            &path,
            "pc: {description: d, qemu_machine: pc, block_device: b, net_device: n, results_port: null}\n",
        )
        .unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(err.contains("microvm"), "{err}");
    }
}
