//! Every backend on the lab: connectivity and 10 MB TCP both ways at the default underlay MTU 1500
//! (which proves the overlay MTU is right), the wire format checked by an independent decoder
//! (scapy), interop with the kernel's vxlan as flannel sets it up, and hosts with mixed backends.

use std::{collections::BTreeSet, net::Ipv4Addr};

use serde_json::Value;
use xnet_lab::{
    decoder::scapy_decode,
    lab::{Capture, Lab, LabSpec},
};

const TEN_MB: usize = 10 << 20;

/// Pings from every container to the first container of every other host, and moves 10 MB over
/// TCP both ways between hosts 1 and 2 and between hosts 1 and 3.
fn check_connectivity(lab: &Lab) {
    for from in lab.all_containers() {
        for h in lab.hosts.iter().filter(|h| h.index != from.0) {
            let to = lab.container((h.index, 1)).ip;
            assert!(
                lab.ping(from, to),
                "ping {from:?} -> {to} failed; log of host {}:\n{}",
                from.0,
                lab.log(from.0)
            );
        }
    }
    for (a, b) in [((1, 1), (2, 1)), ((2, 1), (1, 1)), ((1, 2), (3, 1)), ((3, 1), (1, 2))] {
        lab.tcp_transfer(a, b, TEN_MB);
    }
    check_host_traffic(lab);
}

/// The hosts' own traffic: each host reaches every remote container, from its overlay address
/// (the network address of its subnet, on xnet0), not NATed; containers reach every other host's
/// bridge address.
fn check_host_traffic(lab: &Lab) {
    for h in &lab.hosts {
        for other in lab.hosts.iter().filter(|o| o.index != h.index) {
            for c in &other.containers {
                assert!(
                    lab.ping_from_host(h.index, c.ip),
                    "host {} -> container {}\n{}",
                    h.index,
                    c.ip,
                    lab.log(h.index)
                );
            }
            let bridge = other.bridge_ip;
            assert!(
                lab.ping((h.index, 1), bridge),
                "container ({}, 1) -> host {}'s bridge {bridge}",
                h.index,
                other.index
            );
        }
    }
    for (from, to) in [(1, (2, 1)), (2, (3, 1)), (3, (1, 2))] {
        let (_, seen) = lab.tcp_from_host(from, to, TEN_MB);
        let overlay_address = Ipv4Addr::new(10, 244, from as u8, 0);
        assert_eq!(seen, overlay_address, "host {from} -> container {to:?}: the source the container sees");
    }
}

/// The decoded packets between hosts 1 and 2 that carry container traffic.
fn tunnelled(lab: &Lab, decoded: &[Value]) -> Vec<Value> {
    let hosts = [lab.host(1).public_ip.to_string(), lab.host(2).public_ip.to_string()];
    decoded
        .iter()
        .filter(|d| hosts.contains(&d["src"].as_str().unwrap_or("").to_string()))
        .filter(|d| d["inner_dst"].as_str().is_some_and(|i| i.starts_with("10.244.")))
        .cloned()
        .collect()
}

/// Captures host 2's underlay port while container (1,1) pings container (2,1).
fn capture_ping(lab: &Lab) -> Vec<Vec<u8>> {
    let capture = Capture::start(&lab.switch, &lab.host(2).switch_port);
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    capture.finish()
}

fn counter(lab: &Lab, i: usize, direction: &str, outcome: &str) -> u64 {
    lab.counter(i, direction, outcome).0
}

fn mtu(lab: &Lab, i: usize) -> String {
    let env = std::fs::read_to_string(&lab.host(i).subnet_file).unwrap();
    env.lines().find_map(|l| l.strip_prefix("XNET_MTU=")).unwrap().to_string()
}

#[test]
fn vxlan_backend() {
    let lab = Lab::start(LabSpec::default());
    assert_eq!(mtu(&lab, 1), "1450", "1500 - 50");
    check_connectivity(&lab);
    // (VXLAN's headers on the wire are checked field by field in lab_vxlan.rs.)
    assert!(counter(&lab, 1, "egress", "encap_vxlan") > 0 && counter(&lab, 2, "ingress", "decap_vxlan") > 0);
}

#[test]
fn udp_backend_speaks_flannels_framing() {
    let lab = Lab::start(LabSpec { backend: "udp", ..LabSpec::default() });
    assert_eq!(mtu(&lab, 1), "1472", "1500 - 28");
    check_connectivity(&lab);
    let decoded = scapy_decode(&lab.dir, &capture_ping(&lab), 8285);
    let packets = tunnelled(&lab, &decoded);
    assert!(packets.len() >= 2, "request and reply in flannel udp framing: {decoded:?}");
    for p in &packets {
        assert_eq!(
            (p["kind"].as_str(), p["sport"].as_u64(), p["dport"].as_u64()),
            (Some("udp"), Some(8285), Some(8285)),
            "{p}"
        );
        assert_eq!(p["inner_chksum_ok"], true, "inner IPv4 intact: {p}");
        assert_eq!(p["outer_chksum_ok"], true, "{p}");
        assert_eq!(p["inner_len"], p["inner_bytes"], "the whole inner packet is the payload: {p}");
        // The container sent TTL 64; flannel's udp proxy decrements it when it sends.
        assert_eq!(p["inner_ttl"], 63, "{p}");
    }
    assert!(counter(&lab, 1, "egress", "encap_udp") > 0 && counter(&lab, 2, "ingress", "decap_udp") > 0);
}

#[test]
fn gre_backend_with_a_key() {
    let lab = Lab::start(LabSpec { backend: "gre", gre_key: Some(0x0bad_cafe), ..LabSpec::default() });
    assert_eq!(mtu(&lab, 1), "1472", "1500 - 28 with a key");
    check_connectivity(&lab);
    let decoded = scapy_decode(&lab.dir, &capture_ping(&lab), 8285);
    let packets = tunnelled(&lab, &decoded);
    assert!(packets.len() >= 2, "{decoded:?}");
    for p in &packets {
        assert_eq!(
            (p["kind"].as_str(), p["proto"].as_u64(), p["gre_proto"].as_u64()),
            (Some("gre"), Some(47), Some(0x0800)),
            "{p}"
        );
        assert_eq!((p["key_present"].as_bool(), p["key"].as_u64()), (Some(true), Some(0x0bad_cafe)), "{p}");
        assert_eq!(
            (p["chksum_present"].as_bool(), p["seq_present"].as_bool(), p["version"].as_u64()),
            (Some(false), Some(false), Some(0)),
            "{p}"
        );
        assert_eq!(p["inner_chksum_ok"], true, "{p}");
        assert_eq!(p["inner_len"], p["inner_bytes"], "{p}");
    }
    assert!(counter(&lab, 1, "egress", "encap_gre") > 0 && counter(&lab, 2, "ingress", "decap_gre") > 0);
}

#[test]
fn gre_backend_without_a_key() {
    let lab = Lab::start(LabSpec { backend: "gre", ..LabSpec::default() });
    assert_eq!(mtu(&lab, 1), "1476", "1500 - 24");
    check_connectivity(&lab);
    let packets = tunnelled(&lab, &scapy_decode(&lab.dir, &capture_ping(&lab), 8285));
    assert!(packets.len() >= 2);
    for p in &packets {
        assert_eq!((p["gre_proto"].as_u64(), p["key_present"].as_bool()), (Some(0x0800), Some(false)), "{p}");
    }
}

#[test]
fn direct_backend_routes_without_encapsulation() {
    let lab = Lab::start(LabSpec { backend: "direct", ..LabSpec::default() });
    assert_eq!(mtu(&lab, 1), "1500", "no overhead");
    check_connectivity(&lab);
    let frames = capture_ping(&lab);
    let decoded = scapy_decode(&lab.dir, &frames, 8285);
    let plain: Vec<&Value> =
        decoded.iter().filter(|d| d["src"].as_str().is_some_and(|s| s.starts_with("10.244."))).collect();
    assert!(plain.len() >= 2, "container packets cross the underlay as they are: {decoded:?}");
    assert!(decoded.iter().all(|d| d["kind"].is_null()), "nothing tunnelled: {decoded:?}");
    assert!(counter(&lab, 1, "egress", "direct") > 0);
    let routes = lab.xnet(1, &["routes", "--json", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    let routes: Value = serde_json::from_slice(&routes.stdout).unwrap();
    assert!(routes.as_array().unwrap().iter().all(|r| r["backend"] == "direct"), "{routes}");
}

#[test]
fn direct_falls_back_per_peer_when_a_peer_is_off_the_segment() {
    let mut lab = Lab::start(LabSpec { backend: "direct", start_agents: false, ..LabSpec::default() });
    // Hosts 1 and 2 on 198.18.0.0/25, host 3 on 198.18.0.128/25: one wire, two subnets joined by
    // device routes, so host 3 is reachable but not on-link for the others.
    let addrs = ["198.18.0.1", "198.18.0.2", "198.18.0.130"];
    for (i, addr) in addrs.iter().enumerate() {
        let h = &lab.hosts[i];
        h.ns.ip(&["addr", "flush", "dev", "eth0"]);
        h.ns.ip(&["addr", "add", &format!("{addr}/25"), "dev", "eth0"]);
        let other = if i < 2 { "198.18.0.128/25" } else { "198.18.0.0/25" };
        h.ns.ip(&["route", "add", other, "dev", "eth0"]);
    }
    lab.hosts[2].public_ip = addrs[2].parse().unwrap();
    for i in 1..=3 {
        lab.write_config(i);
    }
    for i in 1..=3 {
        lab.start_agent(i, &[]);
    }
    let routes = lab.xnet(1, &["routes", "--json", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    let routes: Value = serde_json::from_slice(&routes.stdout).unwrap();
    let used: Vec<(&str, &str)> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["peer"].as_str().unwrap(), r["backend"].as_str().unwrap()))
        .collect();
    assert_eq!(used, [("198.18.0.2", "direct"), ("198.18.0.130", "vxlan")], "{routes}");
    assert_eq!(mtu(&lab, 1), "1450", "the fallback's overhead counts");
    check_connectivity(&lab);
    assert!(counter(&lab, 1, "egress", "direct") > 0 && counter(&lab, 1, "egress", "encap_vxlan") > 0);
}

#[test]
fn interoperates_with_the_kernels_vxlan_as_flannel_sets_it_up() {
    for (port, vni) in [(8472, 1), (4789, 4242)] {
        let mut lab = Lab::start(LabSpec {
            hosts: 2,
            containers_per_host: 1,
            start_agents: false,
            port,
            vni,
            ..LabSpec::default()
        });
        // Host 2 has no xnet: flannel.1 as flannel's vxlan backend makes it. Host 1 runs xnet.
        lab.setup_kernel_vxlan_on(2, vni, port);
        lab.start_agent(1, &[]);
        let (a, b) = ((1, 1), (2, 1));
        assert!(lab.ping(a, lab.container(b).ip), "xnet -> kernel vxlan (port {port}, vni {vni})");
        assert!(lab.ping(b, lab.container(a).ip), "kernel vxlan -> xnet (port {port}, vni {vni})");
        lab.tcp_transfer(a, b, TEN_MB);
        lab.tcp_transfer(b, a, TEN_MB);
        assert!(
            counter(&lab, 1, "egress", "encap_vxlan") > 0 && counter(&lab, 1, "ingress", "decap_vxlan") > 0
        );
    }
}

#[test]
fn hosts_with_different_backends_all_talk() {
    let lab = Lab::start(LabSpec { host_backends: vec!["gre", "udp", "vxlan"], ..LabSpec::default() });
    check_connectivity(&lab);
    // Each host sent with its own backend, and decapsulated what the others sent.
    let sent: BTreeSet<(usize, &str)> = [(1, "encap_gre"), (2, "encap_udp"), (3, "encap_vxlan")].into();
    for (i, outcome) in &sent {
        assert!(counter(&lab, *i, "egress", outcome) > 0, "host {i} {outcome}");
    }
    assert!(counter(&lab, 1, "ingress", "decap_udp") > 0 && counter(&lab, 1, "ingress", "decap_vxlan") > 0);
    assert!(counter(&lab, 2, "ingress", "decap_gre") > 0 && counter(&lab, 3, "ingress", "decap_gre") > 0);
}

/// The sizes of host `i`'s links on the path, and of its first container's `eth0`: the underlay,
/// the host device, the bridge, the first container's port and the container's end.
fn path_sizes(lab: &Lab, i: usize) -> Vec<(String, u32, u32)> {
    let h = lab.host(i);
    let mut sizes: Vec<(String, u32, u32)> = ["eth0", "xnet0", "xnet0-tx", "docker0", "vc1"]
        .into_iter()
        .filter(|l| !l.starts_with("xnet0") || lab.is_running(i))
        .map(|l| {
            let (gso, gro) = Lab::ipv4_gso_gro(&h.ns, l);
            (format!("host {i} {l}"), gso, gro)
        })
        .collect();
    let (gso, gro) = Lab::ipv4_gso_gro(&lab.container((i, 1)).ns, "eth0");
    sizes.push((format!("container ({i}, 1) eth0"), gso, gro));
    sizes
}

/// What iperf3 sends from container (1, 1) to (2, 1) in 2 s: packets and bytes counted by host
/// 1's egress program (the inner frames) and by host 2's ingress program (the outer ones).
fn iperf3_packets(lab: &Lab, backend: &str) -> ((u64, u64), (u64, u64)) {
    let encap = |lab: &Lab| lab.counter(1, "egress", &format!("encap_{backend}"));
    let decap = |lab: &Lab| lab.counter(2, "ingress", &format!("decap_{backend}"));
    let (encap0, decap0) = (encap(lab), decap(lab));
    lab.iperf3((1, 1), (2, 1), 2, 1);
    let (encap1, decap1) = (encap(lab), decap(lab));
    ((encap1.0 - encap0.0, encap1.1 - encap0.1), (decap1.0 - decap0.0, decap1.1 - decap0.1))
}

/// BIG TCP: the agent raises every link of its path (the underlay, the host device pair, the
/// bridge, the containers' ports and, in their namespaces, the containers' ends) to the underlay
/// driver's limit (a veth's: the kernel's largest GSO packet, 524,280 bytes), so TCP hands the tunnels IPv4 packets above 64 KB, whose lengths do not fit the outer
/// headers' 16-bit fields. The tunnels must carry them whole, across a router (host 2 is behind
/// one, whose `ip_rcv` reads the outer length) and a bridge: a length field clamped to 65535
/// would have the packet cut there. A normal stop puts the sizes back.
#[test]
fn big_tcp_packets_cross_every_tunnel_whole() {
    const BIG: u32 = xnet::config::MAX_GSO_BYTES;
    for (backend, overhead) in [("vxlan", 50), ("udp", 28), ("gre", 24)] {
        let mut lab = Lab::start(LabSpec {
            hosts: 2,
            containers_per_host: 1,
            backend,
            second_segment: vec![2],
            ..LabSpec::default()
        });
        for i in 1..=2 {
            for (link, gso, gro) in path_sizes(&lab, i) {
                assert_eq!((gso, gro), (BIG, BIG), "{backend}: {link} not raised; log:\n{}", lab.log(i));
            }
        }
        assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "{backend}: ping");
        // The bytes arrive intact; then iperf3's 128 KB writes make most packets BIG ones, counted
        // over its run alone.
        lab.tcp_transfer((1, 1), (2, 1), 16 << 20);
        let ((sent, sent_bytes), (got, got_bytes)) = iperf3_packets(&lab, backend);
        assert!(sent > 0 && got > 0, "{backend}: {sent} packets encapsulated, {got} decapsulated");
        // Counted before encapsulation (the inner frame) and before decapsulation (the outer one).
        assert!(
            sent_bytes / sent > 65_535,
            "{backend}: BIG TCP did not take effect: {sent} packets of {sent_bytes} bytes encapsulated"
        );
        let cut_limit = 65_535 + 14;
        assert!(
            got_bytes / got > cut_limit,
            "{backend}: {got} packets of {got_bytes} bytes decapsulated on host 2 against {sent} of \
             {sent_bytes} sent ({overhead} bytes of outer headers each): cut to 16-bit lengths on the way"
        );
        if backend == "vxlan" {
            assert!(lab.stop_agent(1).success(), "agent 1 stops cleanly:\n{}", lab.log(1));
            for (link, gso, gro) in path_sizes(&lab, 1) {
                assert_eq!((gso, gro), (65_536, 65_536), "{link} not put back on stop:\n{}", lab.log(1));
            }
            // A kept datapath keeps them raised; `xnet cleanup` puts them back from the record.
            lab.start_agent(1, &["--keep-datapath"]);
            assert!(lab.stop_agent(1).success(), "agent 1 stops cleanly:\n{}", lab.log(1));
            let raised = Lab::ipv4_gso_gro(&lab.container((1, 1)).ns, "eth0");
            assert_eq!(raised, (BIG, BIG), "--keep-datapath keeps the sizes:\n{}", lab.log(1));
            let h = lab.host(1);
            let (pins, subnet_file) = (h.pin_dir.to_str().unwrap(), h.subnet_file.to_str().unwrap());
            let out = lab.xnet(1, &["cleanup", "--pin-dir", pins, "--subnet-file", subnet_file]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success() && stdout.contains("put back the GSO and GRO sizes"), "{stdout}");
            for (link, gso, gro) in path_sizes(&lab, 1) {
                assert_eq!((gso, gro), (65_536, 65_536), "{link} not put back by xnet cleanup: {stdout}");
            }
            let record = format!("{subnet_file}.big_tcp");
            assert!(!std::path::Path::new(&record).exists(), "xnet cleanup removes {record}");
            // A crash leaves them raised, with the record of what they were; the next agent takes
            // that over and puts them back when it stops.
            lab.kill_agent(2);
            assert_eq!(
                Lab::ipv4_gso_gro(&lab.container((2, 1)).ns, "eth0"),
                (BIG, BIG),
                "a crash restores nothing"
            );
            lab.start_agent(2, &[]);
            assert!(lab.stop_agent(2).success(), "agent 2 stops cleanly:\n{}", lab.log(2));
            for (link, gso, gro) in path_sizes(&lab, 2) {
                assert_eq!(
                    (gso, gro),
                    (65_536, 65_536),
                    "{link} not put back after a takeover:\n{}",
                    lab.log(2)
                );
            }
        }
    }
}

/// `big_tcp = "off"`: the agent leaves every link as it found it, and TCP keeps to 64 KB packets.
#[test]
fn big_tcp_off_leaves_the_links_as_they_are() {
    let mut lab =
        Lab::start(LabSpec { hosts: 2, containers_per_host: 1, start_agents: false, ..LabSpec::default() });
    for i in 1..=2 {
        let h = lab.host(i);
        std::fs::write(&h.config_path, format!("big_tcp = \"off\"\n{}", lab.config_text(i))).expect("config");
        lab.start_agent(i, &[]);
        assert!(lab.log(i).contains("BIG TCP off"), "host {i} says BIG TCP is off:\n{}", lab.log(i));
    }
    for i in 1..=2 {
        for (link, gso, gro) in path_sizes(&lab, i) {
            assert_eq!((gso, gro), (65_536, 65_536), "{link} changed with big_tcp = \"off\"");
        }
    }
    lab.tcp_transfer((1, 1), (2, 1), 4 << 20);
    let ((sent, sent_bytes), _) = iperf3_packets(&lab, "vxlan");
    assert!(sent > 0, "iperf3's packets were encapsulated");
    assert!(sent_bytes / sent <= 65_535, "{sent} packets of {sent_bytes} bytes with BIG TCP off");
}

/// A BIG TCP size the underlay's driver cannot take is refused before anything is attached, with
/// the interface and its limit named. (A bridge without ports takes TSO packets of 64 KB at most.)
#[test]
fn a_big_tcp_size_the_underlay_cannot_take_is_refused() {
    let lab = Lab::start(LabSpec { hosts: 2, start_agents: false, ..LabSpec::default() });
    let host = lab.host(1);
    host.ns.ip(&["link", "add", "under0", "type", "bridge"]);
    host.ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "under0"]);
    host.ns.ip(&["link", "set", "under0", "up"]);
    let good = lab.config_text(1);
    let text = format!("big_tcp = 196608\n{}", good.replace("iface = \"eth0\"", "iface = \"under0\""));
    assert!(text.contains("iface = \"under0\""), "{text}");
    std::fs::write(&host.config_path, text).unwrap();
    let out = lab.run_agent_to_end(1, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "`big_tcp` = 196608 cannot be had: the driver of interface under0 (`iface`) takes TSO packets of at most 65536 bytes; set big_tcp = \"auto\" or \"off\""
        ),
        "names the key, the interface and its limit: {stderr}"
    );
    assert!(!host.pin_dir.exists(), "nothing pinned: {stderr}");
    assert!(lab.attached_programs(1).is_empty(), "nothing attached");
    assert_eq!(Lab::ipv4_gso_gro(&lab.container((1, 1)).ns, "eth0"), (65_536, 65_536), "nothing raised");
}
