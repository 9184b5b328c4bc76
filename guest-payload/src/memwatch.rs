//! System memory sampled by the supervisor on every heartbeat tick, so every scenario's
//! result carries how memory moved while it ran (seed 003's "memory consumption profile"),
//! whatever the scenario itself measures. Linux (/proc).

use crate::sys;
use kstorm_payload::kmem::parse_meminfo;
use std::collections::BTreeMap;

pub struct MemWatch {
    t0: f64,
    scenario_pid: i32,
    series: BTreeMap<&'static str, Vec<(f64, f64)>>,
}

fn status_rss(pid: &str) -> Option<f64> {
    let text = sys::read_file(&format!("/proc/{pid}/status")).ok()?;
    parse_meminfo(&text).get("VmRSS").map(|v| *v as f64)
}

impl MemWatch {
    pub fn new(scenario_pid: i32) -> MemWatch {
        MemWatch {
            t0: sys::now(),
            scenario_pid,
            series: BTreeMap::new(),
        }
    }

    pub fn sample(&mut self) {
        let t = sys::now() - self.t0;
        let mi = sys::linux_meminfo();
        let mut push = |name: &'static str, v: Option<f64>| {
            if let Some(v) = v {
                self.series.entry(name).or_default().push((t, v));
            }
        };
        push(
            "sys_mem_available_kib",
            mi.get("MemAvailable").map(|v| *v as f64),
        );
        push("sys_slab_kib", mi.get("Slab").map(|v| *v as f64));
        push("payload_rss_kib", status_rss("self"));
        push(
            "scenario_rss_kib",
            status_rss(&self.scenario_pid.to_string()),
        );
    }

    pub fn into_series(self) -> BTreeMap<&'static str, Vec<(f64, f64)>> {
        self.series
    }
}
