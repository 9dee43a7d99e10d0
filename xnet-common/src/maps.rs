//! Map names and the key/value types stored in them. Every map is a BTF map, so
//! `bpftool map dump pinned <pin_dir>/<NAME>` prints these fields by name.

use crate::{outer::OuterTemplates, wire::VxlanLocal};

/// LPM trie: remote subnet -> the host that owns it. Key: [`lpm key`](LpmKeyIpv4).
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

/// Array of one [`AgentState`]: what the agent that set this datapath up knows about it. Read by
/// `xnet status` and the metrics; the programs do not use it.
pub const AGENT: &str = "AGENT";
/// Hash: [`LpmKeyIpv4`] of a remote subnet -> [`RouteInfo`] (where the route came from, since when).
/// Read by `xnet routes`; the programs do not use it.
pub const ROUTE_INFO: &str = "ROUTE_INFO";

/// LRU hash: a local container's IPv4 address -> [`Endpoint`], where decapsulated packets for it
/// were last delivered. Filled by the ingress program from `bpf_fib_lookup` and LOCAL_PORTS, so
/// most packets skip both (and read no clock). The agent removes, every second, the entries
/// resolved more than [`ENDPOINT_MAX_AGE_NS`] ago and those whose container left its bridge port;
/// the next packet resolves them again.
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

/// Every map, for pinning and cleanup.
pub const ALL: [&str; 10] = [
    REMOTE_SUBNETS,
    PEERS,
    CONFIG,
    STATS,
    LOCAL_PORTS,
    AGENT,
    ROUTE_INFO,
    ENDPOINTS,
    PEER_SLOTS,
    ROUTE_INDEX,
];

/// Subnets a network may have for ROUTE_INDEX to cover it (e.g. /24s of a /8).
pub const ROUTE_INDEX_LEN: u32 = 1 << 16;

pub const PEER_SLOTS_LEN: u32 = 1 << 16;

/// [`PeerSlot::state`]: no peer hashes here.
pub const SLOT_EMPTY: u8 = 0;
/// Exactly one peer, `ip`, hashes here.
pub const SLOT_PEER: u8 = 1;
/// More than one peer hashes here: ask PEERS.
pub const SLOT_SHARED: u8 = 2;

/// Entry of [`PEER_SLOTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PeerSlot {
    pub ip: [u8; 4],
    pub state: u8,
    pub reserved: [u8; 3],
}

/// The [`PEER_SLOTS`] index of a public IPv4 address (Fibonacci hashing to 16 bits).
#[inline(always)]
pub fn peer_slot(ip: &[u8; 4]) -> u32 {
    u32::from_be_bytes(*ip).wrapping_mul(0x9e37_79b1) >> 16
}

pub const ENDPOINTS_MAX: u32 = 1 << 16;
/// How long a resolved endpoint is used before the kernel is asked again (a container whose MAC
/// changed on the same port is followed within this time, plus the agent's one-second tick).
pub const ENDPOINT_MAX_AGE_NS: u64 = 5_000_000_000;

pub const LOCAL_PORTS_MAX: u32 = 1 << 16;

pub const REMOTE_SUBNETS_MAX: u32 = 1 << 20;
pub const PEERS_MAX: u32 = 1 << 20;

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
    pub prefix_len: u32,
    pub addr: [u8; 4],
}

/// Value of [`REMOTE_SUBNETS`]: where to send packets for a remote subnet. Aligned to 4 (map values
/// are, in the LPM trie and the array alike), so the programs read it a word at a time.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RemoteSubnet {
    /// The owning host's public (underlay) IPv4 address, network order.
    pub peer_ip: [u8; 4],
    /// Inner destination MAC for VXLAN: the peer's VTEP MAC.
    pub vtep_mac: [u8; 6],
    /// A [`Backend`] number.
    pub backend: u8,
    pub reserved: u8,
}

/// Value of [`PEERS`]: a host we exchange overlay traffic with.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Peer {
    pub vtep_mac: [u8; 6],
    /// A [`Backend`] number: how we send to this peer.
    pub backend: u8,
    pub reserved: u8,
}

/// The single entry of [`CONFIG`]: this host's side of every tunnel.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// ifindex of the underlay interface that encapsulated packets leave through.
    pub underlay_ifindex: u32,
    /// MTU of the underlay interface: larger non-GSO packets after encapsulation are dropped
    /// (counted as too big) instead of vanishing in the driver.
    pub underlay_mtu: u32,
    /// This host's public IPv4 address: the outer source address, network order.
    pub local_ip: [u8; 4],
    /// This host's container subnet (network order) and its netmask: decapsulated packets must be
    /// addressed into it.
    pub local_subnet: [u8; 4],
    pub local_netmask: [u8; 4],
    /// VXLAN VNI as on the wire: 3 bytes of VNI, one reserved zero byte.
    pub vxlan_vni: [u8; 4],
    /// VXLAN UDP destination port, network order.
    pub vxlan_port: [u8; 2],
    /// This host's VTEP MAC: the inner source MAC of what it sends.
    pub vtep_mac: [u8; 6],
    /// flannel udp port (source and destination), network order.
    pub udp_port: [u8; 2],
    /// [`GRE_KEYED`]: GRE carries `gre_key` (sent, and required on what arrives).
    pub flags: u8,
    pub reserved: u8,
    /// GRE key, network order.
    pub gre_key: [u8; 4],
    /// MAC of the (first) container interface: frames to it are for the host, so egress need not
    /// ask LOCAL_PORTS whether they are for a local container. Zero: always ask.
    pub gateway_mac: [u8; 6],
    pub reserved2: [u8; 2],
    /// With [`ROUTE_INDEX_VALID`] in `flags`: every route is one subnet of `32 - index_shift`
    /// bits inside `index_net`/`index_netmask`, and [`ROUTE_INDEX`] entry
    /// `(dst - index_net) >> index_shift` holds the route of the subnet of `dst` (an entry with
    /// backend 0: no route). Network order.
    pub index_net: [u8; 4],
    pub index_netmask: [u8; 4],
    /// 32 minus the subnet length.
    pub index_shift: u8,
    pub reserved3: [u8; 7],
    /// The outer headers this host sends, prebuilt from the fields above
    /// ([`DatapathConfig::with_outer_templates`] fills them in; CONFIG always holds them filled).
    pub outer: OuterTemplates,
}

/// [`DatapathConfig::flags`]: GRE uses a key.
pub const GRE_KEYED: u8 = 1;
/// [`DatapathConfig::flags`]: [`ROUTE_INDEX`] answers for destinations inside `index_net`.
pub const ROUTE_INDEX_VALID: u8 = 2;

/// Value of [`LOCAL_PORTS`]: the host-side interface (a veth whose peer is the container's).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct LocalPort {
    pub ifindex: u32,
}

/// Value of [`ENDPOINTS`]: how to hand a packet to a local container.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// The host side of the container's veth (a bridge port); `bpf_redirect_peer` target.
    pub ifindex: u32,
    /// Destination (the container's) and source (the bridge's) MAC of the rewritten frame.
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) when it was resolved.
    pub resolved_at: u64,
}

impl Endpoint {
    /// Whether the agent should remove this entry at `now` (CLOCK_MONOTONIC_COARSE, ns): resolved
    /// [`ENDPOINT_MAX_AGE_NS`] ago or more.
    pub fn is_stale(&self, now: u64) -> bool {
        now.saturating_sub(self.resolved_at) >= ENDPOINT_MAX_AGE_NS
    }

    /// The rewritten frame's destination and source MAC, in that order, as three little-endian
    /// words: the first 12 bytes of the Ethernet header.
    #[inline(always)]
    pub fn mac_words(&self) -> [u32; 3] {
        // SAFETY: Endpoint is 24 plain bytes aligned to 8 without padding, so it is also six u32
        // words; the two MACs are bytes 4 to 15, words 1 to 3 (asserted below).
        let w = unsafe { &*core::ptr::from_ref(self).cast::<[u32; 6]>() };
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
}

impl Store {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::File),
            2 => Some(Self::Etcd),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Etcd => "etcd",
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

/// The single entry of [`AGENT`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AgentState {
    /// Process id of the agent that last set the datapath up.
    pub pid: u32,
    /// MTU applied to the container interfaces.
    pub overlay_mtu: u32,
    /// Unix seconds: when that agent started.
    pub started_at: u64,
    /// Unix seconds: when the maps were last made to match the store.
    pub last_reconcile: u64,
    /// A [`Store`] number.
    pub store: u8,
    /// 1 when the store was reachable at the last attempt.
    pub store_up: u8,
    /// An [`IngressHook`] number.
    pub ingress: u8,
    /// The [`Backend`] number of `[backend] type`.
    pub backend: u8,
    /// Entries in the store that were skipped as malformed at the last reconcile.
    pub invalid_entries: u32,
    /// Unix seconds when this host's subnet lease expires; 0 when there is no lease (static file).
    pub lease_expiry: u64,
}

/// Value of [`ROUTE_INFO`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RouteInfo {
    /// A [`Store`] number.
    pub source: u8,
    pub reserved: [u8; 7],
    /// Unix seconds: when the route was first installed.
    pub added_at: u64,
}

/// Value of [`STATS`]: packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = {
    assert!(size_of::<LpmKeyIpv4>() == 8);
    assert!(size_of::<RemoteSubnet>() == 12);
    assert!(size_of::<Peer>() == 8);
    assert!(size_of::<DatapathConfig>() == 64 + 3 * 64);
    assert!(size_of::<Counter>() == 16);
    assert!(size_of::<LocalPort>() == 4);
    assert!(size_of::<AgentState>() == 40);
    assert!(size_of::<RouteInfo>() == 16);
    assert!(size_of::<Endpoint>() == 24);
    assert!(size_of::<PeerSlot>() == 8);
    // Read as words by the accessors below.
    assert!(core::mem::offset_of!(RemoteSubnet, vtep_mac) == 4);
    assert!(core::mem::offset_of!(DatapathConfig, gateway_mac) == 40);
    assert!(core::mem::offset_of!(Endpoint, dmac) == 4 && core::mem::offset_of!(Endpoint, smac) == 10);
};

impl RemoteSubnet {
    /// The VTEP MAC as [`crate::wire::mac_word`] gives it, in two loads (the compiler would load
    /// its six bytes one by one).
    #[inline(always)]
    pub fn vtep_mac_word(&self) -> u64 {
        // SAFETY: RemoteSubnet is 12 plain bytes aligned to 4, so it is also three u32 words; the
        // MAC is bytes 4 to 9 (asserted above).
        let w = unsafe { &*core::ptr::from_ref(self).cast::<[u32; 3]>() };
        u32::from_le(w[1]) as u64 | (u32::from_le(w[2]) as u64 & 0xffff) << 32
    }
}

impl DatapathConfig {
    /// [`DatapathConfig::gateway_mac`] as [`crate::wire::mac_word`] gives it, in one load.
    #[inline(always)]
    pub fn gateway_mac_word(&self) -> u64 {
        const WORDS: usize = size_of::<DatapathConfig>() / 8;
        // SAFETY: DatapathConfig is plain bytes aligned to 8 without padding, so it is also u64
        // words; the gateway MAC is bytes 40 to 45 (asserted above), the low six of word 5.
        let w = unsafe { &*core::ptr::from_ref(self).cast::<[u64; WORDS]>() };
        u64::from_le(w[5]) & 0xffff_ffff_ffff
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

    /// This config with `outer` built from its other fields: what CONFIG must hold.
    pub fn with_outer_templates(self) -> Self {
        let local = VxlanLocal {
            ip: self.local_ip,
            vtep_mac: self.vtep_mac,
            port: self.vxlan_port(),
            vni: u32::from_be_bytes(self.vxlan_vni) >> 8,
        };
        DatapathConfig { outer: OuterTemplates::new(&local, self.udp_port(), self.gre_key()), ..self }
    }

    pub fn vxlan_port(&self) -> u16 {
        u16::from_be_bytes(self.vxlan_port)
    }
    pub fn udp_port(&self) -> u16 {
        u16::from_be_bytes(self.udp_port)
    }
    /// The GRE key, if GRE uses one.
    pub fn gre_key(&self) -> Option<u32> {
        (self.flags & GRE_KEYED != 0).then(|| u32::from_be_bytes(self.gre_key))
    }
    /// Whether `addr` lies in this host's container subnet.
    pub fn is_local(&self, addr: &[u8; 4]) -> bool {
        u32::from_be_bytes(*addr) & u32::from_be_bytes(self.local_netmask)
            == u32::from_be_bytes(self.local_subnet)
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // What `aya::Pod` asks of each type below: #[repr(C)] (or packed), no implicit padding (sizes
    // asserted above), only integers and byte arrays inside, so every bit pattern is valid.

    // SAFETY: packed u32 and [u8; 4]: 8 bytes, no padding.
    unsafe impl aya::Pod for LpmKeyIpv4 {}
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
    // SAFETY: #[repr(C)] integers in an order that leaves no gap (size asserted).
    unsafe impl aya::Pod for AgentState {}
    // SAFETY: #[repr(C)] a byte, [u8; 7] and a u64: 16 bytes, no gap (asserted).
    unsafe impl aya::Pod for RouteInfo {}
    // SAFETY: #[repr(C)] u32, two [u8; 6] and a u64: 24 bytes, no gap (asserted).
    unsafe impl aya::Pod for Endpoint {}
    // SAFETY: #[repr(C)] [u8; 4], a byte and [u8; 3]: 8 bytes, alignment 1.
    unsafe impl aya::Pod for PeerSlot {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_index_covers_the_network_only_while_valid() {
        let cfg = DatapathConfig {
            flags: ROUTE_INDEX_VALID,
            index_net: [10, 244, 0, 0],
            index_netmask: [255, 255, 0, 0],
            index_shift: 8,
            ..Default::default()
        };
        assert_eq!(cfg.route_index(&[10, 244, 2, 7]), Some(2));
        assert_eq!(cfg.route_index(&[10, 244, 255, 255]), Some(255));
        assert_eq!(cfg.route_index(&[10, 245, 0, 1]), None, "outside the network: the trie decides");
        assert_eq!(DatapathConfig { flags: 0, ..cfg }.route_index(&[10, 244, 2, 7]), None, "not valid");
        let wide =
            DatapathConfig { index_net: [10, 0, 0, 0], index_netmask: [255, 0, 0, 0], index_shift: 6, ..cfg };
        assert_eq!(wide.route_index(&[10, 0, 1, 64]), Some(5), "/26 subnets of a /8");
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
        let endpoint = Endpoint { ifindex: u32::MAX, dmac: mac, smac, resolved_at: u64::MAX };
        let bytes: std::vec::Vec<u8> = endpoint.mac_words().iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(bytes, [mac, smac].concat());
    }
}
