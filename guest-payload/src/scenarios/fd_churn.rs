//! `fd-churn` (seed 000): P processes open and close descriptors as fast as they can for a
//! while ("closing ports very quickly" stressed Mach; slow closing did not).

use super::holders::open_fds;
use super::leakcheck::{self, LeakCheck, LeakParams};
use super::{deadline, Ctx, FdKind, Report, RunError};
use crate::sys;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    #[serde(default = "d_procs")]
    pub procs: u32,
    /// How long the churn runs (it also stops at `max_ops` per process).
    #[serde(default = "d_duration")]
    pub duration_s: f64,
    #[serde(default = "d_max_ops")]
    pub max_ops: u64,
    /// Descriptors opened before closing them all again.
    #[serde(default = "d_batch")]
    pub batch: u32,
    #[serde(default)]
    pub fd_kind: FdKind,
    #[serde(default = "d_deadline")]
    pub deadline_s: f64,
    /// Leak check: wait for deferred frees before the "after" sample.
    #[serde(default = "leakcheck::default_settle_ms")]
    pub leak_settle_ms: u64,
    /// Leak check: growth below this is noise.
    #[serde(default = "leakcheck::default_min_kib")]
    pub leak_min_kib: u64,
}

fn d_procs() -> u32 {
    2
}
fn d_duration() -> f64 {
    3.0
}
fn d_max_ops() -> u64 {
    10_000_000
}
fn d_batch() -> u32 {
    64
}
fn d_deadline() -> f64 {
    30.0
}

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
