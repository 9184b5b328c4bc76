//! Suites and images: the repository's own files load, and bad files give errors that name the
//! file, the line and the field.

use kstorm::config::{self, Catalog, Expect, RamSize};
use kstorm::matrix::{self, ParamProfile, Selection};
use std::path::Path;

fn write(dir: &Path, rel: &str, text: &str) -> std::path::PathBuf {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, text).unwrap();
    p
}

const IMAGE: &str = "name: img\ndescription: d\nos: linux\nsource: {debian-kernel: {metapackage: linux-image-amd64}}\nboot: {machine: microvm}\n";

fn catalog_with(suite: &str) -> anyhow::Result<Catalog> {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "images/img.yaml", IMAGE);
    write(dir.path(), "suites/s.yaml", suite);
    Catalog::load(dir.path())
}

#[test]
fn repository_files_load() {
    let catalog = Catalog::load(&kstorm::host::workspace_root()).unwrap();
    assert!(catalog.images.contains_key("linux"));
    assert!(catalog.suites.contains_key("default"));
    for suite in catalog.suites.values() {
        let cells = matrix::expand(suite, &catalog, &Selection::default()).unwrap();
        assert!(!cells.is_empty(), "{}", suite.name);
    }
}

#[test]
fn unknown_field_names_file_line_and_field() {
    let err = catalog_with("name: s\ndescription: d\nimages: [img]\nram: [128M]\ncases:\n  - name: a\n    scenario: smoke\n    expect: pass\n    colour: blue\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("suites/s.yaml"), "{err}");
    assert!(err.contains("line 9"), "{err}");
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn bad_values_are_refused_where_they_stand() {
    let err = catalog_with("name: s\ndescription: d\nimages: [img]\nram: [128M, lots]\ncases:\n  - {name: a, scenario: smoke, expect: pass}\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("line 4") && err.contains("invalid RAM size \"lots\""),
        "{err}"
    );
    let err = catalog_with("name: s\ndescription: d\nimages: [img]\nram: [128M]\ncases:\n  - {name: a, scenario: smoke, expect: explode}\n")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("line 6") && err.contains("explode"), "{err}");
    let err = catalog_with("name: s\ndescription: d\nimages: [img]\nram: [128M]\ndeadlines: {boot: soon}\ncases:\n  - {name: a, scenario: smoke, expect: pass}\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("line 5") && err.contains("invalid duration"),
        "{err}"
    );
}

#[test]
fn cross_field_errors_name_the_line() {
    let err = catalog_with("name: s\ndescription: d\nimages: [img]\nram: [128M]\ncases:\n  - name: a\n    scenario: smoke\n    expect: pass\n  - name: a\n    scenario: smoke\n    expect: pass\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("line 9") && err.contains("cases[1].name") && err.contains("duplicate"),
        "{err}"
    );
    let err = catalog_with("name: s\ndescription: d\nimages: [nope]\nram: [128M]\ncases:\n  - {name: a, scenario: smoke, expect: pass}\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("line 3") && err.contains("unknown image \"nope\""),
        "{err}"
    );
    let err = catalog_with("name: other\ndescription: d\nimages: [img]\nram: [128M]\ncases:\n  - {name: a, scenario: smoke, expect: pass}\n")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("line 1") && err.contains("must match the file name"),
        "{err}"
    );
}

#[test]
fn matrix_crosses_cases_ram_variants_repeats_and_profiles() {
    let catalog = catalog_with(
        "name: s\ndescription: d\nimages: [img]\nram: [128M, 256M]\nvariants:\n  - {name: base}\n  - {name: nomerge, cmdline: [slab_nomerge], sysctl: {vm.overcommit_memory: '2'}}\ncases:\n  - {name: a, scenario: fork-hold, params: {children: 10}, deep: {children: 5000}, expect: pass}\n  - {name: b, scenario: panic, expect: crash, ram: [64M]}\n  - {name: c, scenario: smoke, expect: pass, ram: [64M], variants: [nomerge]}\n",
    )
    .unwrap();
    let suite = &catalog.suites["s"];
    let cells = matrix::expand(suite, &catalog, &Selection::default()).unwrap();
    let ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "a@img-128M-base",
            "a@img-128M-nomerge",
            "a@img-256M-base",
            "a@img-256M-nomerge",
            "b@img-64M-base",
            "b@img-64M-nomerge",
            "c@img-64M-nomerge"
        ]
    );
    assert_eq!(cells[0].params["children"], 10);
    assert_eq!(cells[1].variant.sysctl["vm.overcommit_memory"], "2");
    assert_eq!(cells[4].case.expect, Expect::Crash);

    let sel = Selection {
        repeat: 3,
        profile: ParamProfile::Deep,
        filters: vec!["a@img-256M-base".into()],
        ..Selection::default()
    };
    let cells = matrix::expand(suite, &catalog, &sel).unwrap();
    let ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "a@img-256M-base.r1",
            "a@img-256M-base.r2",
            "a@img-256M-base.r3"
        ]
    );
    assert_eq!(cells[0].params["children"], 5000);

    let sel = Selection {
        ram: Some(vec![RamSize(512)]),
        ..Selection::default()
    };
    assert!(matrix::expand(suite, &catalog, &sel)
        .unwrap()
        .iter()
        .all(|c| c.ram == RamSize(512)));
    let sel = Selection {
        images: Some(vec!["ghost".into()]),
        ..Selection::default()
    };
    assert!(matrix::expand(suite, &catalog, &sel)
        .unwrap_err()
        .to_string()
        .contains("--image: no image \"ghost\""));
}

#[test]
fn load_image_checks_name_against_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "images/other.yaml", IMAGE);
    let err = config::load_image(&p).unwrap_err().to_string();
    assert!(
        err.contains("other.yaml") && err.contains("must match"),
        "{err}"
    );
}

#[test]
fn image_option_narrows_or_substitutes() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "images/img.yaml", IMAGE);
    write(
        dir.path(),
        "images/img2.yaml",
        &IMAGE.replace("name: img", "name: img2"),
    );
    write(
        dir.path(),
        "images/pinned.yaml",
        &IMAGE.replace("name: img", "name: pinned"),
    );
    write(
        dir.path(),
        "suites/s.yaml",
        "name: s\ndescription: d\nimages: [img]\nram: [128M]\ncases:\n  - {name: a, scenario: smoke, expect: pass}\n  - {name: p, scenario: smoke, expect: pass, images: [pinned]}\n",
    );
    let catalog = Catalog::load(dir.path()).unwrap();
    let suite = &catalog.suites["s"];
    let ids = |images: &[&str]| -> Vec<String> {
        let sel = Selection {
            images: Some(images.iter().map(|s| s.to_string()).collect()),
            ..Selection::default()
        };
        matrix::expand(suite, &catalog, &sel)
            .map(|c| c.into_iter().map(|c| c.id).collect())
            .unwrap_or_default()
    };
    // Named by the suite: narrow to the cases that run on it.
    assert_eq!(ids(&["pinned"]), ["p@pinned-128M-base"]);
    assert_eq!(ids(&["img"]), ["a@img-128M-base"]);
    // Not named: it takes the suite's images' place; pinned cases stay pinned (and drop out).
    assert_eq!(ids(&["img2"]), ["a@img2-128M-base"]);
}

mod common;

/// Runs the `cargo xtask` binary with nothing on PATH (no QEMU, no cargo, no apt-get), a
/// cache and results folder of its own under `dir`: (exit code, stdout, stderr).
fn xtask(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let empty_path = dir.join("empty-path");
    std::fs::create_dir_all(&empty_path).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .env("PATH", &empty_path)
        .env("KSTORM_CACHE", dir.join("cache"))
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
fn list_prints_every_cell_of_every_repository_suite() {
    let catalog = Catalog::load(&kstorm::host::workspace_root()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, suite) in &catalog.suites {
        let (code, out, err) = xtask(dir.path(), &["list", "--suite", name]);
        assert_eq!(code, 0, "{name}: {err}");
        let cells = matrix::expand(suite, &catalog, &Selection::default()).unwrap();
        assert!(
            out.starts_with(&format!("suite {name}: {} cells", cells.len())),
            "{out}"
        );
        for cell in &cells {
            assert!(out.contains(&format!("{}\n    scenario {}", cell.id, cell.case.scenario)));
        }
        assert_eq!(out.matches("\n    deadlines: boot ").count(), cells.len());
    }
    // Parameters come with the payload's defaults filled in; --profile deep applies `deep:`.
    let one_cell = |profile: &str| {
        let filter = "fork-hold-exhaust@linux-256M-base";
        let args = [
            "list",
            "--suite",
            "hurd-zone",
            "--filter",
            filter,
            "--profile",
            profile,
        ];
        xtask(dir.path(), &args)
    };
    let (code, out, _) = one_cell("quick");
    assert_eq!(code, 0);
    assert!(out.contains("\"leak_settle_ms\":1000"), "{out}");
    let (_, deep, _) = one_cell("deep");
    assert_ne!(out, deep);
    assert!(deep.contains("profile deep"), "{deep}");
}

/// A suite file with one mistake, the line and field it must be reported at, and a piece of
/// the message.
struct Bad {
    name: &'static str,
    cases: &'static str,
    line: u32,
    field: &'static str,
    says: &'static str,
}

const BAD_SUITES: &[Bad] = &[
    Bad {
        name: "param-typo",
        cases: "  - name: fh\n    scenario: fork-hold\n    params: {childrn: 5}\n    expect: pass\n",
        line: 8,
        field: "cases[0].params.childrn",
        says: "case fh, scenario fork-hold on image linux: unknown field `childrn`",
    },
    Bad {
        name: "param-type",
        cases: "  - name: fh\n    scenario: fork-hold\n    params:\n      hold_ms: 10\n      children: many\n    expect: pass\n",
        line: 10,
        field: "cases[0].params.children",
        says: "invalid type: string \"many\"",
    },
    Bad {
        name: "bad-deep",
        cases: "  - name: fh\n    scenario: fork-hold\n    params: {children: 5}\n    deep:\n      children: 500\n      fd_kind: tty\n    expect: pass\n",
        line: 11,
        field: "cases[0].deep.fd_kind",
        says: "unknown variant `tty`",
    },
    Bad {
        name: "bad-ram",
        cases: "  - name: a\n    scenario: smoke\n    expect: pass\n    ram: [128M, 12X]\n",
        line: 9,
        field: "cases[0].ram[1]",
        says: "invalid RAM size \"12X\"",
    },
    Bad {
        name: "unknown-image",
        cases: "  - name: a\n    scenario: smoke\n    expect: pass\n    images:\n      - linux\n      - linucks\n",
        line: 11,
        field: "cases[0].images[1]",
        says: "unknown image \"linucks\"",
    },
    Bad {
        name: "bad-syntax",
        cases: "  - name: a\n    scenario: smoke\n    expect: [pass\n    ram: [128M]\n",
        line: 9,
        field: "",
        says: "",
    },
    Bad {
        name: "mach-param",
        cases: "  - name: m\n    scenario: task-churn\n    images: [gnumach]\n    params: {limit: 100, colour: 3}\n    expect: pass\n",
        line: 9,
        field: "cases[0].params.colour",
        says: "scenario task-churn on image gnumach: unknown field `colour`",
    },
    Bad {
        name: "mach-scenario",
        cases: "  - name: m\n    images: [gnumach]\n    scenario: fork-hold\n    expect: pass\n",
        line: 8,
        field: "cases[0].scenario",
        says: "scenario \"fork-hold\" does not run on the mach-task route",
    },
];

#[test]
fn bad_suites_are_usage_errors_naming_file_line_and_field_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    for bad in BAD_SUITES {
        let path = dir.path().join(format!("{}.yaml", bad.name));
        let text = format!(
            "name: {}\ndescription: one mistake\nimages: [linux]\nram: [128M]\ncases:\n{}",
            bad.name, bad.cases
        );
        std::fs::write(&path, text).unwrap();
        let suite = path.to_str().unwrap();
        let results = dir.path().join("results");
        let results_arg = results.to_str().unwrap();
        for args in [
            vec!["list", "--suite", suite],
            vec![
                "run",
                "--suite",
                suite,
                "--jobs",
                "1",
                "--results",
                results_arg,
            ],
        ] {
            let (code, out, err) = xtask(dir.path(), &args);
            let want = format!("{suite}: line {}: {}", bad.line, bad.field);
            assert_eq!(code, 2, "{}: {args:?}: {err}", bad.name);
            assert!(err.contains("kstorm: usage error: "), "{}: {err}", bad.name);
            assert!(err.contains(&want), "{}: want {want:?} in {err}", bad.name);
            assert!(err.contains(bad.says), "{}: {err}", bad.name);
            assert!(out.is_empty(), "{}: {out}", bad.name);
        }
        // `run` stopped before its results folder, the payload build and any QEMU.
        assert!(!results.exists(), "{}: run started", bad.name);
        assert!(!dir.path().join("cache").exists(), "{}", bad.name);
        common::assert_no_qemu_mentioning(dir.path());
    }
}

#[test]
fn bad_selections_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["--suite", "nosuch"], "--suite: no suite \"nosuch\""),
        (vec!["--image", "nosuch"], "--image: no image \"nosuch\""),
        (vec!["--filter", "nothing-has-this"], "selects no cells"),
        (
            vec!["--suite", "transport", "--transport", "pid1"],
            "--transport: image linux-disk offers no pid1 transport",
        ),
    ] {
        for verb in ["list", "run"] {
            let mut argv = vec![verb];
            argv.extend(&args);
            let (code, _, err) = xtask(dir.path(), &argv);
            assert_eq!(code, 2, "{argv:?}: {err}");
            assert!(err.contains(says), "{argv:?}: {err}");
        }
    }
    assert!(!dir.path().join("cache").exists());
}

/// A case whose scenario its image's route does not run (`oom` on FreeBSD's portable agent),
/// or with a key the portable agent does not read, is refused before anything is fetched or
/// booted, naming the file, the line, the field and the case.
#[test]
fn scenarios_off_their_route_are_usage_errors_before_any_download() {
    let dir = tempfile::tempdir().unwrap();
    for (case, line, field, says) in [
        (
            "  - {name: oom-on-freebsd, scenario: oom, expect: oom}",
            6,
            "cases[0].scenario",
            "scenario \"oom\" does not run on the portable-c route",
        ),
        (
            "  - name: leaky\n    scenario: fork-hold\n    expect: pass\n    params: {leak_settle_ms: 10}",
            9,
            "cases[0].params.leak_settle_ms",
            "leak_settle_ms",
        ),
    ] {
        let path = dir.path().join("portable.yaml");
        let text = format!(
            "name: portable\ndescription: the portable route\nimages: [freebsd-14.3]\nram: [256M]\ncases:\n{case}\n"
        );
        std::fs::write(&path, text).unwrap();
        let suite = path.to_str().unwrap();
        for verb in ["list", "run"] {
            let (code, _, err) = xtask(dir.path(), &[verb, "--suite", suite]);
            assert_eq!(code, 2, "{verb}: {err}");
            let want = format!("{suite}: line {line}: {field}: case ");
            assert!(err.contains(&want), "{verb}: want {want:?} in {err}");
            assert!(err.contains(says), "{verb}: {err}");
        }
        assert!(!dir.path().join("cache").exists(), "something was fetched");
    }
}

#[test]
fn zero_jobs_or_repeats_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (args, says) in [
        (vec!["run", "--jobs", "0"], "--jobs: must be at least 1"),
        (vec!["run", "--repeat", "0"], "--repeat: must be at least 1"),
    ] {
        let (code, _, err) = xtask(dir.path(), &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("kstorm: usage error: "), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!dir.path().join("cache").exists());
}

/// `gates:` (what `ab` gates on): a bad direction and an unknown case name the line.
#[test]
fn gate_errors_name_the_line() {
    let head = "name: s\ndescription: d\nimages: [img]\nram: [128M]\ncases:\n  - {name: a, scenario: smoke, expect: pass}\n";
    let ok = catalog_with(&format!(
        "{head}gates:\n  - {{measurement: uptime, case: a, worse: higher}}\n"
    ))
    .unwrap();
    let g = &ok.suites["s"].gates[0];
    assert_eq!(
        (g.measurement.as_str(), g.worse),
        ("uptime", config::Worse::Higher)
    );
    let err = catalog_with(&format!(
        "{head}gates:\n  - {{measurement: uptime, worse: sideways}}\n"
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("line 8") && err.contains("sideways"), "{err}");
    let err = catalog_with(&format!(
        "{head}gates:\n  - {{measurement: uptime, case: b, worse: lower}}\n"
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.contains("line 8") && err.contains("gates[0].case") && err.contains("unknown case"),
        "{err}"
    );
}

/// What `sweep --axis/--over/--from` and `ab --kernel` are given is checked before anything is
/// fetched, built or booted: a usage error (exit 2) naming the option.
#[test]
fn sweep_axis_and_ab_usage_errors_boot_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = |extra: &[&str]| {
        let mut argv = vec!["sweep", "--suite", "default"];
        argv.extend(extra);
        argv.iter().map(|s| s.to_string()).collect::<Vec<String>>()
    };
    for (argv, says) in [
        (sweep(&["--case", "smoke", "--axis", "knob:x"]), "--axis"),
        (
            sweep(&["--case", "smoke", "--axis", "sysctl:vm.min_free_kbytes"]),
            "needs --from and --to",
        ),
        (
            sweep(&[
                "--case",
                "mach-port-churn",
                "--axis",
                "sysctl:vm.x",
                "--from",
                "1",
                "--to",
                "2",
            ]),
            "GNU Mach, which has no sysctls",
        ),
        (
            sweep(&["--case", "smoke", "--axis", "ram", "--from", "8M"]),
            "--from: RAM size \"8M\" out of range",
        ),
        (
            sweep(&[
                "--case", "smoke", "--axis", "ram", "--from", "256M", "--to", "64M",
            ]),
            "--to: must be above --from",
        ),
        (
            sweep(&["--case", "smoke", "--axis", "ram", "--over", "ram=64M,128M"]),
            "--over: must differ from the swept axis",
        ),
        (
            sweep(&["--case", "smoke", "--axis", "ram", "--over", "cmdline:x=1"]),
            "at least two values",
        ),
        (
            sweep(&["--case", "fork-hold", "--axis", "param:nope"]),
            "has no numeric parameter nope",
        ),
        (
            sweep(&[
                "--case",
                "smoke",
                "--axis",
                "tunable:vm.kmem_size",
                "--from",
                "1",
                "--to",
                "2",
            ]),
            "has no guest: recipe",
        ),
        (
            sweep(&["--case", "smoke", "--param", "x", "--axis", "ram"]),
            "cannot be used with",
        ),
        (
            [
                "ab",
                "--kernel",
                "/nonexistent/vmlinux",
                "--kernel",
                "/nonexistent/vmlinux",
            ]
            .map(String::from)
            .to_vec(),
            "--kernel",
        ),
        (
            ["ab", "--kernel", "/x"].map(String::from).to_vec(),
            "exactly two",
        ),
    ] {
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let (code, _, err) = xtask(dir.path(), &args);
        assert_eq!(code, 2, "{argv:?}: {err}");
        assert!(err.contains(says), "{argv:?}: {err}");
    }
    assert!(!dir.path().join("cache").exists());
}

/// `record: true` on a case or a suite records its cells with doubled deadlines; on a cell
/// QEMU cannot replay (GNU Mach's ISO), it is a usage error at that `record:` key, naming the
/// cell and what is supported, and `--record` is refused the same way on the command line.
#[test]
fn record_parses_and_an_unrecordable_cell_is_refused_where_it_was_asked() {
    let catalog = Catalog::load(&kstorm::host::workspace_root()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        let path = write(dir.path(), "suites/rec.yaml", text);
        config::load_suite(&path, &catalog.images).unwrap()
    };
    let head = "name: rec\ndescription: d\nimages: [linux]\nram: [128M]\n";
    let suite = load(&format!(
        "{head}deadlines: {{cell: 100s}}\ncases:\n  - {{name: a, scenario: panic, expect: crash, record: true}}\n  - {{name: b, scenario: smoke, expect: pass}}\n"
    ));
    assert!(suite.cases[0].record && !suite.cases[1].record && !suite.record);
    let cells = matrix::expand(&suite, &catalog, &Selection::default()).unwrap();
    assert!(cells[0].record && !cells[1].record);
    assert_eq!(cells[0].deadlines.cell().as_secs(), 200);
    assert_eq!(cells[1].deadlines.cell().as_secs(), 100);
    let sel = Selection {
        record: true,
        ..Selection::default()
    };
    assert!(matrix::expand(&suite, &catalog, &sel)
        .unwrap()
        .iter()
        .all(|c| c.record));

    let mach = "  - {name: m, scenario: port-churn, images: [gnumach], expect: pass";
    let suite = load(&format!(
        "{head}cases:\n  - {{name: a, scenario: smoke, expect: pass}}\n{mach}, record: true}}\n"
    ));
    let err = matrix::expand(&suite, &catalog, &Selection::default())
        .unwrap_err()
        .to_string();
    for want in [
        "rec.yaml",
        "line 7",
        "cases[1].record",
        "cell m@gnumach-128M-base cannot be recorded",
        "GNU Mach",
        "supports PID-1 Linux cells",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
    let suite = load(&format!(
        "{head}record: true\ncases:\n  - {{name: a, scenario: smoke, expect: pass}}\n{mach}}}\n"
    ));
    let err = matrix::expand(&suite, &catalog, &Selection::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 5") && err.contains("record: cell m@"),
        "{err}"
    );
    let suite = load(&format!("{head}cases:\n{mach}}}\n"));
    let err = matrix::expand(&suite, &catalog, &sel)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("--record: cell m@gnumach-128M-base"),
        "{err}"
    );
    let err = matrix::expand(&suite, &catalog, &Selection::default());
    assert!(err.is_ok(), "an unrecorded Mach cell is fine");
}
