//! Weighted Maglev lookup tables with minimal-disruption updates.
//!
//! The data plane picks a new flow's backend as `table[flow_hash % RING_SIZE]`. Classic
//! Maglev (Eisenbud et al., NSDI 2016) fills the table by letting backends take turns
//! claiming their next preferred slot, each backend's preference order being a
//! permutation derived from its identity. Rebuilt from scratch after a change, it moves a
//! few percent more slots than the change needs.
//!
//! Here the table is updated from its current contents instead:
//! 1. each eligible backend gets an exact quota of slots, proportional to its weight
//!    (largest remainder for the leftovers);
//! 2. slots whose backend is still eligible and within quota keep it; the rest are freed;
//! 3. backends under quota take turns claiming free slots in their permutation order.
//!
//! So removing one of N equal backends moves exactly its 1/N of the slots and nothing
//! else, and adding one moves exactly the slots it needs. From an empty table, step 3 is
//! Maglev's own population with weighted quotas. Every decision is deterministic, so
//! the same sequence of changes gives the same table, and the table itself is kept in the
//! pinned map: a restarted control plane continues from it.

use balancer_common::hash::fnv1a64;

/// Slot value meaning "no backend": the data plane drops new flows that hit it.
pub const NO_BACKEND: u32 = u32::MAX;

/// A backend as the table builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Backend slot index: the value written into the table.
    pub slot: u32,
    /// Stable identity (hash of address and port): decides the permutation, so a backend
    /// prefers the same table slots whatever slot index it has.
    pub identity: u64,
    /// Relative weight; members with weight 0 get no slots.
    pub weight: u32,
}

impl Member {
    /// Identity of a backend from its address and port.
    pub fn identity_of(addr: std::net::Ipv4Addr, port: u16) -> u64 {
        let mut bytes = [0u8; 6];
        bytes[..4].copy_from_slice(&addr.octets());
        bytes[4..].copy_from_slice(&port.to_be_bytes());
        fnv1a64(&bytes, 0)
    }
}

/// Slot quotas: proportional to weight, summing to `size` (when any weight is non-zero).
fn quotas(members: &[Member], size: usize) -> Vec<usize> {
    let total: u64 = members.iter().map(|m| m.weight as u64).sum();
    if total == 0 {
        return vec![0; members.len()];
    }
    let mut quota: Vec<usize> = Vec::with_capacity(members.len());
    let mut remainders: Vec<(u64, usize)> = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        let exact = size as u64 * m.weight as u64;
        quota.push((exact / total) as usize);
        remainders.push((exact % total, i));
    }
    let mut left = size - quota.iter().sum::<usize>();
    // Largest remainder first; ties broken by member order (which is sorted by identity).
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in &remainders {
        if left == 0 {
            break;
        }
        if members[i].weight > 0 {
            quota[i] += 1;
            left -= 1;
        }
    }
    quota
}

/// Computes the new table from the current one (`current.len()` is the table size, a
/// prime) and the eligible members. Entries of `current` naming slots that are not
/// members count as free.
pub fn update(current: &[u32], members: &[Member]) -> Vec<u32> {
    let size = current.len();
    let mut members: Vec<Member> = members.to_vec();
    members.sort_by_key(|m| (m.identity, m.slot));
    let quota = quotas(&members, size);
    if quota.iter().all(|&q| q == 0) {
        return vec![NO_BACKEND; size];
    }

    // Map backend slot -> member index for the keep pass.
    let mut index_of = std::collections::HashMap::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        index_of.insert(m.slot, i);
    }

    let mut table = vec![NO_BACKEND; size];
    let mut held = vec![0usize; members.len()];
    for (pos, &slot) in current.iter().enumerate() {
        if let Some(&i) = index_of.get(&slot) {
            if held[i] < quota[i] {
                table[pos] = slot;
                held[i] += 1;
            }
        }
    }

    // Maglev permutation of each member: offset + j * skip (mod size), skip in 1..size,
    // which visits every position because size is prime.
    let perm: Vec<(u64, u64)> = members
        .iter()
        .map(|m| {
            let h2 = fnv1a64(&m.identity.to_le_bytes(), 0x6d61_676c_6576);
            (m.identity % size as u64, h2 % (size as u64 - 1) + 1)
        })
        .collect();
    let mut next = vec![0u64; members.len()];
    let mut free = table.iter().filter(|&&s| s == NO_BACKEND).count();
    while free > 0 {
        for i in 0..members.len() {
            if held[i] >= quota[i] {
                continue;
            }
            let (offset, skip) = perm[i];
            loop {
                let pos = ((offset + next[i] * skip) % size as u64) as usize;
                next[i] += 1;
                if table[pos] == NO_BACKEND {
                    table[pos] = members[i].slot;
                    held[i] += 1;
                    free -= 1;
                    break;
                }
            }
            if free == 0 {
                break;
            }
        }
    }
    table
}

/// How many table entries each slot holds.
pub fn shares(table: &[u32]) -> std::collections::HashMap<u32, usize> {
    // Counted in an array first: the daemon lists shares on every failover step, and a
    // hash-map update per entry (65,537 of them) cost milliseconds there.
    let mut counts = vec![0usize; balancer_common::MAX_BACKENDS as usize];
    let mut others = std::collections::HashMap::new();
    for &s in table {
        match counts.get_mut(s as usize) {
            Some(c) => *c += 1,
            None if s != NO_BACKEND => *others.entry(s).or_insert(0) += 1,
            None => {}
        }
    }
    others.extend(
        counts
            .into_iter()
            .enumerate()
            .filter(|(_, c)| *c > 0)
            .map(|(slot, c)| (slot as u32, c)),
    );
    others
}

#[cfg(test)]
mod tests {
    use super::*;
    use balancer_common::RING_SIZE;
    use std::net::Ipv4Addr;

    fn members(weights: &[u32]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| Member {
                slot: i as u32,
                identity: Member::identity_of(Ipv4Addr::new(198, 18, 1, 2 + i as u8), 8080),
                weight: w,
            })
            .collect()
    }

    fn empty() -> Vec<u32> {
        vec![NO_BACKEND; RING_SIZE as usize]
    }

    fn changed(a: &[u32], b: &[u32]) -> usize {
        a.iter().zip(b).filter(|(x, y)| x != y).count()
    }

    #[test]
    fn spread_follows_weights_within_one_slot() {
        for weights in [
            vec![1, 1, 1],
            vec![100, 200, 300, 400],
            vec![1, 10_000],
            vec![7; 13],
        ] {
            let m = members(&weights);
            let t = update(&empty(), &m);
            let total: u32 = weights.iter().sum();
            let s = shares(&t);
            for (i, &w) in weights.iter().enumerate() {
                let expect = RING_SIZE as f64 * w as f64 / total as f64;
                let got = *s.get(&(i as u32)).unwrap_or(&0) as f64;
                assert!(
                    (got - expect).abs() <= 1.0,
                    "weights {weights:?}: slot {i} {got} vs {expect}"
                );
            }
            assert!(t.iter().all(|&x| x != NO_BACKEND));
        }
    }

    #[test]
    fn removing_one_of_n_moves_exactly_its_slots() {
        for n in [2usize, 3, 5, 10] {
            let m = members(&vec![100; n]);
            let before = update(&empty(), &m);
            let victim = (n / 2) as u32;
            let rest: Vec<Member> = m.iter().copied().filter(|x| x.slot != victim).collect();
            let after = update(&before, &rest);
            let victim_share = before.iter().filter(|&&s| s == victim).count();
            // Everything that moved belonged to the removed backend, and nothing else moved.
            assert_eq!(changed(&before, &after), victim_share);
            for (x, y) in before.iter().zip(&after) {
                if x != y {
                    assert_eq!(*x, victim);
                }
            }
            let frac = victim_share as f64 / RING_SIZE as f64;
            assert!((frac - 1.0 / n as f64).abs() < 0.001, "n={n}: moved {frac}");
            assert!(!after.contains(&victim));
        }
    }

    #[test]
    fn adding_a_backend_moves_only_what_it_takes() {
        let m = members(&[100, 100, 100, 100]);
        let before = update(&empty(), &m[..3]);
        let after = update(&before, &m);
        let taken = after.iter().filter(|&&s| s == 3).count();
        assert_eq!(changed(&before, &after), taken);
        assert!((taken as f64 / RING_SIZE as f64 - 0.25).abs() < 0.001);
    }

    #[test]
    fn from_scratch_is_independent_of_member_order() {
        let m = members(&[3, 1, 2, 5]);
        let mut reversed = m.clone();
        reversed.reverse();
        assert_eq!(update(&empty(), &m), update(&empty(), &reversed));
    }

    #[test]
    fn no_eligible_member_empties_the_table() {
        let m = members(&[0, 0]);
        assert!(update(&empty(), &m).iter().all(|&s| s == NO_BACKEND));
        assert!(update(&empty(), &[]).iter().all(|&s| s == NO_BACKEND));
    }

    #[test]
    fn stale_entries_of_non_members_are_replaced() {
        let mut t = empty();
        t[..1000].fill(4000); // left by a removed service
        let m = members(&[1, 1]);
        let out = update(&t, &m);
        assert!(!out.contains(&4000));
        let s = shares(&out);
        assert!((s[&0] as i64 - s[&1] as i64).abs() <= 1);
    }
}
