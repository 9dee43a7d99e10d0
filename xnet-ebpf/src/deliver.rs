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
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect_peer},
    programs::TcContext,
};
use xnet_common::{csum, maps::Endpoint, wire::ETH_LEN};

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

/// The inner IPv4 header up to its destination, as five little-endian words: version and TOS;
/// identification and fragment field; TTL, protocol and checksum; source; destination.
type Ipv4Words = [u32; 5];

/// Redirects the (already decapsulated) packet, addressed into the local subnet of `netmask`
/// (network order), into its container when the kernel can tell where that is: from ENDPOINTS
/// while the address's entry is for it and younger than `ENDPOINT_MAX_AGE_NS` (the programs age
/// the entries themselves, so an entry outlives neither its container nor a stopped agent by more
/// than that), else from the kernel's tables (and the answer is remembered).
#[inline(always)]
pub fn to_container(ctx: &TcContext, netmask: [u8; 4]) -> Delivery {
    let Some(ip) = ptr::tc_read_words::<5>(ctx, ETH_LEN) else {
        return Delivery::ToStack;
    };
    if ip[2] & 0xff <= 1 {
        return Delivery::ToStack;
    }
    let dst = ip[4].to_le_bytes();
    // The address's offset in the subnet; past the array's end (a subnet larger than it) the
    // lookup finds nothing and every packet asks the kernel.
    let index = u32::from_be_bytes(dst) & !u32::from_be_bytes(netmask);
    let now = crate::clock::coarse_ns();
    // Copied out at once: the entry is rewritten in place by other packets and the agent.
    let cached = ENDPOINTS.get(index).copied().filter(|e| e.is_for(&dst));
    let endpoint = match cached {
        Some(e) if !e.is_stale(now) => e,
        // Unknown, or resolved too long ago: ask the kernel again (and overwrite the entry).
        _ => match resolve(ctx, &ip, now) {
            Some(e) => {
                // Past the array's end the write fails: the next packet asks again.
                let _ = ENDPOINTS.set(index, e, 0);
                e
            }
            None => {
                // The container is gone (or not resolvable now): its old entry goes too.
                if cached.is_some() {
                    let _ = ENDPOINTS.set(index, Endpoint::default(), 0);
                }
                return Delivery::ToStack;
            }
        },
    };
    rewrite_and_redirect(ctx, &endpoint, ip[2])
}

/// Asks the kernel where the inner destination is: the bridge port behind which it sits and the
/// MACs to use; `None` when the stack should handle the packet. Reads only.
#[inline(always)]
fn resolve(ctx: &TcContext, ip: &Ipv4Words, now: u64) -> Option<Endpoint> {
    // SAFETY: bpf_fib_lookup is plain data (integers and unions of integers); zero is valid.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = (ip[2] >> 8) as u8;
    // tot_len stays 0: the kernel then checks the skb itself against the egress MTU, which is right
    // for GSO packets (their IP length is the whole super-packet's, or 0 above 64 KB).
    fib.__bindgen_anon_2.tos = (ip[0] >> 8) as u8;
    fib.__bindgen_anon_3.ipv4_src = ip[3];
    fib.__bindgen_anon_4.ipv4_dst = ip[4];
    fib.ifindex = ptr::ingress_ifindex(ctx);
    // SAFETY: `fib` is a valid, writable bpf_fib_lookup of the size passed; ctx.skb.skb is our skb.
    let ret = unsafe { fib_lookup(ctx.skb.skb.cast(), &raw mut fib, size_of::<bpf_fib_lookup>() as i32, 0) };
    if ret != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        return None;
    }
    // SAFETY: the value is copied out at once (see decap::is_peer on concurrent updates).
    let port = unsafe { LOCAL_PORTS.get(fib.dmac) }.copied()?;
    Some(Endpoint::new(ip[4].to_le_bytes(), port.ifindex(), fib.dmac, fib.smac, now))
}

/// Writes the endpoint's MACs and the decremented TTL (RFC 1812, checksum patched to match), then
/// redirects to the container's veth. `ttl_word`: the inner header's TTL, protocol and checksum.
#[inline(always)]
fn rewrite_and_redirect(ctx: &TcContext, endpoint: &Endpoint, ttl_word: u32) -> Delivery {
    let rewritten = ptr::tc_write_u32s(ctx, 0, endpoint.mac_words())
        .and_then(|()| ptr::tc_write_u32s(ctx, ETH_LEN + 8, [csum::decrement_ttl_word(ttl_word)]));
    if rewritten.is_none() {
        return Delivery::Failed;
    }
    // SAFETY: plain helper call; redirects to the ingress of the veth peer of `ifindex`.
    let ret = unsafe { bpf_redirect_peer(endpoint.ifindex(), 0) };
    if ret == TC_ACT_REDIRECT as i64 { Delivery::Redirected(ret as i32) } else { Delivery::Failed }
}
