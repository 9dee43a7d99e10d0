//! Keeping the route maps in step with what the agent wants, as a pure diff: [`diff`] compares a
//! [`Mirror`] of what the maps hold with [`Wanted`] and yields the [`Op`]s that get from one to the
//! other, in an order where no packet for a still-valid subnet misses:
//!
//! 1. the route index is switched off first if it is about to become invalid or change shape;
//! 2. new and changed peers, then the peer slots that now point at them;
//! 3. new and changed routes (each with its record: where it came from, since when);
//! 4. route index entries; switching the index on comes after it is filled;
//! 5. then removals: routes, slots that become empty, peers.
//!
//! Steps 2 and 3 touch different maps and the programs never read one through the other (a route
//! names its peer's address, which encapsulation needs; the peer check on decapsulation needs no
//! route). So into maps that no program read when the sync began (a first start), a [`Writer`]
//! may write them side by side, in two lanes; CONFIG and the removals wait for both. The agent
//! attaches only the egress program while they fill: it reads routes, never peers.
//!
//! The agent writes the ops through [`super::maps::Maps`] and applies each to its mirror once it
//! is written, so the mirror stays exact even when a write fails halfway. Only the keys a change
//! touched are compared ([`Scope::Keys`]), so one peer change costs work proportional to that
//! change, not to the network.

use std::collections::{BTreeMap, BTreeSet};

pub use xnet_common::maps::Capacity;
use xnet_common::maps::{
    self, Backend, DatapathConfig, Peer, PeerSlot, ROUTE_INDEX_LEN, RemoteSubnet, RouteEntry, RouteInfo,
    Store,
};

use crate::cidr::{self, Ipv4Network};

/// The shape of ROUTE_INDEX: the overlay network and the length of every host's subnet in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteIndexSpec {
    pub network: Ipv4Network,
    pub subnet_len: u8,
}

impl RouteIndexSpec {
    /// Whether the network has few enough subnets of that length for the array.
    fn usable(&self) -> bool {
        self.subnet_len
            .checked_sub(self.network.prefix())
            .is_some_and(|bits| bits < 32 && (1u64 << bits) <= u64::from(ROUTE_INDEX_LEN))
            && self.subnet_len <= 32
    }

    /// Whether `net` has an entry of its own in the index.
    fn fits(&self, net: &Ipv4Network) -> bool {
        net.prefix() == self.subnet_len && cidr::contains(&self.network, net)
    }

    fn shift(&self) -> u8 {
        32 - self.subnet_len
    }

    /// The index entry of a subnet that fits.
    fn slot(&self, net: &Ipv4Network) -> u32 {
        (u32::from(net.network()) - u32::from(self.network.network())) >> self.shift()
    }

    /// The subnet of index entry `i`.
    fn subnet(&self, i: u32) -> Option<Ipv4Network> {
        let addr = u32::from(self.network.network()).checked_add(i << self.shift())?;
        cidr::network(addr.into(), self.subnet_len)
    }

    /// `cfg` with the index switched on in this shape.
    fn switched_on(&self, cfg: DatapathConfig) -> DatapathConfig {
        cfg.with_route_index(self.network.network().octets(), self.network.mask().octets(), self.shift())
    }
}

/// Which keys to compare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every key of the mirror and of what is wanted (start, takeover, a failed sync).
    All,
    /// Only these (what changed since the last sync).
    Keys { routes: BTreeSet<Ipv4Network>, peers: BTreeSet<[u8; 4]> },
}

/// One route for [`Wanted::filled`]: what [`Wanted::set`] and [`Wanted::set_protocol`] take.
#[derive(Clone, Copy, Debug)]
pub struct WantedRoute {
    pub subnet: Ipv4Network,
    pub route: RemoteSubnet,
    pub peer: Peer,
    /// The kernel route protocol it was learned with, for routes from a routing daemon.
    pub protocol: Option<u8>,
}

/// The routes and peers the maps should hold, with what derives from them kept up to date as they
/// change (peer slot members, whether every route fits the route index, which keys changed).
#[derive(Clone, Debug)]
pub struct Wanted {
    source: Store,
    index: RouteIndexSpec,
    routes: BTreeMap<Ipv4Network, RemoteSubnet>,
    /// The kernel route protocol of routes learned from a routing daemon (each route's
    /// [`RouteInfo`] records it).
    protocols: BTreeMap<Ipv4Network, u8>,
    /// Each peer, and how many routes lead to it (a route names its peer: `peer_ip`).
    peers: BTreeMap<[u8; 4], (Peer, u32)>,
    /// (PEER_SLOTS entry, peer) for every peer: one small set, not a set per slot.
    slot_members: BTreeSet<(u32, [u8; 4])>,
    /// Routes that do not fit the index.
    misfits: usize,
    /// Routes by backend number (index 0: none or unknown), so the backends in use are known
    /// without a walk over every route.
    by_backend: [usize; 5],
    touched_routes: BTreeSet<Ipv4Network>,
    touched_peers: BTreeSet<[u8; 4]>,
}

impl Wanted {
    /// Nothing wanted yet; routes come from `source`, and the index has the shape `index`.
    pub fn new(source: Store, index: RouteIndexSpec) -> Self {
        Self {
            source,
            index,
            routes: BTreeMap::new(),
            protocols: BTreeMap::new(),
            peers: BTreeMap::new(),
            slot_members: BTreeSet::new(),
            misfits: 0,
            by_backend: [0; 5],
            touched_routes: BTreeSet::new(),
            touched_peers: BTreeSet::new(),
        }
    }

    /// [`Wanted::new`] with every route of `routes` set in turn, a later one for the same subnet
    /// replacing an earlier one, and nothing recorded as changed: what a first sync with
    /// [`Scope::All`] starts from. The maps are built in one go from sorted lists, where setting
    /// 100,000 routes one at a time (and recording them, only to drop the record) cost a tenth of
    /// a second at start-up.
    pub fn filled(source: Store, index: RouteIndexSpec, routes: Vec<WantedRoute>) -> Self {
        let mut wanted = Self::new(source, index);
        // Each peer's entry is the one its last route named (as `set` leaves it), whether or not
        // that route is replaced later; sorted by address, the input order kept among equals.
        let mut last_peer: Vec<([u8; 4], Peer)> =
            routes.iter().map(|r| (r.route.peer_ip(), r.peer)).collect();
        last_peer.sort_by_key(|(ip, _)| *ip);
        // The last route of each subnet survives (the sort is stable: input order among equals).
        let mut routes = routes;
        routes.sort_by_key(|r| r.subnet);
        let survivors = routes.chunk_by(|a, b| a.subnet == b.subnet).map(|same| same[same.len() - 1]);
        let mut users: Vec<[u8; 4]> = Vec::with_capacity(routes.len());
        let mut protocols = Vec::new();
        let mut kept = Vec::with_capacity(routes.len());
        for r in survivors {
            if !index.fits(&r.subnet) {
                wanted.misfits += 1;
            }
            wanted.by_backend[backend_slot(&r.route)] += 1;
            users.push(r.route.peer_ip());
            if let Some(p) = r.protocol {
                protocols.push((r.subnet, p));
            }
            kept.push((r.subnet, r.route));
        }
        users.sort_unstable();
        let mut peers = Vec::new();
        let mut entries = last_peer.chunk_by(|a, b| a.0 == b.0).map(|same| same[same.len() - 1]);
        for run in users.chunk_by(|a, b| a == b) {
            let ip = run[0];
            // Both lists are sorted by address, and every user's address is in `last_peer`.
            let (_, peer) = entries.find(|(e, _)| *e == ip).expect("every route names its peer");
            peers.push((ip, (peer, run.len() as u32)));
        }
        wanted.slot_members = peers.iter().map(|(ip, _)| (maps::peer_slot(ip), *ip)).collect();
        wanted.peers = peers.into_iter().collect();
        wanted.routes = kept.into_iter().collect();
        wanted.protocols = protocols.into_iter().collect();
        wanted
    }

    pub fn routes(&self) -> &BTreeMap<Ipv4Network, RemoteSubnet> {
        &self.routes
    }

    /// Whether a route's subnet lies inside another route's (only a routing daemon's routes may):
    /// the programs then take the longest prefix, and the inner route must be written before a
    /// program reads the outer one in its place.
    pub fn has_nested_routes(&self) -> bool {
        // Subnets nest or are disjoint. In address order, whatever follows a subnet and starts
        // inside it lies inside it, so if any route nests in another, the one right after that
        // other does: comparing neighbours is enough.
        let keys = self.routes.keys();
        keys.clone().zip(keys.skip(1)).any(|(a, b)| cidr::range(b).0 <= cidr::range(a).1)
    }

    /// How many peers the routes lead to.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The PEERS entry of the peer at `ip`, if a route leads there.
    pub fn peer(&self, ip: &[u8; 4]) -> Option<&Peer> {
        self.peers.get(ip).map(|(p, _)| p)
    }

    /// Routes `subnet` to the peer at `route.peer_ip()`.
    pub fn set(&mut self, subnet: Ipv4Network, route: RemoteSubnet, peer: Peer) {
        self.remove(&subnet);
        let ip = route.peer_ip();
        if !self.index.fits(&subnet) {
            self.misfits += 1;
        }
        self.by_backend[backend_slot(&route)] += 1;
        self.routes.insert(subnet, route);
        match self.peers.get_mut(&ip) {
            Some(entry) => *entry = (peer, entry.1 + 1),
            None => {
                self.peers.insert(ip, (peer, 1));
                self.slot_members.insert((maps::peer_slot(&ip), ip));
            }
        }
        self.touched_routes.insert(subnet);
        self.touched_peers.insert(ip);
    }

    /// Records that the route of `subnet` (set just before) was learned with the kernel route
    /// protocol `protocol`.
    pub fn set_protocol(&mut self, subnet: Ipv4Network, protocol: u8) {
        if self.routes.contains_key(&subnet) {
            self.protocols.insert(subnet, protocol);
            self.touched_routes.insert(subnet);
        }
    }

    /// What the [`RouteInfo`] of the route of `net` should say, were it first installed at `now`.
    fn info(&self, net: &Ipv4Network, now: u64) -> RouteInfo {
        let info = RouteInfo::new(self.source, now);
        self.protocols.get(net).map_or(info, |p| info.with_protocol(*p))
    }

    /// Removes the route of `subnet` (and its peer, if no other route leads there).
    pub fn remove(&mut self, subnet: &Ipv4Network) {
        let Some(route) = self.routes.remove(subnet) else {
            return;
        };
        self.protocols.remove(subnet);
        self.by_backend[backend_slot(&route)] -= 1;
        self.touched_routes.insert(*subnet);
        if !self.index.fits(subnet) {
            self.misfits -= 1;
        }
        let ip = route.peer_ip();
        let (_, users) = self.peers.get_mut(&ip).expect("every route has a peer");
        *users -= 1;
        if *users == 0 {
            self.peers.remove(&ip);
            self.slot_members.remove(&(maps::peer_slot(&ip), ip));
            self.touched_peers.insert(ip);
        }
    }

    /// The backends at least one route is sent with.
    pub fn backends(&self) -> impl Iterator<Item = Backend> + '_ {
        Backend::ALL.into_iter().filter(|b| self.by_backend[*b as usize] > 0)
    }

    /// Removes every route (a store listed everything anew; what it lists is set again).
    pub fn clear(&mut self) {
        let all: Vec<Ipv4Network> = self.routes.keys().copied().collect();
        for subnet in &all {
            self.remove(subnet);
        }
    }

    /// The keys changed since the last call.
    pub fn take_changes(&mut self) -> Scope {
        Scope::Keys {
            routes: std::mem::take(&mut self.touched_routes),
            peers: std::mem::take(&mut self.touched_peers),
        }
    }

    /// PEER_SLOTS entry `slot` as it should be.
    fn slot(&self, slot: u32) -> PeerSlot {
        let mut members = self.slot_members.range((slot, [0; 4])..=(slot, [255; 4]));
        match (members.next(), members.next()) {
            (None, _) => PeerSlot::empty(),
            (Some((_, ip)), None) => PeerSlot::peer(*ip),
            (Some((_, ip)), Some(_)) => PeerSlot::shared(*ip),
        }
    }

    /// The route index's shape while it is valid: every route fits it.
    fn index_shape(&self) -> Option<RouteIndexSpec> {
        (self.misfits == 0 && self.index.usable()).then_some(self.index)
    }
}

/// The [`Wanted::by_backend`] index of a route: its backend number, 0 for none or unknown.
fn backend_slot(route: &RemoteSubnet) -> usize {
    route.backend().map_or(0, |b| b as usize)
}

/// What the route maps hold, as the agent last wrote or read them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Mirror {
    pub config: DatapathConfig,
    pub routes: BTreeMap<Ipv4Network, RouteEntry>,
    pub peers: BTreeMap<[u8; 4], Peer>,
    /// Non-empty PEER_SLOTS entries.
    pub slots: BTreeMap<u32, PeerSlot>,
    /// ROUTE_INDEX entries with a route.
    pub index: BTreeMap<u32, RemoteSubnet>,
}

/// One map write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Boxed: CONFIG is 256 bytes, every other op a few dozen.
    Config(Box<DatapathConfig>),
    PutPeer([u8; 4], Peer),
    DelPeer([u8; 4]),
    /// An empty slot is written as the default value.
    PutSlot(u32, PeerSlot),
    PutRoute(Ipv4Network, RouteEntry),
    DelRoute(Ipv4Network),
    /// No route is written as the default value (backend 0).
    PutIndex(u32, RemoteSubnet),
}

impl Op {
    /// The [`Writer`] lane of the op: 1 for the route maps, 0 for the rest (peers, slots,
    /// CONFIG). The programs read a route without its peer's entry, and a peer's entry without
    /// its routes, so the two lanes may be written side by side.
    pub fn lane(&self) -> usize {
        match self {
            Op::PutRoute(..) | Op::DelRoute(_) | Op::PutIndex(..) => 1,
            Op::Config(_) | Op::PutPeer(..) | Op::DelPeer(_) | Op::PutSlot(..) => 0,
        }
    }

    /// The map the op writes.
    pub fn map(&self) -> &'static str {
        match self {
            Op::Config(_) => maps::CONFIG,
            Op::PutPeer(..) | Op::DelPeer(_) => maps::PEERS,
            Op::PutSlot(..) => maps::PEER_SLOTS,
            Op::PutRoute(..) | Op::DelRoute(_) => maps::REMOTE_SUBNETS,
            Op::PutIndex(..) => maps::ROUTE_INDEX,
        }
    }
}

impl Mirror {
    /// Records that `op` was written.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Config(c) => self.config = **c,
            Op::PutPeer(ip, p) => {
                self.peers.insert(*ip, *p);
            }
            Op::DelPeer(ip) => {
                self.peers.remove(ip);
            }
            Op::PutSlot(i, s) if *s == PeerSlot::empty() => {
                self.slots.remove(i);
            }
            Op::PutSlot(i, s) => {
                self.slots.insert(*i, *s);
            }
            Op::PutRoute(n, r) => {
                self.routes.insert(*n, *r);
            }
            Op::DelRoute(n) => {
                self.routes.remove(n);
            }
            Op::PutIndex(i, r) if r.is_empty() => {
                self.index.remove(i);
            }
            Op::PutIndex(i, r) => {
                self.index.insert(*i, *r);
            }
        }
    }
}

/// A wanted state the maps cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "map {map} holds at most {capacity} entries, but {wanted} are wanted; the rest would be missing, so nothing was changed (raise `[capacity]` in the config file)"
)]
pub struct MapFull {
    pub map: &'static str,
    pub capacity: usize,
    pub wanted: usize,
}

/// The writes that make the maps described by `current` hold `wanted` and `config` (CONFIG apart
/// from its route index fields, which this diff owns), comparing the keys in `scope`. `now`: Unix
/// seconds, for the [`RouteInfo`] of new routes.
pub fn diff(
    current: &Mirror,
    wanted: &Wanted,
    config: &DatapathConfig,
    scope: &Scope,
    now: u64,
    capacity: Capacity,
) -> Result<Vec<Op>, MapFull> {
    let mut scratch = current.clone();
    let mut ops = Vec::new();
    apply(
        &mut scratch,
        wanted,
        config,
        scope,
        now,
        capacity,
        &mut Direct::new(|chunk: &[Op]| -> Result<(), (usize, MapFull)> {
            ops.extend_from_slice(chunk);
            Ok(())
        }),
    )?;
    Ok(ops)
}

/// Ops handed to the writer at a time, all of one kind: a batch.
pub const CHUNK: usize = 4096;

/// A chunk a [`Writer`] was sent, back with `Ok` or how many of its ops were written before the
/// error.
pub type Answer<E> = (Vec<Op>, Result<(), (usize, E)>);

/// Where [`apply`] sends its ops: a chunk at a time, each chunk down a lane ([`Op::lane`]), each
/// answered with how it went. A lane writes its chunks in the order sent and none after one that
/// failed; with two lanes, peers and routes are written side by side. A writer may keep up to
/// [`Writer::DEPTH`] chunks a lane outstanding, so the next chunk is built while the kernel takes
/// the one before.
pub trait Writer {
    type Error;
    /// How many chunks a lane may have sent and not yet answered (1: each is answered before the
    /// next is sent).
    const DEPTH: usize;
    /// 1: every op goes down lane 0, in [`diff`]'s order. 2: routes go down a lane of their own,
    /// taking turns with the peers: only for maps no program reads yet (a route would otherwise
    /// be used before its peer is trusted to answer).
    fn lanes(&self) -> usize;
    /// Hands over `chunk`, to be written after the chunks sent down `lane` before it.
    fn send(&mut self, lane: usize, chunk: Vec<Op>);
    /// A chunk sent and not yet answered (the oldest of its lane), with `Ok` or how many of its
    /// ops were written before the error, waiting for one if need be; `None` once every chunk
    /// the writer will answer was answered.
    fn answer(&mut self) -> Option<Answer<Self::Error>>;
    /// No more chunks come: what is outstanding is answered (or dropped, down a lane that
    /// failed), then [`Writer::answer`] says `None`.
    fn close(&mut self) {}
}

/// A [`Writer`] that writes each chunk with a closure as it is sent (returning how many ops of it
/// it wrote when it stops).
pub struct Direct<F, E> {
    write: F,
    answered: Option<Answer<E>>,
}

impl<F: FnMut(&[Op]) -> Result<(), (usize, E)>, E> Direct<F, E> {
    pub fn new(write: F) -> Self {
        Self { write, answered: None }
    }
}

impl<F: FnMut(&[Op]) -> Result<(), (usize, E)>, E> Writer for Direct<F, E> {
    type Error = E;
    const DEPTH: usize = 1;

    fn lanes(&self) -> usize {
        1
    }

    fn send(&mut self, _lane: usize, chunk: Vec<Op>) {
        debug_assert!(self.answered.is_none(), "one chunk at a time");
        let result = (self.write)(&chunk);
        self.answered = Some((chunk, result));
    }

    fn answer(&mut self) -> Option<Answer<E>> {
        self.answered.take()
    }
}

/// The ops of a sync on their way to the writer, a chunk at a time, and into the mirror once
/// answered as written.
struct Emitter<'m, 'w, W> {
    mirror: &'m mut Mirror,
    chunk: Vec<Op>,
    writer: &'w mut W,
    /// Chunks sent down each lane and not yet answered.
    outstanding: [usize; 2],
    written: usize,
}

impl<W: Writer> Emitter<'_, '_, W> {
    fn push(&mut self, op: Op) -> Result<(), W::Error> {
        let other_kind =
            self.chunk.last().is_some_and(|last| std::mem::discriminant(last) != std::mem::discriminant(&op));
        if other_kind || self.chunk.len() >= CHUNK {
            self.send()?;
        }
        self.chunk.push(op);
        Ok(())
    }

    /// Sends the chunk built so far down its lane, once that lane has room. CONFIG is written
    /// alone: after every op before it, and before any after it.
    fn send(&mut self) -> Result<(), W::Error> {
        let Some(first) = self.chunk.first() else { return Ok(()) };
        let lane = self.lane_of(first);
        let alone = matches!(first, Op::Config(_));
        if alone {
            self.settle_all()?;
        }
        while self.outstanding[lane] >= W::DEPTH.max(1) {
            self.settle_one()?;
        }
        self.writer.send(lane, std::mem::take(&mut self.chunk));
        self.outstanding[lane] += 1;
        if alone {
            self.settle_all()?;
        }
        Ok(())
    }

    /// Sends the chunk built so far and waits until everything sent is written: what comes next
    /// is written after it, whatever its lane.
    fn barrier(&mut self) -> Result<(), W::Error> {
        self.send()?;
        self.settle_all()
    }

    fn settle_all(&mut self) -> Result<(), W::Error> {
        while self.outstanding.iter().sum::<usize>() > 0 {
            self.settle_one()?;
        }
        Ok(())
    }

    /// Applies the written ops of one answered chunk to the mirror. On a failure, the chunks
    /// still outstanding are answered first (another lane's may be written) and applied too.
    fn settle_one(&mut self) -> Result<(), W::Error> {
        let answer = self.writer.answer().expect("a chunk is outstanding");
        let Err(e) = self.apply_answer(answer) else { return Ok(()) };
        self.writer.close();
        while let Some(answer) = self.writer.answer() {
            // Only the first error is reported; the maps hold what the mirror says either way.
            let _ = self.apply_answer(answer);
        }
        self.outstanding = [0; 2];
        Err(e)
    }

    fn apply_answer(&mut self, (chunk, result): Answer<W::Error>) -> Result<(), W::Error> {
        let lane = chunk.first().map_or(0, |op| self.lane_of(op));
        self.outstanding[lane] = self.outstanding[lane].saturating_sub(1);
        let done = match &result {
            Ok(()) => chunk.len(),
            Err((done, _)) => (*done).min(chunk.len()),
        };
        for op in &chunk[..done] {
            self.mirror.apply(op);
        }
        self.written += done;
        result.map_err(|(_, e)| e)
    }

    /// The lane `op` goes down with this writer: its own with two lanes, else the one.
    fn lane_of(&self, op: &Op) -> usize {
        if self.writer.lanes() > 1 { op.lane() } else { 0 }
    }
}

/// One lane's steps in [`apply`]: for each, how many keys it compares and the op (if any) for the
/// key at a position, given the mirror.
type Step<'a> = (usize, &'a dyn Fn(&Mirror, usize) -> Option<Op>);

/// A lane of [`apply`]'s steps 2 to 4, walked a chunk at a time.
struct Lane<'a> {
    steps: Vec<Step<'a>>,
    /// The step being walked, and the position in it.
    step: usize,
    at: usize,
}

impl<'a> Lane<'a> {
    fn new(steps: Vec<Step<'a>>) -> Self {
        Self { steps, step: 0, at: 0 }
    }

    fn done(&self) -> bool {
        self.step >= self.steps.len()
    }

    /// Pushes the lane's next ops: up to a chunk, all of one step.
    fn turn<W: Writer>(&mut self, em: &mut Emitter<'_, '_, W>) -> Result<(), W::Error> {
        let mut pushed = 0;
        while let Some(&(len, op)) = self.steps.get(self.step) {
            if self.at >= len {
                (self.step, self.at) = (self.step + 1, 0);
                if pushed > 0 {
                    break;
                }
                continue;
            }
            if let Some(op) = op(em.mirror, self.at) {
                em.push(op)?;
                pushed += 1;
            }
            self.at += 1;
            if pushed >= CHUNK {
                break;
            }
        }
        Ok(())
    }
}

/// The keys `held` has in scope, in order: every one for a full sync (its scope holds them all),
/// else those of `keys` (the scope's own, sorted).
fn held_in_scope<K: Ord + Copy, V>(all: bool, keys: &[K], held: &BTreeMap<K, V>) -> Vec<K> {
    if all {
        held.keys().copied().collect()
    } else {
        keys.iter().filter(|k| held.contains_key(k)).copied().collect()
    }
}

/// The distinct items of `items`, in order (a sorted vector: the key sets of a first sync hold
/// every route, and sorting runs that are already in order is far cheaper than a tree).
fn sorted_set<T: Ord>(items: impl Iterator<Item = T>) -> Vec<T> {
    let mut v: Vec<T> = items.collect();
    // A stable sort finds the runs already in order and merges them.
    v.sort();
    v.dedup();
    v
}

/// Whether maps of `capacity` can hold `wanted`: [`apply`] writes nothing when they cannot.
pub fn check_capacity(wanted: &Wanted, capacity: Capacity) -> Result<(), MapFull> {
    if wanted.routes.len() > capacity.routes as usize {
        return Err(MapFull {
            map: maps::REMOTE_SUBNETS,
            capacity: capacity.routes as usize,
            wanted: wanted.routes.len(),
        });
    }
    if wanted.peers.len() > capacity.peers as usize {
        return Err(MapFull {
            map: maps::PEERS,
            capacity: capacity.peers as usize,
            wanted: wanted.peers.len(),
        });
    }
    Ok(())
}

/// [`diff`], streamed: the ops go to `writer` a chunk at a time (up to [`CHUNK`] ops of one kind,
/// in the order [`diff`] gives them), and each op that `writer` answers as written is applied to
/// `current`, which so stays what the maps hold even when a write fails. No list of every op is
/// ever held: a first sync of 100,000 peers needs no more memory than its chunks in flight.
/// Returns how many ops were written.
///
/// Each key of each map is compared once, before any op on it is written, and the writes of one
/// step touch only keys that step has compared, so reading `current` while chunks are still being
/// written (and not yet applied to it) gives the ops a diff of the untouched mirror would.
pub fn apply<W: Writer>(
    current: &mut Mirror,
    wanted: &Wanted,
    config: &DatapathConfig,
    scope: &Scope,
    now: u64,
    capacity: Capacity,
    writer: &mut W,
) -> Result<usize, W::Error>
where
    W::Error: From<MapFull>,
{
    check_capacity(wanted, capacity)?;
    let (route_keys, peer_keys) = match scope {
        Scope::All => (
            sorted_set(current.routes.keys().chain(wanted.routes.keys()).copied()),
            sorted_set(current.peers.keys().chain(wanted.peers.keys()).copied()),
        ),
        Scope::Keys { routes, peers } => (routes.iter().copied().collect(), peers.iter().copied().collect()),
    };
    // The slots whose members change: filled or changed (written after their peers), emptied
    // (written with the removals).
    let slot_keys = match scope {
        Scope::All => {
            sorted_set(current.slots.keys().copied().chain(wanted.slot_members.iter().map(|(s, _)| *s)))
        }
        Scope::Keys { .. } => sorted_set(peer_keys.iter().map(maps::peer_slot)),
    };
    let mut em = Emitter { mirror: current, chunk: Vec::new(), writer, outstanding: [0; 2], written: 0 };

    // 1. CONFIG as wanted, with the index switched off if its shape is about to change.
    let shape = wanted.index_shape();
    let mut cfg = config.with_route_index_of(&em.mirror.config);
    let index_on = em.mirror.config.route_index_on();
    let same_shape = index_on && shape.is_some_and(|s| s.switched_on(cfg) == cfg);
    if index_on && !same_shape {
        cfg = cfg.without_route_index();
    }
    if cfg != em.mirror.config {
        em.push(Op::Config(Box::new(cfg)))?;
    }

    // Removals: routes, emptied slots, peers. Normally last, so that nothing still wanted is ever
    // missing; first when adding before removing would need more entries than the maps hold (a
    // full map where one host leaves and another joins): what goes is going anyway.
    let mut removals = Vec::new();
    // Only keys the mirror holds can go, or be there already: a full sync walks the mirror
    // (nothing on a first start), a partial one its own keys.
    let all = matches!(scope, Scope::All);
    let routes_held = held_in_scope(all, &route_keys, &em.mirror.routes);
    let peers_held = held_in_scope(all, &peer_keys, &em.mirror.peers);
    removals.extend(routes_held.iter().filter(|n| !wanted.routes.contains_key(*n)).map(|n| Op::DelRoute(*n)));
    for slot in held_in_scope(all, &slot_keys, &em.mirror.slots) {
        if wanted.slot(slot) == PeerSlot::empty() {
            removals.push(Op::PutSlot(slot, PeerSlot::empty()));
        }
    }
    removals
        .extend(peers_held.iter().filter(|ip| !wanted.peers.contains_key(*ip)).map(|ip| Op::DelPeer(*ip)));
    let wanted_routes = if all {
        wanted.routes.len()
    } else {
        route_keys.iter().filter(|n| wanted.routes.contains_key(*n)).count()
    };
    let wanted_peers = if all {
        wanted.peers.len()
    } else {
        peer_keys.iter().filter(|ip| wanted.peers.contains_key(*ip)).count()
    };
    let new_routes = wanted_routes - routes_held.iter().filter(|n| wanted.routes.contains_key(*n)).count();
    let new_peers = wanted_peers - peers_held.iter().filter(|ip| wanted.peers.contains_key(*ip)).count();
    let removals_first = em.mirror.routes.len() + new_routes > capacity.routes as usize
        || em.mirror.peers.len() + new_peers > capacity.peers as usize;
    if removals_first {
        for op in std::mem::take(&mut removals) {
            em.push(op)?;
        }
        em.barrier()?;
    }

    // 2-4, in two lanes: (2) new and changed peers, then the slots that point at them; (3) new
    // and changed routes, each with its record, (4) then the route index entries. Each map's
    // writes come together, so they go in batches. For a writer with two lanes the lanes take
    // turns a chunk at a time, so both stay busy; otherwise lane 0 goes first.
    let index_slots = match shape {
        Some(shape) if same_shape => {
            sorted_set(route_keys.iter().filter(|n| shape.fits(n)).map(|n| shape.slot(n)))
        }
        Some(shape) => {
            sorted_set(em.mirror.index.keys().copied().chain(wanted.routes.keys().map(|n| shape.slot(n))))
        }
        None => Vec::new(),
    };
    let peer = |m: &Mirror, i: usize| {
        let ip = &peer_keys[i];
        wanted.peer(ip).filter(|p| m.peers.get(ip) != Some(*p)).map(|p| Op::PutPeer(*ip, *p))
    };
    let slot = |m: &Mirror, i: usize| {
        let slot = slot_keys[i];
        let want = wanted.slot(slot);
        (want != PeerSlot::empty() && m.slots.get(&slot).copied().unwrap_or_default() != want)
            .then_some(Op::PutSlot(slot, want))
    };
    // A route with its record: one write a route.
    let route = |m: &Mirror, i: usize| {
        let net = &route_keys[i];
        let route = wanted.routes.get(net)?;
        let recorded = m.routes.get(net).copied();
        let mut info = wanted.info(net, now);
        // A route that moves keeps its first installation time.
        if let Some(r) = recorded.map(|e| e.info())
            && r.source() == info.source()
        {
            info = info.with_added_at(r.added_at());
        }
        let entry = RouteEntry::new(net.prefix(), *route, info);
        (recorded != Some(entry)).then_some(Op::PutRoute(*net, entry))
    };
    let index = |m: &Mirror, i: usize| {
        let (shape, i) = (shape?, index_slots[i]);
        let want = shape.subnet(i).and_then(|n| wanted.routes.get(&n)).copied().unwrap_or_default();
        (m.index.get(&i).copied().unwrap_or_default() != want).then_some(Op::PutIndex(i, want))
    };
    let mut lanes: [Lane<'_>; 2] = [
        Lane::new(vec![(peer_keys.len(), &peer), (slot_keys.len(), &slot)]),
        Lane::new(vec![(route_keys.len(), &route), (index_slots.len(), &index)]),
    ];
    if em.writer.lanes() > 1 {
        while !lanes.iter().all(Lane::done) {
            for lane in &mut lanes {
                lane.turn(&mut em)?;
            }
        }
    } else {
        // One after the other: peers are trusted before routes lead to them.
        for lane in &mut lanes {
            while !lane.done() {
                lane.turn(&mut em)?;
            }
        }
    }

    // The route index switched on once filled.
    if let Some(shape) = shape
        && !same_shape
    {
        cfg = shape.switched_on(cfg);
        em.push(Op::Config(Box::new(cfg)))?;
    }

    // 5. The removals, unless they went first: after every write above, in either lane.
    em.barrier()?;
    for op in removals {
        em.push(op)?;
    }
    em.barrier()?;
    Ok(em.written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xnet_common::maps::{Backend, DatapathParams, SlotState};

    fn net(s: &str) -> Ipv4Network {
        cidr::parse(s).unwrap()
    }

    fn spec() -> RouteIndexSpec {
        RouteIndexSpec { network: net("10.244.0.0/16"), subnet_len: 24 }
    }

    fn route(ip: [u8; 4]) -> RemoteSubnet {
        RemoteSubnet::new(ip, [2, 0, ip[0], ip[1], ip[2], ip[3]], Backend::Vxlan)
    }

    fn peer(ip: [u8; 4]) -> Peer {
        Peer::new([2, 0, ip[0], ip[1], ip[2], ip[3]], Backend::Vxlan)
    }

    fn set(w: &mut Wanted, subnet: &str, ip: [u8; 4]) {
        w.set(net(subnet), route(ip), peer(ip));
    }

    /// Diffs, applies to the mirror, and checks that nothing is left to do.
    fn sync(m: &mut Mirror, w: &mut Wanted, cfg: &DatapathConfig, scope: Scope) -> Vec<Op> {
        let ops = diff(m, w, cfg, &scope, 100, Capacity::default()).unwrap();
        for op in &ops {
            m.apply(op);
        }
        w.take_changes();
        let again = diff(m, w, cfg, &Scope::All, 200, Capacity::default()).unwrap();
        assert!(again.is_empty(), "a full diff after the sync finds more to do: {again:?}");
        ops
    }

    fn position(ops: &[Op], f: impl Fn(&Op) -> bool) -> usize {
        ops.iter().position(f).unwrap_or_else(|| panic!("no such op in {ops:?}"))
    }

    #[test]
    fn nested_routes_are_found_whatever_lies_between() {
        let nested = |subnets: &[&str]| {
            let mut w = Wanted::new(Store::Routes, spec());
            for (i, s) in subnets.iter().enumerate() {
                set(&mut w, s, [198, 18, 0, i as u8 + 2]);
            }
            w.has_nested_routes()
        };
        assert!(!nested(&[]));
        assert!(!nested(&["10.244.1.0/24", "10.244.2.0/24", "10.245.0.0/16", "10.244.0.0/24"]));
        // Adjacent, not nested: one ends where the next begins.
        assert!(!nested(&["10.244.0.0/23", "10.244.2.0/23", "10.244.4.0/32"]));
        assert!(nested(&["10.244.0.0/22", "10.244.2.0/24"]));
        assert!(nested(&["10.244.2.0/24", "10.244.2.0/25"]), "the same start address");
        // Set in any order: the inner one set last, after routes on both sides of the outer one.
        assert!(nested(&["9.0.0.0/8", "10.0.0.0/8", "11.0.0.0/8", "10.255.255.0/24"]));
        assert!(nested(&["10.244.0.0/16", "10.244.255.255/32"]), "the last address of the outer one");
    }

    #[test]
    fn a_route_moving_between_hosts_adds_the_new_peer_before_removing_the_old() {
        let (a, b) = ([198, 18, 0, 2], [198, 18, 0, 3]);
        let cfg = DatapathConfig::default();
        let (mut m, mut w) = (Mirror::default(), Wanted::new(Store::Etcd, spec()));
        set(&mut w, "10.244.2.0/24", a);
        sync(&mut m, &mut w, &cfg, Scope::All);
        assert_eq!(m.routes[&net("10.244.2.0/24")].route().peer_ip(), a);
        set(&mut w, "10.244.2.0/24", b);
        let scope = w.take_changes();
        let ops = diff(&m, &w, &cfg, &scope, 150, Capacity::default()).unwrap();
        let put_peer = position(&ops, |o| matches!(o, Op::PutPeer(ip, _) if *ip == b));
        let put_slot = position(&ops, |o| matches!(o, Op::PutSlot(_, s) if s.ip() == b));
        let put_route = position(&ops, |o| matches!(o, Op::PutRoute(_, r) if r.route().peer_ip() == b));
        let put_index = position(&ops, |o| matches!(o, Op::PutIndex(2, r) if r.peer_ip() == b));
        let del_slot = position(&ops, |o| matches!(o, Op::PutSlot(_, s) if *s == PeerSlot::empty()));
        let del_peer = position(&ops, |o| matches!(o, Op::DelPeer(ip) if *ip == a));
        assert!(put_peer < put_slot && put_slot < put_route && put_route < del_peer, "{ops:?}");
        assert!(put_index < del_slot && del_slot < del_peer, "{ops:?}");
        assert!(
            matches!(&ops[put_route], Op::PutRoute(_, r) if r.info() == RouteInfo::new(Store::Etcd, 100)),
            "same source: first install time kept: {ops:?}"
        );
        assert!(!ops.iter().any(|o| matches!(o, Op::DelRoute(_))), "the subnet never loses its route");
        for op in &ops {
            m.apply(op);
        }
        assert_eq!((m.peers.len(), m.slots.len(), m.index[&2].peer_ip()), (1, 1, b));
    }

    #[test]
    fn learned_routes_record_their_protocol_and_keep_their_age_when_it_changes() {
        let cfg = DatapathConfig::default();
        let (mut m, mut w) = (Mirror::default(), Wanted::new(Store::Routes, spec()));
        let n = net("10.244.2.0/24");
        set(&mut w, "10.244.2.0/24", [198, 18, 0, 2]);
        w.set_protocol(n, 188);
        sync(&mut m, &mut w, &cfg, Scope::All);
        let info = m.routes[&n].info();
        assert_eq!((info.source(), info.protocol(), info.added_at()), (Some(Store::Routes), 188, 100));
        // Learned again with another protocol (BGP took over), later: same first install time.
        set(&mut w, "10.244.2.0/24", [198, 18, 0, 2]);
        w.set_protocol(n, 186);
        let scope = w.take_changes();
        let ops = diff(&m, &w, &cfg, &scope, 150, Capacity::default()).unwrap();
        assert!(
            ops.contains(&Op::PutRoute(
                n,
                RouteEntry::new(
                    24,
                    route([198, 18, 0, 2]),
                    RouteInfo::new(Store::Routes, 100).with_protocol(186)
                )
            )),
            "{ops:?}"
        );
        assert!(!ops.iter().any(|o| matches!(o, Op::DelRoute(_))), "no flush");
    }

    #[test]
    fn the_route_index_is_filled_before_it_is_switched_on_and_off_before_it_goes_wrong() {
        let cfg = DatapathConfig::default();
        let (mut m, mut w) = (Mirror::default(), Wanted::new(Store::File, spec()));
        set(&mut w, "10.244.2.0/24", [198, 18, 0, 2]);
        set(&mut w, "10.244.3.0/24", [198, 18, 0, 3]);
        let ops = sync(&mut m, &mut w, &cfg, Scope::All);
        let on = position(&ops, |o| matches!(o, Op::Config(c) if c.route_index_on()));
        let last_index = ops.iter().rposition(|o| matches!(o, Op::PutIndex(..))).unwrap();
        assert!(last_index < on, "{ops:?}");
        assert_eq!(m.index.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(
            (m.config.index_net(), m.config.index_netmask(), m.config.index_shift()),
            ([10, 244, 0, 0], [255, 255, 0, 0], 8)
        );
        // A route that does not fit (a /25): the index goes off first, and is left alone.
        set(&mut w, "10.244.4.0/25", [198, 18, 0, 4]);
        let scope = w.take_changes();
        let ops = diff(&m, &w, &cfg, &scope, 100, Capacity::default()).unwrap();
        assert!(matches!(&ops[0], Op::Config(c) if !c.route_index_on()), "{ops:?}");
        assert!(!ops.iter().any(|o| matches!(o, Op::PutIndex(..))), "{ops:?}");
        for op in &ops {
            m.apply(op);
        }
        // While off, removals leave the index alone; when the misfit goes, the index is brought
        // up to date (entry 3 cleared) before it is switched on again.
        w.remove(&net("10.244.3.0/24"));
        let scope = w.take_changes();
        let ops = sync(&mut m, &mut w, &cfg, scope);
        assert!(!ops.iter().any(|o| matches!(o, Op::PutIndex(..))), "{ops:?}");
        w.remove(&net("10.244.4.0/25"));
        let scope = w.take_changes();
        let ops = sync(&mut m, &mut w, &cfg, scope);
        let cleared = position(&ops, |o| matches!(o, Op::PutIndex(3, r) if r.is_empty()));
        let on = position(&ops, |o| matches!(o, Op::Config(c) if c.route_index_on()));
        assert!(cleared < on, "{ops:?}");
        assert_eq!(m.index.keys().copied().collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    fn a_network_too_big_for_the_index_uses_the_trie_alone() {
        let cfg = DatapathConfig::default();
        let wide = RouteIndexSpec { network: net("10.0.0.0/8"), subnet_len: 30 };
        let (mut m, mut w) = (Mirror::default(), Wanted::new(Store::File, wide));
        set(&mut w, "10.0.0.4/30", [198, 18, 0, 2]);
        let ops = sync(&mut m, &mut w, &cfg, Scope::All);
        assert!(!ops.iter().any(|o| matches!(o, Op::PutIndex(..) | Op::Config(_))), "{ops:?}");
    }

    #[test]
    fn one_change_costs_one_change() {
        let cfg = DatapathConfig::new(&DatapathParams { underlay_ifindex: 7, ..Default::default() });
        let (mut m, mut w) = (Mirror::default(), Wanted::new(Store::Etcd, spec()));
        for i in 0..200u8 {
            set(&mut w, &format!("10.244.{i}.0/24"), [198, 18, 1, i]);
        }
        sync(&mut m, &mut w, &cfg, Scope::All);
        set(&mut w, "10.244.250.0/24", [198, 18, 2, 250]);
        let scope = w.take_changes();
        let ops = sync(&mut m, &mut w, &cfg, scope);
        assert_eq!(ops.len(), 4, "peer, slot, route, index entry: {ops:?}");
        w.remove(&net("10.244.7.0/24"));
        let scope = w.take_changes();
        let ops = sync(&mut m, &mut w, &cfg, scope);
        assert_eq!(ops.len(), 4, "index entry, route, slot, peer: {ops:?}");
        // CONFIG changes are written as such, keeping the index switched on.
        let moved = cfg.with_gateway_mac([2, 0, 0, 0, 0, 1]);
        let ops =
            sync(&mut m, &mut w, &moved, Scope::Keys { routes: BTreeSet::new(), peers: BTreeSet::new() });
        assert!(
            matches!(&ops[..], [Op::Config(c)] if c.route_index_on() && c.gateway_mac()[5] == 1),
            "{ops:?}"
        );
    }

    #[test]
    fn peers_sharing_a_slot_send_the_check_to_peers() {
        let cfg = DatapathConfig::default();
        // Two addresses in one slot: find a pair.
        let a = [198, 18, 0, 2];
        let b = (0..=255u8)
            .flat_map(|x| (0..=255u8).map(move |y| [198, 19, x, y]))
            .find(|ip| maps::peer_slot(ip) == maps::peer_slot(&a))
            .expect("16-bit slots collide within 65536 addresses");
        let (mut m, mut w) = (Mirror::default(), Wanted::new(Store::File, spec()));
        set(&mut w, "10.244.2.0/24", a);
        set(&mut w, "10.244.3.0/24", b);
        sync(&mut m, &mut w, &cfg, Scope::All);
        assert_eq!(m.slots[&maps::peer_slot(&a)].state(), SlotState::Shared);
        w.remove(&net("10.244.2.0/24"));
        let scope = w.take_changes();
        sync(&mut m, &mut w, &cfg, scope);
        assert_eq!(
            (m.slots[&maps::peer_slot(&a)].state(), m.slots[&maps::peer_slot(&a)].ip()),
            (SlotState::Peer, b)
        );
        assert_eq!(m.slots[&maps::peer_slot(&a)], PeerSlot::peer(b));
    }

    #[test]
    fn a_full_map_changes_nothing() {
        let cfg = DatapathConfig::default();
        let (m, mut w) = (Mirror::default(), Wanted::new(Store::File, spec()));
        for i in 0..3u8 {
            set(&mut w, &format!("10.244.{i}.0/24"), [198, 18, 1, i]);
        }
        let small = Capacity { routes: 2, peers: 10, ..Capacity::default() };
        let err = diff(&m, &w, &cfg, &Scope::All, 0, small).unwrap_err();
        assert_eq!(err, MapFull { map: maps::REMOTE_SUBNETS, capacity: 2, wanted: 3 });
        assert!(err.to_string().contains("nothing was changed"));
        let few_peers = Capacity { routes: 10, peers: 2, ..Capacity::default() };
        assert_eq!(diff(&m, &w, &cfg, &Scope::All, 0, few_peers).unwrap_err().map, maps::PEERS);
    }

    /// The most entries REMOTE_SUBNETS and PEERS hold at once while `ops` are applied in order
    /// to `m`.
    fn peak(m: &Mirror, ops: &[Op]) -> (usize, usize) {
        let mut routes: BTreeSet<Ipv4Network> = m.routes.keys().copied().collect();
        let mut peer_set: BTreeSet<[u8; 4]> = m.peers.keys().copied().collect();
        let (mut max_routes, mut max_peers) = (routes.len(), peer_set.len());
        for op in ops {
            match op {
                Op::PutRoute(n, _) => {
                    routes.insert(*n);
                }
                Op::DelRoute(n) => {
                    routes.remove(n);
                }
                Op::PutPeer(ip, _) => {
                    peer_set.insert(*ip);
                }
                Op::DelPeer(ip) => {
                    peer_set.remove(ip);
                }
                _ => {}
            }
            max_routes = max_routes.max(routes.len());
            max_peers = max_peers.max(peer_set.len());
        }
        (max_routes, max_peers)
    }

    #[test]
    fn a_full_map_makes_room_before_it_adds() {
        let cfg = DatapathConfig::default();
        let (mut m, mut w) = (Mirror::default(), Wanted::new(Store::File, spec()));
        for i in 1..=4u8 {
            set(&mut w, &format!("10.244.{i}.0/24"), [198, 18, 1, i]);
        }
        sync(&mut m, &mut w, &cfg, Scope::All);
        // Host 1 leaves and host 5 joins, with the maps full.
        let mut next = Wanted::new(Store::File, spec());
        for i in 2..=5u8 {
            set(&mut next, &format!("10.244.{i}.0/24"), [198, 18, 1, i]);
        }
        let full = Capacity { routes: 4, peers: 4, ..Capacity::default() };
        let ops = diff(&m, &next, &cfg, &Scope::All, 0, full).unwrap();
        assert_eq!(peak(&m, &ops), (4, 4), "never more than the maps hold: {ops:?}");
        // With room to spare, the usual order: nothing still wanted goes missing, adds first.
        let roomy = diff(&m, &next, &cfg, &Scope::All, 0, Capacity::default()).unwrap();
        assert_eq!(peak(&m, &roomy), (5, 5));
        let first_del = roomy.iter().position(|o| matches!(o, Op::DelRoute(_))).unwrap();
        let last_put = roomy.iter().rposition(|o| matches!(o, Op::PutRoute(..))).unwrap();
        assert!(last_put < first_del, "{roomy:?}");
    }

    #[test]
    fn a_takeover_keeps_what_is_right_and_removes_what_is_stale() {
        let cfg = DatapathConfig::default();
        let (mut m, mut w) = (Mirror::default(), Wanted::new(Store::File, spec()));
        set(&mut w, "10.244.2.0/24", [198, 18, 0, 2]);
        set(&mut w, "10.244.3.0/24", [198, 18, 0, 3]);
        sync(&mut m, &mut w, &cfg, Scope::All);
        // A new agent with one peer fewer, over the same maps.
        let mut next = Wanted::new(Store::File, spec());
        set(&mut next, "10.244.2.0/24", [198, 18, 0, 2]);
        let ops = sync(&mut m, &mut next, &cfg, Scope::All);
        assert_eq!(ops.len(), 4, "index entry, route, slot, peer of the stale host: {ops:?}");
        assert!(ops.iter().all(|o| !matches!(o, Op::PutRoute(..) | Op::PutPeer(..))), "{ops:?}");
    }

    #[test]
    fn each_maps_writes_come_together_so_they_batch() {
        let cfg = DatapathConfig::default();
        let (m, mut w) = (Mirror::default(), Wanted::new(Store::File, spec()));
        for i in 1..=20u8 {
            set(&mut w, &format!("10.244.{i}.0/24"), [198, 18, 1, i]);
        }
        let ops = diff(&m, &w, &cfg, &Scope::All, 0, Capacity::default()).unwrap();
        // Runs of one kind: each kind appears in one run only (CONFIG twice: off, then on).
        let mut runs: Vec<std::mem::Discriminant<Op>> = Vec::new();
        for op in &ops {
            let d = std::mem::discriminant(op);
            if runs.last() != Some(&d) {
                runs.push(d);
            }
        }
        let config = std::mem::discriminant(&Op::Config(Box::default()));
        let runs: Vec<String> = runs.iter().filter(|d| **d != config).map(|d| format!("{d:?}")).collect();
        let kinds: BTreeSet<&String> = runs.iter().collect();
        assert_eq!(runs.len(), kinds.len(), "a kind of op comes back after another: {ops:?}");
        assert_eq!(ops.iter().filter(|o| matches!(o, Op::PutRoute(..))).count(), 20);
    }

    #[test]
    fn a_write_that_stops_part_way_leaves_the_mirror_as_the_maps_are() {
        let cfg = DatapathConfig::default();
        let mut w = Wanted::new(Store::File, spec());
        for i in 1..=30u8 {
            set(&mut w, &format!("10.244.{i}.0/24"), [198, 18, 1, i]);
        }
        let all = diff(&Mirror::default(), &w, &cfg, &Scope::All, 7, Capacity::default()).unwrap();
        for stop_after in [0, 1, 29, 31, 45, 90, all.len() - 1] {
            // The maps take `stop_after` ops, then refuse one.
            let mut m = Mirror::default();
            let mut taken = 0;
            let mut maps = Direct::new(|chunk: &[Op]| {
                let room = stop_after - taken;
                if chunk.len() <= room {
                    taken += chunk.len();
                    Ok(())
                } else {
                    taken += room;
                    Err((room, MapFull { map: "test", capacity: 0, wanted: 0 }))
                }
            });
            let result = apply(&mut m, &w, &cfg, &Scope::All, 7, Capacity::default(), &mut maps);
            assert!(result.is_err(), "stopped after {stop_after}");
            let mut expected = Mirror::default();
            for op in &all[..stop_after] {
                expected.apply(op);
            }
            assert_eq!(m, expected, "the mirror holds the {stop_after} ops written, and only those");
            // The next full sync carries on from there.
            let rest = diff(&m, &w, &cfg, &Scope::All, 7, Capacity::default()).unwrap();
            for op in &rest {
                m.apply(op);
            }
            let mut done = Mirror::default();
            for op in &all {
                done.apply(op);
            }
            assert_eq!(m, done, "after {stop_after}: the retry ends where one whole sync does");
        }
    }

    #[test]
    fn a_filled_wanted_is_the_same_wanted_with_nothing_recorded_as_changed() {
        // Subnets set more than once (the later one wins), peers named with another entry by a
        // later route (the last one counts, even when that route is replaced), peers left with
        // no route, routes that do not fit the index, protocols on some.
        let backends = [Backend::Vxlan, Backend::Udp, Backend::Gre, Backend::Direct];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let routes: Vec<WantedRoute> = (0..3000)
            .map(|_| {
                let ip = [198, 18, 1, next(40) as u8];
                let mac = [2, 0, 0, 0, ip[3], next(3) as u8];
                let backend = backends[next(4) as usize];
                let subnet = match next(10) {
                    0 => net(&format!("10.245.{}.0/24", next(20))),
                    1 => net(&format!("10.244.{}.128/25", next(20))),
                    _ => net(&format!("10.244.{}.0/24", next(600) % 256)),
                };
                let protocol = (next(3) == 0).then_some(next(250) as u8);
                WantedRoute {
                    subnet,
                    route: RemoteSubnet::new(ip, mac, backend),
                    peer: Peer::new(mac, backend),
                    protocol,
                }
            })
            .collect();
        // A peer whose only route goes to another peer later: it is left out.
        let (gone, stays) = ([198, 18, 2, 1], [198, 18, 1, 5]);
        let mut routes = routes;
        for ip in [gone, stays] {
            routes.push(WantedRoute {
                subnet: net("10.244.250.0/24"),
                route: route(ip),
                peer: peer(ip),
                protocol: None,
            });
        }
        let mut one_by_one = Wanted::new(Store::File, spec());
        for r in &routes {
            one_by_one.set(r.subnet, r.route, r.peer);
            if let Some(p) = r.protocol {
                one_by_one.set_protocol(r.subnet, p);
            }
        }
        let mut filled = Wanted::filled(Store::File, spec(), routes);
        assert_eq!(filled.routes, one_by_one.routes);
        assert_eq!(filled.peers, one_by_one.peers);
        assert_eq!(filled.protocols, one_by_one.protocols);
        assert_eq!(filled.slot_members, one_by_one.slot_members);
        assert_eq!((filled.misfits, filled.by_backend), (one_by_one.misfits, one_by_one.by_backend));
        assert!(filled.misfits > 0 && filled.protocols.len() > 10 && filled.peers.len() > 30);
        assert!(filled.routes.len() < 3000, "some subnets were set twice");
        assert!(filled.peer(&gone).is_none() && filled.peer(&stays).is_some());
        assert_eq!(filled.take_changes(), Scope::Keys { routes: BTreeSet::new(), peers: BTreeSet::new() });
        let Scope::Keys { routes, peers } = one_by_one.take_changes() else { unreachable!() };
        assert_eq!((routes.len(), peers.len()), (one_by_one.routes.len(), 41), "set records what it changes");
        let cfg = DatapathConfig::default();
        assert_eq!(
            diff(&Mirror::default(), &filled, &cfg, &Scope::All, 7, Capacity::default()),
            diff(&Mirror::default(), &one_by_one, &cfg, &Scope::All, 7, Capacity::default()),
        );
        set(&mut filled, "10.244.30.0/24", [198, 18, 1, 30]);
        let Scope::Keys { routes, .. } = filled.take_changes() else { unreachable!() };
        assert_eq!(
            routes.into_iter().collect::<Vec<_>>(),
            [net("10.244.30.0/24")],
            "and records again once filled"
        );
    }

    /// A two-lane writer that keeps up to two chunks a lane outstanding and writes a chunk only
    /// when it answers it, the lanes in turn; lane `fail_lane` takes `room` ops, then refuses.
    struct Lagging {
        lanes: [std::collections::VecDeque<Vec<Op>>; 2],
        fail_lane: usize,
        room: usize,
        written: Vec<Op>,
        stopped: [bool; 2],
        turn: usize,
    }

    impl Lagging {
        fn new(fail_lane: usize, room: usize) -> Self {
            Self {
                lanes: Default::default(),
                fail_lane,
                room,
                written: Vec::new(),
                stopped: [false; 2],
                turn: 0,
            }
        }
    }

    impl Writer for Lagging {
        type Error = MapFull;
        const DEPTH: usize = 2;

        fn lanes(&self) -> usize {
            2
        }

        fn send(&mut self, lane: usize, chunk: Vec<Op>) {
            assert!(self.lanes[lane].len() < 2, "at most DEPTH chunks a lane outstanding");
            assert_eq!(lane, chunk[0].lane());
            if matches!(chunk[0], Op::Config(_)) {
                assert!(self.lanes.iter().all(|l| l.is_empty()), "CONFIG goes alone");
            }
            self.lanes[lane].push_back(chunk);
        }

        fn answer(&mut self) -> Option<Answer<MapFull>> {
            for lane in [self.turn, 1 - self.turn] {
                let Some(chunk) = self.lanes[lane].pop_front() else { continue };
                self.turn = 1 - lane;
                assert!(!self.stopped[lane], "nothing is sent down a lane after its failure is answered");
                let room = if lane == self.fail_lane { self.room } else { usize::MAX };
                let take = chunk.len().min(room);
                self.written.extend_from_slice(&chunk[..take]);
                if lane == self.fail_lane {
                    self.room -= take;
                }
                if take < chunk.len() {
                    // What was sent after it down this lane is never written, nor answered.
                    self.stopped[lane] = true;
                    self.lanes[lane].clear();
                    return Some((chunk, Err((take, MapFull { map: "test", capacity: 0, wanted: 0 }))));
                }
                return Some((chunk, Ok(())));
            }
            None
        }
    }

    #[test]
    fn chunks_in_flight_reach_the_mirror_only_once_answered_and_none_after_a_failure() {
        let cfg = DatapathConfig::default();
        let mut w = Wanted::new(Store::File, spec());
        for i in 0..=255u8 {
            set(&mut w, &format!("10.244.{i}.0/24"), [198, 18, i / 4, i]);
        }
        let all = diff(&Mirror::default(), &w, &cfg, &Scope::All, 7, Capacity::default()).unwrap();
        let lane_ops =
            |lane: usize, ops: &[Op]| ops.iter().filter(|o| o.lane() == lane).cloned().collect::<Vec<_>>();
        let mut whole = Lagging::new(0, usize::MAX);
        let mut m = Mirror::default();
        assert_eq!(apply(&mut m, &w, &cfg, &Scope::All, 7, Capacity::default(), &mut whole), Ok(all.len()));
        for lane in [0, 1] {
            assert_eq!(
                lane_ops(lane, &whole.written),
                lane_ops(lane, &all),
                "lane {lane}: in diff order, once"
            );
        }
        assert_eq!(whole.written.len(), all.len());
        let mut expected = Mirror::default();
        all.iter().for_each(|op| expected.apply(op));
        assert_eq!(m, expected);

        for fail_lane in [0, 1] {
            let in_lane = lane_ops(fail_lane, &all).len();
            for stop_after in [0, 1, 63, 64, 200, 300, in_lane - 1] {
                let mut maps = Lagging::new(fail_lane, stop_after);
                let mut m = Mirror::default();
                let result = apply(&mut m, &w, &cfg, &Scope::All, 7, Capacity::default(), &mut maps);
                assert!(result.is_err(), "lane {fail_lane} stopped after {stop_after}");
                assert_eq!(
                    lane_ops(fail_lane, &maps.written),
                    lane_ops(fail_lane, &all)[..stop_after],
                    "lane {fail_lane}: nothing written after the failure"
                );
                let mut expected = Mirror::default();
                maps.written.iter().for_each(|op| expected.apply(op));
                assert_eq!(m, expected, "the mirror holds the ops written (in both lanes), and only those");
                // The next full sync carries on from there.
                let rest = diff(&m, &w, &cfg, &Scope::All, 7, Capacity::default()).unwrap();
                rest.iter().for_each(|op| m.apply(op));
                let mut done = Mirror::default();
                all.iter().for_each(|op| done.apply(op));
                assert_eq!(
                    m, done,
                    "lane {fail_lane} after {stop_after}: the retry ends where one whole sync does"
                );
            }
        }
    }

    #[test]
    fn removals_are_written_after_every_addition_in_either_lane() {
        let cfg = DatapathConfig::default();
        let mut before = Wanted::new(Store::File, spec());
        for i in 0..100u8 {
            set(&mut before, &format!("10.244.{i}.0/24"), [198, 18, 1, i]);
        }
        let mut m = Mirror::default();
        diff(&m.clone(), &before, &cfg, &Scope::All, 7, Capacity::default())
            .unwrap()
            .iter()
            .for_each(|op| m.apply(op));
        // Half the hosts go, as many new ones come.
        let mut after = Wanted::new(Store::File, spec());
        for i in 50..150u8 {
            set(&mut after, &format!("10.244.{i}.0/24"), [198, 18, 1, i]);
        }
        let mut maps = Lagging::new(0, usize::MAX);
        apply(&mut m, &after, &cfg, &Scope::All, 7, Capacity::default(), &mut maps).unwrap();
        let removal = |o: &Op| {
            matches!(o, Op::DelRoute(_) | Op::DelPeer(_))
                || matches!(o, Op::PutSlot(_, s) if *s == PeerSlot::empty())
        };
        let first_removal = maps.written.iter().position(removal).expect("removals");
        assert!(first_removal > 0 && maps.written[first_removal..].iter().all(removal), "{:?}", maps.written);
    }
}
