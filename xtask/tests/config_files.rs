//! Suites and images: the repository's own files load, and bad files give errors that name the
//! file, the line and the field.

use kstorm::config::{self, Catalog, Expect, RamSize};
use kstorm::matrix::{self, Profile, Selection};
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
        profile: Profile::Deep,
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
        .contains("--image ghost"));
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
