//! Thin wrappers over the POSIX calls the payload makes (through `libc`), so scenario code
//! reads as what it does. Everything here is portable POSIX unless its name says Linux.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// The calling thread's errno.
pub fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// `EAGAIN`, `ENOMEM`, ... (or `errno N` for one nix does not know).
pub fn errno_name(e: i32) -> String {
    let name = format!("{:?}", nix::errno::Errno::from_raw(e));
    if name == "UnknownErrno" {
        format!("errno {e}")
    } else {
        name
    }
}

/// The errno name of an `io::Error`, or its text when it has no errno.
pub fn err_name(e: &io::Error) -> String {
    e.raw_os_error()
        .map(errno_name)
        .unwrap_or_else(|| e.to_string())
}

/// `SIGKILL`, `SIGABRT`, ...
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| format!("signal {sig}"))
}

/// `Err(io::Error)` with errno when `r` is -1.
pub fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Seconds on the monotonic clock. The clock is system-wide, so times taken in different
/// processes can be subtracted.
pub fn now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// A point in time after which a loop must stop.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: f64,
}

impl Deadline {
    pub fn after_secs(secs: f64) -> Deadline {
        Deadline { at: now() + secs }
    }
    pub fn passed(&self) -> bool {
        now() >= self.at
    }
    pub fn remaining(&self) -> f64 {
        (self.at - now()).max(0.0)
    }
    pub fn at(&self) -> f64 {
        self.at
    }
}

pub fn sleep_secs(secs: f64) {
    if secs > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(secs));
    }
}

pub fn getpid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::getpid() }
}

/// Forks; the child runs `f` and exits with its return value without unwinding or running
/// the parent's exit handlers. Returns the child's pid in the parent.
///
/// The payload is single-threaded, so the child may allocate freely.
pub fn fork_run(f: impl FnOnce() -> i32) -> io::Result<i32> {
    // SAFETY: single-threaded process; the child never returns from this function.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => {
            let code = f();
            exit_now(code)
        }
        pid => Ok(pid),
    }
}

/// `_exit`: no destructors, no atexit handlers, no flushing of buffers shared with the parent.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: always sound.
    unsafe { libc::_exit(code) }
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    fn from_status(status: i32) -> Exit {
        if libc::WIFSIGNALED(status) {
            Exit::Signal(libc::WTERMSIG(status))
        } else {
            Exit::Code(libc::WEXITSTATUS(status))
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Exit::Code(c) => format!("exit code {c}"),
            Exit::Signal(s) => format!("killed by {}", signal_name(*s)),
        }
    }
}

/// Waits for `pid` (blocking).
pub fn wait(pid: i32) -> io::Result<Exit> {
    let mut status = 0;
    loop {
        // SAFETY: valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == -1 && errno() == libc::EINTR {
            continue;
        }
        check(r)?;
        return Ok(Exit::from_status(status));
    }
}

/// Reaps one ended child of any pid without blocking: `Some((pid, exit))`, or `None` when no
/// child has ended (or there are none).
pub fn reap_any() -> Option<(i32, Exit)> {
    let mut status = 0;
    // SAFETY: valid out-pointer.
    let r = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (r > 0).then(|| (r, Exit::from_status(status)))
}

/// Non-blocking check of one child: `Some(exit)` once it has ended.
pub fn try_wait(pid: i32) -> io::Result<Option<Exit>> {
    let mut status = 0;
    // SAFETY: valid out-pointer.
    let r = check(unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) })?;
    Ok((r == pid).then(|| Exit::from_status(status)))
}

pub fn kill(pid: i32, sig: i32) -> io::Result<()> {
    // SAFETY: plain syscall.
    check(unsafe { libc::kill(pid, sig) }).map(|_| ())
}

/// A pipe; both ends close-on-exec unless `inherit` (for fds handed to an exec'd copy).
pub fn pipe(inherit: bool) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    let flags = if inherit { 0 } else { libc::O_CLOEXEC };
    // SAFETY: valid out-array of two ints.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), flags) })?;
    // SAFETY: fresh fds we own.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes all of `buf` (retrying short writes and EINTR).
pub fn write_all(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is valid for its length.
        let r = unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) };
        if r == -1 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(io::Error::last_os_error());
        }
        buf = &buf[r as usize..];
    }
    Ok(())
}

/// One `read`, retrying EINTR; `Ok(0)` at end of file.
pub fn read_some(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: buf is valid for its length.
        let r = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if r == -1 && errno() == libc::EINTR {
            continue;
        }
        return if r == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r as usize)
        };
    }
}

/// Waits until `fd` is readable or `timeout` seconds pass; true when readable (or hung up).
pub fn wait_readable(fd: RawFd, timeout: f64) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = (timeout * 1000.0).ceil().clamp(0.0, i32::MAX as f64) as i32;
    // SAFETY: one valid pollfd.
    let r = unsafe { libc::poll(&mut p, 1, ms) };
    if r == -1 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::EINTR) {
            Ok(false)
        } else {
            Err(e)
        };
    }
    Ok(r > 0)
}

/// Reads exactly `buf.len()` bytes unless the deadline passes first (`TimedOut`) or the writer
/// closes (`UnexpectedEof`).
pub fn read_exact_until(fd: RawFd, buf: &mut [u8], deadline: f64) -> io::Result<()> {
    let mut got = 0;
    while got < buf.len() {
        let left = deadline - now();
        if left <= 0.0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "timed out"));
        }
        if !wait_readable(fd, left)? {
            continue;
        }
        match read_some(fd, &mut buf[got..])? {
            0 => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "pipe closed")),
            n => got += n,
        }
    }
    Ok(())
}

/// Sends a small status word over a pipe (child -> coordinator).
pub fn send_word(fd: RawFd, v: i64) -> io::Result<()> {
    write_all(fd, &v.to_le_bytes())
}

/// Sends several words in one write: up to PIPE_BUF bytes a pipe write is atomic, so
/// reports of children sharing one pipe never interleave.
pub fn send_words(fd: RawFd, vs: &[i64]) -> io::Result<()> {
    let bytes: Vec<u8> = vs.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_all(fd, &bytes)
}

/// Receives a status word, waiting until `deadline` at the latest.
pub fn recv_word(fd: RawFd, deadline: f64) -> io::Result<i64> {
    let mut b = [0u8; 8];
    read_exact_until(fd, &mut b, deadline)?;
    Ok(i64::from_le_bytes(b))
}

/// Sends a timestamp (f64 seconds on the monotonic clock).
pub fn send_time(fd: RawFd, t: f64) -> io::Result<()> {
    write_all(fd, &t.to_le_bytes())
}

pub fn recv_time(fd: RawFd, deadline: f64) -> io::Result<f64> {
    let mut b = [0u8; 8];
    read_exact_until(fd, &mut b, deadline)?;
    Ok(f64::from_le_bytes(b))
}

/// Blocks until the other end of `fd` is closed (the "release" signal to held children).
pub fn block_until_eof(fd: RawFd) {
    let mut b = [0u8; 64];
    while let Ok(n) = read_some(fd, &mut b) {
        if n == 0 {
            break;
        }
    }
}

pub fn open(path: &str, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string.
    let fd = check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o600) })?;
    // SAFETY: fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn read_file(path: &str) -> io::Result<String> {
    std::fs::read_to_string(path)
}

/// Writes `value` to a (proc/sys/cgroup) file in one write, as such files want.
pub fn write_file(path: &str, value: &str) -> io::Result<()> {
    let fd = open(path, libc::O_WRONLY)?;
    write_all(fd.as_raw_fd(), value.as_bytes())
}

/// `/proc/meminfo` as name -> KiB (Linux).
pub fn linux_meminfo() -> std::collections::BTreeMap<String, u64> {
    read_file("/proc/meminfo")
        .map(|t| kstorm_payload::kmem::parse_meminfo(&t))
        .unwrap_or_default()
}

pub fn linux_meminfo_field(name: &str) -> Option<u64> {
    linux_meminfo().get(name).copied()
}

/// Sets the OOM killer's preference for this process (Linux).
pub fn linux_set_oom_score_adj(v: i32) -> io::Result<()> {
    write_file("/proc/self/oom_score_adj", &v.to_string())
}

/// Online CPUs.
pub fn ncpu() -> u32 {
    // SAFETY: plain call.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    n.max(1) as u32
}

/// The smallest step the monotonic clock is seen to take, in seconds (a guest whose
/// clocksource fell back to jiffies steps by 4 ms). Measured, since clock_getres reports
/// the timer resolution, not the clock's.
pub fn clock_step() -> f64 {
    let start = now();
    let mut prev = start;
    let mut step = f64::INFINITY;
    for _ in 0..100_000 {
        let t = now();
        if t > prev {
            step = step.min(t - prev);
        }
        prev = t;
        if t - start > 0.05 {
            break;
        }
    }
    step
}

/// The kernel's current clocksource (Linux sysfs), e.g. `tsc` or `refined-jiffies`.
pub fn linux_clocksource() -> Option<String> {
    read_file("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .ok()
        .map(|s| s.trim().to_string())
}

/// `uname -r` and `uname -v`.
pub fn uname() -> (String, String, String) {
    // SAFETY: zeroed utsname is a valid out-buffer.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::uname(&mut u) };
    let s = |f: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates each field.
        unsafe { std::ffi::CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    (s(&u.release), s(&u.version), s(&u.machine))
}

/// Anonymous private memory of `bytes`, unmapped on drop.
pub struct AnonMap {
    ptr: *mut u8,
    len: usize,
}

impl AnonMap {
    /// Maps `bytes` without touching them; the kernel's overcommit policy decides here.
    pub fn new(bytes: usize) -> io::Result<AnonMap> {
        Self::with_flags(bytes, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS)
    }

    /// Shared anonymous memory, visible to children forked after it was made.
    pub fn shared(bytes: usize) -> io::Result<AnonMap> {
        Self::with_flags(bytes, libc::MAP_SHARED | libc::MAP_ANONYMOUS)
    }

    fn with_flags(bytes: usize, flags: i32) -> io::Result<AnonMap> {
        // SAFETY: anonymous mapping, no fd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(AnonMap {
            ptr: p.cast(),
            len: bytes,
        })
    }

    /// Writes one byte in every page so each is really backed by memory.
    pub fn touch(&mut self, seed: u8) {
        let page = page_size();
        let mut off = 0;
        while off < self.len {
            // SAFETY: off < len, inside the mapping.
            unsafe { self.ptr.add(off).write_volatile(seed) };
            off += page;
        }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
}

impl Drop for AnonMap {
    fn drop(&mut self) {
        // SAFETY: our own mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

pub fn page_size() -> usize {
    // SAFETY: plain call.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as usize
}

pub const MIB: usize = 1024 * 1024;

/// Number of processes (numeric entries in /proc), Linux.
pub fn linux_process_count() -> Option<u64> {
    let dir = std::fs::read_dir("/proc").ok()?;
    Some(
        dir.filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .count() as u64,
    )
}

/// Lowers or raises a resource limit (soft and hard).
pub fn set_rlimit(resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
    let r = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: valid pointer.
    check(unsafe { libc::setrlimit(resource, &r) }).map(|_| ())
}

/// Kills every process of the process group `pgid` and reaps what it can without blocking.
pub fn kill_group(pgid: i32) {
    if pgid > 1 {
        let _ = kill(-pgid, libc::SIGKILL);
    }
}

pub fn mkdir_p(path: &str) -> io::Result<()> {
    std::fs::create_dir_all(path)
}

/// Names this process (shown by the kernel's OOM report as "Killed process N (name)"), Linux.
pub fn linux_set_name(name: &str) {
    if let Ok(c) = CString::new(name) {
        // SAFETY: PR_SET_NAME copies at most 16 bytes from a valid C string.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
    }
}

/// Mounts a file system (Linux mount(2)).
pub fn linux_mount(source: &str, target: &str, fstype: &str, data: Option<&str>) -> io::Result<()> {
    let c = |s: &str| CString::new(s).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput));
    let (src, tgt, fs) = (c(source)?, c(target)?, c(fstype)?);
    let data = data.map(c).transpose()?;
    // SAFETY: valid C strings; data NULL or a C string.
    check(unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fs.as_ptr(),
            0,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    })
    .map(|_| ())
}

pub fn linux_umount(target: &str) -> io::Result<()> {
    let t = CString::new(target).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: valid C string.
    check(unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) }).map(|_| ())
}

/// Reads the kernel log lines that appeared since `open_kmsg_at_end` (Linux /dev/kmsg).
pub struct LinuxKmsg {
    fd: OwnedFd,
}

impl LinuxKmsg {
    /// Opens /dev/kmsg positioned after the last record, so only new records are read.
    pub fn open_at_end() -> Option<LinuxKmsg> {
        let fd = open("/dev/kmsg", libc::O_RDONLY | libc::O_NONBLOCK).ok()?;
        // SAFETY: plain syscall.
        unsafe { libc::lseek(fd.as_raw_fd(), 0, libc::SEEK_END) };
        Some(LinuxKmsg { fd })
    }

    /// The message text of every new record.
    pub fn read_new(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            // One read returns one record; EAGAIN when none is left, EPIPE when overwritten.
            // SAFETY: valid buffer.
            let r = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r > 0 {
                let rec = String::from_utf8_lossy(&buf[..r as usize]);
                if let Some((_, msg)) = rec.split_once(';') {
                    out.push(msg.lines().next().unwrap_or("").to_string());
                }
            } else if r == -1 && errno() == libc::EPIPE {
                continue;
            } else {
                break;
            }
        }
        out
    }
}

/// The pid in a kernel OOM report line ("Out of memory: Killed process 123 (hog)" or
/// "Memory cgroup out of memory: Killed process 123 (hog)").
pub fn oom_killed_pid(line: &str) -> Option<i32> {
    let rest = line.split("Killed process ").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}
