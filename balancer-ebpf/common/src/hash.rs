//! Flow hashing for consistent-hash backend selection.
//!
//! The data plane hashes the client side of the 5-tuple to pick a slot in the service's
//! Maglev table; userspace uses the same function to explain decisions (`balancer flows`)
//! and in tests. Straight-line arithmetic only, so the verifier sees no loops.

use crate::{FlowKey, Service, SERVICE_F_SOURCE, SERVICE_PREFIX_MASK, SERVICE_PREFIX_SHIFT};

/// murmur3's 32-bit finaliser: full avalanche, five operations.
#[inline(always)]
pub fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

/// Hash of a flow's 5-tuple (as stored in the key: network byte order fields read
/// natively). Only the hash's distribution matters, not its value across hosts.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = fmix32(key.src ^ 0x9e37_79b9);
    h = fmix32(h ^ key.dst);
    h = fmix32(h ^ ((key.sport as u32) << 16 | key.dport as u32) ^ ((key.proto as u32) << 8));
    h
}

/// Hash of a client address (network byte order, read natively) masked to its first
/// `prefix` bits (1..=32; larger counts as 32): source-address persistence. Arithmetic
/// only, so the same client gets the same hash on every node and after restarts.
#[inline(always)]
pub fn source_hash(src: u32, prefix: u32) -> u32 {
    let host_order = u32::from_be(src);
    let masked = if prefix >= 32 {
        host_order
    } else {
        // prefix 0 is refused by the control plane; it would send everyone to one backend.
        host_order & !(u32::MAX >> prefix)
    };
    fmix32(fmix32(masked ^ 0x85eb_ca6b) ^ 0x9e37_79b9)
}

/// The hash that picks a new flow's slot in `service`'s Maglev table: the client's
/// (masked) address for a source-persistent service, the 5-tuple otherwise.
#[inline(always)]
pub fn new_flow_hash(service: &Service, key: &FlowKey) -> u32 {
    if service.flags & SERVICE_F_SOURCE != 0 {
        source_hash(
            key.src,
            (service.flags >> SERVICE_PREFIX_SHIFT) & SERVICE_PREFIX_MASK,
        )
    } else {
        flow_hash(key)
    }
}

/// 64-bit FNV-1a, for hashing backend identities and other byte strings in userspace
/// (Maglev permutations). Deterministic across runs and hosts.
pub fn fnv1a64(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits are weak for short inputs; finish with a 64-bit mix (splitmix64).
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_hash_spreads_source_ports_evenly() {
        const BUCKETS: usize = 16;
        let mut counts = [0u32; BUCKETS];
        let n = 64_000u32;
        for port in 0..n {
            let key = FlowKey::new(
                u32::from_ne_bytes([198, 18, 0, 2]),
                u32::from_ne_bytes([198, 18, 100, 1]),
                (port as u16).to_be(),
                80u16.to_be(),
                6,
            );
            counts[(flow_hash(&key) % BUCKETS as u32) as usize] += 1;
        }
        let expected = n as f64 / BUCKETS as f64;
        for c in counts {
            let dev = (c as f64 - expected).abs() / expected;
            assert!(
                dev < 0.05,
                "bucket off by {:.1}%: {:?}",
                dev * 100.0,
                counts
            );
        }
    }

    fn key(src: [u8; 4], sport: u16) -> FlowKey {
        FlowKey::new(
            u32::from_ne_bytes(src),
            u32::from_ne_bytes([198, 18, 100, 1]),
            sport.to_be(),
            80u16.to_be(),
            6,
        )
    }

    fn persistent(prefix: u32) -> Service {
        Service {
            id: 0,
            flags: SERVICE_F_SOURCE | prefix << SERVICE_PREFIX_SHIFT,
        }
    }

    #[test]
    fn source_persistence_ignores_ports_and_bits_past_the_prefix() {
        let s32 = persistent(32);
        let s24 = persistent(24);
        let plain = Service { id: 0, flags: 0 };
        let a = key([198, 18, 0, 2], 40000);
        let same_client = key([198, 18, 0, 2], 51234);
        let neighbour = key([198, 18, 0, 77], 40000);
        assert_eq!(new_flow_hash(&s32, &a), new_flow_hash(&s32, &same_client));
        assert_ne!(new_flow_hash(&s32, &a), new_flow_hash(&s32, &neighbour));
        assert_eq!(new_flow_hash(&s24, &a), new_flow_hash(&s24, &neighbour));
        assert_ne!(
            new_flow_hash(&s24, &a),
            new_flow_hash(&s24, &key([198, 18, 1, 2], 40000))
        );
        assert_eq!(new_flow_hash(&plain, &a), flow_hash(&a));
        assert_ne!(
            new_flow_hash(&plain, &a),
            new_flow_hash(&plain, &same_client)
        );
    }

    #[test]
    fn source_hash_spreads_clients_evenly() {
        const BUCKETS: usize = 16;
        let mut counts = [0u32; BUCKETS];
        let n = 64_000u32;
        for i in 0..n {
            let src = u32::from_be_bytes([10, (i >> 16) as u8, (i >> 8) as u8, i as u8]).to_be();
            counts[(source_hash(src, 32) % BUCKETS as u32) as usize] += 1;
        }
        let expected = n as f64 / BUCKETS as f64;
        for c in counts {
            assert!((c as f64 - expected).abs() / expected < 0.05, "{counts:?}");
        }
    }

    #[test]
    fn fnv_depends_on_seed_and_input() {
        assert_ne!(fnv1a64(b"a", 0), fnv1a64(b"a", 1));
        assert_ne!(fnv1a64(b"a", 0), fnv1a64(b"b", 0));
        assert_eq!(fnv1a64(b"abc", 7), fnv1a64(b"abc", 7));
    }
}
