//! The initramfs kstorm boots Linux with: a newc cpio archive holding the static guest payload
//! as `/init`, the cell's plan as `/kstorm/plan.json`, `/dev/console` (the kernel opens it
//! before running `/init`), empty mount points, and the tools the cell's cases run (stress-ng
//! and its libraries, only for cells that need them). Cached by content hash.
//!
//! [`write_newc`] is kstorm's one cpio writer (disk images' boot initramfs uses it too).

use crate::host;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DIR: u32 = 0o040755;
pub const FILE_EXEC: u32 = 0o100755;
pub const FILE: u32 = 0o100644;
const CHAR_DEV: u32 = 0o020600;

/// One entry of an archive.
pub enum Entry<'a> {
    Dir(&'a str),
    File {
        name: &'a str,
        mode: u32,
        data: &'a [u8],
    },
    CharDev {
        name: &'a str,
        major: u32,
        minor: u32,
    },
}

/// An executable the archive carries besides the payload: its path (relative) and bytes.
pub type ExtraFile = (String, Vec<u8>);

/// Writes the archive for `init` (the payload's bytes), `plan` (JSON) and `extra` files under
/// `cache`, named by the hash of all; returns its path. An archive that exists is reused.
pub fn build(cache: &Path, init: &[u8], plan_json: &[u8], extra: &[ExtraFile]) -> Result<PathBuf> {
    let hash = extra
        .iter()
        .fold(host::CacheKey::new().part(init).part(plan_json), |k, (name, data)| {
            k.part(name).part(data)
        })
        .hex();
    let path = cache
        .join("initramfs")
        .join(format!("{}.cpio", &hash[..32]));
    if path.exists() {
        return Ok(path);
    }
    let bytes = archive(init, plan_json, extra)?;
    host::write_atomic(&path, &bytes)
        .with_context(|| format!("writing initramfs {}", path.display()))?;
    Ok(path)
}

/// The archive's bytes.
pub fn archive(init: &[u8], plan_json: &[u8], extra: &[ExtraFile]) -> Result<Vec<u8>> {
    let mut entries = vec![
        Entry::Dir("dev"),
        CONSOLE,
        Entry::Dir("proc"),
        Entry::Dir("sys"),
        Entry::Dir("tmp"),
        Entry::Dir("kstorm"),
        Entry::File {
            name: "kstorm/plan.json",
            mode: FILE,
            data: plan_json,
        },
        Entry::File {
            name: "init",
            mode: FILE_EXEC,
            data: init,
        },
    ];
    // The kernel's unpacker creates no parent folders: each comes first, once.
    let dirs = parent_dirs(extra.iter().map(|(name, _)| name.as_str()));
    entries.extend(dirs.iter().map(|d| Entry::Dir(d)));
    entries.extend(extra.iter().map(|(name, data)| Entry::File {
        name,
        mode: FILE_EXEC,
        data,
    }));
    write_newc(&entries)
}

/// Every folder above `names` (`a`, `a/b` for `a/b/c`), parents first, without repeats.
fn parent_dirs<'a>(names: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for name in names {
        let mut at = 0;
        while let Some(i) = name[at..].find('/') {
            dirs.insert(name[..at + i].to_string());
            at += i + 1;
        }
    }
    // Sorted order puts every folder after its parent.
    dirs.into_iter().collect()
}

/// The `/dev/console` entry every initramfs needs: the kernel opens it before running `/init`.
pub const CONSOLE: Entry<'static> = Entry::CharDev {
    name: "dev/console",
    major: 5,
    minor: 1,
};

/// A newc cpio archive of `entries`, in order, numbered from inode 1.
pub fn write_newc(entries: &[Entry]) -> Result<Vec<u8>> {
    let size: usize = entries
        .iter()
        .map(|e| match e {
            Entry::File { data, .. } => data.len() + 512,
            _ => 512,
        })
        .sum();
    let mut out = Vec::with_capacity(size);
    for (ino, entry) in entries.iter().enumerate() {
        let ino = ino as u32 + 1;
        match entry {
            Entry::Dir(name) => {
                let w = cpio::newc::Builder::new(name)
                    .ino(ino)
                    .mode(DIR)
                    .nlink(2)
                    .write(&mut out, 0);
                w.finish()?;
            }
            Entry::CharDev { name, major, minor } => {
                let w = cpio::newc::Builder::new(name)
                    .ino(ino)
                    .mode(CHAR_DEV)
                    .nlink(1)
                    .rdev_major(*major)
                    .rdev_minor(*minor)
                    .write(&mut out, 0);
                w.finish()?;
            }
            Entry::File { name, mode, data } => {
                let size = u32::try_from(data.len())
                    .with_context(|| format!("cpio entry {name} larger than 4 GiB"))?;
                let mut w = cpio::newc::Builder::new(name)
                    .ino(ino)
                    .mode(*mode)
                    .nlink(1)
                    .write(&mut out, size);
                w.write_all(data)?;
                w.finish()?;
            }
        }
    }
    cpio::newc::trailer(&mut out)?;
    Ok(out)
}

/// Every entry of an archive as (name, mode, rdev major, size), in order, for tests.
#[cfg(test)]
pub(crate) fn read_back(bytes: &[u8]) -> Vec<(String, u32, u32, u32)> {
    let mut rest: &[u8] = bytes;
    let mut seen = Vec::new();
    for _ in 0..10_000 {
        let reader = cpio::newc::Reader::new(rest).unwrap();
        let e = reader.entry();
        if e.is_trailer() {
            return seen;
        }
        seen.push((
            e.name().to_string(),
            e.mode(),
            e.rdev_major(),
            e.file_size(),
        ));
        rest = reader.finish().unwrap();
    }
    panic!("no trailer in 10000 entries");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_reads_back_with_its_entries() {
        let extra = [("usr/bin/tool".to_string(), b"elf".to_vec())];
        let bytes = archive(b"\x7fELF-payload", b"{\"cell\":\"c\"}", &extra).unwrap();
        let seen = read_back(&bytes);
        assert!(seen.contains(&("dev/console".into(), CHAR_DEV, 5, 0)));
        assert!(seen.contains(&("init".into(), FILE_EXEC, 0, 12)));
        assert!(seen.contains(&("kstorm/plan.json".into(), FILE, 0, 12)));
        let names: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
        let (usr, bin, tool) = ["usr", "usr/bin", "usr/bin/tool"]
            .map(|n| names.iter().position(|&m| m == n).unwrap())
            .into();
        assert!(usr < bin && bin < tool, "{names:?}");
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn cache_key_is_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = build(dir.path(), b"init", b"plan-a", &[]).unwrap();
        let b = build(dir.path(), b"init", b"plan-b", &[]).unwrap();
        let a2 = build(dir.path(), b"init", b"plan-a", &[]).unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a2);
    }
}
