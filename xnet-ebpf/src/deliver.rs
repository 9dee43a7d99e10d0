//! Delivering a decapsulated packet straight into the container it is for.
//!
//! Handing it to the host stack works, but there it is forwarded through the container bridge, and
//! a decapsulated GSO packet still carries its tunnel GSO state (kernel 6.18 has no
//! `bpf_skb_adjust_room` flag to clear it): the bridge, which has no tunnel offloads, segments it in
//! software. Going straight to the container's veth skips the bridge and that cost. Whatever this
//! cannot resolve (no neighbour entry yet, unknown bridge port, TTL running out) goes to the stack,
//! which also answers with the right ICMP.

use core::mem::size_of;

use aya_ebpf::{
    bindings::{BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_REDIRECT, bpf_fib_lookup},
    helpers::{bpf_fib_lookup as fib_lookup, bpf_ktime_get_coarse_ns, bpf_redirect_peer},
    programs::TcContext,
};
use xnet_common::{
    csum,
    maps::{ENDPOINT_MAX_AGE_NS, Endpoint},
    packet::Packet,
    wire::{ETH_LEN, EthHdr, Ipv4Hdr},
};

use crate::{ENDPOINTS, LOCAL_PORTS, ptr};

const AF_INET: u8 = 2;

/// Where a decapsulated packet went.
pub enum Delivery {
    /// Redirected into the container; the tc action to return.
    Redirected(i32),
    /// Left unchanged for the host stack.
    ToStack,
    /// Rewritten for the container but not redirected: must be dropped (and counted).
    Failed,
}

/// Redirects the (already decapsulated) packet into its container when the kernel can tell where
/// that is: from ENDPOINTS when it was resolved recently, else from the kernel's tables (and the
/// answer is remembered).
#[inline(always)]
pub fn to_container(ctx: &TcContext) -> Delivery {
    let Some(ip) = ptr::TcPacket(ctx).header::<Ipv4Hdr>(ETH_LEN).copied() else {
        return Delivery::ToStack;
    };
    if ip.ttl <= 1 {
        return Delivery::ToStack;
    }
    // SAFETY: plain helper call without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: the value is copied out at once (see decap::is_peer on concurrent updates).
    let cached = unsafe { ENDPOINTS.get(ip.dst) }.copied();
    let endpoint = match cached {
        Some(e) if now.wrapping_sub(e.resolved_at) < ENDPOINT_MAX_AGE_NS => e,
        _ => match resolve(ctx, &ip, now) {
            Some(e) => {
                // A full map evicts its least recently used entry; a failed insert only costs the
                // next packet another lookup.
                let _ = ENDPOINTS.insert(ip.dst, e, 0);
                e
            }
            None => return Delivery::ToStack,
        },
    };
    let eth = EthHdr { dst: endpoint.dmac, src: endpoint.smac, ethertype: 0x0800u16.to_be_bytes() };
    rewrite_and_redirect(ctx, (endpoint.ifindex, eth, ip))
}

/// Asks the kernel where the inner destination `ip.dst` is: the bridge port behind which it sits
/// and the MACs to use; `None` when the stack should handle the packet. Reads only.
#[inline(always)]
fn resolve(ctx: &TcContext, ip: &Ipv4Hdr, now: u64) -> Option<Endpoint> {
    // SAFETY: bpf_fib_lookup is plain data (integers and unions of integers); zero is valid.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = ip.protocol;
    // tot_len stays 0: the kernel then checks the skb itself against the egress MTU, which is right
    // for GSO packets (their IP length is the whole super-packet's).
    fib.__bindgen_anon_2.tos = ip.tos;
    fib.__bindgen_anon_3.ipv4_src = u32::from_ne_bytes(ip.src);
    fib.__bindgen_anon_4.ipv4_dst = u32::from_ne_bytes(ip.dst);
    fib.ifindex = ptr::ingress_ifindex(ctx);
    // SAFETY: `fib` is a valid, writable bpf_fib_lookup of the size passed; ctx.skb.skb is our skb.
    let ret = unsafe { fib_lookup(ctx.skb.skb.cast(), &mut fib, size_of::<bpf_fib_lookup>() as i32, 0) };
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    // SAFETY: the value is copied out at once (see decap::is_peer on concurrent updates).
    let port = unsafe { LOCAL_PORTS.get(fib.dmac) }.copied()?;
    Some(Endpoint { ifindex: port.ifindex, dmac: fib.dmac, smac: fib.smac, resolved_at: now })
}

#[inline(always)]
fn rewrite_and_redirect(ctx: &TcContext, (ifindex, eth, mut ip): (u32, EthHdr, Ipv4Hdr)) -> Delivery {
    // Forwarding decrements the TTL (RFC 1812), with the header checksum patched to match. Both
    // headers were just read from the linear data, so they are written back the same way.
    csum::decrement_ttl(&mut ip);
    if ptr::tc_write(ctx, 0, eth).is_none() || ptr::tc_write(ctx, ETH_LEN, ip).is_none() {
        return Delivery::Failed;
    }
    // SAFETY: plain helper call; redirects to the ingress of the veth peer of `ifindex`.
    let ret = unsafe { bpf_redirect_peer(ifindex, 0) };
    if ret == TC_ACT_REDIRECT as i64 { Delivery::Redirected(ret as i32) } else { Delivery::Failed }
}
