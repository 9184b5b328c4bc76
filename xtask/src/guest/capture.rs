//! Runs a recipe's statistics commands in the guest and condenses the captures of one scenario
//! into facts and series of its result.

use super::series::{self, RowSeries};
use super::vmstat::{self, Sample};
use super::{hurd, StatsCapture, StatsFormat};
use crate::transport::{wire, TResult, Transport};
use kstorm_payload::frame::{ScenarioResult, Series};
use std::collections::BTreeMap;

/// The captures of one scenario, per statistics command, in order (before, during..., after).
#[derive(Debug, Default)]
pub struct Captures {
    pub by_name: BTreeMap<String, Vec<Sample>>,
    /// What went wrong while capturing (a missing command is a finding, not a failure).
    pub problems: Vec<String>,
}

/// A command line from words, each quoted: config values never reach the shell unquoted.
pub fn command_line(words: &[String]) -> String {
    words
        .iter()
        .map(|w| wire::sh_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `words`; its status and output lines.
pub fn run_words(t: &mut dyn Transport, words: &[String]) -> TResult<(i32, Vec<String>)> {
    let mut out = Vec::new();
    let rc = t.run(&command_line(words), &mut |l| out.push(l.to_string()))?;
    Ok((rc, out))
}

impl Captures {
    /// Takes one capture of every statistics command.
    pub fn take(&mut self, t: &mut dyn Transport, stats: &[StatsCapture]) -> TResult<()> {
        let mut servers = Vec::new();
        for s in stats.iter().filter(|s| !s.per_server) {
            let sample = self.one(t, s, &s.command)?;
            if s.format == StatsFormat::HurdPs {
                servers = hurd::servers(&sample);
            }
            self.by_name.entry(s.name.clone()).or_default().push(sample);
        }
        for s in stats.iter().filter(|s| s.per_server) {
            let mut combined = Sample::new();
            for (server, pid) in &servers {
                let words: Vec<String> = s
                    .command
                    .iter()
                    .map(|w| w.replace("{pid}", &pid.to_string()))
                    .collect();
                if let Some(row) = self.one(t, s, &words)?.remove("") {
                    combined.insert(server.clone(), row);
                }
            }
            self.by_name
                .entry(s.name.clone())
                .or_default()
                .push(combined);
        }
        Ok(())
    }

    fn one(
        &mut self,
        t: &mut dyn Transport,
        s: &StatsCapture,
        words: &[String],
    ) -> TResult<Sample> {
        let (rc, lines) = run_words(t, words)?;
        if rc != 0 {
            self.problems.push(format!(
                "{} exited {rc}: {}",
                command_line(words),
                lines.join(" | ")
            ));
        }
        Ok(parse(s.format, &lines.join("\n")))
    }

    /// Writes what the captures show into `result`: per command, the rows that grew at every
    /// capture, the one that grew most, and (zones) those with failures; their series too.
    pub fn summarize(&self, stats: &[StatsCapture], result: &mut ScenarioResult) {
        for s in stats {
            let Some(caps) = self.by_name.get(&s.name) else {
                continue;
            };
            let column = growth_column(s.format);
            let rows = series::series(caps, column);
            let key = |what: &str| format!("stats.{}.{what}", s.name);
            result.facts.insert(key("captures"), caps.len().to_string());
            let flagged: Vec<&RowSeries> = rows.iter().filter(|r| r.monotonic).collect();
            if !flagged.is_empty() {
                let names: Vec<&str> = flagged.iter().map(|r| r.name.as_str()).collect();
                result.facts.insert(key("monotonic"), names.join(", "));
            }
            if let Some(top) = series::grew_most(&rows) {
                result.facts.insert(
                    key("grew_most"),
                    format!("{} {column} +{}", top.name, top.growth()),
                );
                add_series(result, &key(&top.name), top);
            }
            for r in flagged {
                add_series(result, &key(&r.name), r);
            }
            if s.format == StatsFormat::VmstatZ {
                let failing = series::failing(caps, vmstat::ZONE_FAILURES);
                if !failing.is_empty() {
                    let list: Vec<String> =
                        failing.iter().map(|(z, n)| format!("{z}={n}")).collect();
                    result.facts.insert(key("failures"), list.join(", "));
                }
            }
        }
        if !self.problems.is_empty() {
            result
                .facts
                .insert("stats.problems".into(), self.problems.join("; "));
        }
    }
}

fn add_series(result: &mut ScenarioResult, key: &str, r: &RowSeries) {
    result.series.insert(
        key.to_string(),
        Series {
            unit: "count".into(),
            points: r
                .values
                .iter()
                .enumerate()
                .map(|(i, v)| (i as f64, *v as f64))
                .collect(),
        },
    );
}

/// The column a format's growth is read from.
fn growth_column(format: StatsFormat) -> &'static str {
    match format {
        StatsFormat::VmstatM => vmstat::MALLOC_BYTES,
        StatsFormat::VmstatZ => vmstat::ZONE_USED,
        StatsFormat::HurdPs => "rss",
        StatsFormat::HurdVmstat => "active",
        StatsFormat::Portinfo => "ports",
    }
}

/// One command's output as a sample (`portinfo`'s single row has the empty name).
pub fn parse(format: StatsFormat, text: &str) -> Sample {
    match format {
        StatsFormat::VmstatM => vmstat::parse_malloc(text),
        StatsFormat::VmstatZ => vmstat::parse_zones(text),
        StatsFormat::HurdPs => hurd::parse_ps(text),
        StatsFormat::HurdVmstat => hurd::parse_vmstat(text),
        StatsFormat::Portinfo => Sample::from([(String::new(), hurd::parse_portinfo(text))]),
    }
}
