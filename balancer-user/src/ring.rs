//! The RING map (one Maglev lookup table per service) through a shared memory mapping.
//!
//! A table has 65,537 entries; reading or rewriting one through the map syscalls costs
//! one system call per entry (tens of milliseconds per table), which would delay every
//! backend change, among them the failover rewrite. The map is created with
//! `BPF_F_MMAPABLE`, so the control plane maps it and reads and writes entries as
//! memory. Each entry is a naturally aligned `u32` written with one atomic store, so the
//! data plane, reading concurrently, sees either the old or the new slot, never a mix.
//! Writers are serialised by the instance lock ([`Balancer`]).

use std::{
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::MapData;
use balancer_ebpf::{map_names, MAX_SERVICES, RING_SIZE};

use crate::{
    dataplane::Balancer,
    error::{io_ctx, map_ctx, Result},
};

/// Entries of the whole map: one table per possible service.
const ENTRIES: usize = (MAX_SERVICES * RING_SIZE) as usize;

pub(crate) struct RingMap {
    base: NonNull<AtomicU32>,
    bytes: usize,
}

impl RingMap {
    pub fn open(b: &Balancer) -> Result<RingMap> {
        let path = b.dir().join(map_names::RING);
        let data = MapData::from_pin(&path)
            .map_err(map_ctx(format!("opening pinned map {}", map_names::RING)))?;
        let page = page_size();
        let bytes = (ENTRIES * 4).div_ceil(page) * page;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of the map's value area; the kernel checks that
        // the map is mmapable and at least this large. The fd may close after mmap.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_ctx("mapping the RING map (created without BPF_F_MMAPABLE? detach and attach again)")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(RingMap {
            base: NonNull::new(ptr.cast()).expect("mmap returned a non-null pointer"),
            bytes,
        })
    }

    /// The table of service `id`.
    fn table(&self, id: u32) -> &[AtomicU32] {
        let start = (id.min(MAX_SERVICES - 1) * RING_SIZE) as usize;
        // SAFETY: the mapping holds ENTRIES u32s, start + RING_SIZE <= ENTRIES, and
        // AtomicU32 has u32's layout; it lives as long as self.
        unsafe {
            std::slice::from_raw_parts(self.base.as_ptr().add(start), RING_SIZE as usize)
        }
    }

    /// A copy of service `id`'s table.
    pub fn read(&self, id: u32) -> Vec<u32> {
        self.table(id)
            .iter()
            .map(|e| e.load(Ordering::Relaxed))
            .collect()
    }

    /// Writes the entries of `new` that differ from `old` into service `id`'s table.
    pub fn write_changes(&self, id: u32, old: &[u32], new: &[u32]) {
        for ((entry, o), n) in self.table(id).iter().zip(old).zip(new) {
            if o != n {
                entry.store(*n, Ordering::Release);
            }
        }
    }
}

impl Drop for RingMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in open.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.bytes) };
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}
