//! The ingress decision: which underlay packets are ours, and whether they may be delivered.

use crate::maps::{Backend, DatapathConfig, RemoteSubnet, USES_GRE, USES_UDP, USES_VXLAN};
use crate::packet::Packet;
use crate::stats::Outcome;
use crate::wire::{
    ETH_LEN, ETH_P_IPV4_LE, GRE_ENCAP_LEN, GRE_FLAG_C, GRE_FLAG_K, GRE_FLAG_S, GRE_KEYED_ENCAP_LEN,
    GRE_VERSION_MASK, IPPROTO_GRE, IPPROTO_UDP, IPV4_FRAG_MF_LE, IPV4_FRAG_OFFSET_LE, IPV4_LEN,
    UDP_ENCAP_LEN, UDP_LEN, VXLAN_ENCAP_LEN, VXLAN_FLAG_VNI, VXLAN_LEN,
};

/// Offsets in a frame with an outer IPv4 header without options.
pub const OUTER_L4_OFFSET: usize = ETH_LEN + IPV4_LEN;
pub const OUTER_UDP_OFFSET: usize = OUTER_L4_OFFSET;
pub const VXLAN_OFFSET: usize = OUTER_UDP_OFFSET + UDP_LEN;
pub const INNER_ETH_OFFSET: usize = VXLAN_OFFSET + VXLAN_LEN;
pub const INNER_IP_OFFSET: usize = INNER_ETH_OFFSET + ETH_LEN;
pub const GRE_KEY_OFFSET: usize = OUTER_L4_OFFSET + 4;
/// How far into a frame [`classify`] (and delivery after it) reads: the end of the inner IPv4
/// header of a VXLAN frame, the longest encapsulation. The tc program pulls this much into the
/// linear area first.
pub const HEADERS_LEN: usize = INNER_IP_OFFSET + IPV4_LEN;

/// The wire format of a tunnelled packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tunnel {
    Vxlan,
    /// flannel's udp framing.
    Udp,
    Gre,
    /// GRE with the RFC 2890 key.
    GreKeyed,
}

impl Tunnel {
    /// Bytes after the outer Ethernet header that decapsulation removes.
    pub const fn strip_len(self) -> usize {
        match self {
            Tunnel::Vxlan => VXLAN_ENCAP_LEN,
            Tunnel::Udp => UDP_ENCAP_LEN,
            Tunnel::Gre => GRE_ENCAP_LEN,
            Tunnel::GreKeyed => GRE_KEYED_ENCAP_LEN,
        }
    }

    /// The counter of a successful decapsulation.
    pub const fn outcome(self) -> Outcome {
        match self {
            Tunnel::Vxlan => Outcome::DecapVxlan,
            Tunnel::Udp => Outcome::DecapUdp,
            Tunnel::Gre | Tunnel::GreKeyed => Outcome::DecapGre,
        }
    }
}

/// What to do with a frame that arrived on the underlay interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapDecision {
    /// Not overlay traffic: untouched.
    Pass,
    /// Overlay traffic that must not be delivered, with the reason.
    Drop(Outcome),
    /// From a known peer for a local container: remove [`Tunnel::strip_len`] bytes after the outer
    /// Ethernet header and deliver.
    Decap(Tunnel),
}

/// Decides what happens to `pkt`. Every wire format this host uses ([`DatapathConfig::formats`]:
/// the ones it sends with, or may receive from its peers) is accepted at once, so a peer may send
/// with another of them than this host. A packet is a tunnel packet once it is IPv4 without
/// options, not a later fragment, and either UDP to the VXLAN or the flannel-udp port, or GRE
/// carrying IPv4, of a format in use. `is_peer` says whether an outer source address belongs to a
/// known peer; `route_of` finds the route egress would take to an address (its remote subnet
/// holds it), `None` outside every remote subnet.
///
/// A tunnel packet must be addressed to this host (the outer destination is
/// [`DatapathConfig::local_ip`]) and its inner source must lie in the subnet of the peer that sent
/// it: a peer cannot speak for another peer's containers, for this host's, or for addresses outside
/// the overlay.
///
/// Any other IPv4 packet addressed into this host's container subnet would be forwarded to the
/// container by the kernel, around every check above: it passes only from the subnet of a peer this
/// host reaches with the `direct` backend (whose containers send that way), and is dropped
/// otherwise. IPv4 to anywhere else, and what is not IPv4, passes untouched.
///
/// The headers are read as little-endian 4-byte words (one load each in the programs), so every
/// constant below is a field's wire bytes read that way: EtherType 0x0800 reads 0x0008, the GRE K
/// flag 0x2000 reads 0x0020, and so on.
#[inline(always)]
pub fn classify<'r, P, F, G>(pkt: &P, cfg: &DatapathConfig, is_peer: F, route_of: G) -> DecapDecision
where
    P: Packet + ?Sized,
    F: FnOnce(&[u8; 4]) -> bool,
    G: FnOnce(&[u8; 4]) -> Option<&'r RemoteSubnet>,
{
    // Bytes 10 to 33: the end of the source MAC and the EtherType, then the outer IPv4 header.
    let Some([ether, ip0, ip1, ip2, src, dst]) = pkt.words::<6>(ETH_LEN - 4) else {
        return DecapDecision::Pass;
    };
    if ether >> 16 != ETH_P_IPV4_LE {
        return DecapDecision::Pass;
    }
    let Some((tunnel, l4)) = tunnel_of(pkt, cfg, ip0, ip1, ip2) else {
        return untunnelled(cfg, src, dst, route_of);
    };
    let frag = ip1 >> 16;
    // From here on the packet is addressed to our tunnels. It has not met ip_rcv yet, so nobody has
    // checked its header.
    if !crate::csum::ipv4_header_words_valid([ip0, ip1, ip2, src, dst]) {
        return DecapDecision::Drop(Outcome::DropBadOuterChecksum);
    }
    if frag & (IPV4_FRAG_OFFSET_LE | IPV4_FRAG_MF_LE) != 0 {
        return DecapDecision::Drop(Outcome::DropOuterFragment);
    }
    // Tunnel packets for another address (a host routing for others, a promiscuous NIC) are not
    // this host's to open.
    if cfg.checks_outer_destination() && dst != u32::from_le_bytes(cfg.local_ip()) {
        return DecapDecision::Drop(Outcome::DropOuterNotLocal);
    }
    if !is_peer(&src.to_le_bytes()) {
        return DecapDecision::Drop(Outcome::DropUnknownPeer);
    }
    let inner_ip_offset = match tunnel {
        Tunnel::Vxlan => {
            let Some([flags, vni]) = pkt.words::<2>(VXLAN_OFFSET) else {
                return DecapDecision::Drop(Outcome::DropTruncated);
            };
            let want_vni = u32::from_le_bytes(cfg.vni_wire()) & 0x00ff_ffff;
            if flags & VXLAN_FLAG_VNI as u32 == 0 || vni & 0x00ff_ffff != want_vni {
                return DecapDecision::Drop(Outcome::DropBadVni);
            }
            // The inner Ethernet header's last word: the end of its source MAC, its EtherType.
            let Some([inner_ether]) = pkt.words::<1>(INNER_IP_OFFSET - 4) else {
                return DecapDecision::Drop(Outcome::DropTruncated);
            };
            if inner_ether >> 16 != ETH_P_IPV4_LE {
                return DecapDecision::Drop(Outcome::DropBadInnerProtocol);
            }
            INNER_IP_OFFSET
        }
        Tunnel::Udp => ETH_LEN + UDP_ENCAP_LEN,
        Tunnel::Gre | Tunnel::GreKeyed => {
            if l4 & (GRE_C | GRE_S | GRE_VERSION) != 0 {
                return DecapDecision::Drop(Outcome::DropBadGreHeader);
            }
            match (cfg.gre_key(), tunnel) {
                (None, Tunnel::Gre) => ETH_LEN + GRE_ENCAP_LEN,
                (Some(key), Tunnel::GreKeyed) => {
                    let Some([got]) = pkt.words::<1>(GRE_KEY_OFFSET) else {
                        return DecapDecision::Drop(Outcome::DropTruncated);
                    };
                    if got != u32::from_le_bytes(key.to_be_bytes()) {
                        return DecapDecision::Drop(Outcome::DropBadGreKey);
                    }
                    ETH_LEN + GRE_KEYED_ENCAP_LEN
                }
                _ => return DecapDecision::Drop(Outcome::DropBadGreKey),
            }
        }
    };
    let Some([inner0, _, _, inner_src, inner_dst]) = pkt.words::<5>(inner_ip_offset) else {
        return DecapDecision::Drop(Outcome::DropTruncated);
    };
    if inner0 & 0xf0 != 0x40 {
        return DecapDecision::Drop(Outcome::DropBadInnerProtocol);
    }
    if !cfg.is_local(&inner_dst.to_le_bytes()) {
        return DecapDecision::Drop(Outcome::DropInnerNotLocal);
    }
    // The sender's own containers only: not this host's subnet (whatever the routes say), and
    // otherwise the subnet whose route leads back to the outer source.
    let inner_src = inner_src.to_le_bytes();
    if cfg.is_local(&inner_src) || route_of(&inner_src).map(RemoteSubnet::peer_ip) != Some(src.to_le_bytes())
    {
        return DecapDecision::Drop(Outcome::DropInnerSourceNotPeer);
    }
    DecapDecision::Decap(tunnel)
}

/// The tunnel format of an IPv4 packet with header words `ip0` to `ip2`, and its transport
/// header's first word (UDP's ports, or GRE's flags and protocol); `None` when it is not a tunnel
/// packet of a format this host uses. Anything cut short before the transport header is not one.
#[inline(always)]
fn tunnel_of<P: Packet + ?Sized>(
    pkt: &P,
    cfg: &DatapathConfig,
    ip0: u32,
    ip1: u32,
    ip2: u32,
) -> Option<(Tunnel, u32)> {
    // Outer headers with IP options are not something xnet or the kernel's tunnels send.
    if ip0 & 0xff != 0x45 {
        return None;
    }
    // A later fragment carries no transport header: nothing says it is a tunnel's.
    if (ip1 >> 16) & IPV4_FRAG_OFFSET_LE != 0 {
        return None;
    }
    // A UDP header must be whole.
    let proto = (ip2 >> 8) as u8;
    let l4 = match proto {
        IPPROTO_UDP => pkt.words::<2>(OUTER_L4_OFFSET).map(|[w, _]| w),
        _ => pkt.words::<1>(OUTER_L4_OFFSET).map(|[w]| w),
    }?;
    let tunnel = match proto {
        IPPROTO_UDP => {
            let dst_port = l4 >> 16;
            if dst_port == u16::from_le_bytes(cfg.vxlan_port_wire()) as u32 && cfg.uses(USES_VXLAN) {
                Tunnel::Vxlan
            } else if dst_port == u16::from_le_bytes(cfg.udp_port_wire()) as u32 && cfg.uses(USES_UDP) {
                Tunnel::Udp
            } else {
                return None;
            }
        }
        // Other GRE payloads (Ethernet, ERSPAN, ...) belong to someone else.
        IPPROTO_GRE if l4 >> 16 == ETH_P_IPV4_LE && cfg.uses(USES_GRE) => {
            if l4 & GRE_K != 0 {
                Tunnel::GreKeyed
            } else {
                Tunnel::Gre
            }
        }
        _ => return None,
    };
    Some((tunnel, l4))
}

/// An IPv4 packet that is not a tunnel packet of ours, from `src` to `dst` (header words): passed,
/// unless it is addressed into this host's container subnet from anywhere but a `direct` peer's.
#[inline(always)]
fn untunnelled<'r, G>(cfg: &DatapathConfig, src: u32, dst: u32, route_of: G) -> DecapDecision
where
    G: FnOnce(&[u8; 4]) -> Option<&'r RemoteSubnet>,
{
    if !cfg.is_local(&dst.to_le_bytes()) || cfg.untunnelled_open() {
        return DecapDecision::Pass;
    }
    let src = src.to_le_bytes();
    if !cfg.is_local(&src) && route_of(&src).is_some_and(|r| r.backend() == Some(Backend::Direct)) {
        return DecapDecision::Pass;
    }
    DecapDecision::Drop(Outcome::DropUntunnelledNotDirectPeer)
}

/// GRE's flags and version (the header's first two bytes), read little-endian.
const GRE_K: u32 = GRE_FLAG_K.swap_bytes() as u32;
const GRE_C: u32 = GRE_FLAG_C.swap_bytes() as u32;
const GRE_S: u32 = GRE_FLAG_S.swap_bytes() as u32;
const GRE_VERSION: u32 = GRE_VERSION_MASK.swap_bytes() as u32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maps::{DatapathParams, Formats};
    use crate::wire::{InnerInfo, VxlanLocal, VxlanRemote, vxlan_outer};
    use std::vec::Vec;

    const PEER: [u8; 4] = [198, 18, 0, 2];
    const OTHER_PEER: [u8; 4] = [198, 18, 0, 3];
    /// Reached with the `direct` backend; owns 10.244.5.0/24.
    const DIRECT_PEER: [u8; 4] = [198, 18, 0, 5];
    static VIA_PEER: RemoteSubnet = RemoteSubnet::new(PEER, [2, 0, 0, 0, 0, 2], Backend::Vxlan);
    static VIA_OTHER_PEER: RemoteSubnet = RemoteSubnet::new(OTHER_PEER, [2, 0, 0, 0, 0, 3], Backend::Gre);
    static VIA_DIRECT_PEER: RemoteSubnet =
        RemoteSubnet::new(DIRECT_PEER, [2, 0, 0, 0, 0, 5], Backend::Direct);

    /// Every format in use (this host's backend and its peers' cover them all).
    fn cfg() -> DatapathConfig {
        cfg_using(Formats::ALL)
    }

    fn cfg_using(formats: Formats) -> DatapathConfig {
        DatapathConfig::new(&params(formats))
    }

    /// Host 198.18.0.1 with 10.244.1.0/24, VNI 1, the default ports, judging `formats`.
    fn params(formats: Formats) -> DatapathParams {
        DatapathParams {
            local_ip: [198, 18, 0, 1],
            local_subnet: [10, 244, 1, 0],
            local_netmask: [255, 255, 255, 0],
            vni: 1,
            vxlan_port: 8472,
            udp_port: 8285,
            local_ip_on_host: true,
            formats,
            ..Default::default()
        }
    }

    /// A VXLAN frame from PEER carrying an inner IPv4 packet from 10.244.2.2 (PEER's subnet) to
    /// `inner_dst`.
    fn vxlan_frame(vni: u32, port: u16, inner_dst: [u8; 4]) -> Vec<u8> {
        vxlan_frame_from([10, 244, 2, 2], vni, port, inner_dst)
    }

    /// A VXLAN frame from PEER carrying an inner IPv4 packet from `inner_src` to `inner_dst`.
    fn vxlan_frame_from(inner_src: [u8; 4], vni: u32, port: u16, inner_dst: [u8; 4]) -> Vec<u8> {
        let mut inner_ip = std::vec![0x45, 0, 0, 20, 0, 0, 0x40, 0, 64, 1, 0, 0];
        inner_ip.extend_from_slice(&inner_src);
        inner_ip.extend_from_slice(&inner_dst);
        let local = VxlanLocal { ip: PEER, vtep_mac: [2, 0, 0, 0, 0, 2], port, vni };
        let remote = VxlanRemote { ip: [198, 18, 0, 1], vtep_mac: [2, 0, 0, 0, 0, 1] };
        let outer = vxlan_outer(&local, &remote, &InnerInfo { ip_len: inner_ip.len(), tos: 0, flow_hash: 7 });
        let mut f = std::vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let p = (&raw const outer).cast::<u8>();
        // SAFETY: VxlanOuter is a Header (#[repr(C)], alignment 1, no padding) of VXLAN_ENCAP_LEN
        // bytes (asserted in wire), all initialised, and `outer` outlives the slice.
        f.extend_from_slice(unsafe { core::slice::from_raw_parts(p, VXLAN_ENCAP_LEN) });
        f.extend_from_slice(&inner_ip);
        f
    }

    fn known(ip: &[u8; 4]) -> bool {
        *ip == PEER || *ip == OTHER_PEER
    }

    /// The routes: 10.244.2.0/24 via PEER, 10.244.3.0/24 via OTHER_PEER, 10.244.5.0/24 direct to
    /// DIRECT_PEER; and, as a misconfigured agent might write, this host's own 10.244.1.0/24 via
    /// PEER.
    fn owner(ip: &[u8; 4]) -> Option<&'static RemoteSubnet> {
        match ip[..3] {
            [10, 244, 2] | [10, 244, 1] => Some(&VIA_PEER),
            [10, 244, 3] => Some(&VIA_OTHER_PEER),
            [10, 244, 5] => Some(&VIA_DIRECT_PEER),
            _ => None,
        }
    }

    /// A plain IPv4 frame (protocol `proto`, a few payload bytes: ports 12345 -> 80 for UDP) from
    /// `src` to `dst`.
    fn plain(src: [u8; 4], dst: [u8; 4], proto: u8) -> Vec<u8> {
        let mut f = std::vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, proto, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&[0x30, 0x39, 0x00, 0x50, 0, 8, 0, 0]); // ports 12345 -> 80
        f
    }

    #[test]
    fn good_vxlan_is_decapsulated() {
        let f = vxlan_frame(1, 8472, [10, 244, 1, 5]);
        assert_eq!(classify(&f[..], &cfg(), known, owner), DecapDecision::Decap(Tunnel::Vxlan));
    }

    #[test]
    fn drops_name_their_reason() {
        let c = cfg();
        let f = vxlan_frame(1, 8472, [10, 244, 1, 5]);
        assert_eq!(classify(&f[..], &c, |_| false, owner), DecapDecision::Drop(Outcome::DropUnknownPeer));
        let f = vxlan_frame(2, 8472, [10, 244, 1, 5]);
        assert_eq!(classify(&f[..], &c, known, owner), DecapDecision::Drop(Outcome::DropBadVni));
        let mut f = vxlan_frame(1, 8472, [10, 244, 1, 5]);
        f[VXLAN_OFFSET] = 0;
        assert_eq!(classify(&f[..], &c, known, owner), DecapDecision::Drop(Outcome::DropBadVni));
        let f = vxlan_frame(1, 8472, [10, 244, 3, 5]);
        assert_eq!(classify(&f[..], &c, known, owner), DecapDecision::Drop(Outcome::DropInnerNotLocal));
        let mut f = vxlan_frame(1, 8472, [10, 244, 1, 5]);
        f[INNER_ETH_OFFSET + 12] = 0x86;
        f[INNER_ETH_OFFSET + 13] = 0xdd;
        assert_eq!(classify(&f[..], &c, known, owner), DecapDecision::Drop(Outcome::DropBadInnerProtocol));
        let mut f = vxlan_frame(1, 8472, [10, 244, 1, 5]);
        f[ETH_LEN + 6] = 0x20; // MF, DF cleared: fix the checksum for the changed word
        let sum = u16::from_be_bytes([f[ETH_LEN + 10], f[ETH_LEN + 11]]) as u32 + 0x4000 + 0xffff - 0x2000;
        f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&crate::csum::fold(sum).to_be_bytes());
        assert_eq!(classify(&f[..], &c, known, owner), DecapDecision::Drop(Outcome::DropOuterFragment));
        let mut f = vxlan_frame(1, 8472, [10, 244, 1, 5]);
        f[ETH_LEN + 8] = 63; // TTL changed, checksum not
        assert_eq!(classify(&f[..], &c, known, owner), DecapDecision::Drop(Outcome::DropBadOuterChecksum));
    }

    /// `f` with its outer destination set to `dst`, the outer checksum kept right.
    fn to_outer_dst(mut f: Vec<u8>, dst: [u8; 4]) -> Vec<u8> {
        let at = ETH_LEN + 16;
        let mut sum = [f[ETH_LEN + 10], f[ETH_LEN + 11]];
        for i in [0, 2] {
            let old = u16::from_be_bytes([f[at + i], f[at + i + 1]]);
            sum = crate::csum::update(sum, old, u16::from_be_bytes([dst[i], dst[i + 1]]));
        }
        f[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&sum);
        f[at..at + 4].copy_from_slice(&dst);
        f
    }

    #[test]
    fn the_inner_source_must_belong_to_the_sender() {
        let c = cfg();
        let from = |src| vxlan_frame_from(src, 1, 8472, [10, 244, 1, 5]);
        assert_eq!(
            classify(&from([10, 244, 2, 200])[..], &c, known, owner),
            DecapDecision::Decap(Tunnel::Vxlan)
        );
        // Another peer's container, this host's own (even with a route saying PEER owns it), an
        // address outside the overlay, and the broadcast address.
        for src in [[10, 244, 3, 5], [10, 244, 1, 9], [192, 168, 0, 1], [255, 255, 255, 255]] {
            assert_eq!(
                classify(&from(src)[..], &c, known, owner),
                DecapDecision::Drop(Outcome::DropInnerSourceNotPeer),
                "inner source {src:?}"
            );
        }
        // The inner destination is judged first.
        let f = vxlan_frame_from([10, 244, 3, 5], 1, 8472, [10, 244, 3, 6]);
        assert_eq!(classify(&f[..], &c, known, owner), DecapDecision::Drop(Outcome::DropInnerNotLocal));
    }

    #[test]
    fn tunnel_packets_must_be_addressed_to_this_host() {
        let c = cfg();
        let f = to_outer_dst(vxlan_frame(1, 8472, [10, 244, 1, 5]), [198, 18, 0, 7]);
        assert_eq!(classify(&f[..], &c, known, owner), DecapDecision::Drop(Outcome::DropOuterNotLocal));
        // Whoever sent it.
        assert_eq!(classify(&f[..], &c, |_| false, owner), DecapDecision::Drop(Outcome::DropOuterNotLocal));
        // Behind a NAT (the public IP is not this host's): what arrives is addressed to a private
        // address, and that is fine.
        let nat = DatapathConfig::new(&DatapathParams {
            local_ip: [203, 0, 113, 1],
            local_subnet: [10, 244, 1, 0],
            local_netmask: [255, 255, 255, 0],
            vni: 1,
            vxlan_port: 8472,
            local_ip_on_host: false,
            formats: Formats::ALL,
            ..Default::default()
        });
        assert!(!nat.checks_outer_destination() && c.checks_outer_destination());
        assert_eq!(classify(&f[..], &nat, known, owner), DecapDecision::Decap(Tunnel::Vxlan));
        // Back to this host: delivered (the helper keeps the checksum right).
        let f = to_outer_dst(f, [198, 18, 0, 1]);
        assert_eq!(classify(&f[..], &c, known, owner), DecapDecision::Decap(Tunnel::Vxlan));
        // Not a tunnel packet of ours: passed, whatever its destination.
        let mut other_port = to_outer_dst(vxlan_frame(1, 4789, [10, 244, 1, 5]), [198, 18, 0, 7]);
        assert_eq!(classify(&other_port[..], &c, known, owner), DecapDecision::Pass);
        other_port[ETH_LEN + 9] = 6;
        assert_eq!(classify(&other_port[..], &c, known, owner), DecapDecision::Pass);
    }

    #[test]
    fn other_ports_and_protocols_are_not_ours() {
        let f = vxlan_frame(1, 4789, [10, 244, 1, 5]);
        assert_eq!(classify(&f[..], &cfg(), known, owner), DecapDecision::Pass);
        let mut tcp = vxlan_frame(1, 8472, [10, 244, 1, 5]);
        tcp[ETH_LEN + 9] = 6; // not ours whatever its checksum says
        assert_eq!(classify(&tcp[..], &cfg(), known, owner), DecapDecision::Pass);
    }

    #[test]
    fn truncation_at_every_header_boundary() {
        let f = vxlan_frame(1, 8472, [10, 244, 1, 5]);
        // Cut before we know the UDP port: not ours. Cut after: ours, truncated.
        for cut in [0, ETH_LEN, ETH_LEN + 10, OUTER_UDP_OFFSET, OUTER_UDP_OFFSET + 3] {
            assert_eq!(classify(&f[..cut], &cfg(), known, owner), DecapDecision::Pass, "cut at {cut}");
        }
        for cut in [VXLAN_OFFSET, INNER_ETH_OFFSET, INNER_IP_OFFSET, INNER_IP_OFFSET + 19] {
            assert_eq!(
                classify(&f[..cut], &cfg(), known, owner),
                DecapDecision::Drop(Outcome::DropTruncated),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn untunnelled_traffic_to_containers_only_from_direct_peers() {
        let c = cfg();
        let decide = |f: &Vec<u8>| classify(&f[..], &c, known, owner);
        let drop = DecapDecision::Drop(Outcome::DropUntunnelledNotDirectPeer);
        // A direct peer's container (or its host's overlay address) to a local container.
        for src in [[10, 244, 5, 7], [10, 244, 5, 0]] {
            assert_eq!(decide(&plain(src, [10, 244, 1, 5], 1)), DecapDecision::Pass, "from {src:?}");
        }
        // Anyone else: a stranger, a direct peer's own public address, a tunnel peer's container
        // (those come tunnelled), "this host's" containers, with any protocol; the bridge address
        // and the host's overlay address are in the subnet too.
        for src in [[192, 168, 0, 1], DIRECT_PEER, PEER, [10, 244, 2, 2], [10, 244, 3, 2], [10, 244, 1, 9]] {
            for dst in [[10, 244, 1, 5], [10, 244, 1, 1], [10, 244, 1, 0]] {
                for proto in [1, 6, 17, 47] {
                    assert_eq!(decide(&plain(src, dst, proto)), drop, "{src:?} -> {dst:?} proto {proto}");
                }
            }
        }
        // IP options, a later fragment, a header alone: still for a container.
        let mut options = plain([192, 168, 0, 1], [10, 244, 1, 5], 6);
        options[ETH_LEN] = 0x46;
        assert_eq!(decide(&options), drop);
        let mut later = plain([192, 168, 0, 1], [10, 244, 1, 5], 17);
        later[ETH_LEN + 6] = 0x00;
        later[ETH_LEN + 7] = 0x10;
        assert_eq!(decide(&later), drop);
        assert_eq!(decide(&plain([192, 168, 0, 1], [10, 244, 1, 5], 17)[..OUTER_L4_OFFSET].to_vec()), drop);
        // Elsewhere (this host, another host's containers, anywhere): untouched.
        for dst in [[198, 18, 0, 1], [10, 244, 2, 5], [10, 244, 5, 5], [8, 8, 8, 8], [255, 255, 255, 255]] {
            assert_eq!(decide(&plain([192, 168, 0, 1], dst, 6)), DecapDecision::Pass, "to {dst:?}");
        }
        // A tunnel packet addressed to a container is judged as a tunnel packet.
        let f = to_outer_dst(vxlan_frame(1, 8472, [10, 244, 1, 5]), [10, 244, 1, 7]);
        assert_eq!(decide(&f), DecapDecision::Drop(Outcome::DropOuterNotLocal));
        // `untunnelled = "any"`: routers may send to containers directly; tunnels are still judged.
        let open = DatapathConfig::new(&DatapathParams { untunnelled_open: true, ..params(Formats::ALL) });
        assert!(open.untunnelled_open() && !c.untunnelled_open());
        let from_router = plain([192, 168, 0, 1], [10, 244, 1, 5], 6);
        assert_eq!(classify(&from_router[..], &open, known, owner), DecapDecision::Pass);
        assert_eq!(classify(&f[..], &open, known, owner), DecapDecision::Drop(Outcome::DropOuterNotLocal));
    }

    #[test]
    fn formats_not_in_use_are_not_ours() {
        let vxlan = vxlan_frame(1, 8472, [10, 244, 1, 5]);
        let mut udp = vxlan.clone();
        udp[OUTER_UDP_OFFSET + 2..OUTER_UDP_OFFSET + 4].copy_from_slice(&8285u16.to_be_bytes());
        let mut gre = vxlan.clone();
        gre[ETH_LEN + 9] = 47; // the checksum is not looked at for a packet that is not ours
        gre[OUTER_L4_OFFSET..OUTER_L4_OFFSET + 4].copy_from_slice(&[0, 0, 0x08, 0x00]);
        // All in use: judged (here, from a stranger).
        let all = cfg();
        for f in [&vxlan, &udp] {
            assert_eq!(
                classify(&f[..], &all, |_| false, owner),
                DecapDecision::Drop(Outcome::DropUnknownPeer)
            );
        }
        assert_eq!(
            classify(&gre[..], &all, |_| false, owner),
            DecapDecision::Drop(Outcome::DropBadOuterChecksum)
        );
        // None in use: untouched, from peers and strangers alike.
        let none = cfg_using(Formats::default());
        for f in [&vxlan, &udp, &gre] {
            assert_eq!(classify(&f[..], &none, known, owner), DecapDecision::Pass);
            assert_eq!(classify(&f[..], &none, |_| false, owner), DecapDecision::Pass);
        }
        // Each format alone.
        let only = |vxlan, udp, gre| cfg_using(Formats { vxlan, udp, gre });
        assert_eq!(
            classify(&vxlan[..], &only(true, false, false), known, owner),
            DecapDecision::Decap(Tunnel::Vxlan)
        );
        assert_eq!(classify(&udp[..], &only(true, false, false), |_| false, owner), DecapDecision::Pass);
        assert_eq!(classify(&gre[..], &only(true, false, false), |_| false, owner), DecapDecision::Pass);
        assert_eq!(classify(&vxlan[..], &only(false, true, true), |_| false, owner), DecapDecision::Pass);
        assert_eq!(
            classify(&udp[..], &only(false, true, false), |_| false, owner),
            DecapDecision::Drop(Outcome::DropUnknownPeer)
        );
        // A packet of a format not in use is plain IPv4: for a container, only from a direct peer.
        let to_container = to_outer_dst(vxlan, [10, 244, 1, 7]);
        assert_eq!(
            classify(&to_container[..], &none, known, owner),
            DecapDecision::Drop(Outcome::DropUntunnelledNotDirectPeer)
        );
    }
}
