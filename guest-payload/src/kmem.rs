//! Kernel memory statistics: parsers for `/proc/meminfo` and `/proc/slabinfo` and the leak
//! rules applied to samples of them (pure functions, shared with the harness).
//!
//! Seed 001's advice: the allocator type that grows and does not come back is the culprit.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `/proc/meminfo` as field name -> KiB (fields without a unit, like `HugePages_Total`, keep
/// their plain number).
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if let Some(v) = rest.split_whitespace().next().and_then(|v| v.parse().ok()) {
            out.insert(name.trim().to_string(), v);
        }
    }
    out
}

/// `/proc/slabinfo` (version 2.x) as cache name -> bytes in use (active objects x object size).
/// Header and malformed lines are skipped.
pub fn parse_slabinfo(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with("slabinfo") || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let (Ok(active), Ok(size)) = (f[1].parse::<u64>(), f[3].parse::<u64>()) else {
            continue;
        };
        *out.entry(f[0].to_string()).or_insert(0) += active * size;
    }
    out
}

/// When a grown cache counts as leaking.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LeakRule {
    /// Growth below this (bytes) is noise: per-CPU caches, RCU batches.
    pub min_bytes: u64,
    /// Share of the growth still held after the load ended for the cache to count as not
    /// having come back (0.5: at least half of what the load added is still there).
    pub retained_fraction: f64,
}

impl Default for LeakRule {
    fn default() -> Self {
        LeakRule {
            min_bytes: 64 * 1024,
            retained_fraction: 0.5,
        }
    }
}

/// A cache that grew under load and kept most of the growth afterwards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeakSuspect {
    pub name: String,
    pub before: u64,
    pub peak: u64,
    pub after: u64,
}

impl LeakSuspect {
    pub fn retained(&self) -> u64 {
        self.after.saturating_sub(self.before)
    }
}

/// Caches (or meminfo fields; any name -> amount map) that grew from `before` to their peak
/// (the larger of `during` and `after`) by at least `rule.min_bytes` and still held at least
/// `rule.retained_fraction` of that growth, and `rule.min_bytes`, in `after`. A name missing
/// from a sample counts as 0. Largest retained growth first.
pub fn flag_leaks(
    before: &BTreeMap<String, u64>,
    during: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    rule: LeakRule,
) -> Vec<LeakSuspect> {
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let names: std::collections::BTreeSet<&String> = before
        .keys()
        .chain(during.keys())
        .chain(after.keys())
        .collect();
    let mut out: Vec<LeakSuspect> = names
        .into_iter()
        .filter_map(|name| {
            let (b, d, a) = (get(before, name), get(during, name), get(after, name));
            let peak = d.max(a);
            let grew = peak.saturating_sub(b);
            let retained = a.saturating_sub(b);
            let flagged = grew >= rule.min_bytes
                && retained >= rule.min_bytes
                && retained as f64 >= rule.retained_fraction * grew as f64;
            flagged.then(|| LeakSuspect {
                name: name.clone(),
                before: b,
                peak,
                after: a,
            })
        })
        .collect();
    out.sort_by(|x, y| y.retained().cmp(&x.retained()).then(x.name.cmp(&y.name)));
    out
}

/// Names whose amount never decreased across `samples` (taken at the same point of each
/// repetition of a load, e.g. after every spawn-kill cycle) and grew by at least `min_bytes`
/// from the first to the last. Needs at least three samples to call anything monotonic.
pub fn monotonic_growers(samples: &[BTreeMap<String, u64>], min_bytes: u64) -> Vec<String> {
    if samples.len() < 3 {
        return Vec::new();
    }
    let get = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let first = &samples[0];
    let last = &samples[samples.len() - 1];
    let names: std::collections::BTreeSet<&String> =
        samples.iter().flat_map(|m| m.keys()).collect();
    names
        .into_iter()
        .filter(|name| {
            samples
                .windows(2)
                .all(|w| get(&w[1], name) >= get(&w[0], name))
                && get(last, name).saturating_sub(get(first, name)) >= min_bytes
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn meminfo_fields() {
        let text = "MemTotal:         123456 kB\nMemAvailable:      98765 kB\nSlab:  4321 kB\nHugePages_Total:       0\nbogus line\n";
        let m = parse_meminfo(text);
        assert_eq!(m["MemTotal"], 123456);
        assert_eq!(m["MemAvailable"], 98765);
        assert_eq!(m["Slab"], 4321);
        assert_eq!(m["HugePages_Total"], 0);
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn slabinfo_bytes() {
        let text = "slabinfo - version: 2.1\n\
# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>\n\
kmalloc-64          2048   2048     64   64    1 : tunables    0    0    0 : slabdata     32     32      0\n\
task_struct          120    130   6016    5    8 : tunables    0    0    0 : slabdata     26     26      0\n\
short line\n";
        let m = parse_slabinfo(text);
        assert_eq!(m["kmalloc-64"], 2048 * 64);
        assert_eq!(m["task_struct"], 120 * 6016);
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn leak_flagging() {
        let rule = LeakRule {
            min_bytes: 1000,
            retained_fraction: 0.5,
        };
        let before = map(&[
            ("came_back", 10_000),
            ("leaky", 10_000),
            ("noise", 10_000),
            ("steady", 5000),
        ]);
        let during = map(&[
            ("came_back", 90_000),
            ("leaky", 50_000),
            ("noise", 10_900),
            ("steady", 5000),
            ("new_cache", 8000),
        ]);
        let after = map(&[
            ("came_back", 12_000),
            ("leaky", 45_000),
            ("noise", 10_800),
            ("steady", 5000),
            ("new_cache", 8000),
        ]);
        let got = flag_leaks(&before, &during, &after, rule);
        let names: Vec<&str> = got.iter().map(|s| s.name.as_str()).collect();
        // leaky kept 35k of 40k; new_cache appeared and stayed; came_back returned (2k of 80k
        // kept); noise grew below the threshold; steady never moved.
        assert_eq!(names, vec!["leaky", "new_cache"]);
        assert_eq!(
            got[0],
            LeakSuspect {
                name: "leaky".into(),
                before: 10_000,
                peak: 50_000,
                after: 45_000
            }
        );
        assert_eq!(got[0].retained(), 35_000);
    }

    #[test]
    fn growth_after_the_load_counts_too() {
        // Freed objects may sit in RCU batches: `after` can exceed `during`.
        let rule = LeakRule {
            min_bytes: 100,
            retained_fraction: 0.5,
        };
        let got = flag_leaks(
            &map(&[("x", 0)]),
            &map(&[("x", 100)]),
            &map(&[("x", 500)]),
            rule,
        );
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].peak, 500);
    }

    #[test]
    fn monotonic() {
        let s = vec![
            map(&[("grows", 100), ("wobbles", 100), ("flat", 7)]),
            map(&[("grows", 200), ("wobbles", 300), ("flat", 7)]),
            map(&[("grows", 200), ("wobbles", 200), ("flat", 7)]),
            map(&[("grows", 900), ("wobbles", 900), ("flat", 7)]),
        ];
        assert_eq!(monotonic_growers(&s, 500), vec!["grows".to_string()]);
        assert!(monotonic_growers(&s[..2], 1).is_empty());
    }
}
