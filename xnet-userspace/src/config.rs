//! The static config file: parsing and validation. Nothing here touches the host; [`Config::parse`]
//! turns text into a checked [`Config`] or one [`ConfigError`] that names the file, the key and
//! what to do.

use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::subnet::{Ipv4Net, Mac, NetParseError};

pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xnet";
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
pub const DEFAULT_VNI: u32 = 1;
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// A config file that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {error}")]
    Read { file: PathBuf, error: std::io::Error },
    #[error("config file {file} is not valid TOML for xnet: {message}")]
    Syntax { file: PathBuf, message: String },
    #[error("config file {file}: `{key}` {message}")]
    Invalid { file: PathBuf, key: String, message: String },
}

/// How decapsulation attaches to the underlay interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IngressMode {
    /// XDP on NICs that have a driver behind them, tc on virtual devices (veth: XDP there turns off
    /// the peer's GSO, see TOOLCHAIN.md).
    Auto,
    Xdp,
    Tc,
}

pub use xnet_common::maps::Backend as BackendType;

/// The tunnel settings of this host. Every wire format has its settings here, because peers may
/// override the backend and decapsulation accepts every format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    pub kind: BackendType,
    /// VXLAN network identifier.
    pub vni: u32,
    /// VXLAN UDP port (8472 unless set with `port` for type vxlan, or a vxlan fallback).
    pub vxlan_port: u16,
    /// flannel udp port (8285 unless set with `port` for type udp, or a udp fallback).
    pub udp_port: u16,
    /// GRE key (RFC 2890), if any.
    pub gre_key: Option<u32>,
    /// For `direct`: what peers that are not on the underlay's segment get.
    pub fallback: BackendType,
    pub ingress: IngressMode,
}

impl Backend {
    /// Bytes a backend adds in front of the inner IPv4 packet (what it costs in MTU).
    pub fn overhead(&self, kind: BackendType) -> u32 {
        use xnet_common::wire::{GRE_ENCAP_LEN, GRE_KEYED_ENCAP_LEN, UDP_ENCAP_LEN, VXLAN_ENCAP_LEN};
        (match kind {
            BackendType::Vxlan => VXLAN_ENCAP_LEN,
            BackendType::Udp => UDP_ENCAP_LEN,
            BackendType::Gre if self.gre_key.is_some() => GRE_KEYED_ENCAP_LEN,
            BackendType::Gre => GRE_ENCAP_LEN,
            BackendType::Direct => 0,
        }) as u32
    }
}

/// A remote host and the subnet its containers use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerConfig {
    pub subnet: Ipv4Net,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: Mac,
    /// Overrides `[backend] type` for this peer.
    pub backend: Option<BackendType>,
}

/// A validated config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub file: PathBuf,
    pub network: Ipv4Net,
    pub subnet: Ipv4Net,
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
    pub backend: Backend,
    pub peers: Vec<PeerConfig>,
    /// `[etcd]`: network, subnet, backend type and peers come from etcd (flannel's schema); until
    /// the agent has read them, `network` and `subnet` hold nothing meaningful.
    pub etcd: Option<crate::etcd_store::EtcdSettings>,
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
    #[serde(default)]
    backend: RawBackend,
    #[serde(default, rename = "peer")]
    peers: Vec<RawPeer>,
    etcd: Option<RawEtcd>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    prefix: Option<String>,
    /// Seconds.
    lease_ttl: Option<i64>,
    username: Option<String>,
    password: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    #[serde(rename = "type", default = "default_backend_type")]
    kind: String,
    vni: Option<i64>,
    port: Option<i64>,
    key: Option<i64>,
    fallback: Option<String>,
    ingress: Option<String>,
}

impl Default for RawBackend {
    fn default() -> Self {
        Self { kind: default_backend_type(), vni: None, port: None, key: None, fallback: None, ingress: None }
    }
}

fn default_backend_type() -> String {
    "vxlan".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    subnet: String,
    public_ip: String,
    vtep_mac: Option<String>,
    backend: Option<String>,
}

impl Config {
    /// Reads and validates `path`. `etcd_on_command_line`: the command line names an etcd store, so
    /// the file holds only this host's own settings.
    pub fn load(path: &Path, etcd_on_command_line: bool) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| ConfigError::Read { file: path.to_owned(), error })?;
        Self::parse_with(path, &text, etcd_on_command_line)
    }

    /// Validates config text; `path` names the file in messages.
    pub fn parse(path: &Path, text: &str) -> Result<Self, ConfigError> {
        Self::parse_with(path, text, false)
    }

    /// [`Config::parse`], for a command line that names an etcd store or not.
    pub fn parse_with(path: &Path, text: &str, etcd_on_command_line: bool) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: path.to_owned(),
            message: e.message().to_string() + &line_of(text, e.span()),
        })?;
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            file: path.to_owned(),
            key: key.to_string(),
            message,
        };
        let net = |key: &str, value: &str| -> Result<Ipv4Net, ConfigError> {
            value.parse::<Ipv4Net>().map_err(|e| match e {
                NetParseError::Syntax(_) => invalid(key, format!("is {e}")),
                NetParseError::HostBits { network, .. } => {
                    invalid(key, format!("= \"{value}\" has host bits set; write \"{network}\""))
                }
            })
        };
        let ip = |key: &str, value: &str| -> Result<Ipv4Addr, ConfigError> {
            value
                .parse()
                .map_err(|_| invalid(key, format!("= \"{value}\" is not an IPv4 address such as 198.18.0.1")))
        };
        let mac = |key: &str, value: &str| -> Result<Mac, ConfigError> {
            let m: Mac = value.parse().map_err(|e: String| invalid(key, format!("is {e}")))?;
            if !m.is_unicast() || m.is_zero() {
                return Err(invalid(key, format!("= \"{m}\" must be a unicast, non-zero MAC")));
            }
            Ok(m)
        };
        let iface = |key: &str, value: &str| -> Result<String, ConfigError> {
            if value.is_empty() || value.len() > 15 || value.contains(['/', ' ', '\0']) {
                return Err(invalid(key, format!("= \"{value}\" is not an interface name")));
            }
            Ok(value.to_string())
        };

        if raw.etcd.is_some() || etcd_on_command_line {
            for (present, key) in [
                (raw.network.is_some(), "network"),
                (raw.subnet.is_some(), "subnet"),
                (!raw.peers.is_empty(), "peer"),
            ] {
                if present {
                    return Err(invalid(
                        key,
                        "comes from etcd when an etcd store is set; remove it from the file".into(),
                    ));
                }
            }
        }
        let etcd = match &raw.etcd {
            None if etcd_on_command_line => Some(crate::etcd_store::EtcdSettings::new(Vec::new())),
            None => None,
            Some(e) => {
                let tls = e.ca_file.is_some();
                let scheme_ok = |u: &String| u.starts_with("http://") || (tls && u.starts_with("https://"));
                if (e.endpoints.is_empty() && !etcd_on_command_line) || !e.endpoints.iter().all(scheme_ok) {
                    return Err(invalid(
                        "etcd.endpoints",
                        "must list http:// URLs such as [\"http://127.0.0.1:2379\"], or https:// ones with `ca_file` set"
                            .into(),
                    ));
                }
                for (key, path) in [
                    ("etcd.ca_file", &e.ca_file),
                    ("etcd.cert_file", &e.cert_file),
                    ("etcd.key_file", &e.key_file),
                ] {
                    if path.as_ref().is_some_and(|p| !p.is_absolute()) {
                        return Err(invalid(key, "must be an absolute path to a PEM file".into()));
                    }
                }
                if e.cert_file.is_some() != e.key_file.is_some() {
                    return Err(invalid(
                        "etcd.cert_file",
                        "and `etcd.key_file` go together; set both or neither".into(),
                    ));
                }
                let mut settings = crate::etcd_store::EtcdSettings::new(e.endpoints.clone());
                if let Some(prefix) = &e.prefix {
                    if !prefix.starts_with('/') {
                        return Err(invalid("etcd.prefix", format!("= \"{prefix}\" must start with /")));
                    }
                    settings.prefix = prefix.trim_end_matches('/').to_string();
                }
                if let Some(ttl) = e.lease_ttl {
                    if ttl < 1 {
                        return Err(invalid(
                            "etcd.lease_ttl",
                            format!("= {ttl} must be a positive number of seconds"),
                        ));
                    }
                    settings.lease_ttl = std::time::Duration::from_secs(ttl as u64);
                }
                settings.username = e.username.clone();
                settings.password = e.password.clone();
                settings.ca_file = e.ca_file.clone();
                settings.cert_file = e.cert_file.clone();
                settings.key_file = e.key_file.clone();
                Some(settings)
            }
        };
        let required = |key: &str, v: &Option<String>| -> Result<String, ConfigError> {
            v.clone()
                .ok_or_else(|| invalid(key, "is missing; set it, or set [etcd] to take it from etcd".into()))
        };
        let (network, subnet) = if etcd.is_some() {
            // Filled from etcd by the agent.
            ("0.0.0.0/0".parse().expect("valid"), "0.0.0.0/30".parse().expect("valid"))
        } else {
            (
                net("network", &required("network", &raw.network)?)?,
                net("subnet", &required("subnet", &raw.subnet)?)?,
            )
        };
        if etcd.is_none() && (!network.contains(&subnet) || subnet == network) {
            return Err(invalid(
                "subnet",
                format!("= \"{subnet}\" must be a smaller subnet inside `network` = \"{network}\""),
            ));
        }
        if subnet.prefix() > 30 {
            return Err(invalid(
                "subnet",
                format!("= \"{subnet}\" leaves no room for containers; use /30 or larger"),
            ));
        }
        let iface_name = iface("iface", &raw.iface)?;
        let public_ip = raw.public_ip.as_deref().map(|v| ip("public_ip", v)).transpose()?;
        if raw.container_ifaces.is_empty() {
            return Err(invalid(
                "container_ifaces",
                "is empty; name the bridge your containers are attached to, e.g. [\"docker0\"]".into(),
            ));
        }
        let mut container_ifaces = Vec::new();
        for (i, name) in raw.container_ifaces.iter().enumerate() {
            let name = iface(&format!("container_ifaces[{i}]"), name)?;
            if name == iface_name {
                return Err(invalid(
                    &format!("container_ifaces[{i}]"),
                    format!(
                        "= \"{name}\" is also `iface`; containers and the underlay need different interfaces"
                    ),
                ));
            }
            if container_ifaces.contains(&name) {
                return Err(invalid(
                    &format!("container_ifaces[{i}]"),
                    format!("= \"{name}\" is listed twice"),
                ));
            }
            container_ifaces.push(name);
        }
        let vtep_mac = raw.vtep_mac.as_deref().map(|v| mac("vtep_mac", v)).transpose()?;
        let pin_dir = raw.pin_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
        if !pin_dir.is_absolute() {
            return Err(invalid(
                "pin_dir",
                format!("= \"{}\" must be an absolute path on bpffs", pin_dir.display()),
            ));
        }
        let metrics_addr = raw
            .metrics_addr
            .as_deref()
            .map(|v| {
                v.parse::<SocketAddr>().map_err(|_| {
                    invalid(
                        "metrics_addr",
                        format!("= \"{v}\" is not an address:port such as 127.0.0.1:9436"),
                    )
                })
            })
            .transpose()?;

        let absolute = |key: &str, p: Option<PathBuf>| -> Result<Option<PathBuf>, ConfigError> {
            match p {
                Some(p) if !p.is_absolute() => {
                    Err(invalid(key, format!("= \"{}\" must be an absolute path", p.display())))
                }
                p => Ok(p),
            }
        };
        let subnet_file = absolute("subnet_file", raw.subnet_file)?
            .unwrap_or_else(|| PathBuf::from(crate::subnet_env::DEFAULT_SUBNET_FILE));
        let docker_opts_file = absolute("docker_opts_file", raw.docker_opts_file)?;

        let backend_type = |key: &str, name: &str| -> Result<BackendType, ConfigError> {
            BackendType::from_name(name).ok_or_else(|| {
                invalid(
                    key,
                    format!("= \"{name}\" is unknown; use \"vxlan\", \"udp\", \"gre\" or \"direct\""),
                )
            })
        };
        let kind = backend_type("backend.type", &raw.backend.kind)?;
        let fallback = match raw.backend.fallback.as_deref() {
            None => BackendType::Vxlan,
            Some(_) if kind != BackendType::Direct => {
                return Err(invalid("backend.fallback", "applies only to type \"direct\"; remove it".into()));
            }
            Some("direct") => {
                return Err(invalid(
                    "backend.fallback",
                    "= \"direct\" cannot reach peers off the segment; use \"vxlan\", \"udp\" or \"gre\""
                        .into(),
                ));
            }
            Some(name) => backend_type("backend.fallback", name)?,
        };
        let vni = raw.backend.vni.unwrap_or(DEFAULT_VNI as i64);
        if !(1..=MAX_VNI as i64).contains(&vni) {
            return Err(invalid("backend.vni", format!("= {vni} must be between 1 and {MAX_VNI}")));
        }
        let gre_key = match raw.backend.key {
            None => None,
            Some(k) if (0..=u32::MAX as i64).contains(&k) => Some(k as u32),
            Some(k) => {
                return Err(invalid(
                    "backend.key",
                    format!("= {k} must be a 32-bit GRE key, 0 to {}", u32::MAX),
                ));
            }
        };
        // `port` is the port of the UDP-based format in use: the type's, or direct's fallback's.
        let udp_kind = match kind {
            BackendType::Direct => fallback,
            k => k,
        };
        let (mut vxlan_port, mut udp_port) = (DEFAULT_VXLAN_PORT, xnet_common::wire::DEFAULT_UDP_PORT);
        if let Some(port) = raw.backend.port {
            if !(1..=65535).contains(&port) {
                return Err(invalid(
                    "backend.port",
                    format!("= {port} must be a UDP port between 1 and 65535"),
                ));
            }
            match udp_kind {
                BackendType::Vxlan => vxlan_port = port as u16,
                BackendType::Udp => udp_port = port as u16,
                _ => {
                    return Err(invalid(
                        "backend.port",
                        "applies to vxlan and udp, not gre; remove it".into(),
                    ));
                }
            }
        }
        if vxlan_port == udp_port {
            return Err(invalid(
                "backend.port",
                format!(
                    "= {vxlan_port} is also the other UDP format's port (vxlan {vxlan_port}, udp {udp_port}); pick another"
                ),
            ));
        }
        let ingress = match raw.backend.ingress.as_deref() {
            None | Some("auto") => IngressMode::Auto,
            Some("xdp") => IngressMode::Xdp,
            Some("tc") => IngressMode::Tc,
            Some(other) => {
                return Err(invalid(
                    "backend.ingress",
                    format!("= \"{other}\" must be \"auto\", \"xdp\" or \"tc\""),
                ));
            }
        };
        let backend = Backend { kind, vni: vni as u32, vxlan_port, udp_port, gre_key, fallback, ingress };

        let mut peers: Vec<PeerConfig> = Vec::new();
        // Peers so far by first address (last address, index), and by public IP: the checks below
        // stay O(log n) per peer, so a config with 100k peers loads in well under a second.
        let mut by_start: BTreeMap<u32, (u32, usize)> = BTreeMap::new();
        let mut by_ip: HashMap<Ipv4Addr, usize> = HashMap::new();
        for (i, p) in raw.peers.iter().enumerate() {
            let key = |k: &str| format!("peer[{i}].{k}");
            let psubnet = net(&key("subnet"), &p.subnet)?;
            if !network.contains(&psubnet) {
                return Err(invalid(
                    &key("subnet"),
                    format!("= \"{psubnet}\" is outside `network` = \"{network}\""),
                ));
            }
            if psubnet.overlaps(&subnet) {
                return Err(invalid(
                    &key("subnet"),
                    format!(
                        "= \"{psubnet}\" overlaps this host's `subnet` = \"{subnet}\"; every host needs its own subnet"
                    ),
                ));
            }
            let pip = ip(&key("public_ip"), &p.public_ip)?;
            if Some(pip) == public_ip {
                return Err(invalid(
                    &key("public_ip"),
                    format!("= \"{pip}\" is this host's own `public_ip`"),
                ));
            }
            let pmac = match &p.vtep_mac {
                Some(v) => mac(&key("vtep_mac"), v)?,
                None => Mac::from_ipv4(pip),
            };
            let pbackend = p.backend.as_deref().map(|b| backend_type(&key("backend"), b)).transpose()?;
            let start = u32::from(psubnet.addr());
            let end = start | !psubnet.mask();
            // Existing subnets do not overlap each other, so only the last one starting at or
            // before this one's end can overlap it.
            if let Some((_, &(q_end, j))) = by_start.range(..=end).next_back()
                && q_end >= start
            {
                return Err(invalid(
                    &key("subnet"),
                    format!(
                        "= \"{psubnet}\" overlaps peer[{j}].subnet = \"{}\"; every host needs its own subnet",
                        peers[j].subnet
                    ),
                ));
            }
            if let Some(j) = by_ip.get(&pip) {
                return Err(invalid(
                    &key("public_ip"),
                    format!("= \"{pip}\" is already peer[{j}]; list each peer host once"),
                ));
            }
            by_start.insert(start, (end, i));
            by_ip.insert(pip, i);
            peers.push(PeerConfig { subnet: psubnet, public_ip: pip, vtep_mac: pmac, backend: pbackend });
        }

        Ok(Config {
            file: path.to_owned(),
            network,
            subnet,
            iface: iface_name,
            public_ip,
            container_ifaces,
            vtep_mac,
            pin_dir,
            metrics_addr,
            subnet_file,
            docker_opts_file,
            backend,
            peers,
            etcd,
        })
    }
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
        Config::parse(Path::new("/etc/xnet/xnet.toml"), text)
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.subnet.to_string(), "10.244.1.0/24");
        assert_eq!((c.backend.kind, c.backend.vni, c.backend.vxlan_port), (BackendType::Vxlan, 1, 8472));
        assert_eq!(
            (c.backend.udp_port, c.backend.gre_key, c.backend.ingress),
            (8285, None, IngressMode::Auto)
        );
        assert_eq!(c.peers.len(), 2);
        assert_eq!(c.peers[1].vtep_mac.to_string(), "02:00:c6:12:00:03", "default VTEP MAC");
    }

    #[test]
    fn backends_and_their_settings() {
        let gre =
            parse(&GOOD.replace("type = \"vxlan\"", "type = \"gre\"\nkey = 42").replace("port = 8472\n", ""))
                .unwrap();
        assert_eq!((gre.backend.kind, gre.backend.gre_key), (BackendType::Gre, Some(42)));
        assert_eq!(gre.backend.overhead(BackendType::Gre), 28, "GRE with a key");
        let udp =
            parse(&GOOD.replace("type = \"vxlan\"", "type = \"udp\"").replace("port = 8472", "port = 9000"))
                .unwrap();
        assert_eq!((udp.backend.udp_port, udp.backend.vxlan_port), (9000, 8472));
        assert_eq!(udp.backend.overhead(BackendType::Udp), 28);
        let direct = parse(
            &GOOD
                .replace("type = \"vxlan\"", "type = \"direct\"\nfallback = \"udp\"")
                .replace("port = 8472\n", ""),
        )
        .unwrap();
        assert_eq!((direct.backend.kind, direct.backend.fallback), (BackendType::Direct, BackendType::Udp));
        assert_eq!(direct.backend.overhead(BackendType::Direct), 0);
        let peer = parse(&GOOD.replace("vtep_mac = \"02:00:c6:12:00:02\"", "backend = \"gre\"")).unwrap();
        assert_eq!(peer.peers[0].backend, Some(BackendType::Gre));
        assert_eq!(peer.backend.overhead(BackendType::Vxlan), 50);
    }

    #[test]
    fn etcd_mode_takes_the_overlay_from_etcd() {
        let local = "iface = \"eth0\"\ncontainer_ifaces = [\"docker0\"]\n";
        let c = parse(&format!("{local}[etcd]\nendpoints = [\"http://198.18.0.254:2379\"]\nprefix = \"/x/net/\"\nlease_ttl = 60\n")).unwrap();
        let e = c.etcd.unwrap();
        assert_eq!((e.endpoints.len(), e.prefix.as_str(), e.lease_ttl.as_secs()), (1, "/x/net", 60));
        let on_cli = Config::parse_with(Path::new("/etc/xnet/xnet.toml"), local, true).unwrap();
        assert!(on_cli.etcd.is_some(), "--etcd-endpoints with a file of local settings only");
        for (text, expected) in [
            (
                format!("{local}subnet = \"10.244.1.0/24\"\n[etcd]\nendpoints = [\"http://e:2379\"]\n"),
                "`subnet` comes from etcd",
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
        assert_eq!((c.backend.kind, c.backend.vni, c.backend.vxlan_port), (BackendType::Vxlan, 1, 8472));
        assert_eq!(c.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!((c.public_ip, c.vtep_mac, c.metrics_addr), (None, None, None));
        assert_eq!(c.subnet_file, PathBuf::from("/run/xnet/subnet.env"));
        assert_eq!(c.docker_opts_file, None);
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
