//! Reading the pinned datapath state, for the CLI and the metrics. Everything here reads the pins
//! under the pin directory, through the datapath's own map accessors, so it works while no agent
//! runs.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, PinnedLink};
use serde::Serialize;
use xnet_common::{
    maps::{Backend, IfaceState, IngressHook, Store},
    stats::{self, Direction, Outcome},
};

pub use crate::datapath::DatapathError as InspectError;
use crate::{datapath::maps::Maps, mac::Mac};

/// One counter, summed over CPUs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct CounterRow {
    pub direction: &'static str,
    pub outcome: &'static str,
    /// The outcome's number (drop reasons are 128 and up; numbers are never reused).
    pub code: u32,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

/// Every counter of the datapath pinned under `pin_dir` (the outcomes possible in each direction).
pub fn read_counters(pin_dir: &Path) -> Result<Vec<CounterRow>, InspectError> {
    counters(&Maps::open(pin_dir)?)
}

/// Every counter of `maps` (the outcomes possible in each direction).
pub fn counters(maps: &Maps) -> Result<Vec<CounterRow>, InspectError> {
    let mut rows = Vec::new();
    for direction in Direction::ALL {
        for outcome in Outcome::ALL.into_iter().filter(|o| o.applies_to(direction)) {
            let c = maps.counter(stats::index(direction, outcome))?;
            let (packets, bytes) = (c.packets(), c.bytes());
            rows.push(CounterRow {
                direction: direction.name(),
                outcome: outcome.name(),
                code: outcome as u32,
                drop: outcome.is_drop(),
                packets,
                bytes,
            });
        }
    }
    Ok(rows)
}

/// A remote subnet and how it is reached.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RouteRow {
    pub subnet: String,
    pub peer: Ipv4Addr,
    pub backend: &'static str,
    /// VXLAN network identifier, for vxlan routes.
    pub vni: Option<u32>,
    /// GRE key, for gre routes that use one.
    pub key: Option<u32>,
    pub vtep_mac: String,
    /// "file" (static config), "etcd" or "routes" (a routing daemon's); "unknown" when the agent
    /// recorded nothing.
    pub source: &'static str,
    /// For "routes": the kernel route protocol the route was learned with ("ospf", "bgp",
    /// "bird"...).
    pub protocol: Option<String>,
    /// Seconds since the route was first installed.
    pub age_seconds: Option<u64>,
}

/// The routes of the datapath pinned under `pin_dir`, sorted by subnet.
pub fn read_routes(pin_dir: &Path, now: u64) -> Result<Vec<RouteRow>, InspectError> {
    routes(&Maps::open(pin_dir)?, now)
}

/// The routes in `maps`, sorted by subnet.
pub fn routes(maps: &Maps, now: u64) -> Result<Vec<RouteRow>, InspectError> {
    let config = maps.config()?;
    let vni = config.vni();
    let gre_key = config.gre_key();
    let mut rows = Vec::new();
    for (net, entry) in maps.route_entries()? {
        let (route, info) = (entry.route(), entry.info());
        let backend = route.backend();
        rows.push(RouteRow {
            subnet: net.to_string(),
            peer: Ipv4Addr::from(route.peer_ip()),
            backend: backend.map_or("unknown", Backend::name),
            vni: (backend == Some(Backend::Vxlan)).then_some(vni),
            key: gre_key.filter(|_| backend == Some(Backend::Gre)),
            vtep_mac: Mac(route.vtep_mac()).to_string(),
            source: info.source().map_or("unknown", Store::name),
            protocol: (info.source() == Some(Store::Routes) && info.protocol() != 0)
                .then(|| crate::config::route_protocol_name(info.protocol())),
            // 0: no installation time recorded.
            age_seconds: (info.added_at() != 0).then(|| now.saturating_sub(info.added_at())),
        });
    }
    Ok(rows)
}

/// One program attachment, from its pinned link.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AttachmentRow {
    pub iface: String,
    pub hook: &'static str,
    pub program: String,
    pub program_id: u32,
    pub link_id: u32,
}

/// A configured container interface, as the agent last recorded it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ContainerIfaceRow {
    pub name: String,
    /// "attached", or "awaited" (it does not exist yet, or could not be attached).
    pub state: &'static str,
    pub ifindex: u32,
}

/// The agent's record and what is attached.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Status {
    pub pin_dir: PathBuf,
    pub agent_pid: u32,
    pub agent_running: bool,
    pub agent_started_at: u64,
    pub store: &'static str,
    pub store_up: bool,
    /// Store entries skipped as malformed at the last reconcile.
    pub invalid_entries: u32,
    pub last_reconcile: u64,
    /// Unix seconds; `None` without a lease (static file).
    pub lease_expiry: Option<u64>,
    /// This host's subnet (as the datapath has it).
    pub subnet: String,
    /// Whether this host's subnet lease was lost to another host (it no longer advertises it).
    pub lease_lost: bool,
    /// The host that holds this host's subnet since it was lost, if one does.
    pub lease_holder: Option<Ipv4Addr>,
    pub overlay_mtu: u32,
    pub ingress: &'static str,
    /// `[backend] type`.
    pub backend: &'static str,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: String,
    pub vni: u32,
    pub vxlan_port: u16,
    pub udp_port: u16,
    pub gre_key: Option<u32>,
    /// The tunnel formats ingress judges ("vxlan, gre"; "none"); the others pass untouched.
    pub tunnel_formats: &'static str,
    pub peers: usize,
    pub routes: usize,
    /// Whether egress finds routes in ROUTE_INDEX (an array) instead of the LPM trie.
    pub route_index: bool,
    /// Who may reach containers without a tunnel: "any", or "direct peers" and the networks of
    /// `untunnelled_from`.
    pub untunnelled: String,
    pub attachments: Vec<AttachmentRow>,
    pub container_ifaces: Vec<ContainerIfaceRow>,
    /// The most container MACs one bridge port may have in LOCAL_PORTS, the ports that claim more
    /// and their MACs left out, at the agent's last sync.
    pub local_ports_cap: u32,
    pub ports_over_cap: u32,
    pub refused_macs: u64,
    /// Every map's capacity and kernel memory.
    pub maps: Vec<MapRow>,
    /// The map that refused the agent's last sync for want of room, if one did.
    pub full_map: Option<&'static str>,
    /// Syncs refused whole for want of room since the agent started.
    pub refused_syncs: u32,
}

#[cfg(test)]
impl Status {
    /// A file-store host with two peers, for the renderers' tests to vary.
    pub(crate) fn example() -> Self {
        Status {
            pin_dir: PathBuf::from("/sys/fs/bpf/xnet"),
            agent_pid: 42,
            agent_running: true,
            agent_started_at: 1_700_000_000,
            store: "file",
            store_up: true,
            invalid_entries: 0,
            last_reconcile: 1_700_000_100,
            lease_expiry: None,
            subnet: "10.244.1.0/24".into(),
            lease_lost: false,
            lease_holder: None,
            overlay_mtu: 1450,
            ingress: "tc",
            backend: "vxlan",
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
            vtep_mac: "02:00:00:00:00:01".into(),
            vni: 1,
            vxlan_port: 8472,
            udp_port: 8285,
            gre_key: None,
            tunnel_formats: "vxlan",
            peers: 2,
            routes: 5,
            route_index: false,
            untunnelled: "direct peers' subnets".into(),
            attachments: Vec::new(),
            container_ifaces: Vec::new(),
            local_ports_cap: 256,
            ports_over_cap: 0,
            refused_macs: 0,
            maps: Vec::new(),
            full_map: None,
            refused_syncs: 0,
        }
    }
}

/// One map in `xnet status`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct MapRow {
    pub name: &'static str,
    pub max_entries: u32,
    /// Kernel memory charged for it, bytes.
    pub memlock: u64,
}

/// `a.b.c.d/len` of a subnet and netmask in network order.
fn subnet_of(subnet: [u8; 4], netmask: [u8; 4]) -> String {
    format!("{}/{}", Ipv4Addr::from(subnet), u32::from_be_bytes(netmask).leading_ones())
}

/// Everything `xnet status` shows, for the datapath pinned under `pin_dir`.
pub fn read_status(pin_dir: &Path) -> Result<Status, InspectError> {
    status(&Maps::open(pin_dir)?, pin_dir)
}

/// What `xnet status` shows about `maps`, pinned under `pin_dir`.
pub fn status(maps: &Maps, pin_dir: &Path) -> Result<Status, InspectError> {
    let agent = maps.agent_state()?;
    let config = maps.config()?;
    let peers = maps.peers()?.len();
    let routes = maps.routes()?.len();
    let limit = maps.local_ports_limit()?;
    Ok(Status {
        local_ports_cap: limit.per_port(),
        ports_over_cap: limit.ports_over(),
        refused_macs: limit.refused_macs(),
        pin_dir: pin_dir.into(),
        agent_pid: agent.pid(),
        agent_running: agent.pid() != 0 && Path::new("/proc").join(agent.pid().to_string()).exists(),
        agent_started_at: agent.started_at(),
        store: agent.store().map_or("unknown", Store::name),
        store_up: agent.store_up(),
        invalid_entries: agent.invalid_entries(),
        last_reconcile: agent.last_reconcile(),
        lease_expiry: agent.lease_expiry(),
        subnet: subnet_of(config.local_subnet(), config.local_netmask()),
        lease_lost: agent.lease_lost().is_some(),
        lease_holder: agent.lease_lost().flatten().map(Ipv4Addr::from),
        overlay_mtu: agent.overlay_mtu(),
        ingress: match agent.ingress() {
            Some(IngressHook::Xdp) => "xdp",
            Some(IngressHook::Tc) => "tc",
            None => "unknown",
        },
        backend: agent.backend().map_or("unknown", Backend::name),
        public_ip: Ipv4Addr::from(config.local_ip()),
        vtep_mac: Mac(config.vtep_mac()).to_string(),
        vni: config.vni(),
        vxlan_port: config.vxlan_port(),
        udp_port: config.udp_port(),
        gre_key: config.gre_key(),
        tunnel_formats: config.formats().names(),
        peers,
        routes,
        route_index: config.route_index_on(),
        untunnelled: if config.untunnelled_open() {
            "any source".to_string()
        } else {
            std::iter::once("direct peers' subnets".to_string())
                .chain(maps.untunnelled_from()?.iter().map(ToString::to_string))
                .collect::<Vec<_>>()
                .join(", ")
        },
        attachments: read_attachments(pin_dir),
        container_ifaces: maps
            .container_ifaces()?
            .into_iter()
            .map(|c| ContainerIfaceRow {
                name: String::from_utf8_lossy(c.name()).into_owned(),
                state: match c.state() {
                    IfaceState::Attached => "attached",
                    IfaceState::Awaited => "awaited",
                    IfaceState::Unused => "unused",
                },
                ifindex: c.ifindex(),
            })
            .collect(),
        maps: maps
            .memory()?
            .into_iter()
            .map(|m| MapRow { name: m.name, max_entries: m.max_entries, memlock: m.memlock })
            .collect(),
        full_map: agent.full_map(),
        refused_syncs: agent.refused_syncs(),
    })
}

/// The pinned links under `pin_dir/links`, named `<program>@<interface>`.
fn read_attachments(pin_dir: &Path) -> Vec<AttachmentRow> {
    let mut rows = Vec::new();
    let Ok(dir) = std::fs::read_dir(crate::datapath::links::links_dir(pin_dir)) else { return rows };
    for entry in dir.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((program, iface)) = name.split_once('@') else { continue };
        let (program_id, link_id) = PinnedLink::from_pin(entry.path())
            .ok()
            .and_then(|l| FdLink::from(l).info().ok())
            .map_or((0, 0), |i| (i.program_id(), i.id()));
        let hook = if program.contains("xdp") { "xdp" } else { "tcx ingress" };
        rows.push(AttachmentRow { iface: iface.into(), hook, program: program.into(), program_id, link_id });
    }
    rows.sort_by(|a, b| (&a.iface, &a.program).cmp(&(&b.iface, &b.program)));
    rows
}

/// `2026-11-24T19:40:00Z` for Unix seconds (UTC; civil-from-days, proleptic Gregorian).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// `3d4h`, `5m12s`, `42s`: a short duration.
pub fn ago(secs: u64) -> String {
    match secs {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_795_546_800), "2026-11-24T19:00:00Z");
        assert_eq!(ago(42), "42s");
        assert_eq!(ago(312), "5m12s");
        assert_eq!(ago(3 * 86_400 + 4 * 3600 + 5), "3d4h");
    }
}
