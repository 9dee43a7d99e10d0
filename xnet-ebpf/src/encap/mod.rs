//! Encapsulation: one module per wire format, plus the hand-off to the underlay.

pub mod gre;
pub mod udp;
pub mod vxlan;

use aya_ebpf::{
    bindings::{BPF_F_ADJ_ROOM_FIXED_GSO, TC_ACT_REDIRECT, bpf_redir_neigh},
    helpers::bpf_redirect_neigh,
    programs::TcContext,
};
use xnet_common::{maps::DatapathConfig, stats::Outcome, wire::ETH_LEN};

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

/// The flow hash, for UDP source ports.
#[inline(always)]
pub fn flow_hash(ctx: &TcContext) -> u32 {
    // SAFETY: ctx.skb.skb is the valid __sk_buff this program was called with.
    unsafe { aya_ebpf::helpers::bpf_get_hash_recalc(ctx.skb.skb) }
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
