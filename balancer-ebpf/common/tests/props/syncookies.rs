//! `syncookie`: what a cookie validates for, and the MSS table (in the timestamps layout;
//! the options layout's own round trip is a unit test of `syncookie.rs`).
//!
//! A cookie is a 29-bit keyed hash, so any "must not validate" check can fail by chance
//! (about 4 * 2^-29 per check: two windows, two secrets). A failure is only reported when
//! the same change is refused neither on the input nor on a second, independent input
//! (another client ISN): a real defect (a field or bit left out of the hash, a window
//! too many) shows on both, a collision on both has odds of about 2^-54.

use core::hash::Hasher;
use proptest::prelude::*;
use std::vec;

use balancer_common::syncookie::*;

#[derive(Clone, Copy, Debug)]
struct Input {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    isn: u32,
    t: u32,
    index: u32,
}

impl Input {
    fn cookie(&self, secret: &CookieSecret) -> u32 {
        make_cookie(
            secret,
            self.saddr,
            self.daddr,
            self.sport,
            self.dport,
            self.isn,
            self.t,
            self.index,
            CookieLayout::Timestamps,
        )
    }

    fn check(&self, keys: &SyncookieKeys, cookie: u32, now_t: u32) -> Option<u16> {
        check_cookie(
            keys,
            self.saddr,
            self.daddr,
            self.sport,
            self.dport,
            self.isn,
            cookie,
            now_t,
            CookieLayout::Timestamps,
        )
        .map(|d| d.mss)
    }

    /// The independent second input of the module documentation.
    fn other(&self) -> Input {
        Input {
            isn: self.isn ^ 0x9e37_79b9,
            ..*self
        }
    }
}

fn input() -> impl Strategy<Value = Input> {
    (
        (any::<u32>(), any::<u32>(), any::<u16>(), any::<u16>()),
        (any::<u32>(), any::<u32>(), 0u32..6),
    )
        .prop_map(|((saddr, daddr, sport, dport), (isn, t, index))| Input {
            saddr,
            daddr,
            sport,
            dport,
            isn,
            t,
            index,
        })
}

fn secret() -> impl Strategy<Value = CookieSecret> {
    (any::<u64>(), any::<u64>())
        .prop_filter("set", |(k0, k1)| k0 | k1 != 0)
        .prop_map(|(k0, k1)| CookieSecret { k0, k1 })
}

/// Keys with a set current secret and a previous one that is set or not.
fn keys() -> impl Strategy<Value = SyncookieKeys> {
    (
        secret(),
        prop_oneof![3 => secret(), 1 => Just(CookieSecret::default())],
    )
        .prop_map(|(current, previous)| SyncookieKeys { current, previous })
}

/// Ways to present a cookie for something it was not made for.
#[derive(Clone, Debug)]
enum Change {
    Saddr(u32),
    Daddr(u32),
    Sport(u16),
    Dport(u16),
    Isn(u32),
    /// One bit of one of the five fields above (0..=4).
    FieldBit(u8, u8),
    /// Addresses swapped, or ports swapped (the other direction's tuple).
    SwapAddrs,
    SwapPorts,
    /// Checked at `t + d`, `d` not 0 or 1 (two windows late, or early).
    Window(u32),
    /// Made under a secret that is neither current nor previous.
    Secret(CookieSecret),
    /// Made under the all-zero key, which is `previous` here ("not set").
    UnsetSecret,
    /// Made under the all-zero key, which is `current` here.
    UnsetCurrent,
    /// One hash bit of the cookie flipped (bits 3..32).
    CookieBit(u8),
    /// MSS index 6 or 7.
    BadIndex(u32),
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        any::<u32>().prop_map(Change::Saddr),
        any::<u32>().prop_map(Change::Daddr),
        any::<u16>().prop_map(Change::Sport),
        any::<u16>().prop_map(Change::Dport),
        any::<u32>().prop_map(Change::Isn),
        (0u8..5, 0u8..32).prop_map(|(f, b)| Change::FieldBit(f, b)),
        Just(Change::SwapAddrs),
        Just(Change::SwapPorts),
        prop_oneof![2u32..5, (2u32..u32::MAX)].prop_map(Change::Window),
        secret().prop_map(Change::Secret),
        Just(Change::UnsetSecret),
        Just(Change::UnsetCurrent),
        (3u8..32).prop_map(Change::CookieBit),
        (6u32..8).prop_map(Change::BadIndex),
    ]
}

/// Applies `c` to a cookie made for `base` under `keys.current`: returns what the check
/// says, or `None` if the change leaves everything as it was (nothing to test).
fn changed_check(keys: &SyncookieKeys, base: &Input, c: &Change) -> Option<Option<u16>> {
    let mut keys = *keys;
    let mut cookie = base.cookie(&keys.current);
    let mut at = *base;
    let mut now_t = base.t;
    match *c {
        Change::Saddr(v) => at.saddr = v,
        Change::Daddr(v) => at.daddr = v,
        Change::Sport(v) => at.sport = v,
        Change::Dport(v) => at.dport = v,
        Change::Isn(v) => at.isn = v,
        Change::FieldBit(field, bit) => match field {
            0 => at.saddr ^= 1 << bit,
            1 => at.daddr ^= 1 << bit,
            2 => at.sport ^= 1 << (bit % 16),
            3 => at.dport ^= 1 << (bit % 16),
            _ => at.isn ^= 1 << bit,
        },
        Change::SwapAddrs => core::mem::swap(&mut at.saddr, &mut at.daddr),
        Change::SwapPorts => core::mem::swap(&mut at.sport, &mut at.dport),
        Change::Window(d) => now_t = base.t.wrapping_add(d),
        Change::Secret(s) => {
            if s == keys.current || s == keys.previous {
                return None;
            }
            cookie = base.cookie(&s);
        }
        Change::UnsetSecret => {
            keys.previous = CookieSecret::default();
            cookie = base.cookie(&keys.previous);
        }
        Change::UnsetCurrent => {
            keys.current = CookieSecret::default();
            cookie = base.cookie(&keys.current);
        }
        Change::CookieBit(bit) => cookie ^= 1 << bit,
        Change::BadIndex(i) => cookie = (cookie & !MSS_INDEX_MASK) | i,
    }
    let same_tuple = (at.saddr, at.daddr, at.sport, at.dport, at.isn)
        == (base.saddr, base.daddr, base.sport, base.dport, base.isn);
    if same_tuple
        && matches!(
            c,
            Change::Saddr(_)
                | Change::Daddr(_)
                | Change::Sport(_)
                | Change::Dport(_)
                | Change::Isn(_)
                | Change::SwapAddrs
                | Change::SwapPorts
        )
    {
        return None;
    }
    Some(at.check(&keys, cookie, now_t))
}

proptest! {
    #![proptest_config(super::config(5_000))]

    /// A cookie validates, with the MSS of its index, in its own window and the next one,
    /// under the current secret and under the previous one (if set); its low 3 bits are
    /// the index.
    #[test]
    fn validates_for_its_own_inputs(keys in keys(), i in input(), previous in prop::bool::ANY) {
        let secret = if previous && keys.previous.is_set() { keys.previous } else { keys.current };
        let cookie = i.cookie(&secret);
        prop_assert_eq!(cookie & MSS_INDEX_MASK, i.index);
        let mss = Some(MSS_TABLE[i.index as usize]);
        prop_assert_eq!(i.check(&keys, cookie, i.t), mss);
        prop_assert_eq!(i.check(&keys, cookie, i.t.wrapping_add(1)), mss);
        // Another table index in the low bits is accepted with that MSS (documented: the
        // index is not covered by the hash).
        for j in 0..6u32 {
            let claimed = (cookie & !MSS_INDEX_MASK) | j;
            prop_assert_eq!(i.check(&keys, claimed, i.t), Some(MSS_TABLE[j as usize]));
        }
    }

    /// Any change of the tuple, the ISN, the window, the secret or a hash bit, and an
    /// index outside the table: refused.
    #[test]
    fn refused_for_anything_else(keys in keys(), i in input(), c in change()) {
        let Some(first) = changed_check(&keys, &i, &c) else { return Ok(()) };
        if first.is_some() {
            let second = changed_check(&keys, &i.other(), &c);
            prop_assert!(
                second.is_none() || second == Some(None),
                "accepted after {:?} (twice: not a collision)", c
            );
        }
    }

    /// Cookie lifetime in clock time: made at `now`, checked `d` ns later, valid when the
    /// window moved by 0 or 1 (always for d < 64 s, never for d >= 128 s).
    #[test]
    fn lifetime_in_nanoseconds(keys in keys(), i in input(), now in any::<u64>(), d in 0u64..(4 * COOKIE_WINDOW_NS)) {
        let now = now >> 2; // room to add d
        let made = Input { t: time_window(now), ..i };
        let cookie = made.cookie(&keys.current);
        let moved = time_window(now + d).wrapping_sub(made.t);
        prop_assert!(moved <= 4);
        let r = made.check(&keys, cookie, time_window(now + d));
        if moved <= 1 {
            prop_assert_eq!(r, Some(MSS_TABLE[i.index as usize]));
            prop_assert!(d < 2 * COOKIE_WINDOW_NS);
        } else if r.is_some() {
            let other = made.other();
            let cookie = other.cookie(&keys.current);
            prop_assert_eq!(other.check(&keys, cookie, time_window(now + d)), None,
                "valid {} windows later", moved);
        }
        if d < COOKIE_WINDOW_NS {
            prop_assert!(moved <= 1);
        }
    }

    /// `siphash24` is SipHash-2-4 (std's `SipHasher`) for random keys and messages of the
    /// lengths around the block boundaries and the cookie's 20 bytes.
    #[test]
    #[allow(deprecated)]
    fn siphash_matches_std(k0 in any::<u64>(), k1 in any::<u64>(), m in any::<[u8; 32]>()) {
        fn one<const N: usize>(k0: u64, k1: u64, m: &[u8; 32]) -> Result<(), TestCaseError> {
            let msg: [u8; N] = m[..N].try_into().unwrap();
            let mut std_hasher = core::hash::SipHasher::new_with_keys(k0, k1);
            std_hasher.write(&msg);
            prop_assert_eq!(siphash24(k0, k1, &msg), std_hasher.finish(), "length {}", N);
            Ok(())
        }
        one::<0>(k0, k1, &m)?;
        one::<1>(k0, k1, &m)?;
        one::<7>(k0, k1, &m)?;
        one::<8>(k0, k1, &m)?;
        one::<9>(k0, k1, &m)?;
        one::<16>(k0, k1, &m)?;
        one::<20>(k0, k1, &m)?;
        one::<31>(k0, k1, &m)?;
        one::<32>(k0, k1, &m)?;
    }
}

/// Every MSS a client can send (all of u16): encoded to an index of the table whose value
/// is the largest table entry not above it (536 for anything below 536), and decoded back
/// to that value; indices 6 and 7 decode to nothing.
#[test]
fn mss_round_trip_is_the_largest_table_value_not_above() {
    for mss in 0..=u16::MAX {
        let index = encode_mss(mss);
        assert!(index < 6, "{mss}: index {index}");
        let back = decode_mss(index).unwrap();
        let expected = MSS_TABLE
            .iter()
            .copied()
            .filter(|&m| m <= mss)
            .max()
            .unwrap_or(MSS_TABLE[0]);
        assert_eq!(back, expected, "{mss}");
        assert!(
            back <= mss || mss < MSS_TABLE[0],
            "{mss} rounded up to {back}"
        );
    }
    for index in 6..=255u32 {
        assert_eq!(decode_mss(index), None);
    }
}
