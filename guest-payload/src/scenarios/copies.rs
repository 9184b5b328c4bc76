//! `copies` (seed 002, experiments 1a/1b): many copies of one program. For each N in a list,
//! start N copies by fork (1a) or by exec of the payload binary (1b), each allocating and
//! writing a chunk of memory after it starts (so copy-on-write sharing is exercised); measure
//! the start time of each copy, the memory the copies use (Pss/Rss from smaps_rollup, the drop
//! of MemAvailable), the latency of a probe process doing a fixed small task while they run,
//! and the time to stop each copy.

use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::sys;
use kstorm_payload::params::{Copies as Params, CopyMode as Mode};
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// The copy's life after it started: allocate and write, say ready, wait for release.
fn copy_body(touch_kib: u64, ready_w: BorrowedFd, release_r: BorrowedFd) -> i32 {
    let mut mem = match sys::Mapping::anon((touch_kib as usize * 1024).max(sys::page_size())) {
        Ok(m) => m,
        Err(_) => return 2,
    };
    mem.touch_write(0x5a);
    if sys::send_time(ready_w, sys::now()).is_err() {
        return 3;
    }
    sys::block_until_eof(release_r);
    0
}

/// Entry of an exec'd copy: `kstorm-payload --copy <touch_kib>`, with the ready pipe on
/// standard output and the release pipe on standard input.
pub fn copy_main(args: &[String]) -> i32 {
    match args.first().and_then(|s| s.parse::<u64>().ok()) {
        Some(touch) => copy_body(touch, std::io::stdout().as_fd(), std::io::stdin().as_fd()),
        None => {
            eprintln!("kstorm-payload --copy: expected <touch_kib> (ready pipe on stdout, release pipe on stdin)");
            2
        }
    }
}

/// In a forked child: replaces it by a copy of the payload (`copy_main`) that reports on
/// `ready_w` and waits on `release_r`. Returns only when the exec failed.
fn exec_copy(exe: &CStr, touch_kib: u64, ready_w: BorrowedFd, release_r: BorrowedFd) -> i32 {
    // dup2 onto 0 and 1 clears close-on-exec, so the new image inherits exactly these two.
    if nix::unistd::dup2_stdout(ready_w).is_err() || nix::unistd::dup2_stdin(release_r).is_err() {
        return 126;
    }
    let args = [
        "kstorm-payload".to_string(),
        "--copy".into(),
        touch_kib.to_string(),
    ]
    .map(|a| CString::new(a).expect("no NUL"));
    let _ = nix::unistd::execv(exe, &args);
    127
}

/// The probe's fixed task: a few small file reads and a 64 KiB memory write.
fn probe_task() -> i32 {
    let mut sum = 0usize;
    for _ in 0..8 {
        sum += sys::read_file("/proc/self/stat")
            .map(|s| s.len())
            .unwrap_or(0);
    }
    let mut buf = vec![0u8; 64 * 1024];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i ^ sum) as u8;
    }
    std::hint::black_box(buf.iter().map(|b| *b as usize).sum::<usize>());
    0
}

/// Sums a field (KiB) of `/proc/<pid>/smaps_rollup` over `pids` (Linux).
fn linux_smaps_sum(pids: &[i32], field: &str) -> Option<u64> {
    let mut total = 0;
    for pid in pids {
        let text = sys::read_file(&format!("/proc/{pid}/smaps_rollup")).ok()?;
        total += kstorm_payload::kmem::parse_meminfo(&text)
            .get(field)
            .copied()?;
    }
    Some(total)
}

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();
    let exe = CString::new("/proc/self/exe").expect("no NUL");
    let mut counts = p.counts.clone();
    counts.sort_unstable();
    for mode in &p.modes {
        let m = match mode {
            Mode::Fork => "fork",
            Mode::Exec => "exec",
        };
        for &n in &counts {
            if dl.passed() {
                r.stop_error.get_or_insert_with(|| "deadline".into());
                r.fact(format!("{m}_n{n}_skipped"), "deadline");
                continue;
            }
            let prefix = format!("{m}_n{n}");
            let round = Round {
                p: &p,
                ctx,
                dl: &dl,
                exe: &exe,
                mode: *mode,
                n,
            };
            if let Some(s) = round.run(&prefix, &mut r)? {
                r.fact(format!("{prefix}_stop"), s.clone());
                r.stop_error.get_or_insert(s);
                // Larger N would stop at the same wall.
                break;
            }
        }
    }
    Ok(r)
}

/// One N of one mode, and what every step of it needs.
struct Round<'a> {
    p: &'a Params,
    ctx: &'a Ctx<'a>,
    dl: &'a sys::Deadline,
    exe: &'a CStr,
    mode: Mode,
    n: u32,
}

impl Round<'_> {
    /// Starts the copies, measures their memory, the probe's latency while they run and the
    /// time to stop each. Returns why the copies stopped starting, if they did.
    fn run(&self, prefix: &str, r: &mut ScenarioReport) -> Result<Option<String>, RunError> {
        let avail0 = sys::linux_meminfo_field("MemAvailable");
        let (ready_r, ready_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
        let mut release = sys::Gate::new().map_err(|e| format!("pipe: {e}"))?;
        let started = self.start_copies(&ready_r, &ready_w, &mut release);
        let (mut pids, stop) = (started.pids, started.stop);
        let key = |what: &str| format!("{prefix}_{what}");
        r.num(key("started"), started.start_ms.len() as f64, "count");
        r.latency(&key("start"), &started.start_ms);
        record_memory(r, &key, &pids, avail0);
        r.latency(
            &key("probe"),
            &probe_latencies(self.p.probe_rounds, self.dl),
        );
        r.latency(&key("stop"), &stop_copies(&mut pids));
        release.release();
        Ok(stop)
    }

    /// Starts up to `n` copies one by one, each timed from the fork to its ready word.
    fn start_copies(
        &self,
        ready_r: &OwnedFd,
        ready_w: &OwnedFd,
        release: &mut sys::Gate,
    ) -> Started {
        let (dl, mode, exe) = (self.dl, self.mode, self.exe);
        let mut pids = Vec::new();
        let mut start_ms = Vec::new();
        let mut stop = None;
        for _ in 0..self.n {
            if dl.passed() {
                stop = Some("deadline".to_string());
                break;
            }
            let t0 = sys::now();
            let (rw, touch, gate) = (ready_w.as_fd(), self.p.touch_kib, &mut *release);
            let forked = sys::fork_run(move || {
                // Our copy of the coordinator's write end would hold the gate shut.
                gate.release();
                match mode {
                    Mode::Fork => copy_body(touch, rw, gate.reader()),
                    Mode::Exec => exec_copy(exe, touch, rw, gate.reader()),
                }
            });
            match forked {
                Ok(pid) => pids.push(pid),
                Err(e) => {
                    stop = Some(format!("fork: {}", sys::err_name(&e)));
                    break;
                }
            }
            match sys::recv_time(ready_r, dl.at()) {
                Ok(t) => start_ms.push((t - t0) * 1000.0),
                Err(e) => {
                    stop = Some(format!("copy did not start: {e}"));
                    break;
                }
            }
            self.ctx.progress.add(1);
        }
        Started {
            pids,
            start_ms,
            stop,
        }
    }
}

/// The copies started so far, each one's start time, and why no more started.
struct Started {
    pids: Vec<i32>,
    start_ms: Vec<f64>,
    stop: Option<String>,
}

/// Memory per copy (Pss and Rss summed over the copies) and the drop of MemAvailable.
fn record_memory(
    r: &mut ScenarioReport,
    key: &dyn Fn(&str) -> String,
    pids: &[i32],
    avail0: Option<u64>,
) {
    if let Some(s) = linux_smaps_sum(pids, "Pss") {
        r.num(
            key("pss_per_copy"),
            s as f64 / pids.len().max(1) as f64,
            "KiB",
        );
    }
    if let Some(s) = linux_smaps_sum(pids, "Rss") {
        r.num(
            key("rss_per_copy"),
            s as f64 / pids.len().max(1) as f64,
            "KiB",
        );
    }
    if let (Some(a0), Some(a1)) = (avail0, sys::linux_meminfo_field("MemAvailable")) {
        r.num(key("mem_available_drop"), a0 as f64 - a1 as f64, "KiB");
    }
}

/// Latency of the probe's fixed task, in a fresh process each round, while the copies run.
fn probe_latencies(rounds: u32, dl: &sys::Deadline) -> Vec<f64> {
    let mut probe_ms = Vec::new();
    for _ in 0..rounds {
        if dl.passed() {
            break;
        }
        let t0 = sys::now();
        match sys::fork_run(probe_task) {
            Ok(pid) => {
                let _ = sys::wait(pid);
                probe_ms.push((sys::now() - t0) * 1000.0);
            }
            Err(_) => break,
        }
    }
    probe_ms
}

/// Kills and reaps each copy, timing each. The release pipe stays open, so each copy ends
/// only by its kill.
fn stop_copies(pids: &mut Vec<i32>) -> Vec<f64> {
    let mut stop_ms = Vec::new();
    for pid in pids.drain(..) {
        let t0 = sys::now();
        let _ = sys::sigkill(pid);
        let _ = sys::wait(pid);
        stop_ms.push((sys::now() - t0) * 1000.0);
    }
    stop_ms
}
