//! kstorm's harness, as a library so the integration tests drive the same code as the CLI.
//!
//! The modules, in layers from the bottom (each uses only those above it in this list;
//! `docs/architecture.md` says what each owns and where a new thing goes):
//! - [`error`], [`yaml`]: the error types every layer shares; the YAML loader with spans;
//! - [`host`]: host commands, cache and workspace paths, the Debian package planner;
//! - [`detect`]: crash, hang and OOM detection on console logs;
//! - [`config`]: suites, images and guest recipes (YAML), validated once into typed structs;
//! - [`matrix`]: a suite expanded into cells, checked against the scenario registry; shards;
//! - [`verdict`]: the verdict type and expected-vs-actual;
//! - [`qemu`]: the QEMU argument vector, the process, machine profiles, the boot medium;
//! - [`transport`]: ssh and serial-shell access to guests that boot their own init;
//! - [`images`]: kernels, disks, initramfs archives and ISOs, made into what QEMU boots;
//! - [`guest_build`]: what runs in the guest, built on the host (payload, Mach task, tools);
//! - [`guest`]: the drivers of guests whose steps are data (FreeBSD, GNU/Hurd);
//! - [`cell`]: runs one cell: backend, pure monitor, judge;
//! - [`stats`]: the statistics the verbs share (sweep search, intervals, fits);
//! - [`results`]: the typed results store (run folders written and read back);
//! - [`session`]: the engine: prepared once, runs cells into a store as often as asked;
//! - [`render`]: terminal tables and `report.html` from stored results;
//! - [`verbs`]: one module per `cargo xtask` verb.

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
