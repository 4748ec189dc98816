use super::*;
use crate::csum::{apply_delta, checksum};
use std::vec::Vec;

/// Options as raw bytes, padded with EOL to whole words.
fn opts(bytes: &[u8]) -> OptionBytes {
    let mut b = bytes.to_vec();
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
    OptionBytes::from_slice(&b)
}

fn bytes(o: &OptionBytes) -> Vec<u8> {
    o.to_bytes()[..o.len].to_vec()
}

const TS: [u8; 10] = [8, 10, 0, 0, 0x10, 0x00, 0, 0, 0x20, 0x00];

#[test]
fn walk_finds_linux_syn_options() {
    let o = opts(&[
        2, 4, 5, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 0, 0, 0, 0, 1, 3, 3, 7,
    ]);
    let w = walk(&o);
    assert_eq!(w.mss, Some(1460));
    assert_eq!(w.wscale, Some(7));
    assert!(w.sack_ok && w.complete);
    assert_eq!(w.ts_at, Some(6));
    assert_eq!(w.timestamps(&o), Some((0x0102_0304, 0)));
    assert_eq!(
        ClientOptions::of_syn(&w),
        ClientOptions {
            wscale: Some(7),
            sack_ok: true,
            timestamps: true
        }
    );
}

#[test]
fn walk_of_an_ack_with_timestamps_and_sack() {
    let mut b = std::vec![1, 1];
    b.extend_from_slice(&TS);
    b.extend_from_slice(&[1, 1, 5, 18]);
    b.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4]);
    let o = opts(&b);
    let w = walk(&o);
    assert!(w.complete);
    assert_eq!((w.ts_at, w.sack_at, w.sack_blocks), (Some(2), Some(14), 2));
}

#[test]
fn walk_of_option_soup() {
    // Each: the options, whether the walk completes, and what it found.
    let cases: &[(&str, &[u8], bool)] = &[
        ("empty", &[], true),
        ("EOL first", &[0, 8, 10], true),
        ("zero length", &[3, 0, 1, 1], false),
        ("length one", &[3, 1, 1, 1], false),
        ("past the area", &[1, 1, 8, 10, 0, 0, 0, 0], false),
        ("MSS of length 3", &[2, 3, 5, 0], false),
        ("timestamps of length 8", &[8, 8, 0, 0, 0, 0, 0, 0], false),
        (
            "SACK of length 9",
            &[5, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            false,
        ),
        ("unknown kind, well formed", &[254, 6, 1, 2, 3, 4], true),
        ("40 NOPs: more steps than allowed", &[1; 40], false),
    ];
    for (what, b, complete) in cases {
        let w = walk(&opts(b));
        assert_eq!(w.complete, *complete, "{what}: {w:?}");
    }
    // A second timestamps option: incomplete, so never half-translated.
    let mut b = TS.to_vec();
    b.extend_from_slice(&[1, 1]);
    b.extend_from_slice(&TS);
    assert!(!walk(&opts(&b)).complete);
    // A duplicate MSS: the first counts.
    let w = walk(&opts(&[2, 4, 5, 0xb4, 2, 4, 2, 0x18]));
    assert_eq!((w.mss, w.complete), (Some(1460), true));
}

/// Checks the delta `apply` returned against the checksum of the bytes before and after.
fn check_delta(before: &[u8], after: &[u8], delta: u32) {
    let c_before = checksum(before, 0);
    let c_after = checksum(after, 0);
    // Memory-order arithmetic (as in csum.rs) on a host-order checksum: swap around it.
    let updated = u16::from_be(apply_delta(c_before.to_be(), delta));
    assert_eq!(updated, c_after, "{before:02x?} -> {after:02x?}");
}

#[test]
fn apply_shifts_timestamps_each_way() {
    let mut b = std::vec![1, 1];
    b.extend_from_slice(&TS);
    for (to_client, want) in [
        (true, [1u8, 1, 8, 10, 0, 0, 0x10, 0x05, 0, 0, 0x20, 0x00]),
        (false, [1u8, 1, 8, 10, 0, 0, 0x10, 0x00, 0, 0, 0x1f, 0xfb]),
    ] {
        let mut o = opts(&b);
        let before = bytes(&o).to_vec();
        let e = Edit {
            flags: edit_flags::TS_SHIFT,
            to_client,
            ts_offset: 5,
            sack_delta: 0,
            win_shift: 0,
        };
        let d = apply(&mut o, &e).expect("walkable");
        assert_eq!(bytes(&o), want[..]);
        check_delta(&before, &bytes(&o), d);
    }
}

#[test]
fn apply_shifts_sack_blocks_and_strips() {
    // Timestamps at an odd offset (one NOP before), then two SACK blocks.
    let mut b = std::vec![1];
    b.extend_from_slice(&TS);
    b.extend_from_slice(&[1, 5, 18]);
    b.extend_from_slice(&[0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 4, 0]);
    let mut o = opts(&b);
    let before = bytes(&o).to_vec();
    let e = Edit {
        flags: edit_flags::SACK_SHIFT | edit_flags::TS_STRIP,
        to_client: false,
        ts_offset: 0,
        sack_delta: 0x0100,
        win_shift: 0,
    };
    let d = apply(&mut o, &e).unwrap();
    let mut want = std::vec![1u8; 11];
    want.extend_from_slice(&[1, 5, 18]);
    want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3, 0]);
    want.extend_from_slice(&[0, 0]);
    assert_eq!(bytes(&o), want[..]);
    check_delta(&before, &bytes(&o), d);

    let mut o = opts(&b);
    let e = Edit {
        flags: edit_flags::SACK_STRIP | edit_flags::TS_SHIFT,
        to_client: false,
        ts_offset: 1,
        sack_delta: 0,
        win_shift: 0,
    };
    let d = apply(&mut o, &e).unwrap();
    assert_eq!(&bytes(&o)[14..30], &[1u8; 16][..]);
    assert_eq!(&bytes(&o)[7..11], &[0, 0, 0x1f, 0xff]);
    check_delta(&before, &bytes(&o), d);
}

#[test]
fn apply_refuses_what_it_cannot_walk() {
    let mut o = opts(&[3, 0, 8, 10]);
    let copy = o;
    let e = Edit {
        flags: edit_flags::TS_SHIFT,
        to_client: true,
        ts_offset: 1,
        sack_delta: 0,
        win_shift: 0,
    };
    assert_eq!(apply(&mut o, &e), None);
    assert_eq!(o, copy);
    // Nothing to edit: no change, delta 0.
    let mut o = opts(&[2, 4, 5, 0xb4]);
    assert_eq!(apply(&mut o, &e), Some(0));
}

#[test]
fn windows_rescale_down_and_cap() {
    assert_eq!(rescale_window(1000, 0), 1000);
    assert_eq!(rescale_window(1000, 1), 2000);
    assert_eq!(rescale_window(0x8000, 1), 0xffff);
    assert_eq!(rescale_window(1000, 7), 0xffff);
    assert_eq!(rescale_window(1000, -3), 125);
    assert_eq!(rescale_window(1001, -3), 125, "rounded down");
    assert_eq!(rescale_window(127, -7), 0);
    assert_eq!(rescale_window(65535, -14), 3);
}

#[test]
fn syn_offer_layouts() {
    let words = |o: SynOffer| {
        let (w, n) = o.words();
        w[..n]
            .iter()
            .flat_map(|x| x.to_ne_bytes())
            .collect::<Vec<u8>>()
    };
    let full = SynOffer {
        mss: 1460,
        wscale: Some(7),
        sack_ok: true,
        timestamps: Some((0x0102_0304, 0x0a0b_0c0d)),
    };
    assert_eq!(
        words(full),
        [2, 4, 5, 0xb4, 4, 2, 8, 10, 1, 2, 3, 4, 10, 11, 12, 13, 1, 3, 3, 7]
    );
    let ts_only = SynOffer {
        sack_ok: false,
        wscale: None,
        ..full
    };
    assert_eq!(
        words(ts_only),
        [2, 4, 5, 0xb4, 1, 1, 8, 10, 1, 2, 3, 4, 10, 11, 12, 13]
    );
    let sack_ws = SynOffer {
        timestamps: None,
        wscale: Some(20),
        ..full
    };
    assert_eq!(words(sack_ws), [2, 4, 5, 0xb4, 1, 1, 4, 2, 1, 3, 3, 14]);
    assert_eq!(words(SynOffer::mss_only(536)), [2, 4, 2, 0x18]);
    // What the builder lays out, the walk reads back.
    let o = OptionBytes::from_slice(&words(full));
    let w = walk(&o);
    assert_eq!(
        (w.mss, w.wscale, w.sack_ok, w.timestamps(&o), w.complete),
        (
            Some(1460),
            Some(7),
            true,
            Some((0x0102_0304, 0x0a0b_0c0d)),
            true
        )
    );
}

#[test]
fn client_options_round_trip() {
    for ws in [None, Some(0), Some(7), Some(14)] {
        for sack_ok in [false, true] {
            for timestamps in [false, true] {
                let c = ClientOptions {
                    wscale: ws,
                    sack_ok,
                    timestamps,
                };
                assert_eq!(ClientOptions::from_byte(c.to_byte()), c);
                assert_eq!(ClientOptions::from_bits(c.bits(), timestamps), c);
                assert!(c.bits() < 1 << CLIENT_OPTION_BITS);
                let tsval = synack_tsval(0xdead_beef, &c);
                assert_eq!(tsval & !0x1f, 0xdead_beef & !0x1f);
                assert_eq!(ClientOptions::from_bits(tsval & 0x1f, true).wscale, ws);
            }
        }
    }
    // A forged shift above 14 is clamped.
    assert_eq!(ClientOptions::from_bits(13 | 1, false).wscale, Some(13));
    assert_eq!(ClientOptions::from_bits(14, false).wscale, Some(14));
}

#[test]
fn negotiation() {
    let client = ClientOptions {
        wscale: Some(8),
        sack_ok: true,
        timestamps: true,
    };
    let backend = |b: &[u8]| {
        let o = opts(b);
        (walk(&o), o)
    };
    // A Linux backend: scale 7, SACK, timestamps with TSval 1000.
    let (w, o) = backend(&[
        2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 3, 0xe8, 0, 0, 0, 0, 1, 3, 3, 7,
    ]);
    let s = SpliceOptions::negotiate(&client, 5000, &w, &o);
    assert_eq!(
        s,
        SpliceOptions {
            to_backend_flags: edit_flags::TS_SHIFT | edit_flags::SACK_SHIFT,
            to_backend_shift: 0,
            to_client_flags: edit_flags::TS_SHIFT,
            to_client_shift: 0,
            ts_offset: 4000,
        }
    );
    // A backend offering nothing: windows rescaled both ways, timestamps and SACK
    // stripped from the client's segments.
    let (w, o) = backend(&[2, 4, 5, 0xb4]);
    let s = SpliceOptions::negotiate(&client, 5000, &w, &o);
    assert_eq!(
        s,
        SpliceOptions {
            to_backend_flags: edit_flags::TS_STRIP | edit_flags::SACK_STRIP,
            to_backend_shift: 8,
            to_client_flags: 0,
            to_client_shift: -7,
            ts_offset: 0,
        }
    );
    // A client offering nothing: nothing to translate, whatever the backend says.
    let (w, o) = backend(&[
        2, 4, 5, 0xb4, 4, 2, 8, 10, 0, 0, 3, 0xe8, 0, 0, 0, 0, 1, 3, 3, 9,
    ]);
    let s = SpliceOptions::negotiate(&ClientOptions::default(), 5000, &w, &o);
    assert_eq!(s, SpliceOptions::default());
    // Backend scale 9: windows to the client shifted up by 2.
    let s = SpliceOptions::negotiate(&client, 5000, &w, &o);
    assert_eq!((s.to_client_shift, s.to_backend_shift), (2, 0));
}

#[test]
fn translate_on_a_frame_keeps_the_checksum_right() {
    use crate::parse::parse_slice;
    use etherparse::{PacketBuilder, TcpOptionElement::*};
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 18, 0, 2], [198, 18, 1, 10], 64)
        .tcp(40000, 8080, 1000, 4000)
        .ack(77)
        .options(&[
            Noop,
            Noop,
            Timestamp(111, 222),
            Noop,
            Noop,
            SelectiveAcknowledgement((500, 600), [Some((700, 800)), None, None]),
        ])
        .unwrap()
        .write(&mut f, b"payload")
        .unwrap();
    let pkt = parse_slice(&f).unwrap();
    let e = Edit {
        flags: edit_flags::TS_SHIFT | edit_flags::SACK_SHIFT,
        to_client: false,
        ts_offset: 22,
        sack_delta: 100,
        win_shift: 2,
    };
    let opt_len = pkt.payload_off - pkt.l4_off - 20;
    let start = f.as_mut_ptr() as usize;
    let end = start + f.len();
    let d = translate(start, end, pkt.l4_off, opt_len, &e).unwrap();
    let check = u16::from_ne_bytes([f[pkt.l4_off + 16], f[pkt.l4_off + 17]]);
    let check = apply_delta(check, d).to_ne_bytes();
    f[pkt.l4_off + 16..pkt.l4_off + 18].copy_from_slice(&check);
    let s = etherparse::SlicedPacket::from_ethernet(&f).unwrap();
    let Some(etherparse::TransportSlice::Tcp(t)) = s.transport else {
        panic!("not TCP")
    };
    assert_eq!(t.window_size(), 16000);
    let got: Vec<_> = t.options_iterator().map(|o| o.unwrap()).collect();
    assert_eq!(
        got,
        [
            Noop,
            Noop,
            Timestamp(111, 200),
            Noop,
            Noop,
            SelectiveAcknowledgement((400, 500), [Some((600, 700)), None, None]),
        ]
    );
    let etherparse::NetSlice::Ipv4(ip) = s.net.unwrap() else {
        panic!("not IPv4")
    };
    let want = t
        .to_header()
        .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
        .unwrap();
    assert_eq!(t.checksum(), want);
    // Options it cannot walk: the frame stays as it was.
    let copy = f.clone();
    f[pkt.l4_off + 21] = 0; // the first NOP becomes EOL... still walkable: make it length 0
    f[pkt.l4_off + 20] = 3;
    let copy2 = f.clone();
    let start = f.as_mut_ptr() as usize;
    assert_eq!(
        translate(start, start + f.len(), pkt.l4_off, opt_len, &e),
        None
    );
    assert_eq!(f, copy2);
    assert_ne!(f, copy);
}
