//! TCP options in the BPF programs: [`balancer_common::tcp_opts`]'s walk and edit, run by
//! two global functions over one per-CPU scratch value ([`OPTION_SCRATCH`]).
//!
//! Why this shape: the walk branches on every option's kind and length. Inlined (or as a
//! static subprogram), the verifier checks it again for every state of every caller that
//! reaches it, and unrolled steps multiply the paths: past its limit of a million
//! instructions. A global function with no pointer arguments is checked once, on its
//! own; its steps run in a `bpf_loop` callback, checked once too, whose state lives in
//! the map value (the verifier does not track map contents, so the loop converges at
//! once). Callers copy the options into the scratch value, call, and read the result.
//! The two layouts real stacks send after the SYN are recognised first, without a loop
//! ([`quick_walk`]).

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use balancer_common::{
    parse::{ptr_at_mut, Packet},
    tcp_opts::{
        apply_walked, edit_flags, quick_walk_into, rescale_window_at, translate_quick, Edit,
        OptionBytes, SpliceOptions, Walk, Walker, MAX_OPTION_STEPS,
    },
};

use crate::maps::OPTION_SCRATCH;

/// Value of [`OPTION_SCRATCH`]: the options being worked on, and what the global
/// functions hand back.
pub struct OptionScratch {
    pub options: OptionBytes,
    walker: Walker,
    pub walk: Walk,
    pub edit: Edit,
    /// Checksum delta of the last edit (0: nothing changed).
    delta: u32,
    /// The splice being set up (delayed binding's completion): negotiated from the
    /// backend's SYN-ACK, read by the completion.
    pub splice: SpliceOptions,
}

extern "C" fn walk_step(_index: u64, _ctx: *mut c_void) -> i64 {
    let Some(s) = OPTION_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    let s = unsafe { &mut *s };
    if s.walker.step(&s.options) {
        0
    } else {
        1
    }
}

/// The walk of the scratch options into its `walk`. 0 on success.
#[no_mangle]
#[inline(never)]
pub extern "C" fn balancer_walk_options() -> i64 {
    let Some(s) = OPTION_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    let s = unsafe { &mut *s };
    if quick_walk_into(&s.options, &mut s.walk) {
        return 0;
    }
    s.walker.reset();
    if s.options.len == 0 {
        // Nothing to walk: the loop's call is the costly part.
        s.walker.finish_into(&s.options, &mut s.walk);
        return 0;
    }
    // SAFETY: a constant bound and a callback of the right type.
    unsafe {
        bpf_loop(
            MAX_OPTION_STEPS as u32,
            walk_step as *mut _,
            core::ptr::null_mut(),
            0,
        );
    }
    s.walker.finish_into(&s.options, &mut s.walk);
    0
}

/// The scratch edit applied to the scratch options, which [`balancer_walk_options`] has
/// walked: their checksum delta in `delta`. 0 on success, 1 when the options cannot be
/// walked to their end (left as they were). (The walk is the caller's call: one global
/// function calling the other would add their frames on one call chain.)
#[no_mangle]
#[inline(never)]
pub extern "C" fn balancer_edit_options() -> i64 {
    let Some(s) = OPTION_SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    let s = unsafe { &mut *s };
    match apply_walked(&mut s.options, &s.walk, &s.edit) {
        Some(d) => {
            s.delta = d;
            0
        }
        None => 1,
    }
}

/// The walk of the options of the TCP header at `tcp_off`, or of no options if they are
/// not all in the frame: the scratch value, its `walk` filled in.
#[inline(always)]
pub fn walk_or_none(
    start: usize,
    end: usize,
    tcp_off: usize,
    opt_len: usize,
) -> Option<&'static mut OptionScratch> {
    let s = OPTION_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    let s = unsafe { &mut *s };
    s.options.load_into(start, end, tcp_off, opt_len);
    if balancer_walk_options() != 0 {
        return None;
    }
    Some(s)
}

/// The walk of the options of the TCP header at `tcp_off`, if they are all in the frame:
/// the scratch value, its `walk` filled in.
#[inline(always)]
pub fn walk(
    start: usize,
    end: usize,
    tcp_off: usize,
    opt_len: usize,
) -> Option<&'static mut OptionScratch> {
    let s = walk_or_none(start, end, tcp_off, opt_len)?;
    if s.options.len != opt_len {
        return None;
    }
    Some(s)
}

/// [`balancer_common::tcp_opts::translate`] in the BPF programs: the TCP header at
/// `tcp_off` in `[start, end)` (`opt_len` option bytes) translated by `e`; the TCP
/// checksum delta, or `None` with the frame untouched.
#[inline(always)]
pub fn translate(
    start: usize,
    end: usize,
    tcp_off: usize,
    opt_len: usize,
    e: &Edit,
) -> Option<u32> {
    if let Some(d) = translate_quick(start, end, tcp_off, opt_len, e) {
        return Some(d);
    }
    let s = OPTION_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    unsafe { (*s).edit = *e };
    translate_by_scratch(start, end, tcp_off, opt_len)
}

/// [`translate`] with the edit the caller has put in the scratch value (`set_edit`).
#[inline(always)]
pub fn translate_by_scratch(
    start: usize,
    end: usize,
    tcp_off: usize,
    opt_len: usize,
) -> Option<u32> {
    // The only check that can fail after the options changed is this one: made first.
    let win = ptr_at_mut::<u16>(start, end, tcp_off + 14)?;
    let s = OPTION_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    let s = unsafe { &mut *s };
    let mut delta = 0u32;
    if s.edit.flags & edit_flags::ANY != 0 {
        s.options.load_into(start, end, tcp_off, opt_len);
        if s.options.len != opt_len {
            return None;
        }
        s.delta = 0;
        if balancer_walk_options() != 0 || balancer_edit_options() != 0 {
            return None;
        }
        if s.delta != 0 {
            // Writes the words `load_into` read: inside the frame.
            s.options.store(start, end, tcp_off)?;
            delta += s.delta;
        }
    }
    // SAFETY: bounds-checked by ptr_at_mut above.
    delta += unsafe { rescale_window_at(win, s.edit.win_shift) };
    Some(delta)
}

/// The scratch value (for its `splice` and `edit`).
#[inline(always)]
pub fn scratch() -> Option<&'static mut OptionScratch> {
    let s = OPTION_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU scratch, used by this CPU only while the program runs.
    Some(unsafe { &mut *s })
}

/// Option bytes of the parsed TCP segment `pkt`.
#[inline(always)]
pub fn option_len(pkt: &Packet) -> usize {
    pkt.payload_off.saturating_sub(pkt.l4_off + 20)
}
