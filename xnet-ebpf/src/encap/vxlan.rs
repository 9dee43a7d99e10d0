//! VXLAN encapsulation (RFC 7348) of an IPv4 frame at tc.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    programs::TcContext,
};
use xnet_common::{
    maps::{DatapathConfig, RemoteSubnet},
    outer::Fill,
    stats::Outcome,
    wire::{ETH_LEN, VXLAN_ENCAP_LEN},
};

use super::{FIXED_GSO, encap_l2, flow_hash, room_failed, write_outer};

/// Inserts outer IPv4/UDP/VXLAN and the inner Ethernet header after the frame's Ethernet header.
/// The kernel is told the layout, so a GSO packet stays whole and is segmented as a UDP tunnel
/// packet on its way out.
#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    route: &RemoteSubnet,
    tos: u8,
) -> Result<(), Outcome> {
    let fill = Fill { peer_ip: route.peer_ip(), ip_len: ctx.len() as usize - ETH_LEN, tos };
    let flags = FIXED_GSO
        | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64
        | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64
        | BPF_F_ADJ_ROOM_ENCAP_L2_ETH as u64
        | encap_l2(ETH_LEN);
    ctx.adjust_room(VXLAN_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags).map_err(room_failed)?;
    // The hash and the template after the helper call: the inner header (now behind the room) is
    // read with the bounds check the stores need anyway, and the words go straight from registers
    // to the packet instead of living across the call.
    let hash = flow_hash(ctx, ETH_LEN + VXLAN_ENCAP_LEN);
    write_outer::<VXLAN_ENCAP_LEN>(ctx, &cfg.outer().vxlan.vxlan(&fill, route.vtep_mac_word(), hash))
}
