//! The evidence behind a "memory did not come back" decision (pure: parsing, diffing and the
//! decision; the payload takes the samples, the harness shows the result).
//!
//! Two samples of the kernel's accounting, each taken after the kernel was asked to drop what
//! it can reclaim, are compared on a measure that the watermarks do not move: the memory the
//! kernel can hand out without killing anything. That is MemFree, plus the free pages parked
//! on the per-CPU lists (`/proc/zoneinfo` `count:`, not in MemFree; their ceiling follows the
//! zones' low watermark, so `vm.min_free_kbytes` raises it), plus page cache and reclaimable
//! slab. What is missing is then attributed to the kernel itself (shmem, unreclaimable slab,
//! page tables, stacks, per-CPU allocations), to live processes (anonymous memory, mlocked or
//! not) or to nothing the kernel reports. MemAvailable is kept as a number, not judged: it
//! subtracts the zones' reserves and leaves out the per-CPU lists.

use crate::kmem::{parse_meminfo, parse_slabinfo};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Free memory totals of all zones, from `/proc/zoneinfo`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Zones {
    /// `pages free`: the buddy allocator's free pages (what MemFree shows).
    pub free_kib: u64,
    /// Free pages on the per-CPU lists (`count:` under `pagesets`).
    pub percpu_free_kib: u64,
    /// Sums of the `min`, `low` and `high` watermarks.
    pub min_kib: u64,
    pub low_kib: u64,
    pub high_kib: u64,
    /// What MemAvailable subtracts (the kernel's totalreserve_pages): per zone, its high
    /// watermark plus its largest lowmem protection.
    pub reserve_kib: u64,
}

/// `/proc/zoneinfo` summed over zones (`page_kib`: the page size in KiB).
pub fn parse_zoneinfo(text: &str, page_kib: u64) -> Zones {
    let mut z = Zones::default();
    // The zone being read: its high watermark and largest protection, in pages.
    let (mut high, mut protection) = (0, 0);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let number = |i: usize| {
            words
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match words.first().copied() {
            Some("Node") => {
                z.reserve_kib += (high + protection) * page_kib;
                (high, protection) = (0, 0);
            }
            Some("pages") if words.get(1) == Some(&"free") => z.free_kib += number(2) * page_kib,
            Some("min") => z.min_kib += number(1) * page_kib,
            Some("low") => z.low_kib += number(1) * page_kib,
            Some("high") => {
                high = number(1);
                z.high_kib += high * page_kib;
            }
            Some("protection:") => {
                protection = line
                    .split(['(', ',', ')'])
                    .filter_map(|v| v.trim().parse::<u64>().ok())
                    .max()
                    .unwrap_or(0)
            }
            Some("count:") => z.percpu_free_kib += number(1) * page_kib,
            _ => {}
        }
    }
    z.reserve_kib += (high + protection) * page_kib;
    z
}

/// One sample of the kernel's memory accounting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemSample {
    /// `/proc/meminfo`, KiB.
    pub meminfo: BTreeMap<String, u64>,
    /// `/proc/slabinfo`: cache -> bytes in use (empty when unreadable).
    pub slabs: BTreeMap<String, u64>,
    pub zones: Zones,
}

impl MemSample {
    /// A sample from the texts of the three files (`None`: the file could not be read).
    pub fn parse(
        meminfo: &str,
        slabinfo: Option<&str>,
        zoneinfo: Option<&str>,
        page_kib: u64,
    ) -> Self {
        MemSample {
            meminfo: parse_meminfo(meminfo),
            slabs: slabinfo.map(parse_slabinfo).unwrap_or_default(),
            zones: zoneinfo
                .map(|t| parse_zoneinfo(t, page_kib))
                .unwrap_or_default(),
        }
    }

    fn field(&self, name: &str) -> u64 {
        self.meminfo.get(name).copied().unwrap_or(0)
    }

    /// What the kernel can hand out without killing anything, KiB (the judged measure).
    pub fn obtainable_kib(&self) -> u64 {
        ["MemFree", "Active(file)", "Inactive(file)", "SReclaimable"]
            .iter()
            .map(|f| self.field(f))
            .sum::<u64>()
            + self.zones.percpu_free_kib
    }
}

/// Memory the kernel keeps for itself: growth here is the kernel holding on.
pub const KERNEL_HELD: &[&str] = &["Shmem", "SUnreclaim", "PageTables", "KernelStack", "Percpu"];
/// Memory live processes hold (mlocked anonymous memory is in AnonPages too).
pub const PROCESS_HELD: &[&str] = &["AnonPages"];
/// Every meminfo field the evidence lists, before the zone totals.
const SHOWN_FIELDS: &[&str] = &[
    "MemFree",
    "MemAvailable",
    "Shmem",
    "Slab",
    "SReclaimable",
    "SUnreclaim",
    "Active(file)",
    "Inactive(file)",
    "Active(anon)",
    "Inactive(anon)",
    "AnonPages",
    "Mlocked",
    "Unevictable",
    "KernelStack",
    "PageTables",
    "Percpu",
    "VmallocUsed",
];

/// One quantity in the samples, KiB (`peak`: at the load's height, when sampled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Amount {
    pub name: String,
    pub before_kib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_kib: Option<u64>,
    pub after_kib: u64,
}

impl Amount {
    pub fn delta_kib(&self) -> i64 {
        self.after_kib as i64 - self.before_kib as i64
    }
}

/// When missing memory counts as not having come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionRule {
    /// Obtainable memory that may be missing after the load (noise: the payload's own heap,
    /// slab objects in flight).
    pub max_missing_kib: u64,
}

/// Growth in `names` between two samples, positive parts only.
fn growth(before: &MemSample, after: &MemSample, names: &[&str]) -> i64 {
    names
        .iter()
        .map(|f| (after.field(f) as i64 - before.field(f) as i64).max(0))
        .sum()
}

/// The evidence one decision rests on (it travels in the result, `ScenarioResult::evidence`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryEvidence {
    /// What was compared, e.g. "limited: after removing the files".
    pub label: String,
    /// How the kernel was asked to settle before each sample.
    pub settle: String,
    /// Obtainable memory (MemFree + per-CPU free lists + page cache + reclaimable slab).
    pub obtainable_before_kib: u64,
    pub obtainable_after_kib: u64,
    /// Obtainable memory that did not come back (negative: more than before).
    pub missing_kib: i64,
    /// Growth of [`KERNEL_HELD`] and of [`PROCESS_HELD`]; what they do not explain.
    pub kernel_held_kib: i64,
    pub process_held_kib: i64,
    pub unexplained_kib: i64,
    /// The rule, when this evidence decides something (`None`: recorded for reading only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RetentionRule>,
    /// The rule's decision: more than `rule.max_missing_kib` did not come back.
    pub leaked: bool,
    /// meminfo fields and zone totals, before (peak) and after.
    pub fields: Vec<Amount>,
    /// The slab caches that grew most, largest growth first.
    pub top_slabs: Vec<Amount>,
}

/// How many slab caches the evidence lists.
pub const TOP_SLABS: usize = 8;

impl MemoryEvidence {
    /// Compares `before` and `after` (and the load's `peak`, if sampled) and decides by `rule`.
    pub fn compare(
        label: &str,
        settle: &str,
        before: &MemSample,
        peak: Option<&MemSample>,
        after: &MemSample,
        rule: Option<RetentionRule>,
    ) -> MemoryEvidence {
        let (ob, oa) = (before.obtainable_kib(), after.obtainable_kib());
        let missing = ob as i64 - oa as i64;
        let kernel = growth(before, after, KERNEL_HELD);
        let process = growth(before, after, PROCESS_HELD);
        MemoryEvidence {
            label: label.to_string(),
            settle: settle.to_string(),
            obtainable_before_kib: ob,
            obtainable_after_kib: oa,
            missing_kib: missing,
            kernel_held_kib: kernel,
            process_held_kib: process,
            unexplained_kib: (missing - kernel - process).max(0),
            rule,
            leaked: rule.is_some_and(|r| missing > r.max_missing_kib as i64),
            fields: field_amounts(before, peak, after),
            top_slabs: top_slabs(before, peak, after, TOP_SLABS),
        }
    }

    /// The growth of one listed field, KiB (0 when not listed).
    pub fn delta_kib(&self, name: &str) -> i64 {
        self.fields
            .iter()
            .find(|a| a.name == name)
            .map_or(0, Amount::delta_kib)
    }

    /// One line: the decision, where the memory went, the largest movements.
    pub fn summary(&self) -> String {
        let mut moved: Vec<&Amount> = self.fields.iter().filter(|a| a.delta_kib() != 0).collect();
        moved.sort_by_key(|a| std::cmp::Reverse(a.delta_kib().abs()));
        let deltas: Vec<String> = moved
            .iter()
            .take(6)
            .map(|a| format!("{} {:+}", a.name, a.delta_kib()))
            .collect();
        let slabs: Vec<String> = self
            .top_slabs
            .iter()
            .take(3)
            .map(|a| format!("{} {:+}", a.name, a.delta_kib()))
            .collect();
        format!(
            "{}: {} KiB of obtainable memory missing ({} -> {} KiB{}); kernel holds {:+}, processes {:+}, unexplained {} KiB; moved (KiB): {}; slab growth (KiB): {}",
            self.label,
            self.missing_kib,
            self.obtainable_before_kib,
            self.obtainable_after_kib,
            self.rule
                .map(|r| format!(", limit {}", r.max_missing_kib))
                .unwrap_or_default(),
            self.kernel_held_kib,
            self.process_held_kib,
            self.unexplained_kib,
            if deltas.is_empty() { "none".into() } else { deltas.join(", ") },
            if slabs.is_empty() { "none".into() } else { slabs.join(", ") },
        )
    }
}

fn field_amounts(before: &MemSample, peak: Option<&MemSample>, after: &MemSample) -> Vec<Amount> {
    let zone = |s: &MemSample| {
        let z = s.zones;
        [
            ("per-CPU free lists", z.percpu_free_kib),
            ("low watermarks", z.low_kib),
            ("reserve (MemAvailable subtracts)", z.reserve_kib),
        ]
    };
    let mut out: Vec<Amount> = SHOWN_FIELDS
        .iter()
        .filter(|f| before.meminfo.contains_key(**f) || after.meminfo.contains_key(**f))
        .map(|f| Amount {
            name: f.to_string(),
            before_kib: before.field(f),
            peak_kib: peak.map(|p| p.field(f)),
            after_kib: after.field(f),
        })
        .collect();
    for (i, (name, b)) in zone(before).into_iter().enumerate() {
        out.push(Amount {
            name: name.to_string(),
            before_kib: b,
            peak_kib: peak.map(|p| zone(p)[i].1),
            after_kib: zone(after)[i].1,
        });
    }
    out
}

/// The `n` slab caches with the largest growth from `before` to `after` (only growth).
pub fn top_slabs(
    before: &MemSample,
    peak: Option<&MemSample>,
    after: &MemSample,
    n: usize,
) -> Vec<Amount> {
    let kib = |m: &BTreeMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0) / 1024;
    let mut grown: Vec<Amount> = after
        .slabs
        .keys()
        .map(|name| Amount {
            name: name.clone(),
            before_kib: kib(&before.slabs, name),
            peak_kib: peak.map(|p| kib(&p.slabs, name)),
            after_kib: kib(&after.slabs, name),
        })
        .filter(|a| a.delta_kib() > 0)
        .collect();
    grown.sort_by(|a, b| b.delta_kib().cmp(&a.delta_kib()).then(a.name.cmp(&b.name)));
    grown.truncate(n);
    grown
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A captured sample (see `testdata/README.md`).
    fn captured(dir: &str, stage: &str) -> MemSample {
        let read = |f: &str| {
            let path = format!(
                "{}/testdata/{dir}/{f}-{stage}.txt",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        MemSample::parse(
            &read("meminfo"),
            Some(&read("slabinfo")),
            Some(&read("zoneinfo")),
            4,
        )
    }

    const MIN_FREE: &str = "linux-6.1-128M-min-free-8m";
    const HELD_OPEN: &str = "linux-6.1-128M-held-open";
    const RULE: Option<RetentionRule> = Some(RetentionRule {
        max_missing_kib: 2048,
    });

    #[test]
    fn zoneinfo_totals_on_real_text() {
        let z = captured(MIN_FREE, "after").zones;
        // DMA: low 478, high 573, protection 54; DMA32: low 2080, high 2496; per-CPU lists:
        // DMA 0 pages, DMA32 2017 pages (4 KiB pages).
        assert_eq!(z.low_kib, (478 + 2080) * 4);
        assert_eq!(z.high_kib, (573 + 2496) * 4);
        assert_eq!(z.reserve_kib, (573 + 54 + 2496) * 4);
        assert_eq!(z.percpu_free_kib, 2017 * 4);
        assert_eq!(z.free_kib, captured(MIN_FREE, "after").meminfo["MemFree"]);
    }

    #[test]
    fn raised_watermarks_move_memavailable_not_the_judged_measure() {
        let (before, full, after) = (
            captured(MIN_FREE, "before"),
            captured(MIN_FREE, "full"),
            captured(MIN_FREE, "after"),
        );
        let e = MemoryEvidence::compare("limited", "test", &before, Some(&full), &after, RULE);
        // MemAvailable fell by more than the old 4 MiB allowance...
        assert!(e.delta_kib("MemAvailable") < -4096, "{}", e.summary());
        // ...because the freed pages sit on the per-CPU list, which MemFree leaves out.
        assert!(e.delta_kib("per-CPU free lists") > 4096, "{}", e.summary());
        assert!(e.missing_kib.abs() < 512, "{}", e.summary());
        assert!(!e.leaked);
        assert!(e.delta_kib("Shmem").abs() < 64);
        let shmem = e.fields.iter().find(|a| a.name == "Shmem").unwrap();
        assert!(shmem.peak_kib.unwrap() >= shmem.before_kib + 15 * 1024);
    }

    #[test]
    fn held_open_files_are_kernel_held_and_flagged() {
        let (before, after) = (captured(HELD_OPEN, "before"), captured(HELD_OPEN, "after"));
        let e = MemoryEvidence::compare("limited", "test", &before, None, &after, RULE);
        assert!(e.leaked, "{}", e.summary());
        assert!(e.delta_kib("Shmem") >= 16 * 1024);
        assert!(e.kernel_held_kib >= 16 * 1024);
        assert!(e.missing_kib >= 15 * 1024);
        assert!(e.process_held_kib < 1024);
        assert!(e.summary().contains("kernel holds +"), "{}", e.summary());
        // Not judged without a rule: the same numbers, no decision.
        let unjudged = MemoryEvidence::compare("x", "test", &before, None, &after, None);
        assert!(!unjudged.leaked);
        assert_eq!(unjudged.missing_kib, e.missing_kib);
    }

    #[test]
    fn top_slabs_by_growth() {
        let mut before = MemSample::default();
        let mut after = MemSample::default();
        for (name, b, a) in [
            ("grew", 10, 5000),
            ("shrank", 9000, 10),
            ("more", 0, 9000),
            ("flat", 7, 7),
        ] {
            before.slabs.insert(name.into(), b * 1024);
            after.slabs.insert(name.into(), a * 1024);
        }
        let top = top_slabs(&before, None, &after, 8);
        let names: Vec<&str> = top.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["more", "grew"]);
        assert_eq!(top[1].delta_kib(), 4990);
        assert_eq!(top_slabs(&before, None, &after, 1).len(), 1);
    }

    #[test]
    fn evidence_survives_json() {
        let (before, after) = (captured(HELD_OPEN, "before"), captured(HELD_OPEN, "after"));
        let e = MemoryEvidence::compare("limited", "test", &before, None, &after, RULE);
        let back: MemoryEvidence =
            serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
