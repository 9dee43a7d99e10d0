//! Pods attached by `xnet-cni` as Kubernetes' runtime attaches them (packaging/cni/10-xnet.conflist:
//! xnet-cni, then portmap; CNI_* variables, config on stdin, plugins run in the host's network
//! namespace), on two hosts whose agents start before any pod, with no `cni0` yet: the first ADD
//! creates the bridge and the agent attaches to it. Then: addresses from each host's subnet,
//! traffic across hosts both ways, CHECK, DEL (interface and IPAM reservation gone, idempotent),
//! a new ADD.
//!
//! Every file the plugins write lies in the lab's directory (subnet files, xnet-cni's data dir,
//! host-local's data dir) and every interface in the lab's namespaces; pods delete themselves
//! (DEL, namespace) on drop, before the lab tears down the hosts, also when an assertion fails.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use xnet_lab::{
    cni::{Pod, Runtime},
    lab::{Lab, LabSpec},
};

/// Whether `f` becomes true within `timeout` (polled every 100 ms).
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ip -j -n ns args...` as JSON.
fn ip_json(ns: &str, args: &[&str]) -> Value {
    let out = Command::new("ip").args(["-j", "-n", ns]).args(args).output().expect("run ip");
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn link_exists(ns: &str, name: &str) -> bool {
    Command::new("ip").args(["-n", ns, "link", "show", name]).output().is_ok_and(|o| o.status.success())
}

/// The names of `bridge`'s ports in namespace `ns`.
fn bridge_ports(ns: &str, bridge: &str) -> Vec<String> {
    ip_json(ns, &["link", "show", "master", bridge])
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["ifname"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn in_subnet(ip: Ipv4Addr, subnet: &str) -> bool {
    let (net, len) = subnet.split_once('/').expect("a CIDR");
    let (net, len): (Ipv4Addr, u32) = (net.parse().expect("network"), len.parse().expect("prefix"));
    let mask = u32::MAX.checked_shl(32 - len).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Asserts that `pod` on host `i` got what the host's subnet file says, and prints it.
fn assert_attached(lab: &Lab, i: usize, pod: &Pod) {
    let h = lab.host(i);
    let ip = pod.ip();
    // Pods never get addresses outside the lab's networks: each host's subnet, 10.244.i.0/24.
    assert!(
        in_subnet(ip, &h.subnet),
        "pod {} got {ip}, outside host {i}'s subnet {}",
        pod.attachment.container_id,
        h.subnet
    );
    let r = &pod.result;
    assert_eq!(r["cniVersion"], "1.0.0", "{r:#}");
    assert_eq!(r["ips"][0]["address"], format!("{ip}/24"), "{r:#}");
    assert_eq!(r["ips"][0]["gateway"], h.bridge_ip.to_string(), "{r:#}");
    let routes = r["routes"].as_array().expect("routes");
    assert!(routes.iter().any(|x| x["dst"] == "10.244.0.0/16"), "route to the overlay: {r:#}");
    let ifaces: Vec<&str> =
        r["interfaces"].as_array().expect("interfaces").iter().filter_map(|x| x["name"].as_str()).collect();
    assert!(ifaces.contains(&"cni0") && ifaces.contains(&"eth0"), "{ifaces:?}");
    // In the pod: eth0 with the address and the agent's MTU (XNET_MTU).
    let addr = ip_json(&pod.ns.name, &["addr", "show", "eth0"]);
    let link = &addr[0];
    assert_eq!(link["mtu"], 1450, "{addr:#}");
    assert!(
        link["addr_info"].as_array().expect("addr_info").iter().any(|a| a["local"] == ip.to_string()),
        "{addr:#}"
    );
}

#[test]
fn pods_attached_by_xnet_cni_reach_each_other_across_hosts() {
    let lab = Lab::start(LabSpec {
        hosts: 2,
        container_iface: "cni0",
        container_bridge: false,
        ..Default::default()
    });
    // The agents run, and no host has a cni0 yet: the first pod's ADD creates it.
    for i in 1..=2 {
        assert!(!link_exists(&lab.host(i).ns.name, "cni0"), "host {i} has a cni0 before any pod");
        assert!(lab.host(i).subnet_file.is_file(), "host {i}'s agent wrote no subnet file");
    }
    let conflist = xnet_lab::cni::packaged_conflist();
    let rt1 = Runtime::lab_host(&lab, 1, &conflist);
    let rt2 = Runtime::lab_host(&lab, 2, &conflist);

    // VERSION, and the error of a host whose agent has not written its subnet file.
    let version = rt1.version("xnet-cni");
    assert!(version.status.success(), "{version}");
    assert!(
        version.json()["supportedVersions"].as_array().expect("versions").contains(&json!("1.0.0")),
        "{version}"
    );
    let mut no_agent = rt1.clone();
    let missing = lab.dir.join("no-agent.subnet.env");
    no_agent.conflist["plugins"][0]["subnetFile"] = missing.display().to_string().into();
    let err = Pod::add(&no_agent, &format!("{}-p0", lab.id), "pod0")
        .err()
        .expect("ADD without a subnet file fails");
    assert!(!err.status.success());
    let e = err.json();
    assert_eq!(e["code"], 11, "{err}");
    assert_eq!(e["cniVersion"], "1.0.0", "{err}");
    assert_eq!(
        e["msg"],
        format!("subnet file {} does not exist yet: is the xnet agent running?", missing.display()),
        "{err}"
    );

    // ADD: a pod on each host, a second one on host 1.
    let add = |rt: &Runtime, name: &str| {
        Pod::add(rt, &format!("{}-{name}", lab.id), &format!("{}-{name}", lab.id))
            .unwrap_or_else(|run| panic!("ADD {name}: {run}"))
    };
    let a = add(&rt1, "pa");
    println!("ADD result of pod a (host 1):\n{}", serde_json::to_string_pretty(&a.result).expect("json"));
    let b = add(&rt2, "pb");
    let c = add(&rt1, "pc");
    assert_attached(&lab, 1, &a);
    assert_attached(&lab, 2, &b);
    assert_attached(&lab, 1, &c);
    assert_ne!(a.ip(), c.ip());
    for i in 1..=2 {
        assert!(link_exists(&lab.host(i).ns.name, "cni0"), "host {i}: the bridge plugin made no cni0");
    }
    println!("pods: a {} and c {} on host 1, b {} on host 2", a.ip(), c.ip(), b.ip());

    // Traffic across hosts, both ways (the agents attach to cni0 and its ports as they appear),
    // and on one host.
    for (from, to, what) in [(&a, &b, "a -> b"), (&b, &a, "b -> a"), (&c, &b, "c -> b"), (&a, &c, "a -> c")] {
        assert!(
            eventually(Duration::from_secs(15), || from.ping(to.ip())),
            "{what}: no answer to ping {}\nhost 1 log:\n{}\nhost 2 log:\n{}",
            to.ip(),
            lab.log(1),
            lab.log(2)
        );
    }
    // The overlay carried it: each of 3 pings from b to a and each reply was encapsulated by one
    // agent and decapsulated by the other.
    let count = |i: usize, direction: &str, outcome: &str| lab.counter(i, direction, outcome).0;
    let before = [
        count(2, "egress", "encap_vxlan"),
        count(1, "ingress", "decap_vxlan"),
        count(1, "egress", "encap_vxlan"),
        count(2, "ingress", "decap_vxlan"),
    ];
    let (ok, out) = b.ping_output(a.ip(), 3);
    assert!(ok, "{out}");
    println!("ping from pod b (host 2) to pod a (host 1):\n{out}");
    let after = [
        count(2, "egress", "encap_vxlan"),
        count(1, "ingress", "decap_vxlan"),
        count(1, "egress", "encap_vxlan"),
        count(2, "ingress", "decap_vxlan"),
    ];
    for (k, what) in [
        "host 2 egress encap_vxlan",
        "host 1 ingress decap_vxlan",
        "host 1 egress encap_vxlan",
        "host 2 ingress decap_vxlan",
    ]
    .iter()
    .enumerate()
    {
        assert!(after[k] >= before[k] + 3, "{what}: {} -> {} packets for 3 pings", before[k], after[k]);
    }

    // CHECK on a healthy pod: every plugin of the list passes.
    a.check().unwrap_or_else(|run| panic!("CHECK of a healthy pod: {run}"));
    b.check().unwrap_or_else(|run| panic!("CHECK of a healthy pod: {run}"));

    // DEL: the interface goes (in the pod and on the bridge), the address is released, the saved
    // config is forgotten; a second DEL succeeds too.
    let ipam1 = Runtime::ipam_dir(&lab, 1);
    let saved = Runtime::data_dir(&lab, 1).join(&a.attachment.container_id);
    assert!(rt1.reserved(&ipam1, a.ip()), "host-local holds no reservation for {}", a.ip());
    assert!(saved.is_file(), "xnet-cni saved no delegate config at {}", saved.display());
    let ports_before = bridge_ports(&lab.host(1).ns.name, "cni0");
    assert_eq!(ports_before.len(), 2, "{ports_before:?}");
    let a_ip = a.ip();
    let mut a = a;
    a.del().unwrap_or_else(|run| panic!("DEL: {run}"));
    assert!(!link_exists(&a.ns.name, "eth0"), "the pod still has eth0 after DEL");
    let ports_after = bridge_ports(&lab.host(1).ns.name, "cni0");
    assert_eq!(ports_after.len(), 1, "host side of the pod's veth still on cni0: {ports_after:?}");
    assert!(!rt1.reserved(&ipam1, a_ip), "host-local still reserves {a_ip} after DEL");
    assert!(!saved.exists(), "xnet-cni kept {} after DEL", saved.display());
    rt1.del(&a.attachment, Some(&a.result)).unwrap_or_else(|run| panic!("second DEL: {run}"));
    drop(a);
    assert!(!b.ping(a_ip), "{a_ip} still answers after DEL");

    // A new ADD afterwards, reachable from the other host.
    let d = add(&rt1, "pd");
    assert_attached(&lab, 1, &d);
    assert!(rt1.reserved(&ipam1, d.ip()));
    assert!(
        eventually(Duration::from_secs(15), || d.ping(b.ip()) && b.ping(d.ip())),
        "new pod d {} and pod b {} do not reach each other",
        d.ip(),
        b.ip()
    );
    d.check().unwrap_or_else(|run| panic!("CHECK of the new pod: {run}"));
    println!("new pod d {} on host 1 after DEL of a ({a_ip}): reaches b {}", d.ip(), b.ip());
}
