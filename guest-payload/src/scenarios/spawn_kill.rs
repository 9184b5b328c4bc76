//! `spawn-kill` (seed 000): repeatedly spawn a batch of B children holding K descriptors each,
//! then kill them, at a kill rate given as the pause between two kills ("quickly" versus
//! "slowly" made the difference between a panic and none). Afterwards check that the kernel
//! still forks and opens files as before (it recovered), and look for caches that grew.

use super::holders::{open_fds, Holders};
use super::leakcheck::{LeakCheck, LeakParams};
use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::sys;
use kstorm_payload::params::SpawnKill as Params;

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();
    let mut leak = LeakCheck::start(
        LeakParams {
            settle_ms: p.leak_settle_ms,
            min_kib: p.leak_min_kib,
        },
        ctx.in_guest,
    );
    let mut cycle_ms = Vec::new();
    let mut kill_ms = Vec::new();
    let mut spawned = 0u64;
    let mut stop = String::from("limit");
    'cycles: for _ in 0..p.cycles {
        if dl.passed() {
            stop = "deadline".into();
            break;
        }
        let t0 = sys::now();
        let mut batch = Holders::new().map_err(|e| format!("pipe: {e}"))?;
        for _ in 0..p.batch {
            if let Err(e) = batch.fork_one(p.fds, p.fd_kind) {
                stop = format!("fork: {}", sys::errno_name(e));
                r.stop_error = Some(stop.clone());
                break 'cycles;
            }
        }
        for _ in 0..p.batch {
            match batch.read_report(dl.at()) {
                Ok(o) if o.errno != 0 => {
                    stop = format!("open: {}", sys::errno_name(o.errno));
                    r.stop_error = Some(stop.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    stop = format!("child report: {e}");
                    r.stop_error = Some(stop.clone());
                    break;
                }
            }
        }
        spawned += batch.pids.len() as u64;
        leak.during();
        kill_ms.push(batch.kill_and_reap(p.kill_interval_ms as f64 / 1000.0) * 1000.0);
        cycle_ms.push((sys::now() - t0) * 1000.0);
        ctx.progress.add(1);
        leak.cycle();
        if r.stop_error.is_some() {
            break;
        }
    }
    r.num("cycles", cycle_ms.len() as f64, "count");
    r.num("children_spawned", spawned as f64, "count");
    r.latency("cycle", &cycle_ms);
    r.latency("kill_batch", &kill_ms);
    r.fact("stop", stop);
    // Recovery: a fresh child still forks and opens as many descriptors as one batch member.
    let want = p.fds;
    let kind = p.fd_kind;
    let recovered = match sys::fork_run(move || {
        let (held, errno) = open_fds(want, kind);
        if errno == 0 && held.len() == want as usize {
            0
        } else {
            1
        }
    }) {
        Ok(pid) => matches!(sys::wait(pid), Ok(sys::Exit::Code(0))),
        Err(_) => false,
    };
    r.fact("recovered", if recovered { "yes" } else { "no" });
    if !recovered {
        r.fail(format!(
            "after the cycles a new child could not fork and open {want} descriptors"
        ));
    }
    leak.finish(&mut r);
    Ok(r)
}
