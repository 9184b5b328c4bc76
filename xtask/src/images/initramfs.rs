//! The initramfs kstorm boots Linux with: a newc cpio archive holding the static guest payload
//! as `/init`, the cell's plan as `/kstorm/plan.json`, `/dev/console` (the kernel opens it
//! before running `/init`) and empty mount points. Cached by content hash.
//!
//! The tools a cell's cases run (stress-ng and its libraries, only for cells that need them)
//! come as a second, gzip-compressed archive appended to the first: the kernel unpacks each
//! archive of the sequence in turn, and the compressed one keeps the peak memory of unpacking
//! low (the loaded image and the unpacked files are both in RAM until the image is freed).
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

/// An executable a tools archive carries: its path (relative) and bytes.
pub type ExtraFile = (String, Vec<u8>);

/// Writes the archive for `init` (the payload's bytes) and `plan` (JSON), followed by
/// `appended` (a [`tools_archive`], or nothing), under `cache`, named by the hash of all;
/// returns its path. An archive that exists is reused.
pub fn build(cache: &Path, init: &[u8], plan_json: &[u8], appended: &[u8]) -> Result<PathBuf> {
    let hash = host::CacheKey::new()
        .part(init)
        .part(plan_json)
        .part(appended)
        .hex();
    let path = cache
        .join("initramfs")
        .join(format!("{}.cpio", &hash[..32]));
    if path.exists() {
        return Ok(path);
    }
    let mut bytes = archive(init, plan_json)?;
    bytes.extend_from_slice(appended);
    host::write_atomic(&path, &bytes)
        .with_context(|| format!("writing initramfs {}", path.display()))?;
    Ok(path)
}

/// The archive's bytes.
pub fn archive(init: &[u8], plan_json: &[u8]) -> Result<Vec<u8>> {
    let entries = [
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
    write_newc(&entries)
}

/// A gzip-compressed archive of executables, with their folders, to append to [`archive`].
pub fn tools_archive(files: &[ExtraFile]) -> Result<Vec<u8>> {
    // The kernel's unpacker creates no parent folders: each comes first, once.
    let dirs = parent_dirs(files.iter().map(|(name, _)| name.as_str()));
    let mut entries: Vec<Entry> = dirs.iter().map(|d| Entry::Dir(d)).collect();
    entries.extend(files.iter().map(|(name, data)| Entry::File {
        name,
        mode: FILE_EXEC,
        data,
    }));
    let cpio = write_newc(&entries)?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&cpio)?;
    Ok(gz.finish()?)
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
        let bytes = archive(b"\x7fELF-payload", b"{\"cell\":\"c\"}").unwrap();
        let seen = read_back(&bytes);
        assert!(seen.contains(&("dev/console".into(), CHAR_DEV, 5, 0)));
        assert!(seen.contains(&("init".into(), FILE_EXEC, 0, 12)));
        assert!(seen.contains(&("kstorm/plan.json".into(), FILE, 0, 12)));
        assert_eq!(bytes.len() % 4, 0);
    }

    #[test]
    fn tools_come_compressed_after_their_folders() {
        let files = [("usr/bin/tool".to_string(), b"elf".to_vec())];
        let gz = tools_archive(&files).unwrap();
        let mut cpio = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut cpio).unwrap();
        let names: Vec<String> = read_back(&cpio).into_iter().map(|e| e.0).collect();
        assert_eq!(names, ["usr", "usr/bin", "usr/bin/tool"]);
    }

    #[test]
    fn cache_key_is_content() {
        let dir = tempfile::tempdir().unwrap();
        let a = build(dir.path(), b"init", b"plan-a", b"").unwrap();
        let b = build(dir.path(), b"init", b"plan-b", b"").unwrap();
        let a2 = build(dir.path(), b"init", b"plan-a", b"").unwrap();
        assert_ne!(a, b);
        assert_eq!(a, a2);
    }
}

/// Tools a cell carries in its initramfs (bundled by `guest_build::tools`), and their
/// provenance.
#[derive(Debug, Clone, Default)]
pub struct ToolArchive {
    /// A compressed archive to append to the cell's initramfs (empty: none).
    pub archive: Vec<u8>,
    pub provenance: std::collections::BTreeMap<String, String>,
}
