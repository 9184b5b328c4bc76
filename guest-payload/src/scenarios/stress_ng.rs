//! `stress-ng`: Debian's stress-ng with the case's stressors, bounded by its own `--timeout`
//! and by kstorm's deadline (killed when it overruns: a machine short of memory can hang it).
//! Its exit status decides pass, fail or infra (`kstorm_payload::stress_ng::exit_meaning`),
//! its `--yaml` metrics become measurements.

use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::sys;
use kstorm_payload::params::StressNg as Params;
use kstorm_payload::stress_ng::{self, ExitMeaning};
use nix::fcntl::OFlag;
use std::ffi::CString;
use std::os::fd::OwnedFd;

const YAML: &str = "/tmp/kstorm-stress-ng/metrics.yaml";
const LOG: &str = "/tmp/kstorm-stress-ng.log";
const WORK_DIR: &str = "/tmp/kstorm-stress-ng";
/// The raw YAML and log kept in the result, at most this much of each.
const KEEP_BYTES: usize = 16 * 1024;
/// How the forked child says in the log that stress-ng never started.
const EXEC_FAILED: &str = "kstorm-payload: exec";

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline());
    let mut r = ScenarioReport::default();
    if std::fs::metadata(stress_ng::BINARY).is_err() {
        r.infra(format!(
            "{} is not in this guest (kstorm carries it in the initramfs of cells with a stress-ng case)",
            stress_ng::BINARY
        ));
        return Ok(r);
    }
    sys::mkdir_p(WORK_DIR).map_err(|e| format!("creating {WORK_DIR}: {e}"))?;
    // Another uid must be able to write its files there.
    std::fs::set_permissions(
        WORK_DIR,
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .map_err(|e| format!("chmod {WORK_DIR}: {e}"))?;
    let _ = std::fs::remove_file(YAML);
    // Socket stressors connect over loopback.
    if let Err(e) = sys::linux_loopback_up() {
        r.fact("loopback", format!("could not bring lo up: {e}"));
    }
    let args = stress_ng::args(&p, YAML, WORK_DIR);
    r.fact("stress_ng_args", args.join(" "));
    let log = sys::open(LOG, OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC)
        .map_err(|e| format!("opening {LOG}: {e}"))?;
    let pid = spawn(&args, log, p.uid).map_err(|e| format!("starting stress-ng: {e}"))?;
    let exit = wait_until(pid, &dl).map_err(|e| format!("waiting for stress-ng: {e}"))?;
    let log = std::fs::read_to_string(LOG).unwrap_or_default();
    r.fact("stress_ng_log", tail(&log, KEEP_BYTES));
    if let Some(line) = log.lines().find(|l| l.starts_with(EXEC_FAILED)) {
        // ETXTBSY here means the kernel never finished writing the file: the console says
        // "Initramfs unpacking failed" (too little memory to unpack the tools).
        r.infra(format!("stress-ng did not start: {line}"));
        return Ok(r);
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
    judge_log(&mut r, &p, &log);
    Ok(r)
}

/// What the exit status does not say: a stressor that reported a failure (`fail:`) or did
/// not run at all (skipped) while stress-ng still exited 0.
fn judge_log(r: &mut ScenarioReport, p: &Params, log: &str) {
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARNING")).collect();
    if !warnings.is_empty() {
        r.fact("stress_ng_warnings", warnings.join("\n"));
    }
    if let Some(line) = log.lines().find(|l| l.starts_with("stress-ng: fail:")) {
        if r.failure.is_none() {
            r.fail(format!("stress-ng logged a failure: {}", line.trim()));
        }
    }
    let missing = stress_ng::missing_stressors(p, &r.measurements);
    if r.failure.is_none() && !missing.is_empty() {
        r.infra(format!(
            "stressor {} did not run (stress-ng: {})",
            missing.join(", "),
            last_complaint(log)
        ));
    }
}

fn judge_code(r: &mut ScenarioReport, code: i32) {
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
fn record_metrics(r: &mut ScenarioReport) {
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
fn spawn(args: &[String], log: OwnedFd, uid: Option<u32>) -> std::io::Result<i32> {
    let words: Vec<CString> = std::iter::once(stress_ng::BINARY)
        .chain(args.iter().map(String::as_str))
        .map(|w| CString::new(w).map_err(|_| std::io::ErrorKind::InvalidInput))
        .collect::<Result<_, _>>()?;
    sys::fork_run(move || {
        if nix::unistd::dup2_stdout(&log).is_err() || nix::unistd::dup2_stderr(&log).is_err() {
            return 126;
        }
        let _ = nix::unistd::chdir(WORK_DIR);
        if let Some(id) = uid {
            if let Err(e) = sys::drop_root_to(id) {
                eprintln!("{EXEC_FAILED}: switching to uid {id}: {e}");
                return 127;
            }
        }
        let err = nix::unistd::execv(&words[0], &words).unwrap_err();
        // Standard error is the log, which the result keeps.
        eprintln!("{EXEC_FAILED} {}: {err}", stress_ng::BINARY);
        127
    })
}

/// Waits for stress-ng until `dl`; kills it when the deadline passed (`Ok(None)` then). A
/// failed wait is an error of its own, not reported as an overrun.
fn wait_until(pid: i32, dl: &sys::Deadline) -> Result<Option<sys::Exit>, String> {
    loop {
        match sys::try_wait(pid) {
            Ok(Some(exit)) => return Ok(Some(exit)),
            Ok(None) => {}
            Err(e) => {
                let _ = sys::sigkill(pid);
                return Err(e.to_string());
            }
        }
        if dl.passed() {
            let _ = sys::sigkill(pid);
            let _ = sys::wait(pid);
            return Ok(None);
        }
        sys::sleep_secs(dl.remaining().clamp(0.0, 0.2));
    }
}

/// The log line that says why, for a stressor that did not run.
fn last_complaint(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("skipping") || l.contains("error:") || l.contains("not supported"))
        .unwrap_or("no reason in its log")
        .trim()
}

/// The last `max` bytes of `text`, cut at a character boundary.
fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
