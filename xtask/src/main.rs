//! `cargo xtask <verb>`: kstorm's command line.

use clap::{Args, Parser, Subcommand};
use kstorm::config::RamSize;
use kstorm::error::UsageError;
use kstorm::host;
use kstorm::matrix::{ParamProfile, Selection};
use kstorm::session::AccelChoice;
use kstorm::verbs::run::RunOptions;
use kstorm::verbs::{self, bench};
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
    Compare {
        a: PathBuf,
        b: PathBuf,
        /// Accept cells of A that B lacks, and an incomplete B (a deliberate subset); without
        /// it, missing data makes B worse.
        #[arg(long)]
        allow_missing: bool,
    },
    /// Run a suite on two kernels, interleaved (A, B, A, B...), and compare them in the
    /// mmtests style (exit 1 when B is worse, or significantly worse on a gate of the suite).
    Ab(AbArgs),
    /// One `git bisect run` step on one cell under a sequential rule: exit 0 good, 1 bad,
    /// 125 skip (see README, "Bisecting a regression").
    BisectRun(kstorm::verbs::bisect::run::BisectArgs),
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
        /// Only the tests that need no root, no QEMU and no network (`xtask/test-tiers.yaml`),
        /// in about a minute.
        #[arg(long)]
        fast: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_args: Vec<String>,
    },
    /// Delete the cache (downloads, built images) and, with --results, all results.
    Clean(CleanArgs),
    /// Re-execute a cell recorded with `run --record` from its folder: the console must match
    /// the recorded one byte for byte and end the same way (exit 0; 1 when it diverged).
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// The recorded cell's folder, e.g. results/latest/cells/panic@linux-128M-base.
    cell_dir: PathBuf,
    /// Start the replay stopped with QEMU's gdb stub on 127.0.0.1:PORT (default 1234), and
    /// print how to attach, run to the panic and step back.
    #[arg(long, value_name = "PORT", num_args = 0..=1, default_missing_value = "1234")]
    gdb: Option<u16>,
    /// Longest wait for the replay to end (default: 10 times the recording, at least 2 min;
    /// with --gdb, 30 min).
    #[arg(long)]
    timeout: Option<kstorm::config::HumanDuration>,
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
    #[arg(long, value_enum, default_value_t = ParamProfile::Quick)]
    profile: ParamProfile,
    /// Record every cell with QEMU's record/replay (PID-1 Linux cells; TCG), for
    /// `cargo xtask replay CELL_DIR`. Deadlines are doubled.
    #[arg(long)]
    record: bool,
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
            record: self.record,
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
    shard: Option<kstorm::matrix::Shard>,
    /// Continue the interrupted run in RUN_DIR (its own options are used; finished cells are
    /// kept, the cut ones run again).
    #[arg(long, value_name = "RUN_DIR")]
    resume: Option<PathBuf>,
    /// With --record: keep every cell's replay, not only those that crashed, hung, ran out of
    /// memory or were not as expected.
    #[arg(long)]
    keep_replays: bool,
}

#[derive(Args)]
struct AbArgs {
    /// Kernel A (the baseline), then kernel B: a vmlinux, a bzImage or a Linux build tree.
    #[arg(long = "kernel", required = true)]
    kernels: Vec<PathBuf>,
    #[arg(long, default_value = "default")]
    suite: String,
    /// Runs of every cell per kernel.
    #[arg(long, default_value_t = 3)]
    repeat: u32,
    #[arg(long = "ram")]
    ram: Vec<RamSize>,
    /// Only cells whose id contains this text (repeatable: any matches).
    #[arg(long = "filter")]
    filters: Vec<String>,
    #[command(flatten)]
    exec: ExecArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum HarderArg {
    Lower,
    Higher,
}

#[derive(Args)]
struct SweepArgs {
    #[arg(long, default_value = "default")]
    suite: String,
    #[arg(long)]
    case: String,
    /// The numeric parameter of the case to vary (short for --axis param:NAME).
    #[arg(long, conflicts_with = "axis", required_unless_present = "axis")]
    param: Option<String>,
    /// What to vary: ram, cmdline:NAME, sysctl:NAME, tunable:NAME or param:NAME.
    #[arg(long)]
    axis: Option<String>,
    /// Which values stress the kernel more (default: higher for a parameter, lower otherwise).
    #[arg(long, value_enum)]
    harder: Option<HarderArg>,
    /// Sweep once per value of a second axis and fit the breaking point against it
    /// (e.g. ram=64M,128M,256M).
    #[arg(long)]
    over: Option<String>,
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
    /// Lowest and highest value to try, as the axis reads them (48M for RAM; default for a
    /// parameter: 1 and 1000 times the case's value).
    #[arg(long)]
    from: Option<String>,
    #[arg(long)]
    to: Option<String>,
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
            opts.session.jobs = j;
        }
        opts.session.accel = self.accel;
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
    /// Record/replay's cost on the default suite's Linux cells: unrecorded vs recorded (same
    /// run), replay vs recording, log sizes.
    Record {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// ssh and serial shell on linux-disk: time to the first command and upload rate, against
    /// the PID-1 path booting the same kernel.
    Transport,
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
            match verbs::list::list(&suite, &sel) {
                Ok(text) => {
                    print!("{text}");
                    0
                }
                Err(e) => error_exit(&e, false),
            }
        }
        Verb::Sweep(a) => exit_of(sweep(a)),
        Verb::VerifySuites(a) => verify_suites(a),
        Verb::Report(a) => write_report(a).unwrap_or_else(|e| error_exit(&e, false)),
        Verb::Compare {
            a,
            b,
            allow_missing,
        } => compare(&a, &b, allow_missing),
        Verb::Ab(a) => ab(a),
        Verb::BisectRun(a) => verbs::bisect::run::bisect_run(&a),
        Verb::Build(a) => exit_of(verbs::build::build(&a.suite)),
        Verb::Fetch(a) => exit_of(kstorm::images::published::fetch_verb(
            &a.image,
            a.from.as_deref(),
            &host::cache_dir(),
        )),
        Verb::Bench(a) => match a.which {
            BenchWhich::Boot { rounds } => exit_of(bench::boot(rounds)),
            BenchWhich::Detect => exit_of(bench::detect()),
            BenchWhich::Transport => exit_of(bench::transport()),
            BenchWhich::Record { rounds } => exit_of(bench::record(rounds)),
            BenchWhich::Scenarios => exit_of(bench::scenarios()),
            BenchWhich::StressNg { rounds } => exit_of(bench::stress_ng(rounds)),
            BenchWhich::Mach { boots } => exit_of(bench::mach(boots)),
            BenchWhich::Bisect { bisections } => exit_of(verbs::bisect::sim::bench(bisections)),
            BenchWhich::RealBisect { work } => exit_of(verbs::bisect::real::bench(work)),
        },
        Verb::Scan(a) => kstorm::detect::scan::run(&a),
        Verb::Test { fast, cargo_args } => verbs::test::test(fast, &cargo_args),
        Verb::Clean(a) => exit_of(verbs::clean::clean(a.results)),
        Verb::Replay(a) => replay(a),
    };
    ExitCode::from(code as u8)
}

/// Prints clap's message; its exit code (2 for an error, 0 for --help), except that a bad
/// `bisect-run` command line exits 128 (abort): `git bisect run` would read 2 as "bad".
fn parse_error(e: &clap::Error) -> i32 {
    let _ = e.print();
    let bisect_run = std::env::args().nth(1).as_deref() == Some("bisect-run");
    if e.use_stderr() && bisect_run {
        verbs::bisect::run::ABORT
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
    opts.session.keep_replays = a.keep_replays;
    match verbs::run::run(&opts) {
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
    let first = verbs::run::resumed_request(dir)?;
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
    let axis: kstorm::matrix::axis::Axis = match (a.axis, a.param) {
        (Some(axis), _) => axis.parse()?,
        (None, Some(p)) => format!("param:{p}").parse()?,
        (None, None) => unreachable!("clap requires --axis or --param"),
    };
    let over = a
        .over
        .as_deref()
        .map(verbs::sweep::parse_over)
        .transpose()?;
    verbs::sweep::sweep(&verbs::sweep::SweepOptions {
        case: a.case,
        axis,
        harder: a.harder.map(|h| match h {
            HarderArg::Lower => kstorm::stats::breaking_point::Harder::Lower,
            HarderArg::Higher => kstorm::stats::breaking_point::Harder::Higher,
        }),
        over,
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
    let opts = verbs::verify::VerifyOptions {
        suites: a.suites,
        repeat: a.repeat,
        run,
    };
    match verbs::verify::verify(&opts) {
        Ok(v) => v.exit_code(),
        Err(e) => error_exit(&e, false),
    }
}

/// `report --merge` exits as `run` would have on the merged cells (so a CI merge job fails
/// when a shard did); `report RUN_DIR` exits 0 once the report is written.
fn write_report(a: ReportArgs) -> anyhow::Result<i32> {
    if a.merge.is_empty() {
        let dir = a
            .run_dir
            .unwrap_or_else(|| host::workspace_root().join("results/latest"));
        println!("{}", verbs::report::render_again(&dir)?.display());
        return Ok(0);
    }
    let merged = verbs::report::merge_shards(&a.merge, a.out)?;
    println!("{}", kstorm::render::text::table(&merged.records));
    println!("{}", merged.root.join("report.html").display());
    Ok(merged.exit_code(false))
}

/// 0: B is not worse than A; 1: worse; 2: error. Writes the comparison into B's folder.
fn compare(a: &std::path::Path, b: &std::path::Path, allow_missing: bool) -> i32 {
    match verbs::compare::compare_verb(a, b, allow_missing) {
        Ok(worse) => worse as i32,
        Err(e) => error_exit(&e, false),
    }
}

fn ab(a: AbArgs) -> i32 {
    let [ka, kb] = <[PathBuf; 2]>::try_from(a.kernels).unwrap_or_else(|k| {
        eprintln!(
            "kstorm: usage error: --kernel: give exactly two (A, then B), got {}",
            k.len()
        );
        std::process::exit(2)
    });
    let mut run = RunOptions::new(&a.suite);
    run.selection.repeat = a.repeat;
    run.selection.ram = (!a.ram.is_empty()).then_some(a.ram);
    run.selection.filters = a.filters;
    a.exec.apply(&mut run);
    match verbs::ab::ab(&verbs::ab::AbOptions {
        kernels: [ka, kb],
        run,
    }) {
        Ok(t) => t.worse() as i32,
        Err(e) => error_exit(&e, false),
    }
}

/// 0: the replay reproduced the recorded ending; 1: it diverged; 2: it could not run.
fn replay(a: ReplayArgs) -> i32 {
    let opts = verbs::replay::ReplayOptions {
        cell_dir: a.cell_dir,
        gdb: a.gdb,
        timeout: a.timeout.map(|t| t.0),
    };
    match verbs::replay::replay(&opts) {
        Ok(outcome) => i32::from(!outcome.reproduced),
        Err(e) => error_exit(&e, false),
    }
}

fn exit_of(r: anyhow::Result<()>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => error_exit(&e, false),
    }
}
