//! xnet's kernel programs: maps and entry points only. The packet decisions live in `xnet-common`
//! (shared with host tests); this crate applies them to live packets.
#![no_std]
#![no_main]
// Packet stores of whole words (see `ptr::tc_write_words`): BPF inline assembly is unstable.
#![feature(asm_experimental_arch)]

mod clock;
mod decap;
mod deliver;
mod encap;
mod icmp;
mod ptr;
mod stats;

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, lpm_trie::Key},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
};
use deliver::Delivery;
use xnet_common::{
    egress::{self, EgressDecision},
    icmp::{QUOTED_LEN, TokenBucket},
    maps::{
        AgentState, Backend, CONTAINER_IFACES_LEN, ContainerIface, Counter, DatapathConfig, ENDPOINTS_MAX,
        Endpoint, LOCAL_PORTS_MAX, LocalPort, LocalPortsLimit, PEER_SLOTS_LEN, PEERS_MAX, Peer, PeerSlot,
        REMOTE_SUBNETS_MAX, ROUTE_INDEX_LEN, RemoteSubnet, RouteEntry, UNTUNNELLED_FROM_MAX,
    },
    packet::headers_to_pull,
    stats::{Direction, Outcome, STATS_ENTRIES},
    wire::{ETH_LEN, mac_bytes},
};

/// Flags of the hash maps the agent writes and the programs at most read: their entries are
/// allocated as the agent inserts them, instead of all `max_entries` up front (preallocated, these
/// maps locked about 180 MiB on every host whatever its peer count). Inserts are the agent's, so
/// their allocation cost is off the packet path. Only the bucket array (16 bytes an entry) is still
/// allocated up front. (The LPM trie never preallocates; arrays and LRU hashes always do.)
const NO_PREALLOC: usize = BPF_F_NO_PREALLOC as usize;

/// Remote subnet -> the host that owns it (longest prefix match on the inner destination), with
/// the agent's record of the route beside it (`xnet routes`; the programs read only the route).
#[btf_map]
static REMOTE_SUBNETS: LpmTrie<[u8; 4], RouteEntry, { REMOTE_SUBNETS_MAX as usize }> = LpmTrie::new();

/// Peer public IPv4 -> peer. Only these may send us tunnelled traffic.
#[btf_map]
static PEERS: HashMap<[u8; 4], Peer, { PEERS_MAX as usize }, NO_PREALLOC> = HashMap::new();

/// This host's side of the tunnels; entry 0.
#[btf_map]
static CONFIG: Array<DatapathConfig, 1> = Array::new();

/// The rate limit of the ICMP answers to packets too big for the tunnel (see `icmp`).
#[btf_map]
static ICMP_LIMIT: PerCpuArray<TokenBucket, 1> = PerCpuArray::new();

/// Packets and bytes by direction and outcome (see `xnet_common::stats`).
#[btf_map]
static STATS: PerCpuArray<Counter, { STATS_ENTRIES as usize }> = PerCpuArray::new();

/// Container MAC -> the bridge port it sits behind (filled by the agent from the bridge FDB).
#[btf_map]
static LOCAL_PORTS: HashMap<[u8; 6], LocalPort, { LOCAL_PORTS_MAX as usize }, NO_PREALLOC> = HashMap::new();

/// REMOTE_SUBNETS as an array by subnet number (see `xnet_common::maps::ROUTE_INDEX`).
#[btf_map]
static ROUTE_INDEX: Array<RemoteSubnet, { ROUTE_INDEX_LEN as usize }> = Array::new();

/// The peer check as an array read (see `xnet_common::maps::PEER_SLOTS`).
#[btf_map]
static PEER_SLOTS: Array<PeerSlot, { PEER_SLOTS_LEN as usize }> = Array::new();

/// Where decapsulated packets for each address of the local subnet go, by the address's offset in
/// the subnet (a cache of bpf_fib_lookup and LOCAL_PORTS; see `deliver`). The agent creates it
/// with one entry per address of its subnet, at most this many.
#[btf_map]
static ENDPOINTS: Array<Endpoint, { ENDPOINTS_MAX as usize }> = Array::new();

/// Source networks whose untunnelled traffic may reach local containers (see
/// `xnet_common::maps::UNTUNNELLED_FROM`); consulted only for packets that would otherwise be
/// dropped as `untunnelled_not_direct_peer`.
#[btf_map]
static UNTUNNELLED_FROM: LpmTrie<[u8; 4], u8, { UNTUNNELLED_FROM_MAX as usize }> = LpmTrie::new();

/// The agent's own record of this datapath (`xnet status`); not read by the programs, declared here
/// so it is created, typed and pinned with the rest.
#[btf_map]
static AGENT: Array<AgentState, 1> = Array::new();

/// The configured container interfaces and whether each is attached (`xnet status`); not read by
/// the programs.
#[btf_map]
static CONTAINER_IFACES: Array<ContainerIface, { CONTAINER_IFACES_LEN as usize }> = Array::new();

/// Bridge ports over the agent's cap of container MACs (`xnet status`); not read by the programs.
#[btf_map]
static LOCAL_PORTS_LIMIT: Array<LocalPortsLimit, 1> = Array::new();

/// The route to the remote subnet holding `addr`, as egress sends to it: ROUTE_INDEX inside the
/// network it covers while CONFIG says it is valid, else the LPM trie.
#[inline(always)]
fn route_of(cfg: Option<&DatapathConfig>, addr: &[u8; 4]) -> Option<&'static RemoteSubnet> {
    match cfg.and_then(|c| c.route_index(addr)) {
        Some(i) => ROUTE_INDEX.get(i).filter(|r| !r.is_empty()),
        None => REMOTE_SUBNETS.get(&Key::new(32, *addr)).map(RouteEntry::route),
    }
}

/// tc, where container traffic enters the host: the ingress hook of each container bridge port
/// (straight from the container's veth, before the bridge), and of the bridge itself for ports the
/// agent has not seen yet. Encapsulates packets for remote subnets and redirects them to the
/// underlay interface.
#[classifier]
pub fn xnet_tc_egress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    let (outcome, action) = match egress_packet(&ctx) {
        Ok(sent) => sent,
        Err(drop) => (drop, TC_ACT_SHOT),
    };
    stats::count(Direction::Egress, outcome, len);
    action
}

fn egress_packet(ctx: &TcContext) -> Result<(Outcome, i32), Outcome> {
    // What classify reads, and what a too-big answer quotes, into the linear area. A failed pull
    // leaves the packet short there: classify then passes it to the kernel, as any runt.
    if let Some(n) = headers_to_pull(ctx.len() as usize, ptr::tc_linear_len(ctx), ETH_LEN + QUOTED_LEN) {
        let _ = ctx.pull_data(n as u32);
    }
    let pkt = ptr::TcPacket(ctx);
    // A copy, not a reference into the array map: the agent's write is copied in place while
    // programs run, so a reference could show a field of the new CONFIG and the next of the old,
    // or change across the helper calls below. The packet works from one snapshot.
    let snapshot = CONFIG.get(0).copied();
    let cfg = snapshot.as_ref();
    let gateway = cfg.map(DatapathConfig::gateway_mac_word).unwrap_or_default();
    let decision = egress::classify(
        &pkt,
        // The route copied too (its peer address is read before bpf_skb_adjust_room, its VTEP MAC
        // after).
        |dst| route_of(cfg, dst).copied(),
        |mac| {
            // SAFETY: only whether an entry exists is read; no reference into the map is kept.
            mac != gateway && unsafe { LOCAL_PORTS.get(mac_bytes(mac)) }.is_some()
        },
        // Without CONFIG the packet is dropped below as not configured.
        |src| cfg.is_none_or(|c| c.is_local(src)),
    );
    let (route, tos) = match decision {
        // An address the agent never writes: the route was being removed (zeroed) as this packet
        // read it. Never sent to 0.0.0.0.
        EgressDecision::Encapsulate { route, .. } if route.peer_ip() == [0; 4] => {
            return Err(Outcome::DropRouteWithdrawn);
        }
        EgressDecision::Encapsulate { route, tos } => (route, tos),
        EgressDecision::Pass => return Ok((Outcome::Passed, TC_ACT_OK)),
        EgressDecision::Drop(reason) => return Err(reason),
    };
    let cfg = cfg.ok_or(Outcome::DropNotConfigured)?;
    if cfg.underlay_ifindex() == 0 {
        return Err(Outcome::DropNotConfigured);
    }
    // A backend number this program does not know (a newer agent?): never leak the packet.
    let backend = route.backend().ok_or(Outcome::DropEncapFailed)?;
    let overhead = encap::overhead(backend, cfg);
    if icmp::too_big(ctx, cfg, overhead) {
        return Ok(icmp::answer_too_big(ctx, cfg, overhead));
    }
    let sent = match backend {
        Backend::Vxlan => {
            encap::vxlan::encapsulate(ctx, cfg, &route, tos)?;
            Outcome::EncapVxlan
        }
        Backend::Udp => {
            encap::udp::encapsulate(ctx, cfg, &route, tos)?;
            Outcome::EncapUdp
        }
        Backend::Gre => {
            encap::gre::encapsulate(ctx, cfg, &route, tos)?;
            Outcome::EncapGre
        }
        Backend::Direct => {
            let action = encap::redirect_to_underlay(cfg, Some(route.peer_ip()))?;
            return Ok((Outcome::Direct, action));
        }
    };
    let action = encap::redirect_to_underlay(cfg, None)?;
    Ok((sent, action))
}

/// tc ingress on the underlay interface: decapsulates tunnelled traffic from known peers.
#[classifier]
pub fn xnet_tc_ingress(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // A copy: one snapshot of CONFIG for the whole packet (see `egress_packet`).
    let snapshot = CONFIG.get(0).copied();
    let (outcome, action) = match decap::run(&ctx, snapshot.as_ref()) {
        // Straight into the container when the kernel knows where it is; else the host stack.
        decapsulated @ (Outcome::DecapVxlan | Outcome::DecapUdp | Outcome::DecapGre) => {
            // Decapsulated packets are for the local subnet: the snapshot exists.
            let netmask = snapshot.map(|c| c.local_netmask()).unwrap_or_default();
            match deliver::to_container(&ctx, netmask) {
                Delivery::Redirected(action) => (decapsulated, action),
                Delivery::ToStack => (decapsulated, TC_ACT_OK),
                Delivery::Failed => (Outcome::DropRedirectFailed, TC_ACT_SHOT),
            }
        }
        drop if drop.is_drop() => (drop, TC_ACT_SHOT),
        passed => (passed, TC_ACT_OK),
    };
    stats::count(Direction::Ingress, outcome, len);
    action
}

/// XDP on the underlay interface: the same decapsulation as `xnet_tc_ingress`, before the kernel
/// allocates an skb (for NICs that run XDP natively). Multi-buffer aware (`xdp.frags`), so it
/// attaches to jumbo-MTU interfaces too: the headers it reads and strips are in the first buffer.
#[xdp(frags)]
pub fn xnet_xdp_ingress(ctx: XdpContext) -> u32 {
    // SAFETY: ctx.ctx is the xdp_md this program was called with. The whole frame, all buffers.
    let len = unsafe { aya_ebpf::helpers::bpf_xdp_get_buff_len(ctx.ctx) } as u32;
    // A NIC may leave part of the headers in a later buffer, where XDP cannot read them directly
    // (no helper pulls them in; tc ingress can): judged from a copy, never decapsulated.
    let linear = ctx.data_end() - ctx.data();
    let outcome = if headers_to_pull(len as usize, linear, xnet_common::decap::HEADERS_LEN).is_some() {
        decap::judge_split(&ctx, len as usize)
    } else {
        // A copy: one snapshot of CONFIG for the whole packet (see `egress_packet`).
        decap::run(&ctx, CONFIG.get(0).copied().as_ref())
    };
    stats::count(Direction::Ingress, outcome, len);
    if outcome.is_drop() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
