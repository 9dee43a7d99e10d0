//! Outer headers, precomputed (ONCache's idea): everything this host's side of a tunnel decides is
//! built once, by the agent, into CONFIG as little-endian 64-bit words, ready to store. Per packet
//! the program only ors in what the peer and the packet add (the peer's address and VTEP MAC; the
//! TOS, lengths, checksum and UDP source port) and stores the words: a few dozen instructions
//! where building the headers field by field took hundreds.
//!
//! [`crate::wire`]'s builders stay the definition of the bytes; the tests below check that a
//! template filled in gives exactly what they build.

use crate::csum::fold;
use crate::wire::{
    self, IPV4_LEN, InnerInfo, UDP_ENCAP_LEN, UDP_LEN, VXLAN_ENCAP_LEN, VXLAN_LEN, VxlanLocal, VxlanRemote,
    ipv4_len_field, udp_len_field,
};

/// Words in a template: enough for VXLAN's 50 bytes.
pub const TEMPLATE_WORDS: usize = 7;

/// One encapsulation's outer headers (the bytes after the outer Ethernet header) with this host's
/// fields set and the peer's and the packet's fields zero, as little-endian words: byte `i` of the
/// headers is byte `i % 8` of word `i / 8`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OuterTemplate {
    pub words: [u64; TEMPLATE_WORDS],
    /// One's-complement sum of the outer IPv4 header's 16-bit words as the template has them
    /// (read little-endian, unfolded): what the packet's checksum starts from.
    pub ip_sum: u32,
    /// How many bytes of `words` the headers take.
    pub len: u32,
}

/// The templates of every encapsulation, kept in CONFIG.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OuterTemplates {
    pub vxlan: OuterTemplate,
    pub udp: OuterTemplate,
    /// With the key if the host uses one (its length says which).
    pub gre: OuterTemplate,
}

/// What a packet adds to a template: the peer, and the packet's own fields.
#[derive(Clone, Copy, Debug)]
pub struct Fill {
    /// The peer's underlay IPv4 address as on the wire.
    pub peer_ip: [u8; 4],
    /// Length of the inner packet from its IP header on.
    pub ip_len: usize,
    pub tos: u8,
}

impl OuterTemplate {
    /// Builds a template from a header builder's bytes (peer and packet fields zero there).
    fn from_bytes(bytes: &[u8]) -> Self {
        let mut words = [0u64; TEMPLATE_WORDS];
        for (i, b) in bytes.iter().enumerate() {
            words[i / 8] |= (*b as u64) << (8 * (i % 8));
        }
        // The IPv4 header's words with the checksum field still zero.
        let ip_sum = bytes[..IPV4_LEN].chunks(2).map(|w| u16::from_le_bytes([w[0], w[1]]) as u32).sum();
        OuterTemplate { words, ip_sum, len: bytes.len() as u32 }
    }

    /// The words with the outer IPv4 header completed for `fill`: TOS, total length (the IP
    /// header, `extra` bytes of tunnel headers, then the inner packet; 0 above 65535, see
    /// [`wire::ipv4_len_field`]), destination and checksum.
    ///
    /// The checksum is summed over little-endian words, which gives the same bytes as the usual
    /// big-endian sum (RFC 1071, "byte order independence"), so no field needs swapping first.
    #[inline(always)]
    fn ip(&self, fill: &Fill, extra: usize) -> [u64; TEMPLATE_WORDS] {
        let mut w = self.words;
        let total = ipv4_len_field(IPV4_LEN + extra + fill.ip_len).swap_bytes() as u32;
        let tos = (fill.tos as u32) << 8;
        let dst = u32::from_le_bytes(fill.peer_ip);
        let sum = fold(self.ip_sum + tos + total + (dst & 0xffff) + (dst >> 16));
        w[0] |= (tos | (total << 16)) as u64;
        w[1] |= ((!sum) as u64) << 16;
        w[2] |= dst as u64;
        w
    }

    /// VXLAN's 50 bytes: the IPv4 header, the UDP source port from the flow hash and the UDP
    /// length, and the peer's VTEP MAC (as [`wire::mac_word`] gives it) as the inner destination.
    #[inline(always)]
    pub fn vxlan(&self, fill: &Fill, vtep_mac: u64, flow_hash: u32) -> [u64; TEMPLATE_WORDS] {
        let tunnel = UDP_LEN + VXLAN_LEN + wire::ETH_LEN;
        let udp_len = tunnel + fill.ip_len;
        let mut w = self.ip(fill, tunnel);
        w[2] |= (wire::udp_src_port(flow_hash).swap_bytes() as u64) << 32;
        w[3] |= udp_len_field(udp_len).swap_bytes() as u64;
        // Template bytes 36 to 41: the upper half of word 4, the low two bytes of word 5.
        w[4] |= vtep_mac << 32;
        w[5] |= vtep_mac >> 32;
        w
    }

    /// flannel udp's 28 bytes: the IPv4 header and the UDP length.
    #[inline(always)]
    pub fn udp(&self, fill: &Fill) -> [u64; TEMPLATE_WORDS] {
        let mut w = self.ip(fill, UDP_LEN);
        let udp_len = UDP_LEN + fill.ip_len;
        w[3] |= udp_len_field(udp_len).swap_bytes() as u64;
        w
    }

    /// GRE's 24 or 28 bytes: only the IPv4 header depends on the packet.
    #[inline(always)]
    pub fn gre(&self, fill: &Fill) -> [u64; TEMPLATE_WORDS] {
        self.ip(fill, self.len as usize - IPV4_LEN)
    }
}

impl OuterTemplates {
    /// The templates for a host at `local` (VXLAN's local end, whose address is also the other
    /// tunnels' source), sending flannel udp from and to `udp_port` and GRE with `gre_key` if set.
    pub fn new(local: &VxlanLocal, udp_port: u16, gre_key: Option<u32>) -> Self {
        // The builders fill in lengths and a checksum: build for a zero-length packet to a zero
        // peer, then clear what a packet sets.
        let peer = VxlanRemote { ip: [0; 4], vtep_mac: [0; 6] };
        let zero = InnerInfo { ip_len: 0, tos: 0, flow_hash: 0 };
        let (gre, gre_len) = wire::gre_outer(local.ip, [0; 4], gre_key, &zero);
        OuterTemplates {
            vxlan: template(
                &bytes_of(&wire::vxlan_outer(local, &peer, &zero))[..VXLAN_ENCAP_LEN],
                true,
                true,
            ),
            udp: template(
                &bytes_of(&wire::udp_outer(local.ip, [0; 4], udp_port, &zero))[..UDP_ENCAP_LEN],
                true,
                false,
            ),
            gre: template(&bytes_of(&gre)[..gre_len], false, false),
        }
    }
}

/// A template from a builder's bytes, with the fields a packet sets cleared: the IPv4 total length
/// and checksum, and for UDP the length and (`src_port`) the source port.
fn template(built: &[u8], udp: bool, src_port: bool) -> OuterTemplate {
    let mut bytes = [0u8; TEMPLATE_WORDS * 8];
    let bytes = &mut bytes[..built.len()];
    bytes.copy_from_slice(built);
    bytes[2..4].fill(0);
    bytes[10..12].fill(0);
    if udp {
        bytes[IPV4_LEN + 4..IPV4_LEN + 6].fill(0);
    }
    if src_port {
        bytes[IPV4_LEN..IPV4_LEN + 2].fill(0);
    }
    OuterTemplate::from_bytes(bytes)
}

fn bytes_of<T: crate::packet::Header>(v: &T) -> &[u8] {
    // SAFETY: `T: Header` is #[repr(C)] bytes with no padding: every byte is initialised.
    unsafe { core::slice::from_raw_parts(core::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
}

const _: () = assert!(TEMPLATE_WORDS * 8 >= VXLAN_ENCAP_LEN);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{gre_outer, udp_outer, vxlan_outer};

    fn bytes(words: &[u64; TEMPLATE_WORDS], len: usize) -> std::vec::Vec<u8> {
        words.iter().flat_map(|w| w.to_le_bytes()).take(len).collect()
    }

    /// A spread of packets: lengths around the u16 limit (GSO packets), every TOS bit, hashes.
    fn packets() -> impl Iterator<Item = ([u8; 4], [u8; 6], usize, u8, u32)> {
        let peers = [
            ([198, 18, 0, 2], [2, 0, 198, 18, 0, 2]),
            ([255, 255, 255, 254], [0xff; 6]),
            ([1, 0, 0, 0], [0; 6]),
        ];
        let lens = [20usize, 84, 1450, 1500, 9000, 65_485, 65_535, 65_536, 200_000];
        let toses = [0u8, 0x01, 0xb8, 0xff];
        let hashes = [0u32, 7, 0x8000_0000, u32::MAX];
        peers.into_iter().flat_map(move |(ip, mac)| {
            lens.into_iter().flat_map(move |len| {
                toses.into_iter().flat_map(move |tos| hashes.into_iter().map(move |h| (ip, mac, len, tos, h)))
            })
        })
    }

    fn locals() -> [(VxlanLocal, u16, Option<u32>); 3] {
        [
            (
                VxlanLocal { ip: [198, 18, 0, 1], vtep_mac: [2, 0, 198, 18, 0, 1], port: 8472, vni: 1 },
                8285,
                None,
            ),
            (VxlanLocal { ip: [10, 0, 0, 255], vtep_mac: [0xfe; 6], port: 4789, vni: 0xff_ffff }, 1, Some(0)),
            (
                VxlanLocal { ip: [255; 4], vtep_mac: [1, 2, 3, 4, 5, 6], port: 65535, vni: 0 },
                65535,
                Some(u32::MAX),
            ),
        ]
    }

    #[test]
    fn filled_templates_match_the_header_builders() {
        for (local, udp_port, gre_key) in locals() {
            let t = OuterTemplates::new(&local, udp_port, gre_key);
            for (peer_ip, vtep_mac, ip_len, tos, flow_hash) in packets() {
                let fill = Fill { peer_ip, ip_len, tos };
                let inner = InnerInfo { ip_len, tos, flow_hash };
                let remote = VxlanRemote { ip: peer_ip, vtep_mac };
                let want = vxlan_outer(&local, &remote, &inner);
                assert_eq!(
                    bytes(&t.vxlan.vxlan(&fill, wire::mac_word(&vtep_mac), flow_hash), VXLAN_ENCAP_LEN),
                    bytes_of(&want)
                );
                let want = udp_outer(local.ip, peer_ip, udp_port, &inner);
                assert_eq!(bytes(&t.udp.udp(&fill), UDP_ENCAP_LEN), bytes_of(&want));
                let (want, len) = gre_outer(local.ip, peer_ip, gre_key, &inner);
                assert_eq!(t.gre.len as usize, len);
                assert_eq!(bytes(&t.gre.gre(&fill), len), &bytes_of(&want)[..len]);
            }
        }
    }

    #[test]
    fn filled_checksums_verify() {
        let (local, port, key) = &locals()[0];
        let t = OuterTemplates::new(local, *port, *key);
        let fill = Fill { peer_ip: [203, 0, 113, 9], ip_len: 1400, tos: 0x10 };
        let b = bytes(&t.udp.udp(&fill), UDP_ENCAP_LEN);
        let ip: &wire::Ipv4Hdr = crate::packet::Packet::header(&b[..], 0).unwrap();
        assert!(ip.has_valid_checksum());
        assert_ne!(ip.checksum, [0, 0]);
    }
}
