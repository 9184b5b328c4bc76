//! `smoke`: the kernel's version and memory, nothing else.

use super::{Ctx, RunError, ScenarioReport};
use crate::sys;
use kstorm_payload::params::Smoke as Params;

pub fn run(_: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let mut r = ScenarioReport::default();
    let (release, version, machine) = sys::uname();
    r.fact("kernel_release", release);
    r.fact("kernel_version", version);
    r.fact("machine", machine);
    let mi = sys::linux_meminfo();
    for (field, name) in [
        ("MemTotal", "mem_total"),
        ("MemFree", "mem_free"),
        ("MemAvailable", "mem_available"),
    ] {
        if let Some(v) = mi.get(field) {
            r.num(name, *v as f64, "KiB");
        }
    }
    r.num("ncpu", sys::ncpu() as f64, "count");
    // Latency numbers of the other scenarios are only as fine as this clock.
    r.num("clock_step", sys::clock_step() * 1e9, "ns");
    if let Some(cs) = sys::linux_clocksource() {
        r.fact("clocksource", cs);
    }
    if let Ok(up) = sys::read_file("/proc/uptime") {
        if let Some(secs) = up
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<f64>().ok())
        {
            r.num("uptime", secs, "s");
        }
    }
    if !mi.contains_key("MemTotal") {
        r.fail("/proc/meminfo has no MemTotal");
    }
    ctx.progress.set(1);
    Ok(r)
}
