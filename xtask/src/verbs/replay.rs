//! The `replay` verb: re-executes a recorded cell from its folder (`run --record`), checks that
//! the replayed console is the recorded one byte for byte, and that the detector reads the
//! same ending in it. With `--gdb PORT` the replay starts stopped, serving gdb, and the verb
//! prints how to attach, run to the panic and step back from it.

use crate::cell::recording::ReplayInfo;
use crate::cell::replay::{self, Replayed};
use crate::cell::CellRecord;
use crate::error::UsageError;
use crate::verdict::Verdict;
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What the user asked.
#[derive(Debug, Clone)]
pub struct ReplayOptions {
    pub cell_dir: PathBuf,
    /// Serve gdb on 127.0.0.1:PORT, the guest stopped before its first instruction.
    pub gdb: Option<u16>,
    /// Longest wait for the replay to end (default: 10 times the recording, at least 2 min;
    /// with --gdb, 30 min).
    pub timeout: Option<Duration>,
}

/// How a replay went, for the exit code.
pub struct ReplayOutcome {
    pub replayed: Replayed,
    pub reproduced: bool,
}

/// Runs the verb: 0 reproduced, 1 diverged (errors: 2, from the caller).
pub fn replay(opts: &ReplayOptions) -> Result<ReplayOutcome> {
    let dir = &opts.cell_dir;
    let record = crate::results::read_cell(dir)?;
    let Some(info) = record.replay.clone() else {
        return Err(UsageError::option(
            "CELL_DIR",
            format!(
                "{}: the cell has no recording (run it with --record; a recording is kept when \
                 the cell crashed, hung, ran out of memory or was not as expected, or with \
                 --keep-replays)",
                dir.display()
            ),
        )
        .into());
    };
    replay::check(dir, &info)?;
    let timeout = opts.timeout.unwrap_or(match opts.gdb {
        Some(_) => Duration::from_secs(1800),
        None => Duration::from_secs_f64((info.recorded_s * 10.0).max(120.0)),
    });
    eprintln!(
        "kstorm: replaying {} ({}; {:.1} MB log recorded in {:.1} s; timeout {:.0} s)",
        record.id,
        record.verdict.describe(),
        info.size_bytes as f64 / 1e6,
        info.recorded_s,
        timeout.as_secs_f64()
    );
    if let Some(port) = opts.gdb {
        println!("{}", gdb_help(port, &info));
    }
    let replayed = replay::run(dir, &info, opts.gdb, timeout)?;
    if opts.gdb.is_some() {
        // Stepping back reloads the start snapshot and runs again: the console repeats, and
        // is not compared.
        println!("gdb session over after {:.1} s", replayed.wall_s);
        let reproduced = replayed.qemu_error.is_none();
        if let Some(e) = &replayed.qemu_error {
            println!("QEMU failed during the replay ({e})");
            println!("{LOST_ITS_PLACE}");
        }
        return Ok(ReplayOutcome {
            replayed,
            reproduced,
        });
    }
    let reproduced = print_outcome(&record, &info, &replayed);
    Ok(ReplayOutcome {
        replayed,
        reproduced,
    })
}

/// The title the recorded cell crashed with, if it crashed.
fn crash_title(v: &Verdict) -> Option<&str> {
    match v {
        Verdict::Crash { title, .. } => Some(title),
        _ => None,
    }
}

/// Prints what the replay showed; true when it reproduced the recorded ending.
fn print_outcome(record: &CellRecord, info: &ReplayInfo, r: &Replayed) -> bool {
    let recorded_title = crash_title(&record.verdict);
    let replay_title = r.scan.title.as_deref();
    match (&r.scan.kind, replay_title) {
        (Some(kind), Some(title)) => println!("replay: crash: {kind}: {title}"),
        _ => println!("replay: no crash in the replayed console"),
    }
    println!("recorded: {}", record.verdict.describe());
    match r.first_difference {
        None => println!(
            "console: the replay's {} bytes match the recorded {} bytes",
            r.replayed_bytes, info.console_bytes
        ),
        Some(at) => println!(
            "console: DIVERGED at byte {at} of the recorded {} (replayed {} bytes, in {})",
            info.console_bytes,
            r.replayed_bytes,
            r.console.display()
        ),
    }
    match r.results_difference {
        Some(None) => println!("results port: the same frames as recorded"),
        Some(Some(at)) => println!("results port: DIVERGED at byte {at}"),
        None => {}
    }
    println!(
        "replay: {:.1} s wall, {:.2}x the recording's {:.1} s{}",
        r.wall_s,
        r.wall_s / info.recorded_s.max(1e-3),
        info.recorded_s,
        if r.ended {
            ""
        } else {
            " (stopped by the timeout)"
        }
    );
    if let Some(e) = &r.qemu_error {
        println!("QEMU failed during the replay ({e}): the recording is damaged or does not fit this command line");
    }
    let reproduced = r.first_difference.is_none()
        && !matches!(r.results_difference, Some(Some(_)))
        && replay_title == recorded_title;
    println!(
        "{}",
        if reproduced {
            "reproduced: the replay ended as the recording did"
        } else {
            "diverged: the replay did not end as the recording did"
        }
    );
    reproduced
}

/// What to do when QEMU's reverse execution fails: it is QEMU's fault, not the recording's.
const LOST_ITS_PLACE: &str = "If a step backwards never returns (gdb may first say \"Cannot \
     execute this command while the target is running\") or QEMU exits with \"Missing \
     character write event in the replay log\", QEMU lost its place while reloading the start \
     snapshot: a fault of QEMU 7.2's reverse execution on x86 (its own x86-64 reverse-debugging \
     test is marked flaky upstream), not of the recording, which still replays forwards. Quit \
     gdb and start `replay --gdb` again; here it happened in 1 gdb session of 32 \
     (in 5 of 12 with recordings made with icount shift=auto).";

/// How to attach gdb to the stopped replay, run to the panic and step back from it.
fn gdb_help(port: u16, info: &ReplayInfo) -> String {
    let kernel = info
        .inputs
        .iter()
        .find(|i| i.role == "kernel")
        .map(|i| i.path.clone())
        .unwrap_or_default();
    let break_at = match crate::images::symbols::address(Path::new(&kernel), "panic") {
        Ok(Some(a)) => format!("hbreak *0x{a:x}   # panic()"),
        _ => "hbreak panic".to_string(),
    };
    format!(
        "the replay waits for gdb on 127.0.0.1:{port}; in another terminal:\n\
         \n  gdb {kernel} -ex 'target remote 127.0.0.1:{port}'\n\
         \n  (gdb) {break_at}\n  (gdb) continue          # runs the replay to the panic\n  \
         (gdb) reverse-stepi     # one instruction back: the call to panic()\n  \
         (gdb) reverse-continue  # back to the previous breakpoint\n  (gdb) info registers\n\
         \nDebian's vmlinux has no symbol table (the address above is from its export table); \
         its symbols are in linux-image-<abi>-amd64-dbg (854 MB, not fetched: `gdb -ex 'symbol-file \
         /usr/lib/debug/boot/vmlinux-<abi>-amd64'` once installed). A --kernel or kernel-tree \
         build's vmlinux has its own.\n\n{LOST_ITS_PLACE}"
    )
}
