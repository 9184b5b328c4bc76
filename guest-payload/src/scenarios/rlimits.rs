//! `rlimits` (seed 003): RLIMIT_NOFILE, RLIMIT_NPROC and RLIMIT_AS set low in a child, then
//! exceeded: the kernel must refuse with EMFILE, EAGAIN and ENOMEM, and nothing else may
//! break (the coordinator still forks and opens files afterwards).

use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::sys::{self, Errno, OFlag, Resource};
use kstorm_payload::params::Rlimits as Params;
use std::os::fd::{AsFd, BorrowedFd};

/// Runs `f` in a child, which sends back (count, errno); kills it at the deadline.
fn in_child(
    dl: &sys::Deadline,
    f: impl FnOnce(BorrowedFd) -> (u64, i32),
) -> Result<(u64, i32), String> {
    let (rr, rw) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
    let w = rw.as_fd();
    let pid = sys::fork_run(move || {
        let (count, errno) = f(w);
        let _ = sys::send_word(w, count as i64);
        let _ = sys::send_word(w, errno as i64);
        0
    })
    .map_err(|e| format!("fork: {e}"))?;
    drop(rw);
    let got = (sys::recv_word(&rr, dl.at()), sys::recv_word(&rr, dl.at()));
    let _ = sys::sigkill(pid);
    let exit = sys::wait(pid);
    match got {
        (Ok(c), Ok(e)) => Ok((c as u64, e as i32)),
        _ => Err(format!(
            "test child reported nothing ({:?})",
            exit.map(|e| e.describe())
        )),
    }
}

/// The coordinator still works: it forks a child that opens a file.
fn still_works() -> bool {
    match sys::fork_run(|| {
        if sys::open("/dev/null", OFlag::O_RDONLY).is_ok() {
            0
        } else {
            1
        }
    }) {
        Ok(pid) => matches!(sys::wait(pid), Ok(sys::Exit::Code(0))),
        Err(_) => false,
    }
}

fn check(
    r: &mut ScenarioReport,
    what: &str,
    got: Result<(u64, i32), String>,
    want: i32,
    unit: &str,
) {
    match got {
        Ok((count, errno)) => {
            r.num(format!("{what}_reached"), count as f64, unit);
            r.fact(format!("{what}_errno"), sys::errno_name(errno));
            if errno != want {
                r.fail(format!(
                    "{what}: expected {}, got {}",
                    sys::errno_name(want),
                    if errno == 0 {
                        "no error".into()
                    } else {
                        sys::errno_name(errno)
                    }
                ));
            }
        }
        Err(e) => r.fail(format!("{what}: {e}")),
    }
    if !still_works() {
        r.fail(format!(
            "after the {what} test the coordinator can no longer fork and open a file"
        ));
    }
}

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();

    let nofile = p.nofile;
    let got = in_child(&dl, move |_| exceed_nofile(nofile));
    check(&mut r, "nofile", got, Errno::EMFILE as i32, "fds");
    ctx.progress.add(1);

    let (nproc, uid) = (p.nproc, p.nproc_uid);
    let limit_at = dl.at();
    let got = in_child(&dl, move |_| exceed_nproc(nproc, uid, limit_at));
    check(&mut r, "nproc", got, Errno::EAGAIN as i32, "processes");
    ctx.progress.add(1);

    let as_mib = p.as_mib;
    let got = in_child(&dl, move |_| exceed_as(as_mib));
    check(&mut r, "as", got, Errno::ENOMEM as i32, "MiB");
    ctx.progress.add(1);
    r.num("nofile_limit", p.nofile as f64, "fds");
    r.num("nproc_limit", p.nproc as f64, "processes");
    r.num("as_limit", p.as_mib as f64, "MiB");
    Ok(r)
}

/// In the test child: RLIMIT_NOFILE set to `nofile`, then open until refused.
/// Returns (descriptors held, errno of the refusal).
fn exceed_nofile(nofile: u64) -> (u64, i32) {
    if let Err(e) = sys::set_rlimit(Resource::RLIMIT_NOFILE, nofile) {
        return (0, sys::errno_of(&e));
    }
    let mut held = Vec::with_capacity(nofile as usize + 16);
    loop {
        match sys::open("/dev/null", OFlag::O_RDONLY) {
            Ok(fd) if held.len() < 100_000 => held.push(fd),
            Ok(_) => return (held.len() as u64, 0),
            Err(e) => return (held.len() as u64, sys::errno_of(&e)),
        }
    }
}

/// In the test child: as `uid` with RLIMIT_NPROC set to `nproc`, fork waiting children
/// until refused (or `limit_at`), then release and reap them.
/// Returns (children started, errno of the refusal).
fn exceed_nproc(nproc: u64, uid: u32, limit_at: f64) -> (u64, i32) {
    if let Err(e) = sys::drop_root_to(uid) {
        return (0, sys::errno_of(&e));
    }
    if let Err(e) = sys::set_rlimit(Resource::RLIMIT_NPROC, nproc) {
        return (0, sys::errno_of(&e));
    }
    let mut release = match sys::Gate::new() {
        Ok(gate) => gate,
        Err(e) => return (0, sys::errno_of(&e)),
    };
    let mut kids = Vec::new();
    let result = loop {
        if kids.len() as u64 > nproc + 1000 || sys::now() > limit_at {
            break (kids.len() as u64, 0);
        }
        let gate = &mut release;
        match sys::fork_run(move || {
            gate.wait();
            0
        }) {
            Ok(pid) => kids.push(pid),
            Err(e) => break (kids.len() as u64, sys::errno_of(&e)),
        }
    };
    release.release();
    for k in kids {
        let _ = sys::wait(k);
    }
    result
}

/// In the test child: RLIMIT_AS set to `as_mib` MiB, then map 1 MiB at a time until refused.
/// Returns (MiB mapped, errno of the refusal).
fn exceed_as(as_mib: u64) -> (u64, i32) {
    // Room for every mapping is taken before the limit, so only mmap meets it.
    let mut maps = Vec::with_capacity(as_mib as usize + 1001);
    if let Err(e) = sys::set_rlimit(Resource::RLIMIT_AS, as_mib * sys::MIB as u64) {
        return (0, sys::errno_of(&e));
    }
    loop {
        if maps.len() as u64 > as_mib + 1000 {
            return (maps.len() as u64, 0);
        }
        match sys::Mapping::anon(sys::MIB) {
            Ok(m) => maps.push(m),
            Err(e) => return (maps.len() as u64, sys::errno_of(&e)),
        }
    }
}
