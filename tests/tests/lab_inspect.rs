//! Seeing inside: counters, routes, status and metrics agree with the traffic, with and without a
//! running agent; Prometheus output passes promtool; systemd readiness and the subnet file.

use std::{
    io::Write as _,
    os::unix::net::UnixDatagram,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;
use xnet_lab::lab::{Lab, LabSpec, METRICS_ADDR, xnet_bin};

fn json(lab: &Lab, i: usize, args: &[&str]) -> Value {
    let pin = lab.host(i).pin_dir.to_str().unwrap().to_string();
    let mut full: Vec<&str> = args.to_vec();
    full.extend(["--json", "--pin-dir", &pin]);
    let out = lab.xnet(i, &full);
    assert!(out.status.success(), "xnet {full:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("xnet {full:?} JSON: {e}"))
}

/// (packets, bytes) of one counter in `xnet stats --json --all` output.
fn counter(stats: &Value, direction: &str, outcome: &str) -> (u64, u64) {
    let row = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["direction"] == direction && r["outcome"] == outcome)
        .unwrap_or_else(|| panic!("no {direction}/{outcome} in {stats}"));
    (row["packets"].as_u64().unwrap(), row["bytes"].as_u64().unwrap())
}

/// The value of one sample line in Prometheus text.
fn sample(metrics: &str, name_and_labels: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name_and_labels} in:\n{metrics}"))
}

#[test]
fn counters_metrics_routes_and_status_agree_with_the_traffic() {
    let mut lab =
        Lab::start(LabSpec { hosts: 3, containers_per_host: 1, metrics: true, ..LabSpec::default() });
    let (c1, c2) = ((1, 1), (2, 1));
    assert!(lab.ping(c1, lab.container(c2).ip), "warm-up (ARP, neighbours)");
    let before = json(&lab, 1, &["stats", "--all"]);
    // 20 echo requests of 56 payload bytes: 98-byte frames out, encapsulated replies (148 bytes) in.
    let out = lab
        .container(c1)
        .ns
        .command("ping")
        .args(["-c", "20", "-i", "0.01", "-q", &lab.container(c2).ip.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let after = json(&lab, 1, &["stats", "--all"]);
    let delta = |d, o| {
        let (p1, b1) = counter(&after, d, o);
        let (p0, b0) = counter(&before, d, o);
        (p1 - p0, b1 - b0)
    };
    assert_eq!(delta("egress", "encap_vxlan"), (20, 20 * 98), "echo requests encapsulated");
    assert_eq!(delta("ingress", "decap_vxlan"), (20, 20 * 148), "echo replies decapsulated");
    assert_eq!(delta("ingress", "unknown_peer"), (0, 0));

    // /metrics says the same as the CLI, and passes promtool.
    let metrics = lab.http_get(1, METRICS_ADDR, "/metrics");
    for (d, o) in [("egress", "encap_vxlan"), ("ingress", "decap_vxlan")] {
        let labels = format!("{{direction=\"{d}\",outcome=\"{o}\",code=");
        let line =
            metrics.lines().find(|l| l.starts_with("xnet_packets_total") && l.contains(&labels)).unwrap();
        let value: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert_eq!(value, counter(&after, d, o).0, "metrics and stats --json disagree on {d}/{o}");
    }
    assert_eq!(sample(&metrics, "xnet_peers"), 2);
    assert_eq!(sample(&metrics, "xnet_store_up{store=\"file\"}"), 1);
    assert_eq!(sample(&metrics, "xnet_map_capacity_entries{map=\"PEERS\"}"), 65_536);
    let peers_memory = sample(&metrics, "xnet_map_memory_bytes{map=\"PEERS\"}");
    assert!(
        (1 << 20..2 << 20).contains(&peers_memory),
        "PEERS: the bucket array and 2 entries: {peers_memory}"
    );
    println!("{}", metrics.lines().filter(|l| l.starts_with("xnet_map_")).collect::<Vec<_>>().join("\n"));
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (cargo xtask test installs Debian's prometheus package)");
    promtool.stdin.take().unwrap().write_all(metrics.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    // Every peer is listed, with where it came from.
    let routes = json(&lab, 1, &["routes"]);
    let listed: Vec<(String, String)> = routes
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["subnet"].as_str().unwrap().to_string(), r["peer"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        listed,
        [
            ("10.244.2.0/24".to_string(), "198.18.0.2".to_string()),
            ("10.244.3.0/24".into(), "198.18.0.3".into())
        ]
    );
    for r in routes.as_array().unwrap() {
        assert_eq!(
            (r["backend"].as_str(), r["source"].as_str(), r["vni"].as_u64()),
            (Some("vxlan"), Some("file"), Some(1))
        );
        let last_octet = r["peer"].as_str().unwrap().rsplit('.').next().unwrap();
        assert_eq!(r["vtep_mac"].as_str().unwrap(), format!("02:00:c6:12:00:0{last_octet}"), "{r}");
    }

    let status = json(&lab, 1, &["status"]);
    assert_eq!(status["agent_running"], true, "{status}");
    assert_eq!((status["overlay_mtu"].as_u64(), status["peers"].as_u64()), (Some(1450), Some(2)));
    assert_eq!(status["route_index"], true, "every route is a /24 of the network: {status}");
    let attached: Vec<String> = status["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .inspect(|a| assert!(a["program_id"].as_u64().unwrap() > 0, "{a}"))
        .map(|a| format!("{}:{}", a["iface"].as_str().unwrap(), a["program"].as_str().unwrap()))
        .collect();
    // The bridge, its container port (egress before the bridge), the underlay, and the far end of
    // the host's own device (the host's traffic to remote containers).
    assert_eq!(
        attached,
        ["docker0:xnet_tc_egress", "eth0:xnet_tc_ingress", "vc1:xnet_tc_egress", "xnet0-tx:xnet_tc_egress"]
    );

    // What the maps hold at most and cost: every map, the object's default capacities, and a
    // total far below what preallocated maps of that size would lock.
    let maps = status["maps"].as_array().unwrap();
    let map =
        |name: &str| maps.iter().find(|m| m["name"] == name).unwrap_or_else(|| panic!("{name}: {status}"));
    assert_eq!(maps.len(), 14, "{status}");
    assert!(
        !maps.iter().any(|m| m["name"] == "ROUTE_INFO"),
        "no such map since it moved into REMOTE_SUBNETS"
    );
    for name in ["REMOTE_SUBNETS", "PEERS"] {
        assert_eq!(map(name)["max_entries"].as_u64(), Some(65_536), "{name}");
    }
    let total: u64 = maps.iter().map(|m| m["memlock"].as_u64().unwrap()).sum();
    assert!(total > 1 << 20 && total < 16 << 20, "maps lock {total} bytes: {status}");
    let text = lab.xnet(1, &["status", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    println!("{text}");
    assert!(text.contains("maps ") && text.contains("MiB of kernel memory"), "{text}");

    // subnet.env for Docker.
    let env = std::fs::read_to_string(&lab.host(1).subnet_file).unwrap();
    for line in [
        "XNET_SUBNET=10.244.1.1/24",
        "XNET_MTU=1450",
        "FLANNEL_NETWORK=10.244.0.0/16",
        "FLANNEL_SUBNET=10.244.1.1/24",
    ] {
        assert!(env.lines().any(|l| l == line), "{line} in subnet.env:\n{env}");
    }

    // The CLI reads the pins, so it works with the agent stopped (and the datapath kept). A normal
    // stop removes the datapath with its counters; an agent run with --keep-datapath leaves them.
    lab.stop_agent(1);
    lab.start_agent(1, &["--keep-datapath"]);
    for _ in 0..5 {
        assert!(lab.ping(c1, lab.container(c2).ip));
    }
    let running = json(&lab, 1, &["stats", "--all"]);
    lab.stop_agent(1);
    let status = json(&lab, 1, &["status"]);
    assert_eq!(status["agent_running"], false, "{status}");
    assert_eq!(json(&lab, 1, &["routes"]).as_array().unwrap().len(), 2);
    let kept = json(&lab, 1, &["stats", "--all"]);
    assert_eq!(counter(&kept, "egress", "encap_vxlan"), counter(&running, "egress", "encap_vxlan"));
    assert!(counter(&kept, "egress", "encap_vxlan").0 >= 5);
    let text = lab.xnet(1, &["status", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("not running"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn the_agent_tells_systemd_when_it_is_ready() {
    let lab =
        Lab::start(LabSpec { hosts: 2, containers_per_host: 1, start_agents: false, ..LabSpec::default() });
    let socket_path = lab.dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let host = lab.host(1);
    let mut agent = host
        .ns
        .command(xnet_bin().to_str().unwrap())
        .args(["run", "--config", host.config_path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let got = socket.recv(&mut buf);
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().unwrap();
    let n = got.expect("no sd_notify message within 30 s");
    assert_eq!(&buf[..n], b"READY=1\n");
    assert!(status.success(), "agent exit {status}");
    assert!(!host.pin_dir.exists(), "SIGTERM removed the pins");
}

#[test]
fn stats_watch_shows_rates() {
    let lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 1, ..LabSpec::default() });
    let watch = lab
        .host(1)
        .ns
        .command(xnet_bin().to_str().unwrap())
        .args(["stats", "--watch", "0.5", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let ping = lab
        .container((1, 1))
        .ns
        .command("ping")
        .args(["-c", "40", "-i", "0.05", "-q", &lab.container((2, 1)).ip.to_string()])
        .output()
        .unwrap();
    assert!(ping.status.success());
    // SIGTERM, not SIGINT: a shell without job control starts background commands with SIGINT
    // ignored, and the watch (as any command-line tool) keeps that, so a test run started that way
    // would wait here for ever. SAFETY: kill(2) on our own child.
    unsafe { libc::kill(watch.id() as i32, libc::SIGTERM) };
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PKT/S") && text.contains("BIT/S"), "{text}");
    // At 20 echo requests a second, some sample must show a non-zero encapsulation rate.
    let rate = text
        .lines()
        .filter(|l| l.contains("encap_vxlan"))
        .filter_map(|l| l.split_whitespace().nth(5)?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(rate >= 5.0, "encap rate {rate} pkt/s:\n{text}");
}
