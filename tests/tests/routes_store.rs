//! The routes store's task against a real kernel, in a throwaway network namespace (needs root):
//! routes installed with `ip route` as a routing daemon would install them become the events the
//! agent applies.

use std::{fs::File, io, os::fd::AsRawFd, process::Command, time::Duration};

use tokio::sync::mpsc;
use xnet::{
    cidr,
    config::{BehindRouter, RoutesSettings, Tunnel},
    host::Interface,
    store::{StoreEvent, daemon, kernel_routes::HostLink},
};

/// A network namespace of this test process, deleted on drop (also when the test panics).
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("xnet-rstest-{}-{tag}", std::process::id());
        let out = Command::new("ip").args(["netns", "add", &name]).output().expect("cannot run `ip`");
        assert!(out.status.success(), "ip netns add {name}: {}", String::from_utf8_lossy(&out.stderr));
        Netns { name }
    }

    fn ip(&self, args: &[&str]) {
        ip_in(&self.name, args);
    }
}

/// Runs `ip -n NETNS args...`, and fails the test if it fails.
fn ip_in(netns: &str, args: &[&str]) {
    let out = Command::new("ip").arg("-n").arg(netns).args(args).output().expect("cannot run `ip`");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// The next event within 5 s.
async fn next(events: &mut mpsc::Receiver<StoreEvent>) -> StoreEvent {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("a store event within 5 s")
        .expect("the store task runs")
}

/// (subnet, next hop, protocol) of peers.
fn hops(peers: &[xnet::config::PeerConfig]) -> Vec<(String, String, Option<u8>)> {
    peers.iter().map(|p| (p.subnet.to_string(), p.public_ip.to_string(), p.protocol)).collect()
}

#[test]
fn kernel_routes_of_the_daemon_become_store_events() {
    let ns = Netns::new("a");
    ns.ip(&["link", "set", "lo", "up"]);
    ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1"]);
    ns.ip(&["addr", "add", "198.18.0.1/24", "dev", "eth0"]);
    ns.ip(&["link", "set", "eth0", "up"]);
    ns.ip(&["link", "set", "eth1", "up"]);
    // Before the store starts: one peer, one route for this host's own subnet (refused), one
    // outside the network and one of another protocol (neither is the overlay's).
    ns.ip(&["route", "add", "10.244.2.0/24", "via", "198.18.0.2", "proto", "ospf", "metric", "20"]);
    ns.ip(&["route", "add", "10.244.1.0/24", "via", "198.18.0.2", "proto", "ospf", "metric", "20"]);
    ns.ip(&["route", "add", "198.18.5.0/24", "via", "198.18.0.254", "proto", "ospf"]);
    ns.ip(&["route", "add", "10.244.6.0/24", "via", "198.18.0.6", "proto", "static"]);

    let path = format!("/run/netns/{}", ns.name);
    let name = ns.name.clone();
    let thread = std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        // SAFETY: a valid namespace fd; this only moves the calling thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", io::Error::last_os_error());
        let ip = |args: &[&str]| ip_in(&name, args);
        let eth0 = Interface::find("eth0", "iface").expect("eth0");
        let settings = RoutesSettings {
            network: cidr::parse("10.244.0.0/16").unwrap(),
            subnet: cidr::parse("10.244.1.0/24").unwrap(),
            tunnel: Tunnel::default(),
            protocols: vec![188],
            table: 254,
            behind_router: BehindRouter::Fabric,
            routers: Vec::new(),
            announce: true,
        };
        let link = HostLink {
            underlay_index: eth0.index,
            underlay_nets: eth0.ipv4_nets.clone(),
            public_ip: "198.18.0.1".parse().unwrap(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let (tx, mut events) = mpsc::channel(16);
            let task = tokio::spawn(daemon::run(settings, link, tx));
            let StoreEvent::Ready { overlay, peers, invalid, lease_expiry } = next(&mut events).await else {
                panic!("the first event is Ready")
            };
            assert_eq!(overlay.subnet.to_string(), "10.244.1.0/24");
            assert_eq!(hops(&peers), [("10.244.2.0/24".into(), "198.18.0.2".into(), Some(188))]);
            assert_eq!((invalid, lease_expiry), (1, None), "this host's own subnet is counted");

            // Learned, moved, withdrawn: each a change, the route moved in place.
            ip(&["route", "add", "10.244.3.0/24", "via", "198.18.0.3", "proto", "ospf", "metric", "20"]);
            let StoreEvent::Changed { delta, invalid } = next(&mut events).await else { panic!("a change") };
            assert_eq!(
                (hops(&delta.set), delta.removed.len(), invalid),
                (vec![("10.244.3.0/24".into(), "198.18.0.3".into(), Some(188))], 0, 1)
            );
            ip(&["route", "replace", "10.244.2.0/24", "via", "198.18.0.9", "proto", "ospf", "metric", "20"]);
            let StoreEvent::Changed { delta, .. } = next(&mut events).await else { panic!("a change") };
            assert_eq!(
                (hops(&delta.set), delta.removed.len()),
                (vec![("10.244.2.0/24".into(), "198.18.0.9".into(), Some(188))], 0)
            );
            // A route of another protocol says nothing; the withdrawal that follows is the next event.
            ip(&["route", "add", "10.244.7.0/24", "via", "198.18.0.7", "proto", "static"]);
            ip(&["route", "del", "10.244.3.0/24", "proto", "ospf"]);
            let StoreEvent::Changed { delta, .. } = next(&mut events).await else { panic!("a change") };
            assert_eq!((delta.set.len(), delta.removed), (0, vec![cidr::parse("10.244.3.0/24").unwrap()]));
            // The refused route withdrawn: no peer changes, one fewer skipped.
            ip(&["route", "del", "10.244.1.0/24", "proto", "ospf"]);
            let StoreEvent::Changed { delta, invalid } = next(&mut events).await else { panic!("a change") };
            assert_eq!((delta.is_empty(), invalid), (true, 0));
            task.abort();
        });
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}
