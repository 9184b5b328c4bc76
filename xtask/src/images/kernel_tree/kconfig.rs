//! The configuration of a kernel-tree build: the base (`tinyconfig`, `defconfig` or a file)
//! with the fragments appended, settled by `make olddefconfig`, and the check that every option
//! a fragment asked for survived (Kconfig drops what it cannot satisfy without saying so).

use crate::host::{InfraCause, InfraError};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

/// `CONFIG_X` -> its value (`y`, `m`, a number, a quoted string), `n` for "is not set".
pub type Options = BTreeMap<String, String>;

/// Reads `.config` or fragment text: `CONFIG_X=v` and `# CONFIG_X is not set` lines.
pub fn parse_config(text: &str) -> Options {
    let mut out = Options::new();
    for line in text.lines().map(str::trim) {
        if let Some(name) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
        {
            out.insert(name.to_string(), "n".into());
        } else if let Some((name, value)) = line.split_once('=') {
            if name.starts_with("CONFIG_") && !line.starts_with('#') {
                out.insert(name.to_string(), value.to_string());
            }
        }
    }
    out
}

/// An option a fragment asked for that the final configuration does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    pub name: String,
    pub wanted: String,
    /// `None` when the option is absent altogether (its dependencies are off).
    pub got: Option<String>,
}

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.got {
            Some(got) => write!(f, "{}={} became {got}", self.name, self.wanted),
            None => write!(
                f,
                "{}={} is gone (unmet dependencies)",
                self.name, self.wanted
            ),
        }
    }
}

/// The options of `wanted` that `final_config` does not hold as asked. "Not set" is satisfied
/// by an absent option too.
pub fn dropped_options(wanted: &Options, final_config: &Options) -> Vec<Dropped> {
    wanted
        .iter()
        .filter_map(|(name, want)| {
            let got = final_config.get(name);
            let ok = match got {
                Some(g) => g == want,
                None => want == "n",
            };
            (!ok).then(|| Dropped {
                name: name.clone(),
                wanted: want.clone(),
                got: got.cloned(),
            })
        })
        .collect()
}

/// Writes the configuration of the commit checked out now into the build folder `out`: the
/// base, the fragments appended (later assignments win in Kconfig), `olddefconfig`, and the
/// check that every fragment option survived. It runs for every build, so a commit's
/// configuration never depends on which commit the folder held before; Kconfig's own sync then
/// touches only the options whose value changed, and make rebuilds what depends on them.
pub fn configure(
    make: &dyn Fn(&[&str]) -> Result<()>,
    base: &str,
    out: &Path,
    fragments: &str,
) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let config = out.join(".config");
    match base {
        "tinyconfig" | "defconfig" => make(&[base])?,
        file => {
            std::fs::copy(file, &config).with_context(|| format!("copying {file}"))?;
        }
    }
    let mut text = std::fs::read_to_string(&config)?;
    text.push_str(fragments);
    std::fs::write(&config, text)?;
    make(&["olddefconfig"])?;
    let dropped = dropped_options(
        &parse_config(fragments),
        &parse_config(&std::fs::read_to_string(&config)?),
    );
    if dropped.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = dropped.iter().map(ToString::to_string).collect();
    Err(InfraError::new(
        InfraCause::ImageBuild,
        format!(
            "olddefconfig dropped fragment options: {}",
            names.join("; ")
        ),
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_option_olddefconfig_dropped_is_named() {
        let fragment = "CONFIG_PVH=y\nCONFIG_MEMCG=y\n# CONFIG_SWAP is not set\nCONFIG_NR_CPUS=4\n";
        // What olddefconfig wrote: PVH lost its dependency, MEMCG kept, NR_CPUS changed.
        let generated = "#\n# Automatically generated file; DO NOT EDIT.\n#\nCONFIG_64BIT=y\n\
                         # CONFIG_PVH is not set\nCONFIG_MEMCG=y\nCONFIG_NR_CPUS=8\n";
        let dropped = dropped_options(&parse_config(fragment), &parse_config(generated));
        let text: Vec<String> = dropped.iter().map(ToString::to_string).collect();
        assert_eq!(text, ["CONFIG_NR_CPUS=4 became 8", "CONFIG_PVH=y became n"]);
        let gone = dropped_options(
            &parse_config("CONFIG_PSI=y\n"),
            &parse_config("CONFIG_64BIT=y\n"),
        );
        assert_eq!(
            gone[0].to_string(),
            "CONFIG_PSI=y is gone (unmet dependencies)"
        );
        assert!(dropped_options(&parse_config(fragment), &parse_config(fragment)).is_empty());
    }

    #[test]
    fn the_shipped_fragment_parses() {
        let path = crate::host::workspace_root().join("images/kconfig/kstorm.config");
        let opts = parse_config(&std::fs::read_to_string(path).unwrap());
        for name in [
            "CONFIG_PVH",
            "CONFIG_SERIAL_8250_CONSOLE",
            "CONFIG_MEMCG",
            "CONFIG_TMPFS",
        ] {
            assert_eq!(opts.get(name).map(String::as_str), Some("y"), "{name}");
        }
    }
}
