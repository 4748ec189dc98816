//! Code shared by the XDP program and userspace.
//!
//! Everything here is `no_std` and free of BPF helpers, so the exact functions the XDP
//! program runs (header parsing, checksum arithmetic, flow hashing) are unit-tested and
//! fuzzed on the host. The `#[repr(C)]` types are the layout of the pinned maps; they have
//! no implicit padding (checked by `const` assertions in [`types`]).
#![no_std]

#[cfg(test)]
extern crate std;

pub mod cookie;
pub mod csum;
pub mod flow;
pub mod hash;
pub mod parse;
pub mod syncookie;
pub mod tcp_opts;
pub mod tcp_reply;
pub mod types;

pub use types::*;

/// The items every BPF object of the project ends with: a panic handler (BPF programs
/// cannot unwind; the verifier rejects any path that would reach it) and the license
/// section the kernel reads to allow GPL-only helpers.
#[macro_export]
macro_rules! bpf_object {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
