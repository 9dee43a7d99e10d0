//! `xnet run` with the etcd store: wait for flannel's network config, lease a subnet, learn the
//! other hosts from their leases, and keep it all current. The datapath never depends on etcd being
//! up: while it is unreachable the last known peers keep forwarding, and the agent retries every
//! endpoint with backoff and reconciles when it is back.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use etcd_client::{WatchOptions, WatchStream};
use xnet_common::maps::{AgentState, IngressHook, Store};

use crate::{
    agent::{
        self, Plan, bring_up, prepare, ready, refresh_bridge_ports, stop, unix_now, write_runtime_files,
    },
    config::{BackendType, Config, PeerConfig},
    datapath::{Datapath, Hook},
    etcd_store::{EtcdSettings, EtcdStore, Held, LeaseList, Me, StoreError},
    flannel::NetworkConfig,
    host::{HostError, Interface},
    subnet::{Ipv4Net, Mac},
};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

fn backoff(previous: Duration) -> Duration {
    (previous * 2).clamp(Duration::from_millis(500), MAX_BACKOFF)
}

/// The subnet this host had, from its subnet file (`XNET_SUBNET=10.244.1.1/24`), if any.
fn remembered_subnet(file: &Path) -> Option<Ipv4Net> {
    let text = std::fs::read_to_string(file).ok()?;
    let value = text.lines().find_map(|l| l.strip_prefix("XNET_SUBNET="))?;
    let (ip, len) = value.split_once('/')?;
    let (ip, len): (Ipv4Addr, u8) = (ip.parse().ok()?, len.parse().ok()?);
    Ipv4Net::new(Ipv4Addr::from(u32::from(ip) & Ipv4Net::mask_of(len)), len)
}

/// The peers that `list` describes, for `config`: every valid lease but this host's own. A lease
/// that claims this host's subnet for another address is reported and skipped.
fn peers_from(list: &LeaseList, mine: &Held) -> (Vec<PeerConfig>, u32) {
    let mut conflicts = 0;
    let mut peers = Vec::new();
    for lease in &list.leases {
        if lease.subnet == mine.lease.subnet {
            if lease.public_ip != mine.lease.public_ip {
                tracing::error!(subnet = %lease.subnet, claimed_by = %lease.public_ip, "a lease claims this host's subnet for another address; ignoring it");
                conflicts += 1;
            }
            continue;
        }
        if lease.public_ip == mine.lease.public_ip {
            continue;
        }
        peers.push(PeerConfig {
            subnet: lease.subnet,
            public_ip: lease.public_ip,
            vtep_mac: lease.vtep_mac.unwrap_or_else(|| Mac::from_ipv4(lease.public_ip)),
            // Send each peer what it says it receives (a flannel host speaks only its backend).
            backend: Some(lease.backend),
        });
    }
    (peers, conflicts)
}

/// Applies the network config to the local config: network, subnet and tunnel settings.
fn apply_network_config(config: &mut Config, net: &NetworkConfig, subnet: Ipv4Net) {
    config.network = net.network;
    config.subnet = subnet;
    let b = &mut config.backend;
    b.kind = net.backend;
    b.vni = net.vni;
    b.gre_key = net.gre_key;
    if let Some(port) = net.port {
        match net.backend {
            BackendType::Udp => b.udp_port = port,
            _ => b.vxlan_port = port,
        }
    }
}

/// Connects and reads the network config, retrying (with backoff, every endpoint) until both work;
/// `None` if a signal asked the agent to stop meanwhile.
async fn wait_for_store(
    settings: &EtcdSettings,
    running: &mut agent::Running,
) -> Option<(EtcdStore, NetworkConfig)> {
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    loop {
        let attempt = async {
            let mut store = EtcdStore::connect(settings.clone()).await?;
            let net = store.network_config().await?;
            Ok::<_, StoreError>((store, net))
        };
        let result = tokio::select! {
            _ = running.term.recv() => return None,
            _ = running.int.recv() => return None,
            r = attempt => r,
        };
        match result {
            Ok(ok) => return Some(ok),
            Err(e) => {
                let message = e.to_string();
                if message != last {
                    tracing::warn!(error = %message, "waiting for etcd; retrying");
                    last = message;
                }
            }
        }
        delay = backoff(delay);
        tokio::select! {
            _ = running.term.recv() => return None,
            _ = running.int.recv() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn watch(store: &mut EtcdStore, revision: i64) -> Result<WatchStream, StoreError> {
    let dir = format!("{}/subnets/", store.settings().prefix);
    let endpoints = store.settings().endpoints.join(",");
    let stream = store
        .client()
        .watch(dir, Some(WatchOptions::new().with_prefix().with_start_revision(revision)))
        .await
        .map_err(|e| StoreError::Etcd { endpoints, error: e.to_string() })?;
    Ok(stream)
}

/// Everything the loop keeps about the store side.
struct Sync {
    net: NetworkConfig,
    held: Held,
    up: bool,
    invalid: u32,
    last_reconcile: u64,
    started: u64,
}

fn record(dp: &mut Datapath, plan: &Plan, sync: &Sync) {
    let state = AgentState {
        pid: std::process::id(),
        overlay_mtu: plan.overlay_mtu,
        started_at: sync.started,
        last_reconcile: sync.last_reconcile,
        store: Store::Etcd as u8,
        store_up: u8::from(sync.up),
        ingress: match plan.ingress {
            Hook::XdpIngress => IngressHook::Xdp as u8,
            _ => IngressHook::Tc as u8,
        },
        backend: plan.config.backend.kind as u8,
        invalid_entries: sync.invalid,
        lease_expiry: unix_now() + sync.held.ttl.max(0) as u64,
    };
    if let Err(e) = dp.set_agent_state(&state) {
        tracing::warn!(error = %e, "cannot record the agent state");
    }
}

/// Lists the leases and makes the datapath match them (adds, changes and removals; nothing else is
/// touched). Returns the revision read at.
async fn reconcile(
    store: &mut EtcdStore,
    dp: &mut Datapath,
    plan: &mut Plan,
    sync: &mut Sync,
) -> Result<i64, StoreError> {
    let mut list = store.leases(&sync.net).await?;
    for bad in &list.invalid {
        tracing::warn!(entry = %bad, "skipping a malformed lease");
    }
    // Our subnet is ours while our etcd lease lives: if its key was deleted or overwritten, put it
    // back (the other hosts route by it), naming what was there.
    let mine = &sync.held.lease;
    if !list.leases.iter().any(|l| l.subnet == mine.subnet && l.public_ip == mine.public_ip) {
        let found = list.leases.iter().find(|l| l.subnet == mine.subnet).map(|l| l.public_ip.to_string());
        tracing::error!(
            subnet = %mine.subnet,
            found = found.as_deref().unwrap_or("nothing"),
            "this host's lease was deleted or overwritten in etcd; restoring it"
        );
        store.restore(&sync.held).await?;
        list = store.leases(&sync.net).await?;
    }
    let (peers, conflicts) = peers_from(&list, &sync.held);
    sync.invalid = list.invalid.len() as u32 + conflicts;
    plan.set_peers(peers);
    let (routes, peers) = plan.routes();
    if let Err(e) = dp.sync_routes(&routes, &peers, plan.route_index(), Store::Etcd, unix_now()) {
        tracing::error!(error = %e, "cannot update the datapath maps");
    }
    sync.up = true;
    sync.last_reconcile = unix_now();
    record(dp, plan, sync);
    Ok(list.revision)
}

/// Runs the agent with the etcd store until SIGINT or SIGTERM.
pub async fn run(
    mut config: Config,
    settings: EtcdSettings,
    config_path: &Path,
    keep_datapath: bool,
) -> anyhow::Result<()> {
    // Local checks first: nothing is leased or attached for a host that cannot run.
    let underlay = Interface::find(&config.iface, "iface")?;
    let public_ip = match config.public_ip {
        Some(ip) => ip,
        None => *underlay.ipv4.first().ok_or_else(|| HostError::NoAddress { name: underlay.name.clone() })?,
    };
    for (i, name) in config.container_ifaces.iter().enumerate() {
        Interface::find(name, &format!("container_ifaces[{i}]"))?;
    }
    crate::host::check_bpffs(&config.pin_dir)?;
    let mut running = prepare(&config, config_path).await?;

    let Some((mut store, net)) = wait_for_store(&settings, &mut running).await else {
        tracing::info!("stopped before etcd answered; nothing was set up");
        return Ok(());
    };
    let me = Me {
        public_ip,
        backend: net.backend,
        vtep_mac: config.vtep_mac.unwrap_or_else(|| Mac::from_ipv4(public_ip)),
        vni: net.vni,
    };
    let hint = remembered_subnet(&config.subnet_file);
    // Leasing and the first listing are retried like the config: etcd may blink, and a full range
    // may free up when stale leases expire.
    let mut delay = Duration::from_millis(250);
    let mut last = String::new();
    let (held, list) = loop {
        let attempt = async {
            let held = store.acquire(&net, &me, hint).await?;
            let list = store.leases(&net).await?;
            Ok::<_, StoreError>((held, list))
        };
        match attempt.await {
            Ok(ok) => break ok,
            Err(e) => {
                let message = e.to_string();
                if message != last {
                    tracing::warn!(error = %message, "cannot lease a subnet yet; retrying");
                    last = message;
                }
            }
        }
        delay = backoff(delay);
        tokio::select! {
            _ = running.term.recv() => return Ok(()),
            _ = running.int.recv() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    };
    tracing::info!(subnet = %held.lease.subnet, lease_id = held.lease_id, ttl = held.ttl, "leased");
    apply_network_config(&mut config, &net, held.lease.subnet);
    let (peers, _) = peers_from(&list, &held);
    config.peers = peers;
    let mut plan = Plan::resolve(config)?;
    write_runtime_files(&plan)?;
    let mut dp = bring_up(&plan, Store::Etcd, unix_now() + held.ttl.max(0) as u64)?;
    let mut sync = Sync { net, held, up: true, invalid: 0, last_reconcile: unix_now(), started: unix_now() };
    let revision = reconcile(&mut store, &mut dp, &mut plan, &mut sync).await?;
    let metrics_task = ready(&plan, &mut running);

    let renew_every = Duration::from_secs((sync.held.ttl.max(3) / 3) as u64).min(Duration::from_secs(3600));
    let mut renew_tick = tokio::time::interval(renew_every);
    renew_tick.tick().await;
    let mut ports_tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_ports_error = None;
    let mut stream = watch(&mut store, revision + 1).await.ok();
    let mut retry_delay = Duration::from_millis(250);
    // Without a watch, re-list and watch again (at once for a first watch that failed).
    let mut retry_at = stream.is_none().then(tokio::time::Instant::now);
    loop {
        let next_message = async {
            match stream.as_mut() {
                Some(s) => s.message().await,
                None => std::future::pending().await,
            }
        };
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = running.term.recv() => { tracing::info!("SIGTERM"); break; }
            _ = running.int.recv() => { tracing::info!("SIGINT"); break; }
            _ = ports_tick.tick() => refresh_bridge_ports(&mut dp, &plan, &mut last_ports_error, true),
            _ = renew_tick.tick() => match store.renew(sync.held.lease_id).await {
                Ok(0) => {
                    // Revoked or expired behind our back: take the same subnet again if it is
                    // free; never move the containers to another one silently.
                    tracing::warn!(subnet = %sync.held.lease.subnet, "our lease is gone; taking the subnet again");
                    let me = Me { public_ip: sync.held.lease.public_ip, backend: sync.net.backend, vtep_mac: plan.vtep_mac, vni: sync.net.vni };
                    match store.acquire(&sync.net, &me, Some(sync.held.lease.subnet)).await {
                        Ok(h) if h.lease.subnet == sync.held.lease.subnet => sync.held = h,
                        Ok(other) => {
                            tracing::error!(subnet = %sync.held.lease.subnet, offered = %other.lease.subnet, "our subnet was taken by another host; keeping it for the running containers, not moving them; restart the agent to pick a new subnet");
                            let _ = store.release(other.lease_id).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot lease the subnet again; retrying"),
                    }
                    record(&mut dp, &plan, &sync);
                }
                Ok(ttl) => { sync.held.ttl = ttl; record(&mut dp, &plan, &sync); }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew the lease; the datapath keeps forwarding, retrying");
                    sync.up = false;
                    record(&mut dp, &plan, &sync);
                }
            },
            message = next_message => match message {
                Ok(Some(resp)) if !resp.canceled() && resp.compact_revision() == 0 => {
                    if !resp.events().is_empty() {
                        match reconcile(&mut store, &mut dp, &mut plan, &mut sync).await {
                            Ok(_) => {}
                            Err(e) => { tracing::warn!(error = %e, "reconcile failed; retrying"); stream = None; retry_at = Some(tokio::time::Instant::now() + retry_delay); }
                        }
                    }
                }
                other => {
                    // Compaction, cancel, end of stream or an error: re-list and watch again.
                    tracing::warn!(reason = ?other.err(), "lost the etcd watch; re-listing");
                    sync.up = false;
                    record(&mut dp, &plan, &sync);
                    stream = None;
                    retry_at = Some(tokio::time::Instant::now() + retry_delay);
                }
            },
            _ = retry => {
                retry_at = None;
                match reconcile(&mut store, &mut dp, &mut plan, &mut sync).await {
                    Ok(r) => {
                        tracing::info!("etcd is back; reconciled");
                        retry_delay = Duration::from_millis(250);
                        // The watch may take a moment longer on a connection that just came back:
                        // retry it soon, without backing off.
                        match watch(&mut store, r + 1).await {
                            Ok(s) => stream = Some(s),
                            Err(e) => {
                                tracing::warn!(error = %e, "reconciled, but the watch is not back yet; retrying");
                                retry_at = Some(tokio::time::Instant::now() + retry_delay);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "etcd still unreachable");
                        sync.up = false;
                        record(&mut dp, &plan, &sync);
                        retry_delay = backoff(retry_delay);
                        retry_at = Some(tokio::time::Instant::now() + retry_delay);
                    }
                }
            }
        }
    }
    stop(dp, &plan, metrics_task, keep_datapath)
}
