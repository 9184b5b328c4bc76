//! `sweep.json`: a breaking-point sweep's groups, the cells each ran and the estimate with its
//! interval (the `sweep` verb writes it; the report renders it).

use crate::matrix::axis::Axis;
use crate::stats::breaking_point::{Estimate, Harder, Mode, Observation};
use crate::stats::LinearFit;
use serde::{Deserialize, Serialize};

pub const SWEEP_FILE: &str = "sweep.json";

/// `sweep.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepFile {
    pub suite: String,
    pub case: String,
    /// The swept axis's short name (`limit`, `ram`, `vm.min_free_kbytes`).
    pub param: String,
    /// The swept axis in full (absent in files written before axes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub axis: Option<Axis>,
    /// Which way the search went looking for failures.
    #[serde(default)]
    pub harder: Harder,
    /// `--over`: the second axis, one group per value, and the breaking point fitted against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<Over>,
    pub seed: u64,
    pub methods: Methods,
    pub groups: Vec<Group>,
}

/// Which statistics produced the intervals (written out so a reader need not guess).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Methods {
    pub counting: String,
    pub survival: String,
}

impl Default for Methods {
    fn default() -> Self {
        Methods {
            counting: "median count at failure; 95% percentile bootstrap (4000 resamples)".into(),
            survival: "logistic fit by maximum likelihood; value at 50% survival with a 95% \
                       profile-likelihood interval"
                .into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Group {
    pub image: String,
    pub ram_mib: u64,
    pub variant: String,
    /// The `--over` axis's value in this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub over: Option<f64>,
    pub mode: Option<Mode>,
    pub cells: Vec<SweptCell>,
    pub estimate: Estimate,
    /// Why the search stopped (target reached, a cap, or what the data showed).
    pub stopped: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweptCell {
    pub cell: String,
    pub verdict: String,
    #[serde(flatten)]
    pub observation: Observation,
    /// What the kernel reported back for a sysctl or tunable axis (the value asked is `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reported: Option<String>,
}

/// The breaking point against a second axis (`--over`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Over {
    pub axis: Axis,
    pub values: Vec<f64>,
    /// Least squares of each group's estimate against its `--over` value (None: fewer than two
    /// groups with an estimate).
    pub fit: Option<LinearFit>,
}
