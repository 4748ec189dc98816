//! The mutations applied to a case's frame: on the description, consistent ones on the
//! bytes (checksums fixed), raw ones.

use super::*;

/// Builds a frame description, falling back to a valid variant if the mutations made it
/// unbuildable (options too long).
pub(super) fn build_frame(f: &Frame, rng: &mut Rng, log: &[String]) -> Vec<u8> {
    let mut f = f.clone();
    if f.tcp_options.len() > 40 {
        f.tcp_options.truncate(40);
    }
    if f.ip_options.len() > 40 {
        f.ip_options.truncate(40);
    }
    let mut out = f.build();
    if log.iter().any(|m| m == "payload-mtu") {
        // Fill the frame to a 1514-byte Ethernet frame (1518 tagged).
        let want = 1514 + if f.vlan.is_some() { 4 } else { 0 };
        if out.len() < want {
            let extra = want - out.len();
            let mut p = f.payload.clone();
            p.extend(rng.bytes(extra));
            f.payload = p;
            out = f.build();
        }
    }
    out
}

pub(super) fn mutate_frame(rng: &mut Rng, f: &mut Frame, log: &mut Vec<String>) {
    let tcp = matches!(f.l4, L4::Tcp { .. });
    match rng.below(13) {
        0 => {
            let ttl = {
                let xs = [0, 1, 2, 255, rng.u8()];
                *rng.pick(&xs)
            };
            f.ttl = ttl;
            log.push(format!("ttl={ttl}"));
        }
        1 => {
            let id = rng.below(4096) as u16;
            f.vlan = Some(id);
            log.push(format!("vlan={id}"));
        }
        2 => {
            f.ip_options = ip_options(rng);
            log.push(format!("ip-options({})", hex(&f.ip_options)));
        }
        3 if tcp => {
            f.tcp_options = option_soup(rng);
            log.push(format!("tcp-options({})", hex(&f.tcp_options)));
        }
        4 if tcp => {
            let w = {
                let xs = [0, 65535, rng.u16()];
                *rng.pick(&xs)
            };
            f.window = w;
            log.push(format!("window={w}"));
        }
        5 if tcp => {
            let fl = random_flags(rng);
            *f = f.clone().flags(fl);
            log.push(format!("flags={fl:?}"));
        }
        6 if tcp => {
            if let L4::Tcp { seq, ack, .. } = &mut f.l4 {
                if rng.one_in(2) {
                    *seq = rng.u32();
                } else {
                    *ack = ack.wrapping_add({
                        let xs = [1, u32::MAX, 8, rng.u32()];
                        *rng.pick(&xs)
                    });
                }
            }
            log.push("seq/ack".into());
        }
        7 => {
            f.payload = match rng.below(3) {
                0 => rng.bytes_in(0, 300),
                1 => http_request(rng),
                _ => Vec::new(),
            };
            log.push(format!("payload({} bytes)", f.payload.len()));
        }
        8 => log.push("payload-mtu".into()),
        9 => {
            let n = rng.range(1500, 3300);
            f.payload = rng.bytes(n);
            log.push(format!("payload-jumbo({n})"));
        }
        10 => {
            let mut a = rng.bytes(6);
            if rng.one_in(3) {
                a = vec![0xff; 6];
            }
            let b = rng.bytes(6);
            f.src_mac.copy_from_slice(&a);
            if rng.one_in(2) {
                f.dst_mac.copy_from_slice(&b);
            }
            log.push("macs".into());
        }
        11 => {
            let ips = [
                VIP,
                VIP_COOKIE,
                NOT_A_VIP,
                CLIENT,
                backend_addr(0),
                backend_addr(20),
                Ipv4Addr::UNSPECIFIED,
                Ipv4Addr::BROADCAST,
                Ipv4Addr::LOCALHOST,
                Ipv4Addr::new(224, 0, 0, 1),
            ];
            let ports = [80, 53, 81, 8080, 5353, 0, 40000, rng.u16()];
            let a = SocketAddrV4::new(*rng.pick(&ips), *rng.pick(&ports));
            if rng.one_in(2) {
                f.src = a;
                log.push(format!("src={a}"));
            } else {
                f.dst = a;
                log.push(format!("dst={a}"));
            }
        }
        _ => {
            if !tcp {
                f.udp_zero_checksum = true;
                log.push("udp-no-csum".into());
            } else {
                f.tcp_options = option_soup(rng);
                log.push(format!("tcp-options({})", hex(&f.tcp_options)));
            }
        }
    }
}

/// Byte edits that keep the frame consistent (checksums fixed).
pub(super) fn mutate_consistent(rng: &mut Rng, f: &mut Vec<u8>, log: &mut Vec<String>) {
    let Some(l3) = l3_of(f) else {
        // Not IPv4: the link header only.
        if f.len() >= 14 {
            let et = {
                let xs = [0x0800u16, 0x8100, 0x88a8, 0x86dd, rng.u16()];
                *rng.pick(&xs)
            };
            f[12..14].copy_from_slice(&et.to_be_bytes());
            log.push(format!("ethertype={et:#06x}"));
        }
        return;
    };
    if f.len() < l3 + 20 {
        return;
    }
    let l4 = l3 + (f[l3] & 0x0f) as usize * 4;
    let tcp = f[l3 + 9] == PROTO_TCP;
    match rng.below(10) {
        0 | 1 => {
            let v = {
                let xs = [
                    0x2000u16,
                    0x2000 | rng.below(0x2000) as u16,
                    rng.below(0x2000) as u16,
                    0x6000,
                    0x4000,
                    0x1fff,
                    0x0001,
                    rng.u16(),
                ];
                *rng.pick(&xs)
            };
            f[l3 + 6..l3 + 8].copy_from_slice(&v.to_be_bytes());
            log.push(format!("frag={v:#06x}"));
        }
        2 => {
            f[l3 + 1] = rng.u8();
            let id = rng.u16();
            f[l3 + 4..l3 + 6].copy_from_slice(&id.to_be_bytes());
            log.push("tos/id".into());
        }
        3 if tcp && f.len() >= l4 + 20 => {
            f[l4 + 13] = rng.u8();
            f[l4 + 12] = (f[l4 + 12] & 0xf0) | (rng.u8() & 0x0f);
            log.push(format!("tcp-flag-byte={:#04x}", f[l4 + 13]));
        }
        4 if tcp && f.len() >= l4 + 20 => {
            let u = rng.u16();
            f[l4 + 18..l4 + 20].copy_from_slice(&u.to_be_bytes());
            f[l4 + 13] |= 0x20;
            log.push("urgent".into());
        }
        5 => {
            let n = rng.range(1, 64);
            f.extend(rng.bytes(n));
            log.push(format!("link-padding({n})"));
            return;
        }
        6 => {
            // An 802.1ad tag in front (one tag is allowed; a second one is not).
            let tci = rng.u16().to_be_bytes();
            f.splice(12..12, [0x88, 0xa8, tci[0], tci[1]]);
            log.push("s-tag".into());
            return;
        }
        7 => {
            f[l3] = (rng.u8() & 0xf0) | (f[l3] & 0x0f);
            log.push(format!("ip-version={}", f[l3] >> 4));
        }
        8 if !tcp && f.len() >= l4 + 8 => {
            let v = {
                let xs = [0u16, 1, 7, 8, 0xffff, rng.u16()];
                *rng.pick(&xs)
            };
            f[l4 + 4..l4 + 6].copy_from_slice(&v.to_be_bytes());
            log.push(format!("udp-len={v}"));
        }
        _ => {
            let et = {
                let xs = [0x8100u16, 0x86dd, 0x0806, rng.u16()];
                *rng.pick(&xs)
            };
            f[12..14].copy_from_slice(&et.to_be_bytes());
            log.push(format!("ethertype={et:#06x}"));
            return;
        }
    }
    fix_ip_checksum(f);
    fix_l4_checksum(f);
}

/// Raw byte edits: no checksum is fixed here.
pub(super) fn mutate_raw(rng: &mut Rng, f: &mut Vec<u8>, log: &mut Vec<String>) {
    if f.is_empty() {
        return;
    }
    let l3 = l3_of(f);
    match rng.below(9) {
        0 => {
            let n = if rng.one_in(10) {
                rng.below(f.len())
            } else {
                rng.range(14.min(f.len()), f.len())
            };
            f.truncate(n);
            log.push(format!("trunc@{n}"));
        }
        1 | 2 => {
            for _ in 0..rng.range(1, 4) {
                let i = rng.below(f.len());
                let b = rng.below(8);
                f[i] ^= 1 << b;
                log.push(format!("flip@{i}.{b}"));
            }
        }
        3 => {
            let i = rng.below(f.len());
            let v = {
                let xs = [0u8, 0xff, 0x7f, 0x80, 1, rng.u8()];
                *rng.pick(&xs)
            };
            f[i] = v;
            log.push(format!("set@{i}={v:#04x}"));
        }
        4 => {
            if let Some(l3) = l3.filter(|&l3| f.len() > l3) {
                let ihl = rng.below(16) as u8;
                f[l3] = (f[l3] & 0xf0) | ihl;
                log.push(format!("ihl={ihl}"));
            }
        }
        5 => {
            if let Some(l3) = l3.filter(|&l3| f.len() >= l3 + 4) {
                let len = (f.len() - l3) as u16;
                let v = {
                    let xs = [
                        0u16,
                        1,
                        19,
                        20,
                        39,
                        len.wrapping_sub(1),
                        len.wrapping_add(1),
                        len,
                        0xffff,
                        rng.u16(),
                    ];
                    *rng.pick(&xs)
                };
                f[l3 + 2..l3 + 4].copy_from_slice(&v.to_be_bytes());
                log.push(format!("totlen={v}"));
            }
        }
        6 => {
            if let Some(l3) = l3.filter(|&l3| f.len() > l3) {
                let l4 = l3 + (f[l3] & 0x0f) as usize * 4;
                if f.len() > l4 + 12 {
                    let d = rng.below(16) as u8;
                    f[l4 + 12] = (f[l4 + 12] & 0x0f) | (d << 4);
                    log.push(format!("doff={d}"));
                }
            }
        }
        7 => {
            let i = rng.below(f.len() + 1);
            let n = rng.range(1, 9);
            let b = rng.bytes(n);
            f.splice(i..i, b);
            log.push(format!("insert@{i}+{n}"));
        }
        _ => {
            let i = rng.below(f.len());
            let n = rng.range(1, 9).min(f.len() - i);
            f.drain(i..i + n);
            log.push(format!("delete@{i}-{n}"));
        }
    }
}
