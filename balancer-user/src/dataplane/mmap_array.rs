//! Array maps through a shared memory mapping (`BPF_F_MMAPABLE`).
//!
//! Reading a whole table through the map syscalls costs one system call per entry: the
//! RING map has 65,537 entries per service, BACKENDS and HEALTH 4,096 each, and the
//! daemon reads them on every change it writes (a failover rewrite among them). Mapped,
//! a table is read as memory. Writes of whole values stay with the map syscalls except
//! for RING entries: each is a naturally aligned `u32` written with one atomic store, so
//! the data plane, reading concurrently, sees either the old or the new slot. Writers are
//! serialised by the instance lock ([`Balancer`]).

use std::{
    marker::PhantomData,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::MapData;

use crate::{
    dataplane::Balancer,
    error::{io_ctx, map_ctx, Result},
};

/// A mapped array map, or a range of it: `entries` values of type `T`, index 0 being the
/// map's value `first`.
pub(crate) struct MmapArray<T> {
    /// The start of the mapping (page-aligned), for munmap.
    map: NonNull<u8>,
    bytes: usize,
    /// Value `first` inside the mapping.
    base: NonNull<u8>,
    entries: usize,
    _value: PhantomData<T>,
}

impl<T: Copy> MmapArray<T> {
    /// The kernel stores array values 8-byte aligned, each in a slot of this size.
    const STRIDE: usize = std::mem::size_of::<T>().next_multiple_of(8);

    /// Maps the pinned array `name` of the instance, which has `entries` values.
    pub fn open(b: &Balancer, name: &str, entries: u32) -> Result<Self> {
        Self::open_range(b.dir(), name, 0, entries)
    }

    /// Maps values `first .. first + count` of the array pinned as `name` in `pins` only. The kernel
    /// fills in every page table entry of a map's mapping when it is made, so mapping all
    /// of RING (33 MB) took milliseconds per call where one service's table needs 128
    /// pages.
    pub fn open_range(pins: &Path, name: &str, first: u32, count: u32) -> Result<Self> {
        let data = MapData::from_pin(pins.join(name))
            .map_err(map_ctx(format!("opening pinned map {name}")))?;
        let page = page_size();
        let start = first as usize * Self::STRIDE;
        let offset = start / page * page;
        let end = (first as usize + count as usize) * Self::STRIDE;
        let bytes = (end - offset).div_ceil(page) * page;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: a fresh shared mapping of part of the map's value area, at a page
        // offset; the kernel checks that the map is mmapable and this range inside it.
        // The fd may close after mmap.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io_ctx(format!(
                "mapping the {name} map (made by an older version? detach and attach again)"
            ))(std::io::Error::last_os_error()));
        }
        let map = NonNull::new(ptr.cast::<u8>()).expect("mmap returned a non-null pointer");
        // SAFETY: start - offset < page <= bytes: inside the mapping.
        let base = unsafe { NonNull::new_unchecked(map.as_ptr().add(start - offset)) };
        Ok(MmapArray {
            map,
            bytes,
            base,
            entries: count as usize,
            _value: PhantomData,
        })
    }

    fn slot(&self, index: usize) -> *mut T {
        let index = index.min(self.entries - 1);
        // SAFETY: index < entries, and the mapping holds `entries` slots of STRIDE bytes.
        unsafe { self.base.as_ptr().add(index * Self::STRIDE).cast() }
    }

    /// A copy of value `index` (clamped to the last one).
    pub fn get(&self, index: usize) -> T {
        // SAFETY: the slot is inside the mapping and 8-byte aligned; the kernel or
        // another process may write it meanwhile, hence the volatile read (a value being
        // rewritten may be read half old, half new, as through the syscall).
        unsafe { std::ptr::read_volatile(self.slot(index)) }
    }
}

impl MmapArray<u32> {
    /// Stores value `index` atomically.
    pub fn store(&self, index: usize, value: u32) {
        // SAFETY: the slot is inside the mapping, 4-byte aligned, and AtomicU32 has
        // u32's layout.
        unsafe { &*self.slot(index).cast::<AtomicU32>() }.store(value, Ordering::Release);
    }
}

impl<T> Drop for MmapArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in open_range.
        unsafe { libc::munmap(self.map.as_ptr().cast(), self.bytes) };
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
