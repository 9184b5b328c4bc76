//! Results on disk: `results/<run-id>/` holds, per cell, `cells/<cell-id>/console.log`,
//! `qemu.stderr`, `qemu.cmd` and `result.json`; per run, `summary.json` and `junit.xml`. Every
//! file is written atomically, and `summary.json` is rewritten after each cell, so an
//! interrupted run keeps what it finished.

use crate::cell::CellRecord;
use crate::host;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub struct RunDir {
    pub root: PathBuf,
    pub id: String,
}

impl RunDir {
    /// Creates `results_root/<run-id>` and points `results_root/latest` at it.
    pub fn create(results_root: &Path) -> Result<RunDir> {
        Self::create_prefixed(results_root, "")
    }

    /// [`RunDir::create`] with the id starting with `prefix` (e.g. `sweep-`).
    pub fn create_prefixed(results_root: &Path, prefix: &str) -> Result<RunDir> {
        let id = format!(
            "{prefix}{}-{}",
            chrono::Local::now().format("%Y%m%d-%H%M%S"),
            std::process::id()
        );
        let root = results_root.join(&id);
        std::fs::create_dir_all(root.join("cells"))
            .with_context(|| format!("creating {}", root.display()))?;
        let latest = results_root.join("latest");
        let _ = std::fs::remove_file(&latest);
        let _ = std::os::unix::fs::symlink(&id, &latest);
        Ok(RunDir { root, id })
    }

    pub fn cell_dir(&self, cell_id: &str) -> PathBuf {
        self.root.join("cells").join(cell_id)
    }

    pub fn write_cell(&self, record: &CellRecord) -> Result<()> {
        let path = self.cell_dir(&record.id).join("result.json");
        host::write_atomic(&path, serde_json::to_string_pretty(record)?.as_bytes())
    }

    /// Writes `summary.json` and `junit.xml` for the cells finished so far.
    pub fn write_summary(&self, meta: &RunMeta, records: &[CellRecord]) -> Result<()> {
        let summary = Summary::new(meta, records);
        host::write_atomic(
            &self.root.join("summary.json"),
            serde_json::to_string_pretty(&summary)?.as_bytes(),
        )?;
        host::write_atomic(
            &self.root.join("junit.xml"),
            junit(meta, records)?.as_bytes(),
        )?;
        Ok(())
    }
}

/// Facts about the run as a whole.
#[derive(Debug, Clone, Serialize)]
pub struct RunMeta {
    pub run_id: String,
    pub suite: String,
    pub accel: String,
    pub accel_reason: String,
    pub profile: String,
    pub cells_planned: usize,
    pub complete: bool,
}

#[derive(Serialize)]
struct Summary<'a> {
    #[serde(flatten)]
    meta: &'a RunMeta,
    counts: BTreeMap<&'static str, usize>,
    as_expected: usize,
    cells: Vec<CellLine<'a>>,
    /// Per scenario, one row per cell with every measurement: the numbers to compare across
    /// RAM sizes and variants.
    tables: BTreeMap<String, Table>,
}

#[derive(Serialize)]
struct CellLine<'a> {
    id: &'a str,
    image: &'a str,
    ram_mib: u64,
    variant: &'a str,
    scenario: &'a str,
    verdict: String,
    expected: String,
    as_expected: bool,
    kernel: Option<&'a String>,
    boot_s: Option<f64>,
    total_s: f64,
}

#[derive(Serialize, Default)]
struct Table {
    columns: Vec<String>,
    rows: Vec<Row>,
}

#[derive(Serialize)]
struct Row {
    cell: String,
    ram_mib: u64,
    variant: String,
    image: String,
    verdict: String,
    values: BTreeMap<String, f64>,
}

impl<'a> Summary<'a> {
    fn new(meta: &'a RunMeta, records: &'a [CellRecord]) -> Self {
        let mut counts = BTreeMap::new();
        for r in records {
            *counts.entry(r.verdict.word()).or_insert(0) += 1;
        }
        let cells = records
            .iter()
            .map(|r| CellLine {
                id: &r.id,
                image: &r.image,
                ram_mib: r.ram_mib,
                variant: &r.variant,
                scenario: &r.scenario,
                verdict: r.verdict.describe(),
                expected: expected_text(r),
                as_expected: r.as_expected,
                kernel: Some(&r.provenance.version).filter(|v| !v.is_empty()),
                boot_s: r.timings.boot_s,
                total_s: r.timings.total_s,
            })
            .collect();
        Summary {
            meta,
            counts,
            as_expected: records.iter().filter(|r| r.as_expected).count(),
            cells,
            tables: tables(records),
        }
    }
}

pub(crate) fn expected_text(r: &CellRecord) -> String {
    let word = serde_json::to_value(r.expect)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    match &r.expect_title {
        Some(t) => format!("{word} ({t})"),
        None => word,
    }
}

fn tables(records: &[CellRecord]) -> BTreeMap<String, Table> {
    let mut out: BTreeMap<String, Table> = BTreeMap::new();
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
            t.rows.push(Row {
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

fn junit(meta: &RunMeta, records: &[CellRecord]) -> Result<String> {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let mut report = Report::new(format!("kstorm {}", meta.suite));
    let mut suite = TestSuite::new(meta.suite.clone());
    for r in records {
        let status = if r.as_expected {
            TestCaseStatus::success()
        } else if r.verdict.is_infra() {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
            s.set_message(r.verdict.describe());
            s
        } else {
            let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
            s.set_message(format!(
                "expected {}, got {}",
                expected_text(r),
                r.verdict.describe()
            ));
            s
        };
        let mut case = TestCase::new(r.id.clone(), status);
        case.set_classname(format!("{}.{}", meta.suite, r.image));
        case.set_time(std::time::Duration::from_secs_f64(r.timings.total_s));
        suite.add_test_case(case);
    }
    report.add_test_suite(suite);
    Ok(report.to_string()?)
}

/// The table printed at the end of a run.
pub fn table(records: &[CellRecord]) -> String {
    let header = [
        "cell", "kernel", "accel", "boot", "verdict", "expected", "ok",
    ];
    let rows: Vec<[String; 7]> = records
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                Some(r.provenance.version.clone())
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "-".into()),
                r.accel.to_string(),
                r.timings
                    .boot_s
                    .map(|b| format!("{b:.1}s"))
                    .unwrap_or_else(|| "-".into()),
                truncate(&r.verdict.describe(), 70),
                expected_text(r),
                if r.as_expected {
                    "yes".into()
                } else {
                    "NO".into()
                },
            ]
        })
        .collect();
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    let rows: Vec<Vec<String>> = rows.into_iter().map(Vec::from).collect();
    text_table(&header, &rows)
}

/// Left-aligned columns, two spaces apart.
pub(crate) fn text_table(header: &[String], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let fmt_row = |cells: &[String]| {
        let line: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        line.join("  ").trim_end().to_string()
    };
    let mut out = fmt_row(header);
    out.push('\n');
    for row in rows {
        out.push_str(&fmt_row(row));
        out.push('\n');
    }
    out
}

/// How many measurement columns a scenario's table shows on the terminal (summary.json has all).
const SHOWN_MEASUREMENTS: usize = 6;

/// One table per scenario: a row per cell (image, RAM, variant), its first measurements, and the
/// last progress count (the number reached when the kernel stopped, for hangs).
pub fn measurement_tables(records: &[CellRecord]) -> String {
    let mut by_scenario: BTreeMap<&str, Vec<&CellRecord>> = BTreeMap::new();
    for r in records {
        by_scenario.entry(&r.scenario).or_default().push(r);
    }
    let mut out = String::new();
    for (scenario, rows) in by_scenario {
        let mut columns: Vec<String> = Vec::new();
        for r in &rows {
            for res in &r.results {
                for (name, m) in &res.measurements {
                    let col = format!("{name} [{}]", m.unit);
                    let internal = name.starts_with("payload_") || name == "progress";
                    if !internal && !columns.contains(&col) && columns.len() < SHOWN_MEASUREMENTS {
                        columns.push(col);
                    }
                }
            }
        }
        let mut header: Vec<String> = ["cell", "verdict", "count"].map(String::from).to_vec();
        header.extend(columns.iter().cloned());
        let mut sorted = rows.clone();
        sorted.sort_by(|a, b| {
            (&a.image, &a.variant, a.ram_mib, &a.id).cmp(&(&b.image, &b.variant, b.ram_mib, &b.id))
        });
        let body: Vec<Vec<String>> =
            sorted
                .iter()
                .map(|r| {
                    let mut row = vec![
                        r.id.clone(),
                        r.verdict.word().to_string(),
                        r.last_progress
                            .map(|p| p.to_string())
                            .unwrap_or_else(|| "-".into()),
                    ];
                    for col in &columns {
                        let value = r.results.iter().flat_map(|res| &res.measurements).find_map(
                            |(name, m)| {
                                (format!("{name} [{}]", m.unit) == *col)
                                    .then(|| format_number(m.value))
                            },
                        );
                        row.push(value.unwrap_or_else(|| "-".into()));
                    }
                    row
                })
                .collect();
        out.push_str(&format!("\n{scenario}\n"));
        out.push_str(&text_table(&header, &body));
    }
    out
}

/// One line per leak decision that found memory not come back: the cell and its evidence.
pub fn leak_evidence(records: &[CellRecord]) -> Option<String> {
    let lines: Vec<String> = records
        .iter()
        .flat_map(|r| {
            r.results
                .iter()
                .flat_map(|res| res.evidence.iter().filter(|e| e.leaked))
                .map(|e| format!("{}: {}", r.id, e.summary()))
        })
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// With `--repeat`: per cell, min / median / max of the count reached over its repeats (how
/// stochastic the failure point is) and the verdicts seen.
pub fn repeat_stats(records: &[CellRecord]) -> Option<String> {
    let mut groups: BTreeMap<String, Vec<&CellRecord>> = BTreeMap::new();
    for r in records {
        let base =
            r.id.rsplit_once(".r")
                .filter(|(_, n)| n.parse::<u32>().is_ok())
                .map(|(b, _)| b)
                .unwrap_or(&r.id);
        groups.entry(base.to_string()).or_default().push(r);
    }
    if groups.values().all(|g| g.len() < 2) {
        return None;
    }
    let header = ["cell", "runs", "count min", "median", "max", "verdicts"]
        .map(String::from)
        .to_vec();
    let rows: Vec<Vec<String>> = groups
        .iter()
        .filter(|(_, g)| g.len() > 1)
        .map(|(id, g)| {
            let mut counts: Vec<u64> = g.iter().filter_map(|r| r.last_progress).collect();
            counts.sort_unstable();
            let pick = |i: usize| {
                counts
                    .get(i)
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into())
            };
            let mut verdicts: BTreeMap<&str, usize> = BTreeMap::new();
            for r in g {
                *verdicts.entry(r.verdict.word()).or_default() += 1;
            }
            let verdicts = verdicts
                .iter()
                .map(|(v, n)| format!("{v} x{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let median = if counts.is_empty() {
                "-".into()
            } else {
                pick(counts.len() / 2)
            };
            vec![
                id.clone(),
                g.len().to_string(),
                pick(0),
                median,
                counts
                    .last()
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                verdicts,
            ]
        })
        .collect();
    Some(text_table(&header, &rows))
}

fn format_number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(n - 3).collect::<String>())
    }
}
