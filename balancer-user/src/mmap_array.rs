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
    ptr::NonNull,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::maps::MapData;

use crate::{
    dataplane::Balancer,
    error::{io_ctx, map_ctx, Result},
};

/// A mapped array map of `entries` values of type `T`.
pub(crate) struct MmapArray<T> {
    base: NonNull<u8>,
    bytes: usize,
    entries: usize,
    _value: PhantomData<T>,
}

impl<T: Copy> MmapArray<T> {
    /// The kernel stores array values 8-byte aligned, each in a slot of this size.
    const STRIDE: usize = std::mem::size_of::<T>().next_multiple_of(8);

    /// Maps the pinned array `name` of the instance, which has `entries` values.
    pub fn open(b: &Balancer, name: &str, entries: u32) -> Result<Self> {
        let data = MapData::from_pin(b.dir().join(name))
            .map_err(map_ctx(format!("opening pinned map {name}")))?;
        let entries = entries as usize;
        let page = page_size();
        let bytes = (entries * Self::STRIDE).div_ceil(page) * page;
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
            return Err(io_ctx(format!(
                "mapping the {name} map (made by an older version? detach and attach again)"
            ))(std::io::Error::last_os_error()));
        }
        Ok(MmapArray {
            base: NonNull::new(ptr.cast()).expect("mmap returned a non-null pointer"),
            bytes,
            entries,
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
