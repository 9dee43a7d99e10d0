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
    outer::Fill,
    stats::Outcome,
    wire::{ETH_LEN, UDP_ENCAP_LEN},
};

use super::{FIXED_GSO, room_failed, write_outer};
use crate::ptr;

/// Where the inner TTL, protocol and header checksum sit: one word.
const TTL_WORD: usize = ETH_LEN + 8;

#[inline(always)]
pub fn encapsulate(
    ctx: &TcContext,
    cfg: &DatapathConfig,
    route: &RemoteSubnet,
    tos: u8,
) -> Result<(), Outcome> {
    let ttl_word = ptr::tc_read_u32(ctx, TTL_WORD).ok_or(Outcome::DropEncapFailed)?;
    if ttl_word & 0xff <= 1 {
        return Err(Outcome::DropTtlExceeded);
    }
    ptr::tc_write_u32s(ctx, TTL_WORD, [csum::decrement_ttl_word(ttl_word)])
        .ok_or(Outcome::DropEncapFailed)?;

    let fill = Fill { peer_ip: route.peer_ip(), ip_len: ctx.len() as usize - ETH_LEN, tos };
    let flags = FIXED_GSO | BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 as u64 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP as u64;
    ctx.adjust_room(UDP_ENCAP_LEN as i32, BPF_ADJ_ROOM_MAC, flags).map_err(room_failed)?;
    write_outer::<UDP_ENCAP_LEN>(ctx, &cfg.outer().udp.udp(&fill))
}
