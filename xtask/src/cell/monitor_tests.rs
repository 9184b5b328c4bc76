//! The monitor and the judge on made-up event sequences: no QEMU, no clock.

use super::*;
use crate::cell::judge;
use crate::detect::Os;
use crate::error::InfraCause;
use crate::verdict::Verdict;
use kstorm_payload::frame::{encode, Outcome};
use std::os::unix::process::ExitStatusExt;

const CELL: &str = "c@linux-128M-base";
const PANIC: &[u8] = b"[    3.1] Kernel panic - not syncing: sysrq triggered crash\n";

/// A cell under test: a monitor, a start instant and the sequence number of the next frame.
struct Sim {
    m: Monitor,
    t0: Instant,
    seq: u64,
    ending: Option<Ending>,
}

impl Sim {
    fn new(channel: FrameChannel) -> Sim {
        Sim::with(channel, Deadlines::default())
    }

    fn with(channel: FrameChannel, deadlines: Deadlines) -> Sim {
        Sim::on_os(channel, deadlines, Os::Linux)
    }

    fn on_os(channel: FrameChannel, deadlines: Deadlines, os: Os) -> Sim {
        let t0 = Instant::now();
        let detector = Detector::new(os).unwrap();
        Sim {
            m: Monitor::new(CELL, t0, deadlines, channel, detector),
            t0,
            seq: 0,
            ending: None,
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.t0 + Duration::from_millis(ms)
    }

    /// Feeds `event` at `ms` after the start; remembers the first ending.
    fn feed(&mut self, ms: u64, event: CellEvent) -> Option<Ending> {
        let e = self.m.on(event, self.at(ms));
        if self.ending.is_none() {
            self.ending.clone_from(&e);
        }
        e
    }

    fn console(&mut self, ms: u64, bytes: &[u8]) -> Option<Ending> {
        let arrived = self.at(ms);
        self.feed(
            ms,
            CellEvent::Console {
                bytes: bytes.to_vec(),
                arrived,
            },
        )
    }

    fn frame_line(&mut self, message: Message) -> String {
        let line = encode(CELL, self.seq, &message);
        self.seq += 1;
        line
    }

    fn frame(&mut self, ms: u64, message: Message) -> Option<Ending> {
        let line = self.frame_line(message);
        self.feed(ms, CellEvent::Line(line))
    }

    fn tick(&mut self, ms: u64) -> Option<Ending> {
        self.feed(ms, CellEvent::Tick)
    }

    /// The payload's usual life up to (not including) `done`.
    fn runs_a_scenario(&mut self, from_ms: u64) {
        self.frame(from_ms, hello());
        self.frame(from_ms + 10, start("smoke"));
        self.frame(
            from_ms + 20,
            Message::Hb {
                scenario: "smoke".into(),
                progress: 5,
            },
        );
        self.frame(from_ms + 30, result("smoke", Outcome::Pass));
    }

    /// Finishes the monitor and judges it, as the runner does.
    fn verdict(self) -> (Ending, Verdict, Observed) {
        let (ending, seen, _) = self.m.finish();
        let v = judge::verdict(&ending, &seen, 1.0, "qemu-system-x86_64: some error\n");
        (ending, v, seen)
    }
}

fn hello() -> Message {
    Message::Hello {
        agent: "linux-payload".into(),
        agent_version: "1".into(),
        kernel: "6.1".into(),
        mem_total_kib: None,
        ncpu: None,
    }
}

fn start(s: &str) -> Message {
    Message::Start {
        scenario: s.into(),
        index: 0,
    }
}

fn result(s: &str, outcome: Outcome) -> Message {
    Message::Result(ScenarioResult {
        scenario: s.into(),
        index: 0,
        outcome,
        error: (outcome == Outcome::Fail).then(|| "wrong errno".into()),
        measurements: Default::default(),
        facts: Default::default(),
        series: Default::default(),
        evidence: Vec::new(),
        vmstat: Default::default(),
    })
}

fn lost() -> CellEvent {
    CellEvent::TransportEnded {
        end: Err(TransportError::Lost("connection reset".into())),
        stats: TransportStats::default(),
    }
}

#[test]
fn a_payload_that_finishes_and_powers_off_passes() {
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.runs_a_scenario(1000);
    assert_eq!(
        s.frame(1100, Message::Done),
        None,
        "waits for the power-off"
    );
    assert_eq!(s.tick(1200), None);
    assert_eq!(
        s.feed(1300, CellEvent::QemuExited(Some(ExitStatus::from_raw(0)))),
        Some(Ending::Finished)
    );
    let (_, v, seen) = s.verdict();
    assert_eq!(v, Verdict::Pass);
    assert_eq!(seen.frames.received, 5);
    assert_eq!(seen.frames.channel, Some(FrameChannel::ResultsPort));
    assert_eq!(seen.boot_s, Some(1.0));
}

#[test]
fn a_guest_that_does_not_power_off_after_done_is_stopped_after_the_grace() {
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.runs_a_scenario(1000);
    s.frame(1100, Message::Done);
    let grace = POWEROFF_GRACE.as_millis() as u64;
    assert_eq!(s.tick(1100 + grace - 1), None);
    assert_eq!(s.tick(1100 + grace), Some(Ending::Finished));
}

/// What a kernel with no power-off driver prints when the payload's power-off halts it.
const HALTED: &[u8] = b"reboot: System halted\r\n";

#[test]
fn a_guest_that_halts_after_done_ends_at_the_halt_line() {
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.runs_a_scenario(1000);
    assert_eq!(s.frame(1100, Message::Done), None);
    assert_eq!(s.console(1150, b"[    2.5] reboot: Power down\n"), None);
    assert_eq!(s.console(1180, HALTED), Some(Ending::Finished));
    let (_, v, _) = s.verdict();
    assert_eq!(v, Verdict::Pass);
}

#[test]
fn the_halt_line_may_come_before_done_which_then_ends_the_cell() {
    // The console and the results port are read by two threads: either may be first.
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.runs_a_scenario(1000);
    assert_eq!(
        s.console(1100, HALTED),
        None,
        "the payload has not finished"
    );
    assert_eq!(s.frame(1120, Message::Done), Some(Ending::Finished));
}

#[test]
fn a_halt_before_the_payload_finished_does_not_end_the_cell_as_finished() {
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.frame(1000, hello());
    s.frame(1010, start("smoke"));
    assert_eq!(s.console(1100, HALTED), None);
    let beat = Deadlines::default().heartbeat().as_millis() as u64;
    assert!(matches!(
        s.tick(1010 + beat),
        Some(Ending::Silence(Silence::NoHeartbeat { .. }))
    ));
}

#[test]
fn done_then_a_crash_before_power_off_is_a_crash() {
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.runs_a_scenario(1000);
    s.frame(1100, Message::Done);
    assert_eq!(s.console(1200, PANIC), None, "the trace gets its grace");
    assert_eq!(s.tick(1300), None);
    assert!(matches!(
        s.tick(1200 + CRASH_GRACE.as_millis() as u64),
        Some(Ending::Crash(_))
    ));
    let (_, v, seen) = s.verdict();
    assert!(
        matches!(&v, Verdict::Crash { kind: Kind::Panic, title } if title.contains("sysrq")),
        "{v:?}"
    );
    assert_eq!(seen.detect_ms, Some(0.0));
}

#[test]
fn a_crash_during_a_transport_loss_is_a_crash_not_infra() {
    let mut s = Sim::new(FrameChannel::Ssh);
    s.runs_a_scenario(5000);
    assert_eq!(s.feed(6000, lost()), None, "a loss waits for the console");
    assert_eq!(s.console(6500, PANIC), None);
    let e = s.tick(6500 + CRASH_GRACE.as_millis() as u64);
    assert!(matches!(e, Some(Ending::Crash(_))), "{e:?}");
    let (_, v, _) = s.verdict();
    assert_eq!(v.word(), "crash");
}

#[test]
fn a_transport_loss_with_a_live_console_is_infra_and_says_so() {
    let mut s = Sim::new(FrameChannel::Ssh);
    s.runs_a_scenario(5000);
    s.console(5500, b"login: ");
    s.feed(6000, lost());
    s.console(6100, b"\r\nlogin: ");
    let grace = TRANSPORT_LOSS_GRACE.as_millis() as u64;
    assert_eq!(s.tick(6000 + grace - 1), None);
    let e = s.tick(6000 + grace);
    assert!(
        matches!(
            e,
            Some(Ending::TransportEnded {
                console_answered: true,
                ..
            })
        ),
        "{e:?}"
    );
    match s.verdict().1 {
        Verdict::Infra {
            cause: InfraCause::Transport,
            reason,
        } => {
            assert!(
                reason.contains("lost connection") && reason.contains("kernel alive"),
                "{reason}"
            )
        }
        v => panic!("{v:?}"),
    }
}

#[test]
fn an_oom_kill_of_the_sshd_is_the_kernel_acting_not_infra() {
    let mut s = Sim::new(FrameChannel::Ssh);
    s.runs_a_scenario(5000);
    s.console(
        5500,
        b"[   9.0] Out of memory: Killed process 77 (dropbear) total-vm:1kB\n",
    );
    s.feed(6000, lost());
    s.tick(6000 + TRANSPORT_LOSS_GRACE.as_millis() as u64);
    let (_, v, _) = s.verdict();
    assert_eq!(
        v,
        Verdict::OomKilled {
            victim: "dropbear".into()
        }
    );
}

#[test]
fn over_a_transport_the_payloads_exit_after_done_finishes_the_cell() {
    let mut s = Sim::new(FrameChannel::Ssh);
    s.runs_a_scenario(5000);
    assert_eq!(s.frame(5100, Message::Done), None);
    let end = CellEvent::TransportEnded {
        end: Ok(0),
        stats: TransportStats::default(),
    };
    assert_eq!(s.feed(5200, end), Some(Ending::Finished));
    assert_eq!(s.verdict().1, Verdict::Pass);
}

#[test]
fn silence_at_boot_is_a_hang_that_says_whether_the_console_spoke() {
    let deadlines = Deadlines::default();
    let boot = deadlines.boot().as_millis() as u64;
    let mut quiet = Sim::new(FrameChannel::ResultsPort);
    assert_eq!(quiet.tick(boot - 1), None);
    assert_eq!(quiet.tick(boot), Some(Ending::Silence(Silence::NoConsole)));
    let (_, v, _) = quiet.verdict();
    assert_eq!(
        v,
        Verdict::Hang {
            last_progress: None,
            scenario: None
        }
    );

    let mut chatty = Sim::new(FrameChannel::Console);
    chatty.console(100, b"GNU Mach 1.8\n");
    assert_eq!(
        chatty.tick(boot),
        Some(Ending::Silence(Silence::PayloadNeverStarted))
    );
    let (_, _, _) = chatty.verdict();
}

#[test]
fn heartbeat_silence_in_a_scenario_is_a_hang_with_the_last_count() {
    let mut s = Sim::new(FrameChannel::Console);
    s.frame(500, hello());
    s.frame(600, start("port-hoard"));
    s.frame(
        700,
        Message::Hb {
            scenario: "port-hoard".into(),
            progress: 240_000,
        },
    );
    let hb = Deadlines::default().heartbeat().as_millis() as u64;
    assert_eq!(s.tick(700 + hb - 1), None);
    let e = s.tick(700 + hb);
    assert_eq!(
        e,
        Some(Ending::Silence(Silence::NoHeartbeat {
            scenario: "port-hoard".into()
        }))
    );
    let (ending, seen, reports) = s.m.finish();
    assert!(matches!(ending, Ending::Silence(_)));
    assert_eq!(reports.last().unwrap().event.kind, Kind::NoProgress);
    let v = judge::verdict(&ending, &seen, 9.0, "");
    assert_eq!(
        v,
        Verdict::Hang {
            last_progress: Some(240_000),
            scenario: Some("port-hoard".into())
        }
    );
}

#[test]
fn a_frame_with_a_bad_checksum_is_counted_and_not_believed() {
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.runs_a_scenario(1000);
    // A `done` whose content was damaged on the way: the checksum no longer matches.
    let damaged = s.frame_line(Message::Done).replace("done", "dene");
    s.feed(1100, CellEvent::Line(damaged));
    let another_cell = encode("other@linux-128M-base", 99, &Message::Done);
    s.feed(1150, CellEvent::Line(another_cell));
    let e = s.feed(1200, CellEvent::QemuExited(Some(ExitStatus::from_raw(0))));
    assert_eq!(e, Some(Ending::QemuExited(Some(ExitStatus::from_raw(0)))));
    let (_, v, seen) = s.verdict();
    assert_eq!((seen.frames.bad_checksum, seen.frames.foreign), (1, 1));
    assert!(!seen.done);
    // The payload never finished and nothing crashed on the console: the guest went away.
    assert!(
        matches!(
            v,
            Verdict::Crash {
                kind: Kind::LostConnection,
                ..
            }
        ),
        "{v:?}"
    );
}

#[test]
fn qemu_exiting_with_an_error_and_no_report_is_infra() {
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.console(100, b"SeaBIOS\n");
    let e = s.feed(
        200,
        CellEvent::QemuExited(Some(ExitStatus::from_raw(1 << 8))),
    );
    assert!(matches!(e, Some(Ending::QemuExited(_))));
    match s.verdict().1 {
        Verdict::Infra {
            cause: InfraCause::QemuStart,
            reason,
        } => assert!(reason.contains("some error"), "{reason}"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn ctrl_c_is_infra_unless_a_crash_came_first() {
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.runs_a_scenario(1000);
    assert_eq!(
        s.feed(1500, CellEvent::Interrupted),
        Some(Ending::Interrupted)
    );
    assert!(matches!(
        s.verdict().1,
        Verdict::Infra {
            cause: InfraCause::Interrupted,
            ..
        }
    ));

    let mut c = Sim::new(FrameChannel::ResultsPort);
    c.console(900, PANIC);
    assert!(matches!(
        c.feed(1000, CellEvent::Interrupted),
        Some(Ending::Crash(_))
    ));
}

#[test]
fn a_failed_scenario_check_is_fail_and_frames_on_the_console_count() {
    let mut s = Sim::new(FrameChannel::Console);
    let lines: Vec<String> = [
        hello(),
        start("fd-churn"),
        result("fd-churn", Outcome::Fail),
        Message::Done,
    ]
    .into_iter()
    .map(|m| s.frame_line(m) + "\n")
    .collect();
    // Frames split across console chunks, between kernel lines.
    let all = format!("kernel says hi\n{}", lines.concat());
    let (a, b) = all.as_bytes().split_at(40);
    s.console(100, a);
    s.console(110, b);
    s.feed(120, CellEvent::QemuExited(Some(ExitStatus::from_raw(0))));
    let (ending, v, seen) = s.verdict();
    assert_eq!(ending, Ending::Finished);
    assert_eq!(
        v,
        Verdict::Fail {
            reason: "fd-churn: wrong errno".into()
        }
    );
    assert_eq!(seen.frames.channel, Some(FrameChannel::Console));
}

#[test]
fn the_cell_deadline_is_a_timeout_while_progress_continues() {
    let d = Deadlines::default();
    let mut s = Sim::with(FrameChannel::ResultsPort, d);
    s.frame(500, hello());
    s.frame(600, start("fork-hold"));
    let cell_ms = d.cell().as_millis() as u64;
    let mut t = 1000;
    while t < cell_ms {
        assert_eq!(
            s.frame(
                t,
                Message::Hb {
                    scenario: "fork-hold".into(),
                    progress: t
                }
            ),
            None
        );
        t += 900;
    }
    assert_eq!(s.tick(cell_ms), Some(Ending::Timeout));
}

#[test]
fn a_crash_in_the_last_bytes_after_the_ending_still_explains_it() {
    let mut s = Sim::new(FrameChannel::ResultsPort);
    s.frame(500, hello());
    s.frame(600, start("hang"));
    let hb = Deadlines::default().heartbeat().as_millis() as u64;
    assert!(matches!(s.tick(600 + hb), Some(Ending::Silence(_))));
    // Bytes still on their way when QEMU was stopped.
    assert_eq!(s.console(600 + hb + 5, PANIC), None);
    let (ending, v, _) = s.verdict();
    assert!(matches!(ending, Ending::Crash(_)));
    assert_eq!(v.word(), "crash");
}

#[test]
fn a_crash_report_still_printing_is_read_to_its_end_within_a_bound() {
    let mut s = Sim::on_os(FrameChannel::Console, Deadlines::default(), Os::Mach);
    s.console(
        1000,
        b"start payload: Kernel Invalid opcode trap, eip 0x4101343d\n",
    );
    // The register dump comes in pieces, each within the quiet period of the one before.
    let step = CRASH_GRACE.as_millis() as u64 - 50;
    let mut t = 1000;
    for _ in 0..3 {
        t += step;
        assert_eq!(s.console(t, b"EAX ffffffe4 EBX 00000000\n"), None);
        assert_eq!(s.tick(t + 1), None);
    }
    t += step;
    s.console(t, b"panic ../i386/i386/trap.c:346: kernel_trap: trap\n");
    assert_eq!(s.tick(t + step), None);
    let e = s.tick(t + CRASH_GRACE.as_millis() as u64);
    assert!(matches!(e, Some(Ending::Crash(_))), "{e:?} {:?}", s.ending);
    let (_, _, reports) = s.m.finish();
    let lines: Vec<String> = reports.iter().flat_map(|r| r.lines.clone()).collect();
    let lines = lines.join("\n");
    assert!(lines.contains("trap.c:346"), "{lines}");

    // A console that never goes quiet is cut at the bound.
    let mut chatty = Sim::new(FrameChannel::ResultsPort);
    chatty.console(0, PANIC);
    let max = CRASH_GRACE_MAX.as_millis() as u64;
    let mut t = 0;
    let mut ended = None;
    while ended.is_none() && t <= max + 100 {
        t += 100;
        ended = chatty
            .console(t, b"[    3.2] more trace\n")
            .or_else(|| chatty.tick(t));
    }
    assert!(
        matches!(ended, Some(Ending::Crash(_))) && t >= max && t <= max + 100,
        "{t}"
    );
}
