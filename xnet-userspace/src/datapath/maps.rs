//! The maps, one typed accessor each: the one place that reads and writes them, for the agent,
//! the inspection commands and the tests alike. [`Maps`] comes from a freshly loaded object (the
//! agent) or from the pins (`xnet routes`, `xnet stats`, the metrics). The list of maps, their key
//! and value sizes and capacities are the eBPF object's own ([`declared`]): adding a map means
//! declaring it in the programs and adding its accessor here.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    os::fd::AsFd as _,
    path::Path,
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key},
};
use xnet_common::icmp::TokenBucket;
use xnet_common::maps::{
    AGENT, AgentState, COARSE_CLOCK, CONFIG, CONTAINER_IFACES, CONTAINER_IFACES_LEN, ContainerIface, Counter,
    DatapathConfig, ENDPOINTS, Endpoint, ICMP_LIMIT, LOCAL_PORTS, LOCAL_PORTS_LIMIT, LocalPort,
    LocalPortsLimit, PEER_SLOTS, PEER_SLOTS_LEN, PEERS, Peer, PeerSlot, REMOTE_SUBNETS, ROUTE_INDEX,
    ROUTE_INDEX_LEN, RemoteSubnet, RouteEntry, STATS, UNTUNNELLED_FROM,
};

use super::{
    DatapathError, batch,
    sync::{Mirror, Op},
};
use crate::cidr::{self, Ipv4Network};

/// A map as the eBPF object declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapLayout {
    pub name: String,
    /// The kernel's `bpf_map_type` number.
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

/// Every map the eBPF object declares, sorted by name.
pub fn declared() -> Vec<MapLayout> {
    let object = aya_obj::Object::parse(super::OBJECT).expect("build.rs produced a valid eBPF object");
    let mut out: Vec<MapLayout> = object
        .maps
        .iter()
        .filter(|(_, m)| m.section_kind() == aya_obj::EbpfSectionKind::BtfMaps)
        .map(|(name, m)| MapLayout {
            name: name.clone(),
            map_type: m.map_type(),
            key_size: m.key_size(),
            value_size: m.value_size(),
            max_entries: m.max_entries(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What one map holds at most and what the kernel charges for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapMemory {
    pub name: &'static str,
    pub max_entries: u32,
    /// Bytes of kernel memory the map is charged for (`memlock` in fdinfo, bpftool's
    /// bytes_memlock).
    pub memlock: u64,
}

/// `memlock` of the map behind `data`, from this process's fdinfo.
fn memlock(data: &MapData) -> Option<u64> {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let fd = data.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
    info.lines().find_map(|l| l.strip_prefix("memlock:")?.trim().parse().ok())
}

/// The loaded or pinned maps.
pub struct Maps {
    remote_subnets: LpmTrie<MapData, [u8; 4], RouteEntry>,
    peers: HashMap<MapData, [u8; 4], Peer>,
    config: Array<MapData, DatapathConfig>,
    stats: PerCpuArray<MapData, Counter>,
    local_ports: HashMap<MapData, [u8; 6], LocalPort>,
    agent: Array<MapData, AgentState>,
    endpoints: Array<MapData, Endpoint>,
    peer_slots: Array<MapData, PeerSlot>,
    route_index: Array<MapData, RemoteSubnet>,
    container_ifaces: Array<MapData, ContainerIface>,
    /// `None` when opened from the pins of an xnet that had no such map.
    untunnelled_from: Option<LpmTrie<MapData, [u8; 4], u8>>,
    /// The programs' clock cache (jiffies and ns per CPU), only for its memory; `None` as above.
    coarse_clock: Option<PerCpuArray<MapData, [u64; 2]>>,
    /// `None` when opened from the pins of an xnet that had no such map.
    icmp_limit: Option<PerCpuArray<MapData, TokenBucket>>,
    /// `None` likewise.
    local_ports_limit: Option<Array<MapData, LocalPortsLimit>>,
}

/// Ops written per bpf(2) call by [`Maps::write_all`].
pub const WRITE_CHUNK: usize = 4096;

/// Whether a batch call failed because the kernel has no batches for the map (or at all).
fn unsupported(error: &std::io::Error) -> bool {
    // 524: ENOTSUPP, the kernel-internal "operation not supported" bpf(2) returns for map types
    // without the batch operation.
    matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EINVAL | 524))
}

/// Calls `f` with every entry of `map` (named `name`), read in batches; `Ok(false)`, with `f`
/// not called, when the kernel has no batches for the map.
fn batched<M: batch::Batched>(
    map: &M,
    name: &'static str,
    f: impl FnMut(M::Key, M::Value),
) -> Result<bool, DatapathError> {
    match batch::for_each(map, f) {
        Ok(()) => Ok(true),
        Err(e) if unsupported(&e) => Ok(false),
        Err(e) => Err(DatapathError::Map { map: name, detail: e.to_string() }),
    }
}

fn failed(map: &'static str) -> impl Fn(MapError) -> DatapathError {
    move |e| DatapathError::Map { map, detail: e.to_string() }
}

fn lpm_key(net: &Ipv4Network) -> Key<[u8; 4]> {
    Key::new(u32::from(net.prefix()), net.network().octets())
}

impl Maps {
    /// Takes the maps out of a loaded object (the programs keep theirs).
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Self::build(|name| {
            ebpf.take_map(name)
                .ok_or(DatapathError::Map { map: name, detail: "not in the eBPF object".into() })
        })
    }

    /// Opens the maps pinned under `pin_dir`.
    pub fn open(pin_dir: &Path) -> Result<Self, DatapathError> {
        Self::build(|name| {
            let path = pin_dir.join(name);
            let open = |detail: String| DatapathError::Open { path: path.clone(), detail };
            let data = MapData::from_pin(&path).map_err(|e| open(e.to_string()))?;
            Map::from_map_data(data).map_err(|e| open(e.to_string()))
        })
    }

    fn build(
        mut source: impl FnMut(&'static str) -> Result<Map, DatapathError>,
    ) -> Result<Self, DatapathError> {
        fn typed<M: TryFrom<Map, Error = MapError>>(
            source: &mut impl FnMut(&'static str) -> Result<Map, DatapathError>,
            name: &'static str,
        ) -> Result<M, DatapathError> {
            M::try_from(source(name)?).map_err(failed(name))
        }
        Ok(Self {
            remote_subnets: typed(&mut source, REMOTE_SUBNETS)?,
            peers: typed(&mut source, PEERS)?,
            config: typed(&mut source, CONFIG)?,
            stats: typed(&mut source, STATS)?,
            local_ports: typed(&mut source, LOCAL_PORTS)?,
            agent: typed(&mut source, AGENT)?,
            endpoints: typed(&mut source, ENDPOINTS)?,
            peer_slots: typed(&mut source, PEER_SLOTS)?,
            route_index: typed(&mut source, ROUTE_INDEX)?,
            container_ifaces: typed(&mut source, CONTAINER_IFACES)?,
            untunnelled_from: typed(&mut source, UNTUNNELLED_FROM).ok(),
            coarse_clock: typed(&mut source, COARSE_CLOCK).ok(),
            icmp_limit: typed(&mut source, ICMP_LIMIT).ok(),
            local_ports_limit: typed(&mut source, LOCAL_PORTS_LIMIT).ok(),
        })
    }

    /// Another handle on the same kernel maps (each file descriptor duplicated), for a second
    /// thread that writes some of them while this handle writes others.
    pub fn try_clone(&self) -> Result<Self, DatapathError> {
        let all = self.all();
        Self::build(|name| {
            let data = all.iter().find(|(n, _)| *n == name).and_then(|(_, d)| *d);
            let data = data.ok_or(DatapathError::Map { map: name, detail: "not loaded".into() })?;
            let fd = data
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| DatapathError::Map { map: name, detail: e.to_string() })?;
            Map::from_map_data(MapData::from_fd(fd).map_err(failed(name))?).map_err(failed(name))
        })
    }

    /// Every map by name (`None`: one the pins this handle was opened from lack).
    fn all(&self) -> Vec<(&'static str, Option<&MapData>)> {
        vec![
            (AGENT, Some(self.agent.map())),
            (COARSE_CLOCK, self.coarse_clock.as_ref().map(IterableMap::map)),
            (CONFIG, Some(self.config.map())),
            (CONTAINER_IFACES, Some(self.container_ifaces.map())),
            (ENDPOINTS, Some(self.endpoints.map())),
            (ICMP_LIMIT, self.icmp_limit.as_ref().map(IterableMap::map)),
            (LOCAL_PORTS, Some(self.local_ports.map())),
            (LOCAL_PORTS_LIMIT, self.local_ports_limit.as_ref().map(IterableMap::map)),
            (PEER_SLOTS, Some(self.peer_slots.map())),
            (PEERS, Some(self.peers.map())),
            (REMOTE_SUBNETS, Some(self.remote_subnets.map())),
            (ROUTE_INDEX, Some(self.route_index.map())),
            (STATS, Some(self.stats.map())),
            (UNTUNNELLED_FROM, self.untunnelled_from.as_ref().map(IterableMap::map)),
        ]
    }

    /// Every map's capacity and kernel memory, sorted by name.
    pub fn memory(&self) -> Result<Vec<MapMemory>, DatapathError> {
        self.all()
            .into_iter()
            .filter_map(|(name, data)| Some((name, data?)))
            .map(|(name, data)| {
                let info = data.info().map_err(failed(name))?;
                let memlock = memlock(data).ok_or(DatapathError::Map {
                    map: name,
                    detail: "no memlock in the map's /proc fdinfo".into(),
                })?;
                Ok(MapMemory { name, max_entries: info.max_entries(), memlock })
            })
            .collect()
    }

    /// CONFIG: this host's side of the tunnels.
    pub fn config(&self) -> Result<DatapathConfig, DatapathError> {
        self.config.get(&0, 0).map_err(failed(CONFIG))
    }

    /// Writes CONFIG, with the outer header templates built from its other fields.
    pub fn set_config(&mut self, cfg: &DatapathConfig) -> Result<(), DatapathError> {
        self.config.set(0, cfg.with_outer_templates(), 0).map_err(failed(CONFIG))
    }

    /// AGENT: what the agent records about this datapath.
    pub fn agent_state(&self) -> Result<AgentState, DatapathError> {
        self.agent.get(&0, 0).map_err(failed(AGENT))
    }

    pub fn set_agent_state(&mut self, state: &AgentState) -> Result<(), DatapathError> {
        self.agent.set(0, state, 0).map_err(failed(AGENT))
    }

    /// One STATS counter, summed over the CPUs.
    pub fn counter(&self, index: u32) -> Result<Counter, DatapathError> {
        let per_cpu = self.stats.get(&index, 0).map_err(failed(STATS))?;
        Ok(per_cpu.iter().fold(Counter::default(), |sum, c| sum + *c))
    }

    /// LOCAL_PORTS_LIMIT: the bridge ports over the cap of container MACs at the agent's last sync
    /// (all zero from an xnet that did not record it).
    pub fn local_ports_limit(&self) -> Result<LocalPortsLimit, DatapathError> {
        match &self.local_ports_limit {
            Some(map) => map.get(&0, 0).map_err(failed(LOCAL_PORTS_LIMIT)),
            None => Ok(LocalPortsLimit::default()),
        }
    }

    pub fn set_local_ports_limit(&mut self, limit: &LocalPortsLimit) -> Result<(), DatapathError> {
        let map = self.local_ports_limit.as_mut().ok_or(DatapathError::Map {
            map: LOCAL_PORTS_LIMIT,
            detail: "not pinned by the xnet that set this datapath up".into(),
        })?;
        map.set(0, limit, 0).map_err(failed(LOCAL_PORTS_LIMIT))
    }

    /// Sets the ICMP rate limit's bucket of every CPU to `bucket` (ICMP_LIMIT).
    pub fn set_icmp_limit(&mut self, bucket: TokenBucket) -> Result<(), DatapathError> {
        let map = self.icmp_limit.as_mut().ok_or(DatapathError::Map {
            map: ICMP_LIMIT,
            detail: "not pinned by the xnet that set this datapath up".into(),
        })?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DatapathError::Map {
            map: ICMP_LIMIT,
            detail: format!("cannot count the CPUs: {e}"),
        })?;
        let values = aya::maps::PerCpuValues::try_from(vec![bucket; cpus])
            .map_err(|e| DatapathError::Map { map: ICMP_LIMIT, detail: e.to_string() })?;
        map.set(0, values, 0).map_err(failed(ICMP_LIMIT))
    }

    /// REMOTE_SUBNETS, every route (where it leads).
    pub fn routes(&self) -> Result<BTreeMap<Ipv4Network, RemoteSubnet>, DatapathError> {
        Ok(self.route_entries()?.into_iter().map(|(net, e)| (net, *e.route())).collect())
    }

    /// REMOTE_SUBNETS, every entry: the route and where it came from, since when.
    pub fn route_entries(&self) -> Result<BTreeMap<Ipv4Network, RouteEntry>, DatapathError> {
        let mut out = BTreeMap::new();
        let mut bad = None;
        let whole = batched(&self.remote_subnets, REMOTE_SUBNETS, |key, route| {
            match cidr::network(Ipv4Addr::from(key.data()), key.prefix_len() as u8) {
                Some(net) => {
                    out.insert(net, route);
                }
                None => {
                    bad.get_or_insert((key.data(), key.prefix_len()));
                }
            }
        })?;
        if let Some((data, len)) = bad {
            return Err(DatapathError::Map {
                map: REMOTE_SUBNETS,
                detail: format!("key {data:?}/{len} is no network"),
            });
        }
        if whole {
            return Ok(out);
        }
        out.clear();
        for entry in self.remote_subnets.iter() {
            let (key, route) = entry.map_err(failed(REMOTE_SUBNETS))?;
            let net = cidr::network(Ipv4Addr::from(key.data()), key.prefix_len() as u8).ok_or_else(|| {
                DatapathError::Map {
                    map: REMOTE_SUBNETS,
                    detail: format!("key {:?}/{} is no network", key.data(), key.prefix_len()),
                }
            })?;
            out.insert(net, route);
        }
        Ok(out)
    }

    /// The REMOTE_SUBNETS route of exactly `net`, if any. (A trie lookup answers with the longest
    /// prefix that contains `net`; the entry's own prefix length tells whether that is `net`.)
    pub fn route(&self, net: &Ipv4Network) -> Option<RemoteSubnet> {
        let entry = self.remote_subnets.get(&lpm_key(net), 0).ok()?;
        (entry.prefix_len() == net.prefix()).then_some(*entry.route())
    }

    /// UNTUNNELLED_FROM: the networks whose untunnelled traffic may reach containers.
    pub fn untunnelled_from(&self) -> Result<BTreeSet<Ipv4Network>, DatapathError> {
        let mut out = BTreeSet::new();
        let Some(map) = &self.untunnelled_from else { return Ok(out) };
        for key in map.keys() {
            let key = key.map_err(failed(UNTUNNELLED_FROM))?;
            if let Some(net) = cidr::network(Ipv4Addr::from(key.data()), key.prefix_len() as u8) {
                out.insert(net);
            }
        }
        Ok(out)
    }

    fn untunnelled_from_mut(&mut self) -> Result<&mut LpmTrie<MapData, [u8; 4], u8>, DatapathError> {
        self.untunnelled_from.as_mut().ok_or(DatapathError::Map {
            map: UNTUNNELLED_FROM,
            detail: "not pinned by the xnet that set this datapath up".into(),
        })
    }

    pub fn put_untunnelled_from(&mut self, net: &Ipv4Network) -> Result<(), DatapathError> {
        self.untunnelled_from_mut()?.insert(&lpm_key(net), 1, 0).map_err(failed(UNTUNNELLED_FROM))
    }

    pub fn del_untunnelled_from(&mut self, net: &Ipv4Network) -> Result<(), DatapathError> {
        self.untunnelled_from_mut()?.remove(&lpm_key(net)).map_err(failed(UNTUNNELLED_FROM))
    }

    /// PEERS, every peer.
    pub fn peers(&self) -> Result<BTreeMap<[u8; 4], Peer>, DatapathError> {
        let mut out = BTreeMap::new();
        if batched(&self.peers, PEERS, |ip, peer| {
            out.insert(ip, peer);
        })? {
            return Ok(out);
        }
        self.peers.iter().map(|e| e.map_err(failed(PEERS))).collect()
    }

    /// The non-empty entries of an array map of `len` entries.
    fn array_entries<T: aya::Pod + Default + PartialEq>(
        array: &Array<MapData, T>,
        map: &'static str,
        len: u32,
    ) -> Result<BTreeMap<u32, T>, DatapathError> {
        let mut out = BTreeMap::new();
        let empty = T::default();
        match batch::for_each(array, |i, v| {
            if v != empty {
                out.insert(i, v);
            }
        }) {
            Ok(()) => return Ok(out),
            // A kernel without batches for arrays: one entry a call.
            Err(e) if unsupported(&e) => out.clear(),
            Err(e) => return Err(DatapathError::Map { map, detail: e.to_string() }),
        }
        for i in 0..len {
            let v = array.get(&i, 0).map_err(failed(map))?;
            if v != empty {
                out.insert(i, v);
            }
        }
        Ok(out)
    }

    /// The maps [`Maps::mirror`] reads besides CONFIG.
    pub const MIRRORED: [&str; 4] = [REMOTE_SUBNETS, PEERS, PEER_SLOTS, ROUTE_INDEX];

    /// [`Maps::mirror`] of maps just created: CONFIG as it is, every other map empty (nothing is
    /// read from them; the arrays alone have 131,072 entries).
    pub fn mirror_of_new(&self) -> Result<Mirror, DatapathError> {
        Ok(Mirror { config: self.config()?.without_outer_templates(), ..Mirror::default() })
    }

    /// What the route maps hold: the starting point of the agent's sync (a takeover reads what an
    /// earlier agent left).
    pub fn mirror(&self) -> Result<Mirror, DatapathError> {
        Ok(Mirror {
            // As the sync writes it: the templates are CONFIG's own business.
            config: self.config()?.without_outer_templates(),
            routes: self.route_entries()?,
            peers: self.peers()?,
            slots: Self::array_entries(&self.peer_slots, PEER_SLOTS, PEER_SLOTS_LEN)?,
            index: Self::array_entries(&self.route_index, ROUTE_INDEX, ROUTE_INDEX_LEN)?
                .into_iter()
                .filter(|(_, r)| !r.is_empty())
                .collect(),
        })
    }

    /// Writes `ops` in order: each run of ops of one kind (on one map) in bpf(2) batches of up
    /// to [`WRITE_CHUNK`]. `written` sees each op once it is in its map; the first failure stops
    /// the writing, so `written` has seen exactly what the maps hold of `ops`.
    pub fn write_all(&mut self, ops: &[Op], mut written: impl FnMut(&Op)) -> Result<(), DatapathError> {
        for run in ops.chunk_by(|a, b| std::mem::discriminant(a) == std::mem::discriminant(b)) {
            for chunk in run.chunks(WRITE_CHUNK) {
                let result = match self.write_batch(chunk) {
                    // A kernel without batches for this map: one entry a call.
                    Err(p) if p.done == 0 && unsupported(&p.error) => {
                        for op in chunk {
                            self.write(op)?;
                            written(op);
                        }
                        continue;
                    }
                    other => other,
                };
                let done = result.as_ref().map_or_else(|p| p.done, |()| chunk.len());
                chunk[..done].iter().for_each(&mut written);
                if let Err(p) = result {
                    let op = &chunk[done.min(chunk.len() - 1)];
                    return Err(DatapathError::Map { map: op.map(), detail: p.error.to_string() });
                }
            }
        }
        Ok(())
    }

    /// Writes `ops`, all of one kind, in one batch.
    fn write_batch(&mut self, ops: &[Op]) -> Result<(), batch::Partial> {
        fn pairs<K, V>(ops: &[Op], f: impl Fn(&Op) -> Option<(K, V)>) -> (Vec<K>, Vec<V>) {
            ops.iter().filter_map(f).unzip()
        }
        fn keys<K>(ops: &[Op], f: impl Fn(&Op) -> Option<K>) -> Vec<K> {
            ops.iter().filter_map(f).collect()
        }
        match &ops[0] {
            // One entry: nothing to batch (written one by one, as for a kernel without batches).
            Op::Config(_) => {
                Err(batch::Partial { done: 0, error: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP) })
            }
            Op::PutPeer(..) => {
                let (k, v) = pairs(ops, |o| if let Op::PutPeer(ip, p) = o { Some((*ip, *p)) } else { None });
                batch::update(&mut self.peers, &k, &v)
            }
            Op::DelPeer(_) => {
                let k = keys(ops, |o| if let Op::DelPeer(ip) = o { Some(*ip) } else { None });
                batch::delete(&mut self.peers, &k)
            }
            Op::PutSlot(..) => {
                let (k, v) = pairs(ops, |o| if let Op::PutSlot(i, s) = o { Some((*i, *s)) } else { None });
                batch::update(&mut self.peer_slots, &k, &v)
            }
            Op::PutRoute(..) => {
                let (k, v) =
                    pairs(ops, |o| if let Op::PutRoute(n, r) = o { Some((lpm_key(n), *r)) } else { None });
                batch::update(&mut self.remote_subnets, &k, &v)
            }
            Op::DelRoute(_) => {
                let k = keys(ops, |o| if let Op::DelRoute(n) = o { Some(lpm_key(n)) } else { None });
                batch::delete(&mut self.remote_subnets, &k)
            }
            Op::PutIndex(..) => {
                let (k, v) = pairs(ops, |o| if let Op::PutIndex(i, r) = o { Some((*i, *r)) } else { None });
                batch::update(&mut self.route_index, &k, &v)
            }
        }
    }

    /// Writes one operation of the sync.
    pub fn write(&mut self, op: &Op) -> Result<(), DatapathError> {
        match op {
            Op::Config(c) => self.set_config(c),
            Op::PutPeer(ip, p) => self.peers.insert(ip, p, 0).map_err(failed(PEERS)),
            Op::DelPeer(ip) => self.peers.remove(ip).map_err(failed(PEERS)),
            Op::PutSlot(i, s) => self.peer_slots.set(*i, s, 0).map_err(failed(PEER_SLOTS)),
            Op::PutRoute(n, r) => {
                self.remote_subnets.insert(&lpm_key(n), r, 0).map_err(failed(REMOTE_SUBNETS))
            }
            Op::DelRoute(n) => self.remote_subnets.remove(&lpm_key(n)).map_err(failed(REMOTE_SUBNETS)),
            Op::PutIndex(i, r) => self.route_index.set(*i, r, 0).map_err(failed(ROUTE_INDEX)),
        }
    }

    /// CONTAINER_IFACES: the configured container interfaces and their state, in config order.
    pub fn container_ifaces(&self) -> Result<Vec<ContainerIface>, DatapathError> {
        Ok(Self::array_entries(&self.container_ifaces, CONTAINER_IFACES, CONTAINER_IFACES_LEN)?
            .into_values()
            .collect())
    }

    /// Writes CONTAINER_IFACES: `ifaces` first, the rest emptied.
    pub fn set_container_ifaces(&mut self, ifaces: &[ContainerIface]) -> Result<(), DatapathError> {
        for i in 0..CONTAINER_IFACES_LEN {
            let entry = ifaces.get(i as usize).copied().unwrap_or_default();
            self.container_ifaces.set(i, entry, 0).map_err(failed(CONTAINER_IFACES))?;
        }
        Ok(())
    }

    /// LOCAL_PORTS: container MAC -> bridge port ifindex.
    pub fn local_ports(&self) -> Result<BTreeMap<[u8; 6], u32>, DatapathError> {
        self.local_ports
            .iter()
            .map(|e| e.map(|(k, v)| (k, v.ifindex())).map_err(failed(LOCAL_PORTS)))
            .collect()
    }

    pub fn put_local_port(&mut self, mac: [u8; 6], ifindex: u32) -> Result<(), DatapathError> {
        self.local_ports.insert(mac, LocalPort::new(ifindex), 0).map_err(failed(LOCAL_PORTS))
    }

    pub fn del_local_port(&mut self, mac: &[u8; 6]) -> Result<(), DatapathError> {
        self.local_ports.remove(mac).map_err(failed(LOCAL_PORTS))
    }

    /// ENDPOINTS: where decapsulated packets for each local container were last delivered, as
    /// (container IPv4, entry), the entries in use only. The whole array in one system call where
    /// the kernel can (the agent reads it every second, and it has an entry per subnet address).
    pub fn endpoints(&self) -> Vec<([u8; 4], Endpoint)> {
        let mut all = Vec::new();
        if batch::for_each(&self.endpoints, |_, e| all.push(e)).is_err() {
            all = (0..self.endpoints.len()).map(|i| self.endpoints.get(&i, 0).unwrap_or_default()).collect();
        }
        all.into_iter().filter(|e| e.is_for(&e.ip())).map(|e| (e.ip(), e)).collect()
    }

    /// The ENDPOINTS entry of local container `ip`, by CONFIG's container subnet.
    fn endpoint_index(&self, ip: &[u8; 4]) -> Result<u32, DatapathError> {
        Ok(self.config()?.endpoint_index(ip))
    }

    /// Writes the ENDPOINTS entry of `endpoint`'s container.
    pub fn put_endpoint(&mut self, endpoint: &Endpoint) -> Result<(), DatapathError> {
        let index = self.endpoint_index(&endpoint.ip())?;
        self.endpoints.set(index, endpoint, 0).map_err(failed(ENDPOINTS))
    }

    /// Clears the ENDPOINTS entry of container `ip` if it is that container's (cleared already, or
    /// taken by another address, is fine).
    pub fn del_endpoint(&mut self, ip: &[u8; 4]) -> Result<(), DatapathError> {
        let index = self.endpoint_index(ip)?;
        match self.endpoints.get(&index, 0) {
            Ok(e) if e.is_for(ip) => {
                self.endpoints.set(index, Endpoint::default(), 0).map_err(failed(ENDPOINTS))
            }
            _ => Ok(()),
        }
    }
}
