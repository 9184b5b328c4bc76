//! Crash, hang and OOM detection on console logs.
//!
//! The harness feeds console bytes as QEMU writes them; the detector answers with [`Event`]s as
//! soon as a report starts, and with whole [`CrashReport`]s (start line plus trace) at the end.
//!
//! What a crash looks like is data: `xtask/signatures/<os>.yaml` (see [`signatures`]). The
//! engine ([`engine`]) prefilters whole chunks with a literal search and runs regexes only on
//! candidate lines, so it keeps up with any console; [`summary`] turns reports into a verdict
//! (the first crash wins the title), [`scan`] is the offline CLI and [`bench`] the benchmark.
//!
//! An [`Event`]'s title is given when the start line is seen (for low latency); the matching
//! [`CrashReport`] from [`Detector::finish`] may carry a better title, learnt from the trace lines
//! (the guilty function in `RIP:`, say). Use the report's title for verdicts.

pub mod bench;
pub mod engine;
mod kind;
pub mod line;
pub mod scan;
pub mod signatures;
pub mod summary;
pub mod title;

pub use engine::Stats;
pub use signatures::Signatures;
pub use summary::Summary;

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Which kernel printed the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Linux,
    Freebsd,
    Openbsd,
    Netbsd,
    Mach,
    Hurd,
}

impl Os {
    pub const ALL: [Os; 6] = [
        Os::Linux,
        Os::Freebsd,
        Os::Openbsd,
        Os::Netbsd,
        Os::Mach,
        Os::Hurd,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Os::Linux => "linux",
            Os::Freebsd => "freebsd",
            Os::Openbsd => "openbsd",
            Os::Netbsd => "netbsd",
            Os::Mach => "mach",
            Os::Hurd => "hurd",
        }
    }
}

pub use kind::Kind;
/// A report recognised in the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: Kind,
    /// Stable title: numbers and addresses stripped, the message or guilty function kept.
    pub title: String,
    /// 1-based line number of the report's first line in the log.
    pub line: u64,
    /// True for crashes; false for events such as OOM kills.
    pub crash: bool,
    /// For OOM kills: the killed process's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub victim: Option<String>,
    /// Other titles of the same bug ("bad-access in X" beside "KASAN: use-after-free Read in
    /// X"): two reports are the same crash when any of their titles agree
    /// ([`title::same_crash`]). Absent in results written before they existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alt_titles: Vec<String>,
    /// The report is damaged (its trace absent, cut or interleaved with other output), so its
    /// title could not name the culprit: such titles read `<class> in corrupted`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub corrupted: bool,
}

/// An event with the lines of its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CrashReport {
    #[serde(flatten)]
    pub event: Event,
    pub lines: Vec<String>,
}

/// Streaming detector for one console log.
pub struct Detector {
    engine: engine::Engine,
}

impl Detector {
    /// A detector with the shipped signatures for `os` (compiled once per process).
    pub fn new(os: Os) -> anyhow::Result<Detector> {
        Ok(Detector::with_signatures(Signatures::builtin(os)?))
    }

    /// A detector with signatures from a file (its `os:` field names the OS).
    pub fn from_signature_file(path: &Path) -> anyhow::Result<Detector> {
        Ok(Detector::with_signatures(Arc::new(Signatures::from_file(
            path,
        )?)))
    }

    /// A detector sharing already loaded signatures (one load for many cells).
    pub fn with_signatures(signatures: Arc<Signatures>) -> Detector {
        Detector {
            engine: engine::Engine::new(signatures),
        }
    }

    pub fn os(&self) -> Os {
        self.engine.signatures().os
    }

    /// Feeds bytes as they arrive; returns the events whose start lines they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.engine.feed(bytes)
    }

    /// Line count and what was cut (overlong lines, reports over the cap).
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Ends the stream; returns every report with its lines and final title.
    pub fn finish(self) -> Vec<CrashReport> {
        self.engine.finish()
    }
}
