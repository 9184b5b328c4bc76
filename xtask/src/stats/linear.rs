//! A straight line through a sweep's breaking points against a second axis (`sweep --over`):
//! ordinary least squares, with 95% intervals for the slope and the intercept from Student's t
//! on n - 2 degrees of freedom. Each point is one group's estimate; its own interval is not
//! weighted in (the line says how the breaking point moves, the groups say how sure each is).

use super::Interval;
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinearFit {
    /// Change of the breaking point per unit of the second axis.
    pub slope: Interval,
    pub intercept: Interval,
    /// Points fitted.
    pub n: usize,
    /// Coefficient of determination (1: every point on the line).
    pub r2: f64,
    /// The points, (x, y), as fitted.
    pub points: Vec<(f64, f64)>,
}

/// The least-squares line through `points`; None with fewer than two distinct x. With two
/// points the intervals are open (no degrees of freedom left for the spread).
pub fn fit_line(points: &[(f64, f64)]) -> Option<LinearFit> {
    let n = points.len();
    let nf = n as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let my = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = points.iter().map(|p| (p.1 - my).powi(2)).sum();
    if n < 2 || sxx <= 0.0 {
        return None;
    }
    let b = sxy / sxx;
    let a = my - b * mx;
    let sse: f64 = points.iter().map(|p| (p.1 - a - b * p.0).powi(2)).sum();
    let r2 = if syy > 0.0 { 1.0 - sse / syy } else { 1.0 };
    let interval = |estimate: f64, se: Option<f64>| match se {
        Some(half) => Interval {
            estimate,
            lo: Some(estimate - half),
            hi: Some(estimate + half),
        },
        None => Interval {
            estimate,
            lo: None,
            hi: None,
        },
    };
    let (se_b, se_a) = if n > 2 {
        let t = StudentsT::new(0.0, 1.0, nf - 2.0)
            .expect("positive degrees of freedom")
            .inverse_cdf(0.975);
        let s2 = sse / (nf - 2.0);
        let se_b = (s2 / sxx).sqrt();
        let se_a = (s2 * (1.0 / nf + mx * mx / sxx)).sqrt();
        (Some(t * se_b), Some(t * se_a))
    } else {
        (None, None)
    };
    Some(LinearFit {
        slope: interval(b, se_b),
        intercept: interval(a, se_a),
        n,
        r2,
        points: points.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a hand computation (the sums by hand in Python; t(0.975, 3 df) = 3.182446 from tables):
    /// x = 1..5, y = 2.1, 3.9, 6.2, 7.8, 10.1 gives slope 1.99 (standard error 0.059722), intercept 0.05.
    #[test]
    fn matches_a_hand_computation() {
        let pts = [(1.0, 2.1), (2.0, 3.9), (3.0, 6.2), (4.0, 7.8), (5.0, 10.1)];
        let f = fit_line(&pts).unwrap();
        assert!((f.slope.estimate - 1.99).abs() < 1e-9, "{f:?}");
        assert!((f.intercept.estimate - 0.05).abs() < 1e-9, "{f:?}");
        let half = f.slope.hi.unwrap() - f.slope.estimate;
        assert!((half - 3.182446 * 0.059722).abs() < 1e-4, "{f:?}");
        assert!(f.r2 > 0.99);
    }

    #[test]
    fn too_few_points() {
        assert!(fit_line(&[(1.0, 2.0)]).is_none());
        assert!(fit_line(&[(1.0, 2.0), (1.0, 3.0)]).is_none());
        let two = fit_line(&[(64.0, 240.0), (128.0, 600.0)]).unwrap();
        assert!((two.slope.estimate - 5.625).abs() < 1e-9);
        assert_eq!(two.slope.lo, None);
    }
}
