//! The agent at scale, for the benchmark: started with many static peers (how soon it is ready,
//! its peak memory); and the etcd store, a lab of three hosts whose etcd holds thousands of leases
//! of hosts that do not exist (no traffic goes to them), the agents' peak memory with all of them,
//! and how soon one new lease is in every host's maps.

use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use aya::maps::{LpmTrie, MapData};
use xnet::{
    cidr::{self, Ipv4Network},
    datapath::maps::Maps,
    mac::Mac,
};
use xnet_common::maps::RouteEntry;

use crate::lab::{Lab, LabSpec};

/// The lab's hosts: every one of them must see each new lease.
const HOSTS: usize = 3;

/// What [`etcd_leases`] measured.
#[derive(Clone, Debug)]
pub struct EtcdScale {
    pub leases: u32,
    /// Seconds from the first write until every host's maps held every lease.
    pub load_seconds: f64,
    /// Seconds from starting host 1's agent anew, with every lease in etcd, until it was ready
    /// with all of them in its maps (the lab polls for readiness every 50 ms).
    pub restart_seconds: f64,
    /// The highest peak RSS (VmHWM) of the hosts' agents, MiB, one of them started anew with every
    /// lease in etcd already (its start-up lists them all).
    pub peak_rss_mib: f64,
    /// For each new lease written after that: seconds from the write until every host's maps held
    /// it.
    pub new_lease_seconds: Vec<f64>,
}

/// The routes host `i`'s `REMOTE_SUBNETS` holds.
pub fn remote_subnets(lab: &Lab, i: usize) -> usize {
    let map = MapData::from_pin(lab.host(i).pin_dir.join("REMOTE_SUBNETS")).expect("pinned REMOTE_SUBNETS");
    let trie: LpmTrie<MapData, [u8; 4], RouteEntry> =
        LpmTrie::try_from(aya::maps::Map::LpmTrie(map)).expect("LPM trie");
    trie.keys().filter_map(Result::ok).count()
}

/// The agent of a host whose static config lists `peers` peers, started in a lab of its own:
/// seconds from its start to `xnet ready` (the lab polls the log every 5 ms), and its peak
/// resident memory in MiB.
pub fn static_peers(peers: u32) -> (f64, f64) {
    let mut lab = Lab::start(LabSpec {
        hosts: 2,
        containers_per_host: 1,
        start_agents: false,
        network: "10.0.0.0/8",
        ..LabSpec::default()
    });
    let mut config = lab.config_text(1);
    // Room for the lab's own peer (host 2) too.
    let _ = write!(config, "\n[capacity]\nroutes = {room}\npeers = {room}\n", room = peers + 1);
    for p in 0..peers {
        // /26 subnets from 10.0.0.0 (below the lab's 10.244.x), public IPs from 100.64.0.1.
        let subnet = Ipv4Addr::from(0x0a00_0000u32 + p * 64);
        let ip = Ipv4Addr::from(0x6440_0001u32 + p);
        let _ = write!(config, "\n[[peer]]\nsubnet = \"{subnet}/26\"\npublic_ip = \"{ip}\"\n");
    }
    std::fs::write(&lab.host(1).config_path, config).expect("write config");
    let started = Instant::now();
    lab.start_agent(1, &[]);
    let ready = started.elapsed().as_secs_f64();
    let peak_mib = peak_rss_mib(lab.agent_pid(1).expect("agent runs"));
    let routes = remote_subnets(&lab, 1);
    assert!(routes >= peers as usize, "{routes} routes in the map, {peers} peers configured");
    (ready, peak_mib)
}

/// Fake lease `p` in flannel's format, (key, value, subnet): a /24 from 10.0.0.0 (below the lab's
/// 10.244.x for `p` under 62,464), public IP 100.64.0.1 + `p`.
fn fake(p: u32) -> (String, String, Ipv4Network) {
    let subnet = Ipv4Addr::from(0x0a00_0000u32 + p * 256);
    let ip = Ipv4Addr::from(0x6440_0001u32 + p);
    let mac = Mac::from_ipv4(ip);
    (
        format!("/coreos.com/network/subnets/{subnet}-24"),
        format!(r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}"#),
        cidr::network(subnet, 24).expect("a /24 without host bits"),
    )
}

/// Peak resident memory of process `pid`, MiB.
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("agent status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024.0
}

/// Waits (polling every 200 µs) until every map in `maps` holds `net`; panics after `limit`.
fn wait_everywhere(maps: &[Maps], net: &Ipv4Network, limit: Duration) {
    let start = Instant::now();
    for m in maps {
        while m.route(net).is_none() {
            assert!(start.elapsed() < limit, "{net} did not reach every host's map within {limit:?}");
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// Loads `leases` leases into the etcd of a three-host lab, restarts host 1's agent with all of
/// them in etcd, then writes `new` more leases one at a time, each timed until every host's maps
/// hold it.
pub fn etcd_leases(leases: u32, new: u32) -> EtcdScale {
    let mut lab = Lab::start(LabSpec {
        hosts: HOSTS,
        containers_per_host: 1,
        etcd: true,
        network: "10.0.0.0/8",
        ..LabSpec::default()
    });
    let open = |lab: &Lab| -> Vec<Maps> {
        (1..=HOSTS).map(|i| Maps::open(&lab.host(i).pin_dir).expect("host's pinned maps")).collect()
    };
    let writer = lab.etcd[0].writer();
    let started = Instant::now();
    writer.put_all((0..leases).map(|p| {
        let (key, value, _) = fake(p);
        (key, value)
    }));
    // Every agent applies the watch in order: the last lease there means all are.
    wait_everywhere(&open(&lab), &fake(leases - 1).2, Duration::from_secs(120));
    let load_seconds = started.elapsed().as_secs_f64();

    lab.stop_agent(1);
    let restarted = Instant::now();
    lab.start_agent(1, &[]);
    let maps = open(&lab);
    wait_everywhere(&maps, &fake(leases - 1).2, Duration::from_secs(60));
    let restart_seconds = restarted.elapsed().as_secs_f64();
    let peak_rss_mib =
        (1..=HOSTS).map(|i| peak_rss_mib(lab.agent_pid(i).expect("agent runs"))).fold(0.0, f64::max);

    let new_lease_seconds = (leases..leases + new)
        .map(|p| {
            let (key, value, net) = fake(p);
            let start = Instant::now();
            writer.put(&key, &value);
            wait_everywhere(&maps, &net, Duration::from_secs(10));
            let took = start.elapsed().as_secs_f64();
            // Apart, so each lease is a watch event of its own on an idle agent.
            std::thread::sleep(Duration::from_millis(200));
            took
        })
        .collect();
    EtcdScale { leases, load_seconds, restart_seconds, peak_rss_mib, new_lease_seconds }
}

/// The median of `seconds`, in milliseconds.
pub fn median_ms(seconds: &[f64]) -> f64 {
    crate::stats::median(seconds) * 1e3
}
