//! `oom` (seed 003): memory hogs with different `oom_score_adj` grow together until the
//! kernel's OOM killer acts. Reports which hog was killed, whether it was the one with the
//! highest adj (the expected victim), and the time from the first sign of pressure (a PSI
//! memory stall, Linux `/proc/pressure/memory`, or a hog's first allocation failure) to the
//! kill. The coordinator protects itself (adj -1000) so it survives to report.

use super::hog::{hog, HogEnd};
use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::progress::SharedCounters;
use crate::sys;
use kstorm_payload::params::Oom as Params;

/// `some ... total=<us>` of `/proc/pressure/memory` (Linux PSI), stall microseconds so far.
fn linux_psi_some_total() -> Option<u64> {
    let text = sys::read_file("/proc/pressure/memory").ok()?;
    let line = text.lines().find(|l| l.starts_with("some"))?;
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("total="))
        .and_then(|v| v.parse().ok())
}

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();
    sys::linux_set_oom_score_adj(-1000).map_err(|e| format!("protecting the coordinator: {e}"))?;
    let kmsg = sys::LinuxKmsg::open_at_end();
    let n = p.adjs.len();
    // Slots 0..n: MiB per hog; slot n: time of the first allocation failure.
    let counters = SharedCounters::new(n + 1).map_err(|e| format!("shared memory: {e}"))?;
    let psi0 = linux_psi_some_total();
    let t0 = sys::now();
    let mut pids = Vec::new();
    for (i, adj) in p.adjs.iter().copied().enumerate() {
        let pid = start_hog(&p, i, adj, dl.at(), &counters).map_err(|e| format!("fork: {e}"))?;
        pids.push(pid);
    }
    let (t_pressure, dead) = watch_first_death(&pids, psi0, ctx, &counters, &dl);
    let sizes: Vec<u64> = (0..n).map(|i| counters.get(i)).collect();
    kill_survivors(&pids, &dead);
    let Some(&(victim, exit, t_kill)) = dead.first() else {
        r.fail("no hog died before the deadline");
        return Ok(r);
    };
    let max_adj = *p.adjs.iter().max().expect("not empty");
    let victim_adj = p.adjs[victim];
    r.num("hogs", n as f64, "count");
    r.num("victim_adj", victim_adj as f64, "adj");
    r.num("victim_size", sizes[victim] as f64, "MiB");
    r.num(
        "total_size_at_kill",
        sizes.iter().sum::<u64>() as f64,
        "MiB",
    );
    r.num("start_to_kill", (t_kill - t0) * 1000.0, "ms");
    r.fact(
        "victim",
        format!("hog-adj{victim_adj} (pid {})", pids[victim]),
    );
    r.fact("victim_exit", exit.describe());
    record_pressure(&mut r, t_pressure, counters.time(n), t_kill);
    if let Some(k) = kmsg {
        check_kernel_log(&mut r, k, pids[victim]);
    }
    let expected = victim_adj == max_adj && exit == sys::Exit::Signal(sys::Signal::SIGKILL);
    r.fact("expected_victim", if expected { "yes" } else { "no" });
    if !expected {
        r.fail(format!("expected the OOM killer to kill the adj {max_adj} hog by SIGKILL; hog adj {victim_adj} ended: {}", HogEnd::describe_exit(exit)));
    }
    Ok(r)
}

/// Forks hog `i` with `oom_score_adj` `adj`; it grows until killed or `end`, counting its
/// MiB in slot `i` and marking the first allocation failure in the last slot.
fn start_hog(p: &Params, i: usize, adj: i32, end: f64, c: &SharedCounters) -> std::io::Result<i32> {
    let (n, step, cap) = (p.adjs.len(), p.step_mib, p.cap_mib);
    sys::fork_run(move || {
        sys::linux_set_name(&format!("hog-adj{adj}"));
        if sys::linux_set_oom_score_adj(adj).is_err() {
            return 99;
        }
        loop {
            let (held, how) = hog(step, cap, true, end, c.slot(i));
            match how {
                // Out of memory without being killed yet: note it, keep what we hold,
                // and try again, as a real program would.
                HogEnd::Errno(_) => {
                    c.mark_time_once(n);
                    std::mem::forget(held);
                    sys::sleep_secs(0.01);
                }
                other => {
                    drop(held);
                    return other.code();
                }
            }
        }
    })
}

/// A hog that ended: its index, how, and when we saw it.
type Death = (usize, sys::Exit, f64);

/// Watches for the first stall and the first death (until 5 s past the deadline); returns
/// when the first stall was seen and the hogs found dead in the same sweep.
fn watch_first_death(
    pids: &[i32],
    psi0: Option<u64>,
    ctx: &Ctx,
    counters: &SharedCounters,
    dl: &sys::Deadline,
) -> (Option<f64>, Vec<Death>) {
    let n = pids.len();
    let mut t_pressure = None;
    let mut dead: Vec<Death> = Vec::new();
    while dead.is_empty() {
        for (i, pid) in pids.iter().enumerate() {
            if let Ok(Some(exit)) = sys::try_wait(*pid) {
                dead.push((i, exit, sys::now()));
            }
        }
        if t_pressure.is_none() {
            if let (Some(a), Some(b)) = (psi0, linux_psi_some_total()) {
                if b > a {
                    t_pressure = Some(sys::now());
                }
            }
        }
        ctx.progress.set((0..n).map(|i| counters.get(i)).sum());
        if sys::now() > dl.at() + 5.0 {
            break;
        }
        sys::sleep_secs(0.005);
    }
    (t_pressure, dead)
}

/// Kills and reaps every hog that is not among the dead.
fn kill_survivors(pids: &[i32], dead: &[Death]) {
    for (i, pid) in pids.iter().enumerate() {
        if !dead.iter().any(|d| d.0 == i) {
            let _ = sys::sigkill(*pid);
            let _ = sys::wait(*pid);
        }
    }
}

/// Time from the first sign of pressure (a PSI stall or a hog's first allocation failure,
/// whichever came first) to the kill, and which sign it was.
fn record_pressure(
    r: &mut ScenarioReport,
    t_pressure: Option<f64>,
    first_failure: Option<f64>,
    t_kill: f64,
) {
    let (t_first, source) = match (t_pressure, first_failure) {
        (Some(a), Some(b)) if b < a => (Some(b), "allocation-failure"),
        (Some(a), _) => (Some(a), "psi"),
        (None, Some(b)) => (Some(b), "allocation-failure"),
        (None, None) => (None, "none"),
    };
    r.fact("pressure_source", source);
    if let Some(t) = t_first {
        r.num("pressure_to_kill", (t_kill - t).max(0.0) * 1000.0, "ms");
    }
}

/// The kernel's own record of the kill, to tell an OOM kill from any other SIGKILL.
fn check_kernel_log(r: &mut ScenarioReport, k: sys::LinuxKmsg, victim_pid: i32) {
    sys::sleep_secs(0.2);
    let killed: Vec<i32> = k
        .read_new()
        .iter()
        .filter_map(|l| sys::oom_killed_pid(l))
        .collect();
    r.fact(
        "kernel_oom_killed",
        killed
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    if !killed.contains(&victim_pid) {
        r.fail(format!(
            "the kernel log names no OOM kill of the dead hog (pid {victim_pid})"
        ));
    }
}
