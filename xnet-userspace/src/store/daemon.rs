//! The routes store: a task that learns the peers from the routes a routing daemon (FRR, BIRD)
//! installs in the kernel. It subscribes to the kernel's IPv4 route notifications, dumps the
//! routes, and then turns every change into [`StoreEvent`]s through a [`RouteTable`]. Lost
//! notifications (the event queue overflowed) are answered with a fresh dump and a
//! [`StoreEvent::Resync`]; a failed socket with a new connection.
//!
//! The network, this host's subnet and the tunnel come from the config: the daemon carries the
//! subnets, not who may use which. This host's subnet is announced by the agent (see
//! [`crate::host::HostPlan::announce`]), for the daemon to export.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::{
    config::RoutesSettings,
    netlink::{HostEvent, Netlink},
    store::{
        Overlay, StoreEvent,
        kernel_routes::{HostLink, RouteTable, delta},
    },
};

/// How long the task waits for more notifications before it reports a change: a daemon installs
/// and withdraws routes in bursts, and one event per burst is one map sync.
const QUIET: Duration = Duration::from_millis(5);
/// At most this many notifications make one change.
const BURST: usize = 1024;
/// How long after a failed connection or dump the task tries again.
const RETRY: Duration = Duration::from_secs(1);

/// Runs the routes store until the receiver is dropped.
pub async fn run(settings: RoutesSettings, host: HostLink, tx: mpsc::Sender<StoreEvent>) {
    let overlay =
        Overlay { network: settings.network, subnet: settings.subnet, tunnel: settings.tunnel.clone() };
    let mut table = RouteTable::new(settings, host);
    let mut ready = false;
    let mut last_error = None;
    loop {
        // Subscribe first, dump second: a change between the two is seen twice, never missed.
        let connected = match Netlink::connect_routes().await {
            Ok((netlink, events)) => netlink.routes().await.map(|routes| (netlink, events, routes)),
            Err(e) => Err(e),
        };
        let (netlink, mut events, routes) = match connected {
            Ok(c) => c,
            Err(e) => {
                let e = e.to_string();
                if last_error.as_ref() != Some(&e) {
                    tracing::error!(error = %e, "cannot read the kernel's routes; retrying");
                    last_error = Some(e);
                }
                if ready && tx.send(StoreEvent::Health { up: false, lease_expiry: None }).await.is_err() {
                    return;
                }
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        last_error = None;
        table.reload(&routes);
        let peers: Vec<_> = table.peers().into_values().collect();
        let invalid = table.invalid();
        let event = if ready {
            StoreEvent::Resync { peers, invalid }
        } else {
            tracing::info!(
                peers = peers.len(),
                skipped = invalid,
                behind_router = table.fabric(),
                "routes store: the kernel's routes read"
            );
            StoreEvent::Ready { overlay: overlay.clone(), peers, invalid, lease_expiry: None }
        };
        ready = true;
        if tx.send(event).await.is_err() {
            return;
        }
        if !follow(&netlink, &mut events, &mut table, &tx).await {
            return;
        }
    }
}

/// Turns notifications into events until the event socket fails (then `true`: reconnect) or the
/// receiver is gone (`false`).
async fn follow(
    netlink: &Netlink,
    events: &mut crate::netlink::HostEvents,
    table: &mut RouteTable,
    tx: &mpsc::Sender<StoreEvent>,
) -> bool {
    loop {
        let Some(first) = events.next().await else {
            tracing::error!("the kernel's route notifications stopped; reconnecting");
            return tx.send(StoreEvent::Health { up: false, lease_expiry: None }).await.is_ok();
        };
        let before = table.peers();
        let invalid_before = table.invalid();
        let mut resync = false;
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(event) = next.take() {
            match event {
                HostEvent::Route { route, present } => table.apply(&route, present),
                HostEvent::Resync => resync = true,
                _ => {}
            }
            taken += 1;
            if taken < BURST
                && let Ok(Some(more)) = tokio::time::timeout(QUIET, events.next()).await
            {
                next = Some(more);
            }
        }
        if resync {
            match netlink.routes().await {
                Ok(routes) => {
                    table.reload(&routes);
                    let peers = table.peers().into_values().collect();
                    if tx.send(StoreEvent::Resync { peers, invalid: table.invalid() }).await.is_err() {
                        return false;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot dump the kernel's routes after lost notifications; reconnecting");
                    return tx.send(StoreEvent::Health { up: false, lease_expiry: None }).await.is_ok();
                }
            }
            continue;
        }
        let d = delta(&before, &table.peers());
        if (!d.is_empty() || table.invalid() != invalid_before)
            && tx.send(StoreEvent::Changed { delta: d, invalid: table.invalid() }).await.is_err()
        {
            return false;
        }
    }
}
