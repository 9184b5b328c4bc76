//! Statistics the verbs share, pure and tested against simulated data: the breaking point of a
//! sweep ([`breaking_point`]), and below, its estimators.
//!
//! The estimators of a breaking-point sweep:
//!
//! - Counting scenarios (how far a cell got before the kernel stopped): the median count at
//!   failure with a percentile-bootstrap 95% interval.
//! - Pass/fail scenarios: survival modelled as `P(survive | x) = 1 / (1 + exp(-b (x - x50)))`,
//!   fitted by maximum likelihood (Newton's method on the concave log-likelihood), with a 95%
//!   profile-likelihood interval for `x50`, the value at 50% survival: every `x50` whose best
//!   log-likelihood lies within chi2(1, 0.95) / 2 of the maximum.

pub mod breaking_point;
pub mod difference;
pub mod linear;

pub use linear::{fit_line, LinearFit};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ChiSquared, ContinuousCDF};

/// A point estimate with a 95% interval; an open end (`None`) means the data do not bound it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    pub estimate: f64,
    pub lo: Option<f64>,
    pub hi: Option<f64>,
}

impl Interval {
    pub fn contains(&self, x: f64) -> bool {
        self.lo.is_none_or(|lo| lo <= x) && self.hi.is_none_or(|hi| x <= hi)
    }

    /// Width relative to the estimate; infinite when an end is open.
    pub fn relative_width(&self) -> f64 {
        match (self.lo, self.hi) {
            (Some(lo), Some(hi)) if self.estimate != 0.0 => (hi - lo) / self.estimate.abs(),
            _ => f64::INFINITY,
        }
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// How many bootstrap resamples: enough for stable 2.5% / 97.5% percentiles.
const RESAMPLES: usize = 4000;

/// The median and its percentile-bootstrap 95% interval (resampling with replacement, seeded).
pub fn bootstrap_median(values: &[f64], seed: u64) -> Interval {
    let estimate = median(values);
    if values.len() < 2 {
        return Interval {
            estimate,
            lo: None,
            hi: None,
        };
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut medians: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let sample: Vec<f64> = (0..values.len())
                .map(|_| values[rng.random_range(0..values.len())])
                .collect();
            median(&sample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    let at = |q: f64| medians[((q * RESAMPLES as f64) as usize).min(RESAMPLES - 1)];
    Interval {
        estimate,
        lo: Some(at(0.025)),
        hi: Some(at(0.975)),
    }
}

/// One pass/fail observation: did the cell survive at value `x`?
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    pub x: f64,
    pub survived: bool,
}

/// What the survival data say.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fit", rename_all = "kebab-case")]
pub enum SurvivalFit {
    /// Survival and failure overlap: a finite maximum-likelihood fit exists.
    Logistic {
        /// The value at 50% survival, with its profile-likelihood interval.
        x50: Interval,
        /// `b` in `1 / (1 + exp(-b (x - x50)))`: negative when survival falls with `x`.
        slope: f64,
    },
    /// Every survival lies below every failure (or the reverse): no finite fit; the breaking
    /// point lies between the two values.
    Separated {
        last_survived: Option<f64>,
        first_failed: Option<f64>,
    },
}

impl SurvivalFit {
    /// Survival probability at `x` under the fit (for plots).
    pub fn survival(&self, x: f64) -> Option<f64> {
        match self {
            SurvivalFit::Logistic { x50, slope } => Some(sigmoid(slope * (x - x50.estimate))),
            SurvivalFit::Separated { .. } => None,
        }
    }
}

fn sigmoid(t: f64) -> f64 {
    1.0 / (1.0 + (-t).exp())
}

/// log(1 + e^t) without overflow.
fn softplus(t: f64) -> f64 {
    if t > 30.0 {
        t
    } else {
        t.exp().ln_1p()
    }
}

/// Fits the survival curve; see the module comment for the model and the interval.
pub fn fit_survival(trials: &[Trial]) -> SurvivalFit {
    let max_of = |want: bool| {
        trials
            .iter()
            .filter(|t| t.survived == want)
            .map(|t| t.x)
            .reduce(f64::max)
    };
    let min_of = |want: bool| {
        trials
            .iter()
            .filter(|t| t.survived == want)
            .map(|t| t.x)
            .reduce(f64::min)
    };
    let overlap = match (max_of(true), min_of(false), max_of(false), min_of(true)) {
        (Some(ms), Some(mf), Some(xf), Some(ns)) => ms > mf && xf > ns,
        _ => false,
    };
    if !overlap {
        return SurvivalFit::Separated {
            last_survived: max_of(true),
            first_failed: min_of(false),
        };
    }
    Standardized::new(trials).fit()
}

/// The trials with `x` centred and scaled, so Newton's method is well conditioned.
struct Standardized {
    z: Vec<f64>,
    y: Vec<f64>,
    mean: f64,
    scale: f64,
}

const NEWTON_STEPS: usize = 200;

impl Standardized {
    fn new(trials: &[Trial]) -> Standardized {
        let n = trials.len() as f64;
        let mean = trials.iter().map(|t| t.x).sum::<f64>() / n;
        let var = trials.iter().map(|t| (t.x - mean).powi(2)).sum::<f64>() / n;
        let scale = var.sqrt().max(f64::MIN_POSITIVE);
        Standardized {
            z: trials.iter().map(|t| (t.x - mean) / scale).collect(),
            y: trials
                .iter()
                .map(|t| if t.survived { 1.0 } else { 0.0 })
                .collect(),
            mean,
            scale,
        }
    }

    /// Log-likelihood of `eta_i = b (z_i - c)`.
    fn loglik(&self, b: f64, c: f64) -> f64 {
        self.z
            .iter()
            .zip(&self.y)
            .map(|(z, y)| {
                let eta = b * (z - c);
                y * eta - softplus(eta)
            })
            .sum()
    }

    /// The best slope for a fixed midpoint `c` (a concave 1-D problem), and its log-likelihood.
    fn profile(&self, c: f64, start: f64) -> (f64, f64) {
        let mut b = start;
        let mut ll = self.loglik(b, c);
        for _ in 0..NEWTON_STEPS {
            let (mut g, mut h) = (0.0, 0.0);
            for (z, y) in self.z.iter().zip(&self.y) {
                let d = z - c;
                let p = sigmoid(b * d);
                g += (y - p) * d;
                h += p * (1.0 - p) * d * d;
            }
            if h <= 0.0 || g.abs() < 1e-12 {
                break;
            }
            let mut step = g / h;
            // Halve the step until the likelihood does not fall (Newton can overshoot).
            let mut next = self.loglik(b + step, c);
            while next < ll && step.abs() > 1e-14 {
                step /= 2.0;
                next = self.loglik(b + step, c);
            }
            if next < ll {
                break;
            }
            b += step;
            let done = next - ll < 1e-13;
            ll = next;
            if done {
                break;
            }
        }
        (b, ll)
    }

    /// The joint maximum: alternates profile steps with Newton steps on the midpoint, which is
    /// exact for this smooth 2-D problem and keeps one parametrisation throughout.
    fn maximum(&self) -> (f64, f64, f64) {
        let (mut b, mut c) = (-1.0, 0.0);
        let mut ll = f64::NEG_INFINITY;
        for _ in 0..NEWTON_STEPS {
            let (nb, nll) = self.profile(c, b);
            b = nb;
            // Newton on c with b fixed: eta = b (z - c).
            let (mut g, mut h) = (0.0, 0.0);
            for (z, y) in self.z.iter().zip(&self.y) {
                let p = sigmoid(b * (z - c));
                g += -(y - p) * b;
                h += p * (1.0 - p) * b * b;
            }
            let mut step = if h > 0.0 { g / h } else { 0.0 };
            let mut next = self.loglik(b, c + step);
            while next < nll && step.abs() > 1e-14 {
                step /= 2.0;
                next = self.loglik(b, c + step);
            }
            if next >= nll {
                c += step;
            }
            let improved = next.max(nll) - ll;
            ll = next.max(nll);
            if improved.abs() < 1e-12 {
                break;
            }
        }
        (b, c, ll)
    }

    fn fit(&self) -> SurvivalFit {
        let (b, c, ll_max) = self.maximum();
        let crit = ChiSquared::new(1.0)
            .expect("one degree of freedom")
            .inverse_cdf(0.95);
        let outside = |c2: f64| 2.0 * (ll_max - self.profile(c2, b).1) - crit;
        let lo = self.bound(c, -1.0, &outside);
        let hi = self.bound(c, 1.0, &outside);
        let to_x = |c: f64| self.mean + self.scale * c;
        SurvivalFit::Logistic {
            x50: Interval {
                estimate: to_x(c),
                lo: lo.map(to_x),
                hi: hi.map(to_x),
            },
            slope: b / self.scale,
        }
    }

    /// Where `outside` crosses zero going from `c` in `direction`: steps out doubling, then
    /// bisects. `None` when it never does within 1000 standard deviations (an open end).
    fn bound(&self, c: f64, direction: f64, outside: &dyn Fn(f64) -> f64) -> Option<f64> {
        let mut inner = c;
        let mut step = 0.05;
        let mut outer = loop {
            let probe = c + direction * step;
            if outside(probe) > 0.0 {
                break probe;
            }
            inner = probe;
            step *= 2.0;
            if step > 1000.0 {
                return None;
            }
        };
        for _ in 0..60 {
            let mid = (inner + outer) / 2.0;
            if outside(mid) > 0.0 {
                outer = mid;
            } else {
                inner = mid;
            }
        }
        outer = (inner + outer) / 2.0;
        Some(outer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn bootstrap_interval_brackets_the_median() {
        let v: Vec<f64> = (1..=21).map(f64::from).collect();
        let i = bootstrap_median(&v, 7);
        assert_eq!(i.estimate, 11.0);
        let (lo, hi) = (i.lo.unwrap(), i.hi.unwrap());
        assert!(lo < 11.0 && 11.0 < hi && lo >= 5.0 && hi <= 17.0, "{i:?}");
    }

    #[test]
    fn separated_data_have_no_fit() {
        let t = |x, survived| Trial { x, survived };
        let fit = fit_survival(&[t(10.0, true), t(20.0, true), t(30.0, false)]);
        assert_eq!(
            fit,
            SurvivalFit::Separated {
                last_survived: Some(20.0),
                first_failed: Some(30.0)
            }
        );
    }

    /// Against an independent computation (a plain Newton fit in the `a + b x` form and a
    /// golden-section search for the profile, written separately in Python): x = 1..20.
    #[test]
    fn logistic_fit_matches_reference() {
        let ys = [1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0];
        let trials: Vec<Trial> = ys
            .iter()
            .enumerate()
            .map(|(i, y)| Trial {
                x: (i + 1) as f64,
                survived: *y == 1,
            })
            .collect();
        let SurvivalFit::Logistic { x50, slope } = fit_survival(&trials) else {
            panic!("overlapping data must fit");
        };
        assert!((slope - -0.315086).abs() < 1e-4, "slope {slope}");
        assert!((x50.estimate - 11.59080).abs() < 1e-3, "{x50:?}");
        assert!((x50.lo.unwrap() - 7.41945).abs() < 1e-2, "{x50:?}");
        assert!((x50.hi.unwrap() - 16.50174).abs() < 1e-2, "{x50:?}");
    }
}
