//! `cargo xtask scan`: the detector over saved logs.

use super::{Detector, Os};
use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct ScanArgs {
    /// Which kernel wrote the logs.
    #[arg(long, value_enum)]
    pub os: Os,
    /// One JSON object per file on its own line.
    #[arg(long)]
    pub json: bool,
    pub files: Vec<PathBuf>,
}

/// Exit code: 0 no file crashed, 1 some did, 2 error.
pub fn run(args: &ScanArgs) -> i32 {
    let mut crashed_any = false;
    for file in &args.files {
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("kstorm scan: {}: {e}", file.display());
                return 2;
            }
        };
        let mut d = match Detector::new(args.os) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("kstorm scan: {e:#}");
                return 2;
            }
        };
        d.feed(&bytes);
        let reports = d.finish();
        let first = reports.iter().find(|r| r.event.crash);
        crashed_any |= first.is_some();
        let events: Vec<_> = reports.iter().map(|r| &r.event).collect();
        if args.json {
            let v = serde_json::json!({
                "file": file.display().to_string(),
                "crashed": first.is_some(),
                "kind": first.map(|r| r.event.kind),
                "title": first.map(|r| r.event.title.clone()),
                "line": first.map(|r| r.event.line),
                "events": events,
            });
            println!("{v}");
        } else {
            match first {
                Some(r) => println!(
                    "{}: crash at line {}: {}",
                    file.display(),
                    r.event.line,
                    r.event.title
                ),
                None => println!("{}: no crash", file.display()),
            }
        }
    }
    i32::from(crashed_any)
}
