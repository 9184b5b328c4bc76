//! `overcommit` (seed 003): for each `vm.overcommit_memory` mode (0 heuristic, 1 always,
//! 2 never), allocate beyond RAM, first without touching the memory, then touching it, and
//! report where allocation fails (ENOMEM) and where the OOM killer acts instead. Linux: sets
//! the sysctl, and restores it afterwards.

use super::hog::{hog, HogEnd};
use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::progress::SharedCounters;
use crate::sys;
use kstorm_payload::params::Overcommit as Params;
use std::os::fd::AsFd;

const SYSCTL: &str = "/proc/sys/vm/overcommit_memory";

/// Runs one allocation test in a hog child; returns (MiB reached, how it ended).
fn attempt(
    step: u64,
    cap: u64,
    touch: bool,
    single: bool,
    end: f64,
) -> Result<(u64, String), String> {
    let counters = SharedCounters::new(1).map_err(|e| format!("shared memory: {e}"))?;
    let c = &counters;
    let (rr, rw) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let w = rw.as_fd();
    let pid = sys::fork_run(move || {
        sys::linux_set_name(if touch {
            "overcommit-touch"
        } else {
            "overcommit-map"
        });
        let _ = sys::linux_set_oom_score_adj(1000);
        let how = if single {
            // One mapping of the whole cap at once.
            match sys::Mapping::anon(cap as usize * sys::MIB) {
                Ok(m) => {
                    c.slot(0).store(cap, std::sync::atomic::Ordering::SeqCst);
                    drop(m);
                    HogEnd::Cap
                }
                Err(e) => HogEnd::Errno(sys::errno_of(&e)),
            }
        } else {
            let (held, how) = hog(step, cap, touch, end, c.slot(0));
            drop(held);
            how
        };
        let _ = sys::send_word(w, how.code() as i64);
        0
    })
    .map_err(|e| format!("fork: {e}"))?;
    drop(rw);
    let exit = sys::wait(pid).map_err(|e| format!("wait: {e}"))?;
    let how = match (exit, sys::recv_word(rr.as_fd(), sys::now() + 1.0)) {
        (sys::Exit::Signal(_), _) => HogEnd::describe_exit(exit),
        (_, Ok(code)) => HogEnd::describe_exit(sys::Exit::Code(code as i32)),
        (other, Err(_)) => other.describe(),
    };
    Ok((counters.get(0), how))
}

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();
    sys::linux_set_oom_score_adj(-1000).map_err(|e| format!("protecting the coordinator: {e}"))?;
    let original = sys::read_file(SYSCTL)
        .map_err(|e| format!("{SYSCTL}: {e}"))?
        .trim()
        .to_string();
    let mi = sys::linux_meminfo();
    let ram_mib = (mi.get("MemTotal").copied().unwrap_or(0)
        + mi.get("SwapTotal").copied().unwrap_or(0))
        / 1024;
    let cap = ram_mib * p.cap_pct / 100;
    r.num("cap", cap as f64, "MiB");
    r.num("ram_plus_swap", ram_mib as f64, "MiB");
    let result = (|| -> Result<(), RunError> {
        for &mode in &p.modes {
            try_mode(&p, ctx, mode, cap, &dl, &mut r)?;
        }
        Ok(())
    })();
    let restored = sys::write_file(SYSCTL, &original);
    result?;
    if let Err(e) = restored {
        r.fail(format!("could not restore {SYSCTL} to {original}: {e}"));
    }
    Ok(r)
}

/// Sets the overcommit mode and runs its three attempts: one mapping of the whole cap, then
/// growing untouched, then growing touched; records where each stopped and judges them.
fn try_mode(
    p: &Params,
    ctx: &Ctx,
    mode: u8,
    cap: u64,
    dl: &sys::Deadline,
    r: &mut ScenarioReport,
) -> Result<(), RunError> {
    sys::write_file(SYSCTL, &mode.to_string())
        .map_err(|e| format!("setting {SYSCTL} to {mode}: {e}"))?;
    let m = format!("mode{mode}");
    if let Some(limit) = sys::linux_meminfo_field("CommitLimit") {
        r.num(format!("{m}_commit_limit"), limit as f64 / 1024.0, "MiB");
    }
    let (_single_mib, single) = attempt(p.step_mib, cap, false, true, dl.at())?;
    r.fact(format!("{m}_single"), single.clone());
    let (untouched_mib, untouched) = attempt(p.step_mib, cap, false, false, dl.at())?;
    r.num(format!("{m}_untouched"), untouched_mib as f64, "MiB");
    r.fact(format!("{m}_untouched_stop"), untouched.clone());
    let (touched_mib, touched) = attempt(p.step_mib, cap, true, false, dl.at())?;
    r.num(format!("{m}_touched"), touched_mib as f64, "MiB");
    r.fact(format!("{m}_touched_stop"), touched.clone());
    ctx.progress.add(1);
    judge(r, mode, cap, &single, &untouched, &touched);
    Ok(())
}

/// What the documented policy implies (Documentation/mm/overcommit-accounting) for how each
/// attempt ends in this mode; every miss fails the run.
fn judge(r: &mut ScenarioReport, mode: u8, cap: u64, single: &str, untouched: &str, touched: &str) {
    let mut want = |ok: bool, what: &str| {
        if !ok {
            r.fail(format!("mode {mode}: {what}"));
        }
    };
    match mode {
        0 => {
            want(
                single == "ENOMEM",
                &format!("one mapping of {cap} MiB (beyond RAM+swap) should fail, got {single}"),
            );
            want(
                touched == "oom-kill",
                &format!("touching beyond RAM should end in an OOM kill, got {touched}"),
            );
        }
        1 => {
            want(
                single == "cap" && untouched == "cap",
                &format!("untouched mappings should all succeed, got {single} / {untouched}"),
            );
            want(
                touched == "oom-kill",
                &format!("touching beyond RAM should end in an OOM kill, got {touched}"),
            );
        }
        _ => {
            want(
                untouched == "ENOMEM",
                &format!("mapping beyond CommitLimit should fail with ENOMEM, got {untouched}"),
            );
            want(
                touched == "ENOMEM",
                &format!(
                    "touched mappings should fail with ENOMEM before any OOM kill, got {touched}"
                ),
            );
        }
    }
}
