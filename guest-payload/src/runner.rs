//! Runs a plan: hello, sysctls, each scenario in a child process of its own (so a crash, an
//! OOM kill or a panic of scenario code is reported instead of taking the payload down),
//! heartbeats from this supervising process while the child works, one result frame per
//! scenario, done. The one place where scenario reports become frames.

use crate::channel::Channel;
use crate::memwatch::MemWatch;
use crate::progress::Progress;
use crate::scenarios::{self, Ctx, Scenario, ScenarioReport};
use crate::sys;
use kstorm_payload::frame::{Measurement, Message, Outcome, ScenarioResult, Series};
use kstorm_payload::plan::{Plan, ScenarioSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// A scenario that outlives its own deadline by this much is killed by the supervisor.
const OVERRUN_GRACE_S: f64 = 30.0;

/// What the scenario child sends back over its pipe.
#[derive(Debug, Serialize, Deserialize)]
enum ChildMessage {
    Report(ScenarioReport),
    /// The scenario could not run (bad parameters, missing kernel feature).
    Error(String),
    /// Scenario code panicked (the process aborts right after).
    Panic(String),
}

pub struct Runner<'a> {
    pub chan: &'a mut Channel,
    pub in_guest: bool,
    progress: Progress,
    heartbeat_s: f64,
    /// Each plan sysctl as asked and as the kernel reported it back, in every result.
    knobs: BTreeMap<String, String>,
    /// The plan's `/proc/vmstat` counter prefixes, and the last scenario's deltas.
    vmstat: Vec<String>,
    vmstat_delta: BTreeMap<String, i64>,
}

impl<'a> Runner<'a> {
    pub fn new(chan: &'a mut Channel, plan: &Plan, in_guest: bool) -> std::io::Result<Runner<'a>> {
        Ok(Runner {
            chan,
            in_guest,
            progress: Progress::new()?,
            heartbeat_s: plan.heartbeat_ms.clamp(50, 1000) as f64 / 1000.0,
            knobs: BTreeMap::new(),
            vmstat: plan.vmstat.clone(),
            vmstat_delta: BTreeMap::new(),
        })
    }

    /// Runs the whole plan; true when every scenario passed.
    pub fn run_plan(&mut self, plan: &Plan) -> bool {
        self.run_plan_with_notes(plan, &[])
    }

    /// Like `run_plan`, sending `notes` (set-up problems) as log frames right after hello.
    pub fn run_plan_with_notes(&mut self, plan: &Plan, notes: &[String]) -> bool {
        let (release, _, _) = sys::uname();
        let mem = sys::linux_meminfo_field("MemTotal");
        self.chan.send(&Message::Hello {
            agent: "linux-payload".into(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel: release,
            mem_total_kib: mem,
            ncpu: Some(sys::ncpu()),
        });
        for n in notes {
            self.chan.log(n.clone());
        }
        let res = sys::clock_step();
        let cs = sys::linux_clocksource().unwrap_or_else(|| "unknown".into());
        if res > 1e-5 {
            // Latencies would come out in steps of this size: say so where it is read.
            self.chan.log(format!(
                "coarse clock: steps of {:.1} ms (clocksource {cs}); latencies are only this fine",
                res * 1000.0
            ));
        }
        let (failures, knobs) = apply_sysctls(&plan.sysctl);
        self.knobs = knobs;
        let mut all_passed = true;
        if !failures.is_empty() {
            let why = format!("plan sysctl could not be applied: {}", failures.join("; "));
            self.chan.log(why.clone());
            // Running in the wrong configuration would give numbers that lie: fail every
            // scenario, clearly, without running it.
            for (i, spec) in plan.scenarios.iter().enumerate() {
                self.chan.send(&Message::Start {
                    scenario: spec.name.clone(),
                    index: i as u32,
                });
                self.send_not_run(spec, i, format!("not run: {why}"));
            }
            all_passed = false;
        } else {
            for (i, spec) in plan.scenarios.iter().enumerate() {
                all_passed &= self.run_one(i, spec);
            }
        }
        self.chan.send(&Message::Done);
        all_passed
    }

    fn send_result(
        &mut self,
        spec: &ScenarioSpec,
        i: usize,
        outcome: Outcome,
        error: Option<String>,
        report: ScenarioReport,
        extra: BTreeMap<&'static str, Vec<(f64, f64)>>,
    ) {
        let mut series = report.series;
        for (name, mut points) in extra {
            kstorm_payload::stats::decimate(&mut points, 300);
            series.insert(
                name.to_string(),
                Series {
                    unit: "KiB".into(),
                    points,
                },
            );
        }
        let mut facts = report.facts;
        facts.extend(self.knobs.clone());
        if let Some(stop) = &report.stop_error {
            facts.insert("stop_error".into(), stop.clone());
        }
        self.chan.send(&Message::Result(ScenarioResult {
            scenario: spec.name.clone(),
            index: i as u32,
            outcome,
            error,
            measurements: report.measurements,
            facts,
            series,
            evidence: report.evidence,
            vmstat: std::mem::take(&mut self.vmstat_delta),
        }));
    }

    /// Runs one scenario in a child; true when it passed.
    fn run_one(&mut self, i: usize, spec: &ScenarioSpec) -> bool {
        self.chan.send(&Message::Start {
            scenario: spec.name.clone(),
            index: i as u32,
        });
        let Some(scenario) = scenarios::find(&spec.name) else {
            let known: Vec<&str> = scenarios::ALL.iter().map(|s| s.name).collect();
            let err = format!(
                "unknown scenario {:?} (known: {})",
                spec.name,
                known.join(", ")
            );
            self.send_not_run(spec, i, err);
            return false;
        };
        self.progress.reset();
        let vmstat_before = self.read_vmstat();
        let t_start = sys::now();
        let (rr, rw) = match sys::pipe() {
            Ok(p) => p,
            Err(e) => {
                self.send_not_run(spec, i, format!("pipe: {e}"));
                return false;
            }
        };
        let pid = match self.start_child(scenario, spec, rw) {
            Ok(pid) => pid,
            Err(e) => {
                self.send_not_run(spec, i, format!("fork of the scenario process: {e}"));
                return false;
            }
        };
        // Also done here, so the group exists before we may kill it.
        sys::new_process_group(pid);
        let supervised = self.supervise(spec, pid, rr.as_fd());
        sys::kill_group(pid);
        while sys::reap_any().is_some() {}
        let wall = sys::now() - t_start;
        self.vmstat_delta = vmstat_delta(&vmstat_before, &self.read_vmstat());
        let (outcome, error, mut report) = self.judge(&supervised);
        self.add_supervisor_measurements(&mut report, wall, supervised.busy);
        self.send_result(spec, i, outcome, error, report, supervised.series);
        outcome == Outcome::Pass
    }

    /// The plan's counters as `/proc/vmstat` has them now (empty when none are asked for).
    fn read_vmstat(&self) -> BTreeMap<String, i64> {
        if self.vmstat.is_empty() {
            return BTreeMap::new();
        }
        let text = sys::read_file("/proc/vmstat").unwrap_or_default();
        parse_vmstat(&text, &self.vmstat)
    }

    /// A failed result for a scenario that never ran, with nothing measured.
    fn send_not_run(&mut self, spec: &ScenarioSpec, i: usize, error: String) {
        self.send_result(
            spec,
            i,
            Outcome::Fail,
            Some(error),
            ScenarioReport::default(),
            BTreeMap::new(),
        );
    }

    /// Forks the scenario's child process; it writes its message to `rw` and exits.
    fn start_child(
        &self,
        scenario: &Scenario,
        spec: &ScenarioSpec,
        rw: OwnedFd,
    ) -> std::io::Result<i32> {
        let (progress, in_guest) = (&self.progress, self.in_guest);
        // `rw` moves into the child; the parent's copy closes when fork_run returns.
        sys::fork_run(move || child_main(scenario, spec, progress, in_guest, rw))
    }

    /// Turns what the child sent (or how it ended, when it sent nothing) into an outcome,
    /// an error text and the child's report.
    fn judge(&self, supervised: &Supervised) -> (Outcome, Option<String>, ScenarioReport) {
        match serde_json::from_slice::<ChildMessage>(&supervised.text) {
            Ok(ChildMessage::Report(r)) => match (&r.failure, &r.infra) {
                (Some(f), _) => (Outcome::Fail, Some(f.clone()), r),
                (None, Some(i)) => (Outcome::Infra, Some(i.clone()), r),
                (None, None) => (Outcome::Pass, r.stop_error.clone(), r),
            },
            Ok(ChildMessage::Error(e)) => (Outcome::Fail, Some(e), ScenarioReport::default()),
            Ok(ChildMessage::Panic(p)) => (
                Outcome::Fail,
                Some(format!("scenario panicked: {p}")),
                ScenarioReport::default(),
            ),
            Err(_) => {
                let how = supervised
                    .exit
                    .as_ref()
                    .map(|e| e.describe())
                    .unwrap_or_else(|| "did not end".into());
                let why = if supervised.overran {
                    format!("overran its deadline by {OVERRUN_GRACE_S} s and was killed")
                } else {
                    how
                };
                (
                    Outcome::Fail,
                    Some(format!(
                        "scenario process ended without a result: {why} (last progress {})",
                        self.progress.get()
                    )),
                    ScenarioReport::default(),
                )
            }
        }
    }

    /// What the supervisor measured itself: wall time, its own busy time, and the progress
    /// count unless the scenario reported one.
    fn add_supervisor_measurements(&self, report: &mut ScenarioReport, wall: f64, busy: f64) {
        report
            .measurements
            .insert("payload_wall".into(), Measurement::new(wall, "s"));
        report.measurements.insert(
            "payload_supervisor_busy".into(),
            Measurement::new(busy, "s"),
        );
        report
            .measurements
            .entry("progress".into())
            .or_insert(Measurement::new(self.progress.get() as f64, "count"));
    }

    /// Heartbeats, memory samples, reaping and the overrun watchdog while the scenario child
    /// runs; collects what the child writes to its result pipe until it ended.
    fn supervise(&mut self, spec: &ScenarioSpec, pid: i32, fd: BorrowedFd) -> Supervised {
        let mut watch = MemWatch::new(pid);
        let mut text = Vec::new();
        let mut exit = None;
        let mut eof = false;
        let mut overran = false;
        let mut busy = 0.0;
        let mut next_tick = sys::now();
        let mut buf = vec![0u8; 65536];
        // After the child ended, its descendants may still hold the pipe: wait briefly.
        let mut eof_wait_until = f64::INFINITY;
        loop {
            let now = sys::now();
            if now >= next_tick {
                let t = sys::now();
                if !self.progress.heartbeat_paused() {
                    self.chan.send(&Message::Hb {
                        scenario: spec.name.clone(),
                        progress: self.progress.get(),
                    });
                }
                watch.sample();
                busy += sys::now() - t;
                next_tick += self.heartbeat_s;
                if next_tick < now {
                    next_tick = now + self.heartbeat_s;
                }
            }
            if !eof {
                match sys::wait_readable(fd, (next_tick - sys::now()).clamp(0.0, 0.05)) {
                    Ok(true) => match sys::read_some(fd, &mut buf) {
                        Ok(0) | Err(_) => eof = true,
                        Ok(n) => text.extend_from_slice(&buf[..n]),
                    },
                    Ok(false) => {}
                    Err(_) => eof = true,
                }
            } else {
                sys::sleep_secs((next_tick - sys::now()).clamp(0.0, 0.05));
            }
            while let Some((p, e)) = sys::reap_any() {
                if p == pid {
                    exit = Some(e);
                    eof_wait_until = sys::now() + 1.0;
                    // Its workers may still run and hold the pipe open.
                    sys::kill_group(pid);
                }
            }
            if exit.is_some() && (eof || sys::now() > eof_wait_until) {
                break;
            }
            if !overran {
                if let Some(d) = self.progress.deadline() {
                    if sys::now() > d + OVERRUN_GRACE_S {
                        overran = true;
                        sys::kill_group(pid);
                    }
                }
            }
        }
        Supervised {
            text,
            exit,
            overran,
            busy,
            series: watch.into_series(),
        }
    }
}

struct Supervised {
    text: Vec<u8>,
    exit: Option<sys::Exit>,
    overran: bool,
    busy: f64,
    series: BTreeMap<&'static str, Vec<(f64, f64)>>,
}

/// The scenario child's whole life: its own process group, back under the OOM killer, a
/// panic hook that still reports, the run, and its message down the pipe. Returns the exit
/// code; the child never returns into the supervisor's frames.
fn child_main(
    scenario: &Scenario,
    spec: &ScenarioSpec,
    progress: &Progress,
    in_guest: bool,
    rw: OwnedFd,
) -> i32 {
    sys::new_process_group(0);
    if in_guest {
        // PID 1's -1000 is inherited: give the scenario back to the OOM killer.
        let _ = sys::linux_set_oom_score_adj(0);
    }
    // This process ends without returning, so its result pipe may live for ever.
    let w: &'static OwnedFd = Box::leak(Box::new(rw));
    std::panic::set_hook(Box::new(move |info| {
        let msg = serde_json::to_string(&ChildMessage::Panic(info.to_string())).unwrap_or_default();
        let _ = sys::write_all(w, msg.as_bytes());
        eprintln!("kstorm-payload: scenario panicked: {info}");
    }));
    let ctx = Ctx { progress, in_guest };
    let msg = match scenario.run(&spec.params, &ctx) {
        Ok(r) => ChildMessage::Report(r),
        Err(e) => ChildMessage::Error(e),
    };
    let text = serde_json::to_string(&msg).unwrap_or_default();
    if sys::write_all(w, text.as_bytes()).is_err() {
        return 1;
    }
    0
}

/// Writes each `name=value` to /proc/sys (dots become slashes); returns what failed, and the
/// facts `sysctl.NAME.asked` and `sysctl.NAME.reported` (what the kernel kept: a sweep of a
/// sysctl records both, as the recipe guests' driver does).
pub fn apply_sysctls(list: &[(String, String)]) -> (Vec<String>, BTreeMap<String, String>) {
    let mut failed = Vec::new();
    let mut facts = BTreeMap::new();
    for (name, value) in list {
        if name.is_empty() || name.contains('/') || name.contains("..") {
            failed.push(format!("{name}: not a sysctl name"));
            continue;
        }
        facts.insert(format!("sysctl.{name}.asked"), value.clone());
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        if let Err(e) = sys::write_file(&path, value) {
            failed.push(format!("{name}={value}: {} ({})", sys::err_name(&e), path));
            continue;
        }
        // Read back: some knobs accept a write and keep another value.
        if let Ok(now) = sys::read_file(&path) {
            let now = now.split_whitespace().collect::<Vec<_>>().join(" ");
            facts.insert(format!("sysctl.{name}.reported"), now.clone());
            if now != value.split_whitespace().collect::<Vec<_>>().join(" ") {
                failed.push(format!("{name}={value}: kernel keeps {now:?}"));
            }
        }
    }
    (failed, facts)
}

/// `name value` lines of `/proc/vmstat`, kept when the name starts with one of `prefixes`.
pub fn parse_vmstat(text: &str, prefixes: &[String]) -> BTreeMap<String, i64> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(' ')?;
            let keep = prefixes.iter().any(|p| name.starts_with(p.as_str()));
            Some((name.to_string(), value.trim().parse().ok()?)).filter(|_| keep)
        })
        .collect()
}

/// After minus before, per counter present in both.
pub fn vmstat_delta(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    after
        .iter()
        .filter_map(|(k, a)| Some((k.clone(), a - before.get(k)?)))
        .collect()
}

#[cfg(test)]
mod vmstat_tests {
    use super::*;

    #[test]
    fn deltas_of_the_listed_counters() {
        let prefixes = vec!["allocstall".to_string(), "oom_kill".to_string()];
        let before = parse_vmstat(
            "nr_free_pages 100\nallocstall_normal 2\nallocstall_movable 0\noom_kill 0\n",
            &prefixes,
        );
        assert_eq!(before.len(), 3);
        let after = parse_vmstat(
            "nr_free_pages 5\nallocstall_normal 7\nallocstall_movable 1\noom_kill 1\n",
            &prefixes,
        );
        let d = vmstat_delta(&before, &after);
        assert_eq!(d["allocstall_normal"], 5);
        assert_eq!(d["allocstall_movable"], 1);
        assert_eq!(d["oom_kill"], 1);
        assert!(!d.contains_key("nr_free_pages"));
    }
}
