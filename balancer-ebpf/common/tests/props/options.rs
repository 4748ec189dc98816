//! `tcp_opts`: the option walk and the splice's translation on option soup, against
//! etherparse's checksums: whatever the options, a translation either leaves the frame
//! exactly as it was or leaves it with a valid checksum, and the quick path for the
//! layouts real stacks send agrees with the general walk byte for byte.

use proptest::prelude::*;
use std::{vec, vec::Vec};

use balancer_common::{
    csum::apply_delta,
    parse::parse_slice,
    tcp_opts::{
        edit_flags, translate, translate_general, translate_quick, walk, Edit, OptionBytes,
    },
};
use etherparse::PacketBuilder;

/// A client -> backend TCP frame with raw option bytes (padded with EOL to whole words).
fn frame(options: &[u8], payload: &[u8]) -> Vec<u8> {
    let mut o = options.to_vec();
    o.truncate(40);
    while !o.len().is_multiple_of(4) {
        o.push(0);
    }
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 18, 0, 2], [198, 18, 1, 10], 64)
        .tcp(40000, 8080, 1000, 4000)
        .ack(77)
        .write(&mut f, &[])
        .unwrap();
    // Options and payload spliced in by hand (etherparse refuses malformed options).
    let l4 = 34;
    f.truncate(l4 + 20);
    f.extend_from_slice(&o);
    f.extend_from_slice(payload);
    f[l4 + 12] = ((5 + o.len() / 4) as u8) << 4;
    let tot = (f.len() - 14) as u16;
    f[16..18].copy_from_slice(&tot.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let c = balancer_common::csum::checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    fix_tcp_checksum(&mut f);
    f
}

fn tcp_checksum_of(f: &[u8]) -> u16 {
    let seg = &f[34..];
    let mut pseudo = vec![0u8; 12];
    pseudo[..4].copy_from_slice(&f[26..30]);
    pseudo[4..8].copy_from_slice(&f[30..34]);
    pseudo[9] = 6;
    pseudo[10..].copy_from_slice(&(seg.len() as u16).to_be_bytes());
    let mut s = seg.to_vec();
    s[16..18].copy_from_slice(&[0, 0]);
    balancer_common::csum::checksum(&s, !balancer_common::csum::checksum(&pseudo, 0) as u32)
}

fn fix_tcp_checksum(f: &mut [u8]) {
    let c = tcp_checksum_of(f);
    f[50..52].copy_from_slice(&c.to_be_bytes());
}

/// Applies a translation's delta to the frame's TCP checksum (as the data plane does).
fn apply(f: &mut [u8], delta: u32) {
    let c = u16::from_ne_bytes([f[50], f[51]]);
    f[50..52].copy_from_slice(&apply_delta(c, delta).to_ne_bytes());
}

fn edit() -> impl Strategy<Value = Edit> {
    (
        0u8..16,
        any::<bool>(),
        any::<u32>(),
        any::<u32>(),
        -14i8..=14,
    )
        .prop_map(|(f, to_client, ts_offset, sack_delta, win_shift)| Edit {
            flags: f << 4,
            to_client,
            ts_offset,
            sack_delta,
            win_shift,
        })
}

/// Option soup: kinds from the ones that matter, lengths right, wrong, zero or too big.
fn soup() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            Just(vec![1u8]),
            Just(vec![0u8]),
            any::<[u8; 10]>().prop_map(|b| [vec![8u8, 10], b[..8].to_vec()].concat()),
            (1u8..5, any::<[u8; 32]>()).prop_map(|(n, b)| {
                let len = 2 + 8 * n as usize;
                [vec![5u8, len as u8], b[..len - 2].to_vec()].concat()
            }),
            (any::<u8>(), any::<u8>(), any::<[u8; 8]>()).prop_map(|(k, l, b)| [
                vec![k, l],
                b.to_vec()
            ]
            .concat()),
        ],
        0..8,
    )
    .prop_map(|opts| opts.concat())
}

/// The TCP header of `f` as the data plane sees it.
fn tcp_of(f: &[u8]) -> (usize, usize) {
    let p = parse_slice(f).unwrap();
    (p.l4_off, p.payload_off - p.l4_off - 20)
}

proptest! {
    #![proptest_config(crate::config(2000))]

    /// On any options: the frame is untouched (`None`), or its TCP checksum is still valid
    /// once the delta is applied, and nothing outside the options and window changed.
    #[test]
    fn translation_of_soup_is_all_or_nothing(opts in soup(), e in edit(), payload in prop::collection::vec(any::<u8>(), 0..40)) {
        let original = frame(&opts, &payload);
        let mut f = original.clone();
        let (l4, opt_len) = tcp_of(&f);
        let start = f.as_mut_ptr() as usize;
        let end = start + f.len();
        match translate(start, end, l4, opt_len, &e) {
            None => prop_assert_eq!(&f, &original),
            Some(delta) => {
                apply(&mut f, delta);
                prop_assert_eq!(u16::from_be_bytes([f[50], f[51]]), tcp_checksum_of(&f));
                // Outside the window and the options, the frame is as it was.
                prop_assert_eq!(&f[..48], &original[..48]);
                prop_assert_eq!(&f[l4 + 20 + opt_len..], &original[l4 + 20 + opt_len..]);
                // The option area still walks the same way.
                let before = OptionBytes::from_slice(&original[l4 + 20..l4 + 20 + opt_len]);
                let after = OptionBytes::from_slice(&f[l4 + 20..l4 + 20 + opt_len]);
                let (wb, wa) = (walk(&before), walk(&after));
                if e.flags & (edit_flags::TS_STRIP | edit_flags::SACK_STRIP) == 0 {
                    prop_assert_eq!((wb.ts_at, wb.sack_at, wb.complete), (wa.ts_at, wa.sack_at, wa.complete));
                }
            }
        }
    }

    /// Linux's layouts (timestamps, and 0 to 3 SACK blocks): the quick path gives the
    /// general walk's bytes exactly, and the walk never fails on them.
    #[test]
    fn quick_path_agrees_with_the_walk(ts in any::<[u8; 8]>(), blocks in prop::collection::vec(any::<[u8; 8]>(), 0..4), e in edit()) {
        let mut opts = vec![1u8, 1, 8, 10];
        opts.extend_from_slice(&ts);
        if !blocks.is_empty() {
            opts.extend_from_slice(&[1, 1, 5, (2 + 8 * blocks.len()) as u8]);
            for b in &blocks {
                opts.extend_from_slice(b);
            }
        }
        let e = Edit { flags: e.flags & (edit_flags::TS_SHIFT | edit_flags::SACK_SHIFT), ..e };
        let mut quick = frame(&opts, b"data");
        let mut general = quick.clone();
        let (l4, opt_len) = tcp_of(&quick);
        let s = quick.as_mut_ptr() as usize;
        let dq = translate_quick(s, s + quick.len(), l4, opt_len, &e);
        let s = general.as_mut_ptr() as usize;
        let dg = translate_general(s, s + general.len(), l4, opt_len, &e);
        prop_assert!(dq.is_some() && dg.is_some());
        apply(&mut quick, dq.unwrap());
        apply(&mut general, dg.unwrap());
        prop_assert_eq!(&quick, &general);
        prop_assert_eq!(u16::from_be_bytes([quick[50], quick[51]]), tcp_checksum_of(&quick));
    }
}
