//! The kernel side as the agent sees it: load the programs, pin and reconcile the maps, attach
//! (or take over an earlier agent's attachments without a gap), and detach.
//!
//! Pinned state under the pin directory:
//! - `<MAP>` for every map in `xnet_common::maps::ALL`;
//! - `links/<program>@<interface>` for every attachment (TCX or XDP bpf_links): the underlay, the
//!   configured container interfaces, and the ports of those that are bridges.
//!
//! While those pins exist the datapath keeps forwarding, with or without an agent.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, MapData, lpm_trie::Key},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use xnet_common::maps::{
    self, AgentState, DatapathConfig, Endpoint, LocalPort, LpmKeyIpv4, Peer, PeerSlot, RemoteSubnet,
    RouteInfo, Store,
};

use crate::{EBPF_OBJECT, programs, subnet::Ipv4Net};

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
    #[error("cannot update map {map}: {detail}")]
    Map { map: &'static str, detail: String },
    #[error("cannot remove pin {path}: {error}")]
    Unpin { path: PathBuf, error: io::Error },
    #[error(
        "map {map} pinned at {path} has {have}, but this xnet needs {want}: it was left by another xnet version; run `xnet cleanup --pin-dir {pin_dir}` and start the agent again (forwarding stops in between)"
    )]
    IncompatiblePin { map: &'static str, path: PathBuf, pin_dir: PathBuf, have: String, want: String },
}

/// Key size, value size and capacity of every map, as this build's programs use them.
fn map_layouts() -> [(&'static str, usize, usize, u32); 10] {
    use std::mem::size_of;
    use xnet_common::{maps::*, stats::STATS_ENTRIES};
    [
        (REMOTE_SUBNETS, size_of::<LpmKeyIpv4>(), size_of::<RemoteSubnet>(), REMOTE_SUBNETS_MAX),
        (PEERS, 4, size_of::<Peer>(), PEERS_MAX),
        (CONFIG, 4, size_of::<DatapathConfig>(), 1),
        (STATS, 4, size_of::<Counter>(), STATS_ENTRIES),
        (LOCAL_PORTS, 6, size_of::<LocalPort>(), LOCAL_PORTS_MAX),
        (AGENT, 4, size_of::<AgentState>(), 1),
        (ROUTE_INFO, size_of::<LpmKeyIpv4>(), size_of::<RouteInfo>(), REMOTE_SUBNETS_MAX),
        (ENDPOINTS, 4, size_of::<Endpoint>(), ENDPOINTS_MAX),
        (PEER_SLOTS, 4, size_of::<PeerSlot>(), PEER_SLOTS_LEN),
        (ROUTE_INDEX, 4, size_of::<RemoteSubnet>(), ROUTE_INDEX_LEN),
    ]
}

/// Refuses maps pinned by another xnet version before anything is loaded: the kernel would reuse
/// them and reject the programs with a verifier log instead of a reason.
fn check_pinned_layouts(pin_dir: &Path) -> Result<(), DatapathError> {
    for (map, key, value, entries) in map_layouts() {
        let path = pin_dir.join(map);
        let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
            continue;
        };
        let have = (info.key_size() as usize, info.value_size() as usize, info.max_entries());
        if have != (key, value, entries) {
            let show =
                |(k, v, e): (usize, usize, u32)| format!("{k}-byte keys, {v}-byte values, {e} entries");
            return Err(DatapathError::IncompatiblePin {
                map,
                path,
                pin_dir: pin_dir.into(),
                have: show(have),
                want: show((key, value, entries)),
            });
        }
    }
    Ok(())
}

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// tc ingress of a container interface: frames containers send into the host.
    TcEgress,
    /// tc ingress of the underlay interface.
    TcIngress,
    /// XDP on the underlay interface.
    XdpIngress,
}

impl Hook {
    pub fn program(self) -> &'static str {
        match self {
            Hook::TcEgress => programs::TC_EGRESS,
            Hook::TcIngress => programs::TC_INGRESS,
            Hook::XdpIngress => programs::XDP_INGRESS,
        }
    }
}

/// The loaded programs and pinned maps.
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// Link pins that this run attached or took over.
    attached: BTreeSet<PathBuf>,
    /// Bridge ports the egress program is attached to, name -> ifindex at the time.
    ports: BTreeMap<String, u32>,
    /// What PEER_SLOTS holds (non-empty slots), once read or written.
    slots: Option<BTreeMap<u32, PeerSlot>>,
    /// What ROUTE_INDEX holds (entries with a route) while this run keeps it switched on.
    index: Option<BTreeMap<u32, RemoteSubnet>>,
}

/// The shape of ROUTE_INDEX: the overlay network and the length of every host's subnet in it.
#[derive(Clone, Copy, Debug)]
pub struct RouteIndexSpec {
    pub network: Ipv4Net,
    pub subnet_len: u8,
}

/// Makes the array map `map` (of `len` entries) hold `wanted` at those indexes and the default (an
/// empty entry) everywhere else, writing only what differs from `known`: what it holds apart from
/// empty entries, or `None` to read that back from the kernel first.
fn write_array<T: aya::Pod + Default + PartialEq>(
    ebpf: &mut Ebpf,
    map: &'static str,
    len: u32,
    known: Option<BTreeMap<u32, T>>,
    wanted: &BTreeMap<u32, T>,
) -> Result<(), DatapathError> {
    let map_err = |e: aya::maps::MapError| DatapathError::Map { map, detail: e.to_string() };
    let mut array: Array<&mut MapData, T> =
        Array::try_from(ebpf.map_mut(map).expect("map is in the object")).map_err(map_err)?;
    let known = match known {
        Some(known) => known,
        None => (0..len)
            .filter_map(|i| array.get(&i, 0).ok().filter(|v| *v != T::default()).map(|v| (i, v)))
            .collect(),
    };
    for (i, value) in wanted {
        if known.get(i) != Some(value) {
            array.set(*i, value, 0).map_err(map_err)?;
        }
    }
    for i in known.keys().filter(|i| !wanted.contains_key(i)) {
        array.set(*i, T::default(), 0).map_err(map_err)?;
    }
    Ok(())
}

/// The PEER_SLOTS table for a set of peer addresses (see `xnet_common::maps::PEER_SLOTS`).
pub fn peer_slots<'a>(ips: impl IntoIterator<Item = &'a [u8; 4]>) -> BTreeMap<u32, PeerSlot> {
    let mut slots = BTreeMap::new();
    for ip in ips {
        slots
            .entry(maps::peer_slot(ip))
            .and_modify(|s: &mut PeerSlot| s.state = maps::SLOT_SHARED)
            .or_insert(PeerSlot { ip: *ip, state: maps::SLOT_PEER, reserved: [0; 3] });
    }
    slots
}

fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

fn link_pin(pin_dir: &Path, hook: Hook, iface: &str) -> PathBuf {
    links_dir(pin_dir).join(format!("{}@{iface}", hook.program()))
}

impl Datapath {
    /// Loads the programs into the kernel, reusing maps pinned under `pin_dir` (so a restarted agent
    /// keeps routes and counters) or creating and pinning them.
    pub fn load(pin_dir: &Path) -> Result<Self, DatapathError> {
        check_pinned_layouts(pin_dir)?;
        fs::create_dir_all(links_dir(pin_dir))
            .map_err(|error| DatapathError::PinDir { path: pin_dir.into(), error })?;
        let mut loader = EbpfLoader::new();
        for name in maps::ALL {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        let mut ebpf = loader
            .load(EBPF_OBJECT)
            .map_err(|error| DatapathError::Load { pin_dir: pin_dir.into(), error: Box::new(error) })?;
        for program in [programs::TC_EGRESS, programs::TC_INGRESS] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(program)
                .expect("program is in the object")
                .try_into()
                .expect("program is a classifier");
            p.load().map_err(|e| DatapathError::Program { program, error: Box::new(e) })?;
        }
        let xdp: &mut Xdp = ebpf
            .program_mut(programs::XDP_INGRESS)
            .expect("program is in the object")
            .try_into()
            .expect("program is XDP");
        xdp.load()
            .map_err(|e| DatapathError::Program { program: programs::XDP_INGRESS, error: Box::new(e) })?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.into(),
            attached: BTreeSet::new(),
            ports: BTreeMap::new(),
            slots: None,
            index: None,
        })
    }

    /// Writes this host's side of the tunnels.
    pub fn set_config(&mut self, cfg: &DatapathConfig) -> Result<(), DatapathError> {
        self.set_single(maps::CONFIG, &cfg.with_outer_templates())
    }

    /// Updates the gateway MAC in CONFIG when it changed.
    pub fn set_gateway_mac(&mut self, mac: [u8; 6]) -> Result<(), DatapathError> {
        let current: DatapathConfig = self.get_single(maps::CONFIG)?;
        if current.gateway_mac == mac {
            return Ok(());
        }
        tracing::info!(mac = %crate::subnet::Mac(mac), "container interface MAC changed");
        self.set_config(&DatapathConfig { gateway_mac: mac, ..current })
    }

    /// Records what the agent knows about this datapath (for `xnet status` and the metrics).
    pub fn set_agent_state(&mut self, state: &AgentState) -> Result<(), DatapathError> {
        self.set_single(maps::AGENT, state)
    }

    /// Reads entry 0 of a one-entry array map.
    fn get_single<T: aya::Pod>(&self, map: &'static str) -> Result<T, DatapathError> {
        let map_err = |e: aya::maps::MapError| DatapathError::Map { map, detail: e.to_string() };
        let array: Array<&MapData, T> =
            Array::try_from(self.ebpf.map(map).expect("map is in the object")).map_err(map_err)?;
        array.get(&0, 0).map_err(map_err)
    }

    /// Writes entry 0 of a one-entry array map.
    fn set_single<T: aya::Pod>(&mut self, map: &'static str, value: &T) -> Result<(), DatapathError> {
        let map_err = |e: aya::maps::MapError| DatapathError::Map { map, detail: e.to_string() };
        let mut array: Array<&mut MapData, T> =
            Array::try_from(self.ebpf.map_mut(map).expect("map is in the object")).map_err(map_err)?;
        array.set(0, value, 0).map_err(map_err)
    }

    /// Makes REMOTE_SUBNETS and PEERS hold exactly `routes` and `peers`: new and changed entries are
    /// written first, stale ones removed after, so no packet for a still-valid subnet misses.
    /// ROUTE_INFO follows, keeping the time a route was first installed across agent restarts.
    pub fn sync_routes(
        &mut self,
        routes: &BTreeMap<Ipv4Net, RemoteSubnet>,
        peers: &BTreeMap<[u8; 4], Peer>,
        index: RouteIndexSpec,
        source: Store,
        now: u64,
    ) -> Result<(), DatapathError> {
        {
            let map_err =
                |e: aya::maps::MapError| DatapathError::Map { map: maps::ROUTE_INFO, detail: e.to_string() };
            let mut info: HashMap<&mut MapData, LpmKeyIpv4, RouteInfo> =
                HashMap::try_from(self.ebpf.map_mut(maps::ROUTE_INFO).expect("ROUTE_INFO map"))
                    .map_err(map_err)?;
            let keys: BTreeSet<(u32, [u8; 4])> =
                routes.keys().map(|n| (n.prefix() as u32, n.addr().octets())).collect();
            for (prefix_len, addr) in &keys {
                let key = LpmKeyIpv4 { prefix_len: *prefix_len, addr: *addr };
                let added_at = match info.get(&key, 0) {
                    Ok(old) if old.source == source as u8 => old.added_at,
                    _ => now,
                };
                info.insert(key, RouteInfo { source: source as u8, reserved: [0; 7], added_at }, 0)
                    .map_err(map_err)?;
            }
            let stale: Vec<LpmKeyIpv4> = info
                .keys()
                .filter_map(Result::ok)
                .filter(|k| !keys.contains(&(k.prefix_len, k.addr)))
                .collect();
            for k in stale {
                info.remove(&k).map_err(map_err)?;
            }
        }
        {
            // New peers first, then the slots that point at them, then the peers that are gone.
            let map_err =
                |e: aya::maps::MapError| DatapathError::Map { map: maps::PEERS, detail: e.to_string() };
            let mut map: HashMap<&mut MapData, [u8; 4], Peer> =
                HashMap::try_from(self.ebpf.map_mut(maps::PEERS).expect("PEERS map")).map_err(map_err)?;
            for (ip, peer) in peers {
                map.insert(ip, peer, 0).map_err(map_err)?;
            }
        }
        self.sync_peer_slots(&peer_slots(peers.keys()))?;
        {
            let map_err =
                |e: aya::maps::MapError| DatapathError::Map { map: maps::PEERS, detail: e.to_string() };
            let mut map: HashMap<&mut MapData, [u8; 4], Peer> =
                HashMap::try_from(self.ebpf.map_mut(maps::PEERS).expect("PEERS map")).map_err(map_err)?;
            let stale: Vec<[u8; 4]> =
                map.keys().filter_map(Result::ok).filter(|k| !peers.contains_key(k)).collect();
            for k in stale {
                map.remove(&k).map_err(map_err)?;
            }
        }
        let map_err =
            |e: aya::maps::MapError| DatapathError::Map { map: maps::REMOTE_SUBNETS, detail: e.to_string() };
        {
            let mut map: LpmTrie<&mut MapData, [u8; 4], RemoteSubnet> =
                LpmTrie::try_from(self.ebpf.map_mut(maps::REMOTE_SUBNETS).expect("REMOTE_SUBNETS map"))
                    .map_err(map_err)?;
            for (net, route) in routes {
                map.insert(&Key::new(net.prefix().into(), net.addr().octets()), route, 0).map_err(map_err)?;
            }
        }
        // The index follows the trie between its additions and its removals, like PEER_SLOTS.
        self.sync_route_index(routes, index)?;
        let mut map: LpmTrie<&mut MapData, [u8; 4], RemoteSubnet> =
            LpmTrie::try_from(self.ebpf.map_mut(maps::REMOTE_SUBNETS).expect("REMOTE_SUBNETS map"))
                .map_err(map_err)?;
        let wanted: BTreeSet<(u32, [u8; 4])> =
            routes.keys().map(|n| (n.prefix() as u32, n.addr().octets())).collect();
        let stale: Vec<Key<[u8; 4]>> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in stale {
            map.remove(&k).map_err(map_err)?;
        }
        Ok(())
    }

    /// Makes ROUTE_INDEX answer for `routes` when every one of them is a subnet of `index`'s length
    /// inside its network (else the programs use the trie alone). While the index is switched on,
    /// only changed entries are written; switching it on fills it first, switching it off or
    /// changing its shape clears the CONFIG flag first, so no packet sees a half-written index.
    fn sync_route_index(
        &mut self,
        routes: &BTreeMap<Ipv4Net, RemoteSubnet>,
        index: RouteIndexSpec,
    ) -> Result<(), DatapathError> {
        let RouteIndexSpec { network, subnet_len } = index;
        let bits = subnet_len.checked_sub(network.prefix()).map(u32::from);
        let usable = bits.is_some_and(|b| (1u32 << b.min(31)) <= maps::ROUTE_INDEX_LEN)
            && routes.keys().all(|n| n.prefix() == subnet_len && network.contains(n));
        let shift = 32 - subnet_len;
        let wanted: BTreeMap<u32, RemoteSubnet> = if usable {
            let base = u32::from(network.addr());
            routes.iter().map(|(n, r)| ((u32::from(n.addr()) - base) >> shift, *r)).collect()
        } else {
            BTreeMap::new()
        };
        let current: DatapathConfig = self.get_single(maps::CONFIG)?;
        let shape = DatapathConfig {
            flags: current.flags | maps::ROUTE_INDEX_VALID,
            index_net: network.addr().octets(),
            index_netmask: network.netmask().octets(),
            index_shift: shift,
            ..current
        };
        let on = current.flags & maps::ROUTE_INDEX_VALID != 0;
        let same_shape = on && shape == current;
        if on && !same_shape {
            self.set_config(&DatapathConfig { flags: current.flags & !maps::ROUTE_INDEX_VALID, ..current })?;
        }
        if !usable {
            self.index = None;
            return Ok(());
        }
        // What the array holds is known when this run wrote it with the flag on, else read back.
        let known = self.index.take().filter(|_| same_shape);
        write_array(&mut self.ebpf, maps::ROUTE_INDEX, maps::ROUTE_INDEX_LEN, known, &wanted)?;
        if !same_shape {
            self.set_config(&shape)?;
        }
        self.index = Some(wanted);
        Ok(())
    }

    /// Makes PEER_SLOTS hold exactly `wanted`, writing only the slots that change. What an earlier
    /// agent left is read once, on the first call.
    fn sync_peer_slots(&mut self, wanted: &BTreeMap<u32, PeerSlot>) -> Result<(), DatapathError> {
        let known = self.slots.take();
        write_array(&mut self.ebpf, maps::PEER_SLOTS, maps::PEER_SLOTS_LEN, known, wanted)?;
        self.slots = Some(wanted.clone());
        Ok(())
    }

    /// Makes LOCAL_PORTS hold exactly `ports` (container MAC -> bridge port ifindex).
    pub fn sync_local_ports(&mut self, ports: &BTreeMap<[u8; 6], u32>) -> Result<(), DatapathError> {
        let map_err =
            |e: aya::maps::MapError| DatapathError::Map { map: maps::LOCAL_PORTS, detail: e.to_string() };
        let mut map: HashMap<&mut MapData, [u8; 6], LocalPort> =
            HashMap::try_from(self.ebpf.map_mut(maps::LOCAL_PORTS).expect("LOCAL_PORTS map"))
                .map_err(map_err)?;
        for (mac, ifindex) in ports {
            if map.get(mac, 0).ok().map(|p| p.ifindex) != Some(*ifindex) {
                map.insert(mac, LocalPort { ifindex: *ifindex }, 0).map_err(map_err)?;
            }
        }
        let stale: Vec<[u8; 6]> =
            map.keys().filter_map(Result::ok).filter(|k| !ports.contains_key(k)).collect();
        for k in stale {
            map.remove(&k).map_err(map_err)?;
        }
        // Delivery shortcuts go when their container left its port (or its MAC moved), and once
        // they are old: the programs never check their age (that would be a clock read per packet).
        let map_err =
            |e: aya::maps::MapError| DatapathError::Map { map: maps::ENDPOINTS, detail: e.to_string() };
        let mut endpoints: HashMap<&mut MapData, [u8; 4], Endpoint> =
            HashMap::try_from(self.ebpf.map_mut(maps::ENDPOINTS).expect("ENDPOINTS map")).map_err(map_err)?;
        let stale = stale_endpoints(endpoints.iter().filter_map(Result::ok), ports, monotonic_coarse_ns());
        for ip in stale {
            // Already evicted by the kernel (LRU) is fine.
            let _ = endpoints.remove(&ip);
        }
        Ok(())
    }

    /// Attaches `hook` on `iface`, or atomically swaps this run's program into an attachment an
    /// earlier agent left pinned (no moment without a program). The link is pinned. A pinned link
    /// that can no longer be updated (its interface was deleted and perhaps re-created) is replaced
    /// by a fresh attachment.
    pub fn attach(&mut self, hook: Hook, iface: &str) -> Result<(), DatapathError> {
        let program = hook.program();
        let pin = link_pin(&self.pin_dir, hook, iface);
        let fail = |detail: String| DatapathError::Attach { program, iface: iface.into(), detail };
        // The kernel refuses to update a link whose interface is gone (ENOLINK).
        let took_over = match PinnedLink::from_pin(&pin) {
            Ok(old) => match self.replace_program(hook, FdLink::from(old)) {
                Ok(_still_pinned) => true,
                Err(e) => {
                    tracing::warn!(link = %pin.display(), error = %e, "pinned attachment is stale; attaching anew");
                    unpin_link(&pin)?;
                    false
                }
            },
            Err(_) => false,
        };
        if !took_over {
            let link = self.attach_new(hook, iface).map_err(fail)?;
            link.pin(&pin).map_err(|e| fail(format!("pinning {}: {e}", pin.display())))?;
        }
        tracing::info!(program, iface, took_over, "attached");
        self.attached.insert(pin);
        Ok(())
    }

    /// Swaps this run's program into an existing link (bpf_link_update).
    fn replace_program(&mut self, hook: Hook, old: FdLink) -> Result<FdLink, String> {
        let program = hook.program();
        match hook {
            Hook::TcEgress | Hook::TcIngress => {
                let p: &mut SchedClassifier =
                    self.ebpf.program_mut(program).expect("program").try_into().expect("classifier");
                let link = SchedClassifierLink::try_from(old).map_err(|e| e.to_string())?;
                let id = p.attach_to_link(link).map_err(|e| e.to_string())?;
                p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())
            }
            Hook::XdpIngress => {
                let p: &mut Xdp = self.ebpf.program_mut(program).expect("program").try_into().expect("xdp");
                let link = XdpLink::try_from(old).map_err(|e| e.to_string())?;
                let id = p.attach_to_link(link).map_err(|e| e.to_string())?;
                p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())
            }
        }
    }

    /// A new attachment (TCX first in line on tc hooks, so a program of another tool behind us
    /// still sees what we pass).
    fn attach_new(&mut self, hook: Hook, iface: &str) -> Result<FdLink, String> {
        let program = hook.program();
        match hook {
            Hook::TcEgress | Hook::TcIngress => {
                let p: &mut SchedClassifier =
                    self.ebpf.program_mut(program).expect("program").try_into().expect("classifier");
                let id = p
                    .attach_with_options(
                        iface,
                        TcAttachType::Ingress,
                        TcAttachOptions::TcxOrder(LinkOrder::first()),
                    )
                    .map_err(|e| e.to_string())?;
                p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())
            }
            Hook::XdpIngress => {
                let p: &mut Xdp = self.ebpf.program_mut(program).expect("program").try_into().expect("xdp");
                let id = p.attach(iface, XdpMode::default()).map_err(|e| e.to_string())?;
                p.take_link(id).map_err(|e| e.to_string())?.try_into().map_err(|e: LinkError| e.to_string())
            }
        }
    }

    /// Makes the egress program run on exactly `ports` (bridge ports, name -> ifindex) besides the
    /// configured interfaces, so container traffic is encapsulated before the bridge sees it. Ports
    /// new since the last call, or re-created under the same name, are attached; ports gone are
    /// unpinned (the kernel detached them with their interface). A port that fails is retried on the
    /// next call; the first error is returned after the others are done.
    pub fn sync_port_attachments(&mut self, ports: &BTreeMap<String, u32>) -> Result<(), DatapathError> {
        let mut first_error = None;
        for (name, ifindex) in ports {
            if self.ports.get(name) == Some(ifindex) {
                continue;
            }
            match self.attach(Hook::TcEgress, name) {
                Ok(()) => {
                    self.ports.insert(name.clone(), *ifindex);
                }
                Err(e) => {
                    self.ports.remove(name);
                    first_error.get_or_insert(e);
                }
            }
        }
        let gone: Vec<String> = self.ports.keys().filter(|n| !ports.contains_key(*n)).cloned().collect();
        for name in gone {
            let pin = link_pin(&self.pin_dir, Hook::TcEgress, &name);
            match unpin_link(&pin) {
                Ok(()) => {
                    tracing::info!(port = %name, "port gone; its attachment removed");
                    self.attached.remove(&pin);
                    self.ports.remove(&name);
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Detaches attachments pinned by an earlier agent that this run did not re-attach (an interface
    /// dropped from the config, or ingress switched between XDP and tc).
    pub fn detach_stale(&mut self) -> Result<(), DatapathError> {
        for pin in pinned_links(&self.pin_dir) {
            if !self.attached.contains(&pin) {
                unpin_link(&pin)?;
                tracing::info!(link = %pin.display(), "detached stale attachment");
            }
        }
        Ok(())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

fn pinned_links(pin_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(links_dir(pin_dir))
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Unpins a link; with its last reference gone the kernel detaches it.
fn unpin_link(pin: &Path) -> Result<(), DatapathError> {
    match PinnedLink::from_pin(pin) {
        Ok(link) => {
            link.unpin().map_err(|error| DatapathError::Unpin { path: pin.into(), error })?;
            Ok(())
        }
        // Not a link (or already gone): remove the file so the directory can go.
        Err(_) => match fs::remove_file(pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(DatapathError::Unpin { path: pin.into(), error }),
        },
    }
}

/// Detaches every attachment and removes every pin under `pin_dir`, then the directory itself.
/// Safe to run on a partial or missing pin directory.
pub fn remove_all(pin_dir: &Path) -> Result<(), DatapathError> {
    for pin in pinned_links(pin_dir) {
        unpin_link(&pin)?;
    }
    for name in maps::ALL {
        let path = pin_dir.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(DatapathError::Unpin { path, error }),
        }
    }
    for dir in [links_dir(pin_dir), pin_dir.to_path_buf()] {
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
        .filter(|(_, e)| e.is_stale(now) || ports.get(&e.dmac) != Some(&e.ifindex))
        .map(|(ip, _)| ip)
        .collect()
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of the programs' `bpf_ktime_get_coarse_ns`.
pub fn monotonic_coarse_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC_COARSE always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
