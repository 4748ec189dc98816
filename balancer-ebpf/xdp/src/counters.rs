//! Per-CPU counters: the global block is looked up once per packet and passed around.

use balancer_common::{BackendStats, Counter, GlobalStats};

use crate::maps::{BACKEND_STATS, STATS};

pub struct Counters(*mut GlobalStats);

impl Counters {
    /// This CPU's global counter block.
    #[inline(always)]
    pub fn get() -> Option<Counters> {
        STATS.get_ptr_mut(0).map(Counters)
    }

    #[inline(always)]
    pub fn inc(&self, c: Counter) {
        self.add(c, 1);
    }

    #[inline(always)]
    pub fn add(&self, c: Counter, n: u64) {
        // SAFETY: the pointer comes from a per-CPU array lookup, only this CPU writes it
        // while the program runs, and the index is a constant below Counter::COUNT.
        unsafe { (*self.0)[c as usize] += n };
    }
}

/// This CPU's counters of a backend slot.
#[inline(always)]
pub fn backend(slot: u32) -> Option<&'static mut BackendStats> {
    // SAFETY: per-CPU array element, written only by this CPU.
    BACKEND_STATS.get_ptr_mut(slot).map(|p| unsafe { &mut *p })
}
