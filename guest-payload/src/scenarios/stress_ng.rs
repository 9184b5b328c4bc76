//! `stress-ng`: Debian's stress-ng with the case's stressors, bounded by its own `--timeout`
//! and by kstorm's deadline (killed when it overruns: a machine short of memory can hang it).
//! Its exit status decides pass, fail or infra (`kstorm_payload::stress_ng::exit_meaning`),
//! its `--yaml` metrics become measurements.

use super::{deadline, Ctx, Report, RunError};
use crate::sys;
use kstorm_payload::params::StressNg as Params;
use kstorm_payload::stress_ng::{self, ExitMeaning};
use nix::fcntl::OFlag;
use std::ffi::CString;
use std::os::fd::OwnedFd;

const YAML: &str = "/tmp/kstorm-stress-ng.yaml";
const LOG: &str = "/tmp/kstorm-stress-ng.log";
const WORK_DIR: &str = "/tmp/kstorm-stress-ng";
/// The raw YAML and log kept in the result, at most this much of each.
const KEEP_BYTES: usize = 16 * 1024;

pub fn run(p: Params, ctx: &Ctx) -> Result<Report, RunError> {
    let dl = deadline(ctx, p.deadline());
    let mut r = Report::default();
    if std::fs::metadata(stress_ng::BINARY).is_err() {
        r.infra(format!(
            "{} is not in this guest (kstorm carries it in the initramfs of cells with a stress-ng case)",
            stress_ng::BINARY
        ));
        return Ok(r);
    }
    sys::mkdir_p(WORK_DIR).map_err(|e| format!("creating {WORK_DIR}: {e}"))?;
    let _ = std::fs::remove_file(YAML);
    let args = stress_ng::args(&p, YAML, WORK_DIR);
    r.fact("stress_ng_args", args.join(" "));
    let log = sys::open(LOG, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC)
        .map_err(|e| format!("opening {LOG}: {e}"))?;
    let pid = spawn(&args, log).map_err(|e| format!("starting stress-ng: {e}"))?;
    let exit = wait_until(pid, &dl);
    if let Ok(text) = std::fs::read_to_string(LOG) {
        r.fact("stress_ng_log", tail(&text, KEEP_BYTES));
    }
    let Some(exit) = exit else {
        r.fail(format!(
            "stress-ng ran past kstorm's deadline of {} s (its own --timeout was {} s) and was killed",
            p.deadline(),
            p.timeout_s
        ));
        return Ok(r);
    };
    r.fact("stress_ng_exit", exit.describe());
    record_metrics(&mut r);
    match exit {
        sys::Exit::Code(code) => judge_code(&mut r, code),
        sys::Exit::Signal(s) => r.fail(format!("stress-ng itself was killed by {}", s.as_str())),
    }
    Ok(r)
}

fn judge_code(r: &mut Report, code: i32) {
    match stress_ng::exit_meaning(code) {
        ExitMeaning::Pass => {}
        ExitMeaning::Fail(why) => r.fail(why),
        ExitMeaning::Infra(why) => r.infra(why),
        ExitMeaning::Untrusted(why) => {
            r.fact("metrics_trustworthy", "false");
            r.stop_error = Some(why);
        }
    }
}

/// The YAML's numbers as measurements, the raw text as a fact (a missing file is only noted:
/// the exit status already says what happened).
fn record_metrics(r: &mut Report) {
    let Ok(yaml) = std::fs::read_to_string(YAML) else {
        r.fact("stress_ng_yaml", "none written");
        return;
    };
    match stress_ng::measurements(&yaml) {
        Ok(m) => r.measurements.extend(m),
        Err(e) => r.fact("stress_ng_yaml_error", e),
    }
    if let Some(v) = stress_ng::version(&yaml) {
        r.fact("stress_ng_version", v);
    }
    r.fact("stress_ng_yaml", tail(&yaml, KEEP_BYTES));
}

/// Starts stress-ng in this process group (so the supervisor's kill reaches its stressors),
/// standard output and error to `log`, working in [`WORK_DIR`].
fn spawn(args: &[String], log: OwnedFd) -> std::io::Result<i32> {
    let words: Vec<CString> = std::iter::once(stress_ng::BINARY)
        .chain(args.iter().map(String::as_str))
        .map(|w| CString::new(w).map_err(|_| std::io::ErrorKind::InvalidInput))
        .collect::<Result<_, _>>()?;
    sys::fork_run(move || {
        if nix::unistd::dup2_stdout(&log).is_err() || nix::unistd::dup2_stderr(&log).is_err() {
            return 126;
        }
        let _ = nix::unistd::chdir(WORK_DIR);
        let mut err = nix::errno::Errno::UnknownErrno;
        // Right after boot the kernel may still hold the file it unpacked from the initramfs
        // open for writing (its final close is deferred): ETXTBSY for a moment.
        for _ in 0..50 {
            err = nix::unistd::execv(&words[0], &words).unwrap_err();
            if err != nix::errno::Errno::ETXTBSY {
                break;
            }
            sys::sleep_secs(0.1);
        }
        // Standard error is the log, which the result keeps.
        eprintln!("kstorm-payload: exec {}: {err}", stress_ng::BINARY);
        127
    })
}

/// Waits for stress-ng until `dl`; kills it when the deadline passed (`None` then).
fn wait_until(pid: i32, dl: &sys::Deadline) -> Option<sys::Exit> {
    loop {
        match sys::try_wait(pid) {
            Ok(Some(exit)) => return Some(exit),
            Ok(None) => {}
            Err(_) => return None,
        }
        if dl.passed() {
            let _ = sys::sigkill(pid);
            let _ = sys::wait(pid);
            return None;
        }
        sys::sleep_secs(dl.remaining().clamp(0.0, 0.2));
    }
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
