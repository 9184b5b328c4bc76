//! stress-ng under kstorm, the parts the payload and the harness share: the argument vector a
//! `stress-ng` case runs, what stress-ng's exit status means for the verdict, and its `--yaml`
//! metrics as kstorm measurements. Pure functions, so the harness tests them on real output.

use crate::frame::Measurement;
use crate::params::StressNg;
use std::collections::BTreeMap;

/// Where the PID-1 initramfs carries the binary when a cell needs it.
pub const BINARY: &str = "/usr/bin/stress-ng";

/// stress-ng's argument vector (without the program name): the stressors, then kstorm's own
/// options, then the case's `extra` words.
pub fn args(p: &StressNg, yaml_path: &str, temp_dir: &str) -> Vec<String> {
    let mut a = Vec::new();
    for (name, instances) in &p.stressors {
        a.push(format!("--{name}"));
        a.push(instances.to_string());
    }
    let own = [
        "--timeout",
        &format!("{}s", p.timeout_s),
        "--metrics",
        "--yaml",
        yaml_path,
        "--oomable",
        "--temp-path",
        temp_dir,
    ];
    a.extend(own.iter().map(|s| s.to_string()));
    a.extend(p.extra.iter().cloned());
    a
}

/// What stress-ng's exit status says, per `man stress-ng` (EXIT STATUS) of Debian's 0.15.06.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitMeaning {
    Pass,
    /// The load ran and the kernel misbehaved (a stressor failed or died of a signal).
    Fail(String),
    /// stress-ng could not run its load here: not the kernel's fault.
    Infra(String),
    /// The load ran but its numbers cannot be trusted (typically a stressor OOM-killed while
    /// counting): the verdict comes from what the kernel showed, the reason is kept.
    Untrusted(String),
}

pub fn exit_meaning(code: i32) -> ExitMeaning {
    use ExitMeaning::*;
    let why = |text: &str| format!("stress-ng exit {code}: {text}");
    match code {
        0 => Pass,
        1 => Infra(why(
            "bad options or a fatal resource issue in stress-ng's own harness",
        )),
        2 => Fail(why("one or more stressors failed")),
        3 => Infra(why(
            "a stressor could not start for lack of resources (ENOMEM, ENOSPC, a missing system call)",
        )),
        4 => Infra(why("a stressor is not implemented on this system")),
        5 => Fail(why("a stressor was killed by an unexpected signal")),
        6 => Fail(why(
            "a stressor exited unexpectedly and its timing metrics are missing",
        )),
        7 => Untrusted(why(
            "bogo-ops metrics may be untrustworthy (a stressor was killed while updating its counter, e.g. by the OOM killer)",
        )),
        other => Fail(format!("stress-ng exit {other}: not a documented status")),
    }
}

/// The measurements of one run's `--yaml` output: for each entry of `metrics`, every number
/// as `<stressor>.<key>` (bogo ops, both rates, times, max RSS and the stressor's own extras).
pub fn measurements(yaml: &str) -> Result<BTreeMap<String, Measurement>, String> {
    let doc: serde_json::Value =
        serde_saphyr::from_str(yaml).map_err(|e| format!("stress-ng YAML: {e}"))?;
    let metrics = doc
        .get("metrics")
        .and_then(|m| m.as_array())
        .ok_or("stress-ng YAML has no metrics list (was --metrics given?)")?;
    let mut out = BTreeMap::new();
    for entry in metrics {
        let Some(fields) = entry.as_object() else {
            continue;
        };
        let Some(stressor) = fields.get("stressor").and_then(|s| s.as_str()) else {
            return Err("stress-ng YAML: a metrics entry names no stressor".into());
        };
        for (key, value) in fields {
            if let Some(v) = value.as_f64() {
                let name = format!("{stressor}.{key}");
                out.insert(name, Measurement::new(v, unit(key)));
            }
        }
    }
    if out.is_empty() {
        return Err("stress-ng YAML: the metrics list holds no numbers".into());
    }
    Ok(out)
}

/// The stressors asked for that have no entry in the YAML's `metrics`: stress-ng skips a
/// stressor it cannot run here (as root, without a kernel feature) and may still exit 0.
pub fn missing_stressors(
    p: &StressNg,
    measurements: &BTreeMap<String, Measurement>,
) -> Vec<String> {
    p.stressors
        .keys()
        .filter(|s| !measurements.contains_key(&format!("{s}.bogo-ops")))
        .cloned()
        .collect()
}

/// stress-ng's version as its YAML's `system-info` reports it.
pub fn version(yaml: &str) -> Option<String> {
    let doc: serde_json::Value = serde_saphyr::from_str(yaml).ok()?;
    let v = doc.get("system-info")?.get("stress-ng-version")?;
    Some(match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The unit of a metrics key, by stress-ng's naming.
fn unit(key: &str) -> &'static str {
    match key {
        "bogo-ops" => "count",
        k if k.starts_with("bogo-ops-per-second") => "ops/s",
        "wall-clock-time" | "user-time" | "system-time" => "s",
        "cpu-usage-per-instance" => "%",
        "max-rss" => "KiB",
        k if k.ends_with("-per-sec") || k.ends_with("-per-second") => "/s",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_words_with_kstorm_options() {
        let p = StressNg {
            stressors: [("mmap".to_string(), 2), ("fork".to_string(), 4)].into(),
            timeout_s: 30,
            extra: vec!["--mmap-bytes".into(), "64M".into()],
            deadline_s: None,
            uid: None,
        };
        let a = args(&p, "/tmp/m.yaml", "/tmp");
        assert_eq!(&a[..4], ["--fork", "4", "--mmap", "2"]);
        for want in ["--oomable", "--metrics", "30s", "/tmp/m.yaml"] {
            assert!(a.iter().any(|w| w == want), "{want} in {a:?}");
        }
        assert_eq!(&a[a.len() - 2..], ["--mmap-bytes", "64M"]);
    }

    #[test]
    fn every_documented_status_has_its_meaning() {
        assert_eq!(exit_meaning(0), ExitMeaning::Pass);
        assert!(matches!(exit_meaning(2), ExitMeaning::Fail(_)));
        assert!(matches!(exit_meaning(3), ExitMeaning::Infra(_)));
        assert!(matches!(exit_meaning(4), ExitMeaning::Infra(_)));
        assert!(matches!(exit_meaning(5), ExitMeaning::Fail(r) if r.contains("signal")));
        assert!(matches!(exit_meaning(7), ExitMeaning::Untrusted(_)));
        assert!(matches!(exit_meaning(42), ExitMeaning::Fail(_)));
    }
}
