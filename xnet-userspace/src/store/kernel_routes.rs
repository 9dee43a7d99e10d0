//! The routes a routing daemon (FRR, BIRD) installs in the kernel, judged as peers: a pure table
//! that the routes store ([`super::daemon`]) feeds with what it dumps and hears, and that answers
//! with the peers to add, change and remove.
//!
//! A route is one of the daemon's when its table and protocol are the configured ones (never
//! [`ANNOUNCE_PROTOCOL`], xnet's own announcement). Of those, routes that do not lie inside the
//! overlay network (the underlay's, a default route) are none of the overlay's business and are
//! left alone. A route inside the network becomes a peer when its gateway is on the underlay's
//! segment (the host that owns the subnet); a route whose gateway is a configured router, or an
//! `onlink` gateway off the segment, is behind a router ([`BehindRouter`]). The rest is refused
//! (skipped, logged once, counted): the whole network, this host's own subnet, a subnet too small
//! for containers, no gateway, another interface than the underlay, several next hops, this
//! host's own address as gateway.
//!
//! Where the kernel holds several routes for one subnet (different metrics), the one it uses
//! (the lowest metric) decides, as it does for the kernel.

use std::{collections::BTreeMap, net::Ipv4Addr};

use crate::{
    cidr::{self, Ipv4Network},
    config::{ANNOUNCE_PROTOCOL, BehindRouter, PeerConfig, RoutesSettings, route_protocol_name},
    mac::Mac,
    netlink::KernelRoute,
    store::leases::PeerDelta,
};

/// What the table needs to know about this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLink {
    /// The underlay interface: learned routes must leave through it.
    pub underlay_index: u32,
    /// The networks of the underlay's addresses: gateways on them are on this host's segment.
    pub underlay_nets: Vec<Ipv4Network>,
    pub public_ip: Ipv4Addr,
}

/// What a route of the daemon's, inside the network, stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Verdict {
    /// A peer: the subnet's owner, or the originator behind a router (encapsulated to).
    Peer(PeerConfig),
    /// Behind a router and left to the kernel and the fabric.
    Fabric,
    /// Refused, with why.
    Refused(String),
}

/// The daemon's routes and the peers they make.
#[derive(Clone, Debug)]
pub struct RouteTable {
    settings: RoutesSettings,
    host: HostLink,
    /// The daemon's routes inside the network, by (subnet, metric).
    routes: BTreeMap<(Ipv4Network, u32), KernelRoute>,
    /// The verdict on each subnet's route in use.
    verdicts: BTreeMap<Ipv4Network, Verdict>,
}

impl RouteTable {
    pub fn new(settings: RoutesSettings, host: HostLink) -> Self {
        Self { settings, host, routes: BTreeMap::new(), verdicts: BTreeMap::new() }
    }

    /// The subnet of `route` if it is one of the daemon's routes inside the network.
    fn subnet_of(&self, route: &KernelRoute) -> Option<Ipv4Network> {
        if route.table != self.settings.table
            || route.protocol == ANNOUNCE_PROTOCOL
            || !self.settings.protocols.contains(&route.protocol)
        {
            return None;
        }
        let subnet = cidr::network(route.destination, route.prefix)?;
        // The network itself counts (it is refused below); routes around it or beside it do not.
        (cidr::contains(&self.settings.network, &subnet)).then_some(subnet)
    }

    /// Takes in an added or replaced (`present`) or deleted route.
    pub fn apply(&mut self, route: &KernelRoute, present: bool) {
        let Some(subnet) = self.subnet_of(route) else { return };
        if present {
            self.routes.insert((subnet, route.priority), route.clone());
        } else {
            self.routes.remove(&(subnet, route.priority));
        }
        self.judge(subnet);
    }

    /// Forgets every route and takes in `routes` (a dump) instead.
    pub fn reload(&mut self, routes: &[KernelRoute]) {
        let before: Vec<Ipv4Network> = self.verdicts.keys().copied().collect();
        self.routes.clear();
        for route in routes {
            if let Some(subnet) = self.subnet_of(route) {
                self.routes.insert((subnet, route.priority), route.clone());
            }
        }
        let mut subnets: Vec<Ipv4Network> = self.routes.keys().map(|(n, _)| *n).collect();
        subnets.extend(before);
        subnets.sort_unstable();
        subnets.dedup();
        for subnet in subnets {
            self.judge(subnet);
        }
    }

    /// Judges the route the kernel uses for `subnet` (the lowest metric), logging a new verdict.
    fn judge(&mut self, subnet: Ipv4Network) {
        let in_use = self.routes.range((subnet, 0)..=(subnet, u32::MAX)).next().map(|(_, r)| r);
        let Some(route) = in_use else {
            if let Some(old) = self.verdicts.remove(&subnet) {
                tracing::info!(subnet = %subnet, was = ?old, "learned route withdrawn");
            }
            return;
        };
        let verdict = self.verdict(subnet, route);
        if self.verdicts.get(&subnet) != Some(&verdict) {
            let protocol = route_protocol_name(route.protocol);
            match &verdict {
                Verdict::Peer(p) => {
                    tracing::info!(subnet = %subnet, next_hop = %p.public_ip, protocol, "learned route")
                }
                Verdict::Fabric => tracing::info!(
                    subnet = %subnet,
                    gateway = ?route.gateway,
                    protocol,
                    "learned route behind a router: left to the kernel and the fabric"
                ),
                Verdict::Refused(why) => tracing::warn!(
                    subnet = %subnet,
                    gateway = ?route.gateway,
                    protocol,
                    reason = %why,
                    "learned route skipped"
                ),
            }
            self.verdicts.insert(subnet, verdict);
        }
    }

    fn verdict(&self, subnet: Ipv4Network, route: &KernelRoute) -> Verdict {
        let refused = |why: String| Verdict::Refused(why);
        if subnet == self.settings.network {
            return refused(format!("covers the whole network {}", self.settings.network));
        }
        if cidr::overlaps(&subnet, &self.settings.subnet) {
            return refused(format!("overlaps this host's own subnet {}", self.settings.subnet));
        }
        if subnet.prefix() > 30 {
            return refused("is smaller than a /30 and leaves no room for containers".into());
        }
        if route.qualified {
            return refused("has a type of service or a source prefix".into());
        }
        if !route.unicast {
            return refused("is not a unicast route (blackhole, unreachable...)".into());
        }
        if route.multipath {
            return refused("has several next hops; xnet follows one host per subnet".into());
        }
        let Some(gateway) = route.gateway else {
            return refused("has no gateway".into());
        };
        if route.oif != Some(self.host.underlay_index) {
            return refused(format!(
                "leaves through interface index {} rather than the underlay (index {})",
                route.oif.unwrap_or(0),
                self.host.underlay_index
            ));
        }
        if gateway == self.host.public_ip {
            return refused(format!("has this host's own address {gateway} as gateway"));
        }
        if gateway.is_unspecified()
            || gateway.is_loopback()
            || gateway.is_multicast()
            || gateway.is_broadcast()
        {
            return refused(format!("has gateway {gateway}, which no host can have"));
        }
        let on_segment = self.host.underlay_nets.iter().any(|n| n.contains(gateway));
        let router = self.settings.routers.contains(&gateway);
        if !on_segment && !route.onlink {
            return refused(format!("has gateway {gateway}, off the underlay's segment and not onlink"));
        }
        if router || !on_segment {
            // A router's address says nothing about the originator; an onlink gateway off the
            // segment is the originator as the daemon names it.
            if router || self.settings.behind_router == BehindRouter::Fabric {
                return Verdict::Fabric;
            }
        }
        Verdict::Peer(PeerConfig {
            subnet,
            public_ip: gateway,
            vtep_mac: Mac::from_ipv4(gateway),
            // The tunnel's type; `direct` falls back to the encapsulation off the segment.
            backend: None,
            protocol: Some(route.protocol),
        })
    }

    /// The peers now.
    pub fn peers(&self) -> BTreeMap<Ipv4Network, PeerConfig> {
        self.verdicts
            .iter()
            .filter_map(|(n, v)| match v {
                Verdict::Peer(p) => Some((*n, p.clone())),
                _ => None,
            })
            .collect()
    }

    /// Routes skipped now.
    pub fn invalid(&self) -> u32 {
        self.verdicts.values().filter(|v| matches!(v, Verdict::Refused(_))).count() as u32
    }

    /// Routes left to the fabric now.
    pub fn fabric(&self) -> usize {
        self.verdicts.values().filter(|v| **v == Verdict::Fabric).count()
    }
}

/// What changed from `before` to `after`.
pub fn delta(
    before: &BTreeMap<Ipv4Network, PeerConfig>,
    after: &BTreeMap<Ipv4Network, PeerConfig>,
) -> PeerDelta {
    let mut d = PeerDelta::default();
    for (n, p) in after {
        if before.get(n) != Some(p) {
            d.set.push(p.clone());
        }
    }
    d.removed = before.keys().filter(|n| !after.contains_key(n)).copied().collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Tunnel;

    const UNDERLAY: u32 = 7;

    fn net(s: &str) -> Ipv4Network {
        cidr::parse(s).unwrap()
    }

    fn settings(behind_router: BehindRouter) -> RoutesSettings {
        RoutesSettings {
            network: net("10.244.0.0/16"),
            subnet: net("10.244.1.0/24"),
            tunnel: Tunnel::default(),
            protocols: vec![188, 12],
            table: 254,
            behind_router,
            routers: vec!["198.18.0.254".parse().unwrap()],
            announce: true,
        }
    }

    fn table(behind_router: BehindRouter) -> RouteTable {
        RouteTable::new(
            settings(behind_router),
            HostLink {
                underlay_index: UNDERLAY,
                underlay_nets: vec![net("198.18.0.0/24")],
                public_ip: "198.18.0.1".parse().unwrap(),
            },
        )
    }

    /// An OSPF route in main to `dst` via `gw` on the underlay.
    fn ospf(dst: &str, gw: &str) -> KernelRoute {
        let n = net(dst);
        KernelRoute {
            destination: n.network(),
            prefix: n.prefix(),
            table: 254,
            protocol: 188,
            unicast: true,
            gateway: Some(gw.parse().unwrap()),
            oif: Some(UNDERLAY),
            priority: 20,
            onlink: false,
            multipath: false,
            qualified: false,
        }
    }

    fn next_hops(t: &RouteTable) -> Vec<(String, String)> {
        t.peers().values().map(|p| (p.subnet.to_string(), p.public_ip.to_string())).collect()
    }

    #[test]
    fn routes_on_the_segment_make_peers_and_withdrawals_remove_them() {
        let mut t = table(BehindRouter::Fabric);
        t.apply(&ospf("10.244.2.0/24", "198.18.0.2"), true);
        t.apply(&ospf("10.244.3.0/24", "198.18.0.3"), true);
        let before = t.peers();
        assert_eq!(
            next_hops(&t),
            [("10.244.2.0/24".into(), "198.18.0.2".into()), ("10.244.3.0/24".into(), "198.18.0.3".into())]
        );
        let p = &before[&net("10.244.2.0/24")];
        assert_eq!(
            (p.backend, p.protocol, p.vtep_mac),
            (None, Some(188), Mac::from_ipv4("198.18.0.2".parse().unwrap()))
        );
        // A next hop that changes moves the route; a withdrawal removes it.
        t.apply(&ospf("10.244.2.0/24", "198.18.0.9"), true);
        t.apply(&ospf("10.244.3.0/24", "198.18.0.3"), false);
        let d = delta(&before, &t.peers());
        assert_eq!(d.set.iter().map(|p| p.public_ip.to_string()).collect::<Vec<_>>(), ["198.18.0.9"]);
        assert_eq!(d.removed, [net("10.244.3.0/24")]);
        assert_eq!(t.invalid(), 0);
    }

    #[test]
    fn other_tables_protocols_and_networks_are_not_the_overlays() {
        let mut t = table(BehindRouter::Fabric);
        let not_ours = [
            KernelRoute { table: 100, ..ospf("10.244.2.0/24", "198.18.0.2") },
            KernelRoute { protocol: 4, ..ospf("10.244.2.0/24", "198.18.0.2") },
            KernelRoute { protocol: ANNOUNCE_PROTOCOL, ..ospf("10.244.2.0/24", "198.18.0.2") },
            ospf("198.18.1.0/24", "198.18.0.254"),
            ospf("0.0.0.0/0", "198.18.0.254"),
            ospf("10.0.0.0/8", "198.18.0.254"),
            ospf("10.245.2.0/24", "198.18.0.2"),
        ];
        for r in &not_ours {
            t.apply(r, true);
        }
        assert_eq!((t.peers().len(), t.invalid(), t.fabric()), (0, 0, 0));
    }

    #[test]
    fn unusable_routes_are_refused_and_counted() {
        let mut t = table(BehindRouter::Fabric);
        let bad = [
            ospf("10.244.0.0/16", "198.18.0.2"),
            ospf("10.244.1.0/24", "198.18.0.2"),
            ospf("10.244.0.0/23", "198.18.0.2"),
            ospf("10.244.9.4/31", "198.18.0.2"),
            KernelRoute { gateway: None, ..ospf("10.244.10.0/24", "198.18.0.2") },
            KernelRoute { oif: Some(UNDERLAY + 1), ..ospf("10.244.11.0/24", "198.18.0.2") },
            KernelRoute { multipath: true, ..ospf("10.244.12.0/24", "198.18.0.2") },
            KernelRoute { unicast: false, ..ospf("10.244.13.0/24", "198.18.0.2") },
            KernelRoute { qualified: true, ..ospf("10.244.14.0/24", "198.18.0.2") },
            ospf("10.244.15.0/24", "198.18.0.1"),
            ospf("10.244.16.0/24", "198.19.0.2"),
        ];
        for r in &bad {
            t.apply(r, true);
        }
        assert_eq!((t.peers().len(), t.invalid()), (0, bad.len() as u32));
        // Withdrawn: no longer counted.
        t.apply(&bad[0], false);
        assert_eq!(t.invalid(), bad.len() as u32 - 1);
    }

    #[test]
    fn the_lowest_metric_decides() {
        let mut t = table(BehindRouter::Fabric);
        t.apply(&KernelRoute { priority: 30, ..ospf("10.244.2.0/24", "198.18.0.3") }, true);
        t.apply(&ospf("10.244.2.0/24", "198.18.0.2"), true);
        assert_eq!(next_hops(&t), [("10.244.2.0/24".into(), "198.18.0.2".into())]);
        t.apply(&ospf("10.244.2.0/24", "198.18.0.2"), false);
        assert_eq!(next_hops(&t), [("10.244.2.0/24".into(), "198.18.0.3".into())], "the other takes over");
    }

    #[test]
    fn routes_behind_a_router_follow_the_setting() {
        let via_router = ospf("10.244.4.0/24", "198.18.0.254");
        let onlink = KernelRoute { onlink: true, ..ospf("10.244.5.0/24", "198.18.1.5") };
        let mut fabric = table(BehindRouter::Fabric);
        fabric.apply(&via_router, true);
        fabric.apply(&onlink, true);
        assert_eq!((fabric.peers().len(), fabric.fabric(), fabric.invalid()), (0, 2, 0));
        let mut encap = table(BehindRouter::Encapsulate);
        encap.apply(&via_router, true);
        encap.apply(&onlink, true);
        assert_eq!(next_hops(&encap), [("10.244.5.0/24".into(), "198.18.1.5".into())], "the originator");
        assert_eq!(encap.fabric(), 1, "a router's address does not name the originator");
    }

    #[test]
    fn a_reload_replaces_everything() {
        let mut t = table(BehindRouter::Fabric);
        t.apply(&ospf("10.244.2.0/24", "198.18.0.2"), true);
        t.apply(&ospf("10.244.0.0/16", "198.18.0.2"), true);
        let before = t.peers();
        t.reload(&[ospf("10.244.3.0/24", "198.18.0.3")]);
        let d = delta(&before, &t.peers());
        assert_eq!((d.set.len(), d.removed.as_slice()), (1, &[net("10.244.2.0/24")][..]));
        assert_eq!(t.invalid(), 0, "the refused route is gone too");
    }
}
