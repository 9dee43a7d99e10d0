//! Counters: every packet the programs see ends in exactly one [`Outcome`], counted per
//! [`Direction`]. Outcome numbers are stored in maps and shown to operators: never reuse or
//! renumber one; add new ones at the end of their range.

/// Which way the packet travels.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Container -> underlay (the tc program on the container interfaces).
    Egress = 0,
    /// Underlay -> container (the XDP or tc program on the underlay interface).
    Ingress = 1,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Egress, Direction::Ingress];
    pub fn name(self) -> &'static str {
        match self {
            Self::Egress => "egress",
            Self::Ingress => "ingress",
        }
    }
}

/// Room for outcome numbers per direction.
pub const OUTCOMES_PER_DIRECTION: u32 = 256;
/// Entries in the STATS map.
pub const STATS_ENTRIES: u32 = 2 * OUTCOMES_PER_DIRECTION;
/// Outcomes numbered at or above this are drops.
pub const FIRST_DROP: u32 = 128;

/// What happened to a packet. 1..127: forwarded or passed; 128..255: dropped, by reason.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not overlay traffic: handed on untouched.
    Passed = 1,
    /// Encapsulated in VXLAN and sent to the peer.
    EncapVxlan = 2,
    /// VXLAN from a known peer, decapsulated and delivered.
    DecapVxlan = 3,
    /// Sent in flannel's udp framing.
    EncapUdp = 4,
    /// flannel udp framing from a known peer, decapsulated and delivered.
    DecapUdp = 5,
    /// Sent in GRE.
    EncapGre = 6,
    /// GRE from a known peer, decapsulated and delivered.
    DecapGre = 7,
    /// Sent unencapsulated to the peer's MAC (direct backend).
    Direct = 8,

    /// Overlay traffic from an address that is not a known peer.
    DropUnknownPeer = 128,
    /// VXLAN to our port with another VNI, or without the VNI flag.
    DropBadVni = 129,
    /// Overlay traffic cut short inside its headers.
    DropTruncated = 130,
    /// The encapsulated inner frame is not IPv4.
    DropBadInnerProtocol = 131,
    /// The decapsulated packet is not addressed to this host's container subnet.
    DropInnerNotLocal = 132,
    /// Overlay traffic arriving as an outer IP fragment (xnet never fragments).
    DropOuterFragment = 133,
    /// The kernel refused to grow the packet for the outer headers.
    DropEncapFailed = 134,
    /// The kernel refused to shrink the packet when removing the outer headers.
    DropDecapFailed = 135,
    /// The encapsulated packet would exceed the underlay MTU (and is not GSO), and cannot be
    /// answered with ICMP "fragmentation needed" (no DF, IP options, a later fragment, an ICMP
    /// error): xnet does not fragment.
    DropTooBig = 136,
    /// The agent has not configured the datapath (CONFIG is empty).
    DropNotConfigured = 137,
    /// Redirecting the packet (to the underlay, or into a container) failed.
    DropRedirectFailed = 138,
    /// Tunnelled traffic whose outer IPv4 header checksum is wrong.
    DropBadOuterChecksum = 139,
    /// The inner TTL ran out (flannel's udp framing decrements it, as flannel does).
    DropTtlExceeded = 140,
    /// GRE whose key is missing, unexpected or not ours.
    DropBadGreKey = 141,
    /// GRE with a checksum, sequence number, another version or a non-IPv4 payload.
    DropBadGreHeader = 142,
    /// Decapsulated traffic whose inner source is not in the subnet of the peer that sent it (this
    /// host's own subnet, another peer's, or none).
    DropInnerSourceNotPeer = 143,
    /// Tunnelled traffic whose outer destination is not this host's address.
    DropOuterNotLocal = 144,
    /// Container traffic for a remote subnet whose source is not in this host's container subnet.
    DropSourceNotLocal = 145,
    /// Untunnelled traffic from the underlay for this host's container subnet whose source is not
    /// in the subnet of a peer this host reaches with the `direct` backend.
    DropUntunnelledNotDirectPeer = 146,
    /// Container traffic too big for the tunnel (not GSO, DF set): dropped and answered with ICMP
    /// "fragmentation needed" carrying the overlay MTU, as a router does.
    DropTooBigAnswered = 147,
    /// Like [`Outcome::DropTooBigAnswered`], but the answer was held back by the ICMP rate limit.
    DropTooBigRateLimited = 148,
    /// The route's peer address read as 0.0.0.0 (the route was being removed as the packet went
    /// through): never encapsulated to it.
    DropRouteWithdrawn = 149,
    /// Tunnelled traffic from a known peer whose headers do not all lie in the first buffer of a
    /// multi-buffer XDP frame: XDP cannot pull them together to strip them (tc ingress can).
    DropHeadersNotLinear = 150,
}

impl Outcome {
    /// Every outcome, for listing counters.
    pub const ALL: [Outcome; 31] = [
        Outcome::Passed,
        Outcome::EncapVxlan,
        Outcome::DecapVxlan,
        Outcome::EncapUdp,
        Outcome::DecapUdp,
        Outcome::EncapGre,
        Outcome::DecapGre,
        Outcome::Direct,
        Outcome::DropUnknownPeer,
        Outcome::DropBadVni,
        Outcome::DropTruncated,
        Outcome::DropBadInnerProtocol,
        Outcome::DropInnerNotLocal,
        Outcome::DropOuterFragment,
        Outcome::DropEncapFailed,
        Outcome::DropDecapFailed,
        Outcome::DropTooBig,
        Outcome::DropNotConfigured,
        Outcome::DropRedirectFailed,
        Outcome::DropBadOuterChecksum,
        Outcome::DropTtlExceeded,
        Outcome::DropBadGreKey,
        Outcome::DropBadGreHeader,
        Outcome::DropInnerSourceNotPeer,
        Outcome::DropOuterNotLocal,
        Outcome::DropSourceNotLocal,
        Outcome::DropUntunnelledNotDirectPeer,
        Outcome::DropTooBigAnswered,
        Outcome::DropTooBigRateLimited,
        Outcome::DropRouteWithdrawn,
        Outcome::DropHeadersNotLinear,
    ];

    /// Whether this outcome can happen in `direction` (what the CLI and metrics list).
    pub fn applies_to(self, direction: Direction) -> bool {
        match self {
            Self::Passed | Self::DropRedirectFailed => true,
            Self::EncapVxlan
            | Self::EncapUdp
            | Self::EncapGre
            | Self::Direct
            | Self::DropTtlExceeded
            | Self::DropEncapFailed
            | Self::DropTooBig
            | Self::DropNotConfigured
            | Self::DropSourceNotLocal
            | Self::DropTooBigAnswered
            | Self::DropTooBigRateLimited
            | Self::DropRouteWithdrawn => direction == Direction::Egress,
            Self::DecapVxlan
            | Self::DecapUdp
            | Self::DecapGre
            | Self::DropBadGreKey
            | Self::DropBadGreHeader
            | Self::DropUnknownPeer
            | Self::DropBadVni
            | Self::DropTruncated
            | Self::DropBadInnerProtocol
            | Self::DropInnerNotLocal
            | Self::DropOuterFragment
            | Self::DropDecapFailed
            | Self::DropBadOuterChecksum
            | Self::DropInnerSourceNotPeer
            | Self::DropOuterNotLocal
            | Self::DropUntunnelledNotDirectPeer
            | Self::DropHeadersNotLinear => direction == Direction::Ingress,
        }
    }

    pub fn is_drop(self) -> bool {
        self as u32 >= FIRST_DROP
    }

    /// The stable, snake_case name used in the CLI and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::EncapVxlan => "encap_vxlan",
            Self::DecapVxlan => "decap_vxlan",
            Self::EncapUdp => "encap_udp",
            Self::DecapUdp => "decap_udp",
            Self::EncapGre => "encap_gre",
            Self::DecapGre => "decap_gre",
            Self::Direct => "direct",
            Self::DropUnknownPeer => "unknown_peer",
            Self::DropBadVni => "bad_vni",
            Self::DropTruncated => "truncated",
            Self::DropBadInnerProtocol => "bad_inner_protocol",
            Self::DropInnerNotLocal => "inner_not_local",
            Self::DropOuterFragment => "outer_fragment",
            Self::DropEncapFailed => "encap_failed",
            Self::DropDecapFailed => "decap_failed",
            Self::DropTooBig => "too_big",
            Self::DropNotConfigured => "not_configured",
            Self::DropRedirectFailed => "redirect_failed",
            Self::DropBadOuterChecksum => "bad_outer_checksum",
            Self::DropTtlExceeded => "ttl_exceeded",
            Self::DropBadGreKey => "bad_gre_key",
            Self::DropBadGreHeader => "bad_gre_header",
            Self::DropInnerSourceNotPeer => "inner_source_not_peer",
            Self::DropOuterNotLocal => "outer_not_local",
            Self::DropSourceNotLocal => "source_not_local",
            Self::DropUntunnelledNotDirectPeer => "untunnelled_not_direct_peer",
            Self::DropTooBigAnswered => "too_big_answered",
            Self::DropTooBigRateLimited => "too_big_rate_limited",
            Self::DropRouteWithdrawn => "route_withdrawn",
            Self::DropHeadersNotLinear => "headers_not_linear",
        }
    }
}

/// The STATS index of a direction and outcome.
#[inline(always)]
pub const fn index(direction: Direction, outcome: Outcome) -> u32 {
    direction as u32 * OUTCOMES_PER_DIRECTION + outcome as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_are_distinct_and_in_range() {
        let mut seen = std::collections::BTreeSet::new();
        for d in Direction::ALL {
            for o in Outcome::ALL {
                let i = index(d, o);
                assert!(i < STATS_ENTRIES, "{d:?}/{o:?} index {i} out of range");
                assert!(seen.insert(i), "{d:?}/{o:?} index {i} used twice");
            }
        }
    }

    #[test]
    fn drops_are_numbered_as_drops() {
        for o in Outcome::ALL {
            let variant = std::format!("{o:?}");
            assert_eq!(o.is_drop(), variant.starts_with("Drop"), "{variant} is numbered {}", o as u32);
        }
    }
}
