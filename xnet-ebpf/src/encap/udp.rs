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
    maps::{DatapathConfig, RemoteSubnet},
    packet::Packet,
    stats::Outcome,
    wire::{ETH_LEN, InnerInfo, Ipv4Hdr, UDP_ENCAP_LEN, udp_outer},
};

use super::{FIXED_GSO, check_fits};
use crate::ptr;

const TTL_OFFSET: usize = ETH_LEN + 8;
const IP_CSUM_OFFSET: usize = ETH_LEN + 10;

#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    route: &RemoteSubnet,
    tos: u8,
) -> Result<(), Outcome> {
    check_fits(ctx, cfg, UDP_ENCAP_LEN)?;
    let ip = *ptr::TcPacket(ctx).header::<Ipv4Hdr>(ETH_LEN).ok_or(Outcome::DropEncapFailed)?;
    if ip.ttl <= 1 {
        return Err(Outcome::DropTtlExceeded);
    }
    let old = u16::from_be_bytes([ip.ttl, ip.protocol]);
    let new = u16::from_be_bytes([ip.ttl - 1, ip.protocol]);
    ctx.l3_csum_replace(IP_CSUM_OFFSET, old.to_be() as u64, new.to_be() as u64, 2)
        .map_err(|_| Outcome::DropEncapFailed)?;
    ctx.store(TTL_OFFSET, &(ip.ttl - 1), 0).map_err(|_| Outcome::DropEncapFailed)?;

    let inner = InnerInfo { ip_len: ctx.len() as usize - ETH_LEN, tos, flow_hash: 0 };
    let outer = udp_outer(cfg.local_ip, route.peer_ip, cfg.udp_port(), &inner);
    let flags = FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64;
    ctx.adjust_room(UDP_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags).map_err(|_| Outcome::DropEncapFailed)?;
    ctx.store(ETH_LEN, &outer, 0).map_err(|_| Outcome::DropEncapFailed)
}
