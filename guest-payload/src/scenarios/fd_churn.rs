//! `fd-churn` (seed 000): P processes open and close descriptors as fast as they can for a
//! while ("closing ports very quickly" stressed Mach; slow closing did not).

use super::holders::open_fds;
use super::leakcheck::{LeakCheck, LeakParams};
use super::{deadline, Ctx, Report, RunError};
use crate::sys;
use kstorm_payload::params::FdChurn as Params;

pub fn run(p: Params, ctx: &Ctx) -> Result<Report, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = Report::default();
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
    let mut pids = Vec::new();
    let mut fork_error = None;
    for _ in 0..p.procs {
        let res_w = std::os::fd::AsFd::as_fd(&res_w);
        let (max_ops, batch, kind, progress) = (p.max_ops, p.batch, p.fd_kind, ctx.progress);
        match sys::fork_run(move || {
            let mut ops = 0u64;
            let mut first_errno = 0i32;
            let mut errors = 0u64;
            while ops < max_ops && sys::now() < stop_at {
                let (held, errno) = open_fds(batch, kind);
                let n = held.len() as u64;
                drop(held);
                ops += n;
                progress.add(n);
                if errno != 0 {
                    errors += 1;
                    if first_errno == 0 {
                        first_errno = errno;
                    }
                }
            }
            let _ = sys::send_words(res_w, &[ops as i64, errors as i64, first_errno as i64]);
            0
        }) {
            Ok(pid) => pids.push(pid),
            Err(e) => {
                fork_error = Some(format!("fork: {}", sys::err_name(&e)));
                break;
            }
        }
    }
    // Peak: while the workers churn.
    sys::sleep_secs((p.duration_s / 2.0).min(dl.remaining()));
    leak.during();
    let (mut ops, mut errors, mut first_errno) = (0u64, 0u64, 0i32);
    let read_by = dl.at().max(stop_at + 5.0);
    let fd = std::os::fd::AsFd::as_fd(&res_r);
    for _ in &pids {
        match (
            sys::recv_word(fd, read_by),
            sys::recv_word(fd, read_by),
            sys::recv_word(fd, read_by),
        ) {
            (Ok(o), Ok(e), Ok(f)) => {
                ops += o as u64;
                errors += e as u64;
                if first_errno == 0 {
                    first_errno = f as i32;
                }
            }
            _ => r.fail("a churn worker did not report"),
        }
    }
    for pid in &pids {
        let _ = sys::wait(*pid);
    }
    let elapsed = sys::now() - t0;
    r.num("procs", pids.len() as f64, "count");
    r.num("opens", ops as f64, "count");
    r.num("opens_per_s", ops as f64 / elapsed.max(1e-9), "1/s");
    r.num("open_errors", errors as f64, "count");
    r.num("elapsed", elapsed, "s");
    if first_errno != 0 {
        r.stop_error = Some(format!("open: {}", sys::errno_name(first_errno)));
    }
    if let Some(e) = fork_error {
        r.stop_error = Some(e);
    }
    r.fact("fd_kind", format!("{:?}", p.fd_kind).to_lowercase());
    leak.finish(&mut r);
    Ok(r)
}
