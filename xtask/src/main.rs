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
    /// Find where a case stops surviving as one parameter grows, per RAM size and variant.
    Sweep(SweepArgs),
    /// Run every suite's full matrix (all images, RAM sizes, variants) and list the cells that
    /// are not as expected, with their reason (tens of minutes under TCG; not for CI).
    VerifySuites(VerifyArgs),
    /// Write a run's report.html, or merge shard runs into one run (--merge DIR...).
    Report(ReportArgs),
    /// Compare two runs: new and fixed crashes, verdict changes, numbers beyond noise
    /// (exit 1 when B is worse).
    Compare { a: PathBuf, b: PathBuf },
    /// One `git bisect run` step on one cell under a sequential rule: exit 0 good, 1 bad,
    /// 125 skip (see README, "Bisecting a regression").
    BisectRun(kstorm::bisect::run::BisectArgs),
    /// Build the guest payload and prepare the images, without booting anything.
    Build(BuildArgs),
    /// Download a published disk image (FreeBSD, GNU/Hurd) ahead of time, or take one brought in
    /// by hand with --from; verify its hash and unpack it into the cache.
    Fetch(FetchArgs),
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
    #[command(flatten)]
    exec: ExecArgs,
    /// Exit 125 on infra failures, so `git bisect run` skips the commit instead of blaming it.
    #[arg(long)]
    bisect: bool,
    /// Boot this kernel (a vmlinux, a bzImage, a Linux build tree, a GNU Mach kernel) in place
    /// of the image's.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Only shard I of N of the matrix (the same cells on every machine), e.g. --shard 2/4.
    #[arg(long)]
    shard: Option<kstorm::shard::Shard>,
    /// Continue the interrupted run in RUN_DIR (its own options are used; finished cells are
    /// kept, the cut ones run again).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
}

#[derive(Args)]
struct SweepArgs {
    #[arg(long, default_value = "default")]
    suite: String,
    #[arg(long)]
    case: String,
    /// The numeric parameter of the case to vary.
    #[arg(long)]
    param: String,
    #[arg(long = "ram")]
    ram: Vec<RamSize>,
    #[arg(long = "image")]
    images: Vec<String>,
    #[arg(long = "variant")]
    variants: Vec<String>,
    /// Cells in all, over every group.
    #[arg(long, default_value_t = 20)]
    max_cells: usize,
    /// Wall time in all (e.g. 30m); the running step finishes.
    #[arg(long, default_value = "60m")]
    max_time: kstorm::config::HumanDuration,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Lowest and highest value to try (default: 1 and 1000 times the case's value).
    #[arg(long)]
    from: Option<f64>,
    #[arg(long)]
    to: Option<f64>,
    /// Stop a group when its 95% interval is at most this fraction of the estimate.
    #[arg(long, default_value_t = 0.1)]
    target_width: f64,
    #[command(flatten)]
    exec: ExecArgs,
}

#[derive(Args)]
struct VerifyArgs {
    /// Only these suites (repeatable; default: every suite of suites/).
    #[arg(long = "suite")]
    suites: Vec<String>,
    /// Run every cell N times, to tell a flaky expectation from a steady one.
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    #[command(flatten)]
    exec: ExecArgs,
}

/// How cells run and where their results go (shared by `run`, `sweep` and `verify-suites`).
#[derive(Args)]
struct ExecArgs {
    /// Cells run at once (default: number of cores).
    #[arg(long)]
    jobs: Option<usize>,
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
    /// Where results go (default: results/ in the workspace).
    #[arg(long)]
    results: Option<PathBuf>,
}

impl ExecArgs {
    fn apply(self, opts: &mut RunOptions) {
        if let Some(j) = self.jobs {
            opts.jobs = j;
        }
        opts.accel = self.accel;
        if let Some(r) = self.results {
            opts.results_root = r;
        }
    }
}

#[derive(Args)]
struct ReportArgs {
    /// The run folder (default: results/latest).
    run_dir: Option<PathBuf>,
    /// Merge these shard runs into one (written to --out).
    #[arg(long, num_args = 1.., value_name = "DIR")]
    merge: Vec<PathBuf>,
    /// Where the merged run goes (default: results/merged-<time>).
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct BuildArgs {
    /// Suite whose images to prepare.
    #[arg(long, default_value = "default")]
    suite: String,
}

#[derive(Args)]
struct FetchArgs {
    /// An image of images/ whose source is `published-disk`.
    #[arg(long)]
    image: String,
    /// The image's file, downloaded elsewhere (its hash is checked all the same).
    #[arg(long)]
    from: Option<PathBuf>,
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
    /// Boot to payload start with and without stress-ng in the initramfs: medians and ratio.
    StressNg {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
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
    /// A real bisection, timed: a git repository of Debian's linux-source-6.1 with the
    /// patches of xtask/bench-data/real-bisect/ (one plants a flaky crash), built with
    /// tinyconfig + kstorm.config and bisected with `git bisect run xtask bisect-run`; it must
    /// land on the planted commit. Prints build time (cold, incremental), runs and wall time
    /// per step. Takes 30-60 min.
    RealBisect {
        /// Where the repository goes (default: target/real-bisect).
        #[arg(long)]
        work: Option<PathBuf>,
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return ExitCode::from(parse_error(&e) as u8),
    };
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
        Verb::Sweep(a) => report(sweep(a)),
        Verb::VerifySuites(a) => verify_suites(a),
        Verb::Report(a) => write_report(a).unwrap_or_else(|e| error_exit(&e, false)),
        Verb::Compare { a, b } => compare(&a, &b),
        Verb::BisectRun(a) => kstorm::bisect::run::bisect_run(&a),
        Verb::Build(a) => report(kstorm::run::build(&a.suite)),
        Verb::Fetch(a) => report(kstorm::images::published::fetch_verb(
            &a.image,
            a.from.as_deref(),
            &host::cache_dir(),
        )),
        Verb::Bench(a) => match a.which {
            BenchWhich::Boot { rounds } => report(bench::boot(rounds)),
            BenchWhich::Detect => report(bench::detect()),
            BenchWhich::Transport { upload_mb } => report(bench::transport(upload_mb)),
            BenchWhich::Scenarios => report(bench::scenarios()),
            BenchWhich::StressNg { rounds } => report(bench::stress_ng(rounds)),
            BenchWhich::Mach { boots } => report(bench::mach(boots)),
            BenchWhich::Bisect { bisections } => report(kstorm::bisect::sim::bench(bisections)),
            BenchWhich::RealBisect { work } => report(kstorm::bisect::real::bench(work)),
        },
        Verb::Scan(a) => kstorm::detect::scan::run(&a),
        Verb::Test { cargo_args } => test(&cargo_args),
        Verb::Clean(a) => report(clean(a.results)),
    };
    ExitCode::from(code as u8)
}

/// Prints clap's message; its exit code (2 for an error, 0 for --help), except that a bad
/// `bisect-run` command line exits 128 (abort): `git bisect run` would read 2 as "bad".
fn parse_error(e: &clap::Error) -> i32 {
    let _ = e.print();
    let bisect_run = std::env::args().nth(1).as_deref() == Some("bisect-run");
    if e.use_stderr() && bisect_run {
        kstorm::bisect::run::ABORT
    } else {
        e.exit_code()
    }
}

fn run(a: RunArgs) -> i32 {
    let Some(dir) = a.resume.clone() else {
        return run_with(a);
    };
    match resume_args(&dir) {
        Ok(first) => run_with(first),
        Err(e) => {
            eprintln!("kstorm: error: {e:#}");
            2
        }
    }
}

fn run_with(a: RunArgs) -> i32 {
    let (suite, selection) = a.select.selection();
    let mut opts = RunOptions::new(&suite);
    opts.selection = selection;
    opts.request = std::env::args().skip(1).collect();
    opts.shard = a.shard;
    opts.resume = a.resume.clone();
    opts.kernel = a.kernel;
    a.exec.apply(&mut opts);
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

/// The first run's arguments, with `--resume` pointing at its folder.
fn resume_args(dir: &std::path::Path) -> anyhow::Result<RunArgs> {
    let first = kstorm::resume::read_request(dir)?;
    let cli = Cli::try_parse_from(std::iter::once("xtask".to_string()).chain(first))?;
    let Verb::Run(mut args) = cli.verb else {
        anyhow::bail!("{}: not the folder of a `run`", dir.display());
    };
    args.resume = Some(dir.to_path_buf());
    Ok(args)
}

fn sweep(a: SweepArgs) -> anyhow::Result<()> {
    let mut run = RunOptions::new(&a.suite);
    run.selection.ram = (!a.ram.is_empty()).then_some(a.ram);
    run.selection.images = (!a.images.is_empty()).then_some(a.images);
    a.exec.apply(&mut run);
    kstorm::sweep::sweep(&kstorm::sweep::SweepOptions {
        case: a.case,
        param: a.param,
        variants: a.variants,
        max_cells: a.max_cells,
        max_time: a.max_time.0,
        seed: a.seed,
        from: a.from,
        to: a.to,
        target_width: a.target_width,
        run,
    })
    .map(|_| ())
}

fn verify_suites(a: VerifyArgs) -> i32 {
    let mut run = RunOptions::new("default");
    a.exec.apply(&mut run);
    let opts = kstorm::verify::VerifyOptions {
        suites: a.suites,
        repeat: a.repeat,
        run,
    };
    match kstorm::verify::verify(&opts) {
        Ok(v) => v.exit_code(),
        Err(e) => error_exit(&e, false),
    }
}

/// `report --merge` exits as `run` would have on the merged cells (so a CI merge job fails
/// when a shard did); `report RUN_DIR` exits 0 once the report is written.
fn write_report(a: ReportArgs) -> anyhow::Result<i32> {
    let results = host::workspace_root().join("results");
    if !a.merge.is_empty() {
        let out = a.out.unwrap_or_else(|| {
            results.join(format!(
                "merged-{}",
                chrono::Local::now().format("%Y%m%d-%H%M%S")
            ))
        });
        let merged = kstorm::shard::merge(&a.merge, &out)?;
        println!("{}", kstorm::report::table(&merged.records));
        println!("{}", merged.dir.root.join("report.html").display());
        return Ok(merged.exit_code(false));
    }
    let dir = a.run_dir.unwrap_or_else(|| results.join("latest"));
    kstorm::html_report::write(&dir)?;
    println!("{}", dir.join("report.html").display());
    Ok(0)
}

/// 0: B is not worse than A; 1: worse; 2: error. Writes the comparison into B's report.
fn compare(a: &std::path::Path, b: &std::path::Path) -> i32 {
    let result = (|| -> anyhow::Result<bool> {
        let c = kstorm::compare::compare_dirs(a, b)?;
        print!("{}", kstorm::compare::text(&c));
        host::write_atomic(
            &b.join("compare.json"),
            serde_json::to_string_pretty(&c)?.as_bytes(),
        )?;
        host::write_atomic(
            &b.join("compare.html"),
            kstorm::compare::html(&c, a).as_bytes(),
        )?;
        kstorm::html_report::write(b)?;
        Ok(c.worse())
    })();
    match result {
        Ok(worse) => worse as i32,
        Err(e) => {
            eprintln!("kstorm: error: {e:#}");
            2
        }
    }
}

fn report(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => error_exit(&e, false),
    }
}

fn test(cargo_args: &[String]) -> i32 {
    if let Err(e) = host::packages::ensure_for_tests() {
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
    let mut dirs = vec![host::cache_dir(), kstorm::payload::target_dir()];
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
