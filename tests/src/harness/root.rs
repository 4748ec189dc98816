//! The one root check of the test bed. Namespaces, XDP attachment, bpffs pins and
//! BPF_PROG_TEST_RUN all need root; failing early with the reason beats an `EPERM` from
//! the middle of a topology's setup.
//!
//! Two shapes over the same check: [`require_root`] for tools and library code that
//! return errors, [`assert_root`] for tests, which panic.

use anyhow::{bail, Result};

/// Fails with a clear message unless the effective uid is 0.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        bail!(
            "must run as root (effective uid {euid}): the test bed creates network \
             namespaces, attaches XDP programs, pins maps on bpffs and runs \
             BPF_PROG_TEST_RUN"
        );
    }
    Ok(())
}

/// [`require_root`] for tests: panics with the reason and how to run them.
pub fn assert_root() {
    if let Err(e) = require_root() {
        panic!(
            "these tests need root: {e:#}. Run them as root, e.g. `sudo -E cargo test \
             --release -p balancer-tests --test <target>`"
        );
    }
}
