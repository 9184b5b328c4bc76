//! The verdict, as a function of how the cell ended and what was observed on the way.

use super::monitor::{Ending, Observed};
use crate::detect::Kind;
use crate::error::InfraCause;
use crate::transport::TransportError;
use crate::verdict::Verdict;
use kstorm_payload::frame::Outcome;

/// `total_s` is the cell's wall time, `qemu_stderr` what QEMU printed on its own behalf.
pub fn verdict(ending: &Ending, seen: &Observed, total_s: f64, qemu_stderr: &str) -> Verdict {
    let oom = || {
        seen.oom_victims
            .first()
            .map(|v| Verdict::OomKilled { victim: v.clone() })
    };
    match ending {
        Ending::Crash(event) => Verdict::Crash {
            kind: event.kind,
            title: event.title.clone(),
        },
        Ending::Interrupted => {
            Verdict::infra(InfraCause::Interrupted, "interrupted (Ctrl-C or SIGTERM)")
        }
        Ending::Silence(_) => Verdict::Hang {
            last_progress: seen.last_progress,
            scenario: seen.running.clone(),
        },
        Ending::Timeout => Verdict::Timeout { after_s: total_s },
        Ending::Finished => finished(seen).or_else(oom).unwrap_or(Verdict::Pass),
        // The OOM killer may take the payload or the sshd: either way the kernel acted.
        Ending::TransportEnded {
            end,
            console_answered,
        } => oom().unwrap_or_else(|| transport_lost(end, *console_answered)),
        Ending::QemuExited(Some(st)) if st.success() => oom().unwrap_or(Verdict::Crash {
            kind: Kind::LostConnection,
            title: "guest reset or powered off without a report".into(),
        }),
        Ending::QemuExited(Some(st)) => Verdict::infra(
            InfraCause::QemuStart,
            format!("QEMU exited with {st}: {}", last_line(qemu_stderr)),
        ),
        Ending::QemuExited(None) => Verdict::infra(
            InfraCause::QemuStart,
            format!("QEMU could not be waited for: {}", last_line(qemu_stderr)),
        ),
    }
}

/// A scenario whose own checks failed, or that could not do its work (infra), once the
/// payload finished.
fn finished(seen: &Observed) -> Option<Verdict> {
    let with = |outcome| seen.results.iter().find(|r| r.outcome == outcome);
    if let Some(failed) = with(Outcome::Fail) {
        return Some(Verdict::Fail {
            reason: format!(
                "{}: {}",
                failed.scenario,
                failed.error.as_deref().unwrap_or("scenario checks failed")
            ),
        });
    }
    let infra = with(Outcome::Infra)?;
    Some(Verdict::infra(
        InfraCause::GuestTool,
        format!(
            "{}: {}",
            infra.scenario,
            infra.error.as_deref().unwrap_or("could not run")
        ),
    ))
}

fn transport_lost(end: &Result<i32, TransportError>, console_answered: bool) -> Verdict {
    let alive = if console_answered {
        "kernel alive: the console answered after the failure"
    } else {
        "the console was silent after the failure, no crash report"
    };
    let reason = match end {
        Ok(st) => format!(
            "guest refused: the payload exited with status {st} before finishing its plan ({alive})"
        ),
        Err(e @ TransportError::Lost(_)) => format!("{e} ({alive})"),
        Err(e) => e.to_string(),
    };
    Verdict::infra(InfraCause::Transport, reason)
}

/// The last non-empty line of `s`.
pub fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_string()
}
