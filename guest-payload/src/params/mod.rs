//! Every scenario's parameters, as typed structs the payload runs with and the harness checks
//! a suite against before anything boots (one definition for both sides).
//!
//! Each struct denies unknown fields and takes its defaults (small enough to finish in seconds
//! under TCG) from its `Default`. [`resolve`] is the one entry point the harness uses: a
//! scenario name and the JSON parameters of a case, in; the parameters with defaults filled
//! in, or a [`ParamError`] naming the bad field, out. [`mach`] is the same for the GNU Mach
//! bootstrap task.

pub mod mach;
pub mod portable;
mod stress_ng;

pub use stress_ng::StressNg;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;

/// JSON parameters as a suite gives them.
pub type RawParams = serde_json::Map<String, serde_json::Value>;

/// A parameter that does not fit its scenario.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamError {
    /// The offending field (`None` when the error is about the scenario as a whole).
    pub field: Option<String>,
    pub message: String,
}

impl ParamError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> ParamError {
        ParamError {
            field: Some(field.into()),
            message: message.into(),
        }
    }
}

impl fmt::Display for ParamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ParamError {}

/// Checks across fields that serde cannot express; the default accepts everything.
pub trait Check {
    fn check(&self) -> Result<(), ParamError> {
        Ok(())
    }
}

/// Parses `params` into `P`; the error names the field that did not fit.
pub fn parse<P: DeserializeOwned + Check>(params: &RawParams) -> Result<P, ParamError> {
    let value = serde_json::Value::Object(params.clone());
    let parsed: P = serde_path_to_error::deserialize(value).map_err(|e| {
        let message = e.inner().to_string();
        // An unknown field fails while its key is read, so the path stops above it.
        let field = unknown_field(&message).or_else(|| {
            let path = e.path().to_string();
            (path != ".").then_some(path)
        });
        ParamError { field, message }
    })?;
    parsed.check()?;
    Ok(parsed)
}

/// The name in serde's "unknown field `x`, expected ..." message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest[..rest.find('`')?].to_string())
}

/// The parameters of the payload's own `scenario` with its defaults filled in (the Linux
/// route of [`crate::registry`]).
pub fn resolve(scenario: &str, params: &RawParams) -> Result<serde_json::Value, ParamError> {
    crate::registry::resolve(crate::registry::Route::LinuxPayload, scenario, params)
}

pub(crate) fn to_json<P: Serialize>(p: P) -> Result<serde_json::Value, ParamError> {
    serde_json::to_value(p).map_err(|e| ParamError {
        field: None,
        message: e.to_string(),
    })
}

/// The error for a scenario nobody knows, listing those that exist.
pub fn unknown_scenario(name: &str, known: &[&str]) -> ParamError {
    ParamError::field(
        "scenario",
        format!("unknown scenario {name:?} (known: {})", known.join(", ")),
    )
}

/// The kind of file descriptor a holder opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FdKind {
    #[default]
    Devnull,
    Pipe,
    Socket,
}

/// Leak-check defaults shared by the scenarios that wrap their load in one.
const LEAK_SETTLE_MS: u64 = 1000;
const LEAK_MIN_KIB: u64 = 256;

/// `smoke`: facts about the kernel and the machine.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Smoke {}
impl Check for Smoke {}

/// `fork-hold` (seed 000): N children each holding K descriptors.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForkHold {
    pub children: u32,
    /// Descriptors each child opens (`fds_per_child` is accepted as another name).
    #[serde(alias = "fds_per_child")]
    pub fds: u32,
    pub fd_kind: FdKind,
    /// How long the children hold everything once all are up.
    pub hold_ms: u64,
    pub deadline_s: f64,
    /// Leak check: wait for deferred frees before the "after" sample.
    pub leak_settle_ms: u64,
    /// Leak check: growth below this is noise.
    pub leak_min_kib: u64,
}
impl Check for ForkHold {}

impl Default for ForkHold {
    fn default() -> Self {
        ForkHold {
            children: 64,
            fds: 16,
            fd_kind: FdKind::Devnull,
            hold_ms: 500,
            deadline_s: 30.0,
            leak_settle_ms: LEAK_SETTLE_MS,
            leak_min_kib: LEAK_MIN_KIB,
        }
    }
}

/// `spawn-kill` (seed 000): batches of holders started and killed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpawnKill {
    pub cycles: u32,
    pub batch: u32,
    pub fds: u32,
    pub fd_kind: FdKind,
    /// Pause between two kills of a batch; 0 kills the batch as fast as possible.
    pub kill_interval_ms: u64,
    pub deadline_s: f64,
    /// Leak check: wait for deferred frees before the "after" sample.
    pub leak_settle_ms: u64,
    /// Leak check: growth below this is noise.
    pub leak_min_kib: u64,
}
impl Check for SpawnKill {}

impl Default for SpawnKill {
    fn default() -> Self {
        SpawnKill {
            cycles: 10,
            batch: 8,
            fds: 64,
            fd_kind: FdKind::Devnull,
            kill_interval_ms: 0,
            deadline_s: 30.0,
            leak_settle_ms: LEAK_SETTLE_MS,
            leak_min_kib: LEAK_MIN_KIB,
        }
    }
}

/// `fd-churn` (seeds 000, 001): processes opening and closing descriptors in batches.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FdChurn {
    pub procs: u32,
    /// How long the churn runs (it also stops at `max_ops` per process).
    pub duration_s: f64,
    pub max_ops: u64,
    /// Descriptors opened before closing them all again.
    pub batch: u32,
    pub fd_kind: FdKind,
    pub deadline_s: f64,
    /// Leak check: wait for deferred frees before the "after" sample.
    pub leak_settle_ms: u64,
    /// Leak check: growth below this is noise.
    pub leak_min_kib: u64,
}
impl Check for FdChurn {}

impl Default for FdChurn {
    fn default() -> Self {
        FdChurn {
            procs: 2,
            duration_s: 3.0,
            max_ops: 10_000_000,
            batch: 64,
            fd_kind: FdKind::Devnull,
            deadline_s: 30.0,
            leak_settle_ms: LEAK_SETTLE_MS,
            leak_min_kib: LEAK_MIN_KIB,
        }
    }
}

/// How `copies` starts a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CopyMode {
    /// 1a: one process forks the copies.
    Fork,
    /// 1b: a master execs the program for each copy.
    Exec,
}

/// `copies` (seed 002, experiments 1a/1b): many copies of one program.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Copies {
    pub counts: Vec<u32>,
    pub modes: Vec<CopyMode>,
    /// Memory each copy allocates and writes after it starts.
    pub touch_kib: u64,
    /// Probe runs per N.
    pub probe_rounds: u32,
    pub deadline_s: f64,
}
impl Check for Copies {}

impl Default for Copies {
    fn default() -> Self {
        Copies {
            counts: vec![1, 10, 50],
            modes: vec![CopyMode::Fork, CopyMode::Exec],
            touch_kib: 256,
            probe_rounds: 20,
            deadline_s: 60.0,
        }
    }
}

/// `mmap-group` (seed 002): processes joining, leaving and modifying one shared mapping.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MmapGroup {
    pub counts: Vec<u32>,
    pub file_kib: u64,
    /// Measurements of each kind per N.
    pub samples: u32,
    /// Directory for the shared file (tmpfs in the guest).
    pub dir: String,
    pub deadline_s: f64,
}
impl Check for MmapGroup {}

impl Default for MmapGroup {
    fn default() -> Self {
        MmapGroup {
            counts: vec![1, 10, 50],
            file_kib: 256,
            samples: 20,
            dir: "/tmp".into(),
            deadline_s: 60.0,
        }
    }
}

/// `mem-profile` (seed 003): memory statistics while idle, during a ramp and a hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemProfile {
    pub idle_s: f64,
    /// Total allocated by the ramp.
    pub ramp_mib: u64,
    pub step_mib: u64,
    pub hold_s: f64,
    pub interval_ms: u64,
    pub deadline_s: f64,
}
impl Check for MemProfile {}

impl Default for MemProfile {
    fn default() -> Self {
        MemProfile {
            idle_s: 1.0,
            ramp_mib: 16,
            step_mib: 2,
            hold_s: 0.5,
            interval_ms: 100,
            deadline_s: 60.0,
        }
    }
}

/// `rlimits` (seed 003): each limit stops its resource with the right errno.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rlimits {
    pub nofile: u64,
    pub nproc: u64,
    pub as_mib: u64,
    /// RLIMIT_NPROC does not bind root: the child switches to this uid first.
    pub nproc_uid: u32,
    pub deadline_s: f64,
}
impl Check for Rlimits {}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            nofile: 32,
            nproc: 8,
            as_mib: 64,
            nproc_uid: 65534,
            deadline_s: 20.0,
        }
    }
}

/// `hang`: stops the heartbeat (the harness must call it a hang).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hang {
    /// Guest-side bound: far beyond any harness deadline.
    pub deadline_s: f64,
}
impl Check for Hang {}

impl Default for Hang {
    fn default() -> Self {
        Hang { deadline_s: 600.0 }
    }
}

/// `panic`: crashes the kernel on purpose; with `probability` below 1, only in that fraction
/// of runs, drawn in the guest at run time (a flaky crash, as a real one would be).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Panic {
    /// The chance that this run crashes, in (0, 1].
    pub probability: f64,
}

impl Default for Panic {
    fn default() -> Self {
        Panic { probability: 1.0 }
    }
}

impl Check for Panic {
    fn check(&self) -> Result<(), ParamError> {
        if !(self.probability > 0.0 && self.probability <= 1.0) {
            return Err(ParamError::field(
                "probability",
                format!("{} is not in (0, 1]", self.probability),
            ));
        }
        Ok(())
    }
}

/// `oom` (seed 003): hogs with different `oom_score_adj` until the OOM killer acts.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Oom {
    /// One hog per entry, with that oom_score_adj.
    pub adjs: Vec<i32>,
    pub step_mib: u64,
    /// Each hog stops at this size if nothing killed it (count limit).
    pub cap_mib: u64,
    pub deadline_s: f64,
}

impl Check for Oom {
    fn check(&self) -> Result<(), ParamError> {
        if self.adjs.is_empty() {
            return Err(ParamError::field("adjs", "needs at least one hog"));
        }
        Ok(())
    }
}

impl Default for Oom {
    fn default() -> Self {
        Oom {
            adjs: vec![100, 500, 900],
            step_mib: 1,
            cap_mib: 8192,
            deadline_s: 60.0,
        }
    }
}

/// A `tmpfs-fill` phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TmpfsPhase {
    Limited,
    Unlimited,
}

/// `tmpfs-fill` (seed 003): fill a tmpfs with and without a size limit.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TmpfsFill {
    /// The unlimited phase is opt-in: on a guest without swap it ends in the kernel's "System
    /// is deadlocked on memory" panic (tmpfs pages belong to no process, so no kill frees them).
    pub phases: Vec<TmpfsPhase>,
    /// Size of the limited tmpfs.
    pub limit_mib: u64,
    /// The unlimited writer stops here at the latest, as a share of MemTotal (count limit).
    pub cap_pct: u64,
    /// Each file written is this big.
    pub file_mib: u64,
    /// Processes with a lower adj than the writer, that the OOM killer takes after it
    /// (unlimited phase): how many kills happen before memory comes back.
    pub spares: u32,
    /// The writer's oom_score_adj. 1000 makes it the OOM killer's first victim; -1000 makes
    /// it unkillable, so a full unlimited tmpfs leaves the kernel nothing to kill but the
    /// spares (and then nothing at all).
    pub writer_oom_score_adj: i32,
    pub dir: String,
    pub deadline_s: f64,
    /// Leak check: the longest wait for memory to settle before each sample.
    pub leak_settle_ms: u64,
    /// Leak check: obtainable memory (free, per-CPU free lists, page cache, reclaimable slab)
    /// that may be missing once the files are gone, KiB. MemAvailable is not judged: it moves
    /// with the watermarks (`vm.min_free_kbytes`).
    pub leak_max_missing_kib: u64,
    /// Test only: a leak provoked on purpose, so tests can see the check catch it.
    pub test_provoke_leak: ProvokedLeak,
    /// Test only: how much `mlocked` pins, MiB.
    pub test_provoke_mib: u64,
}
impl Check for TmpfsFill {
    fn check(&self) -> Result<(), ParamError> {
        if !(-1000..=1000).contains(&self.writer_oom_score_adj) {
            return Err(ParamError::field(
                "writer_oom_score_adj",
                format!("{} is not in -1000..=1000", self.writer_oom_score_adj),
            ));
        }
        Ok(())
    }
}

/// Test only: how `tmpfs-fill` holds memory past the removal of its files, on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProvokedLeak {
    #[default]
    None,
    /// The scenario keeps every file open while they are removed and the tmpfs detached:
    /// their pages stay in Shmem until the "after" sample is taken.
    HeldOpen,
    /// The scenario pins `test_provoke_mib` of anonymous memory with mlock and stays alive
    /// over the "after" sample.
    Mlocked,
}

impl Default for TmpfsFill {
    fn default() -> Self {
        TmpfsFill {
            phases: vec![TmpfsPhase::Limited],
            limit_mib: 16,
            cap_pct: 150,
            file_mib: 4,
            spares: 2,
            writer_oom_score_adj: 1000,
            dir: "/tmp/kstorm-tmpfs".into(),
            deadline_s: 60.0,
            leak_settle_ms: LEAK_SETTLE_MS,
            leak_max_missing_kib: 2048,
            test_provoke_leak: ProvokedLeak::None,
            test_provoke_mib: 8,
        }
    }
}

/// `overcommit` (seed 003): how far allocation goes under each `vm.overcommit_memory` mode.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Overcommit {
    pub modes: Vec<u8>,
    /// Allocation stops here at the latest, as a share of MemTotal + SwapTotal (count limit).
    pub cap_pct: u64,
    pub step_mib: u64,
    pub deadline_s: f64,
}

impl Check for Overcommit {
    fn check(&self) -> Result<(), ParamError> {
        match self.modes.iter().find(|&&m| m > 2) {
            Some(m) => Err(ParamError::field("modes", format!("{m} is not 0, 1 or 2"))),
            None => Ok(()),
        }
    }
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            modes: vec![0, 1, 2],
            cap_pct: 200,
            step_mib: 4,
            deadline_s: 90.0,
        }
    }
}

/// `cgroup-limit` (seed 003): a hog in a memory cgroup, a bystander outside it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CgroupLimit {
    /// memory.max of the group.
    pub max_mib: u64,
    /// The hog stops here if nothing killed it (count limit).
    pub cap_mib: u64,
    pub step_mib: u64,
    /// Memory the bystander outside the group holds.
    pub bystander_mib: u64,
    pub deadline_s: f64,
}
impl Check for CgroupLimit {}

impl Default for CgroupLimit {
    fn default() -> Self {
        CgroupLimit {
            max_mib: 16,
            cap_mib: 256,
            step_mib: 1,
            bystander_mib: 8,
            deadline_s: 60.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    pub(super) fn raw(v: serde_json::Value) -> RawParams {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn defaults_fill_what_the_suite_leaves_out() {
        let p = resolve("fork-hold", &raw(json!({"children": 5}))).unwrap();
        assert_eq!(p["children"], 5);
        assert_eq!(p["fds"], 16);
        assert_eq!(p["fd_kind"], "devnull");
        let p = resolve("fork-hold", &raw(json!({"fds_per_child": 7}))).unwrap();
        assert_eq!(p["fds"], 7);
    }

    #[test]
    fn errors_name_the_field() {
        let e = resolve("fork-hold", &raw(json!({"childrn": 5}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("childrn"), "{e}");
        assert!(e.message.contains("children"), "lists the known ones: {e}");
        let e = resolve("fork-hold", &raw(json!({"children": "many"}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("children"), "{e}");
        let e = resolve("fork-hold", &raw(json!({"fd_kind": "tty"}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("fd_kind"), "{e}");
        let e = resolve("copies", &raw(json!({"modes": ["fork", "clone"]}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("modes[1]"), "{e}");
        let e = resolve("oom", &raw(json!({"adjs": []}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("adjs"), "{e}");
        let e = resolve("overcommit", &raw(json!({"modes": [0, 3]}))).unwrap_err();
        assert_eq!(e.to_string(), "modes: 3 is not 0, 1 or 2");
        let e = resolve("tmpfs-fill", &raw(json!({"writer_oom_score_adj": 1001}))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "writer_oom_score_adj: 1001 is not in -1000..=1000"
        );
        let e = resolve("tmpfs-fill", &raw(json!({"test_provoke_leak": "leaky"}))).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("test_provoke_leak"), "{e}");
        let e = resolve("forkhold", &RawParams::new()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("scenario"));
        assert!(e.message.contains("fork-hold"), "{e}");
    }
}
