//! `sweep.json`: a breaking-point sweep's groups, the cells each ran and the estimate with its
//! interval (the `sweep` verb writes it; the report renders it).

use crate::stats::breaking_point::{Estimate, Mode, Observation};
use serde::{Deserialize, Serialize};

pub const SWEEP_FILE: &str = "sweep.json";

/// `sweep.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SweepFile {
    pub suite: String,
    pub case: String,
    pub param: String,
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
}
