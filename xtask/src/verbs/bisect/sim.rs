//! Simulated bisections for `bench bisect`: the first bad commit among `commits`, each run of
//! a bad commit showing the target crash with probability `p`, infra failures at rate `q`,
//! unrelated crashes at rate `u`. Drives [`super::rule`] exactly as `bisect-run` does, and a
//! baseline: a fixed number of runs where any crash blames the commit (syzkaller's way).

use super::rule::{Decision, Rule, RunClass, Tally};
use rand::rngs::StdRng;
use rand::RngExt;

#[derive(Debug, Clone, Copy)]
pub struct Model {
    pub commits: usize,
    pub p: f64,
    pub q: f64,
    pub u: f64,
}

/// How a commit is judged in the simulation.
#[derive(Debug, Clone, Copy)]
pub enum Judge {
    Sequential(Rule),
    /// `n` runs; bad if any crash (target or not) shows; infra runs count as clean.
    Fixed(u32),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Outcome {
    pub right: bool,
    pub steps: u32,
    pub runs: u32,
}

fn draw(rng: &mut StdRng, m: &Model, bad: bool) -> RunClass {
    let x: f64 = rng.random();
    let p = if bad { m.p } else { 0.0 };
    if x < m.q {
        RunClass::Infra
    } else if x < m.q + m.u {
        RunClass::OtherCrash
    } else if x < m.q + m.u + (1.0 - m.q - m.u) * p {
        RunClass::Target
    } else {
        RunClass::Clean
    }
}

/// Judges one commit; returns the decision and the runs it took.
fn judge(rng: &mut StdRng, m: &Model, j: &Judge, bad: bool) -> (Decision, u32) {
    match j {
        Judge::Sequential(rule) => {
            let mut t = Tally::default();
            loop {
                if let Some(d) = rule.record(&mut t, draw(rng, m, bad)) {
                    return (d, t.attempts);
                }
            }
        }
        Judge::Fixed(n) => {
            let crashed = (0..*n)
                .any(|_| matches!(draw(rng, m, bad), RunClass::Target | RunClass::OtherCrash));
            (
                if crashed {
                    Decision::Bad
                } else {
                    Decision::Good
                },
                *n,
            )
        }
    }
}

/// One bisection as `git bisect` does it: the parent of commit 0 is known good, the last
/// commit known bad; the midpoint is tested; a skipped commit is replaced by the untested
/// candidate nearest to the midpoint; when only skipped commits are left the answer is
/// ambiguous, which counts as wrong.
pub fn bisect(rng: &mut StdRng, m: &Model, j: &Judge) -> Outcome {
    let first_bad = rng.random_range(0..m.commits);
    let (mut good, mut bad) = (-1i64, m.commits as i64 - 1);
    let mut skipped = vec![false; m.commits];
    let mut out = Outcome::default();
    while bad - good > 1 {
        let mid = (good + bad) / 2;
        let Some(c) = ((good + 1)..bad)
            .filter(|&c| !skipped[c as usize])
            .min_by_key(|&c| (c - mid).abs())
        else {
            return out; // only skipped commits left: git names a range, not a commit
        };
        let (d, runs) = judge(rng, m, j, c as usize >= first_bad);
        out.steps += 1;
        out.runs += runs;
        match d {
            Decision::Good => good = c,
            Decision::Bad => bad = c,
            Decision::Skip(_) => skipped[c as usize] = true,
        }
    }
    out.right = bad as usize == first_bad;
    out
}

/// Fraction right and mean runs per step over `n` bisections.
pub fn many(rng: &mut StdRng, m: &Model, j: &Judge, n: usize) -> (f64, f64) {
    let (mut right, mut steps, mut runs) = (0usize, 0u64, 0u64);
    for _ in 0..n {
        let o = bisect(rng, m, j);
        right += o.right as usize;
        steps += o.steps as u64;
        runs += o.runs as u64;
    }
    (right as f64 / n as f64, runs as f64 / steps.max(1) as f64)
}

/// `cargo xtask bench bisect`: `n` simulated bisections per row, against the fixed-10 baseline
/// simulated in the same run.
pub fn bench(n: usize) -> anyhow::Result<()> {
    use rand::SeedableRng;
    let mut rng = StdRng::seed_from_u64(2019);
    let default_rule = Rule::new(0.3, 0.001, None).map_err(anyhow::Error::msg)?;
    println!("{}\n", default_rule.describe(6));
    println!(
        "{n} bisections per row, first bad commit uniform among 64, infra q, unrelated crashes u"
    );
    println!(
        "{:<5} {:<5} {:<5} {:<44} {:>8} {:>10} {:>10}",
        "p", "q", "u", "judge", "right", "runs/step", "vs fixed10"
    );
    let rows: &[(f64, f64, f64)] = &[
        (0.3, 0.05, 0.02),
        (0.5, 0.05, 0.02),
        (0.9, 0.05, 0.02),
        (1.0, 0.05, 0.02),
        (0.3, 0.0, 0.0),
    ];
    for &(p, q, u) in rows {
        let m = Model {
            commits: 64,
            p,
            q,
            u,
        };
        let (base_right, base_runs) = many(&mut rng, &m, &Judge::Fixed(10), n);
        let stated = Rule::new(p, 0.001, None).map_err(anyhow::Error::msg)?;
        let strict = Rule {
            max_other: 1,
            ..default_rule
        };
        let mut judges = vec![
            (
                "sequential, default p=0.3 alpha=0.001".to_string(),
                default_rule,
            ),
            (
                "sequential, skip at 1st unrelated crash".to_string(),
                strict,
            ),
        ];
        if p != 0.3 {
            judges.push((format!("sequential, stated p={p} alpha=0.001"), stated));
        }
        let line = |name: &str, right: f64, runs: f64| {
            println!(
                "{p:<5} {q:<5} {u:<5} {name:<44} {:>7.2}% {runs:>10.2} {:>10.2}",
                right * 100.0,
                runs / base_runs
            )
        };
        line(
            "fixed 10 runs, any crash = bad (baseline)",
            base_right,
            base_runs,
        );
        for (name, rule) in judges {
            let (right, runs) = many(&mut rng, &m, &Judge::Sequential(rule), n);
            line(&name, right, runs);
        }
    }
    Ok(())
}
