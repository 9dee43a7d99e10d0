//! The etcd store against a real etcd: leases inside the bounds, racing hosts never collide, a
//! restart keeps its subnet, renewal keeps a short lease alive, flannel's data is understood and
//! bad data is named.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Duration};

use xnet::{
    cidr::{self, Ipv4Network},
    config::EtcdSettings,
    mac::Mac,
    store::{
        etcd::{EtcdClient, Held, LeaseList, Me, StoreError},
        flannel::Lease,
    },
};
use xnet_common::maps::Backend;
use xnet_lab::etcd::Etcd;

const CONFIG_KEY: &str = "/coreos.com/network/config";

fn me(n: u8) -> Me {
    let ip = Ipv4Addr::new(198, 18, 0, n);
    Me { public_ip: ip, backend: Backend::Vxlan, vtep_mac: Mac::from_ipv4(ip), vni: 1 }
}

async fn store(etcd: &Etcd, ttl: Duration) -> EtcdClient {
    let mut s = EtcdSettings::new(vec![etcd.endpoint.clone()]);
    s.lease_ttl = ttl;
    EtcdClient::connect(s).await.expect("connect")
}

fn net(s: &str) -> Ipv4Network {
    cidr::parse(s).unwrap()
}

/// The listed keys that are leases, and the reasons of those that are not.
fn split(list: &LeaseList) -> (Vec<&Lease>, Vec<String>) {
    let leases = list.entries.iter().filter_map(|e| e.parsed.as_ref().ok()).collect();
    let invalid =
        list.entries.iter().filter_map(|e| e.parsed.as_ref().err()).map(|e| e.to_string()).collect();
    (leases, invalid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_stay_inside_the_bounds_and_survive_a_restart() {
    let etcd = Etcd::start();
    etcd.put(CONFIG_KEY, r#"{"Network": "10.50.0.0/16", "SubnetMin": "10.50.10.0", "SubnetMax": "10.50.14.0", "Backend": {"Type": "vxlan"}}"#);
    let mut s = store(&etcd, Duration::from_secs(60)).await;
    let cfg = s.network_config().await.unwrap();
    let mut got = BTreeSet::new();
    for n in 1..=5 {
        let held = s.acquire(&cfg, &me(n), None).await.unwrap();
        let a = held.lease.subnet.network().octets();
        assert!(held.lease.subnet.prefix() == 24 && (10..=14).contains(&a[2]), "{}", held.lease.subnet);
        assert!(got.insert(held.lease.subnet), "{} handed out twice", held.lease.subnet);
        let stored =
            etcd.get(&format!("/coreos.com/network/subnets/10.50.{}.0-24", a[2])).expect("lease key");
        assert!(stored.contains(&format!("\"PublicIP\":\"198.18.0.{n}\"")), "{stored}");
    }
    assert!(
        matches!(s.acquire(&cfg, &me(6), None).await, Err(StoreError::Exhausted { .. })),
        "the range is full"
    );
    // A restarted agent (new connection) with the same public IP gets its subnet back.
    // The subnet remembered in a host's subnet file is taken again if it is free (not the first free).
    let mut wide = store(&etcd, Duration::from_secs(60)).await;
    etcd.etcdctl(&["del", "/coreos.com/network/subnets/10.50.13.0-24"]).unwrap();
    etcd.etcdctl(&["del", "/coreos.com/network/subnets/10.50.11.0-24"]).unwrap();
    let hint = net("10.50.13.0/24");
    assert_eq!(wide.acquire(&cfg, &me(7), Some(hint)).await.unwrap().lease.subnet, hint);
    got.remove(&net("10.50.11.0/24"));
    let first = got.iter().next().copied().unwrap();
    let list = s.leases(&cfg).await.unwrap();
    let owner = split(&list).0.iter().find(|l| l.subnet == first).unwrap().public_ip;
    drop(s);
    let mut again = store(&etcd, Duration::from_secs(60)).await;
    let n = owner.octets()[3];
    assert_eq!(again.acquire(&cfg, &me(n), None).await.unwrap().lease.subnet, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_hosts_racing_for_a_small_network_never_collide() {
    let etcd = Etcd::start();
    // /24 in /28 subnets: 14 candidates (the first is skipped) for 10 hosts.
    etcd.put(CONFIG_KEY, r#"{"Network": "10.60.0.0/24", "SubnetLen": 28}"#);
    let mut tasks = Vec::new();
    for n in 1..=10 {
        let endpoint = etcd.endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = EtcdClient::connect(EtcdSettings::new(vec![endpoint])).await.unwrap();
            let cfg = s.network_config().await.unwrap();
            s.acquire(&cfg, &me(n), None).await.unwrap().lease.subnet
        }));
    }
    let mut subnets = BTreeSet::new();
    for t in tasks {
        let subnet = t.await.unwrap();
        assert!(subnets.insert(subnet), "{subnet} went to two hosts");
    }
    assert_eq!(subnets.len(), 10);
    let etcd_keys =
        etcd.etcdctl(&["get", "/coreos.com/network/subnets/", "--prefix", "--keys-only"]).unwrap();
    assert_eq!(etcd_keys.lines().filter(|l| !l.is_empty()).count(), 10, "{etcd_keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_keeps_a_short_lease_alive() {
    let etcd = Etcd::start();
    etcd.put(CONFIG_KEY, r#"{"Network": "10.70.0.0/16"}"#);
    let mut s = store(&etcd, Duration::from_secs(2)).await;
    let cfg = s.network_config().await.unwrap();
    let kept = s.acquire(&cfg, &me(1), None).await.unwrap();
    let dropped = s.acquire(&cfg, &me(2), None).await.unwrap();
    let key = |h: &Held| format!("/coreos.com/network/subnets/{}-24", h.lease.subnet.network());
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let left = s.renew(kept.lease_id).await.unwrap();
        assert!(left > 0, "renewed lease has time left");
    }
    assert!(etcd.get(&key(&kept)).is_some(), "renewed for 4 s with a 2 s TTL: still there");
    assert!(etcd.get(&key(&dropped)).is_none(), "not renewed: expired");
    assert_eq!(s.renew(dropped.lease_id).await.unwrap(), 0, "an expired lease has nothing left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flannels_data_is_understood_and_bad_data_is_named() {
    let etcd = Etcd::start();
    let mut s = store(&etcd, Duration::from_secs(60)).await;
    match s.network_config().await {
        Err(StoreError::NoConfig { key }) => assert_eq!(key, CONFIG_KEY),
        other => panic!("missing config: {other:?}"),
    }
    etcd.put(CONFIG_KEY, "{\"Network\": ");
    let e = s.network_config().await.unwrap_err().to_string();
    assert!(e.contains(CONFIG_KEY) && e.contains("not JSON"), "{e}");
    // Exactly what flannel's documentation and flanneld write.
    etcd.put(CONFIG_KEY, r#"{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}"#);
    etcd.put(
        "/coreos.com/network/subnets/10.5.34.0-24",
        r#"{"PublicIP":"198.18.0.34","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"82:4b:a1:2d:57:9e"},"BackendV6Data":null}"#,
    );
    etcd.put(
        "/coreos.com/network/subnets/10.5.35.0-24",
        r#"{"PublicIP":"198.18.0.300","BackendType":"udp"}"#,
    );
    etcd.put("/coreos.com/network/subnets/10.9.1.0-24", r#"{"PublicIP":"198.18.0.36","BackendType":"udp"}"#);
    etcd.put("/coreos.com/network/subnets/garbage", "{}");
    let cfg = s.network_config().await.unwrap();
    assert_eq!((cfg.network, cfg.backend), (net("10.5.0.0/16"), Backend::Vxlan));
    let list = s.leases(&cfg).await.unwrap();
    let (leases, reasons) = split(&list);
    assert_eq!(leases.len(), 1, "only the good lease: {leases:?}");
    assert_eq!((leases[0].subnet, leases[0].backend), (net("10.5.34.0/24"), Backend::Vxlan), "{leases:?}");
    assert_eq!(leases[0].vtep_mac.unwrap().to_string(), "82:4b:a1:2d:57:9e");
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("10.5.35.0-24: PublicIP")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("10.9.1.0-24: is outside the network")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("subnets/garbage")), "{reasons:?}");
    // xnet's own lease is one flannel parses: the fields flannel reads, with its names.
    let held = s.acquire(&cfg, &me(9), None).await.unwrap();
    let raw = etcd.get(&format!("/coreos.com/network/subnets/{}-24", held.lease.subnet.network())).unwrap();
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        (v["PublicIP"].as_str(), v["BackendType"].as_str()),
        (Some("198.18.0.9"), Some("vxlan")),
        "{raw}"
    );
    assert_eq!(
        (v["BackendData"]["VNI"].as_u64(), v["BackendData"]["VtepMAC"].as_str()),
        (Some(1), Some("02:00:c6:12:00:09")),
        "{raw}"
    );
    assert_ne!(held.lease.subnet, net("10.5.34.0/24"), "flannel's subnet is taken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let etcd = Etcd::start_tls();
    etcd.put(CONFIG_KEY, r#"{"Network": "10.80.0.0/16", "Backend": {"Type": "vxlan"}}"#);
    let certs = etcd.tls_dir.clone().unwrap();
    let mut settings = EtcdSettings::new(vec![etcd.endpoint.clone()]);
    settings.ca_file = Some(certs.join("ca.pem"));
    settings.cert_file = Some(certs.join("client.pem"));
    settings.key_file = Some(certs.join("client.key"));
    let mut s = EtcdClient::connect(settings.clone()).await.expect("TLS connect");
    let cfg = s.network_config().await.expect("read over TLS");
    let held = s.acquire(&cfg, &me(1), None).await.unwrap();
    assert_eq!(held.lease.subnet.to_string(), "10.80.1.0/24");
    // Without a client certificate etcd refuses; without the CA file, xnet says which file.
    let mut anonymous = settings.clone();
    anonymous.cert_file = None;
    anonymous.key_file = None;
    let refused = async { EtcdClient::connect(anonymous).await?.network_config().await };
    assert!(refused.await.is_err(), "etcd requires a client certificate");
    let mut missing = settings;
    missing.ca_file = Some(certs.join("nope.pem"));
    let e = EtcdClient::connect(missing).await.err().expect("missing CA file").to_string();
    assert!(e.contains("etcd.ca_file") && e.contains("nope.pem"), "{e}");
}
