//! `xtask/vmstat.yaml`: which `/proc/vmstat` counters the Linux payload records around each
//! scenario (kernel knowledge as data, embedded so the binary works from any directory).

use serde::Deserialize;
use std::path::Path;
use std::sync::OnceLock;

const FILE: &str = "xtask/vmstat.yaml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmstatFile {
    counters: Vec<String>,
}

/// The counter name prefixes, in the file's order.
pub fn counters() -> &'static [String] {
    static COUNTERS: OnceLock<Vec<String>> = OnceLock::new();
    COUNTERS.get_or_init(|| {
        let text = include_str!("../../vmstat.yaml");
        let (file, _): (VmstatFile, _) = crate::yaml::parse_yaml(Path::new(FILE), text)
            .unwrap_or_else(|e| panic!("the embedded {FILE} is checked by a unit test: {e}"));
        file.counters
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_shipped_list_parses_and_names_reclaim_and_stalls() {
        let c = super::counters();
        for want in [
            "allocstall",
            "compact_stall",
            "pgscan",
            "pgsteal",
            "oom_kill",
        ] {
            assert!(c.iter().any(|n| n == want), "{want} in {c:?}");
        }
        let ok =
            |n: &String| !n.is_empty() && n.chars().all(|c| c.is_ascii_lowercase() || c == '_');
        assert!(c.iter().all(ok), "{c:?}");
    }
}
