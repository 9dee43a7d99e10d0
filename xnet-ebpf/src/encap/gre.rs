//! GRE encapsulation (RFC 2784, IPv4 payload 0x0800) with the optional RFC 2890 key.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_GRE, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    programs::TcContext,
};
use xnet_common::{
    maps::{DatapathConfig, RemoteSubnet},
    outer::Fill,
    stats::Outcome,
    wire::{ETH_LEN, GRE_ENCAP_LEN, GRE_KEYED_ENCAP_LEN},
};

use super::{FIXED_GSO, room_failed, write_outer};

#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    route: &RemoteSubnet,
    tos: u8,
) -> Result<(), Outcome> {
    let fill = Fill { peer_ip: route.peer_ip(), ip_len: ctx.len() as usize - ETH_LEN, tos };
    let flags = FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64 | BPF_F_ADJ_ROOM_ENCAP_L4_GRE as u64;
    // Two arms with constant lengths, so every write is of a fixed size. The template's length
    // says whether it carries the key.
    if cfg.outer().gre.len as usize == GRE_KEYED_ENCAP_LEN {
        ctx.adjust_room(GRE_KEYED_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags).map_err(room_failed)?;
        write_outer::<GRE_KEYED_ENCAP_LEN>(ctx, &cfg.outer().gre.gre(&fill))
    } else {
        ctx.adjust_room(GRE_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags).map_err(room_failed)?;
        write_outer::<GRE_ENCAP_LEN>(ctx, &cfg.outer().gre.gre(&fill))
    }
}
