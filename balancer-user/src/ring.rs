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
/// The kernel stores array values 8-byte aligned: each `u32` entry takes 8 bytes of the
/// mapping, its value in the first 4.
const STRIDE: usize = 8;

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
        let bytes = (ENTRIES * STRIDE).div_ceil(page) * page;
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
            return Err(io_ctx(
                "mapping the RING map (created without BPF_F_MMAPABLE? detach and attach again)",
            )(std::io::Error::last_os_error()));
        }
        Ok(RingMap {
            base: NonNull::new(ptr.cast()).expect("mmap returned a non-null pointer"),
            bytes,
        })
    }

    /// Entry `i` of service `id`'s table.
    fn entry(&self, id: u32, i: usize) -> &AtomicU32 {
        let index = (id.min(MAX_SERVICES - 1) * RING_SIZE) as usize + i.min(RING_SIZE as usize - 1);
        // SAFETY: index < ENTRIES and the mapping holds ENTRIES values STRIDE bytes apart,
        // each starting with its u32 (4-byte aligned, AtomicU32 has u32's layout); the
        // mapping lives as long as self.
        unsafe { &*self.base.as_ptr().add(index * (STRIDE / 4)) }
    }

    /// A copy of service `id`'s table.
    pub fn read(&self, id: u32) -> Vec<u32> {
        (0..RING_SIZE as usize)
            .map(|i| self.entry(id, i).load(Ordering::Relaxed))
            .collect()
    }

    /// Writes the entries of `new` that differ from `old` into service `id`'s table.
    pub fn write_changes(&self, id: u32, old: &[u32], new: &[u32]) {
        for (i, (o, n)) in old.iter().zip(new).enumerate() {
            if o != n {
                self.entry(id, i).store(*n, Ordering::Release);
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
