//! What the packet decisions must answer, for the fuzzers (`fuzz/`, `cargo xtask fuzz`) and the
//! fixed-seed fuzz tests: a reference of each classifier written independently, byte by byte from
//! the rules in their documentation (big-endian reads of named fields, where the classifiers load
//! little-endian words), in the addressing of [`crate::mutate::frames`]; and what must hold
//! whatever the frame: trailing bytes (Ethernet padding) never change a decision that did not
//! depend on the frame's length, and nothing is decapsulated that is too short for its headers.
//!
//! Only with the `mutate` feature (or in this crate's tests): the programs never see it.

use crate::decap::{self, DecapDecision, Tunnel};
use crate::egress::{self, EgressDecision};
use crate::maps::{Backend, DatapathConfig, DatapathParams, Formats, RemoteSubnet};
use crate::mutate::frames::{CONTAINER, GRE_KEY, LOCAL_IP, PEERS, UDP_PORT, VNI, VXLAN_PORT};
use crate::stats::Outcome;

/// This host's CONFIG: GRE keyed with `gre_key`, `local_ip` its own address or not (behind a NAT),
/// untunnelled traffic to containers open to anyone or not, judging the tunnel formats `formats`.
pub fn params(
    gre_key: Option<u32>,
    on_host: bool,
    untunnelled_open: bool,
    formats: Formats,
) -> DatapathParams {
    DatapathParams {
        underlay_ifindex: 1,
        underlay_mtu: 1500,
        local_ip: LOCAL_IP,
        local_subnet: [10, 244, 1, 0],
        local_netmask: [255, 255, 255, 0],
        vni: VNI,
        vxlan_port: VXLAN_PORT,
        udp_port: UDP_PORT,
        gre_key,
        local_ip_on_host: on_host,
        untunnelled_open,
        formats,
        ..Default::default()
    }
}

fn be16(f: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([f[at], f[at + 1]])
}

fn ip4(f: &[u8], at: usize) -> [u8; 4] {
    [f[at], f[at + 1], f[at + 2], f[at + 3]]
}

pub fn is_peer(ip: &[u8; 4]) -> bool {
    ip[..3] == [198, 18, 0] && PEERS.contains(&ip[3])
}

/// The backend this host reaches peer 198.18.0.<n> with: vxlan, udp, gre, direct for n = 2 to 5.
pub fn backend_of(n: u8) -> Backend {
    match n {
        2 => Backend::Vxlan,
        3 => Backend::Udp,
        4 => Backend::Gre,
        _ => Backend::Direct,
    }
}

/// The routes: 10.244.<n>.0/24 via peer 198.18.0.<n>: the peer's public address.
pub fn owner(ip: &[u8; 4]) -> Option<[u8; 4]> {
    (ip[..2] == [10, 244] && PEERS.contains(&ip[2])).then_some([198, 18, 0, ip[2]])
}

/// The same routes as the map holds them (for the classifiers under test).
pub fn route(ip: &[u8; 4]) -> Option<&'static RemoteSubnet> {
    static ROUTES: [RemoteSubnet; 4] = [
        RemoteSubnet::new([198, 18, 0, 2], [2, 0, 0xc6, 0x12, 0, 2], Backend::Vxlan),
        RemoteSubnet::new([198, 18, 0, 3], [2, 0, 0xc6, 0x12, 0, 3], Backend::Udp),
        RemoteSubnet::new([198, 18, 0, 4], [2, 0, 0xc6, 0x12, 0, 4], Backend::Gre),
        RemoteSubnet::new([198, 18, 0, 5], [2, 0, 0xc6, 0x12, 0, 5], Backend::Direct),
    ];
    owner(ip).map(|peer| &ROUTES[(peer[3] - 2) as usize])
}

pub fn local(ip: &[u8; 4]) -> bool {
    ip[..3] == [10, 244, 1]
}

/// The ingress rules, read off the wire format field by field.
pub fn reference_decap(f: &[u8], p: &DatapathParams) -> DecapDecision {
    use DecapDecision::{Decap, Drop, Pass};
    // Ethernet and the outer IPv4 header whole, EtherType IPv4.
    if f.len() < 34 || be16(f, 12) != 0x0800 {
        return Pass;
    }
    // A tunnel packet: no options, not a later fragment, its transport header there (UDP's whole),
    // UDP to a tunnel port or GRE carrying IPv4, of a format in use.
    let plain_header = f[14] == 0x45 && be16(f, 20) & 0x1fff == 0;
    let tunnel = match f[23] {
        17 if plain_header && f.len() >= 42 => match be16(f, 36) {
            port if port == p.vxlan_port && p.formats.vxlan => Some(Tunnel::Vxlan),
            port if port == p.udp_port && p.formats.udp => Some(Tunnel::Udp),
            _ => None,
        },
        47 if plain_header && f.len() >= 38 && be16(f, 36) == 0x0800 && p.formats.gre => {
            if be16(f, 34) & 0x2000 != 0 { Some(Tunnel::GreKeyed) } else { Some(Tunnel::Gre) }
        }
        _ => None,
    };
    let src = ip4(f, 26);
    let Some(tunnel) = tunnel else {
        // Anything else for this host's containers: from a `direct` peer's containers only, unless
        // the config opens it to anyone.
        let from_direct_peer = owner(&src).is_some_and(|peer| backend_of(peer[3]) == Backend::Direct);
        return if !local(&ip4(f, 30)) || p.untunnelled_open || from_direct_peer {
            Pass
        } else {
            Drop(Outcome::DropUntunnelledNotDirectPeer)
        };
    };
    let sum: u32 = (0..10).map(|i| be16(f, 14 + 2 * i) as u32).sum();
    if crate::csum::fold(sum) != 0xffff {
        return Drop(Outcome::DropBadOuterChecksum);
    }
    if be16(f, 20) & 0x2000 != 0 {
        return Drop(Outcome::DropOuterFragment);
    }
    if p.local_ip_on_host && ip4(f, 30) != p.local_ip {
        return Drop(Outcome::DropOuterNotLocal);
    }
    if !is_peer(&src) {
        return Drop(Outcome::DropUnknownPeer);
    }
    let inner = match tunnel {
        Tunnel::Vxlan => {
            if f.len() < 50 {
                return Drop(Outcome::DropTruncated);
            }
            if f[42] & 0x08 == 0 || f[46..49] != p.vni.to_be_bytes()[1..] {
                return Drop(Outcome::DropBadVni);
            }
            if f.len() < 64 {
                return Drop(Outcome::DropTruncated);
            }
            if be16(f, 62) != 0x0800 {
                return Drop(Outcome::DropBadInnerProtocol);
            }
            64
        }
        Tunnel::Udp => 42,
        Tunnel::Gre | Tunnel::GreKeyed => {
            if be16(f, 34) & 0x9007 != 0 {
                return Drop(Outcome::DropBadGreHeader);
            }
            match (p.gre_key, tunnel) {
                (None, Tunnel::Gre) => 38,
                (Some(key), Tunnel::GreKeyed) => {
                    if f.len() < 42 {
                        return Drop(Outcome::DropTruncated);
                    }
                    if u32::from_be_bytes(ip4(f, 38)) != key {
                        return Drop(Outcome::DropBadGreKey);
                    }
                    42
                }
                _ => return Drop(Outcome::DropBadGreKey),
            }
        }
    };
    if f.len() < inner + 20 {
        return Drop(Outcome::DropTruncated);
    }
    if f[inner] >> 4 != 4 {
        return Drop(Outcome::DropBadInnerProtocol);
    }
    if !local(&ip4(f, inner + 16)) {
        return Drop(Outcome::DropInnerNotLocal);
    }
    let inner_src = ip4(f, inner + 12);
    if local(&inner_src) || owner(&inner_src) != Some(src) {
        return Drop(Outcome::DropInnerSourceNotPeer);
    }
    Decap(tunnel)
}

/// The egress rules, read off the wire format field by field.
pub fn reference_egress(f: &[u8]) -> EgressDecision<[u8; 4]> {
    if f.len() < 34 || be16(f, 12) != 0x0800 || f[14] >> 4 != 4 {
        return EgressDecision::Pass;
    }
    match owner(&ip4(f, 30)) {
        Some(route) if f[..6] != CONTAINER => {
            if local(&ip4(f, 26)) {
                EgressDecision::Encapsulate { route, tos: f[15] }
            } else {
                EgressDecision::Drop(Outcome::DropSourceNotLocal)
            }
        }
        _ => EgressDecision::Pass,
    }
}

/// The CONFIG the ingress checks run with, picked by the bits of `which`: 1 GRE keyed with
/// [`GRE_KEY`], 2 behind a NAT (the outer destination unchecked), 4 untunnelled traffic to
/// containers open to anyone, 8/16/32 VXLAN/udp/GRE *not* in use (so 0 is every format, unkeyed,
/// the public address on the host, closed); the two highest bits are ignored.
pub fn config(which: u8) -> (DatapathConfig, DatapathParams) {
    let formats = Formats { vxlan: which & 8 == 0, udp: which & 16 == 0, gre: which & 32 == 0 };
    let gre_key = (which & 1 != 0).then_some(GRE_KEY);
    let p = params(gre_key, which & 2 == 0, which & 4 != 0, formats);
    (DatapathConfig::new(&p), p)
}

/// The ingress decision on `f` with the config `which` picks (see [`config`]), checked: equal to the
/// reference, unchanged by padding unless it depended on the length, and never a decapsulation of
/// a frame shorter than its headers. Panics on a violation.
pub fn check_decap(f: &[u8], which: u8) -> DecapDecision {
    let (cfg, p) = config(which);
    let got = decap::classify(f, &cfg, is_peer, route);
    let want = reference_decap(f, &p);
    assert_eq!(got, want, "config {p:?}, frame {f:02x?}");
    if let DecapDecision::Decap(t) = got {
        assert!(f.len() >= 14 + t.strip_len() + 20, "decapsulated a short frame {f:02x?}");
    }
    // What depends on the length: a pass (a frame cut short is left to the kernel), a truncation
    // drop, and an untunnelled drop of a frame cut short before its transport header is whole (no
    // tunnel packet without one: with padding it may become one, and be judged as such).
    let cut_short_untunnelled =
        got == DecapDecision::Drop(Outcome::DropUntunnelledNotDirectPeer) && f.len() < 14 + 20 + 8;
    if !matches!(got, DecapDecision::Pass | DecapDecision::Drop(Outcome::DropTruncated))
        && !cut_short_untunnelled
    {
        let mut padded = alloc::vec::Vec::from(f);
        padded.extend_from_slice(&[0; 8]);
        assert_eq!(decap::classify(&padded[..], &cfg, is_peer, route), got, "padded {f:02x?}");
    }
    got
}

/// The egress decision on `f`, checked: equal to the reference, unchanged by padding unless it is
/// a pass. Panics on a violation.
pub fn check_egress(f: &[u8]) -> EgressDecision<[u8; 4]> {
    let container = crate::wire::mac_word(&CONTAINER);
    let got = egress::classify(f, owner, |mac| mac == container, local);
    assert_eq!(got, reference_egress(f), "frame {f:02x?}");
    if !matches!(got, EgressDecision::Pass) {
        let mut padded = alloc::vec::Vec::from(f);
        padded.extend_from_slice(&[0; 8]);
        let again = egress::classify(&padded[..], owner, |mac| mac == container, local);
        assert_eq!(again, got, "padded {f:02x?}");
    }
    got
}
