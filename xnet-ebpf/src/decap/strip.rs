//! Removing the outer headers of any tunnel, at tc and at XDP. Both leave the same bytes: the outer
//! Ethernet addresses, then the inner IPv4 packet.

use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_DECAP_L3_IPV4, BPF_F_ADJ_ROOM_FIXED_GSO, bpf_adj_room_mode},
    helpers::bpf_xdp_adjust_head,
    programs::{TcContext, XdpContext},
};
use xnet_common::{packet::Packet, wire::EthHdr};

use crate::ptr;

/// tc: the kernel removes `len` bytes after the MAC header and fixes the skb's header offsets.
/// FIXED_GSO keeps a GRO'd packet's segment size: the inner MSS does not change.
#[inline(always)]
pub fn tc(ctx: &TcContext, len: usize) -> Result<(), ()> {
    let flags = BPF_F_ADJ_ROOM_FIXED_GSO as u64 | BPF_F_ADJ_ROOM_DECAP_L3_IPV4 as u64;
    ctx.adjust_room(-(len as i32), bpf_adj_room_mode::BPF_ADJ_ROOM_MAC, flags).map_err(|_| ())
}

/// XDP: copy the outer Ethernet header to just before the inner IPv4 header, then move the packet
/// start there. `len` is one of the tunnels' constant lengths (at most 50).
#[inline(always)]
pub fn xdp(ctx: &XdpContext, len: usize) -> Result<(), ()> {
    let outer = *ptr::XdpPacket(ctx).header::<EthHdr>(0).ok_or(())?;
    ptr::xdp_write(ctx, len, outer).ok_or(())?;
    // SAFETY: ctx.ctx is the xdp_md this program was called with.
    let ret = unsafe { bpf_xdp_adjust_head(ctx.ctx, len as i32) };
    if ret == 0 { Ok(()) } else { Err(()) }
}
