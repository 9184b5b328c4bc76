//! `mmap-group` (seed 002, experiments 2a/2b): N processes map one file MAP_SHARED. While they
//! hold it, measure (2a) how long one more process takes to join (open + mmap + touch every
//! page) and to leave (munmap + exit, until its parent has reaped it), and (2b) how long a
//! modification of the file takes: a write through a mapping + msync, a write() + msync, and
//! (Linux) punching a page out of the file, which must unmap it from every holder.

use super::{deadline, Ctx, Report, RunError};
use crate::sys;
use kstorm_payload::params::MmapGroup as Params;
use std::os::fd::{AsRawFd, RawFd};

/// A shared mapping of the whole file, unmapped on drop.
struct FileMap {
    ptr: *mut u8,
    len: usize,
}

impl FileMap {
    fn new(fd: RawFd, len: usize) -> std::io::Result<FileMap> {
        // SAFETY: mapping a file we hold open.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileMap { ptr: p.cast(), len })
    }

    /// Reads one byte of every page, so every page is mapped in this process.
    fn touch(&self) -> u64 {
        let mut sum = 0u64;
        let mut off = 0;
        while off < self.len {
            // SAFETY: inside the mapping.
            sum += unsafe { self.ptr.add(off).read_volatile() } as u64;
            off += sys::page_size();
        }
        sum
    }

    fn msync(&self, off: usize, len: usize) -> std::io::Result<()> {
        // SAFETY: page-aligned range inside the mapping.
        sys::check(unsafe { libc::msync(self.ptr.add(off).cast(), len, libc::MS_SYNC) }).map(|_| ())
    }
}

impl Drop for FileMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn open_file(path: &str) -> std::io::Result<std::os::fd::OwnedFd> {
    sys::open(path, libc::O_RDWR)
}

pub fn run(p: Params, ctx: &Ctx) -> Result<Report, RunError> {
    let dl = deadline(ctx, p.deadline_s);
    let mut r = Report::default();
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

fn measure_all(
    p: &Params,
    ctx: &Ctx,
    dl: &sys::Deadline,
    path: &str,
    len: usize,
    pages: usize,
    r: &mut Report,
) -> Result<(), RunError> {
    let page = sys::page_size();
    let mut counts = p.counts.clone();
    counts.sort_unstable();
    for &n in &counts {
        if dl.passed() {
            r.stop_error.get_or_insert_with(|| "deadline".into());
            r.fact(format!("n{n}_skipped"), "deadline");
            continue;
        }
        let key = |what: &str| format!("n{n}_{what}");
        let (ready_r, ready_w) = sys::pipe(false).map_err(|e| format!("pipe: {e}"))?;
        let (release_r, release_w) = sys::pipe(false).map_err(|e| format!("pipe: {e}"))?;
        let mut holders = Vec::new();
        let mut stop = None;
        for _ in 0..n {
            let (rw, rr, relw) = (
                ready_w.as_raw_fd(),
                release_r.as_raw_fd(),
                release_w.as_raw_fd(),
            );
            let forked = sys::fork_run(move || {
                // SAFETY: our copy of the coordinator's release end.
                unsafe { libc::close(relw) };
                let Ok(fd) = open_file(path) else { return 2 };
                let Ok(map) = FileMap::new(fd.as_raw_fd(), len) else {
                    return 3;
                };
                std::hint::black_box(map.touch());
                let _ = sys::send_word(rw, 1);
                sys::block_until_eof(rr);
                0
            });
            match forked {
                Ok(pid) => holders.push(pid),
                Err(e) => {
                    stop = Some(format!("fork: {}", sys::err_name(&e)));
                    break;
                }
            }
            if let Err(e) = sys::recv_word(ready_r.as_raw_fd(), dl.at()) {
                stop = Some(format!("holder did not map the file: {e}"));
                break;
            }
            ctx.progress.add(1);
        }
        r.num(key("holders"), holders.len() as f64, "count");

        // 2a: join and leave.
        let (mut join_ms, mut leave_ms) = (Vec::new(), Vec::new());
        for _ in 0..p.samples {
            if dl.passed() || stop.is_some() {
                break;
            }
            let rw = ready_w.as_raw_fd();
            let Ok(pid) = sys::fork_run(move || {
                let t0 = sys::now();
                let Ok(fd) = open_file(path) else { return 2 };
                let Ok(map) = FileMap::new(fd.as_raw_fd(), len) else {
                    return 3;
                };
                std::hint::black_box(map.touch());
                let _ = sys::send_time(rw, sys::now() - t0);
                let _ = sys::send_time(rw, sys::now());
                drop(map);
                drop(fd);
                0
            }) else {
                break;
            };
            let joined = sys::recv_time(ready_r.as_raw_fd(), dl.at());
            let leaving = sys::recv_time(ready_r.as_raw_fd(), dl.at());
            let _ = sys::wait(pid);
            if let (Ok(j), Ok(t)) = (joined, leaving) {
                join_ms.push(j * 1000.0);
                leave_ms.push((sys::now() - t) * 1000.0);
            }
        }
        r.latency(&key("join"), &join_ms);
        r.latency(&key("leave"), &leave_ms);

        // 2b: modify while the holders map the file.
        let fd = open_file(path).map_err(|e| format!("open {path}: {e}"))?;
        let map = FileMap::new(fd.as_raw_fd(), len).map_err(|e| format!("mmap {path}: {e}"))?;
        let (mut via_map, mut via_write, mut via_punch) = (Vec::new(), Vec::new(), Vec::new());
        let data = [0x42u8; 64];
        for i in 0..p.samples as usize {
            if dl.passed() {
                break;
            }
            let off = (i % pages) * page;
            let t0 = sys::now();
            // SAFETY: 64 bytes at a page start inside the mapping.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), map.ptr.add(off), data.len()) };
            let _ = map.msync(off, page);
            via_map.push((sys::now() - t0) * 1000.0);

            let t0 = sys::now();
            // SAFETY: valid buffer.
            let w = unsafe {
                libc::pwrite(
                    fd.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    off as libc::off_t,
                )
            };
            let _ = map.msync(off, page);
            if w == data.len() as isize {
                via_write.push((sys::now() - t0) * 1000.0);
            }

            #[cfg(target_os = "linux")]
            if let Some(ms) = linux_punch_and_refill(fd.as_raw_fd(), off, page) {
                via_punch.push(ms);
            }
        }
        drop(map);
        drop(fd);
        r.latency(&key("modify_map"), &via_map);
        r.latency(&key("modify_write"), &via_write);
        r.latency(&key("modify_linux_punch"), &via_punch);

        drop(release_w);
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

/// Punches one page out of the file (which unmaps it from every process mapping it) and
/// writes it back; milliseconds for both, or `None` when the file system can't punch.
#[cfg(target_os = "linux")]
fn linux_punch_and_refill(fd: RawFd, off: usize, page: usize) -> Option<f64> {
    let t0 = sys::now();
    // SAFETY: plain syscall.
    let r = unsafe {
        libc::fallocate(
            fd,
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            page as libc::off_t,
        )
    };
    if r != 0 {
        return None;
    }
    let data = vec![0x33u8; page];
    // SAFETY: valid buffer.
    unsafe { libc::pwrite(fd, data.as_ptr().cast(), page, off as libc::off_t) };
    Some((sys::now() - t0) * 1000.0)
}
