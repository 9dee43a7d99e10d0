//! LOCAL_PORTS kept by the agent's own code against the kernel's map, at its capacity: removals
//! and expiry before inserts, a cap on what one bridge port can claim, inserts that fail counted
//! without stopping the rest.

use std::collections::BTreeMap;

use xnet::{
    clock::monotonic_coarse_ns,
    datapath::{self, local_ports::PER_PORT_MAX},
};
use xnet_common::maps::{DatapathConfig, DatapathParams, Endpoint, LOCAL_PORTS_MAX, LocalPortsLimit};

/// The MAC of container `n` behind port `port`.
fn mac(port: u32, n: u32) -> [u8; 6] {
    let p = port.to_be_bytes();
    let n = n.to_be_bytes();
    [2, p[2], p[3], n[1], n[2], n[3]]
}

/// `per_port` MACs on each of `ports`.
fn macs(ports: impl IntoIterator<Item = u32>, per_port: u32) -> BTreeMap<[u8; 6], u32> {
    ports.into_iter().flat_map(|p| (0..per_port).map(move |n| (mac(p, n), p))).collect()
}

#[test]
fn a_port_flooding_macs_into_a_full_map_is_capped_and_stops_nothing() {
    let mut dp = datapath::Datapath::load_unpinned()
        .unwrap_or_else(|e| panic!("the kernel refused the programs: {e} ({e:?})"));
    // 256 bridge ports of 256 containers each: LOCAL_PORTS full.
    let ports_per_map = LOCAL_PORTS_MAX / PER_PORT_MAX as u32;
    let full = macs(1..=ports_per_map, PER_PORT_MAX as u32);
    assert_eq!(full.len(), LOCAL_PORTS_MAX as usize);
    dp.sync_local_ports(&full, monotonic_coarse_ns()).expect("fill LOCAL_PORTS");
    assert_eq!(dp.maps().local_ports().unwrap(), full);
    assert_eq!(dp.maps().local_ports_limit().unwrap(), LocalPortsLimit::new(PER_PORT_MAX as u32, 0, 0));

    // Port 1's containers leave; a container behind port 998 sends from 70,000 source MACs. The
    // removals make the room the capped flood then takes: nothing fails.
    let mut wanted = macs(2..=ports_per_map, PER_PORT_MAX as u32);
    wanted.extend(macs([998], 70_000));
    dp.sync_local_ports(&wanted, monotonic_coarse_ns()).expect("removals first, then the capped inserts");
    let held = dp.maps().local_ports().unwrap();
    assert_eq!(held.len(), LOCAL_PORTS_MAX as usize);
    assert!(held.keys().all(|m| !(0..PER_PORT_MAX as u32).any(|n| *m == mac(1, n))), "port 1 gone");
    assert_eq!(held.values().filter(|&&p| p == 998).count(), PER_PORT_MAX, "port 998 at the cap");
    let refused = 70_000 - PER_PORT_MAX as u64;
    assert_eq!(dp.maps().local_ports_limit().unwrap(), LocalPortsLimit::new(PER_PORT_MAX as u32, 1, refused));

    // One more container on a new port while the map is full, and an ENDPOINTS entry resolved long
    // ago: the insert fails and is reported, the expiry still happens.
    let subnet = DatapathParams {
        local_subnet: [10, 244, 1, 0],
        local_netmask: [255, 255, 255, 0],
        ..DatapathParams::default()
    };
    dp.maps_mut().set_config(&DatapathConfig::new(&subnet)).unwrap();
    let old = Endpoint::new([10, 244, 1, 5], 2, mac(2, 0), [2, 0, 0, 0, 0, 1], 0);
    dp.maps_mut().put_endpoint(&old).unwrap();
    assert_eq!(dp.maps().endpoints(), vec![([10, 244, 1, 5], old)]);
    wanted.insert(mac(999, 0), 999);
    let err = dp.sync_local_ports(&wanted, monotonic_coarse_ns()).expect_err("no room for port 999");
    assert!(err.to_string().contains("LOCAL_PORTS"), "{err}");
    assert!(dp.maps().endpoints().is_empty(), "the old ENDPOINTS entry expired all the same");
    assert_eq!(dp.maps().local_ports().unwrap().len(), LOCAL_PORTS_MAX as usize);

    // The flood stops: port 998 back to one MAC, room again, port 999 in, nothing over the cap.
    let mut calm = macs(2..=ports_per_map, PER_PORT_MAX as u32);
    calm.insert(mac(998, 0), 998);
    calm.insert(mac(999, 0), 999);
    dp.sync_local_ports(&calm, monotonic_coarse_ns()).expect("room again");
    assert_eq!(dp.maps().local_ports().unwrap(), calm);
    assert_eq!(dp.maps().local_ports_limit().unwrap(), LocalPortsLimit::new(PER_PORT_MAX as u32, 0, 0));
}
