//! Expands a suite into cells: case x image x RAM size x variant x repeat.
//!
//! A cell id reads `case@image-RAM-variant` (plus `.rN` for repeats), e.g.
//! `fork-hold@linux-128M-base.r2`; it names the cell's results folder and travels in every frame.

use crate::config::{
    Case, Catalog, Deadlines, Image, RamSize, Suite, TransportKind, TransportSpec, Variant,
};
use anyhow::{bail, Result};

/// Parameter profile: `quick` (the defaults, seconds under TCG) or `deep` (nightly counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
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
    pub profile: Profile,
    /// Use this transport instead of each image's default (`run --transport`).
    pub transport: Option<TransportKind>,
}

impl Default for Selection {
    fn default() -> Self {
        Selection {
            images: None,
            ram: None,
            filters: Vec::new(),
            repeat: 1,
            profile: Profile::Quick,
            transport: None,
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
}

pub fn expand(suite: &Suite, catalog: &Catalog, sel: &Selection) -> Result<Vec<Cell>> {
    if let Some(wanted) = &sel.images {
        for w in wanted {
            if !catalog.images.contains_key(w) {
                bail!(
                    "--image {w}: no such image in images/ (have: {})",
                    catalog
                        .images
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }
    let mut cells = Vec::new();
    for case in &suite.cases {
        // --image narrows to the images a case runs on; an image the suite does not name at all
        // takes the place of the suite's images (e.g. the Linux cases on `linux-disk`), while
        // cases pinned to their own images stay pinned.
        let chosen: Option<Vec<crate::config::Name>> = sel.images.as_ref().map(|w| {
            let named = w.iter().any(|x| suite_names_image(suite, x));
            let base = case.images.as_ref().unwrap_or(&suite.images);
            w.iter()
                .filter(|x| {
                    base.iter().any(|b| b.as_str() == x.as_str())
                        || (!named && case.images.is_none())
                })
                .map(|n| crate::config::Name(n.clone()))
                .collect()
        });
        let images = chosen
            .as_ref()
            .or(case.images.as_ref())
            .unwrap_or(&suite.images);
        // --ram replaces the suite's sizes; a case that pins its own keeps only those asked for.
        let rams: Vec<RamSize> = match (&case.ram, &sel.ram) {
            (Some(own), Some(asked)) => own.iter().filter(|r| asked.contains(r)).copied().collect(),
            (Some(own), None) => own.clone(),
            (None, Some(asked)) => asked.clone(),
            (None, None) => suite.ram.clone(),
        };
        let mut params = case.params.clone();
        if sel.profile == Profile::Deep {
            params.extend(case.deep.clone());
        }
        for image_name in images {
            let image = &catalog.images[image_name.as_str()];
            let transport = image.transport(sel.transport)?;
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
                        cells.push(Cell {
                            id,
                            suite: suite.name.0.clone(),
                            case: case.clone(),
                            image: image.clone(),
                            ram,
                            variant: variant.clone(),
                            repeat,
                            params: params.clone(),
                            deadlines: case.deadlines.or(suite.deadlines).or(image.deadlines),
                            transport: transport.clone(),
                        });
                    }
                }
            }
        }
    }
    if cells.is_empty() {
        bail!(
            "suite {} selects no cells with these options (check --image, --ram, --filter)",
            suite.name
        );
    }
    Ok(cells)
}

/// True when any case of the suite runs on `image` by default.
fn suite_names_image(suite: &Suite, image: &str) -> bool {
    suite
        .images
        .iter()
        .chain(suite.cases.iter().flat_map(|c| c.images.iter().flatten()))
        .any(|i| i.as_str() == image)
}
