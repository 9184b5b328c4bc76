//! The address of a kernel function in a `vmlinux`, for a debugger: from its symbol table when
//! it has one (a kernel-tree or `--kernel` build), else from the table of exported symbols the
//! kernel keeps for its modules (`__ksymtab`, `__ksymtab_gpl`), which Debian's stripped
//! `vmlinux` still has. A PVH-booted kernel is not relocated (KASLR runs in the bzImage's
//! decompressor, which PVH skips), so these are the addresses it runs at.

use anyhow::{Context, Result};
use object::{Object, ObjectSection, ObjectSymbol};
use std::path::Path;

/// The address of `name` in `vmlinux`, or `None` if neither table has it.
pub fn address(vmlinux: &Path, name: &str) -> Result<Option<u64>> {
    let data = std::fs::read(vmlinux).with_context(|| format!("reading {}", vmlinux.display()))?;
    let elf = object::File::parse(&*data)
        .with_context(|| format!("{}: not an ELF kernel", vmlinux.display()))?;
    if let Some(sym) = elf.symbols().find(|s| s.name() == Ok(name)) {
        return Ok(Some(sym.address()));
    }
    for table in ["__ksymtab", "__ksymtab_gpl"] {
        if let Some(a) = exported(&elf, table, name) {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// `name` in the export table `table`: 12-byte entries of three 32-bit offsets relative to
/// where each is stored (value, name, namespace), on x86-64 since Linux 4.19.
fn exported(elf: &object::File<'_>, table: &str, name: &str) -> Option<u64> {
    let sec = elf.section_by_name(table)?;
    let bytes = sec.data().ok()?;
    let strings = elf.section_by_name("__ksymtab_strings")?;
    let (str_addr, str_bytes) = (strings.address(), strings.data().ok()?);
    let wanted = name.as_bytes();
    for (i, entry) in bytes.chunks_exact(12).enumerate() {
        let at = sec.address() + 12 * i as u64;
        let rel = |k: usize| i32::from_le_bytes(entry[k..k + 4].try_into().unwrap()) as i64;
        let name_at = (at as i64 + 4 + rel(4)) as u64;
        let Some(off) = name_at.checked_sub(str_addr) else {
            continue;
        };
        let rest = str_bytes.get(off as usize..)?;
        if rest.starts_with(wanted) && rest.get(wanted.len()) == Some(&0) {
            return Some((at as i64 + rel(0)) as u64);
        }
    }
    None
}
