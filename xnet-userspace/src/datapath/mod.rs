//! The kernel side as the agent sees it, and its one owner: [`Datapath`] loads the programs
//! ([`programs`], each when first needed), holds the maps ([`maps`]), keeps the route maps in step
//! with what is wanted ([`sync`]), and attaches (or takes over an earlier agent's attachments
//! without a gap) and detaches ([`links`]).
//!
//! Pinned state under the pin directory:
//! - `<MAP>` for every map the programs declare;
//! - `links/<program>@<interface>` for every attachment (TCX or XDP bpf_links): the underlay, the
//!   configured container interfaces, and the ports of those that are bridges.
//!
//! While those pins exist the datapath keeps forwarding, with or without an agent.

pub mod batch;
pub mod links;
pub mod local_ports;
pub mod maps;
pub mod programs;
pub mod sync;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
    sync::mpsc,
};

use aya::{Ebpf, EbpfLoader};
use xnet_common::maps::{DatapathConfig, Endpoint, IngressHook, LocalPortsLimit};

pub use self::programs::Programs;
use self::{
    maps::Maps,
    sync::{Capacity, MapFull, Mirror, Scope, Wanted},
};
use crate::cidr::Ipv4Network;

/// The compiled eBPF object (built by build.rs from `xnet-ebpf`).
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xnet"));

/// The programs in [`OBJECT`], each named after where it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Program {
    /// tc ingress of a container interface: frames containers send into the host.
    TcEgress,
    /// tc ingress of the underlay interface.
    TcIngress,
    /// XDP on the underlay interface.
    XdpIngress,
}

impl Program {
    pub const ALL: [Program; 3] = [Program::TcEgress, Program::TcIngress, Program::XdpIngress];

    /// The program's name in the object.
    pub fn name(self) -> &'static str {
        match self {
            Program::TcEgress => "xnet_tc_egress",
            Program::TcIngress => "xnet_tc_ingress",
            Program::XdpIngress => "xnet_xdp_ingress",
        }
    }

    /// The program that decapsulates with `hook`.
    pub fn ingress(hook: IngressHook) -> Self {
        match hook {
            IngressHook::Tc => Program::TcIngress,
            IngressHook::Xdp => Program::XdpIngress,
        }
    }
}

/// A datapath operation that failed, naming what it was done to.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    #[error("cannot create pin directory {path}: {error}")]
    PinDir { path: PathBuf, error: io::Error },
    #[error(
        "cannot load the eBPF object (maps pinned under {pin_dir}): {error}; if an older xnet left incompatible pins, run `xnet cleanup --pin-dir {pin_dir}`"
    )]
    Load { pin_dir: PathBuf, error: Box<aya::EbpfError> },
    #[error("the kernel refused program {program}: {error}")]
    Program { program: &'static str, error: Box<aya::programs::ProgramError> },
    #[error("cannot attach {program} to interface {iface}: {detail}")]
    Attach { program: &'static str, iface: String, detail: String },
    #[error("cannot read pinned map {path}: {detail}; is an xnet datapath set up with this --pin-dir?")]
    Open { path: PathBuf, detail: String },
    #[error("cannot update map {map}: {detail}")]
    Map { map: &'static str, detail: String },
    #[error(transparent)]
    Full(#[from] MapFull),
    #[error("cannot remove pin {path}: {error}")]
    Unpin { path: PathBuf, error: io::Error },
    #[error(
        "map {map} pinned at {path} has {have}, but this xnet needs {want}: it was left by another xnet version; run `xnet cleanup --pin-dir {pin_dir}` and start the agent again (forwarding stops in between)"
    )]
    IncompatiblePin { map: String, path: PathBuf, pin_dir: PathBuf, have: String, want: String },
    #[error(
        "map {map} pinned at {path} holds {have} entries, but `[capacity]` in the config asks for {want}: a pinned map keeps its size; run `xnet cleanup --pin-dir {pin_dir}` and start the agent again to resize it (forwarding stops in between), or set `[capacity]` back"
    )]
    PinnedCapacity { map: String, path: PathBuf, pin_dir: PathBuf, have: u32, want: u32 },
}

/// Refuses maps pinned by another xnet version before anything is loaded: the kernel would reuse
/// them and reject the programs with a verifier log instead of a reason. A pinned ENDPOINTS sized
/// for another container subnet is unpinned instead, so the loader creates it anew: it only caches
/// what the kernel's tables say (the programs still attached keep the old one until they are
/// replaced, and every entry names its address, so neither array answers for a wrong one).
fn check_pinned_layouts(pin_dir: &Path, capacity: Capacity) -> Result<(), DatapathError> {
    for map in maps::declared() {
        let path = pin_dir.join(&map.name);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let have_type = info.map_type().map_or(u32::MAX, |t| t as u32);
        if have_type != map.map_type {
            return Err(DatapathError::IncompatiblePin {
                map: map.name,
                path,
                pin_dir: pin_dir.into(),
                have: format!("map type {have_type}"),
                want: format!("map type {}", map.map_type),
            });
        }
        let have = (info.key_size(), info.value_size(), info.max_entries());
        let want = (map.key_size, map.value_size, capacity.of_map(&map.name).unwrap_or(map.max_entries));
        if map.name == xnet_common::maps::ENDPOINTS
            && have.0 == want.0
            && have.1 == want.1
            && have.2 != want.2
        {
            fs::remove_file(&path).map_err(|error| DatapathError::Unpin { path: path.clone(), error })?;
            tracing::info!(
                have = have.2,
                want = want.2,
                "ENDPOINTS was sized for another container subnet; created anew"
            );
            continue;
        }
        if have.0 == want.0 && have.1 == want.1 && have.2 != want.2 {
            return Err(DatapathError::PinnedCapacity {
                map: map.name,
                path,
                pin_dir: pin_dir.into(),
                have: have.2,
                want: want.2,
            });
        }
        if have != want {
            let show = |(k, v, e): (u32, u32, u32)| format!("{k}-byte keys, {v}-byte values, {e} entries");
            return Err(DatapathError::IncompatiblePin {
                map: map.name,
                path,
                pin_dir: pin_dir.into(),
                have: show(have),
                want: show(want),
            });
        }
    }
    Ok(())
}

/// The object's loader, started on a thread of its own: it begins by reading the kernel's BTF
/// (tens of milliseconds), which the agent need not wait for while it reads its config.
pub struct Loader(std::thread::JoinHandle<EbpfLoader<'static>>);

impl Loader {
    pub fn start() -> Self {
        Self(std::thread::spawn(EbpfLoader::new))
    }

    fn get(self) -> EbpfLoader<'static> {
        self.0.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

/// Loads [`OBJECT`]'s maps into the kernel (the programs load when first needed, see
/// [`Programs`]); with `pin_dir`, the maps are pinned there (reused if pinned already). The route
/// and peer maps are created with `capacity` entries.
fn load_object(loader: Loader, pin_dir: Option<&Path>, capacity: Capacity) -> Result<Ebpf, DatapathError> {
    let declared = maps::declared();
    let mut loader = loader.get();
    for map in &declared {
        if let Some(entries) = capacity.of_map(&map.name) {
            loader.map_max_entries(&map.name, entries);
        }
    }
    if let Some(pin_dir) = pin_dir {
        check_pinned_layouts(pin_dir, capacity)?;
        fs::create_dir_all(links::links_dir(pin_dir))
            .map_err(|error| DatapathError::PinDir { path: pin_dir.into(), error })?;
        for map in &declared {
            loader.map_pin_path(&map.name, pin_dir.join(&map.name));
        }
    }
    loader.load(OBJECT).map_err(|error| DatapathError::Load {
        pin_dir: pin_dir.map_or_else(|| "(none)".into(), Path::to_path_buf),
        error: Box::new(error),
    })
}

/// The [`sync::Writer`] of [`Datapath::sync`]: a thread a lane writes the lane's chunks in order
/// and answers each; a lane stops at its first failure.
struct MapWriter {
    lanes: [Option<mpsc::SyncSender<Vec<sync::Op>>>; 2],
    /// Lanes in use: 2 only while no program reads the maps.
    in_use: usize,
    answers: mpsc::Receiver<sync::Answer<DatapathError>>,
}

impl sync::Writer for MapWriter {
    type Error = DatapathError;
    const DEPTH: usize = 2;

    fn lanes(&self) -> usize {
        self.in_use
    }

    fn send(&mut self, lane: usize, chunk: Vec<sync::Op>) {
        // A lane that stopped after a failure drops the chunk: its answer (the failure) is on
        // its way, and nothing after it is written.
        if let Some(chunks) = &self.lanes[lane] {
            let _ = chunks.send(chunk);
        }
    }

    fn answer(&mut self) -> Option<sync::Answer<DatapathError>> {
        self.answers.recv().ok()
    }

    fn close(&mut self) {
        self.lanes = [None, None];
    }
}

/// One lane of a [`MapWriter`]: writes each chunk through `maps` and answers it, until the
/// chunks end or one fails.
fn write_lane(
    maps: &mut Maps,
    chunks: mpsc::Receiver<Vec<sync::Op>>,
    answers: mpsc::Sender<sync::Answer<DatapathError>>,
) {
    for chunk in chunks {
        let mut done = 0;
        let result = maps.write_all(&chunk, |_| done += 1).map_err(|e| (done, e));
        let failed = result.is_err();
        if answers.send((chunk, result)).is_err() || failed {
            break;
        }
    }
}

/// The sync of [`Datapath::sync`] over the maps' two handles: peers and routes written side by
/// side while `unread` (no program reads them), each lane a chunk at a time while the next chunk
/// is built (and the one before applied to the mirror), so a first sync of many routes costs
/// little more than its slowest map's writes; in one lane otherwise.
fn sync_maps(
    lanes: [&mut Maps; 2],
    unread: bool,
    mirror: &mut Mirror,
    capacity: Capacity,
    (wanted, config, scope, now): (&Wanted, &DatapathConfig, &Scope, u64),
) -> Result<usize, DatapathError> {
    std::thread::scope(|s| {
        let (answer, answers) = mpsc::channel();
        let in_use = if unread { 2 } else { 1 };
        let mut writer = MapWriter { lanes: [None, None], in_use, answers };
        // A thread for each lane in use only.
        for (lane, maps) in lanes.into_iter().enumerate().take(in_use) {
            let (chunks, lane_chunks) = mpsc::sync_channel(1);
            let answer = answer.clone();
            s.spawn(move || write_lane(maps, lane_chunks, answer));
            writer.lanes[lane] = Some(chunks);
        }
        drop(answer);
        let result = sync::apply(mirror, wanted, config, scope, now, capacity, &mut writer);
        // Closing the lanes ends their threads once idle.
        sync::Writer::close(&mut writer);
        result
    })
}

/// The loaded programs and their maps.
pub struct Datapath {
    programs: Programs,
    maps: Maps,
    /// A second handle on the same maps: the sync writes routes through it while `maps` takes
    /// the peers.
    route_maps: Maps,
    /// Whether this load created the maps (none was pinned).
    created: bool,
    /// What the route maps hold.
    mirror: Mirror,
    /// What the route and peer maps hold at most.
    capacity: Capacity,
    /// Bridge ports over [`local_ports::PER_PORT_MAX`], already logged.
    ports_over_cap: BTreeSet<u32>,
    /// Container MAC -> bridge port, for the MACs packets were delivered to (from ENDPOINTS), kept
    /// while the port is attached: LOCAL_PORTS keeps them when the bridge forgets them.
    delivered: BTreeMap<[u8; 6], u32>,
    /// LOCAL_PORTS_LIMIT as last written by this run.
    local_ports_limit: Option<LocalPortsLimit>,
}

impl Datapath {
    /// Loads the maps into the kernel, reusing those pinned under `pin_dir` (so a restarted agent
    /// keeps routes and counters) or creating and pinning them with room for `capacity` entries.
    /// Each program is loaded when it is first attached (or by [`Programs::load`]).
    pub fn load(pin_dir: &Path, capacity: Capacity) -> Result<Self, DatapathError> {
        Self::load_with(Loader::start(), pin_dir, capacity)
    }

    /// [`Datapath::load`] with a loader started earlier.
    pub fn load_with(loader: Loader, pin_dir: &Path, capacity: Capacity) -> Result<Self, DatapathError> {
        Self::load_from(loader, Some(pin_dir), capacity)
    }

    /// Loads every program with maps of its own, pinned nowhere and attached nowhere: for running
    /// them with BPF_PROG_TEST_RUN ([`Datapath::program_mut`]) in tests and benchmarks.
    pub fn load_unpinned() -> Result<Self, DatapathError> {
        Self::load_unpinned_sized(Capacity::default())
    }

    /// [`Datapath::load_unpinned`] with route and peer maps of `capacity` entries.
    pub fn load_unpinned_sized(capacity: Capacity) -> Result<Self, DatapathError> {
        let mut dp = Self::load_from(Loader::start(), None, capacity)?;
        dp.programs.load(&Program::ALL)?;
        Ok(dp)
    }

    fn load_from(loader: Loader, pin_dir: Option<&Path>, capacity: Capacity) -> Result<Self, DatapathError> {
        // Maps this load creates hold nothing yet: no need to read them.
        let created = pin_dir.is_none_or(|dir| Maps::MIRRORED.iter().all(|m| !dir.join(m).exists()));
        let mut ebpf = load_object(loader, pin_dir, capacity)?;
        let maps = Maps::take(&mut ebpf)?;
        let mirror = if created { maps.mirror_of_new()? } else { maps.mirror()? };
        Ok(Self {
            programs: Programs::new(ebpf, pin_dir.map(Path::to_path_buf)),
            route_maps: maps.try_clone()?,
            created,
            maps,
            mirror,
            capacity,
            ports_over_cap: BTreeSet::new(),
            delivered: BTreeMap::new(),
            local_ports_limit: None,
        })
    }

    /// A program, loaded, to run or attach by hand.
    pub fn program_mut(&mut self, program: Program) -> Result<&mut aya::programs::Program, DatapathError> {
        self.programs.program_mut(program)
    }

    pub fn maps(&self) -> &Maps {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut Maps {
        &mut self.maps
    }

    /// Where the maps and links are pinned (`None` for [`Datapath::load_unpinned`]).
    pub fn pin_dir(&self) -> Option<&Path> {
        self.programs.pin_dir()
    }

    /// Whether no program reads the maps yet: this load created them, and no attachment was tried.
    pub fn unread(&self) -> bool {
        self.created && !self.programs.tried()
    }

    /// Whether the maps can hold `wanted`: a sync that cannot writes nothing and fails so.
    pub fn check_capacity(&self, wanted: &Wanted) -> Result<(), DatapathError> {
        Ok(sync::check_capacity(wanted, self.capacity)?)
    }

    /// The programs, to load and attach.
    pub fn programs_mut(&mut self) -> &mut Programs {
        &mut self.programs
    }

    /// Makes the route maps hold `wanted` and CONFIG hold `config`, comparing the keys in `scope`.
    /// Returns how many map writes it took. On failure the maps hold everything written before
    /// the failing write (in each lane), and the next sync (with [`Scope::All`]) continues from
    /// there.
    pub fn sync(
        &mut self,
        wanted: &Wanted,
        config: &DatapathConfig,
        scope: &Scope,
        now: u64,
    ) -> Result<usize, DatapathError> {
        let unread = self.unread();
        let lanes = [&mut self.maps, &mut self.route_maps];
        sync_maps(lanes, unread, &mut self.mirror, self.capacity, (wanted, config, scope, now))
    }

    /// [`Datapath::sync`], while `beside` runs on a thread of its own with the programs (to load
    /// and attach). A program attached meanwhile may read the maps as they fill, in the order the
    /// sync writes them: CONFIG first, then peers and routes (side by side if nothing was attached
    /// when the sync began: a route may then be readable before its peer's entry).
    pub fn sync_beside<R: Send>(
        &mut self,
        wanted: &Wanted,
        config: &DatapathConfig,
        scope: &Scope,
        now: u64,
        beside: impl FnOnce(&mut Programs) -> R + Send,
    ) -> (Result<usize, DatapathError>, R) {
        let unread = self.unread();
        let lanes = [&mut self.maps, &mut self.route_maps];
        let programs = &mut self.programs;
        std::thread::scope(|s| {
            let beside = s.spawn(move || beside(programs));
            let result =
                sync_maps(lanes, unread, &mut self.mirror, self.capacity, (wanted, config, scope, now));
            (result, beside.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })
    }

    /// CONFIG as last written.
    pub fn config(&self) -> &DatapathConfig {
        &self.mirror.config
    }

    /// Attaches `program` on `iface` (or takes over an earlier agent's attachment there).
    pub fn attach(&mut self, program: Program, iface: &str) -> Result<(), DatapathError> {
        self.programs.attach(program, iface)
    }

    /// Whether this run attached `program` to `iface` (or took it over).
    pub fn is_attached(&self, program: Program, iface: &str) -> bool {
        self.programs.is_attached(program, iface)
    }

    /// Detaches `program` from `iface`, if this run attached it.
    pub fn detach(&mut self, program: Program, iface: &str) -> Result<(), DatapathError> {
        self.programs.detach(program, iface)
    }

    /// See [`Programs::sync_port_attachments`].
    pub fn sync_port_attachments(&mut self, ports: &BTreeMap<String, u32>) -> Result<(), DatapathError> {
        self.programs.sync_port_attachments(ports)
    }

    /// Makes LOCAL_PORTS hold the `learned` container MACs (container MAC -> bridge port ifindex)
    /// and those packets were delivered to while their port stays attached, at most
    /// [`local_ports::PER_PORT_MAX`] MACs a port, and removes the ENDPOINTS entries whose container
    /// left its port (or was left out) or that are older than
    /// [`xnet_common::maps::ENDPOINT_MAX_AGE_NS`] at `now` (CLOCK_MONOTONIC_COARSE; the programs
    /// do not use those either). Expiry and removals come first, so a full map never stops them;
    /// an entry that cannot be written does not stop the others, and the first error is returned
    /// after. A port over the cap is logged once (until it is back under) and recorded in
    /// LOCAL_PORTS_LIMIT for `xnet status` and the metrics.
    pub fn sync_local_ports(
        &mut self,
        learned: &BTreeMap<[u8; 6], u32>,
        now: u64,
    ) -> Result<(), DatapathError> {
        let mut first_error = None;
        let current = self.maps.local_ports()?;
        let endpoints = self.maps.endpoints();
        // What was delivered to, remembered while the port is attached and the bridge does not
        // put the MAC elsewhere (see local_ports::wanted).
        let live: BTreeSet<u32> = self.programs.ports().values().copied().collect();
        self.delivered.extend(endpoints.iter().map(|(_, e)| (e.dmac(), e.ifindex())));
        self.delivered.retain(|mac, port| live.contains(port) && learned.get(mac).is_none_or(|p| p == port));
        let wanted = local_ports::wanted(learned, &self.delivered, &live);
        let plan = local_ports::plan(&current, &wanted, local_ports::PER_PORT_MAX);
        for ip in stale_endpoints(endpoints.into_iter(), &plan.kept, now) {
            if let Err(e) = self.maps.del_endpoint(&ip) {
                first_error.get_or_insert(e);
            }
        }
        for mac in &plan.remove {
            if let Err(e) = self.maps.del_local_port(mac) {
                first_error.get_or_insert(e);
            }
        }
        for (mac, ifindex) in &plan.put {
            if let Err(e) = self.maps.put_local_port(*mac, *ifindex) {
                first_error.get_or_insert(e);
            }
        }
        for (port, refused) in &plan.refused {
            if self.ports_over_cap.insert(*port) {
                tracing::warn!(
                    ifindex = port,
                    macs = refused + local_ports::PER_PORT_MAX,
                    cap = local_ports::PER_PORT_MAX,
                    "a bridge port claims more container MACs than the cap; the rest are not delivered to directly (a container flooding source MACs?)"
                );
            }
        }
        self.ports_over_cap.retain(|p| plan.refused.contains_key(p));
        let limit = LocalPortsLimit::new(
            local_ports::PER_PORT_MAX as u32,
            plan.refused.len() as u32,
            plan.refused.values().sum::<usize>() as u64,
        );
        if self.local_ports_limit != Some(limit) {
            match self.maps.set_local_ports_limit(&limit) {
                Ok(()) => self.local_ports_limit = Some(limit),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Makes UNTUNNELLED_FROM hold exactly `nets` (new ones first, then the ones no longer
    /// allowed).
    pub fn set_untunnelled_from(&mut self, nets: &BTreeSet<Ipv4Network>) -> Result<(), DatapathError> {
        let current = self.maps.untunnelled_from()?;
        for net in nets.difference(&current) {
            self.maps.put_untunnelled_from(net)?;
        }
        for net in current.difference(nets) {
            self.maps.del_untunnelled_from(net)?;
        }
        Ok(())
    }

    /// Detaches attachments pinned by an earlier agent that this run did not re-attach (an
    /// interface dropped from the config, or ingress switched between XDP and tc).
    pub fn detach_stale(&mut self) -> Result<(), DatapathError> {
        self.programs.detach_stale()
    }
}

/// Detaches every attachment and removes every pin under `pin_dir` (those of maps an older xnet
/// had, [`xnet_common::maps::RETIRED_MAPS`], too), then the directory itself.
/// Safe to run on a partial or missing pin directory.
pub fn remove_all(pin_dir: &Path) -> Result<(), DatapathError> {
    for pin in links::pinned(pin_dir) {
        links::unpin(&pin)?;
    }
    let retired = xnet_common::maps::RETIRED_MAPS.map(String::from);
    for name in maps::declared().into_iter().map(|m| m.name).chain(retired) {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(DatapathError::Unpin { path, error }),
        }
    }
    for dir in [links::links_dir(pin_dir), pin_dir.to_path_buf()] {
        match fs::remove_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(DatapathError::Unpin { path: dir, error }),
        }
    }
    Ok(())
}

/// The ENDPOINTS entries (container IPv4, entry) to remove at `now` (CLOCK_MONOTONIC_COARSE, ns):
/// those resolved too long ago, and those whose container is no longer behind the port they name
/// (`ports`: container MAC -> bridge port ifindex).
pub fn stale_endpoints(
    entries: impl Iterator<Item = ([u8; 4], Endpoint)>,
    ports: &BTreeMap<[u8; 6], u32>,
    now: u64,
) -> Vec<[u8; 4]> {
    entries
        .filter(|(_, e)| e.is_stale(now) || ports.get(&e.dmac()) != Some(&e.ifindex()))
        .map(|(ip, _)| ip)
        .collect()
}
