//! The `clean` verb: deletes the cache (downloads, built images, the payload) and, when asked,
//! every result.

use crate::host;
use anyhow::Result;

pub fn clean(results: bool) -> Result<()> {
    let mut dirs = vec![host::cache_dir(), crate::guest_build::payload::target_dir()];
    if results {
        dirs.push(host::workspace_root().join("results"));
    }
    for d in dirs {
        if d.exists() {
            eprintln!("removing {}", d.display());
            std::fs::remove_dir_all(&d)?;
        }
    }
    Ok(())
}
