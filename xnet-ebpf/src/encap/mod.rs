//! Encapsulation: one module per wire format, plus the hand-off to the underlay.

pub mod gre;
pub mod udp;
pub mod vxlan;

use core::hint::cold_path;

use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_REDIRECT, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use xnet_common::{
    maps::{Backend, DatapathConfig},
    outer::TEMPLATE_WORDS,
    stats::Outcome,
    wire::{
        self, ETH_LEN, GRE_ENCAP_LEN, GRE_KEYED_ENCAP_LEN, IPPROTO_UDP, IPV4_FRAG_MF_LE, IPV4_FRAG_OFFSET_LE,
        UDP_ENCAP_LEN, VXLAN_ENCAP_LEN,
    },
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

/// `bpf_skb_adjust_room` failed: rare, laid out away from the packet's path.
#[inline(always)]
pub fn room_failed<E>(_: E) -> Outcome {
    cold_path();
    Outcome::DropEncapFailed
}

/// The bytes of outer headers `backend` adds (the keyed GRE header when CONFIG says GRE is keyed).
#[inline(always)]
pub fn overhead(backend: Backend, cfg: &DatapathConfig) -> usize {
    match backend {
        Backend::Vxlan => VXLAN_ENCAP_LEN,
        Backend::Udp => UDP_ENCAP_LEN,
        Backend::Gre if cfg.outer().gre.len as usize == GRE_KEYED_ENCAP_LEN => GRE_KEYED_ENCAP_LEN,
        Backend::Gre => GRE_ENCAP_LEN,
        Backend::Direct => 0,
    }
}

/// The flow hash, for UDP source ports: the one the kernel already has (a TCP socket's), or one of
/// our own from the inner addresses and ports, read from the inner IPv4 header at `at`. Never the
/// flow dissector (`bpf_get_hash_recalc`): that costs more than the rest of the encapsulation
/// together.
#[inline(always)]
pub fn flow_hash(ctx: &TcContext, at: usize) -> u32 {
    let hash = ptr::skb_hash(ctx);
    if hash != 0 {
        return hash;
    }
    // The IPv4 header as words (version and TOS, fragment field, protocol, source, destination)
    // and the four bytes after it: the ports, if it has them. One bounds check for all six.
    let (w0, w1, w2, src, dst, after) = match ptr::tc_read_words::<6>(ctx, at) {
        Some([w0, w1, w2, src, dst, after]) => (w0, w1, w2, src, dst, after),
        // Too short for ports: hash the addresses alone.
        None => {
            cold_path();
            return match ptr::tc_read_words::<5>(ctx, at) {
                Some([_, _, w2, src, dst]) => wire::flow_hash(src, dst, (w2 >> 8) as u8, 0),
                None => 0,
            };
        }
    };
    let protocol = (w2 >> 8) as u8;
    // Version 4 without options, not a fragment (offset and MF clear), TCP or UDP: then the ports
    // follow.
    let has_ports = w0 & 0xff == 0x45
        && (w1 >> 16) & (IPV4_FRAG_OFFSET_LE | IPV4_FRAG_MF_LE) == 0
        && (protocol == IPPROTO_TCP || protocol == IPPROTO_UDP);
    wire::flow_hash(src, dst, protocol, if has_ports { after } else { 0 })
}

/// Writes `LEN` bytes of outer headers (a filled template) right after the Ethernet header, into
/// the room `bpf_skb_adjust_room` just made: always linear data, so the bounds check only
/// satisfies the verifier.
#[inline(always)]
pub fn write_outer<const LEN: usize>(ctx: &TcContext, outer: &[u64; TEMPLATE_WORDS]) -> Result<(), Outcome> {
    ptr::tc_write_words::<LEN>(ctx, ETH_LEN, outer).ok_or_else(|| {
        cold_path();
        Outcome::DropEncapFailed
    })
}

/// Sends the packet out of the underlay interface. The kernel routes the outer destination (or
/// sends to `next_hop`, the peer itself, for the direct backend) and fills in the Ethernet
/// addresses from its neighbour table.
#[inline(always)]
pub fn redirect_to_underlay(cfg: &DatapathConfig, next_hop: Option<[u8; 4]>) -> Result<i32, Outcome> {
    let ret = match next_hop {
        // SAFETY: a null params pointer with length 0 asks the kernel to do the FIB lookup itself.
        None => unsafe { bpf_redirect_neigh(cfg.underlay_ifindex(), core::ptr::null_mut(), 0, 0) },
        Some(ip) => {
            // Every byte set (the verifier wants the helper's input initialised), by plain stores
            // rather than a zeroing call: the IPv4 next hop is the first word of the address union.
            let mut nh = bpf_redir_neigh {
                nh_family: AF_INET,
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 {
                    ipv6_nh: [u32::from_ne_bytes(ip), 0, 0, 0],
                },
            };
            let size = size_of::<bpf_redir_neigh>() as i32;
            // SAFETY: `nh` is a valid bpf_redir_neigh of the size passed, alive for the call.
            unsafe { bpf_redirect_neigh(cfg.underlay_ifindex(), &raw mut nh, size, 0) }
        }
    };
    if ret == TC_ACT_REDIRECT as i64 {
        Ok(ret as i32)
    } else {
        cold_path();
        Err(Outcome::DropRedirectFailed)
    }
}
