//! Segments of test_run calls on one path of the program, and running them on one CPU.

use super::*;

/// The frames of one batch of one path on one bed.
pub(crate) enum Input {
    Same(Vec<u8>, usize),
    Each(Vec<Vec<u8>>),
}

pub(crate) struct Segment {
    pub(crate) path: PathId,
    pub(crate) input: Input,
    /// Calls whose output is checked: (call, client, backend).
    pub(crate) checks: Vec<(usize, SocketAddrV4, SocketAddrV4)>,
    /// Entries to delete after the batch (new flows).
    pub(crate) cleanup: Vec<FlowKey>,
}

pub(crate) fn segment(s: &mut Scene, path: PathId, calls: usize, rng: &mut Rng) -> Segment {
    let sample = |i: usize| i < 2 || i.is_multiple_of(997);
    match path {
        PathId::EstHot => Segment {
            path,
            input: Input::Same(s.hot.clone(), calls),
            checks: (0..calls)
                .filter(|i| sample(*i))
                .map(|i| (i, EST_CLIENT, s.hot_backend))
                .collect(),
            cleanup: Vec::new(),
        },
        PathId::Spliced => Segment {
            path,
            input: Input::Same(s.spliced.clone().expect("cookie bed"), calls),
            checks: Vec::new(),
            cleanup: Vec::new(),
        },
        PathId::EstRandom | PathId::EstRandomFew => {
            let mut frames = Vec::with_capacity(calls);
            let mut checks = Vec::new();
            let n = if path == PathId::EstRandomFew {
                SMALL_ENTRIES / 2
            } else {
                s.clients.len()
            };
            for i in 0..calls {
                let c = s.clients[rng.below(n)];
                frames.push(Frame::tcp(c, vip(), ACK).build());
                if sample(i) {
                    checks.push((i, c, s.backend_of(c).1));
                }
            }
            Segment {
                path,
                input: Input::Each(frames),
                checks,
                cleanup: Vec::new(),
            }
        }
        PathId::NewFlow => {
            let mut frames = Vec::with_capacity(calls);
            let mut checks = Vec::new();
            let mut cleanup = Vec::with_capacity(2 * calls);
            for i in 0..calls {
                let c = s.random_client(rng);
                let (_, b) = s.backend_of(c);
                frames.push(Frame::tcp(c, vip(), SYN).build());
                cleanup.push(tcp_key(c, vip()));
                cleanup.push(tcp_key(b, c));
                if sample(i) {
                    checks.push((i, c, b));
                }
            }
            Segment {
                path,
                input: Input::Each(frames),
                checks,
                cleanup,
            }
        }
    }
}

/// Runs one segment on the bed's worker pinned to `cpu`: durations, and the coarse
/// time of each call.
pub(crate) fn run_segment(s: &Scene, seg: Segment, cpu: usize) -> Result<(Vec<u64>, Vec<u64>)> {
    s.bed.with_programs(move |p| -> Result<(Vec<u64>, Vec<u64>)> {
        pin_to_cpu(cpu);
        let ifx = Some(p.client_ifindex);
        let mut out = vec![0u8; 4096];
        let n = match &seg.input {
            Input::Same(_, n) => *n,
            Input::Each(v) => v.len(),
        };
        let mut durations = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        let mut checks = seg.checks.iter().peekable();
        for i in 0..n {
            let frame = match &seg.input {
                Input::Same(f, _) => f,
                Input::Each(v) => &v[i],
            };
            times.push(coarse_ns());
            let r = test_run(&p.balancer, frame, ifx, 1, &mut out)?;
            if r.return_value != XDP_REDIRECT {
                bail!(
                    "{}: verdict {} instead of XDP_REDIRECT: the path measured is not the intended one",
                    seg.path.name(),
                    verdict_name(r.return_value)
                );
            }
            durations.push(r.duration.as_nanos() as u64);
            if let Some((_, client, backend)) = checks.next_if(|c| c.0 == i) {
                check_to_backend(frame, &out[..r.data_size_out as usize], *client, *backend)
                    .with_context(|| format!("{} call {i}: output", seg.path.name()))?;
            }
        }
        if !seg.cleanup.is_empty() {
            let mut flows: HashMap<MapData, FlowKey, Flow> =
                open_map(p.pin_dir(), balancer_common::map_names::FLOWS)?.try_into()?;
            for k in &seg.cleanup {
                flows
                    .remove(k)
                    .context("deleting a new flow's entry (it must exist where expected)")?;
            }
        }
        Ok((durations, times))
    })?
}
