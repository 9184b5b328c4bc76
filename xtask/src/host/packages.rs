//! Which Debian packages the host needs for a selection of cells, and installing them before the
//! first cell boots. What each part of a run needs is data (`xtask/host-packages.yaml`); this
//! module reads it, probes the host, pins the packages that must share a version, prints the
//! plan and runs it (as root) or prints the line to run (as anyone else).

use super::cmd::{shell_quote, Cmd};
use super::{find_program, InfraCause, InfraError};
use anyhow::{bail, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

const TABLE_FILE: &str = "xtask/host-packages.yaml";
const TABLE_TEXT: &str = include_str!("../../host-packages.yaml");

/// `xtask/host-packages.yaml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageTable {
    tools: BTreeMap<String, Tool>,
    needs: Needs,
    pinned_together: Vec<Vec<String>>,
}

/// Something kstorm runs or reads on the host, and the package that provides it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tool {
    package: String,
    /// A command on PATH (default: the tool's name).
    #[serde(default)]
    program: Option<String>,
    /// A file that exists when the package is installed.
    #[serde(default)]
    file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Needs {
    run: Vec<String>,
    source: BTreeMap<String, Vec<String>>,
    disk: Vec<String>,
    transport: BTreeMap<String, Vec<String>>,
    /// By the case's scenario (a tool the payload runs in the guest, fetched from Debian).
    #[serde(default)]
    scenario: BTreeMap<String, Vec<String>>,
    /// Only `cargo xtask test` (`Uses::everything`): what the test suite itself runs.
    #[serde(default)]
    tests: Vec<String>,
    /// Only the named `cargo xtask bench ...` (`Uses::bench`).
    #[serde(default)]
    bench: BTreeMap<String, Vec<String>>,
}

/// What a selection uses, in the terms of the table's `needs:` (the caller, which knows cells
/// and images, fills it in).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uses {
    pub sources: BTreeSet<String>,
    pub disk: bool,
    pub transports: BTreeSet<String>,
    pub scenarios: BTreeSet<String>,
    /// Everything in the table but the benches (`cargo xtask test`).
    pub everything: bool,
    /// The benches of `needs.bench` that run.
    pub benches: BTreeSet<String>,
}

impl Uses {
    pub fn everything() -> Uses {
        Uses {
            everything: true,
            ..Uses::default()
        }
    }
}

/// A part of a run and the tools it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Need {
    pub label: String,
    pub tools: Vec<String>,
}

/// One `apt-get install` of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// What needs it (`every run`, `source debian-gnumach`, ...) and the missing tools.
    pub why: String,
    /// `name` or `name=version`.
    pub packages: Vec<String>,
    pub allow_downgrades: bool,
}

/// The installs a selection needs, in order, with a note for each pinned set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstallPlan {
    pub groups: Vec<Group>,
    pub notes: Vec<String>,
}

impl PackageTable {
    /// The table compiled into kstorm, checked.
    pub fn builtin() -> &'static PackageTable {
        static TABLE: std::sync::OnceLock<PackageTable> = std::sync::OnceLock::new();
        TABLE.get_or_init(|| PackageTable::parse(TABLE_TEXT).unwrap_or_else(|e| panic!("{e:#}")))
    }

    pub fn parse(text: &str) -> Result<PackageTable> {
        let (table, _): (PackageTable, _) =
            crate::yaml::parse_yaml(std::path::Path::new(TABLE_FILE), text)?;
        let needs = &table.needs;
        let all = needs
            .run
            .iter()
            .chain(needs.source.values().flatten())
            .chain(&needs.disk)
            .chain(needs.transport.values().flatten())
            .chain(needs.scenario.values().flatten());
        for tool in all {
            if !table.tools.contains_key(tool) {
                bail!("{TABLE_FILE}: needs: tool {tool} is not under tools:");
            }
        }
        for (name, tool) in &table.tools {
            if tool.program.is_some() && tool.file.is_some() {
                bail!("{TABLE_FILE}: tools.{name}: give `program` or `file`, not both");
            }
        }
        Ok(table)
    }

    /// The Debian package that provides `tool` (a program name kstorm runs), if the table knows.
    pub fn package_of(&self, tool: &str) -> Option<&str> {
        self.tools.get(tool).map(|t| t.package.as_str())
    }

    /// The parts of a run that `uses` touches, in the table's order.
    pub fn needs(&self, uses: &Uses) -> Vec<Need> {
        let n = &self.needs;
        let need = |label: String, tools: &Vec<String>| Need {
            label,
            tools: tools.clone(),
        };
        let by_kind = |table: &BTreeMap<String, Vec<String>>, used: &BTreeSet<String>, what| {
            table
                .iter()
                .filter(|(kind, _)| uses.everything || used.contains(*kind))
                .map(|(kind, tools)| need(format!("{what} {kind}"), tools))
                .collect::<Vec<_>>()
        };
        let mut out = vec![need("every run".into(), &n.run)];
        out.extend(by_kind(&n.source, &uses.sources, "images with source"));
        if uses.everything || uses.disk {
            out.push(need("disk images".into(), &n.disk));
        }
        out.extend(by_kind(&n.transport, &uses.transports, "transport"));
        out.extend(by_kind(&n.scenario, &uses.scenarios, "scenario"));
        if uses.everything {
            out.push(need("the tests".into(), &n.tests));
        }
        for (bench, tools) in n.bench.iter().filter(|(b, _)| uses.benches.contains(*b)) {
            out.push(need(format!("bench {bench}"), tools));
        }
        out.retain(|need| !need.tools.is_empty());
        out
    }

    /// True when `tool`'s probe holds on this host.
    fn present(&self, tool: &str) -> bool {
        let Some(t) = self.tools.get(tool) else {
            return find_program(tool).is_some();
        };
        match (&t.file, &t.program) {
            (Some(file), _) => file.exists(),
            (None, Some(program)) => find_program(program).is_some(),
            (None, None) => find_program(tool).is_some(),
        }
    }

    /// One group per need whose tools are not all present, each package in the first group that
    /// needs it.
    pub fn missing(&self, needs: &[Need], present: &dyn Fn(&str) -> bool) -> Vec<Group> {
        let mut taken = BTreeSet::new();
        let mut groups = Vec::new();
        for need in needs {
            let tools: Vec<&String> = need.tools.iter().filter(|t| !present(t)).collect();
            let packages: Vec<String> = tools
                .iter()
                .filter_map(|t| self.package_of(t))
                .filter(|p| taken.insert(p.to_string()))
                .map(str::to_string)
                .collect();
            if !packages.is_empty() {
                let tools: Vec<&str> = tools.iter().map(|t| t.as_str()).collect();
                groups.push(Group {
                    why: format!("{} ({})", need.label, tools.join(", ")),
                    packages,
                    allow_downgrades: false,
                });
            }
        }
        groups
    }

    /// The packages whose versions `apt-cache policy` must tell: those to install and every
    /// member of a pinned set one of them belongs to.
    pub fn policy_query(&self, groups: &[Group]) -> Vec<String> {
        let mut names: BTreeSet<String> = groups
            .iter()
            .flat_map(|g| g.packages.iter().cloned())
            .collect();
        for set in &self.pinned_together {
            if set.iter().any(|m| names.contains(m)) {
                names.extend(set.iter().cloned());
            }
        }
        names.into_iter().collect()
    }

    /// Applies the `pinned_together` rule to `groups`: every member of a set that is to be
    /// installed or already installed is installed in one `apt-get`, at one version that the
    /// configured archives offer for all of them.
    pub fn pin(&self, mut groups: Vec<Group>, policy: &Policy) -> Result<InstallPlan> {
        let mut notes = Vec::new();
        for set in &self.pinned_together {
            notes.extend(pin_set(set, &mut groups, policy)?);
        }
        groups.retain(|g| !g.packages.is_empty());
        Ok(InstallPlan { groups, notes })
    }
}

/// Pins one set within `groups` (moving its members into the first group that has one), and
/// says what it did; `None` when no member is to be installed, or one is and no other is there.
fn pin_set(set: &[String], groups: &mut [Group], policy: &Policy) -> Result<Option<String>> {
    let Some(first) = groups
        .iter()
        .position(|g| g.packages.iter().any(|p| set.contains(p)))
    else {
        return Ok(None);
    };
    let wanted: Vec<&String> = set
        .iter()
        .filter(|m| groups.iter().any(|g| g.packages.contains(m)))
        .collect();
    let installed: Vec<(&String, &str)> = set
        .iter()
        .filter(|m| !wanted.contains(m))
        .filter_map(|m| Some((m, policy.get(m)?.installed.as_deref()?)))
        .collect();
    if wanted.len() == 1 && installed.is_empty() {
        return Ok(None);
    }
    let involved: Vec<&String> = wanted
        .iter()
        .copied()
        .chain(installed.iter().map(|(m, _)| *m))
        .collect();
    let version = common_version(wanted[0], &involved, policy)?;
    let changed: Vec<(&String, &str)> = installed
        .iter()
        .filter(|(_, v)| *v != version)
        .copied()
        .collect();
    for g in groups.iter_mut() {
        g.packages.retain(|p| !set.contains(p));
    }
    let group = &mut groups[first];
    for m in wanted.iter().chain(changed.iter().map(|(m, _)| m)) {
        group.packages.push(format!("{m}={version}"));
    }
    group.allow_downgrades |= !changed.is_empty();
    Ok(Some(pin_note(&involved, &changed, &version, policy)))
}

/// The first version of `lead` (apt lists the newest first) that the archives offer for every
/// package in `involved`.
fn common_version(lead: &str, involved: &[&String], policy: &Policy) -> Result<String> {
    let offered = |p: &str| {
        policy
            .get(p)
            .map(|v| v.from_archives.clone())
            .unwrap_or_default()
    };
    let lead_versions = offered(lead);
    let names = || {
        involved
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if lead_versions.is_empty() {
        bail!(InfraError::new(
            InfraCause::ToolMissing,
            format!("no configured archive offers {lead} (run `apt-get update` as root?)")
        ));
    }
    lead_versions
        .into_iter()
        .find(|v| involved.iter().all(|p| offered(p).contains(v)))
        .ok_or_else(|| {
            InfraError::new(
                InfraCause::ToolMissing,
                format!(
                "no version is offered for all of {} by the configured archives, and they must \
                 be installed at one version",
                names()
            ),
            )
            .into()
        })
}

fn pin_note(
    involved: &[&String],
    changed: &[(&String, &str)],
    version: &str,
    policy: &Policy,
) -> String {
    let names: Vec<&str> = involved.iter().map(|s| s.as_str()).collect();
    let mut note = format!(
        "{} are built from one source package and must share its version: pinned at {version}",
        names.join(", ")
    );
    for (m, v) in changed {
        let offered = policy
            .get(m)
            .is_some_and(|p| p.from_archives.iter().any(|a| a == v));
        let origin = if offered {
            "installed"
        } else {
            "installed from no configured archive"
        };
        note.push_str(&format!(
            "; {m} {v} ({origin}) is moved to it (--allow-downgrades)"
        ));
    }
    note
}

/// What `apt-cache policy` says of some packages.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy(BTreeMap<String, PackagePolicy>);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackagePolicy {
    pub installed: Option<String>,
    pub candidate: Option<String>,
    /// Versions some configured archive offers (not only `/var/lib/dpkg/status`), newest first.
    pub from_archives: Vec<String>,
}

impl Policy {
    pub fn get(&self, package: &str) -> Option<&PackagePolicy> {
        self.0.get(package)
    }

    /// Parses `apt-cache policy NAME...` output.
    pub fn parse(text: &str) -> Policy {
        let mut out = BTreeMap::new();
        let mut current: Option<(String, PackagePolicy)> = None;
        let mut version: Option<String> = None;
        for line in text.lines() {
            if !line.starts_with(' ') && line.ends_with(':') {
                out.extend(current.take());
                version = None;
                let name = line.trim_end_matches(':');
                current = Some((
                    name.split(':').next().unwrap_or(name).into(),
                    Default::default(),
                ));
                continue;
            }
            let Some((_, p)) = current.as_mut() else {
                continue;
            };
            let t = line.trim();
            let none = |v: &str| (v != "(none)").then(|| v.to_string());
            if let Some(v) = t.strip_prefix("Installed:") {
                p.installed = none(v.trim());
            } else if let Some(v) = t.strip_prefix("Candidate:") {
                p.candidate = none(v.trim());
            } else if let Some(rest) = line
                .strip_prefix(" *** ")
                .or_else(|| line.strip_prefix("     "))
            {
                // A version line (` *** 1:7.2 500` or `     1:7.2 500`), or one of its sources
                // (`        500 http://...`), which is indented deeper.
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    [v, prio] if !rest.starts_with(' ') && prio.parse::<i32>().is_ok() => {
                        version = Some(v.to_string());
                    }
                    [_prio, origin, ..] if *origin != "/var/lib/dpkg/status" => {
                        if let Some(v) = &version {
                            if !p.from_archives.contains(v) {
                                p.from_archives.push(v.clone());
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        out.extend(current);
        Policy(out)
    }
}

/// `apt-get install` for one group, as an argument vector (after the program name).
pub fn install_args(group: &Group) -> Vec<String> {
    let mut argv: Vec<String> = ["install", "-y", "-q", "--no-install-recommends"]
        .map(String::from)
        .to_vec();
    if group.allow_downgrades {
        argv.push("--allow-downgrades".into());
    }
    argv.extend(group.packages.iter().cloned());
    argv
}

/// One line a user can paste to install the whole plan.
pub fn one_line(plan: &InstallPlan, update_first: bool) -> String {
    let all = Group {
        why: String::new(),
        packages: plan
            .groups
            .iter()
            .flat_map(|g| g.packages.iter().cloned())
            .collect(),
        allow_downgrades: plan.groups.iter().any(|g| g.allow_downgrades),
    };
    let words: Vec<String> = install_args(&all).iter().map(|w| shell_quote(w)).collect();
    let update = if update_first {
        "apt-get update && "
    } else {
        ""
    };
    format!("{update}apt-get {}", words.join(" "))
}

/// Makes sure the host has everything the table knows of (`cargo xtask test`).
pub fn ensure_for_tests() -> Result<()> {
    ensure(&Uses::everything())
}

/// Makes sure the host has what `cargo xtask bench NAME` needs (`needs.bench.NAME`).
pub fn ensure_for_bench(name: &str) -> Result<()> {
    ensure(&Uses {
        benches: [name.to_string()].into(),
        ..Uses::default()
    })
}

/// Makes sure the host has what `uses` needs (its caller says what a selection uses): installs
/// it as root, else fails (exit 2) with the line to run. Costs nothing but a few PATH look-ups
/// when everything is there.
pub fn ensure(uses: &Uses) -> Result<()> {
    let table = PackageTable::builtin();
    let needs = table.needs(uses);
    let present = |t: &str| table.present(t);
    let groups = table.missing(&needs, &present);
    if groups.is_empty() {
        return Ok(());
    }
    let may_install = super::is_root()
        && std::env::var_os("KSTORM_NO_INSTALL").is_none()
        && find_program("apt-get").is_some();
    let (mut plan, mut stale) = plan_with_policy(table, groups.clone())?;
    if stale && may_install {
        Cmd::new("apt-get").args(["update", "-q"]).run()?;
        (plan, stale) = plan_with_policy(table, groups)?;
    }
    print_plan(&plan);
    if !may_install {
        bail!(InfraError::new(
            InfraCause::ToolMissing,
            format!(
                "the host lacks Debian packages the selected cells need; nothing was booted. \
             Install them as root with:\n    {}",
                one_line(&plan, stale)
            )
        ));
    }
    for group in &plan.groups {
        Cmd::new("apt-get")
            .args(install_args(group))
            .env("DEBIAN_FRONTEND", "noninteractive")
            .timeout(Duration::from_secs(30 * 60))
            .run()
            .map_err(|e| {
                InfraError::new(
                    InfraCause::ToolMissing,
                    format!("installing {}: {e:#}", group.why),
                )
            })?;
    }
    let still = table.missing(&needs, &present);
    if !still.is_empty() {
        bail!(InfraError::new(
            InfraCause::ToolMissing,
            format!(
                "still missing after installing (are the packages' folders on PATH?): {}",
                still
                    .iter()
                    .map(|g| g.why.as_str())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        ));
    }
    Ok(())
}

/// The plan with pins from `apt-cache policy`, and whether apt's lists lack a package (stale
/// or never fetched: `apt-get update` first). Without apt (not Debian), the plan as is.
fn plan_with_policy(table: &PackageTable, groups: Vec<Group>) -> Result<(InstallPlan, bool)> {
    if find_program("apt-cache").is_none() {
        return Ok((
            InstallPlan {
                groups,
                notes: Vec::new(),
            },
            false,
        ));
    }
    let query = table.policy_query(&groups);
    let text = Cmd::new("apt-cache").arg("policy").args(&query).read()?;
    let policy = Policy::parse(&text);
    let stale = groups
        .iter()
        .flat_map(|g| &g.packages)
        .any(|p| policy.get(p).is_none_or(|p| p.from_archives.is_empty()));
    if stale {
        return Ok((
            InstallPlan {
                groups,
                notes: Vec::new(),
            },
            true,
        ));
    }
    Ok((table.pin(groups, &policy)?, false))
}

fn print_plan(plan: &InstallPlan) {
    eprintln!("kstorm: Debian packages to install before the first cell:");
    for g in &plan.groups {
        eprintln!("  {}: {}", g.why, g.packages.join(" "));
    }
    for n in &plan.notes {
        eprintln!("  note: {n}");
    }
}

#[cfg(test)]
mod tests;
