//! `compare RUN_A RUN_B`: what changed from run A to run B.
//!
//! - crashes by title: new in B, and fixed (in A, not in B);
//! - verdict changes per cell (matched by id);
//! - numeric changes beyond noise: per cell (repeats pooled) and measurement, a two-sided
//!   Mann-Whitney U test over the repeats (statrs; exact for small samples without ties) at
//!   p < 0.05, with Cliff's delta as the effect size and the change of the medians.
//!
//! Worse (exit 1): a new crash, a cell that met its expectation in A and does not in B (infra
//! excepted: that is the host's), a count at failure (the last progress of a cell that did
//! not pass) significantly lower in B, or missing data: a cell of A that B lacks, or a B that
//! did not complete (`--allow-missing` accepts a deliberate subset). A gate never passes a run
//! that lost its cells.

use crate::cell::CellRecord;
use crate::detect::title::{same_crash, CrashTitles};
use crate::render::html::esc;
use crate::results::Run;
use crate::stats::median;
use crate::verdict::Verdict;
use anyhow::Result;
use serde::Serialize;
use statrs::stats_tests::mannwhitneyu::{mannwhitneyu, MannWhitneyUMethod};
use statrs::stats_tests::Alternative;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

/// Significance level of the numeric test.
const ALPHA: f64 = 0.05;
/// The name under which the count reached is compared.
const COUNT_AT_FAILURE: &str = "count at failure";

#[derive(Debug, Default, Serialize)]
pub struct Comparison {
    pub new_crashes: Vec<String>,
    pub fixed_crashes: Vec<String>,
    pub verdict_changes: Vec<VerdictChange>,
    pub numeric_changes: Vec<NumericChange>,
    /// Cells (without their repeat suffix) whose numbers could not be tested: fewer than two
    /// repeats on a side.
    pub untested: usize,
    pub only_in_a: Vec<String>,
    pub only_in_b: Vec<String>,
    /// `/proc/vmstat` deltas (Linux), per cell and counter that moved on either side.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vmstat: Vec<VmstatRow>,
    /// B's run did not finish (interrupted, or cells left unrun).
    #[serde(default)]
    pub b_incomplete: bool,
    /// Cells missing from B, and an incomplete B, are accepted (`--allow-missing`).
    #[serde(default)]
    pub allow_missing: bool,
}

/// One counter's growth over the scenarios of a cell: the median over repeats on each side.
#[derive(Debug, Serialize)]
pub struct VmstatRow {
    pub cell: String,
    pub counter: String,
    pub a: f64,
    pub b: f64,
}

#[derive(Debug, Serialize)]
pub struct VerdictChange {
    pub cell: String,
    pub a: String,
    pub b: String,
    pub worse: bool,
}

#[derive(Debug, Serialize)]
pub struct NumericChange {
    pub cell: String,
    pub measurement: String,
    pub median_a: f64,
    pub median_b: f64,
    pub n_a: usize,
    pub n_b: usize,
    pub p_value: f64,
    /// Cliff's delta of B against A: +1 when every B value exceeds every A value.
    pub cliffs_delta: f64,
    pub worse: bool,
}

impl Comparison {
    pub fn worse(&self) -> bool {
        self.missing_data()
            || !self.new_crashes.is_empty()
            || self.verdict_changes.iter().any(|c| c.worse)
            || self.numeric_changes.iter().any(|c| c.worse)
    }

    /// B lacks cells of A, or did not complete, and that was not allowed.
    pub fn missing_data(&self) -> bool {
        !self.allow_missing && (!self.only_in_a.is_empty() || self.b_incomplete)
    }
}

/// The `compare` verb: prints the comparison, writes `compare.json` and `compare.html` into B's
/// folder and renders B's report again; true when B is worse.
pub fn compare_verb(a: &Path, b: &Path, allow_missing: bool) -> Result<bool> {
    let c = compare_dirs(a, b, allow_missing)?;
    print!("{}", text(&c));
    crate::host::write_atomic(
        &b.join("compare.json"),
        serde_json::to_string_pretty(&c)?.as_bytes(),
    )?;
    crate::host::write_atomic(&b.join("compare.html"), html(&c, a).as_bytes())?;
    crate::render::html::write(b)?;
    Ok(c.worse())
}

/// Compares two run folders, each read back whole (a damaged file is an error naming it).
pub fn compare_dirs(a: &Path, b: &Path, allow_missing: bool) -> Result<Comparison> {
    let (ra, rb) = (Run::load(a)?, Run::load(b)?);
    let mut c = compare(&ra.records, &rb.records);
    c.b_incomplete = !rb.info.complete;
    c.allow_missing = allow_missing;
    Ok(c)
}

pub fn compare(a: &[CellRecord], b: &[CellRecord]) -> Comparison {
    // A crash is fixed only where B ran the cell again: a cell B lacks is missing data, listed
    // as such, and its crash is no fix.
    let a_in_b = in_cells_of(a, b);
    let (ca, cb) = (crashes(&a_in_b), crashes(b));
    let by_id = |rs: &[CellRecord]| -> BTreeMap<String, CellRecord> {
        rs.iter().map(|r| (r.id.clone(), r.clone())).collect()
    };
    let (ia, ib) = (by_id(a), by_id(b));
    let mut out = Comparison {
        new_crashes: unmatched(&cb, &ca),
        fixed_crashes: unmatched(&ca, &cb),
        only_in_a: ia
            .keys()
            .filter(|k| !ib.contains_key(*k))
            .cloned()
            .collect(),
        only_in_b: ib
            .keys()
            .filter(|k| !ia.contains_key(*k))
            .cloned()
            .collect(),
        ..Default::default()
    };
    for (id, ra) in &ia {
        let Some(rb) = ib.get(id) else { continue };
        if ra.verdict.describe() != rb.verdict.describe() {
            out.verdict_changes.push(VerdictChange {
                cell: id.clone(),
                a: ra.verdict.describe(),
                b: rb.verdict.describe(),
                worse: ra.as_expected && !rb.as_expected && !rb.verdict.is_infra(),
            });
        }
    }
    numeric(&samples(a), &samples(b), &mut out);
    out.vmstat = vmstat_rows(&a_in_b, &in_cells_of(b, a));
    out
}

/// The records of `these` whose cell (repeats pooled) the other run has too.
fn in_cells_of(these: &[CellRecord], other: &[CellRecord]) -> Vec<CellRecord> {
    let cells: BTreeSet<String> = other.iter().map(|r| base_id(&r.id)).collect();
    these
        .iter()
        .filter(|r| cells.contains(&base_id(&r.id)))
        .cloned()
        .collect()
}

/// The cell id without its repeat suffix (`.r2`): repeats pool.
pub fn base_id(id: &str) -> String {
    id.rsplit_once(".r")
        .filter(|(_, n)| n.parse::<u32>().is_ok())
        .map(|(b, _)| b)
        .unwrap_or(id)
        .to_string()
}

/// Per (cell, counter): the sum of a cell's scenario deltas, as one sample per repeat.
fn vmstat_samples(records: &[CellRecord]) -> BTreeMap<(String, String), Vec<f64>> {
    let mut out: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.verdict.is_infra()) {
        let mut sums: BTreeMap<&str, i64> = BTreeMap::new();
        for res in &r.results {
            for (name, d) in &res.vmstat {
                *sums.entry(name).or_default() += d;
            }
        }
        for (name, d) in sums {
            let key = (base_id(&r.id), name.to_string());
            out.entry(key).or_default().push(d as f64);
        }
    }
    out
}

fn vmstat_rows(a: &[CellRecord], b: &[CellRecord]) -> Vec<VmstatRow> {
    let (sa, sb) = (vmstat_samples(a), vmstat_samples(b));
    let keys: BTreeSet<&(String, String)> = sa.keys().chain(sb.keys()).collect();
    keys.into_iter()
        .map(|k| {
            let side =
                |s: &BTreeMap<(String, String), Vec<f64>>| s.get(k).map_or(0.0, |v| median(v));
            VmstatRow {
                cell: k.0.clone(),
                counter: k.1.clone(),
                a: side(&sa),
                b: side(&sb),
            }
        })
        .filter(|r| r.a != 0.0 || r.b != 0.0)
        .collect()
}

/// The vmstat table, mmtests style: counter, A, B, per cell.
pub fn vmstat_text(rows: &[VmstatRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "/proc/vmstat deltas (after minus before each scenario; median over repeats)\n",
    );
    let _ = writeln!(
        out,
        "{:<44} {:<28} {:>12} {:>12}",
        "cell", "counter", "A", "B"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<44} {:<28} {:>12} {:>12}",
            r.cell, r.counter, r.a, r.b
        );
    }
    out
}

/// The titles of the crashes in `these` that are no crash of `those`: a crash is new (or
/// fixed) when no crash of the other run is the same bug, by title or a shared alternative
/// title (`KASAN: ... Read in f` and `general protection fault in f` share `bad-access in f`).
fn unmatched(these: &[(String, Vec<String>)], those: &[(String, Vec<String>)]) -> Vec<String> {
    these
        .iter()
        .filter(|(t, alts)| {
            !those
                .iter()
                .any(|(u, ualts)| same_crash(CrashTitles::new(t, alts), CrashTitles::new(u, ualts)))
        })
        .map(|(t, _)| t.clone())
        .collect::<BTreeSet<String>>()
        .into_iter()
        .collect()
}

/// Every crash of a run: its title and, from the detector's report of it, its alternatives.
fn crashes(records: &[CellRecord]) -> Vec<(String, Vec<String>)> {
    records
        .iter()
        .filter_map(|r| match &r.verdict {
            Verdict::Crash { title, .. } => {
                let report = r.reports.iter().map(|rep| &rep.event);
                let alts = report
                    .into_iter()
                    .find(|e| e.crash && &e.title == title)
                    .map(|e| e.alt_titles.clone())
                    .unwrap_or_default();
                Some((title.clone(), alts))
            }
            _ => None,
        })
        .collect()
}

/// Per cell without its repeat suffix, per measurement: the values over repeats.
pub fn samples(records: &[CellRecord]) -> BTreeMap<(String, String), Vec<f64>> {
    let mut out: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.verdict.is_infra()) {
        let base = base_id(&r.id);
        for res in &r.results {
            for (name, m) in &res.measurements {
                let key = (base.clone(), format!("{name} [{}]", m.unit));
                out.entry(key).or_default().push(m.value);
            }
        }
        if let (false, Some(c)) = (matches!(r.verdict, Verdict::Pass), r.last_progress) {
            let key = (base.clone(), COUNT_AT_FAILURE.to_string());
            out.entry(key).or_default().push(c as f64);
        }
    }
    out
}

fn numeric(
    a: &BTreeMap<(String, String), Vec<f64>>,
    b: &BTreeMap<(String, String), Vec<f64>>,
    out: &mut Comparison,
) {
    for (key, xa) in a {
        let Some(xb) = b.get(key) else { continue };
        if xa.len() < 2 || xb.len() < 2 {
            out.untested += 1;
            continue;
        }
        let Ok((_, p)) = mannwhitneyu(xb, xa, MannWhitneyUMethod::Automatic, Alternative::TwoSided)
        else {
            continue;
        };
        if p >= ALPHA {
            continue;
        }
        let delta = cliffs_delta(xa, xb);
        out.numeric_changes.push(NumericChange {
            cell: key.0.clone(),
            measurement: key.1.clone(),
            median_a: median(xa),
            median_b: median(xb),
            n_a: xa.len(),
            n_b: xb.len(),
            p_value: p,
            cliffs_delta: delta,
            worse: key.1 == COUNT_AT_FAILURE && delta < 0.0,
        });
    }
}

/// P(B > A) - P(B < A) over all pairs.
pub fn cliffs_delta(a: &[f64], b: &[f64]) -> f64 {
    let mut score = 0i64;
    for x in a {
        for y in b {
            score += (y > x) as i64 - (y < x) as i64;
        }
    }
    score as f64 / (a.len() * b.len()) as f64
}

pub fn text(c: &Comparison) -> String {
    let mut out = String::new();
    let list = |out: &mut String, title: &str, items: &[String]| {
        if !items.is_empty() {
            let _ = writeln!(out, "{title}:");
            for i in items {
                let _ = writeln!(out, "  {i}");
            }
        }
    };
    list(&mut out, "new crashes", &c.new_crashes);
    list(&mut out, "fixed crashes", &c.fixed_crashes);
    for v in &c.verdict_changes {
        let mark = if v.worse { "WORSE" } else { "changed" };
        let _ = writeln!(out, "{mark} {}: {} -> {}", v.cell, v.a, v.b);
    }
    for n in &c.numeric_changes {
        let _ = writeln!(
            out,
            "{} {} {}: median {} -> {} (n {} / {}), Mann-Whitney U p = {:.3}, Cliff's delta {:+.2}",
            if n.worse { "WORSE" } else { "changed" },
            n.cell,
            n.measurement,
            n.median_a,
            n.median_b,
            n.n_a,
            n.n_b,
            n.p_value,
            n.cliffs_delta
        );
    }
    let missing = match c.allow_missing {
        true => "cells only in A (allowed: --allow-missing)",
        false => "MISSING: cells of A that B lacks",
    };
    list(&mut out, missing, &c.only_in_a);
    if c.b_incomplete {
        let _ = writeln!(
            out,
            "{}: B did not complete (interrupted, or cells left unrun)",
            if c.allow_missing { "note" } else { "MISSING" }
        );
    }
    list(&mut out, "cells only in B", &c.only_in_b);
    out.push_str(&vmstat_text(&c.vmstat));
    let _ = writeln!(
        out,
        "{} number(s) not tested (fewer than 2 repeats on a side; use --repeat)\n{}",
        c.untested,
        if c.worse() {
            "verdict: WORSE"
        } else {
            "verdict: not worse"
        }
    );
    out
}

/// The section for RUN_B's report.html.
pub fn html(c: &Comparison, a: &Path) -> String {
    format!(
        "<h2>Compared with {}</h2><p>{}</p><pre>{}</pre>",
        esc(&a.display().to_string()),
        if c.worse() {
            "<b>worse</b>"
        } else {
            "not worse"
        },
        esc(&text(c))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_under_another_title_of_the_same_bug_is_neither_new_nor_fixed() {
        let crash =
            |t: &str, alts: &[&str]| (t.to_string(), alts.iter().map(|a| a.to_string()).collect());
        let a = vec![crash(
            "KASAN: use-after-free Read in f",
            &["bad-access in f"],
        )];
        let b = vec![
            crash("general protection fault in f", &["bad-access in f"]),
            crash("WARNING in g", &[]),
        ];
        assert_eq!(unmatched(&b, &a), ["WARNING in g"]);
        assert!(unmatched(&a, &b).is_empty());
        // Old records carry no alternatives: the titles alone decide.
        let old = vec![crash("general protection fault in f", &[])];
        assert_eq!(unmatched(&old, &a), ["general protection fault in f"]);
    }

    fn record(id: &str, verdict: Verdict, oom_kills: i64) -> CellRecord {
        let mut cell = crate::session::accel::probe_cell().unwrap();
        cell.id = id.into();
        let mut r = CellRecord::unstarted(&cell, crate::qemu::Accel::Tcg, verdict);
        r.results = vec![serde_json::from_value(serde_json::json!({
            "scenario": "oom", "index": 0, "outcome": "pass", "vmstat": {"oom_kill": oom_kills}
        }))
        .unwrap()];
        r
    }

    #[test]
    fn a_cell_b_lacks_is_missing_not_fixed_and_has_no_vmstat_row() {
        let panic = Verdict::Crash {
            kind: crate::detect::Kind::Panic,
            title: "kernel panic: sysrq triggered crash".into(),
        };
        let a = vec![
            record("panic@linux-128M-base", panic.clone(), 0),
            record("oom@linux-128M-base", Verdict::Pass, 1),
            record("smoke@linux-128M-base", Verdict::Pass, 2),
        ];
        let b = vec![record("smoke@linux-128M-base", Verdict::Pass, 3)];
        let c = compare(&a, &b);
        assert!(c.fixed_crashes.is_empty(), "{c:?}");
        assert_eq!(
            c.only_in_a,
            ["oom@linux-128M-base", "panic@linux-128M-base"]
        );
        let rows: Vec<_> = c
            .vmstat
            .iter()
            .map(|r| (r.cell.as_str(), r.a, r.b))
            .collect();
        assert_eq!(rows, [("smoke@linux-128M-base", 2.0, 3.0)]);
        assert!(c.worse());
        // Where B ran the cell and it no longer crashed, the crash is fixed.
        let b = vec![record("panic@linux-128M-base", Verdict::Pass, 0)];
        assert_eq!(
            compare(&a[..1], &b).fixed_crashes,
            ["kernel panic: sysrq triggered crash"]
        );
    }

    #[test]
    fn cliffs_delta_extremes() {
        assert_eq!(cliffs_delta(&[1.0, 2.0], &[3.0, 4.0]), 1.0);
        assert_eq!(cliffs_delta(&[3.0, 4.0], &[1.0, 2.0]), -1.0);
        assert_eq!(cliffs_delta(&[1.0, 2.0], &[1.0, 2.0]), 0.0);
    }
}
