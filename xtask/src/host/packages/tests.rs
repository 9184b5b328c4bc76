use super::*;
use crate::config::{Catalog, TransportKind};
use crate::matrix::{self, Cell, Selection};

const V7: &str = "1:7.2+dfsg-7+deb12u18+b3";
const V7_OLD: &str = "1:7.2+dfsg-7+deb12u15";
const V10: &str = "1:10.0.2+ds-1~bpo12+1";

/// One package as `apt-cache policy` prints it: `installed` (if any) is the candidate; a version
/// no archive offers shows only `/var/lib/dpkg/status` as its source.
fn stanza(package: &str, installed: Option<&str>, offered: &[&str]) -> String {
    let mut versions: Vec<&str> = installed.into_iter().collect();
    versions.extend(offered.iter().filter(|v| Some(**v) != installed));
    let mut text = format!(
        "{package}:\n  Installed: {}\n  Candidate: {}\n  Version table:\n",
        installed.unwrap_or("(none)"),
        installed.unwrap_or(versions[0])
    );
    for v in versions {
        let mark = if Some(v) == installed { "***" } else { "   " };
        let prio = if offered.contains(&v) { 500 } else { 100 };
        text.push_str(&format!(" {mark} {v} {prio}\n"));
        if offered.contains(&v) {
            text.push_str(
                "        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n",
            );
        }
        if Some(v) == installed {
            text.push_str("        100 /var/lib/dpkg/status\n");
        }
    }
    text
}

/// `apt-cache policy` on the fresh machine of 2026-12-01: qemu-utils from bookworm-backports
/// preinstalled, with no backports source configured.
fn backports_policy() -> String {
    [
        stanza("qemu-system-x86", None, &[V7, V7_OLD]),
        stanza("qemu-utils", Some(V10), &[V7, V7_OLD]),
        stanza("qemu-system-common", None, &[V7]),
    ]
    .concat()
}

fn tools(needs: &[Need]) -> BTreeSet<&str> {
    needs
        .iter()
        .flat_map(|n| n.tools.iter().map(|t| t.as_str()))
        .collect()
}

fn packages(plan_or_groups: &[Group]) -> Vec<&str> {
    plan_or_groups
        .iter()
        .flat_map(|g| g.packages.iter().map(|p| p.as_str()))
        .collect()
}

fn cells(images: &[&str], transport: Option<TransportKind>) -> Vec<Cell> {
    let root = crate::host::workspace_root();
    let catalog = Catalog::load(&root).unwrap();
    let suite = catalog.suite("default").unwrap();
    let sel = Selection {
        images: Some(images.iter().map(|s| s.to_string()).collect()),
        transport,
        ..Selection::default()
    };
    matrix::expand(suite, &catalog, &sel).unwrap()
}

#[test]
fn the_table_covers_every_source_and_transport() {
    let table = PackageTable::builtin();
    for kind in ["debian-kernel", "downloaded-kernel", "debian-gnumach"] {
        assert!(table.needs.source.contains_key(kind), "{kind}");
    }
    for kind in [
        TransportKind::Pid1,
        TransportKind::Ssh,
        TransportKind::Serial,
    ] {
        assert!(
            table.needs.transport.contains_key(&kind.to_string()),
            "{kind}"
        );
    }
    assert_eq!(
        table.package_of("qemu-system-x86_64"),
        Some("qemu-system-x86")
    );
    assert_eq!(table.package_of("grub-mkrescue"), Some("grub-pc-bin"));
}

#[test]
fn a_bad_table_is_refused_with_the_tool_named() {
    let text = "tools: {qemu-img: {package: qemu-utils}}\n\
                needs: {run: [qemu-img, cc], source: {}, disk: [], transport: {}}\n\
                pinned_together: []\n";
    let err = format!("{:#}", PackageTable::parse(text).unwrap_err());
    assert!(err.contains("tool cc is not under tools:"), "{err}");
    let err = format!(
        "{:#}",
        PackageTable::parse("tools: {}\nneeds: {}\n").unwrap_err()
    );
    assert!(
        err.contains("host-packages.yaml") && err.contains("missing field"),
        "{err}"
    );
}

#[test]
fn linux_cells_need_qemu_and_apt_but_no_grub() {
    let table = PackageTable::builtin();
    let uses = crate::matrix::host_uses(&cells(&["linux"], None));
    assert_eq!(uses.sources, BTreeSet::from(["debian-kernel".to_string()]));
    assert!(!uses.disk);
    let needs = table.needs(&uses);
    let t = tools(&needs);
    for want in ["qemu-system-x86_64", "libc.a", "apt-get", "dpkg-deb"] {
        assert!(t.contains(want), "{want} in {t:?}");
    }
    for not in ["grub-mkrescue", "xorriso", "mke2fs", "qemu-img"] {
        assert!(!t.contains(not), "{not} in {t:?}");
    }
}

#[test]
fn gnumach_cells_need_the_grub_iso_tools() {
    let table = PackageTable::builtin();
    let uses = crate::matrix::host_uses(&cells(&["gnumach"], None));
    let groups = table.missing(&table.needs(&uses), &|_| false);
    let all = packages(&groups);
    for want in [
        "qemu-system-x86",
        "grub-pc-bin",
        "xorriso",
        "mtools",
        "gcc",
        "apt",
    ] {
        assert!(all.contains(&want), "{want} in {all:?}");
    }
    assert!(!all.contains(&"e2fsprogs"), "{all:?}");
    // Each package once, in the first group that needs it: apt serves two tools.
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), all.len(), "{all:?}");
    assert!(groups[0].why.starts_with("every run"), "{groups:?}");
}

#[test]
fn disk_cells_over_ssh_need_the_disk_tools() {
    let table = PackageTable::builtin();
    let uses = crate::matrix::host_uses(&cells(&["linux-disk"], Some(TransportKind::Ssh)));
    assert!(uses.disk);
    assert_eq!(uses.transports, BTreeSet::from(["ssh".to_string()]));
    let groups = table.missing(&table.needs(&uses), &|_| false);
    let disk = groups
        .iter()
        .find(|g| g.why.starts_with("disk images"))
        .unwrap();
    for want in ["e2fsprogs", "openssl", "qemu-utils"] {
        assert!(
            disk.packages.iter().any(|p| p == want),
            "{want} in {disk:?}"
        );
    }
}

#[test]
fn nothing_is_planned_when_every_probe_holds() {
    let table = PackageTable::builtin();
    let needs = table.needs(&Uses::everything());
    assert!(table.missing(&needs, &|_| true).is_empty());
    // The test verb takes every group the table has.
    let t = tools(&needs);
    assert!(t.contains("grub-i386-pc") && t.contains("mke2fs") && t.contains("apt-get"));
}

#[test]
fn policy_text_is_read() {
    let p = Policy::parse(&backports_policy());
    let utils = p.get("qemu-utils").unwrap();
    assert_eq!(utils.installed.as_deref(), Some(V10));
    assert_eq!(utils.candidate.as_deref(), Some(V10));
    // The installed version comes from no configured archive.
    assert_eq!(
        utils.from_archives,
        vec![V7.to_string(), V7_OLD.to_string()]
    );
    let x86 = p.get("qemu-system-x86").unwrap();
    assert_eq!(x86.installed, None);
    assert_eq!(x86.from_archives, vec![V7.to_string(), V7_OLD.to_string()]);
    assert!(p.get("qemu-block-extra").is_none());
}

#[test]
fn a_member_from_elsewhere_is_pinned_back_with_the_one_installed() {
    let table = PackageTable::builtin();
    // qemu-img is there (from backports); QEMU itself is not.
    let groups = table.missing(&table.needs(&Uses::everything()), &|t| {
        t != "qemu-system-x86_64"
    });
    assert_eq!(packages(&groups), vec!["qemu-system-x86"]);
    let query = table.policy_query(&groups);
    assert!(query.contains(&"qemu-utils".to_string()), "{query:?}");
    let plan = table
        .pin(groups, &Policy::parse(&backports_policy()))
        .unwrap();
    assert_eq!(plan.groups.len(), 1);
    let g = &plan.groups[0];
    assert_eq!(
        g.packages,
        vec![format!("qemu-system-x86={V7}"), format!("qemu-utils={V7}")]
    );
    assert!(g.allow_downgrades);
    assert_eq!(plan.notes.len(), 1);
    let note = &plan.notes[0];
    assert!(
        note.contains(&format!("must share its version: pinned at {V7}")),
        "{note}"
    );
    assert!(
        note.contains(&format!(
            "qemu-utils {V10} (installed from no configured archive)"
        )),
        "{note}"
    );
    assert_eq!(
        one_line(&plan, false),
        format!(
            "apt-get install -y -q --no-install-recommends --allow-downgrades \
             qemu-system-x86={V7} qemu-utils={V7}"
        )
    );
}

#[test]
fn members_wanted_by_two_groups_install_together_without_downgrades() {
    let table = PackageTable::builtin();
    let groups = table.missing(&table.needs(&Uses::everything()), &|t| {
        !matches!(t, "qemu-system-x86_64" | "qemu-img" | "mke2fs")
    });
    let policy = backports_policy().replace(
        &format!("  Installed: {V10}\n  Candidate: {V10}"),
        &format!("  Installed: (none)\n  Candidate: {V7}"),
    );
    let plan = table.pin(groups, &Policy::parse(&policy)).unwrap();
    let pinned = vec![format!("qemu-system-x86={V7}"), format!("qemu-utils={V7}")];
    assert_eq!(plan.groups[0].packages, pinned, "{plan:?}");
    assert!(!plan.groups[0].allow_downgrades);
    // The disk group keeps e2fsprogs and loses qemu-utils to the first group.
    let disk = plan
        .groups
        .iter()
        .find(|g| g.why.starts_with("disk"))
        .unwrap();
    assert_eq!(disk.packages, vec!["e2fsprogs"]);
}

#[test]
fn a_lone_member_with_nothing_beside_it_is_not_pinned() {
    let table = PackageTable::builtin();
    let groups = table.missing(&table.needs(&Uses::everything()), &|t| {
        t != "qemu-system-x86_64"
    });
    let policy = backports_policy().replace(
        &format!("  Installed: {V10}\n  Candidate: {V10}"),
        "  Installed: (none)\n  Candidate: (none)",
    );
    let plan = table.pin(groups, &Policy::parse(&policy)).unwrap();
    assert_eq!(packages(&plan.groups), vec!["qemu-system-x86"]);
    assert!(plan.notes.is_empty(), "{plan:?}");
}

#[test]
fn no_version_common_to_the_set_is_an_error_naming_them() {
    let table = PackageTable::builtin();
    let groups = table.missing(&table.needs(&Uses::everything()), &|t| {
        t != "qemu-system-x86_64"
    });
    let policy = Policy::parse(
        &[
            stanza("qemu-system-x86", None, &[V7]),
            stanza("qemu-utils", Some(V10), &[V7_OLD]),
        ]
        .concat(),
    );
    let err = table.pin(groups, &policy).unwrap_err().to_string();
    assert!(
        err.contains("qemu-system-x86, qemu-utils") && err.contains("one version"),
        "{err}"
    );
}

/// This host's own apt answers in the shape the parser reads.
#[test]
fn the_hosts_policy_parses() {
    if find_program("apt-cache").is_none() {
        return;
    }
    let text = Cmd::new("apt-cache")
        .args(["policy", "dpkg"])
        .read()
        .unwrap();
    let dpkg = Policy::parse(&text);
    let dpkg = dpkg.get("dpkg").unwrap();
    assert!(dpkg.installed.is_some(), "{text}");
    assert!(!dpkg.from_archives.is_empty(), "{text}");
}

#[test]
fn stress_ng_cells_need_the_tools_that_fetch_it() {
    let table = PackageTable::builtin();
    let catalog = Catalog::load(&crate::host::workspace_root()).unwrap();
    let suite = catalog.suite("stress").unwrap();
    let stress_cells = matrix::expand(suite, &catalog, &Selection::default()).unwrap();
    let uses = crate::matrix::host_uses(&stress_cells);
    assert!(uses.scenarios.contains("stress-ng"), "{uses:?}");
    let needs = table.needs(&uses);
    let need = needs
        .iter()
        .find(|n| n.label == "scenario stress-ng")
        .unwrap_or_else(|| panic!("{needs:?}"));
    for tool in ["apt-get", "apt-cache", "dpkg-deb"] {
        assert!(need.tools.iter().any(|t| t == tool), "{tool} in {need:?}");
    }
    let default = crate::matrix::host_uses(&cells(&["linux"], None));
    assert!(!table
        .needs(&default)
        .iter()
        .any(|n| n.label.starts_with("scenario")));
}
