//! The scenarios and the small interface they share.
//!
//! A scenario is a function from typed parameters and a [`Ctx`] (progress counter, whether we
//! run inside a disposable guest) to a [`ScenarioReport`] of measurements. It never writes frames: the
//! runner turns reports into result lines in one place. Each scenario's parameters are a serde
//! struct of the library (`kstorm_payload::params`, which the harness checks suites with);
//! each loop is bounded by a count and by the scenario's deadline.

use crate::progress::Progress;
use crate::sys;
use kstorm_payload::frame::{Measurement, Series};
use kstorm_payload::memory_evidence::MemoryEvidence;
use kstorm_payload::params::{self, Check};
use kstorm_payload::registry::{self, Route};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod cgroup_limit;
mod copies;
mod crash;
mod fd_churn;
mod fork_hold;
mod hog;
pub mod holders;
pub mod leakcheck;
mod mem_profile;
mod mmap_group;
mod oom;
mod overcommit;
mod rlimits;
mod smoke;
mod spawn_kill;
mod stress_ng;
mod tmpfs_fill;

pub use copies::copy_main;

/// What a scenario gets besides its parameters.
pub struct Ctx<'a> {
    pub progress: &'a Progress,
    /// True when the payload is PID 1 of a throwaway guest: destructive scenarios may run,
    /// kernel-wide settings may be changed.
    pub in_guest: bool,
}

/// What a scenario measured. `failure` set means its own checks did not hold.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ScenarioReport {
    pub failure: Option<String>,
    /// Set when the scenario could not do its work for reasons outside the kernel (a tool
    /// it runs lacked resources or support): the cell is infra, never pass or fail.
    #[serde(default)]
    pub infra: Option<String>,
    /// The error that stopped growth (EAGAIN, EMFILE...) when that is a finding, not a failure.
    pub stop_error: Option<String>,
    pub measurements: BTreeMap<String, Measurement>,
    pub facts: BTreeMap<String, String>,
    pub series: BTreeMap<String, Series>,
    pub evidence: Vec<MemoryEvidence>,
}

impl ScenarioReport {
    pub fn num(&mut self, name: impl Into<String>, value: f64, unit: &str) {
        self.measurements
            .insert(name.into(), Measurement::new(value, unit));
    }

    pub fn fact(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.facts.insert(name.into(), value.into());
    }

    pub fn series(&mut self, name: impl Into<String>, unit: &str, mut points: Vec<(f64, f64)>) {
        kstorm_payload::stats::decimate(&mut points, 600);
        self.series.insert(
            name.into(),
            Series {
                unit: unit.to_string(),
                points,
            },
        );
    }

    /// Records a failed check; several accumulate, separated by "; ".
    pub fn fail(&mut self, why: impl Into<String>) {
        let why = why.into();
        self.failure = Some(match self.failure.take() {
            Some(prev) => format!("{prev}; {why}"),
            None => why,
        });
    }

    /// Records why the scenario could not do its work (the first reason is kept).
    pub fn infra(&mut self, why: impl Into<String>) {
        self.infra.get_or_insert_with(|| why.into());
    }

    /// Adds p50/p99/max/n of `samples` (milliseconds) as `<prefix>_p50` etc.
    pub fn latency(&mut self, prefix: &str, samples_ms: &[f64]) {
        if let Some(s) = kstorm_payload::stats::summarize(samples_ms) {
            self.num(format!("{prefix}_p50"), s.p50, "ms");
            self.num(format!("{prefix}_p99"), s.p99, "ms");
            self.num(format!("{prefix}_max"), s.max, "ms");
            self.num(format!("{prefix}_n"), s.n as f64, "count");
        }
    }
}

/// Why a scenario could not run at all.
pub type RunError = String;

type RunFn =
    fn(&serde_json::Map<String, serde_json::Value>, &Ctx) -> Result<ScenarioReport, RunError>;

/// The payload's code for one scenario of the registry's Linux route
/// (`kstorm_payload::registry`, which says what it is and whether it is guest-only).
pub struct Scenario {
    pub name: &'static str,
    run: RunFn,
}

macro_rules! scenario {
    ($name:literal, $module:ident) => {
        Scenario {
            name: $name,
            run: |params, ctx| $module::run(parse_params(params)?, ctx),
        }
    };
}

/// The code of every scenario the registry's Linux route names.
pub const ALL: &[Scenario] = &[
    scenario!("smoke", smoke),
    scenario!("fork-hold", fork_hold),
    scenario!("spawn-kill", spawn_kill),
    scenario!("fd-churn", fd_churn),
    scenario!("copies", copies),
    scenario!("mmap-group", mmap_group),
    scenario!("mem-profile", mem_profile),
    scenario!("rlimits", rlimits),
    Scenario {
        name: "hang",
        run: |p, c| crash::run_hang(parse_params(p)?, c),
    },
    Scenario {
        name: "panic",
        run: |p, c| crash::run_panic(parse_params(p)?, c),
    },
    scenario!("oom", oom),
    scenario!("tmpfs-fill", tmpfs_fill),
    scenario!("overcommit", overcommit),
    scenario!("cgroup-limit", cgroup_limit),
    scenario!("stress-ng", stress_ng),
];

pub fn find(name: &str) -> Option<&'static Scenario> {
    ALL.iter().find(|s| s.name == name)
}

impl Scenario {
    /// Parses the parameters without running anything.
    pub fn check(
        &self,
        params: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), RunError> {
        params::resolve(self.name, params)
            .map(|_| ())
            .map_err(|e| format!("invalid params: {e}"))
    }

    /// Runs the scenario in the calling process (the runner calls this in a forked child).
    pub fn run(
        &self,
        params: &serde_json::Map<String, serde_json::Value>,
        ctx: &Ctx,
    ) -> Result<ScenarioReport, RunError> {
        let guest_only =
            registry::find(Route::LinuxPayload, self.name).is_some_and(|d| d.guest_only);
        if guest_only && !ctx.in_guest {
            return Err(format!(
                "scenario {} only runs as PID 1 of a disposable guest (it would harm this machine)",
                self.name
            ));
        }
        (self.run)(params, ctx)
    }
}

/// Parses a scenario's parameters; an unknown or mistyped parameter is an error naming it.
pub fn parse_params<P: DeserializeOwned + Check>(
    params: &serde_json::Map<String, serde_json::Value>,
) -> Result<P, RunError> {
    params::parse(params).map_err(|e| format!("invalid params: {e}"))
}

/// The scenario's deadline, published to the supervisor.
pub fn deadline(ctx: &Ctx, secs: f64) -> sys::Deadline {
    let d = sys::Deadline::after_secs(secs);
    ctx.progress.publish_deadline(d);
    d
}

pub use kstorm_payload::params::FdKind;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        #[serde(default = "three")]
        n: u32,
    }
    fn three() -> u32 {
        3
    }
    impl Check for P {}

    #[test]
    fn params_default_and_unknown_is_named() {
        let empty = serde_json::Map::new();
        assert_eq!(parse_params::<P>(&empty).unwrap().n, 3);
        let mut bad = serde_json::Map::new();
        bad.insert("childern".into(), 5.into());
        let e = parse_params::<P>(&bad).unwrap_err();
        assert!(e.contains("childern"), "{e}");
    }

    #[test]
    fn names_are_unique() {
        let mut names: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    /// The registry's Linux route (what the harness checks suites against) is this table.
    #[test]
    fn the_registry_names_every_scenario_of_the_payload() {
        let mut ours: Vec<&str> = ALL.iter().map(|s| s.name).collect();
        let mut library = registry::names(Route::LinuxPayload);
        ours.sort();
        library.sort();
        assert_eq!(ours, library);
        for s in ALL {
            s.check(&serde_json::Map::new()).unwrap();
        }
    }

    #[test]
    fn latency_and_failures_accumulate() {
        let mut r = ScenarioReport::default();
        r.latency("join", &[1.0, 2.0, 3.0]);
        assert_eq!(r.measurements["join_p50"].value, 2.0);
        assert_eq!(r.measurements["join_max"].unit, "ms");
        r.fail("a");
        r.fail("b");
        assert_eq!(r.failure.as_deref(), Some("a; b"));
    }
}
