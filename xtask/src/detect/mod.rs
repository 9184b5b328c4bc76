//! Crash, hang and OOM detection on console logs.
//!
//! The harness feeds console bytes as QEMU writes them; the detector answers with [`Event`]s as
//! soon as a report starts, and with whole [`Report`]s (start line plus trace) at the end.
//!
//! NOTE: this is the minimal first version (issue 3). Issue 5 replaces the engine with
//! signatures loaded from data files; the public API below stays.

pub mod bench;
pub mod scan;

use serde::{Deserialize, Serialize};

/// Which kernel printed the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Os {
    Linux,
    Freebsd,
    Mach,
    Hurd,
}

/// What kind of report a console log holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Panic,
    Bug,
    Oops,
    GeneralProtectionFault,
    KernelPageFault,
    Sanitizer,
    Warning,
    SoftLockup,
    HardLockup,
    HungTask,
    RcuStall,
    /// The OOM killer killed a process: an event, not a crash.
    OomKill,
    DebuggerEntered,
    KernelTrap,
    ZoneExhausted,
    KmemMapTooSmall,
    BootFailure,
    /// From timing, not text: the guest printed nothing before its deadline.
    NoOutput,
    /// From timing: the heartbeat stopped.
    NoProgress,
    /// From timing: QEMU or the transport died without a kernel report.
    LostConnection,
}

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
}

/// An event with the lines of its report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    #[serde(flatten)]
    pub event: Event,
    pub lines: Vec<String>,
}

/// Streaming detector for one console log.
pub struct Detector {
    os: Os,
    partial: Vec<u8>,
    line_no: u64,
    reports: Vec<Report>,
    /// Index into `reports` of the report still collecting trace lines, and how many more.
    collecting: Option<(usize, usize)>,
}

const TRACE_LINES: usize = 60;

impl Detector {
    pub fn new(os: Os) -> anyhow::Result<Detector> {
        Ok(Detector {
            os,
            partial: Vec::new(),
            line_no: 0,
            reports: Vec::new(),
            collecting: None,
        })
    }

    pub fn os(&self) -> Os {
        self.os
    }

    /// Feeds bytes as they arrive; returns the events recognised in them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                if let Some(e) = self.line(&line) {
                    events.push(e);
                }
            } else {
                self.partial.push(b);
            }
        }
        events
    }

    /// Ends the stream; returns every report with its lines.
    pub fn finish(mut self) -> Vec<Report> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line);
        }
        self.reports
    }

    fn line(&mut self, raw: &[u8]) -> Option<Event> {
        self.line_no += 1;
        let text = String::from_utf8_lossy(raw)
            .trim_end_matches('\r')
            .to_string();
        if let Some((idx, left)) = self.collecting {
            self.reports[idx].lines.push(text.clone());
            self.collecting = if left > 1 {
                Some((idx, left - 1))
            } else {
                None
            };
        }
        if text.contains(guest_payload_magic()) {
            return None;
        }
        let event = minimal_linux(&text, self.line_no)?;
        self.reports.push(Report {
            event: event.clone(),
            lines: vec![text],
        });
        self.collecting = Some((self.reports.len() - 1, TRACE_LINES));
        Some(event)
    }
}

fn guest_payload_magic() -> &'static str {
    kstorm_payload::frame::MAGIC
}

fn minimal_linux(text: &str, line: u64) -> Option<Event> {
    let body = strip_timestamp(text);
    let crash = |kind, title: String| {
        Some(Event {
            kind,
            title,
            line,
            crash: true,
            victim: None,
        })
    };
    if let Some(msg) = body.strip_prefix("Kernel panic - not syncing: ") {
        return crash(Kind::Panic, format!("kernel panic: {}", msg.trim()));
    }
    if body.starts_with("BUG: ") {
        return crash(Kind::Bug, body.to_string());
    }
    if body.starts_with("Oops: ") {
        return crash(Kind::Oops, "Oops".to_string());
    }
    if let Some(rest) = body.strip_prefix("Out of memory: Killed process ") {
        let victim = rest
            .split('(')
            .nth(1)
            .and_then(|s| s.split(')').next())
            .map(str::to_string);
        return Some(Event {
            kind: Kind::OomKill,
            title: format!("OOM kill: {}", victim.as_deref().unwrap_or("?")),
            line,
            crash: false,
            victim,
        });
    }
    None
}

fn strip_timestamp(text: &str) -> &str {
    let t = text.trim_start();
    if t.starts_with('[') {
        if let Some(end) = t.find(']') {
            return t[end + 1..].trim_start();
        }
    }
    t
}
