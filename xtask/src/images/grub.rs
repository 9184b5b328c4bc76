//! GRUB rescue ISOs that boot a multiboot kernel with one module (GNU Mach and its bootstrap
//! task), console on the first serial port.
//!
//! QEMU's own multiboot loader refuses 64-bit ELF kernels, so Mach boots through GRUB:
//! `grub-mkrescue` (packages `grub-pc-bin`, `xorriso`, `mtools`) builds the ISO. ISOs are cached
//! under `<cache>/gnumach/iso/` by the hash of what goes into them.

use crate::host::{CacheKey, Cmd};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// What the menu entry boots. Arguments are plain words; the writer quotes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MultibootEntry {
    /// Kernel command line words (`console=com0`).
    pub kernel_args: Vec<String>,
    /// The module's command line, its name first; `None`: no module. GNU Mach substitutes
    /// `${host-port}`, `${device-port}` and reads `$(task-create)` / `$(task-resume)` itself,
    /// so GRUB must pass them through verbatim.
    pub module_args: Option<Vec<String>>,
}

/// Single-quotes one word for GRUB's script language, where `$` would otherwise expand. The
/// word cannot hold a quote, blank or control character: GRUB cannot escape a quote inside
/// single quotes, and the kernel splits the module line at blanks.
pub fn quote_word(word: &str) -> Result<String> {
    if word.is_empty() {
        bail!("empty word on a GRUB command line");
    }
    if let Some(c) = word
        .chars()
        .find(|c| *c == '\'' || c.is_whitespace() || c.is_control())
    {
        bail!("GRUB command-line word {word:?} contains {c:?}, which cannot be passed through");
    }
    Ok(format!("'{word}'"))
}

/// The whole `grub.cfg`: serial console, no menu delay, one entry.
pub fn grub_cfg(entry: &MultibootEntry) -> Result<String> {
    let quote_all = |words: &[String]| -> Result<String> {
        Ok(words
            .iter()
            .map(|w| quote_word(w))
            .collect::<Result<Vec<_>>>()?
            .join(" "))
    };
    let kernel = quote_all(&entry.kernel_args)?;
    let module = match &entry.module_args {
        Some(args) => format!("  module /boot/module {}\n", quote_all(args)?),
        None => String::new(),
    };
    Ok(format!(
        "serial --unit=0 --speed=115200\n\
         terminal_input serial; terminal_output serial\n\
         set timeout=0\n\
         menuentry kstorm {{\n\
         \x20 multiboot /boot/kernel {kernel}\n\
         {module}\
         }}\n"
    ))
}

/// Builds (or finds in the cache) the ISO holding `kernel`, `module` (if any) and `cfg`.
pub fn build_iso(
    kernel: &Path,
    module: Option<&Path>,
    cfg: &str,
    cache_dir: &Path,
) -> Result<PathBuf> {
    let kernel_bytes =
        std::fs::read(kernel).with_context(|| format!("reading {}", kernel.display()))?;
    let mut files = vec![("kernel", kernel_bytes)];
    if let Some(m) = module {
        let bytes = std::fs::read(m).with_context(|| format!("reading {}", m.display()))?;
        files.push(("module", bytes));
    }
    iso_of(&files, cfg, cache_dir)
}

/// An ISO holding only `cfg`: a menu that boots files from the guest's own disk.
pub fn build_cfg_iso(cfg: &str, cache_dir: &Path) -> Result<PathBuf> {
    iso_of(&[], cfg, cache_dir)
}

/// The ISO with `files` under `/boot/` and `cfg` as its `grub.cfg`, cached by their hash.
fn iso_of(files: &[(&str, Vec<u8>)], cfg: &str, cache_dir: &Path) -> Result<PathBuf> {
    let mut key = CacheKey::new();
    for (name, bytes) in files {
        key = key.part(name.as_bytes()).part(bytes);
    }
    let key = key.part(cfg).hex();
    let dir = cache_dir.join("gnumach").join("iso");
    let iso = dir.join(format!("{key}.iso"));
    if iso.exists() {
        return Ok(iso);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tree = tempfile::tempdir_in(&dir)?;
    let boot = tree.path().join("boot");
    std::fs::create_dir_all(boot.join("grub"))?;
    for (name, bytes) in files {
        std::fs::write(boot.join(name), bytes)?;
    }
    std::fs::write(boot.join("grub").join("grub.cfg"), cfg)?;
    let tmp_iso = tree.path().join("out.iso");
    Cmd::new("grub-mkrescue")
        .arg("-o")
        .arg(&tmp_iso)
        .arg(tree.path())
        .read()
        .context("building the GRUB rescue ISO (needs the packages grub-pc-bin and xorriso)")?;
    std::fs::rename(&tmp_iso, &iso).with_context(|| format!("writing {}", iso.display()))?;
    Ok(iso)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(module: &[&str]) -> MultibootEntry {
        MultibootEntry {
            kernel_args: vec!["console=com0".into()],
            module_args: Some(module.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn mach_substitutions_are_single_quoted() {
        let cfg = grub_cfg(&entry(&[
            "payload",
            "${host-port}",
            "${device-port}",
            "cell=c1",
            "$(task-create)",
            "$(task-resume)",
        ]))
        .unwrap();
        assert!(cfg.contains(
            "  module /boot/module 'payload' '${host-port}' '${device-port}' 'cell=c1' \
             '$(task-create)' '$(task-resume)'\n"
        ));
        assert!(cfg.contains("  multiboot /boot/kernel 'console=com0'\n"));
        // No `$` outside single quotes anywhere in the file.
        for line in cfg.lines() {
            let outside: String = line.split('\'').step_by(2).collect();
            assert!(!outside.contains('$'), "unquoted $ in {line:?}");
        }
        assert!(cfg.starts_with("serial --unit=0 --speed=115200\n"));
        assert!(cfg.contains("set timeout=0\n"));
    }

    #[test]
    fn words_that_cannot_be_passed_are_refused() {
        for bad in ["it's", "two words", "tab\tword", "new\nline", ""] {
            let err = grub_cfg(&entry(&["payload", bad])).unwrap_err().to_string();
            assert!(
                err.contains("GRUB") || err.contains("empty"),
                "{bad:?}: {err}"
            );
        }
        assert_eq!(quote_word("limit=1000").unwrap(), "'limit=1000'");
    }

    #[test]
    fn entry_without_module() {
        let cfg = grub_cfg(&MultibootEntry {
            kernel_args: vec!["console=com0".into()],
            module_args: None,
        })
        .unwrap();
        assert!(!cfg.contains("module"));
        assert!(
            cfg.ends_with("  multiboot /boot/kernel 'console=com0'\n}\n"),
            "{cfg}"
        );
    }
}
