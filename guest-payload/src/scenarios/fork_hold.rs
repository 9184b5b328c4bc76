//! `fork-hold` (seed 000): fork N children that each open K descriptors and wait, until N is
//! reached, the deadline passes or the kernel refuses (EAGAIN, EMFILE, ENOMEM...). Reaching a
//! kernel limit is the finding, not a failure.

use super::holders::Holders;
use super::leakcheck::{LeakCheck, LeakParams};
use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::sys;
use kstorm_payload::params::ForkHold as Params;

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();
    if ctx.in_guest {
        // When memory runs out first, the OOM killer should take holders, and the
        // coordinator should live to report how many there were.
        sys::linux_set_oom_score_adj(-1000)
            .map_err(|e| format!("protecting the coordinator: {e}"))?;
    }
    let leak = LeakCheck::start(
        LeakParams {
            settle_ms: p.leak_settle_ms,
            min_kib: p.leak_min_kib,
        },
        ctx.in_guest,
    );
    let mut leak = leak;
    let mut holders = Holders::new().map_err(|e| format!("pipe: {e}"))?;
    let t0 = sys::now();
    let mut fds_held = 0u64;
    let mut stop = String::from("limit");
    let mut forked = 0usize;
    while forked < p.children as usize {
        if dl.passed() {
            stop = "deadline".into();
            break;
        }
        if let Err(e) = holders.fork_one(p.fds, p.fd_kind) {
            stop = format!("fork: {}", sys::errno_name(e));
            r.stop_error = Some(stop.clone());
            break;
        }
        forked += 1;
        match holders.read_report_or_death(dl.at()) {
            Ok(o) => {
                fds_held += o.fds;
                ctx.progress.set(forked as u64);
                if o.errno != 0 {
                    stop = format!("open: {}", sys::errno_name(o.errno));
                    r.stop_error = Some(stop.clone());
                    break;
                }
            }
            Err(e) => {
                stop = e;
                r.stop_error = Some(stop.clone());
                break;
            }
        }
    }
    let created = forked;
    r.num("children_alive", holders.pids.len() as f64, "count");
    let t_up = sys::now() - t0;
    leak.during();
    sys::sleep_secs((p.hold_ms as f64 / 1000.0).min(dl.remaining()));
    let t_release = holders.release_and_reap();
    r.num("children", created as f64, "count");
    r.num("fds_held", fds_held as f64, "count");
    r.num("time_to_create", t_up, "s");
    if created > 0 {
        r.num("fork_rate", created as f64 / t_up.max(1e-9), "1/s");
    }
    r.num("time_to_release", t_release, "s");
    r.fact("stop", stop);
    r.fact("fd_kind", format!("{:?}", p.fd_kind).to_lowercase());
    leak.finish(&mut r);
    Ok(r)
}
