//! The `build` verb: the payload and the images of a suite, ready in the cache; nothing booted
//! (so no accelerator probe either).

use crate::config::Catalog;
use crate::host;
use crate::images;
use crate::matrix::{self, Selection};
use anyhow::Result;

/// Builds the payload and prepares every image `suite_name` names.
pub fn build(suite_name: &str) -> Result<()> {
    let catalog = Catalog::load(&host::workspace_root())?;
    let suite = catalog.suite(suite_name)?;
    host::packages::ensure(&matrix::host_uses(&matrix::expand(
        suite,
        &catalog,
        &Selection::default(),
    )?))?;
    let bin = crate::guest_build::payload::build()?;
    eprintln!("payload: {}", bin.display());
    let cache = host::cache_dir();
    let mut names: Vec<&str> = suite.images.iter().map(|n| n.as_str()).collect();
    for case in &suite.cases {
        names.extend(case.images.iter().flatten().map(|n| n.as_str()));
    }
    names.sort();
    names.dedup();
    for name in names {
        let prepared = images::prepare(&catalog.images[name], &cache)?;
        eprintln!("image {name}: {:?}", prepared.provenance());
    }
    Ok(())
}
