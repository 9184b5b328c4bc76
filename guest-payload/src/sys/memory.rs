//! Memory mappings: the one place where the payload maps, touches and unmaps memory itself.
//! Views into a mapping borrow it, so none outlives the `munmap` of its drop.

use nix::errno::Errno;
use nix::sys::mman::{mlock, mmap, mmap_anonymous, msync, munmap, MapFlags, MsFlags, ProtFlags};
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// A readable and writable mapping, unmapped on drop.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    /// Private anonymous memory of `bytes`, untouched: the kernel's overcommit policy
    /// decides here.
    pub fn anon(bytes: usize) -> io::Result<Mapping> {
        Self::map(bytes, MapFlags::MAP_PRIVATE, None)
    }

    /// Shared anonymous memory, zeroed, visible to children forked after it was made.
    pub fn anon_shared(bytes: usize) -> io::Result<Mapping> {
        Self::map(bytes, MapFlags::MAP_SHARED, None)
    }

    /// The first `bytes` of the file behind `fd`, shared with every process mapping it.
    pub fn file_shared(fd: BorrowedFd, bytes: usize) -> io::Result<Mapping> {
        Self::map(bytes, MapFlags::MAP_SHARED, Some(fd))
    }

    fn map(bytes: usize, flags: MapFlags, file: Option<BorrowedFd>) -> io::Result<Mapping> {
        let len = NonZeroUsize::new(bytes).ok_or(Errno::EINVAL)?;
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let ptr = match file {
            // SAFETY: no address hint and no MAP_FIXED: the kernel picks fresh addresses, so
            // the mapping replaces nothing and aliases no memory Rust knows of.
            Some(fd) => unsafe { mmap(None, len, prot, flags, fd, 0) },
            // SAFETY: as above, with no file behind it.
            None => unsafe { mmap_anonymous(None, len, prot, flags) },
        }?;
        Ok(Mapping {
            ptr: ptr.cast(),
            len: bytes,
        })
    }

    /// Writes `seed` to one byte of every page, so each is really backed by memory.
    pub fn touch_write(&mut self, seed: u8) {
        self.touch_pages(Some(seed));
    }

    /// Reads one byte of every page, so every page is mapped in this process; their sum.
    pub fn touch_read(&self) -> u64 {
        self.touch_pages(None)
    }

    /// One volatile access per page: a store of `store`, or a load whose values are summed.
    /// (Stores come only through `touch_write`, which holds `&mut self`.)
    fn touch_pages(&self, store: Option<u8>) -> u64 {
        let mut sum = 0u64;
        for off in (0..self.len).step_by(super::page_size()) {
            let byte = self.ptr.as_ptr().wrapping_add(off);
            // SAFETY: off < len, so the byte lies inside this live, readable and writable
            // mapping; volatile, so the compiler keeps every access (each is a page fault we
            // want).
            unsafe {
                match store {
                    Some(v) => byte.write_volatile(v),
                    None => sum += u64::from(byte.read_volatile()),
                }
            }
        }
        sum
    }

    /// Pins every page of the mapping in memory (mlock): the kernel can neither swap nor
    /// reclaim it while the mapping lives.
    pub fn lock(&self) -> io::Result<()> {
        // SAFETY: ptr..ptr+len is this live mapping; mlock changes no memory.
        Ok(unsafe { mlock(self.ptr.cast(), self.len) }?)
    }

    /// The mapping as bytes, for plain writes into it.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr..ptr+len is this live mapping, and `&mut self` makes the slice the only
        // view of it in this process while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The mapping as 64-bit counters that several processes may update at once (shared
    /// anonymous memory starts zeroed: every counter 0).
    pub fn atomics(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is page-aligned (so aligned for u64) and len bytes long; atomics
        // may be changed through a shared view, also by other processes; the slice borrows
        // `self`, so it ends before the unmap.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<AtomicU64>(), self.len / 8) }
    }

    /// Writes `len` bytes from `off` (page-aligned) back to the file and waits for it
    /// (msync MS_SYNC).
    pub fn sync(&self, off: usize, len: usize) -> io::Result<()> {
        if off.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(Errno::EINVAL.into());
        }
        let start = NonNull::new(self.ptr.as_ptr().wrapping_add(off)).ok_or(Errno::EINVAL)?;
        // SAFETY: the range lies inside this mapping (checked above); msync writes pages back
        // and changes no memory.
        Ok(unsafe { msync(start.cast(), len, MsFlags::MS_SYNC) }?)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: exactly the range `map` got; every view into it borrowed `self`, so none is
        // left.
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{self, page_size};
    use std::os::fd::AsFd;

    #[test]
    fn file_mapping_sees_the_file_and_writes_reach_it() {
        let path = std::env::temp_dir().join(format!("kstorm-map-test-{}", std::process::id()));
        let len = 2 * page_size();
        std::fs::write(&path, vec![1u8; len]).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut map = Mapping::file_shared(file.as_fd(), len).unwrap();
        // One byte read per page, each 1.
        assert_eq!(map.touch_read(), 2);
        map.bytes_mut()[page_size()..page_size() + 3].copy_from_slice(b"abc");
        map.sync(page_size(), page_size()).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[page_size()..page_size() + 3], b"abc");
        assert!(
            map.sync(page_size(), 2 * page_size()).is_err(),
            "beyond the end"
        );
        drop(map);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn anonymous_memory_is_backed_once_touched_and_empty_is_refused() {
        let mut m = Mapping::anon(4 * page_size()).unwrap();
        m.touch_write(7);
        assert!(m.bytes_mut().iter().step_by(page_size()).all(|b| *b == 7));
        assert_eq!(m.touch_read(), 4 * 7);
        let e = Mapping::anon(0).err().expect("a mapping of nothing");
        assert_eq!(sys::err_name(&e), "EINVAL");
    }
}
