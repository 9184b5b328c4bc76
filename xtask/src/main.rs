//! Minimal CLI of the `detect` branch (the lead's main.rs replaces it on merge): `scan` and
//! `bench detect`.

use clap::{Parser, Subcommand};
use kstorm::detect::{bench, scan, Os};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "xtask", about = "kstorm harness")]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Scan saved console logs for crashes.
    Scan(scan::ScanArgs),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Detector throughput on a clean log built from the fixtures.
    Detect {
        #[arg(long, value_enum, default_value = "linux")]
        os: Os,
        #[arg(long, default_value_t = 100)]
        megabytes: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.verb {
        Verb::Scan(args) => scan::run(&args),
        Verb::Bench {
            what: BenchWhat::Detect { os, megabytes },
        } => {
            let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/detect");
            match bench::bench_detect_throughput(&fixtures, os, megabytes * 1_000_000) {
                Ok(_) => 0,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    1
                }
            }
        }
    };
    std::process::exit(code);
}
