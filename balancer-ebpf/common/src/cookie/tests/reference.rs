//! A straightforward reference parser of the rules in the module documentation, and a
//! property test that the scanner agrees with it on generated requests.

use super::*;

/// A straightforward implementation of the documented rules with slices and
/// iterators, to compare the scanner against.
fn reference(payload: &[u8], cfg: &CookieConfig) -> CookieOutcome {
    let data = &payload[..payload.len().min(SCAN_MAX)];
    let (name_buf, name_len) = cfg.name_bytes();
    let name = &name_buf[..name_len];
    match data.iter().take(16).position(|b| !b.is_ascii_uppercase()) {
        None if data.len() < 16 => return HeaderIncomplete,
        None => return NotHttp,
        Some(t) if t < 3 || data[t] != b' ' => return NotHttp,
        Some(_) => {}
    }
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let mut saw_header = false;
    for (idx, line) in lines.iter().enumerate().skip(1) {
        let line_terminated = idx + 1 < lines.len();
        if line_terminated && (line.is_empty() || *line == b"\r") {
            return if saw_header {
                CookieNameAbsent
            } else {
                NoCookieHeader
            };
        }
        if line.len() < 7 || !line[..7].eq_ignore_ascii_case(b"cookie:") {
            continue;
        }
        saw_header = true;
        let pieces: Vec<&[u8]> = line[7..].split(|&b| b == b';').collect();
        for (pi, piece) in pieces.iter().enumerate() {
            let piece_terminated = line_terminated || pi + 1 < pieces.len();
            let start = piece
                .iter()
                .position(|&b| b != b' ' && b != b'\t')
                .unwrap_or(piece.len());
            let piece = &piece[start..];
            let Some(rest) = piece.strip_prefix(name).and_then(|r| r.strip_prefix(b"=")) else {
                continue;
            };
            let rest = rest.strip_prefix(b"\"").unwrap_or(rest);
            let end = rest
                .iter()
                .position(|&b| b == b';' || b == b'"' || b <= 0x20);
            let known_end = end.is_some() || piece_terminated;
            let value = &rest[..end.unwrap_or(rest.len())];
            let segs: Vec<&[u8]> = value.split(|&b| b == cfg.delimiter).collect();
            // Some(Some(token)), Some(None): not there, None: cut.
            let seg = |n: usize| -> Option<Option<&[u8]>> {
                if n == 0 {
                    Some(None)
                } else if n < segs.len() || (n == segs.len() && known_end) {
                    Some(Some(segs[n - 1]))
                } else if known_end {
                    Some(None)
                } else {
                    None
                }
            };
            let ok = |t: &[u8]| !t.is_empty() && t.len() <= MAX_TOKEN_LEN;
            return match seg(cfg.primary as usize) {
                None => HeaderIncomplete,
                Some(Some(p)) if ok(p) => Found {
                    primary: token_hash(p),
                    secondary: match seg(cfg.secondary as usize) {
                        Some(Some(s)) if ok(s) => Some(token_hash(s)),
                        _ => None,
                    },
                },
                Some(_) => SegmentMissing,
            };
        }
    }
    HeaderIncomplete
}

fn pick(choices: &'static [&'static str]) -> impl Strategy<Value = &'static str> {
    proptest::sample::select(choices)
}

/// What a generated request is built for: the cookie name and delimiter of the
/// configuration, so that matches are frequent.
#[derive(Clone, Debug)]
struct Target {
    name: String,
    delim: char,
}

impl Target {
    fn of(cfg: &CookieConfig) -> Self {
        let (bytes, len) = cfg.name_bytes();
        Target {
            name: String::from_utf8(bytes[..len].to_vec()).unwrap(),
            delim: cfg.delimiter as char,
        }
    }
}

/// A cookie value made of segments (the configured delimiter mostly, other bytes that
/// end or split values now and then).
fn value(t: &Target) -> impl Strategy<Value = String> {
    let d = t.delim.to_string();
    (
        proptest::collection::vec(
            pick(&[
                "",
                "a",
                "web1",
                "s3ss10n",
                "x.y",
                "0123456789abcdef0123456789abcdef",
                "~",
            ]),
            0..6,
        ),
        prop_oneof![6 => Just(d), 1 => pick(&["!", ".", ":", " ", "\""]).prop_map(String::from)],
        prop::bool::weighted(0.15),
    )
        .prop_map(|(segs, d, quoted)| {
            let v = segs.join(&d);
            if quoted {
                format!("\"{v}\"")
            } else {
                v
            }
        })
}

fn cookie_pair(t: &Target) -> impl Strategy<Value = String> {
    let n = t.name.clone();
    (
        prop_oneof![
            5 => Just(n.clone()),
            1 => Just(format!("X{n}")),
            1 => Just(format!("{n}X")),
            1 => Just(n.to_lowercase()),
            1 => Just(n[..n.len() - 1].to_string()),
            1 => pick(&["JSESSIONID", "route", "a", "theme", ""]).prop_map(String::from),
        ],
        prop_oneof![8 => Just("="), 1 => Just(""), 1 => Just(" ="), 1 => Just("==")],
        value(t),
    )
        .prop_map(|(n, eq, v)| format!("{n}{eq}{v}"))
}

fn cookie_header(t: &Target) -> impl Strategy<Value = String> {
    (
        prop_oneof![
            6 => pick(&["Cookie", "cookie", "COOKIE"]),
            1 => pick(&["Cookie2", "Set-Cookie", " Cookie", "Cookie ", "Cook"]),
        ],
        pick(&["", " ", "  ", "\t"]),
        proptest::collection::vec(
            (
                cookie_pair(t),
                pick(&[";", "; ", "; ", " ;", ";\t", ";;", " ; ", "; \r", ";\n"]),
            ),
            0..5,
        ),
    )
        .prop_map(|(n, ws, pairs)| {
            let mut s = format!("{n}:{ws}");
            for (i, (p, sep)) in pairs.iter().enumerate() {
                if i > 0 {
                    s.push_str(sep);
                }
                s.push_str(p);
            }
            s
        })
}

fn header_line(t: &Target) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => cookie_header(t),
        2 => pick(&[
            HOST,
            UA,
            ACCEPT,
            "Connection: keep-alive",
            "Cache-Control: no-cache",
            "X-Q: JSESSIONID=s!no!no",
            "Content-Length: 0",
            "\tcontinued: x",
        ])
        .prop_map(String::from),
        1 => "[ -~]{0,60}".prop_map(String::from),
    ]
}

fn request_for(t: &Target) -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            8 => pick(&["GET", "POST", "OPTIONS", "PROPFIND"]),
            1 => pick(&["get", "G", "\u{16}\u{3}\u{1}", "GETGETGETGETGETGET"]),
        ],
        pick(&[" /", " /", " /a?JSESSIONID=s!q!r", " /x;jsessionid=s!q"]),
        proptest::collection::vec(header_line(t), 0..8),
        pick(&["\r\n", "\r\n", "\n"]),
        prop::bool::weighted(0.8),
        pick(&["", "Cookie: JSESSIONID=s!body!x\r\n\r\n"]),
        any::<prop::sample::Index>(),
        prop::bool::weighted(0.3),
    )
        .prop_map(|(m, target, lines, eol, end, body, cut, do_cut)| {
            let mut s = format!("{m}{target} HTTP/1.1{eol}");
            for l in &lines {
                s.push_str(l);
                s.push_str(eol);
            }
            if end {
                s.push_str(eol);
                s.push_str(body);
            }
            let mut b = s.into_bytes();
            if do_cut {
                b.truncate(cut.index(b.len() + 1));
            }
            b
        })
}

fn config() -> impl Strategy<Value = CookieConfig> {
    (
        pick(&["JSESSIONID", "route", "ab", "SERVERID"]),
        pick(&["!", ".", ":", "~"]),
        1u8..5,
        0u8..5,
    )
        .prop_filter_map("valid", |(n, d, p, s)| {
            CookieConfig::new(n.as_bytes(), d.as_bytes()[0], p, s).ok()
        })
}

/// A configuration and a request made for it.
fn case() -> impl Strategy<Value = (Vec<u8>, CookieConfig)> {
    config().prop_flat_map(|cfg| (request_for(&Target::of(&cfg)), Just(cfg)))
}

/// The generator must reach every outcome often enough for the comparison to mean
/// something.
#[test]
fn generator_covers_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = case();
    let mut counts = [0usize; 7];
    let n = 4000;
    for _ in 0..n {
        let (req, cfg) = strategy.new_tree(&mut runner).unwrap().current();
        let i = match reference(&req, &cfg) {
            NotHttp => 0,
            NoCookieHeader => 1,
            CookieNameAbsent => 2,
            SegmentMissing => 3,
            HeaderIncomplete => 4,
            Found {
                secondary: None, ..
            } => 5,
            Found {
                secondary: Some(_), ..
            } => 6,
        };
        counts[i] += 1;
    }
    for c in counts {
        assert!(c * 40 > n, "an outcome is rare: {counts:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10_000, ..ProptestConfig::default() })]

    #[test]
    fn matches_reference_parser((req, cfg) in case()) {
        prop_assert_eq!(scan_with(&req, &cfg), reference(&req, &cfg),
            "request {:?}", String::from_utf8_lossy(&req));
    }

    #[test]
    fn matches_reference_parser_default_config(
        req in request_for(&Target::of(&CookieConfig::default())),
    ) {
        let cfg = CookieConfig::default();
        prop_assert_eq!(scan_with(&req, &cfg), reference(&req, &cfg),
            "request {:?}", String::from_utf8_lossy(&req));
    }

    #[test]
    fn arbitrary_bytes_match_reference(tail in proptest::collection::vec(
        prop_oneof![any::<u8>(), pick(&["\n", "\r", ";", "!", "\"", " ", "c"]).prop_map(|s| s.as_bytes()[0])],
        0..300), cookie in prop::bool::ANY) {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        if cookie {
            req.extend_from_slice(b"Cookie: JSESSIONID=");
        }
        req.extend_from_slice(&tail);
        let cfg = CookieConfig::default();
        prop_assert_eq!(scan_with(&req, &cfg), reference(&req, &cfg),
            "request {:?}", String::from_utf8_lossy(&req));
    }
}
