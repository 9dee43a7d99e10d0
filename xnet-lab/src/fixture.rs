//! The facts of a host that exists only for BPF_PROG_TEST_RUN and the map tests: the programs are
//! loaded without pins and fed packets, so the host has an underlay of index 1 and MTU 1500 and
//! nothing else.

use std::net::Ipv4Addr;

use xnet::{cidr, mac::Mac, plan::HostFacts};

/// A host with `public_ip` on a physical underlay whose address lies in `underlay` (a network such
/// as "198.18.0.0/24": peers in it are on this host's segment), its VTEP MAC derived from the IP.
pub fn host_facts(public_ip: Ipv4Addr, underlay: &str) -> HostFacts {
    HostFacts {
        underlay_index: 1,
        underlay_mtu: 1500,
        underlay_nets: vec![cidr::parse(underlay).expect("underlay network")],
        underlay_virtual: false,
        public_ip,
        public_ip_on_host: true,
        untunnelled_open: false,
        vtep_mac: Mac::from_ipv4(public_ip),
    }
}
