//! kstorm's guest payload.
//!
//! As PID 1 of a guest (`/init` of the cell's initramfs) it mounts what the scenarios need,
//! reads `/kstorm/plan.json`, runs the plan with frames on the results device, and powers the
//! guest off, whatever happened. Started any other way (a test, a shell over ssh) it runs
//! `--plan FILE` with frames on standard output and touches nothing of the machine.

mod channel;
#[cfg(target_os = "linux")]
mod init;
mod memwatch;
mod progress;
mod runner;
mod scenarios;
mod sys;

use kstorm_payload::plan::Plan;

const USAGE: &str = "usage: kstorm-payload --plan FILE [--disposable]
  As PID 1 it reads /kstorm/plan.json and powers off when done.
  --plan FILE    run this plan, frames on standard output
  --check-plan FILE
                 check scenario names and parameters of a plan without running it
  --disposable   this machine is a throwaway guest: allow the scenarios that harm it
                 (panic, oom, tmpfs-fill, overcommit, cgroup-limit, stress-ng) and kernel-wide
                 settings";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--copy") {
        std::process::exit(scenarios::copy_main(&args[2..]));
    }
    #[cfg(target_os = "linux")]
    if sys::getpid() == 1 {
        init::pid1_main();
    }
    std::process::exit(host_main(&args[1..]));
}

/// Not PID 1: exit code 0 when every scenario passed, 1 when one did not, 2 on usage errors.
fn host_main(args: &[String]) -> i32 {
    let mut plan_path = None;
    let mut disposable = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--plan" => plan_path = it.next().cloned(),
            "--disposable" => disposable = true,
            "--check-plan" => return check_plan(it.next().map(String::as_str).unwrap_or("")),
            "-h" | "--help" => {
                println!("{USAGE}");
                return 0;
            }
            other => {
                eprintln!("kstorm-payload: unknown argument {other:?}\n{USAGE}");
                return 2;
            }
        }
    }
    let Some(path) = plan_path else {
        eprintln!("kstorm-payload: no --plan given\n{USAGE}");
        return 2;
    };
    let plan = match load_plan(&path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kstorm-payload: {e}");
            return 2;
        }
    };
    // Orphans of scenario workers come back to us to be reaped.
    #[cfg(target_os = "linux")]
    sys::linux_set_child_subreaper();
    let mut chan = channel::Channel::stdout(&plan.cell);
    match runner::Runner::new(&mut chan, &plan, disposable) {
        Ok(mut r) => {
            if r.run_plan(&plan) {
                0
            } else {
                1
            }
        }
        Err(e) => {
            eprintln!("kstorm-payload: shared memory: {e}");
            2
        }
    }
}

/// `--check-plan`: 0 when every scenario exists and its parameters parse, else 2 with one
/// line per problem.
fn check_plan(path: &str) -> i32 {
    let plan = match load_plan(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("kstorm-payload: {e}");
            return 2;
        }
    };
    let mut bad = 0;
    for (i, spec) in plan.scenarios.iter().enumerate() {
        let problem = match scenarios::find(&spec.name) {
            None => Some(format!("unknown scenario {:?}", spec.name)),
            Some(s) => s.check(&spec.params).err(),
        };
        if let Some(p) = problem {
            eprintln!("{path}: scenarios[{i}] ({}): {p}", spec.name);
            bad += 1;
        }
    }
    if bad == 0 {
        0
    } else {
        2
    }
}

/// Reads and parses a plan; the error names the file (and line/column for bad JSON).
pub fn load_plan(path: &str) -> Result<Plan, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading plan {path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("plan {path}: {e}"))
}
