//! The driver of a non-Linux guest, over a connected transport. For one cell it:
//!
//! 1. writes the variant's boot-loader tunables into the recipe's file and reboots the guest
//!    once, logging in again (the measured boot is the second one);
//! 2. sets the panic knobs and the variant's sysctls, and reads every one back as the kernel
//!    reports it (`sysctl -n`): the result keeps both what was asked and what the kernel took;
//! 3. uploads `kstorm-portable.c` and compiles it with the guest's own compiler;
//! 4. per scenario: captures the statistics, starts the agent in the background, captures
//!    again while it runs, reads its lines (heartbeats, measurements), captures after;
//! 5. turns all of it into the same frames the Linux payload sends (made here, on the host, from
//!    the agent's plain lines), so the cell's monitor and judge need nothing new.

use super::capture::{self, Captures};
use super::{GuestJob, GuestRecipe};
use crate::transport::{wire, TResult, Transport, TransportError, GUEST_DIR};
use kstorm_payload::frame::{self, Measurement, Message, Outcome, ScenarioResult};
use kstorm_payload::plan::{Plan, ScenarioSpec};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Captures taken while a scenario runs, at most.
const DURING_CAPTURES: usize = 3;
/// How often the driver looks at the running agent.
const POLL: Duration = Duration::from_millis(500);
/// Beyond the scenario's own deadline, how long the driver waits for the agent to end.
const AGENT_GRACE: Duration = Duration::from_secs(30);

/// Frames with this cell's id and consecutive sequence numbers.
struct Framer<'a> {
    cell: String,
    seq: u64,
    out: &'a mut dyn FnMut(&str),
}

impl Framer<'_> {
    fn send(&mut self, m: &Message) {
        let line = frame::encode(&self.cell, self.seq, m);
        self.seq += 1;
        (self.out)(line.trim_end());
    }
}

/// Runs the cell's plan on a guest described by `job`; the status is 0 when every scenario
/// passed. `boot_budget` bounds the login after the tunables' reboot.
pub fn run(
    t: &mut dyn Transport,
    job: &GuestJob,
    plan_json: &[u8],
    boot_budget: Duration,
    on_line: &mut dyn FnMut(&str),
) -> TResult<i32> {
    let plan: Plan = serde_json::from_slice(plan_json)
        .map_err(|e| TransportError::Refused(format!("reading the plan: {e}")))?;
    let recipe = &job.recipe;
    if !job.tunables.is_empty() {
        apply_tunables(t, recipe, &job.tunables, boot_budget)?;
    }
    let mut framer = Framer {
        cell: plan.cell.clone(),
        seq: 0,
        out: on_line,
    };
    let (_, uname) = capture::run_words(t, &["uname".into(), "-sr".into()])?;
    framer.send(&Message::Hello {
        agent: format!("kstorm-portable ({})", recipe.payload.route.name()),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        kernel: uname.join(" ").trim().to_string(),
        mem_total_kib: None,
        ncpu: None,
    });
    let knobs = set_and_read_back(t, recipe, job)?;
    let agent = compile_agent(t, recipe)?;
    let mut failed = 0;
    for (index, spec) in plan.scenarios.iter().enumerate() {
        let mut result = run_scenario(t, recipe, &agent, spec, index as u32, &mut framer)?;
        result.facts.extend(knobs.clone());
        failed += usize::from(result.outcome != Outcome::Pass);
        framer.send(&Message::Result(result));
    }
    framer.send(&Message::Done);
    Ok(i32::from(failed > 0))
}

/// `name="value"` lines for the loader; names and values that could break the file are refused.
pub fn loader_conf(tunables: &BTreeMap<String, String>) -> TResult<String> {
    let mut text = String::from("# written by kstorm for this cell\n");
    for (name, value) in tunables {
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
        let value_ok = value
            .chars()
            .all(|c| c.is_ascii_graphic() && !"\"\\".contains(c));
        if !name_ok || !value_ok {
            return Err(TransportError::Refused(format!(
                "tunable {name:?} = {value:?}: names are letters, digits, '.', '_', '-'; values printable, without quotes or backslashes"
            )));
        }
        text.push_str(&format!("{name}=\"{value}\"\n"));
    }
    Ok(text)
}

/// Writes the tunables file, reboots, and logs in again.
fn apply_tunables(
    t: &mut dyn Transport,
    recipe: &GuestRecipe,
    tunables: &BTreeMap<String, String>,
    boot_budget: Duration,
) -> TResult<()> {
    let file = recipe.tunables.as_ref().ok_or_else(|| {
        TransportError::Refused(
            "the variant sets tunables but the image's guest recipe has no `tunables:` file".into(),
        )
    })?;
    t.upload(loader_conf(tunables)?.as_bytes(), &file.path, 0o644)?;
    let (rc, out) = capture::run_words(t, &["sync".into()])?;
    if rc != 0 {
        return Err(TransportError::Refused(format!(
            "sync: {}",
            out.join(" | ")
        )));
    }
    // The reboot takes the shell (and the connection) with it: no status comes back.
    let reboot = capture::command_line(&file.reboot);
    match t.run(&format!("({reboot}) >/dev/null 2>&1 &"), &mut |_| {}) {
        Ok(_) | Err(TransportError::Lost(_)) => {}
        Err(e) => return Err(e),
    }
    // Give the guest time to leave its login prompt before waiting for the next one.
    std::thread::sleep(Duration::from_secs(3));
    t.connect(Instant::now() + boot_budget)
}

/// Sets the boot sysctls and the variant's, then reads back every tunable and sysctl.
fn set_and_read_back(
    t: &mut dyn Transport,
    recipe: &GuestRecipe,
    job: &GuestJob,
) -> TResult<BTreeMap<String, String>> {
    let mut facts = BTreeMap::new();
    facts.insert("payload.route".into(), recipe.payload.route.name().into());
    let sets = recipe.boot_sysctls.iter().chain(&job.sysctls);
    for (name, value) in sets {
        let mut words = recipe.sysctl_set.clone();
        words.push(format!("{name}={value}"));
        let (rc, out) = capture::run_words(t, &words)?;
        if rc != 0 {
            facts.insert(format!("sysctl_error.{name}"), out.join(" | "));
        }
    }
    let names = job.tunables.iter().map(|(n, v)| ("tunable", n, v)).chain(
        recipe
            .boot_sysctls
            .iter()
            .chain(&job.sysctls)
            .map(|(n, v)| ("sysctl", n, v)),
    );
    for (kind, name, asked) in names {
        let mut words = recipe.sysctl_get.clone();
        words.push(name.clone());
        let (rc, out) = capture::run_words(t, &words)?;
        let reported = if rc == 0 {
            reported_value(&out)
        } else {
            format!("(not reported: status {rc})")
        };
        facts.insert(format!("{kind}.{name}.asked"), asked.clone());
        facts.insert(format!("{kind}.{name}.reported"), reported);
    }
    Ok(facts)
}

/// The value a `sysctl -n` printed. The serial shell shares its line with the kernel's console,
/// so kernel messages can land among the output: the value is the last line that is not one.
fn reported_value(out: &[String]) -> String {
    static KERNEL_LINE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let kernel_line = KERNEL_LINE
        .get_or_init(|| regex::Regex::new(r"^\s*\[\s*\d+\.\d+\]").expect("a valid pattern"));
    out.iter()
        .map(|l| l.trim())
        .rfind(|l| !l.is_empty() && !kernel_line.is_match(l))
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod reported_value_tests {
    #[test]
    fn kernel_messages_among_the_output_are_not_the_value() {
        let out: Vec<String> = [
            "[    5.540497] clocksource: timekeeping watchdog on CPU0: Marking clocksource 'tsc' as unstable",
            "2000",
            "[    5.549617] clocksource: Not enough CPUs to check clocksource 'tsc'.",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(super::reported_value(&out), "2000");
        assert_eq!(super::reported_value(&["64M".to_string()]), "64M");
    }
}

/// Uploads the agent's source and compiles it in the guest; the binary's path.
fn compile_agent(t: &mut dyn Transport, recipe: &GuestRecipe) -> TResult<String> {
    let src = format!("{GUEST_DIR}/kstorm-portable.c");
    let bin = format!("{GUEST_DIR}/kstorm-portable");
    t.upload(
        crate::guest_build::portable::AGENT_SOURCE.as_bytes(),
        &src,
        0o644,
    )?;
    let words: Vec<String> = recipe
        .payload
        .compile
        .iter()
        .map(|w| w.replace("{src}", &src).replace("{out}", &bin))
        .collect();
    let (rc, out) = capture::run_words(t, &words)?;
    if rc != 0 {
        return Err(TransportError::Refused(format!(
            "compiling the portable payload in the guest failed (status {rc}): {}",
            out.join(" | ")
        )));
    }
    Ok(bin)
}

/// The agent's arguments: the scenario, then its parameters (defaults filled in) as
/// `key=value`. Lists and maps have no plain form and are left out.
pub fn agent_args(spec: &ScenarioSpec) -> Result<Vec<String>, String> {
    use kstorm_payload::registry::{self, Route};
    let resolved = registry::resolve(Route::PortableC, &spec.name, &spec.params)
        .map_err(|e| format!("{}: {e}", spec.name))?;
    let mut words = vec![spec.name.clone()];
    for (k, v) in resolved.as_object().into_iter().flatten() {
        match v {
            serde_json::Value::String(s) => words.push(format!("{k}={s}")),
            serde_json::Value::Number(n) => words.push(format!("{k}={n}")),
            serde_json::Value::Bool(b) => words.push(format!("{k}={b}")),
            _ => {}
        }
    }
    Ok(words)
}

/// One scenario: captures around the agent's run, its lines turned into frames.
fn run_scenario(
    t: &mut dyn Transport,
    recipe: &GuestRecipe,
    agent: &str,
    spec: &ScenarioSpec,
    index: u32,
    framer: &mut Framer<'_>,
) -> TResult<ScenarioResult> {
    framer.send(&Message::Start {
        scenario: spec.name.clone(),
        index,
    });
    let mut result = ScenarioResult {
        scenario: spec.name.clone(),
        index,
        outcome: Outcome::Fail,
        error: None,
        measurements: BTreeMap::new(),
        facts: BTreeMap::new(),
        series: BTreeMap::new(),
        evidence: Vec::new(),
        vmstat: BTreeMap::new(),
    };
    let args = match agent_args(spec) {
        Ok(a) => a,
        Err(e) => {
            result.error = Some(e);
            return Ok(result);
        }
    };
    let deadline_s = spec
        .params
        .get("deadline_s")
        .and_then(|v| v.as_f64())
        .unwrap_or(30.0);
    let mut caps = Captures::default();
    caps.take(t, &recipe.stats)?;
    let log = format!("{GUEST_DIR}/agent-{index}.log");
    let mut words = vec![agent.to_string()];
    words.extend(args);
    let start = format!(
        "{} > {} 2>&1 & echo $!",
        capture::command_line(&words),
        wire::sh_quote(&log)
    );
    let (_, out) = capture::run_words(t, &["sh".into(), "-c".into(), start])?;
    let pid = out.last().map(|s| s.trim().to_string()).unwrap_or_default();
    let mut reader = AgentLog::default();
    let until = Instant::now() + Duration::from_secs_f64(deadline_s) + AGENT_GRACE;
    let mut during = 0;
    loop {
        let alive = agent_alive(t, &pid)?;
        reader.read_new(t, &log, &spec.name, framer)?;
        if !alive || reader.ended {
            break;
        }
        if Instant::now() >= until {
            result.error = Some(format!(
                "the agent did not end within {deadline_s}s + grace"
            ));
            capture::run_words(t, &["kill".into(), "-9".into(), pid.clone()])?;
            break;
        }
        if during < DURING_CAPTURES && !recipe.stats.is_empty() {
            caps.take(t, &recipe.stats)?;
            during += 1;
        }
        std::thread::sleep(POLL);
    }
    caps.take(t, &recipe.stats)?;
    reader.fill(&mut result);
    caps.summarize(&recipe.stats, &mut result);
    Ok(result)
}

fn agent_alive(t: &mut dyn Transport, pid: &str) -> TResult<bool> {
    if pid.is_empty() || !pid.chars().all(|c| c.is_ascii_digit()) {
        return Ok(false);
    }
    let (rc, _) = capture::run_words(t, &["kill".into(), "-0".into(), pid.into()])?;
    Ok(rc == 0)
}

/// What the agent printed so far, read incrementally from its log.
#[derive(Debug, Default)]
pub struct AgentLog {
    lines_seen: usize,
    pub ended: bool,
    pub outcome: Option<(Outcome, Option<String>)>,
    pub measurements: BTreeMap<String, Measurement>,
    pub facts: BTreeMap<String, String>,
    /// Lines that follow none of the agent's forms.
    pub stray: Vec<String>,
}

impl AgentLog {
    fn read_new(
        &mut self,
        t: &mut dyn Transport,
        log: &str,
        scenario: &str,
        framer: &mut Framer<'_>,
    ) -> TResult<()> {
        let (_, lines) = capture::run_words(t, &["cat".into(), log.into()])?;
        for line in lines.iter().skip(self.lines_seen) {
            if let Some(progress) = self.take(line) {
                framer.send(&Message::Hb {
                    scenario: scenario.to_string(),
                    progress,
                });
            }
        }
        self.lines_seen = self.lines_seen.max(lines.len());
        Ok(())
    }

    /// Reads one line; a heartbeat's progress is returned.
    pub fn take(&mut self, line: &str) -> Option<u64> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["hb", n] => return n.parse().ok(),
            ["m", name, value, unit] => match value.parse::<f64>() {
                Ok(v) => {
                    self.measurements
                        .insert(name.to_string(), Measurement::new(v, unit));
                }
                Err(_) => self.stray.push(line.to_string()),
            },
            ["f", name, value @ ..] => {
                self.facts.insert(name.to_string(), value.join(" "));
            }
            ["end", "pass"] => self.end(Outcome::Pass, None),
            ["end", "fail", why @ ..] => self.end(Outcome::Fail, Some(why.join(" "))),
            // The agent refused what it was asked (a harness bug: the host checks first).
            ["end", "infra", why @ ..] => self.end(Outcome::Infra, Some(why.join(" "))),
            [] => {}
            _ => self.stray.push(line.to_string()),
        }
        None
    }

    fn end(&mut self, outcome: Outcome, why: Option<String>) {
        self.ended = true;
        self.outcome = Some((outcome, why));
    }

    fn fill(self, result: &mut ScenarioResult) {
        match self.outcome {
            Some((outcome, why)) => {
                result.outcome = outcome;
                result.error = result.error.take().or(why);
            }
            None => {
                result
                    .error
                    .get_or_insert_with(|| "the agent ended without an `end` line".into());
            }
        }
        result.measurements.extend(self.measurements);
        result.facts.extend(self.facts);
        if !self.stray.is_empty() {
            result
                .facts
                .insert("agent.stray_lines".into(), self.stray.join(" | "));
        }
    }
}

/// The driver's job for `cell`, when its image has a guest recipe.
pub fn job_for(cell: &crate::matrix::Cell) -> Option<std::sync::Arc<GuestJob>> {
    let recipe = cell.image.guest.clone()?;
    Some(std::sync::Arc::new(GuestJob {
        recipe,
        tunables: cell.variant.tunables.clone(),
        sysctls: cell.variant.sysctl.clone(),
    }))
}
