//! Disk images that boot their own init: an ext4 root filesystem built from Debian packages
//! (`apt-get download` + `dpkg-deb -x`, no chroot, no loop mount: `mke2fs -d` copies a staging
//! folder), and the small boot initramfs that loads the kernel modules the disk needs and
//! switches to it. Both are cached under `cache/disks/<hash of every input>/`.
//!
//! Cells never write these files: each boots a qcow2 overlay in its own folder
//! ([`overlay`]).

use super::initramfs::{self, Entry};
use super::{debian, linux::LinuxKernel};
use crate::config::DiskRecipe;
use crate::error::{InfraCause, InfraError};
use crate::host::{self, CacheKey, Cmd};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A built disk image: the read-only base filesystem and the initramfs that mounts it.
#[derive(Debug, Clone)]
pub struct DiskImage {
    /// Raw ext4 image; never written (cells boot overlays of it).
    pub base: PathBuf,
    pub initrd: PathBuf,
    /// Hash of every input, recorded in results.
    pub hash: String,
    /// Debian packages in the image, `name=version`.
    pub packages: Vec<String>,
}

/// Builds (or finds in the cache) the disk image of `recipe` for `kernel`. Relative paths in the
/// recipe are relative to `images_dir`.
pub fn build(
    recipe: &DiskRecipe,
    kernel: &LinuxKernel,
    images_dir: &Path,
    cache: &Path,
) -> Result<DiskImage> {
    host::require_tools(&["apt-get", "apt-cache", "dpkg-deb", "mke2fs", "openssl"])?;
    let packages = package_closure(&recipe.packages, cache)?;
    let infos = packages
        .iter()
        .map(|p| debian::package_info(p, cache))
        .collect::<Result<Vec<_>>>()?;
    let files_dir = images_dir.join(&recipe.files);
    let init_path = images_dir.join(&recipe.init);
    let init = std::fs::read(&init_path)
        .with_context(|| format!("disk.init: reading {}", init_path.display()))?;

    let hash = cache_hash(recipe, kernel, &init, &infos, &files_dir)?;
    let dir = cache.join("disks").join(&hash);
    let out = DiskImage {
        base: dir.join("root.ext4"),
        initrd: dir.join("boot.cpio"),
        hash: hash.clone(),
        packages: infos
            .iter()
            .map(|i| format!("{}={}", i.package, i.version))
            .collect(),
    };
    if out.base.exists() && out.initrd.exists() {
        return Ok(out);
    }

    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let staging = tempfile::Builder::new()
        .prefix("staging-")
        .tempdir_in(&dir)
        .context("creating the staging folder")?;
    let root = staging.path().join("root");
    stage_root(&root, recipe, &infos, &files_dir, cache)?;

    let modules = resolve_modules(kernel, &recipe.modules)?;
    let cpio = boot_initramfs(&root.join("bin/busybox"), &init, &modules)?;
    host::write_atomic(&out.initrd, &cpio)?;

    make_ext4(
        &root,
        &dir.join("root.ext4.tmp"),
        &out.base,
        recipe.size.mib(),
    )?;
    Ok(out)
}

/// The cache key covers every input: recipe, package versions, kernel, init, overlay files.
fn cache_hash(
    recipe: &DiskRecipe,
    kernel: &LinuxKernel,
    init: &[u8],
    infos: &[debian::PackageInfo],
    files_dir: &Path,
) -> Result<String> {
    let mut key = CacheKey::new()
        .part(serde_json::to_vec(recipe)?)
        .part(&kernel.origin_sha256)
        .part(init);
    for i in infos {
        key = key.part(format!("{} {} {}", i.package, i.version, i.sha256));
    }
    for (rel, data) in walk_files(files_dir)? {
        key = key.part(rel).part(data);
    }
    Ok(key.hex()[..32].to_string())
}

/// Fills the staging folder `root`: the packages unpacked, busybox's links, the recipe's
/// files on top, the mount points and the login's password.
fn stage_root(
    root: &Path,
    recipe: &DiskRecipe,
    infos: &[debian::PackageInfo],
    files_dir: &Path,
    cache: &Path,
) -> Result<()> {
    for info in infos {
        let deb = debian::download(info, &cache.join("debs"))?;
        debian::unpack(&deb, root)?;
    }
    install_busybox_links(root)?;
    copy_tree(files_dir, root)?;
    for d in ["proc", "sys", "dev", "tmp", "run", "root", "etc/dropbear"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    write_shadow(root, recipe)
}

/// Copies `root` into a new ext4 image of `size_mib` MiB at `tmp`, then renames it to
/// `base`, so a base that exists is always complete.
fn make_ext4(root: &Path, tmp: &Path, base: &Path, size_mib: u64) -> Result<()> {
    let _ = std::fs::remove_file(tmp);
    Cmd::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-L", "kstorm-root", "-d"])
        .arg(root)
        .arg(tmp)
        .arg(format!("{size_mib}M"))
        .read()
        .map_err(|e| {
            InfraError::new(
                InfraCause::ImageBuild,
                format!("building the ext4 root: {e:#}"),
            )
        })?;
    std::fs::rename(tmp, base)?;
    Ok(())
}

/// Creates a qcow2 overlay of `base` at `overlay`: the guest writes there, never to the base.
pub fn overlay(base: &Path, overlay: &Path) -> Result<()> {
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(overlay)
        .read()
        .map_err(|e| {
            InfraError::new(
                InfraCause::ImageBuild,
                format!("creating the disk overlay: {e:#}"),
            )
        })?;
    Ok(())
}

/// `packages` and everything they depend on (`Depends`/`Pre-Depends`, first alternative).
fn package_closure(packages: &[String], cache: &Path) -> Result<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = packages.to_vec();
    while let Some(p) = todo.pop() {
        if !seen.insert(p.clone()) {
            continue;
        }
        let out = debian::depends(&p, cache).map_err(|e| {
            InfraError::new(InfraCause::ImageBuild, format!("disk.packages: {p}: {e:#}"))
        })?;
        todo.extend(parse_hard_depends(&out));
    }
    Ok(seen.into_iter().collect())
}

/// The hard dependencies in `apt-cache depends` output. Of alternatives (`|Depends: a`, then
/// `Depends: b`), only the first is taken; virtual packages (`<x>`) are skipped.
pub(crate) fn parse_hard_depends(out: &str) -> Vec<String> {
    let mut deps = Vec::new();
    let mut in_alternatives = false;
    for line in out.lines() {
        let t = line.trim();
        let (alt, rest) = match t.strip_prefix('|') {
            Some(r) => (true, r),
            None => (false, t),
        };
        let Some(name) = rest
            .strip_prefix("Depends:")
            .or_else(|| rest.strip_prefix("PreDepends:"))
        else {
            continue;
        };
        let name = name.trim();
        let skip = in_alternatives || name.starts_with('<');
        in_alternatives = alt;
        if !skip {
            deps.push(name.split(':').next().unwrap_or(name).to_string());
        }
    }
    deps
}

/// Creates busybox's applet links the way `busybox --install -s` would, by asking the staged
/// (static) busybox for its list. Links that a package already provides are kept.
fn install_busybox_links(root: &Path) -> Result<()> {
    let busybox = root.join("bin/busybox");
    if !busybox.exists() {
        bail!(InfraError::new(
            InfraCause::ImageBuild,
            "disk.packages: no /bin/busybox in the image (add busybox-static)"
        ));
    }
    let list = Cmd::new(busybox.to_string_lossy())
        .arg("--list-full")
        .read()?;
    for rel in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let link = root.join(rel);
        if link.symlink_metadata().is_ok() {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    Ok(())
}

/// Writes `/etc/shadow` with a SHA-512 crypt hash for each user, salted by the user and
/// password so the image's bytes depend only on its inputs.
fn write_shadow(root: &Path, recipe: &DiskRecipe) -> Result<()> {
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap_or_default();
    let mut shadow = String::new();
    for line in passwd.lines() {
        let name = line.split(':').next().unwrap_or_default();
        if name.is_empty() {
            continue;
        }
        let hash = match recipe.users.iter().find(|u| u.name == name) {
            Some(u) => {
                let salt = CacheKey::new().part(&u.name).part(&u.password).hex();
                Cmd::new("openssl")
                    .args(["passwd", "-6", "-salt", &salt[..16], u.password.as_str()])
                    .read()?
                    .trim()
                    .to_string()
            }
            None => "!".to_string(),
        };
        shadow.push_str(&format!("{name}:{hash}:19000:0:99999:7:::\n"));
    }
    for u in &recipe.users {
        if !passwd.lines().any(|l| l.split(':').next() == Some(&u.name)) {
            bail!(
                "disk.users: {} has no line in the image's etc/passwd",
                u.name
            );
        }
    }
    let path = root.join("etc/shadow");
    std::fs::write(&path, shadow)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// A kernel module file and its name.
struct Module {
    name: String,
    bytes: Vec<u8>,
}

/// The modules named in the recipe and their dependencies, dependencies first, read from the
/// kernel package (its `.deb` has no `modules.dep`, so `depends=` is read from each module's
/// `.modinfo` section).
fn resolve_modules(kernel: &LinuxKernel, wanted: &[String]) -> Result<Vec<Module>> {
    let unpacked = kernel.unpacked.as_ref().ok_or_else(|| {
        InfraError::new(
            InfraCause::ImageBuild,
            "disk.modules: this kernel came without its modules (not a Debian package)",
        )
    })?;
    let mut index: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut stack = vec![unpacked.join("lib/modules")];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p.file_name().and_then(|n| n.to_str()) {
                if let Some(name) = stem.strip_suffix(".ko") {
                    index.insert(name.replace('-', "_"), p.clone());
                }
            }
        }
    }
    let mut order = Vec::new();
    let mut done = BTreeSet::new();
    for w in wanted {
        visit(&w.replace('-', "_"), &index, &mut done, &mut order, 0)?;
    }
    Ok(order)
}

fn visit(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    done: &mut BTreeSet<String>,
    order: &mut Vec<Module>,
    depth: usize,
) -> Result<()> {
    if done.contains(name) {
        return Ok(());
    }
    if depth > 32 {
        bail!("disk.modules: dependency cycle through {name}");
    }
    let path = index.get(name).ok_or_else(|| {
        InfraError::new(
            InfraCause::ImageBuild,
            format!("disk.modules: no module {name} in the kernel package"),
        )
    })?;
    let bytes = std::fs::read(path)?;
    for dep in modinfo_depends(&bytes)
        .with_context(|| format!("reading .modinfo of {}", path.display()))?
    {
        visit(&dep, index, done, order, depth + 1)?;
    }
    done.insert(name.to_string());
    order.push(Module {
        name: name.to_string(),
        bytes,
    });
    Ok(())
}

/// The `depends=` list of a kernel module's `.modinfo` section.
fn modinfo_depends(ko: &[u8]) -> Result<Vec<String>> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(ko)?;
    let Some(section) = file.section_by_name(".modinfo") else {
        return Ok(Vec::new());
    };
    let data = section.data()?;
    Ok(data
        .split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect())
}

/// The boot initramfs: static busybox, the modules in load order, and the recipe's `/init`.
fn boot_initramfs(busybox: &Path, init: &[u8], modules: &[Module]) -> Result<Vec<u8>> {
    use initramfs::{FILE, FILE_EXEC};
    let busybox = std::fs::read(busybox).context("reading the staged busybox")?;
    let order: String = modules.iter().map(|m| format!("{}\n", m.name)).collect();
    let names: Vec<String> = modules
        .iter()
        .map(|m| format!("modules/{}.ko", m.name))
        .collect();
    let mut entries: Vec<Entry> = ["bin", "dev", "modules", "proc", "sys", "newroot"]
        .into_iter()
        .map(Entry::Dir)
        .collect();
    entries.push(initramfs::CONSOLE);
    for (name, mode, data) in [
        ("bin/busybox", FILE_EXEC, &busybox[..]),
        ("init", FILE_EXEC, init),
        ("modules/order", FILE, order.as_bytes()),
    ] {
        entries.push(Entry::File { name, mode, data });
    }
    for (name, m) in names.iter().zip(modules) {
        entries.push(Entry::File {
            name,
            mode: FILE,
            data: &m.bytes,
        });
    }
    initramfs::write_newc(&entries)
}

/// Every file under `dir` as (relative path, bytes), sorted, for the cache key.
fn walk_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in
            std::fs::read_dir(&d).with_context(|| format!("disk.files: reading {}", d.display()))?
        {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir)?.to_string_lossy().into_owned();
                let mut data = std::fs::read(&p)?;
                // The mode matters too (rc scripts must stay executable).
                use std::os::unix::fs::PermissionsExt;
                data.extend_from_slice(&p.metadata()?.permissions().mode().to_le_bytes());
                out.push((rel, data));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Copies `src`'s files over `dest`, keeping modes (placeholder `.keep` files make folders).
fn copy_tree(src: &Path, dest: &Path) -> Result<()> {
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let p = entry?.path();
        let target = dest.join(p.file_name().unwrap());
        if p.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_tree(&p, &target)?;
        } else if p.file_name().is_some_and(|n| n == ".keep") {
            continue;
        } else {
            if target.symlink_metadata().is_ok() {
                std::fs::remove_file(&target)?;
            }
            std::fs::copy(&p, &target)
                .with_context(|| format!("copying {} to {}", p.display(), target.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_initramfs_holds_busybox_init_and_modules_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let busybox = dir.path().join("busybox");
        std::fs::write(&busybox, b"static busybox").unwrap();
        let modules = [
            Module {
                name: "virtio_mmio".into(),
                bytes: b"ko-1".to_vec(),
            },
            Module {
                name: "ext4".into(),
                bytes: b"ko-22".to_vec(),
            },
        ];
        let cpio = boot_initramfs(&busybox, b"#!/bin/sh\n", &modules).unwrap();
        let seen = initramfs::read_back(&cpio);
        let names: Vec<&str> = seen.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "dev",
                "modules",
                "proc",
                "sys",
                "newroot",
                "dev/console",
                "bin/busybox",
                "init",
                "modules/order",
                "modules/virtio_mmio.ko",
                "modules/ext4.ko"
            ]
        );
        assert_eq!(seen[7].1, initramfs::FILE_EXEC);
        assert_eq!(seen[9].3, "virtio_mmio\next4\n".len() as u32);
        assert_eq!(seen[11].3, 5);
    }

    #[test]
    fn hard_depends_take_first_alternative_and_skip_virtual() {
        let out = "dropbear-bin\n  Depends: libc6\n |Depends: libcrypt1\n  Depends: libxcrypt\n  Depends: <virt>\n  PreDepends: zlib1g\n  Suggests: openssh-client\n  Breaks: dropbear\n";
        assert_eq!(
            parse_hard_depends(out),
            vec!["libc6", "libcrypt1", "zlib1g"]
        );
    }
}
