//! PID 1 of a Linux guest: mounts, self-protection, the plan, and power-off on every path.

use crate::channel::Channel;
use crate::runner::Runner;
use crate::sys::{self, Errno, OFlag, Signal};
use kstorm_payload::plan::PLAN_PATH;
use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::stat::Mode;
use nix::unistd::{sync, Pid};
use std::os::fd::{AsRawFd, IntoRawFd};

/// Never returns: the guest powers off at the end, even when something went wrong. (If PID 1
/// exited, the kernel would panic and the harness would see a crash that is ours.)
pub fn pid1_main() -> ! {
    // A panic in this process must still power off (panic=abort: no unwinding to catch).
    std::panic::set_hook(Box::new(|info| {
        eprintln!("kstorm-payload: PID 1 panicked: {info}");
        power_off();
    }));
    let mut notes = mount_all();
    ensure_stdio();
    if let Err(e) = sys::linux_set_oom_score_adj(-1000) {
        notes.push(format!("oom_score_adj -1000: {e}"));
    }
    match crate::load_plan(PLAN_PATH) {
        Ok(plan) => {
            let (mut chan, why) = Channel::device_or_console(&plan.cell, &plan.results_device);
            if let Some(w) = why {
                notes.push(w);
            }
            match Runner::new(&mut chan, &plan, true) {
                Ok(mut runner) => {
                    for n in &notes {
                        eprintln!("kstorm-payload: {n}");
                    }
                    runner.run_plan_with_notes(&plan, &notes);
                }
                Err(e) => eprintln!("kstorm-payload: shared memory: {e}"),
            }
        }
        Err(e) => {
            // No cell id: the harness sees no hello and says so; the console carries why.
            eprintln!("kstorm-payload: {e}");
            for n in &notes {
                eprintln!("kstorm-payload: {n}");
            }
        }
    }
    power_off()
}

/// Mounts proc, sysfs, devtmpfs, /tmp and cgroup2; returns what failed (the rest still runs).
fn mount_all() -> Vec<String> {
    let mut notes = Vec::new();
    for (src, target, fstype, data) in [
        ("proc", "/proc", "proc", None),
        ("sysfs", "/sys", "sysfs", None),
        ("devtmpfs", "/dev", "devtmpfs", None),
        ("tmpfs", "/tmp", "tmpfs", Some("mode=1777")),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2", None),
    ] {
        let _ = sys::mkdir_p(target);
        if let Err(e) = sys::linux_mount(src, target, fstype, data) {
            if e.raw_os_error() != Some(Errno::EBUSY as i32) {
                notes.push(format!("mount {fstype} on {target}: {e}"));
            }
        }
    }
    notes
}

/// Makes sure fds 0-2 are open (on the console) so nothing we open later lands on them: an
/// open takes the lowest free number, so the console lands on each closed one in turn.
fn ensure_stdio() {
    for _ in 0..3 {
        let flags = OFlag::O_RDWR | OFlag::O_NOCTTY;
        let Ok(fd) = nix::fcntl::open("/dev/console", flags, Mode::empty()) else {
            return;
        };
        if fd.as_raw_fd() > 2 {
            return;
        }
        // Standard input, output or error from now on: never closed.
        let _ = fd.into_raw_fd();
    }
}

/// Kills what is left, syncs and powers off; reboots (QEMU's -no-reboot then exits) if the
/// machine has no power-off.
fn power_off() -> ! {
    // We are PID 1: nothing else needs to run after this.
    let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
    sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    loop {
        sys::sleep_secs(3600.0);
    }
}
