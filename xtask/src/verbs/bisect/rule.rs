//! The decision rule of `bisect-run`: a sequential probability-ratio test (Wald) between
//!
//! - H1 "bad": every counted run shows the target crash with probability at least `p`,
//! - H0 "good": no run ever shows it.
//!
//! Under H0 the target crash has probability 0, so one matching crash makes the likelihood
//! ratio infinite: "bad" is conclusive at once and is never wrong under the assumptions. Each
//! clean run multiplies the ratio by `1 - p`; Wald's lower boundary `ln(alpha)` is crossed
//! after `n = ceil(ln(alpha) / ln(1 - p))` clean runs, so a bad commit is called good with
//! probability at most `(1 - p)^n <= alpha`.
//!
//! Runs that say nothing about the target crash are not evidence: an infra failure is retried;
//! an unrelated crash hides whether the target would have come, so it is retried too, up to
//! `max_other` of them (then the commit is skipped: the unrelated crash is in the way). A build
//! or boot failure skips the commit at once. A commit is also skipped when `max_runs`
//! attempts pass without a decision. A skip is never a blame.
//!
//! This module is pure: no I/O, so the bench and the tests drive exactly what the CLI runs.

use serde::{Deserialize, Serialize};

/// What one run says about the target crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RunClass {
    /// The target crash (title match).
    Target,
    /// The kernel booted and the target crash did not happen.
    Clean,
    /// A crash with another title: it may have hidden the target.
    OtherCrash,
    /// The kernel booted to nothing (no console, no payload).
    BootFailure,
    /// The kernel (or the image) could not be built, or the commit's files do not load.
    BuildFailure,
    /// The host or the harness failed.
    Infra,
}

/// Why a commit was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    BuildFailure,
    /// `--filter` selects no cell (or several) at this commit.
    NoCell,
    /// The suite file does not load at this commit.
    DoesNotLoad,
    BootFailure,
    /// `max_other` unrelated crashes.
    UnrelatedCrashes,
    /// `max_runs` attempts without a decision (mostly infra failures).
    Budget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", content = "reason", rename_all = "kebab-case")]
pub enum Decision {
    Good,
    Bad,
    Skip(SkipReason),
}

impl Decision {
    /// `git bisect run`'s convention: 0 good, 1 bad, 125 skip.
    pub fn exit_code(self) -> i32 {
        match self {
            Decision::Good => 0,
            Decision::Bad => 1,
            Decision::Skip(_) => 125,
        }
    }
}

/// Counts of the runs of one commit so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub attempts: u32,
    pub clean: u32,
    pub other: u32,
    pub infra: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// Least probability that a run of a bad commit shows the target crash.
    pub p: f64,
    /// Bound on the probability of calling a bad commit good.
    pub alpha: f64,
    /// Clean runs that make a commit good: the least `n` with `(1 - p)^n <= alpha`.
    pub clean_needed: u32,
    /// Attempts (retries included) before the commit is skipped.
    pub max_runs: u32,
    /// Unrelated crashes before the commit is skipped.
    pub max_other: u32,
}

/// Unrelated crashes tolerated per commit: with u = 0.02 per run and ~20 runs, five or more
/// happen with probability ~1e-4, while one or more happens ~1 time in 3 (see `bench bisect`).
pub const DEFAULT_MAX_OTHER: u32 = 5;

impl Rule {
    /// The rule for `p` and `alpha`; `max_runs` defaults to twice the clean runs plus 10.
    pub fn new(p: f64, alpha: f64, max_runs: Option<u32>) -> Result<Rule, String> {
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!(
                "the reproduction probability must be in (0, 1], not {p}"
            ));
        }
        if !(alpha > 0.0 && alpha < 1.0) {
            return Err(format!("alpha must be in (0, 1), not {alpha}"));
        }
        let clean_needed = clean_runs_for(p, alpha);
        let max_runs = max_runs.unwrap_or(2 * clean_needed + 10);
        if max_runs < clean_needed {
            return Err(format!(
                "{max_runs} runs cannot decide \"good\": {clean_needed} clean runs are needed \
                 for p = {p} at alpha = {alpha}"
            ));
        }
        Ok(Rule {
            p,
            alpha,
            clean_needed,
            max_runs,
            max_other: DEFAULT_MAX_OTHER,
        })
    }

    /// The bound on calling a bad commit good: `(1 - p)^clean_needed` (at most `alpha`).
    pub fn miss_probability(&self) -> f64 {
        (1.0 - self.p).powi(self.clean_needed as i32)
    }

    /// Adds one run and returns the decision, if there is one now.
    pub fn record(&self, tally: &mut Tally, run: RunClass) -> Option<Decision> {
        tally.attempts += 1;
        match run {
            RunClass::Target => return Some(Decision::Bad),
            RunClass::BuildFailure => return Some(Decision::Skip(SkipReason::BuildFailure)),
            RunClass::BootFailure => return Some(Decision::Skip(SkipReason::BootFailure)),
            RunClass::Clean => tally.clean += 1,
            RunClass::OtherCrash => tally.other += 1,
            RunClass::Infra => tally.infra += 1,
        }
        if tally.clean >= self.clean_needed {
            Some(Decision::Good)
        } else if tally.other >= self.max_other {
            Some(Decision::Skip(SkipReason::UnrelatedCrashes))
        } else if tally.attempts >= self.max_runs {
            Some(Decision::Skip(SkipReason::Budget))
        } else {
            None
        }
    }

    /// The rule and its error probabilities, as `bisect-run` prints them.
    pub fn describe(&self, steps: u32) -> String {
        let miss = self.miss_probability();
        format!(
            "rule: sequential probability-ratio test, H1 \"bad\": the target crash shows in at \
             least p = {p} of the runs; H0 \"good\": it never shows.\n\
             rule: bad at the first matching crash (P(bad | good) = 0 under H0); good after \
             {n} clean runs (P(good | bad) <= (1-p)^{n} = {miss:.2e} <= alpha = {alpha}).\n\
             rule: infra runs are retried (not evidence); an unrelated crash is retried, {o} of \
             them skip; build or boot failure skips; {m} attempts without a decision skip.\n\
             rule: over a bisection of {steps} steps, P(wrong commit) <= {steps} x {miss:.2e} \
             = {total:.2e}, assuming runs are independent and the title tells the crashes apart.",
            p = self.p,
            n = self.clean_needed,
            alpha = self.alpha,
            o = self.max_other,
            m = self.max_runs,
            total = steps as f64 * miss,
        )
    }
}

/// The least `n` with `(1 - p)^n <= alpha` (1 when p = 1).
pub fn clean_runs_for(p: f64, alpha: f64) -> u32 {
    if p >= 1.0 {
        return 1;
    }
    let n = (alpha.ln() / (1.0 - p).ln()).ceil();
    // Guard against rounding just above an integer: check the bound itself.
    let mut n = n.max(1.0) as u32;
    while n > 1 && (1.0 - p).powi(n as i32 - 1) <= alpha {
        n -= 1;
    }
    while (1.0 - p).powi(n as i32) > alpha {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn clean_runs_meet_the_bound_and_no_fewer() {
        for (p, alpha) in [
            (0.3, 0.001),
            (0.3, 0.01),
            (0.5, 0.05),
            (0.9, 0.001),
            (0.1, 0.01),
        ] {
            let n = clean_runs_for(p, alpha);
            assert!((1.0f64 - p).powi(n as i32) <= alpha, "p {p} alpha {alpha}");
            assert!(
                (1.0f64 - p).powi(n as i32 - 1) > alpha,
                "p {p} alpha {alpha}"
            );
        }
        assert_eq!(clean_runs_for(0.3, 0.001), 20);
        assert_eq!(clean_runs_for(0.9, 0.001), 3);
        assert_eq!(clean_runs_for(1.0, 0.001), 1);
    }

    #[test]
    fn one_target_crash_is_bad_and_skips_are_never_blames() {
        let rule = Rule::new(0.3, 0.001, None).unwrap();
        let mut t = Tally::default();
        assert_eq!(rule.record(&mut t, RunClass::Clean), None);
        assert_eq!(rule.record(&mut t, RunClass::Infra), None);
        assert_eq!(rule.record(&mut t, RunClass::Target), Some(Decision::Bad));
        for (class, reason) in [
            (RunClass::BuildFailure, SkipReason::BuildFailure),
            (RunClass::BootFailure, SkipReason::BootFailure),
        ] {
            let d = rule.record(&mut Tally::default(), class).unwrap();
            assert_eq!(d, Decision::Skip(reason));
            assert_eq!(d.exit_code(), 125);
        }
        let mut t = Tally::default();
        let d = (0..rule.max_other).find_map(|_| rule.record(&mut t, RunClass::OtherCrash));
        assert_eq!(d, Some(Decision::Skip(SkipReason::UnrelatedCrashes)));
        let mut t = Tally::default();
        let d = (0..rule.max_runs).find_map(|_| rule.record(&mut t, RunClass::Infra));
        assert_eq!(d, Some(Decision::Skip(SkipReason::Budget)));
        assert_eq!(t.attempts, rule.max_runs);
    }

    #[test]
    fn too_few_runs_is_refused() {
        assert!(Rule::new(0.3, 0.001, Some(5)).is_err());
        assert!(Rule::new(0.0, 0.001, None).is_err());
        assert!(Rule::new(0.3, 1.0, None).is_err());
    }

    /// Runs one commit of the simulated model: infra at rate q, unrelated crashes at rate u,
    /// the target at rate p (0 on good commits).
    fn simulate(rule: &Rule, rng: &mut StdRng, p: f64, q: f64, u: f64) -> Decision {
        let mut t = Tally::default();
        loop {
            let x: f64 = rng.random();
            let class = if x < q {
                RunClass::Infra
            } else if x < q + u {
                RunClass::OtherCrash
            } else if x < q + u + (1.0 - q - u) * p {
                RunClass::Target
            } else {
                RunClass::Clean
            };
            if let Some(d) = rule.record(&mut t, class) {
                return d;
            }
        }
    }

    /// The documented error rates hold on simulated commits (fixed seed): a bad commit at the
    /// stated p is called good at most alpha of the time (with sampling slack), a good one is
    /// never called bad, and skips stay rare at q = 0.05, u = 0.02.
    #[test]
    fn documented_error_rates_hold() {
        let mut rng = StdRng::seed_from_u64(11);
        let trials = 200_000;
        for (p, alpha) in [(0.3, 0.01), (0.5, 0.05), (0.9, 0.001)] {
            let rule = Rule::new(p, alpha, None).unwrap();
            let missed = (0..trials)
                .filter(|_| simulate(&rule, &mut rng, p, 0.05, 0.02) == Decision::Good)
                .count() as f64
                / trials as f64;
            // 4 standard deviations of a binomial proportion at the bound.
            let slack = 4.0 * (alpha * (1.0 - alpha) / trials as f64).sqrt();
            assert!(missed <= rule.miss_probability() + slack, "p {p}: {missed}");
            assert!(
                missed > 0.0 || rule.miss_probability() < 1e-4,
                "p {p}: test too weak"
            );
        }
        let rule = Rule::new(0.3, 0.001, None).unwrap();
        let mut skipped = 0;
        for _ in 0..20_000 {
            match simulate(&rule, &mut rng, 0.0, 0.05, 0.02) {
                Decision::Bad => panic!("a good commit was blamed"),
                Decision::Skip(_) => skipped += 1,
                Decision::Good => {}
            }
        }
        assert!(skipped < 20, "{skipped} good commits skipped");
    }
}
