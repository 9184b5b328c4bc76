//! `tmpfs-fill` (seed 003): fill a tmpfs with and without a size limit. A limited tmpfs must
//! stop the writer with ENOSPC; an unlimited one fills RAM until the OOM killer acts (killing
//! processes frees nothing: tmpfs pages belong to no process). Either way, once the files are
//! removed the memory must come back: judged on settled samples of the obtainable memory, with
//! the evidence in the result (`memory_evidence`). Linux (mounts tmpfs).

use super::leakcheck::{sample_now, settled_sample};
use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::sys;
use crate::sys::Mapping;
use kstorm_payload::memory_evidence::{MemoryEvidence, RetentionRule};
use kstorm_payload::params::{ProvokedLeak, TmpfsFill as Params, TmpfsPhase as Phase};
use std::io::Write;
use std::os::fd::AsFd;

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();
    sys::linux_set_oom_score_adj(-1000).map_err(|e| format!("protecting the coordinator: {e}"))?;
    for phase in &p.phases {
        run_phase(&p, *phase, dl.at(), ctx, &mut r)?;
    }
    Ok(r)
}

/// How the writer ended.
struct Fill {
    stop: String,
    written_mib: Option<u64>,
    elapsed: f64,
}

fn run_phase(
    p: &Params,
    phase: Phase,
    end: f64,
    ctx: &Ctx,
    r: &mut ScenarioReport,
) -> Result<(), RunError> {
    let total_mib = sys::linux_meminfo_field("MemTotal").unwrap_or(0) / 1024;
    let (name, size, cap) = match phase {
        Phase::Limited => ("limited", format!("size={}m", p.limit_mib), p.limit_mib * 4),
        Phase::Unlimited => (
            "unlimited",
            "size=0".to_string(),
            total_mib * p.cap_pct / 100,
        ),
    };
    let key = |w: &str| format!("{name}_{w}");
    sys::mkdir_p(&p.dir).map_err(|e| format!("mkdir {}: {e}", p.dir))?;
    sys::linux_mount("tmpfs", &p.dir, "tmpfs", Some(&size))
        .map_err(|e| format!("mount tmpfs {size} on {}: {e}", p.dir))?;
    let (before, _) = settled_sample(ctx.in_guest, p.leak_settle_ms);
    let spares = if phase == Phase::Unlimited {
        start_spares(p.spares)
    } else {
        Vec::new()
    };
    let fill = fill(p, cap, end, ctx)?;
    let full = sample_now();
    let spares_killed = stop_spares(&spares);
    let provoked = provoke(p);
    // Remove the files, unmount, and see the memory come back.
    let t_rm = sys::now();
    let (removed, umounted) = remove_all(&p.dir);
    let (after, settle) = settled_sample(ctx.in_guest, p.leak_settle_ms);
    let recovery_time = sys::now() - t_rm;
    drop(provoked);
    let rule = RetentionRule {
        max_missing_kib: p.leak_max_missing_kib,
    };
    let label = format!("{name}: after removing the files");
    let evidence =
        MemoryEvidence::compare(&label, &settle, &before, Some(&full), &after, Some(rule));

    r.fact(key("stop"), fill.stop.clone());
    if let Some(w) = fill.written_mib {
        r.num(key("written"), w as f64, "MiB");
    }
    r.num(key("progress_written"), ctx.progress.get() as f64, "MiB");
    ctx.progress.set(0);
    r.num(key("fill_time"), fill.elapsed, "s");
    for (stage, s) in [("before", &before), ("full", &full), ("after", &after)] {
        let avail = s.meminfo.get("MemAvailable").copied().unwrap_or(0);
        r.num(key(&format!("mem_available_{stage}")), avail as f64, "KiB");
    }
    r.num(key("missing"), evidence.missing_kib as f64, "KiB");
    r.num(key("recovery_time"), recovery_time, "s");
    r.num(key("files_removed"), removed as f64, "count");
    if phase == Phase::Unlimited {
        r.num(key("spares_killed"), spares_killed as f64, "count");
    }
    if let Err(e) = umounted {
        r.fail(format!("{name}: umount {}: {e}", p.dir));
    }
    r.fact(key("recovered"), if evidence.leaked { "no" } else { "yes" });
    if evidence.leaked {
        r.fail(format!(
            "{name}: {} KiB did not come back after removing the files (limit {} KiB; kernel holds {:+} KiB, processes {:+} KiB)",
            evidence.missing_kib, rule.max_missing_kib, evidence.kernel_held_kib, evidence.process_held_kib
        ));
    }
    r.evidence.push(evidence);
    if phase == Phase::Limited && fill.stop != "ENOSPC" {
        r.fail(format!(
            "limited tmpfs ({} MiB): expected the writer to stop at ENOSPC, it stopped at {}",
            p.limit_mib, fill.stop
        ));
    }
    Ok(())
}

/// Removes every file in `dir` (how many) and unmounts it.
fn remove_all(dir: &str) -> (usize, std::io::Result<()>) {
    let removed = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| std::fs::remove_file(e.path()).is_ok())
                .count()
        })
        .unwrap_or(0);
    (removed, sys::linux_umount(dir))
}

/// Killable bystanders (adj 500): the OOM killer takes them after a killable writer, or first.
fn start_spares(n: u32) -> Vec<i32> {
    (0..n)
        .filter_map(|_| {
            sys::fork_run(|| {
                sys::linux_set_name("tmpfs-spare");
                let _ = sys::linux_set_oom_score_adj(500);
                loop {
                    sys::sleep_secs(1.0);
                }
            })
            .ok()
        })
        .collect()
}

/// Kills the spares; how many the OOM killer had taken already.
fn stop_spares(spares: &[i32]) -> usize {
    let killed = spares
        .iter()
        .filter(|pid| matches!(sys::try_wait(**pid), Ok(Some(_))))
        .count();
    for pid in spares {
        let _ = sys::sigkill(*pid);
        let _ = sys::wait(*pid);
    }
    killed
}

/// A child writes files of `file_mib` until the tmpfs refuses, `cap_mib` or `end`.
fn fill(p: &Params, cap_mib: u64, end: f64, ctx: &Ctx) -> Result<Fill, RunError> {
    let (rr, rw) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (dir, file_mib, progress) = (p.dir.clone(), p.file_mib.max(1), ctx.progress);
    let adj = p.writer_oom_score_adj;
    let w = rw.as_fd();
    let t0 = sys::now();
    let writer = sys::fork_run(move || {
        sys::linux_set_name("tmpfs-writer");
        let _ = sys::linux_set_oom_score_adj(adj);
        let chunk = vec![0x6bu8; sys::MIB];
        let mut written = 0u64;
        let mut i = 0;
        let errno = 'files: loop {
            let mut f = match std::fs::File::create(format!("{dir}/f{i}")) {
                Ok(f) => f,
                Err(e) => break sys::errno_of(&e),
            };
            for _ in 0..file_mib {
                if written >= cap_mib {
                    break 'files 0;
                }
                if sys::now() > end {
                    break 'files -1;
                }
                if let Err(e) = f.write_all(&chunk) {
                    break 'files sys::errno_of(&e);
                }
                written += 1;
                progress.add(1);
            }
            i += 1;
        };
        let _ = sys::send_word(w, written as i64);
        let _ = sys::send_word(w, errno as i64);
        0
    })
    .map_err(|e| format!("fork: {e}"))?;
    drop(rw);
    let exit = sys::wait(writer).map_err(|e| format!("wait: {e}"))?;
    let elapsed = sys::now() - t0;
    let report = (
        sys::recv_word(rr.as_fd(), sys::now() + 1.0),
        sys::recv_word(rr.as_fd(), sys::now() + 1.0),
    );
    let (stop, written_mib) = match (exit, report) {
        (sys::Exit::Signal(s), _) => (format!("writer killed by {}", s.as_str()), None),
        (_, (Ok(w), Ok(0))) => ("cap".to_string(), Some(w as u64)),
        (_, (Ok(w), Ok(-1))) => ("deadline".to_string(), Some(w as u64)),
        (_, (Ok(w), Ok(e))) => (sys::errno_name(e as i32), Some(w as u64)),
        (other, _) => (
            format!("writer ended without a report: {}", other.describe()),
            None,
        ),
    };
    Ok(Fill {
        stop,
        written_mib,
        elapsed,
    })
}

/// Test only: what holds memory past the removal, dropped after the "after" sample.
enum Provoked {
    Nothing,
    #[allow(dead_code)] // held for its drop
    OpenFiles(Vec<std::fs::File>),
    #[allow(dead_code)] // held for its drop
    Pinned(Mapping),
}

fn provoke(p: &Params) -> Provoked {
    match p.test_provoke_leak {
        ProvokedLeak::None => Provoked::Nothing,
        ProvokedLeak::HeldOpen => Provoked::OpenFiles(
            std::fs::read_dir(&p.dir)
                .map(|d| {
                    d.filter_map(|e| e.ok())
                        .filter_map(|e| std::fs::File::open(e.path()).ok())
                        .collect()
                })
                .unwrap_or_default(),
        ),
        ProvokedLeak::Mlocked => match Mapping::anon((p.test_provoke_mib as usize) * sys::MIB) {
            Ok(mut m) => {
                m.touch_write(0x5a);
                let _ = m.lock();
                Provoked::Pinned(m)
            }
            Err(_) => Provoked::Nothing,
        },
    }
}
