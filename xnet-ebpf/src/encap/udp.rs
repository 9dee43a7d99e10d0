//! flannel's udp framing: the raw inner IPv4 packet as the payload of UDP from port 8285 to port
//! 8285 (configurable), no extra header. Like flannel's proxy, the sender decrements the inner TTL
//! (patching the header checksum) and discards the packet when it reaches zero.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    programs::TcContext,
};
use xnet_common::{
    csum,
    maps::{DatapathConfig, RemoteSubnet},
    packet::Packet,
    stats::Outcome,
    wire::{ETH_LEN, InnerInfo, Ipv4Hdr, UDP_ENCAP_LEN, udp_outer},
};

use super::{FIXED_GSO, check_fits, write_outer};
use crate::ptr;

#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    route: &RemoteSubnet,
    tos: u8,
) -> Result<(), Outcome> {
    check_fits(ctx, cfg, UDP_ENCAP_LEN)?;
    let mut ip = *ptr::TcPacket(ctx).header::<Ipv4Hdr>(ETH_LEN).ok_or(Outcome::DropEncapFailed)?;
    if ip.ttl <= 1 {
        return Err(Outcome::DropTtlExceeded);
    }
    csum::decrement_ttl(&mut ip);
    ptr::tc_write(ctx, ETH_LEN, ip).ok_or(Outcome::DropEncapFailed)?;

    let inner = InnerInfo { ip_len: ctx.len() as usize - ETH_LEN, tos, flow_hash: 0 };
    let outer = udp_outer(cfg.local_ip, route.peer_ip, cfg.udp_port(), &inner);
    let flags = FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64;
    ctx.adjust_room(UDP_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags).map_err(|_| Outcome::DropEncapFailed)?;
    write_outer(ctx, &outer)
}
