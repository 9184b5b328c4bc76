//! Summary statistics over latency samples (pure functions, shared with the harness).

use serde::{Deserialize, Serialize};

/// The nearest-rank percentile `p` (0 < p <= 100) of `sorted` (ascending). `None` when empty.
///
/// Nearest rank keeps every reported value one that was actually measured, which matters for
/// p99 of a few dozen samples: it is then the maximum, not an interpolation past it.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() || !(p > 0.0 && p <= 100.0) {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Count, min, p50, p99, max and mean of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Summarises `samples` (any order; NaNs are dropped). `None` when nothing is left.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.partial_cmp(b).expect("NaNs were dropped"));
    let n = v.len();
    Some(Summary {
        n,
        min: v[0],
        p50: percentile(&v, 50.0)?,
        p99: percentile(&v, 99.0)?,
        max: v[n - 1],
        mean: v.iter().sum::<f64>() / n as f64,
    })
}

/// Keeps at most `max` points of a time series by dropping every other point until it fits,
/// always keeping the last one (the state at the end matters most).
pub fn decimate(points: &mut Vec<(f64, f64)>, max: usize) {
    let max = max.max(2);
    while points.len() > max {
        let last = *points.last().expect("non-empty");
        let kept: Vec<(f64, f64)> = points.iter().copied().step_by(2).collect();
        *points = kept;
        if points.last() != Some(&last) {
            points.push(last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 1.0), Some(1.0));
        let small = [3.0, 7.0, 9.0];
        assert_eq!(percentile(&small, 50.0), Some(7.0));
        // p99 of a few samples is the largest one measured, never past it.
        assert_eq!(percentile(&small, 99.0), Some(9.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&small, 0.0), None);
    }

    #[test]
    fn summary_of_unsorted_sample() {
        let s = summarize(&[5.0, 1.0, f64::NAN, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!(s.n, 5);
        assert_eq!((s.min, s.p50, s.p99, s.max), (1.0, 3.0, 5.0, 5.0));
        assert!((s.mean - 3.0).abs() < 1e-12);
        assert!(summarize(&[f64::NAN]).is_none());
    }

    #[test]
    fn decimation_keeps_bounds_and_last_point() {
        let mut pts: Vec<(f64, f64)> = (0..1001).map(|i| (i as f64, i as f64 * 2.0)).collect();
        decimate(&mut pts, 300);
        assert!(pts.len() <= 300, "{}", pts.len());
        assert_eq!(pts[0], (0.0, 0.0));
        assert_eq!(*pts.last().unwrap(), (1000.0, 2000.0));
        assert!(pts.windows(2).all(|w| w[0].0 < w[1].0));
    }
}
