//! `rlimits` (seed 003): RLIMIT_NOFILE, RLIMIT_NPROC and RLIMIT_AS set low in a child, then
//! exceeded: the kernel must refuse with EMFILE, EAGAIN and ENOMEM, and nothing else may
//! break (the coordinator still forks and opens files afterwards).

use super::{deadline, Ctx, Report, RunError};
use crate::sys;
use kstorm_payload::params::Rlimits as Params;
use std::os::fd::AsRawFd;

/// Runs `f` in a child, which sends back (count, errno); kills it at the deadline.
fn in_child(dl: &sys::Deadline, f: impl FnOnce(i32) -> (u64, i32)) -> Result<(u64, i32), String> {
    let (rr, rw) = sys::pipe(false).map_err(|e| format!("pipe: {e}"))?;
    let w = rw.as_raw_fd();
    let pid = sys::fork_run(move || {
        let (count, errno) = f(w);
        let _ = sys::send_word(w, count as i64);
        let _ = sys::send_word(w, errno as i64);
        0
    })
    .map_err(|e| format!("fork: {e}"))?;
    drop(rw);
    let got = (
        sys::recv_word(rr.as_raw_fd(), dl.at()),
        sys::recv_word(rr.as_raw_fd(), dl.at()),
    );
    let _ = sys::kill(pid, libc::SIGKILL);
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
        if sys::open("/dev/null", libc::O_RDONLY).is_ok() {
            0
        } else {
            1
        }
    }) {
        Ok(pid) => matches!(sys::wait(pid), Ok(sys::Exit::Code(0))),
        Err(_) => false,
    }
}

fn check(r: &mut Report, what: &str, got: Result<(u64, i32), String>, want: i32, unit: &str) {
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

pub fn run(p: Params, ctx: &Ctx) -> Result<Report, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = Report::default();

    let nofile = p.nofile;
    let got = in_child(&dl, move |_| {
        if let Err(e) = sys::set_rlimit(libc::RLIMIT_NOFILE, nofile) {
            return (0, e.raw_os_error().unwrap_or(0));
        }
        let mut held = Vec::with_capacity(nofile as usize + 16);
        loop {
            match sys::open("/dev/null", libc::O_RDONLY) {
                Ok(fd) if held.len() < 100_000 => held.push(fd),
                Ok(_) => return (held.len() as u64, 0),
                Err(e) => return (held.len() as u64, e.raw_os_error().unwrap_or(0)),
            }
        }
    });
    check(&mut r, "nofile", got, libc::EMFILE, "fds");
    ctx.progress.add(1);

    let (nproc, uid) = (p.nproc, p.nproc_uid);
    let limit_at = dl.at();
    let got = in_child(&dl, move |_| {
        // SAFETY: plain syscalls; only root may switch, others are bound by the limit anyway.
        unsafe {
            if libc::geteuid() == 0
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(uid) != 0
                    || libc::setuid(uid) != 0)
            {
                return (0, sys::errno());
            }
        }
        if let Err(e) = sys::set_rlimit(libc::RLIMIT_NPROC, nproc) {
            return (0, e.raw_os_error().unwrap_or(0));
        }
        let Ok((rel_r, rel_w)) = sys::pipe(false) else {
            return (0, sys::errno());
        };
        let mut kids = Vec::new();
        let result = loop {
            if kids.len() as u64 > nproc + 1000 || sys::now() > limit_at {
                break (kids.len() as u64, 0);
            }
            let (rr, rw) = (rel_r.as_raw_fd(), rel_w.as_raw_fd());
            match sys::fork_run(move || {
                // SAFETY: our copy of the release end.
                unsafe { libc::close(rw) };
                sys::block_until_eof(rr);
                0
            }) {
                Ok(pid) => kids.push(pid),
                Err(e) => break (kids.len() as u64, e.raw_os_error().unwrap_or(0)),
            }
        };
        drop(rel_w);
        for k in kids {
            let _ = sys::wait(k);
        }
        result
    });
    check(&mut r, "nproc", got, libc::EAGAIN, "processes");
    ctx.progress.add(1);

    let as_mib = p.as_mib;
    let got = in_child(&dl, move |_| {
        // Room for every mapping is taken before the limit, so only mmap meets it.
        let mut maps = Vec::with_capacity(as_mib as usize + 1001);
        if let Err(e) = sys::set_rlimit(libc::RLIMIT_AS, as_mib * sys::MIB as u64) {
            return (0, e.raw_os_error().unwrap_or(0));
        }
        loop {
            if maps.len() as u64 > as_mib + 1000 {
                return (maps.len() as u64, 0);
            }
            match sys::AnonMap::new(sys::MIB) {
                Ok(m) => maps.push(m),
                Err(e) => return (maps.len() as u64, e.raw_os_error().unwrap_or(0)),
            }
        }
    });
    check(&mut r, "as", got, libc::ENOMEM, "MiB");
    ctx.progress.add(1);
    r.num("nofile_limit", p.nofile as f64, "fds");
    r.num("nproc_limit", p.nproc as f64, "processes");
    r.num("as_limit", p.as_mib as f64, "MiB");
    Ok(r)
}
