//! `ab --kernel A --kernel B --suite S [--repeat N]`: the suite on two kernels in one session,
//! interleaved (A, B, A, B, ... per cell and repeat) so host drift hits both alike, then the
//! table kernel people read in mmtests' compare-kernels: one row per measurement with A's
//! median and spread, B's median and its difference in %, a mark where the difference is
//! significant (Welch's t over the repeats, Holm-corrected across the table), a geometric-mean
//! row and the cells' wall times; plus the `compare` verdicts (crashes, verdict changes,
//! missing cells) and `/proc/vmstat` deltas. Written as `compare.json` and a section of B's
//! `report.html`; worse (exit 1) when `compare` says so or B is significantly worse on a
//! measurement the suite lists under `gates:`.

use super::compare::{self, Comparison};
use super::run::RunOptions;
use crate::cell::CellRecord;
use crate::config::{Catalog, Gate, Name, Worse};
use crate::error::UsageError;
use crate::host;
use crate::images;
use crate::matrix::{self, Cell};
use crate::render::{self, html::esc, text::format_number};
use crate::results::{RunInfo, Store};
use crate::session::Session;
use crate::stats::{difference, median};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Family-wise significance level of the table's marks.
const ALPHA: f64 = 0.05;

pub struct AbOptions {
    pub kernels: [PathBuf; 2],
    /// Suite, selection (`--repeat`), session, results folder.
    pub run: RunOptions,
}

#[derive(Debug, Serialize)]
pub struct Side {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub cell: String,
    pub measurement: String,
    pub a: Side,
    pub b: Side,
    /// (B - A) / A in percent (None when A's median is 0).
    pub diff_pct: Option<f64>,
    pub p: Option<f64>,
    pub significant: bool,
    /// The suite's gate on this row, and whether B is significantly worse on it.
    pub gate: Option<Worse>,
    pub gate_worse: bool,
}

#[derive(Debug, Serialize)]
pub struct Table {
    pub kernels: [String; 2],
    pub rows: Vec<Row>,
    /// Geometric mean of B/A medians over the rows with positive medians.
    pub geomean_ratio: Option<f64>,
    /// Per cell: wall time in seconds (QEMU start to QEMU gone).
    pub wall: Vec<Row>,
    pub comparison: Comparison,
}

impl Table {
    pub fn worse(&self) -> bool {
        self.comparison.worse() || self.rows.iter().any(|r| r.gate_worse)
    }
}

pub fn ab(opts: &AbOptions) -> Result<Table> {
    let catalog = Catalog::load(&host::workspace_root())?;
    let suite = catalog.resolve_suite(&opts.run.suite)?;
    if opts.run.selection.repeat == 0 {
        return Err(UsageError::option("--repeat", "must be at least 1").into());
    }
    let cells = matrix::expand(&suite, &catalog, &opts.run.selection)?;
    let a = side(cells.clone(), &opts.kernels[0], "a")?;
    let b = side(cells, &opts.kernels[1], "b")?;
    let root = opts.run.results_root.join(format!(
        "ab-{}-{}",
        chrono::Local::now().format("%Y%m%d-%H%M%S"),
        std::process::id()
    ));
    let store = |dir: &str, n: usize| {
        let mut info = RunInfo::new("ab", &suite.name.0, std::env::args().skip(1).collect());
        info.cells_planned = n;
        Store::create_at(&root.join(dir), info)
    };
    let all: Vec<Cell> = a.iter().chain(&b).cloned().collect();
    let session = Session::prepare(&all, opts.run.session.clone())?;
    let (sa, sb) = (store("a", a.len())?, store("b", b.len())?);
    session.stamp(&sa)?;
    session.stamp(&sb)?;
    eprintln!(
        "kstorm: ab: {} cells per kernel, interleaved, results in {}",
        a.len(),
        root.display()
    );
    for (ca, cb) in a.into_iter().zip(b) {
        if crate::qemu::interrupted() {
            break;
        }
        session.run(vec![ca], &sa);
        session.run(vec![cb], &sb);
    }
    for s in [&sa, &sb] {
        let complete = !crate::qemu::interrupted() && s.records().len() == s.info().cells_planned;
        s.finish(complete)?;
    }
    let mut comparison = compare::compare(&sa.records(), &sb.records());
    comparison.b_incomplete = !sb.info().complete;
    let kernels = opts.kernels.clone().map(|k| k.display().to_string());
    let t = table(
        kernels,
        &sa.records(),
        &sb.records(),
        &suite.gates,
        comparison,
    );
    for dir in [&root, &sb.root().to_path_buf()] {
        host::write_atomic(
            &dir.join("compare.json"),
            serde_json::to_string_pretty(&t)?.as_bytes(),
        )?;
    }
    host::write_atomic(&sb.root().join("compare.html"), html(&t).as_bytes())?;
    for s in [&sa, &sb] {
        if let Err(e) = render::html::write(s.root()) {
            eprintln!("kstorm: writing report.html: {e:#}");
        }
    }
    println!("{}", text(&t));
    println!(
        "ab results in {} (B's report.html has the table)",
        root.display()
    );
    Ok(t)
}

/// The suite's cells on one kernel; the image renamed `NAME+a` / `NAME+b` so the session
/// prepares each kernel apart (cell ids stay the same on both sides, to be matched).
fn side(cells: Vec<Cell>, kernel: &Path, tag: &str) -> Result<Vec<Cell>, UsageError> {
    let mut cells = images::local::apply(cells, Some(kernel))?;
    for c in &mut cells {
        c.image.name = Name(format!("{}+{tag}", c.image.name));
    }
    Ok(cells)
}

fn summary(x: &[f64]) -> Side {
    Side {
        median: median(x),
        min: x.iter().copied().fold(f64::INFINITY, f64::min),
        max: x.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        n: x.len(),
    }
}

/// The rows (measurements both sides have), marked after the Holm correction.
pub fn table(
    kernels: [String; 2],
    a: &[CellRecord],
    b: &[CellRecord],
    gates: &[Gate],
    comparison: Comparison,
) -> Table {
    let measured = rows(&compare::samples(a), &compare::samples(b), gates);
    let ratios: Vec<f64> = measured
        .iter()
        .filter(|r| r.a.median > 0.0 && r.b.median > 0.0)
        .map(|r| r.b.median / r.a.median)
        .collect();
    Table {
        kernels,
        geomean_ratio: difference::geometric_mean(&ratios),
        wall: rows(&walls(a), &walls(b), &[]),
        rows: measured,
        comparison,
    }
}

fn walls(records: &[CellRecord]) -> BTreeMap<(String, String), Vec<f64>> {
    let mut out: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.verdict.is_infra()) {
        let key = (compare::base_id(&r.id), "wall [s]".to_string());
        out.entry(key).or_default().push(r.timings.total_s);
    }
    out
}

fn rows(
    a: &BTreeMap<(String, String), Vec<f64>>,
    b: &BTreeMap<(String, String), Vec<f64>>,
    gates: &[Gate],
) -> Vec<Row> {
    let mut rows: Vec<Row> = a
        .iter()
        .filter_map(|(key, xa)| {
            let xb = b.get(key)?;
            let (sa, sb) = (summary(xa), summary(xb));
            Some(Row {
                cell: key.0.clone(),
                measurement: key.1.clone(),
                diff_pct: (sa.median != 0.0)
                    .then(|| (sb.median - sa.median) / sa.median.abs() * 100.0),
                p: difference::welch_p(xa, xb),
                gate: gate_of(gates, &key.0, &key.1),
                a: sa,
                b: sb,
                significant: false,
                gate_worse: false,
            })
        })
        .collect();
    let tested: Vec<usize> = (0..rows.len()).filter(|&i| rows[i].p.is_some()).collect();
    let ps: Vec<f64> = tested.iter().map(|&i| rows[i].p.unwrap_or(1.0)).collect();
    for (k, sig) in difference::holm(&ps, ALPHA).into_iter().enumerate() {
        let r = &mut rows[tested[k]];
        r.significant = sig;
        r.gate_worse = sig
            && match r.gate {
                Some(Worse::Lower) => r.b.median < r.a.median,
                Some(Worse::Higher) => r.b.median > r.a.median,
                None => false,
            };
    }
    rows
}

/// The gate on measurement `name [unit]` of `cell` (`case@image-...`), if the suite has one.
fn gate_of(gates: &[Gate], cell: &str, measurement: &str) -> Option<Worse> {
    let case = cell.split('@').next().unwrap_or_default();
    let name = measurement.split(" [").next().unwrap_or_default();
    gates
        .iter()
        .find(|g| g.measurement == name && g.case.as_ref().is_none_or(|c| c.as_str() == case))
        .map(|g| g.worse)
}

fn row_line(out: &mut String, r: &Row) {
    let side = |s: &Side| {
        format!(
            "{} ({}-{})",
            format_number(s.median),
            format_number(s.min),
            format_number(s.max)
        )
    };
    let diff = r.diff_pct.map_or("-".into(), |d| format!("{d:+.2}%"));
    let mark = match (r.significant, r.gate_worse, r.gate.is_some()) {
        (_, true, _) => "* WORSE (gate)",
        (true, _, _) => "*",
        (false, _, true) => "  (gate)",
        _ => "",
    };
    let _ = writeln!(
        out,
        "{:<40} {:<28} {:>26} {:>26} {:>9} {mark}",
        r.cell,
        r.measurement,
        side(&r.a),
        side(&r.b),
        diff
    );
}

/// The terminal table, then `compare`'s verdicts.
pub fn text(t: &Table) -> String {
    let mut out = format!(
        "A: {}\nB: {}\nmedian (min-max) over repeats; * = significant (Welch's t, Holm-corrected, \
         5% for the table)\n",
        t.kernels[0], t.kernels[1]
    );
    let _ = writeln!(
        out,
        "{:<40} {:<28} {:>26} {:>26} {:>9}",
        "cell", "measurement", "A", "B", "B vs A"
    );
    for r in &t.rows {
        row_line(&mut out, r);
    }
    let gm = t
        .geomean_ratio
        .map_or("-".into(), |g| format!("{:+.2}%", (g - 1.0) * 100.0));
    let _ = writeln!(
        out,
        "{:<40} {:<28} {:>26} {:>26} {gm:>9}",
        "geometric mean", "B/A", "", ""
    );
    let _ = writeln!(out, "wall time per cell:");
    for r in &t.wall {
        row_line(&mut out, r);
    }
    out.push_str(&compare::text(&t.comparison));
    let _ = writeln!(
        out,
        "ab verdict: {}",
        if t.worse() { "WORSE" } else { "not worse" }
    );
    out
}

/// The section of B's report.html.
pub fn html(t: &Table) -> String {
    format!(
        "<h2>A/B: {} against {}</h2><p>{}</p><pre>{}</pre>",
        esc(&t.kernels[1]),
        esc(&t.kernels[0]),
        if t.worse() {
            "<b>worse</b>"
        } else {
            "not worse"
        },
        esc(&text(t))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(m: &str) -> (String, String) {
        ("fork-hold@linux-128M-base".into(), m.into())
    }

    /// Twenty noisy measurements drawn alike on both sides mark nothing (the correction at
    /// work); a measurement that fell far on B is marked, and worse where a gate says lower is.
    #[test]
    fn marks_only_real_differences_and_gates_them() {
        use rand::{rngs::StdRng, RngExt, SeedableRng};
        let mut rng = StdRng::seed_from_u64(3);
        let mut noisy = |mean: f64| -> Vec<f64> {
            (0..5)
                .map(|_| mean * (1.0 + 0.1 * (rng.random::<f64>() - 0.5)))
                .collect()
        };
        let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
        for i in 0..20 {
            a.insert(key(&format!("m{i:02} [count]")), noisy(100.0));
            b.insert(key(&format!("m{i:02} [count]")), noisy(100.0));
        }
        a.insert(key("fork_rate [1/s]"), noisy(100.0));
        b.insert(key("fork_rate [1/s]"), noisy(50.0));
        let gates = vec![Gate {
            measurement: "fork_rate".into(),
            case: Some(Name("fork-hold".into())),
            worse: Worse::Lower,
        }];
        let rows = rows(&a, &b, &gates);
        let marked: Vec<&str> = rows
            .iter()
            .filter(|r| r.significant)
            .map(|r| r.measurement.as_str())
            .collect();
        assert_eq!(marked, ["fork_rate [1/s]"]);
        let fr = rows
            .iter()
            .find(|r| r.measurement.starts_with("fork_rate"))
            .unwrap();
        assert!(
            fr.gate_worse && (fr.diff_pct.unwrap() + 50.0).abs() < 10.0,
            "{fr:?}"
        );
        let same = super::rows(&a, &a, &gates);
        assert!(same.iter().all(|r| !r.significant && !r.gate_worse));
    }
}
