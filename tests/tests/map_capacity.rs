//! `[capacity]`: the route and peer maps are created with the configured number of entries, past
//! the default 65,536 when asked; a wanted state larger than the maps is refused whole and the
//! last state stays in the maps; pinned maps of another size are refused with what to do.
//! ENDPOINTS follows the container subnet instead, and a pinned map of another type (an older
//! xnet's) is refused by name, as are an older xnet's route maps (REMOTE_SUBNETS without the route
//! records, ROUTE_INFO beside it), until a cleanup removes them both.

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
use xnet_common::maps::{
    Backend, Capacity, ENDPOINTS, ENDPOINTS_MAX, Endpoint, PEERS, REMOTE_SUBNETS, Store,
};
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
    let capacity = Capacity { routes: 70_000, peers: 70_000, ..Capacity::default() };
    let mut dp = Datapath::load_unpinned_sized(capacity).expect("load");
    for name in [REMOTE_SUBNETS, PEERS] {
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
    let mut dp =
        Datapath::load_unpinned_sized(Capacity { routes: 4, peers: 4, ..Capacity::default() }).expect("load");
    let five = peers(5);
    sync(&mut dp, &five[..4]).expect("four routes fit");
    let before = (dp.maps().route_entries().unwrap(), dp.maps().peers().unwrap());
    let err = sync(&mut dp, &five).expect_err("a fifth route does not fit");
    let text = err.to_string();
    assert!(
        text.contains("map REMOTE_SUBNETS holds at most 4 entries, but 5 are wanted")
            && text.contains("nothing was changed")
            && text.contains("[capacity]"),
        "{text}"
    );
    let after = (dp.maps().route_entries().unwrap(), dp.maps().peers().unwrap());
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
fn a_load_reads_the_maps_it_reuses_and_not_those_it_creates() {
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/xnet-test-reread-{}", std::process::id())));
    let all = peers(300);
    let mut first = Datapath::load(&pins.0, Capacity::default()).expect("load pinned");
    assert_eq!(
        first.maps().mirror_of_new().expect("config"),
        first.maps().mirror().expect("read every map"),
        "maps just created hold nothing but their CONFIG"
    );
    let written = sync(&mut first, &all).expect("sync");
    assert!(written >= 600, "{written} writes for 300 peers and their routes");
    drop(first);
    let mut again = Datapath::load(&pins.0, Capacity::default()).expect("load the pins again");
    assert_eq!(sync(&mut again, &all).expect("sync again"), 0, "the reused maps were read: nothing to write");
}

#[test]
fn pinned_maps_of_another_size_are_refused_with_what_to_do() {
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/xnet-test-capacity-{}", std::process::id())));
    let first = Datapath::load(&pins.0, Capacity::default()).expect("load pinned");
    drop(first);
    let again = Datapath::load(&pins.0, Capacity::default());
    assert!(again.is_ok(), "same capacity: the pins are reused");
    drop(again);
    let err = Datapath::load(&pins.0, Capacity { routes: 100_000, peers: 65_536, ..Capacity::default() })
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

#[test]
fn endpoints_is_sized_for_the_container_subnet_and_made_anew_for_another() {
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/xnet-test-endpoints-{}", std::process::id())));
    // The /25 of `sync`: 128 entries, one per address.
    let mut dp = Datapath::load(&pins.0, Capacity::default().for_subnet(25)).expect("load pinned");
    assert_eq!(max_entries(&dp, ENDPOINTS), 128);
    sync(&mut dp, &peers(2)).expect("sync");
    let entry = Endpoint::new([10, 0, 0, 100], 7, [2, 0, 0, 0, 0, 7], [2, 0, 0, 0, 0, 1], 1);
    dp.maps_mut().put_endpoint(&entry).expect("an entry for 10.0.0.100");
    assert_eq!(dp.maps().endpoints(), vec![([10, 0, 0, 100], entry)]);
    drop(dp);
    // The same subnet again: the pinned array is kept, entries and all.
    let dp = Datapath::load(&pins.0, Capacity::default().for_subnet(25)).expect("load again");
    assert_eq!(dp.maps().endpoints(), vec![([10, 0, 0, 100], entry)], "kept");
    drop(dp);
    // A /20 now: ENDPOINTS made anew at its size (it only caches), the routes still pinned.
    let dp = Datapath::load(&pins.0, Capacity::default().for_subnet(20)).expect("another subnet size");
    assert_eq!(max_entries(&dp, ENDPOINTS), 4096);
    assert!(dp.maps().endpoints().is_empty(), "a new array");
    assert_eq!(dp.maps().routes().unwrap().len(), 2, "the other pins reused");
    drop(dp);
    // Past a /16, the most it takes.
    let dp = Datapath::load(&pins.0, Capacity::default().for_subnet(12)).expect("a /12");
    assert_eq!(max_entries(&dp, ENDPOINTS), ENDPOINTS_MAX);
}

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_MAP_TYPE_LPM_TRIE: u32 = 11;
const BPF_F_NO_PREALLOC: u32 = 1;

/// Creates and pins at `path` a BPF map as an older xnet had it: `[map_type, key_size,
/// value_size, max_entries, map_flags]`.
fn pin_old_map(path: &Path, layout: [u32; 5]) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags,
    // then zeros.
    let mut create = [0u32; 32];
    create[..5].copy_from_slice(&layout);
    // SAFETY: a zero-padded bpf_attr for BPF_MAP_CREATE (cmd 0), alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, create.as_ptr(), size_of_val(&create)) };
    assert!(fd >= 0, "create the old map: {}", std::io::Error::last_os_error());
    // SAFETY: the kernel just returned this new descriptor; nothing else owns it.
    let map = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // BPF_OBJ_PIN: pathname (u64), bpf_fd (u32), file_flags, path_fd; then zeros.
    let pin = [c_path.as_ptr() as u64, map.as_raw_fd() as u64, 0, 0, 0, 0, 0, 0];
    // SAFETY: a zero-padded bpf_attr for BPF_OBJ_PIN (cmd 6); the path outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), size_of_val(&pin)) };
    assert_eq!(ret, 0, "pin the old map: {}", std::io::Error::last_os_error());
}

#[test]
fn an_older_xnets_endpoints_map_is_refused_by_name() {
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/xnet-test-old-endpoints-{}", std::process::id())));
    std::fs::create_dir_all(&pins.0).expect("pin directory");
    // An LRU hash of 4-byte keys and 24-byte values, 4096 entries.
    pin_old_map(&pins.0.join(ENDPOINTS), [BPF_MAP_TYPE_LRU_HASH, 4, 24, 4096, 0]);
    let err = Datapath::load(&pins.0, Capacity::default()).err().expect("an LRU hash is not this ENDPOINTS");
    let text = err.to_string();
    let pin_dir = pins.0.display().to_string();
    assert!(
        text.contains("map ENDPOINTS")
            && text.contains("has map type 9, but this xnet needs map type 2")
            && text.contains(&format!("xnet cleanup --pin-dir {pin_dir}")),
        "{text}"
    );
    assert!(pins.0.join(ENDPOINTS).exists(), "the refused load left the old pin alone");
}

#[test]
fn an_older_xnets_route_maps_are_refused_then_cleaned_up() {
    let pins = Pins(PathBuf::from(format!("/sys/fs/bpf/xnet-test-old-routes-{}", std::process::id())));
    std::fs::create_dir_all(&pins.0).expect("pin directory");
    // The route maps of the xnet before RouteEntry: REMOTE_SUBNETS with the 12-byte route alone,
    // and ROUTE_INFO (LpmKeyIpv4 -> 16-byte RouteInfo) beside it.
    pin_old_map(&pins.0.join(REMOTE_SUBNETS), [BPF_MAP_TYPE_LPM_TRIE, 8, 12, 65_536, BPF_F_NO_PREALLOC]);
    pin_old_map(&pins.0.join("ROUTE_INFO"), [BPF_MAP_TYPE_HASH, 8, 16, 65_536, BPF_F_NO_PREALLOC]);
    let err = Datapath::load(&pins.0, Capacity::default())
        .err()
        .expect("12-byte routes are not this REMOTE_SUBNETS");
    let text = err.to_string();
    let pin_dir = pins.0.display().to_string();
    assert!(
        text.contains("map REMOTE_SUBNETS")
            && text.contains("8-byte keys, 12-byte values")
            && text.contains("8-byte keys, 32-byte values")
            && text.contains(&format!("xnet cleanup --pin-dir {pin_dir}")),
        "{text}"
    );
    assert!(pins.0.join(REMOTE_SUBNETS).exists(), "the refused load left the old pin alone");
    // What `xnet cleanup` runs: the retired ROUTE_INFO goes with the rest, and the directory.
    remove_all(&pins.0).expect("cleanup");
    assert!(!pins.0.exists(), "left behind: {:?}", std::fs::read_dir(&pins.0).map(|d| d.count()));
    // A ROUTE_INFO pin left alone does not stand in the way of a start.
    std::fs::create_dir_all(&pins.0).expect("pin directory");
    pin_old_map(&pins.0.join("ROUTE_INFO"), [BPF_MAP_TYPE_HASH, 8, 16, 65_536, BPF_F_NO_PREALLOC]);
    let mut dp = Datapath::load(&pins.0, Capacity::default()).expect("a stale ROUTE_INFO is ignored");
    sync(&mut dp, &peers(2)).expect("sync");
    let entries = dp.maps().route_entries().unwrap();
    assert_eq!(entries.len(), 2);
    assert!(
        entries
            .iter()
            .all(|(net, e)| e.prefix_len() == net.prefix() && e.info().source() == Some(Store::File))
    );
}
