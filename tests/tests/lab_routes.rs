//! Lab tests of the routes store: real routing daemons (FRR's zebra + ospfd, BIRD 2 with BGP) in
//! every simulated host and in a router between two underlay segments, real agents that learn
//! their peers from the daemons' kernel routes (no peer listed anywhere), real traffic.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use xnet_lab::lab::{Lab, LabSpec, ROUTER_IPS, RoutesSpec, wait_for};

/// OSPF on a shared segment elects its designated router after the dead interval (4 s here), and
/// the lab's machine is shared: room for that, several times over.
const CONVERGENCE: Duration = Duration::from_secs(60);

/// (subnet, next hop, backend, source) of each route in host `i`'s datapath.
fn routes(lab: &Lab, i: usize) -> Vec<(String, String, String, String)> {
    lab.routes(i)
        .into_iter()
        .map(|r| {
            let source = match &r.protocol {
                Some(p) => format!("{}/{p}", r.source),
                None => r.source.to_string(),
            };
            (r.subnet, r.peer.to_string(), r.backend.to_string(), source)
        })
        .collect()
}

fn has_route(lab: &Lab, i: usize, subnet: &str) -> bool {
    lab.routes(i).iter().any(|r| r.subnet == subnet)
}

/// Host `i`'s kernel route to `subnet`, as `ip route` prints it.
fn kernel_route(lab: &Lab, i: usize, subnet: &str) -> String {
    let out = Command::new("ip")
        .args(["-n", &lab.host(i).ns.name, "route", "show", "exact", subnet])
        .output()
        .expect("ip route");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Every container of host `from` pings the first one of host `to`; panics naming the pair that
/// fails.
fn pings(lab: &Lab, from: usize, to: usize) {
    let target = lab.container((to, 1)).ip;
    for c in 1..=lab.host(from).containers.len() {
        assert!(
            lab.ping((from, c), target),
            "container {c} of host {from} cannot reach {target} on host {to}"
        );
    }
}

fn ospf_spec() -> LabSpec {
    LabSpec {
        hosts: 3,
        containers_per_host: 1,
        backend: "direct",
        routes: Some(RoutesSpec {
            protocols: "[\"ospf\"]",
            behind_router: "fabric",
            routers: true,
            untunnelled_any: true,
        }),
        // Host 5 (it joins last) sits behind the router.
        second_segment: vec![5],
        ..LabSpec::default()
    }
}

/// Three hosts on one segment learn each other from OSPF with no peer listed anywhere, and their
/// containers talk through xnet's direct datapath; a fourth host joins and is reached by all; a
/// host behind the router is reached through the fabric (the router forwards, xnet's maps hold no
/// route for it); a host whose daemon stops leaves every map. Prints the two convergence figures.
#[test]
fn ospf_hosts_learn_each_other_join_leave_and_reach_a_host_behind_the_router() {
    let mut lab = Lab::start(ospf_spec());
    lab.start_router_frr();
    for i in 1..=3 {
        lab.start_frr(i);
    }
    let subnet = |i: usize| format!("10.244.{i}.0/24");
    let took = wait_for(CONVERGENCE, "three hosts learn each other over OSPF", || {
        (1..=3).all(|i| (1..=3).filter(|j| *j != i).all(|j| has_route(&lab, i, &subnet(j))))
    });
    eprintln!("three hosts: every map complete {took:?} after the daemons started");
    for i in 1..=3 {
        for (net, hop, backend, source) in routes(&lab, i) {
            let j: usize = net.split('.').nth(2).unwrap().parse().unwrap();
            assert_eq!(hop, lab.host(j).public_ip.to_string(), "host {i}: {net} leads to its owner");
            assert_eq!((backend.as_str(), source.as_str()), ("direct", "routes/ospf"), "host {i}: {net}");
        }
        let status = lab.xnet(i, &["status", "--pin-dir", lab.host(i).pin_dir.to_str().unwrap()]);
        let status = String::from_utf8_lossy(&status.stdout);
        assert!(status.contains("routes"), "xnet status names the store: {status}");
    }
    // Container traffic crosses the hosts through the datapath: the egress program sends it.
    let (direct_before, _) = lab.counter(1, "egress", "direct");
    pings(&lab, 1, 2);
    pings(&lab, 1, 3);
    pings(&lab, 3, 2);
    let (direct_after, _) = lab.counter(1, "egress", "direct");
    assert!(direct_after >= direct_before + 2, "host 1 sent direct: {direct_before} -> {direct_after}");
    // The daemon's route stays the kernel's (xnet installs none per subnet).
    assert!(
        kernel_route(&lab, 1, &subnet(2)).contains("proto ospf"),
        "{}",
        kernel_route(&lab, 1, &subnet(2))
    );
    // The host's own traffic takes xnet0 all the same (its rule), so it arrives from the host's
    // overlay address, sent by the datapath.
    let (direct_before, _) = lab.counter(1, "egress", "direct");
    let (_, seen_from) = lab.tcp_from_host(1, (2, 1), 100_000);
    assert_eq!(seen_from, std::net::Ipv4Addr::new(10, 244, 1, 0), "host 1 -> container on host 2");
    assert!(lab.counter(1, "egress", "direct").0 > direct_before, "host 1's own traffic went direct");

    // A fourth host joins.
    let four = lab.add_host();
    lab.start_frr(four);
    let daemon_started = Instant::now();
    lab.start_agent(four, &[]);
    let ready = Instant::now();
    wait_for(CONVERGENCE, "every host forwards to the fourth", || {
        (1..=3).all(|i| has_route(&lab, i, &subnet(four)))
    });
    let (after_ready, after_daemon) = (ready.elapsed(), daemon_started.elapsed());
    eprintln!(
        "FIGURE join: every other host forwards to host {four} {after_ready:?} after its agent was ready ({after_daemon:?} after its FRR started)"
    );
    wait_for(CONVERGENCE, "the fourth host learns the others", || {
        (1..=3).all(|j| has_route(&lab, four, &subnet(j)))
    });
    pings(&lab, four, 1);
    pings(&lab, 2, four);
    let text = lab.xnet(1, &["routes", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    eprintln!("xnet routes on host 1:\n{}", String::from_utf8_lossy(&text.stdout));

    // A host behind the router: the kernel's route through the router, no datapath route.
    let five = lab.add_host();
    assert!(lab.on_second_segment(five));
    lab.start_frr(five);
    lab.start_agent(five, &[]);
    wait_for(CONVERGENCE, "host 1 learns host 5's subnet through the router", || {
        kernel_route(&lab, 1, &subnet(five)).contains(&format!("via {} ", ROUTER_IPS[0]))
    });
    wait_for(CONVERGENCE, "host 5 learns host 1's subnet through the router", || {
        kernel_route(&lab, five, &subnet(1)).contains(&format!("via {} ", ROUTER_IPS[1]))
    });
    let (direct_before, _) = lab.counter(1, "egress", "direct");
    let (passed_before, _) = lab.counter(1, "egress", "passed");
    pings(&lab, 1, five);
    pings(&lab, five, 2);
    assert!(
        !has_route(&lab, 1, &subnet(five)),
        "behind the router: left to the fabric: {:?}",
        routes(&lab, 1)
    );
    assert!(!has_route(&lab, five, &subnet(1)), "{:?}", routes(&lab, five));
    assert_eq!(lab.counter(1, "egress", "direct").0, direct_before, "nothing for host 5 went direct");
    assert!(lab.counter(1, "egress", "passed").0 > passed_before, "the kernel routed it");
    assert!(
        lab.ping_from_host(1, lab.container((five, 1)).ip),
        "host 1 reaches host 5's container through the fabric"
    );

    // Host 2's daemon stops: its subnet leaves every other map.
    let stopped = Instant::now();
    lab.stop_frr(2);
    wait_for(CONVERGENCE, "host 2's subnet leaves every map", || {
        [1, 3, four].iter().all(|i| !has_route(&lab, *i, &subnet(2)))
    });
    eprintln!(
        "FIGURE leave: host 2's routes left every map {:?} after its FRR was stopped",
        stopped.elapsed()
    );
    assert!(has_route(&lab, 1, &subnet(3)) && has_route(&lab, 1, &subnet(four)), "the others stay");
    pings(&lab, 1, 3);

    // Host 1's agent stops: its rule and its own table go, the daemon's routes stay.
    let ns = lab.host(1).ns.name.clone();
    let ip = |args: &[&str]| {
        let out = Command::new("ip").args(["-n", &ns]).args(args).output().expect("ip");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let table = xnet::config::HOST_TABLE.to_string();
    assert!(ip(&["rule", "show"]).contains(&format!("{table}:")), "the rule while it runs");
    assert!(ip(&["route", "show", "table", &table]).contains("dev xnet0"), "its table while it runs");
    let status = lab.stop_agent(1);
    assert!(status.success(), "{}", lab.log(1));
    let rules = ip(&["rule", "show"]);
    assert!(!rules.contains(&format!("{table}:")), "the rule removed: {rules}");
    let left = ip(&["route", "show", "table", &table]);
    assert!(left.trim().is_empty(), "table {table} emptied: {left}");
    assert!(kernel_route(&lab, 1, &subnet(3)).contains("proto ospf"), "the daemon's route stays");
}

/// BIRD 2 with iBGP through a route reflector on the router: the hosts install the routes they
/// learn with the BGP next hop as an onlink gateway, so a host behind the router is encapsulated
/// to (`behind_router = "encapsulate"`, direct's fallback: VXLAN) while the host on the same
/// segment is reached directly.
#[test]
fn bgp_routes_from_bird_encapsulate_to_the_host_behind_the_router() {
    let mut lab = Lab::start(LabSpec {
        hosts: 3,
        containers_per_host: 1,
        backend: "direct",
        routes: Some(RoutesSpec {
            protocols: "[\"bird\"]",
            behind_router: "encapsulate",
            routers: false,
            untunnelled_any: false,
        }),
        second_segment: vec![3],
        ..LabSpec::default()
    });
    lab.start_router_bird();
    for i in 1..=3 {
        lab.start_bird(i);
    }
    let wanted = |i: usize, j: usize| {
        let backend = if lab.on_second_segment(i) == lab.on_second_segment(j) { "direct" } else { "vxlan" };
        (
            format!("10.244.{j}.0/24"),
            lab.host(j).public_ip.to_string(),
            backend.to_string(),
            "routes/bird".to_string(),
        )
    };
    let took = wait_for(CONVERGENCE, "the hosts learn each other over BGP", || {
        (1..=3).all(|i| {
            let have = routes(&lab, i);
            (1..=3).filter(|j| *j != i).all(|j| have.contains(&wanted(i, j)))
        })
    });
    eprintln!("BGP: every map complete {took:?} after the daemons started");
    let route = kernel_route(&lab, 1, "10.244.3.0/24");
    assert!(
        route.contains("via 198.18.1.3") && route.contains("onlink"),
        "BIRD installs the originator: {route}"
    );
    let (encap_before, _) = lab.counter(1, "egress", "encap_vxlan");
    let (decap_before, _) = lab.counter(3, "ingress", "decap_vxlan");
    let (direct_before, _) = lab.counter(1, "egress", "direct");
    pings(&lab, 1, 3);
    pings(&lab, 3, 2);
    pings(&lab, 1, 2);
    assert!(lab.counter(1, "egress", "encap_vxlan").0 > encap_before, "host 1 encapsulated to host 3");
    assert!(lab.counter(3, "ingress", "decap_vxlan").0 > decap_before, "host 3 decapsulated");
    assert!(lab.counter(1, "egress", "direct").0 > direct_before, "host 1 reached host 2 directly");
    // Full-size segments fit the tunnel: the MTU left room for the encapsulation from the start.
    let env = std::fs::read_to_string(&lab.host(1).subnet_file).unwrap();
    assert!(env.contains("XNET_MTU=1450"), "{env}");
    lab.tcp_transfer((1, 1), (3, 1), 2_000_000);
    lab.tcp_transfer((3, 1), (2, 1), 2_000_000);
    let text = lab.xnet(1, &["routes", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    eprintln!("xnet routes on host 1:\n{}", String::from_utf8_lossy(&text.stdout));
}
