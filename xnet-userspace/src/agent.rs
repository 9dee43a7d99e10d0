//! `xnet run`: the agent's one loop, for every store.
//!
//! Start: check the host (nothing is leased or attached for a host that cannot run), start the
//! store, wait for its overlay, plan, write subnet.env, bring the datapath up, report ready.
//! Then one loop carries events to the datapath: signals (SIGHUP reads the static file's peers
//! again), store events (peers added, changed, removed; the store's health), netlink events
//! (container ports, learned MACs, the bridge's MAC), and timers (a failed sync retried with
//! backoff; endpoint ageing). [`Agent::settle`] is the one place that turns a failed step into an
//! action. Stop: tear down, or with `--keep-datapath` leave the datapath forwarding for the next
//! agent.

use std::time::Duration;

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::Instant,
};
use xnet_common::maps::{AgentState, ContainerIface, IfaceState};

use crate::{
    big_tcp::{self, Decision, Rank, Record},
    clock::{monotonic_coarse_ns, unix_now},
    config::{BehindRouter, Config, PeerConfig, StoreConfig},
    containers::Containers,
    datapath::{
        self, Datapath, DatapathError, Program, Programs,
        sync::{Scope, Wanted},
    },
    host::{self, HostPlan, Interface},
    mac::Mac,
    metrics,
    netlink::{LinkInfo, Netlink},
    plan::{HostFacts, Plan},
    store::{Identity, LeaseState, Store, StoreEvent, etcd::remembered_subnet, kernel_routes::HostLink},
    subnet_env::{self, SubnetEnv},
    systemd,
};

/// How soon after a netlink event the container interfaces are read again (events come in bursts
/// when a container starts).
const SETTLE_EVENTS: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs the agent with `config` until SIGINT or SIGTERM; `loader` was started before the config
/// was read (see [`datapath::Loader`]).
pub async fn run(mut config: Config, loader: datapath::Loader) -> anyhow::Result<()> {
    // Local checks first: nothing is leased or attached for a host that cannot run.
    let underlay = Interface::find(&config.iface, "iface")?;
    let public_ip = match config.public_ip {
        Some(ip) => ip,
        None => *underlay
            .ipv4
            .first()
            .ok_or_else(|| host::HostError::NoAddress { name: underlay.name.clone() })?,
    };
    if !underlay.ipv4.contains(&public_ip) {
        tracing::warn!(
            public_ip = %public_ip,
            iface = %underlay.name,
            "public_ip is not an address of iface; peers must reach it (behind NAT they send to it and it must lead here)"
        );
    }
    // Container interfaces may appear later (docker0 is dockerd's, cni0 the first pod's): they are
    // attached when they do.
    for (i, name) in config.container_ifaces.iter().enumerate() {
        match Interface::find(name, &format!("container_ifaces[{i}]")) {
            Ok(_) => {}
            Err(host::HostError::NoInterface { .. }) => tracing::warn!(
                iface = %name,
                key = %format!("container_ifaces[{i}]"),
                "container interface does not exist yet; xnet attaches to it when it appears (check the name if nothing creates it)"
            ),
            Err(e) => return Err(e.into()),
        }
    }
    host::check_bpffs(&config.pin_dir)?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on `metrics_addr` = \"{addr}\" from {}; pick a free local address",
                config.file.display()
            )
        })?),
        None => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Taken from the start: SIGHUP's default action would end the agent.
    let mut hup = signal(SignalKind::hangup())?;
    let _lock = host::lock_pin_dir(&config.pin_dir)?;
    let (mut netlink, mut host_events) = Netlink::connect().await?;
    let underlay_link = netlink
        .link(&underlay.name)
        .await?
        .ok_or_else(|| host::HostError::NoInterface { name: underlay.name.clone(), key: "iface".into() })?;
    let big_tcp = match big_tcp::decide(config.big_tcp, &underlay_link)
        .map_err(|e| anyhow::anyhow!("config file {}: {e}", config.file.display()))?
    {
        Decision::On(bytes) => Some(bytes),
        Decision::Off(why) => {
            tracing::info!(reason = %why, "BIG TCP off: links keep their GSO and GRO sizes");
            None
        }
    };

    let vtep_mac = config.vtep_mac.unwrap_or_else(|| Mac::from_ipv4(public_ip));
    let link =
        HostLink { underlay_index: underlay.index, underlay_nets: underlay.ipv4_nets.clone(), public_ip };
    let mut store = Store::start(
        &config.store,
        Identity { public_ip, vtep_mac },
        link,
        remembered_subnet(&config.subnet_file),
    );
    let (overlay, mut peers, invalid, lease_expiry) = loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("stopped before the store answered; nothing was set up"); return Ok(()); }
            _ = int.recv() => { tracing::info!("stopped before the store answered; nothing was set up"); return Ok(()); }
            event = store.next() => match event {
                StoreEvent::Ready { overlay, peers, invalid, lease_expiry } => break (overlay, peers, invalid, lease_expiry),
                other => tracing::debug!(event = ?other, "store event before it was ready"),
            },
        }
    };
    let facts = HostFacts {
        underlay_index: underlay.index,
        underlay_mtu: underlay.mtu,
        underlay_nets: underlay.ipv4_nets.clone(),
        underlay_virtual: underlay.is_virtual(),
        public_ip,
        public_ip_on_host: underlay.ipv4.contains(&public_ip),
        vtep_mac,
        untunnelled_open: config.untunnelled_open,
    };
    let mut plan = Plan::new(facts, overlay, config.ingress, &peers)
        .with_context(|| format!("interface {}", underlay.name))?;
    if let StoreConfig::Routes(r) = &config.store
        && r.behind_router == BehindRouter::Encapsulate
    {
        plan = plan.with_off_segment_peers().with_context(|| format!("interface {}", underlay.name))?;
    }
    log_fallbacks(&plan, &peers);
    write_runtime_files(&config, &plan)?;
    // The store's first list of peers is all the agent keeps of them until they are planned
    // (after the maps are loaded, see `bring_up`): no second copy while the maps fill.
    if let StoreConfig::File(overlay) = &mut config.store {
        overlay.peers = Vec::new();
    }
    let store_kind = store.kind();
    let mut containers = Containers::new(config.container_ifaces.clone());
    let first_refresh_failed = match containers.refresh(&netlink).await {
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the container interfaces yet; retrying");
            true
        }
    };
    let started = unix_now();
    let mut record = AgentState::new(
        std::process::id(),
        started,
        store.kind(),
        plan.ingress,
        plan.overlay.tunnel.kind,
        plan.overlay_mtu,
    );
    record.set_last_reconcile(started);
    record.set_store_up(true);
    record.set_invalid_entries(invalid);
    record.set_lease_expiry(lease_expiry);
    let plan_peers = || plan.wanted(store_kind, &std::mem::take(&mut peers));
    let (datapath, wanted) = bring_up(&config, &plan, loader, plan_peers, &containers, &underlay, &record)?;
    let big_tcp_record = Record::load(&big_tcp::record_path(&config.subnet_file));
    let mut agent = Agent {
        config,
        plan,
        datapath,
        wanted,
        containers,
        record,
        underlay_index: underlay.index,
        big_tcp,
        big_tcp_record,
        big_tcp_done: None,
        store_up: true,
        sync_ok: true,
        sync_retry: None,
        backoff: Duration::ZERO,
        last_error: Default::default(),
    };

    // An earlier agent's raises (before a `--keep-datapath` stop) for another setting go back first.
    if agent.big_tcp_record.raised.iter().any(|r| agent.big_tcp.is_none_or(|b| !r.fits(b))) {
        agent.restore_big_tcp(&netlink).await;
    }
    agent.follow_big_tcp(&netlink).await;
    let metrics_task =
        metrics_listener.map(|l| tokio::spawn(metrics::serve(l, agent.config.pin_dir.clone())));
    tracing::info!(
        subnet = %agent.plan.overlay.subnet,
        public_ip = %public_ip,
        vtep_mac = %vtep_mac,
        peers = agent.wanted.peer_count(),
        mtu = agent.plan.overlay_mtu,
        ingress = ?agent.plan.ingress,
        big_tcp = agent.big_tcp.unwrap_or(0),
        store = store.kind().name(),
        pin_dir = %agent.config.pin_dir.display(),
        "xnet ready"
    );
    for name in agent.containers.awaited() {
        tracing::info!(iface = name, "awaiting container interface");
    }
    agent.record_container_ifaces();
    systemd::notify_ready();

    let mut age_tick = tokio::time::interval(Duration::from_secs(1));
    // A refresh (or what it leads to) that failed is tried again a second later, event or not.
    const REFRESH_RETRY: Duration = Duration::from_secs(1);
    let mut refresh_at: Option<Instant> = first_refresh_failed.then(|| Instant::now() + REFRESH_RETRY);
    // When the netlink event stream ends, a new connection is made (now, then every second until
    // one works), and the container interfaces are read again in full.
    const RECONNECT_RETRY: Duration = Duration::from_secs(1);
    let mut reconnect_at: Option<Instant> = None;
    loop {
        let reconnect = async {
            match reconnect_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let retry = async {
            match agent.sync_retry {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let refresh = async {
            match refresh_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM"); break; }
            _ = int.recv() => { tracing::info!("SIGINT"); break; }
            _ = hup.recv() => agent.reload(),
            event = store.next() => agent.on_store(event),
            event = host_events.next(), if reconnect_at.is_none() => match event {
                Some(e) if agent.containers.concerns(&e) => { refresh_at.get_or_insert(Instant::now() + SETTLE_EVENTS); }
                Some(_) => {}
                None => {
                    tracing::error!("the netlink event stream ended; connecting again");
                    reconnect_at = Some(Instant::now());
                }
            },
            _ = reconnect => match Netlink::connect().await {
                Ok((n, events)) => {
                    tracing::info!("netlink connected again; reading the container interfaces anew");
                    (netlink, host_events) = (n, events);
                    reconnect_at = None;
                    refresh_at = Some(Instant::now());
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot connect to netlink; container ports are not followed meanwhile");
                    reconnect_at = Some(Instant::now() + RECONNECT_RETRY);
                }
            },
            _ = refresh => {
                refresh_at = None;
                let result = agent.containers.refresh(&netlink).await.map_err(|e| e.to_string());
                let result = result.and_then(|appeared| agent.follow_containers(&appeared));
                if result.is_err() {
                    refresh_at = Some(Instant::now() + REFRESH_RETRY);
                }
                agent.record_container_ifaces();
                agent.settle(Step::Containers, result);
                agent.follow_big_tcp(&netlink).await;
            }
            _ = retry => {
                agent.sync_retry = None;
                agent.sync(Scope::All);
            }
            _ = age_tick.tick() => {
                let result = agent.datapath.sync_local_ports(agent.containers.fdb(), monotonic_coarse_ns()).map_err(|e| e.to_string());
                agent.settle(Step::Containers, result);
            }
        }
    }
    systemd::notify_stopping();
    if let Some(t) = metrics_task {
        t.abort();
    }
    drop(store);
    if !agent.config.keep_datapath {
        agent.restore_big_tcp(&netlink).await;
    }
    agent.stop()
}

/// A step of the loop that can fail, for [`Agent::settle`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// Making the maps match the store.
    Sync,
    /// Following the containers (ports, learned MACs, the bridge's MAC).
    Containers,
    /// Recording the agent's state in AGENT.
    Record,
    /// Raising the links' GSO and GRO sizes for BIG TCP.
    BigTcp,
}

/// The running agent.
struct Agent {
    config: Config,
    plan: Plan,
    datapath: Datapath,
    wanted: Wanted,
    containers: Containers,
    record: AgentState,
    underlay_index: u32,
    /// The BIG TCP size the links of the path are raised to; `None`: off ([`big_tcp::decide`]).
    big_tcp: Option<u32>,
    /// The links raised so far, by this agent or an earlier one (kept in [`big_tcp::record_path`]).
    big_tcp_record: Record,
    /// The links of the path (ifindexes) at the last raise that went through: a raise is tried
    /// again only when they change, or after one that failed.
    big_tcp_done: Option<std::collections::BTreeSet<u32>>,
    /// The store was reachable at its last word.
    store_up: bool,
    /// The last sync of the maps worked.
    sync_ok: bool,
    sync_retry: Option<Instant>,
    backoff: Duration,
    /// The last error of each step, so it is logged once, not at every retry.
    last_error: std::collections::BTreeMap<Step, String>,
}

impl Agent {
    /// Applies what the store says.
    fn on_store(&mut self, event: StoreEvent) {
        match event {
            StoreEvent::Ready { .. } => tracing::warn!("the store said it was ready twice; ignoring it"),
            StoreEvent::Changed { delta, invalid } => {
                for subnet in &delta.removed {
                    self.wanted.remove(subnet);
                }
                for peer in &delta.set {
                    self.plan.set_peer(&mut self.wanted, peer);
                }
                self.record.set_invalid_entries(invalid);
                self.store_up = true;
                let scope = self.wanted.take_changes();
                self.sync(scope);
            }
            StoreEvent::Resync { peers, invalid } => {
                self.wanted.clear();
                for peer in &peers {
                    self.plan.set_peer(&mut self.wanted, peer);
                }
                self.wanted.take_changes();
                self.record.set_invalid_entries(invalid);
                self.store_up = true;
                self.sync(Scope::All);
            }
            StoreEvent::Health { up, lease_expiry } => {
                self.store_up = up;
                if let Some(t) = lease_expiry {
                    self.record.set_lease_expiry(Some(t));
                }
                self.write_record();
            }
            // The datapath is left as it is either way: the containers keep their addresses.
            StoreEvent::Lease(LeaseState::Held { expiry }) => {
                self.record.set_lease_lost(None);
                self.record.set_lease_expiry(Some(expiry));
                self.write_record();
            }
            StoreEvent::Lease(LeaseState::Lost { holder }) => {
                self.record.set_lease_lost(Some(holder.map(|ip| ip.octets())));
                self.write_record();
            }
        }
    }

    /// SIGHUP: reads the config file again and takes its peer list, as a store's full list
    /// ([`StoreEvent::Resync`]: the maps change only where it differs). A file that does not
    /// load, that changes anything but the peers, or whose peers do not fit the MTU planned at
    /// start ([`Plan::take_peers`]) is refused whole: the running peers stay.
    fn reload(&mut self) {
        let file = self.config.file.display().to_string();
        if !matches!(self.config.store, StoreConfig::File(_)) {
            tracing::warn!(
                file,
                "SIGHUP: the peers come from etcd or the routes, which the agent follows by itself; nothing to read again (restart the agent to apply a changed file)"
            );
            return;
        }
        let new = match Config::load(&self.config.file, &self.config.overrides) {
            Ok(new) => new,
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: reload refused; the running peers stay");
                return;
            }
        };
        match self.config.peers_on_reload(new) {
            Ok(peers) => {
                // Planned at start: the new peers must fit the containers' MTU.
                if let Err(e) = self.plan.take_peers(&peers) {
                    tracing::error!(file, error = %e, "SIGHUP: reload refused; the running peers stay");
                    return;
                }
                log_fallbacks(&self.plan, &peers);
                let before = self.wanted.peer_count();
                self.on_store(StoreEvent::Resync { peers, invalid: 0 });
                tracing::info!(file, before, peers = self.wanted.peer_count(), "SIGHUP: peers read again");
            }
            Err(key) => tracing::error!(
                file,
                key,
                "SIGHUP: reload refused: `{key}` changed, which only a restart applies (with --keep-datapath the datapath forwards meanwhile); the running peers stay"
            ),
        }
    }

    /// Makes the maps match what is wanted (the keys in `scope`).
    fn sync(&mut self, scope: Scope) {
        let config = self.plan.datapath_config(self.gateway_mac(), &self.wanted);
        // After a failure the mirror is exact but the changes of the failed sync were consumed:
        // compare everything until a sync works again.
        let scope = if self.sync_ok { scope } else { Scope::All };
        let result = self.datapath.sync(&self.wanted, &config, &scope, unix_now());
        let full = match &result {
            Err(DatapathError::Full(f)) => Some(f.map),
            _ => None,
        };
        self.record.set_full_map(full);
        self.settle(Step::Sync, result.map(|_| ()).map_err(|e| e.to_string()));
    }

    fn gateway_mac(&self) -> [u8; 6] {
        self.containers.gateway_mac().unwrap_or_default()
    }

    /// Applies what [`Containers::refresh`] found: the overlay MTU and the egress program on
    /// container interfaces that `appeared` (or were re-created), the egress program on every
    /// port, LOCAL_PORTS, and CONFIG's gateway MAC (a bridge without a MAC of its own set takes
    /// its lowest port's, so it changes as containers come and go).
    fn follow_containers(&mut self, appeared: &[String]) -> Result<(), String> {
        let mut first_error = None;
        // What appeared, and what is there but not attached yet (an attachment that failed).
        let todo: Vec<String> = self
            .containers
            .present()
            .keys()
            .filter(|n| appeared.contains(n) || !self.datapath.is_attached(Program::TcEgress, n))
            .cloned()
            .collect();
        for name in &todo {
            if appeared.contains(name) {
                tracing::info!(iface = %name, "container interface appeared");
            }
            let result = Interface::find(name, "container_ifaces")
                .map_err(|e| e.to_string())
                .and_then(|iface| {
                    host::set_container_mtu(&iface, self.plan.overlay_mtu).map_err(|e| e.to_string())
                })
                .and_then(|()| self.datapath.attach(Program::TcEgress, name).map_err(|e| e.to_string()));
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        let ports = self.datapath.sync_port_attachments(self.containers.ports()).map_err(|e| e.to_string());
        let local = self
            .datapath
            .sync_local_ports(self.containers.fdb(), monotonic_coarse_ns())
            .map_err(|e| e.to_string());
        if self.datapath.config().gateway_mac() != self.gateway_mac() {
            tracing::info!(mac = %Mac(self.gateway_mac()), "container interface MAC changed");
            self.sync(Scope::Keys { routes: Default::default(), peers: Default::default() });
        }
        first_error.map_or(Ok(()), Err).and(ports).and(local)
    }

    /// The one place that turns the result of a step into actions: what is recorded, logged and
    /// retried.
    fn settle(&mut self, step: Step, result: Result<(), String>) {
        match &result {
            Ok(()) => {
                if self.last_error.remove(&step).is_some() {
                    tracing::info!(step = ?step, "recovered");
                }
            }
            Err(e) if self.last_error.get(&step) != Some(e) => {
                match step {
                    Step::Sync => {
                        tracing::error!(error = %e, "cannot update the datapath maps; the last state keeps forwarding, retrying")
                    }
                    Step::Containers => {
                        tracing::warn!(error = %e, "container ports: packets take the path through the bridge and host stack")
                    }
                    Step::Record => tracing::warn!(error = %e, "cannot record the agent state"),
                    Step::BigTcp => {
                        tracing::warn!(error = %e, "BIG TCP: packets above 64 KB are cut in software where they meet a link left at 64 KB")
                    }
                }
                self.last_error.insert(step, e.clone());
            }
            Err(_) => {}
        }
        if step == Step::Sync {
            self.sync_ok = result.is_ok();
            if self.sync_ok {
                self.backoff = Duration::ZERO;
                self.sync_retry = None;
                self.record.set_last_reconcile(unix_now());
            } else {
                self.backoff = (self.backoff * 2).clamp(Duration::from_millis(250), MAX_BACKOFF);
                self.sync_retry = Some(Instant::now() + self.backoff);
            }
            self.write_record();
        }
    }

    /// BIG TCP: raises the links of the path still below the size (a new container's among
    /// them), when the path changed since the last raise that went through.
    async fn follow_big_tcp(&mut self, netlink: &Netlink) {
        let Some(bytes) = self.big_tcp else { return };
        let containers = &self.containers;
        let path: std::collections::BTreeSet<u32> = std::iter::once(self.underlay_index)
            .chain(containers.present().values().copied())
            .chain(containers.ports().values().copied())
            .collect();
        if self.big_tcp_done.as_ref() == Some(&path) {
            return;
        }
        let underlay = self.underlay_index;
        let rank = |l: &LinkInfo| path_rank(l, underlay, containers);
        let changes = big_tcp::raise(netlink, bytes, rank, &mut self.big_tcp_record).await;
        if !changes.changed.is_empty() {
            tracing::info!(bytes, links = ?changes.changed, "BIG TCP: GSO and GRO sizes raised");
        }
        let saved = self.big_tcp_record.save(&big_tcp::record_path(&self.config.subnet_file));
        let result = match (changes.error, saved) {
            (Some(e), _) => Err(e),
            (None, Err(e)) => Err(format!("{e}; a stop then cannot put the raised sizes back")),
            (None, Ok(())) => {
                self.big_tcp_done = Some(path);
                Ok(())
            }
        };
        self.settle(Step::BigTcp, result);
    }

    /// Puts back the sizes the record holds (what this agent, or an earlier one before a
    /// `--keep-datapath` stop, raised) and removes the record, or keeps in it the links that could
    /// not be put back (for the next agent, or `xnet cleanup`).
    async fn restore_big_tcp(&mut self, netlink: &Netlink) {
        if self.big_tcp_record.raised.is_empty() {
            return;
        }
        let changes = big_tcp::restore(netlink, &mut self.big_tcp_record).await;
        if !changes.changed.is_empty() {
            tracing::info!(links = ?changes.changed, "BIG TCP: GSO and GRO sizes put back");
        }
        if let Some(e) = changes.error {
            tracing::warn!(error = %e, "BIG TCP: could not put every link's sizes back");
        }
        let path = big_tcp::record_path(&self.config.subnet_file);
        if let Err(e) = self.big_tcp_record.save(&path) {
            tracing::warn!(error = %e, file = %path.display(), "BIG TCP: cannot write the record");
        }
    }

    /// Writes CONTAINER_IFACES: which container interfaces are attached, which are awaited.
    fn record_container_ifaces(&mut self) {
        let entries: Vec<ContainerIface> = self
            .containers
            .names()
            .iter()
            .map(|name| match self.containers.present().get(name) {
                Some(index) if self.datapath.is_attached(Program::TcEgress, name) => {
                    ContainerIface::new(name, IfaceState::Attached, *index)
                }
                _ => ContainerIface::new(name, IfaceState::Awaited, 0),
            })
            .collect();
        let result = self.datapath.maps_mut().set_container_ifaces(&entries).map_err(|e| e.to_string());
        if result.is_err() {
            self.settle(Step::Record, result);
        }
    }

    /// Writes AGENT: the store counts as up when it is reachable and the maps match it.
    fn write_record(&mut self) {
        self.record.set_store_up(self.store_up && self.sync_ok);
        let result = self.datapath.maps_mut().set_agent_state(&self.record).map_err(|e| e.to_string());
        if result.is_err() {
            self.settle(Step::Record, result);
        }
    }

    /// Tears down (or, with `keep_datapath`, leaves) the datapath.
    fn stop(self) -> anyhow::Result<()> {
        let pin_dir = self.config.pin_dir.clone();
        drop(self.datapath);
        if self.config.keep_datapath {
            tracing::info!(pin_dir = %pin_dir.display(), "stopping; datapath left attached and pinned (--keep-datapath)");
        } else {
            datapath::remove_all(&pin_dir)?;
            host::remove(self.plan.overlay.network, self.plan.overlay.subnet);
            tracing::info!("stopped; datapath detached and unpinned");
        }
        Ok(())
    }
}

/// Brings the datapath up, with the routes and peers `wanted` plans (called once the maps are
/// loaded: the loader's copy of the kernel's BTF, several megabytes, is freed by then, so the two
/// never add up). On failure, a pin directory this call created is removed again; one that an
/// earlier agent left (a takeover) is left as it was, still forwarding.
fn bring_up(
    config: &Config,
    plan: &Plan,
    loader: datapath::Loader,
    wanted: impl FnOnce() -> Wanted,
    containers: &Containers,
    underlay: &Interface,
    record: &AgentState,
) -> anyhow::Result<(Datapath, Wanted)> {
    // The configured container interfaces that exist now (the others are attached when they
    // appear).
    let container_ifaces: Vec<Interface> = containers
        .present()
        .keys()
        .filter_map(|name| Interface::find(name, "container_ifaces").ok())
        .collect();
    let pin_dir = &config.pin_dir;
    let fresh = !pin_dir.exists();
    // A panic on the way is an error like any other: what this run pinned is removed below.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> anyhow::Result<(Datapath, Wanted)> {
            let mut dp = Datapath::load_with(
                loader,
                pin_dir,
                config.capacity.for_subnet(plan.overlay.subnet.prefix()),
            )?;
            let wanted = wanted();
            // What cannot be done is refused before anything changes, in the maps (which may be an
            // earlier agent's, still forwarding) or on the host: a state the maps cannot hold, a
            // program the kernel refuses.
            dp.check_capacity(&wanted)?;
            let ingress = Program::ingress(plan.ingress);
            dp.programs_mut().load(&[ingress, Program::TcEgress])?;
            let host_plan = HostPlan {
                underlay,
                network: plan.overlay.network,
                subnet: plan.overlay.subnet,
                overlay_mtu: plan.overlay_mtu,
                announce: matches!(&config.store, StoreConfig::Routes(r) if r.announce),
                host_table: matches!(&config.store, StoreConfig::Routes(_)),
                vxlan_gro_port: plan.receives_vxlan().then_some(plan.overlay.tunnel.vxlan_port),
            };
            // The small maps first: the egress program reads LOCAL_PORTS from its first packet.
            dp.maps_mut().set_agent_state(record)?;
            dp.set_untunnelled_from(&config.untunnelled_from.iter().copied().collect())?;
            if let Err(e) = dp.sync_local_ports(containers.fdb(), monotonic_coarse_ns()) {
                tracing::warn!(error = %e, "cannot fill LOCAL_PORTS yet");
            }
            let attach_egress = |programs: &mut Programs| -> anyhow::Result<()> {
                programs.attach(Program::TcEgress, host::HOST_DEVICE_PEER)?;
                for c in &container_ifaces {
                    host::set_container_mtu(c, plan.overlay_mtu)?;
                    programs.attach(Program::TcEgress, &c.name)?;
                }
                // The ports before detach_stale, so an earlier agent's port attachments are taken over.
                if let Err(e) = programs.sync_port_attachments(containers.ports()) {
                    tracing::warn!(error = %e, "cannot attach to every container port yet");
                }
                Ok(())
            };
            // While the maps fill: the host's devices, routes and settings, and on a first start the
            // egress program too. CONFIG is the sync's first write, and egress hands the kernel what
            // it finds no route for (as the host did without xnet), so it may run on new maps still
            // filling; but where one route lies inside another (a routing daemon's may), it would
            // send the inner one's packets to the outer one's peer until the inner route is written,
            // so then it waits. On a takeover the maps are an earlier agent's, read by its programs
            // throughout: this run's programs replace them once the maps are as wanted. Ingress
            // checks every tunnelled packet's sender against the peers: it is attached last.
            let early = dp.unread() && !wanted.has_nested_routes();
            let (synced, beside) = dp.sync_beside(
                &wanted,
                &plan.datapath_config(containers.gateway_mac().unwrap_or_default(), &wanted),
                &Scope::All,
                record.started_at(),
                |programs| -> anyhow::Result<()> {
                    host::apply(&host_plan)?;
                    if early {
                        attach_egress(programs)?;
                    }
                    Ok(())
                },
            );
            synced?;
            beside?;
            if !early {
                attach_egress(dp.programs_mut())?;
            }
            dp.attach(ingress, &underlay.name)?;
            dp.detach_stale()?;
            Ok((dp, wanted))
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(anyhow::anyhow!("the datapath set-up panicked: {what}"))
        });
    if result.is_err()
        && fresh
        && let Err(e) = datapath::remove_all(pin_dir)
    {
        tracing::warn!(error = %e, "could not remove what this run pinned");
    }
    result
}

/// Where a link lies on the datapath's path, for BIG TCP ([`big_tcp::raise`]): the underlay, the
/// host device pair, the container interfaces, their ports; `None` for other links.
fn path_rank(link: &LinkInfo, underlay: u32, containers: &Containers) -> Option<Rank> {
    let is = |indexes: &std::collections::BTreeMap<String, u32>| indexes.values().any(|i| *i == link.index);
    if link.index == underlay {
        Some(0)
    } else if link.name == host::HOST_DEVICE || link.name == host::HOST_DEVICE_PEER {
        Some(1)
    } else if is(containers.present()) {
        Some(2)
    } else if is(containers.ports()) {
        Some(big_tcp::PORTS)
    } else {
        None
    }
}

/// Logs each peer that asks for `direct` but is not on the underlay's segment, so is sent with the
/// fallback.
fn log_fallbacks(plan: &Plan, peers: &[PeerConfig]) {
    for p in peers {
        let asked = p.backend.unwrap_or(plan.overlay.tunnel.kind);
        if asked != plan.backend_for(p) {
            tracing::info!(
                peer = %p.public_ip,
                fallback = plan.backend_for(p).name(),
                "peer is not on the underlay's segment: direct routing falls back"
            );
        }
    }
}

/// subnet.env (and the Docker options file, if configured) for the container runtime.
fn write_runtime_files(config: &Config, plan: &Plan) -> anyhow::Result<()> {
    let env = SubnetEnv {
        network: plan.overlay.network,
        subnet: plan.overlay.subnet,
        mtu: plan.overlay_mtu,
        ipmasq: false,
    };
    subnet_env::write_atomic(&config.subnet_file, &env.render())?;
    if let Some(path) = &config.docker_opts_file {
        subnet_env::write_atomic(path, &env.render_docker_opts())?;
    }
    Ok(())
}
