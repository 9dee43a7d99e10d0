//! The egress decision: which container packets leave the host in a tunnel.

use crate::packet::Packet;
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
}

/// Decides what happens to `pkt`; `lookup` finds the remote subnet holding an IPv4 destination
/// (longest prefix match); `is_container` says whether a MAC address (as [`crate::wire::mac_word`]
/// gives it) belongs to a container on this host. A frame addressed to another local container is
/// the bridge's to forward, whatever its IP destination (that container may be a router): only
/// frames for the host are taken.
///
/// Reads the packet as four little-endian words: the destination MAC (two), the EtherType with the
/// IP version and TOS, and the IP destination.
#[inline(always)]
pub fn classify<P, R, F, C>(pkt: &P, lookup: F, is_container: C) -> EgressDecision<R>
where
    P: Packet + ?Sized,
    F: FnOnce(&[u8; 4]) -> Option<R>,
    C: FnOnce(u64) -> bool,
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
    let Some([dst]) = pkt.words::<1>(30) else {
        return EgressDecision::Pass;
    };
    if (ether_ip >> 20) & 0xf != 4 {
        return EgressDecision::Pass;
    }
    let mac = mac_lo as u64 | ((mac_hi & 0xffff) as u64) << 32;
    match lookup(&dst.to_le_bytes()) {
        Some(route) if !is_container(mac) => {
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
        let mut h = std::vec![0x45, tos, 0, 20, 0, 0, 0x40, 0, 64, 1, 0, 0, 10, 244, 1, 2];
        h.extend_from_slice(&dst);
        h
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
        assert_eq!(classify(&f[..], remote, container), EgressDecision::Encapsulate { route: 2, tos: 0xb8 });
    }

    #[test]
    fn a_frame_for_a_local_container_is_left_to_the_bridge() {
        let mut f = frame(0x0800, &ipv4(0, [10, 244, 2, 7]));
        f[..6].copy_from_slice(&[2, 0, 0, 0, 0, 3]);
        assert_eq!(classify(&f[..], remote, container), EgressDecision::Pass);
    }

    #[test]
    fn other_traffic_passes() {
        let local = frame(0x0800, &ipv4(0, [10, 244, 1, 3]));
        assert_eq!(classify(&local[..], remote, container), EgressDecision::Pass);
        let arp = frame(0x0806, &[0; 28]);
        assert_eq!(classify(&arp[..], remote, container), EgressDecision::Pass);
        let short = frame(0x0800, &ipv4(0, [10, 244, 2, 7])[..19]);
        assert_eq!(classify(&short[..], remote, container), EgressDecision::Pass);
        let mut v6ish = ipv4(0, [10, 244, 2, 7]);
        v6ish[0] = 0x65;
        assert_eq!(classify(&frame(0x0800, &v6ish)[..], remote, container), EgressDecision::Pass);
        assert_eq!(classify(&[0u8; 10][..], remote, container), EgressDecision::Pass);
    }
}
