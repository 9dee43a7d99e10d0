//! The egress decision: which container packets leave the host in a tunnel.

use crate::packet::Packet;
use crate::stats::Outcome;
use crate::wire::ETH_P_IPV4_LE;

/// What to do with a frame that a container sent into the host.
#[derive(Debug, PartialEq, Eq)]
pub enum EgressDecision<R> {
    /// Not for a remote subnet (same-host traffic, traffic to the host, non-IPv4): untouched.
    Pass,
    /// For a remote subnet: encapsulate towards `route`.
    Encapsulate {
        route: R,
        /// The inner TOS byte, for the outer header.
        tos: u8,
    },
    /// For a remote subnet, but not to be sent: the reason.
    Drop(Outcome),
}

/// Decides what happens to `pkt`; `lookup` finds the remote subnet holding an IPv4 destination
/// (longest prefix match); `is_container` says whether a MAC address (as [`crate::wire::mac_word`]
/// gives it) belongs to a container on this host. A frame addressed to another local container is
/// the bridge's to forward, whatever its IP destination (that container may be a router): only
/// frames for the host are taken. `is_local` says whether an IPv4 source lies in this host's
/// container subnet: a container may only send overlay traffic from there (the host's own traffic
/// leaves through the container interface with its subnet's network address), so that the peers'
/// check of the inner source ([`crate::decap::classify`]) holds for what this host sends.
///
/// Reads the packet as five little-endian words: the destination MAC (two), the EtherType with the
/// IP version and TOS, and the IP source and destination.
#[inline(always)]
pub fn classify<P, R, F, C, L>(pkt: &P, lookup: F, is_container: C, is_local: L) -> EgressDecision<R>
where
    P: Packet + ?Sized,
    F: FnOnce(&[u8; 4]) -> Option<R>,
    C: FnOnce(u64) -> bool,
    L: FnOnce(&[u8; 4]) -> bool,
{
    // Bytes 0 to 15: destination MAC, source MAC, EtherType (0x0800 reads 0x0008), then the
    // version/IHL byte and the TOS.
    let Some([mac_lo, mac_hi, _, ether_ip]) = pkt.words::<4>(0) else {
        return EgressDecision::Pass;
    };
    if ether_ip & 0xffff != ETH_P_IPV4_LE {
        return EgressDecision::Pass;
    }
    // A truncated or non-v4 IP header is not ours to judge: the kernel drops it and counts it.
    let Some([src, dst]) = pkt.words::<2>(26) else {
        return EgressDecision::Pass;
    };
    if (ether_ip >> 20) & 0xf != 4 {
        return EgressDecision::Pass;
    }
    let mac = mac_lo as u64 | ((mac_hi & 0xffff) as u64) << 32;
    match lookup(&dst.to_le_bytes()) {
        Some(route) if !is_container(mac) => {
            if !is_local(&src.to_le_bytes()) {
                return EgressDecision::Drop(Outcome::DropSourceNotLocal);
            }
            EgressDecision::Encapsulate { route, tos: (ether_ip >> 24) as u8 }
        }
        _ => EgressDecision::Pass,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn frame(ethertype: u16, ip: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2]);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(ip);
        f
    }

    fn ipv4(tos: u8, dst: [u8; 4]) -> Vec<u8> {
        ipv4_from([10, 244, 1, 2], tos, dst)
    }

    fn ipv4_from(src: [u8; 4], tos: u8, dst: [u8; 4]) -> Vec<u8> {
        let mut h = std::vec![0x45, tos, 0, 20, 0, 0, 0x40, 0, 64, 1, 0, 0];
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h
    }

    /// This host's subnet: 10.244.1.0/24.
    fn local(src: &[u8; 4]) -> bool {
        src[..3] == [10, 244, 1]
    }

    fn remote(dst: &[u8; 4]) -> Option<u8> {
        (dst[..3] == [10, 244, 2]).then_some(2)
    }

    /// The container at 2:0:0:0:0:3 is on this host.
    fn container(mac: u64) -> bool {
        mac == crate::wire::mac_word(&[2, 0, 0, 0, 0, 3])
    }

    #[test]
    fn remote_destination_is_encapsulated_with_its_tos() {
        let f = frame(0x0800, &ipv4(0xb8, [10, 244, 2, 7]));
        assert_eq!(
            classify(&f[..], remote, container, local),
            EgressDecision::Encapsulate { route: 2, tos: 0xb8 }
        );
    }

    #[test]
    fn overlay_traffic_from_a_foreign_source_is_dropped() {
        // The host's own traffic (the subnet's network address) and a container's go out.
        for src in [[10, 244, 1, 0], [10, 244, 1, 254]] {
            let f = frame(0x0800, &ipv4_from(src, 0, [10, 244, 2, 7]));
            assert_eq!(
                classify(&f[..], remote, container, local),
                EgressDecision::Encapsulate { route: 2, tos: 0 }
            );
        }
        // Another host's subnet, outside the overlay, unspecified.
        for src in [[10, 244, 2, 9], [192, 168, 1, 2], [0, 0, 0, 0]] {
            let f = frame(0x0800, &ipv4_from(src, 0, [10, 244, 2, 7]));
            assert_eq!(
                classify(&f[..], remote, container, local),
                EgressDecision::Drop(Outcome::DropSourceNotLocal),
                "source {src:?}"
            );
            // Only what would be encapsulated is judged: the rest is the kernel's.
            let f = frame(0x0800, &ipv4_from(src, 0, [10, 244, 1, 7]));
            assert_eq!(classify(&f[..], remote, container, local), EgressDecision::Pass);
        }
    }

    #[test]
    fn a_frame_for_a_local_container_is_left_to_the_bridge() {
        let mut f = frame(0x0800, &ipv4(0, [10, 244, 2, 7]));
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 3]);
        assert_eq!(classify(&f[..], remote, container, local), EgressDecision::Pass);
    }

    #[test]
    fn other_traffic_passes() {
        let same_host = frame(0x0800, &ipv4(0, [10, 244, 1, 3]));
        assert_eq!(classify(&same_host[..], remote, container, local), EgressDecision::Pass);
        let arp = frame(0x0806, &[0; 28]);
        assert_eq!(classify(&arp[..], remote, container, local), EgressDecision::Pass);
        let short = frame(0x0800, &ipv4(0, [10, 244, 2, 7])[..19]);
        assert_eq!(classify(&short[..], remote, container, local), EgressDecision::Pass);
        let mut v6ish = ipv4(0, [10, 244, 2, 7]);
        v6ish[0] = 0x65;
        assert_eq!(classify(&frame(0x0800, &v6ish)[..], remote, container, local), EgressDecision::Pass);
        assert_eq!(classify(&[0u8; 10][..], remote, container, local), EgressDecision::Pass);
    }
}
