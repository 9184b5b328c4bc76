//! Runs the built payload on this host (not as PID 1) with plans of the scenarios that are
//! safe here, and checks what the frames say. The destructive scenarios are tested only in a
//! guest; here we check that they refuse to run.

use kstorm_payload::frame::{decode, Message, Outcome, ScenarioResult};
use std::process::Command;

/// Runs a plan; returns the exit code and the decoded frames (every stdout line must be one).
fn run_plan(name: &str, plan: serde_json::Value) -> (i32, Vec<(u64, Message)>) {
    let dir =
        std::env::temp_dir().join(format!("kstorm-payload-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plan.json");
    std::fs::write(&path, plan.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kstorm-payload"))
        .arg("--plan")
        .arg(&path)
        .output()
        .expect("payload runs");
    let stdout = String::from_utf8(out.stdout).expect("frames are UTF-8");
    let frames: Vec<(u64, Message)> = stdout
        .lines()
        .map(|l| {
            let f = decode(l).unwrap_or_else(|e| panic!("not a frame: {l:?}: {e}"));
            assert_eq!(f.cell, name);
            (f.seq, f.message)
        })
        .collect();
    for (i, (seq, _)) in frames.iter().enumerate() {
        assert_eq!(*seq, i as u64, "sequence numbers count from 0 without gaps");
    }
    let _ = std::fs::remove_dir_all(&dir);
    (out.status.code().unwrap_or(-1), frames)
}

fn results(frames: &[(u64, Message)]) -> Vec<ScenarioResult> {
    frames
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Result(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

fn num(r: &ScenarioResult, name: &str) -> f64 {
    r.measurements
        .get(name)
        .unwrap_or_else(|| {
            panic!(
                "{} has no measurement {name}: {:?}",
                r.scenario,
                r.measurements.keys()
            )
        })
        .value
}

#[test]
fn safe_scenarios_measure_real_behaviour() {
    let plan = serde_json::json!({
        "cell": "host-safe",
        "scenarios": [
            {"name": "smoke"},
            {"name": "fork-hold", "params": {"children": 12, "fds": 6, "fd_kind": "socket", "hold_ms": 50}},
            {"name": "spawn-kill", "params": {"cycles": 3, "batch": 4, "fds": 8, "leak_settle_ms": 10}},
            {"name": "mmap-group", "params": {"counts": [1, 4], "samples": 5, "file_kib": 64, "dir": std::env::temp_dir()}},
            {"name": "copies", "params": {"counts": [1, 3], "probe_rounds": 3, "touch_kib": 64}},
            {"name": "rlimits", "params": {"nofile": 40, "nproc": 6, "as_mib": 48}},
        ]
    });
    let (code, frames) = run_plan("host-safe", plan);
    assert!(matches!(frames.first(), Some((_, Message::Hello { .. }))));
    assert!(matches!(frames.last(), Some((_, Message::Done))));
    let rs = results(&frames);
    assert_eq!(rs.len(), 6);
    for r in &rs {
        assert_eq!(r.outcome, Outcome::Pass, "{}: {:?}", r.scenario, r.error);
    }
    assert_eq!(code, 0);
    assert!(num(&rs[0], "mem_total") > 0.0);
    // fork-hold: every child up, each holding its 6 descriptors.
    assert_eq!(num(&rs[1], "children"), 12.0);
    assert_eq!(num(&rs[1], "fds_held"), 72.0);
    assert_eq!(rs[1].facts["stop"], "limit");
    assert!(rs[1].measurements.contains_key("leak_slab_before"));
    assert_eq!(num(&rs[2], "cycles"), 3.0);
    assert_eq!(num(&rs[2], "children_spawned"), 12.0);
    assert_eq!(rs[2].facts["recovered"], "yes");
    // mmap-group: latencies for every N.
    for n in [1, 4] {
        for what in ["join", "leave", "modify_map", "modify_write"] {
            assert_eq!(num(&rs[3], &format!("n{n}_{what}_n")), 5.0, "n{n} {what}");
            assert!(
                num(&rs[3], &format!("n{n}_{what}_p99"))
                    >= num(&rs[3], &format!("n{n}_{what}_p50"))
            );
        }
        assert_eq!(num(&rs[3], &format!("n{n}_holders")), n as f64);
    }
    // copies: both modes, every copy started, memory measured.
    for m in ["fork", "exec"] {
        assert_eq!(num(&rs[4], &format!("{m}_n3_started")), 3.0);
        assert!(num(&rs[4], &format!("{m}_n3_pss_per_copy")) > 0.0);
        assert_eq!(num(&rs[4], &format!("{m}_n3_probe_n")), 3.0);
    }
    // rlimits: the right errno for each limit.
    assert_eq!(rs[5].facts["nofile_errno"], "EMFILE");
    assert_eq!(rs[5].facts["nproc_errno"], "EAGAIN");
    assert_eq!(rs[5].facts["as_errno"], "ENOMEM");
    assert!(num(&rs[5], "nofile_reached") < 40.0);
}

#[test]
fn heartbeat_keeps_coming_while_a_scenario_is_busy() {
    let plan = serde_json::json!({
        "cell": "host-hb",
        "heartbeat_ms": 200,
        "scenarios": [{"name": "fd-churn", "params": {"procs": 2, "duration_s": 2.0, "leak_settle_ms": 10}}]
    });
    let (_, frames) = run_plan("host-hb", plan);
    let hbs: Vec<u64> = frames
        .iter()
        .filter_map(|(_, m)| match m {
            Message::Hb { progress, .. } => Some(*progress),
            _ => None,
        })
        .collect();
    // About 2 s of churn at 200 ms: at least a handful of beats, progress never going back.
    assert!(hbs.len() >= 5, "{} heartbeats", hbs.len());
    assert!(hbs.windows(2).all(|w| w[1] >= w[0]));
    assert!(*hbs.last().unwrap() > 0);
    let r = &results(&frames)[0];
    assert_eq!(r.outcome, Outcome::Pass, "{:?}", r.error);
    assert!(num(r, "opens") > 0.0);
    assert!(r.series.contains_key("sys_mem_available_kib"));
}

#[test]
fn hang_stops_the_heartbeat_and_ends_at_its_own_deadline() {
    let plan = serde_json::json!({
        "cell": "host-hang",
        "heartbeat_ms": 100,
        "scenarios": [{"name": "hang", "params": {"deadline_s": 1.5}}]
    });
    let (code, frames) = run_plan("host-hang", plan);
    let hbs = frames
        .iter()
        .filter(|(_, m)| matches!(m, Message::Hb { .. }))
        .count();
    // At most the beat sent before the scenario paused them.
    assert!(hbs <= 1, "{hbs} heartbeats during a hang");
    let r = &results(&frames)[0];
    assert_eq!(r.outcome, Outcome::Fail);
    assert_eq!(code, 1);
}

#[test]
fn bad_params_unknown_scenarios_and_guest_only_scenarios_fail_clearly() {
    let plan = serde_json::json!({
        "cell": "host-bad",
        "scenarios": [
            {"name": "fork-hold", "params": {"childern": 3}},
            {"name": "no-such-scenario"},
            {"name": "tmpfs-fill", "params": {"phases": ["limited"]}},
            {"name": "smoke"},
        ]
    });
    let (code, frames) = run_plan("host-bad", plan);
    let rs = results(&frames);
    assert_eq!(code, 1);
    assert!(
        rs[0].error.as_deref().unwrap().contains("childern"),
        "{:?}",
        rs[0].error
    );
    assert!(
        rs[1].error.as_deref().unwrap().contains("unknown scenario"),
        "{:?}",
        rs[1].error
    );
    assert!(
        rs[2].error.as_deref().unwrap().contains("PID 1"),
        "{:?}",
        rs[2].error
    );
    assert_eq!(rs[3].outcome, Outcome::Pass, "later scenarios still run");
}

#[test]
fn bad_plan_file_is_a_usage_error_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("kstorm-payload-badplan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plan.json");
    std::fs::write(&path, r#"{"cell": "x", "scenarios": [], "bogus": 1}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kstorm-payload"))
        .arg("--plan")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("plan.json") && err.contains("bogus"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn check_plan_validates_names_and_params_without_running() {
    let dir = std::env::temp_dir().join(format!("kstorm-payload-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.json");
    // Guest-only scenarios are checked too (nothing runs).
    std::fs::write(
        &good,
        r#"{"cell":"c","scenarios":[{"name":"oom","params":{"adjs":[1,2]}},{"name":"panic"}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kstorm-payload"))
        .arg("--check-plan")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"cell":"c","scenarios":[{"name":"oom","params":{"adj":[1]}},{"name":"nope"}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_kstorm-payload"))
        .arg("--check-plan")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("scenarios[0]") && err.contains("`adj`"),
        "{err}"
    );
    assert!(
        err.contains("scenarios[1]") && err.contains("nope"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
