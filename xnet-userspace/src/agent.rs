//! `xnet run`: validate, set up the datapath, report readiness, wait for a signal, tear down.
//!
//! Order matters: everything that can be checked without changing the host is checked first, so a
//! bad config leaves nothing behind; after that any failure rolls back what this run created.

use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use xnet_common::{
    maps::{
        AgentState, Backend as WireBackend, DatapathConfig, GRE_KEYED, IngressHook, Peer, RemoteSubnet, Store,
    },
    wire::vni_to_wire,
};

use crate::{
    cli::RunArgs,
    config::{Config, IngressMode},
    datapath::{self, Datapath, Hook, RouteIndexSpec},
    host::{self, HostError, HostPlan, Interface},
    metrics,
    subnet::{Ipv4Net, Mac},
    subnet_env::{self, SubnetEnv},
};

/// Everything the agent resolved about this host before touching it.
pub struct Plan {
    pub config: Config,
    pub underlay: Interface,
    pub container_ifaces: Vec<Interface>,
    pub public_ip: Ipv4Addr,
    pub vtep_mac: Mac,
    pub ingress: Hook,
    pub overlay_mtu: u32,
    /// The backend each peer (in config order) is sent with: its own, or `[backend] type`, and for
    /// `direct` peers that are not on the underlay's segment, the fallback.
    pub peer_backends: Vec<WireBackend>,
}

impl Plan {
    /// Looks up the interfaces and fills in the defaults that depend on the host.
    pub fn resolve(config: Config) -> Result<Self, HostError> {
        let underlay = Interface::find(&config.iface, "iface")?;
        let container_ifaces = config
            .container_ifaces
            .iter()
            .enumerate()
            .map(|(i, name)| Interface::find(name, &format!("container_ifaces[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        let public_ip = match config.public_ip {
            Some(ip) => ip,
            None => {
                *underlay.ipv4.first().ok_or_else(|| HostError::NoAddress { name: underlay.name.clone() })?
            }
        };
        let vtep_mac = config.vtep_mac.unwrap_or_else(|| Mac::from_ipv4(public_ip));
        let ingress = match config.backend.ingress {
            IngressMode::Xdp => Hook::XdpIngress,
            IngressMode::Tc => Hook::TcIngress,
            // XDP on a virtual device such as a veth costs the sender its GSO: tc there.
            IngressMode::Auto if underlay.is_virtual() => Hook::TcIngress,
            IngressMode::Auto => Hook::XdpIngress,
        };
        let backend = &config.backend;
        let peer_backends = effective_backends(backend, &underlay, &config.peers);
        // The containers' MTU must fit the costliest encapsulation this host sends with.
        let overhead =
            peer_backends.iter().chain([&backend.kind]).map(|b| backend.overhead(*b)).max().unwrap_or(0);
        // 68: the smallest MTU IPv4 allows (RFC 791).
        let overlay_mtu = underlay.mtu.checked_sub(overhead).filter(|m| *m >= 68).ok_or_else(|| {
            HostError::MtuTooSmall { name: underlay.name.clone(), mtu: underlay.mtu, overhead }
        })?;
        if !underlay.ipv4.contains(&public_ip) {
            tracing::warn!(
                public_ip = %public_ip,
                iface = %underlay.name,
                "public_ip is not an address of iface; peers must reach it (behind NAT they send to it and it must lead here)"
            );
        }
        host::check_bpffs(&config.pin_dir)?;
        Ok(Self {
            config,
            underlay,
            container_ifaces,
            public_ip,
            vtep_mac,
            ingress,
            overlay_mtu,
            peer_backends,
        })
    }

    /// Replaces the peers (etcd: the leases changed) and works out their backends again.
    pub fn set_peers(&mut self, peers: Vec<crate::config::PeerConfig>) {
        self.peer_backends = effective_backends(&self.config.backend, &self.underlay, &peers);
        self.config.peers = peers;
    }

    pub fn datapath_config(&self) -> DatapathConfig {
        DatapathConfig {
            underlay_ifindex: self.underlay.index,
            underlay_mtu: self.underlay.mtu,
            local_ip: self.public_ip.octets(),
            local_subnet: self.config.subnet.addr().octets(),
            local_netmask: self.config.subnet.netmask().octets(),
            vxlan_vni: vni_to_wire(self.config.backend.vni),
            vxlan_port: self.config.backend.vxlan_port.to_be_bytes(),
            vtep_mac: self.vtep_mac.0,
            udp_port: self.config.backend.udp_port.to_be_bytes(),
            flags: if self.config.backend.gre_key.is_some() { GRE_KEYED } else { 0 },
            reserved: 0,
            gre_key: self.config.backend.gre_key.unwrap_or(0).to_be_bytes(),
            gateway_mac: self.container_ifaces.first().map(|c| c.mac.0).unwrap_or_default(),
            reserved2: [0; 2],
            // Off until the datapath has filled ROUTE_INDEX (Datapath::sync_routes).
            index_net: [0; 4],
            index_netmask: [0; 4],
            index_shift: 0,
            reserved3: [0; 7],
            // Built from the fields above when CONFIG is written (Datapath::set_config).
            outer: Default::default(),
        }
    }

    /// The shape of the route index: the overlay network, and this host's subnet length as every
    /// host's (flannel's SubnetLen; a static peer with another length switches the index off).
    pub fn route_index(&self) -> RouteIndexSpec {
        RouteIndexSpec { network: self.config.network, subnet_len: self.config.subnet.prefix() }
    }

    pub fn routes(&self) -> (BTreeMap<Ipv4Net, RemoteSubnet>, BTreeMap<[u8; 4], Peer>) {
        let mut routes = BTreeMap::new();
        let mut peers = BTreeMap::new();
        for (p, backend) in self.config.peers.iter().zip(&self.peer_backends) {
            let backend = *backend as u8;
            routes.insert(
                p.subnet,
                RemoteSubnet { peer_ip: p.public_ip.octets(), vtep_mac: p.vtep_mac.0, backend, reserved: 0 },
            );
            peers.insert(p.public_ip.octets(), Peer { vtep_mac: p.vtep_mac.0, backend, reserved: 0 });
        }
        (routes, peers)
    }
}

/// The backend each peer is sent with: its own, or `[backend] type`; a `direct` peer that is not on
/// the underlay's segment gets the fallback.
fn effective_backends(
    backend: &crate::config::Backend,
    underlay: &Interface,
    peers: &[crate::config::PeerConfig],
) -> Vec<WireBackend> {
    peers
        .iter()
        .map(|p| match p.backend.unwrap_or(backend.kind) {
            WireBackend::Direct if !underlay.on_link(p.public_ip) => {
                tracing::info!(
                    peer = %p.public_ip,
                    fallback = backend.fallback.name(),
                    "peer is not on the underlay's segment: direct routing falls back"
                );
                backend.fallback
            }
            b => b,
        })
        .collect()
}

/// Brings the datapath up for `plan`. On failure, a pin directory this call created is removed
/// again; one that an earlier agent left (a takeover) is left as it was, still forwarding.
pub(crate) fn bring_up(plan: &Plan, store: Store, lease_expiry: u64) -> anyhow::Result<Datapath> {
    let pin_dir = &plan.config.pin_dir;
    let fresh = !pin_dir.exists();
    let result = (|| -> anyhow::Result<Datapath> {
        let mut dp = Datapath::load(pin_dir)?;
        dp.set_config(&plan.datapath_config())?;
        let (routes, peers) = plan.routes();
        let now = unix_now();
        dp.sync_routes(&routes, &peers, plan.route_index(), store, now)?;
        dp.set_agent_state(&AgentState {
            pid: std::process::id(),
            overlay_mtu: plan.overlay_mtu,
            started_at: now,
            last_reconcile: now,
            store: store as u8,
            store_up: 1,
            ingress: match plan.ingress {
                Hook::XdpIngress => IngressHook::Xdp as u8,
                _ => IngressHook::Tc as u8,
            },
            backend: plan.config.backend.kind as u8,
            invalid_entries: 0,
            lease_expiry,
        })?;
        refresh_bridge_ports(&mut dp, plan, &mut None, false);
        host::apply(&HostPlan {
            underlay: &plan.underlay,
            container_ifaces: &plan.container_ifaces,
            network: plan.config.network,
            overlay_mtu: plan.overlay_mtu,
        })?;
        dp.attach(plan.ingress, &plan.underlay.name)?;
        for c in &plan.container_ifaces {
            dp.attach(Hook::TcEgress, &c.name)?;
        }
        // The ports before detach_stale, so an earlier agent's port attachments are taken over.
        refresh_bridge_ports(&mut dp, plan, &mut None, true);
        dp.detach_stale()?;
        Ok(dp)
    })();
    if result.is_err()
        && fresh
        && let Err(e) = datapath::remove_all(pin_dir)
    {
        tracing::warn!(error = %e, "could not remove what this run pinned");
    }
    result
}

/// What every agent holds while it runs, set up before the datapath goes up.
pub(crate) struct Running {
    pub(crate) metrics: Option<tokio::net::TcpListener>,
    pub(crate) term: tokio::signal::unix::Signal,
    pub(crate) int: tokio::signal::unix::Signal,
    _lock: host::PinDirLock,
}

/// Everything that can still fail before the datapath goes up: the metrics listener, the signal
/// handlers, the pin directory lock.
pub(crate) async fn prepare(config: &Config, config_path: &Path) -> anyhow::Result<Running> {
    let metrics = match config.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on `metrics_addr` = \"{addr}\" from {}; pick a free local address",
                config_path.display()
            )
        })?),
        None => None,
    };
    Ok(Running {
        metrics,
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
        _lock: host::lock_pin_dir(&config.pin_dir)?,
    })
}

/// Runs the agent until SIGINT or SIGTERM.
pub async fn run(args: &RunArgs) -> anyhow::Result<()> {
    let config_path = args.config.as_path();
    let mut config = Config::load(config_path, !args.etcd_endpoints.is_empty())?;
    if let Some(file) = &args.subnet_file {
        config.subnet_file = file.clone();
    }
    let tls = config.etcd.as_ref().is_some_and(|e| e.ca_file.is_some());
    if let Some(bad) =
        args.etcd_endpoints.iter().find(|u| !(u.starts_with("http://") || (tls && u.starts_with("https://"))))
    {
        anyhow::bail!(
            "--etcd-endpoints: {bad:?} is not an http:// URL such as http://127.0.0.1:2379 (https:// needs `ca_file` in [etcd])"
        );
    }
    if !args.etcd_endpoints.is_empty() {
        let mut settings =
            config.etcd.take().unwrap_or_else(|| crate::etcd_store::EtcdSettings::new(Vec::new()));
        settings.endpoints = args.etcd_endpoints.clone();
        config.etcd = Some(settings);
    }
    if let (Some(prefix), Some(settings)) = (&args.etcd_prefix, config.etcd.as_mut()) {
        settings.prefix = prefix.trim_end_matches('/').to_string();
    }
    match config.etcd.clone() {
        Some(settings) => crate::etcd_agent::run(config, settings, config_path, args.keep_datapath).await,
        None => run_static(config, config_path, args.keep_datapath).await,
    }
}

/// The static store: routes from the config file, set up once.
async fn run_static(config: Config, config_path: &Path, keep_datapath: bool) -> anyhow::Result<()> {
    let plan = Plan::resolve(config)?;
    let mut running = prepare(&plan.config, config_path).await?;
    write_runtime_files(&plan)?;
    let mut dp = bring_up(&plan, Store::File, 0)?;
    let metrics_task = ready(&plan, &mut running);
    let mut ports_tick = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last_ports_error = None;
    loop {
        tokio::select! {
            _ = running.term.recv() => { tracing::info!("SIGTERM"); break; }
            _ = running.int.recv() => { tracing::info!("SIGINT"); break; }
            _ = ports_tick.tick() => refresh_bridge_ports(&mut dp, &plan, &mut last_ports_error, true),
        }
    }
    stop(dp, &plan, metrics_task, keep_datapath)
}

/// Starts the metrics server, logs readiness and tells systemd.
pub(crate) fn ready(plan: &Plan, running: &mut Running) -> Option<tokio::task::JoinHandle<()>> {
    let task = running.metrics.take().map(|l| tokio::spawn(metrics::serve(l, plan.config.pin_dir.clone())));
    tracing::info!(
        subnet = %plan.config.subnet,
        public_ip = %plan.public_ip,
        vtep_mac = %plan.vtep_mac,
        peers = plan.config.peers.len(),
        mtu = plan.overlay_mtu,
        ingress = ?plan.ingress,
        pin_dir = %plan.config.pin_dir.display(),
        "xnet ready"
    );
    notify_ready();
    task
}

/// Tears down (or, with `keep_datapath`, leaves) the datapath on the way out.
pub(crate) fn stop(
    dp: Datapath,
    plan: &Plan,
    metrics_task: Option<tokio::task::JoinHandle<()>>,
    keep_datapath: bool,
) -> anyhow::Result<()> {
    if let Some(t) = metrics_task {
        t.abort();
    }
    let pin_dir = dp.pin_dir().to_path_buf();
    drop(dp);
    if keep_datapath {
        tracing::info!(pin_dir = %pin_dir.display(), "stopping; datapath left attached and pinned (--keep-datapath)");
    } else {
        datapath::remove_all(&pin_dir)?;
        if let Some(bridge) = plan.container_ifaces.first() {
            host::remove_route(plan.config.network, &bridge.name);
        }
        tracing::info!("stopped; datapath detached and unpinned");
    }
    Ok(())
}

/// Refreshes which bridge port each local container sits behind (for direct delivery). A failure
/// costs only speed: packets for unknown containers go through the host stack. Logs an error once,
/// not every second while it lasts (`last_error` remembers it).
/// Follows the containers behind the container bridges: LOCAL_PORTS (container MAC -> port, for
/// delivery straight into a container and to leave container-to-container frames to the bridge),
/// and, with `attach`, the egress program on every port. Errors are logged once until they change:
/// what is not refreshed takes the slower path through the bridge and the host stack.
pub(crate) fn refresh_bridge_ports(
    dp: &mut Datapath,
    plan: &Plan,
    last_error: &mut Option<String>,
    attach: bool,
) {
    let result = plan
        .container_ifaces
        .iter()
        .try_fold(BTreeMap::new(), |mut ports, c| {
            ports.extend(host::bridge_ports(&c.name)?);
            Ok::<_, HostError>(ports)
        })
        .map_err(|e| format!("cannot refresh LOCAL_PORTS: {e}"))
        .and_then(|ports| {
            dp.sync_local_ports(&ports).map_err(|e| format!("cannot refresh LOCAL_PORTS: {e}"))
        });
    let result = result.and(if attach { attach_ports(dp, plan) } else { Ok(()) });
    // A bridge without a MAC of its own set takes its lowest port's, so it changes as containers
    // come and go; until updated, egress merely asks LOCAL_PORTS about every frame.
    let result = result.and(match plan.container_ifaces.first() {
        Some(first) => Interface::find(&first.name, "container_ifaces[0]")
            .map_err(|e| e.to_string())
            .and_then(|now| dp.set_gateway_mac(now.mac.0).map_err(|e| e.to_string())),
        None => Ok(()),
    });
    let error = result.err();
    if let Some(e) = &error
        && Some(e) != last_error.as_ref()
    {
        tracing::warn!(error = %e, "bridge ports: packets take the path through the bridge and host stack");
    }
    *last_error = error;
}

/// Attaches the egress program to the ports of the container bridges (the configured interfaces
/// themselves keep theirs).
fn attach_ports(dp: &mut Datapath, plan: &Plan) -> Result<(), String> {
    let mut ports = BTreeMap::new();
    for c in &plan.container_ifaces {
        ports.extend(host::bridge_port_ifaces(&c.name).map_err(|e| e.to_string())?);
    }
    ports.retain(|name, _| !plan.container_ifaces.iter().any(|c| &c.name == name));
    dp.sync_port_attachments(&ports).map_err(|e| e.to_string())
}

/// subnet.env (and the Docker options file, if configured) for the container runtime.
pub(crate) fn write_runtime_files(plan: &Plan) -> anyhow::Result<()> {
    let env = SubnetEnv {
        network: plan.config.network,
        subnet: plan.config.subnet,
        mtu: plan.overlay_mtu,
        ipmasq: false,
    };
    subnet_env::write_atomic(&plan.config.subnet_file, &env.render())?;
    if let Some(path) = &plan.config.docker_opts_file {
        subnet_env::write_atomic(path, &env.render_docker_opts())?;
    }
    Ok(())
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Tells systemd (Type=notify) that the agent is ready, when started by it.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return tracing::warn!(error = %e, "sd_notify: no socket"),
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt as _;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|a| sock.send_to_addr(b"READY=1", &a))
    } else {
        sock.send_to(b"READY=1", Path::new(&path))
    };
    if let Err(e) = result {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}
