//! Shared helpers for the integration tests: run cells of a suite written inline against the
//! real images, and check that no QEMU outlives a test.

#![allow(dead_code)]

use kstorm::cell::CellRecord;
use kstorm::config::{self, Catalog, Image};
use kstorm::matrix::{self, Selection};
use kstorm::session::AccelChoice;
use kstorm::verbs::run::{self, RunOptions};
use std::path::Path;

/// The workspace's real images and suites.
pub fn catalog() -> Catalog {
    Catalog::load(&kstorm::host::workspace_root()).expect("images/ and suites/ load")
}

/// Runs every cell of `suite_yaml` (a suite written inline) and returns the records, sorted by
/// cell id. `extra_images` are added to the catalog (e.g. deliberately broken ones).
pub fn run_suite(
    suite_yaml: &str,
    extra_images: Vec<Image>,
) -> (Vec<CellRecord>, tempfile::TempDir) {
    run_suite_with(suite_yaml, extra_images, |_| {})
}

/// [`run_suite`] with a chance to change the run's options.
pub fn run_suite_with(
    suite_yaml: &str,
    extra_images: Vec<Image>,
    adjust: impl FnOnce(&mut RunOptions),
) -> (Vec<CellRecord>, tempfile::TempDir) {
    std::env::set_var("KSTORM_QUIET", "1");
    let mut catalog = catalog();
    for image in extra_images {
        catalog.images.insert(image.name.0.clone(), image);
    }
    let dir = tempfile::tempdir().unwrap();
    let suite_path = dir.path().join("suites").join("inline.yaml");
    std::fs::create_dir_all(suite_path.parent().unwrap()).unwrap();
    std::fs::write(&suite_path, suite_yaml).unwrap();
    let suite = config::load_suite(&suite_path, &catalog.images).expect("inline suite is valid");
    let cells = matrix::expand(&suite, &catalog, &Selection::default()).unwrap();
    let mut opts = RunOptions::new("inline");
    opts.results_root = dir.path().join("results");
    opts.session.progress = false;
    opts.session.jobs = 1;
    opts.session.accel = AccelChoice::Auto;
    adjust(&mut opts);
    let outcome = run::run_cells("inline", cells, &opts).expect("run completes");
    assert_no_qemu_mentioning(dir.path());
    (outcome.records, dir)
}

/// Parses an image written inline (its file name must match its name).
pub fn inline_image(dir: &Path, name: &str, yaml: &str) -> Image {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    config::load_image(&path).unwrap()
}

/// Fails if any process whose command line mentions `marker` (a test's own temporary folder:
/// every QEMU names its cell's results folder with `-name`) is still alive.
pub fn assert_no_qemu_mentioning(marker: &Path) {
    let marker = marker.to_string_lossy().to_string();
    let left = qemu_processes()
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(&marker))
        .collect::<Vec<_>>();
    assert!(left.is_empty(), "QEMU processes left behind: {left:?}");
}

/// (pid, command line) of every qemu-system process on the host.
pub fn qemu_processes() -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("qemu-system") || cmd.contains("/qemu-system") {
            out.push((pid, cmd));
        }
    }
    out
}

/// The single record of a one-cell run.
pub fn only(records: Vec<CellRecord>) -> CellRecord {
    assert_eq!(records.len(), 1, "expected one cell, got {}", records.len());
    records.into_iter().next().unwrap()
}
