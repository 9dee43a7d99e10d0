//! The answer to a container packet too big for the tunnel: ICMP "fragmentation needed" with the
//! overlay MTU, built in the packet's own buffer and sent back out of the interface the packet came
//! in on (the container's veth, or the bridge, which forwards it to the container by its MAC). See
//! `xnet_common::icmp`.

use core::hint::cold_path;

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_ktime_get_ns, bpf_redirect, bpf_skb_change_tail},
    programs::TcContext,
};
use xnet_common::{
    icmp::{self, FRAG_NEEDED_FRAME_LEN, QUOTED_LEN},
    maps::DatapathConfig,
    stats::Outcome,
    wire::ETH_LEN,
};

use crate::{ICMP_LIMIT, ptr};

/// Whether the packet, `overhead` bytes longer, would exceed the underlay MTU and is not a GSO
/// packet (segmented to fit later).
#[inline(always)]
pub fn too_big(ctx: &TcContext, cfg: &DatapathConfig, overhead: usize) -> bool {
    let ip_len = ctx.len() as usize - ETH_LEN;
    // The length first: gso_segs is a few dependent loads away (in the skb's shared info).
    (ip_len + overhead) as u32 > cfg.underlay_mtu() && ptr::gso_segs(ctx) <= 1
}

/// Turns a packet too big for the tunnel (`overhead` bytes of outer headers) into its answer and
/// sends it back to the container; the outcome to count and the tc action. A packet that may not be
/// answered, or an answer over the rate limit, is dropped.
#[inline(never)]
pub fn answer_too_big(ctx: &TcContext, cfg: &DatapathConfig, overhead: usize) -> (Outcome, i32) {
    cold_path();
    match answer(ctx, cfg, overhead) {
        Ok(action) => (Outcome::DropTooBigAnswered, action),
        Err(outcome) => (outcome, aya_ebpf::bindings::TC_ACT_SHOT),
    }
}

fn answer(ctx: &TcContext, cfg: &DatapathConfig, overhead: usize) -> Result<i32, Outcome> {
    let words = ptr::tc_read_words::<{ QUOTED_LEN / 4 }>(ctx, ETH_LEN).ok_or(Outcome::DropTooBig)?;
    let macs = ptr::tc_read_words::<3>(ctx, 0).ok_or(Outcome::DropTooBig)?;
    let mut quoted = [0u8; QUOTED_LEN];
    for (i, w) in words.iter().enumerate() {
        quoted[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    if !icmp::answerable(&quoted) {
        return Err(Outcome::DropTooBig);
    }
    let bucket = ICMP_LIMIT.get_ptr_mut(0).ok_or(Outcome::DropTooBigRateLimited)?;
    // SAFETY: plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot of a per-CPU array; programs do not migrate while they run, so
    // nothing else writes it meanwhile.
    if !unsafe { &mut *bucket }.take(now) {
        return Err(Outcome::DropTooBigRateLimited);
    }
    let mtu = cfg.underlay_mtu().saturating_sub(overhead as u32) as u16;
    let reply = icmp::frag_needed_words(&quoted, gateway_of(cfg), mtu);
    // The frame's MACs swapped: back to the sender, from the address it sent to.
    let mut mac = [0u8; 12];
    for (i, w) in macs.iter().enumerate() {
        mac[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
    }
    let swapped = [
        u32::from_le_bytes([mac[6], mac[7], mac[8], mac[9]]),
        u32::from_le_bytes([mac[10], mac[11], mac[0], mac[1]]),
        u32::from_le_bytes([mac[2], mac[3], mac[4], mac[5]]),
    ];
    // SAFETY: ctx.skb.skb is the __sk_buff this program was called with.
    let cut = unsafe { bpf_skb_change_tail(ctx.skb.skb, FRAG_NEEDED_FRAME_LEN as u32, 0) };
    if cut != 0 {
        return Err(Outcome::DropTooBig);
    }
    ptr::tc_write_u32s(ctx, 0, swapped).ok_or(Outcome::DropTooBig)?;
    ptr::tc_write_u32s(ctx, ETH_LEN, reply).ok_or(Outcome::DropTooBig)?;
    // SAFETY: plain helper call: out of the interface the packet arrived on.
    let ret = unsafe { bpf_redirect(ptr::ifindex(ctx), 0) };
    if ret == TC_ACT_REDIRECT as i64 { Ok(ret as i32) } else { Err(Outcome::DropRedirectFailed) }
}

/// The answer's source: the first address of this host's container subnet, the gateway Docker
/// (`--bip=$XNET_SUBNET`) and CNI's host-local give the containers.
#[inline(always)]
fn gateway_of(cfg: &DatapathConfig) -> [u8; 4] {
    (u32::from_be_bytes(cfg.local_subnet()) | 1).to_be_bytes()
}
