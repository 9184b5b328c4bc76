//! `stress-ng`: runs Debian's stress-ng inside the guest with the stressors a case names.
//!
//! Every value becomes one word of stress-ng's argument vector (never a shell string), so a
//! stressor name must look like one and `extra` may not take over the options kstorm relies on.

use super::{Check, ParamError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Options kstorm sets itself: the metrics file it reads, the bound it waits for, and
/// `--oomable` (root's stressors are unkillable otherwise).
const RESERVED: &[&str] = &[
    "--yaml",
    "-Y",
    "--timeout",
    "-t",
    "--oomable",
    "--metrics",
    "--log-file",
    "--job",
    "-j",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StressNg {
    /// Stressor name to instance count (`fork: 4` is `--fork 4`; 0 is one per CPU).
    pub stressors: BTreeMap<String, u32>,
    /// stress-ng's own bound (`--timeout`).
    pub timeout_s: u32,
    /// More words for stress-ng, passed as they are (`[--mmap-bytes, 64M]`).
    pub extra: Vec<String>,
    /// kstorm's bound on the whole run; the payload kills stress-ng after it (default: the
    /// timeout plus 30 s, for stressors that are slow to stop on a machine short of memory).
    pub deadline_s: Option<f64>,
    /// Run stress-ng as this user and group id instead of root (the `exec` stressor refuses
    /// to run as root).
    pub uid: Option<u32>,
}

impl Default for StressNg {
    fn default() -> Self {
        StressNg {
            stressors: BTreeMap::from([("fork".to_string(), 1)]),
            timeout_s: 5,
            extra: Vec::new(),
            deadline_s: None,
            uid: None,
        }
    }
}

impl StressNg {
    pub fn deadline(&self) -> f64 {
        self.deadline_s.unwrap_or(self.timeout_s as f64 + 30.0)
    }
}

impl Check for StressNg {
    fn check(&self) -> Result<(), ParamError> {
        if self.stressors.is_empty() {
            return Err(ParamError::field("stressors", "names no stressor"));
        }
        for name in self.stressors.keys() {
            let word = !name.is_empty()
                && !name.starts_with('-')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !word {
                return Err(ParamError::field(
                    format!("stressors.{name}"),
                    "a stressor name is lower-case letters, digits and '-'",
                ));
            }
        }
        if self.timeout_s == 0 {
            return Err(ParamError::field("timeout_s", "must be at least 1"));
        }
        if let Some((i, w)) = self.extra.iter().enumerate().find(|(_, w)| reserved(w)) {
            return Err(ParamError::field(
                format!("extra[{i}]"),
                format!("{w} is set by kstorm itself"),
            ));
        }
        if self.deadline() <= self.timeout_s as f64 {
            return Err(ParamError::field(
                "deadline_s",
                "must be longer than timeout_s (stress-ng needs time to stop and report)",
            ));
        }
        Ok(())
    }
}

fn reserved(word: &str) -> bool {
    let option = word.split('=').next().unwrap_or(word);
    RESERVED.contains(&option)
}

#[cfg(test)]
mod tests {
    use super::super::{resolve, tests::raw};
    use serde_json::json;

    #[test]
    fn bad_params_name_their_field() {
        let bad = [
            (json!({"stressors": {}}), "stressors"),
            (json!({"stressors": {"--fork": 1}}), "stressors.--fork"),
            (json!({"stressors": {"fork": -1}}), "stressors.fork"),
            (json!({"timeout_s": 0}), "timeout_s"),
            (
                json!({"extra": ["--mmap-bytes", "1M", "--yaml=/x"]}),
                "extra[2]",
            ),
            (json!({"timeout_s": 30, "deadline_s": 10}), "deadline_s"),
            (json!({"stresors": {"fork": 1}}), "stresors"),
        ];
        for (params, field) in bad {
            let e = resolve("stress-ng", &raw(params.clone())).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{params}: {e}");
        }
        let ok = json!({"stressors": {"fork": 4, "mmap": 2}, "timeout_s": 30,
                        "extra": ["--mmap-bytes", "64M"]});
        let p = resolve("stress-ng", &raw(ok)).unwrap();
        assert_eq!(p["stressors"]["mmap"], 2);
    }
}
