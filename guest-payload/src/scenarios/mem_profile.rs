//! `mem-profile` (seed 003): memory use over time, as time series: the system (MemAvailable,
//! MemFree, Slab, Committed_AS) and this process (VmRSS) while idle, while it allocates in
//! steps, while it holds, and after it frees. (The runner also samples the system under every
//! scenario; see `memwatch`.)

use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::sys;
use kstorm_payload::params::MemProfile as Params;

const FIELDS: &[(&str, &str)] = &[
    ("MemAvailable", "mem_available"),
    ("MemFree", "mem_free"),
    ("Slab", "slab"),
    ("Committed_AS", "committed_as"),
];

struct Sampler {
    t0: f64,
    series: Vec<Vec<(f64, f64)>>,
    rss: Vec<(f64, f64)>,
}

impl Sampler {
    fn sample(&mut self) {
        let t = sys::now() - self.t0;
        let mi = sys::linux_meminfo();
        for (i, (field, _)) in FIELDS.iter().enumerate() {
            if let Some(v) = mi.get(*field) {
                self.series[i].push((t, *v as f64));
            }
        }
        if let Ok(status) = sys::read_file("/proc/self/status") {
            if let Some(v) = kstorm_payload::kmem::parse_meminfo(&status).get("VmRSS") {
                self.rss.push((t, *v as f64));
            }
        }
    }

    fn run_for(
        &mut self,
        secs: f64,
        interval: f64,
        dl: &sys::Deadline,
        progress: &crate::progress::Progress,
    ) {
        let end = sys::now() + secs.min(dl.remaining());
        while sys::now() < end {
            self.sample();
            progress.add(1);
            sys::sleep_secs(interval.min(end - sys::now()));
        }
    }
}

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();
    let interval = (p.interval_ms.max(10)) as f64 / 1000.0;
    let mut s = Sampler {
        t0: sys::now(),
        series: vec![Vec::new(); FIELDS.len()],
        rss: Vec::new(),
    };
    let mut phases = Vec::new();
    let mut phase =
        |name: &str, s: &Sampler| phases.push(format!("{name}@{:.2}s", sys::now() - s.t0));

    phase("idle", &s);
    s.run_for(p.idle_s, interval, &dl, ctx.progress);
    phase("ramp", &s);
    let mut chunks = Vec::new();
    let step = p.step_mib.max(1);
    while (chunks.len() as u64) * step < p.ramp_mib && !dl.passed() {
        match sys::Mapping::anon(step as usize * sys::MIB) {
            Ok(mut m) => {
                m.touch_write(1);
                chunks.push(m);
            }
            Err(e) => {
                r.stop_error = Some(format!("mmap: {}", sys::err_name(&e)));
                break;
            }
        }
        s.sample();
        ctx.progress.add(1);
        sys::sleep_secs(interval);
    }
    r.num("allocated", (chunks.len() as u64 * step) as f64, "MiB");
    phase("hold", &s);
    s.run_for(p.hold_s, interval, &dl, ctx.progress);
    phase("freed", &s);
    chunks.clear();
    s.run_for(p.idle_s, interval, &dl, ctx.progress);
    phase("end", &s);

    let first = |v: &Vec<(f64, f64)>| v.first().map(|x| x.1);
    let last = |v: &Vec<(f64, f64)>| v.last().map(|x| x.1);
    let min = |v: &Vec<(f64, f64)>| {
        v.iter()
            .map(|x| x.1)
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.min(x))))
    };
    let avail = &s.series[0];
    if let (Some(a0), Some(amin), Some(a1)) = (first(avail), min(avail), last(avail)) {
        r.num("mem_available_start", a0, "KiB");
        r.num("mem_available_min", amin, "KiB");
        r.num("mem_available_end", a1, "KiB");
        r.num("mem_available_not_recovered", (a0 - a1).max(0.0), "KiB");
    }
    if let Some(peak) = s.rss.iter().map(|x| x.1).reduce(f64::max) {
        r.num("rss_peak", peak, "KiB");
    }
    r.fact("phases", phases.join(" "));
    for (i, (_, name)) in FIELDS.iter().enumerate() {
        r.series(
            format!("{name}_kib"),
            "KiB",
            std::mem::take(&mut s.series[i]),
        );
    }
    r.series("rss_kib", "KiB", std::mem::take(&mut s.rss));
    Ok(r)
}
