//! Leak check around a load: kernel memory statistics sampled before, at the peak of and
//! after the load, with the caches that grew and did not come back flagged (Linux: meminfo,
//! slabinfo, process count). The rules themselves are pure (`kstorm_payload::kmem`).

use super::Report;
use crate::sys;
use kstorm_payload::kmem::{self, LeakRule};
use std::collections::BTreeMap;

/// Leak-check settings (the wrapped scenarios' `leak_settle_ms` and `leak_min_kib`
/// parameters; serde's `flatten` would defeat `deny_unknown_fields`, so they are repeated).
#[derive(Debug, Clone, Copy)]
pub struct LeakParams {
    /// Wait after the load before the "after" sample, for deferred (RCU) frees.
    pub settle_ms: u64,
    /// Growth below this is noise.
    pub min_kib: u64,
}

/// Meminfo fields that are kernel memory and are checked like slab caches.
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
    /// meminfo fields (as `meminfo:<Field>`) and slab caches, in bytes.
    amounts: BTreeMap<String, u64>,
    procs: u64,
}

fn snapshot(in_guest: bool) -> Snapshot {
    if in_guest {
        // Dentries and inodes freed by the load are reclaimable: drop them so they do not pass
        // for growth (never done on a host: it would disturb the machine).
        let _ = sys::write_file("/proc/sys/vm/drop_caches", "2");
    }
    let mut amounts = BTreeMap::new();
    let mi = sys::linux_meminfo();
    for f in MEMINFO_FIELDS {
        if let Some(v) = mi.get(*f) {
            amounts.insert(format!("meminfo:{f}"), v * 1024);
        }
    }
    if let Ok(text) = sys::read_file("/proc/slabinfo") {
        amounts.extend(kmem::parse_slabinfo(&text));
    }
    Snapshot {
        amounts,
        procs: sys::linux_process_count().unwrap_or(0),
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
            before: snapshot(in_guest),
            peak: None,
            cycles: Vec::new(),
            slabinfo_readable,
        }
    }

    /// Samples at the load's peak; of several calls the one with the most slab is kept.
    pub fn during(&mut self) {
        let s = snapshot(false);
        let slab = |s: &Snapshot| s.amounts.get("meminfo:Slab").copied().unwrap_or(0);
        if self.peak.as_ref().is_none_or(|p| slab(&s) >= slab(p)) {
            self.peak = Some(s);
        }
    }

    /// Samples at the same point of each repetition of a load (after every spawn-kill
    /// cycle), to find what grows monotonically.
    pub fn cycle(&mut self) {
        self.cycles.push(snapshot(false).amounts);
    }

    /// Waits for deferred frees, takes the "after" sample and writes the findings.
    pub fn finish(self, report: &mut Report) {
        sys::sleep_secs(self.params.settle_ms as f64 / 1000.0);
        let after = snapshot(self.in_guest);
        let peak = self.peak.clone().unwrap_or_else(|| after.clone());
        let rule = LeakRule {
            min_bytes: self.params.min_kib * 1024,
            retained_fraction: 0.5,
        };
        let suspects = kmem::flag_leaks(&self.before.amounts, &peak.amounts, &after.amounts, rule);
        let kib = |s: &Snapshot, f: &str| {
            s.amounts.get(&format!("meminfo:{f}")).copied().unwrap_or(0) as f64 / 1024.0
        };
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
        report.fact(
            "leak_slabinfo",
            if self.slabinfo_readable {
                "read"
            } else {
                "unreadable"
            },
        );
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
        let mut cycles = self.cycles;
        if !cycles.is_empty() {
            cycles.insert(0, self.before.amounts.clone());
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
