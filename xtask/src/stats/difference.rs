//! Whether two sets of repeats differ, for `ab`'s table: Welch's t-test per measurement, the
//! Holm correction across the table's rows (so a table of twenty noisy measurements of the
//! same kernel marks none by chance, at 5% for the whole table), and the geometric mean of
//! the B/A ratios for the summary row.

use statrs::distribution::{ContinuousCDF, StudentsT};

fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, v)
}

/// Two-sided p of Welch's t-test; None with fewer than two values on a side. Two constant
/// sides are certain: p 1 when equal, 0 when not (a count that moved with no noise moved).
pub fn welch_p(a: &[f64], b: &[f64]) -> Option<f64> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    let (sa, sb) = (va / a.len() as f64, vb / b.len() as f64);
    let se2 = sa + sb;
    if se2 <= 0.0 {
        return Some(if ma == mb { 1.0 } else { 0.0 });
    }
    let t = (ma - mb) / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (a.len() as f64 - 1.0) + sb * sb / (b.len() as f64 - 1.0));
    let dist = StudentsT::new(0.0, 1.0, df).ok()?;
    Some((2.0 * (1.0 - dist.cdf(t.abs()))).clamp(0.0, 1.0))
}

/// Holm's step-down correction: which of `ps` are significant at family-wise level `alpha`.
pub fn holm(ps: &[f64], alpha: f64) -> Vec<bool> {
    let mut order: Vec<usize> = (0..ps.len()).collect();
    order.sort_by(|&i, &j| ps[i].total_cmp(&ps[j]));
    let mut out = vec![false; ps.len()];
    let m = ps.len();
    for (rank, &i) in order.iter().enumerate() {
        if ps[i] > alpha / (m - rank) as f64 {
            break;
        }
        out[i] = true;
    }
    out
}

/// The geometric mean of positive ratios (None when there are none).
pub fn geometric_mean(ratios: &[f64]) -> Option<f64> {
    let logs: Vec<f64> = ratios
        .iter()
        .filter(|r| r.is_finite() && **r > 0.0)
        .map(|r| r.ln())
        .collect();
    (!logs.is_empty()).then(|| (logs.iter().sum::<f64>() / logs.len() as f64).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against a hand computation: a = 1..5, b = 3..7 gives t = -2, df = 8,
    /// p = 2 * (1 - T8(2)) = 0.080516 (tables of Student's t).
    #[test]
    fn welch_matches_a_hand_computation() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0];
        let b = [3.0, 4.0, 5.0, 6.0, 7.0];
        let p = welch_p(&a, &b).unwrap();
        assert!((p - 0.080516).abs() < 1e-4, "{p}");
        assert_eq!(welch_p(&[2.0, 2.0], &[2.0, 2.0]), Some(1.0));
        assert_eq!(welch_p(&[2.0, 2.0], &[3.0, 3.0]), Some(0.0));
        assert_eq!(welch_p(&[2.0], &[3.0, 3.0]), None);
    }

    #[test]
    fn holm_steps_down() {
        assert_eq!(holm(&[0.01, 0.04, 0.03], 0.05), [true, false, false]);
        assert_eq!(holm(&[0.001, 0.02, 0.04], 0.05), [true, true, true]);
        assert_eq!(holm(&[0.2, 0.5], 0.05), [false, false]);
    }

    #[test]
    fn geometric_mean_of_ratios() {
        let g = geometric_mean(&[2.0, 0.5, 1.0]).unwrap();
        assert!((g - 1.0).abs() < 1e-12);
        assert_eq!(geometric_mean(&[0.0, f64::NAN]), None);
    }
}
