//! The only place that turns packet memory into references. Every access is bounds-checked against
//! `data_end` right before it, in the shape the verifier accepts.

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use xnet_common::packet::{Header, Packet};

/// Bounds-checked pointer to a `T` at `offset` in `[start, end)`.
#[inline(always)]
fn at<T: Header>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// A tc (`__sk_buff`) packet seen through [`Packet`].
pub struct TcPacket<'a>(pub &'a TcContext);

/// An XDP packet seen through [`Packet`].
pub struct XdpPacket<'a>(pub &'a XdpContext);

impl Packet for TcPacket<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.len() as usize
    }

    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let p = at::<T>(self.0.data(), self.0.data_end(), offset)?;
        // SAFETY: `at` checked that the whole T lies inside the linear packet data, which stays
        // valid and unmoved while this program holds `&self` (no helper that changes packet layout
        // can run while the borrow lives); `T: Header` has alignment 1 and no invalid bit patterns.
        Some(unsafe { &*p })
    }
}

impl Packet for XdpPacket<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.0.data_end() - self.0.data()
    }

    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let p = at::<T>(self.0.data(), self.0.data_end(), offset)?;
        // SAFETY: as for TcPacket: bounds checked against data_end, alignment 1, any bit pattern.
        Some(unsafe { &*p })
    }
}

/// Writes `value` at `offset` of an XDP packet; `None` when the packet is too short.
#[inline(always)]
pub fn xdp_write<T: Header>(ctx: &XdpContext, offset: usize, value: T) -> Option<()> {
    let p = at::<T>(ctx.data(), ctx.data_end(), offset)?;
    // SAFETY: `at` checked bounds against data_end; alignment 1 makes an unaligned write fine, and
    // no reference into the packet is alive across this write (callers copy headers out first).
    unsafe { p.write(value) };
    Some(())
}

/// Writes `value` at `offset` of a tc packet's linear data; `None` when that is too short (the
/// caller falls back to `bpf_skb_store_bytes`).
#[inline(always)]
pub fn tc_write<T: Header>(ctx: &TcContext, offset: usize, value: T) -> Option<()> {
    let p = at::<T>(ctx.data(), ctx.data_end(), offset)?;
    // SAFETY: as for xdp_write. tc programs that write packet data get a verifier-inserted prologue
    // that makes the skb head private first.
    unsafe { p.write(value) };
    Some(())
}

/// The skb's flow hash if the kernel computed one already (a socket's or the NIC's), else 0.
#[inline(always)]
pub fn skb_hash(ctx: &TcContext) -> u32 {
    // SAFETY: as for gso_segs.
    unsafe { (*ctx.skb.skb).hash }
}

/// `gso_segs` of the skb: more than 1 for a GSO super-packet (segmented later, so it may exceed the
/// MTU here).
#[inline(always)]
pub fn gso_segs(ctx: &TcContext) -> u32 {
    // SAFETY: ctx.skb.skb is the __sk_buff this program was called with, valid for the whole run.
    unsafe { (*ctx.skb.skb).gso_segs }
}

/// The interface the packet arrived on.
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: as for gso_segs.
    unsafe { (*ctx.skb.skb).ingress_ifindex }
}
