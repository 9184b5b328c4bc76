//! How a cell ended, as a type, and whether that is what the suite expected.

use crate::config::Expect;
use crate::detect::Kind;
pub use crate::error::InfraCause;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "kebab-case")]
pub enum Verdict {
    /// Every scenario ran and its own checks held.
    Pass,
    /// A scenario reported failure (its checks did not hold), the kernel stayed up.
    Fail { reason: String },
    /// The kernel crashed: panic, oops, BUG, trap... `title` is stable across runs.
    Crash { kind: Kind, title: String },
    /// The guest stopped making progress: heartbeat silence past its deadline.
    Hang {
        /// The last progress count before the silence. Written as `hung_at`, and the scenario
        /// as `hung_in`: the verdict is flattened into a record whose own `last_progress` and
        /// `scenario` must not be shadowed.
        #[serde(rename = "hung_at")]
        last_progress: Option<u64>,
        /// The scenario that stopped beating (None: the boot).
        #[serde(rename = "hung_in")]
        scenario: Option<String>,
    },
    /// The OOM killer acted (and no crash happened).
    OomKilled { victim: String },
    /// The cell's own deadline passed while the guest was still making progress.
    Timeout { after_s: f64 },
    /// The host or the harness failed: never blamed on the kernel.
    Infra { cause: InfraCause, reason: String },
}

impl Verdict {
    pub fn infra(cause: InfraCause, reason: impl Into<String>) -> Verdict {
        Verdict::Infra {
            cause,
            reason: reason.into(),
        }
    }

    /// The verdict for an error that stopped a cell before or while it ran: the cause an
    /// inner step typed, else `fallback` (the step that failed).
    pub fn from_error(e: &anyhow::Error, fallback: InfraCause) -> Verdict {
        let cause = crate::error::InfraError::find(e).map_or(fallback, |i| i.cause);
        Verdict::infra(cause, format!("{e:#}"))
    }
}

impl Verdict {
    /// A short word for tables.
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail { .. } => "fail",
            Verdict::Crash { .. } => "crash",
            Verdict::Hang { .. } => "hang",
            Verdict::OomKilled { .. } => "oom",
            Verdict::Timeout { .. } => "timeout",
            Verdict::Infra { .. } => "infra",
        }
    }

    /// One line: the word and what goes with it.
    pub fn describe(&self) -> String {
        match self {
            Verdict::Pass => "pass".into(),
            Verdict::Fail { reason } => format!("fail: {reason}"),
            Verdict::Crash { title, .. } => format!("crash: {title}"),
            Verdict::Hang {
                last_progress,
                scenario,
            } => format!(
                "hang in {} (last progress {})",
                scenario.as_deref().unwrap_or("boot"),
                last_progress
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "none".into())
            ),
            Verdict::OomKilled { victim } => format!("oom: killed {victim}"),
            Verdict::Timeout { after_s } => format!("timeout after {after_s:.0}s"),
            Verdict::Infra { cause, reason } => format!("infra ({}): {reason}", cause.word()),
        }
    }

    pub fn is_infra(&self) -> bool {
        matches!(self, Verdict::Infra { .. })
    }
}

/// Whether `verdict` is what the case expected. A cell expected to crash that crashes with the
/// expected title passes; an infra failure never matches anything.
pub fn meets(expect: Expect, expect_title: Option<&str>, verdict: &Verdict) -> bool {
    match (expect, verdict) {
        (_, Verdict::Infra { .. }) => false,
        (Expect::Pass, Verdict::Pass) => true,
        (Expect::Fail, Verdict::Fail { .. }) => true,
        (Expect::Crash, Verdict::Crash { title, .. }) => {
            expect_title.is_none_or(|t| title.contains(t))
        }
        (Expect::Hang, Verdict::Hang { .. }) => true,
        (Expect::Oom, Verdict::OomKilled { .. }) => true,
        (Expect::Timeout, Verdict::Timeout { .. }) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crash(title: &str) -> Verdict {
        Verdict::Crash {
            kind: Kind::Panic,
            title: title.into(),
        }
    }

    #[test]
    fn expectations() {
        assert!(meets(Expect::Pass, None, &Verdict::Pass));
        assert!(!meets(Expect::Pass, None, &crash("x")));
        assert!(meets(
            Expect::Crash,
            None,
            &crash("kernel panic: sysrq triggered crash")
        ));
        assert!(meets(
            Expect::Crash,
            Some("sysrq"),
            &crash("kernel panic: sysrq triggered crash")
        ));
        assert!(!meets(
            Expect::Crash,
            Some("zone map"),
            &crash("kernel panic: sysrq triggered crash")
        ));
        assert!(meets(
            Expect::Hang,
            None,
            &Verdict::Hang {
                last_progress: Some(3),
                scenario: None
            }
        ));
        assert!(meets(
            Expect::Oom,
            None,
            &Verdict::OomKilled {
                victim: "hog".into()
            }
        ));
        assert!(!meets(Expect::Oom, None, &Verdict::Pass));
        for e in [
            Expect::Pass,
            Expect::Fail,
            Expect::Crash,
            Expect::Hang,
            Expect::Oom,
            Expect::Timeout,
        ] {
            assert!(
                !meets(e, None, &Verdict::infra(InfraCause::Harness, "x")),
                "{e:?}"
            );
        }
    }

    #[test]
    fn serialized_shape() {
        let v = serde_json::to_value(Verdict::Hang {
            last_progress: Some(7),
            scenario: Some("fork-hold".into()),
        })
        .unwrap();
        assert_eq!(v["verdict"], "hang");
        assert_eq!(v["hung_at"], 7);
        assert_eq!(v["hung_in"], "fork-hold");
    }

    /// A hang's record reads back: the verdict is flattened into the record, so no field of a
    /// verdict may repeat one of the record's (`scenario` did).
    #[test]
    fn a_hang_record_round_trips() {
        let cell = crate::session::accel::probe_cell().unwrap();
        let rec = crate::cell::CellRecord::unstarted(
            &cell,
            crate::qemu::Accel::Tcg,
            Verdict::Hang {
                last_progress: Some(3),
                scenario: Some("smoke".into()),
            },
        );
        let text = serde_json::to_string(&rec).unwrap();
        let back: crate::cell::CellRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(back.verdict, rec.verdict);
        assert_eq!(back.scenario, "smoke");
    }
}
