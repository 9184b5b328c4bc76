//! `mmap-group` (seed 002, experiments 2a/2b): N processes map one file MAP_SHARED. While they
//! hold it, measure (2a) how long one more process takes to join (open + mmap + touch every
//! page) and to leave (munmap + exit, until its parent has reaped it), and (2b) how long a
//! modification of the file takes: a write through a mapping + msync, a write() + msync, and
//! (Linux) punching a page out of the file, which must unmap it from every holder.

use super::{deadline, Ctx, RunError, ScenarioReport};
use crate::sys::{self, Mapping, OFlag};
use kstorm_payload::params::MmapGroup as Params;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

fn open_file(path: &str) -> std::io::Result<OwnedFd> {
    sys::open(path, OFlag::O_RDWR)
}

/// Opens the file and maps all `len` bytes of it shared, as one member of the group.
fn join(path: &str, len: usize) -> Result<(OwnedFd, Mapping), i32> {
    let fd = open_file(path).map_err(|_| 2)?;
    let map = Mapping::file_shared(fd.as_fd(), len).map_err(|_| 3)?;
    Ok((fd, map))
}

pub fn run(p: Params, ctx: &Ctx) -> Result<ScenarioReport, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = ScenarioReport::default();
    let page = sys::page_size();
    let len = ((p.file_kib as usize * 1024).div_ceil(page)).max(1) * page;
    let pages = len / page;
    let path = format!("{}/kstorm-mmap-{}", p.dir, sys::getpid());
    std::fs::write(&path, vec![0x11u8; len]).map_err(|e| format!("creating {path}: {e}"))?;
    let result = measure_all(&p, ctx, &dl, &path, len, pages, &mut r);
    let _ = std::fs::remove_file(&path);
    result?;
    r.num("file_size", len as f64 / 1024.0, "KiB");
    Ok(r)
}

/// For each N: N holders map the file, then 2a (join and leave) and 2b (modify) are
/// measured while they hold it.
fn measure_all(
    p: &Params,
    ctx: &Ctx,
    dl: &sys::Deadline,
    path: &str,
    len: usize,
    pages: usize,
    r: &mut ScenarioReport,
) -> Result<(), RunError> {
    let mut counts = p.counts.clone();
    counts.sort_unstable();
    for &n in &counts {
        if dl.passed() {
            r.stop_error.get_or_insert_with(|| "deadline".into());
            r.fact(format!("n{n}_skipped"), "deadline");
            continue;
        }
        let key = |what: &str| format!("n{n}_{what}");
        let (ready_r, ready_w) = sys::pipe().map_err(|e| format!("pipe: {e}"))?;
        let group = Group {
            path,
            len,
            dl,
            ready_r,
            ready_w,
        };
        let mut release = sys::Gate::new().map_err(|e| format!("pipe: {e}"))?;
        let (holders, stop) = group.start_holders(n, ctx, &mut release);
        r.num(key("holders"), holders.len() as f64, "count");

        // 2a: join and leave.
        let (join_ms, leave_ms) = if stop.is_some() {
            (Vec::new(), Vec::new())
        } else {
            group.join_and_leave(p.samples)
        };
        r.latency(&key("join"), &join_ms);
        r.latency(&key("leave"), &leave_ms);

        // 2b: modify while the holders map the file.
        let modified = modify(path, len, pages, p.samples as usize, dl)?;
        r.latency(&key("modify_map"), &modified.via_map);
        r.latency(&key("modify_write"), &modified.via_write);
        r.latency(&key("modify_linux_punch"), &modified.via_punch);

        release.release();
        for pid in holders {
            let _ = sys::wait(pid);
        }
        if let Some(s) = stop {
            r.fact(key("stop"), s.clone());
            r.stop_error.get_or_insert(s);
            break;
        }
    }
    Ok(())
}

/// The shared file and the pipe on which processes that map it report, for one N.
struct Group<'a> {
    path: &'a str,
    len: usize,
    dl: &'a sys::Deadline,
    ready_r: OwnedFd,
    ready_w: OwnedFd,
}

impl Group<'_> {
    /// Starts up to `n` holders, each mapping the whole file and touching every page, then
    /// waiting at `release`. Returns their pids and why no more started, if they stopped.
    fn start_holders(
        &self,
        n: u32,
        ctx: &Ctx,
        release: &mut sys::Gate,
    ) -> (Vec<i32>, Option<String>) {
        let (path, len) = (self.path, self.len);
        let mut holders = Vec::new();
        let mut stop = None;
        for _ in 0..n {
            let (rw, gate) = (self.ready_w.as_fd(), &mut *release);
            let forked = sys::fork_run(move || {
                let (_fd, map) = match join(path, len) {
                    Ok(joined) => joined,
                    Err(code) => return code,
                };
                std::hint::black_box(map.touch_read());
                let _ = sys::send_word(rw, 1);
                gate.wait();
                0
            });
            match forked {
                Ok(pid) => holders.push(pid),
                Err(e) => {
                    stop = Some(format!("fork: {}", sys::err_name(&e)));
                    break;
                }
            }
            if let Err(e) = sys::recv_word(&self.ready_r, self.dl.at()) {
                stop = Some(format!("holder did not map the file: {e}"));
                break;
            }
            ctx.progress.add(1);
        }
        (holders, stop)
    }

    /// 2a: up to `samples` times, one more process joins (its own clock: open + mmap +
    /// touch) and leaves (until we reaped it). Milliseconds for each.
    fn join_and_leave(&self, samples: u32) -> (Vec<f64>, Vec<f64>) {
        let (path, len, dl) = (self.path, self.len, self.dl);
        let (mut join_ms, mut leave_ms) = (Vec::new(), Vec::new());
        for _ in 0..samples {
            if dl.passed() {
                break;
            }
            let rw = self.ready_w.as_fd();
            let Ok(pid) = sys::fork_run(move || {
                let t0 = sys::now();
                let (fd, map) = match join(path, len) {
                    Ok(joined) => joined,
                    Err(code) => return code,
                };
                std::hint::black_box(map.touch_read());
                let _ = sys::send_time(rw, sys::now() - t0);
                let _ = sys::send_time(rw, sys::now());
                drop(map);
                drop(fd);
                0
            }) else {
                break;
            };
            let joined = sys::recv_time(&self.ready_r, dl.at());
            let leaving = sys::recv_time(&self.ready_r, dl.at());
            let _ = sys::wait(pid);
            if let (Ok(j), Ok(t)) = (joined, leaving) {
                join_ms.push(j * 1000.0);
                leave_ms.push((sys::now() - t) * 1000.0);
            }
        }
        (join_ms, leave_ms)
    }
}

/// 2b's latencies in milliseconds, one list per way of modifying the file.
struct Modified {
    via_map: Vec<f64>,
    via_write: Vec<f64>,
    via_punch: Vec<f64>,
}

/// 2b: up to `samples` times, modify one page through a mapping + msync, by pwrite + msync
/// and (Linux) by punching it out and writing it back, a different page each time.
fn modify(
    path: &str,
    len: usize,
    pages: usize,
    samples: usize,
    dl: &sys::Deadline,
) -> Result<Modified, RunError> {
    let page = sys::page_size();
    let fd = open_file(path).map_err(|e| format!("open {path}: {e}"))?;
    let mut map = Mapping::file_shared(fd.as_fd(), len).map_err(|e| format!("mmap {path}: {e}"))?;
    let (mut via_map, mut via_write, mut via_punch) = (Vec::new(), Vec::new(), Vec::new());
    let data = [0x42u8; 64];
    for i in 0..samples {
        if dl.passed() {
            break;
        }
        let off = (i % pages) * page;
        let t0 = sys::now();
        map.bytes_mut()[off..off + data.len()].copy_from_slice(&data);
        let _ = map.sync(off, page);
        via_map.push((sys::now() - t0) * 1000.0);

        let t0 = sys::now();
        let w = nix::sys::uio::pwrite(&fd, &data, off as i64);
        let _ = map.sync(off, page);
        if w == Ok(data.len()) {
            via_write.push((sys::now() - t0) * 1000.0);
        }

        #[cfg(target_os = "linux")]
        if let Some(ms) = linux_punch_and_refill(fd.as_fd(), off, page) {
            via_punch.push(ms);
        }
    }
    drop(map);
    drop(fd);
    Ok(Modified {
        via_map,
        via_write,
        via_punch,
    })
}

/// Punches one page out of the file (which unmaps it from every process mapping it) and
/// writes it back; milliseconds for both, or `None` when the file system can't punch.
#[cfg(target_os = "linux")]
fn linux_punch_and_refill(fd: BorrowedFd, off: usize, page: usize) -> Option<f64> {
    use nix::fcntl::{fallocate, FallocateFlags};
    let t0 = sys::now();
    let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    fallocate(fd, punch, off as i64, page as i64).ok()?;
    let data = vec![0x33u8; page];
    let _ = nix::sys::uio::pwrite(fd, &data, off as i64);
    Some((sys::now() - t0) * 1000.0)
}
