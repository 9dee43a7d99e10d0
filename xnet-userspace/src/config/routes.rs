//! `[routes]`: which of a routing daemon's kernel routes the routes store learns, and how this
//! host's subnet is announced to the daemon.

use std::net::Ipv4Addr;

use serde::Deserialize;

use super::{Checker, ConfigError, StaticOverlay, Tunnel};
use crate::cidr::Ipv4Network;

/// What to do with a learned route whose next hop is a router rather than the host that owns the
/// subnet (`[routes] behind_router`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BehindRouter {
    /// Leave it to the kernel's route and the fabric, which learned the route too: no datapath
    /// route, the packet leaves as it is.
    Fabric,
    /// Encapsulate to the host that originated the route, when the daemon names it as the
    /// route's gateway (an `onlink` route to an address off the underlay's segment).
    Encapsulate,
}

/// The kernel route protocols of routing daemons, by the names `ip route` shows: what
/// `[routes] protocols` accepts, and its default.
pub const ROUTE_PROTOCOLS: &[(&str, u8)] = &[
    ("zebra", 11),
    ("bird", 12),
    ("babel", 42),
    ("bgp", 186),
    ("isis", 187),
    ("ospf", 188),
    ("rip", 189),
    ("eigrp", 192),
];

/// The name of kernel route protocol `number`, as `ip route` shows it.
pub fn route_protocol_name(number: u8) -> String {
    const OTHERS: &[(&str, u8)] = &[("redirect", 1), ("kernel", 2), ("boot", 3), ("static", 4), ("dhcp", 16)];
    ROUTE_PROTOCOLS
        .iter()
        .chain(OTHERS)
        .find(|(_, n)| *n == number)
        .map_or_else(|| number.to_string(), |(name, _)| name.to_string())
}

/// The kernel route protocol of the route with which xnet announces this host's subnet
/// (a blackhole route, behind the container bridge's): a routing daemon exports it without
/// per-host configuration, and the routes store never learns it back.
pub const ANNOUNCE_PROTOCOL: u8 = 44;

/// The routing table (and the priority of the rule that points to it) that sends this host's own
/// overlay traffic through the host device when a routing daemon's routes are in the main table
/// (see [`crate::host::apply`]).
pub const HOST_TABLE: u32 = 4243;

/// Where a routing daemon's routes are and which of them to learn (`[routes]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutesSettings {
    pub network: Ipv4Network,
    pub subnet: Ipv4Network,
    pub tunnel: Tunnel,
    /// The kernel route protocols (`RTPROT_*`) learned from.
    pub protocols: Vec<u8>,
    /// The routing table the daemon installs its routes in (254: main).
    pub table: u32,
    pub behind_router: BehindRouter,
    /// Gateways that are routers, not hosts of the overlay: routes through them are "behind a
    /// router" although the gateway is on the underlay's segment.
    pub routers: Vec<Ipv4Addr>,
    /// Announce this host's subnet with a route of [`ANNOUNCE_PROTOCOL`].
    pub announce: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoutes {
    protocols: Option<Vec<String>>,
    table: Option<toml::Value>,
    behind_router: Option<String>,
    routers: Option<Vec<String>>,
    announce: Option<bool>,
}

/// `[routes]` (all defaults when absent) over the network, subnet and tunnel of `o`.
pub(super) fn routes_settings(
    c: &Checker<'_>,
    raw: Option<&RawRoutes>,
    o: StaticOverlay,
) -> Result<RoutesSettings, ConfigError> {
    let default = RawRoutes::default();
    let raw = raw.unwrap_or(&default);
    let protocols = match &raw.protocols {
        None => ROUTE_PROTOCOLS.iter().map(|(_, n)| *n).collect(),
        Some(list) if list.is_empty() => {
            return Err(c.invalid(
                "routes.protocols",
                "is empty; name the protocols of the daemon's routes, e.g. [\"ospf\"] or [\"bird\"]".into(),
            ));
        }
        Some(list) => {
            let mut out = Vec::new();
            for (i, name) in list.iter().enumerate() {
                let number = ROUTE_PROTOCOLS
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| *p)
                    .or_else(|| name.parse::<u8>().ok().filter(|p| *p > 4 && *p != ANNOUNCE_PROTOCOL));
                let Some(number) = number else {
                    let names: Vec<&str> = ROUTE_PROTOCOLS.iter().map(|(n, _)| *n).collect();
                    return Err(c.invalid(
                        format!("routes.protocols[{i}]"),
                        format!(
                            "= \"{name}\" is not a routing daemon's route protocol; use one of {} or a number from 5 to 255 (not {ANNOUNCE_PROTOCOL}, xnet's own)",
                            names.join(", ")
                        ),
                    ));
                };
                if !out.contains(&number) {
                    out.push(number);
                }
            }
            out
        }
    };
    let table = match &raw.table {
        None => 254,
        Some(toml::Value::String(s)) if s == "main" => 254,
        Some(toml::Value::Integer(n))
            if (1..=i64::from(u32::MAX)).contains(n) && *n != 255 && *n != i64::from(HOST_TABLE) =>
        {
            *n as u32
        }
        Some(v) => {
            return Err(c.invalid(
                "routes.table",
                format!(
                    "= {v} is not a routing daemon's table; use \"main\" or a table number such as 254 (not 255, local, nor {}, xnet's own)",
                    HOST_TABLE
                ),
            ));
        }
    };
    let behind_router = match raw.behind_router.as_deref() {
        None | Some("fabric") => BehindRouter::Fabric,
        Some("encapsulate") => BehindRouter::Encapsulate,
        Some(other) => {
            return Err(c.invalid(
                "routes.behind_router",
                format!("= \"{other}\" must be \"fabric\" (the default) or \"encapsulate\""),
            ));
        }
    };
    let mut routers = Vec::new();
    for (i, r) in raw.routers.iter().flatten().enumerate() {
        routers.push(c.ip(format!("routes.routers[{i}]"), r)?);
    }
    Ok(RoutesSettings {
        network: o.network,
        subnet: o.subnet,
        tunnel: o.tunnel,
        protocols,
        table,
        behind_router,
        routers,
        announce: raw.announce.unwrap_or(true),
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use xnet_common::maps::Backend;

    use super::super::{Config, Overrides, StoreConfig};
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/xnet/xnet.toml"), text, &Overrides::default())
    }

    #[test]
    fn routes_mode_learns_the_peers_from_the_daemon() {
        let local = "network = \"10.244.0.0/16\"\nsubnet = \"10.244.1.0/24\"\niface = \"eth0\"\ncontainer_ifaces = [\"docker0\"]\n";
        let routes = |c: Config| match c.store {
            StoreConfig::Routes(r) => r,
            other => panic!("expected the routes store, got {other:?}"),
        };
        let r = routes(parse(&format!("{local}[backend]\ntype = \"direct\"\n[routes]\n")).unwrap());
        assert_eq!(
            r.protocols,
            ROUTE_PROTOCOLS.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
            "every daemon's"
        );
        assert_eq!(
            (r.table, r.behind_router, r.announce, r.routers.len()),
            (254, BehindRouter::Fabric, true, 0)
        );
        assert_eq!((r.subnet.to_string(), r.tunnel.kind), ("10.244.1.0/24".to_string(), Backend::Direct));
        let r = routes(
            parse(&format!(
                "{local}[routes]\nprotocols = [\"ospf\", \"bird\", \"200\", \"ospf\"]\ntable = 100\nbehind_router = \"encapsulate\"\nrouters = [\"198.18.0.254\"]\nannounce = false\n"
            ))
            .unwrap(),
        );
        assert_eq!(
            (r.protocols, r.table, r.behind_router, r.announce),
            (vec![188, 12, 200], 100, BehindRouter::Encapsulate, false)
        );
        assert_eq!(r.routers, ["198.18.0.254".parse::<Ipv4Addr>().unwrap()]);
        let flag = Overrides { routes: true, ..Default::default() };
        let on_cli = Config::parse(Path::new("/etc/xnet/xnet.toml"), local, &flag).unwrap();
        assert_eq!(routes(on_cli).table, 254, "--routes: the defaults");
        for (text, expected) in [
            (
                format!("{local}[routes]\nprotocols = [\"kernel\"]\n"),
                "`routes.protocols[0]` = \"kernel\" is not",
            ),
            (format!("{local}[routes]\nprotocols = [\"44\"]\n"), "`routes.protocols[0]`"),
            (format!("{local}[routes]\nprotocols = []\n"), "`routes.protocols` is empty"),
            (format!("{local}[routes]\ntable = \"local\"\n"), "`routes.table`"),
            (format!("{local}[routes]\ntable = 255\n"), "`routes.table`"),
            (format!("{local}[routes]\ntable = 4243\n"), "xnet's own"),
            (format!("{local}[routes]\nbehind_router = \"tunnel\"\n"), "`routes.behind_router`"),
            (format!("{local}[routes]\nrouters = [\"r1\"]\n"), "`routes.routers[0]`"),
            (format!("{local}[routes]\nprotcols = [\"ospf\"]\n"), "unknown field `protcols`"),
            (
                format!("{local}[routes]\n[etcd]\nendpoints = [\"http://e:2379\"]\n"),
                "`routes` and an etcd store",
            ),
            (
                format!(
                    "{local}[routes]\n[[peer]]\nsubnet = \"10.244.2.0/24\"\npublic_ip = \"198.18.0.2\"\n"
                ),
                "`peer` comes from the routing daemon",
            ),
            (
                "iface = \"eth0\"\ncontainer_ifaces = [\"docker0\"]\n[routes]\n".to_string(),
                "`network` is missing",
            ),
        ] {
            let e = parse(&text).expect_err(&text).to_string();
            assert!(e.contains(expected), "{text}: {e}");
            assert!(e.contains("/etc/xnet/xnet.toml") && e.lines().count() == 1, "{e}");
        }
    }
}
