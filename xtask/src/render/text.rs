//! What the verbs print on the terminal: the verdict table, a table per scenario, leak
//! evidence, repeat statistics and a sweep's breaking points.

use crate::cell::CellRecord;
use crate::results::summary::expected_text;
use crate::results::sweep::SweepFile;
use crate::stats::breaking_point::Estimate;
use std::collections::BTreeMap;

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
pub fn text_table(header: &[String], rows: &[Vec<String>]) -> String {
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

/// A measurement as the tables print it: integers whole, large values to 0.1, small to 0.001.
pub fn format_number(v: f64) -> String {
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

/// The terminal table: one line per group, then the line fitted against `--over`.
pub fn sweep_table(file: &SweepFile) -> String {
    let axis = file
        .axis
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_else(|| format!("param:{}", file.param));
    let harder = match file.harder {
        crate::stats::breaking_point::Harder::Higher => "higher",
        crate::stats::breaking_point::Harder::Lower => "lower",
    };
    let over_name = file.over.as_ref().map(|o| o.axis.label().to_string());
    let mut out = format!(
        "breaking point of {} in {} along {axis} ({harder} values are harder)\n",
        file.case, file.suite
    );
    out.push_str(&format!(
        "{:<12} {:>6} {:<14} {:>10} {:<9} {:>5} {:>12} {:>25}  stopped\n",
        "image",
        "RAM",
        "variant",
        over_name.as_deref().unwrap_or(""),
        "mode",
        "cells",
        "estimate",
        "95% interval"
    ));
    for g in &file.groups {
        let (mode, estimate, interval) = describe(&g.estimate);
        let over = g.over.map(|v| over_value(file, v)).unwrap_or_default();
        let ram = match file.axis {
            Some(crate::matrix::axis::Axis::Ram) => "swept".to_string(),
            _ => format!("{}M", g.ram_mib),
        };
        out.push_str(&format!(
            "{:<12} {:>6} {:<14} {:>10} {:<9} {:>5} {:>12} {:>25}  {}\n",
            g.image,
            ram,
            g.variant,
            over,
            mode,
            g.cells.len(),
            estimate,
            interval,
            g.stopped
        ));
        out.push_str(&reported_line(g));
        out.push_str(&edge_line(file, g));
    }
    if let Some(over) = &file.over {
        out.push_str(&over_line(over));
    }
    out.push_str(&format!(
        "counting: {}\nsurvival: {}\n",
        file.methods.counting, file.methods.survival
    ));
    out
}

fn over_value(file: &SweepFile, v: f64) -> String {
    axis_value(file.over.as_ref().map(|o| &o.axis), v)
}

/// A value of an axis as a user writes it: RAM in whole MiB with `M`, the others as they are.
fn axis_value(axis: Option<&crate::matrix::axis::Axis>, v: f64) -> String {
    match axis {
        Some(crate::matrix::axis::Axis::Ram) => format!("{v:.0}M"),
        _ => format!("{v}"),
    }
}

/// A sharp edge (every survival on one side of every failure) in words: the last value that
/// survived is the answer a user asks for ("the least RAM at which it runs"), and the two
/// values are as close as the search could bring them (`cells` tried).
fn edge_line(file: &SweepFile, g: &crate::results::sweep::Group) -> String {
    let Estimate::Survival {
        fit:
            crate::stats::SurvivalFit::Separated {
                last_survived: Some(s),
                first_failed: Some(f),
            },
    } = &g.estimate
    else {
        return String::new();
    };
    let label = file
        .axis
        .as_ref()
        .map_or(file.param.as_str(), |a| a.label());
    let (s, f) = (
        axis_value(file.axis.as_ref(), *s),
        axis_value(file.axis.as_ref(), *f),
    );
    let (most, harder) = match file.harder {
        crate::stats::breaking_point::Harder::Lower => ("least", "below"),
        crate::stats::breaking_point::Harder::Higher => ("most", "above"),
    };
    format!(
        "  answer: the {most} {label} at which {} survived: {s}; it failed at {f} \
         and {harder} (a sharp edge: no value gave both outcomes in {} cells)\n",
        file.case,
        g.cells.len()
    )
}

/// For a sysctl or tunable axis: what the kernel reported back against what was asked.
fn reported_line(g: &crate::results::sweep::Group) -> String {
    let pairs: Vec<String> = g
        .cells
        .iter()
        .filter_map(|c| {
            let r = c.reported.as_ref()?;
            Some(format!("{} -> {r}", c.observation.value))
        })
        .collect();
    if pairs.is_empty() {
        return String::new();
    }
    format!("  asked -> reported by the kernel: {}\n", pairs.join(", "))
}

pub fn over_line(over: &crate::results::sweep::Over) -> String {
    let Some(fit) = &over.fit else {
        return format!(
            "against {}: fewer than two groups with a breaking point, no line\n",
            over.axis
        );
    };
    let ends = |i: &crate::stats::Interval| match (i.lo, i.hi) {
        (Some(lo), Some(hi)) => format!("{:.4} (95% {lo:.4} to {hi:.4})", i.estimate),
        _ => format!("{:.4} (interval open: {} points)", i.estimate, fit.n),
    };
    format!(
        "against {}: breaking point = slope {} x {} + intercept {}; r2 {:.4}, {} points\n",
        over.axis,
        ends(&fit.slope),
        over.axis.label(),
        ends(&fit.intercept),
        fit.r2,
        fit.n
    )
}

/// (mode, estimate, interval) as short texts.
pub fn describe(e: &Estimate) -> (&'static str, String, String) {
    let end = |v: Option<f64>| {
        v.map(|v| format!("{v:.0}"))
            .unwrap_or_else(|| "open".into())
    };
    match e {
        Estimate::Counting { median, .. } => (
            "counting",
            format!("{:.0}", median.estimate),
            format!("{} - {}", end(median.lo), end(median.hi)),
        ),
        Estimate::Survival {
            fit: crate::stats::SurvivalFit::Logistic { x50, .. },
        } => (
            "survival",
            format!("{:.1}", x50.estimate),
            format!("{} - {}", end(x50.lo), end(x50.hi)),
        ),
        Estimate::Survival {
            fit:
                crate::stats::SurvivalFit::Separated {
                    last_survived,
                    first_failed,
                },
        } => (
            "survival",
            "-".into(),
            format!(
                "survived {}, failed {}",
                end(*last_survived),
                end(*first_failed)
            ),
        ),
        Estimate::None => ("-", "-".into(), "-".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A RAM sweep of smoke whose cells split at 85M/86M, as `sweep.json` holds it.
    fn ram_sweep(estimate: serde_json::Value) -> SweepFile {
        serde_json::from_value(serde_json::json!({
            "suite": "default", "case": "smoke", "param": "ram", "axis": {"kind": "ram"},
            "harder": "lower", "seed": 1,
            "methods": {"counting": "c", "survival": "s"},
            "groups": [{"image": "linux", "ram_mib": 128, "variant": "base", "mode": "survival",
                "cells": [
                    {"cell": "a", "verdict": "pass", "value": 86.0, "survived": true},
                    {"cell": "b", "verdict": "crash", "value": 85.0, "survived": false}],
                "estimate": estimate, "stopped": "cell cap"}]
        }))
        .unwrap()
    }

    #[test]
    fn a_sharp_edge_is_answered_in_words() {
        let file = ram_sweep(serde_json::json!(
            {"mode": "survival", "fit": {"fit": "separated", "last_survived": 86.0, "first_failed": 85.0}}
        ));
        let text = sweep_table(&file);
        assert!(
            text.contains("answer: the least ram at which smoke survived: 86M; it failed at 85M"),
            "{text}"
        );
        // A fitted transition has its interval in the table and no edge line.
        let file = ram_sweep(
            serde_json::json!({"mode": "survival", "fit": {"fit": "logistic",
            "x50": {"estimate": 85.5, "lo": 84.0, "hi": 87.0}, "slope": 2.0}}),
        );
        let text = sweep_table(&file);
        assert!(
            !text.contains("answer:") && text.contains("84 - 87"),
            "{text}"
        );
    }
}
