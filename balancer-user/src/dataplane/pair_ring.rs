//! The PAIRS ring buffer, in which the data plane samples the primary/secondary token
//! hashes of session cookies; the daemon's pair table (daemon/pairs.rs) learns from it.

use std::{os::fd::AsRawFd, path::Path};

use aya::maps::{Map, MapData, RingBuf};
use balancer_common::{map_names, CookiePair};
use tokio::io::{unix::AsyncFd, Interest};

use crate::error::{io_ctx, map_ctx, Result};

/// Reader of the data plane's PAIRS ring buffer. It holds only the map, not the instance
/// lock, so the CLI keeps working while the daemon reads.
pub struct PairReader {
    ring: AsyncFd<RingBuf<MapData>>,
}

impl PairReader {
    /// Opens the pinned ring buffer of the instance at `dir`. Needs a tokio runtime.
    pub fn open(dir: &Path) -> Result<PairReader> {
        let path = dir.join(map_names::PAIRS);
        let data = MapData::from_pin(&path)
            .map_err(map_ctx(format!("opening pinned map {}", map_names::PAIRS)))?;
        let map = Map::from_map_data(data).map_err(map_ctx("PAIRS map"))?;
        let ring = RingBuf::try_from(map).map_err(map_ctx("PAIRS map"))?;
        let fd = ring.as_raw_fd();
        // SAFETY: the ring buffer owns its map fd, which stays open and the same for as
        // long as the ring (moved into the AsyncFd) lives.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| io_ctx(format!("polling PAIRS (fd {fd})"))(e.into()))?;
        Ok(PairReader { ring })
    }

    /// Waits for reports and returns those available (at least one).
    pub async fn next_batch(&mut self) -> Result<Vec<CookiePair>> {
        loop {
            let mut guard = self
                .ring
                .readable_mut()
                .await
                .map_err(io_ctx("waiting for PAIRS"))?;
            let ring = guard.get_inner_mut();
            let mut out = Vec::new();
            while let Some(item) = ring.next() {
                if let Some(pair) = decode_pair(&item) {
                    out.push(pair);
                }
            }
            guard.clear_ready();
            if !out.is_empty() {
                return Ok(out);
            }
        }
    }
}

fn decode_pair(bytes: &[u8]) -> Option<CookiePair> {
    if bytes.len() != std::mem::size_of::<CookiePair>() {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(bytes[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_ne_bytes(bytes[o..o + 8].try_into().unwrap());
    Some(CookiePair {
        service: u32_at(0),
        _pad: 0,
        primary: u64_at(8),
        secondary: u64_at(16),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_records_decode() {
        let mut bytes = vec![0u8; 24];
        bytes[0..4].copy_from_slice(&7u32.to_ne_bytes());
        bytes[8..16].copy_from_slice(&1u64.to_ne_bytes());
        bytes[16..24].copy_from_slice(&2u64.to_ne_bytes());
        let p = decode_pair(&bytes).unwrap();
        assert_eq!((p.service, p.primary, p.secondary), (7, 1, 2));
        assert_eq!(decode_pair(&bytes[..23]), None);
    }
}
