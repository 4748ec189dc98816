//! Bulk map access (the scale benchmark): batched updates and a map's memory use.

use super::*;

// --- Bulk map access (the scale benchmark) ------------------------------------------

/// `union bpf_attr` as `BPF_MAP_*_BATCH` reads it.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    pub(super) keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Writes `keys[i] -> values[i]` (flag `BPF_ANY`) into the map behind `fd` with
/// `BPF_MAP_UPDATE_BATCH`: one syscall per 64k entries instead of one per entry (aya 0.14
/// has no batch operations). Fails on the first entry the kernel refuses.
pub fn map_update_batch<K: aya::Pod, V: aya::Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
    keys: &[K],
    values: &[V],
) -> Result<()> {
    use std::os::fd::AsRawFd as _;
    if keys.len() != values.len() {
        bail!("{} keys but {} values", keys.len(), values.len());
    }
    for (k, v) in keys.chunks(65_536).zip(values.chunks(65_536)) {
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        // SAFETY: attr points to valid key/value arrays of `count` elements of the map's
        // key and value sizes; the kernel only reads them (and writes `count` back).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_UPDATE_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>() as u32,
            )
        };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            bail!(
                "BPF_MAP_UPDATE_BATCH: {e} after {} of {} entries of this chunk",
                attr.count,
                k.len()
            );
        }
        if attr.count as usize != k.len() {
            bail!(
                "BPF_MAP_UPDATE_BATCH wrote {} of {} entries",
                attr.count,
                k.len()
            );
        }
    }
    Ok(())
}

/// The kernel's estimate of a map's memory (`memlock` in `/proc/self/fdinfo/<fd>`, from
/// the map type's `map_mem_usage`), in bytes.
pub fn map_memlock(fd: std::os::fd::BorrowedFd<'_>) -> Result<u64> {
    use std::os::fd::AsRawFd as _;
    let path = format!("/proc/self/fdinfo/{}", fd.as_raw_fd());
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no memlock line in {path}"))
}
