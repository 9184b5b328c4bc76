//! `run.json`: what a run was (verb, suite, command line) and where and with what it ran (host,
//! kstorm's commit, accelerator), taken when the run happened, so a report rendered later or on
//! another machine (a CI merge job) shows the run's facts, not the renderer's.

use serde::{Deserialize, Serialize};

/// `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// [`super::FORMAT_VERSION`] of the kstorm that wrote the folder.
    pub format_version: u32,
    pub run_id: String,
    /// Which verb made the folder (`run`, `sweep`, `verify-suites`, `bisect-run`, `merge`, ...).
    pub verb: String,
    pub suite: String,
    /// The command line after the program name (`run --resume` parses it again).
    pub request: Vec<String>,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    pub host: HostFacts,
    pub kstorm: KstormVersion,
    /// Set once the session chose it (`tcg`, `kvm`), with why.
    #[serde(default)]
    pub accel: String,
    #[serde(default)]
    pub accel_reason: String,
    /// Parameter profile (`quick`, `deep`).
    pub profile: String,
    pub cells_planned: usize,
    /// Every planned cell finished and nothing interrupted the run.
    pub complete: bool,
    /// A merged run: the facts of each shard it was merged from, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<RunInfo>,
}

/// The machine a run ran on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    /// `uname -r` of the host.
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: String,
    pub cpus: usize,
    pub mem_mib: u64,
    /// The 1-minute load average when the run started (TCG guests slow down with it).
    pub load_1m: f64,
    /// `qemu-system-x86_64 --version`, first line (empty when QEMU is not installed).
    pub qemu: String,
}

/// The kstorm that ran: its commit and `git describe --always --dirty` of its work tree.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KstormVersion {
    pub commit: String,
    pub describe: String,
}

impl HostFacts {
    /// This machine, now.
    pub fn here() -> HostFacts {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_default();
        let mem_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let load_1m = read("/proc/loadavg")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        let qemu = duct::cmd!("qemu-system-x86_64", "--version")
            .stderr_null()
            .read()
            .ok()
            .and_then(|t| t.lines().next().map(str::to_string))
            .unwrap_or_default();
        HostFacts {
            hostname: read("/proc/sys/kernel/hostname"),
            kernel: read("/proc/sys/kernel/osrelease"),
            os,
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            mem_mib,
            load_1m,
            qemu,
        }
    }

    /// One line for reports: `name, Debian GNU/Linux 12, Linux 6.1.0-57, 2 CPUs, 24 GiB, load 0.4`.
    pub fn line(&self) -> String {
        format!(
            "{}, {}, Linux {}, {} CPUs, {} MiB, load {:.1} at start",
            self.hostname, self.os, self.kernel, self.cpus, self.mem_mib, self.load_1m
        )
    }
}

impl KstormVersion {
    /// The commit of the work tree kstorm was built from (`unknown` outside git).
    pub fn here() -> KstormVersion {
        let root = crate::host::workspace_root();
        let git = |args: &[&str]| {
            duct::cmd("git", args)
                .dir(&root)
                .stderr_null()
                .read()
                .unwrap_or_else(|_| "unknown".into())
        };
        KstormVersion {
            commit: git(&["rev-parse", "HEAD"]),
            describe: git(&["describe", "--always", "--dirty"]),
        }
    }
}

impl RunInfo {
    /// A new run's facts, taken now on this host; the session fills in the accelerator.
    pub fn new(verb: &str, suite: &str, request: Vec<String>) -> RunInfo {
        RunInfo {
            format_version: super::FORMAT_VERSION,
            run_id: String::new(),
            verb: verb.to_string(),
            suite: suite.to_string(),
            request,
            started_at: chrono::Local::now().to_rfc3339(),
            finished_at: None,
            host: HostFacts::here(),
            kstorm: KstormVersion::here(),
            accel: String::new(),
            accel_reason: String::new(),
            profile: "quick".into(),
            cells_planned: 0,
            complete: false,
            shards: Vec::new(),
        }
    }

    /// Every host the run's cells ran on: its own, or each shard's.
    pub fn hosts(&self) -> Vec<&HostFacts> {
        if self.shards.is_empty() {
            vec![&self.host]
        } else {
            self.shards.iter().map(|s| &s.host).collect()
        }
    }
}
