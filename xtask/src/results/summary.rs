//! `summary.json`: the run's facts, every cell in a line, and one table per scenario with its
//! measurements per RAM size and variant. Derived from the cells' records; written after every
//! cell and read back as the same type.

use super::info::RunInfo;
use crate::cell::CellRecord;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    #[serde(flatten)]
    pub run: RunInfo,
    /// Cells per verdict word.
    pub counts: BTreeMap<String, usize>,
    pub as_expected: usize,
    pub cells: Vec<CellLine>,
    /// Per scenario, one row per cell with every measurement: the numbers to compare across
    /// RAM sizes and variants.
    pub tables: BTreeMap<String, MeasurementTable>,
}

/// One cell of the run, in a line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellLine {
    pub id: String,
    pub image: String,
    pub ram_mib: u64,
    pub variant: String,
    pub scenario: String,
    pub verdict: String,
    pub expected: String,
    pub as_expected: bool,
    pub kernel: Option<String>,
    pub boot_s: Option<f64>,
    pub total_s: f64,
}

/// A scenario's measurements, a row per cell.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MeasurementTable {
    pub columns: Vec<String>,
    pub rows: Vec<MeasurementRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeasurementRow {
    pub cell: String,
    pub ram_mib: u64,
    pub variant: String,
    pub image: String,
    pub verdict: String,
    pub values: BTreeMap<String, f64>,
}

impl Summary {
    pub fn new(run: &RunInfo, records: &[CellRecord]) -> Summary {
        let mut counts = BTreeMap::new();
        for r in records {
            *counts.entry(r.verdict.word().to_string()).or_insert(0) += 1;
        }
        let cells = records
            .iter()
            .map(|r| CellLine {
                id: r.id.clone(),
                image: r.image.clone(),
                ram_mib: r.ram_mib,
                variant: r.variant.clone(),
                scenario: r.scenario.clone(),
                verdict: r.verdict.describe(),
                expected: expected_text(r),
                as_expected: r.as_expected,
                kernel: Some(r.provenance.version.clone()).filter(|v| !v.is_empty()),
                boot_s: r.timings.boot_s,
                total_s: r.timings.total_s,
            })
            .collect();
        Summary {
            run: run.clone(),
            counts,
            as_expected: records.iter().filter(|r| r.as_expected).count(),
            cells,
            tables: tables(records),
        }
    }
}

/// What the cell was expected to do: `pass`, `crash (Kernel panic)`.
pub fn expected_text(r: &CellRecord) -> String {
    let word = serde_json::to_value(r.expect)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match &r.expect_title {
        Some(t) => format!("{word} ({t})"),
        None => word,
    }
}

fn tables(records: &[CellRecord]) -> BTreeMap<String, MeasurementTable> {
    let mut out: BTreeMap<String, MeasurementTable> = BTreeMap::new();
    for r in records {
        for res in &r.results {
            let t = out.entry(res.scenario.clone()).or_default();
            let values: BTreeMap<String, f64> = res
                .measurements
                .iter()
                .map(|(k, m)| (format!("{k} [{}]", m.unit), m.value))
                .collect();
            for k in values.keys() {
                if !t.columns.contains(k) {
                    t.columns.push(k.clone());
                }
            }
            t.rows.push(MeasurementRow {
                cell: r.id.clone(),
                ram_mib: r.ram_mib,
                variant: r.variant.clone(),
                image: r.image.clone(),
                verdict: r.verdict.word().to_string(),
                values,
            });
        }
    }
    for t in out.values_mut() {
        t.rows.sort_by(|a, b| {
            (&a.image, &a.variant, a.ram_mib, &a.cell)
                .cmp(&(&b.image, &b.variant, b.ram_mib, &b.cell))
        });
    }
    out
}
