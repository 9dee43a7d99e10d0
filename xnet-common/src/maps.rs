//! Map names and the key/value types stored in them. Every map is a BTF map, so
//! `bpftool map dump pinned <pin_dir>/<NAME>` prints these fields by name.

use crate::{
    outer::OuterTemplates,
    wire::{VxlanLocal, vni_to_wire},
};

/// LPM trie: remote subnet -> [`RouteEntry`]: the host that owns it (what the programs read), and
/// where the route came from and since when (what `xnet routes` reads). Key:
/// [`lpm key`](LpmKeyIpv4).
pub const REMOTE_SUBNETS: &str = "REMOTE_SUBNETS";
/// Hash: peer public IPv4 -> [`Peer`]. Decapsulation accepts packets only from these addresses.
pub const PEERS: &str = "PEERS";
/// Array of one [`DatapathConfig`]: this host's side of the tunnels.
pub const CONFIG: &str = "CONFIG";
/// Per-CPU array of [`Counter`], indexed by [`crate::stats::index`].
pub const STATS: &str = "STATS";
/// Hash: MAC of a container behind a container bridge -> [`LocalPort`], the bridge port it sits
/// behind. Lets decapsulated packets go straight to the container instead of through the bridge.
pub const LOCAL_PORTS: &str = "LOCAL_PORTS";

/// Array of one [`LocalPortsLimit`]: the bridge ports whose container MACs the agent left out of
/// LOCAL_PORTS at its last sync, for being over the cap. Read by `xnet status` and the metrics;
/// the programs do not use it.
pub const LOCAL_PORTS_LIMIT: &str = "LOCAL_PORTS_LIMIT";

/// Per-CPU array of one [`crate::icmp::TokenBucket`]: the rate limit of the ICMP "fragmentation
/// needed" answers egress sends (see [`crate::icmp`]).
pub const ICMP_LIMIT: &str = "ICMP_LIMIT";

/// Array of one [`AgentState`]: what the agent that set this datapath up knows about it. Read by
/// `xnet status` and the metrics; the programs do not use it.
pub const AGENT: &str = "AGENT";
/// Maps an older xnet pinned that this one no longer has: `xnet cleanup` removes their pins too,
/// and the agent ignores them. ROUTE_INFO (where each route came from, since when) now lives in
/// REMOTE_SUBNETS' values ([`RouteEntry`]).
pub const RETIRED_MAPS: [&str; 1] = ["ROUTE_INFO"];

/// Array of [`Endpoint`], one per address of this host's container subnet: entry `i` says where
/// decapsulated packets for the address `i` past the subnet's own were last delivered (see
/// [`DatapathConfig::endpoint_index`]); an entry holds the address it was resolved for, and one
/// that holds another address (all zero: never resolved) is no entry. Filled by the ingress program
/// from `bpf_fib_lookup` and LOCAL_PORTS, so most packets skip both (and read only the coarse
/// clock and this array, inlined by the kernel into a few instructions). The program does not use
/// an entry resolved [`ENDPOINT_MAX_AGE_NS`] ago or more: it resolves again, and clears the entry
/// when the container is gone, so a deleted container's entry dies with its age even while no agent
/// runs. The agent also clears, every second, the old entries and those whose container left its
/// bridge port. The agent sizes it for the subnet ([`endpoints_len`]) when it creates it.
pub const ENDPOINTS: &str = "ENDPOINTS";

/// Array of [`PeerSlot`], indexed by [`peer_slot`] of a peer's public IPv4: the peer check on every
/// arriving tunnel packet, as one array read (the kernel inlines it) instead of a hash lookup.
/// Derived from PEERS by the agent; a slot two peers share sends the check to PEERS.
pub const PEER_SLOTS: &str = "PEER_SLOTS";

/// Array of [`RemoteSubnet`] by subnet number inside the overlay network: REMOTE_SUBNETS again, as
/// one inlined array read instead of a trie walk, for the usual case where every route is one
/// subnet of the network's subnet length (flannel's `SubnetLen`). Derived by the agent; used only
/// while CONFIG says it is valid (see [`ROUTE_INDEX_VALID`]). An entry with backend 0 is no route.
pub const ROUTE_INDEX: &str = "ROUTE_INDEX";

/// Array of [`ContainerIface`], one per configured container interface in config order (the
/// rest empty): which exist and are attached, which the agent awaits. Read by `xnet status`; the
/// programs do not use it.
pub const CONTAINER_IFACES: &str = "CONTAINER_IFACES";
/// How many container interfaces a config may name.
pub const CONTAINER_IFACES_LEN: u32 = 16;

/// LPM trie of source networks (key as in [`REMOTE_SUBNETS`], value unused) from which untunnelled
/// traffic may reach this host's containers besides `direct` peers' subnets: the config's
/// `[backend] untunnelled_from`, for networks whose routers send to containers directly.
pub const UNTUNNELLED_FROM: &str = "UNTUNNELLED_FROM";
/// Per-CPU array of one entry, the programs' own: the last coarse clock reading and the jiffies it
/// was made at (two u64). Listed here for `xnet status`'s map memory; nothing else reads it.
pub const COARSE_CLOCK: &str = "COARSE_CLOCK";
/// How many networks `untunnelled_from` may list.
pub const UNTUNNELLED_FROM_MAX: u32 = 256;

/// Subnets a network may have for ROUTE_INDEX to cover it (e.g. /24s of a /8).
pub const ROUTE_INDEX_LEN: u32 = 1 << 16;

pub const PEER_SLOTS_LEN: u32 = 1 << 16;

/// What a [`PeerSlot`] says about the peers that hash to it. The numbers are the slot's `state`
/// byte, as `bpftool` shows it.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// No peer hashes here.
    Empty = 0,
    /// Exactly one peer, the slot's `ip`, hashes here.
    Peer = 1,
    /// More than one peer hashes here: ask PEERS.
    Shared = 2,
}

/// Entry of [`PEER_SLOTS`]. All zero ([`PeerSlot::empty`], the default) is an empty slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerSlot {
    ip: [u8; 4],
    /// A [`SlotState`] number.
    state: u8,
    reserved: [u8; 3],
}

impl PeerSlot {
    /// No peer hashes to this slot.
    pub const fn empty() -> Self {
        Self { ip: [0; 4], state: SlotState::Empty as u8, reserved: [0; 3] }
    }

    /// Only the peer at `ip` (public IPv4, network order) hashes to this slot.
    pub const fn peer(ip: [u8; 4]) -> Self {
        Self { ip, state: SlotState::Peer as u8, reserved: [0; 3] }
    }

    /// Several peers hash to this slot, `ip` (the lowest) among them.
    pub const fn shared(ip: [u8; 4]) -> Self {
        Self { ip, state: SlotState::Shared as u8, reserved: [0; 3] }
    }

    /// The peer of a [`SlotState::Peer`] slot (the lowest peer of a shared one), network order.
    #[inline(always)]
    pub fn ip(&self) -> [u8; 4] {
        self.ip
    }

    /// What the slot says; a state number this code does not know reads as empty.
    #[inline(always)]
    pub fn state(&self) -> SlotState {
        match self.state {
            1 => SlotState::Peer,
            2 => SlotState::Shared,
            _ => SlotState::Empty,
        }
    }
}

/// The [`PEER_SLOTS`] index of a public IPv4 address (Fibonacci hashing to 16 bits).
#[inline(always)]
pub fn peer_slot(ip: &[u8; 4]) -> u32 {
    u32::from_be_bytes(*ip).wrapping_mul(0x9e37_79b1) >> 16
}

/// The most entries [`ENDPOINTS`] has: one per address of a /16 subnet (2 MiB). Addresses of a
/// larger subnet past the first 65,536 are delivered all the same, each packet asking the kernel
/// (a FIB lookup) instead of the array. A /24 subnet (flannel's default) takes 256 entries, 8 KiB.
pub const ENDPOINTS_MAX: u32 = 1 << 16;

/// [`ENDPOINTS`] entries for a container subnet of `prefix_len` bits: one per address, at most
/// [`ENDPOINTS_MAX`].
pub const fn endpoints_len(prefix_len: u8) -> u32 {
    if prefix_len >= 32 {
        1
    } else if 32 - prefix_len as u32 >= ENDPOINTS_MAX.trailing_zeros() {
        ENDPOINTS_MAX
    } else {
        1 << (32 - prefix_len as u32)
    }
}
/// How long a resolved endpoint is used before the kernel is asked again (a container whose MAC
/// changed on the same port is followed within this time, plus the agent's one-second tick).
pub const ENDPOINT_MAX_AGE_NS: u64 = 5_000_000_000;

pub const LOCAL_PORTS_MAX: u32 = 1 << 16;

/// Remote subnets (REMOTE_SUBNETS) and peers (PEERS) a host can hold: as many as the route index
/// covers, a /8 network of /24 subnets, far beyond any flannel network in use; the agent refuses a
/// larger wanted state as a whole (`MapFull`). A hash map allocates its bucket array (16 bytes a
/// bucket, one per entry rounded up to a power of two) when it is created, whether or not its
/// entries are preallocated: at 1<<20 entries PEERS locked 16 MiB even empty.
pub const REMOTE_SUBNETS_MAX: u32 = ROUTE_INDEX_LEN;
pub const PEERS_MAX: u32 = ROUTE_INDEX_LEN;
/// The most `[capacity]` may ask for, per map: 4,194,304 entries, whose bucket arrays alone lock
/// 64 MiB a map. Past the route index's 65,536 subnets, lookups take the LPM trie's path.
pub const CAPACITY_LIMIT: u32 = 1 << 22;

/// How many entries the route map (REMOTE_SUBNETS) and the peer map (PEERS) are
/// created with: the object's own sizes by default, or the config's `[capacity]`; and ENDPOINTS,
/// sized for this host's container subnet ([`Capacity::for_subnet`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Remote subnets.
    pub routes: u32,
    /// Peer hosts.
    pub peers: u32,
    /// ENDPOINTS entries: addresses of the container subnet ([`endpoints_len`]).
    pub endpoints: u32,
}

impl Default for Capacity {
    /// The object's own sizes, ENDPOINTS for a /24 subnet.
    fn default() -> Self {
        Self { routes: REMOTE_SUBNETS_MAX, peers: PEERS_MAX, endpoints: endpoints_len(24) }
    }
}

impl Capacity {
    /// The capacity a map is created with under this setting, if it is one of the sized maps.
    pub fn of_map(&self, name: &str) -> Option<u32> {
        match name {
            REMOTE_SUBNETS => Some(self.routes),
            PEERS => Some(self.peers),
            ENDPOINTS => Some(self.endpoints),
            _ => None,
        }
    }

    /// This capacity with ENDPOINTS sized for a container subnet of `prefix_len` bits.
    pub fn for_subnet(self, prefix_len: u8) -> Self {
        Self { endpoints: endpoints_len(prefix_len), ..self }
    }
}

/// Wire formats a peer may be reached with. Numbers are stored in maps: never reuse one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Vxlan = 1,
    /// flannel's udp framing.
    Udp = 2,
    Gre = 3,
    /// No encapsulation: to the peer's MAC on the shared underlay segment.
    Direct = 4,
}

impl Backend {
    pub const ALL: [Backend; 4] = [Backend::Vxlan, Backend::Udp, Backend::Gre, Backend::Direct];
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Vxlan),
            2 => Some(Self::Udp),
            3 => Some(Self::Gre),
            4 => Some(Self::Direct),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::Vxlan => "vxlan",
            Self::Udp => "udp",
            Self::Gre => "gre",
            Self::Direct => "direct",
        }
    }
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Key layout of an IPv4 LPM trie: prefix length in bits (host order, as the kernel wants), then the
/// address in network order. Identical to aya's `lpm_trie::Key<[u8; 4]>`.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LpmKeyIpv4 {
    prefix_len: u32,
    addr: [u8; 4],
}

impl LpmKeyIpv4 {
    /// The key of `addr` (network order) / `prefix_len`.
    pub const fn new(prefix_len: u32, addr: [u8; 4]) -> Self {
        Self { prefix_len, addr }
    }

    #[inline(always)]
    pub fn prefix_len(&self) -> u32 {
        self.prefix_len
    }

    /// The address, network order.
    #[inline(always)]
    pub fn addr(&self) -> [u8; 4] {
        self.addr
    }
}

/// Value of [`REMOTE_SUBNETS`]: where to send packets for a remote subnet. Aligned to 4 (map values
/// are, in the LPM trie and the array alike), so the programs read it a word at a time. All zero
/// (the default) is no route: what an unused [`ROUTE_INDEX`] entry holds.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RemoteSubnet {
    /// The owning host's public (underlay) IPv4 address, network order.
    peer_ip: [u8; 4],
    /// Inner destination MAC for VXLAN: the peer's VTEP MAC.
    vtep_mac: [u8; 6],
    /// A [`Backend`] number.
    backend: u8,
    reserved: u8,
}

impl RemoteSubnet {
    /// The route to the host at `peer_ip` (public IPv4, network order) with VTEP MAC `vtep_mac`,
    /// sent to with `backend`.
    pub const fn new(peer_ip: [u8; 4], vtep_mac: [u8; 6], backend: Backend) -> Self {
        Self { peer_ip, vtep_mac, backend: backend as u8, reserved: 0 }
    }

    /// The owning host's public IPv4 address, network order.
    #[inline(always)]
    pub fn peer_ip(&self) -> [u8; 4] {
        self.peer_ip
    }

    /// The peer's VTEP MAC.
    #[inline(always)]
    pub fn vtep_mac(&self) -> [u8; 6] {
        self.vtep_mac
    }

    /// How to send to the peer; `None` for a backend number this code does not know (or none).
    #[inline(always)]
    pub fn backend(&self) -> Option<Backend> {
        Backend::from_u8(self.backend)
    }

    /// Whether this is no route (backend 0, as in an all-zero [`ROUTE_INDEX`] entry). A backend
    /// number this code does not know is a route, one the programs refuse to send with.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.backend == 0
    }

    /// The VTEP MAC as [`crate::wire::mac_word`] gives it, in two loads (the compiler would load
    /// its six bytes one by one).
    #[inline(always)]
    pub fn vtep_mac_word(&self) -> u64 {
        // SAFETY: RemoteSubnet is 12 plain bytes aligned to 4, so it is also three u32 words; the
        // MAC is bytes 4 to 9 (asserted below).
        let w = unsafe { &*core::ptr::from_ref(self).cast::<[u32; 3]>() };
        u32::from_le(w[1]) as u64 | (u32::from_le(w[2]) as u64 & 0xffff) << 32
    }
}

/// Value of [`PEERS`]: a host we exchange overlay traffic with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    vtep_mac: [u8; 6],
    /// A [`Backend`] number: how we send to this peer.
    backend: u8,
    reserved: u8,
}

impl Peer {
    /// A peer with VTEP MAC `vtep_mac`, sent to with `backend`.
    pub const fn new(vtep_mac: [u8; 6], backend: Backend) -> Self {
        Self { vtep_mac, backend: backend as u8, reserved: 0 }
    }

    #[inline(always)]
    pub fn vtep_mac(&self) -> [u8; 6] {
        self.vtep_mac
    }

    /// How we send to this peer; `None` for a backend number this code does not know.
    #[inline(always)]
    pub fn backend(&self) -> Option<Backend> {
        Backend::from_u8(self.backend)
    }
}

/// The single entry of [`CONFIG`]: this host's side of every tunnel. Built by
/// [`DatapathConfig::new`] from [`DatapathParams`]; the route index fields belong to the agent's
/// sync ([`DatapathConfig::with_route_index`]). All zero (the default) is "not configured".
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// ifindex of the underlay interface that encapsulated packets leave through.
    underlay_ifindex: u32,
    /// MTU of the underlay interface: larger non-GSO packets after encapsulation are dropped
    /// (counted as too big) instead of vanishing in the driver.
    underlay_mtu: u32,
    /// This host's public IPv4 address: the outer source address, network order.
    local_ip: [u8; 4],
    /// This host's container subnet (network order) and its netmask: decapsulated packets must be
    /// addressed into it.
    local_subnet: [u8; 4],
    local_netmask: [u8; 4],
    /// VXLAN VNI as on the wire: 3 bytes of VNI, one reserved zero byte.
    vxlan_vni: [u8; 4],
    /// VXLAN UDP destination port, network order.
    vxlan_port: [u8; 2],
    /// This host's VTEP MAC: the inner source MAC of what it sends.
    vtep_mac: [u8; 6],
    /// flannel udp port (source and destination), network order.
    udp_port: [u8; 2],
    /// [`GRE_KEYED`]: GRE carries `gre_key` (sent, and required on what arrives).
    flags: u8,
    reserved: u8,
    /// GRE key, network order.
    gre_key: [u8; 4],
    /// MAC of the (first) container interface: frames to it are for the host, so egress need not
    /// ask LOCAL_PORTS whether they are for a local container. Zero: always ask.
    gateway_mac: [u8; 6],
    reserved2: [u8; 2],
    /// With [`ROUTE_INDEX_VALID`] in `flags`: every route is one subnet of `32 - index_shift`
    /// bits inside `index_net`/`index_netmask`, and [`ROUTE_INDEX`] entry
    /// `(dst - index_net) >> index_shift` holds the route of the subnet of `dst` (an entry with
    /// backend 0: no route). Network order.
    index_net: [u8; 4],
    index_netmask: [u8; 4],
    /// 32 minus the subnet length.
    index_shift: u8,
    reserved3: [u8; 7],
    /// The outer headers this host sends, prebuilt from the fields above
    /// ([`DatapathConfig::with_outer_templates`] fills them in; CONFIG always holds them filled).
    outer: OuterTemplates,
}

/// `DatapathConfig::flags`: GRE uses a key.
pub const GRE_KEYED: u8 = 1;
/// `DatapathConfig::flags`: [`ROUTE_INDEX`] answers for destinations inside `index_net`.
pub const ROUTE_INDEX_VALID: u8 = 2;
/// [`DatapathConfig::flags`]: `local_ip` is an address of this host, so tunnel packets must be
/// addressed to it. Off when the public IP is a NAT's address (peers send to it, and what arrives
/// is addressed to a private one).
pub const LOCAL_IP_ON_HOST: u8 = 4;
/// [`DatapathConfig::flags`]: VXLAN to `vxlan_port` is judged on ingress (decapsulated from known
/// peers, dropped from others). Without it such packets are not this host's and pass untouched.
pub const USES_VXLAN: u8 = 8;
/// [`DatapathConfig::flags`]: flannel's udp framing to `udp_port` is judged on ingress.
pub const USES_UDP: u8 = 16;
/// [`DatapathConfig::flags`]: GRE carrying IPv4 is judged on ingress.
pub const USES_GRE: u8 = 32;
/// [`DatapathConfig::flags`]: untunnelled IPv4 to this host's containers is accepted from any
/// source (`untunnelled = "any"`), for networks whose routers send to containers directly.
/// Without it only `direct` peers' subnets may.
pub const UNTUNNELLED_OPEN: u8 = 64;

/// The tunnel formats a host judges on ingress: the ones it sends with or may receive (see
/// [`USES_VXLAN`]). Packets of the others are someone else's and pass untouched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Formats {
    pub vxlan: bool,
    pub udp: bool,
    pub gre: bool,
}

impl Formats {
    /// Every tunnel format.
    pub const ALL: Formats = Formats { vxlan: true, udp: true, gre: true };

    /// The formats of `backends` (`direct` has none).
    pub fn of(backends: impl IntoIterator<Item = Backend>) -> Self {
        let mut f = Formats::default();
        for b in backends {
            match b {
                Backend::Vxlan => f.vxlan = true,
                Backend::Udp => f.udp = true,
                Backend::Gre => f.gre = true,
                Backend::Direct => {}
            }
        }
        f
    }

    /// The [`DatapathConfig::flags`] bits.
    pub const fn flags(self) -> u8 {
        (if self.vxlan { USES_VXLAN } else { 0 })
            | (if self.udp { USES_UDP } else { 0 })
            | (if self.gre { USES_GRE } else { 0 })
    }

    /// The backends' names of the formats, for operators ("vxlan, gre"; "none").
    pub fn names(self) -> &'static str {
        match (self.vxlan, self.udp, self.gre) {
            (false, false, false) => "none",
            (true, false, false) => "vxlan",
            (false, true, false) => "udp",
            (false, false, true) => "gre",
            (true, true, false) => "vxlan, udp",
            (true, false, true) => "vxlan, gre",
            (false, true, true) => "udp, gre",
            (true, true, true) => "vxlan, udp, gre",
        }
    }
}

/// What [`DatapathConfig::new`] is made of, in the types the agent holds it in (addresses and
/// MACs as bytes in network order, ports and numbers as integers); the constructor stores each in
/// the encoding CONFIG uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathParams {
    /// ifindex and MTU of the underlay interface.
    pub underlay_ifindex: u32,
    pub underlay_mtu: u32,
    /// This host's public IPv4 address.
    pub local_ip: [u8; 4],
    /// This host's container subnet and its netmask.
    pub local_subnet: [u8; 4],
    pub local_netmask: [u8; 4],
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// VXLAN UDP destination port.
    pub vxlan_port: u16,
    /// This host's VTEP MAC.
    pub vtep_mac: [u8; 6],
    /// flannel udp port (source and destination).
    pub udp_port: u16,
    /// GRE key, if GRE uses one.
    pub gre_key: Option<u32>,
    /// `local_ip` is an address of this host (see [`LOCAL_IP_ON_HOST`]).
    pub local_ip_on_host: bool,
    /// Untunnelled traffic to containers is accepted from anyone (see [`UNTUNNELLED_OPEN`]).
    pub untunnelled_open: bool,
    /// The tunnel formats judged on ingress (see [`USES_VXLAN`]); the default is none.
    pub formats: Formats,
}

impl DatapathConfig {
    /// CONFIG for `params`, with no gateway MAC (see [`DatapathConfig::with_gateway_mac`]), the
    /// route index off and the outer templates empty (see
    /// [`DatapathConfig::with_outer_templates`]).
    pub fn new(params: &DatapathParams) -> Self {
        Self {
            underlay_ifindex: params.underlay_ifindex,
            underlay_mtu: params.underlay_mtu,
            local_ip: params.local_ip,
            local_subnet: params.local_subnet,
            local_netmask: params.local_netmask,
            vxlan_vni: vni_to_wire(params.vni),
            vxlan_port: params.vxlan_port.to_be_bytes(),
            vtep_mac: params.vtep_mac,
            udp_port: params.udp_port.to_be_bytes(),
            flags: if params.gre_key.is_some() { GRE_KEYED } else { 0 }
                | if params.local_ip_on_host { LOCAL_IP_ON_HOST } else { 0 }
                | if params.untunnelled_open { UNTUNNELLED_OPEN } else { 0 }
                | params.formats.flags(),
            gre_key: params.gre_key.unwrap_or(0).to_be_bytes(),
            ..Self::default()
        }
    }

    /// Whether untunnelled traffic to containers is accepted from anyone (see
    /// [`UNTUNNELLED_OPEN`]).
    #[inline(always)]
    pub fn untunnelled_open(&self) -> bool {
        self.flags & UNTUNNELLED_OPEN != 0
    }

    /// Whether tunnel packets must be addressed to `local_ip` (see [`LOCAL_IP_ON_HOST`]).
    #[inline(always)]
    pub fn checks_outer_destination(&self) -> bool {
        self.flags & LOCAL_IP_ON_HOST != 0
    }

    /// The tunnel formats judged on ingress (see [`USES_VXLAN`]).
    pub fn formats(&self) -> Formats {
        Formats {
            vxlan: self.flags & USES_VXLAN != 0,
            udp: self.flags & USES_UDP != 0,
            gre: self.flags & USES_GRE != 0,
        }
    }

    /// Whether packets of a format (one of [`USES_VXLAN`], [`USES_UDP`], [`USES_GRE`]) are judged.
    #[inline(always)]
    pub fn uses(&self, format: u8) -> bool {
        self.flags & format != 0
    }

    /// The ifindex of the underlay interface; 0 when not configured.
    #[inline(always)]
    pub fn underlay_ifindex(&self) -> u32 {
        self.underlay_ifindex
    }

    #[inline(always)]
    pub fn underlay_mtu(&self) -> u32 {
        self.underlay_mtu
    }

    /// This host's public IPv4 address, network order.
    #[inline(always)]
    pub fn local_ip(&self) -> [u8; 4] {
        self.local_ip
    }

    /// This host's container subnet, network order.
    #[inline(always)]
    pub fn local_subnet(&self) -> [u8; 4] {
        self.local_subnet
    }

    /// The netmask of [`DatapathConfig::local_subnet`], network order.
    #[inline(always)]
    pub fn local_netmask(&self) -> [u8; 4] {
        self.local_netmask
    }

    /// The VXLAN network identifier.
    #[inline(always)]
    pub fn vni(&self) -> u32 {
        u32::from_be_bytes(self.vxlan_vni) >> 8
    }

    /// The VNI as on the wire: three bytes of VNI, then a zero byte.
    #[inline(always)]
    pub fn vni_wire(&self) -> [u8; 4] {
        self.vxlan_vni
    }

    #[inline(always)]
    pub fn vxlan_port(&self) -> u16 {
        u16::from_be_bytes(self.vxlan_port)
    }

    /// The VXLAN port as on the wire (network order).
    #[inline(always)]
    pub fn vxlan_port_wire(&self) -> [u8; 2] {
        self.vxlan_port
    }

    /// This host's VTEP MAC.
    #[inline(always)]
    pub fn vtep_mac(&self) -> [u8; 6] {
        self.vtep_mac
    }

    #[inline(always)]
    pub fn udp_port(&self) -> u16 {
        u16::from_be_bytes(self.udp_port)
    }

    /// The flannel udp port as on the wire (network order).
    #[inline(always)]
    pub fn udp_port_wire(&self) -> [u8; 2] {
        self.udp_port
    }

    /// The GRE key, if GRE uses one.
    #[inline(always)]
    pub fn gre_key(&self) -> Option<u32> {
        (self.flags & GRE_KEYED != 0).then(|| u32::from_be_bytes(self.gre_key))
    }

    /// The MAC of the (first) container interface; zero while unknown.
    #[inline(always)]
    pub fn gateway_mac(&self) -> [u8; 6] {
        self.gateway_mac
    }

    /// This config with the container interface's MAC `mac` (zero: unknown, egress always asks
    /// LOCAL_PORTS).
    pub fn with_gateway_mac(self, mac: [u8; 6]) -> Self {
        Self { gateway_mac: mac, ..self }
    }

    /// [`DatapathConfig::gateway_mac`] as [`crate::wire::mac_word`] gives it, in one load.
    #[inline(always)]
    pub fn gateway_mac_word(&self) -> u64 {
        const WORDS: usize = size_of::<DatapathConfig>() / 8;
        // SAFETY: DatapathConfig is plain bytes aligned to 8 without padding, so it is also u64
        // words; the gateway MAC is bytes 40 to 45 (asserted below), the low six of word 5.
        let w = unsafe { &*core::ptr::from_ref(self).cast::<[u64; WORDS]>() };
        u64::from_le(w[5]) & 0xffff_ffff_ffff
    }

    /// Whether [`ROUTE_INDEX`] answers for destinations inside [`DatapathConfig::index_net`].
    #[inline(always)]
    pub fn route_index_on(&self) -> bool {
        self.flags & ROUTE_INDEX_VALID != 0
    }

    /// The network the route index covers, network order (kept while the index is off).
    #[inline(always)]
    pub fn index_net(&self) -> [u8; 4] {
        self.index_net
    }

    /// The netmask of [`DatapathConfig::index_net`], network order.
    #[inline(always)]
    pub fn index_netmask(&self) -> [u8; 4] {
        self.index_netmask
    }

    /// 32 minus the length of the subnets the route index has one entry each for.
    #[inline(always)]
    pub fn index_shift(&self) -> u8 {
        self.index_shift
    }

    /// This config with the route index switched on for subnets of `32 - shift` bits inside
    /// `net`/`netmask` (network order). `shift` must be below 32.
    pub fn with_route_index(self, net: [u8; 4], netmask: [u8; 4], shift: u8) -> Self {
        debug_assert!(shift < 32, "route index shift {shift}");
        Self {
            flags: self.flags | ROUTE_INDEX_VALID,
            index_net: net,
            index_netmask: netmask,
            index_shift: shift,
            ..self
        }
    }

    /// This config with the route index switched off; its shape is kept (and ignored).
    pub fn without_route_index(self) -> Self {
        Self { flags: self.flags & !ROUTE_INDEX_VALID, ..self }
    }

    /// This config with the route index fields (switch and shape) of `from`.
    pub fn with_route_index_of(self, from: &DatapathConfig) -> Self {
        Self {
            flags: (self.flags & !ROUTE_INDEX_VALID) | (from.flags & ROUTE_INDEX_VALID),
            index_net: from.index_net,
            index_netmask: from.index_netmask,
            index_shift: from.index_shift,
            ..self
        }
    }

    /// The [`ROUTE_INDEX`] entry for `dst` when the index answers for it; `None` when the LPM trie
    /// must be asked.
    #[inline(always)]
    pub fn route_index(&self, dst: &[u8; 4]) -> Option<u32> {
        let dst = u32::from_be_bytes(*dst);
        let net = u32::from_be_bytes(self.index_net);
        if self.flags & ROUTE_INDEX_VALID == 0 || dst & u32::from_be_bytes(self.index_netmask) != net {
            return None;
        }
        // The agent keeps index_shift below 32; the mask keeps the index in the array's bounds.
        Some(((dst - net) >> (self.index_shift & 31)) & (ROUTE_INDEX_LEN - 1))
    }

    /// The prebuilt outer headers (see [`DatapathConfig::with_outer_templates`]).
    #[inline(always)]
    pub fn outer(&self) -> &OuterTemplates {
        &self.outer
    }

    /// This config without `outer`: what the agent compares (the templates follow from the
    /// other fields, and are built as CONFIG is written).
    pub fn without_outer_templates(self) -> Self {
        DatapathConfig { outer: OuterTemplates::default(), ..self }
    }

    /// This config with `outer` built from its other fields: what CONFIG must hold.
    pub fn with_outer_templates(self) -> Self {
        let local = VxlanLocal {
            ip: self.local_ip,
            vtep_mac: self.vtep_mac,
            port: self.vxlan_port(),
            vni: self.vni(),
        };
        DatapathConfig { outer: OuterTemplates::new(&local, self.udp_port(), self.gre_key()), ..self }
    }

    /// The [`ENDPOINTS`] entry of `addr`, an address in this host's container subnet: how far it
    /// lies past the subnet's own address (its host part).
    #[inline(always)]
    pub fn endpoint_index(&self, addr: &[u8; 4]) -> u32 {
        u32::from_be_bytes(*addr) & !u32::from_be_bytes(self.local_netmask)
    }

    /// Whether `addr` lies in this host's container subnet.
    #[inline(always)]
    pub fn is_local(&self, addr: &[u8; 4]) -> bool {
        u32::from_be_bytes(*addr) & u32::from_be_bytes(self.local_netmask)
            == u32::from_be_bytes(self.local_subnet)
    }
}

/// [`ContainerIface::state`]. Numbers are stored in maps: never reuse one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfaceState {
    /// No interface in this entry.
    Unused = 0,
    /// Configured, but it does not exist (yet): attached when it appears.
    Awaited = 1,
    /// Exists, and the egress program is attached to it.
    Attached = 2,
}

/// Entry of [`CONTAINER_IFACES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ContainerIface {
    /// The interface name, NUL-padded (IFNAMSIZ).
    name: [u8; 16],
    ifindex: u32,
    state: u8,
    reserved: [u8; 3],
}

impl ContainerIface {
    /// The interface `name` (at most 15 bytes; longer names are cut) in `state`, at `ifindex` (0
    /// while awaited).
    pub fn new(name: &str, state: IfaceState, ifindex: u32) -> Self {
        let mut bytes = [0u8; 16];
        for (dst, src) in bytes.iter_mut().zip(name.bytes().take(15)) {
            *dst = src;
        }
        Self { name: bytes, ifindex, state: state as u8, reserved: [0; 3] }
    }

    /// The name, up to its first NUL.
    pub fn name(&self) -> &[u8] {
        let end = self.name.iter().position(|b| *b == 0).unwrap_or(self.name.len());
        &self.name[..end]
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The state; unknown numbers read as unused.
    pub fn state(&self) -> IfaceState {
        match self.state {
            1 => IfaceState::Awaited,
            2 => IfaceState::Attached,
            _ => IfaceState::Unused,
        }
    }
}

/// Value of [`LOCAL_PORTS`]: the host-side interface (a veth whose peer is the container's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalPort {
    ifindex: u32,
}

impl LocalPort {
    /// The bridge port with interface index `ifindex`.
    pub const fn new(ifindex: u32) -> Self {
        Self { ifindex }
    }

    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
}

/// Value of [`LOCAL_PORTS_LIMIT`]. All zero: nothing left out (or no agent recorded it yet).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalPortsLimit {
    /// The most container MACs one bridge port may have in LOCAL_PORTS.
    per_port: u32,
    /// Bridge ports that claim more.
    ports_over: u32,
    /// Their container MACs left out of LOCAL_PORTS.
    refused_macs: u64,
}

impl LocalPortsLimit {
    /// `ports_over` ports over the cap of `per_port` MACs, `refused_macs` MACs left out.
    pub const fn new(per_port: u32, ports_over: u32, refused_macs: u64) -> Self {
        Self { per_port, ports_over, refused_macs }
    }
    pub fn per_port(&self) -> u32 {
        self.per_port
    }
    pub fn ports_over(&self) -> u32 {
        self.ports_over
    }
    pub fn refused_macs(&self) -> u64 {
        self.refused_macs
    }
}

/// Value of [`ENDPOINTS`]: how to hand a packet to a local container. All zero (the default) is
/// no entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// The host side of the container's veth (a bridge port); `bpf_redirect_peer` target.
    ifindex: u32,
    /// Destination (the container's) and source (the bridge's) MAC of the rewritten frame.
    dmac: [u8; 6],
    smac: [u8; 6],
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) when it was resolved.
    resolved_at: u64,
    /// The container's IPv4 address, network order: the entry answers for it only (an entry
    /// written under another subnet, or never, holds another).
    ip: [u8; 4],
    reserved: [u8; 4],
}

impl Endpoint {
    /// Frames for container `ip` go to bridge port `ifindex`, rewritten to `dmac` (the
    /// container's MAC) from `smac` (the bridge's); resolved at `resolved_at`
    /// (CLOCK_MONOTONIC_COARSE, ns).
    #[inline(always)]
    pub fn new(ip: [u8; 4], ifindex: u32, dmac: [u8; 6], smac: [u8; 6], resolved_at: u64) -> Self {
        Self { ifindex, dmac, smac, resolved_at, ip, reserved: [0; 4] }
    }

    /// The container's IPv4 address, network order (zero in an unused entry).
    #[inline(always)]
    pub fn ip(&self) -> [u8; 4] {
        self.ip
    }

    /// Whether this entry answers for container `ip` (network order; never for 0.0.0.0).
    #[inline(always)]
    pub fn is_for(&self, ip: &[u8; 4]) -> bool {
        // SAFETY: Endpoint is 32 plain bytes aligned to 8 without padding, so it is also eight
        // u32 words; the address is bytes 24 to 27, word 6 (asserted below). One load, not four.
        let w = unsafe { &*core::ptr::from_ref(self).cast::<[u32; 8]>() };
        w[6] == u32::from_ne_bytes(*ip) && w[6] != 0
    }

    /// The host side of the container's veth.
    #[inline(always)]
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The container's MAC: the rewritten frame's destination.
    #[inline(always)]
    pub fn dmac(&self) -> [u8; 6] {
        self.dmac
    }

    /// The bridge's MAC: the rewritten frame's source.
    #[inline(always)]
    pub fn smac(&self) -> [u8; 6] {
        self.smac
    }

    /// When it was resolved (CLOCK_MONOTONIC_COARSE, ns).
    #[inline(always)]
    pub fn resolved_at(&self) -> u64 {
        self.resolved_at
    }

    /// Whether this entry is too old to use at `now` (CLOCK_MONOTONIC_COARSE, ns): resolved
    /// [`ENDPOINT_MAX_AGE_NS`] ago or more. The program then resolves again; the agent removes it.
    #[inline(always)]
    pub fn is_stale(&self, now: u64) -> bool {
        now.saturating_sub(self.resolved_at) >= ENDPOINT_MAX_AGE_NS
    }

    /// The rewritten frame's destination and source MAC, in that order, as three little-endian
    /// words: the first 12 bytes of the Ethernet header.
    #[inline(always)]
    pub fn mac_words(&self) -> [u32; 3] {
        // SAFETY: Endpoint is 32 plain bytes aligned to 8 without padding, so it is also eight u32
        // words; the two MACs are bytes 4 to 15, words 1 to 3 (asserted below).
        let w = unsafe { &*core::ptr::from_ref(self).cast::<[u32; 8]>() };
        [u32::from_le(w[1]), u32::from_le(w[2]), u32::from_le(w[3])]
    }
}

/// Where routes come from. Numbers are stored in maps: never reuse one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    /// A static config file.
    File = 1,
    /// etcd, in flannel's schema.
    Etcd = 2,
    /// A routing daemon's routes in the kernel (FRR, BIRD).
    Routes = 3,
}

impl Store {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::File),
            2 => Some(Self::Etcd),
            3 => Some(Self::Routes),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Etcd => "etcd",
            Self::Routes => "routes",
        }
    }
}

/// How decapsulation is attached. Numbers are stored in maps: never reuse one.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressHook {
    Tc = 1,
    Xdp = 2,
}

impl IngressHook {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::Tc),
            2 => Some(Self::Xdp),
            _ => None,
        }
    }
}

/// The single entry of [`AGENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentState {
    /// Process id of the agent that last set the datapath up.
    pid: u32,
    /// MTU applied to the container interfaces.
    overlay_mtu: u32,
    /// Unix seconds: when that agent started.
    started_at: u64,
    /// Unix seconds: when the maps were last made to match the store.
    last_reconcile: u64,
    /// A [`Store`] number.
    store: u8,
    /// 1 when the store was reachable at the last attempt.
    store_up: u8,
    /// An [`IngressHook`] number.
    ingress: u8,
    /// The [`Backend`] number of `[backend] type`.
    backend: u8,
    /// Entries in the store that were skipped as malformed at the last reconcile.
    invalid_entries: u32,
    /// Unix seconds when this host's subnet lease expires; 0 when there is no lease (static file).
    lease_expiry: u64,
    /// 1 when this host's subnet lease was lost: it expired and another host (`lease_holder`) or
    /// nobody holds the subnet now; the agent no longer advertises it.
    lease_lost: u8,
    /// Which map refused the last sync for want of room: 0 none, 1 REMOTE_SUBNETS, 2 PEERS.
    full_map: u8,
    reserved: [u8; 2],
    /// Public IP (network order) of the host that holds this host's subnet since it was lost;
    /// zero when nobody does (or it is not lost).
    lease_holder: [u8; 4],
    /// Syncs refused whole for want of room since the agent started.
    refused_syncs: u32,
    reserved2: [u8; 4],
}

impl AgentState {
    /// The record of agent `pid`, started at `started_at` (Unix seconds), with routes from `store`,
    /// decapsulation at `ingress`, sending with `backend` and giving containers `overlay_mtu`.
    /// Nothing reconciled yet, the store down, no invalid entries, no lease: the setters below
    /// record those as they happen.
    pub fn new(
        pid: u32,
        started_at: u64,
        store: Store,
        ingress: IngressHook,
        backend: Backend,
        overlay_mtu: u32,
    ) -> Self {
        Self {
            pid,
            overlay_mtu,
            started_at,
            last_reconcile: 0,
            store: store as u8,
            store_up: 0,
            ingress: ingress as u8,
            backend: backend as u8,
            invalid_entries: 0,
            lease_expiry: 0,
            lease_lost: 0,
            full_map: 0,
            reserved: [0; 2],
            lease_holder: [0; 4],
            refused_syncs: 0,
            reserved2: [0; 4],
        }
    }

    /// Process id of the agent that last set the datapath up; 0 when none did.
    pub fn pid(&self) -> u32 {
        self.pid
    }
    pub fn overlay_mtu(&self) -> u32 {
        self.overlay_mtu
    }
    /// Unix seconds: when the agent started.
    pub fn started_at(&self) -> u64 {
        self.started_at
    }
    /// Unix seconds: when the maps were last made to match the store.
    pub fn last_reconcile(&self) -> u64 {
        self.last_reconcile
    }
    pub fn set_last_reconcile(&mut self, at: u64) {
        self.last_reconcile = at;
    }
    /// Where routes come from; `None` for a number this code does not know.
    pub fn store(&self) -> Option<Store> {
        Store::from_u8(self.store)
    }
    /// Whether the store was reachable (and the maps matched it) at the last attempt.
    pub fn store_up(&self) -> bool {
        self.store_up == 1
    }
    pub fn set_store_up(&mut self, up: bool) {
        self.store_up = u8::from(up);
    }
    pub fn ingress(&self) -> Option<IngressHook> {
        IngressHook::from_u8(self.ingress)
    }
    /// The backend of `[backend] type`.
    pub fn backend(&self) -> Option<Backend> {
        Backend::from_u8(self.backend)
    }
    /// Store entries skipped as malformed at the last reconcile.
    pub fn invalid_entries(&self) -> u32 {
        self.invalid_entries
    }
    pub fn set_invalid_entries(&mut self, n: u32) {
        self.invalid_entries = n;
    }
    /// Unix seconds when this host's subnet lease expires; `None` without a lease.
    pub fn lease_expiry(&self) -> Option<u64> {
        (self.lease_expiry != 0).then_some(self.lease_expiry)
    }
    pub fn set_lease_expiry(&mut self, at: Option<u64>) {
        self.lease_expiry = at.unwrap_or(0);
    }
    /// Whether this host's subnet lease was lost, and the public IP (network order) of the host
    /// that holds the subnet now, if any.
    pub fn lease_lost(&self) -> Option<Option<[u8; 4]>> {
        (self.lease_lost == 1).then_some((self.lease_holder != [0; 4]).then_some(self.lease_holder))
    }
    /// Records the lease as lost (to `holder`, or to nobody yet) or, with `None`, as held.
    pub fn set_lease_lost(&mut self, lost: Option<Option<[u8; 4]>>) {
        self.lease_lost = u8::from(lost.is_some());
        self.lease_holder = lost.flatten().unwrap_or([0; 4]);
    }
    /// The map ([`REMOTE_SUBNETS`] or [`PEERS`]) that refused the last sync for want of room, if
    /// it was refused so.
    pub fn full_map(&self) -> Option<&'static str> {
        match self.full_map {
            1 => Some(REMOTE_SUBNETS),
            2 => Some(PEERS),
            _ => None,
        }
    }
    /// Records how the last sync went: refused for want of room in `map` (counted), or not.
    pub fn set_full_map(&mut self, map: Option<&str>) {
        self.full_map = match map {
            Some(REMOTE_SUBNETS) => 1,
            Some(PEERS) => 2,
            _ => 0,
        };
        if self.full_map != 0 {
            self.refused_syncs = self.refused_syncs.saturating_add(1);
        }
    }
    /// Syncs refused whole for want of room since the agent started.
    pub fn refused_syncs(&self) -> u32 {
        self.refused_syncs
    }
}

/// Where a route came from and since when: the `info` of a [`RouteEntry`], read by `xnet routes`
/// and `xnet status` (the programs do not use it). Packed to 4 bytes so that a [`RouteEntry`] keeps
/// the 4-byte alignment values have in the LPM trie (`added_at` is read by copy, never by
/// reference).
#[repr(C, packed(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteInfo {
    /// A [`Store`] number.
    source: u8,
    /// For [`Store::Routes`]: the kernel route protocol (`RTPROT_*`, e.g. 188 for OSPF) the route
    /// was learned with; 0 otherwise.
    protocol: u8,
    reserved: [u8; 6],
    /// Unix seconds: when the route was first installed.
    added_at: u64,
}

impl RouteInfo {
    /// A route from `source`, first installed at `added_at` (Unix seconds).
    pub const fn new(source: Store, added_at: u64) -> Self {
        Self { source: source as u8, protocol: 0, reserved: [0; 6], added_at }
    }

    /// The same, learned with the kernel route protocol `protocol`.
    pub const fn with_protocol(self, protocol: u8) -> Self {
        Self { protocol, ..self }
    }

    /// The same, first installed at `added_at` instead.
    pub const fn with_added_at(self, added_at: u64) -> Self {
        Self { added_at, ..self }
    }

    /// The kernel route protocol the route was learned with; 0 when it was not learned from
    /// kernel routes.
    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Where the route came from; `None` for a number this code does not know.
    pub fn source(&self) -> Option<Store> {
        Store::from_u8(self.source)
    }

    /// Unix seconds: when the route was first installed.
    pub fn added_at(&self) -> u64 {
        self.added_at
    }
}

/// Value of [`REMOTE_SUBNETS`]: the route the programs send with, then what the agent records
/// about it. The programs read only `route`, at the start of the value, so the wider value costs
/// them nothing; one map write installs both. Aligned to 4 like every trie value.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RouteEntry {
    /// Where to send packets for the subnet.
    route: RemoteSubnet,
    /// The prefix length of the entry's own key: a trie lookup answers with the longest prefix
    /// that holds the address looked up, and this tells whether that is the subnet asked for.
    prefix_len: u8,
    reserved: [u8; 3],
    /// Where the route came from, since when.
    info: RouteInfo,
}

impl RouteEntry {
    /// The entry of a subnet of `prefix_len` bits routed with `route`, recorded as `info`.
    pub const fn new(prefix_len: u8, route: RemoteSubnet, info: RouteInfo) -> Self {
        Self { route, prefix_len, reserved: [0; 3], info }
    }

    /// Where to send packets for the subnet (all the programs read).
    #[inline(always)]
    pub fn route(&self) -> &RemoteSubnet {
        &self.route
    }

    /// The prefix length of the subnet the entry was written for.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Where the route came from, since when.
    pub fn info(&self) -> RouteInfo {
        self.info
    }
}

/// Value of [`STATS`]: packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    packets: u64,
    bytes: u64,
}

impl Counter {
    pub const fn new(packets: u64, bytes: u64) -> Self {
        Self { packets, bytes }
    }

    #[inline(always)]
    pub fn packets(&self) -> u64 {
        self.packets
    }

    #[inline(always)]
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Counts one packet of `bytes` bytes.
    #[inline(always)]
    pub fn count(&mut self, bytes: u64) {
        self.packets += 1;
        self.bytes += bytes;
    }
}

impl core::ops::Add for Counter {
    type Output = Counter;
    /// Both counts summed (the per-CPU entries of one counter).
    fn add(self, other: Counter) -> Counter {
        Counter { packets: self.packets + other.packets, bytes: self.bytes + other.bytes }
    }
}

const _: () = {
    assert!(size_of::<LpmKeyIpv4>() == 8);
    assert!(size_of::<ContainerIface>() == 24);
    assert!(size_of::<RemoteSubnet>() == 12);
    assert!(size_of::<Peer>() == 8);
    assert!(size_of::<DatapathConfig>() == 64 + 3 * 64);
    assert!(size_of::<Counter>() == 16);
    assert!(size_of::<LocalPort>() == 4);
    assert!(size_of::<AgentState>() == 56);
    assert!(size_of::<RouteInfo>() == 16 && align_of::<RouteInfo>() == 4);
    assert!(size_of::<RouteEntry>() == 32 && align_of::<RouteEntry>() == 4);
    assert!(core::mem::offset_of!(RouteEntry, route) == 0 && core::mem::offset_of!(RouteEntry, info) == 16);
    assert!(size_of::<Endpoint>() == 32);
    assert!(size_of::<PeerSlot>() == 8);
    assert!(size_of::<LocalPortsLimit>() == 16);
    // Read as words by the accessors above.
    assert!(core::mem::offset_of!(RemoteSubnet, vtep_mac) == 4);
    assert!(core::mem::offset_of!(DatapathConfig, gateway_mac) == 40);
    assert!(core::mem::offset_of!(Endpoint, dmac) == 4 && core::mem::offset_of!(Endpoint, smac) == 10);
    assert!(core::mem::offset_of!(Endpoint, ip) == 24);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // What `aya::Pod` asks of each type below: #[repr(C)] (or packed), no implicit padding (sizes
    // asserted above), only integers and byte arrays inside, so every bit pattern is valid.

    // SAFETY: packed u32 and [u8; 4]: 8 bytes, no padding.
    unsafe impl aya::Pod for LpmKeyIpv4 {}
    // SAFETY: #[repr(C)] [u8; 16], u32, u8 and [u8; 3]: 24 bytes without gaps (asserted).
    unsafe impl aya::Pod for ContainerIface {}
    // SAFETY: #[repr(C, align(4))] byte arrays and bytes filling 12 bytes (asserted).
    unsafe impl aya::Pod for RemoteSubnet {}
    // SAFETY: #[repr(C)] [u8; 6] and two bytes: 8 bytes, alignment 1.
    unsafe impl aya::Pod for Peer {}
    // SAFETY: #[repr(C, align(8))] integers, byte arrays and the OuterTemplates (u64 and u32
    // words), laid out without gaps (size asserted).
    unsafe impl aya::Pod for DatapathConfig {}
    // SAFETY: #[repr(C)] two u64.
    unsafe impl aya::Pod for Counter {}
    // SAFETY: #[repr(C)] one u32.
    unsafe impl aya::Pod for LocalPort {}
    // SAFETY: #[repr(C)] two u32 and a u64: 16 bytes, no padding (asserted).
    unsafe impl aya::Pod for LocalPortsLimit {}
    // SAFETY: #[repr(C)] integers in an order that leaves no gap (size asserted).
    unsafe impl aya::Pod for AgentState {}
    // SAFETY: #[repr(C, packed(4))] two bytes, [u8; 6] and a u64: 16 bytes, no gap (asserted).
    unsafe impl aya::Pod for RouteInfo {}
    // SAFETY: #[repr(C, align(4))] a RemoteSubnet (12 bytes), a byte, [u8; 3] and a RouteInfo at
    // offset 16: 32 bytes, no gap (offsets and size asserted).
    unsafe impl aya::Pod for RouteEntry {}
    // SAFETY: #[repr(C)] u32, two [u8; 6], a u64 and two [u8; 4]: 32 bytes, no gap (asserted).
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: #[repr(C)] [u8; 4], a byte and [u8; 3]: 8 bytes, alignment 1.
    unsafe impl aya::Pod for PeerSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes a map holds for `v`.
    fn bytes_of<T>(v: &T) -> &[u8] {
        // SAFETY: only used on the map value types above: #[repr(C)] without padding (sizes
        // asserted), so every byte is initialised; the slice borrows `v`.
        unsafe { core::slice::from_raw_parts(core::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
    }

    #[test]
    fn endpoints_has_one_entry_per_subnet_address_up_to_a_slash_16() {
        assert_eq!([24, 20, 16, 8, 0, 31, 32].map(endpoints_len), [256, 4096, 65536, 65536, 65536, 2, 1]);
        assert_eq!(Capacity::default().for_subnet(20).of_map(ENDPOINTS), Some(4096));
        let params = DatapathParams {
            local_subnet: [10, 244, 16, 0],
            local_netmask: [255, 255, 240, 0],
            ..Default::default()
        };
        let cfg = DatapathConfig::new(&params);
        assert_eq!(cfg.endpoint_index(&[10, 244, 16, 0]), 0);
        assert_eq!(cfg.endpoint_index(&[10, 244, 17, 5]), 261);
        assert_eq!(cfg.endpoint_index(&[10, 244, 31, 255]), 4095);
    }

    #[test]
    fn route_index_covers_the_network_only_while_valid() {
        let cfg = DatapathConfig::default().with_route_index([10, 244, 0, 0], [255, 255, 0, 0], 8);
        assert!(cfg.route_index_on());
        assert_eq!(cfg.route_index(&[10, 244, 2, 7]), Some(2));
        assert_eq!(cfg.route_index(&[10, 244, 255, 255]), Some(255));
        assert_eq!(cfg.route_index(&[10, 245, 0, 1]), None, "outside the network: the trie decides");
        let off = cfg.without_route_index();
        assert_eq!(off.route_index(&[10, 244, 2, 7]), None, "not valid");
        assert_eq!(
            (off.route_index_on(), off.index_net(), off.index_netmask(), off.index_shift()),
            (false, [10, 244, 0, 0], [255, 255, 0, 0], 8),
            "switched off, shape kept"
        );
        let wide = cfg.with_route_index([10, 0, 0, 0], [255, 0, 0, 0], 6);
        assert_eq!(wide.route_index(&[10, 0, 1, 64]), Some(5), "/26 subnets of a /8");
        // Copying the index fields leaves the rest alone.
        let keyed = DatapathConfig::new(&DatapathParams { gre_key: Some(7), ..Default::default() });
        assert_eq!(
            keyed.with_route_index_of(&wide),
            keyed.with_route_index([10, 0, 0, 0], [255, 0, 0, 0], 6)
        );
        assert_eq!(keyed.with_route_index_of(&wide).gre_key(), Some(7));
        assert_eq!(keyed.with_route_index_of(&wide).with_route_index_of(&keyed), keyed);
    }

    #[test]
    fn mac_words_read_the_macs_and_nothing_around_them() {
        use crate::wire::mac_word;
        let mac = [0x02, 0x42, 0xfe, 0x80, 0x01, 0xff];
        // Every byte around the MACs set, so a word read that strayed would show.
        let route = RemoteSubnet { peer_ip: [0xff; 4], vtep_mac: mac, backend: 0xff, reserved: 0xff };
        assert_eq!(route.vtep_mac_word(), mac_word(&mac));
        let cfg = DatapathConfig {
            gateway_mac: mac,
            reserved2: [0xff; 2],
            gre_key: [0xff; 4],
            ..Default::default()
        };
        assert_eq!(cfg.gateway_mac_word(), mac_word(&mac));
        let smac = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x01];
        let endpoint = Endpoint::new([0xff; 4], u32::MAX, mac, smac, u64::MAX);
        let bytes: std::vec::Vec<u8> = endpoint.mac_words().iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(bytes, [mac, smac].concat());
    }

    #[test]
    fn constructors_store_the_maps_encoding() {
        let params = DatapathParams {
            underlay_ifindex: 0x0102_0304,
            underlay_mtu: 1500,
            local_ip: [198, 18, 0, 1],
            local_subnet: [10, 244, 1, 0],
            local_netmask: [255, 255, 255, 0],
            vni: 0x12_3456,
            vxlan_port: 8472,
            vtep_mac: [2, 0, 0, 0, 0, 1],
            udp_port: 8285,
            gre_key: Some(0x0a0b_0c0d),
            local_ip_on_host: true,
            formats: Formats { vxlan: true, udp: false, gre: true },
            untunnelled_open: false,
        };
        let cfg = DatapathConfig::new(&params).with_gateway_mac([2, 0, 0, 0, 0, 9]);
        let mut want = std::vec::Vec::new();
        want.extend_from_slice(&0x0102_0304u32.to_ne_bytes());
        want.extend_from_slice(&1500u32.to_ne_bytes());
        want.extend_from_slice(&[198, 18, 0, 1, 10, 244, 1, 0, 255, 255, 255, 0]);
        want.extend_from_slice(&[0x12, 0x34, 0x56, 0]); // VNI as on the wire
        want.extend_from_slice(&[0x21, 0x18]); // 8472, network order
        want.extend_from_slice(&[2, 0, 0, 0, 0, 1]);
        want.extend_from_slice(&[0x20, 0x5d]); // 8285, network order
        want.extend_from_slice(&[
            GRE_KEYED | LOCAL_IP_ON_HOST | USES_VXLAN | USES_GRE,
            0,
            0x0a,
            0x0b,
            0x0c,
            0x0d,
        ]);
        want.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0, 0]);
        want.extend_from_slice(&[0; 16]); // route index off
        assert_eq!(bytes_of(&cfg)[..64], want[..]);
        assert!(bytes_of(&cfg)[64..].iter().all(|b| *b == 0), "templates built on writing");
        assert_eq!(
            (cfg.vni(), cfg.vni_wire(), cfg.vxlan_port(), cfg.vxlan_port_wire()),
            (0x12_3456, [0x12, 0x34, 0x56, 0], 8472, [0x21, 0x18])
        );
        assert_eq!(
            (cfg.udp_port(), cfg.udp_port_wire(), cfg.gre_key()),
            (8285, [0x20, 0x5d], Some(0x0a0b_0c0d))
        );
        assert_eq!(
            (cfg.underlay_ifindex(), cfg.underlay_mtu(), cfg.vtep_mac()),
            (0x0102_0304, 1500, [2, 0, 0, 0, 0, 1])
        );
        assert_eq!((cfg.local_ip(), cfg.gateway_mac()), ([198, 18, 0, 1], [2, 0, 0, 0, 0, 9]));
        assert!(cfg.is_local(&[10, 244, 1, 200]) && !cfg.is_local(&[10, 244, 2, 1]));
        assert_eq!(cfg.formats(), params.formats);
        assert!(cfg.uses(USES_VXLAN) && !cfg.uses(USES_UDP) && cfg.uses(USES_GRE));
        let unkeyed = DatapathConfig::new(&DatapathParams {
            gre_key: None,
            local_ip_on_host: false,
            formats: Formats::default(),
            ..params
        });
        assert_eq!((unkeyed.gre_key(), &bytes_of(&unkeyed)[34..40]), (None, &[0u8; 6][..]));
        assert_eq!((unkeyed.formats(), Formats::default().names()), (Formats::default(), "none"));
        assert_eq!(Formats::of([Backend::Direct, Backend::Udp, Backend::Gre]).names(), "udp, gre");
        assert_eq!(Formats::of(Backend::ALL), Formats::ALL);

        let route = RemoteSubnet::new([198, 18, 0, 2], [2, 0, 0, 0, 0, 2], Backend::Gre);
        assert_eq!(bytes_of(&route), [198, 18, 0, 2, 2, 0, 0, 0, 0, 2, 3, 0]);
        assert_eq!(
            (route.peer_ip(), route.vtep_mac(), route.backend()),
            ([198, 18, 0, 2], [2, 0, 0, 0, 0, 2], Some(Backend::Gre))
        );
        assert!(!route.is_empty() && RemoteSubnet::default().is_empty());
        let peer = Peer::new([2, 0, 0, 0, 0, 2], Backend::Direct);
        assert_eq!(bytes_of(&peer), [2, 0, 0, 0, 0, 2, 4, 0]);
        assert_eq!((peer.vtep_mac(), peer.backend()), ([2, 0, 0, 0, 0, 2], Some(Backend::Direct)));
        assert_eq!(bytes_of(&PeerSlot::peer([198, 18, 0, 2])), [198, 18, 0, 2, 1, 0, 0, 0]);
        assert_eq!(bytes_of(&PeerSlot::shared([198, 18, 0, 2])), [198, 18, 0, 2, 2, 0, 0, 0]);
        assert_eq!(PeerSlot::empty(), PeerSlot::default());
        assert_eq!(
            [PeerSlot::empty(), PeerSlot::peer([1; 4]), PeerSlot::shared([1; 4])].map(|s| s.state()),
            [SlotState::Empty, SlotState::Peer, SlotState::Shared]
        );
        let key = LpmKeyIpv4::new(24, [10, 244, 2, 0]);
        assert_eq!(bytes_of(&key), [&24u32.to_ne_bytes()[..], &[10, 244, 2, 0]].concat());
        assert_eq!((key.prefix_len(), key.addr()), (24, [10, 244, 2, 0]));
        let info = RouteInfo::new(Store::Etcd, 1_700_000_000);
        assert_eq!(
            bytes_of(&info),
            [&[2u8, 0, 0, 0, 0, 0, 0, 0][..], &1_700_000_000u64.to_ne_bytes()].concat()
        );
        assert_eq!((info.source(), info.added_at()), (Some(Store::Etcd), 1_700_000_000));
        let learned = RouteInfo::new(Store::Routes, 5).with_protocol(188);
        assert_eq!(&bytes_of(&learned)[..8], &[3u8, 188, 0, 0, 0, 0, 0, 0][..]);
        assert_eq!((learned.source(), learned.protocol(), info.protocol()), (Some(Store::Routes), 188, 0));
        assert_eq!(learned.with_added_at(9).added_at(), 9);
        let entry = RouteEntry::new(24, route, learned);
        assert_eq!(
            bytes_of(&entry),
            [bytes_of(&route), &[24, 0, 0, 0], bytes_of(&learned)].concat(),
            "the route first, where the programs read it"
        );
        assert_eq!((*entry.route(), entry.prefix_len(), entry.info()), (route, 24, learned));
        assert_eq!(LocalPort::new(7).ifindex(), 7);
        let e =
            Endpoint::new([10, 244, 1, 5], 7, [2, 0, 0, 0, 0, 5], [2, 0, 0, 0, 0, 1], ENDPOINT_MAX_AGE_NS);
        assert_eq!(
            (e.ip(), e.ifindex(), e.dmac(), e.smac(), e.resolved_at()),
            ([10, 244, 1, 5], 7, [2, 0, 0, 0, 0, 5], [2, 0, 0, 0, 0, 1], ENDPOINT_MAX_AGE_NS)
        );
        assert_eq!(&bytes_of(&e)[24..], &[10u8, 244, 1, 5, 0, 0, 0, 0][..]);
        assert!(e.is_for(&[10, 244, 1, 5]) && !e.is_for(&[10, 244, 2, 5]));
        assert!(!Endpoint::default().is_for(&[0; 4]), "an unused entry answers for no address");
        assert!(!e.is_stale(2 * ENDPOINT_MAX_AGE_NS - 1) && e.is_stale(2 * ENDPOINT_MAX_AGE_NS));
        let mut c = Counter::new(1, 100);
        c.count(60);
        assert_eq!((c + Counter::new(2, 3)), Counter::new(4, 163));
    }

    #[test]
    fn agent_state_records_what_the_setters_say() {
        let mut a = AgentState::new(42, 1_700_000_000, Store::File, IngressHook::Xdp, Backend::Udp, 1450);
        assert_eq!((a.pid(), a.started_at(), a.overlay_mtu()), (42, 1_700_000_000, 1450));
        assert_eq!(
            (a.store(), a.ingress(), a.backend()),
            (Some(Store::File), Some(IngressHook::Xdp), Some(Backend::Udp))
        );
        assert_eq!(
            (a.last_reconcile(), a.store_up(), a.invalid_entries(), a.lease_expiry()),
            (0, false, 0, None)
        );
        a.set_last_reconcile(1_700_000_100);
        a.set_store_up(true);
        a.set_invalid_entries(3);
        a.set_lease_expiry(Some(1_700_086_400));
        assert_eq!(
            (a.last_reconcile(), a.store_up(), a.invalid_entries(), a.lease_expiry()),
            (1_700_000_100, true, 3, Some(1_700_086_400))
        );
        assert_eq!((a.store_up, a.store, a.ingress, a.backend), (1, 1, 2, 2), "the numbers bpftool shows");
        a.set_lease_expiry(None);
        assert_eq!((a.lease_expiry(), a.lease_expiry), (None, 0));
        assert_eq!(a.lease_lost(), None);
        a.set_lease_lost(Some(Some([198, 18, 0, 9])));
        assert_eq!(
            (a.lease_lost(), a.lease_lost, a.lease_holder),
            (Some(Some([198, 18, 0, 9])), 1, [198, 18, 0, 9])
        );
        a.set_lease_lost(Some(None));
        assert_eq!(a.lease_lost(), Some(None));
        a.set_lease_lost(None);
        assert_eq!((a.lease_lost(), a.lease_lost, a.lease_holder), (None, 0, [0; 4]));
    }
}
