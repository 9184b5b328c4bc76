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
    let reproduced = r.first_difference.is_none() && replay_title == recorded_title;
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

/// How to attach gdb to the stopped replay, run to the panic and step back from it.
fn gdb_help(port: u16, info: &ReplayInfo) -> String {
    let kernel = info
        .inputs
        .iter()
        .find(|i| i.role == "kernel")
        .map(|i| i.path.clone())
        .unwrap_or_default();
    let map = system_map(Path::new(&kernel));
    let (symbols, break_at) = match &map {
        Some(m) => (
            String::new(),
            format!(
                "hbreak *0x{:x}   # panic, from {}",
                symbol_address(m, "panic").unwrap_or(0),
                m.display()
            ),
        ),
        None => (format!(" {kernel}"), "hbreak panic".to_string()),
    };
    format!(
        "the replay waits for gdb on 127.0.0.1:{port}; in another terminal:\n\
         \n  gdb{symbols} -ex 'target remote 127.0.0.1:{port}'\n\
         \n  (gdb) {break_at}\n  (gdb) continue          # runs the replay to the panic\n  \
         (gdb) reverse-stepi     # one instruction back\n  \
         (gdb) reverse-continue  # back to the previous breakpoint\n  (gdb) info registers\n\
         \n(Debian's kernel has no symbols in its vmlinux: its System.map gives addresses; the \
         symbols are in linux-image-<abi>-amd64-dbg, 854 MB, not fetched. A --kernel or \
         kernel-tree build's vmlinux has its own.)"
    )
}

/// Debian's `System.map-<version>` of the package a kernel was unpacked from, if there is one
/// (the kernel sits in the package's cache folder, the package's files below it).
pub fn system_map(kernel: &Path) -> Option<PathBuf> {
    let dir = kernel.parent()?;
    let boots = [
        dir.join("boot"),
        dir.join("root/boot"),
        dir.join("deb/boot"),
    ];
    for b in boots.iter().chain(std::iter::once(&dir.to_path_buf())) {
        let Ok(entries) = std::fs::read_dir(b) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("System.map") {
                return Some(e.path());
            }
        }
    }
    None
}

/// The address of the text symbol `name` in a `System.map`.
pub fn symbol_address(map: &Path, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(map).ok()?;
    text.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        let (addr, kind, sym) = (w.next()?, w.next()?, w.next()?);
        (sym == name && matches!(kind, "T" | "t"))
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
    })
}
