//! Loading, pinning, attaching and detaching the XDP data plane.
//!
//! Pin directory layout (one per instance, `<bpffs root>/<instance>/`):
//! - `BALANCER_*`: the maps (see `balancer_common::map_names`), pinned by the loader;
//! - `prog_balancer`, `prog_balancer_tc`, `prog_veth_peer_pass`: the XDP program, the TC
//!   program of delayed binding, the pass program for veth peers ([`veth`]);
//! - `link_<ifname>`, `tclink_<ifname>`: the XDP and TC links of an attached interface;
//! - `peerlink_<ifname>`: the pass program's link on that interface's veth peer.
//!
//! The links are pinned, so the program stays attached and forwarding after the process
//! that attached it exits, and `detach` is the only thing that removes it.

pub(crate) mod mmap_array;
pub mod pair_ring;
pub mod pinned;
pub mod store;
pub mod veth;

pub use pinned::PinnedMaps;
pub use store::MapStore;

use std::{
    fs,
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{
        links::FdLink, links::PinnedLink, tc::TcAttachType, ProgramError, SchedClassifier, Xdp,
        XdpMode,
    },
    EbpfLoader,
};
use balancer_common::{
    map_names,
    syncookie::{CookieSecret, SyncookieKeys},
    Config, PEER_PASS_PROGRAM_NAME, PROGRAM_NAME, TC_PROGRAM_NAME,
};

use crate::error::{io_ctx, map_ctx, prog_ctx, Error, Result};

/// Where instances live unless told otherwise.
pub const DEFAULT_BPFFS_ROOT: &str = "/sys/fs/bpf/balancer";
pub const PROGRAM_PIN: &str = "prog_balancer";
/// The TC ingress program that completes delayed binding where XDP cannot grow a frame.
pub const TC_PROGRAM_PIN: &str = "prog_balancer_tc";
/// The pass program for veth peers (see [`veth`]).
pub const PEER_PASS_PROGRAM_PIN: &str = "prog_veth_peer_pass";
const LINK_PREFIX: &str = "link_";
const TC_LINK_PREFIX: &str = "tclink_";
/// Links of the pass program on the veth peers of attached interfaces.
const PEER_LINK_PREFIX: &str = "peerlink_";

/// The compiled XDP object, built by build.rs.
pub static XDP_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/balancer-xdp"));

/// XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// In the driver (veth, most 10G+ NICs).
    #[default]
    Native,
    /// In the generic (skb) path: works everywhere, slower.
    Generic,
}

impl Mode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Mode::Native => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        }
    }
}

#[derive(Clone, Debug)]
pub struct AttachOptions {
    pub interfaces: Vec<String>,
    pub mode: Mode,
    /// Flow-table entries; only used when the maps are created.
    pub flow_capacity: u32,
    pub config: Config,
    /// Attach the pass program to the veth peer of every interface whose peer has no
    /// XDP program (see [`veth`]); without it such interfaces only get a warning.
    pub veth_peer_pass: bool,
}

/// One attached interface's veth XDP_TX check ([`Balancer::veth_checks`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct VethCheck {
    pub interface: String,
    /// The peer, if the interface is a veth.
    pub peer: Option<veth::VethPeer>,
    /// This instance attached the pass program to the peer.
    pub peer_pass_pinned: bool,
    /// The trap is open: what to do.
    pub warning: Option<String>,
    /// The check failed: why.
    pub error: Option<String>,
}

/// What [`attach`] did.
#[derive(Clone, Debug, Default)]
pub struct AttachReport {
    pub interfaces: Vec<String>,
    /// Interfaces whose veth peer got the pass program.
    pub peer_passes: Vec<String>,
    /// One line per interface whose `XDP_TX` frames can stall (or that could not be
    /// checked), saying what to do.
    pub warnings: Vec<String>,
}

/// Fails unless running as root: everything here needs bpffs and BPF syscalls.
pub fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(Error::NotRoot(euid));
    }
    Ok(())
}

/// Pin directory of an instance.
pub fn instance_dir(root: &Path, instance: &str) -> Result<PathBuf> {
    let ok = !instance.is_empty()
        && instance.len() <= 64
        && instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        return Err(Error::invalid(
            "instance name",
            instance,
            "use 1-64 letters, digits, '-' or '_'",
        ));
    }
    Ok(root.join(instance))
}

/// An instance's pinned data plane, opened for reading and changing its maps.
///
/// Holds an exclusive `flock` on the pin directory for its lifetime, so two `balancer`
/// processes never interleave a read-modify-write of the same maps.
pub struct Balancer {
    dir: PathBuf,
    _lock: fs::File,
}

impl Balancer {
    /// Opens the instance pinned at `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        require_root()?;
        if !dir.join(PROGRAM_PIN).exists() {
            return Err(not_attached(dir));
        }
        let lock = lock_dir(dir)?;
        Ok(Balancer {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens one pinned map.
    pub fn map(&self, name: &str) -> Result<Map> {
        let data = MapData::from_pin(self.dir.join(name))
            .map_err(map_ctx(format!("opening pinned map {name}")))?;
        Map::from_map_data(data).map_err(map_ctx(format!("opening pinned map {name}")))
    }

    /// Opens the pinned XDP program (for `BPF_PROG_TEST_RUN` and introspection).
    pub fn program(&self) -> Result<Xdp> {
        Xdp::from_pin(
            self.dir.join(PROGRAM_PIN),
            aya_obj::programs::XdpAttachType::Interface,
        )
        .map_err(prog_ctx("opening the pinned XDP program"))
    }

    /// Names of the interfaces with a pinned link.
    pub fn interfaces(&self) -> Result<Vec<String>> {
        attached_interfaces(&self.dir)
    }

    /// The veth XDP_TX check of every attached interface, as `balancer status` shows it:
    /// the peer (if the interface is a veth), whether this instance put the pass program
    /// there, and the warning if the trap is open; an interface that could not be
    /// checked has the reason instead.
    pub fn veth_checks(&self) -> Result<Vec<VethCheck>> {
        let mut out = Vec::new();
        for name in self.interfaces()? {
            let check = interface_index(&name).and_then(|i| veth::veth_peer(&name, i));
            out.push(match check {
                Ok(peer) => VethCheck {
                    peer_pass_pinned: veth::peer_link_pin(&self.dir, &name).exists(),
                    warning: peer.as_ref().and_then(veth::VethPeer::warning),
                    peer,
                    interface: name,
                    error: None,
                },
                Err(e) => VethCheck {
                    interface: name,
                    peer: None,
                    peer_pass_pinned: false,
                    warning: None,
                    error: Some(crate::error::one_line(&e)),
                },
            });
        }
        Ok(out)
    }

    fn config_map(&self) -> Result<Array<MapData, Config>> {
        self.map(map_names::CONFIG)?
            .try_into()
            .map_err(map_ctx("CONFIG map"))
    }

    pub fn config(&self) -> Result<Config> {
        self.config_map()?
            .get(&0, 0)
            .map_err(map_ctx("reading CONFIG"))
    }

    /// Replaces the data-plane settings (timeouts apply to the next packet of each flow).
    pub fn set_config(&self, config: &Config) -> Result<()> {
        self.config_map()?
            .set(0, config, 0)
            .map_err(map_ctx("writing CONFIG"))
    }
}

fn not_attached(dir: &Path) -> Error {
    Error::NotAttached {
        instance: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        path: dir.to_path_buf(),
    }
}

fn lock_dir(dir: &Path) -> Result<fs::File> {
    let f = fs::File::open(dir).map_err(io_ctx(format!("opening {}", dir.display())))?;
    // SAFETY: plain flock on a file descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io_ctx(format!("locking {}", dir.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(f)
}

fn attached_interfaces(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_ctx(format!("reading {}", dir.display())))? {
        let entry = entry.map_err(io_ctx(format!("reading {}", dir.display())))?;
        if let Some(name) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(LINK_PREFIX))
        {
            out.push(name.to_string());
        }
    }
    out.sort();
    Ok(out)
}

fn interface_index(name: &str) -> Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| Error::invalid("interface name", name, "contains a NUL byte"))?;
    // SAFETY: c is a valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(Error::UnknownInterface(name.to_string()));
    }
    Ok(index)
}

/// Loads the XDP object into the kernel and pins program and maps under `dir`, unless a
/// program is pinned there already (then nothing changes: maps and program are adopted as
/// they are). Returns true if it loaded a new program.
pub fn load_pinned(dir: &Path, flow_capacity: u32, config: &Config) -> Result<bool> {
    require_root()?;
    if dir.join(PROGRAM_PIN).exists() {
        return Ok(false);
    }
    if flow_capacity < 2 {
        return Err(Error::invalid(
            "flow capacity",
            flow_capacity,
            "needs at least 2 entries (one per direction)",
        ));
    }
    create_dir_private(dir)?;
    let result = (|| {
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .map_max_entries(map_names::FLOWS, flow_capacity)
            .load(XDP_OBJECT)?;
        let mut config_map: Array<&mut MapData, Config> = ebpf
            .map_mut(map_names::CONFIG)
            .ok_or_else(|| missing_in_object(map_names::CONFIG))?
            .try_into()
            .map_err(map_ctx("CONFIG map"))?;
        config_map
            .set(0, config, 0)
            .map_err(map_ctx("writing CONFIG"))?;
        // Cookie-mode services answer SYNs with syncookies: start with a random secret
        // (`balancer syncookie-key` installs a shared one).
        let mut keys: Array<&mut MapData, SyncookieKeys> = ebpf
            .map_mut(map_names::SYNCOOKIE_KEYS)
            .ok_or_else(|| missing_in_object(map_names::SYNCOOKIE_KEYS))?
            .try_into()
            .map_err(map_ctx("SYNCOOKIE_KEYS map"))?;
        let current = crate::model::secret::random_secret()?;
        keys.set(
            0,
            SyncookieKeys {
                current,
                previous: CookieSecret::default(),
            },
            0,
        )
        .map_err(map_ctx("writing SYNCOOKIE_KEYS"))?;
        load_and_pin_xdp(
            &mut ebpf,
            PROGRAM_NAME,
            "XDP program",
            &dir.join(PROGRAM_PIN),
        )?;
        let tc: &mut SchedClassifier = ebpf
            .program_mut(TC_PROGRAM_NAME)
            .ok_or_else(|| missing_in_object(TC_PROGRAM_NAME))?
            .try_into()
            .map_err(prog_ctx("TC program"))?;
        load_retrying(|| tc.load()).map_err(prog_ctx("loading the TC program (verifier)"))?;
        tc.pin(dir.join(TC_PROGRAM_PIN))
            .map_err(|e| io_ctx("pinning the TC program")(std::io::Error::other(e.to_string())))?;
        load_and_pin_xdp(
            &mut ebpf,
            PEER_PASS_PROGRAM_NAME,
            "veth peer program",
            &dir.join(PEER_PASS_PROGRAM_PIN),
        )?;
        Ok(())
    })();
    if result.is_err() {
        // Leave nothing half-created behind.
        remove_pins(dir);
    }
    result.map(|()| true)
}

/// Loads the XDP program `name` of `ebpf` (called `what` in errors) and pins it at `pin`.
fn load_and_pin_xdp(ebpf: &mut aya::Ebpf, name: &str, what: &str, pin: &Path) -> Result<()> {
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| missing_in_object(name))?
        .try_into()
        .map_err(prog_ctx(what))?;
    load_retrying(|| program.load()).map_err(prog_ctx(format!("loading the {what} (verifier)")))?;
    program
        .pin(pin)
        .map_err(|e| io_ctx(format!("pinning the {what}"))(std::io::Error::other(e.to_string())))
}

/// Runs `load` (a BPF_PROG_LOAD) up to five times while it fails with EAGAIN. The verifier
/// gives up with EAGAIN when a signal is pending for the loading thread (a long program
/// takes it a while); that says nothing about the program, and libbpf retries such loads
/// five times too.
fn load_retrying(
    mut load: impl FnMut() -> std::result::Result<(), ProgramError>,
) -> std::result::Result<(), ProgramError> {
    const ATTEMPTS: u32 = 5;
    let mut attempt = 1;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempt < ATTEMPTS =>
            {
                attempt += 1;
            }
            result => return result,
        }
    }
}

fn missing_in_object(name: &str) -> Error {
    Error::invalid("XDP object", name, "is missing from the compiled object")
}

/// Fails unless the nearest existing ancestor of `dir` is on a bpf filesystem: pins
/// anywhere else fail with errors that do not say why.
fn require_bpffs(dir: &Path) -> Result<()> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or_else(|| Path::new("/"));
    let c = std::ffi::CString::new(existing.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::invalid("bpffs root", dir.display(), "contains a NUL byte"))?;
    // SAFETY: statfs writes into a zeroed struct we own; c is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io_ctx(format!("statfs {}", existing.display()))(
            std::io::Error::last_os_error(),
        ));
    }
    if st.f_type as i64 != BPF_FS_MAGIC {
        return Err(Error::invalid(
            "bpffs root",
            dir.display(),
            format!(
                "{} is not on a bpf filesystem (mount one with `mount -t bpf bpf /sys/fs/bpf`)",
                existing.display()
            ),
        ));
    }
    Ok(())
}

fn create_dir_private(dir: &Path) -> Result<()> {
    require_bpffs(dir)?;
    // A concurrent `detach` of the last other instance removes the shared root directory
    // when it becomes empty; if that happens between our two mkdirs, try again.
    let mut attempts = 0;
    while let Err(e) = fs::create_dir_all(dir) {
        attempts += 1;
        if e.kind() != std::io::ErrorKind::NotFound || attempts >= 5 {
            return Err(io_ctx(format!("creating {}", dir.display()))(e));
        }
    }
    // Root only: the maps steer traffic.
    for d in [Some(dir), dir.parent()].into_iter().flatten() {
        let _ = fs::set_permissions(d, fs::Permissions::from_mode(0o700));
    }
    Ok(())
}

/// Loads (or adopts) the data plane under `dir` and attaches it to `opts.interfaces`.
/// On any failure, whatever this call created is undone: interfaces attached before the
/// call stay attached, a program loaded by this call is unloaded again.
pub fn attach(dir: &Path, opts: &AttachOptions) -> Result<AttachReport> {
    require_root()?;
    if opts.interfaces.is_empty() {
        return Err(Error::invalid(
            "interfaces",
            "",
            "name at least one interface",
        ));
    }
    // Validate everything before touching any state.
    let mut seen = std::collections::BTreeSet::new();
    let mut targets = Vec::new();
    for name in &opts.interfaces {
        if !seen.insert(name) {
            return Err(Error::invalid("interfaces", name, "named twice"));
        }
        let index = interface_index(name)?;
        if dir.join(format!("{LINK_PREFIX}{name}")).exists() {
            return Err(Error::AlreadyAttached(name.clone()));
        }
        targets.push((name.clone(), index));
    }
    let loaded_now = load_pinned(dir, opts.flow_capacity, &opts.config)?;
    let balancer = Balancer::open(dir)?;
    let mut done: Vec<PathBuf> = Vec::new();
    let mut report = AttachReport::default();
    let result = (|| {
        let mut program = balancer.program()?;
        for (name, index) in &targets {
            done.push(attach_xdp_pinned(
                &mut program,
                *index,
                opts.mode.xdp_mode(),
                dir.join(format!("{LINK_PREFIX}{name}")),
                &format!("to {name}"),
                &format!("the XDP link of {name}"),
            )?);
            done.push(attach_tc(dir, name)?);
        }
        for (name, index) in &targets {
            let peer = match veth::veth_peer(name, *index) {
                Ok(Some(peer)) => peer,
                Ok(None) => continue,
                Err(e) => {
                    report.warnings.push(format!(
                        "{name}: could not check for the veth XDP_TX trap: {}",
                        crate::error::one_line(&e)
                    ));
                    continue;
                }
            };
            if peer.peer_has_xdp {
                continue;
            }
            if opts.veth_peer_pass {
                done.push(attach_peer_pass(dir, &peer)?);
                report.peer_passes.push(name.clone());
            } else {
                report.warnings.extend(peer.warning());
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        for path in done {
            unpin_link(&path);
        }
        drop(balancer);
        if loaded_now {
            remove_pins(dir);
        }
        return Err(e);
    }
    report.interfaces = targets.into_iter().map(|(n, _)| n).collect();
    Ok(report)
}

/// Attaches the pinned pass program to `peer` (entering its namespace if it is in
/// another one) and pins the link beside the interface's own.
fn attach_peer_pass(dir: &Path, peer: &veth::VethPeer) -> Result<PathBuf> {
    let program_pin = dir.join(PEER_PASS_PROGRAM_PIN);
    if !program_pin.exists() {
        return Err(Error::invalid(
            "instance",
            dir.display(),
            "was loaded by an older balancer without the veth peer program: detach it and attach again",
        ));
    }
    let what = format!("the pass program on {}'s veth peer", peer.interface);
    let attach = || -> Result<PathBuf> {
        let mut program = Xdp::from_pin(&program_pin, aya_obj::programs::XdpAttachType::Interface)
            .map_err(prog_ctx("opening the pinned veth peer program"))?;
        attach_xdp_pinned(
            &mut program,
            peer.peer_ifindex,
            XdpMode::Driver,
            veth::peer_link_pin(dir, &peer.interface),
            &what,
            &format!("the link of {what}"),
        )
    };
    match peer.peer_netnsid {
        None => attach(),
        Some(id) => {
            let ns = veth::peer_netns(id)?.ok_or_else(|| {
                Error::invalid(
                    "veth peer",
                    format!("{} (namespace id {id})", peer.interface),
                    "its namespace has no name (ip netns) and no process in it: it cannot be entered",
                )
            })?;
            veth::in_netns(&ns, attach)
        }
    }
}

/// Attaches `program` to the interface `ifindex` (of the calling thread's namespace) and
/// pins the link at `pin`. Errors say "attaching {target}", and name the link `link`.
fn attach_xdp_pinned(
    program: &mut Xdp,
    ifindex: u32,
    mode: XdpMode,
    pin: PathBuf,
    target: &str,
    link: &str,
) -> Result<PathBuf> {
    let link_id = program
        .attach_to_if_index(ifindex, mode)
        .map_err(prog_ctx(format!("attaching {target}")))?;
    let taken = program
        .take_link(link_id)
        .map_err(prog_ctx(format!("taking {link}")))?;
    pin_link(taken, pin, link)
}

/// Attaches the TC ingress program to `name` (TCX, a BPF link) and pins the link.
fn attach_tc(dir: &Path, name: &str) -> Result<PathBuf> {
    let mut tc = SchedClassifier::from_pin(dir.join(TC_PROGRAM_PIN))
        .map_err(prog_ctx("opening the pinned TC program"))?;
    let link_id = tc
        .attach(name, TcAttachType::Ingress)
        .map_err(prog_ctx(format!("attaching the TC program to {name}")))?;
    let link = tc
        .take_link(link_id)
        .map_err(prog_ctx(format!("taking the TC link of {name}")))?;
    pin_link(
        link,
        dir.join(format!("{TC_LINK_PREFIX}{name}")),
        &format!("the TC link of {name}"),
    )
}

/// Pins an attachment at `path`. It must be a BPF link (XDP via `bpf_link_create`, TC via
/// TCX, Linux 6.6+): the older netlink attachments cannot be pinned, and an attachment
/// that is not pinned would end with this process.
fn pin_link<L>(link: L, path: PathBuf, what: &str) -> Result<PathBuf>
where
    L: TryInto<FdLink>,
    L::Error: std::fmt::Display,
{
    let fd_link: FdLink = link.try_into().map_err(|e| {
        io_ctx(format!("{what} is not a BPF link, so it cannot be pinned"))(std::io::Error::other(
            e.to_string(),
        ))
    })?;
    fd_link
        .pin(&path)
        .map_err(|e| io_ctx(format!("pinning {what}"))(std::io::Error::other(e.to_string())))?;
    Ok(path)
}

fn is_link_pin(name: &str) -> bool {
    [LINK_PREFIX, TC_LINK_PREFIX, PEER_LINK_PREFIX]
        .iter()
        .any(|prefix| name.starts_with(prefix))
}

fn unpin_link(path: &Path) {
    // Dropping the unpinned link detaches the program from the interface.
    if let Ok(link) = PinnedLink::from_pin(path) {
        let _ = link.unpin();
    } else {
        let _ = fs::remove_file(path);
    }
}

/// Detaches the instance from one interface; program, maps and other interfaces stay.
pub fn detach_interface(dir: &Path, name: &str) -> Result<()> {
    require_root()?;
    let link = dir.join(format!("{LINK_PREFIX}{name}"));
    if !link.exists() {
        return Err(Error::invalid(
            "interface",
            name,
            "is not attached to this instance",
        ));
    }
    let _lock = lock_dir(dir)?;
    unpin_link(&link);
    unpin_link(&dir.join(format!("{TC_LINK_PREFIX}{name}")));
    unpin_link(&veth::peer_link_pin(dir, name));
    Ok(())
}

/// Detaches the instance from every interface and removes its program, maps and pin
/// directory (and the bpffs root directory if no other instance is left).
pub fn detach(dir: &Path) -> Result<Vec<String>> {
    require_root()?;
    if !dir.join(PROGRAM_PIN).exists() && !dir.exists() {
        return Err(not_attached(dir));
    }
    let interfaces = attached_interfaces(dir)?;
    {
        let _lock = lock_dir(dir)?;
        for name in &interfaces {
            unpin_link(&dir.join(format!("{LINK_PREFIX}{name}")));
            unpin_link(&dir.join(format!("{TC_LINK_PREFIX}{name}")));
            unpin_link(&veth::peer_link_pin(dir, name));
        }
    }
    remove_pins(dir);
    Ok(interfaces)
}

/// Removes every pin under `dir`, the directory, and its parent if empty.
fn remove_pins(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_link_pin)
            {
                unpin_link(&path);
            } else {
                let _ = fs::remove_file(&path);
            }
        }
    }
    let _ = fs::remove_dir(dir);
    if let Some(parent) = dir.parent() {
        let _ = fs::remove_dir(parent); // only succeeds when empty
    }
}
