//! Wire formats: Ethernet, IPv4, UDP and VXLAN headers as byte-exact `#[repr(C)]` structs.
//!
//! Multi-byte fields are network-order byte arrays with typed getters, so there is no padding and
//! no byte-order guesswork anywhere a header is read or written.

use crate::{csum, packet::Header};

pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const UDP_LEN: usize = 8;
pub const VXLAN_LEN: usize = 8;

/// Bytes that VXLAN adds in front of the inner IPv4 packet, between the outer Ethernet header and
/// the inner IP header: outer IPv4 + UDP + VXLAN + inner Ethernet.
pub const VXLAN_ENCAP_LEN: usize = IPV4_LEN + UDP_LEN + VXLAN_LEN + ETH_LEN;
/// What VXLAN costs in MTU: the overlay MTU is the underlay MTU minus this.
pub const VXLAN_MTU_OVERHEAD: u32 = VXLAN_ENCAP_LEN as u32;
pub const GRE_LEN: usize = 4;
pub const GRE_KEY_LEN: usize = 4;
/// flannel's udp backend: outer IPv4 + UDP in front of the raw inner IPv4 packet.
pub const UDP_ENCAP_LEN: usize = IPV4_LEN + UDP_LEN;
/// GRE (RFC 2784) without and with the RFC 2890 key.
pub const GRE_ENCAP_LEN: usize = IPV4_LEN + GRE_LEN;
pub const GRE_KEYED_ENCAP_LEN: usize = GRE_ENCAP_LEN + GRE_KEY_LEN;
pub const IPPROTO_GRE: u8 = 47;
/// GRE flags: C (checksum present), K (key present), S (sequence number present); version in the
/// low three bits.
pub const GRE_FLAG_C: u16 = 0x8000;
pub const GRE_FLAG_K: u16 = 0x2000;
pub const GRE_FLAG_S: u16 = 0x1000;
pub const GRE_VERSION_MASK: u16 = 0x0007;
/// flannel's udp backend port.
pub const DEFAULT_UDP_PORT: u16 = 8285;

pub const ETH_P_IPV4: u16 = 0x0800;
pub const IPPROTO_UDP: u8 = 17;
/// The VXLAN flags byte with the I bit (valid VNI) set, RFC 7348 section 5.
pub const VXLAN_FLAG_VNI: u8 = 0x08;
/// IPv4 "don't fragment" bit in the flags/fragment-offset field.
pub const IPV4_DF: u16 = 0x4000;

/// Fields as the programs see them: a 16-bit field's wire bytes loaded little-endian. EtherType
/// (and GRE protocol) 0x0800:
pub const ETH_P_IPV4_LE: u32 = ETH_P_IPV4.swap_bytes() as u32;
/// The IPv4 fragment field's offset bits (0x1fff) and its MF bit (0x2000).
pub const IPV4_FRAG_OFFSET_LE: u32 = 0x1fffu16.swap_bytes() as u32;
pub const IPV4_FRAG_MF_LE: u32 = 0x2000u16.swap_bytes() as u32;
/// IPv4 "more fragments" bit and fragment offset.
pub const IPV4_MF_OFFSET: u16 = 0x3fff;
/// TTL of outer headers xnet writes (the Linux default).
pub const OUTER_TTL: u8 = 64;
/// UDP source ports of encapsulated packets come from the flow hash, in this range (the upper half
/// of the ephemeral range, as RFC 7348 recommends).
pub const UDP_SRC_PORT_MIN: u16 = 49152;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: [u8; 2],
    pub id: [u8; 2],
    pub flags_frag: [u8; 2],
    pub ttl: u8,
    pub protocol: u8,
    pub checksum: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UdpHdr {
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub len: [u8; 2],
    pub checksum: [u8; 2],
}

/// RFC 7348 VXLAN header: flags, 24 reserved bits, 24-bit VNI, 8 reserved bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VxlanHdr {
    pub flags: u8,
    pub reserved: [u8; 3],
    /// VNI in the first three bytes, a reserved byte last: exactly as on the wire.
    pub vni_reserved: [u8; 4],
}

/// RFC 2784 GRE header (no checksum); the RFC 2890 key follows when the K flag is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GreHdr {
    pub flags_version: [u8; 2],
    pub protocol: [u8; 2],
}

/// A 32-bit GRE key (RFC 2890), network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GreKey(pub [u8; 4]);

/// flannel udp: what goes in front of the raw inner IPv4 packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct UdpOuter {
    pub ip: Ipv4Hdr,
    pub udp: UdpHdr,
}

/// GRE with the key field; without a key only the first [`GRE_ENCAP_LEN`] bytes are used.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct GreOuter {
    pub ip: Ipv4Hdr,
    pub gre: GreHdr,
    pub key: GreKey,
}

/// Everything VXLAN puts between the outer Ethernet header and the inner IPv4 packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VxlanOuter {
    pub ip: Ipv4Hdr,
    pub udp: UdpHdr,
    pub vxlan: VxlanHdr,
    pub inner_eth: EthHdr,
}

// The headers are #[repr(C)] structs of u8 and byte arrays (the outers: of the headers), so they
// have alignment 1, no padding (sizes asserted below) and accept any bit pattern, as `Header`
// requires.

// SAFETY: #[repr(C)] byte arrays only.
unsafe impl Header for EthHdr {}
// SAFETY: #[repr(C)] bytes and byte arrays only.
unsafe impl Header for Ipv4Hdr {}
// SAFETY: #[repr(C)] byte arrays only.
unsafe impl Header for UdpHdr {}
// SAFETY: #[repr(C)] a byte and byte arrays only.
unsafe impl Header for VxlanHdr {}
// SAFETY: #[repr(C)] Ipv4Hdr, UdpHdr, VxlanHdr and EthHdr, all of alignment 1: no padding.
unsafe impl Header for VxlanOuter {}
// SAFETY: #[repr(C)] byte arrays only.
unsafe impl Header for GreHdr {}
// SAFETY: #[repr(C)] one byte array.
unsafe impl Header for GreKey {}
// SAFETY: #[repr(C)] Ipv4Hdr and UdpHdr, both of alignment 1: no padding.
unsafe impl Header for UdpOuter {}
// SAFETY: #[repr(C)] Ipv4Hdr, GreHdr and GreKey, all of alignment 1: no padding.
unsafe impl Header for GreOuter {}

const _: () = {
    assert!(size_of::<EthHdr>() == ETH_LEN);
    assert!(size_of::<Ipv4Hdr>() == IPV4_LEN);
    assert!(size_of::<UdpHdr>() == UDP_LEN);
    assert!(size_of::<VxlanHdr>() == VXLAN_LEN);
    assert!(size_of::<VxlanOuter>() == VXLAN_ENCAP_LEN);
    assert!(size_of::<UdpOuter>() == UDP_ENCAP_LEN);
    assert!(size_of::<GreOuter>() == GRE_KEYED_ENCAP_LEN);
};

impl EthHdr {
    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes(self.ethertype)
    }
}

impl Ipv4Hdr {
    pub fn version(&self) -> u8 {
        self.version_ihl >> 4
    }
    /// Header length in bytes.
    pub fn header_len(&self) -> usize {
        ((self.version_ihl & 0x0f) as usize) * 4
    }
    pub fn total_len(&self) -> u16 {
        u16::from_be_bytes(self.total_len)
    }
    pub fn flags_frag(&self) -> u16 {
        u16::from_be_bytes(self.flags_frag)
    }
    /// Whether this is a fragment (more fragments follow, or it is not the first).
    pub fn is_fragment(&self) -> bool {
        self.flags_frag() & IPV4_MF_OFFSET != 0
    }
    /// The checksum field's value for this header (without options), computed over its other
    /// fields (RFC 1071).
    #[inline(always)]
    pub fn compute_checksum(&self) -> [u8; 2] {
        let word = u16::from_be_bytes;
        csum::checksum([
            word([self.version_ihl, self.tos]),
            word(self.total_len),
            word(self.id),
            word(self.flags_frag),
            word([self.ttl, self.protocol]),
            word([self.src[0], self.src[1]]),
            word([self.src[2], self.src[3]]),
            word([self.dst[0], self.dst[1]]),
            word([self.dst[2], self.dst[3]]),
        ])
    }
    /// Whether the checksum field is right for the rest of the header.
    pub fn has_valid_checksum(&self) -> bool {
        self.compute_checksum() == self.checksum
    }
    /// Decrements the TTL (which must be above zero) and updates the checksum for the changed
    /// word, incrementally (RFC 1624). The programs do the same on a loaded word with
    /// [`csum::decrement_ttl_word`].
    #[inline(always)]
    pub fn decrement_ttl(&mut self) {
        let old = u16::from_be_bytes([self.ttl, self.protocol]);
        self.ttl -= 1;
        self.checksum = csum::update(self.checksum, old, u16::from_be_bytes([self.ttl, self.protocol]));
    }
}

impl UdpHdr {
    pub fn dst_port(&self) -> u16 {
        u16::from_be_bytes(self.dst_port)
    }
    pub fn src_port(&self) -> u16 {
        u16::from_be_bytes(self.src_port)
    }
}

impl GreHdr {
    pub fn flags_version(&self) -> u16 {
        u16::from_be_bytes(self.flags_version)
    }
    pub fn protocol(&self) -> u16 {
        u16::from_be_bytes(self.protocol)
    }
}

impl VxlanHdr {
    pub fn vni(&self) -> u32 {
        u32::from_be_bytes(self.vni_reserved) >> 8
    }
}

/// A MAC address as one little-endian integer (byte 0 lowest), as the programs compare them.
#[inline(always)]
pub fn mac_word(mac: &[u8; 6]) -> u64 {
    u32::from_le_bytes([mac[0], mac[1], mac[2], mac[3]]) as u64
        | (u16::from_le_bytes([mac[4], mac[5]]) as u64) << 32
}

/// The bytes of a [`mac_word`].
#[inline(always)]
pub fn mac_bytes(word: u64) -> [u8; 6] {
    let b = word.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// The wire form of a VNI: three bytes of VNI followed by the reserved byte (zero).
pub const fn vni_to_wire(vni: u32) -> [u8; 4] {
    (vni << 8).to_be_bytes()
}

/// The UDP source port for a flow: spreads flows over [`UDP_SRC_PORT_MIN`]..=65535 so the underlay's
/// ECMP and RSS see distinct flows, like the kernel's `udp_flow_src_port`.
pub fn udp_src_port(flow_hash: u32) -> u16 {
    let span = (u16::MAX - UDP_SRC_PORT_MIN) as u64 + 1;
    UDP_SRC_PORT_MIN + (((flow_hash as u64) * span) >> 32) as u16
}

/// A flow's hash from its addresses, protocol and ports, each as the program reads it: a
/// little-endian word of the wire bytes (`ports`: source then destination port; 0 when there are
/// none). What picks the UDP source port when the kernel has not hashed the packet already.
///
/// Any fixed mix works, as long as every input bit moves the top bits (the ones
/// [`udp_src_port`] keeps): the fields are packed into one 64-bit word, its halves folded together,
/// and multiplied by an odd constant (Fibonacci hashing), whose top half depends on every bit
/// below it. A handful of instructions, against twenty for a 32-bit avalanche mix on BPF (where
/// each 32-bit step needs masking in 64-bit registers).
#[inline(always)]
pub fn flow_hash(src: u32, dst: u32, protocol: u8, ports: u32) -> u32 {
    let mut x = ((src as u64) << 32 | dst as u64) ^ (ports as u64) << 16 ^ protocol as u64;
    x ^= x >> 32;
    (x.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as u32
}

/// What the outer headers need to know about the packet being encapsulated.
#[derive(Clone, Copy, Debug)]
pub struct InnerInfo {
    /// Length of the inner packet from its IP header on (the frame minus its Ethernet header).
    pub ip_len: usize,
    /// The inner IPv4 TOS byte, copied to the outer header so DSCP and ECN survive the tunnel.
    pub tos: u8,
    /// The flow hash that picks the UDP source port.
    pub flow_hash: u32,
}

/// The local end of a VXLAN tunnel.
#[derive(Clone, Copy, Debug)]
pub struct VxlanLocal {
    pub ip: [u8; 4],
    pub vtep_mac: [u8; 6],
    pub port: u16,
    pub vni: u32,
}

/// The remote end of a VXLAN tunnel.
#[derive(Clone, Copy, Debug)]
pub struct VxlanRemote {
    pub ip: [u8; 4],
    pub vtep_mac: [u8; 6],
}

/// The outer IPv4 header every encapsulation writes: DF set (xnet never relies on fragmentation:
/// the overlay MTU leaves room), ID 0, TTL 64, the inner TOS, a correct checksum. A total length
/// above 65535 (a GSO super-packet) is written as 0, see [`ipv4_len_field`].
pub fn outer_ipv4(src: [u8; 4], dst: [u8; 4], protocol: u8, payload_len: usize, tos: u8) -> Ipv4Hdr {
    let mut ip = Ipv4Hdr {
        version_ihl: 0x45,
        tos,
        total_len: ipv4_len_field(IPV4_LEN + payload_len).to_be_bytes(),
        id: [0, 0],
        flags_frag: IPV4_DF.to_be_bytes(),
        ttl: OUTER_TTL,
        protocol,
        checksum: [0, 0],
        src,
        dst,
    };
    ip.checksum = ip.compute_checksum();
    ip
}

/// Builds the 50 bytes VXLAN inserts after the outer Ethernet header; the UDP checksum is 0, as
/// RFC 7348 allows over IPv4.
pub fn vxlan_outer(local: &VxlanLocal, remote: &VxlanRemote, inner: &InnerInfo) -> VxlanOuter {
    let udp_payload = VXLAN_LEN + ETH_LEN + inner.ip_len;
    VxlanOuter {
        ip: outer_ipv4(local.ip, remote.ip, IPPROTO_UDP, UDP_LEN + udp_payload, inner.tos),
        udp: UdpHdr {
            src_port: udp_src_port(inner.flow_hash).to_be_bytes(),
            dst_port: local.port.to_be_bytes(),
            len: udp_len_field(UDP_LEN + udp_payload).to_be_bytes(),
            checksum: [0, 0],
        },
        vxlan: VxlanHdr { flags: VXLAN_FLAG_VNI, reserved: [0; 3], vni_reserved: vni_to_wire(local.vni) },
        inner_eth: EthHdr { dst: remote.vtep_mac, src: local.vtep_mac, ethertype: ETH_P_IPV4.to_be_bytes() },
    }
}

/// flannel's udp framing: the raw inner IPv4 packet in UDP from `port` to `port`, checksum 0.
pub fn udp_outer(src: [u8; 4], dst: [u8; 4], port: u16, inner: &InnerInfo) -> UdpOuter {
    UdpOuter {
        ip: outer_ipv4(src, dst, IPPROTO_UDP, UDP_LEN + inner.ip_len, inner.tos),
        udp: UdpHdr {
            src_port: port.to_be_bytes(),
            dst_port: port.to_be_bytes(),
            len: udp_len_field(UDP_LEN + inner.ip_len).to_be_bytes(),
            checksum: [0, 0],
        },
    }
}

/// RFC 2784 GRE carrying IPv4 (protocol 0x0800), with the RFC 2890 key iff `key` is set; no
/// checksum, no sequence number. Returns the headers and how many of their bytes are used.
pub fn gre_outer(src: [u8; 4], dst: [u8; 4], key: Option<u32>, inner: &InnerInfo) -> (GreOuter, usize) {
    let len = if key.is_some() { GRE_KEYED_ENCAP_LEN } else { GRE_ENCAP_LEN };
    let flags = if key.is_some() { GRE_FLAG_K } else { 0 };
    let outer = GreOuter {
        ip: outer_ipv4(src, dst, IPPROTO_GRE, len - IPV4_LEN + inner.ip_len, inner.tos),
        gre: GreHdr { flags_version: flags.to_be_bytes(), protocol: ETH_P_IPV4.to_be_bytes() },
        key: GreKey(key.unwrap_or(0).to_be_bytes()),
    };
    (outer, len)
}

/// The IPv4 total length field for `n` bytes: `n`, or 0 when it does not fit in 16 bits, as the
/// kernel's own IPv4 output writes it (`iph_set_totlen`). Only a GSO super-packet is that long
/// (BIG TCP, or a UDP GSO packet near 64 KB with the tunnel's headers); segmentation writes each
/// segment's own length. For TCP the stack on the way then takes the length from the buffer
/// (`iph_totlen`); a length clamped to 65535 would make every stack or bridge that checks it (a
/// router's `ip_rcv`, `br_netfilter`) cut the packet there.
#[inline(always)]
pub(crate) fn ipv4_len_field(n: usize) -> u16 {
    if n > u16::MAX as usize { 0 } else { n as u16 }
}

/// The UDP length field for `n` bytes: `n`, or 65535 when it does not fit. Segmentation writes
/// each segment's own; nothing on the way trims by it, and a length below the header's (0) would
/// make connection tracking on the way call the packet invalid.
#[inline(always)]
pub(crate) fn udp_len_field(n: usize) -> u16 {
    if n > u16::MAX as usize { u16::MAX } else { n as u16 }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header as the programs load it: five little-endian words.
    fn le_words(h: &Ipv4Hdr) -> [u32; 5] {
        [
            [h.version_ihl, h.tos, h.total_len[0], h.total_len[1]],
            [h.id[0], h.id[1], h.flags_frag[0], h.flags_frag[1]],
            [h.ttl, h.protocol, h.checksum[0], h.checksum[1]],
            h.src,
            h.dst,
        ]
        .map(u32::from_le_bytes)
    }

    #[test]
    fn header_words_check_agrees_with_the_header_check() {
        for (protocol, len, tos) in [(17u8, 100usize, 0u8), (47, 1500, 0xb8), (6, 65_535, 0xff)] {
            let good = outer_ipv4([198, 18, 0, 1], [10, 255, 0, 2], protocol, len, tos);
            assert!(good.has_valid_checksum());
            assert!(csum::ipv4_header_words_valid(le_words(&good)));
            let corruptions: [fn(&mut Ipv4Hdr); 4] = [
                |h| h.version_ihl ^= 0x01,
                |h| h.flags_frag[1] ^= 0x80,
                |h| h.checksum[0] ^= 0xff,
                |h| h.dst[3] ^= 0x10,
            ];
            for (i, corrupt) in corruptions.into_iter().enumerate() {
                let mut bad = good;
                corrupt(&mut bad);
                assert!(!bad.has_valid_checksum(), "corruption {i}");
                assert!(!csum::ipv4_header_words_valid(le_words(&bad)), "corruption {i}");
            }
        }
    }

    #[test]
    fn ttl_word_decrement_matches_the_header_one() {
        for ttl in [1u8, 2, 64, 0x80, 255] {
            for protocol in [0u8, 6, 17, 47, 255] {
                for checksum in [[0u8, 0], [0xff, 0xff], [0x12, 0x34], [0xff, 0x00], [0x00, 0xfe]] {
                    let mut h = outer_ipv4([1, 2, 3, 4], [5, 6, 7, 8], protocol, 100, 0);
                    h.ttl = ttl;
                    h.checksum = checksum;
                    let w = le_words(&h)[2];
                    h.decrement_ttl();
                    let want = le_words(&h)[2];
                    assert_eq!(
                        csum::decrement_ttl_word(w),
                        want,
                        "ttl {ttl} protocol {protocol} {checksum:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn ttl_decrement_matches_a_full_recompute() {
        for (ttl, protocol, tos) in [(64u8, 17u8, 0u8), (1, 6, 0xb8), (255, 47, 3), (0x80, 0, 0xff)] {
            let mut h = outer_ipv4([10, 244, 1, 2], [10, 244, 2, 9], protocol, 1000, tos);
            h.ttl = ttl;
            h.checksum = h.compute_checksum();
            h.decrement_ttl();
            assert_eq!(h.ttl, ttl - 1);
            assert_eq!(h.checksum, h.compute_checksum(), "ttl {ttl} protocol {protocol}");
            assert!(h.has_valid_checksum());
        }
    }

    // The example header of RFC 1071's companion literature (Wikipedia "IPv4 header checksum"):
    // 4500 0073 0000 4000 4011 b861 c0a8 0001 c0a8 00c7 has checksum b861.
    #[test]
    fn known_header_checksum() {
        let h = Ipv4Hdr {
            version_ihl: 0x45,
            tos: 0,
            total_len: [0x00, 0x73],
            id: [0, 0],
            flags_frag: [0x40, 0x00],
            ttl: 0x40,
            protocol: 0x11,
            checksum: [0xb8, 0x61],
            src: [192, 168, 0, 1],
            dst: [192, 168, 0, 199],
        };
        assert_eq!(h.compute_checksum(), [0xb8, 0x61]);
        assert!(h.has_valid_checksum());
        let mut bad = h;
        bad.ttl = 0x3f;
        assert!(!bad.has_valid_checksum(), "a changed TTL must invalidate the checksum");
    }

    #[test]
    fn ipv4_lengths_past_16_bits_read_zero_and_udp_lengths_65535() {
        let local = VxlanLocal { ip: [198, 18, 0, 1], vtep_mac: [2, 0, 198, 18, 0, 1], port: 8472, vni: 1 };
        let remote = VxlanRemote { ip: [198, 18, 0, 2], vtep_mac: [2, 0, 198, 18, 0, 2] };
        // The largest inner packet whose VXLAN frame still fits, one byte more, and a BIG TCP one.
        let fits = 65_535 - VXLAN_ENCAP_LEN;
        for (ip_len, total, udp) in [(fits, 65_535, 65_515), (fits + 1, 0, 65_516), (185_000, 0, 65_535)] {
            let inner = InnerInfo { ip_len, tos: 0, flow_hash: 1 };
            let h = vxlan_outer(&local, &remote, &inner);
            assert_eq!(h.ip.total_len(), total, "inner {ip_len}");
            assert_eq!(u16::from_be_bytes(h.udp.len), udp, "inner {ip_len}");
            assert!(h.ip.has_valid_checksum());
            let (g, _) = gre_outer(local.ip, remote.ip, None, &inner);
            assert_eq!(g.ip.total_len() == 0, ip_len + GRE_ENCAP_LEN > 65_535, "inner {ip_len}");
        }
    }

    /// A fixed stream of pseudo-random flows (xorshift64).
    fn flows(n: usize) -> impl Iterator<Item = (u32, u32, u8, u32)> {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..n).map(move |_| {
            let (a, b) = (next(), next());
            (a as u32, (a >> 32) as u32, [6, 17][(b & 1) as usize], (b >> 32) as u32)
        })
    }

    #[test]
    fn every_input_bit_moves_the_source_port() {
        // Flipping any one bit of the addresses, the ports or the protocol changes the UDP source
        // port of nearly every flow: flows that differ anywhere spread over the underlay's paths.
        for field in 0..4 {
            for bit in 0..if field == 2 { 8 } else { 32 } {
                let moved = flows(2000)
                    .filter(|&(src, dst, proto, ports)| {
                        let flip = 1u32 << bit;
                        let (s2, d2, p2, o2) = match field {
                            0 => (src ^ flip, dst, proto, ports),
                            1 => (src, dst ^ flip, proto, ports),
                            2 => (src, dst, proto ^ flip as u8, ports),
                            _ => (src, dst, proto, ports ^ flip),
                        };
                        udp_src_port(flow_hash(src, dst, proto, ports))
                            != udp_src_port(flow_hash(s2, d2, p2, o2))
                    })
                    .count();
                assert!(moved >= 1980, "field {field} bit {bit}: only {moved} of 2000 ports moved");
            }
        }
    }

    #[test]
    fn neighbouring_flows_spread_over_the_port_range() {
        // One client, one server, 4096 consecutive client ports (a typical burst of connections):
        // the source ports they get cover the range evenly.
        let (src, dst) = (u32::from_le_bytes([10, 244, 1, 2]), u32::from_le_bytes([10, 244, 2, 7]));
        let mut buckets = [0u32; 16];
        for port in 32768u16..32768 + 4096 {
            let ports = u32::from_le_bytes([(port >> 8) as u8, port as u8, 0x1f, 0x90]);
            let sport = udp_src_port(flow_hash(src, dst, 6, ports));
            buckets[((sport - UDP_SRC_PORT_MIN) >> 10) as usize] += 1;
        }
        // 256 expected in each of 16 buckets.
        assert!(buckets.iter().all(|&b| (192..=320).contains(&b)), "uneven spread: {buckets:?}");
    }
}
