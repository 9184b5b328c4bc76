//! `cgroup-limit` (seed 003): a cgroup v2 group with `memory.max`; a hog inside it must be
//! killed inside the group only, while a bystander outside the group, which a system-wide OOM
//! would pick first (adj 1000), lives on. Reports the time to the kill. Linux (cgroup v2).

use super::hog::{hog, HogEnd};
use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::progress::SharedCounters;
use crate::sys;
use kstorm_payload::params::CgroupLimit as Params;
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd};

const ROOT: &str = "/sys/fs/cgroup";

fn memory_events(group: &str) -> BTreeMap<String, u64> {
    sys::read_file(&format!("{group}/memory.events"))
        .map(|t| {
            t.lines()
                .filter_map(|l| {
                    l.split_once(' ')
                        .and_then(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();
    let controllers = sys::read_file(&format!("{ROOT}/cgroup.controllers"))
        .map_err(|e| format!("cgroup v2 not mounted at {ROOT}: {e}"))?;
    if !controllers.split_whitespace().any(|c| c == "memory") {
        return Err(format!(
            "cgroup v2 at {ROOT} has no memory controller (controllers: {})",
            controllers.trim()
        ));
    }
    sys::write_file(&format!("{ROOT}/cgroup.subtree_control"), "+memory")
        .map_err(|e| format!("enabling the memory controller: {e}"))?;
    sys::linux_set_oom_score_adj(-1000).map_err(|e| format!("protecting the coordinator: {e}"))?;
    let group = format!("{ROOT}/kstorm-{}", sys::getpid());
    sys::mkdir_p(&group).map_err(|e| format!("mkdir {group}: {e}"))?;
    let result = in_group(&p, ctx, &dl, &group, &mut r);
    let removed = std::fs::remove_dir(&group);
    result?;
    if let Err(e) = removed {
        r.fail(format!("rmdir {group}: {e}"));
    }
    Ok(r)
}

/// Sets the group's limit, starts the bystander outside it and the hog inside it, and
/// records how the group's OOM killer dealt with the hog.
fn in_group(
    p: &Params,
    ctx: &Ctx,
    dl: &sys::Deadline,
    group: &str,
    r: &mut ScenarioReport,
) -> Result<(), RunError> {
    sys::write_file(
        &format!("{group}/memory.max"),
        &(p.max_mib * sys::MIB as u64).to_string(),
    )
    .map_err(|e| format!("{group}/memory.max: {e}"))?;
    let _ = sys::write_file(&format!("{group}/memory.swap.max"), "0");
    let counters = SharedCounters::new(1).map_err(|e| format!("shared memory: {e}"))?;
    let c = &counters;

    let (ready_r, ready_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let bystander =
        start_bystander(ready_w.as_fd(), p.bystander_mib).map_err(|e| format!("fork: {e}"))?;
    let ready = sys::recv_word(ready_r.as_fd(), dl.at());

    let procs = format!("{group}/cgroup.procs");
    let t0 = sys::now();
    let hog_pid = start_hog(&procs, p, dl.at(), c);
    let result = (|| -> Result<(), RunError> {
        ready.map_err(|e| format!("bystander did not start: {e}"))?;
        let hog_pid = hog_pid.map_err(|e| format!("fork: {e}"))?;
        let exit = wait_for_hog(hog_pid, ctx, c, dl)?;
        let t_kill = sys::now() - t0;
        let events = memory_events(group);
        let bystander_alive = matches!(sys::try_wait(bystander), Ok(None));
        record(r, p, group, c, t_kill, &events);
        judge(r, p, group, exit, &events, bystander_alive);
        Ok(())
    })();
    let _ = sys::sigkill(bystander);
    let _ = sys::wait(bystander);
    result
}

/// Forks the bystander: the OOM killer's first choice system-wide (adj 1000), holding
/// `mib` MiB outside the group; it says so on `ready` and then sleeps until killed.
fn start_bystander(ready: BorrowedFd, mib: u64) -> std::io::Result<i32> {
    sys::fork_run(move || {
        sys::linux_set_name("cg-bystander");
        let _ = sys::linux_set_oom_score_adj(1000);
        let mut m = match sys::Mapping::anon(mib.max(1) as usize * sys::MIB) {
            Ok(m) => m,
            Err(_) => return 2,
        };
        m.touch_write(7);
        let _ = sys::send_word(ready, 1);
        loop {
            sys::sleep_secs(1.0);
        }
    })
}

/// Forks the hog, which joins the group through `procs` (exit 98 when it cannot) and grows
/// until killed or `end`. `procs` is formatted before the fork: the child does not allocate it.
fn start_hog(procs: &str, p: &Params, end: f64, c: &SharedCounters) -> std::io::Result<i32> {
    let (step, cap) = (p.step_mib, p.cap_mib);
    sys::fork_run(|| {
        sys::linux_set_name("cg-hog");
        let _ = sys::linux_set_oom_score_adj(0);
        if sys::write_file(procs, "0").is_err() {
            return 98;
        }
        let (held, how) = hog(step, cap, true, end, c.slot(0));
        drop(held);
        how.code()
    })
}

/// Waits for the hog's end, showing its size as progress; kills it 5 s past the deadline.
fn wait_for_hog(
    hog_pid: i32,
    ctx: &Ctx,
    c: &SharedCounters,
    dl: &sys::Deadline,
) -> Result<sys::Exit, RunError> {
    loop {
        if let Ok(Some(exit)) = sys::try_wait(hog_pid) {
            return Ok(exit);
        }
        ctx.progress.set(c.get(0));
        if sys::now() > dl.at() + 5.0 {
            let _ = sys::sigkill(hog_pid);
            return sys::wait(hog_pid).map_err(|e| format!("wait: {e}"));
        }
        sys::sleep_secs(0.005);
    }
}

/// The group's numbers: its limit, the hog's size, the time to the kill and the group's
/// own event counters and peak.
fn record(
    r: &mut ScenarioReport,
    p: &Params,
    group: &str,
    c: &SharedCounters,
    t_kill: f64,
    events: &BTreeMap<String, u64>,
) {
    r.num("memory_max", p.max_mib as f64, "MiB");
    r.num("hog_size_at_end", c.get(0) as f64, "MiB");
    r.num("time_to_kill", t_kill * 1000.0, "ms");
    r.num(
        "group_oom_kills",
        *events.get("oom_kill").unwrap_or(&0) as f64,
        "count",
    );
    r.num(
        "group_max_events",
        *events.get("max").unwrap_or(&0) as f64,
        "count",
    );
    if let Ok(peak) = sys::read_file(&format!("{group}/memory.peak")) {
        if let Ok(v) = peak.trim().parse::<u64>() {
            r.num("group_memory_peak", v as f64 / 1024.0, "KiB");
        }
    }
}

/// Passes only when the group's OOM killer, and no other, killed the hog inside the group
/// and the bystander outside lives on.
fn judge(
    r: &mut ScenarioReport,
    p: &Params,
    group: &str,
    exit: sys::Exit,
    events: &BTreeMap<String, u64>,
    bystander_alive: bool,
) {
    r.fact("hog_end", HogEnd::describe_exit(exit));
    r.fact(
        "bystander_alive",
        if bystander_alive { "yes" } else { "no" },
    );
    if exit == sys::Exit::Code(98) {
        r.fail(format!("the hog could not join {group}"));
    } else if exit != sys::Exit::Signal(sys::Signal::SIGKILL) {
        r.fail(format!(
            "the hog in a {} MiB group was not killed: {}",
            p.max_mib,
            HogEnd::describe_exit(exit)
        ));
    }
    if events.get("oom_kill").copied().unwrap_or(0) == 0 {
        r.fail("memory.events of the group counts no oom_kill");
    }
    if !bystander_alive {
        r.fail("the bystander outside the group was killed");
    }
}
