//! Stores: where the overlay comes from. A store yields what the agent needs to know (the network,
//! this host's subnet and tunnel settings, the peers) and then the changes to them, as
//! [`StoreEvent`]s. Stores never touch the datapath, and the datapath never talks to a store: the
//! agent's loop carries one to the other.
//!
//! - the static file ([`crate::config::StaticOverlay`]): everything is known at once;
//! - etcd in flannel's schema ([`etcd`]): a task that leases a subnet, keeps the lease alive and
//!   turns the other hosts' leases ([`leases`], validated like the file's peers) into events;
//! - a routing daemon's routes in the kernel ([`daemon`]): a task that follows the kernel's
//!   routes and turns the daemon's ([`kernel_routes`]) into events.

pub mod daemon;
pub mod etcd;
pub mod flannel;
pub mod kernel_routes;
pub mod leases;

use std::net::Ipv4Addr;

use tokio::sync::mpsc;
use xnet_common::maps;

use crate::{
    cidr::Ipv4Network,
    config::{PeerConfig, StoreConfig, Tunnel},
    mac::Mac,
    store::{kernel_routes::HostLink, leases::PeerDelta},
};

/// This host as a store describes it to the others (its lease).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub public_ip: Ipv4Addr,
    pub vtep_mac: Mac,
}

/// This host's place in the overlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Overlay {
    pub network: Ipv4Network,
    /// This host's container subnet.
    pub subnet: Ipv4Network,
    pub tunnel: Tunnel,
}

/// What a store tells the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreEvent {
    /// The first event: the overlay and every peer.
    Ready { overlay: Overlay, peers: Vec<PeerConfig>, invalid: u32, lease_expiry: Option<u64> },
    /// Some peers were added, changed or removed; `invalid`: entries skipped now.
    Changed { delta: PeerDelta, invalid: u32 },
    /// Every peer again (the store lost track of changes and listed them anew).
    Resync { peers: Vec<PeerConfig>, invalid: u32 },
    /// The store became reachable or unreachable, or this host's lease was renewed.
    Health { up: bool, lease_expiry: Option<u64> },
    /// This host's lease was lost to another host, or taken again (the same subnet) after it
    /// expired or was lost.
    Lease(LeaseState),
}

/// Whether this host holds its subnet in a leasing store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Held until `expiry` (Unix seconds) unless renewed.
    Held { expiry: u64 },
    /// Expired and taken by `holder` (or by a key that names no host), which this host never
    /// overwrites: it no longer advertises the subnet.
    Lost { holder: Option<Ipv4Addr> },
}

/// A running store.
pub struct Store {
    kind: maps::Store,
    source: Source,
}

enum Source {
    /// The static file: its one event, until taken.
    File(Option<StoreEvent>),
    /// A store task and the events it sends.
    Task { events: mpsc::Receiver<StoreEvent>, task: tokio::task::JoinHandle<()> },
}

impl Store {
    /// Starts the store `config` names, for this host (`me`, on the underlay `link`); `hint`: the
    /// subnet this host had before, which a leasing store offers it again if it is free.
    pub fn start(config: &StoreConfig, me: Identity, link: HostLink, hint: Option<Ipv4Network>) -> Self {
        match config {
            StoreConfig::File(o) => Self {
                kind: maps::Store::File,
                source: Source::File(Some(StoreEvent::Ready {
                    overlay: Overlay { network: o.network, subnet: o.subnet, tunnel: o.tunnel.clone() },
                    peers: o.peers.clone(),
                    invalid: 0,
                    lease_expiry: None,
                })),
            },
            StoreConfig::Etcd(settings) => {
                let (tx, events) = mpsc::channel(1024);
                let task = tokio::spawn(etcd::run(settings.clone(), me, hint, tx));
                Self { kind: maps::Store::Etcd, source: Source::Task { events, task } }
            }
            StoreConfig::Routes(settings) => {
                let (tx, events) = mpsc::channel(1024);
                let task = tokio::spawn(daemon::run(settings.clone(), link, tx));
                Self { kind: maps::Store::Routes, source: Source::Task { events, task } }
            }
        }
    }

    /// Which store this is (as the maps record it).
    pub fn kind(&self) -> maps::Store {
        self.kind
    }

    /// The next event; never returns once the store has nothing more to say. Cancel-safe.
    pub async fn next(&mut self) -> StoreEvent {
        let next = match &mut self.source {
            Source::File(event) => event.take(),
            Source::Task { events, .. } => events.recv().await,
        };
        match next {
            Some(event) => event,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Source::Task { task, .. } = &self.source {
            task.abort();
        }
    }
}
