//! Lab tests: real agents on simulated hosts, real traffic, VXLAN on the wire.

use std::{net::Ipv4Addr, time::Duration};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use xnet_lab::lab::{Capture, Lab, LabSpec, wait_for};

/// Outer VXLAN packets among captured frames: (outer src, outer dst, udp src port, udp dst port,
/// VNI, inner src, inner dst).
fn vxlan_packets(
    frames: &[Vec<u8>],
    port: u16,
) -> Vec<(Ipv4Addr, Ipv4Addr, u16, u16, u32, Ipv4Addr, Ipv4Addr)> {
    let mut out = Vec::new();
    for f in frames {
        let Ok(p) = SlicedPacket::from_ethernet(f) else { continue };
        let (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) = (&p.net, &p.transport) else {
            continue;
        };
        if udp.destination_port() != port {
            continue;
        }
        let payload = udp.payload();
        assert!(payload.len() >= 8 + 14 + 20, "VXLAN packet too short: {} bytes", payload.len());
        assert_eq!(payload[0], 0x08, "VXLAN flags: I bit only");
        let vni = u32::from_be_bytes([0, payload[4], payload[5], payload[6]]);
        let inner = &payload[8 + 14..];
        let inner_src = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
        let inner_dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
        out.push((
            ip.header().source_addr(),
            ip.header().destination_addr(),
            udp.source_port(),
            udp.destination_port(),
            vni,
            inner_src,
            inner_dst,
        ));
    }
    out
}

#[test]
fn three_hosts_ping_and_tcp_both_ways() {
    let lab = Lab::start(LabSpec::default());
    for from in lab.all_containers() {
        for to in lab.all_containers() {
            if from.0 == to.0 {
                continue;
            }
            let ip = lab.container(to).ip;
            assert!(lab.ping(from, ip), "ping {from:?} -> {to:?} ({ip}) failed\nlogs:\n{}", lab.log(from.0));
        }
    }
    for (a, b) in [((1, 1), (2, 1)), ((2, 2), (1, 2)), ((3, 1), (1, 1)), ((1, 2), (3, 2))] {
        lab.tcp_transfer(a, b, 4 << 20);
    }
    for i in 1..=3 {
        let (encap, _) = lab.counter(i, "egress", "encap_vxlan");
        let (decap, _) = lab.counter(i, "ingress", "decap_vxlan");
        assert!(encap > 0 && decap > 0, "host {i}: encap {encap}, decap {decap}");
    }
}

#[test]
fn outer_headers_on_the_underlay_are_vxlan_between_public_ips() {
    let spec = LabSpec { hosts: 2, vni: 4242, port: 4789, ..LabSpec::default() };
    let lab = Lab::start(spec);
    let capture = Capture::start(&lab.switch, &lab.host(2).switch_port);
    let (from, to) = ((1, 1), (2, 2));
    assert!(lab.ping(from, lab.container(to).ip));
    let frames = capture.finish();
    let packets = vxlan_packets(&frames, 4789);
    let (c1, c2) = (lab.container(from).ip, lab.container(to).ip);
    let (h1, h2) = (lab.host(1).public_ip, lab.host(2).public_ip);
    let request = packets.iter().find(|p| p.5 == c1 && p.6 == c2).expect("echo request in VXLAN");
    let reply = packets.iter().find(|p| p.5 == c2 && p.6 == c1).expect("echo reply in VXLAN");
    assert_eq!((request.0, request.1, request.3, request.4), (h1, h2, 4789, 4242), "{request:?}");
    assert_eq!((reply.0, reply.1, reply.3, reply.4), (h2, h1, 4789, 4242), "{reply:?}");
    for p in [request, reply] {
        assert!(p.2 >= 49152, "UDP source port {} from the flow hash range", p.2);
    }
    // Nothing of the overlay crosses the underlay unencapsulated.
    for f in &frames {
        if let Ok(p) = SlicedPacket::from_ethernet(f)
            && let Some(NetSlice::Ipv4(ip)) = &p.net
        {
            let dst = ip.header().destination_addr().octets();
            assert!(
                dst[..2] != [10, 244],
                "overlay packet on the underlay without a tunnel: {:?}",
                ip.header()
            );
        }
    }
}

#[test]
fn same_host_traffic_is_not_encapsulated() {
    let lab = Lab::start(LabSpec { hosts: 2, ..LabSpec::default() });
    let capture = Capture::start(&lab.switch, &lab.host(1).switch_port);
    let (before, _) = lab.counter(1, "egress", "encap_vxlan");
    for _ in 0..3 {
        assert!(lab.ping((1, 1), lab.container((1, 2)).ip));
    }
    lab.tcp_transfer((1, 1), (1, 2), 1 << 20);
    let frames = capture.finish();
    let (after, _) = lab.counter(1, "egress", "encap_vxlan");
    assert_eq!(after, before, "same-host traffic must not be encapsulated");
    assert!(vxlan_packets(&frames, 8472).is_empty(), "no VXLAN on the underlay for same-host traffic");
    // The same pair across hosts does get encapsulated: the counter can move.
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    assert!(lab.counter(1, "egress", "encap_vxlan").0 > after);
}

#[test]
fn xdp_ingress_decapsulates_too() {
    let lab = Lab::start(LabSpec { hosts: 2, ingress: "xdp", ..LabSpec::default() });
    let attached = lab.attached_programs(1);
    assert!(attached.contains(&"eth0/xdp:xnet_xdp_ingres".to_string()), "XDP program attached: {attached:?}");
    assert!(!attached.iter().any(|a| a.contains("xnet_tc_ingress")), "no tc decap beside XDP: {attached:?}");
    // The agent loads only the ingress program its setting picks.
    assert_eq!(lab.agent_programs(1), ["xnet_tc_egress", "xnet_xdp_ingres"], "programs the agent loaded");
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    assert!(lab.ping((2, 2), lab.container((1, 2)).ip));
    lab.tcp_transfer((1, 1), (2, 1), 1 << 20);
    lab.tcp_transfer((2, 1), (1, 1), 1 << 20);
}

#[test]
fn a_normal_stop_leaves_nothing_attached_or_pinned() {
    let mut lab = Lab::start(LabSpec { hosts: 2, ..LabSpec::default() });
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    let pin_dir = lab.host(1).pin_dir.clone();
    assert!(pin_dir.join("REMOTE_SUBNETS").exists());
    let attached = lab.attached_programs(1);
    assert_eq!(
        attached,
        [
            "eth0/tcx-ingress:xnet_tc_ingress",
            "docker0/tcx-ingress:xnet_tc_egress",
            "vc1/tcx-ingress:xnet_tc_egress",
            "vc2/tcx-ingress:xnet_tc_egress",
            "xnet0-tx/tcx-ingress:xnet_tc_egress"
        ],
        "attachments while the agent runs"
    );
    assert_eq!(lab.agent_programs(1), ["xnet_tc_egress", "xnet_tc_ingress"], "programs the agent loaded");
    assert!(gro_device(&lab, 1).contains("dstport 8472"), "the underlay GRO device while the agent runs");
    let status = lab.stop_agent(1);
    assert!(status.success(), "agent exit status {status}\n{}", lab.log(1));
    assert!(!pin_dir.exists(), "pin dir {} left behind", pin_dir.display());
    let links = lab.host(1).ns.command("ip").args(["-o", "link", "show"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("xnet0"), "the host device is removed on stop: {links}");
    let attached = lab.attached_programs(1);
    assert!(attached.is_empty(), "programs still attached after stop: {attached:?}");
    assert!(!lab.ping((1, 1), lab.container((2, 1)).ip), "no datapath, no cross-host traffic");
}

#[test]
fn keep_datapath_survives_the_agent_and_a_new_agent_takes_over() {
    let mut lab = Lab::start(LabSpec { hosts: 2, ..LabSpec::default() });
    lab.stop_agent(1);
    lab.start_agent(1, &["--keep-datapath"]);
    let status = lab.stop_agent(1);
    assert!(status.success(), "{}", lab.log(1));
    assert!(lab.host(1).pin_dir.join("links").exists(), "pins kept");
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "datapath forwards with no agent running");
    assert!(lab.ping_from_host(1, lab.container((2, 1)).ip), "the host's own traffic too");
    let (encap_before, _) = lab.counter(1, "egress", "encap_vxlan");
    lab.start_agent(1, &[]);
    assert!(
        lab.log(1).contains("took_over=true"),
        "the new agent took the pinned links over:\n{}",
        lab.log(1)
    );
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    assert!(lab.counter(1, "egress", "encap_vxlan").0 > encap_before, "counters survive the restart");
    // `xnet cleanup` removes what a kept datapath leaves: pins, attachments, the host device.
    lab.stop_agent(1);
    lab.start_agent(1, &["--keep-datapath"]);
    lab.stop_agent(1);
    let pin_dir = lab.host(1).pin_dir.clone();
    let out = lab.xnet(1, &["cleanup", "--pin-dir", pin_dir.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("removed the host device xnet0"), "{stdout}");
    assert!(!pin_dir.exists(), "pins removed");
    assert!(lab.attached_programs(1).is_empty(), "{:?}", lab.attached_programs(1));
    let links = lab.host(1).ns.command("ip").args(["-o", "link", "show"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&links.stdout).contains("xnet0"), "xnet0 removed");
}

#[test]
fn a_bad_config_is_refused_before_anything_is_attached() {
    let lab = Lab::start(LabSpec { hosts: 2, start_agents: false, ..LabSpec::default() });
    let good = lab.config_text(1);
    let cases = [
        (
            good.replace("iface = \"eth0\"", "iface = \"eth9\""),
            "interface eth9 (`iface` in the config) does not exist",
        ),
        (
            good.replace("subnet = \"10.244.2.0/24\"", "subnet = \"10.244.1.0/25\""),
            "`peer[0].subnet` = \"10.244.1.0/25\" overlaps this host's `subnet`",
        ),
        (
            good.replace("public_ip = \"198.18.0.2\"", "public_ip = \"198.18.0.256\""),
            "`peer[0].public_ip` = \"198.18.0.256\" is not an IPv4 address",
        ),
    ];
    let host = lab.host(1);
    // A metrics port that is already taken: found out before the datapath goes up.
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = host.ns.spawn(move || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        held_tx.send(l.local_addr().unwrap().port()).unwrap();
        release_rx.recv().ok();
    });
    let port = held_rx.recv().unwrap();
    let mut cases = cases.to_vec();
    cases.push((
        good.replace("pin_dir =", &format!("metrics_addr = \"127.0.0.1:{port}\"\npin_dir =")),
        "cannot listen on `metrics_addr`",
    ));
    for (text, expected) in cases {
        assert_ne!(text, good, "case must change the config");
        std::fs::write(&host.config_path, &text).unwrap();
        let out = lab.xnet(1, &["run", "--config", host.config_path.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "exit status for {expected:?}: {stderr}");
        assert!(stderr.contains(expected), "stderr should say {expected:?}: {stderr}");
        assert!(
            stderr.contains(host.config_path.to_str().unwrap()) || expected.starts_with("interface"),
            "names the file: {stderr}"
        );
        assert!(!host.pin_dir.exists(), "nothing pinned after {expected:?}");
        assert!(lab.attached_programs(1).is_empty(), "nothing attached after {expected:?}");
    }
    release_tx.send(()).unwrap();
    holder.join().unwrap();
}

#[test]
fn a_host_without_iproute2_runs_the_agent_and_is_left_clean() {
    // As in a minimal container image: no `ip` on the agent's PATH. It makes the host device, its
    // address, the routes and the underlay GRO device over rtnetlink, and removes them on stop.
    let mut lab = Lab::start(LabSpec { hosts: 2, start_agents: false, ..LabSpec::default() });
    lab.start_agent_with_env(1, &[], &[("PATH", "/nonexistent")]);
    lab.start_agent(2, &[]);
    let remote = lab.container((2, 1)).ip;
    assert!(lab.ping((1, 1), remote), "container to remote container");
    assert!(lab.ping_from_host(1, remote), "host to remote container, through xnet0");
    let ns = lab.host(1).ns.path();
    let ip = |args: &[&str]| {
        let out = xnet_lab::netns::Netns::command_at(&ns, "ip").args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let subnet = xnet::cidr::parse(&lab.host(1).subnet).unwrap();
    let routes = ip(&["route", "show"]);
    let host_address = subnet.network();
    assert!(
        routes.contains(&format!("10.244.0.0/16 dev xnet0 proto static scope link src {host_address}")),
        "the overlay route through the host device: {routes}"
    );
    assert!(routes.contains(&format!("blackhole {subnet} proto static metric 4242")), "{routes}");
    let addresses = ip(&["-o", "-4", "addr", "show", "dev", "xnet0"]);
    assert!(addresses.contains(&format!("inet {host_address}/32")), "{addresses}");
    let device = ip(&["-o", "link", "show", "dev", "xnet0"]);
    assert!(device.contains(",NOARP,UP,LOWER_UP> mtu 1450 "), "arp off, up, the overlay MTU: {device}");
    assert!(gro_device(&lab, 1).contains("vxlan external") && gro_device(&lab, 1).contains("dstport 8472"));
    let status = lab.stop_agent(1);
    assert!(status.success(), "{}", lab.log(1));
    assert!(!ip(&["-o", "link", "show"]).contains("xnet0"), "host and GRO devices removed");
    let routes = ip(&["route", "show"]);
    assert!(!routes.contains("blackhole") && !routes.contains("10.244.0.0/16"), "routes removed: {routes}");
    assert!(lab.attached_programs(1).is_empty(), "nothing left attached");
}

#[test]
fn a_container_interface_that_does_not_exist_is_awaited_with_a_warning() {
    let mut lab = Lab::start(LabSpec { hosts: 2, start_agents: false, ..LabSpec::default() });
    let good = lab.config_text(1);
    let text = good.replace("container_ifaces = [\"docker0\"]", "container_ifaces = [\"docker7\"]");
    assert_ne!(text, good);
    std::fs::write(&lab.host(1).config_path, &text).unwrap();
    lab.start_agent(1, &[]);
    let log = lab.log(1);
    assert!(
        log.contains("container interface does not exist yet") && log.contains("docker7"),
        "a warning that names the interface: {log}"
    );
    let ifaces = |lab: &Lab| -> serde_json::Value {
        let out = lab.xnet(1, &["status", "--json", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["container_ifaces"].clone()
    };
    assert_eq!(ifaces(&lab), serde_json::json!([{"name": "docker7", "state": "awaited", "ifindex": 0}]));
    let text = lab.xnet(1, &["status", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("containers   docker7 (awaited: not there yet)"), "{text}");
    // It attaches when the interface appears.
    lab.host(1).ns.ip(&["link", "add", "docker7", "type", "bridge"]);
    let start = std::time::Instant::now();
    while !lab.attached_programs(1).contains(&"docker7/tcx-ingress:xnet_tc_egress".to_string()) {
        assert!(start.elapsed() < Duration::from_secs(5), "docker7 attached\n{}", lab.log(1));
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("docker7 attached {:?} after it appeared", start.elapsed());
    assert!(lab.log(1).contains("container interface appeared"), "{}", lab.log(1));
    // The agent records the attachment once it is made: the status follows within moments.
    wait_for(Duration::from_secs(5), "the status says docker7 is attached", || {
        ifaces(&lab)[0]["state"] == "attached"
    });
    let status = lab.stop_agent(1);
    assert!(status.success(), "{}", lab.log(1));
}

#[test]
fn maps_pinned_by_another_version_are_named_not_loaded() {
    let lab =
        Lab::start(LabSpec { hosts: 2, containers_per_host: 1, start_agents: false, ..LabSpec::default() });
    let host = lab.host(1);
    // CONFIG as an older xnet pinned it: 40-byte values.
    std::fs::create_dir_all(&host.pin_dir).unwrap();
    let config = host.pin_dir.join("CONFIG");
    xnet_lab::netns::run_ok(std::process::Command::new("bpftool").args([
        "map",
        "create",
        config.to_str().unwrap(),
        "type",
        "array",
        "key",
        "4",
        "value",
        "40",
        "entries",
        "1",
        "name",
        "CONFIG",
    ]));
    let out = lab.xnet(1, &["run", "--config", host.config_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in
        ["map CONFIG pinned at", "40-byte values", "another xnet version", "xnet cleanup --pin-dir"]
    {
        assert!(stderr.contains(expected), "stderr should say {expected:?}: {stderr}");
    }
    assert!(!host.pin_dir.join("PEERS").exists(), "nothing else was pinned");
    assert!(lab.attached_programs(1).is_empty());
}

#[test]
fn an_upgrade_over_the_old_route_maps_is_refused_until_cleanup() {
    let mut lab =
        Lab::start(LabSpec { hosts: 2, containers_per_host: 1, start_agents: false, ..LabSpec::default() });
    let (pin_dir, config_path) = (lab.host(1).pin_dir.clone(), lab.host(1).config_path.clone());
    // The route maps as the xnet before this one pinned them: REMOTE_SUBNETS with 12-byte values
    // (the route alone), and ROUTE_INFO beside it.
    std::fs::create_dir_all(&pin_dir).unwrap();
    let create = |name: &str, kind: &str, key: &str, value: &str| {
        let path = pin_dir.join(name);
        xnet_lab::netns::run_ok(std::process::Command::new("bpftool").args([
            "map",
            "create",
            path.to_str().unwrap(),
            "type",
            kind,
            "key",
            key,
            "value",
            value,
            "entries",
            "65536",
            "name",
            name,
            "flags",
            "1", // BPF_F_NO_PREALLOC: an LPM trie needs it, and the old ROUTE_INFO had it
        ]));
    };
    create("REMOTE_SUBNETS", "lpm_trie", "8", "12");
    create("ROUTE_INFO", "hash", "8", "16");
    let out = lab.xnet(1, &["run", "--config", config_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for expected in [
        "map REMOTE_SUBNETS pinned at",
        "12-byte values",
        "32-byte values",
        "another xnet version",
        "xnet cleanup --pin-dir",
    ] {
        assert!(stderr.contains(expected), "stderr should say {expected:?}: {stderr}");
    }
    assert!(!pin_dir.join("PEERS").exists(), "nothing else was pinned");
    // `xnet cleanup` removes the old maps, ROUTE_INFO included, and the directory with them.
    let out = lab.xnet(1, &["cleanup", "--pin-dir", pin_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!pin_dir.exists(), "pin directory left: {:?}", std::fs::read_dir(&pin_dir));
    // A stale ROUTE_INFO pin alone does not stop a start.
    std::fs::create_dir_all(&pin_dir).unwrap();
    create("ROUTE_INFO", "hash", "8", "16");
    lab.start_agent(1, &[]);
    lab.start_agent(2, &[]);
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "the upgraded agent forwards");
    let routes = lab.xnet(1, &["routes", "--json", "--pin-dir", pin_dir.to_str().unwrap()]);
    let routes: serde_json::Value = serde_json::from_slice(&routes.stdout).unwrap();
    assert_eq!(routes[0]["subnet"], "10.244.2.0/24", "{routes}");
    assert_eq!(routes[0]["source"], "file", "{routes}");
}

#[test]
fn the_route_index_is_used_only_when_every_route_fits_it() {
    let mut lab = Lab::start(LabSpec { hosts: 3, containers_per_host: 1, ..LabSpec::default() });
    assert_eq!(lab.route_index(1), (true, vec![2, 3]), "uniform /24s of 10.244.0.0/16");
    // A peer with a /25: not a subnet of the network's subnet length, so the trie alone routes.
    lab.stop_agent(1);
    let text = lab.config_text(1) + "\n[[peer]]\nsubnet = \"10.244.9.0/25\"\npublic_ip = \"198.18.0.9\"\n";
    std::fs::write(&lab.host(1).config_path, text).unwrap();
    lab.start_agent(1, &[]);
    assert!(!lab.route_index(1).0, "index switched off");
    assert!(lab.ping((1, 1), lab.container((3, 1)).ip), "the trie routes");
    assert!(lab.ping((3, 1), lab.container((1, 1)).ip));
}

/// `Ip: ForwDatagrams` of host `i` (packets its IP stack forwarded).
fn forwarded(lab: &Lab, i: usize) -> u64 {
    let out = lab.host(i).ns.command("cat").arg("/proc/net/snmp").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut ip = text.lines().filter(|l| l.starts_with("Ip:"));
    let (names, values) = (ip.next().unwrap(), ip.next().unwrap());
    let col = names.split_whitespace().position(|n| n == "ForwDatagrams").unwrap();
    values.split_whitespace().nth(col).unwrap().parse().unwrap()
}

#[test]
fn decapsulated_traffic_goes_straight_to_the_container() {
    let lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 1, ..LabSpec::default() });
    // Warm up: the host learns the container's neighbour entry and bridge port; the agent copies the
    // port into LOCAL_PORTS within a second.
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    std::thread::sleep(Duration::from_millis(1500));
    let (fwd0, decap0) = (forwarded(&lab, 2), lab.counter(2, "ingress", "decap_vxlan").0);
    lab.tcp_transfer((1, 1), (2, 1), 8 << 20);
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "TTL and checksum rewritten correctly");
    let (fwd, decap) = (forwarded(&lab, 2) - fwd0, lab.counter(2, "ingress", "decap_vxlan").0 - decap0);
    assert!(decap > 50, "traffic was decapsulated ({decap} packets)");
    assert!(fwd * 10 < decap, "{fwd} of {decap} decapsulated packets went through the host's IP forwarding");
    assert_eq!(lab.counter(2, "ingress", "redirect_failed").0, 0);
}

#[test]
fn a_second_agent_on_the_same_pin_dir_is_refused() {
    let lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 1, ..LabSpec::default() });
    let host = lab.host(1);
    let out = lab.xnet(1, &["run", "--config", host.config_path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("another xnet agent (pid "), "{stderr}");
    assert!(stderr.contains(host.pin_dir.to_str().unwrap()), "{stderr}");
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "the first agent's datapath is untouched");
    assert!(!lab.log(1).contains("took_over=true"), "the refused agent took nothing over");
}

#[test]
fn takeover_survives_a_recreated_container_bridge() {
    let mut lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 1, ..LabSpec::default() });
    lab.stop_agent(1);
    lab.start_agent(1, &["--keep-datapath"]);
    lab.stop_agent(1);
    // What a Docker restart does: docker0 goes away and comes back with the same name.
    let ns = &lab.host(1).ns;
    ns.ip(&["link", "del", "docker0"]);
    ns.ip(&["link", "add", "docker0", "type", "bridge"]);
    ns.ip(&["addr", "add", "10.244.1.1/24", "dev", "docker0"]);
    ns.ip(&["link", "set", "docker0", "up"]);
    ns.ip(&["link", "set", "vc1", "master", "docker0"]);
    lab.start_agent(1, &[]);
    let log = lab.log(1);
    assert!(log.contains("pinned attachment is stale; attaching anew"), "{log}");
    let attached = lab.attached_programs(1);
    assert!(attached.contains(&"docker0/tcx-ingress:xnet_tc_egress".to_string()), "{attached:?}");
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "egress works on the new bridge");
}

#[test]
fn bpftool_prints_every_map_with_named_fields() {
    let mut lab =
        Lab::start(LabSpec { hosts: 2, containers_per_host: 1, start_agents: false, ..LabSpec::default() });
    // Host 1 lets one network in untunnelled, so that UNTUNNELLED_FROM has an entry to print too.
    let config =
        lab.config_text(1).replace("[backend]\n", "[backend]\nuntunnelled_from = [\"192.0.2.0/24\"]\n");
    std::fs::write(&lab.host(1).config_path, config).unwrap();
    lab.write_config(2);
    lab.start_agent(1, &[]);
    lab.start_agent(2, &[]);
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    let dump = |map: &str| -> serde_json::Value {
        let path = lab.host(1).pin_dir.join(map);
        let out = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "bpftool on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let routes = dump("REMOTE_SUBNETS");
    // With -j, bpftool puts the BTF view (the named fields) under "formatted".
    let route = &routes.as_array().unwrap()[0]["formatted"];
    assert_eq!(route["key"]["prefix_len"], 24, "{route}");
    assert_eq!(route["key"]["data"], serde_json::json!([10, 244, 2, 0]), "{route}");
    assert_eq!(route["value"]["route"]["peer_ip"], serde_json::json!([198, 18, 0, 2]), "{route}");
    assert_eq!(route["value"]["route"]["vtep_mac"], serde_json::json!([2, 0, 198, 18, 0, 2]), "{route}");
    // Where the route came from (1: the static file), beside it in the same value.
    assert_eq!(route["value"]["prefix_len"], 24, "{route}");
    assert_eq!(route["value"]["info"]["source"], 1, "{route}");
    assert!(route["value"]["info"]["added_at"].as_u64().unwrap() > 1_700_000_000, "{route}");
    let config = dump("CONFIG");
    assert_eq!(config[0]["formatted"]["value"]["local_ip"], serde_json::json!([198, 18, 0, 1]), "{config}");
    let peers = dump("PEERS");
    assert_eq!(peers[0]["formatted"]["value"]["backend"], 1, "{peers}");
    let stats = dump("STATS");
    let slot = &stats[1]["formatted"]["values"][0]["value"];
    assert!(slot["packets"].is_u64() && slot["bytes"].is_u64(), "{}", stats[1]);
    let agent = dump("AGENT");
    assert_eq!(agent[0]["formatted"]["value"]["overlay_mtu"], 1450, "{agent}");
    // The ping taught the bridge the container's MAC; the agent copies it within a second.
    std::thread::sleep(Duration::from_millis(1500));
    let ports = dump("LOCAL_PORTS");
    assert!(ports[0]["formatted"]["value"]["ifindex"].as_u64().unwrap() > 0, "{ports}");
    let allowed = dump("UNTUNNELLED_FROM");
    assert_eq!(allowed[0]["formatted"]["key"]["prefix_len"], 24, "{allowed}");
    assert_eq!(allowed[0]["formatted"]["key"]["data"], serde_json::json!([192, 0, 2, 0]), "{allowed}");
    // Every map the datapath pins is covered above.
    for map in xnet::datapath::maps::declared() {
        assert!(!dump(&map.name).as_array().unwrap().is_empty(), "{} dumped empty", map.name);
    }
}

#[test]
fn bridge_ports_get_the_egress_program_as_containers_come_and_go() {
    let lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 1, ..LabSpec::default() });
    let ns = &lab.host(1).ns;
    let pin = lab.host(1).pin_dir.join("links/xnet_tc_egress@vc9");
    ns.ip(&["link", "add", "vc9", "type", "veth", "peer", "name", "vc9c"]);
    ns.ip(&["link", "set", "vc9", "master", "docker0"]);
    ns.ip(&["link", "set", "vc9", "up"]);
    let port = "vc9/tcx-ingress:xnet_tc_egress".to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !lab.attached_programs(1).contains(&port) {
        assert!(
            std::time::Instant::now() < deadline,
            "new port not attached: {:?}",
            lab.attached_programs(1)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pin.exists(), "the port's link is pinned, so it survives an agent restart");
    // Traffic from the first container is now encapsulated at its port, before the bridge.
    let (before, _) = lab.counter(1, "egress", "encap_vxlan");
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    assert!(lab.counter(1, "egress", "encap_vxlan").0 > before);
    assert!(lab.attached_programs(1).contains(&"vc1/tcx-ingress:xnet_tc_egress".to_string()));
    ns.ip(&["link", "del", "vc9"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while pin.exists() {
        assert!(std::time::Instant::now() < deadline, "the gone port's pin is left behind");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
}

#[test]
fn delivery_shortcuts_of_a_removed_container_are_forgotten() {
    let lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 1, ..LabSpec::default() });
    let endpoints = || -> Vec<[u8; 4]> {
        let maps = xnet::datapath::maps::Maps::open(&lab.host(1).pin_dir).expect("pinned maps");
        maps.endpoints().into_iter().map(|(ip, _)| ip).collect()
    };
    // Once the agent has learned the container's port (from the bridge, within a second), host 1
    // delivers to it directly and remembers where it is.
    let ip = lab.container((1, 1)).ip.octets();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !endpoints().contains(&ip) {
        assert!(
            std::time::Instant::now() < deadline,
            "host 1 never remembered its container: {:?}",
            endpoints()
        );
        assert!(lab.ping((2, 1), lab.container((1, 1)).ip));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The container goes away (its veth with it).
    lab.host(1).ns.ip(&["link", "del", "vc1"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while endpoints().contains(&ip) {
        assert!(std::time::Instant::now() < deadline, "the removed container's endpoint is still used");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ip -d link show xnet0-gro` on host `i` (empty when there is none).
fn gro_device(lab: &Lab, i: usize) -> String {
    let out = lab.host(i).ns.command("ip").args(["-d", "link", "show", "xnet0-gro"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn a_wire_of_mtu_frames_is_merged_before_decapsulation() {
    let lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 1, ..LabSpec::default() });
    // Frames of the underlay's MTU on the wire, GRO where they arrive, as between real NICs.
    lab.wire_like_nics();
    let device = gro_device(&lab, 2);
    assert!(device.contains("vxlan external") && device.contains("dstport 8472"), "{device}");
    let forwarding =
        lab.host(2).ns.command("sysctl").args(["-n", "net.ipv4.conf.xnet0-gro.forwarding"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&forwarding.stdout).trim(), "0", "the GRO device forwards nothing");
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    let before = lab.counter(2, "ingress", "decap_vxlan");
    lab.tcp_transfer((1, 1), (2, 1), 32 << 20);
    let after = lab.counter(2, "ingress", "decap_vxlan");
    let (packets, bytes) = (after.0 - before.0, after.1 - before.1);
    assert!(packets > 0, "traffic was decapsulated");
    // Without GRO every packet is one frame of at most 1500 bytes; merged, several.
    let mean = bytes / packets;
    assert!(mean > 4000, "{packets} packets of {mean} bytes on average were decapsulated: not merged");
    assert_eq!(lab.counter(2, "ingress", "redirect_failed").0, 0);
}

/// Whether host `i`'s docker0 has learned `mac` (a dynamic forwarding entry).
fn bridge_knows(lab: &Lab, i: usize, mac: &str) -> bool {
    let out = lab.host(i).ns.command("bridge").args(["fdb", "show", "br", "docker0"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with(mac) && !l.contains("permanent"))
}

#[test]
fn a_container_the_bridge_forgot_is_still_delivered_to_directly() {
    let lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 1, ..LabSpec::default() });
    let out = std::process::Command::new("ip")
        .args(["-n", &lab.container((2, 1)).ns.name, "-o", "link", "show", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let mac_text =
        text.split_whitespace().skip_while(|w| *w != "link/ether").nth(1).expect("eth0's MAC").to_string();
    let mac = mac_text.parse::<xnet::mac::Mac>().expect("a MAC").0;
    let local_ports =
        || xnet::datapath::maps::Maps::open(&lab.host(2).pin_dir).unwrap().local_ports().unwrap();
    let to = lab.container((2, 1)).ip;
    wait_for(Duration::from_secs(10), "host 2 delivers to its container", || {
        assert!(lab.ping((1, 1), to));
        let maps = xnet::datapath::maps::Maps::open(&lab.host(2).pin_dir).unwrap();
        maps.endpoints().iter().any(|(ip, _)| *ip == to.octets()) && local_ports().contains_key(&mac)
    });
    // The container's replies to remote ones leave through the egress program, never through the
    // bridge, so the bridge forgets its MAC after its ageing time (300 s): that is, the entry is
    // deleted, as here. The container may send the bridge something meanwhile (an ARP probe) and be
    // learned again; then the deletion is repeated.
    wait_for(Duration::from_secs(30), "LOCAL_PORTS keeps the MAC the bridge forgot", || {
        assert!(lab.ping((1, 1), to));
        if bridge_knows(&lab, 2, &mac_text) {
            lab.host(2)
                .ns
                .command("bridge")
                .args(["fdb", "del", &mac_text, "dev", "vc1", "master"])
                .status()
                .unwrap();
        }
        // A few of the agent's one-second passes later:
        std::thread::sleep(Duration::from_millis(2500));
        let kept = local_ports().contains_key(&mac);
        let forgotten = !bridge_knows(&lab, 2, &mac_text);
        assert!(kept || !forgotten, "LOCAL_PORTS forgot {mac_text} with the bridge: {:?}", local_ports());
        kept && forgotten
    });
    let fwd0 = forwarded(&lab, 2);
    let decap0 = lab.counter(2, "ingress", "decap_vxlan").0;
    lab.tcp_transfer((1, 1), (2, 1), 8 << 20);
    let (fwd, decap) = (forwarded(&lab, 2) - fwd0, lab.counter(2, "ingress", "decap_vxlan").0 - decap0);
    assert!(decap > 50, "traffic was decapsulated ({decap} packets)");
    assert!(fwd * 10 < decap, "{fwd} of {decap} decapsulated packets went through the host's IP forwarding");
}

/// Runs `ping -c 1 -M do -s <size>` (DF set, no fragmenting) from container `from` to `to`;
/// returns whether it was answered, and what ping printed.
fn ping_df(lab: &Lab, from: (usize, usize), to: Ipv4Addr, size: usize) -> (bool, String) {
    let out = lab
        .container(from)
        .ns
        .command("ping")
        .args(["-c", "1", "-W", "2", "-M", "do", "-s", &size.to_string(), &to.to_string()])
        .output()
        .expect("run ping");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn a_container_with_too_big_an_mtu_learns_the_overlay_mtu_from_icmp() {
    let lab = Lab::start(LabSpec { hosts: 2, ..LabSpec::default() });
    // Host 1's containers at the underlay's MTU, as if nobody gave them XNET_MTU: a 1500-byte
    // packet leaves the container whole and meets the egress program.
    lab.set_container_mtu(1, 1500);
    let (from, to) = ((1, 1), (2, 1));
    let dst = lab.container(to).ip;
    let (answered, text) = ping_df(&lab, from, dst, 1472);
    assert!(!answered, "a 1500-byte DF packet cannot cross a 1450 overlay:\n{text}");
    let gateway = lab.host(1).bridge_ip;
    assert!(
        text.contains(&format!("From {gateway}")) && text.contains("Frag needed and DF set (mtu = 1450)"),
        "the sender is told the overlay MTU by the gateway:\n{text}"
    );
    let (answers, _) = lab.counter(1, "egress", "too_big_answered");
    assert_eq!(answers, 1, "one answer counted");
    // The sender's kernel remembers it for that destination: the next one is refused locally.
    let (answered, text) = ping_df(&lab, from, dst, 1472);
    assert!(!answered && text.contains("mtu=1450"), "the path MTU is learned:\n{text}");
    assert_eq!(lab.counter(1, "egress", "too_big_answered").0, 1, "refused before leaving the container");
    // What fits the overlay crosses it.
    let (answered, text) = ping_df(&lab, from, dst, 1422);
    assert!(answered, "a 1450-byte DF ping crosses the overlay:\n{text}");
    assert_eq!(lab.counter(1, "egress", "too_big_rate_limited").0, 0);

    // UDP with DF from a socket (a veth offloads checksums by default, so the packet may reach the
    // egress program with its UDP checksum still to be filled in): the answer built over it is
    // accepted all the same and sets the socket's path MTU.
    let other = lab.container((2, 2)).ip;
    let script = format!(
        "import socket, time\n\
         s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         s.setsockopt(socket.IPPROTO_IP, 10, 2)  # IP_MTU_DISCOVER = IP_PMTUDISC_DO\n\
         s.connect(('{other}', 9))\n\
         s.send(b'x' * 1472)\n\
         time.sleep(0.5)\n\
         print(s.getsockopt(socket.IPPROTO_IP, 14))  # IP_MTU\n"
    );
    let out =
        lab.container(from).ns.command("/usr/bin/python3").args(["-c", &script]).output().expect("python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(text.trim(), "1450", "the UDP socket's path MTU after the answer:\n{text}");
    assert_eq!(lab.counter(1, "egress", "too_big_answered").0, 2, "the UDP packet was answered");
}
