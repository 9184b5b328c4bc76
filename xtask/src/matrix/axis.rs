//! What a sweep varies (`sweep --axis`): the guest's RAM, a numeric kernel command-line word,
//! a sysctl the payload sets, a loader tunable of a recipe guest, or a case parameter. Parsed
//! once from the command line, checked against a cell before anything boots, then applied to
//! each cell the search asks for.

use super::Cell;
use crate::config::RamSize;
use crate::error::UsageError;
use crate::stats::breaking_point::Harder;
use kstorm_payload::registry::Route;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "name")]
pub enum Axis {
    /// Guest memory in MiB (QEMU's `-m`).
    Ram,
    /// `NAME=value` on the kernel command line (replacing the variant's own `NAME=`).
    Cmdline(String),
    /// A sysctl the payload sets before the scenario and reads back.
    Sysctl(String),
    /// A boot-loader tunable, written by the image's `guest:` recipe before the measured boot.
    Tunable(String),
    /// A numeric parameter of the case.
    Param(String),
}

impl std::str::FromStr for Axis {
    type Err = UsageError;
    fn from_str(s: &str) -> Result<Axis, UsageError> {
        let bad = |m: String| UsageError::option("--axis", m);
        if s == "ram" {
            return Ok(Axis::Ram);
        }
        let Some((kind, name)) = s.split_once(':') else {
            return Err(bad(format!(
                "{s:?}: write ram, cmdline:NAME, sysctl:NAME, tunable:NAME or param:NAME"
            )));
        };
        let ok = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
            && !name.contains("..");
        if !ok {
            return Err(bad(format!(
                "{s:?}: the name must be 1-64 letters, digits, '_', '.', '-'"
            )));
        }
        let name = name.to_string();
        match kind {
            "cmdline" => Ok(Axis::Cmdline(name)),
            "sysctl" => Ok(Axis::Sysctl(name)),
            "tunable" => Ok(Axis::Tunable(name)),
            "param" => Ok(Axis::Param(name)),
            _ => Err(bad(format!(
                "{s:?}: unknown axis kind {kind:?} (ram, cmdline, sysctl, tunable, param)"
            ))),
        }
    }
}

impl fmt::Display for Axis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Axis::Ram => f.write_str("ram"),
            Axis::Cmdline(n) => write!(f, "cmdline:{n}"),
            Axis::Sysctl(n) => write!(f, "sysctl:{n}"),
            Axis::Tunable(n) => write!(f, "tunable:{n}"),
            Axis::Param(n) => write!(f, "param:{n}"),
        }
    }
}

impl Axis {
    /// A short name for tables, plots and cell ids: `ram`, or the knob's own name.
    pub fn label(&self) -> &str {
        match self {
            Axis::Ram => "ram",
            Axis::Cmdline(n) | Axis::Sysctl(n) | Axis::Tunable(n) | Axis::Param(n) => n,
        }
    }

    /// The unit values are written in on plots (RAM in MiB; the others as the kernel takes them).
    pub fn unit(&self) -> &'static str {
        match self {
            Axis::Ram => "MiB",
            _ => "",
        }
    }

    /// Less RAM, a smaller reserve or a smaller kernel map is harder; a case's count grows.
    pub fn default_harder(&self) -> Harder {
        match self {
            Axis::Param(_) => Harder::Higher,
            _ => Harder::Lower,
        }
    }

    /// Only a case parameter is a count a cell can stop short of.
    pub fn counts(&self) -> bool {
        matches!(self, Axis::Param(_))
    }

    /// A value written on the command line: RAM as `48M`, `1G` or MiB; the others as numbers,
    /// with an optional binary `K`, `M` or `G` (a tunable such as `vm.kmem_size`).
    pub fn parse_value(&self, option: &str, s: &str) -> Result<f64, UsageError> {
        let bad = |m: String| UsageError::option(option, m);
        if *self == Axis::Ram {
            return s.parse::<RamSize>().map(|r| r.mib() as f64).map_err(bad);
        }
        let t = s.trim();
        let (num, mult) = match t.chars().last() {
            Some('k' | 'K') => (&t[..t.len() - 1], 1024.0),
            Some('m' | 'M') => (&t[..t.len() - 1], 1024.0 * 1024.0),
            Some('g' | 'G') => (&t[..t.len() - 1], 1024.0 * 1024.0 * 1024.0),
            _ => (t, 1.0),
        };
        match num.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v * mult),
            _ => Err(bad(format!(
                "{s:?} is not a number for {self} (e.g. 4096, 64M)"
            ))),
        }
    }

    /// The value the cell has now, when it sets one.
    pub fn current(&self, cell: &Cell) -> Option<f64> {
        let word = |n: &str, words: &[String]| {
            words
                .iter()
                .rev()
                .find_map(|w| w.strip_prefix(&format!("{n}=")))
                .and_then(|v| v.parse::<f64>().ok())
        };
        match self {
            Axis::Ram => Some(cell.ram.mib() as f64),
            Axis::Cmdline(n) => {
                word(n, &cell.variant.cmdline).or_else(|| word(n, &cell.image.boot.cmdline))
            }
            Axis::Sysctl(n) => cell.variant.sysctl.get(n).and_then(|v| v.parse().ok()),
            Axis::Tunable(n) => cell.variant.tunables.get(n).and_then(|v| v.parse().ok()),
            Axis::Param(n) => cell.params.get(n).and_then(|v| v.as_f64()),
        }
    }

    /// Whether values are whole numbers (every kernel knob here; a parameter as the case has it).
    pub fn integer(&self, cell: &Cell) -> bool {
        match self {
            Axis::Param(n) => cell.params.get(n).is_some_and(|v| v.is_i64() || v.is_u64()),
            _ => true,
        }
    }

    /// Whether the axis means anything on this cell's image, before anything boots.
    pub fn check(&self, cell: &Cell, option: &str) -> Result<(), UsageError> {
        let route = cell.image.route();
        let bad = |m: String| Err(UsageError::option(option, m));
        match self {
            Axis::Param(n) if cell.params.get(n).and_then(|v| v.as_f64()).is_none() => bad(format!(
                "{self}: case {} has no numeric parameter {n} (has: {})",
                cell.case.name,
                cell.params.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Axis::Sysctl(_) if route == Route::MachTask => bad(format!(
                "{self}: image {} is GNU Mach, which has no sysctls",
                cell.image.name
            )),
            Axis::Tunable(_) if cell.image.guest.is_none() => bad(format!(
                "{self}: image {} has no guest: recipe to write loader tunables (FreeBSD images do)",
                cell.image.name
            )),
            _ => Ok(()),
        }
    }

    /// The cell with this axis set to `value`.
    pub fn apply(&self, cell: &mut Cell, value: f64) {
        let text = format_value(value);
        match self {
            Axis::Ram => cell.ram = RamSize(value.round().max(1.0) as u64),
            Axis::Cmdline(n) => {
                let prefix = format!("{n}=");
                cell.variant.cmdline.retain(|w| !w.starts_with(&prefix));
                cell.variant.cmdline.push(format!("{n}={text}"));
            }
            Axis::Sysctl(n) => {
                cell.variant.sysctl.insert(n.clone(), text);
            }
            Axis::Tunable(n) => {
                cell.variant.tunables.insert(n.clone(), text);
            }
            Axis::Param(n) => {
                let json = if self.integer(cell) {
                    serde_json::Value::from(value.round() as i64)
                } else {
                    serde_json::Value::from(value)
                };
                cell.params.insert(n.clone(), json);
            }
        }
    }

    /// The id part naming a value: `ram-48M`, `limit-1000`.
    pub fn id_part(&self, value: f64) -> String {
        match self {
            Axis::Ram => format!("ram-{}", RamSize(value.round() as u64)),
            _ => format!("{}-{}", self.label(), format_value(value)),
        }
    }

    /// What the kernel reported back for this axis in a finished cell (sysctls and tunables,
    /// read back by the payload or the guest driver), when it did.
    pub fn reported(&self, results: &[kstorm_payload::frame::ScenarioResult]) -> Option<String> {
        let key = match self {
            Axis::Sysctl(n) => format!("sysctl.{n}.reported"),
            Axis::Tunable(n) => format!("tunable.{n}.reported"),
            _ => return None,
        };
        results.iter().find_map(|r| r.facts.get(&key).cloned())
    }
}

/// Whole numbers without a fraction (the kernel parses `4096`, not `4096.0`).
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_and_print() {
        for s in [
            "ram",
            "cmdline:hugepages",
            "sysctl:vm.min_free_kbytes",
            "tunable:vm.kmem_size",
            "param:limit",
        ] {
            assert_eq!(s.parse::<Axis>().unwrap().to_string(), s);
        }
        for bad in [
            "rom",
            "ram:x",
            "sysctl:",
            "sysctl:a/b",
            "sysctl:a..b",
            "knob:x",
        ] {
            let e = bad.parse::<Axis>().unwrap_err();
            assert_eq!(e.field, "--axis", "{bad}");
        }
    }

    #[test]
    fn values_parse_per_axis() {
        assert_eq!(Axis::Ram.parse_value("--from", "48M").unwrap(), 48.0);
        assert_eq!(Axis::Ram.parse_value("--from", "1G").unwrap(), 1024.0);
        assert_eq!(Axis::Ram.parse_value("--to", "256").unwrap(), 256.0);
        assert_eq!(
            Axis::Ram.parse_value("--to", "8M").unwrap_err().field,
            "--to"
        );
        let kmem = Axis::Tunable("vm.kmem_size".into());
        assert_eq!(kmem.parse_value("--from", "64M").unwrap(), 64.0 * 1048576.0);
        let min_free = Axis::Sysctl("vm.min_free_kbytes".into());
        assert_eq!(min_free.parse_value("--from", "4096").unwrap(), 4096.0);
        assert!(min_free.parse_value("--from", "lots").is_err());
        assert_eq!(format_value(4096.0), "4096");
        assert_eq!(Axis::Ram.id_part(48.0), "ram-48M");
    }

    /// On a real cell of the default suite: each axis reads, sets and checks what it names.
    #[test]
    fn axes_apply_to_real_cells() {
        let catalog = crate::config::Catalog::load(&crate::host::workspace_root()).unwrap();
        let suite = catalog.suite("default").unwrap();
        let cells = super::super::expand(suite, &catalog, &Default::default()).unwrap();
        let find = |id: &str| cells.iter().find(|c| c.id.starts_with(id)).unwrap().clone();
        let mut fork = find("fork-hold@linux-128M");
        assert_eq!(Axis::Ram.current(&fork), Some(128.0));
        Axis::Ram.apply(&mut fork, 48.0);
        assert_eq!(fork.ram.mib(), 48);
        let children = Axis::Param("children".into());
        assert_eq!(children.current(&fork), Some(64.0));
        children.apply(&mut fork, 100.0);
        assert_eq!(fork.params["children"], serde_json::json!(100));
        let min_free = Axis::Sysctl("vm.min_free_kbytes".into());
        assert_eq!(min_free.current(&fork), None);
        min_free.apply(&mut fork, 2048.0);
        assert_eq!(fork.variant.sysctl["vm.min_free_kbytes"], "2048");
        let hp = Axis::Cmdline("hugepages".into());
        hp.apply(&mut fork, 4.0);
        hp.apply(&mut fork, 8.0);
        assert_eq!(hp.current(&fork), Some(8.0));
        assert_eq!(
            fork.variant
                .cmdline
                .iter()
                .filter(|w| w.starts_with("hugepages="))
                .count(),
            1
        );
        assert!(Axis::Param("nope".into()).check(&fork, "--axis").is_err());
        assert!(Axis::Tunable("vm.kmem_size".into())
            .check(&fork, "--axis")
            .is_err());
        let mach = find("mach-port-churn@gnumach");
        assert!(min_free.check(&mach, "--axis").is_err());
        assert!(Axis::Ram.check(&mach, "--axis").is_ok());
    }
}
