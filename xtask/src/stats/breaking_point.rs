//! The adaptive part of a sweep: from the observations so far, which value to run next, or
//! why to stop. Pure (no cells run here), so it is tested against simulated kernels.

use crate::stats::{self, Interval, SurvivalFit, Trial};
use serde::{Deserialize, Serialize};

/// How a sweep reads its cells, decided by the first informative one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The cell stopped short of the value asked for and reported the count it reached:
    /// the answer is the distribution of that count over repeats.
    Counting,
    /// The cell ran to the value or failed without a count: survival per value.
    Survival,
}

/// One finished cell, as the search sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    /// The swept parameter's value in this cell.
    pub value: f64,
    /// The cell passed (for counting: it reached `value` without the kernel stopping).
    pub survived: bool,
    /// The count reached (the last progress), when the cell reported one.
    pub count: Option<f64>,
}

/// The range the parameter may take and what counts as precise enough.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub min: f64,
    pub max: f64,
    /// Round values to whole numbers (counts).
    pub integer: bool,
    /// Stop once the 95% interval is at most this fraction of the estimate.
    pub target_width: f64,
    /// Counting mode: at least this many failures before the interval is trusted.
    pub min_repeats: usize,
}

/// The search's answer for one group (RAM size x variant).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum Estimate {
    /// Median count at failure, percentile-bootstrap 95% interval.
    Counting {
        median: Interval,
        failures: usize,
        /// Cells that reached the value asked for without failing.
        survived: usize,
    },
    /// Value at 50% survival, profile-likelihood 95% interval (or the bracket when separated).
    Survival { fit: SurvivalFit },
    /// Nothing informative yet.
    None,
}

impl Estimate {
    /// The interval, when there is one with both ends.
    pub fn interval(&self) -> Option<Interval> {
        match self {
            Estimate::Counting { median, .. } => Some(*median),
            Estimate::Survival {
                fit: SurvivalFit::Logistic { x50, .. },
            } => Some(*x50),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Run(f64),
    Done(String),
}

/// The state of one group's search.
#[derive(Debug, Clone)]
pub struct Search {
    pub start: f64,
    pub limits: Limits,
    pub mode: Option<Mode>,
    pub observations: Vec<Observation>,
    seed: u64,
    /// Probes outside a separated bracket so far (each widens the next).
    edge_probes: u32,
}

impl Search {
    pub fn new(start: f64, limits: Limits, seed: u64) -> Search {
        Search {
            start: limits.clamp(start),
            limits,
            mode: None,
            observations: Vec::new(),
            seed,
            edge_probes: 0,
        }
    }

    pub fn record(&mut self, o: Observation) {
        if self.mode.is_none() {
            self.mode = Some(if !o.survived && o.count.is_some_and(|c| c < o.value) {
                Mode::Counting
            } else {
                Mode::Survival
            });
        }
        self.observations.push(o);
    }

    pub fn estimate(&self) -> Estimate {
        match self.mode {
            None => Estimate::None,
            Some(Mode::Counting) => {
                let counts: Vec<f64> = self
                    .observations
                    .iter()
                    .filter(|o| !o.survived)
                    .filter_map(|o| o.count)
                    .collect();
                if counts.is_empty() {
                    return Estimate::None;
                }
                Estimate::Counting {
                    median: stats::bootstrap_median(&counts, self.seed),
                    failures: counts.len(),
                    survived: self.observations.iter().filter(|o| o.survived).count(),
                }
            }
            Some(Mode::Survival) => Estimate::Survival {
                fit: stats::fit_survival(&self.trials()),
            },
        }
    }

    fn trials(&self) -> Vec<Trial> {
        self.observations
            .iter()
            .map(|o| Trial {
                x: o.value,
                survived: o.survived,
            })
            .collect()
    }

    pub fn next_step(&mut self) -> Next {
        match self.mode {
            None => Next::Run(self.start),
            Some(Mode::Counting) => self.next_counting(),
            Some(Mode::Survival) => self.next_survival(),
        }
    }

    /// Repeat at the same cap; raise it when the last cell survived (the count was censored).
    fn next_counting(&self) -> Next {
        let last = self
            .observations
            .last()
            .expect("mode set by an observation");
        if last.survived {
            if last.value >= self.limits.max {
                return Next::Done(format!("survives at the highest value {}", last.value));
            }
            return Next::Run(self.limits.clamp(last.value * 2.0));
        }
        match self.estimate() {
            Estimate::Counting {
                median, failures, ..
            } if failures >= self.limits.min_repeats
                && median.relative_width() <= self.limits.target_width =>
            {
                Next::Done("interval within the target width".into())
            }
            _ => Next::Run(last.value),
        }
    }

    fn next_survival(&mut self) -> Next {
        let values = |want: bool| {
            self.observations
                .iter()
                .filter(move |o| o.survived == want)
                .map(|o| o.value)
        };
        let last_survived = values(true).reduce(f64::max);
        let first_failed = values(false).reduce(f64::min);
        match (last_survived, first_failed) {
            (None, Some(f)) if f <= self.limits.min => {
                Next::Done(format!("fails at the lowest value {f}"))
            }
            (None, Some(f)) => Next::Run(self.limits.clamp(f / 2.0)),
            (Some(s), None) if s >= self.limits.max => {
                Next::Done(format!("survives at the highest value {s}"))
            }
            (Some(s), None) => Next::Run(self.limits.clamp(s * 2.0)),
            (Some(_), Some(_)) | (None, None) => self.next_fitted(),
        }
    }

    /// Both outcomes seen: bisect a separated bracket, else sample where the fit learns most.
    fn next_fitted(&mut self) -> Next {
        match stats::fit_survival(&self.trials()) {
            SurvivalFit::Separated {
                last_survived: Some(s),
                first_failed: Some(f),
            } => {
                let mid = self.limits.clamp((s + f) / 2.0);
                if mid > s && mid < f {
                    return Next::Run(mid);
                }
                // No value left between them: a few lucky cells can make a wide transition
                // look sharp, so probe on alternate sides of the bracket, half the gap between
                // the typical survival and failure values away, until a failure below or a
                // survival above appears.
                let unit = if self.limits.integer {
                    1.0
                } else {
                    f.abs() * 0.01
                };
                let typical = |want: bool| {
                    let v: Vec<f64> = self
                        .observations
                        .iter()
                        .filter(|o| o.survived == want)
                        .map(|o| o.value)
                        .collect();
                    stats::median(&v)
                };
                let distance = ((typical(false) - typical(true)) / 2.0).max(unit);
                let k = self.edge_probes;
                self.edge_probes += 1;
                let probe = if k.is_multiple_of(2) {
                    s - distance
                } else {
                    f + distance
                };
                Next::Run(self.limits.clamp(probe))
            }
            SurvivalFit::Logistic { x50, slope } => {
                if x50.relative_width() <= self.limits.target_width {
                    return Next::Done("interval within the target width".into());
                }
                // The D-optimal design for a two-parameter logistic samples where survival is
                // 17.6% and 82.4% (x50 -+ 1.543 / |b|). Early fits overstate the slope, and a
                // design that trusts them undercovers (93.5% in simulation), so sample at
                // twice that distance, in turn on each side (95.3% over 400 simulated sweeps).
                let offset = 2.0 * 1.543 / slope.abs().max(1e-12);
                let side = if self.observations.len().is_multiple_of(2) {
                    -1.0
                } else {
                    1.0
                };
                Next::Run(self.limits.clamp(x50.estimate + side * offset))
            }
            SurvivalFit::Separated { .. } => Next::Run(self.start),
        }
    }
}

impl Limits {
    fn clamp(&self, v: f64) -> f64 {
        let v = v.clamp(self.min, self.max);
        if self.integer {
            v.round()
        } else {
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    /// A simulated kernel (a mock of the cell, named as such): survives value `x` with
    /// probability `1 / (1 + exp((x - 100) / 10))`, so its true 50% point is 100.
    fn simulated_cell(x: f64, rng: &mut StdRng) -> Observation {
        let p = 1.0 / (1.0 + ((x - 100.0) / 10.0).exp());
        Observation {
            value: x,
            survived: rng.random::<f64>() < p,
            count: None,
        }
    }

    fn limits() -> Limits {
        Limits {
            min: 1.0,
            max: 10_000.0,
            integer: true,
            target_width: 0.0,
            min_repeats: 3,
        }
    }

    /// The acceptance: over 100 seeded sweeps of 60 cells each, the true breaking point
    /// lies inside the reported 95% interval at least 93 times. (Over 400 seeds: 379, 94.8%,
    /// as for a fixed evenly spread design of 60 cells: 380.)
    #[test]
    fn survival_interval_covers_the_true_point() {
        let mut covered = 0;
        let mut finite = 0;
        for seed in 0..100u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut search = Search::new(30.0, limits(), seed);
            for _ in 0..60 {
                let Next::Run(x) = search.next_step() else {
                    break;
                };
                search.record(simulated_cell(x, &mut rng));
            }
            let Estimate::Survival {
                fit: SurvivalFit::Logistic { x50, .. },
            } = search.estimate()
            else {
                panic!("seed {seed}: 60 cells around the point must give a fit");
            };
            covered += x50.contains(100.0) as u32;
            finite += (x50.lo.is_some() && x50.hi.is_some()) as u32;
        }
        assert!(covered >= 93, "covered {covered}/100");
        assert!(finite >= 95, "finite intervals {finite}/100");
    }

    /// Counting mode on a simulated kernel that stops at a count drawn from N(800, 40): the
    /// bootstrap interval of the median covers 800 in most seeded trials.
    #[test]
    fn counting_interval_covers_the_true_median() {
        let mut covered = 0;
        for seed in 0..100u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut search = Search::new(100_000.0, limits(), seed);
            for _ in 0..15 {
                let Next::Run(x) = search.next_step() else {
                    break;
                };
                // Sum of 12 uniforms: close to normal, mean 6, sd 1.
                let z: f64 = (0..12).map(|_| rng.random::<f64>()).sum::<f64>() - 6.0;
                search.record(Observation {
                    value: x,
                    survived: false,
                    count: Some((800.0 + 40.0 * z).round()),
                });
            }
            assert_eq!(search.mode, Some(Mode::Counting));
            if let Some(i) = search.estimate().interval() {
                covered += i.contains(800.0) as u32;
            }
        }
        assert!(covered >= 88, "covered {covered}/100");
    }

    #[test]
    fn brackets_before_fitting() {
        let mut s = Search::new(30.0, limits(), 1);
        assert_eq!(s.next_step(), Next::Run(30.0));
        s.record(Observation {
            value: 30.0,
            survived: true,
            count: Some(30.0),
        });
        assert_eq!(s.mode, Some(Mode::Survival));
        assert_eq!(s.next_step(), Next::Run(60.0));
        s.record(Observation {
            value: 60.0,
            survived: false,
            count: None,
        });
        assert_eq!(s.next_step(), Next::Run(45.0));
    }
}
