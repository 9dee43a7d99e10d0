//! The etcd store on the lab: hosts lease subnets and learn each other from etcd (flannel's
//! schema), follow joins and revocations, and keep forwarding through etcd outages.

use std::time::{Duration, Instant};

use serde_json::Value;
use xnet_lab::lab::{Lab, LabSpec, wait_for};

/// The subnets in host `i`'s datapath.
fn routes(lab: &Lab, i: usize) -> Vec<String> {
    let out = lab.xnet(i, &["routes", "--json", "--pin-dir", lab.host(i).pin_dir.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array()
        .map_or(Vec::new(), |a| a.iter().map(|r| r["subnet"].as_str().unwrap_or("").to_string()).collect())
}

#[test]
fn hosts_learn_each_other_from_etcd_and_a_fourth_joins() {
    let mut lab = Lab::start(LabSpec {
        hosts: 4,
        containers_per_host: 1,
        etcd: true,
        start_agents: false,
        ..LabSpec::default()
    });
    for i in 1..=3 {
        lab.start_agent(i, &[]);
    }
    let etcd = &lab.etcd[0];
    for i in 1..=3 {
        let lease = etcd.get(&format!("/coreos.com/network/subnets/10.244.{i}.0-24")).expect("lease");
        assert!(lease.contains(&format!("\"PublicIP\":\"198.18.0.{i}\"")), "{lease}");
    }
    for (a, b) in [(1, 2), (2, 3), (3, 1)] {
        assert!(lab.ping((a, 1), lab.container((b, 1)).ip), "host {a} -> host {b}\n{}", lab.log(a));
    }
    // The fourth host names etcd on the command line instead of in its file.
    let text = lab.config_text(4);
    let local_only = &text[..text.find("[etcd]").unwrap()];
    std::fs::write(&lab.host(4).config_path, local_only).unwrap();
    let endpoint = lab.etcd[0].endpoint.clone();
    lab.start_agent(4, &["--etcd-endpoints", &endpoint, "--etcd-prefix", "/coreos.com/network"]);
    let took = wait_for(Duration::from_secs(10), "host 1 learns host 4", || {
        routes(&lab, 1).contains(&"10.244.4.0/24".to_string())
    });
    eprintln!("a new host reached host 1's map in {took:?}");
    assert!(lab.ping((1, 1), lab.container((4, 1)).ip));
    assert!(lab.ping((4, 1), lab.container((2, 1)).ip));
}

/// A lease as flannel writes it, for a host that does not exist (no traffic goes to it).
fn fake_lease(n: u8) -> (String, String) {
    (
        format!("/coreos.com/network/subnets/10.244.{n}.0-24"),
        format!(
            r#"{{"PublicIP":"198.18.0.{n}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"02:00:c6:12:00:{n:02x}"}}}}"#
        ),
    )
}

#[test]
fn new_leases_reach_the_maps_quickly_and_removals_too() {
    let lab = Lab::start(LabSpec {
        hosts: 2,
        containers_per_host: 1,
        etcd: true,
        metrics: true,
        ..LabSpec::default()
    });
    let etcd = &lab.etcd[0];
    let mut times = Vec::new();
    for n in 100..120u8 {
        let (key, value) = fake_lease(n);
        let start = Instant::now();
        etcd.put(&key, &value);
        let subnet = format!("10.244.{n}.0/24");
        wait_for(Duration::from_secs(5), "lease in host 1's map", || routes(&lab, 1).contains(&subnet));
        times.push(start.elapsed());
    }
    let expected: Vec<u32> = [2].into_iter().chain(100..120).collect();
    assert_eq!(lab.route_index(1), (true, expected), "the route index follows the leases");
    times.sort();
    eprintln!(
        "lease -> host 1's map, 20 leases (etcdctl put included): median {:?}, worst {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    for n in 100..120u8 {
        etcd.etcdctl(&["del", &fake_lease(n).0]).unwrap();
    }
    wait_for(Duration::from_secs(5), "removed leases leave the map", || routes(&lab, 1) == ["10.244.2.0/24"]);
    assert_eq!(lab.route_index(1), (true, vec![2]), "and leave the route index");
    // Malformed entries are skipped, logged and counted; the rest still apply.
    etcd.put(
        "/coreos.com/network/subnets/10.244.77.0-24",
        r#"{"PublicIP":"198.18.0.999","BackendType":"vxlan"}"#,
    );
    etcd.put("/coreos.com/network/subnets/10.99.1.0-24", r#"{"PublicIP":"198.18.0.78","BackendType":"udp"}"#);
    let (key, value) = fake_lease(79);
    etcd.put(&key, &value);
    wait_for(Duration::from_secs(5), "the good lease applies", || {
        routes(&lab, 1).contains(&"10.244.79.0/24".to_string())
    });
    assert!(!routes(&lab, 1).iter().any(|r| r.starts_with("10.244.77.") || r.starts_with("10.99.")));
    let metrics = lab.http_get(1, xnet_lab::lab::METRICS_ADDR, "/metrics");
    assert!(metrics.lines().any(|l| l == "xnet_store_invalid_entries 2"), "{metrics}");
    assert!(metrics.lines().any(|l| l == "xnet_store_up{store=\"etcd\"} 1"), "{metrics}");
    let log = lab.log(1);
    assert!(
        log.contains("10.244.77.0-24: PublicIP") && log.contains("10.99.1.0-24: is outside the network"),
        "{log}"
    );
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "traffic unaffected");
    // xnet status: the store, its health, and the lease with its expiry (TTL 30 s in the lab).
    let out = lab.xnet(1, &["status", "--json", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (status["store"].as_str(), status["store_up"].as_bool()),
        (Some("etcd"), Some(true)),
        "{status}"
    );
    let now = xnet::clock::unix_now();
    let expiry = status["lease_expiry"].as_u64().expect("a lease expiry");
    assert!(expiry > now && expiry <= now + 31, "lease expires in (0, 30] s: {expiry} vs {now}");
    let text = lab.xnet(1, &["status", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("lease        expires "),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn a_revoked_lease_takes_its_routes_away() {
    let mut lab = Lab::start(LabSpec { hosts: 3, containers_per_host: 1, etcd: true, ..LabSpec::default() });
    // Host 3 goes away with its datapath kept and its lease left in etcd, as after a crash.
    lab.stop_agent(3);
    lab.start_agent(3, &["--keep-datapath"]);
    lab.stop_agent(3);
    let etcd = &lab.etcd[0];
    let key = "/coreos.com/network/subnets/10.244.3.0-24";
    let out = etcd.etcdctl(&["get", key, "-w", "json"]).unwrap();
    let lease: u64 =
        serde_json::from_str::<Value>(&out).unwrap()["kvs"][0]["lease"].as_u64().expect("lease id");
    assert!(routes(&lab, 1).contains(&"10.244.3.0/24".to_string()));
    etcd.etcdctl(&["lease", "revoke", &format!("{lease:x}")]).unwrap();
    wait_for(Duration::from_secs(5), "host 1 drops host 3", || {
        !routes(&lab, 1).contains(&"10.244.3.0/24".to_string())
    });
    wait_for(Duration::from_secs(5), "host 2 drops host 3", || {
        !routes(&lab, 2).contains(&"10.244.3.0/24".to_string())
    });
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "the others still talk");
}

#[test]
fn traffic_survives_an_etcd_outage_and_changes_are_reconciled_after() {
    let mut lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 1, etcd: true, ..LabSpec::default() });
    // 20 s without etcd while the containers ping each other every 200 ms: no reply may be lost.
    let to = lab.container((2, 1)).ip.to_string();
    let ping = lab
        .container((1, 1))
        .ns
        .command("ping")
        .args(["-c", "120", "-i", "0.2", "-q", &to])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    lab.etcd[0].stop();
    std::thread::sleep(Duration::from_secs(20));
    lab.etcd[0].resume();
    let out = ping.wait_with_output().unwrap();
    // ping exits 0 only if replies came back; -q's summary says how many.
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && summary.contains("120 received"),
        "no reply lost during the outage: {summary}"
    );
    // Host 1 cut off from etcd while a host joins; it catches up when it can reach etcd again.
    lab.cut_off_from_etcd(1);
    let (key, value) = fake_lease(90);
    lab.etcd[0].put(&key, &value);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!routes(&lab, 1).contains(&"10.244.90.0/24".to_string()), "partitioned: cannot know yet");
    lab.reconnect_to_etcd(1);
    let took = wait_for(Duration::from_secs(45), "host 1 reconciles after the partition", || {
        routes(&lab, 1).contains(&"10.244.90.0/24".to_string())
    });
    eprintln!("reconciled {took:?} after the partition healed");
    wait_for(Duration::from_secs(5), "host 1 logs that etcd is back", || {
        lab.log(1).contains("etcd is back; reconciled")
    });
}

#[test]
fn a_three_member_cluster_loses_its_leader_and_the_agents_carry_on() {
    let mut lab = Lab::start(LabSpec {
        hosts: 2,
        containers_per_host: 1,
        etcd: true,
        etcd_members: 3,
        lease_ttl: 6,
        ..LabSpec::default()
    });
    let leader = (0..3).find(|&i| lab.etcd[i].is_leader()).expect("a leader");
    lab.etcd[leader].stop();
    let survivor = (leader + 1) % 3;
    // The 6 s leases must be renewed through the other members for 12 s to still be there.
    std::thread::sleep(Duration::from_secs(12));
    for i in 1..=2 {
        let key = format!("/coreos.com/network/subnets/10.244.{i}.0-24");
        assert!(
            lab.etcd[survivor].get(&key).is_some(),
            "host {i}'s lease outlived its TTL: renewed\n{}",
            lab.log(i)
        );
    }
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip));
    // And they still learn from the remaining members.
    let (key, value) = fake_lease(91);
    lab.etcd[survivor].put(&key, &value);
    wait_for(Duration::from_secs(40), "host 1 learns through the surviving members", || {
        routes(&lab, 1).contains(&"10.244.91.0/24".to_string())
    });
}

#[test]
fn the_agent_waits_for_the_network_config_and_defends_its_lease() {
    let lab = Lab::start(LabSpec {
        hosts: 2,
        containers_per_host: 1,
        etcd: true,
        start_agents: false,
        ..LabSpec::default()
    });
    let etcd = &lab.etcd[0];
    let config = etcd.get(xnet_lab::lab::ETCD_CONFIG_KEY).unwrap();
    etcd.etcdctl(&["del", xnet_lab::lab::ETCD_CONFIG_KEY]).unwrap();
    // Without a network config the agent waits, says what is missing, and does not exit.
    let host = lab.host(1);
    let log = std::fs::File::create(&host.log_path).unwrap();
    let mut agent = host
        .ns
        .command(xnet_lab::lab::xnet_bin().to_str().unwrap())
        .args(["run", "--config", host.config_path.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_for(Duration::from_secs(10), "the agent reports the missing config", || {
        lab.log(1).contains("/coreos.com/network/config does not exist")
    });
    assert!(agent.try_wait().unwrap().is_none(), "still running, waiting:\n{}", lab.log(1));
    assert!(!host.pin_dir.exists(), "nothing set up yet");
    etcd.put(xnet_lab::lab::ETCD_CONFIG_KEY, &config);
    wait_for(Duration::from_secs(40), "ready once the config exists", || lab.log(1).contains("xnet ready"));

    // Someone overwrites host 1's lease with another address: host 1 restores it.
    let key = "/coreos.com/network/subnets/10.244.1.0-24";
    etcd.put(key, r#"{"PublicIP":"198.18.0.66","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:c6:12:00:42"}}"#);
    wait_for(Duration::from_secs(10), "host 1 restores its lease", || {
        etcd.get(key).is_some_and(|v| v.contains("\"PublicIP\":\"198.18.0.1\""))
    });
    assert!(
        lab.log(1).contains("this host's lease was deleted or overwritten in etcd; restoring it"),
        "{}",
        lab.log(1)
    );
    etcd.etcdctl(&["del", key]).unwrap();
    wait_for(Duration::from_secs(10), "and after a delete", || etcd.get(key).is_some());
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    assert!(agent.wait().unwrap().success());
}

#[test]
fn more_leases_than_the_maps_hold_are_refused_whole_and_said() {
    let mut lab = Lab::start(LabSpec {
        hosts: 2,
        containers_per_host: 1,
        etcd: true,
        start_agents: false,
        ..LabSpec::default()
    });
    // Host 1's maps hold one remote subnet: host 2's.
    let config = lab.config_text(1) + "\n[capacity]\nroutes = 1\n";
    std::fs::write(&lab.host(1).config_path, config).unwrap();
    lab.write_config(2);
    lab.start_agent(2, &[]);
    lab.start_agent(1, &[]);
    wait_for(Duration::from_secs(10), "host 1 routes to host 2", || routes(&lab, 1) == ["10.244.2.0/24"]);
    let status = |lab: &Lab| -> Value {
        let out = lab.xnet(1, &["status", "--json", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    assert_eq!(status(&lab)["full_map"], Value::Null);

    // A third host's lease: two remote subnets wanted, room for one.
    let (key, value) = fake_lease(90);
    lab.etcd[0].put(&key, &value);
    wait_for(Duration::from_secs(10), "host 1 says its maps are full", || {
        status(&lab)["full_map"] == "REMOTE_SUBNETS"
    });
    let s = status(&lab);
    assert!(s["refused_syncs"].as_u64().unwrap() >= 1 && s["store_up"] == false, "{s}");
    assert_eq!(routes(&lab, 1), ["10.244.2.0/24"], "the last state that fit stays");
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "and keeps forwarding");
    let text = lab.xnet(1, &["status", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("maps full    REMOTE_SUBNETS has no room"), "{text}");
    assert!(
        lab.log(1).contains("map REMOTE_SUBNETS holds at most 1 entries, but 2 are wanted"),
        "{}",
        lab.log(1)
    );

    // The lease goes: room again, the store up, the count kept.
    lab.etcd[0].writer().delete(&key);
    wait_for(Duration::from_secs(10), "host 1 recovers", || {
        let s = status(&lab);
        s["full_map"] == Value::Null && s["store_up"] == true
    });
    assert!(status(&lab)["refused_syncs"].as_u64().unwrap() >= 1);
    assert_eq!(routes(&lab, 1), ["10.244.2.0/24"]);
}
