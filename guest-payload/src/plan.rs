//! The plan the harness hands to the guest: which cell this is and which scenarios to run.
//!
//! On Linux the harness writes it as `/kstorm/plan.json` into the cell's initramfs; other
//! agents (the GNU Mach bootstrap task) get the same facts on their command line.

use serde::{Deserialize, Serialize};

/// Where the plan is found inside a Linux initramfs.
pub const PLAN_PATH: &str = "/kstorm/plan.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The harness's cell id; every frame carries it.
    pub cell: String,
    /// Device for result frames (a serial port of its own); when it can't be opened the
    /// payload falls back to the console.
    #[serde(default = "default_results_device")]
    pub results_device: String,
    /// Heartbeat period in milliseconds (at most 1000).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// `sysctl` settings applied before the scenarios run, as (`vm.overcommit_memory`, `"2"`).
    #[serde(default)]
    pub sysctl: Vec<(String, String)>,
    /// Linux: `/proc/vmstat` counters (name prefixes) whose change over each scenario is
    /// reported with its result (the list is data: `xtask/vmstat.yaml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vmstat: Vec<String>,
    /// Scenarios, run in order.
    pub scenarios: Vec<ScenarioSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSpec {
    /// Scenario name, e.g. "fork-hold".
    pub name: String,
    /// Parameters as given in the suite; each scenario parses its own into typed fields and
    /// rejects unknown ones.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Where the payload writes frames when the plan names no device: the console.
fn default_results_device() -> String {
    "/dev/console".to_string()
}

/// The heartbeat period when the plan names none.
pub const DEFAULT_HEARTBEAT_MS: u64 = 500;

fn default_heartbeat_ms() -> u64 {
    DEFAULT_HEARTBEAT_MS
}
