//! GRE encapsulation (RFC 2784, IPv4 payload 0x0800) with the optional RFC 2890 key.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_GRE, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    programs::TcContext,
};
use xnet_common::{
    maps::{DatapathConfig, RemoteSubnet},
    stats::Outcome,
    wire::{ETH_LEN, GRE_ENCAP_LEN, GRE_KEYED_ENCAP_LEN, GreOuter, IPV4_LEN, InnerInfo, gre_outer},
};

use super::{FIXED_GSO, check_fits, write_at, write_outer};

#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    route: &RemoteSubnet,
    tos: u8,
) -> Result<(), Outcome> {
    let key = cfg.gre_key();
    let inner = InnerInfo { ip_len: ctx.len() as usize - ETH_LEN, tos, flow_hash: 0 };
    let (outer, _) = gre_outer(cfg.local_ip, route.peer_ip, key, &inner);
    let flags = FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64 | BPF_F_ADJ_ROOM_ENCAP_L4_GRE as u64;
    // Two arms with constant lengths, so every write is of a fixed size.
    if key.is_some() {
        check_fits(ctx, cfg, GRE_KEYED_ENCAP_LEN)?;
        ctx.adjust_room(GRE_KEYED_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags)
            .map_err(|_| Outcome::DropEncapFailed)?;
        write_outer::<GreOuter>(ctx, &outer)
    } else {
        check_fits(ctx, cfg, GRE_ENCAP_LEN)?;
        ctx.adjust_room(GRE_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags)
            .map_err(|_| Outcome::DropEncapFailed)?;
        // No key: the IPv4 and GRE headers only.
        write_outer(ctx, &outer.ip)?;
        write_at(ctx, ETH_LEN + IPV4_LEN, &outer.gre)
    }
}
