//! Progress on stderr while cells run: a line per running cell and an overall bar on a
//! terminal, a line per cell start and end otherwise.

use crate::cell::CellRecord;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::time::Duration;

/// Progress: a line per running cell and an overall bar.
pub struct Bars {
    multi: Option<MultiProgress>,
    overall: ProgressBar,
}

impl Bars {
    pub fn new(enabled: bool, total: usize) -> Bars {
        use std::io::IsTerminal;
        if !enabled || !std::io::stderr().is_terminal() {
            return Bars {
                multi: None,
                overall: ProgressBar::hidden(),
            };
        }
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("{elapsed:>4} [{bar:30}] {pos}/{len} cells {msg}")
                .unwrap()
                .progress_chars("=> "),
        );
        Bars {
            multi: Some(multi),
            overall,
        }
    }

    pub fn cell(&self, id: &str) -> ProgressBar {
        let Some(multi) = &self.multi else {
            eprintln!("kstorm: {id}: starting");
            return ProgressBar::hidden();
        };
        let bar = multi.insert_before(&self.overall, ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("  {spinner} {prefix} {elapsed} {msg}").unwrap(),
        );
        bar.set_prefix(id.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    pub fn finish_cell(&self, bar: &ProgressBar, record: &CellRecord) {
        let mark = if record.as_expected { "ok " } else { "NOT OK" };
        let line = format!("{mark} {} -> {}", record.id, record.verdict.describe());
        if self.multi.is_some() {
            bar.finish_and_clear();
            self.overall.println(line);
            self.overall.inc(1);
        } else {
            eprintln!("kstorm: {line}");
        }
    }

    pub fn done(&self) {
        self.overall.finish_and_clear();
    }
}
