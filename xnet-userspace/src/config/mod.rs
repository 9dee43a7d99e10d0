//! The agent's configuration: the config file plus command-line overrides, validated in one place
//! and never changed afterwards (SIGHUP loads a second [`Config`] and takes only its peers, see
//! [`Config::peers_on_reload`]). Nothing here touches the host. [`Config::load`] turns a file and
//! its overrides into a checked [`Config`] or one [`ConfigError`] that names the file (or flag),
//! the key and what to do. What a store learns at run time (etcd's network, this host's lease, the
//! peers) lives in the store's state, not here.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use xnet_common::maps::{Backend, CAPACITY_LIMIT, Capacity, IngressHook, UNTUNNELLED_FROM_MAX};

use crate::{
    cidr::{self, CidrError, Ipv4Network},
    mac::Mac,
};

mod etcd;
mod peer_tables;
mod routes;

pub use etcd::EtcdSettings;
use etcd::{RawEtcd, etcd_settings};
pub use routes::{
    ANNOUNCE_PROTOCOL, BehindRouter, HOST_TABLE, ROUTE_PROTOCOLS, RoutesSettings, route_protocol_name,
};
use routes::{RawRoutes, routes_settings};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xnet";
pub const DEFAULT_SUBNET_FILE: &str = "/run/xnet/subnet.env";
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
pub const DEFAULT_UDP_PORT: u16 = xnet_common::wire::DEFAULT_UDP_PORT;
pub const DEFAULT_VNI: u32 = 1;
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// flannel's etcd key prefix.
pub const DEFAULT_ETCD_PREFIX: &str = "/coreos.com/network";

/// A config file (or flag) that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {error}")]
    Read { file: PathBuf, error: std::io::Error },
    #[error("config file {file} is not valid TOML for xnet: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("config file {file}: `{key}` {message}")]
    Invalid { file: PathBuf, key: String, message: String },
    #[error("{flag}: {message}")]
    Flag { flag: &'static str, message: String },
}

/// The tunnel settings of a host. Every wire format has its settings here, because peers may use
/// another backend than this host's and decapsulation accepts every format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tunnel {
    /// What this host sends with (`[backend] type`, or etcd's `Backend.Type`).
    pub kind: Backend,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port (8472 unless set with `port` for type vxlan, or a vxlan fallback).
    pub vxlan_port: u16,
    /// flannel udp port (8285 unless set with `port` for type udp, or a udp fallback).
    pub udp_port: u16,
    /// GRE key (RFC 2890), if any.
    pub gre_key: Option<u32>,
    /// For `direct`: what peers that are not on the underlay's segment get.
    pub fallback: Backend,
}

impl Default for Tunnel {
    fn default() -> Self {
        Self {
            kind: Backend::Vxlan,
            vni: DEFAULT_VNI,
            vxlan_port: DEFAULT_VXLAN_PORT,
            udp_port: DEFAULT_UDP_PORT,
            gre_key: None,
            fallback: Backend::Vxlan,
        }
    }
}

impl Tunnel {
    /// Bytes a backend adds in front of the inner IPv4 packet (what it costs in MTU).
    pub fn overhead(&self, kind: Backend) -> u32 {
        use xnet_common::wire::{GRE_ENCAP_LEN, GRE_KEYED_ENCAP_LEN, UDP_ENCAP_LEN, VXLAN_ENCAP_LEN};
        (match kind {
            Backend::Vxlan => VXLAN_ENCAP_LEN,
            Backend::Udp => UDP_ENCAP_LEN,
            Backend::Gre if self.gre_key.is_some() => GRE_KEYED_ENCAP_LEN,
            Backend::Gre => GRE_ENCAP_LEN,
            Backend::Direct => 0,
        }) as u32
    }
}

/// A remote host and the subnet its containers use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub subnet: Ipv4Network,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: Mac,
    /// Overrides the tunnel's `kind` for this peer.
    pub backend: Option<Backend>,
    /// The kernel route protocol (`RTPROT_*`) the route to `subnet` was learned with, when it
    /// comes from a routing daemon's routes (see [`RoutesSettings`]).
    pub protocol: Option<u8>,
}

/// The overlay as the static file describes it: everything a store yields, known up front.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticOverlay {
    pub network: Ipv4Network,
    pub subnet: Ipv4Network,
    pub tunnel: Tunnel,
    pub peers: Vec<PeerConfig>,
}

/// Where the network, this host's subnet and the peers come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// The config file lists them.
    File(StaticOverlay),
    /// etcd, in flannel's schema.
    Etcd(EtcdSettings),
    /// The routes a routing daemon installs in the kernel.
    Routes(RoutesSettings),
}

/// What the command line may override (`xnet run` flags).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Overrides {
    pub etcd_endpoints: Vec<String>,
    pub etcd_prefix: Option<String>,
    /// `--routes`: the routes store, with `[routes]`'s defaults if the file has no `[routes]`.
    pub routes: bool,
    pub subnet_file: Option<PathBuf>,
    pub keep_datapath: bool,
}

/// `big_tcp`: whether the agent lets the links its packets cross carry IPv4 packets above 64 KB
/// (BIG TCP, Linux 6.3 and later), and how large.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BigTcp {
    /// `"auto"` (the default): on, at the underlay driver's limit (`tso_max_size`, at most
    /// [`MAX_GSO_BYTES`]), when the kernel has BIG TCP and that driver takes TSO packets above 64 KB.
    #[default]
    Auto,
    /// `"off"`: the agent leaves every link's sizes as they are.
    Off,
    /// A size in bytes: on at that size, and the agent refuses to start where it cannot be.
    Bytes(u32),
}

/// The kernel's default (and largest) GSO and GRO size without BIG TCP.
pub const LEGACY_GSO_BYTES: u32 = 65_536;
/// The largest GSO packet the kernel builds or takes as a link's size (`GSO_MAX_SIZE`, 8 x 65535).
pub const MAX_GSO_BYTES: u32 = 524_280;

/// A validated config: this host's own settings and where the overlay comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub file: PathBuf,
    pub iface: String,
    /// `None`: the first IPv4 address of `iface`, found when the agent starts.
    pub public_ip: Option<Ipv4Addr>,
    pub container_ifaces: Vec<String>,
    /// `None`: derived from the public IP ([`Mac::from_ipv4`]).
    pub vtep_mac: Option<Mac>,
    pub pin_dir: PathBuf,
    pub metrics_addr: Option<SocketAddr>,
    /// Where to write subnet.env for the container runtime.
    pub subnet_file: PathBuf,
    /// Where to write a Docker options file (`DOCKER_NETWORK_OPTIONS=...`), if anywhere.
    pub docker_opts_file: Option<PathBuf>,
    /// `[backend] ingress`: how decapsulation attaches; `None` is "auto": XDP on NICs with a driver
    /// behind them, tc on virtual devices (XDP on a veth turns off the sending peer's GSO).
    pub ingress: Option<IngressHook>,
    /// `[backend] untunnelled = "any"`: untunnelled traffic to this host's containers is accepted
    /// from any source (networks whose routers send to containers directly); by default
    /// (`"direct-peers"`) only from the subnets of peers reached with the direct backend.
    pub untunnelled_open: bool,
    /// `[backend] untunnelled_from`: source networks whose untunnelled traffic may also reach this
    /// host's containers.
    pub untunnelled_from: Vec<Ipv4Network>,
    /// `big_tcp`.
    pub big_tcp: BigTcp,
    /// On exit, leave the datapath attached and pinned.
    pub keep_datapath: bool,
    /// `[capacity]`: how many remote subnets and peers the maps hold.
    pub capacity: Capacity,
    pub store: StoreConfig,
    /// The command line's overrides, applied again when the file is read again (SIGHUP).
    pub overrides: Overrides,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    network: Option<String>,
    subnet: Option<String>,
    iface: String,
    public_ip: Option<String>,
    container_ifaces: Vec<String>,
    vtep_mac: Option<String>,
    pin_dir: Option<PathBuf>,
    metrics_addr: Option<String>,
    subnet_file: Option<PathBuf>,
    docker_opts_file: Option<PathBuf>,
    big_tcp: Option<toml::Value>,
    #[serde(default)]
    backend: RawBackend,
    #[serde(default, rename = "peer")]
    peers: Vec<RawPeer>,
    etcd: Option<RawEtcd>,
    #[serde(default)]
    capacity: RawCapacity,
    routes: Option<RawRoutes>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCapacity {
    routes: Option<i64>,
    peers: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    #[serde(rename = "type")]
    kind: Option<String>,
    vni: Option<i64>,
    port: Option<i64>,
    key: Option<i64>,
    fallback: Option<String>,
    ingress: Option<String>,
    untunnelled: Option<String>,
    untunnelled_from: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    subnet: String,
    public_ip: String,
    vtep_mac: Option<String>,
    backend: Option<String>,
}

/// The key of a field of the `index`th peer, as error messages name it (`peer[3].subnet`); made
/// into text only for an error.
#[derive(Clone, Copy)]
struct PeerKey {
    index: usize,
    field: &'static str,
}

impl std::fmt::Display for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "peer[{}].{}", self.index, self.field)
    }
}

/// Builds the error for `key` of `file`.
struct Checker<'a> {
    file: &'a Path,
}

impl Checker<'_> {
    fn invalid(&self, key: impl std::fmt::Display, message: String) -> ConfigError {
        ConfigError::Invalid { file: self.file.to_owned(), key: key.to_string(), message }
    }
    fn net(&self, key: impl std::fmt::Display, value: &str) -> Result<Ipv4Network, ConfigError> {
        cidr::parse(value).map_err(|e| match e {
            CidrError::Syntax(_) => self.invalid(key, format!("is {e}")),
            CidrError::HostBits { network, .. } => {
                self.invalid(key, format!("= \"{value}\" has host bits set; write \"{network}\""))
            }
        })
    }
    fn ip(&self, key: impl std::fmt::Display, value: &str) -> Result<Ipv4Addr, ConfigError> {
        value.parse().map_err(|_| {
            self.invalid(key, format!("= \"{value}\" is not an IPv4 address such as 198.18.0.1"))
        })
    }
    fn mac(&self, key: impl std::fmt::Display, value: &str) -> Result<Mac, ConfigError> {
        let m: Mac = value.parse().map_err(|e: String| self.invalid(&key, format!("is {e}")))?;
        if !m.is_unicast() || m.is_zero() {
            return Err(self.invalid(key, format!("= \"{m}\" must be a unicast, non-zero MAC")));
        }
        Ok(m)
    }
    fn iface(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        if value.is_empty() || value.len() > 15 || value.contains(['/', ' ', '\0']) {
            return Err(self.invalid(key, format!("= \"{value}\" is not an interface name")));
        }
        Ok(value.to_string())
    }
    fn backend(&self, key: impl std::fmt::Display, name: &str) -> Result<Backend, ConfigError> {
        Backend::from_name(name).ok_or_else(|| {
            self.invalid(
                key,
                format!("= \"{name}\" is unknown; use \"vxlan\", \"udp\", \"gre\" or \"direct\""),
            )
        })
    }
    fn absolute(&self, key: &str, p: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
        match p {
            Some(p) if !p.is_absolute() => {
                Err(self.invalid(key, format!("= \"{}\" must be an absolute path", p.display())))
            }
            p => Ok(p),
        }
    }
}

impl Config {
    /// Reads and validates `path`, with the command line's `overrides`.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { file: path.to_owned(), error })?;
        Self::parse(path, &text, overrides)
    }

    /// Validates config text with `overrides`; `path` names the file in messages.
    pub fn parse(path: &Path, text: &str, overrides: &Overrides) -> Result<Self, ConfigError> {
        // The `[[peer]]` tables are parsed one at a time (see `peer_tables`), the rest as a whole.
        let split = peer_tables::split(text);
        let raw: RawConfig = toml::from_str(&split.rest).map_err(|e| ConfigError::Syntax {
            file: path.to_owned(),
            message: e.message().to_string() + &line_of(&split.rest, e.span()),
        })?;
        let peer_tables = PeerTables { text, bodies: &split.peers };
        let c = Checker { file: path };
        let etcd_on_command_line = !overrides.etcd_endpoints.is_empty();

        let iface = c.iface("iface", &raw.iface)?;
        let public_ip = raw.public_ip.as_deref().map(|v| c.ip("public_ip", v)).transpose()?;
        if raw.container_ifaces.is_empty() {
            return Err(c.invalid(
                "container_ifaces",
                "is empty; name the bridge your containers are attached to, e.g. [\"docker0\"]".into(),
            ));
        }
        let max = xnet_common::maps::CONTAINER_IFACES_LEN as usize;
        if raw.container_ifaces.len() > max {
            return Err(c.invalid(
                "container_ifaces",
                format!("lists {} interfaces; xnet follows at most {max}", raw.container_ifaces.len()),
            ));
        }
        let mut container_ifaces = Vec::new();
        for (i, name) in raw.container_ifaces.iter().enumerate() {
            let key = format!("container_ifaces[{i}]");
            let name = c.iface(&key, name)?;
            if name == iface {
                return Err(c.invalid(
                    &key,
                    format!(
                        "= \"{name}\" is also `iface`; containers and the underlay need different interfaces"
                    ),
                ));
            }
            if container_ifaces.contains(&name) {
                return Err(c.invalid(&key, format!("= \"{name}\" is listed twice")));
            }
            container_ifaces.push(name);
        }
        let vtep_mac = raw.vtep_mac.as_deref().map(|v| c.mac("vtep_mac", v)).transpose()?;
        let pin_dir = raw.pin_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
        if !pin_dir.is_absolute() {
            return Err(c.invalid(
                "pin_dir",
                format!("= \"{}\" must be an absolute path on bpffs", pin_dir.display()),
            ));
        }
        let metrics_addr = raw
            .metrics_addr
            .as_deref()
            .map(|v| {
                v.parse::<SocketAddr>().map_err(|_| {
                    c.invalid(
                        "metrics_addr",
                        format!("= \"{v}\" is not an address:port such as 127.0.0.1:9436"),
                    )
                })
            })
            .transpose()?;
        let subnet_file = match &overrides.subnet_file {
            Some(p) if !p.is_absolute() => {
                return Err(ConfigError::Flag {
                    flag: "--subnet-file",
                    message: format!("\"{}\" must be an absolute path", p.display()),
                });
            }
            Some(p) => p.clone(),
            None => c
                .absolute("subnet_file", raw.subnet_file.clone())?
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SUBNET_FILE)),
        };
        let docker_opts_file = c.absolute("docker_opts_file", raw.docker_opts_file.clone())?;
        let ingress = match raw.backend.ingress.as_deref() {
            None | Some("auto") => None,
            Some("xdp") => Some(IngressHook::Xdp),
            Some("tc") => Some(IngressHook::Tc),
            Some(other) => {
                return Err(c.invalid(
                    "backend.ingress",
                    format!("= \"{other}\" must be \"auto\", \"xdp\" or \"tc\""),
                ));
            }
        };

        let untunnelled_open = match raw.backend.untunnelled.as_deref() {
            None | Some("direct-peers") => false,
            Some("any") => true,
            Some(other) => {
                return Err(c.invalid(
                    "backend.untunnelled",
                    format!("= \"{other}\" must be \"direct-peers\" (the default) or \"any\""),
                ));
            }
        };
        let untunnelled_from = untunnelled_from(&c, &raw.backend, untunnelled_open)?;
        let big_tcp = big_tcp(&c, raw.big_tcp.as_ref())?;
        let capacity = capacity(&c, &raw.capacity)?;
        let routes_wanted = raw.routes.is_some() || overrides.routes;
        if routes_wanted && (raw.etcd.is_some() || etcd_on_command_line) {
            return Err(c.invalid(
                "routes",
                "and an etcd store exclude each other; keep [routes] (or --routes) or [etcd] (or --etcd-endpoints)"
                    .into(),
            ));
        }
        let store = if routes_wanted {
            if !raw.peers.is_empty() || !split.peers.is_empty() {
                return Err(c.invalid(
                    "peer",
                    "comes from the routing daemon's routes when [routes] is set; remove the [[peer]] entries"
                        .into(),
                ));
            }
            if overrides.etcd_prefix.is_some() {
                return Err(ConfigError::Flag {
                    flag: "--etcd-prefix",
                    message: "applies only with an etcd store, not with [routes]".into(),
                });
            }
            let o = static_overlay(&c, &raw, &peer_tables, public_ip)?;
            StoreConfig::Routes(routes_settings(&c, raw.routes.as_ref(), o)?)
        } else if raw.etcd.is_some() || etcd_on_command_line {
            for (present, key) in [
                (raw.network.is_some(), "network"),
                (raw.subnet.is_some(), "subnet"),
                (!raw.peers.is_empty() || !split.peers.is_empty(), "peer"),
                (raw.backend.kind.is_some(), "backend.type"),
                (raw.backend.vni.is_some(), "backend.vni"),
                (raw.backend.port.is_some(), "backend.port"),
                (raw.backend.key.is_some(), "backend.key"),
                (raw.backend.fallback.is_some(), "backend.fallback"),
            ] {
                if present {
                    return Err(c.invalid(
                        key,
                        "comes from etcd (flannel's network config) when an etcd store is set; remove it from the file"
                            .into(),
                    ));
                }
            }
            StoreConfig::Etcd(etcd_settings(&c, raw.etcd.as_ref(), overrides)?)
        } else {
            if overrides.etcd_prefix.is_some() {
                return Err(ConfigError::Flag {
                    flag: "--etcd-prefix",
                    message: "applies only with an etcd store; add --etcd-endpoints or [etcd] to the config"
                        .into(),
                });
            }
            let overlay = static_overlay(&c, &raw, &peer_tables, public_ip)?;
            for (key, room) in [("capacity.routes", capacity.routes), ("capacity.peers", capacity.peers)] {
                if overlay.peers.len() > room as usize {
                    return Err(c.invalid(
                        key,
                        format!(
                            "= {room} is less than the {} peers listed; raise it (up to {CAPACITY_LIMIT}) or list fewer peers",
                            overlay.peers.len()
                        ),
                    ));
                }
            }
            StoreConfig::File(overlay)
        };

        Ok(Config {
            file: path.to_owned(),
            iface,
            public_ip,
            container_ifaces,
            vtep_mac,
            pin_dir,
            metrics_addr,
            subnet_file,
            docker_opts_file,
            ingress,
            untunnelled_open,
            untunnelled_from,
            big_tcp,
            keep_datapath: overrides.keep_datapath,
            capacity,
            store,
            overrides: overrides.clone(),
        })
    }

    /// What reading the file again (SIGHUP) may change: the static peer list, nothing else. The
    /// peers of `new`, the file as it reads now, when every other setting is as the agent runs
    /// with (`self`); otherwise the key of the first setting that differs, which only a restart
    /// applies. The command-line flags are the same on both sides.
    pub fn peers_on_reload(&self, mut new: Config) -> Result<Vec<PeerConfig>, &'static str> {
        let (StoreConfig::File(old), StoreConfig::File(now)) = (&self.store, &mut new.store) else {
            return Err("[etcd] or [routes] (where the peers come from)");
        };
        let peers = std::mem::replace(&mut now.peers, old.peers.clone());
        let overlay = [
            (now.network != old.network, "network"),
            (now.subnet != old.subnet, "subnet"),
            (now.tunnel != old.tunnel, "[backend]"),
        ];
        // The whole config compared, so that no setting can slip through; the keys only name it.
        if new == *self {
            return Ok(peers);
        }
        let settings = [
            (new.iface != self.iface, "iface"),
            (new.public_ip != self.public_ip, "public_ip"),
            (new.container_ifaces != self.container_ifaces, "container_ifaces"),
            (new.vtep_mac != self.vtep_mac, "vtep_mac"),
            (new.pin_dir != self.pin_dir, "pin_dir"),
            (new.metrics_addr != self.metrics_addr, "metrics_addr"),
            (new.subnet_file != self.subnet_file, "subnet_file"),
            (new.docker_opts_file != self.docker_opts_file, "docker_opts_file"),
            (new.ingress != self.ingress, "[backend] ingress"),
            (new.untunnelled_open != self.untunnelled_open, "[backend] untunnelled"),
            (new.untunnelled_from != self.untunnelled_from, "[backend] untunnelled_from"),
            (new.big_tcp != self.big_tcp, "big_tcp"),
            (new.capacity != self.capacity, "[capacity]"),
        ];
        let changed = overlay.into_iter().chain(settings).find(|(differs, _)| *differs);
        Err(changed.map_or("a setting besides the peers", |(_, key)| key))
    }
}

/// `big_tcp`: `"auto"`, `"off"`, or a size in bytes above 64 KB that the kernel can build.
fn big_tcp(c: &Checker<'_>, raw: Option<&toml::Value>) -> Result<BigTcp, ConfigError> {
    let range = LEGACY_GSO_BYTES + 1..=MAX_GSO_BYTES;
    match raw {
        None => Ok(BigTcp::Auto),
        Some(toml::Value::String(s)) if s == "auto" => Ok(BigTcp::Auto),
        Some(toml::Value::String(s)) if s == "off" => Ok(BigTcp::Off),
        Some(toml::Value::Integer(n)) if u32::try_from(*n).is_ok_and(|n| range.contains(&n)) => {
            Ok(BigTcp::Bytes(*n as u32))
        }
        Some(toml::Value::Integer(n)) => Err(c.invalid(
            "big_tcp",
            format!(
                "= {n} is not a BIG TCP size: give bytes from {} to {} (the kernel's largest GSO packet), \"auto\" or \"off\"",
                range.start(),
                range.end()
            ),
        )),
        Some(other) => Err(c.invalid(
            "big_tcp",
            format!("= {other} must be \"auto\" (the default), \"off\" or a size in bytes such as 196608"),
        )),
    }
}

/// `[backend] untunnelled_from`: networks, at most [`UNTUNNELLED_FROM_MAX`], each once.
fn untunnelled_from(
    c: &Checker<'_>,
    raw: &RawBackend,
    untunnelled_open: bool,
) -> Result<Vec<Ipv4Network>, ConfigError> {
    let Some(list) = &raw.untunnelled_from else { return Ok(Vec::new()) };
    if untunnelled_open {
        return Err(c.invalid(
            "backend.untunnelled_from",
            "is redundant with `untunnelled = \"any\"`, which accepts every source; remove one of them"
                .into(),
        ));
    }
    if list.len() > UNTUNNELLED_FROM_MAX as usize {
        return Err(c.invalid(
            "backend.untunnelled_from",
            format!("lists {} networks; xnet takes at most {UNTUNNELLED_FROM_MAX}", list.len()),
        ));
    }
    let mut nets: Vec<Ipv4Network> = Vec::with_capacity(list.len());
    for (i, value) in list.iter().enumerate() {
        let key = format!("backend.untunnelled_from[{i}]");
        let net = c.net(&key, value)?;
        if let Some(j) = nets.iter().position(|n| *n == net) {
            return Err(c.invalid(&key, format!("= \"{net}\" is also backend.untunnelled_from[{j}]")));
        }
        nets.push(net);
    }
    Ok(nets)
}

/// `[capacity]`: the object's sizes unless set.
fn capacity(c: &Checker<'_>, raw: &RawCapacity) -> Result<Capacity, ConfigError> {
    let mut capacity = Capacity::default();
    for (key, value, slot) in [
        ("capacity.routes", raw.routes, &mut capacity.routes),
        ("capacity.peers", raw.peers, &mut capacity.peers),
    ] {
        match value {
            None => {}
            Some(n) if (1..=CAPACITY_LIMIT as i64).contains(&n) => *slot = n as u32,
            Some(n) => {
                return Err(c.invalid(key, format!("= {n} must be between 1 and {CAPACITY_LIMIT} entries")));
            }
        }
    }
    Ok(capacity)
}

/// The `[[peer]]` tables cut out of a config file's `text`, parsed one at a time.
struct PeerTables<'a> {
    text: &'a str,
    bodies: &'a [std::ops::Range<usize>],
}

impl PeerTables<'_> {
    /// Parses table `i` (the file's peer `i`): a simple one directly (see
    /// [`peer_tables::simple_pairs`]), any other with the TOML parser.
    fn parse(&self, c: &Checker<'_>, i: usize) -> Result<RawPeer, ConfigError> {
        let body = self.bodies[i].clone();
        if let Some(peer) = simple_peer(&self.text[body.clone()]) {
            return Ok(peer);
        }
        toml::from_str(&self.text[body.clone()]).map_err(|e| ConfigError::Syntax {
            file: c.file.to_owned(),
            message: format!("peer[{i}]: {}", e.message())
                + &line_of(self.text, e.span().map(|s| s.start + body.start..s.end + body.start)),
        })
    }
}

/// A `[[peer]]` table of simple `key = "value"` lines with each key it needs once and no other:
/// what the TOML parser would make of it. `None` for any other table (the parser reads it then,
/// and names what is wrong).
fn simple_peer(body: &str) -> Option<RawPeer> {
    let (mut subnet, mut public_ip, mut vtep_mac, mut backend) = (None, None, None, None);
    let simple = peer_tables::simple_pairs(body, |key, value| {
        let slot = match key {
            "subnet" => &mut subnet,
            "public_ip" => &mut public_ip,
            "vtep_mac" => &mut vtep_mac,
            "backend" => &mut backend,
            _ => return false,
        };
        slot.replace(value.to_string()).is_none()
    });
    simple.then_some(())?;
    Some(RawPeer { subnet: subnet?, public_ip: public_ip?, vtep_mac, backend })
}

/// The network, subnet, tunnel and peers of a static config.
fn static_overlay(
    c: &Checker<'_>,
    raw: &RawConfig,
    tables: &PeerTables<'_>,
    public_ip: Option<Ipv4Addr>,
) -> Result<StaticOverlay, ConfigError> {
    let required = |key: &str, v: &Option<String>| -> Result<String, ConfigError> {
        v.clone()
            .ok_or_else(|| c.invalid(key, "is missing; set it, or set [etcd] to take it from etcd".into()))
    };
    let network = c.net("network", &required("network", &raw.network)?)?;
    let subnet = c.net("subnet", &required("subnet", &raw.subnet)?)?;
    if !cidr::contains(&network, &subnet) || subnet == network {
        return Err(c.invalid(
            "subnet",
            format!("= \"{subnet}\" must be a smaller subnet inside `network` = \"{network}\""),
        ));
    }
    if subnet.prefix() > 30 {
        return Err(
            c.invalid("subnet", format!("= \"{subnet}\" leaves no room for containers; use /30 or larger"))
        );
    }
    let tunnel = tunnel(c, &raw.backend)?;

    if !raw.peers.is_empty() && !tables.bodies.is_empty() {
        return Err(c.invalid(
            "peer",
            "is given both as [[peer]] tables and as an array; list the peers one way".into(),
        ));
    }
    // Peers as an inline array, or (the usual way) as [[peer]] tables, parsed one at a time and
    // dropped once checked: the file's text and the checked peers are all that stay in memory.
    let count = raw.peers.len() + tables.bodies.len();
    // Each peer on its own: read, and checked against this host's settings.
    let read = |i: usize| -> Result<PeerConfig, ConfigError> {
        let table;
        let p = match raw.peers.get(i) {
            Some(p) => p,
            None => {
                table = tables.parse(c, i)?;
                &table
            }
        };
        let key = |field| PeerKey { index: i, field };
        let psubnet = c.net(key("subnet"), &p.subnet)?;
        if !cidr::contains(&network, &psubnet) {
            return Err(
                c.invalid(key("subnet"), format!("= \"{psubnet}\" is outside `network` = \"{network}\""))
            );
        }
        if cidr::overlaps(&psubnet, &subnet) {
            return Err(c.invalid(
                key("subnet"),
                format!("= \"{psubnet}\" overlaps this host's `subnet` = \"{subnet}\"; every host needs its own subnet"),
            ));
        }
        let pip = c.ip(key("public_ip"), &p.public_ip)?;
        if Some(pip) == public_ip {
            return Err(c.invalid(key("public_ip"), format!("= \"{pip}\" is this host's own `public_ip`")));
        }
        let pmac = match &p.vtep_mac {
            Some(v) => c.mac(key("vtep_mac"), v)?,
            None => Mac::from_ipv4(pip),
        };
        let pbackend = p.backend.as_deref().map(|b| c.backend(key("backend"), b)).transpose()?;
        Ok(PeerConfig { subnet: psubnet, public_ip: pip, vtep_mac: pmac, backend: pbackend, protocol: None })
    };
    // The peers of `range` up to the first that fails, and that failure.
    let read_range = |range: std::ops::Range<usize>, capacity: usize| {
        let mut peers = Vec::with_capacity(capacity);
        for i in range {
            match read(i) {
                Ok(p) => peers.push(p),
                Err(e) => return (peers, Some((i, e))),
            }
        }
        (peers, None)
    };
    // A long list is read in two halves side by side (100,000 peers take a tenth of a second).
    let (peers, mut failed) = if count >= PARALLEL_PEERS {
        let mid = count / 2;
        let ((mut first, first_failed), (second, second_failed)) = std::thread::scope(|s| {
            let second = s.spawn(|| read_range(mid..count, count - mid));
            let first = read_range(0..mid, count);
            (first, second.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        });
        match first_failed {
            Some(f) => (first, Some(f)),
            None => {
                first.extend(second);
                (first, second_failed)
            }
        }
    } else {
        read_range(0..count, count)
    };
    // Then the peers against each other, up to the first that failed on its own (`peers` ends
    // there): a conflict among them comes first in the file.
    if let Some(conflict) = first_conflict(c, &peers) {
        failed = Some(conflict);
    }
    if let Some((_, e)) = failed {
        return Err(e);
    }
    Ok(StaticOverlay { network, subnet, tunnel, peers })
}

/// The first peer, in file order, whose subnet overlaps an earlier peer's or whose public IP
/// repeats one, with the error naming both. Sorted copies of the subnets and addresses show at
/// once that there is none, the usual case; only a list with a conflict is walked in file order
/// to find the first.
fn first_conflict(c: &Checker<'_>, peers: &[PeerConfig]) -> Option<(usize, ConfigError)> {
    let mut ranges: Vec<(u32, u32)> = peers.iter().map(|p| cidr::range(&p.subnet)).collect();
    ranges.sort_unstable();
    let mut ips: Vec<Ipv4Addr> = peers.iter().map(|p| p.public_ip).collect();
    ips.sort_unstable();
    // Sorted by first address, ranges are disjoint when each ends before the next begins.
    if ranges.windows(2).all(|w| w[0].1 < w[1].0) && ips.windows(2).all(|w| w[0] != w[1]) {
        return None;
    }
    // Peers so far by first address (last address, index), and by public IP: each check
    // O(log n).
    let mut by_start: BTreeMap<u32, (u32, usize)> = BTreeMap::new();
    let mut by_ip: HashMap<Ipv4Addr, usize> = HashMap::with_capacity(peers.len());
    for (i, p) in peers.iter().enumerate() {
        let key = |field| PeerKey { index: i, field };
        let (start, end) = cidr::range(&p.subnet);
        // Existing subnets do not overlap each other, so only the last one starting at or
        // before this one's end can overlap it.
        if let Some((_, &(q_end, j))) = by_start.range(..=end).next_back()
            && q_end >= start
        {
            let why = format!(
                "= \"{}\" overlaps peer[{j}].subnet = \"{}\"; every host needs its own subnet",
                p.subnet, peers[j].subnet
            );
            return Some((i, c.invalid(key("subnet"), why)));
        }
        if let Some(j) = by_ip.get(&p.public_ip) {
            let why = format!("= \"{}\" is already peer[{j}]; list each peer host once", p.public_ip);
            return Some((i, c.invalid(key("public_ip"), why)));
        }
        by_start.insert(start, (end, i));
        by_ip.insert(p.public_ip, i);
    }
    None
}

/// Peers from which a static config's are read in two threads.
const PARALLEL_PEERS: usize = 4096;

/// `[backend]` of a static config.
fn tunnel(c: &Checker<'_>, raw: &RawBackend) -> Result<Tunnel, ConfigError> {
    let kind = c.backend("backend.type", raw.kind.as_deref().unwrap_or("vxlan"))?;
    let fallback = match raw.fallback.as_deref() {
        None => Backend::Vxlan,
        Some(_) if kind != Backend::Direct => {
            return Err(c.invalid("backend.fallback", "applies only to type \"direct\"; remove it".into()));
        }
        Some("direct") => {
            return Err(c.invalid(
                "backend.fallback",
                "= \"direct\" cannot reach peers off the segment; use \"vxlan\", \"udp\" or \"gre\"".into(),
            ));
        }
        Some(name) => c.backend("backend.fallback", name)?,
    };
    let vni = raw.vni.unwrap_or(DEFAULT_VNI as i64);
    if !(1..=MAX_VNI as i64).contains(&vni) {
        return Err(c.invalid("backend.vni", format!("= {vni} must be between 1 and {MAX_VNI}")));
    }
    let gre_key = match raw.key {
        None => None,
        Some(k) if (0..=u32::MAX as i64).contains(&k) => Some(k as u32),
        Some(k) => {
            return Err(
                c.invalid("backend.key", format!("= {k} must be a 32-bit GRE key, 0 to {}", u32::MAX))
            );
        }
    };
    // `port` is the port of the UDP-based format in use: the type's, or direct's fallback's.
    let udp_kind = match kind {
        Backend::Direct => fallback,
        k => k,
    };
    let (mut vxlan_port, mut udp_port) = (DEFAULT_VXLAN_PORT, DEFAULT_UDP_PORT);
    if let Some(port) = raw.port {
        if !(1..=65535).contains(&port) {
            return Err(c.invalid("backend.port", format!("= {port} must be a UDP port between 1 and 65535")));
        }
        match udp_kind {
            Backend::Vxlan => vxlan_port = port as u16,
            Backend::Udp => udp_port = port as u16,
            _ => return Err(c.invalid("backend.port", "applies to vxlan and udp, not gre; remove it".into())),
        }
    }
    if vxlan_port == udp_port {
        return Err(c.invalid(
            "backend.port",
            format!(
                "= {vxlan_port} is also the other UDP format's port (vxlan {vxlan_port}, udp {udp_port}); pick another"
            ),
        ));
    }
    Ok(Tunnel { kind, vni: vni as u32, vxlan_port, udp_port, gre_key, fallback })
}

/// " (line N: `text`)" for a TOML error span, so the message shows the key at fault.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    let Some(r) = span else { return String::new() };
    let start = r.start.min(text.len());
    let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[start..].find('\n').map_or(text.len(), |i| start + i);
    let number = text[..line_start].matches('\n').count() + 1;
    format!(" (line {number}: `{}`)", text[line_start..line_end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
network = "10.244.0.0/16"
subnet = "10.244.1.0/24"
iface = "eth0"
public_ip = "198.18.0.1"
container_ifaces = ["docker0"]
vtep_mac = "02:00:c6:12:00:01"
pin_dir = "/sys/fs/bpf/xnet"
metrics_addr = "127.0.0.1:9436"
[backend]
type = "vxlan"
vni = 1
port = 8472
ingress = "auto"
[[peer]]
subnet = "10.244.2.0/24"
public_ip = "198.18.0.2"
vtep_mac = "02:00:c6:12:00:02"
[[peer]]
subnet = "10.244.3.0/24"
public_ip = "198.18.0.3"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/xnet/xnet.toml"), text, &Overrides::default())
    }

    #[test]
    fn a_reload_takes_the_peers_and_refuses_any_other_change() {
        let running = parse(GOOD).unwrap();
        // Peers added, removed and changed: taken as the file has them.
        let edited = GOOD.replace("10.244.3.0/24", "10.244.4.0/24")
            + "[[peer]]\nsubnet = \"10.244.5.0/24\"\npublic_ip = \"198.18.0.5\"\nbackend = \"gre\"\n";
        let new = parse(&edited).unwrap();
        let want = overlay(&new).peers.clone();
        assert_eq!(running.peers_on_reload(new), Ok(want.clone()));
        assert_eq!(
            want.iter().map(|p| p.subnet.to_string()).collect::<Vec<_>>(),
            ["10.244.2.0/24", "10.244.4.0/24", "10.244.5.0/24"]
        );
        // No peers left is a peer list too.
        let none = GOOD.split("[[peer]]").next().unwrap().to_string();
        assert_eq!(running.peers_on_reload(parse(&none).unwrap()), Ok(Vec::new()));
        // Anything else names its key.
        for (from, to, key) in [
            ("iface = \"eth0\"", "iface = \"eth1\"", "iface"),
            ("public_ip = \"198.18.0.1\"", "public_ip = \"198.18.0.9\"", "public_ip"),
            ("[\"docker0\"]", "[\"cni0\"]", "container_ifaces"),
            ("vtep_mac = \"02:00:c6:12:00:01\"", "vtep_mac = \"02:00:c6:12:00:09\"", "vtep_mac"),
            ("pin_dir = \"/sys/fs/bpf/xnet\"", "pin_dir = \"/sys/fs/bpf/other\"", "pin_dir"),
            ("127.0.0.1:9436", "127.0.0.1:9437", "metrics_addr"),
            ("network = \"10.244.0.0/16\"", "network = \"10.244.0.0/15\"", "network"),
            ("subnet = \"10.244.1.0/24\"\niface", "subnet = \"10.244.9.0/24\"\niface", "subnet"),
            ("vni = 1", "vni = 2", "[backend]"),
            ("port = 8472", "port = 4789", "[backend]"),
            ("ingress = \"auto\"", "ingress = \"tc\"", "[backend] ingress"),
            ("ingress = \"auto\"", "ingress = \"auto\"\nuntunnelled = \"any\"", "[backend] untunnelled"),
            (
                "ingress = \"auto\"",
                "ingress = \"auto\"\nuntunnelled_from = [\"192.0.2.0/24\"]",
                "[backend] untunnelled_from",
            ),
            (
                "metrics_addr = \"127.0.0.1:9436\"",
                "subnet_file = \"/tmp/s.env\"\nmetrics_addr = \"127.0.0.1:9436\"",
                "subnet_file",
            ),
            (
                "metrics_addr = \"127.0.0.1:9436\"",
                "big_tcp = \"off\"\nmetrics_addr = \"127.0.0.1:9436\"",
                "big_tcp",
            ),
            (
                "metrics_addr = \"127.0.0.1:9436\"",
                "docker_opts_file = \"/tmp/docker.env\"\nmetrics_addr = \"127.0.0.1:9436\"",
                "docker_opts_file",
            ),
        ] {
            let text = GOOD.replacen(from, to, 1);
            assert_ne!(text, GOOD, "{key}: the edit applies");
            let new = parse(&text).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(running.peers_on_reload(new), Err(key), "{from} -> {to}");
        }
        let more = parse(&format!("{GOOD}[capacity]\npeers = 10\n")).unwrap();
        assert_eq!(running.peers_on_reload(more), Err("[capacity]"));
        // The routes store (`--routes`) instead of the file's peers.
        let flag = Overrides { routes: true, ..Default::default() };
        let routes = Config::parse(Path::new("/etc/xnet/xnet.toml"), &none, &flag).unwrap();
        assert_eq!(running.peers_on_reload(routes), Err("[etcd] or [routes] (where the peers come from)"));
    }

    fn overlay(c: &Config) -> &StaticOverlay {
        match &c.store {
            StoreConfig::File(o) => o,
            StoreConfig::Etcd(_) => panic!("expected a static overlay, got etcd"),
            StoreConfig::Routes(_) => panic!("expected a static overlay, got routes"),
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(GOOD).unwrap();
        let o = overlay(&c);
        assert_eq!(o.subnet.to_string(), "10.244.1.0/24");
        assert_eq!((o.tunnel.kind, o.tunnel.vni, o.tunnel.vxlan_port), (Backend::Vxlan, 1, 8472));
        assert_eq!((o.tunnel.udp_port, o.tunnel.gre_key, c.ingress), (8285, None, None));
        assert_eq!(o.peers.len(), 2);
        assert_eq!(o.peers[1].vtep_mac.to_string(), "02:00:c6:12:00:03", "default VTEP MAC");
    }

    /// A config of `n` peers (/26s of 10.0.0.0/8 from 10.0.0.0, public IPs from 100.64.0.1), with
    /// `edit` applied to each peer table's text.
    fn many_peers(n: u32, edit: impl Fn(u32, String) -> String) -> String {
        let mut text = String::from(
            "network = \"10.0.0.0/8\"\nsubnet = \"10.255.0.0/24\"\niface = \"eth0\"\ncontainer_ifaces = [\"docker0\"]\npublic_ip = \"198.18.0.1\"\n\
             [capacity]\nroutes = 20000\npeers = 20000\n",
        );
        for p in 0..n {
            let subnet = Ipv4Addr::from(0x0a00_0000u32 + p * 64);
            let ip = Ipv4Addr::from(0x6440_0001u32 + p);
            text += &edit(p, format!("[[peer]]\nsubnet = \"{subnet}/26\"\npublic_ip = \"{ip}\"\n"));
        }
        text
    }

    #[test]
    fn a_long_peer_list_is_read_whole_and_its_first_error_in_the_file_is_the_one_named() {
        let n = PARALLEL_PEERS as u32 * 2 + 1;
        let all = parse(&many_peers(n, |_, t| t)).unwrap();
        let peers = &overlay(&all).peers;
        assert_eq!(peers.len(), n as usize);
        assert!(
            peers.iter().enumerate().all(|(i, p)| p.public_ip == Ipv4Addr::from(0x6440_0001u32 + i as u32))
        );
        let err = |edit: &dyn Fn(u32, String) -> String| parse(&many_peers(n, edit)).unwrap_err().to_string();
        let late = n - 10;
        // Wrong on its own in the second half, and a duplicate in the first: the duplicate is first.
        let e = err(&|p, t| match p {
            3000 => t.replace("100.64.11.185", "100.64.0.11"),
            p if p == late => t.replace("public_ip = \"", "public_ip = \"x"),
            _ => t,
        });
        assert!(e.contains("peer[3000].public_ip") && e.contains("already peer[10]"), "{e}");
        // Wrong on its own early, an overlap later: the early one.
        let e = err(&|p, t| match p {
            100 => t.replace("/26", "/33"),
            p if p == late => t.replace("/26", "/8"),
            _ => t,
        });
        assert!(e.contains("peer[100].subnet"), "{e}");
        // Only an overlap in the second half, with a peer of the first.
        let e = err(&|p, t| {
            if p == late {
                t.replace(&format!("{}/26", Ipv4Addr::from(0x0a00_0000u32 + late * 64)), "10.0.0.0/16")
            } else {
                t
            }
        });
        assert!(e.contains(&format!("peer[{late}].subnet")) && e.contains("overlaps peer[1023]"), "{e}");
    }

    #[test]
    fn capacity_sizes_the_maps_and_bounds_the_static_file() {
        assert_eq!(parse(GOOD).unwrap().capacity, Capacity::default());
        let big = parse(&format!("{GOOD}[capacity]\nroutes = 200000\npeers = 100000\n")).unwrap();
        assert_eq!(big.capacity, Capacity { routes: 200_000, peers: 100_000, ..Capacity::default() });
        let err = |text: String| parse(&text).unwrap_err().to_string();
        let small = err(format!("{GOOD}[capacity]\npeers = 1\n"));
        assert!(small.contains("`capacity.peers` = 1 is less than the 2 peers listed"), "{small}");
        let small = err(format!("{GOOD}[capacity]\nroutes = 1\n"));
        assert!(small.contains("`capacity.routes` = 1 is less than the 2 peers"), "{small}");
        for bad in ["0", "-5", "4194305"] {
            let e = err(format!("{GOOD}[capacity]\nroutes = {bad}\n"));
            assert!(e.contains(&format!("`capacity.routes` = {bad} must be between 1 and 4194304")), "{e}");
        }
        let e = err(format!("{GOOD}[capacity]\nroute = 5\n"));
        assert!(e.contains("unknown field `route`"), "{e}");
    }

    #[test]
    fn untunnelled_from_lists_networks() {
        let with =
            |list: &str| GOOD.replace("[backend]\n", &format!("[backend]\nuntunnelled_from = {list}\n"));
        let c = parse(&with("[\"192.0.2.0/24\", \"203.0.113.7/32\"]")).unwrap();
        assert_eq!(
            c.untunnelled_from,
            vec![cidr::parse("192.0.2.0/24").unwrap(), cidr::parse("203.0.113.7/32").unwrap()]
        );
        assert!(parse(GOOD).unwrap().untunnelled_from.is_empty());
        let err = |text: String| parse(&text).unwrap_err().to_string();
        let e = err(with("[\"192.0.2.1/24\"]"));
        assert!(e.contains("`backend.untunnelled_from[0]` = \"192.0.2.1/24\" has host bits set"), "{e}");
        let e = err(with("[\"192.0.2.0/24\", \"192.0.2.0/24\"]"));
        assert!(
            e.contains(
                "`backend.untunnelled_from[1]` = \"192.0.2.0/24\" is also backend.untunnelled_from[0]"
            ),
            "{e}"
        );
        let e = err(with("[\"192.0.2.0/24\"]\nuntunnelled = \"any\""));
        assert!(e.contains("`backend.untunnelled_from` is redundant with `untunnelled = \"any\"`"), "{e}");
        let many: Vec<String> = (0..257).map(|i| format!("\"10.{i}.0.0/16\"")).collect();
        let e = err(with(&format!("[{}]", many.join(", "))));
        assert!(e.contains("lists 257 networks; xnet takes at most 256"), "{e}");
    }

    #[test]
    fn peer_tables_are_read_one_at_a_time_with_their_lines() {
        let err = |text: String| parse(&text).unwrap_err().to_string();
        let typo = GOOD.replace("public_ip = \"198.18.0.3\"", "public_ipp = \"198.18.0.3\"");
        let line = typo.lines().position(|l| l.starts_with("public_ipp")).unwrap() + 1;
        let e = err(typo);
        assert!(
            e.contains("peer[1]: unknown field `public_ipp`")
                && e.contains(&format!("(line {line}: `public_ipp")),
            "{e}"
        );
        let e = err(GOOD.replace("public_ip = \"198.18.0.3\"", ""));
        assert!(e.contains("peer[1]: missing field `public_ip`"), "{e}");
        // An inline array is read too; both ways at once is refused.
        let inline = GOOD.split("[[peer]]").next().unwrap().replace(
            "[backend]",
            "peer = [{ subnet = \"10.244.2.0/24\", public_ip = \"198.18.0.2\" }]\n[backend]",
        );
        assert_eq!(overlay(&parse(&inline).unwrap()).peers.len(), 1);
        let both = format!("{inline}\n[[peer]]\nsubnet = \"10.244.3.0/24\"\npublic_ip = \"198.18.0.3\"\n");
        let e = err(both);
        assert!(e.contains("`peer` is given both as [[peer]] tables and as an array"), "{e}");
        // Settings after the peer tables still belong to the file.
        let after = format!("{GOOD}\n[capacity]\npeers = 2\n");
        assert_eq!(parse(&after).unwrap().capacity.peers, 2);
    }

    #[test]
    fn backends_and_their_settings() {
        let gre =
            parse(&GOOD.replace("type = \"vxlan\"", "type = \"gre\"\nkey = 42").replace("port = 8472\n", ""))
                .unwrap();
        assert_eq!((overlay(&gre).tunnel.kind, overlay(&gre).tunnel.gre_key), (Backend::Gre, Some(42)));
        assert_eq!(overlay(&gre).tunnel.overhead(Backend::Gre), 28, "GRE with a key");
        let udp =
            parse(&GOOD.replace("type = \"vxlan\"", "type = \"udp\"").replace("port = 8472", "port = 9000"))
                .unwrap();
        assert_eq!((overlay(&udp).tunnel.udp_port, overlay(&udp).tunnel.vxlan_port), (9000, 8472));
        assert_eq!(overlay(&udp).tunnel.overhead(Backend::Udp), 28);
        let direct = parse(
            &GOOD
                .replace("type = \"vxlan\"", "type = \"direct\"\nfallback = \"udp\"")
                .replace("port = 8472\n", ""),
        )
        .unwrap();
        assert_eq!(
            (overlay(&direct).tunnel.kind, overlay(&direct).tunnel.fallback),
            (Backend::Direct, Backend::Udp)
        );
        assert_eq!(overlay(&direct).tunnel.overhead(Backend::Direct), 0);
        let peer = parse(&GOOD.replace("vtep_mac = \"02:00:c6:12:00:02\"", "backend = \"gre\"")).unwrap();
        assert_eq!(overlay(&peer).peers[0].backend, Some(Backend::Gre));
        assert_eq!(overlay(&peer).tunnel.overhead(Backend::Vxlan), 50);
    }

    #[test]
    fn etcd_mode_takes_the_overlay_from_etcd() {
        let local = "iface = \"eth0\"\ncontainer_ifaces = [\"docker0\"]\n";
        let etcd = |c: Config| match c.store {
            StoreConfig::Etcd(e) => e,
            other => panic!("expected etcd, got {other:?}"),
        };
        let c = parse(&format!("{local}[etcd]\nendpoints = [\"http://198.18.0.254:2379\"]\nprefix = \"/x/net/\"\nlease_ttl = 60\n")).unwrap();
        let e = etcd(c);
        assert_eq!((e.endpoints.len(), e.prefix.as_str(), e.lease_ttl.as_secs()), (1, "/x/net", 60));
        let flags = Overrides {
            etcd_endpoints: vec!["http://198.18.0.9:2379".into()],
            etcd_prefix: Some("/other/".into()),
            subnet_file: Some("/run/x/subnet.env".into()),
            keep_datapath: true,
            routes: false,
        };
        let path = Path::new("/etc/xnet/xnet.toml");
        let on_cli = Config::parse(path, local, &flags).unwrap();
        assert_eq!((on_cli.subnet_file.to_str(), on_cli.keep_datapath), (Some("/run/x/subnet.env"), true));
        let e = etcd(on_cli);
        assert_eq!((e.endpoints, e.prefix.as_str()), (flags.etcd_endpoints.clone(), "/other"), "flags win");
        for (text, flags, expected) in [
            (
                local,
                Overrides { etcd_endpoints: vec!["127.0.0.1:2379".into()], ..Default::default() },
                "--etcd-endpoints: \"127.0.0.1:2379\" is not an http:// URL",
            ),
            (
                GOOD,
                Overrides { etcd_prefix: Some("/p".into()), ..Default::default() },
                "--etcd-prefix: applies only with an etcd store",
            ),
            (
                GOOD,
                Overrides { subnet_file: Some("subnet.env".into()), ..Default::default() },
                "--subnet-file: \"subnet.env\" must be an absolute path",
            ),
        ] {
            let e = Config::parse(path, text, &flags).expect_err(expected).to_string();
            assert!(e.starts_with(expected), "{e}");
        }
        for (text, expected) in [
            (
                format!("{local}subnet = \"10.244.1.0/24\"\n[etcd]\nendpoints = [\"http://e:2379\"]\n"),
                "`subnet` comes from etcd",
            ),
            (
                format!("{local}[backend]\ntype = \"gre\"\n[etcd]\nendpoints = [\"http://e:2379\"]\n"),
                "`backend.type` comes from etcd",
            ),
            (format!("{local}[etcd]\nendpoints = []\n"), "`etcd.endpoints` must list http://"),
            (format!("{local}[etcd]\nendpoints = [\"https://e:2379\"]\n"), "with `ca_file` set"),
            (
                format!(
                    "{local}[etcd]\nendpoints = [\"https://e:2379\"]\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"\n"
                ),
                "go together",
            ),
            (format!("{local}[etcd]\nendpoints = [\"http://e:2379\"]\nprefix = \"x\"\n"), "`etcd.prefix`"),
            (format!("{local}[etcd]\nendpoints = [\"http://e:2379\"]\nlease_ttl = 0\n"), "`etcd.lease_ttl`"),
            (local.to_string(), "`network` is missing"),
        ] {
            let e = parse(&text).expect_err(&text).to_string();
            assert!(e.contains(expected), "{text}: {e}");
        }
    }

    #[test]
    fn defaults_apply() {
        let c = parse(
            "network = \"10.244.0.0/16\"\nsubnet = \"10.244.1.0/24\"\niface = \"eth0\"\ncontainer_ifaces = [\"docker0\"]\n",
        )
        .unwrap();
        let o = overlay(&c);
        assert_eq!((o.tunnel.kind, o.tunnel.vni, o.tunnel.vxlan_port), (Backend::Vxlan, 1, 8472));
        assert_eq!(c.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!((c.public_ip, c.vtep_mac, c.metrics_addr), (None, None, None));
        assert_eq!(c.subnet_file, PathBuf::from("/run/xnet/subnet.env"));
        assert_eq!(c.docker_opts_file, None);
    }

    #[test]
    fn big_tcp_is_auto_unless_set() {
        assert_eq!(parse(GOOD).unwrap().big_tcp, BigTcp::Auto);
        let at =
            |line: &str| parse(&GOOD.replacen("pin_dir", &format!("{line}\npin_dir"), 1)).unwrap().big_tcp;
        assert_eq!(at("big_tcp = \"auto\""), BigTcp::Auto);
        assert_eq!(at("big_tcp = \"off\""), BigTcp::Off);
        assert_eq!(at("big_tcp = 196608"), BigTcp::Bytes(196_608));
        assert_eq!(at("big_tcp = 524280"), BigTcp::Bytes(MAX_GSO_BYTES));
    }

    /// Each bad config gives its own message naming the key and the fix.
    #[test]
    fn bad_configs_are_refused_with_their_message() {
        let cases: &[(&str, &str, &[&str])] = &[
            ("subnet = \"10.244.1.0/24\"", "subnet = \"10.245.1.0/24\"", &["`subnet`", "inside `network`"]),
            (
                "network = \"10.244.0.0/16\"",
                "network = \"10.244.0.1/16\"",
                &["`network`", "host bits", "10.244.0.0/16"],
            ),
            (
                "subnet = \"10.244.2.0/24\"\npublic_ip = \"198.18.0.2\"",
                "subnet = \"10.244.1.128/25\"\npublic_ip = \"198.18.0.2\"",
                &["peer[0].subnet", "overlaps this host"],
            ),
            (
                "subnet = \"10.244.3.0/24\"",
                "subnet = \"10.244.2.0/23\"",
                &["peer[1].subnet", "overlaps peer[0]"],
            ),
            (
                "subnet = \"10.244.3.0/24\"",
                "subnet = \"10.244.2.128/25\"",
                &["peer[1].subnet", "overlaps peer[0]"],
            ),
            (
                "public_ip = \"198.18.0.3\"",
                "public_ip = \"198.18.0.2\"",
                &["peer[1].public_ip", "already peer[0]"],
            ),
            (
                "subnet = \"10.244.3.0/24\"",
                "subnet = \"10.99.3.0/24\"",
                &["peer[1].subnet", "outside `network`"],
            ),
            (
                "public_ip = \"198.18.0.1\"",
                "public_ip = \"198.18.0.300\"",
                &["`public_ip`", "not an IPv4 address"],
            ),
            (
                "vtep_mac = \"02:00:c6:12:00:01\"",
                "vtep_mac = \"02:00:c6:12:00\"",
                &["`vtep_mac`", "not a MAC"],
            ),
            (
                "vtep_mac = \"02:00:c6:12:00:01\"",
                "vtep_mac = \"01:00:5e:00:00:01\"",
                &["`vtep_mac`", "unicast"],
            ),
            ("vni = 1", "vni = 16777216", &["`backend.vni`", "between 1 and"]),
            ("port = 8472", "port = 70000", &["`backend.port`", "UDP port"]),
            ("type = \"vxlan\"", "type = \"ipip\"", &["`backend.type`", "unknown", "\"gre\""]),
            ("type = \"vxlan\"", "type = \"gre\"", &["`backend.port`", "not gre"]),
            (
                "type = \"vxlan\"",
                "type = \"vxlan\"\nfallback = \"udp\"",
                &["`backend.fallback`", "only to type \"direct\""],
            ),
            (
                "type = \"vxlan\"",
                "type = \"direct\"\nfallback = \"direct\"",
                &["`backend.fallback`", "off the segment"],
            ),
            ("port = 8472", "port = 8285", &["`backend.port`", "other UDP format"]),
            ("vni = 1", "vni = 1\nkey = -1", &["`backend.key`", "32-bit"]),
            (
                "vtep_mac = \"02:00:c6:12:00:02\"",
                "vtep_mac = \"02:00:c6:12:00:02\"\nbackend = \"ipip\"",
                &["`peer[0].backend`", "unknown"],
            ),
            ("ingress = \"auto\"", "ingress = \"ebpf\"", &["`backend.ingress`", "\"xdp\""]),
            (
                "pin_dir = \"/sys/fs/bpf/xnet\"",
                "big_tcp = \"on\"\npin_dir = \"/sys/fs/bpf/xnet\"",
                &["`big_tcp`", "\"auto\"", "\"off\""],
            ),
            (
                "pin_dir = \"/sys/fs/bpf/xnet\"",
                "big_tcp = 65536\npin_dir = \"/sys/fs/bpf/xnet\"",
                &["`big_tcp`", "from 65537 to 524280"],
            ),
            (
                "pin_dir = \"/sys/fs/bpf/xnet\"",
                "big_tcp = 600000\npin_dir = \"/sys/fs/bpf/xnet\"",
                &["`big_tcp`", "largest GSO packet"],
            ),
            (
                "ingress = \"auto\"",
                "ingress = \"auto\"\nuntunnelled = \"all\"",
                &["`backend.untunnelled`", "\"any\""],
            ),
            ("vni = 1", "vni = \"one\"", &["not valid TOML", "vni", "line 12"]),
            (
                "container_ifaces = [\"docker0\"]",
                "container_ifaces = []",
                &["`container_ifaces`", "is empty"],
            ),
            (
                "container_ifaces = [\"docker0\"]",
                "container_ifaces = [\"eth0\"]",
                &["container_ifaces[0]", "also `iface`"],
            ),
            (
                "iface = \"eth0\"",
                "iface = \"an-interface-name-too-long\"",
                &["`iface`", "not an interface name"],
            ),
            ("pin_dir = \"/sys/fs/bpf/xnet\"", "pin_dir = \"xnet\"", &["`pin_dir`", "absolute"]),
            (
                "metrics_addr = \"127.0.0.1:9436\"",
                "metrics_addr = \"localhost\"",
                &["`metrics_addr`", "address:port"],
            ),
            (
                "iface = \"eth0\"",
                "iface = \"eth0\"\nifaces = 3",
                &["not valid TOML", "unknown field `ifaces`"],
            ),
        ];
        for (from, to, expected) in cases {
            assert!(GOOD.contains(from), "test case edits text that is not there: {from}");
            let text = GOOD.replacen(from, to, 1);
            let err = parse(&text).expect_err(&format!("config with {to:?} must be refused"));
            let msg = err.to_string();
            assert!(msg.contains("/etc/xnet/xnet.toml"), "message must name the file: {msg}");
            for e in *expected {
                assert!(msg.contains(e), "message for {to:?} should contain {e:?}: {msg}");
            }
            assert_eq!(msg.lines().count(), 1, "one sentence, one line: {msg}");
        }
    }
}
