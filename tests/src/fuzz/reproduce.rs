//! Reproductions of the known (and fixed) bugs as minimal frame sequences.

use super::*;

/// One frame of a reproduction and what the program did with it.
#[derive(Clone, Debug)]
pub struct Step {
    pub what: &'static str,
    pub ingress: Ingress,
    pub input: Vec<u8>,
    pub verdict: u32,
    pub output: Vec<u8>,
    pub counters: BTreeMap<&'static str, u64>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} (on {:?}): {} {:?}",
            self.what,
            self.ingress,
            verdict_name(self.verdict),
            self.counters
        )?;
        writeln!(f, "  in  {}", hex(&self.input))?;
        write!(f, "  out {}", hex(&self.output))
    }
}

/// A deterministic reproduction of a [`KNOWN_BUGS`] entry on a fresh bed.
#[derive(Clone, Debug)]
pub struct Reproduction {
    pub name: &'static str,
    pub steps: Vec<Step>,
    /// Whether the last step still shows the bug.
    pub reproduced: bool,
    pub explanation: String,
}

impl fmt::Display for Reproduction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: reproduced: {}", self.name, self.reproduced)?;
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        write!(f, "{}", self.explanation)
    }
}

fn step(bed: &TestBed, what: &'static str, frame: Vec<u8>, ingress: Ingress) -> Result<Step> {
    let before = bed.counters()?;
    let r = bed.run(&frame, ingress)?;
    let counters = bed.counters()?.delta(&before);
    Ok(Step {
        what,
        ingress,
        input: frame,
        verdict: r.verdict,
        output: r.output,
        counters,
    })
}

/// Runs the minimal frame sequence of the known bug `name`: a first segment with a valid
/// syncookie whose cookie names `app1` (bound: SYN to 198.18.1.30:8080), then the
/// backend's answer that shows the bug.
pub fn reproduce(name: &str) -> Result<Reproduction> {
    let fb = FuzzBed::new(1024)?;
    let bed = &fb.bed;
    let client = SocketAddrV4::new(CLIENT, 40000);
    let vip = fb.layout.svcs[SVC_COOKIE].addr;
    let app1 = fb.layout.bes[fb
        .layout
        .be_by_token(SVC_COOKIE, token_hash(b"app1"))
        .expect("app1")]
    .addr;
    let isn = 0x1000_0000u32;
    let cookie = syncookie(&TEST_SECRET, client, vip, isn, 1460, cookie_window());
    let first = tcp_to(
        client,
        vip,
        flags(false, true, false, false, true),
        isn.wrapping_add(1),
        cookie.wrapping_add(1),
    )
    .payload(b"GET / HTTP/1.1\r\nCookie: JSESSIONID=s!app1\r\n\r\n")
    .build();
    let mut steps = vec![step(
        bed,
        "first segment with a valid syncookie, cookie naming app1",
        first,
        Ingress::Client,
    )?];
    let (reproduced, explanation) = match name {
        "stale-ack-rst-half-counted" => {
            let ack = from_backend(tcp_to(
                app1,
                client,
                flags(false, true, false, false, false),
                0x2000_0000,
                0x3000_0000,
            ))
            .build();
            // The first such ACK goes to the TC program (RST and SYN again there); the
            // RST this bug was about is XDP's answer to the next one.
            steps.push(step(
                bed,
                "the backend answers the SYN with an ACK of another connection (passed to TC)",
                ack.clone(),
                Ingress::Backend,
            )?);
            let s = step(
                bed,
                "it does so again: XDP resets it",
                ack,
                Ingress::Backend,
            )?;
            let bug = s.verdict == XDP_TX
                && s.counters.get("tx_same_interface") == Some(&1)
                && !s.counters.contains_key("tx_bytes");
            steps.push(s);
            (
                bug,
                "the RST back to the backend is counted in tx_same_interface without tx_bytes \
                 or the backend's packets_to"
                    .to_string(),
            )
        }
        "refused-rst-rewritten-then-refused" => {
            let rst = from_backend(tcp_to(
                app1,
                client,
                flags(false, true, false, true, false),
                0,
                isn.wrapping_add(1),
            ))
            .ttl(1)
            .build();
            let s = step(
                bed,
                "the backend refuses the SYN (RST|ACK acking the client's ISN) with TTL 1",
                rst,
                Ingress::Backend,
            )?;
            let forgotten = bed.flow_entry(&tcp_key(client, vip))?.is_none();
            let bug = s.verdict == XDP_PASS && s.output != s.input;
            let explanation = format!(
                "XDP_PASS (pass_ttl_exceeded, documented as untouched) with the sequence number \
                 rewritten from {:#x} to {:#x}; bindings_refused counted and the binding \
                 forgotten: {forgotten}, although the client got nothing",
                be32(&s.input, 14 + 20 + 4),
                be32(&s.output, 14 + 20 + 4)
            );
            steps.push(s);
            (bug, explanation)
        }
        other => return Err(anyhow!("no reproduction for {other:?}")),
    };
    let name = KNOWN_BUGS
        .iter()
        .map(|k| k.name)
        .find(|n| *n == name)
        .unwrap_or("(not in KNOWN_BUGS)");
    Ok(Reproduction {
        name,
        steps,
        reproduced,
        explanation,
    })
}
