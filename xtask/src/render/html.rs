//! `report.html`: one self-contained file per run (no network needed to open it): the verdict
//! matrix, per-scenario plots, sweep curves, the comparison with another run, the environment.
//! Plots are SVG drawn by plotters and embedded inline.

use crate::cell::CellRecord;
use crate::host;
use crate::results::sweep::{SweepFile, SWEEP_FILE};
use crate::results::{Run, RunInfo};
use crate::stats::breaking_point::{Estimate, Mode};
use anyhow::{anyhow, Result};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// Console lines shown around a crash or at the end of a hang.
const EXCERPT_LINES: usize = 40;
/// Measurements plotted per scenario (summary.json has them all).
const PLOTTED_MEASUREMENTS: usize = 6;

/// Reads the run folder back and writes its `report.html` (a damaged file stops it, named).
pub fn write(run_dir: &Path) -> Result<()> {
    let run = Run::load(run_dir)?;
    host::write_atomic(&run_dir.join("report.html"), render(&run)?.as_bytes())
}

pub fn render(run: &Run) -> Result<String> {
    let records = &run.records;
    let mut body = String::new();
    let title = format!("kstorm {} {}", run.info.suite, run.info.run_id);
    writeln!(body, "<h1>{}</h1>", esc(&title))?;
    let sweep = run.optional_json::<SweepFile>(SWEEP_FILE)?;
    body.push_str(&match &sweep {
        Some(file) => sweep_headline(file, records),
        None => headline(&run.info, records),
    });
    if let Ok(text) = std::fs::read_to_string(run.root.join("compare.html")) {
        body.push_str(&text);
    }
    if let Some(file) = &sweep {
        body.push_str(&sweep_section(file)?);
    }
    body.push_str(&matrix(records));
    body.push_str(&scenario_plots(records, sweep.as_ref())?);
    body.push_str(&environment(&run.info, records));
    body.push_str(&cell_details(&run.root, records));
    Ok(format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title>\
         <style>{STYLE}</style></head><body>{body}</body></html>\n",
        esc(&title)
    ))
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:3px 8px;\
font-size:13px;text-align:left}th{background:#eee}.pass{background:#c8f0c8}.fail{background:#ffe08a}\
.crash{background:#ff9a9a}.hang{background:#f7b7e8}.oom{background:#ffc38a}.timeout{background:#d8c8ff}\
.infra{background:#ccc}.notok{outline:2px solid #c00}pre{background:#f6f6f6;padding:.5em;\
font-size:12px;overflow-x:auto;max-height:30em}a{color:#036}svg{display:block;margin:.3em 0}\
.plots{display:flex;flex-wrap:wrap;gap:1em}";

pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn headline(info: &RunInfo, records: &[CellRecord]) -> String {
    let ok = records.iter().filter(|r| r.as_expected).count();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for r in records {
        *counts.entry(r.verdict.word()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(w, n)| format!("{w} {n}")).collect();
    let complete = if !info.complete {
        " (run incomplete: partial results)"
    } else {
        ""
    };
    format!(
        "<p><b>{ok}/{} cells as expected</b>{complete}; {}</p>",
        records.len(),
        esc(&counts.join(", "))
    )
}

/// A sweep's cells past the breaking point are its answer, not failures: the heading counts
/// what survived and what did not, and says where each group broke.
fn sweep_headline(file: &SweepFile, records: &[CellRecord]) -> String {
    let survived = file
        .groups
        .iter()
        .flat_map(|g| &g.cells)
        .filter(|c| c.observation.survived)
        .count();
    let infra = records.iter().filter(|r| r.verdict.is_infra()).count();
    let mut out = format!(
        "<p><b>{} cells swept along {}: {survived} survived, {} did not</b>{}</p><ul>",
        records.len(),
        esc(&file.param),
        records.len() - survived - infra,
        if infra > 0 {
            format!(", {infra} infra (not counted)")
        } else {
            String::new()
        }
    );
    for g in &file.groups {
        let (mode, estimate, interval) = super::text::describe(&g.estimate);
        let over = g.over.map(|v| format!(" at {v}")).unwrap_or_default();
        let answer = match estimate.as_str() {
            "-" => format!("{mode}: {interval}"),
            _ => format!("{estimate} ({mode}, 95% {interval})"),
        };
        let _ = write!(
            out,
            "<li>{} {}{over}: breaking point {}; {}</li>",
            esc(&g.image),
            esc(&g.variant),
            esc(&answer),
            esc(&g.stopped)
        );
    }
    if let Some(over) = &file.over {
        let _ = write!(out, "<li>{}</li>", esc(super::text::over_line(over).trim()));
    }
    out.push_str("</ul>");
    out
}

/// One table per case and image: RAM sizes as rows, variants as columns, each cell coloured by
/// its verdict (repeats side by side) and linking to its details.
fn matrix(records: &[CellRecord]) -> String {
    let mut by_case: BTreeMap<(String, String), Vec<&CellRecord>> = BTreeMap::new();
    for r in records {
        by_case
            .entry((r.case.clone(), r.image.clone()))
            .or_default()
            .push(r);
    }
    let mut out = String::from("<h2>Verdicts</h2>");
    for ((case, image), cells) in by_case {
        let mut variants: Vec<&str> = cells.iter().map(|r| r.variant.as_str()).collect();
        variants.sort();
        variants.dedup();
        let mut rams: Vec<u64> = cells.iter().map(|r| r.ram_mib).collect();
        rams.sort();
        rams.dedup();
        let _ = write!(
            out,
            "<h3>{} on {}</h3><table><tr><th>RAM</th>",
            esc(&case),
            esc(&image)
        );
        for v in &variants {
            let _ = write!(out, "<th>{}</th>", esc(v));
        }
        out.push_str("</tr>");
        for ram in rams {
            let _ = write!(out, "<tr><th>{ram}M</th>");
            for v in &variants {
                out.push_str("<td>");
                for r in cells.iter().filter(|r| r.ram_mib == ram && r.variant == *v) {
                    let _ = write!(
                        out,
                        "<a class=\"{}{}\" data-cell=\"{}\" href=\"#cell-{}\" title=\"{}\">{}</a> ",
                        r.verdict.word(),
                        if r.as_expected { "" } else { " notok" },
                        esc(&r.id),
                        esc(&r.id),
                        esc(&r.verdict.describe()),
                        r.verdict.word()
                    );
                }
                out.push_str("</td>");
            }
            out.push_str("</tr>");
        }
        out.push_str("</table>");
    }
    out
}

/// Per scenario: measurements across RAM (a line per image and variant), memory over time,
/// and the slab caches the leak check flagged.
fn scenario_plots(records: &[CellRecord], sweep: Option<&SweepFile>) -> Result<String> {
    // In a sweep the measurements vary with the swept value, not with RAM; a counting sweep
    // repeats one value, so its measurements go against the `--over` value (none without).
    let counting = sweep.is_some_and(|f| f.groups.iter().any(|g| g.mode == Some(Mode::Counting)));
    let swept: BTreeMap<&str, f64> = sweep
        .iter()
        .flat_map(|f| &f.groups)
        .flat_map(|g| g.cells.iter().map(move |c| (g, c)))
        .filter_map(|(g, c)| {
            let x = if counting {
                g.over?
            } else {
                c.observation.value
            };
            Some((c.cell.as_str(), x))
        })
        .collect();
    let x_label = match (sweep, counting) {
        (Some(f), true) => f
            .over
            .as_ref()
            .map_or(String::new(), |o| match o.axis.unit() {
                "" => o.axis.label().to_string(),
                unit => format!("{} ({unit})", o.axis.label()),
            }),
        (Some(f), false) => axis_title(f),
        (None, _) => "RAM [MiB]".to_string(),
    };
    let x_of = |r: &CellRecord| match sweep {
        Some(_) => swept.get(r.id.as_str()).copied(),
        None => Some(r.ram_mib as f64),
    };
    let mut by_scenario: BTreeMap<&str, Vec<&CellRecord>> = BTreeMap::new();
    for r in records {
        by_scenario.entry(&r.scenario).or_default().push(r);
    }
    let mut out = String::from("<h2>Scenarios</h2>");
    for (scenario, cells) in by_scenario {
        let _ = write!(out, "<h3>{}</h3><div class=\"plots\">", esc(scenario));
        for name in plotted_measurements(&cells) {
            let series = across(&cells, &x_of, |r| measurement(r, &name));
            if series.iter().any(|(_, p)| p.len() > 1) {
                out.push_str(&line_chart(&name, &x_label, &name, &series, true)?);
            }
        }
        let counts = across(&cells, &x_of, |r| r.last_progress.map(|c| c as f64));
        let counted = counts.iter().flat_map(|(_, p)| p).any(|(_, c)| *c > 0.0);
        if counted && counts.iter().any(|(_, p)| p.len() > 1) {
            out.push_str(&line_chart(
                "count reached (last progress)",
                &x_label,
                "count",
                &counts,
                true,
            )?);
        }
        for r in &cells {
            let series: Vec<(String, Vec<(f64, f64)>)> = r
                .results
                .iter()
                .flat_map(|res| &res.series)
                .filter(|(_, s)| s.points.len() > 1)
                .map(|(name, s)| (format!("{name} [{}]", s.unit), s.points.clone()))
                .collect();
            if !series.is_empty() {
                let title = format!("memory over time: {}", r.id);
                out.push_str(&line_chart(&title, "time [s]", "KiB", &series, false)?);
            }
        }
        out.push_str("</div>");
        out.push_str(&leak_table(&cells));
    }
    Ok(out)
}

/// The measurements worth a plot: not the payload's own, and not constant across the cells
/// (an input such as `children` = 64 says nothing as a line).
fn plotted_measurements(cells: &[&CellRecord]) -> Vec<String> {
    let varies = |name: &str| {
        let mut values = cells.iter().filter_map(|r| measurement(r, name));
        let first = values.next();
        values.any(|v| Some(v) != first)
    };
    let mut names: Vec<String> = Vec::new();
    for r in cells {
        for res in &r.results {
            for name in res.measurements.keys() {
                let internal = name.starts_with("payload_") || name == "progress";
                if !internal
                    && !names.contains(name)
                    && names.len() < PLOTTED_MEASUREMENTS
                    && varies(name)
                {
                    names.push(name.clone());
                }
            }
        }
    }
    names
}

fn measurement(r: &CellRecord, name: &str) -> Option<f64> {
    r.results
        .iter()
        .find_map(|res| res.measurements.get(name).map(|m| m.value))
}

/// One series per image and variant: (RAM MiB, value) for every cell that has the value.
/// One series per image and variant: `value` against `x` (RAM, or the swept value).
fn across(
    cells: &[&CellRecord],
    x: &dyn Fn(&CellRecord) -> Option<f64>,
    value: impl Fn(&CellRecord) -> Option<f64>,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in cells {
        if let (Some(x), Some(v)) = (x(r), value(r)) {
            series
                .entry(format!("{} {}", r.image, r.variant))
                .or_default()
                .push((x, v));
        }
    }
    for points in series.values_mut() {
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    series.into_iter().collect()
}

/// The leak check's findings: caches that kept memory after the scenario gave everything back.
fn leak_table(cells: &[&CellRecord]) -> String {
    let mut rows = String::new();
    for r in cells {
        for res in &r.results {
            for key in [
                "leak_suspect_caches",
                "leak_monotonic_caches",
                "leak_procs_left",
            ] {
                if let Some(v) = res.facts.get(key) {
                    let _ = write!(
                        rows,
                        "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                        esc(&r.id),
                        key,
                        esc(v)
                    );
                }
            }
        }
    }
    rows.push_str(&evidence_rows(cells));
    if rows.is_empty() {
        return String::new();
    }
    format!("<h4>Leak-flagged caches and memory evidence</h4><table><tr><th>cell</th><th>finding</th><th>caches</th></tr>{rows}</table>")
}

/// A row per leak decision's evidence: its summary, and the amounts before, at the peak and
/// after in a folded table.
fn evidence_rows(cells: &[&CellRecord]) -> String {
    let mut rows = String::new();
    for r in cells {
        for e in r.results.iter().flat_map(|res| &res.evidence) {
            let mut amounts = String::new();
            for a in e.fields.iter().chain(&e.top_slabs) {
                let peak = a.peak_kib.map(|p| p.to_string()).unwrap_or_default();
                let _ = write!(
                    amounts,
                    "<tr><td>{}</td><td>{}</td><td>{peak}</td><td>{}</td><td>{:+}</td></tr>",
                    esc(&a.name),
                    a.before_kib,
                    a.after_kib,
                    a.delta_kib()
                );
            }
            let finding = if e.leaked {
                "did not come back"
            } else {
                "memory evidence"
            };
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{finding}</td><td>{}<details><summary>amounts (KiB)</summary><table><tr><th></th><th>before</th><th>peak</th><th>after</th><th>change</th></tr>{amounts}</table></details></td></tr>",
                esc(&r.id),
                esc(&e.summary()),
            );
        }
    }
    rows
}

/// A line chart as inline SVG. `points` also marks every point (few points across RAM).
pub fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
    points: bool,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (560, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let (x, y) = ranges(series.iter().flat_map(|(_, p)| p.iter().copied()));
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 15))
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(x, y)
            .map_err(plot_err)?;
        // Counts are whole numbers: label them so (not 64.0000).
        let whole = |f: fn(&(f64, f64)) -> f64| {
            series
                .iter()
                .flat_map(|(_, p)| p)
                .all(|p| f(p).fract() == 0.0)
        };
        let (x_whole, y_whole) = (whole(|p| p.0), whole(|p| p.1));
        let x_fmt = move |v: &f64| tick(*v, x_whole);
        let y_fmt = move |v: &f64| tick(*v, y_whole);
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .x_label_formatter(&x_fmt)
            .y_label_formatter(&y_fmt)
            .draw()
            .map_err(plot_err)?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
            if points {
                chart
                    .draw_series(pts.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(plot_err)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
        root.present().map_err(plot_err)?;
    }
    Ok(svg)
}

/// A tick label: whole numbers without a fraction when the data are whole.
fn tick(v: f64, whole: bool) -> String {
    if whole {
        format!("{:.0}", v)
    } else {
        format!("{v:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a plot: {e:?}")
}

/// Axis ranges covering every point, padded so no point sits on the frame.
fn ranges(
    points: impl Iterator<Item = (f64, f64)>,
) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0..1.0, 0.0..1.0);
    }
    let pad = |a: f64, b: f64| {
        let d = if b > a {
            (b - a) * 0.08
        } else {
            a.abs().max(1.0) * 0.1
        };
        (a - d)..(b + d)
    };
    (pad(x0, x1), pad(y0.min(0.0), y1))
}

/// The sweep's answer per group, its survival curve (pass/fail) or count distribution.
fn sweep_section(file: &SweepFile) -> Result<String> {
    let mut out = format!(
        "<h2>Breaking point: {} of {}</h2><pre>{}</pre><div class=\"plots\">",
        esc(&file.param),
        esc(&file.case),
        esc(&super::text::sweep_table(file))
    );
    let axis = axis_title(file);
    for g in &file.groups {
        let over = match (&file.over, g.over) {
            (Some(o), Some(v)) => format!(" {}={v}", o.axis.label()),
            _ => String::new(),
        };
        let name = format!("{} {}M {}{over}", g.image, g.ram_mib, g.variant);
        let observed: Vec<(f64, f64)> = g
            .cells
            .iter()
            .map(|c| {
                let o = &c.observation;
                match g.mode {
                    Some(Mode::Counting) => (o.value, o.count.unwrap_or(o.value)),
                    _ => (o.value, if o.survived { 1.0 } else { 0.0 }),
                }
            })
            .collect();
        let chart = match (&g.mode, &g.estimate) {
            (Some(Mode::Counting), _) => {
                let counts: Vec<(f64, f64)> = observed
                    .iter()
                    .enumerate()
                    .map(|(i, (_, c))| ((i + 1) as f64, *c))
                    .collect();
                let title = format!("count at failure per repeat: {name}");
                line_chart(&title, "repeat", "count", &[(name, counts)], true)?
            }
            (_, Estimate::Survival { fit }) => survival_chart(&name, &axis, &observed, fit)?,
            _ => continue,
        };
        out.push_str(&chart);
    }
    if let Some(chart) = over_chart(file)? {
        out.push_str(&chart);
    }
    out.push_str("</div>");
    Ok(out)
}

/// The swept axis as a plot's x label: `ram (MiB)`, `vm.min_free_kbytes`, `limit`.
fn axis_title(file: &SweepFile) -> String {
    match &file.axis {
        Some(a) if !a.unit().is_empty() => format!("{} ({})", a.label(), a.unit()),
        Some(a) => a.label().to_string(),
        None => file.param.clone(),
    }
}

/// The breaking point per `--over` value, with the fitted line.
fn over_chart(file: &SweepFile) -> Result<Option<String>> {
    let Some(over) = &file.over else {
        return Ok(None);
    };
    let Some(fit) = &over.fit else {
        return Ok(None);
    };
    let (lo, hi) = fit
        .points
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let line = |x: f64| (x, fit.intercept.estimate + fit.slope.estimate * x);
    let series = vec![
        ("breaking point".to_string(), fit.points.clone()),
        (
            format!("fit: slope {:.3}", fit.slope.estimate),
            vec![line(lo), line(hi)],
        ),
    ];
    let x_label = match over.axis.unit() {
        "" => over.axis.label().to_string(),
        unit => format!("{} ({unit})", over.axis.label()),
    };
    let counting = file.groups.iter().any(|g| g.mode == Some(Mode::Counting));
    let y_label = match counting {
        true => format!("count at failure ({})", file.param),
        false => axis_title(file),
    };
    let title = format!("breaking point of {} against {}", file.param, over.axis);
    line_chart(&title, &x_label, &y_label, &series, true).map(Some)
}

fn survival_chart(
    name: &str,
    axis: &str,
    observed: &[(f64, f64)],
    fit: &crate::stats::SurvivalFit,
) -> Result<String> {
    let mut series = vec![("observed (1 = survived)".to_string(), observed.to_vec())];
    let (x, _) = ranges(observed.iter().copied());
    if fit.survival(x.start).is_some() {
        let curve: Vec<(f64, f64)> = (0..=100)
            .map(|i| x.start + (x.end - x.start) * i as f64 / 100.0)
            .filter_map(|v| fit.survival(v).map(|p| (v, p)))
            .collect();
        series.push(("logistic fit".into(), curve));
    }
    let title = format!("survival: {name}");
    let mut sorted = series;
    sorted[0].1.sort_by(|a, b| a.0.total_cmp(&b.0));
    line_chart(&title, axis, "survival", &sorted, true)
}

fn environment(info: &RunInfo, records: &[CellRecord]) -> String {
    let mut rows: Vec<(String, String)> = vec![
        (
            "accelerator".into(),
            format!("{} ({})", info.accel, info.accel_reason),
        ),
        ("profile".into(), info.profile.clone()),
        ("started".into(), info.started_at.clone()),
    ];
    let runs: Vec<&RunInfo> = match info.shards.is_empty() {
        true => vec![info],
        false => info.shards.iter().collect(),
    };
    for (i, r) in runs.iter().enumerate() {
        let which = match runs.len() {
            1 => String::new(),
            _ => format!(" (shard {} of {}: {})", i + 1, runs.len(), r.run_id),
        };
        rows.push((format!("host{which}"), r.host.line()));
        rows.push((format!("QEMU{which}"), r.host.qemu.clone()));
        rows.push((format!("kstorm{which}"), r.kstorm.describe.clone()));
    }
    let mut images: BTreeMap<String, String> = BTreeMap::new();
    for r in records {
        for (k, v) in r.provenance.entries() {
            images.entry(format!("{}: {k}", r.image)).or_insert(v);
        }
    }
    rows.extend(images);
    let mut out = String::from("<h2>Environment</h2><table>");
    for (k, v) in rows {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(&k), esc(&v));
    }
    out.push_str("</table>");
    out
}

/// Per cell: verdict, links to its files, and the console around the crash or before the hang.
fn cell_details(run_dir: &Path, records: &[CellRecord]) -> String {
    let mut out = String::from("<h2>Cells</h2>");
    for r in records {
        let dir = format!("cells/{}", r.id);
        let files: Vec<String> = ["console.log", "result.json", "qemu.cmd", "qemu.stderr"]
            .iter()
            .filter(|f| run_dir.join(&dir).join(f).exists())
            .map(|f| format!("<a href=\"{}/{f}\">{f}</a>", esc(&dir)))
            .collect();
        let _ = write!(
            out,
            "<h3 id=\"cell-{}\">{}</h3><p class=\"{}\">{}</p><p>{}</p><pre>{}</pre>",
            esc(&r.id),
            esc(&r.id),
            r.verdict.word(),
            esc(&r.verdict.describe()),
            files.join(" · "),
            esc(&excerpt(run_dir, r))
        );
    }
    out
}

/// The detector's report lines for a crash; otherwise the console's last lines.
fn excerpt(run_dir: &Path, r: &CellRecord) -> String {
    if let Some(report) = r.reports.first() {
        return report.lines.join("\n");
    }
    let log =
        std::fs::read(run_dir.join("cells").join(&r.id).join("console.log")).unwrap_or_default();
    let text = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("KSTORM1 "))
        .collect();
    lines[lines.len().saturating_sub(EXCERPT_LINES)..].join("\n")
}
