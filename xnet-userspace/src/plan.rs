//! Planning, a pure step: what this host knows about itself ([`HostFacts`]) plus what the store
//! says (the [`Overlay`] and the peers) become what the datapath should hold: CONFIG, the routes
//! and peers ([`Wanted`]), the route index's shape, the MTU and how decapsulation attaches.

use std::net::Ipv4Addr;

use xnet_common::maps::{
    Backend, DatapathConfig, DatapathParams, Formats, IngressHook, Peer, RemoteSubnet, Store,
};

use crate::{
    cidr::{self, Ipv4Network},
    config::PeerConfig,
    datapath::sync::{RouteIndexSpec, Wanted, WantedRoute},
    mac::Mac,
    store::Overlay,
};

/// What the agent found out about this host before planning.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    pub underlay_index: u32,
    pub underlay_mtu: u32,
    /// The networks of the underlay's addresses: peers on them are on this host's segment.
    pub underlay_nets: Vec<Ipv4Network>,
    /// The underlay is a virtual device (veth, bridge...): XDP there would cost the sender its
    /// GSO, so decapsulation attaches at tc.
    pub underlay_virtual: bool,
    pub public_ip: Ipv4Addr,
    /// The public IP is an address of the underlay (not a NAT's): tunnel packets must be
    /// addressed to it.
    pub public_ip_on_host: bool,
    pub vtep_mac: Mac,
    /// The config accepts untunnelled traffic to containers from anyone (`untunnelled = "any"`).
    pub untunnelled_open: bool,
}

/// A plan that cannot work on this host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(
        "the underlay interface has MTU {mtu}, too small for {overhead} bytes of tunnel headers; raise it"
    )]
    MtuTooSmall { mtu: u32, overhead: u32 },
    #[error(
        "peer {subnet} would be sent with {backend}, whose {overhead} bytes of headers do not fit the containers' MTU {mtu} (planned at start for the peers known then); restart the agent to plan for it"
    )]
    PeerDoesNotFit { subnet: Ipv4Network, backend: &'static str, overhead: u32, mtu: u32 },
}

/// The datapath this host should have.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub facts: HostFacts,
    pub overlay: Overlay,
    pub ingress: IngressHook,
    /// The containers' MTU: the underlay's, less the costliest encapsulation this host sends with.
    pub overlay_mtu: u32,
    /// A peer known at start names no backend (a static file's `[[peer]]` without `backend`): it
    /// sends with its own `type`, which this host cannot know, so every format is judged. (Peers
    /// from etcd always name theirs: the lease's, which is also what they send to this host with,
    /// this host's.)
    pub peers_undeclared: bool,
}

impl Plan {
    /// Plans for `facts` and `overlay`; `ingress`: the configured hook (`None`: auto); `peers`: the
    /// peers known at start (their backends count towards the MTU).
    pub fn new(
        facts: HostFacts,
        overlay: Overlay,
        ingress: Option<IngressHook>,
        peers: &[PeerConfig],
    ) -> Result<Self, PlanError> {
        let ingress =
            ingress.unwrap_or(if facts.underlay_virtual { IngressHook::Tc } else { IngressHook::Xdp });
        let peers_undeclared = peers.iter().any(|p| p.backend.is_none());
        let mut plan = Self { facts, overlay, ingress, overlay_mtu: 0, peers_undeclared };
        let tunnel = &plan.overlay.tunnel;
        let overhead = peers
            .iter()
            .map(|p| plan.backend_for(p))
            .chain([tunnel.kind])
            .map(|b| tunnel.overhead(b))
            .max()
            .unwrap_or(0);
        let mtu = plan.facts.underlay_mtu;
        // 68: the smallest MTU IPv4 allows (RFC 791).
        plan.overlay_mtu =
            mtu.checked_sub(overhead).filter(|m| *m >= 68).ok_or(PlanError::MtuTooSmall { mtu, overhead })?;
        Ok(plan)
    }

    /// Takes `peers` in place of the ones known at start (the static file read again): their
    /// headers must fit in the MTU planned then, which the containers already have; a peer that
    /// names no backend widens the formats judged to all ([`Plan::peers_undeclared`]). Otherwise
    /// the first peer that does not fit, and the plan is unchanged.
    pub fn take_peers(&mut self, peers: &[PeerConfig]) -> Result<(), PlanError> {
        let tunnel = &self.overlay.tunnel;
        let room = self.facts.underlay_mtu - self.overlay_mtu;
        for p in peers {
            let backend = self.backend_for(p);
            let overhead = tunnel.overhead(backend);
            if overhead > room {
                return Err(PlanError::PeerDoesNotFit {
                    subnet: p.subnet,
                    backend: backend.name(),
                    overhead,
                    mtu: self.overlay_mtu,
                });
            }
        }
        self.peers_undeclared |= peers.iter().any(|p| p.backend.is_none());
        Ok(())
    }

    /// The same plan, with room in the MTU for peers off the underlay's segment that appear later
    /// (a routes store that encapsulates to hosts behind routers): with `direct`, the fallback's
    /// headers count from the start.
    pub fn with_off_segment_peers(mut self) -> Result<Self, PlanError> {
        let tunnel = &self.overlay.tunnel;
        let overhead = tunnel.overhead(self.sends_with(tunnel.kind, false));
        let mtu = self.facts.underlay_mtu;
        let room =
            mtu.checked_sub(overhead).filter(|m| *m >= 68).ok_or(PlanError::MtuTooSmall { mtu, overhead })?;
        self.overlay_mtu = self.overlay_mtu.min(room);
        Ok(self)
    }

    /// Whether `ip` is on the underlay's segment (reachable without a router).
    pub fn on_link(&self, ip: Ipv4Addr) -> bool {
        self.facts.underlay_nets.iter().any(|n| n.contains(ip))
    }

    /// What a peer that asks for `kind` is sent with: `direct` needs the peer on this segment,
    /// else the tunnel's fallback.
    fn sends_with(&self, kind: Backend, on_link: bool) -> Backend {
        match kind {
            Backend::Direct if !on_link => self.overlay.tunnel.fallback,
            k => k,
        }
    }

    /// The backend `peer` is sent with: its own, or the tunnel's, and for `direct` peers that are
    /// not on the underlay's segment, the fallback.
    pub fn backend_for(&self, peer: &PeerConfig) -> Backend {
        self.sends_with(peer.backend.unwrap_or(self.overlay.tunnel.kind), self.on_link(peer.public_ip))
    }

    /// The REMOTE_SUBNETS value and the PEERS entry for `peer`.
    pub fn entries(&self, peer: &PeerConfig) -> (RemoteSubnet, Peer) {
        let backend = self.backend_for(peer);
        let mac = peer.vtep_mac.0;
        (RemoteSubnet::new(peer.public_ip.octets(), mac, backend), Peer::new(mac, backend))
    }

    /// Records `peer` in `wanted`.
    pub fn set_peer(&self, wanted: &mut Wanted, peer: &PeerConfig) {
        let (route, entry) = self.entries(peer);
        wanted.set(peer.subnet, route, entry);
        if let Some(protocol) = peer.protocol {
            wanted.set_protocol(peer.subnet, protocol);
        }
    }

    /// The routes and peers for `peers`, from `source`.
    pub fn wanted<'a>(&self, source: Store, peers: impl IntoIterator<Item = &'a PeerConfig>) -> Wanted {
        let routes = peers
            .into_iter()
            .map(|p| {
                let (route, peer) = self.entries(p);
                WantedRoute { subnet: p.subnet, route, peer, protocol: p.protocol }
            })
            .collect();
        Wanted::filled(source, self.route_index(), routes)
    }

    /// The shape of the route index: the overlay network, and this host's subnet length as every
    /// host's (flannel's SubnetLen; a peer with another length switches the index off).
    pub fn route_index(&self) -> RouteIndexSpec {
        RouteIndexSpec { network: self.overlay.network, subnet_len: self.overlay.subnet.prefix() }
    }

    /// The tunnel formats this host judges on ingress: what its peers send it (its own backend, and
    /// the fallback's when that is `direct`: peers off its segment use it) and what it sends with
    /// (every route in `wanted`); every format while a peer names no backend (see
    /// [`Plan::peers_undeclared`]). GRE or UDP of the others passes untouched.
    pub fn formats(&self, wanted: &Wanted) -> Formats {
        if self.peers_undeclared {
            return Formats::ALL;
        }
        let tunnel = &self.overlay.tunnel;
        let fallback = if tunnel.kind == Backend::Direct { tunnel.fallback } else { tunnel.kind };
        // Counted as routes come and go: no walk over every route on every change.
        Formats::of([tunnel.kind, fallback].into_iter().chain(wanted.backends()))
    }

    /// Whether peers may send this host VXLAN: its own backend or, for `direct`, the fallback is
    /// vxlan, or a peer names no backend (then it sends with whatever it uses).
    pub fn receives_vxlan(&self) -> bool {
        let tunnel = &self.overlay.tunnel;
        let fallback = if tunnel.kind == Backend::Direct { tunnel.fallback } else { tunnel.kind };
        self.peers_undeclared || tunnel.kind == Backend::Vxlan || fallback == Backend::Vxlan
    }

    /// CONFIG, apart from the route index fields (the sync owns those), for the routes of `wanted`
    /// (see [`Plan::formats`]); `gateway_mac`: the MAC of the first container interface (zero while
    /// unknown).
    pub fn datapath_config(&self, gateway_mac: [u8; 6], wanted: &Wanted) -> DatapathConfig {
        let tunnel = &self.overlay.tunnel;
        let subnet = &self.overlay.subnet;
        // The outer header templates are built from these when CONFIG is written.
        DatapathConfig::new(&DatapathParams {
            underlay_ifindex: self.facts.underlay_index,
            underlay_mtu: self.facts.underlay_mtu,
            local_ip: self.facts.public_ip.octets(),
            local_subnet: subnet.network().octets(),
            local_netmask: subnet.mask().octets(),
            vni: tunnel.vni,
            vxlan_port: tunnel.vxlan_port,
            vtep_mac: self.facts.vtep_mac.0,
            udp_port: tunnel.udp_port,
            gre_key: tunnel.gre_key,
            local_ip_on_host: self.facts.public_ip_on_host,
            untunnelled_open: self.facts.untunnelled_open,
            formats: self.formats(wanted),
        })
        .with_gateway_mac(gateway_mac)
    }

    /// The address this host's container bridge holds: the first of its subnet.
    pub fn bridge_address(&self) -> Ipv4Addr {
        cidr::first_host(&self.overlay.subnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tunnel;

    fn facts(virtual_underlay: bool) -> HostFacts {
        HostFacts {
            underlay_index: 3,
            underlay_mtu: 1500,
            underlay_nets: vec![cidr::parse("198.18.0.0/24").unwrap()],
            underlay_virtual: virtual_underlay,
            public_ip: "198.18.0.1".parse().unwrap(),
            public_ip_on_host: true,
            vtep_mac: Mac::from_ipv4("198.18.0.1".parse().unwrap()),
            untunnelled_open: false,
        }
    }

    fn overlay(kind: Backend) -> Overlay {
        Overlay {
            network: cidr::parse("10.244.0.0/16").unwrap(),
            subnet: cidr::parse("10.244.1.0/24").unwrap(),
            tunnel: Tunnel { kind, ..Tunnel::default() },
        }
    }

    fn peer(subnet: &str, ip: &str, backend: Option<Backend>) -> PeerConfig {
        let public_ip = ip.parse().unwrap();
        PeerConfig {
            subnet: cidr::parse(subnet).unwrap(),
            public_ip,
            vtep_mac: Mac::from_ipv4(public_ip),
            backend,
            protocol: None,
        }
    }

    #[test]
    fn peers_taken_later_must_fit_the_mtu_planned_at_start() {
        // A GRE host started with GRE peers only: MTU 1476, only its own formats judged.
        let gre_peer = peer("10.244.2.0/24", "198.18.0.2", Some(Backend::Gre));
        let mut plan =
            Plan::new(facts(true), overlay(Backend::Gre), None, std::slice::from_ref(&gre_peer)).unwrap();
        assert_eq!((plan.overlay_mtu, plan.peers_undeclared), (1476, false));
        let before = plan.clone();
        // A vxlan peer needs 50 bytes: refused, the plan unchanged.
        let vxlan_peer = peer("10.244.3.0/24", "198.18.0.3", Some(Backend::Vxlan));
        assert_eq!(
            plan.take_peers(&[gre_peer.clone(), vxlan_peer]),
            Err(PlanError::PeerDoesNotFit {
                subnet: cidr::parse("10.244.3.0/24").unwrap(),
                backend: "vxlan",
                overhead: 50,
                mtu: 1476
            })
        );
        assert_eq!(plan, before);
        // GRE and direct peers fit; one that names no backend widens the formats to all.
        let direct_peer = peer("10.244.4.0/24", "198.18.0.4", Some(Backend::Direct));
        assert_eq!(plan.take_peers(&[gre_peer.clone(), direct_peer]), Ok(()));
        assert!(!plan.peers_undeclared);
        assert_eq!(plan.take_peers(&[peer("10.244.5.0/24", "198.18.0.5", None)]), Ok(()));
        assert!(plan.peers_undeclared);
        assert_eq!(plan.formats(&plan.wanted(Store::File, &[])), Formats::ALL);
        assert_eq!(plan.overlay_mtu, 1476, "the MTU never changes after start");
    }

    #[test]
    fn mtu_ingress_and_backends() {
        let peers = [peer("10.244.2.0/24", "198.18.0.2", None), peer("10.244.3.0/24", "198.19.0.3", None)];
        let plan = Plan::new(facts(true), overlay(Backend::Direct), None, &peers).unwrap();
        assert_eq!(plan.ingress, IngressHook::Tc, "virtual underlay: tc");
        assert_eq!(plan.backend_for(&peers[0]), Backend::Direct, "on the segment");
        assert_eq!(plan.backend_for(&peers[1]), Backend::Vxlan, "off the segment: the fallback");
        assert_eq!(plan.overlay_mtu, 1450, "the fallback's headers count");
        let adjacent = Plan::new(facts(true), overlay(Backend::Direct), None, &peers[..1]).unwrap();
        assert_eq!(adjacent.overlay_mtu, 1500, "every peer on the segment: no overhead");
        let later = adjacent.clone().with_off_segment_peers().unwrap();
        assert_eq!(later.overlay_mtu, 1450, "room for the fallback of peers that come later");
        let gre = Plan::new(facts(true), overlay(Backend::Gre), None, &[]).unwrap();
        assert_eq!(gre.clone().with_off_segment_peers().unwrap().overlay_mtu, gre.overlay_mtu);
        let gre = Plan::new(facts(false), overlay(Backend::Gre), Some(IngressHook::Tc), &[]).unwrap();
        assert_eq!((gre.ingress, gre.overlay_mtu), (IngressHook::Tc, 1476));
        let mixed = [peer("10.244.2.0/24", "198.18.0.2", Some(Backend::Vxlan))];
        let p = Plan::new(facts(false), overlay(Backend::Gre), None, &mixed).unwrap();
        assert_eq!((p.ingress, p.overlay_mtu), (IngressHook::Xdp, 1450), "a vxlan peer costs 50");
        let tiny = HostFacts { underlay_mtu: 100, ..facts(true) };
        assert_eq!(
            Plan::new(tiny, overlay(Backend::Vxlan), None, &[]).unwrap_err(),
            PlanError::MtuTooSmall { mtu: 100, overhead: 50 }
        );
    }

    #[test]
    fn config_and_entries() {
        let plan = Plan::new(facts(true), overlay(Backend::Vxlan), None, &[]).unwrap();
        let cfg = plan.datapath_config([2, 0, 0, 0, 0, 9], &plan.wanted(Store::File, []));
        assert_eq!(
            (cfg.local_ip(), cfg.local_subnet(), cfg.local_netmask()),
            ([198, 18, 0, 1], [10, 244, 1, 0], [255, 255, 255, 0])
        );
        assert_eq!(
            (cfg.vxlan_port(), cfg.udp_port(), cfg.gre_key(), cfg.underlay_ifindex(), cfg.underlay_mtu()),
            (8472, 8285, None, 3, 1500)
        );
        assert_eq!(
            (cfg.vni(), cfg.vtep_mac(), cfg.gateway_mac()),
            (1, plan.facts.vtep_mac.0, [2, 0, 0, 0, 0, 9])
        );
        assert!(!cfg.route_index_on(), "the sync owns the route index");
        let p = peer("10.244.2.0/24", "198.18.0.2", Some(Backend::Gre));
        let (route, entry) = plan.entries(&p);
        assert_eq!(
            (route.peer_ip(), route.vtep_mac(), route.backend(), entry.vtep_mac(), entry.backend()),
            ([198, 18, 0, 2], p.vtep_mac.0, Some(Backend::Gre), p.vtep_mac.0, Some(Backend::Gre))
        );
        let wanted = plan.wanted(Store::File, [&p]);
        assert_eq!((wanted.routes().len(), wanted.peer_count()), (1, 1));
        assert_eq!(plan.bridge_address(), Ipv4Addr::new(10, 244, 1, 1));
    }

    #[test]
    fn formats_follow_the_backend_and_the_routes() {
        let formats = |kind, peers: &[PeerConfig]| {
            let plan = Plan::new(facts(true), overlay(kind), None, peers).unwrap();
            let wanted = plan.wanted(Store::File, peers);
            let cfg = plan.datapath_config([0; 6], &wanted);
            assert_eq!(cfg.formats(), plan.formats(&wanted), "CONFIG holds them");
            cfg.formats()
        };
        let f = |vxlan, udp, gre| Formats { vxlan, udp, gre };
        assert_eq!(
            formats(Backend::Gre, &[]),
            f(false, false, true),
            "its own only: not the unused fallback"
        );
        assert_eq!(formats(Backend::Udp, &[]), f(false, true, false));
        assert_eq!(
            formats(Backend::Direct, &[]),
            f(true, false, false),
            "direct: peers off the segment use the fallback"
        );
        let on_link_direct = peer("10.244.2.0/24", "198.18.0.2", Some(Backend::Direct));
        let off_link_direct = peer("10.244.3.0/24", "198.19.0.3", Some(Backend::Direct));
        let udp = peer("10.244.4.0/24", "198.18.0.4", Some(Backend::Udp));
        assert_eq!(formats(Backend::Gre, std::slice::from_ref(&on_link_direct)), f(false, false, true));
        assert_eq!(formats(Backend::Gre, &[off_link_direct]), f(true, false, true), "sent with the fallback");
        assert_eq!(formats(Backend::Gre, &[on_link_direct, udp.clone()]), f(false, true, true));
        // A peer without a backend of its own sends with its own type, whatever that is.
        assert_eq!(formats(Backend::Gre, &[peer("10.244.6.0/24", "198.18.0.6", None)]), Formats::ALL);
        // A peer that appears later switches its format on with the next CONFIG the agent writes.
        let plan = Plan::new(facts(true), overlay(Backend::Vxlan), None, &[]).unwrap();
        let mut wanted = plan.wanted(Store::File, []);
        assert_eq!(plan.formats(&wanted), f(true, false, false));
        plan.set_peer(&mut wanted, &udp);
        assert_eq!(plan.datapath_config([0; 6], &wanted).formats(), f(true, true, false));
    }
}
