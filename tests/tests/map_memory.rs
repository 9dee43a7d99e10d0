//! What the datapath's maps cost the host: the kernel memory they are charged for (`memlock`, what
//! `bpftool map show` prints as bytes_memlock), for a loaded datapath with 100 peers synced by the
//! agent's own code. Its own test binary, so that the process holds this one datapath's maps and
//! no other's: they are found through the process's own file descriptors.

use std::{collections::BTreeMap, fs};

use xnet::{
    cidr::{self, Ipv4Network},
    clock::unix_now,
    config::{PeerConfig, Tunnel},
    datapath::{self, sync::Scope},
    mac::Mac,
    plan::Plan,
    store::Overlay,
};
use xnet_common::maps::{
    AGENT, Backend, COARSE_CLOCK, CONFIG, CONTAINER_IFACES, ENDPOINTS, ICMP_LIMIT, LOCAL_PORTS,
    LOCAL_PORTS_LIMIT, PEER_SLOTS, PEERS, REMOTE_SUBNETS, ROUTE_INDEX, STATS, Store, UNTUNNELLED_FROM,
};
use xnet_lab::fixture::host_facts;

const MIB: u64 = 1 << 20;

fn net(s: &str) -> Ipv4Network {
    cidr::parse(s).unwrap()
}

/// (name, memlock) of every eBPF map this process holds a descriptor of, by map id. The kernel
/// truncates map names to 15 bytes.
fn held_maps() -> BTreeMap<u32, (String, u64)> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir("/proc/self/fd").unwrap() {
        let entry = entry.unwrap();
        let Ok(target) = fs::read_link(entry.path()) else { continue };
        if target.to_str() != Some("anon_inode:bpf-map") {
            continue;
        }
        let fdinfo =
            fs::read_to_string(format!("/proc/self/fdinfo/{}", entry.file_name().to_str().unwrap())).unwrap();
        let field = |name: &str| -> u64 {
            fdinfo
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':').map(|v| v.trim().parse().unwrap()))
                .unwrap_or_else(|| panic!("{name} in {fdinfo}"))
        };
        let id = field("map_id") as u32;
        let info = aya::maps::MapInfo::from_id(id).unwrap();
        let name = info.name_as_str().unwrap().to_string();
        out.insert(id, (name, field("memlock")));
    }
    out
}

#[test]
fn a_hundred_peer_network_locks_under_16_mib() {
    let mut dp = datapath::Datapath::load_unpinned()
        .unwrap_or_else(|e| panic!("the kernel refused the programs: {e} ({e:?})"));
    // Host 198.18.0.1 owning 10.244.1.0/24 of 10.244.0.0/16; peers 198.18.1.n owning 10.244.n.0/24.
    let peers: Vec<PeerConfig> = (2..102u8)
        .map(|n| PeerConfig {
            subnet: net(&format!("10.244.{n}.0/24")),
            public_ip: [198, 18, 1, n].into(),
            vtep_mac: Mac([2, 0, 198, 18, 1, n]),
            backend: Some(Backend::Vxlan),
            protocol: None,
        })
        .collect();
    let facts = host_facts([198, 18, 0, 1].into(), "198.18.0.0/16");
    let tunnel = Tunnel::default();
    let overlay = Overlay { network: net("10.244.0.0/16"), subnet: net("10.244.1.0/24"), tunnel };
    let plan = Plan::new(facts, overlay, None, &peers).expect("plan");
    let wanted = plan.wanted(Store::File, &peers);
    let config = plan.datapath_config([2, 0x42, 10, 244, 1, 1], &wanted);
    dp.sync(&wanted, &config, &Scope::All, unix_now()).expect("sync the maps");
    assert_eq!(dp.maps().routes().unwrap().len(), 100, "routes synced");
    assert_eq!(dp.maps().peers().unwrap().len(), 100, "peers synced");
    let entries = dp.maps().route_entries().unwrap();
    assert!(
        entries.values().all(|e| e.info().source() == Some(Store::File)),
        "each route records its source in its own entry: {entries:?}"
    );

    let names = [
        AGENT,
        COARSE_CLOCK,
        CONFIG,
        CONTAINER_IFACES,
        ENDPOINTS,
        ICMP_LIMIT,
        LOCAL_PORTS,
        LOCAL_PORTS_LIMIT,
        PEER_SLOTS,
        PEERS,
        REMOTE_SUBNETS,
        ROUTE_INDEX,
        STATS,
        UNTUNNELLED_FROM,
    ];
    let held = held_maps();
    assert!(
        !held.values().any(|(n, _)| n == "ROUTE_INFO"),
        "ROUTE_INFO is created no more (its records are in REMOTE_SUBNETS): {held:?}"
    );
    let mut by_name = BTreeMap::new();
    for name in names {
        let short = &name[..name.len().min(15)];
        let found: Vec<_> = held.iter().filter(|(_, (n, _))| n == short).collect();
        assert_eq!(found.len(), 1, "{name}: one map of this datapath in {held:?}");
        by_name.insert(name, (*found[0].0, found[0].1.1));
    }
    let total: u64 = by_name.values().map(|(_, memlock)| memlock).sum();
    for (name, (id, memlock)) in &by_name {
        println!("{name:<17} id {id:<6} {memlock:>10} bytes");
    }
    println!("total             {total} bytes ({:.2} MiB)", total as f64 / MIB as f64);
    assert!(total < 16 * MIB, "xnet's maps lock {total} bytes with 100 peers: {by_name:?}");
}
