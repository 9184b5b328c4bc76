//! The monitor: a pure state machine that reads a cell's events (console bytes, frames,
//! transport ends, QEMU's exit, the clock) and decides when and why the cell ends.
//!
//! It does no I/O and reads no clock: every event comes with the time it is handled, so tests
//! drive it with made-up sequences. It holds the deadlines and the crash detector; what it
//! learns along the way is kept in [`Observed`], from which the verdict is judged.

use super::{FrameChannel, FrameStats};
use crate::config::Deadlines;
use crate::detect::{self, CrashReport, Detector, Kind};
use crate::transport::{TransportError, TransportStats};
use kstorm_payload::frame::{self, Message, ScenarioResult};
use std::collections::BTreeSet;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// After a crash report starts, the console is read until it has been quiet this long (the
/// trace, then the kernel's own last words, e.g. GNU Mach's `panic` line after its register
/// dump), before QEMU is stopped...
pub const CRASH_GRACE: Duration = Duration::from_millis(250);
/// ... but never longer than this after the report started (a console that never stops).
pub const CRASH_GRACE_MAX: Duration = Duration::from_secs(2);
/// After the payload says it is done, how long the guest may take to power off. Only a guest
/// that neither powers off, resets (QEMU exits: `-no-reboot`) nor says it halted waits for it.
pub const POWEROFF_GRACE: Duration = Duration::from_secs(15);
/// After a transport failed, how long to keep watching the console for a crash report (a
/// kernel that died also kills the channel: the detector wins) and for signs of life.
pub const TRANSPORT_LOSS_GRACE: Duration = Duration::from_secs(3);

/// Everything that comes back from a running cell, in the order it is handled.
#[derive(Debug)]
pub enum CellEvent {
    /// Console bytes, with the time the reader got them (for the detection latency).
    Console { bytes: Vec<u8>, arrived: Instant },
    /// One line from the frame channel: the results port, or the transport's command output.
    Line(String),
    /// The transport's driver finished: the payload's exit status, or why it could not run.
    TransportEnded {
        end: Result<i32, TransportError>,
        stats: TransportStats,
    },
    /// QEMU closed the console and exited by itself (None: it could not be waited for).
    QemuExited(Option<ExitStatus>),
    /// Ctrl-C or SIGTERM.
    Interrupted,
    /// Nothing happened for a while: time to look at the deadlines.
    Tick,
}

/// Why a cell ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Ending {
    /// The console printed a crash report (its title is refined from the whole report).
    Crash(detect::Event),
    /// The payload said it was done; the guest powered off, reset or halted, or was stopped
    /// after the grace.
    Finished,
    /// The guest went silent past a deadline.
    Silence(Silence),
    /// The cell's own deadline passed while the guest still made progress.
    Timeout,
    /// The transport ended before the payload finished, with no crash on the console.
    TransportEnded {
        end: Result<i32, TransportError>,
        /// The console printed something after the failure: the kernel was alive.
        console_answered: bool,
    },
    /// QEMU exited by itself without the payload finishing and without a report.
    QemuExited(Option<ExitStatus>),
    Interrupted,
}

/// Which silence ended a cell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Silence {
    /// Not a byte on the console before the boot deadline.
    NoConsole,
    /// The console spoke, but the payload never said hello before the boot deadline.
    PayloadNeverStarted,
    /// A scenario stopped beating.
    NoHeartbeat { scenario: String },
}

/// What the monitor learnt from the events: the record's raw material.
#[derive(Debug, Default)]
pub struct Observed {
    pub hello: Option<serde_json::Value>,
    pub results: Vec<ScenarioResult>,
    pub frames: FrameStats,
    /// The scenario between its `start` and its `result`.
    pub running: Option<String>,
    pub last_progress: Option<u64>,
    pub done: bool,
    pub oom_victims: Vec<String>,
    pub console_bytes: u64,
    /// The first crash event and when it was handled.
    pub crash: Option<(detect::Event, Instant)>,
    pub transport: Option<TransportStats>,
    /// Cell start to the payload's hello.
    pub boot_s: Option<f64>,
    /// The first crash line's arrival to its detection.
    pub detect_ms: Option<f64>,
    last_beat: Option<Instant>,
    seqs: BTreeSet<u64>,
}

/// An ending that waits for a grace period (or QEMU's exit) before it is final.
#[derive(Debug)]
enum Pending {
    Crash {
        until: Instant,
        /// The report's start plus [`CRASH_GRACE_MAX`].
        at_most: Instant,
    },
    PowerOff {
        until: Instant,
    },
    TransportLoss {
        until: Instant,
        end: Result<i32, TransportError>,
        console_bytes_then: u64,
    },
}

impl Pending {
    fn until(&self) -> Instant {
        match self {
            Pending::Crash { until, .. }
            | Pending::PowerOff { until }
            | Pending::TransportLoss { until, .. } => *until,
        }
    }
}

pub struct Monitor {
    cell_id: String,
    start: Instant,
    deadlines: Deadlines,
    channel: FrameChannel,
    detector: Detector,
    seen: Observed,
    pending: Option<Pending>,
    ending: Option<Ending>,
    console_lines: LineSplitter,
    note: Option<String>,
    /// The kernel said it halted the machine (the detector's `halted` event).
    halted: bool,
}

impl Monitor {
    /// A monitor for cell `cell_id` whose QEMU started at `start`, with frames on `channel`.
    pub fn new(
        cell_id: &str,
        start: Instant,
        deadlines: Deadlines,
        channel: FrameChannel,
        detector: Detector,
    ) -> Monitor {
        Monitor {
            cell_id: cell_id.to_string(),
            start,
            deadlines,
            channel,
            detector,
            seen: Observed::default(),
            pending: None,
            ending: None,
            console_lines: LineSplitter::default(),
            note: None,
            halted: false,
        }
    }

    /// Handles one event at time `now`; returns the ending when this event decides it. After
    /// the ending, events still add to what was observed (frames in flight, the transport's
    /// counters) but change nothing else.
    pub fn on(&mut self, event: CellEvent, now: Instant) -> Option<Ending> {
        let decided = self.absorb(event, now);
        if self.ending.is_some() {
            return None;
        }
        let ending = decided.or_else(|| self.check_clock(now));
        self.ending.clone_from(&ending);
        ending
    }

    /// The latest progress message (for a progress bar), once.
    pub fn take_note(&mut self) -> Option<String> {
        self.note.take()
    }

    /// The final ending and what was observed. A crash report that arrived with the last bytes
    /// (after the cell was already ending) still wins: it explains the rest.
    pub fn finish(mut self) -> (Ending, Observed, Vec<CrashReport>) {
        let mut ending = self.ending.take().unwrap_or(Ending::Interrupted);
        if let Some((event, _)) = &self.seen.crash {
            if !matches!(ending, Ending::Crash(_)) {
                ending = Ending::Crash(event.clone());
            }
        }
        let mut reports = self.detector.finish();
        if let Ending::Crash(event) = &mut ending {
            // The live event's title is provisional; the finished report may name the guilty
            // function from lines that came after the first (RIP:, the call trace).
            if let Some(first) = detect::Summary::of(&reports).crash {
                *event = first;
            }
        }
        if let Ending::Silence(s) = &ending {
            reports.push(silence_report(s, &self.deadlines));
        }
        if let Some(&max) = self.seen.seqs.iter().next_back() {
            self.seen.frames.missing = max + 1 - self.seen.seqs.len() as u64;
        }
        (ending, self.seen, reports)
    }

    fn absorb(&mut self, event: CellEvent, now: Instant) -> Option<Ending> {
        match event {
            CellEvent::Console { bytes, arrived } => {
                self.on_console(&bytes, arrived, now);
                None
            }
            CellEvent::Line(line) => {
                self.on_frame_line(&line, self.channel, now);
                None
            }
            CellEvent::TransportEnded { end, stats } => {
                self.seen.transport = Some(stats);
                self.on_transport_end(end, now)
            }
            CellEvent::QemuExited(status) => Some(self.on_qemu_exit(status)),
            CellEvent::Interrupted => Some(match &self.seen.crash {
                Some((event, _)) => Ending::Crash(event.clone()),
                None => Ending::Interrupted,
            }),
            CellEvent::Tick => None,
        }
    }

    fn on_console(&mut self, bytes: &[u8], arrived: Instant, now: Instant) {
        self.seen.console_bytes += bytes.len() as u64;
        if let Some(Pending::Crash { until, at_most }) = &mut self.pending {
            // The report is still being printed: keep reading it.
            *until = (now + CRASH_GRACE).min(*at_most);
        }
        for event in self.detector.feed(bytes) {
            if event.kind == Kind::OomKill {
                self.seen
                    .oom_victims
                    .push(event.victim.clone().unwrap_or_else(|| "?".into()));
                self.note = Some(event.title.clone());
            } else if event.kind == Kind::Halted {
                self.on_halted(now);
            } else if event.crash && self.seen.crash.is_none() {
                self.seen.detect_ms =
                    Some(now.saturating_duration_since(arrived).as_secs_f64() * 1000.0);
                self.note = Some(event.title.clone());
                self.seen.crash = Some((event, now));
                // A crash wins over whatever else was pending.
                self.pending = Some(Pending::Crash {
                    until: now + CRASH_GRACE,
                    at_most: now + CRASH_GRACE_MAX,
                });
            }
        }
        // A serial-shell transport reads its frames off the console itself and checks them;
        // elsewhere frames on the console are taken as they are (a Mach task has no other way).
        if self.channel != FrameChannel::Serial {
            for line in self.console_lines.push(bytes) {
                if line.contains(frame::MAGIC) {
                    self.on_frame_line(&line, FrameChannel::Console, now);
                }
            }
        }
    }

    /// The machine is stopped: a finished guest's power-off wait ends now. (The line and the
    /// payload's `done` come on two ports, in either order.)
    fn on_halted(&mut self, now: Instant) {
        self.halted = true;
        if let Some(Pending::PowerOff { until }) = &mut self.pending {
            *until = now;
        }
    }

    fn on_transport_end(
        &mut self,
        end: Result<i32, TransportError>,
        now: Instant,
    ) -> Option<Ending> {
        if matches!(self.pending, Some(Pending::Crash { .. })) {
            return None;
        }
        match end {
            Ok(_) if self.seen.done => Some(Ending::Finished),
            // Only the harness stops a transport, once the cell is ending anyway.
            Err(TransportError::Stopped) => None,
            end => {
                self.pending = Some(Pending::TransportLoss {
                    until: now + TRANSPORT_LOSS_GRACE,
                    end,
                    console_bytes_then: self.seen.console_bytes,
                });
                None
            }
        }
    }

    fn on_qemu_exit(&mut self, status: Option<ExitStatus>) -> Ending {
        match (&self.seen.crash, self.seen.done) {
            (Some((event, _)), _) => Ending::Crash(event.clone()),
            (None, true) => Ending::Finished,
            (None, false) => Ending::QemuExited(status),
        }
    }

    /// The deadlines: a pending ending's grace first, then the cell's, the boot's and the
    /// heartbeat's.
    fn check_clock(&mut self, now: Instant) -> Option<Ending> {
        if let Some(p) = &self.pending {
            if now >= p.until() {
                return Some(self.settle());
            }
            if matches!(p, Pending::Crash { .. }) {
                return None;
            }
        }
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed >= self.deadlines.cell() {
            return Some(Ending::Timeout);
        }
        if self.pending.is_some() {
            return None;
        }
        // Over a transport, the driver holds the boot deadline while it connects (an upload
        // over a serial line may take longer than a boot).
        let boot_watched = matches!(
            self.channel,
            FrameChannel::ResultsPort | FrameChannel::Console
        );
        if boot_watched && self.seen.hello.is_none() && elapsed >= self.deadlines.boot() {
            return Some(Ending::Silence(if self.seen.console_bytes == 0 {
                Silence::NoConsole
            } else {
                Silence::PayloadNeverStarted
            }));
        }
        if let Some(scenario) = &self.seen.running {
            let last = self.seen.last_beat.unwrap_or(self.start);
            if now.saturating_duration_since(last) >= self.deadlines.heartbeat() {
                return Some(Ending::Silence(Silence::NoHeartbeat {
                    scenario: scenario.clone(),
                }));
            }
        }
        None
    }

    /// The pending ending, now that its grace is over.
    fn settle(&mut self) -> Ending {
        match self.pending.take() {
            Some(Pending::Crash { .. }) => match &self.seen.crash {
                Some((event, _)) => Ending::Crash(event.clone()),
                None => Ending::Interrupted,
            },
            Some(Pending::PowerOff { .. }) => Ending::Finished,
            Some(Pending::TransportLoss {
                end,
                console_bytes_then,
                ..
            }) => Ending::TransportEnded {
                end,
                console_answered: self.seen.console_bytes > console_bytes_then,
            },
            None => Ending::Interrupted,
        }
    }

    fn on_frame_line(&mut self, line: &str, channel: FrameChannel, now: Instant) {
        let stats = &mut self.seen.frames;
        let f = match frame::decode(line) {
            Ok(f) => f,
            Err(frame::FrameError::NotAFrame) => return,
            Err(frame::FrameError::BadChecksum { .. }) => {
                stats.bad_checksum += 1;
                return;
            }
            Err(_) => {
                stats.malformed += 1;
                return;
            }
        };
        if f.cell != self.cell_id {
            stats.foreign += 1;
            return;
        }
        if !self.seen.seqs.insert(f.seq) {
            stats.duplicate += 1;
            return;
        }
        stats.received += 1;
        stats.channel.get_or_insert(channel);
        self.seen.last_beat = Some(now);
        self.on_message(f.message, now);
    }

    fn on_message(&mut self, message: Message, now: Instant) {
        match message {
            Message::Hello { .. } => {
                self.seen.boot_s = Some(now.saturating_duration_since(self.start).as_secs_f64());
                self.seen.hello = serde_json::to_value(&message).ok();
                self.note = Some("payload up".into());
            }
            Message::Start { scenario, .. } => {
                self.note = Some(format!("running {scenario}"));
                self.seen.running = Some(scenario);
            }
            Message::Hb { scenario, progress } => {
                self.seen.last_progress = Some(progress);
                self.note = Some(format!("{scenario}: {progress}"));
            }
            Message::Result(r) => {
                self.seen.running = None;
                self.seen.results.push(r);
            }
            Message::Log { .. } => {}
            Message::Done => {
                self.seen.done = true;
                // Over a transport the driver's end says when the payload is gone; a guest
                // whose payload is its init powers off by itself.
                let powers_off = matches!(
                    self.channel,
                    FrameChannel::ResultsPort | FrameChannel::Console
                );
                if powers_off && self.pending.is_none() {
                    let grace = if self.halted {
                        Duration::ZERO
                    } else {
                        POWEROFF_GRACE
                    };
                    self.pending = Some(Pending::PowerOff { until: now + grace });
                }
            }
        }
    }
}

/// Silence is a finding too: a report next to the console's own.
fn silence_report(s: &Silence, deadlines: &Deadlines) -> CrashReport {
    let (kind, title) = match s {
        Silence::NoConsole => (
            Kind::NoOutput,
            "no console output before the boot deadline".to_string(),
        ),
        Silence::PayloadNeverStarted => (
            Kind::NoProgress,
            "payload never started before the boot deadline".to_string(),
        ),
        Silence::NoHeartbeat { scenario } => (
            Kind::NoProgress,
            format!(
                "no heartbeat from {scenario} for {}s",
                deadlines.heartbeat().as_secs()
            ),
        ),
    };
    CrashReport {
        event: detect::Event {
            kind,
            title,
            line: 0,
            crash: false,
            victim: None,
            alt_titles: Vec::new(),
            corrupted: false,
        },
        lines: Vec::new(),
    }
}

/// Splits a byte stream into lines (for frames that come on the console), bounded in size.
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    const MAX: usize = 64 * 1024;

    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                lines.push(String::from_utf8_lossy(&self.partial).into_owned());
                self.partial.clear();
            } else if self.partial.len() < Self::MAX {
                self.partial.push(b);
            }
        }
        lines
    }
}

#[cfg(test)]
#[path = "monitor_tests.rs"]
mod tests;
