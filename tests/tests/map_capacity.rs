//! `[capacity]`: the route and peer maps are created with the configured number of entries, past
//! the default 65,536 when asked; a wanted state larger than the maps is refused whole and the
//! last state stays in the maps; pinned maps of another size are refused with what to do.

use std::path::{Path, PathBuf};

use xnet::{
    cidr::{self, Ipv4Network},
    clock::unix_now,
    config::{PeerConfig, Tunnel},
    datapath::{Datapath, DatapathError, remove_all, sync::Scope},
    mac::Mac,
    plan::Plan,
    store::Overlay,
};
use xnet_common::maps::{Backend, Capacity, PEERS, REMOTE_SUBNETS, ROUTE_INFO, Store};
use xnet_lab::fixture::host_facts;

fn net(s: &str) -> Ipv4Network {
    cidr::parse(s).unwrap()
}

/// Host 198.18.0.1 owning 10.0.0.0/25 of 10.0.0.0/8; peer n (from 1) at 100.64.x.y owns the n-th
/// /25 after it.
fn peers(n: u32) -> Vec<PeerConfig> {
    (1..=n)
        .map(|i| {
            let ip = 0x6440_0000u32 + i;
            PeerConfig {
                subnet: net(&format!("{}/25", std::net::Ipv4Addr::from(0x0a00_0000u32 + (i << 7)))),
                public_ip: ip.into(),
                vtep_mac: Mac::from_ipv4(ip.into()),
                backend: Some(Backend::Vxlan),
                protocol: None,
            }
        })
        .collect()
}

/// Syncs `peers` into `dp` as the agent does for a static file.
fn sync(dp: &mut Datapath, peers: &[PeerConfig]) -> Result<usize, DatapathError> {
    let facts = host_facts([198, 18, 0, 1].into(), "198.18.0.0/24");
    let overlay =
        Overlay { network: net("10.0.0.0/8"), subnet: net("10.0.0.0/25"), tunnel: Tunnel::default() };
    let plan = Plan::new(facts, overlay, None, peers).expect("plan");
    let wanted = plan.wanted(Store::File, peers);
    let config = plan.datapath_config([2, 0x42, 10, 0, 0, 1], &wanted);
    dp.sync(&wanted, &config, &Scope::All, unix_now())
}

/// The kernel's max_entries of this datapath's map `name`.
fn max_entries(dp: &Datapath, name: &str) -> u32 {
    let memory = dp.maps().memory().expect("map memory");
    memory.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("{name} in {memory:?}")).max_entries
}

#[test]
fn maps_take_more_than_the_default_when_configured() {
    let capacity = Capacity { routes: 70_000, peers: 70_000 };
    let mut dp = Datapath::load_unpinned_sized(capacity).expect("load");
    for name in [REMOTE_SUBNETS, ROUTE_INFO, PEERS] {
        assert_eq!(max_entries(&dp, name), 70_000, "{name} created with the configured capacity");
    }
    // 70,000 /25 subnets: more than the route index (65,536) and the default capacity hold.
    let all = peers(70_000);
    sync(&mut dp, &all).expect("70,000 routes fit maps of 70,000");
    let routes = dp.maps().routes().unwrap();
    assert_eq!(routes.len(), 70_000);
    let last = all.last().unwrap();
    assert_eq!(routes[&last.subnet].peer_ip(), last.public_ip.octets(), "the last route points to its peer");
    assert_eq!(dp.maps().peers().unwrap().len(), 70_000);

    let default = Datapath::load_unpinned().expect("load");
    assert_eq!(max_entries(&default, REMOTE_SUBNETS), 65_536, "the default stays the object's size");
}

#[test]
fn a_full_map_keeps_the_last_state_whole() {
    let mut dp = Datapath::load_unpinned_sized(Capacity { routes: 4, peers: 4 }).expect("load");
    let five = peers(5);
    sync(&mut dp, &five[..4]).expect("four routes fit");
    let before = (dp.maps().routes().unwrap(), dp.maps().peers().unwrap(), dp.maps().route_info().unwrap());
    let err = sync(&mut dp, &five).expect_err("a fifth route does not fit");
    let text = err.to_string();
    assert!(
        text.contains("map REMOTE_SUBNETS holds at most 4 entries, but 5 are wanted")
            && text.contains("nothing was changed")
            && text.contains("[capacity]"),
        "{text}"
    );
    let after = (dp.maps().routes().unwrap(), dp.maps().peers().unwrap(), dp.maps().route_info().unwrap());
    assert_eq!(after, before, "the refused sync wrote nothing");
    // One peer fewer, another one new: fits again, and is applied whole.
    sync(&mut dp, &five[1..]).expect("four routes fit again");
    let routes = dp.maps().routes().unwrap();
    assert_eq!(routes.len(), 4);
    assert!(!routes.contains_key(&five[0].subnet) && routes.contains_key(&five[4].subnet));
}

/// Removes a pin directory on drop, also after a failed assertion.
struct Pins(PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = remove_all(&self.0);
    }
}

#[test]
fn pinned_maps_of_another_size_are_refused_with_what_to_do() {
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/xnet-test-capacity-{}", std::process::id())));
    let first = Datapath::load(&pins.0, Capacity::default()).expect("load pinned");
    drop(first);
    let again = Datapath::load(&pins.0, Capacity::default());
    assert!(again.is_ok(), "same capacity: the pins are reused");
    drop(again);
    let err = Datapath::load(&pins.0, Capacity { routes: 100_000, peers: 65_536 })
        .err()
        .expect("another size is refused");
    let text = err.to_string();
    let pin_dir = pins.0.display().to_string();
    assert!(
        text.contains("holds 65536 entries, but `[capacity]` in the config asks for 100000")
            && text.contains(&format!("xnet cleanup --pin-dir {pin_dir}")),
        "{text}"
    );
    assert!(Path::new(&pins.0).join(REMOTE_SUBNETS).exists(), "the refused load left the pins alone");
}
