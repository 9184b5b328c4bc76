//! Scenarios that end the guest on purpose, so verdicts can be tested against the real
//! kernel: `panic` (a kernel crash) and `hang` (silence: no heartbeat, no progress).

use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::sys;
use kstorm_payload::params::{Hang as HangParams, Panic as PanicParams};

/// Writes `c` to /proc/sysrq-trigger: the kernel crashes ("sysrq triggered crash"). Linux.
/// With `probability` p < 1 it first draws from the kernel's random source (getrandom(2)): the
/// run crashes with chance p, else it passes, saying what it drew.
pub fn run_panic(p: PanicParams, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    deadline(ctx, 30.0);
    if p.probability < 1.0 {
        let draw = sys::random_unit().map_err(|e| format!("getrandom: {e}"))?;
        if draw >= p.probability {
            let mut r = ScenarioReport::default();
            r.num("draw", draw, "");
            r.fact(
                "crash",
                format!("not drawn ({draw:.3} >= {})", p.probability),
            );
            return Ok(r);
        }
    }
    // Flushes what the guest wrote before the crash.
    nix::unistd::sync();
    sys::write_file("/proc/sysrq-trigger", "c")
        .map_err(|e| format!("writing /proc/sysrq-trigger: {e}"))?;
    sys::sleep_secs(10.0);
    Err("wrote c to /proc/sysrq-trigger but the kernel did not crash".into())
}

/// Stops the heartbeat and blocks until its own deadline.
pub fn run_hang(p: HangParams, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    ctx.progress.pause_heartbeat();
    while !dl.passed() {
        sys::sleep_secs(dl.remaining().min(1.0));
    }
    let mut r = ScenarioReport::default();
    r.fail(format!("hung for {} s and nobody stopped the guest (the harness should have declared a hang long before)", p.deadline_s));
    Ok(r)
}
