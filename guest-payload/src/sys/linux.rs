//! What only Linux has: /proc and /sys files, mounts, process names, the kernel log.

use super::{open, read_file, write_file};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{lseek, Whence};
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;

/// `/proc/meminfo` as name -> KiB.
pub fn linux_meminfo() -> std::collections::BTreeMap<String, u64> {
    read_file("/proc/meminfo")
        .map(|t| kstorm_payload::kmem::parse_meminfo(&t))
        .unwrap_or_default()
}

pub fn linux_meminfo_field(name: &str) -> Option<u64> {
    linux_meminfo().get(name).copied()
}

/// Sets the OOM killer's preference for this process.
pub fn linux_set_oom_score_adj(v: i32) -> io::Result<()> {
    write_file("/proc/self/oom_score_adj", &v.to_string())
}

/// The kernel's current clocksource (sysfs), e.g. `tsc` or `refined-jiffies`.
pub fn linux_clocksource() -> Option<String> {
    read_file("/sys/devices/system/clocksource/clocksource0/current_clocksource")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Number of processes (numeric entries in /proc).
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

/// Names this process (shown by the kernel's OOM report as "Killed process N (name)").
pub fn linux_set_name(name: &str) {
    if let Ok(c) = CString::new(name) {
        let _ = nix::sys::prctl::set_name(&c);
    }
}

/// Orphans of our descendants come back to us to be reaped.
pub fn linux_set_child_subreaper() {
    let _ = nix::sys::prctl::set_child_subreaper(true);
}

/// Mounts a file system (mount(2), no flags).
pub fn linux_mount(source: &str, target: &str, fstype: &str, data: Option<&str>) -> io::Result<()> {
    Ok(mount(
        Some(source),
        target,
        Some(fstype),
        MsFlags::empty(),
        data,
    )?)
}

/// Detaches the file system mounted at `target` (umount2 MNT_DETACH).
pub fn linux_umount(target: &str) -> io::Result<()> {
    Ok(umount2(target, MntFlags::MNT_DETACH)?)
}

/// Reads the kernel log lines that appeared since `open_at_end` (/dev/kmsg).
pub struct LinuxKmsg {
    fd: OwnedFd,
}

impl LinuxKmsg {
    /// Opens /dev/kmsg positioned after the last record, so only new records are read.
    pub fn open_at_end() -> Option<LinuxKmsg> {
        let fd = open("/dev/kmsg", OFlag::O_RDONLY | OFlag::O_NONBLOCK).ok()?;
        let _ = lseek(&fd, 0, Whence::SeekEnd);
        Some(LinuxKmsg { fd })
    }

    /// The message text of every new record.
    pub fn read_new(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 8192];
        loop {
            // One read returns one record; EAGAIN when none is left, EPIPE when overwritten.
            match nix::unistd::read(&self.fd, &mut buf) {
                Ok(n) if n > 0 => {
                    let rec = String::from_utf8_lossy(&buf[..n]);
                    if let Some((_, msg)) = rec.split_once(';') {
                        out.push(msg.lines().next().unwrap_or("").to_string());
                    }
                }
                Err(Errno::EPIPE) => continue,
                _ => break,
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

/// Brings the loopback interface up (a PID-1 guest has no network set-up: `lo` stays down and
/// connecting to 127.0.0.1 fails with ENETUNREACH).
pub fn linux_loopback_up() -> io::Result<()> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // SAFETY: socket(2) with constant arguments; the descriptor is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags into `req`, a valid ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFFLAGS the union holds the flags.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    // SAFETY: SIOCSIFFLAGS reads `req`, a valid ifreq that outlives the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
