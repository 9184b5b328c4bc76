//! The parameters of the portable C agent's scenarios (`portable/kstorm-portable.c`), exactly
//! the keys the agent reads, with its defaults. A key the agent would not read is refused here,
//! on the host, before anything boots (the agent refuses it too); a test reads the agent's
//! source and checks that both sides name the same keys with the same defaults.

use super::{Check, FdKind};
use serde::{Deserialize, Serialize};

/// `smoke`: the agent starts and ends.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Smoke {}
impl Check for Smoke {}

/// `fork-hold`: N children each holding K descriptors.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForkHold {
    pub children: u32,
    #[serde(alias = "fds_per_child")]
    pub fds: u32,
    pub fd_kind: FdKind,
    pub hold_ms: u64,
    pub deadline_s: f64,
}
impl Check for ForkHold {}

impl Default for ForkHold {
    fn default() -> Self {
        ForkHold {
            children: 64,
            fds: 16,
            fd_kind: FdKind::Devnull,
            hold_ms: 500,
            deadline_s: 30.0,
        }
    }
}

/// `spawn-kill`: batches of holders started and killed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpawnKill {
    pub cycles: u32,
    pub batch: u32,
    pub fds: u32,
    pub fd_kind: FdKind,
    pub kill_interval_ms: u64,
    pub deadline_s: f64,
}
impl Check for SpawnKill {}

impl Default for SpawnKill {
    fn default() -> Self {
        SpawnKill {
            cycles: 10,
            batch: 8,
            fds: 64,
            fd_kind: FdKind::Devnull,
            kill_interval_ms: 0,
            deadline_s: 30.0,
        }
    }
}

/// `fd-churn`: processes opening and closing descriptors in batches.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdChurn {
    pub procs: u32,
    pub batch: u32,
    pub duration_s: f64,
    pub max_ops: u64,
    pub fd_kind: FdKind,
    pub deadline_s: f64,
}
impl Check for FdChurn {}

impl Default for FdChurn {
    fn default() -> Self {
        FdChurn {
            procs: 2,
            batch: 64,
            duration_s: 3.0,
            max_ops: 10_000_000,
            fd_kind: FdKind::Devnull,
            deadline_s: 30.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::registry::{self, Route};
    use std::collections::BTreeMap;

    const AGENT: &str = include_str!("../../portable/kstorm-portable.c");

    /// The keys the agent's table lists for `scenario` (its `*_keys[]` array), plus the common
    /// ones.
    fn agent_keys(scenario: &str) -> Vec<String> {
        let array = format!("{}_keys[] = {{", scenario.replace('-', "_"));
        let mut keys = Vec::new();
        for decl in [array.as_str(), "common_keys[] = {"] {
            let start = AGENT
                .find(decl)
                .unwrap_or_else(|| panic!("{decl} in the agent"))
                + decl.len();
            let body = &AGENT[start..start + AGENT[start..].find('}').unwrap()];
            keys.extend(
                body.split(',')
                    .map(|k| k.trim().trim_matches('"'))
                    .filter(|k| !k.is_empty() && *k != "NULL")
                    .map(str::to_string),
            );
        }
        keys.sort();
        keys
    }

    /// The body of the agent's C function `name`.
    fn function(name: &str) -> &'static str {
        let head = format!("static int {name}(void) {{");
        let start = AGENT
            .find(&head)
            .unwrap_or_else(|| panic!("{head} in the agent"));
        let body = &AGENT[start..];
        &body[..body.find("\n}\n").unwrap()]
    }

    /// The defaults the agent's code gives in `body`: `num("key", N)` and `param("key", "V")`.
    fn agent_defaults(body: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for call in ["num(\"", "param(\""] {
            for (i, _) in body.match_indices(call) {
                let rest = &body[i + call.len()..];
                let key = &rest[..rest.find('"').unwrap()];
                let after = rest[key.len() + 1..].trim_start_matches([',', ' ']);
                let value: String = after
                    .trim_start_matches('"')
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect();
                if let Ok(v) = value.parse::<f64>() {
                    out.insert(key.to_string(), v);
                }
            }
        }
        out
    }

    #[test]
    fn the_agent_reads_exactly_the_keys_of_the_registry_with_the_same_defaults() {
        for name in registry::names(Route::PortableC) {
            let mut defaults = agent_defaults(function("past_deadline"));
            if name != "smoke" {
                defaults.extend(agent_defaults(function(&name.replace('-', "_"))));
            }
            let resolved = registry::resolve(Route::PortableC, name, &Default::default()).unwrap();
            let map = resolved.as_object().unwrap();
            let mut ours: Vec<String> = map.keys().cloned().collect();
            ours.sort();
            if !ours.is_empty() {
                assert_eq!(ours, agent_keys(name), "{name}: keys");
            }
            for (key, value) in map {
                if let (Some(v), Some(d)) = (value.as_f64(), defaults.get(key)) {
                    assert_eq!(v, *d, "{name}.{key}: default");
                }
            }
            assert!(
                AGENT.contains(&format!("{{\"{name}\", ")),
                "{name} in the agent's table"
            );
        }
    }
}
