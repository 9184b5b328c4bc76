//! kstorm's harness, as a library so the integration tests drive the same code as the CLI.
//!
//! One module per concern:
//! - [`config`]: suites and images (YAML), validated once into typed structs;
//! - [`matrix`]: expands a suite into cells (image x RAM x variant x case x repeat), checking
//!   each case's parameters;
//! - [`list`]: the `list` verb: the cells a selection would run, nothing booted;
//! - [`host`]: host tools, cache and workspace paths; missing tools name their apt package;
//! - [`images`]: fetch and prepare kernels (Debian's Linux, GNU Mach) and initramfs archives;
//! - [`payload`]: builds the static guest payload;
//! - [`qemu`]: the QEMU argument vector, start/stop, the KVM probe;
//! - [`cell`]: runs one cell: boot, stream the console, read frames, decide the verdict;
//! - [`detect`]: crash, hang and OOM detection on console logs;
//! - [`verdict`]: the verdict type and expected-vs-actual;
//! - [`report`]: results on disk (atomic), JUnit, the summary table;
//! - [`transport`]: ssh and serial-shell access to guests that boot their own init;
//! - [`bisect`]: the `bisect-run` verb: one `git bisect run` step under a sequential rule;
//! - [`run`]: the `run` verb: the whole matrix, in parallel, with progress bars.

pub mod cell;
pub mod config;
pub mod detect;
pub mod error;
pub mod guest;
pub mod guest_build;
pub mod host;
pub mod images;
pub mod matrix;
pub mod qemu;
pub mod render;
pub mod results;
pub mod session;
pub mod stats;
pub mod transport;
pub mod verbs;
pub mod verdict;
pub mod yaml;
