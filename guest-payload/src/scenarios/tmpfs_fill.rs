//! `tmpfs-fill` (seed 003): fill a tmpfs with and without a size limit. A limited tmpfs must
//! stop the writer with ENOSPC; an unlimited one fills RAM until the OOM killer acts (killing
//! processes frees nothing: tmpfs pages belong to no process). Either way, once the files are
//! removed the memory must come back. Linux (mounts tmpfs).

use super::{deadline, Ctx, Report, RunError};
use crate::sys;
use kstorm_payload::params::{TmpfsFill as Params, TmpfsPhase as Phase};
use std::io::Write;
use std::os::fd::AsFd;

pub fn run(p: Params, ctx: &Ctx) -> Result<Report, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = Report::default();
    sys::linux_set_oom_score_adj(-1000).map_err(|e| format!("protecting the coordinator: {e}"))?;
    let total_mib = sys::linux_meminfo_field("MemTotal").unwrap_or(0) / 1024;
    for phase in &p.phases {
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
        let avail0 = sys::linux_meminfo_field("MemAvailable").unwrap_or(0);
        let spares: Vec<i32> = if *phase == Phase::Unlimited {
            (0..p.spares)
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
        } else {
            Vec::new()
        };
        let (rr, rw) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
        let (dir, file_mib, end, progress) =
            (p.dir.clone(), p.file_mib.max(1), dl.at(), ctx.progress);
        let w = rw.as_fd();
        let t0 = sys::now();
        let writer = sys::fork_run(move || {
            sys::linux_set_name("tmpfs-writer");
            let _ = sys::linux_set_oom_score_adj(1000);
            let chunk = vec![0x6bu8; sys::MIB];
            let mut written = 0u64;
            let mut i = 0;
            let errno = 'files: loop {
                let mut f = match std::fs::File::create(format!("{dir}/f{i}")) {
                    Ok(f) => f,
                    Err(e) => break sys::errno_of(&e),
                };
                for _ in 0..file_mib {
                    if written >= cap {
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
        let (stop, written) = match (exit, report) {
            (sys::Exit::Signal(s), _) => (format!("writer killed by {}", s.as_str()), None),
            (_, (Ok(w), Ok(0))) => ("cap".to_string(), Some(w)),
            (_, (Ok(w), Ok(-1))) => ("deadline".to_string(), Some(w)),
            (_, (Ok(w), Ok(e))) => (sys::errno_name(e as i32), Some(w)),
            (other, _) => (
                format!("writer ended without a report: {}", other.describe()),
                None,
            ),
        };
        let avail_full = sys::linux_meminfo_field("MemAvailable").unwrap_or(0);
        let spares_killed = spares
            .iter()
            .filter(|pid| matches!(sys::try_wait(**pid), Ok(Some(_))))
            .count();
        for pid in &spares {
            let _ = sys::sigkill(*pid);
            let _ = sys::wait(*pid);
        }
        // Remove the files, unmount, and see the memory come back.
        let t_rm = sys::now();
        let removed = std::fs::read_dir(&p.dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| std::fs::remove_file(e.path()).is_ok())
                    .count()
            })
            .unwrap_or(0);
        let umounted = sys::linux_umount(&p.dir);
        sys::sleep_secs(0.5);
        let avail1 = sys::linux_meminfo_field("MemAvailable").unwrap_or(0);
        let shmem_written = written.map(|w| w as f64).unwrap_or(f64::NAN);
        r.fact(key("stop"), stop.clone());
        if !shmem_written.is_nan() {
            r.num(key("written"), shmem_written, "MiB");
        }
        r.num(key("progress_written"), ctx.progress.get() as f64, "MiB");
        ctx.progress.set(0);
        r.num(key("fill_time"), elapsed, "s");
        r.num(key("mem_available_before"), avail0 as f64, "KiB");
        r.num(key("mem_available_full"), avail_full as f64, "KiB");
        r.num(key("mem_available_after"), avail1 as f64, "KiB");
        r.num(key("recovery_time"), sys::now() - t_rm, "s");
        r.num(key("files_removed"), removed as f64, "count");
        if *phase == Phase::Unlimited {
            r.num(key("spares_killed"), spares_killed as f64, "count");
        }
        if let Err(e) = umounted {
            r.fail(format!("{name}: umount {}: {e}", p.dir));
        }
        // Recovered: at most 4 MiB or 10% of what was there before is missing.
        let missing = avail0.saturating_sub(avail1);
        let recovered = missing <= (4 * 1024).max(avail0 / 10);
        r.fact(key("recovered"), if recovered { "yes" } else { "no" });
        if !recovered {
            r.fail(format!(
                "{name}: {missing} KiB of MemAvailable did not come back after removing the files"
            ));
        }
        if *phase == Phase::Limited && stop != "ENOSPC" {
            r.fail(format!("limited tmpfs ({} MiB): expected the writer to stop at ENOSPC, it stopped at {stop}", p.limit_mib));
        }
    }
    Ok(r)
}
