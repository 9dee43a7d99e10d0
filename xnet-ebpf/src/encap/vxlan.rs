//! VXLAN encapsulation (RFC 7348) of an IPv4 frame at tc.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::bpf_get_hash_recalc,
    programs::TcContext,
};
use xnet_common::{
    maps::{DatapathConfig, RemoteSubnet},
    stats::Outcome,
    wire::{ETH_LEN, InnerInfo, VXLAN_ENCAP_LEN, VxlanLocal, VxlanRemote, vxlan_outer},
};

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner L2 header length, in the flags' top byte.
const fn encap_l2(len: usize) -> u64 {
    ((len as u64) & 0xff) << 56
}

/// Inserts outer IPv4/UDP/VXLAN and the inner Ethernet header after the frame's Ethernet header.
/// The kernel is told the layout, so a GSO packet stays whole and is segmented as a UDP tunnel
/// packet on its way out; FIXED_GSO keeps the inner MSS, which the overlay MTU already leaves room
/// for.
#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    route: &RemoteSubnet,
    tos: u8,
) -> Result<(), Outcome> {
    let frame_len = ctx.len() as usize;
    // SAFETY: ctx.skb.skb is the valid __sk_buff this program was called with.
    let (gso_segs, flow_hash) = unsafe { ((*ctx.skb.skb).gso_segs, bpf_get_hash_recalc(ctx.skb.skb)) };
    let ip_len = frame_len - ETH_LEN;
    if gso_segs <= 1 && (ip_len + VXLAN_ENCAP_LEN) as u32 > cfg.underlay_mtu {
        return Err(Outcome::DropTooBig);
    }
    let local = VxlanLocal {
        ip: cfg.local_ip,
        vtep_mac: cfg.vtep_mac,
        port: cfg.vxlan_port(),
        vni: u32::from_be_bytes(cfg.vxlan_vni) >> 8,
    };
    let remote = VxlanRemote { ip: route.peer_ip, vtep_mac: route.vtep_mac };
    let outer = vxlan_outer(&local, &remote, &InnerInfo { ip_len, tos, flow_hash });

    let flags = BPF_F_ADJ_ROOM_FIXED_GSO as u64
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
        | encap_l2(ETH_LEN);
    ctx.adjust_room(VXLAN_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags).map_err(|_| Outcome::DropEncapFailed)?;
    ctx.store(ETH_LEN, &outer, 0).map_err(|_| Outcome::DropEncapFailed)
}
