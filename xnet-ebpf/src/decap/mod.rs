//! Decapsulation, written once for XDP and tc: [`run`] classifies with the shared decision and
//! asks the context to remove the outer headers.

mod strip;

use aya_ebpf::btf_maps::lpm_trie::Key;
use aya_ebpf::{
    EbpfContext,
    helpers::bpf_xdp_load_bytes,
    programs::{TcContext, XdpContext},
};
use xnet_common::{
    decap::{self, DecapDecision, HEADERS_LEN},
    maps::{DatapathConfig, SlotState, peer_slot},
    packet::{Packet, headers_to_pull},
    stats::Outcome,
    wire::ETH_LEN,
};

use crate::{CONFIG, PEER_SLOTS, PEERS, UNTUNNELLED_FROM, ptr};

/// What decapsulation needs from a program type.
pub trait IngressContext: EbpfContext {
    type View<'a>: Packet
    where
        Self: 'a;
    fn view(&self) -> Self::View<'_>;
    /// Brings the first [`HEADERS_LEN`] bytes into the linear area if they are not there (a NIC
    /// that splits headers from payload), where the program type can.
    fn pull_headers(&self);
    /// Removes `len` bytes right after the Ethernet header, keeping the outer Ethernet addresses
    /// (they name this host, so the stack accepts the frame as its own).
    fn strip_after_eth(&self, len: usize) -> Result<(), ()>;
}

impl IngressContext for TcContext {
    type View<'a> = ptr::TcPacket<'a>;
    fn view(&self) -> Self::View<'_> {
        ptr::TcPacket(self)
    }
    #[inline(always)]
    fn pull_headers(&self) {
        if let Some(n) = headers_to_pull(self.len() as usize, ptr::tc_linear_len(self), HEADERS_LEN) {
            // On failure the headers stay short: classify drops the packet as truncated.
            let _ = self.pull_data(n as u32);
        }
    }
    #[inline(always)]
    fn strip_after_eth(&self, len: usize) -> Result<(), ()> {
        strip::tc(self, len)
    }
}

impl IngressContext for XdpContext {
    type View<'a> = ptr::XdpPacket<'a>;
    fn view(&self) -> Self::View<'_> {
        ptr::XdpPacket(self)
    }
    /// XDP has no helper for it (see [`judge_split`]).
    #[inline(always)]
    fn pull_headers(&self) {}
    #[inline(always)]
    fn strip_after_eth(&self, len: usize) -> Result<(), ()> {
        strip::xdp(self, len)
    }
}

/// Whether `src` is a known peer: one array read, and a PEERS lookup only for a slot that several
/// peers share.
#[inline(always)]
fn is_peer(src: &[u8; 4]) -> bool {
    let Some(slot) = PEER_SLOTS.get(peer_slot(src)) else {
        return false;
    };
    match slot.state() {
        SlotState::Peer => slot.ip() == *src,
        // SAFETY: only whether the entry exists is read; a concurrent update by the agent can at
        // worst make this one packet see the old or new peer set.
        SlotState::Shared => unsafe { PEERS.get(src) }.is_some(),
        SlotState::Empty => false,
    }
}

/// Whether the source of the untunnelled IPv4 packet `ctx` lies in a network the config allows to
/// reach containers directly (`untunnelled_from`).
#[inline(always)]
fn untunnelled_allowed<C: IngressContext>(ctx: &C) -> bool {
    // The IPv4 source address, bytes 12 to 15 of the header.
    let Some([src]) = ctx.view().words::<1>(ETH_LEN + 12) else {
        return false;
    };
    UNTUNNELLED_FROM.get(&Key::new(32, src.to_le_bytes())).is_some()
}

/// Decapsulates `ctx` if it is tunnelled traffic for us, by `cfg` (the packet's copy of CONFIG;
/// none: not configured, everything passes); returns what happened.
#[inline(always)]
pub fn run<C: IngressContext>(ctx: &C, cfg: Option<&DatapathConfig>) -> Outcome {
    let Some(cfg) = cfg else {
        return Outcome::Passed;
    };
    ctx.pull_headers();
    // The routes egress takes: the owner of an inner source, or of an untunnelled packet's source.
    let route = |addr: &[u8; 4]| crate::route_of(Some(cfg), addr);
    let decision = decap::classify(&ctx.view(), cfg, is_peer, route);
    match decision {
        DecapDecision::Pass => Outcome::Passed,
        DecapDecision::Drop(Outcome::DropUntunnelledNotDirectPeer) if untunnelled_allowed(ctx) => {
            Outcome::Passed
        }
        DecapDecision::Drop(reason) => reason,
        DecapDecision::Decap(tunnel) => match ctx.strip_after_eth(tunnel.strip_len()) {
            Ok(()) => tunnel.outcome(),
            Err(()) => Outcome::DropDecapFailed,
        },
    }
}

/// What [`run`] would decide for an XDP frame whose first buffer holds less than its first
/// [`HEADERS_LEN`] bytes (`len`: the whole frame's length), judged from a copy of them: passed or
/// dropped alike, but tunnel packets for a container are dropped as not linear, since the outer
/// headers cannot be stripped across buffers.
#[inline(never)]
pub fn judge_split(ctx: &XdpContext, len: usize) -> Outcome {
    let Some(cfg) = CONFIG.get(0).copied() else {
        return Outcome::Passed;
    };
    let cfg = &cfg;
    let n = if len < HEADERS_LEN { len } else { HEADERS_LEN };
    let mut copy = [0u8; HEADERS_LEN];
    // SAFETY: ctx.ctx is this program's xdp_md; `copy` is writable for HEADERS_LEN >= n bytes.
    let read = unsafe { bpf_xdp_load_bytes(ctx.ctx, 0, copy.as_mut_ptr().cast(), n as u32) };
    if read != 0 {
        return Outcome::DropTruncated;
    }
    let route = |addr: &[u8; 4]| crate::route_of(Some(cfg), addr);
    match decap::classify(&copy[..n], cfg, is_peer, route) {
        DecapDecision::Pass => Outcome::Passed,
        DecapDecision::Drop(reason) => reason,
        DecapDecision::Decap(_) => Outcome::DropHeadersNotLinear,
    }
}
