//! `cargo xtask scan --os <os> [--json] FILE...`: the detector over saved console logs.
//!
//! Contract (other tools depend on it): with `--json`, one JSON object per input file per line,
//! `{"file", "crashed", "kind", "title", "alt_titles", "corrupted", "line", "events": [...]}`
//! with `kind`/`title`/`line` null (`alt_titles` empty, `corrupted` false) when nothing crashed
//! and OOM kills only in `events`. `alt_titles` are other titles of the same bug; `corrupted`
//! says the report was damaged (no usable trace) and its title reads `<class> in corrupted`. Exit status 0 when no file crashed,
//! 1 when any did, 2 on an error (missing file, bad signature file).

use super::{Detector, Event, Os, Signatures, Summary};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, Clone, clap::Args)]
pub struct ScanArgs {
    /// Which kernel wrote the logs.
    #[arg(long, value_enum)]
    pub os: Os,
    /// One JSON object per file, one per line.
    #[arg(long)]
    pub json: bool,
    /// A signature file to use instead of the shipped one (its `os:` must match --os).
    #[arg(long, value_name = "YAML")]
    pub signatures: Option<PathBuf>,
    /// Console logs to scan.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// What `--json` prints for one file.
#[derive(Debug, Clone, Serialize)]
pub struct FileScan {
    pub file: String,
    pub crashed: bool,
    pub kind: Option<String>,
    pub title: Option<String>,
    pub alt_titles: Vec<String>,
    pub corrupted: bool,
    pub line: Option<u64>,
    pub events: Vec<Event>,
}

#[derive(Serialize)]
struct FileError<'a> {
    file: &'a str,
    error: String,
}

/// Runs the verb; returns the process exit status.
pub fn run(args: &ScanArgs) -> i32 {
    let sigs = match load(args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return 2;
        }
    };
    let mut crashed = false;
    let mut failed = false;
    for path in &args.files {
        let name = path.display().to_string();
        match scan_file(&sigs, path) {
            Ok(scan) => {
                crashed |= scan.crashed;
                if args.json {
                    println!(
                        "{}",
                        serde_json::to_string(&scan).expect("plain data serialises")
                    );
                } else {
                    print_text(&scan);
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("error: {e:#}");
                if args.json {
                    let line = FileError {
                        file: &name,
                        error: format!("{e:#}"),
                    };
                    println!(
                        "{}",
                        serde_json::to_string(&line).expect("plain data serialises")
                    );
                }
            }
        }
    }
    if failed {
        2
    } else if crashed {
        1
    } else {
        0
    }
}

fn load(args: &ScanArgs) -> Result<Arc<Signatures>> {
    match &args.signatures {
        None => Signatures::builtin(args.os),
        Some(path) => {
            let sigs = Signatures::from_file(path)?;
            if sigs.os != args.os {
                bail!(
                    "{}: written for --os {}, not {}",
                    path.display(),
                    sigs.os.as_str(),
                    args.os.as_str()
                );
            }
            Ok(Arc::new(sigs))
        }
    }
}

/// Scans one file, streaming it (a log never needs to fit in memory).
pub fn scan_file(sigs: &Arc<Signatures>, path: &Path) -> Result<FileScan> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut detector = Detector::with_signatures(Arc::clone(sigs));
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        detector.feed(&buf[..n]);
    }
    let summary = Summary::of(&detector.finish());
    Ok(FileScan {
        file: path.display().to_string(),
        crashed: summary.crashed(),
        kind: summary.crash.as_ref().map(|e| e.kind.as_str().to_string()),
        title: summary.crash.as_ref().map(|e| e.title.clone()),
        alt_titles: summary
            .crash
            .as_ref()
            .map(|e| e.alt_titles.clone())
            .unwrap_or_default(),
        corrupted: summary.crash.as_ref().is_some_and(|e| e.corrupted),
        line: summary.crash.as_ref().map(|e| e.line),
        events: summary.events,
    })
}

fn print_text(scan: &FileScan) {
    match (&scan.kind, &scan.title, scan.line) {
        (Some(kind), Some(title), Some(line)) => {
            println!("{}: CRASH {kind} at line {line}: {title}", scan.file)
        }
        _ => println!("{}: no crash", scan.file),
    }
    let first = scan.line;
    for e in &scan.events {
        if Some(e.line) == first && e.crash {
            continue;
        }
        let what = if e.crash { "secondary" } else { "event" };
        println!("  {what} {} at line {}: {}", e.kind, e.line, e.title);
    }
}
