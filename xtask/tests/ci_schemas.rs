//! The CI files against their engines' published schemas, and their nightly fan-out against
//! `suites/`. Fast tier: no root, no QEMU. The schemas are vendored in `tests/fixtures/ci/`
//! (its README names their source and licences); the validator is `ci/schema-check`, a crate
//! of its own (so its dependencies leave the harness's build alone), built on first use into
//! kstorm's cache. The full run of the GitLab pipeline is `ci_pipeline.rs`.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;
use wait_timeout::ChildExt;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A YAML file as JSON (YAML 1.2: `on:` stays a string).
fn yaml(relative: &str) -> Value {
    let path = root().join(relative);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{relative}: {e}"));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

/// The validator, built once per machine (about 2 CPU-minutes the first time).
fn schema_check() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let target = kstorm::host::cache_dir().join("tools/schema-check-target");
        let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--quiet", "--locked", "--manifest-path"])
            .arg(root().join("ci/schema-check/Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .env_remove("CARGO_TARGET_DIR")
            .spawn()
            .expect("cargo starts");
        let status = child.wait_timeout(Duration::from_secs(20 * 60)).unwrap();
        let Some(status) = status else {
            child.kill().ok();
            panic!("building ci/schema-check took over 20 minutes");
        };
        assert!(status.success(), "building ci/schema-check failed");
        target.join("debug/schema-check")
    })
}

/// What the vendored schema `name` finds wrong with `file`, one line per error.
fn schema_errors(name: &str, file: &Path) -> Vec<String> {
    let schema = root().join("xtask/tests/fixtures/ci").join(name);
    let out = Command::new(schema_check())
        .arg(&schema)
        .arg(file)
        .output()
        .expect("schema-check runs");
    match out.status.code() {
        Some(0) => Vec::new(),
        Some(1) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect(),
        _ => panic!(
            "schema-check {name} {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// [`schema_errors`] for a changed copy of a CI file (written as JSON, which is YAML too).
fn errors_of_changed(name: &str, instance: &Value) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("changed.yml");
    std::fs::write(&file, serde_json::to_string_pretty(instance).unwrap()).unwrap();
    schema_errors(name, &file)
}

const GITLAB: &str = "ci/gitlab-ci.yml";
const GITHUB: &str = "ci/github-actions.yml";
const GITLAB_SCHEMA: &str = "gitlab-ci.json";
const GITHUB_SCHEMA: &str = "github-workflows.json";

#[test]
fn gitlab_file_matches_gitlabs_schema() {
    let errors = schema_errors(GITLAB_SCHEMA, &root().join(GITLAB));
    assert!(errors.is_empty(), "{GITLAB}:\n{}", errors.join("\n"));
}

#[test]
fn github_file_matches_githubs_schema() {
    let errors = schema_errors(GITHUB_SCHEMA, &root().join(GITHUB));
    assert!(errors.is_empty(), "{GITHUB}:\n{}", errors.join("\n"));
}

/// The two checks above can fail: a misspelt key and a wrong type in each file are caught,
/// and the file as it is, converted the same way, still passes.
#[test]
fn schemas_reject_broken_files() {
    let gitlab = yaml(GITLAB);
    assert_eq!(
        errors_of_changed(GITLAB_SCHEMA, &gitlab),
        Vec::<String>::new()
    );
    let mut misspelt = gitlab.clone();
    misspelt["merge"]["artifact"] = misspelt["merge"]["artifacts"].take();
    assert!(!errors_of_changed(GITLAB_SCHEMA, &misspelt).is_empty());
    let mut mistyped = gitlab.clone();
    mistyped["nightly"]["parallel"]["matrix"] = Value::from("SHARD");
    assert!(!errors_of_changed(GITLAB_SCHEMA, &mistyped).is_empty());

    let github = yaml(GITHUB);
    assert_eq!(
        errors_of_changed(GITHUB_SCHEMA, &github),
        Vec::<String>::new()
    );
    let mut misspelt = github.clone();
    misspelt["jobs"]["merge"]["needz"] = misspelt["jobs"]["merge"]["needs"].take();
    assert!(!errors_of_changed(GITHUB_SCHEMA, &misspelt).is_empty());
    let mut mistyped = github.clone();
    mistyped["jobs"]["nightly"]["timeout-minutes"] = Value::from(vec![300]);
    assert!(!errors_of_changed(GITHUB_SCHEMA, &mistyped).is_empty());
}

/// The suite names `ci/nightly.sh` fans out over when no suite is chosen.
fn nightly_suites() -> Vec<String> {
    let out = std::process::Command::new("bash")
        .arg(root().join("ci/nightly.sh"))
        .arg("suites")
        .env_remove("KSTORM_SUITES")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn suite_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("suites"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            name.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Every file in suites/ is run by the nightly of both files: each shard job runs
/// `ci/nightly.sh shard`, which takes every suite file when KSTORM_SUITES is left empty, and the
/// merge job merges the same suites.
#[test]
fn nightly_fan_out_covers_every_suite_file() {
    let mut fanned = nightly_suites();
    fanned.sort();
    assert_eq!(fanned, suite_files());

    let gitlab = yaml(GITLAB);
    assert_eq!(gitlab["variables"]["KSTORM_SUITES"], "", "{GITLAB}");
    let script = |job: &str| gitlab[job]["script"].to_string();
    assert!(
        script("nightly").contains("ci/nightly.sh shard"),
        "{GITLAB}"
    );
    assert!(script("merge").contains("ci/nightly.sh merge"), "{GITLAB}");

    let github = yaml(GITHUB);
    assert_eq!(github["env"]["KSTORM_SUITES"], "", "{GITHUB}");
    let steps = |job: &str| github["jobs"][job]["steps"].to_string();
    assert!(steps("nightly").contains("ci/nightly.sh shard"), "{GITHUB}");
    assert!(steps("merge").contains("ci/nightly.sh merge"), "{GITHUB}");
}

/// The shard values of each nightly matrix are exactly 1..=KSTORM_SHARDS, the count the shards
/// and the merge are told.
#[test]
fn shard_matrices_count_to_kstorm_shards() {
    let count = |v: &Value| -> usize { v.as_str().unwrap().parse().unwrap() };
    let numbers = |v: &Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().map(|n| n as usize).unwrap_or_else(|| count(s)))
            .collect()
    };

    let gitlab = yaml(GITLAB);
    let n = count(&gitlab["variables"]["KSTORM_SHARDS"]);
    let matrix = &gitlab["nightly"]["parallel"]["matrix"];
    assert_eq!(
        matrix.as_array().unwrap().len(),
        1,
        "{GITLAB}: one matrix row"
    );
    assert_eq!(numbers(&matrix[0]["SHARD"]), (1..=n).collect::<Vec<_>>());

    let github = yaml(GITHUB);
    let n = count(&github["env"]["KSTORM_SHARDS"]);
    let shards = &github["jobs"]["nightly"]["strategy"]["matrix"]["shard"];
    assert_eq!(numbers(shards), (1..=n).collect::<Vec<_>>());
}
