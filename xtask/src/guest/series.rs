//! Captures of one table taken before, during and after a scenario, turned into per-row series:
//! which rows grew at every step (the seed's advice: the type that grows monotonically is the
//! culprit), which grew most, which zones report failures.

use super::vmstat::Sample;
use serde::{Deserialize, Serialize};

/// One row's values of one column over the captures, in capture order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowSeries {
    pub name: String,
    pub values: Vec<u64>,
    /// Never fell, and ended higher than it started, over at least three captures.
    pub monotonic: bool,
}

impl RowSeries {
    pub fn growth(&self) -> i128 {
        match (self.values.first(), self.values.last()) {
            (Some(a), Some(b)) => *b as i128 - *a as i128,
            _ => 0,
        }
    }
}

/// The series of `column` for every row present in every capture.
pub fn series(captures: &[Sample], column: &str) -> Vec<RowSeries> {
    let Some(first) = captures.first() else {
        return Vec::new();
    };
    first
        .keys()
        .filter_map(|name| {
            let values: Option<Vec<u64>> = captures
                .iter()
                .map(|c| c.get(name)?.get(column).copied())
                .collect();
            let values = values?;
            let monotonic = values.len() >= 3
                && values.windows(2).all(|w| w[1] >= w[0])
                && values.last() > values.first();
            Some(RowSeries {
                name: name.clone(),
                values,
                monotonic,
            })
        })
        .collect()
}

/// The row that grew most (in `column`), if any grew.
pub fn grew_most(series: &[RowSeries]) -> Option<&RowSeries> {
    series
        .iter()
        .filter(|s| s.growth() > 0)
        .max_by_key(|s| (s.growth(), std::cmp::Reverse(s.name.clone())))
}

/// Rows of the last capture whose `column` (a failure count) is above zero, largest first.
pub fn failing(captures: &[Sample], column: &str) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = captures
        .last()
        .into_iter()
        .flatten()
        .filter_map(|(name, v)| Some((name.clone(), *v.get(column)?)))
        .filter(|(_, n)| *n > 0)
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn sample(rows: &[(&str, u64)]) -> Sample {
        rows.iter()
            .map(|(n, v)| (n.to_string(), BTreeMap::from([("used".to_string(), *v)])))
            .collect()
    }

    #[test]
    fn monotonic_rows_are_flagged_and_the_biggest_grower_named() {
        let caps = [
            sample(&[("a", 1), ("b", 5), ("c", 9)]),
            sample(&[("a", 2), ("b", 3), ("c", 9)]),
            sample(&[("a", 4), ("b", 50), ("c", 9)]),
        ];
        let s = series(&caps, "used");
        let flag = |n: &str| s.iter().find(|r| r.name == n).unwrap().monotonic;
        assert!(flag("a") && !flag("b") && !flag("c"));
        assert_eq!(grew_most(&s).unwrap().name, "b");
        assert!(series(&caps[..2], "used").iter().all(|r| !r.monotonic));
    }
}
