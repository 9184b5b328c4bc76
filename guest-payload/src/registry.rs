//! Every scenario kstorm knows, in one table: per scenario and route (where its code runs) the
//! type of its parameters, whether it may only run in a disposable guest, and the tools the
//! guest needs for it. The harness checks suites against this table before anything boots
//! (a case whose image's route lacks its scenario is a usage error); the payload, the GNU Mach
//! task and the portable agent each implement their route's entries (tests hold them to it).

use crate::params::{self, mach, parse, portable, to_json, ParamError, RawParams};
use serde::{Deserialize, Serialize};

/// Where a scenario's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Route {
    /// The static Linux payload, as PID 1 or over a transport (`guest-payload/src/`).
    LinuxPayload,
    /// kstorm's GNU Mach bootstrap task (`guest-payload/mach/`).
    MachTask,
    /// The portable C agent, compiled in FreeBSD and GNU/Hurd guests (`guest-payload/portable/`).
    PortableC,
}

impl Route {
    pub const ALL: [Route; 3] = [Route::LinuxPayload, Route::MachTask, Route::PortableC];

    pub fn name(self) -> &'static str {
        match self {
            Route::LinuxPayload => "linux-payload",
            Route::MachTask => "mach-task",
            Route::PortableC => "portable-c",
        }
    }
}

type Resolve = fn(&RawParams) -> Result<serde_json::Value, ParamError>;

/// One scenario on one route.
pub struct ScenarioDef {
    pub name: &'static str,
    pub route: Route,
    /// Harms the machine it runs on (panics it, exhausts its memory, changes kernel-wide
    /// settings): only runs as PID 1 of a disposable guest.
    pub guest_only: bool,
    /// Tools from Debian the guest runs for it (the harness bundles them into the initramfs).
    pub guest_tools: &'static [&'static str],
    resolve: Resolve,
}

impl ScenarioDef {
    /// The parameters with the route's defaults filled in; an unknown or mistyped key is an
    /// error naming it.
    pub fn resolve(&self, params: &RawParams) -> Result<serde_json::Value, ParamError> {
        (self.resolve)(params)
    }
}

macro_rules! scenario {
    ($name:literal, $route:ident, $ty:ty $(, tools: [$($tool:literal),*])?) => {
        ScenarioDef {
            name: $name,
            route: Route::$route,
            guest_only: false,
            guest_tools: &[$($($tool),*)?],
            resolve: |p| to_json(parse::<$ty>(p)?),
        }
    };
}

macro_rules! destructive {
    ($name:literal, $ty:ty $(, tools: [$($tool:literal),*])?) => {
        ScenarioDef {
            name: $name,
            route: Route::LinuxPayload,
            guest_only: true,
            guest_tools: &[$($($tool),*)?],
            resolve: |p| to_json(parse::<$ty>(p)?),
        }
    };
}

/// The table.
pub const SCENARIOS: &[ScenarioDef] = &[
    // The Linux payload.
    scenario!("smoke", LinuxPayload, params::Smoke),
    scenario!("fork-hold", LinuxPayload, params::ForkHold),
    scenario!("spawn-kill", LinuxPayload, params::SpawnKill),
    scenario!("fd-churn", LinuxPayload, params::FdChurn),
    scenario!("copies", LinuxPayload, params::Copies),
    scenario!("mmap-group", LinuxPayload, params::MmapGroup),
    scenario!("mem-profile", LinuxPayload, params::MemProfile),
    scenario!("rlimits", LinuxPayload, params::Rlimits),
    scenario!("hang", LinuxPayload, params::Hang),
    destructive!("panic", params::Panic),
    destructive!("oom", params::Oom),
    destructive!("tmpfs-fill", params::TmpfsFill),
    destructive!("overcommit", params::Overcommit),
    destructive!("cgroup-limit", params::CgroupLimit),
    destructive!("stress-ng", params::StressNg, tools: ["stress-ng"]),
    // The GNU Mach bootstrap task (its defaults stay in C).
    scenario!("task-hoard", MachTask, mach::TaskHoard),
    scenario!("task-churn", MachTask, mach::TaskChurn),
    scenario!("port-hoard", MachTask, mach::PortHoard),
    scenario!("port-churn", MachTask, mach::PortChurn),
    scenario!("no-senders-flood", MachTask, mach::NoSendersFlood),
    scenario!("spawn-kill", MachTask, mach::SpawnKill),
    // The portable C agent.
    scenario!("smoke", PortableC, portable::Smoke),
    scenario!("fork-hold", PortableC, portable::ForkHold),
    scenario!("spawn-kill", PortableC, portable::SpawnKill),
    scenario!("fd-churn", PortableC, portable::FdChurn),
];

/// `name` on `route`, if that route runs it.
pub fn find(route: Route, name: &str) -> Option<&'static ScenarioDef> {
    SCENARIOS
        .iter()
        .find(|s| s.route == route && s.name == name)
}

/// The scenarios `route` runs, in table order.
pub fn names(route: Route) -> Vec<&'static str> {
    SCENARIOS
        .iter()
        .filter(|s| s.route == route)
        .map(|s| s.name)
        .collect()
}

/// The parameters of `name` on `route` with defaults filled in. A scenario the route does not
/// run is an error on the `scenario` field that lists what it runs (and where else `name` runs).
pub fn resolve(
    route: Route,
    name: &str,
    params: &RawParams,
) -> Result<serde_json::Value, ParamError> {
    match find(route, name) {
        Some(def) => def.resolve(params),
        None => Err(not_on_route(route, name)),
    }
}

fn not_on_route(route: Route, name: &str) -> ParamError {
    let elsewhere: Vec<&str> = Route::ALL
        .iter()
        .filter(|r| find(**r, name).is_some())
        .map(|r| r.name())
        .collect();
    let known = names(route).join(", ");
    let message = match elsewhere.is_empty() {
        true => format!(
            "unknown scenario {name:?} (the {} route runs: {known})",
            route.name()
        ),
        false => format!(
            "scenario {name:?} does not run on the {} route (it runs on: {}; this route runs: \
             {known})",
            route.name(),
            elsewhere.join(", ")
        ),
    };
    ParamError::field("scenario", message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_per_route_and_defaults_resolve() {
        for route in Route::ALL {
            let mut n = names(route);
            let all = n.len();
            n.sort();
            n.dedup();
            assert_eq!(n.len(), all, "{route:?}");
        }
        for s in SCENARIOS {
            s.resolve(&RawParams::new())
                .unwrap_or_else(|e| panic!("{} on {:?}: {e}", s.name, s.route));
        }
    }

    #[test]
    fn a_scenario_off_its_route_names_where_it_runs() {
        let e = resolve(Route::PortableC, "oom", &RawParams::new()).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("scenario"));
        assert!(e.message.contains("linux-payload"), "{e}");
        assert!(e.message.contains("fork-hold"), "{e}");
        let e = resolve(Route::LinuxPayload, "forkhold", &RawParams::new()).unwrap_err();
        assert!(e.message.starts_with("unknown scenario"), "{e}");
    }

    #[test]
    fn the_portable_route_refuses_keys_the_agent_does_not_read() {
        let mut p = RawParams::new();
        p.insert("leak_settle_ms".into(), 10.into());
        let e = resolve(Route::PortableC, "fork-hold", &p).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("leak_settle_ms"), "{e}");
        assert!(resolve(Route::LinuxPayload, "fork-hold", &p).is_ok());
    }
}
