//! `cargo xtask <verb>`: kstorm's command line.

use clap::{Args, Parser, Subcommand};
use kstorm::config::{RamSize, UsageError};
use kstorm::matrix::{Profile, Selection};
use kstorm::run::{AccelChoice, RunOptions};
use kstorm::{bench, host};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "kstorm: kernels under load, in QEMU, with honest verdicts"
)]
struct Cli {
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Run a suite across its matrix of images, RAM sizes and kernel variants.
    Run(RunArgs),
    /// Print the cells a selection would run, with their parameters and deadlines; boots
    /// nothing (a bad suite or parameter is reported as `run` would, exit 2).
    List(SelectArgs),
    /// One `git bisect run` step on one cell under a sequential rule: exit 0 good, 1 bad,
    /// 125 skip (see README, "Bisecting a regression").
    BisectRun(kstorm::bisect::run::BisectArgs),
    /// Build the guest payload and prepare the images, without booting anything.
    Build(BuildArgs),
    /// Benchmarks (figures as ratios against a baseline measured in the same run).
    Bench(BenchArgs),
    /// Scan saved console logs for crashes, hangs and OOM kills.
    Scan(kstorm::detect::scan::ScanArgs),
    /// Install what the tests need (as root, from Debian), then run the whole test suite
    /// (`cargo test --workspace`; extra arguments go to cargo test).
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Delete the cache (downloads, built images) and, with --results, all results.
    Clean(CleanArgs),
}

/// Which cells: the suite and what narrows it (shared by `run` and `list`).
#[derive(Args)]
struct SelectArgs {
    /// Suite from suites/<name>.yaml, or the path of a suite file.
    #[arg(long, default_value = "default")]
    suite: String,
    /// Run the suite's cases on these images instead of the suite's own (repeatable).
    #[arg(long = "image")]
    images: Vec<String>,
    /// Reach the payload through this transport instead of each image's default
    /// (the image must offer it: see `transport:` in images/*.yaml).
    #[arg(long, value_enum)]
    transport: Option<kstorm::config::TransportKind>,
    /// Only these RAM sizes, e.g. --ram 128M (repeatable).
    #[arg(long = "ram")]
    ram: Vec<RamSize>,
    /// Only cells whose id contains this text (repeatable: any matches).
    #[arg(long = "filter")]
    filters: Vec<String>,
    /// Run every cell N times (crashes are often stochastic).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// Parameter profile: quick (default) or deep (nightly counts).
    #[arg(long, value_enum, default_value_t = Profile::Quick)]
    profile: Profile,
}

impl SelectArgs {
    fn selection(self) -> (String, Selection) {
        let sel = Selection {
            images: (!self.images.is_empty()).then_some(self.images),
            ram: (!self.ram.is_empty()).then_some(self.ram),
            filters: self.filters,
            repeat: self.repeat,
            profile: self.profile,
            transport: self.transport,
        };
        (self.suite, sel)
    }
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    select: SelectArgs,
    /// Cells run at once (default: number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
    /// Exit 125 on infra failures, so `git bisect run` skips the commit instead of blaming it.
    #[arg(long)]
    bisect: bool,
    /// Boot this kernel (a vmlinux, a bzImage, a Linux build tree, a GNU Mach kernel) in place
    /// of the image's.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Where results go (default: results/ in the workspace).
    #[arg(long)]
    results: Option<PathBuf>,
}

#[derive(Args)]
struct BuildArgs {
    /// Suite whose images to prepare.
    #[arg(long, default_value = "default")]
    suite: String,
}

#[derive(Args)]
struct BenchArgs {
    #[command(subcommand)]
    which: BenchWhich,
}

#[derive(Subcommand)]
enum BenchWhich {
    /// Bare QEMU boot vs a full kstorm smoke cell: medians and their ratio.
    Boot {
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Every scenario once at 256M: wall time and the payload's own overhead.
    Scenarios,
    /// Detector throughput on a 100 MB clean log vs a memchr line count, and live latencies.
    Detect,
    /// GNU Mach: QEMU start to the bootstrap task's first frame (median; target <= 1.5 s).
    Mach {
        #[arg(long, default_value_t = 7)]
        boots: usize,
    },
    /// Simulated bisections: how often the bisect-run rule lands on the right commit, and
    /// its runs per step, against a fixed 10 runs per commit.
    Bisect {
        #[arg(long, default_value_t = 10_000)]
        bisections: usize,
    },
    /// ssh and serial shell on linux-disk: time to the first command and upload rate, against
    /// the PID-1 path booting the same kernel.
    Transport {
        /// Size of the timed upload, in MB.
        #[arg(long, default_value_t = 10)]
        upload_mb: usize,
    },
}

#[derive(Args)]
struct CleanArgs {
    /// Also delete results/.
    #[arg(long)]
    results: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.verb {
        Verb::Run(a) => run(a),
        Verb::List(a) => {
            let (suite, sel) = a.selection();
            match kstorm::list::list(&suite, &sel) {
                Ok(text) => {
                    print!("{text}");
                    0
                }
                Err(e) => error_exit(&e, false),
            }
        }
        Verb::BisectRun(a) => kstorm::bisect::run::bisect_run(&a),
        Verb::Build(a) => report(kstorm::run::build(&a.suite)),
        Verb::Bench(a) => match a.which {
            BenchWhich::Boot { rounds } => report(bench::boot(rounds)),
            BenchWhich::Detect => report(bench::detect()),
            BenchWhich::Transport { upload_mb } => report(bench::transport(upload_mb)),
            BenchWhich::Scenarios => report(bench::scenarios()),
            BenchWhich::Mach { boots } => report(bench::mach(boots)),
            BenchWhich::Bisect { bisections } => report(kstorm::bisect::sim::bench(bisections)),
        },
        Verb::Scan(a) => kstorm::detect::scan::run(&a),
        Verb::Test { cargo_args } => test(&cargo_args),
        Verb::Clean(a) => report(clean(a.results)),
    };
    ExitCode::from(code as u8)
}

fn run(a: RunArgs) -> i32 {
    let (suite, selection) = a.select.selection();
    let mut opts = RunOptions::new(&suite);
    opts.selection = selection;
    if let Some(j) = a.jobs {
        opts.jobs = j;
    }
    opts.accel = a.accel;
    opts.kernel = a.kernel;
    if let Some(r) = a.results {
        opts.results_root = r;
    }
    match kstorm::run::run(&opts) {
        Ok(outcome) => outcome.exit_code(a.bisect),
        Err(e) => error_exit(&e, a.bisect),
    }
}

/// Prints `e`; 2 (usage or infra error), or 125 under `--bisect` so git skips the commit.
fn error_exit(e: &anyhow::Error, bisect: bool) -> i32 {
    let kind = if UsageError::is_in(e) {
        "usage error"
    } else {
        "error"
    };
    eprintln!("kstorm: {kind}: {e:#}");
    if bisect {
        125
    } else {
        2
    }
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => error_exit(&e, false),
    }
}

fn test(cargo_args: &[String]) -> i32 {
    let tools: Vec<&str> = host::TOOLS.iter().map(|(t, _)| *t).collect();
    if let Err(e) = host::ensure_tools(&tools) {
        eprintln!("kstorm: error: {e:#}");
        return 2;
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut argv = vec!["test".to_string(), "--workspace".to_string()];
    argv.extend(cargo_args.iter().cloned());
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    host::echo(&cargo.to_string_lossy(), &argv);
    match std::process::Command::new(&cargo)
        .args(&argv)
        .current_dir(host::workspace_root())
        .status()
    {
        Ok(st) => st.code().unwrap_or(2),
        Err(e) => {
            eprintln!("kstorm: error: starting cargo: {e}");
            2
        }
    }
}

fn clean(results: bool) -> anyhow::Result<()> {
    let mut dirs = vec![
        host::cache_dir(),
        host::workspace_root().join("target/payload"),
    ];
    if results {
        dirs.push(host::workspace_root().join("results"));
    }
    for d in dirs {
        if d.exists() {
            eprintln!("removing {}", d.display());
            std::fs::remove_dir_all(&d)?;
        }
    }
    Ok(())
}
