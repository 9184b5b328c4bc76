//! Leak checks: samples of the kernel's memory accounting taken after asking the kernel to
//! settle, and the leak check around a load (before, at the peak of and after the load, with
//! the caches that grew and did not come back flagged). Linux (meminfo, slabinfo, zoneinfo,
//! process count). The rules and the evidence are pure (`kstorm_payload::kmem`,
//! `kstorm_payload::memory_evidence`).

use super::ScenarioReport;
use crate::sys;
use kstorm_payload::kmem::{self, LeakRule};
use kstorm_payload::memory_evidence::{MemSample, MemoryEvidence};
use std::collections::BTreeMap;

/// Leak-check settings (the wrapped scenarios' `leak_settle_ms` and `leak_min_kib`
/// parameters; serde's `flatten` would defeat `deny_unknown_fields`, so they are repeated).
#[derive(Debug, Clone, Copy)]
pub struct LeakParams {
    /// The longest wait for memory to settle before a sample (deferred RCU frees, reclaim).
    pub settle_ms: u64,
    /// Growth below this is noise.
    pub min_kib: u64,
}

/// The accounting as it is now (no settling).
pub fn sample_now() -> MemSample {
    let meminfo = sys::read_file("/proc/meminfo").unwrap_or_default();
    let slabinfo = sys::read_file("/proc/slabinfo").ok();
    let zoneinfo = sys::read_file("/proc/zoneinfo").ok();
    let page_kib = (sys::page_size() / 1024) as u64;
    MemSample::parse(&meminfo, slabinfo.as_deref(), zoneinfo.as_deref(), page_kib)
}

/// The obtainable memory alone (cheap: no slabinfo), to see it stop moving.
fn obtainable_now() -> u64 {
    let meminfo = sys::read_file("/proc/meminfo").unwrap_or_default();
    let zoneinfo = sys::read_file("/proc/zoneinfo").ok();
    let page_kib = (sys::page_size() / 1024) as u64;
    MemSample::parse(&meminfo, None, zoneinfo.as_deref(), page_kib).obtainable_kib()
}

/// Polling step and the movement below which memory counts as settled.
const SETTLE_STEP_MS: u64 = 100;
const SETTLED_KIB: u64 = 64;

/// Asks the kernel to give back what it can (in a guest: drop page cache, dentries and inodes,
/// compact), waits until the obtainable memory stops moving (at most `max_ms`) and samples.
/// Also returns how it settled, for the evidence.
pub fn settled_sample(in_guest: bool, max_ms: u64) -> (MemSample, String) {
    let mut how = Vec::new();
    if in_guest {
        // Never on a host: it would disturb the machine.
        let dropped = sys::write_file("/proc/sys/vm/drop_caches", "3").is_ok();
        how.push(format!(
            "drop_caches=3 {}",
            if dropped { "ok" } else { "failed" }
        ));
        let compacted = sys::write_file("/proc/sys/vm/compact_memory", "1").is_ok();
        how.push(format!(
            "compact_memory {}",
            if compacted { "ok" } else { "unavailable" }
        ));
    } else {
        how.push("not in a guest: nothing dropped".to_string());
    }
    let rounds = (max_ms / SETTLE_STEP_MS).max(1);
    let mut last = obtainable_now();
    let mut waited = 0;
    for _ in 0..rounds {
        sys::sleep_secs(SETTLE_STEP_MS as f64 / 1000.0);
        waited += SETTLE_STEP_MS;
        let now = obtainable_now();
        let moved = now.abs_diff(last);
        last = now;
        if moved <= SETTLED_KIB {
            break;
        }
    }
    let settled = if waited >= rounds * SETTLE_STEP_MS {
        format!("still moving after {waited} ms")
    } else {
        format!("settled after {waited} ms")
    };
    how.push(settled);
    (sample_now(), how.join(", "))
}

/// meminfo fields that are kernel memory and are checked like slab caches.
const MEMINFO_FIELDS: &[&str] = &[
    "Slab",
    "SUnreclaim",
    "SReclaimable",
    "KernelStack",
    "PageTables",
    "Percpu",
];

#[derive(Debug, Clone, Default)]
struct Snapshot {
    sample: MemSample,
    procs: u64,
}

impl Snapshot {
    fn take(in_guest: bool, settle_ms: u64) -> (Snapshot, String) {
        let (sample, how) = if in_guest || settle_ms > 0 {
            settled_sample(in_guest, settle_ms)
        } else {
            (sample_now(), String::new())
        };
        let procs = sys::linux_process_count().unwrap_or(0);
        (Snapshot { sample, procs }, how)
    }

    fn unsettled() -> Snapshot {
        Snapshot::take(false, 0).0
    }

    /// meminfo fields (as `meminfo:<Field>`) and slab caches, in bytes, for the leak rules.
    fn amounts(&self) -> BTreeMap<String, u64> {
        let mut amounts = self.sample.slabs.clone();
        for f in MEMINFO_FIELDS {
            if let Some(v) = self.sample.meminfo.get(*f) {
                amounts.insert(format!("meminfo:{f}"), v * 1024);
            }
        }
        amounts
    }

    fn slab_kib(&self) -> u64 {
        self.sample.meminfo.get("Slab").copied().unwrap_or(0)
    }
}

/// Samples taken around one load.
pub struct LeakCheck {
    params: LeakParams,
    in_guest: bool,
    before: Snapshot,
    peak: Option<Snapshot>,
    cycles: Vec<BTreeMap<String, u64>>,
    slabinfo_readable: bool,
}

impl LeakCheck {
    /// Takes the "before" sample.
    pub fn start(params: LeakParams, in_guest: bool) -> LeakCheck {
        let slabinfo_readable = std::fs::File::open("/proc/slabinfo").is_ok();
        LeakCheck {
            params,
            in_guest,
            before: Snapshot::take(in_guest, params.settle_ms).0,
            peak: None,
            cycles: Vec::new(),
            slabinfo_readable,
        }
    }

    /// Samples at the load's peak; of several calls the one with the most slab is kept.
    pub fn during(&mut self) {
        let s = Snapshot::unsettled();
        if self
            .peak
            .as_ref()
            .is_none_or(|p| s.slab_kib() >= p.slab_kib())
        {
            self.peak = Some(s);
        }
    }

    /// Samples at the same point of each repetition of a load (after every spawn-kill
    /// cycle), to find what grows monotonically.
    pub fn cycle(&mut self) {
        self.cycles.push(Snapshot::unsettled().amounts());
    }

    /// Lets memory settle, takes the "after" sample and writes the findings and the evidence.
    pub fn finish(self, report: &mut ScenarioReport) {
        let (after, how) = Snapshot::take(self.in_guest, self.params.settle_ms);
        let peak = self.peak.clone().unwrap_or_else(|| after.clone());
        let rule = LeakRule {
            min_bytes: self.params.min_kib * 1024,
            retained_fraction: 0.5,
        };
        let suspects = kmem::flag_leaks(
            &self.before.amounts(),
            &peak.amounts(),
            &after.amounts(),
            rule,
        );
        let kib = |s: &Snapshot, f: &str| s.sample.meminfo.get(f).copied().unwrap_or(0) as f64;
        for (label, s) in [("before", &self.before), ("peak", &peak), ("after", &after)] {
            report.num(format!("leak_slab_{label}"), kib(s, "Slab"), "KiB");
            report.num(
                format!("leak_sunreclaim_{label}"),
                kib(s, "SUnreclaim"),
                "KiB",
            );
            report.num(format!("leak_procs_{label}"), s.procs as f64, "count");
        }
        report.num("leak_suspects", suspects.len() as f64, "count");
        let readable = if self.slabinfo_readable {
            "read"
        } else {
            "unreadable"
        };
        report.fact("leak_slabinfo", readable);
        if !suspects.is_empty() {
            let list: Vec<String> = suspects
                .iter()
                .take(8)
                .map(|s| {
                    format!(
                        "{} +{} KiB ({}->{}->{} KiB)",
                        s.name,
                        s.retained() / 1024,
                        s.before / 1024,
                        s.peak / 1024,
                        s.after / 1024
                    )
                })
                .collect();
            report.fact("leak_suspect_caches", list.join(", "));
        }
        // Recorded for reading: this check's decision is the suspect list above.
        report.evidence.push(MemoryEvidence::compare(
            "after the load",
            &how,
            &self.before.sample,
            Some(&peak.sample),
            &after.sample,
            None,
        ));
        self.report_cycles(&after, rule, report);
    }

    fn report_cycles(self, after: &Snapshot, rule: LeakRule, report: &mut ScenarioReport) {
        let mut cycles = self.cycles;
        if !cycles.is_empty() {
            cycles.insert(0, self.before.amounts());
            let growers = kmem::monotonic_growers(&cycles, rule.min_bytes);
            report.num("leak_monotonic_growers", growers.len() as f64, "count");
            if !growers.is_empty() {
                report.fact("leak_monotonic_caches", growers.join(", "));
            }
        }
        if after.procs > self.before.procs {
            report.fact(
                "leak_procs_left",
                format!(
                    "{} more processes than before",
                    after.procs - self.before.procs
                ),
            );
        }
    }
}
