//! A scale point's scene: the test bed with its services, flow entries and backends.

use super::*;

/// splitmix64: small, deterministic, good enough to spread keys.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// CLOCK_MONOTONIC_COARSE, the clock of `bpf_ktime_get_coarse_ns`.
pub(crate) fn coarse_ns() -> u64 {
    balancer_user::control::flows::clock_ns(libc::CLOCK_MONOTONIC_COARSE)
}

/// One bed at one scale point.
pub(crate) struct Scene {
    pub(crate) point: Point,
    pub(crate) bed: TestBed,
    /// The service's Maglev table and the backends of its slots.
    pub(crate) ring: Vec<u32>,
    pub(crate) slots: StdHashMap<u32, SocketAddrV4>,
    /// Clients of the pre-filled flows (to the VIP).
    pub(crate) clients: Vec<SocketAddrV4>,
    /// Client (address, port) pairs in use, so new flows never meet an entry.
    pub(crate) used: HashSet<u64>,
    pub(crate) hot: Vec<u8>,
    pub(crate) hot_backend: SocketAddrV4,
    pub(crate) spliced: Option<Vec<u8>>,
    pub(crate) setup_seconds: f64,
    /// New-flow calls: coarse time and backend slot, in call order (warm-up included),
    /// and whether the call was measured.
    pub(crate) syn_calls: Vec<(u64, u32, bool)>,
}

impl Scene {
    pub(crate) fn backend_of(&self, client: SocketAddrV4) -> (u32, SocketAddrV4) {
        let key = tcp_key(client, vip());
        let slot = self.ring[(flow_hash(&key) % RING_SIZE) as usize];
        (slot, self.slots[&slot])
    }

    pub(crate) fn random_client(&mut self, rng: &mut Rng) -> SocketAddrV4 {
        loop {
            let r = rng.next();
            let addr = u32::from(Ipv4Addr::new(198, 19, 0, 0)) | (r & 0xffff) as u32;
            let port = 1024 + ((r >> 16) % (65536 - 1024)) as u16;
            if self.used.insert((addr as u64) << 16 | port as u64) {
                return SocketAddrV4::new(Ipv4Addr::from(addr), port);
            }
        }
    }
}

pub(crate) fn open_map(p: &std::path::Path, name: &str) -> Result<Map> {
    let path = p.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

/// Adds the NAT service with `n` backends. Few: the bed's usual 198.18.1.x backends;
/// many: 198.18.32.1 upwards, with a route and permanent neighbours added in one batch.
pub(crate) fn add_nat_service(bed: &TestBed, n: usize) -> Result<StdHashMap<u32, SocketAddrV4>> {
    let backends: Vec<SocketAddrV4> = if n <= 200 {
        (0..n)
            .map(|i| SocketAddrV4::new(backend_addr(i as u8), 8080))
            .collect()
    } else {
        let base = u32::from(MANY_BASE);
        (0..n)
            .map(|i| SocketAddrV4::new(Ipv4Addr::from(base + i as u32), 8080))
            .collect()
    };
    if n > 200 {
        bed.netns()
            .ip(&["route", "add", MANY_ROUTE, "dev", BACKEND_IF])?;
        let batch: String = backends
            .iter()
            .map(|b| {
                let m = backend_mac(*b.ip());
                format!(
                    "neigh replace {} lladdr {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} dev {BACKEND_IF} nud permanent\n",
                    b.ip(),
                    m[0], m[1], m[2], m[3], m[4], m[5]
                )
            })
            .collect();
        let file = std::env::temp_dir().join(format!("{}.neigh", bed.netns().name()));
        fs::write(&file, batch)?;
        let r = bed.netns().ip(&["-batch", &file.to_string_lossy()]);
        let _ = fs::remove_file(&file);
        r.context("adding the backends' neighbours")?;
    } else {
        for b in &backends {
            bed.add_neighbour(*b.ip())?;
        }
    }
    let addr = ServiceAddr {
        addr: *vip().ip(),
        port: vip().port(),
        proto: Proto::Tcp,
    };
    let service = bed.balancer().add_service(addr)?;
    let mut slots = StdHashMap::new();
    if n <= 200 {
        for b in backends {
            let info = bed
                .balancer()
                .add_backend(addr, BackendSpec::new(b, Weight::DEFAULT))?;
            slots.insert(info.slot, b);
        }
        return Ok(slots);
    }
    // Many: `balancer backend add` one at a time rebuilds the Maglev table after each
    // (about 10 ms each, 40 s for 4,096). Written directly instead, as the control plane
    // would from an empty table with all of them: every slot, then the table computed by
    // the control plane's own `maglev::update`.
    let mut array: Array<MapData, Backend> = bed.balancer().map(map_names::BACKENDS)?.try_into()?;
    let mut members = Vec::with_capacity(n);
    for (slot, b) in backends.iter().enumerate() {
        let slot = slot as u32;
        array.set(
            slot,
            Backend {
                addr: ip_to_map(*b.ip()),
                port: b.port().to_be(),
                state: balancer_common::backend_state::UP,
                _pad: 0,
                service: service.id,
                weight: Weight::DEFAULT.get(),
            },
            0,
        )?;
        members.push(Member {
            slot,
            identity: Member::identity_of(*b.ip(), b.port()),
            weight: Weight::DEFAULT.get(),
        });
        slots.insert(slot, *b);
    }
    let table = maglev::update(&vec![NO_BACKEND; RING_SIZE as usize], &members);
    let mut ring: Array<MapData, u32> = bed.balancer().map(map_names::RING)?.try_into()?;
    for (i, v) in table.iter().enumerate() {
        ring.set(service.id * RING_SIZE + i as u32, *v, 0)?;
    }
    let seen = bed.balancer().backends(None)?;
    ensure!(
        seen.len() == n && seen.iter().all(|b| b.table_share > 0.0),
        "the control plane sees {} backends (expected {n}, each with a share of the table)",
        seen.len()
    );
    Ok(slots)
}

/// The NAT service's Maglev table (service id from the control plane).
pub(crate) fn read_ring(bed: &TestBed) -> Result<Vec<u32>> {
    let id = bed
        .balancer()
        .services()?
        .into_iter()
        .find(|s| s.service.addr == *vip().ip() && s.service.port == vip().port())
        .context("NAT service missing")?
        .id;
    let ring: Array<MapData, u32> = bed
        .balancer()
        .map(balancer_common::map_names::RING)?
        .try_into()?;
    (0..RING_SIZE)
        .map(|i| Ok(ring.get(&(id * RING_SIZE + i), 0)?))
        .collect()
}

/// Both entries of an established flow of `client` to the VIP through `slot`, as the
/// program leaves them after the handshake (next hop resolved).
pub(crate) fn established_entries(
    client: SocketAddrV4,
    slot: u32,
    backend: SocketAddrV4,
    client_if: u32,
    backend_if: u32,
    now: u64,
) -> [(FlowKey, Flow); 2] {
    let pkt = Packet {
        l3_off: 14,
        l4_off: 34,
        payload_off: 54,
        ip_end: 54,
        key: tcp_key(client, vip()),
        tcp_flags: TCP_SYN,
        ttl: 64,
        first_fragment: false,
        vlan: false,
    };
    let eth = EthHdr {
        dst: CLIENT_IF_MAC,
        src: CLIENT_MAC,
        ether_type: 0x0800u16.to_be(),
    };
    let b = Backend {
        addr: ip_to_map(*backend.ip()),
        port: backend.port().to_be(),
        state: balancer_common::backend_state::UP,
        _pad: 0,
        service: 0,
        weight: Weight::DEFAULT.get(),
    };
    let (k, mut f, rk, mut r) = new_entries(&pkt, &eth, client_if, slot, &b, now);
    f.state = flow_state::ESTABLISHED;
    r.state = flow_state::ESTABLISHED;
    f.set(flow_flags::L2_VALID);
    f.ifindex = backend_if;
    f.dmac = backend_mac(*backend.ip());
    f.smac = BACKEND_IF_MAC;
    [(k, f), (rk, r)]
}

/// The vmalloc areas of BPF maps (/proc/vmallocinfo, root only): range -> (bytes of
/// pages allocated, caller). Map memory (hash table buckets and preallocated elements,
/// arrays, ring buffers, per-CPU chunks) is allocated there.
pub(crate) type Areas = StdHashMap<String, (u64, String)>;

pub(crate) fn vmalloc_areas() -> Areas {
    let text = fs::read_to_string("/proc/vmallocinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let range = it.next()?.to_string();
            let _size = it.next()?;
            let caller = it.next()?.split('+').next()?.to_string();
            let pages: u64 = l
                .split_whitespace()
                .find_map(|w| w.strip_prefix("pages="))?
                .parse()
                .ok()?;
            let map_related = ["map", "lru", "ringbuf", "pcpu", "bpf"]
                .iter()
                .any(|w| caller.contains(w));
            map_related.then_some((range, (pages * 4096, caller)))
        })
        .collect()
}

/// Bytes of the map-related vmalloc areas in `after` that are not in `before`.
pub(crate) fn vmalloc_growth(before: &Areas, after: &Areas) -> i64 {
    after
        .iter()
        .filter(|(k, _)| !before.contains_key(*k))
        .map(|(_, (b, _))| *b as i64)
        .sum()
}

pub(crate) fn scene(
    point: Point,
    rng: &mut Rng,
    progress: &dyn Fn(String),
) -> Result<(Scene, i64)> {
    let started = Instant::now();
    let before = vmalloc_areas();
    let bed = TestBed::new(CAPACITY)?;
    let created = vmalloc_growth(&before, &vmalloc_areas());
    let slots = add_nat_service(&bed, point.backends())?;
    let spliced = if point.cookie() {
        let cb: Vec<SocketAddrV4> = (0..3)
            .map(|n| SocketAddrV4::new(backend_addr(20 + n), 8080))
            .collect();
        bed.add_cookie_service(
            COOKIE_VIP,
            &[(cb[0], "be1"), (cb[1], "be2"), (cb[2], "be3")],
        )?;
        bed.rotate_syncookie_secret(TEST_SECRET)?;
        Some(splice_one(&bed, cb[1])?)
    } else {
        None
    };
    for flags in [SYN, ACK] {
        let f = Frame::tcp(EST_CLIENT, vip(), flags).build();
        run_expecting(&bed, &f, Ingress::Client, XDP_REDIRECT, "hot flow setup")?;
    }
    let ring = read_ring(&bed)?;
    let mut s = Scene {
        point,
        bed,
        ring,
        slots,
        clients: Vec::new(),
        used: HashSet::new(),
        hot: Frame::tcp(EST_CLIENT, vip(), ACK).build(),
        hot_backend: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        spliced,
        setup_seconds: 0.0,
        syn_calls: Vec::new(),
    };
    s.hot_backend = s.backend_of(EST_CLIENT).1;
    let r = s.bed.run(&s.hot, Ingress::Client)?;
    check_to_backend(&s.hot, &r.output, EST_CLIENT, s.hot_backend)
        .context("hot established flow output")?;

    // Fill the table: both entries of entries/2 random flows, in one batch update.
    let flows = point.entries() / 2;
    let (cif, bif) = (
        s.bed.ifindex(Ingress::Client),
        s.bed.ifindex(Ingress::Backend),
    );
    let now = coarse_ns();
    let mut keys = Vec::with_capacity(flows * 2);
    let mut values = Vec::with_capacity(flows * 2);
    for _ in 0..flows {
        let c = s.random_client(rng);
        let (slot, backend) = s.backend_of(c);
        for (k, v) in established_entries(c, slot, backend, cif, bif, now) {
            keys.push(k);
            values.push(v);
        }
        s.clients.push(c);
    }
    let fill = Instant::now();
    let path = s.bed.pin_dir().join(balancer_common::map_names::FLOWS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let m0 = vmalloc_areas();
    map_update_batch(data.fd().as_fd(), &keys, &values).context("filling the flow table")?;
    let flows_map: HashMap<MapData, FlowKey, Flow> = Map::from_map_data(data)?.try_into()?;
    let fill_growth = vmalloc_growth(&m0, &vmalloc_areas());
    for _ in 0..64 {
        let k = keys[rng.below(keys.len())];
        flows_map
            .get(&k, 0)
            .context("a pre-filled entry is missing")?;
    }
    s.setup_seconds = started.elapsed().as_secs_f64();
    progress(format!(
        "  {}: {} entries written in {:.2} s (BPF_MAP_UPDATE_BATCH; map vmalloc areas grew {} kB meanwhile: elements are preallocated), setup {:.1} s",
        point.name(),
        keys.len(),
        fill.elapsed().as_secs_f64(),
        fill_growth / 1024,
        s.setup_seconds
    ));
    Ok((s, created))
}
