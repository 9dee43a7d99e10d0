//! Failure drills on the lab, each measured: the agent killed with SIGKILL under traffic; etcd out
//! of reach for longer than the lease TTL; a host's lease expired and taken by another host while
//! that host was cut off from etcd, then given back. Run with `--nocapture` for the figures.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use xnet::{datapath::maps::Maps, inspect};
use xnet_lab::{
    lab::{Lab, LabSpec, wait_for},
    traffic::{FastPing, Stream},
};

/// Every counter of host `i`: (direction, outcome) -> (packets, bytes).
fn counters(lab: &Lab, i: usize) -> BTreeMap<(&'static str, &'static str), (u64, u64)> {
    lab.counters(i).into_iter().map(|r| ((r.direction, r.outcome), (r.packets, r.bytes))).collect()
}

/// The ifindex of `iface` in host `i`'s namespace.
fn ifindex(lab: &Lab, i: usize, iface: &str) -> u32 {
    let out = lab.host(i).ns.command("ip").args(["-j", "link", "show", iface]).output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v[0]["ifindex"].as_u64().unwrap_or_else(|| panic!("no {iface} on host {i}")) as u32
}

/// Whether host `i`'s datapath still has entries for a container: its IP in ENDPOINTS, its port
/// in LOCAL_PORTS.
fn container_entries(lab: &Lab, i: usize, ip: Ipv4Addr, port: u32) -> (bool, bool) {
    let maps = Maps::open(&lab.host(i).pin_dir).expect("pinned maps");
    let endpoint = maps.endpoints().iter().any(|(a, _)| Ipv4Addr::from(*a) == ip);
    let local_port = maps.local_ports().expect("LOCAL_PORTS").values().any(|p| *p == port);
    (endpoint, local_port)
}

#[test]
fn sigkill_under_traffic_with_a_container_deleted_meanwhile() {
    let mut lab = Lab::start(LabSpec { hosts: 2, containers_per_host: 2, ..LabSpec::default() });
    // Container 2 of host 2 talks first, so host 2's datapath holds entries for it.
    let doomed_ip = lab.container((2, 2)).ip;
    let doomed_port = ifindex(&lab, 2, "vc2");
    wait_for(Duration::from_secs(10), "host 2 learns the container (ENDPOINTS, LOCAL_PORTS)", || {
        lab.ping((1, 1), doomed_ip) && container_entries(&lab, 2, doomed_ip, doomed_port) == (true, true)
    });

    let (from, to) = ((1, 1), (2, 1));
    let to_ip = lab.container(to).ip;
    let stream = Stream::start(&lab.container(from).ns, &lab.container(to).ns, to_ip, 5201);
    let ping =
        FastPing::start(&lab.container(from).ns, to_ip, Duration::from_millis(10), Duration::from_secs(14));
    std::thread::sleep(Duration::from_secs(2));
    let before = [counters(&lab, 1), counters(&lab, 2)];
    let pid = lab.agent_pid(2).unwrap();
    let status = lab.kill_agent(2);
    assert!(!status.success(), "SIGKILL: {status}");
    let killed_at = Instant::now();
    std::thread::sleep(Duration::from_millis(500));
    lab.delete_container((2, 2));
    std::thread::sleep(Duration::from_millis(500));
    lab.start_agent(2, &[]);
    let restarted_at = Instant::now();
    assert_ne!(lab.agent_pid(2), Some(pid));
    std::thread::sleep(Duration::from_secs(3));
    let after = [counters(&lab, 1), counters(&lab, 2)];
    let report = stream.finish();
    let pings = ping.finish();
    eprintln!(
        "SIGKILL drill: agent down {:?}; TCP {} bytes sent, {} received, {} after the restart, longest stall {:?}, error {:?}; \
         ping at 100/s: {} sent, {} received, lost {:?}, longest gap {:?}",
        restarted_at - killed_at,
        report.sent,
        report.received,
        report.received_after(restarted_at),
        report.longest_stall,
        report.error,
        pings.sent,
        pings.received,
        pings.lost,
        pings.longest_gap
    );
    assert!(report.error.is_none() && report.intact, "the TCP connection survived intact: {report:?}");
    assert!(report.received_after(restarted_at) > 0, "bytes flowed after the restart");
    assert!(pings.sent > 500 && pings.lost.is_empty(), "pings ran through, none lost: {pings:?}");
    assert!(pings.longest_gap < Duration::from_millis(200), "no ping gap of 200 ms: {pings:?}");
    // Counters are pinned per-CPU arrays: they only go up through a crash and a takeover.
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        for (key, (packets, bytes)) in b {
            let (p, by) = a.get(key).unwrap_or_else(|| panic!("host {}: counter {key:?} disappeared", i + 1));
            assert!(
                p >= packets && by >= bytes,
                "host {}: {key:?} went down: {packets}/{bytes} -> {p}/{by}",
                i + 1
            );
        }
        let total = |c: &BTreeMap<_, (u64, u64)>| c.values().map(|v| v.0).sum::<u64>();
        assert!(total(a) > total(b), "host {}: the traffic was counted", i + 1);
    }
    // What the agent learned of the deleted container is gone once the new agent looked.
    wait_for(Duration::from_secs(5), "the deleted container's entries go", || {
        container_entries(&lab, 2, doomed_ip, doomed_port) == (false, false)
    });
    assert!(lab.ping((2, 1), lab.container((1, 2)).ip), "and traffic goes on");
}

/// The lease of `subnet` in etcd: (PublicIP, etcd lease id, create revision).
fn lease_in_etcd(lab: &Lab, subnet: &str) -> Option<(String, u64, u64)> {
    let key = format!("/coreos.com/network/subnets/{}", subnet.replace('/', "-"));
    let out = lab.etcd[0].etcdctl(&["get", &key, "-w", "json"]).ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    let kv = &v["kvs"][0];
    let value = kv["value"].as_str()?;
    // etcdctl's JSON carries values in base64.
    let decoded = base64_decode(value);
    let lease: Value = serde_json::from_slice(&decoded).ok()?;
    Some((
        lease["PublicIP"].as_str()?.to_string(),
        kv["lease"].as_u64().unwrap_or(0),
        kv["create_revision"].as_u64()?,
    ))
}

fn base64_decode(s: &str) -> Vec<u8> {
    let table = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|c| *c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (k, c) in chunk.iter().enumerate() {
            n |= table(*c) << (18 - 6 * k);
        }
        for k in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * k)) as u8);
        }
    }
    out
}

/// `xnet status --json` of host `i`.
fn status(lab: &Lab, i: usize) -> Value {
    let out = lab.xnet(i, &["status", "--json", "--pin-dir", lab.host(i).pin_dir.to_str().unwrap()]);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The subnets host `i` routes, with their peer.
fn routes(lab: &Lab, i: usize) -> BTreeMap<String, String> {
    let out = lab.xnet(i, &["routes", "--json", "--pin-dir", lab.host(i).pin_dir.to_str().unwrap()]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    v.as_array().map_or(BTreeMap::new(), |a| {
        a.iter()
            .map(|r| {
                (r["subnet"].as_str().unwrap_or("").to_string(), r["peer"].as_str().unwrap_or("").to_string())
            })
            .collect()
    })
}

#[test]
fn etcd_out_of_reach_longer_than_the_lease_ttl() {
    let mut lab = Lab::start(LabSpec {
        hosts: 2,
        containers_per_host: 1,
        etcd: true,
        lease_ttl: 5,
        ..LabSpec::default()
    });
    let (h1, h2) = ("10.244.1.0/24", "10.244.2.0/24");
    let first = lease_in_etcd(&lab, h1).expect("host 1's lease");
    assert_eq!(first.0, "198.18.0.1");
    let to = lab.container((2, 1)).ip;

    // 1. etcd itself down for 12 s (> the 5 s TTL): every agent keeps forwarding; etcd keeps the
    // leases it had (a restarted etcd extends them), so the agents renew them when it returns.
    let ping =
        FastPing::start(&lab.container((1, 1)).ns, to, Duration::from_millis(50), Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(1));
    lab.etcd[0].stop();
    std::thread::sleep(Duration::from_secs(12));
    assert!(status(&lab, 1)["store_up"] == false, "host 1 knows etcd is down");
    lab.etcd[0].resume();
    let took = wait_for(Duration::from_secs(10), "both hosts renew their leases", || {
        let now = unix_now_f();
        (1..=2).all(|i| {
            let s = status(&lab, i);
            s["store_up"] == true
                && s["lease_expiry"].as_f64().is_some_and(|t| t > now)
                && s["lease_lost"] == false
        })
    });
    let pings = ping.finish();
    eprintln!(
        "etcd down 12 s (TTL 5 s): leases renewed {took:?} after etcd returned; ping every 50 ms: {} sent, {} received, lost {:?}, longest gap {:?}",
        pings.sent, pings.received, pings.lost, pings.longest_gap
    );
    assert!(pings.lost.is_empty() && pings.received > 200, "forwarding went on: {pings:?}");
    let again = lease_in_etcd(&lab, h1).expect("host 1's lease");
    assert_eq!(again, first, "etcd kept the lease (same host, etcd lease and key) and host 1 renewed it");

    // 2. Host 1 alone cut off for 12 s: its lease expires in etcd and host 2 drops its route
    // (etcd says host 1 is gone). Nobody takes the subnet: when host 1 can reach etcd again it
    // leases the same subnet under a new etcd lease, without touching its datapath.
    let before = lease_in_etcd(&lab, h1).expect("host 1's lease");
    let pid = lab.agent_pid(1);
    let routes_before = routes(&lab, 1);
    lab.cut_off_from_etcd(1);
    let cut = Instant::now();
    wait_for(Duration::from_secs(10), "host 1's lease expires in etcd", || lease_in_etcd(&lab, h1).is_none());
    let expired_after = cut.elapsed();
    wait_for(Duration::from_secs(5), "host 2 drops host 1's route", || !routes(&lab, 2).contains_key(h1));
    std::thread::sleep(Duration::from_secs(12).saturating_sub(cut.elapsed()));
    let s = status(&lab, 1);
    assert!(
        s["lease_expiry"].as_f64().is_some_and(|t| t <= unix_now_f()) && s["lease_lost"] == false,
        "host 1 sees its lease expired, not lost: {s}"
    );
    let text = String::from_utf8_lossy(
        &lab.xnet(1, &["status", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]).stdout,
    )
    .into_owned();
    assert!(text.contains("lease        EXPIRED "), "{text}");
    assert_eq!(routes(&lab, 1), routes_before, "host 1 keeps forwarding to host 2");
    lab.reconnect_to_etcd(1);
    let took = wait_for(Duration::from_secs(5), "host 1 leases its subnet again and host 2 follows", || {
        lease_in_etcd(&lab, h1).is_some_and(|l| l.0 == "198.18.0.1")
            && routes(&lab, 2).get(h1).is_some_and(|p| p == "198.18.0.1")
    });
    let after = lease_in_etcd(&lab, h1).unwrap();
    eprintln!(
        "host 1 cut off 12 s (TTL 5 s): its lease expired in etcd {expired_after:?} after the cut; back {took:?} after the partition healed (lease {:x} -> {:x})",
        before.1, after.1
    );
    assert_ne!(after.1, before.1, "a new etcd lease");
    assert_eq!(lab.agent_pid(1), pid, "the same agent");
    assert_eq!(routes(&lab, 1), routes_before, "host 1's datapath untouched");
    assert!(routes(&lab, 2).contains_key(h1) && routes(&lab, 1).contains_key(h2));
    assert!(lab.ping((2, 1), lab.container((1, 1)).ip), "host 2 reaches host 1's container again");
}

fn unix_now_f() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

/// One look at every host: who forwards `subnet` where.
#[derive(Clone, Debug)]
struct Sample {
    at: Instant,
    /// Hosts (by public IP) that hold the subnet as their own by their own account: a lease not
    /// lost and not expired by their clock.
    claimants: BTreeSet<Ipv4Addr>,
    /// Peer each host's ROUTES map sends the subnet to, by host.
    routed_to: BTreeMap<usize, Ipv4Addr>,
}

impl Sample {
    /// Every host the subnet is forwarded to at this instant.
    fn owners(&self) -> BTreeSet<Ipv4Addr> {
        self.claimants.iter().chain(self.routed_to.values()).copied().collect()
    }
}

/// Samples hosts `hosts` (index, pin dir, public IP) every `every` until stopped.
fn sample_owners(
    subnet: &'static str,
    hosts: Vec<(usize, PathBuf, Ipv4Addr)>,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<Sample>> {
    std::thread::spawn(move || {
        let mut samples = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let at = Instant::now();
            let now = unix_now_f();
            let mut sample = Sample { at, claimants: BTreeSet::new(), routed_to: BTreeMap::new() };
            for (i, pin_dir, ip) in &hosts {
                let Ok(maps) = Maps::open(pin_dir) else { continue };
                if let Ok(s) = inspect::status(&maps, pin_dir)
                    && s.subnet == subnet
                    && !s.lease_lost
                    && s.lease_expiry.is_some_and(|t| (t as f64) > now)
                {
                    sample.claimants.insert(*ip);
                }
                if let Ok(routes) = inspect::routes(&maps, 0)
                    && let Some(r) = routes.iter().find(|r| r.subnet == subnet)
                {
                    sample.routed_to.insert(*i, r.peer);
                }
            }
            samples.push(sample);
            std::thread::sleep(every.saturating_sub(at.elapsed()));
        }
        samples
    })
}

#[test]
fn a_lease_taken_by_another_host_during_a_partition_is_never_overwritten() {
    let mut lab = Lab::start(LabSpec {
        hosts: 3,
        containers_per_host: 1,
        etcd: true,
        lease_ttl: 5,
        metrics: true,
        start_agents: false,
        ..LabSpec::default()
    });
    const S: &str = "10.244.1.0/24";
    lab.start_agent(1, &[]);
    lab.start_agent(2, &[]);
    // Host 3 will ask for host 1's subnet: its bridge and container are renumbered into it.
    let h3 = lab.host(3);
    h3.ns.ip(&["addr", "flush", "dev", "docker0"]);
    h3.ns.ip(&["addr", "add", "10.244.1.1/24", "dev", "docker0"]);
    let c3 = &h3.containers[0];
    c3.ns.ip(&["addr", "flush", "dev", "eth0"]);
    c3.ns.ip(&["addr", "add", "10.244.1.30/24", "dev", "eth0"]);
    c3.ns.ip(&["route", "add", "default", "via", "10.244.1.1"]);
    std::fs::write(&h3.subnet_file, "XNET_SUBNET=10.244.1.1/24\n").unwrap();
    let new_home: Ipv4Addr = "10.244.1.30".parse().unwrap();
    assert_eq!(routes(&lab, 2).get(S).map(String::as_str), Some("198.18.0.1"));

    let hosts = (1..=3).map(|i| (i, lab.host(i).pin_dir.clone(), lab.host(i).public_ip)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_owners(S, hosts, Duration::from_millis(50), stop.clone());

    // The partition: host 1 loses etcd for 15 s; its lease (TTL 5 s) expires meanwhile.
    lab.cut_off_from_etcd(1);
    let cut = Instant::now();
    wait_for(Duration::from_secs(10), "host 1's lease expires in etcd", || lease_in_etcd(&lab, S).is_none());
    let expired_after = cut.elapsed();
    // Host 3 joins and asks for the subnet, which is free now.
    lab.start_agent(3, &[]);
    let taken = lease_in_etcd(&lab, S).expect("host 3's lease");
    assert_eq!(taken.0, "198.18.0.3", "host 3 took the free subnet");
    wait_for(Duration::from_secs(5), "host 2 follows the new owner", || {
        routes(&lab, 2).get(S).is_some_and(|p| p == "198.18.0.3")
    });
    assert!(lab.ping((2, 1), new_home), "host 2 reaches the new owner's container");
    std::thread::sleep(Duration::from_secs(15).saturating_sub(cut.elapsed()));
    lab.reconnect_to_etcd(1);
    let converged = wait_for(Duration::from_secs(5), "every host agrees on the new owner", || {
        let s1 = status(&lab, 1);
        s1["lease_lost"] == true
            && s1["lease_holder"] == "198.18.0.3"
            && routes(&lab, 2).get(S).is_some_and(|p| p == "198.18.0.3")
            && !routes(&lab, 1).contains_key(S)
    });
    // A few more seconds: host 1 must not write over host 3's lease, ever.
    std::thread::sleep(Duration::from_secs(4));
    let after = lease_in_etcd(&lab, S).expect("host 3's lease");
    assert_eq!(after, taken, "host 3's lease untouched (value, etcd lease and create revision)");

    // Said loudly: log, status, metric.
    assert!(lab.log(1).contains("LEASE LOST"), "{}", lab.log(1));
    let text = String::from_utf8_lossy(
        &lab.xnet(1, &["status", "--pin-dir", lab.host(1).pin_dir.to_str().unwrap()]).stdout,
    )
    .into_owned();
    assert!(text.contains("LOST: 10.244.1.0/24 now held by 198.18.0.3"), "{text}");
    let metrics = lab.http_get(1, xnet_lab::lab::METRICS_ADDR, "/metrics");
    assert!(metrics.lines().any(|l| l == "xnet_lease_lost 1"), "{metrics}");
    let metrics = lab.http_get(3, xnet_lab::lab::METRICS_ADDR, "/metrics");
    assert!(metrics.lines().any(|l| l == "xnet_lease_lost 0"), "{metrics}");
    // Host 1 stays up (its containers keep their addresses; remote hosts no longer accept them).
    let s1 = status(&lab, 1);
    assert!(s1["agent_running"] == true && s1["store_up"] == true, "{s1}");
    assert!(lab.ping((2, 1), new_home), "host 2 still reaches the new owner");

    // Host 3 leaves; once its lease expires the subnet is free and host 1 takes it back by itself.
    lab.stop_agent(3);
    let left = Instant::now();
    let back = wait_for(Duration::from_secs(15), "host 1 takes its subnet back", || {
        let s1 = status(&lab, 1);
        s1["lease_lost"] == false
            && lease_in_etcd(&lab, S).is_some_and(|l| l.0 == "198.18.0.1")
            && routes(&lab, 2).get(S).is_some_and(|p| p == "198.18.0.1")
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    assert!(lab.log(1).contains("took this host's subnet back"), "{}", lab.log(1));
    let metrics = lab.http_get(1, xnet_lab::lab::METRICS_ADDR, "/metrics");
    assert!(metrics.lines().any(|l| l == "xnet_lease_lost 0"), "{metrics}");
    assert!(lab.ping((2, 1), lab.container((1, 1)).ip), "host 2 reaches host 1's container again");

    // Never two owners at once, and the owners in turn: host 1, host 3, host 1 again.
    let doubled: Vec<&Sample> = samples.iter().filter(|s| s.owners().len() > 1).collect();
    let owned_by =
        |ip: &str| samples.iter().filter(|s| s.owners().iter().any(|o| o.to_string() == ip)).count();
    let nobody = samples.iter().filter(|s| s.owners().is_empty()).count();
    let mut turns: Vec<String> = Vec::new();
    for s in &samples {
        let now = s.owners().iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(",");
        let now = if now.is_empty() { "nobody".to_string() } else { now };
        if turns.last() != Some(&now) {
            turns.push(now);
        }
    }
    eprintln!(
        "lease takeover drill (TTL 5 s, host 1 cut off 15 s): lease expired in etcd {expired_after:?} after the cut; \
         {} samples every 50 ms over {:?}: {} with two owners, {} owned by host 1, {} by host 3, {} by nobody; \
         owners in turn {turns:?}; converged {converged:?} after the partition healed; \
         host 1 took its subnet back {back:?} after host 3 left ({:?} since)",
        samples.len(),
        samples.last().unwrap().at - samples[0].at,
        doubled.len(),
        owned_by("198.18.0.1"),
        owned_by("198.18.0.3"),
        nobody,
        left.elapsed()
    );
    assert!(doubled.is_empty(), "a subnet forwarded to two hosts at once: {:?}", doubled.first());
    let turns: Vec<&str> = turns.iter().map(String::as_str).filter(|t| *t != "nobody").collect();
    assert_eq!(turns, ["198.18.0.1", "198.18.0.3", "198.18.0.1"], "the owners in turn");
}
