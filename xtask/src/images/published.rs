//! Disk images published on the web (FreeBSD's BASIC-CI images, Debian GNU/Hurd's images):
//! fetched resumably into the cache, verified, and unpacked once into a read-only raw base that
//! every cell boots a qcow2 overlay of.
//!
//! A recipe pins its image by SHA-256, or (Debian's `latest/` folder is rebuilt in place) by
//! the SHA-512 found in the published `SHA512SUMS` at the first download, which is written to a
//! lock file the user commits. From then on the lock decides: a download that does not match
//! it is an `Infra` failure, never silently re-pinned.

use super::download::{self, Digest};
use crate::config::{ArchiveFormat, Image, PublishedBoot, PublishedDisk, Source};
use crate::error::UsageError;
use crate::error::{InfraCause, InfraError};
use crate::host::{self};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A published image ready to boot.
#[derive(Debug, Clone)]
pub struct PreparedDisk {
    /// The unpacked raw image, read-only.
    pub base: PathBuf,
    /// `sha256:<hex>` or `sha512:<hex>` of the downloaded file.
    pub pin: String,
    pub url: String,
}

/// One image's entry in a lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockEntry {
    pub url: String,
    pub sha512: String,
}

/// A lock file: image name to its pinned download. JSON, so it round-trips exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockFile {
    pub images: BTreeMap<String, LockEntry>,
}

impl LockFile {
    /// Reads `path`; a missing file is an empty lock.
    pub fn read(path: &Path) -> Result<LockFile> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a kstorm lock file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(LockFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        host::write_atomic(path, text.as_bytes())
    }
}

/// The file name a URL ends in.
fn file_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// Where an image's download and base live in the cache.
fn image_dir(cache: &Path, name: &str) -> PathBuf {
    cache.join("published").join(name)
}

fn base_path(cache: &Path, name: &str, pin: &str) -> PathBuf {
    let short = pin.split(':').nth(1).unwrap_or(pin);
    image_dir(cache, name)
        .join(&short[..short.len().min(16)])
        .join("base.raw")
}

/// The hash the download must have, if it is known without the network: the recipe's
/// SHA-256, or the lock file's SHA-512.
fn known_pin(name: &str, p: &PublishedDisk, images_dir: &Path) -> Result<Option<String>> {
    if let Some(h) = &p.sha256 {
        return Ok(Some(format!("sha256:{}", h.to_ascii_lowercase())));
    }
    let lock_path = images_dir.join(p.lock.as_ref().context("no lock file named")?);
    let lock = LockFile::read(&lock_path)?;
    Ok(match lock.images.get(name) {
        Some(e) if e.url != p.url => bail!(
            "{}: {name} is pinned for {} but the recipe now says {}; remove the entry to pin the new URL",
            lock_path.display(),
            e.url,
            p.url
        ),
        Some(e) => Some(format!("sha512:{}", e.sha512.to_ascii_lowercase())),
        None => None,
    })
}

fn digest(pin: &str) -> Digest<'_> {
    match pin.split_once(':') {
        Some(("sha512", h)) => Digest::Sha512(h),
        Some((_, h)) => Digest::Sha256(h),
        None => Digest::Sha256(pin),
    }
}

/// The image's base when it is already in the cache; never touches the network.
pub fn cached(
    name: &str,
    p: &PublishedDisk,
    images_dir: &Path,
    cache: &Path,
) -> Option<PreparedDisk> {
    let pin = known_pin(name, p, images_dir).ok()??;
    let base = base_path(cache, name, &pin);
    base.exists().then(|| PreparedDisk {
        base,
        pin,
        url: p.url.clone(),
    })
}

/// The base of image `name`: from the cache, else fetched. When it cannot be had, the error is
/// one line that says how to get it.
pub fn prepare(
    name: &str,
    p: &PublishedDisk,
    images_dir: &Path,
    cache: &Path,
) -> Result<PreparedDisk> {
    if let Some(done) = cached(name, p, images_dir, cache) {
        return Ok(done);
    }
    fetch(name, p, images_dir, cache, None).map_err(|e| {
        InfraError::new(
            InfraCause::Download,
            format!(
                "image {name} is not available ({}): fetch it ahead of time with `cargo xtask fetch --image {name}`, or bring the file in with `cargo xtask fetch --image {name} --from FILE`",
                one_line(&e)
            ),
        )
        .into()
    })
}

fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// `cargo xtask fetch`: downloads (or takes `from`), verifies, pins a SHA-512 in the lock file
/// at the first download, and unpacks into the read-only base.
pub fn fetch(
    name: &str,
    p: &PublishedDisk,
    images_dir: &Path,
    cache: &Path,
    from: Option<&Path>,
) -> Result<PreparedDisk> {
    let dir = image_dir(cache, name);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = host::CacheLock::acquire(cache, &format!("published-{name}"))?;
    let (pin, newly_pinned) = match known_pin(name, p, images_dir)? {
        Some(pin) => (pin, false),
        None => (resolve_sha512(p, from)?, true),
    };
    let download = dir.join(file_name(&p.url));
    match from {
        Some(file) => take_local(file, digest(&pin), &download)?,
        None => {
            download::fetch_checked(&p.url, digest(&pin), &download)?;
        }
    }
    if newly_pinned {
        pin_in_lock(name, p, images_dir, &pin)?;
    }
    let base = base_path(cache, name, &pin);
    if !base.exists() {
        unpack(&download, p.format, &base)?;
    }
    Ok(PreparedDisk {
        base,
        pin,
        url: p.url.clone(),
    })
}

/// Copies a file the user brought in into the cache, once its hash matches.
fn take_local(file: &Path, digest: Digest<'_>, dest: &Path) -> Result<()> {
    if !digest.matches(file)? {
        return Err(InfraError::new(
            InfraCause::Download,
            format!(
                "{}: its {} is {}, not the pinned one",
                file.display(),
                match digest {
                    Digest::Sha256(_) => "SHA-256",
                    Digest::Sha512(_) => "SHA-512",
                },
                digest.of_file(file)?
            ),
        )
        .into());
    }
    let tmp = dest.with_extension("part");
    std::fs::copy(file, &tmp).with_context(|| format!("copying {}", file.display()))?;
    std::fs::rename(&tmp, dest)?;
    Ok(())
}

/// The SHA-512 of the image's file in the published sums (or, with `--from`, in a
/// `SHA512SUMS` beside the file brought in).
fn resolve_sha512(p: &PublishedDisk, from: Option<&Path>) -> Result<String> {
    let sums_url = p.sha512_sums.as_deref().context("no sha512_sums URL")?;
    let text = match from {
        Some(file) => {
            let beside = file.with_file_name("SHA512SUMS");
            std::fs::read_to_string(&beside).with_context(|| {
                format!(
                    "the image is not pinned yet: put the published SHA512SUMS ({sums_url}) beside {} as {}",
                    file.display(),
                    beside.display()
                )
            })?
        }
        None => fetch_text(sums_url)?,
    };
    let wanted = file_name(&p.url);
    let hash = sums_entry(&text, wanted).ok_or_else(|| {
        InfraError::new(
            InfraCause::Download,
            format!("{sums_url}: no SHA-512 for {wanted}"),
        )
    })?;
    Ok(format!("sha512:{hash}"))
}

/// The hash of `file` in a `sha512sum`-style listing (`<hex>  <name>`, `<hex> *<name>`).
pub fn sums_entry(text: &str, file: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (hash, name) = l.trim().split_once(char::is_whitespace)?;
        let name = name
            .trim_start()
            .trim_start_matches('*')
            .trim_start_matches("./");
        (name == file && crate::config::is_hex(hash, 128)).then(|| hash.to_ascii_lowercase())
    })
}

fn fetch_text(url: &str) -> Result<String> {
    crate::host::fast_tier::refuse_download(url)?;
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(std::time::Duration::from_secs(30))
        .timeout(std::time::Duration::from_secs(60))
        .build();
    let fail = |e: String| InfraError::new(InfraCause::Download, format!("fetching {url}: {e}"));
    let response = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(response.into_reader(), 1 << 20),
        &mut bytes,
    )
    .map_err(|e| fail(e.to_string()))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn pin_in_lock(name: &str, p: &PublishedDisk, images_dir: &Path, pin: &str) -> Result<()> {
    let path = images_dir.join(p.lock.as_ref().context("no lock file named")?);
    let mut lock = LockFile::read(&path)?;
    let sha512 = pin.trim_start_matches("sha512:").to_string();
    lock.images.insert(
        name.to_string(),
        LockEntry {
            url: p.url.clone(),
            sha512,
        },
    );
    lock.write(&path)?;
    eprintln!(
        "kstorm: pinned {name} in {}: commit this file",
        path.display()
    );
    Ok(())
}

/// Unpacks the download into the raw base (read-only), through a temporary name.
fn unpack(download: &Path, format: ArchiveFormat, base: &Path) -> Result<()> {
    let dir = base.parent().context("base has no folder")?;
    std::fs::create_dir_all(dir)?;
    let tmp = base.with_extension("tmp");
    let fail = |e: anyhow::Error| {
        InfraError::new(
            InfraCause::ImageBuild,
            format!("unpacking {}: {e:#}", download.display()),
        )
    };
    match format {
        ArchiveFormat::Raw => std::fs::copy(download, &tmp).map(drop).map_err(Into::into),
        ArchiveFormat::RawXz => unxz(download, &tmp),
        ArchiveFormat::TarXz => untar_one(download, &tmp),
    }
    .map_err(fail)?;
    let mut perms = std::fs::metadata(&tmp)?.permissions();
    perms.set_readonly(true);
    std::fs::set_permissions(&tmp, perms)?;
    std::fs::rename(&tmp, base)?;
    Ok(())
}

fn unxz(src: &Path, dest: &Path) -> Result<()> {
    let input = std::fs::File::open(src)?;
    let mut reader = xz2::read::XzDecoder::new_multi_decoder(std::io::BufReader::new(input));
    let mut out = std::fs::File::create(dest)?;
    std::io::copy(&mut reader, &mut out)?;
    out.sync_all()?;
    Ok(())
}

/// A `tar.xz` holding one disk image (Debian's `debian-hurd.img.tar.xz`): unpacked by tar into
/// a scratch folder, the one regular file taken out.
fn untar_one(src: &Path, dest: &Path) -> Result<()> {
    host::require_tools(&["tar", "xz"])?;
    let scratch = tempfile::Builder::new()
        .prefix("untar-")
        .tempdir_in(dest.parent().context("no folder")?)?;
    host::Cmd::new("tar")
        .args(["-xJf"])
        .arg(src)
        .args(["--no-same-owner", "-C"])
        .arg(scratch.path())
        // A 4 GB image unpacked from 355 MB of xz on a small machine.
        .timeout(std::time::Duration::from_secs(60 * 60))
        .run()?;
    let mut files = Vec::new();
    for entry in walk(scratch.path())? {
        if entry.metadata()?.is_file() {
            files.push(entry);
        }
    }
    match files.as_slice() {
        [one] => std::fs::rename(one, dest).map_err(Into::into),
        _ => bail!(
            "expected one disk image in the archive, found {}",
            files.len()
        ),
    }
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// kstorm's GRUB menu for an image whose kernel it boots itself (GNU/Hurd): serial console,
/// the kernel from the image's disk with kstorm's words, and the image's own module lines, so
/// the Hurd's disk driver chain, root filesystem and exec server stay the image's.
pub fn grub_menu(boot: &PublishedBoot, kernel_args: &[String]) -> Result<String> {
    use super::grub::quote_word;
    let at_root = |path: &str| format!("{}{}", boot.root, path);
    let mut kernel = vec![quote_word(&at_root(&boot.kernel))?];
    for w in kernel_args {
        kernel.push(quote_word(w)?);
    }
    let mut text = String::from(
        "serial --unit=0 --speed=115200\nterminal_input serial; terminal_output serial\nset timeout=0\nmenuentry kstorm {\n",
    );
    text.push_str(&format!("  multiboot {}\n", kernel.join(" ")));
    for (i, line) in boot.modules.iter().enumerate() {
        let (file, args) = line
            .split_first()
            .with_context(|| format!("boot.modules[{i}] is empty"))?;
        let mut words = vec![quote_word(&at_root(file))?];
        for w in args {
            words.push(quote_word(w)?);
        }
        text.push_str(&format!("  module {}\n", words.join(" ")));
    }
    text.push_str("}\n");
    Ok(text)
}

/// `run`: every published image among `images` is in the cache or can be fetched now.
pub fn ensure_all<'a>(images: impl Iterator<Item = &'a Image>, cache: &Path) -> Result<()> {
    let images_dir = host::workspace_root().join("images");
    let mut seen = std::collections::BTreeSet::new();
    for image in images {
        if let Source::PublishedDisk(p) = &image.source {
            if seen.insert(image.name.as_str()) {
                prepare(image.name.as_str(), p, &images_dir, cache)?;
            }
        }
    }
    Ok(())
}

/// `cargo xtask fetch --image NAME [--from FILE]`.
pub fn fetch_verb(name: &str, from: Option<&Path>, cache: &Path) -> Result<()> {
    let root = host::workspace_root();
    let catalog = crate::config::Catalog::load(&root)?;
    let image = catalog.images.get(name).ok_or_else(|| {
        UsageError::option(
            "--image",
            format!(
                "no image {name:?} in images/ (have: {})",
                catalog
                    .images
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let Source::PublishedDisk(p) = &image.source else {
        return Err(UsageError::option(
            "--image",
            format!("image {name} is not a published disk image: `run` prepares it by itself"),
        )
        .into());
    };
    if let Some(file) = from {
        if !file.is_file() {
            return Err(
                UsageError::option("--from", format!("{}: no such file", file.display())).into(),
            );
        }
    }
    let disk = fetch(name, p, &root.join("images"), cache, from)?;
    println!(
        "{name}: {} ({}) ready at {}",
        disk.url,
        disk.pin,
        disk.base.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_entries_are_found_by_file_name() {
        let h = "a".repeat(128);
        let text = format!(
            "{}  other.img\n{h} *debian-hurd.img.tar.xz\n",
            "b".repeat(128)
        );
        assert_eq!(sums_entry(&text, "debian-hurd.img.tar.xz"), Some(h));
        assert_eq!(sums_entry(&text, "missing"), None);
        assert_eq!(sums_entry("zz  x\n", "x"), None);
    }
}
