//! Cookie mode: the test secret, the syncookies and TCP options the data plane expects,
//! and HTTP request heads carrying a cookie.

use super::*;

// --- Cookie mode ----------------------------------------------------------------------

/// The syncookie secret tests install with [`TestBed::rotate_syncookie_secret`], so that
/// they can compute the cookies the data plane hands out.
pub const TEST_SECRET: CookieSecret = CookieSecret {
    k0: 0x0706_0504_0302_0100,
    k1: 0x0f0e_0d0c_0b0a_0908,
};

/// CLOCK_TAI in nanoseconds: the clock `bpf_ktime_get_tai_ns` reads, which sets the
/// syncookie time window.
pub fn tai_ns() -> u64 {
    balancer_user::control::flows::clock_ns(libc::CLOCK_TAI)
}

/// The syncookie time window now.
pub fn cookie_window() -> u32 {
    time_window(tai_ns())
}

/// The flow key of a TCP packet `src -> dst`, as the data plane stores it.
pub fn tcp_key(src: SocketAddrV4, dst: SocketAddrV4) -> FlowKey {
    FlowKey::new(
        ip_to_map(*src.ip()),
        ip_to_map(*dst.ip()),
        src.port().to_be(),
        dst.port().to_be(),
        PROTO_TCP,
    )
}

/// The syncookie the data plane answers a SYN `client -> service` with sequence number
/// `isn`, MSS option `client_mss` (536 for a SYN without one) and no other options, in
/// window `t`.
pub fn syncookie(
    secret: &CookieSecret,
    client: SocketAddrV4,
    service: SocketAddrV4,
    isn: u32,
    client_mss: u16,
    t: u32,
) -> u32 {
    syncookie_with(
        secret,
        client,
        service,
        isn,
        client_mss,
        &ClientOptions::default(),
        t,
    )
}

/// [`syncookie`] for a SYN that also offers `options`: with timestamps the cookie carries
/// the MSS alone (the options ride in the SYN-ACK's TSval), without them the options
/// too (docs/delayed-binding.md, "TCP options across the splice").
pub fn syncookie_with(
    secret: &CookieSecret,
    client: SocketAddrV4,
    service: SocketAddrV4,
    isn: u32,
    client_mss: u16,
    options: &ClientOptions,
    t: u32,
) -> u32 {
    let k = tcp_key(client, service);
    let layout = CookieLayout::of_segment(options.timestamps);
    make_cookie(
        secret,
        k.src,
        k.dst,
        k.sport,
        k.dport,
        isn,
        t,
        cookie_data(layout, encode_mss(client_mss), options.bits()),
        layout,
    )
}

/// An HTTP request head of exactly `len` bytes whose `Cookie: JSESSIONID=...` header
/// (naming `primary` and `secondary`) is the first header line (`at` = 0.0), the last
/// (1.0), or in between (the fraction of the filler header lines before it). The other
/// lines are realistic browser headers plus `X-Filler-N` lines padding to `len`.
pub fn request_head(len: usize, at: f64, primary: &str, secondary: &str) -> Vec<u8> {
    let request_line = "GET /app/cart?item=42 HTTP/1.1\r\n";
    let cookie =
        format!("Cookie: theme=dark; JSESSIONID=a1b2c3d4e5f6!{primary}!{secondary}; lang=en\r\n");
    let mut fillers: Vec<String> = vec![
        "Host: shop.example.test\r\n".into(),
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
            .into(),
        "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n".into(),
        "Accept-Language: en-US,en;q=0.5\r\n".into(),
        "Accept-Encoding: gzip, deflate, br, zstd\r\n".into(),
        "Referer: https://shop.example.test/app/catalog?page=3&sort=price\r\n".into(),
        "Connection: keep-alive\r\n".into(),
        "Upgrade-Insecure-Requests: 1\r\n".into(),
    ];
    let fixed = request_line.len() + cookie.len() + 2;
    let mut total = fixed + fillers.iter().map(String::len).sum::<usize>();
    assert!(
        total <= len,
        "a {len}-byte head cannot hold the fixed headers ({total} bytes)"
    );
    let mut n = 0;
    while len - total > 0 {
        // "X-Filler-N: " + value + CRLF; at most 100 bytes a line.
        let name = format!("X-Filler-{n}: ");
        let room = len - total;
        let line_len = room.min(100);
        let value_len = line_len.saturating_sub(name.len() + 2);
        if value_len == 0 {
            // Too little room for another line: lengthen the previous filler instead.
            let last = fillers.last_mut().expect("fillers");
            let body = last.trim_end_matches("\r\n").to_string();
            *last = format!("{body}{}\r\n", "x".repeat(room));
            total += room;
            continue;
        }
        let value: String = (0..value_len)
            .map(|i| (b'a' + ((i + n) % 26) as u8) as char)
            .collect();
        fillers.push(format!("{name}{value}\r\n"));
        total += line_len;
        n += 1;
    }
    let pos = ((fillers.len() as f64) * at.clamp(0.0, 1.0)).round() as usize;
    fillers.insert(pos, cookie);
    let mut head = String::from(request_line);
    for l in &fillers {
        head.push_str(l);
    }
    head.push_str("\r\n");
    assert_eq!(head.len(), len, "request head length");
    head.into_bytes()
}
