//! The only place that turns packet memory into references. Every access is bounds-checked against
//! `data_end` right before it, in the shape the verifier accepts.

use core::{arch::asm, mem::size_of};

use aya_ebpf::programs::{TcContext, XdpContext};
use xnet_common::{
    outer::TEMPLATE_WORDS,
    packet::{Header, Packet},
};

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

    #[inline(always)]
    fn words<const N: usize>(&self, offset: usize) -> Option<[u32; N]> {
        tc_read_words(self.0, offset)
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

    #[inline(always)]
    fn words<const N: usize>(&self, offset: usize) -> Option<[u32; N]> {
        read_words(self.0.data(), self.0.data_end(), offset)
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

/// The interface the program runs on (at tc ingress, the one the packet arrived on).
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: as for gso_segs.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// How many bytes of the packet are in the linear area, readable through `data`..`data_end`.
#[inline(always)]
pub fn tc_linear_len(ctx: &TcContext) -> usize {
    ctx.data_end() - ctx.data()
}

/// The interface the packet arrived on.
#[inline(always)]
pub fn ingress_ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: as for gso_segs.
    unsafe { (*ctx.skb.skb).ingress_ifindex }
}

/// Stores the first `LEN` bytes of `words` (little-endian: byte `i` is byte `i % 8` of word
/// `i / 8`, as [`xnet_common::outer`] builds them) at `offset` of a tc packet's linear data;
/// `None` when that is too short.
///
/// Eight bytes per instruction. Rust's unaligned writes (all a packet allows, its alignment being
/// unknown) reach the BPF backend as one store per byte, several hundred instructions for a VXLAN
/// header; these stores are spelled out instead. The verifier accepts unaligned packet access
/// where the CPU handles it (x86-64 and arm64 among them; elsewhere it refuses the program at load,
/// and says so).
#[inline(always)]
pub fn tc_write_words<const LEN: usize>(
    ctx: &TcContext,
    offset: usize,
    words: &[u64; TEMPLATE_WORDS],
) -> Option<()> {
    const { assert!(LEN <= TEMPLATE_WORDS * 8 && LEN.is_multiple_of(2)) };
    let p = at::<[u8; LEN]>(ctx.data(), ctx.data_end(), offset)? as usize;
    // SAFETY: `at` checked that all LEN bytes from `p` lie in the linear packet data, and each store
    // below stays inside them; no reference into the packet is alive across these writes. The
    // verifier sees these packet stores as any other and makes a cloned skb's head private first.
    unsafe {
        let mut i = 0;
        while i + 8 <= LEN {
            store::<8>(p, i, words[i / 8]);
            i += 8;
        }
        if i + 4 <= LEN {
            store::<4>(p, i, words[i / 8]);
            i += 4;
        }
        if i + 2 <= LEN {
            store::<2>(p, i, words[i / 8] >> (8 * (i % 8)));
        }
    }
    Some(())
}

/// Reads the `N` 4-byte words from `offset` of a tc packet's linear data, little-endian, one
/// instruction each (see [`tc_write_words`]); `None` when the packet is too short.
#[inline(always)]
pub fn tc_read_words<const N: usize>(ctx: &TcContext, offset: usize) -> Option<[u32; N]> {
    read_words(ctx.data(), ctx.data_end(), offset)
}

/// [`tc_read_words`] over the packet `[start, end)` of any program type.
#[inline(always)]
fn read_words<const N: usize>(start: usize, end: usize, offset: usize) -> Option<[u32; N]> {
    const { assert!(N <= 8, "load_u32 has arms for words 0 to 7") };
    let p = at::<[[u8; 4]; N]>(start, end, offset)? as usize;
    let mut words = [0u32; N];
    let mut i = 0;
    while i < N {
        // SAFETY: `at` checked that all N words lie in the linear packet data; reading changes
        // nothing.
        words[i] = unsafe { load_u32(p, i) };
        i += 1;
    }
    Some(words)
}

/// Reads the little-endian word `i` (0 to 7) from `p` in one instruction, the offset in the
/// instruction itself (an unrolled caller's constant `i` picks one arm).
///
/// # Safety
/// `p + 4 * i..p + 4 * i + 4` must be packet data the verifier has seen bounds-checked.
#[inline(always)]
unsafe fn load_u32(p: usize, i: usize) -> u32 {
    macro_rules! load {
        ($($k:literal)*) => {
            match i {
                $($k => {
                    let v: u64;
                    // SAFETY: the caller's contract.
                    unsafe {
                        asm!("{v} = *(u32 *)({p} + {off})", p = in(reg) p, off = const 4 * $k,
                            v = lateout(reg) v, options(pure, nostack, readonly))
                    };
                    v as u32
                })*
                _ => unreachable!(),
            }
        };
    }
    load!(0 1 2 3 4 5 6 7)
}

/// [`tc_read_words`] for one word.
#[inline(always)]
pub fn tc_read_u32(ctx: &TcContext, offset: usize) -> Option<u32> {
    tc_read_words::<1>(ctx, offset).map(|[w]| w)
}

/// Writes the low `N` (2, 4 or 8) bytes of `v` to address `p + off`, little-endian, in one
/// instruction, the offset (a multiple of 2 below 64; an unrolled caller's constant picks the arm)
/// in the instruction itself.
///
/// # Safety
/// `p + off..p + off + N` must be writable packet data the verifier has seen bounds-checked.
#[inline(always)]
unsafe fn store<const N: usize>(p: usize, off: usize, v: u64) {
    macro_rules! store {
        ($($k:literal)*) => {
            match off {
                $($k => {
                    // SAFETY: the caller's contract.
                    unsafe {
                        match N {
                            8 => asm!("*(u64 *)({p} + {off}) = {v}", p = in(reg) p, off = const $k,
                                v = in(reg) v, options(nostack)),
                            4 => asm!("*(u32 *)({p} + {off}) = {v}", p = in(reg) p, off = const $k,
                                v = in(reg) v, options(nostack)),
                            2 => asm!("*(u16 *)({p} + {off}) = {v}", p = in(reg) p, off = const $k,
                                v = in(reg) v, options(nostack)),
                            _ => unreachable!(),
                        }
                    }
                })*
                _ => unreachable!(),
            }
        };
    }
    store!(0 2 4 6 8 10 12 14 16 18 20 22 24 26 28 30 32 34 36 38 40 42 44 46 48 50 52 54 56 58 60 62)
}

/// Writes `N` little-endian 4-byte words from `offset` of a tc packet's linear data, one
/// instruction each; `None` when the packet is too short.
#[inline(always)]
pub fn tc_write_u32s<const N: usize>(ctx: &TcContext, offset: usize, words: [u32; N]) -> Option<()> {
    const { assert!(N <= 16, "store has arms for offsets below 64") };
    let p = at::<[[u8; 4]; N]>(ctx.data(), ctx.data_end(), offset)? as usize;
    let mut i = 0;
    while i < N {
        // SAFETY: `at` checked that all N words lie in the linear packet data.
        unsafe { store::<4>(p, 4 * i, words[i] as u64) };
        i += 1;
    }
    Some(())
}
