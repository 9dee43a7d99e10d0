//! Encapsulation: one module per wire format, plus the hand-off to the underlay.

pub mod gre;
pub mod udp;
pub mod vxlan;

use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_REDIRECT, bpf_redir_neigh},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use xnet_common::{
    maps::DatapathConfig,
    packet::{Header, Packet},
    stats::Outcome,
    wire::{self, ETH_LEN, IPPROTO_UDP, IPV4_LEN, Ipv4Hdr, UdpHdr},
};

use crate::ptr;

const IPPROTO_TCP: u8 = 6;

const AF_INET: u32 = 2;

/// `BPF_F_ADJ_ROOM_ENCAP_L2(len)`: the inner L2 header length, in the flags' top byte.
pub const fn encap_l2(len: usize) -> u64 {
    ((len as u64) & 0xff) << 56
}

/// Flags shared by every encapsulation: keep the inner MSS of GSO packets (the overlay MTU already
/// leaves room for the outer headers), so the kernel segments them as tunnel packets on the way out.
pub const FIXED_GSO: u64 = BPF_F_ADJ_ROOM_FIXED_GSO as u64;

/// Refuses a packet that would not fit the underlay MTU with `overhead` more bytes, unless it is a
/// GSO packet (segmented to fit later).
#[inline(always)]
pub fn check_fits(ctx: &TcContext, cfg: &DatapathConfig, overhead: usize) -> Result<(), Outcome> {
    let gso_segs = crate::ptr::gso_segs(ctx);
    let ip_len = ctx.len() as usize - ETH_LEN;
    if gso_segs <= 1 && (ip_len + overhead) as u32 > cfg.underlay_mtu {
        return Err(Outcome::DropTooBig);
    }
    Ok(())
}

/// The flow hash, for UDP source ports: the one the kernel already has (a TCP socket's), or one of
/// our own from the inner addresses and ports. Never the flow dissector (`bpf_get_hash_recalc`):
/// that costs more than the rest of the encapsulation together.
#[inline(always)]
pub fn flow_hash(ctx: &TcContext) -> u32 {
    let hash = ptr::skb_hash(ctx);
    if hash != 0 {
        return hash;
    }
    let pkt = ptr::TcPacket(ctx);
    let Some(ip) = pkt.header::<Ipv4Hdr>(ETH_LEN) else {
        return 0;
    };
    let has_ports = ip.version_ihl == 0x45
        && ip.flags_frag() & 0x1fff == 0
        && (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP);
    // TCP and UDP both start with the two ports.
    let ports = match pkt.header::<UdpHdr>(ETH_LEN + IPV4_LEN) {
        Some(l4) if has_ports => {
            u32::from_be_bytes([l4.src_port[0], l4.src_port[1], l4.dst_port[0], l4.dst_port[1]])
        }
        _ => 0,
    };
    wire::flow_hash(ip.src, ip.dst, ip.protocol, ports)
}

/// Writes the outer headers right after the Ethernet header.
#[inline(always)]
pub fn write_outer<T: Header + Copy>(ctx: &TcContext, outer: &T) -> Result<(), Outcome> {
    write_at(ctx, ETH_LEN, outer)
}

/// Writes a header at `offset`: directly when it lies in the linear data (always, for headers that
/// `bpf_skb_adjust_room` just made room for), else through the helper.
#[inline(always)]
pub fn write_at<T: Header + Copy>(ctx: &TcContext, offset: usize, value: &T) -> Result<(), Outcome> {
    if ptr::tc_write(ctx, offset, *value).is_some() {
        return Ok(());
    }
    ctx.store(offset, value, 0).map_err(|_| Outcome::DropEncapFailed)
}

/// Sends the packet out of the underlay interface. The kernel routes the outer destination (or
/// sends to `next_hop`, the peer itself, for the direct backend) and fills in the Ethernet
/// addresses from its neighbour table.
#[inline(always)]
pub fn redirect_to_underlay(cfg: &DatapathConfig, next_hop: Option<[u8; 4]>) -> Result<i32, Outcome> {
    let ret = match next_hop {
        // SAFETY: a null params pointer with length 0 asks the kernel to do the FIB lookup itself.
        None => unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, core::ptr::null_mut(), 0, 0) },
        Some(ip) => {
            // SAFETY: bpf_redir_neigh is plain data; zero is valid before we fill it.
            let mut nh: bpf_redir_neigh = unsafe { core::mem::zeroed() };
            nh.nh_family = AF_INET;
            nh.__bindgen_anon_1.ipv4_nh = u32::from_ne_bytes(ip);
            let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
            // SAFETY: `nh` is a valid bpf_redir_neigh of the size passed, alive for the call.
            unsafe { bpf_redirect_neigh(cfg.underlay_ifindex, &mut nh, size, 0) }
        }
    };
    if ret == TC_ACT_REDIRECT as i64 { Ok(ret as i32) } else { Err(Outcome::DropRedirectFailed) }
}
