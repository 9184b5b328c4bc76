//! The results store, read back by every reader: a run folder round-trips as types; a damaged
//! or missing file stops `report` and `compare` with exit 2 naming it; missing cells make
//! `compare` say worse; a merge keeps every shard's host. Run folders are made with the store
//! itself from records of cells that did not boot (nothing here needs QEMU).

use kstorm::cell::CellRecord;
use kstorm::qemu::Accel;
use kstorm::results::{HostFacts, Run, RunInfo, Store};
use kstorm::verdict::Verdict;
use std::path::{Path, PathBuf};

fn record(id: &str, verdict: Verdict) -> CellRecord {
    let mut cell = kstorm::session::accel::probe_cell().unwrap();
    cell.id = id.into();
    let as_expected = verdict == Verdict::Pass;
    let mut r = CellRecord::unstarted(&cell, Accel::Tcg, verdict);
    r.as_expected = as_expected;
    r
}

/// A finished run folder at `root` with `cells` passing, its host named `host`.
fn run_folder(root: &Path, host: &str, cells: &[&str]) -> PathBuf {
    let mut info = RunInfo::new("run", "store-test", vec!["run".into()]);
    info.host = HostFacts {
        hostname: host.into(),
        ..HostFacts::here()
    };
    info.cells_planned = cells.len();
    let store = Store::create_at(root, info).unwrap();
    for id in cells {
        store.add(record(id, Verdict::Pass)).unwrap();
    }
    store.finish(true).unwrap();
    root.to_path_buf()
}

fn xtask(args: &[&Path], verb: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(verb)
        .args(args)
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    )
}

#[test]
fn a_run_folder_reads_back_as_it_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let root = run_folder(
        &tmp.path().join("a"),
        "host-a",
        &["x@linux-128M", "y@linux-128M"],
    );
    let run = Run::load(&root).unwrap();
    assert_eq!(run.info.format_version, kstorm::results::FORMAT_VERSION);
    assert_eq!(run.info.host.hostname, "host-a");
    assert!(run.info.complete && run.info.finished_at.is_some());
    assert!(!run.info.kstorm.commit.is_empty());
    let ids: Vec<&str> = run.records.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["x@linux-128M", "y@linux-128M"]);
    assert_eq!(run.summary.as_expected, 2);
    assert_eq!(run.summary.counts["pass"], 2);
    assert_eq!(run.summary.run.run_id, "a");
}

#[test]
fn damaged_or_missing_files_stop_every_reader_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = run_folder(&tmp.path().join("good"), "h", &["x@linux-128M"]);
    let damages: [(&str, &str, fn(&Path)); 4] = [
        ("summary", "summary.json", |d| {
            std::fs::write(d.join("summary.json"), "{ not json").unwrap()
        }),
        ("record", "result.json", |d| {
            let f = d.join("cells/x@linux-128M/result.json");
            std::fs::write(f, "{\"id\": 3}").unwrap()
        }),
        ("info", "run.json", |d| {
            std::fs::remove_file(d.join("run.json")).unwrap()
        }),
        ("old format", "run.json", |d| {
            std::fs::write(d.join("run.json"), "{\"args\": [\"run\"]}").unwrap()
        }),
    ];
    for (what, file, damage) in damages {
        let bad = tmp.path().join(what.replace(' ', "-"));
        run_folder(&bad, "h", &["x@linux-128M"]);
        damage(&bad);
        let (code, _, err) = xtask(&[&bad], &["report"]);
        assert_eq!(code, 2, "report, {what}: {err}");
        assert!(err.contains(file), "report, {what}: {err}");
        assert!(
            !bad.join("report.html").exists(),
            "report, {what}: written anyway"
        );
        for (a, b) in [(&good, &bad), (&bad, &good)] {
            let (code, out, err) = xtask(&[a.as_path(), b.as_path()], &["compare"]);
            assert_eq!(code, 2, "compare, {what}: {out}{err}");
            assert!(err.contains(file), "compare, {what}: {err}");
            assert!(!out.contains("not worse"), "compare, {what}: {out}");
        }
    }
}

#[test]
fn compare_calls_missing_cells_and_an_incomplete_run_worse() {
    let tmp = tempfile::tempdir().unwrap();
    let a = run_folder(
        &tmp.path().join("a"),
        "h",
        &["x@linux-128M", "y@linux-128M"],
    );
    let b = run_folder(&tmp.path().join("b"), "h", &["x@linux-128M"]);
    let (code, out, _) = xtask(&[&a, &b], &["compare"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("MISSING") && out.contains("y@linux-128M"),
        "{out}"
    );
    let (code, out, _) = xtask(&[&a, &b], &["compare", "--allow-missing"]);
    assert_eq!(code, 0, "{out}");
    // A run that lost every cell (interrupted before its first) is worse, not neutral.
    let mut info = RunInfo::new("run", "store-test", vec!["run".into()]);
    info.cells_planned = 2;
    let empty = Store::create_at(&tmp.path().join("empty"), info).unwrap();
    let (code, out, _) = xtask(&[&a, empty.root()], &["compare"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("B did not complete"), "{out}");
    // The same run against itself is not worse.
    let (code, out, _) = xtask(&[&a, &a], &["compare"]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn a_merged_run_keeps_every_shards_host() {
    let tmp = tempfile::tempdir().unwrap();
    let one = run_folder(&tmp.path().join("one"), "runner-one", &["x@linux-128M"]);
    let two = run_folder(&tmp.path().join("two"), "runner-two", &["y@linux-128M"]);
    let out = tmp.path().join("merged");
    let (code, stdout, err) = xtask(
        &[&one, &two, Path::new("--out"), &out],
        &["report", "--merge"],
    );
    assert_eq!(code, 0, "{stdout}{err}");
    let merged = Run::load(&out).unwrap();
    let hosts: Vec<&str> = merged
        .info
        .hosts()
        .iter()
        .map(|h| h.hostname.as_str())
        .collect();
    assert_eq!(hosts, ["runner-one", "runner-two"]);
    assert_eq!(merged.records.len(), 2);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("runner-one") && html.contains("runner-two"));
    // Rendering it again elsewhere later shows the shards' hosts, not the renderer's.
    let (code, _, err) = xtask(&[&out], &["report"]);
    assert_eq!(code, 0, "{err}");
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("runner-one") && html.contains("runner-two"));
}
