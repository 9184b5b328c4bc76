//! `fd-churn` (seed 000): P processes open and close descriptors as fast as they can for a
//! while ("closing ports very quickly" stressed Mach; slow closing did not).

use super::holders::open_fds;
use super::leakcheck::{LeakCheck, LeakParams};
use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::progress::Progress;
use crate::sys;
use kstorm_payload::params::{FdChurn as Params, FdKind};
use std::os::fd::{AsFd, BorrowedFd};

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
    let (res_r, res_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let stop_at = sys::now() + p.duration_s.min(dl.remaining());
    let t0 = sys::now();
    let (pids, fork_error) = start_workers(&p, ctx, stop_at, res_w.as_fd());
    // Peak: while the workers churn.
    sys::sleep_secs((p.duration_s / 2.0).min(dl.remaining()));
    leak.during();
    let read_by = dl.at().max(stop_at + 5.0);
    let totals = collect(res_r.as_fd(), &pids, read_by, &mut r);
    for pid in &pids {
        let _ = sys::wait(*pid);
    }
    let elapsed = sys::now() - t0;
    r.num("procs", pids.len() as f64, "count");
    r.num("opens", totals.ops as f64, "count");
    r.num("opens_per_s", totals.ops as f64 / elapsed.max(1e-9), "1/s");
    r.num("open_errors", totals.errors as f64, "count");
    r.num("elapsed", elapsed, "s");
    if totals.first_errno != 0 {
        r.stop_error = Some(format!("open: {}", sys::errno_name(totals.first_errno)));
    }
    if let Some(e) = fork_error {
        r.stop_error = Some(e);
    }
    r.fact("fd_kind", format!("{:?}", p.fd_kind).to_lowercase());
    leak.finish(&mut r);
    Ok(r)
}

/// Forks up to `procs` churn workers, each reporting its totals on `res_w`; returns their
/// pids and the fork error that stopped the starting, if one did.
fn start_workers(
    p: &Params,
    ctx: &Ctx,
    stop_at: f64,
    res_w: BorrowedFd,
) -> (Vec<i32>, Option<String>) {
    let mut pids = Vec::new();
    for _ in 0..p.procs {
        let (max_ops, batch, kind, progress) = (p.max_ops, p.batch, p.fd_kind, ctx.progress);
        match sys::fork_run(move || {
            let t = churn(max_ops, batch, kind, progress, stop_at);
            let _ = sys::send_words(
                res_w,
                &[t.ops as i64, t.errors as i64, t.first_errno as i64],
            );
            0
        }) {
            Ok(pid) => pids.push(pid),
            Err(e) => return (pids, Some(format!("fork: {}", sys::err_name(&e)))),
        }
    }
    (pids, None)
}

/// What churning did: descriptors opened, batches that hit an error, the first errno.
#[derive(Default)]
struct Totals {
    ops: u64,
    errors: u64,
    first_errno: i32,
}

/// A worker's loop (in the child): open a batch and close it again, until `max_ops` or
/// `stop_at`. Only plain numbers are kept, nothing is allocated beyond the batch itself.
fn churn(max_ops: u64, batch: u32, kind: FdKind, progress: &Progress, stop_at: f64) -> Totals {
    let mut t = Totals::default();
    while t.ops < max_ops && sys::now() < stop_at {
        let (held, errno) = open_fds(batch, kind);
        let n = held.len() as u64;
        drop(held);
        t.ops += n;
        progress.add(n);
        if errno != 0 {
            t.errors += 1;
            if t.first_errno == 0 {
                t.first_errno = errno;
            }
        }
    }
    t
}

/// Sums the workers' reports (three words each); a worker that sent none fails the run.
fn collect(fd: BorrowedFd, pids: &[i32], read_by: f64, r: &mut ScenarioReport) -> Totals {
    let mut t = Totals::default();
    for _ in pids {
        match (
            sys::recv_word(fd, read_by),
            sys::recv_word(fd, read_by),
            sys::recv_word(fd, read_by),
        ) {
            (Ok(o), Ok(e), Ok(f)) => {
                t.ops += o as u64;
                t.errors += e as u64;
                if t.first_errno == 0 {
                    t.first_errno = f as i32;
                }
            }
            _ => r.fail("a churn worker did not report"),
        }
    }
    t
}
