//! Expands a suite into cells: case x image x RAM size x variant x repeat.
//!
//! A cell id reads `case@image-RAM-variant` (plus `.rN` for repeats), e.g.
//! `fork-hold@linux-128M-base.r2`; it names the cell's results folder and travels in every frame.
//!
//! Expansion is where a suite meets the images a run chose, so it is where each case's
//! parameters (and its `deep:` overrides) are parsed by the types the guest will use: a bad one
//! is a [`UsageError`] before anything is built or booted.

pub mod axis;

use crate::config::{
    Case, Catalog, Deadlines, Image, Name, RamSize, Suite, TransportKind, TransportSpec, Variant,
};
use crate::error::UsageError;
use kstorm_payload::params::{ParamError, RawParams};
use kstorm_payload::registry;
use sha2::{Digest, Sha256};

/// Parameter profile: `quick` (the defaults, seconds under TCG) or `deep` (nightly counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamProfile {
    Quick,
    Deep,
}

/// What the user narrowed the matrix to on the command line.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Run every case on these images instead of the suite's (or the case's) own.
    pub images: Option<Vec<String>>,
    pub ram: Option<Vec<RamSize>>,
    /// Keep cells whose id contains any of these substrings (all when empty).
    pub filters: Vec<String>,
    pub repeat: u32,
    pub profile: ParamProfile,
    /// Use this transport instead of each image's default (`run --transport`).
    pub transport: Option<TransportKind>,
    /// Record every cell with QEMU's record/replay (`run --record`).
    pub record: bool,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            images: None,
            ram: None,
            filters: Vec::new(),
            repeat: 1,
            profile: ParamProfile::Quick,
            transport: None,
            record: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Cell {
    pub id: String,
    pub suite: String,
    pub case: Case,
    pub image: Image,
    pub ram: RamSize,
    pub variant: Variant,
    /// 1-based repeat number.
    pub repeat: u32,
    /// The case's parameters, with the profile's overrides applied.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Case, then suite, then image, then built-in defaults.
    pub deadlines: Deadlines,
    /// How the harness reaches the payload in this cell.
    pub transport: TransportSpec,
    /// QEMU records the cell's execution (`replay.bin` in its folder) to replay it later.
    pub record: bool,
}

/// How much longer a recorded cell's deadlines are: icount runs it about twice as slowly.
pub const RECORD_SLOWDOWN: u32 = 2;

pub fn expand(suite: &Suite, catalog: &Catalog, sel: &Selection) -> Result<Vec<Cell>, UsageError> {
    check_image_option(catalog, sel)?;
    let mut cells = Vec::new();
    for (index, case) in suite.cases.iter().enumerate() {
        let rams = rams_for(suite, case, sel);
        let mut params = case.params.clone();
        if sel.profile == ParamProfile::Deep {
            params.extend(case.deep.clone());
        }
        for image_name in images_for(suite, case, sel) {
            let image = &catalog.images[image_name.as_str()];
            check_params(suite, index, image)?;
            let transport = image
                .transport(sel.transport)
                .map_err(|e| UsageError::option("--transport", format!("{e:#}")))?;
            for &ram in &rams {
                let variants = suite.variants.iter().filter(|v| {
                    case.variants
                        .as_ref()
                        .is_none_or(|only| only.contains(&v.name))
                });
                for variant in variants {
                    for repeat in 1..=sel.repeat.max(1) {
                        let mut id =
                            format!("{}@{}-{}-{}", case.name, image.name, ram, variant.name);
                        if sel.repeat > 1 {
                            id.push_str(&format!(".r{repeat}"));
                        }
                        if !sel.filters.is_empty()
                            && !sel.filters.iter().any(|f| id.contains(f.as_str()))
                        {
                            continue;
                        }
                        let record = sel.record || suite.record || case.record;
                        if record {
                            check_record(suite, index, sel, &id, image, transport)?;
                        }
                        let mut deadlines = case.deadlines.or(suite.deadlines).or(image.deadlines);
                        if record {
                            deadlines = deadlines.scaled(RECORD_SLOWDOWN);
                        }
                        cells.push(Cell {
                            id,
                            suite: suite.name.0.clone(),
                            case: case.clone(),
                            image: image.clone(),
                            ram,
                            variant: variant.clone(),
                            repeat,
                            params: params.clone(),
                            deadlines,
                            transport: transport.clone(),
                            record,
                        });
                    }
                }
            }
        }
    }
    if cells.is_empty() {
        return Err(UsageError::option(
            "--image/--ram/--filter",
            format!("suite {} selects no cells with these options", suite.name),
        ));
    }
    Ok(cells)
}

/// Why a cell on `image`, reached by `transport`, cannot be recorded; `None` when it can.
/// QEMU replays character devices and clocks; a block device only through `blkreplay` and a
/// network only through `filter-replay`, which kstorm does not set up.
pub fn record_unsupported(image: &Image, transport: &TransportSpec) -> Option<String> {
    const SUPPORTED: &str = "--record supports PID-1 Linux cells (a kernel and an initramfs, \
                             on microvm or pc, no disk, no network)";
    let why = if image.os == crate::detect::Os::Mach {
        "GNU Mach boots from a GRUB ISO (a block device, which QEMU replays only through \
         blkreplay)"
    } else if image.disk.is_some()
        || matches!(image.source, crate::config::Source::PublishedDisk(_))
    {
        "the image boots its own disk (replayed only through blkreplay; ssh also needs the \
         network's filter-replay)"
    } else if image.route() != registry::Route::LinuxPayload || *transport != TransportSpec::Pid1 {
        "the payload is not PID 1 of a Linux initramfs"
    } else {
        return None;
    };
    Some(format!("{why}; {SUPPORTED}"))
}

/// Turns an expanded cell into a recorded one (`--record` on a cell already chosen, as
/// `bisect-run` does after its filter): a usage error when QEMU cannot replay it.
pub fn record_cell(cell: &mut Cell) -> Result<(), UsageError> {
    if let Some(why) = record_unsupported(&cell.image, &cell.transport) {
        let message = format!("cell {} cannot be recorded: {why}", cell.id);
        return Err(UsageError::option("--record", message));
    }
    if !cell.record {
        cell.record = true;
        cell.deadlines = cell.deadlines.scaled(RECORD_SLOWDOWN);
    }
    Ok(())
}

/// A recorded cell must be one QEMU can replay: else a usage error naming the cell, at the
/// `record:` that asked for it (the case's, the suite's, or `--record`).
fn check_record(
    suite: &Suite,
    index: usize,
    sel: &Selection,
    id: &str,
    image: &Image,
    transport: &TransportSpec,
) -> Result<(), UsageError> {
    let Some(why) = record_unsupported(image, transport) else {
        return Ok(());
    };
    let message = format!("cell {id} cannot be recorded: {why}");
    Err(if sel.record {
        UsageError::option("--record", message)
    } else if suite.cases[index].record {
        suite
            .origin
            .error(format!("cases[{index}].record"), message)
    } else {
        suite.origin.error("record", message)
    })
}

/// Every `--image` names an image of `images/`.
fn check_image_option(catalog: &Catalog, sel: &Selection) -> Result<(), UsageError> {
    let Some(unknown) = sel
        .images
        .iter()
        .flatten()
        .find(|w| !catalog.images.contains_key(*w))
    else {
        return Ok(());
    };
    let have: Vec<&str> = catalog.images.keys().map(String::as_str).collect();
    Err(UsageError::option(
        "--image",
        format!(
            "no image {unknown:?} in images/ (have: {})",
            have.join(", ")
        ),
    ))
}

/// The images `case` runs on. --image narrows to the images a case runs on; an image the suite
/// does not name at all takes the place of the suite's images (e.g. the Linux cases on
/// `linux-disk`), while cases pinned to their own images stay pinned.
fn images_for(suite: &Suite, case: &Case, sel: &Selection) -> Vec<Name> {
    let own = case.images.as_ref().unwrap_or(&suite.images);
    let Some(wanted) = &sel.images else {
        return own.clone();
    };
    let named = wanted.iter().any(|x| suite_names_image(suite, x));
    wanted
        .iter()
        .filter(|x| {
            own.iter().any(|b| b.as_str() == x.as_str()) || (!named && case.images.is_none())
        })
        .map(|n| Name(n.clone()))
        .collect()
}

/// The RAM sizes `case` runs with. --ram replaces the suite's sizes; a case that pins its own
/// keeps only those asked for.
fn rams_for(suite: &Suite, case: &Case, sel: &Selection) -> Vec<RamSize> {
    match (&case.ram, &sel.ram) {
        (Some(own), Some(asked)) => own.iter().filter(|r| asked.contains(r)).copied().collect(),
        (Some(own), None) => own.clone(),
        (None, Some(asked)) => asked.clone(),
        (None, None) => suite.ram.clone(),
    }
}

/// The parameters of `scenario` as the guest on `image` will read them, defaults filled in,
/// by the scenario registry's entry for the image's route (a scenario the route does not run
/// is an error on `scenario`).
pub fn resolve_params(
    image: &Image,
    scenario: &str,
    params: &RawParams,
) -> Result<serde_json::Value, ParamError> {
    registry::resolve(image.route(), scenario, params)
}

/// Case `index` of `suite` on `image`: its parameters, and its parameters with the `deep:`
/// overrides, parse. The error names the file, the line and field of the bad key, and the case.
pub fn check_params(suite: &Suite, index: usize, image: &Image) -> Result<(), UsageError> {
    let case = &suite.cases[index];
    let mut deep = case.params.clone();
    deep.extend(case.deep.clone());
    for (given, with) in [(&case.params, "params"), (&deep, "deep")] {
        let Err(e) = resolve_params(image, case.scenario.as_str(), given) else {
            continue;
        };
        let field = match &e.field {
            Some(f) if f == "scenario" => "scenario".to_string(),
            Some(f) => {
                // The key the error is about sits in `deep:` or else in `params:`.
                let key = f.split(['.', '[']).next().unwrap_or(f);
                let map = if with == "deep" && case.deep.contains_key(key) {
                    "deep"
                } else {
                    "params"
                };
                format!("{map}.{f}")
            }
            None => with.to_string(),
        };
        return Err(suite.origin.error(
            format!("cases[{index}].{field}"),
            format!(
                "case {}, scenario {} on image {}: {}",
                case.name, case.scenario, image.name, e.message
            ),
        ));
    }
    Ok(())
}

/// True when any case of the suite runs on `image` by default.
fn suite_names_image(suite: &Suite, image: &str) -> bool {
    suite
        .images
        .iter()
        .chain(suite.cases.iter().flat_map(|c| c.images.iter().flatten()))
        .any(|i| i.as_str() == image)
}

/// What `cells` use on the host, in the terms of the package table (`xtask/host-packages.yaml`).
pub fn host_uses(cells: &[Cell]) -> crate::host::packages::Uses {
    let mut uses = crate::host::packages::Uses::default();
    for cell in cells {
        uses.sources.insert(cell.image.source.kind().into());
        uses.disk |= cell.image.disk.is_some();
        uses.transports.insert(cell.transport.kind().to_string());
        uses.scenarios
            .insert(cell.case.scenario.as_str().to_string());
    }
    uses
}

/// `--shard I/N`: one part of a matrix spread over the runners of a CI engine.
///
/// A shard is chosen from the cell ids alone (ordered by a hash of the id, then dealt out in
/// turn), so every machine given the same suite and options picks the same cells, the shards
/// are disjoint, together they are the whole matrix, and their sizes differ by at most one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 1-based.
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {s}: expected I/N with 1 <= I <= N, e.g. 2/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's cells, in their original order.
    pub fn select(&self, cells: Vec<Cell>) -> Vec<Cell> {
        let ids: Vec<&str> = cells.iter().map(|c| c.id.as_str()).collect();
        let mine = self.ids(&ids);
        cells.into_iter().filter(|c| mine.contains(&c.id)).collect()
    }

    /// The ids among `ids` that fall to this shard.
    pub fn ids(&self, ids: &[&str]) -> Vec<String> {
        let mut keyed: Vec<([u8; 32], &str)> = ids
            .iter()
            .map(|id| (Sha256::digest(id.as_bytes()).into(), *id))
            .collect();
        keyed.sort();
        keyed
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index - 1)
            .map(|(_, (_, id))| id.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_and_balance() {
        let ids: Vec<String> = (0..37)
            .map(|i| format!("case{i}@linux-128M-base"))
            .collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut all: Vec<String> = Vec::new();
        for index in 1..=4 {
            let part = Shard { index, count: 4 }.ids(&refs);
            assert!((9..=10).contains(&part.len()), "{}", part.len());
            all.extend(part);
        }
        all.sort();
        let mut expected = ids.clone();
        expected.sort();
        assert_eq!(all, expected);
    }

    #[test]
    fn parses_and_rejects() {
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        for bad in ["0/4", "5/4", "x/2", "3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
