//! Stateless SYN cookies: the balancer's ISN for a client's handshake (see
//! `docs/delayed-binding.md`, "Syncookie").
//!
//! `cookie = (H(secret, saddr, daddr, sport, dport, client_isn, t, layout) & !mask) | data`,
//! where `H` is the low 32 bits of SipHash-2-4 and `t` counts 64-second windows. A
//! cookie validates in its own window and the next one (so it lives 64 to 128 s), under
//! the current or the previous secret (so the secret can rotate without breaking
//! handshakes in flight).
//!
//! The data bits keep what the client's SYN offered ([`CookieLayout`]): when the client
//! sends timestamps, the cookie's 3 low bits carry the MSS index and the client's window
//! scale and SACK-permitted ride in the low bits of the SYN-ACK's TSval, which the client
//! echoes (as in Linux); without timestamps the cookie's 8 low bits carry all three, and
//! the hash keeps 24 bits. The layout is hashed too, so a cookie never validates under the
//! other one.
//!
//! Everything is straight-line arithmetic over fixed-size inputs: the loops below have
//! compile-time bounds and unroll, so the verifier sees no data-dependent control flow.
//!
//! Byte order: addresses and ports are taken as they sit in [`crate::FlowKey`] (network
//! byte order, read natively); ISNs, cookies and `t` are host-order numbers (what
//! `u32::from_be` of the TCP header field gives).

/// Length of one cookie time window: 64 s.
pub const COOKIE_WINDOW_NS: u64 = 64_000_000_000;

/// MSS values a cookie can carry; the index into this table is the cookie's low 3 bits.
pub const MSS_TABLE: [u16; 6] = [536, 1220, 1440, 1460, 4312, 8960];

/// Bits of the cookie that carry the MSS index.
pub const MSS_INDEX_MASK: u32 = 7;

/// Where a cookie keeps the client's SYN options besides the MSS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieLayout {
    /// The client sent timestamps: the cookie carries the MSS index (3 bits, 29 bits of
    /// hash); the options ride in the SYN-ACK's TSval ([`crate::tcp_opts::synack_tsval`]).
    Timestamps,
    /// No timestamps: the cookie carries the MSS index and
    /// [`crate::tcp_opts::ClientOptions::bits`] (8 bits, 24 bits of hash).
    Options,
}

impl CookieLayout {
    /// The client's handshake ACK or first segment says which: a client that sent
    /// timestamps in its SYN sends them in every segment (RFC 7323 3.2).
    #[inline(always)]
    pub fn of_segment(has_timestamps: bool) -> CookieLayout {
        if has_timestamps {
            CookieLayout::Timestamps
        } else {
            CookieLayout::Options
        }
    }

    /// The cookie bits that carry data rather than hash.
    #[inline(always)]
    pub fn data_mask(self) -> u32 {
        match self {
            CookieLayout::Timestamps => MSS_INDEX_MASK,
            CookieLayout::Options => 0xff,
        }
    }

    #[inline(always)]
    fn tag(self) -> u8 {
        match self {
            CookieLayout::Timestamps => 0,
            CookieLayout::Options => 1,
        }
    }
}

/// The data bits of a valid cookie: the client's MSS (from the table) and, in the
/// [`CookieLayout::Options`] layout, [`crate::tcp_opts::ClientOptions::bits`] (0 in the
/// other).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieData {
    pub mss: u16,
    pub option_bits: u32,
}

/// The data of a cookie of `layout` for a client MSS index and option bits.
#[inline(always)]
pub fn cookie_data(layout: CookieLayout, mss_index: u32, option_bits: u32) -> u32 {
    match layout {
        CookieLayout::Timestamps => mss_index & MSS_INDEX_MASK,
        CookieLayout::Options => (mss_index & MSS_INDEX_MASK) | ((option_bits & 0x1f) << 3),
    }
}

/// One SipHash key. The all-zero key means "not set": it never validates a cookie
/// (see [`CookieSecret::is_set`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CookieSecret {
    pub k0: u64,
    pub k1: u64,
}

impl CookieSecret {
    /// False for the all-zero key, which is what an array map holds before userspace
    /// writes a secret. Everyone knows that key, so cookies under it must not validate.
    #[inline(always)]
    pub fn is_set(&self) -> bool {
        self.k0 | self.k1 != 0
    }
}

/// Value of the syncookie secrets map (an array with one element): the secret new
/// cookies are made with, and the one before it, still accepted after a rotation.
/// Rotation is `previous = current; current = new` in one map update.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncookieKeys {
    pub current: CookieSecret,
    pub previous: CookieSecret,
}

const _: () = {
    assert!(core::mem::size_of::<CookieSecret>() == 16);
    assert!(core::mem::size_of::<SyncookieKeys>() == 32);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: #[repr(C)] plain data without padding (asserted above).
    unsafe impl aya::Pod for CookieSecret {}
    unsafe impl aya::Pod for SyncookieKeys {}
}

/// The cookie time window of a clock reading in nanoseconds.
///
/// Nodes that share secrets validate each other's cookies only if they agree on `t`,
/// so across nodes `now_ns` must come from a shared clock (wall clock / TAI), not from
/// the per-boot monotonic clock.
#[inline(always)]
pub fn time_window(now_ns: u64) -> u32 {
    (now_ns / COOKIE_WINDOW_NS) as u32
}

/// Index of the largest table MSS not above `client_mss`; anything below 536 (including
/// 0) maps to 536, the IPv4 default.
#[inline(always)]
pub fn encode_mss(client_mss: u16) -> u32 {
    if client_mss >= MSS_TABLE[5] {
        5
    } else if client_mss >= MSS_TABLE[4] {
        4
    } else if client_mss >= MSS_TABLE[3] {
        3
    } else if client_mss >= MSS_TABLE[2] {
        2
    } else if client_mss >= MSS_TABLE[1] {
        1
    } else {
        0
    }
}

/// The MSS of a table index; `None` for the unused indices 6 and 7.
#[inline(always)]
pub fn decode_mss(index: u32) -> Option<u16> {
    match index {
        0 => Some(MSS_TABLE[0]),
        1 => Some(MSS_TABLE[1]),
        2 => Some(MSS_TABLE[2]),
        3 => Some(MSS_TABLE[3]),
        4 => Some(MSS_TABLE[4]),
        5 => Some(MSS_TABLE[5]),
        _ => None,
    }
}

/// SipHash internal state.
#[derive(Clone, Copy)]
struct Sip {
    v0: u64,
    v1: u64,
    v2: u64,
    v3: u64,
}

impl Sip {
    #[inline(always)]
    fn new(k0: u64, k1: u64) -> Self {
        Sip {
            v0: k0 ^ 0x736f_6d65_7073_6575,
            v1: k1 ^ 0x646f_7261_6e64_6f6d,
            v2: k0 ^ 0x6c79_6765_6e65_7261,
            v3: k1 ^ 0x7465_6462_7974_6573,
        }
    }

    #[inline(always)]
    fn round(&mut self) {
        self.v0 = self.v0.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(13);
        self.v1 ^= self.v0;
        self.v0 = self.v0.rotate_left(32);
        self.v2 = self.v2.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(16);
        self.v3 ^= self.v2;
        self.v0 = self.v0.wrapping_add(self.v3);
        self.v3 = self.v3.rotate_left(21);
        self.v3 ^= self.v0;
        self.v2 = self.v2.wrapping_add(self.v1);
        self.v1 = self.v1.rotate_left(17);
        self.v1 ^= self.v2;
        self.v2 = self.v2.rotate_left(32);
    }

    /// Absorbs one 8-byte message word with 2 rounds.
    #[inline(always)]
    fn compress(&mut self, m: u64) {
        self.v3 ^= m;
        self.round();
        self.round();
        self.v0 ^= m;
    }

    /// 4 finalisation rounds.
    #[inline(always)]
    fn finish(mut self) -> u64 {
        self.v2 ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.round();
        self.v0 ^ self.v1 ^ self.v2 ^ self.v3
    }
}

/// SipHash-2-4 of a fixed-length message with the key `(k0, k1)` (the key bytes read as
/// two little-endian words, as in the reference implementation).
///
/// `N` is a compile-time constant, so both loops have constant trip counts and unroll.
#[inline(always)]
pub fn siphash24<const N: usize>(k0: u64, k1: u64, msg: &[u8; N]) -> u64 {
    let mut s = Sip::new(k0, k1);
    for block in 0..N / 8 {
        let o = block * 8;
        let m = u64::from_le_bytes([
            msg[o],
            msg[o + 1],
            msg[o + 2],
            msg[o + 3],
            msg[o + 4],
            msg[o + 5],
            msg[o + 6],
            msg[o + 7],
        ]);
        s.compress(m);
    }
    let tail = N - N % 8;
    let mut last = (N as u64) << 56;
    for i in 0..N % 8 {
        last |= (msg[tail + i] as u64) << (8 * i);
    }
    s.compress(last);
    s.finish()
}

/// The cookie for a client's SYN: `client_isn` is the SYN's sequence number, `t` the
/// current [`time_window`], `data` from [`cookie_data`] (only the layout's data bits are
/// used). The result is the ISN of the SYN-ACK (host order).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn make_cookie(
    secret: &CookieSecret,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    client_isn: u32,
    t: u32,
    data: u32,
    layout: CookieLayout,
) -> u32 {
    let s = saddr.to_ne_bytes();
    let d = daddr.to_ne_bytes();
    let sp = sport.to_ne_bytes();
    let dp = dport.to_ne_bytes();
    let c = client_isn.to_be_bytes();
    let w = t.to_be_bytes();
    // The tuple's wire bytes, then the ISN and the window in network order and the
    // layout: the same message on every host, whatever its byte order.
    let msg: [u8; 21] = [
        s[0],
        s[1],
        s[2],
        s[3],
        d[0],
        d[1],
        d[2],
        d[3],
        sp[0],
        sp[1],
        dp[0],
        dp[1],
        c[0],
        c[1],
        c[2],
        c[3],
        w[0],
        w[1],
        w[2],
        w[3],
        layout.tag(),
    ];
    let h = siphash24(secret.k0, secret.k1, &msg) as u32;
    let mask = layout.data_mask();
    (h & !mask) | (data & mask)
}

/// Validates a cookie of `layout` and returns the data it carries.
///
/// For the handshake ACK and the first data segment of a connection, `cookie` is
/// `SEG.ACK - 1` and `client_isn` is `SEG.SEQ - 1` (host order). Accepts cookies made in
/// window `now_t` or `now_t - 1`, under `keys.current` or `keys.previous`; a secret that is
/// not set ([`CookieSecret::is_set`]) accepts nothing.
///
/// As in Linux's syncookies, the MSS index is not covered by the hash (it only selects
/// which hash to compare against): a client can claim another table MSS by changing the
/// low bits, which it could as well have done with its SYN's MSS option. A blind guess
/// succeeds with probability 6/8 * 4 / 2^29 (about 2^-27.4) in the timestamps layout,
/// whether or not the index is hashed, and 6/8 * 4 / 2^24 (about 2^-22.4) in the options
/// layout (Linux's syncookies keep 24 bits of hash too). The option bits are not hashed
/// either, for the same reason: a client could have offered other options.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub fn check_cookie(
    keys: &SyncookieKeys,
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    client_isn: u32,
    cookie: u32,
    now_t: u32,
    layout: CookieLayout,
) -> Option<CookieData> {
    let index = cookie & MSS_INDEX_MASK;
    let mss = decode_mss(index)?;
    let prev_t = now_t.wrapping_sub(1);
    let m = CookieInput {
        saddr,
        daddr,
        sport,
        dport,
        client_isn,
    };
    if valid_under(&keys.current, &m, cookie, now_t, prev_t, layout)
        || valid_under(&keys.previous, &m, cookie, now_t, prev_t, layout)
    {
        let option_bits = match layout {
            CookieLayout::Timestamps => 0,
            CookieLayout::Options => (cookie >> 3) & 0x1f,
        };
        Some(CookieData { mss, option_bits })
    } else {
        None
    }
}

/// The connection fields a cookie covers.
#[derive(Clone, Copy)]
struct CookieInput {
    saddr: u32,
    daddr: u32,
    sport: u16,
    dport: u16,
    client_isn: u32,
}

/// Whether `cookie` was made under `secret` in window `t` or `prev_t`.
#[inline(always)]
fn valid_under(
    secret: &CookieSecret,
    m: &CookieInput,
    cookie: u32,
    t: u32,
    prev_t: u32,
    layout: CookieLayout,
) -> bool {
    let data = cookie & layout.data_mask();
    let made_in = |window: u32| {
        make_cookie(
            secret,
            m.saddr,
            m.daddr,
            m.sport,
            m.dport,
            m.client_isn,
            window,
            data,
            layout,
        ) == cookie
    };
    secret.is_set() && (made_in(t) || made_in(prev_t))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SipHash-2-4 reference vectors (Aumasson & Bernstein, `vectors.h`): key
    /// 00 01 .. 0f, message 00 01 .. (len - 1), output as little-endian bytes.
    const VECTORS: [[u8; 8]; 64] = [
        [0x31, 0x0e, 0x0e, 0xdd, 0x47, 0xdb, 0x6f, 0x72],
        [0xfd, 0x67, 0xdc, 0x93, 0xc5, 0x39, 0xf8, 0x74],
        [0x5a, 0x4f, 0xa9, 0xd9, 0x09, 0x80, 0x6c, 0x0d],
        [0x2d, 0x7e, 0xfb, 0xd7, 0x96, 0x66, 0x67, 0x85],
        [0xb7, 0x87, 0x71, 0x27, 0xe0, 0x94, 0x27, 0xcf],
        [0x8d, 0xa6, 0x99, 0xcd, 0x64, 0x55, 0x76, 0x18],
        [0xce, 0xe3, 0xfe, 0x58, 0x6e, 0x46, 0xc9, 0xcb],
        [0x37, 0xd1, 0x01, 0x8b, 0xf5, 0x00, 0x02, 0xab],
        [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93],
        [0xb0, 0xe4, 0xa9, 0x0b, 0xdf, 0x82, 0x00, 0x9e],
        [0xf3, 0xb9, 0xdd, 0x94, 0xc5, 0xbb, 0x5d, 0x7a],
        [0xa7, 0xad, 0x6b, 0x22, 0x46, 0x2f, 0xb3, 0xf4],
        [0xfb, 0xe5, 0x0e, 0x86, 0xbc, 0x8f, 0x1e, 0x75],
        [0x90, 0x3d, 0x84, 0xc0, 0x27, 0x56, 0xea, 0x14],
        [0xee, 0xf2, 0x7a, 0x8e, 0x90, 0xca, 0x23, 0xf7],
        [0xe5, 0x45, 0xbe, 0x49, 0x61, 0xca, 0x29, 0xa1],
        [0xdb, 0x9b, 0xc2, 0x57, 0x7f, 0xcc, 0x2a, 0x3f],
        [0x94, 0x47, 0xbe, 0x2c, 0xf5, 0xe9, 0x9a, 0x69],
        [0x9c, 0xd3, 0x8d, 0x96, 0xf0, 0xb3, 0xc1, 0x4b],
        [0xbd, 0x61, 0x79, 0xa7, 0x1d, 0xc9, 0x6d, 0xbb],
        [0x98, 0xee, 0xa2, 0x1a, 0xf2, 0x5c, 0xd6, 0xbe],
        [0xc7, 0x67, 0x3b, 0x2e, 0xb0, 0xcb, 0xf2, 0xd0],
        [0x88, 0x3e, 0xa3, 0xe3, 0x95, 0x67, 0x53, 0x93],
        [0xc8, 0xce, 0x5c, 0xcd, 0x8c, 0x03, 0x0c, 0xa8],
        [0x94, 0xaf, 0x49, 0xf6, 0xc6, 0x50, 0xad, 0xb8],
        [0xea, 0xb8, 0x85, 0x8a, 0xde, 0x92, 0xe1, 0xbc],
        [0xf3, 0x15, 0xbb, 0x5b, 0xb8, 0x35, 0xd8, 0x17],
        [0xad, 0xcf, 0x6b, 0x07, 0x63, 0x61, 0x2e, 0x2f],
        [0xa5, 0xc9, 0x1d, 0xa7, 0xac, 0xaa, 0x4d, 0xde],
        [0x71, 0x65, 0x95, 0x87, 0x66, 0x50, 0xa2, 0xa6],
        [0x28, 0xef, 0x49, 0x5c, 0x53, 0xa3, 0x87, 0xad],
        [0x42, 0xc3, 0x41, 0xd8, 0xfa, 0x92, 0xd8, 0x32],
        [0xce, 0x7c, 0xf2, 0x72, 0x2f, 0x51, 0x27, 0x71],
        [0xe3, 0x78, 0x59, 0xf9, 0x46, 0x23, 0xf3, 0xa7],
        [0x38, 0x12, 0x05, 0xbb, 0x1a, 0xb0, 0xe0, 0x12],
        [0xae, 0x97, 0xa1, 0x0f, 0xd4, 0x34, 0xe0, 0x15],
        [0xb4, 0xa3, 0x15, 0x08, 0xbe, 0xff, 0x4d, 0x31],
        [0x81, 0x39, 0x62, 0x29, 0xf0, 0x90, 0x79, 0x02],
        [0x4d, 0x0c, 0xf4, 0x9e, 0xe5, 0xd4, 0xdc, 0xca],
        [0x5c, 0x73, 0x33, 0x6a, 0x76, 0xd8, 0xbf, 0x9a],
        [0xd0, 0xa7, 0x04, 0x53, 0x6b, 0xa9, 0x3e, 0x0e],
        [0x92, 0x59, 0x58, 0xfc, 0xd6, 0x42, 0x0c, 0xad],
        [0xa9, 0x15, 0xc2, 0x9b, 0xc8, 0x06, 0x73, 0x18],
        [0x95, 0x2b, 0x79, 0xf3, 0xbc, 0x0a, 0xa6, 0xd4],
        [0xf2, 0x1d, 0xf2, 0xe4, 0x1d, 0x45, 0x35, 0xf9],
        [0x87, 0x57, 0x75, 0x19, 0x04, 0x8f, 0x53, 0xa9],
        [0x10, 0xa5, 0x6c, 0xf5, 0xdf, 0xcd, 0x9a, 0xdb],
        [0xeb, 0x75, 0x09, 0x5c, 0xcd, 0x98, 0x6c, 0xd0],
        [0x51, 0xa9, 0xcb, 0x9e, 0xcb, 0xa3, 0x12, 0xe6],
        [0x96, 0xaf, 0xad, 0xfc, 0x2c, 0xe6, 0x66, 0xc7],
        [0x72, 0xfe, 0x52, 0x97, 0x5a, 0x43, 0x64, 0xee],
        [0x5a, 0x16, 0x45, 0xb2, 0x76, 0xd5, 0x92, 0xa1],
        [0xb2, 0x74, 0xcb, 0x8e, 0xbf, 0x87, 0x87, 0x0a],
        [0x6f, 0x9b, 0xb4, 0x20, 0x3d, 0xe7, 0xb3, 0x81],
        [0xea, 0xec, 0xb2, 0xa3, 0x0b, 0x22, 0xa8, 0x7f],
        [0x99, 0x24, 0xa4, 0x3c, 0xc1, 0x31, 0x57, 0x24],
        [0xbd, 0x83, 0x8d, 0x3a, 0xaf, 0xbf, 0x8d, 0xb7],
        [0x0b, 0x1a, 0x2a, 0x32, 0x65, 0xd5, 0x1a, 0xea],
        [0x13, 0x50, 0x79, 0xa3, 0x23, 0x1c, 0xe6, 0x60],
        [0x93, 0x2b, 0x28, 0x46, 0xe4, 0xd7, 0x06, 0x66],
        [0xe1, 0x91, 0x5f, 0x5c, 0xb1, 0xec, 0xa4, 0x6c],
        [0xf3, 0x25, 0x96, 0x5c, 0xa1, 0x6d, 0x62, 0x9f],
        [0x57, 0x5f, 0xf2, 0x8e, 0x60, 0x38, 0x1b, 0xe5],
        [0x72, 0x45, 0x06, 0xeb, 0x4c, 0x32, 0x8a, 0x95],
    ];

    const K0: u64 = 0x0706_0504_0302_0100;
    const K1: u64 = 0x0f0e_0d0c_0b0a_0908;

    fn check_vector<const N: usize>() {
        let mut msg = [0u8; N];
        for (i, b) in msg.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(
            siphash24(K0, K1, &msg),
            u64::from_le_bytes(VECTORS[N]),
            "length {N}"
        );
    }

    macro_rules! check_lengths {
        ($($n:literal)*) => { $( check_vector::<$n>(); )* };
    }

    #[test]
    fn siphash_reference_vectors() {
        check_lengths!(
            0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30
            31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58
            59 60 61 62 63
        );
    }

    #[test]
    #[allow(deprecated)]
    fn siphash_matches_std_for_the_cookie_message_length() {
        use core::hash::{Hasher, SipHasher};
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1000 {
            let mut msg = [0u8; 21];
            for b in &mut msg {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let (k0, k1) = (x, x.rotate_left(29) ^ 0x5555);
            let mut std_hasher = SipHasher::new_with_keys(k0, k1);
            std_hasher.write(&msg);
            assert_eq!(siphash24(k0, k1, &msg), std_hasher.finish());
        }
    }

    const SECRET: CookieSecret = CookieSecret {
        k0: 0x0123_4567_89ab_cdef,
        k1: 0xfedc_ba98_7654_3210,
    };
    const OTHER: CookieSecret = CookieSecret {
        k0: 0x1111_2222_3333_4444,
        k1: 0x5555_6666_7777_8888,
    };

    fn addr(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    struct Tuple {
        saddr: u32,
        daddr: u32,
        sport: u16,
        dport: u16,
        isn: u32,
    }

    fn tuple() -> Tuple {
        Tuple {
            saddr: addr([198, 18, 0, 2]),
            daddr: addr([198, 18, 100, 1]),
            sport: 40000u16.to_be(),
            dport: 80u16.to_be(),
            isn: 0xdead_beef,
        }
    }

    fn make(secret: &CookieSecret, c: &Tuple, t: u32, mss_index: u32) -> u32 {
        make_in(secret, c, t, mss_index, CookieLayout::Timestamps)
    }

    fn make_in(secret: &CookieSecret, c: &Tuple, t: u32, data: u32, l: CookieLayout) -> u32 {
        make_cookie(
            secret, c.saddr, c.daddr, c.sport, c.dport, c.isn, t, data, l,
        )
    }

    fn check(keys: &SyncookieKeys, c: &Tuple, cookie: u32, now_t: u32) -> Option<u16> {
        check_in(keys, c, cookie, now_t, CookieLayout::Timestamps).map(|d| d.mss)
    }

    fn check_in(
        keys: &SyncookieKeys,
        c: &Tuple,
        cookie: u32,
        now_t: u32,
        l: CookieLayout,
    ) -> Option<CookieData> {
        check_cookie(
            keys, c.saddr, c.daddr, c.sport, c.dport, c.isn, cookie, now_t, l,
        )
    }

    #[test]
    fn options_layout_round_trip_and_layouts_apart() {
        let c = tuple();
        for bits in 0..32 {
            for index in 0..6 {
                let data = cookie_data(CookieLayout::Options, index, bits);
                let cookie = make_in(&SECRET, &c, 1000, data, CookieLayout::Options);
                assert_eq!(cookie & 0xff, data);
                assert_eq!(
                    check_in(&keys(), &c, cookie, 1001, CookieLayout::Options),
                    Some(CookieData {
                        mss: MSS_TABLE[index as usize],
                        option_bits: bits
                    })
                );
                // The layout is hashed: never valid under the other one.
                assert_eq!(
                    check_in(&keys(), &c, cookie, 1000, CookieLayout::Timestamps),
                    None
                );
            }
        }
        let ts = make(&SECRET, &c, 1000, 3);
        assert_eq!(check_in(&keys(), &c, ts, 1000, CookieLayout::Options), None);
        // Every hash bit of the options layout counts.
        let cookie = make_in(&SECRET, &c, 1000, 0x5b, CookieLayout::Options);
        for bit in 8..32 {
            assert_eq!(
                check_in(
                    &keys(),
                    &c,
                    cookie ^ (1 << bit),
                    1000,
                    CookieLayout::Options
                ),
                None
            );
        }
    }

    fn keys() -> SyncookieKeys {
        SyncookieKeys {
            current: SECRET,
            previous: OTHER,
        }
    }

    #[test]
    fn round_trip_every_mss() {
        let c = tuple();
        for (i, mss) in MSS_TABLE.iter().enumerate() {
            let cookie = make(&SECRET, &c, 1000, i as u32);
            assert_eq!(cookie & MSS_INDEX_MASK, i as u32);
            assert_eq!(check(&keys(), &c, cookie, 1000), Some(*mss));
            // Valid through the next window too.
            assert_eq!(check(&keys(), &c, cookie, 1001), Some(*mss));
        }
    }

    #[test]
    fn deterministic() {
        let c = tuple();
        assert_eq!(make(&SECRET, &c, 7, 3), make(&SECRET, &c, 7, 3));
    }

    #[test]
    fn rejects_another_tuple() {
        let c = tuple();
        let cookie = make(&SECRET, &c, 1000, 3);
        let k = keys();
        let variants = [
            Tuple {
                saddr: addr([198, 18, 0, 3]),
                ..tuple()
            },
            Tuple {
                daddr: addr([198, 18, 100, 2]),
                ..tuple()
            },
            Tuple {
                sport: 40001u16.to_be(),
                ..tuple()
            },
            Tuple {
                dport: 443u16.to_be(),
                ..tuple()
            },
            // Ports swapped.
            Tuple {
                sport: c.dport,
                dport: c.sport,
                ..tuple()
            },
            Tuple {
                isn: c.isn + 1,
                ..tuple()
            },
        ];
        for v in &variants {
            assert_eq!(check(&k, v, cookie, 1000), None);
        }
    }

    #[test]
    fn rejects_expired_and_future_windows() {
        let c = tuple();
        let cookie = make(&SECRET, &c, 1000, 3);
        assert_eq!(check(&keys(), &c, cookie, 1002), None, "t - 2");
        assert_eq!(check(&keys(), &c, cookie, 5000), None, "long expired");
        assert_eq!(check(&keys(), &c, cookie, 999), None, "from the future");
    }

    #[test]
    fn window_zero_wraps_harmlessly() {
        let c = tuple();
        let cookie = make(&SECRET, &c, u32::MAX, 2);
        assert_eq!(check(&keys(), &c, cookie, 0), Some(MSS_TABLE[2]));
        let cookie = make(&SECRET, &c, 0, 2);
        assert_eq!(check(&keys(), &c, cookie, 0), Some(MSS_TABLE[2]));
    }

    #[test]
    fn rotation_previous_generation_accepted_then_dropped() {
        let c = tuple();
        let old = make(&OTHER, &c, 1000, 1);
        // OTHER is the previous secret: still accepted, in both windows.
        assert_eq!(check(&keys(), &c, old, 1000), Some(MSS_TABLE[1]));
        assert_eq!(check(&keys(), &c, old, 1001), Some(MSS_TABLE[1]));
        // Rotated out: neither current nor previous.
        let third = CookieSecret { k0: 9, k1: 10 };
        let rotated = SyncookieKeys {
            current: third,
            previous: SECRET,
        };
        assert_eq!(check(&rotated, &c, old, 1000), None);
        // A cookie under the secret that just became "previous" still passes.
        let cur = make(&SECRET, &c, 1000, 1);
        assert_eq!(check(&rotated, &c, cur, 1000), Some(MSS_TABLE[1]));
    }

    #[test]
    fn unset_secrets_validate_nothing() {
        let c = tuple();
        let zero = CookieSecret::default();
        let forged = make(&zero, &c, 1000, 3);
        let k = SyncookieKeys {
            current: SECRET,
            previous: zero,
        };
        assert_eq!(check(&k, &c, forged, 1000), None);
        let k = SyncookieKeys::default();
        assert_eq!(check(&k, &c, forged, 1000), None);
    }

    #[test]
    fn mss_index_bits_and_flipped_hash_bits() {
        let c = tuple();
        let cookie = make(&SECRET, &c, 1000, 5);
        for index in 6..8 {
            let forged = (cookie & !MSS_INDEX_MASK) | index;
            assert_eq!(check(&keys(), &c, forged, 1000), None);
        }
        // The index is not covered by the hash: a client can claim another table MSS,
        // as it could by sending another MSS option in its SYN.
        for index in 0..6 {
            let claimed = (cookie & !MSS_INDEX_MASK) | index;
            assert_eq!(
                check(&keys(), &c, claimed, 1000),
                Some(MSS_TABLE[index as usize])
            );
        }
        // Every hash bit counts.
        for bit in 3..32 {
            assert_eq!(check(&keys(), &c, cookie ^ (1 << bit), 1000), None);
        }
    }

    #[test]
    fn mss_rounding() {
        assert_eq!(encode_mss(0), 0);
        assert_eq!(encode_mss(100), 0);
        assert_eq!(encode_mss(535), 0);
        assert_eq!(encode_mss(536), 0);
        assert_eq!(encode_mss(1219), 0);
        assert_eq!(encode_mss(1220), 1);
        assert_eq!(encode_mss(1439), 1);
        assert_eq!(encode_mss(1440), 2);
        assert_eq!(encode_mss(1459), 2);
        assert_eq!(encode_mss(1460), 3);
        assert_eq!(encode_mss(4311), 3);
        assert_eq!(encode_mss(4312), 4);
        assert_eq!(encode_mss(8959), 4);
        assert_eq!(encode_mss(8960), 5);
        assert_eq!(encode_mss(u16::MAX), 5);
        for (i, mss) in MSS_TABLE.iter().enumerate() {
            assert_eq!(decode_mss(i as u32), Some(*mss));
            assert_eq!(encode_mss(*mss), i as u32);
        }
        assert_eq!(decode_mss(6), None);
        assert_eq!(decode_mss(7), None);
        assert_eq!(decode_mss(u32::MAX), None);
        // Never rounds up.
        for mss in 536..=u16::MAX {
            assert!(decode_mss(encode_mss(mss)).unwrap() <= mss);
        }
    }

    #[test]
    fn time_windows() {
        assert_eq!(time_window(0), 0);
        assert_eq!(time_window(COOKIE_WINDOW_NS - 1), 0);
        assert_eq!(time_window(COOKIE_WINDOW_NS), 1);
        assert_eq!(time_window(1_700_000_000 * 1_000_000_000), 26_562_500);
    }

    #[test]
    fn consecutive_ports_give_unrelated_cookies() {
        let mut c = tuple();
        let mut total = 0u32;
        let mut min = 32u32;
        let n = 4096u32;
        let mut ones = [0u32; 32];
        let mut prev = make(&SECRET, &c, 1000, 3);
        for port in 1..=n {
            c.sport = (port as u16).to_be();
            let cookie = make(&SECRET, &c, 1000, 3);
            let d = (cookie ^ prev) & !MSS_INDEX_MASK;
            total += d.count_ones();
            min = min.min(d.count_ones());
            for (bit, count) in ones.iter_mut().enumerate() {
                *count += (cookie >> bit) & 1;
            }
            prev = cookie;
        }
        // 29 hash bits: about 14.5 differ on average.
        let mean = total as f64 / n as f64;
        assert!((13.5..15.5).contains(&mean), "mean differing bits {mean}");
        assert!(min >= 3, "two neighbouring cookies differ in {min} bits");
        // Every hash bit is set in about half of the cookies.
        for (bit, count) in ones.iter().enumerate().skip(3) {
            let share = *count as f64 / n as f64;
            assert!((0.45..0.55).contains(&share), "bit {bit} set in {share}");
        }
    }
}
