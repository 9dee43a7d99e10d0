//! N simulated hosts on one machine. Each host is a network namespace with an underlay interface
//! `eth0` (198.18.0.i/24, on a bridge in a separate "switch" namespace), a container bridge `docker0`
//! holding the first address of its subnet 10.244.i.0/24 (the classic docker0 set-up), containers
//! in their own namespaces behind it (default route via the bridge), and a real `xnet` agent with a
//! generated config and its own pin directory. Everything is torn down on drop, also after a panic.

use std::{
    collections::BTreeSet,
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use xnet::inspect::{self, CounterRow};

use crate::netns::{Netns, run_ok, stop_child};

/// What to build.
#[derive(Clone, Debug)]
pub struct LabSpec {
    pub hosts: usize,
    pub containers_per_host: usize,
    /// `[backend] ingress` for every host: "auto", "xdp" or "tc".
    pub ingress: &'static str,
    pub vni: u32,
    pub port: u16,
    /// Start an agent on every host right away.
    pub start_agents: bool,
    /// Give every agent `metrics_addr` = [`METRICS_ADDR`] (each host has its own loopback).
    pub metrics: bool,
    /// `[backend] type` of every host ("vxlan", "udp", "gre", "direct").
    pub backend: &'static str,
    /// `[backend] key` (GRE) of every host.
    pub gre_key: Option<u32>,
    /// Per host (index 0 = host 1): another `[backend] type` than `backend`.
    pub host_backends: Vec<&'static str>,
    /// Run etcd (on the underlay, at [`ETCD_IP`]) and give every agent the etcd store instead of
    /// peers in its file. Hosts remember their subnet (subnet.env), so host i leases 10.244.i.0/24.
    pub etcd: bool,
    /// etcd members (1, or 3 for a cluster at [`ETCD_CLUSTER_IPS`]).
    pub etcd_members: usize,
    /// The overlay network (flannel's `Network`) in the config files and in etcd.
    pub network: &'static str,
    /// `[etcd] lease_ttl` of every agent, seconds.
    pub lease_ttl: u32,
    /// The container interface every agent's config names (`docker0`, or `cni0` for CNI).
    pub container_iface: &'static str,
    /// Whether the lab creates that bridge and its containers. Without it the hosts start with
    /// no container interface at all (as on a first boot, before dockerd or the first pod).
    pub container_bridge: bool,
    /// Give every agent the routes store (`[routes]`, no peers in its file): the peers come from
    /// a routing daemon the test starts ([`Lab::start_frr`], [`Lab::start_bird`]).
    pub routes: Option<RoutesSpec>,
    /// Hosts (1-based) on a second underlay segment, [`SEGMENT_B`], behind a router namespace
    /// that joins it to the first one ([`ROUTER_IPS`]). Every host has a route to the other
    /// segment through the router.
    pub second_segment: Vec<usize>,
}

/// `[routes]` (and what goes with it) of every agent of a lab.
#[derive(Clone, Debug)]
pub struct RoutesSpec {
    /// `protocols`, as TOML, e.g. `["ospf"]`.
    pub protocols: &'static str,
    /// `behind_router`: "fabric" or "encapsulate".
    pub behind_router: &'static str,
    /// List the router's two addresses in `routers`.
    pub routers: bool,
    /// `[backend] untunnelled = "any"`: the fabric delivers to containers untunnelled.
    pub untunnelled_any: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            hosts: 3,
            containers_per_host: 2,
            ingress: "auto",
            vni: 1,
            port: 8472,
            start_agents: true,
            metrics: false,
            backend: "vxlan",
            gre_key: None,
            host_backends: Vec::new(),
            etcd: false,
            etcd_members: 1,
            network: NETWORK,
            lease_ttl: 30,
            container_iface: "docker0",
            container_bridge: true,
            routes: None,
            second_segment: Vec::new(),
        }
    }
}

pub const NETWORK: &str = "10.244.0.0/16";
pub const METRICS_ADDR: &str = "127.0.0.1:9436";
/// Where the lab's etcd listens (in the switch namespace, on the underlay).
pub const ETCD_IP: &str = "198.18.0.254";
pub const ETCD_CONFIG_KEY: &str = "/coreos.com/network/config";
/// Where a 3-member etcd cluster listens (in the switch namespace).
pub const ETCD_CLUSTER_IPS: [&str; 3] = ["198.18.0.251", "198.18.0.252", "198.18.0.253"];
/// The second underlay segment (see [`LabSpec::second_segment`]); the first is 198.18.0.0/24.
pub const SEGMENT_B: &str = "198.18.1.0/24";
/// The router's addresses on the first and the second segment.
pub const ROUTER_IPS: [&str; 2] = ["198.18.0.254", "198.18.1.254"];
pub const UNDERLAY_MTU: u32 = 1500;
pub const VXLAN_OVERHEAD: u32 = xnet_common::wire::VXLAN_MTU_OVERHEAD;

pub struct Container {
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
}

pub struct Host {
    pub index: usize,
    pub ns: Netns,
    pub public_ip: Ipv4Addr,
    pub subnet: String,
    pub bridge_ip: Ipv4Addr,
    /// The switch port (in the switch namespace) that this host's `eth0` plugs into.
    pub switch_port: String,
    pub containers: Vec<Container>,
    pub config_path: PathBuf,
    pub pin_dir: PathBuf,
    pub log_path: PathBuf,
    /// The agent's subnet.env (inside the lab directory, not /run/xnet).
    pub subnet_file: PathBuf,
    agent: Option<Child>,
    /// The flannel-udp-style relay of [`Lab::setup_udp_relay`], if started.
    relay: Option<Child>,
    /// The routing daemons of [`Lab::start_frr`] and [`Lab::start_bird`], if started.
    pub frr: Option<crate::frr::Frr>,
    pub bird: Option<crate::bird::Bird>,
}

/// The router namespace of [`LabSpec::second_segment`] and its daemons.
pub struct Router {
    pub ns: Netns,
    pub frr: Option<crate::frr::Frr>,
    pub bird: Option<crate::bird::Bird>,
}

pub struct Lab {
    pub id: String,
    pub spec: LabSpec,
    pub dir: PathBuf,
    pub pin_root: PathBuf,
    pub hosts: Vec<Host>,
    /// With [`LabSpec::etcd`]: the members.
    pub etcd: Vec<crate::etcd::Etcd>,
    pub switch: Netns,
    /// With [`LabSpec::second_segment`]: the router between the segments.
    pub router: Option<Router>,
}

static LAB_COUNTER: AtomicUsize = AtomicUsize::new(0);
static PORT_COUNTER: AtomicU16 = AtomicU16::new(0);

/// Waits up to `limit` for `cond` (checked every 5 ms); returns how long it took. Panics naming
/// `what` when the time runs out.
pub fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// Whether iperf3 runs pinned, client on CPU 0 and server on CPU 1 (see [`Lab::iperf3_run`]):
/// when there are two CPUs to pin to.
pub fn iperf3_pinned() -> bool {
    std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
}

/// Where iperf3's client and server run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// On CPUs of their own (client on CPU 0, server on CPU 1) when there are two; see
    /// [`iperf3_pinned`].
    Apart,
    /// Wherever the scheduler puts them.
    Scheduler,
}

/// The `xnet` binary under test: `$XNET_BIN`, or `xnet` next to (or above) the running executable
/// in cargo's target directory.
pub fn xnet_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XNET_BIN") {
        return PathBuf::from(p);
    }
    near_exe("xnet").unwrap_or_else(|exe| {
        panic!(
            "cannot find the xnet binary near {}; build it (cargo build -p xnet-userspace) or set XNET_BIN",
            exe.display()
        )
    })
}

/// `name` next to (or up to two levels above) the running executable, in cargo's target
/// directory; the executable's path when there is none.
fn near_exe(name: &str) -> Result<PathBuf, PathBuf> {
    let exe = std::env::current_exe().expect("current exe");
    exe.ancestors().skip(1).take(3).map(|dir| dir.join(name)).find(|c| c.is_file()).ok_or(exe)
}

impl Lab {
    /// Builds the lab described by `spec`.
    pub fn start(spec: LabSpec) -> Lab {
        assert!(
            Path::new("/sys/fs/bpf").join(".").exists() && is_bpffs("/sys/fs/bpf"),
            "bpffs is not mounted on /sys/fs/bpf: run `cargo xtask test` (it mounts it) or `mount -t bpf bpf /sys/fs/bpf`"
        );
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let id = format!("xl{}{}", std::process::id() % 100_000, (b'a' + n as u8 % 26) as char);
        let dir = std::env::temp_dir().join(format!("xnet-lab-{id}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("lab dir");
        let pin_root = PathBuf::from(format!("/sys/fs/bpf/xnet-lab-{id}"));
        let switch = Netns::create(&format!("{id}-sw"));
        let mut lab = Lab {
            id: id.clone(),
            spec: spec.clone(),
            dir,
            pin_root,
            hosts: Vec::new(),
            etcd: Vec::new(),
            switch,
            router: None,
        };
        lab.switch.ip(&["link", "add", "br0", "type", "bridge"]);
        lab.switch.ip(&["link", "set", "br0", "up"]);
        if !spec.second_segment.is_empty() {
            assert!(!spec.etcd, "the lab's etcd and router would both take {}", ROUTER_IPS[0]);
            lab.router = Some(lab.build_router());
        }
        if spec.etcd {
            let ips: Vec<&str> =
                if spec.etcd_members > 1 { ETCD_CLUSTER_IPS.to_vec() } else { vec![ETCD_IP] };
            for ip in &ips {
                lab.switch.ip(&["addr", "add", &format!("{ip}/24"), "dev", "br0"]);
            }
            lab.etcd = if ips.len() > 1 {
                crate::etcd::Etcd::cluster_in(&lab.switch.path(), &ips)
            } else {
                vec![crate::etcd::Etcd::start_in(&lab.switch.path(), ETCD_IP)]
            };
            let config = format!(
                "{{\"Network\": \"{}\", \"Backend\": {{\"Type\": \"{}\"}}}}",
                spec.network, spec.backend
            );
            lab.etcd[0].put(ETCD_CONFIG_KEY, &config);
        }
        for i in 1..=spec.hosts {
            let host = lab.build_host(i);
            lab.hosts.push(host);
        }
        for i in 1..=spec.hosts {
            lab.write_config(i);
            if spec.etcd {
                // The subnet this host had: the agent leases it again.
                let h = lab.host(i);
                fs::write(&h.subnet_file, format!("XNET_SUBNET={}/24\n", h.bridge_ip)).expect("subnet.env");
            }
        }
        lab.wire_takes_big_packets();
        if spec.start_agents {
            for i in 1..=spec.hosts {
                lab.start_agent(i, &[]);
            }
        }
        lab
    }

    /// The router namespace: `r0` on the first segment's bridge, `r1` on the second's (br1),
    /// forwarding between them.
    fn build_router(&self) -> Router {
        let ns = Netns::create(&format!("{}-rt", self.id));
        self.switch.ip(&["link", "add", "br1", "type", "bridge"]);
        self.switch.ip(&["link", "set", "br1", "up"]);
        for (k, (bridge, ip)) in [("br0", ROUTER_IPS[0]), ("br1", ROUTER_IPS[1])].into_iter().enumerate() {
            let (inner, outer) = (format!("r{k}"), format!("rt{k}"));
            run_ok(Command::new("ip").args([
                "link",
                "add",
                "name",
                &inner,
                "netns",
                &ns.name,
                "type",
                "veth",
                "peer",
                "name",
                &outer,
                "netns",
                &self.switch.name,
            ]));
            self.switch.ip(&["link", "set", &outer, "master", bridge, "up"]);
            ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", &inner]);
            ns.ip(&["link", "set", &inner, "up"]);
        }
        sysctl(&ns, "net.ipv4.ip_forward", "1");
        Router { ns, frr: None, bird: None }
    }

    /// Whether host `i` is on the second segment.
    pub fn on_second_segment(&self, i: usize) -> bool {
        self.spec.second_segment.contains(&i)
    }

    /// Builds host `i` (1-based) after the others and writes its config: a host that joins later.
    /// Its agent and daemons are the caller's to start.
    pub fn add_host(&mut self) -> usize {
        let i = self.hosts.len() + 1;
        let host = self.build_host(i);
        self.hosts.push(host);
        self.spec.hosts = self.hosts.len();
        self.wire_takes_big_packets();
        self.write_config(i);
        i
    }

    /// A veth from `ns` (named `name` there) to the switch namespace (named `port` there), both
    /// ends down and unattached.
    fn cable_to_switch(&self, ns: &Netns, name: &str, port: &str) {
        run_ok(Command::new("ip").args([
            "link",
            "add",
            "name",
            name,
            "netns",
            &ns.name,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            &self.switch.name,
        ]));
    }

    fn build_host(&self, i: usize) -> Host {
        let ns = Netns::create(&format!("{}-h{i}", self.id));
        let port = format!("h{i}");
        let second = self.on_second_segment(i);
        self.cable_to_switch(&ns, "eth0", &port);
        self.switch.ip(&["link", "set", &port, "master", if second { "br1" } else { "br0" }, "up"]);
        let public_ip = Ipv4Addr::new(198, 18, u8::from(second), i as u8);
        ns.ip(&["addr", "add", &format!("{public_ip}/24"), "dev", "eth0"]);
        ns.ip(&["link", "set", "eth0", "up"]);
        if self.router.is_some() {
            // The underlay's own route to the other segment (a routing daemon may learn it too).
            let (other, via) =
                if second { ("198.18.0.0/24", ROUTER_IPS[1]) } else { (SEGMENT_B, ROUTER_IPS[0]) };
            ns.ip(&["route", "add", other, "via", via, "metric", "500"]);
        }
        let bridge_ip = Ipv4Addr::new(10, 244, i as u8, 1);
        let mtu = (UNDERLAY_MTU - VXLAN_OVERHEAD).to_string();
        let mut containers = Vec::new();
        if self.spec.container_bridge {
            ns.ip(&["link", "add", "docker0", "type", "bridge"]);
            ns.ip(&["addr", "add", &format!("{bridge_ip}/24"), "dev", "docker0"]);
            ns.ip(&["link", "set", "docker0", "up"]);
        }
        let containers_here = if self.spec.container_bridge { self.spec.containers_per_host } else { 0 };
        for j in 1..=containers_here {
            let name = format!("{}-h{i}c{j}", self.id);
            let cns = Netns::create(&name);
            let veth = format!("vc{j}");
            run_ok(Command::new("ip").args([
                "link", "add", "name", "eth0", "netns", &cns.name, "type", "veth", "peer", "name", &veth,
                "netns", &ns.name,
            ]));
            ns.ip(&["link", "set", &veth, "master", "docker0", "mtu", &mtu, "up"]);
            let ip = Ipv4Addr::new(10, 244, i as u8, 1 + j as u8);
            cns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            cns.ip(&["link", "set", "eth0", "mtu", &mtu, "up"]);
            cns.ip(&["route", "add", "default", "via", &bridge_ip.to_string()]);
            containers.push(Container { name, ns: cns, ip });
        }
        Host {
            index: i,
            ns,
            public_ip,
            subnet: format!("10.244.{i}.0/24"),
            bridge_ip,
            switch_port: port,
            containers,
            config_path: self.dir.join(format!("h{i}.toml")),
            pin_dir: self.pin_root.join(format!("h{i}")),
            log_path: self.dir.join(format!("h{i}.log")),
            subnet_file: self.dir.join(format!("h{i}.subnet.env")),
            agent: None,
            relay: None,
            frr: None,
            bird: None,
        }
    }

    /// Starts FRR (zebra + ospfd) on host `i`: OSPF on its segment, xnet's announcement
    /// redistributed.
    pub fn start_frr(&mut self, i: usize) {
        let h = self.host(i);
        let segment = if self.on_second_segment(i) { SEGMENT_B } else { "198.18.0.0/24" };
        let conf = crate::frr::OspfConfig {
            router_id: &h.public_ip.to_string(),
            networks: &[segment],
            overlay: Some(self.spec.network),
        }
        .render();
        let frr = crate::frr::Frr::start_ospf(&h.ns, &self.dir.join(format!("h{i}-frr")), &conf);
        self.hosts[i - 1].frr = Some(frr);
    }

    /// Stops host `i`'s FRR (zebra removes the routes it installed).
    pub fn stop_frr(&mut self, i: usize) {
        if let Some(mut frr) = self.hosts[i - 1].frr.take() {
            frr.stop();
        }
    }

    /// Starts FRR on the router: OSPF on both segments.
    pub fn start_router_frr(&mut self) {
        let router = self.router.as_mut().expect("a lab with a second segment");
        let conf = crate::frr::OspfConfig {
            router_id: ROUTER_IPS[0],
            networks: &["198.18.0.0/24", SEGMENT_B],
            overlay: None,
        }
        .render();
        router.frr = Some(crate::frr::Frr::start_ospf(&router.ns, &self.dir.join("router-frr"), &conf));
    }

    /// Starts BIRD on host `i`: iBGP to the router's reflector (see [`crate::bird::host_bgp_config`]).
    pub fn start_bird(&mut self, i: usize) {
        let h = self.host(i);
        let reflector = if self.on_second_segment(i) { ROUTER_IPS[1] } else { ROUTER_IPS[0] };
        let conf = crate::bird::host_bgp_config(&h.public_ip.to_string(), reflector, self.spec.network);
        let bird = crate::bird::Bird::start(&h.ns, &self.dir.join(format!("h{i}-bird")), &conf);
        self.hosts[i - 1].bird = Some(bird);
    }

    /// Starts BIRD on the router: a BGP route reflector for every host.
    pub fn start_router_bird(&mut self) {
        let clients: Vec<String> = self.hosts.iter().map(|h| h.public_ip.to_string()).collect();
        let router = self.router.as_mut().expect("a lab with a second segment");
        let conf = crate::bird::reflector_config(ROUTER_IPS[0], &clients);
        router.bird = Some(crate::bird::Bird::start(&router.ns, &self.dir.join("router-bird"), &conf));
    }

    /// The routes in host `i`'s datapath (`xnet routes`).
    pub fn routes(&self, i: usize) -> Vec<inspect::RouteRow> {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        inspect::read_routes(&self.host(i).pin_dir, now).unwrap_or_default()
    }

    /// The config file of host `i` (1-based): every other host is a peer (or, with
    /// [`LabSpec::routes`], the routes store; with [`LabSpec::etcd`], etcd).
    pub fn config_text(&self, i: usize) -> String {
        let h = self.host(i);
        // What every store has: this host's own settings.
        let metrics =
            if self.spec.metrics { format!("metrics_addr = \"{METRICS_ADDR}\"\n") } else { String::new() };
        let local = format!(
            "iface = \"eth0\"\npublic_ip = \"{}\"\ncontainer_ifaces = [\"{}\"]\npin_dir = \"{}\"\n\
             subnet_file = \"{}\"\n{metrics}",
            h.public_ip,
            self.spec.container_iface,
            h.pin_dir.display(),
            h.subnet_file.display(),
        );
        let overlay = format!("network = \"{}\"\nsubnet = \"{}\"\n", self.spec.network, h.subnet);
        if let Some(r) = &self.spec.routes {
            let untunnelled = if r.untunnelled_any { "untunnelled = \"any\"\n" } else { "" };
            let routers = if r.routers {
                format!("routers = [\"{}\", \"{}\"]\n", ROUTER_IPS[0], ROUTER_IPS[1])
            } else {
                String::new()
            };
            return format!(
                "{overlay}{local}\n[backend]\ntype = \"{}\"\ningress = \"{}\"\n{untunnelled}\n[routes]\n\
                 protocols = {}\nbehind_router = \"{}\"\n{routers}",
                self.spec.backend, self.spec.ingress, r.protocols, r.behind_router,
            );
        }
        if self.spec.etcd {
            return format!(
                "{local}\n[backend]\ningress = \"{}\"\n\n[etcd]\nendpoints = [{}]\nlease_ttl = {}\n",
                self.spec.ingress,
                self.etcd.iter().map(|e| format!("\"{}\"", e.endpoint)).collect::<Vec<_>>().join(", "),
                self.spec.lease_ttl
            );
        }
        let backend = self.spec.host_backends.get(i - 1).copied().unwrap_or(self.spec.backend);
        // `port` is the VXLAN port here; it applies where VXLAN is the format or direct's fallback.
        let port = if matches!(backend, "vxlan" | "direct") {
            format!("port = {}\n", self.spec.port)
        } else {
            String::new()
        };
        let key = self.spec.gre_key.map_or(String::new(), |k| format!("key = {k}\n"));
        let mut s = format!(
            "{overlay}{local}\n[backend]\ntype = \"{backend}\"\nvni = {}\n{port}{key}ingress = \"{}\"\n",
            self.spec.vni, self.spec.ingress
        );
        for p in self.hosts.iter().filter(|p| p.index != i) {
            s += &format!("\n[[peer]]\nsubnet = \"{}\"\npublic_ip = \"{}\"\n", p.subnet, p.public_ip);
        }
        s
    }

    /// (Re)writes host `i`'s config file from the current lab.
    pub fn write_config(&self, i: usize) {
        fs::write(&self.host(i).config_path, self.config_text(i)).expect("write config");
    }

    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i - 1]
    }

    /// Starts host `i`'s agent (`xnet run --config ... extra_args`) and waits until it is ready.
    pub fn start_agent(&mut self, i: usize, extra_args: &[&str]) {
        self.start_agent_with_env(i, extra_args, &[]);
    }

    /// [`Lab::start_agent`] with `env` added to the agent's environment.
    pub fn start_agent_with_env(&mut self, i: usize, extra_args: &[&str], env: &[(&str, &str)]) {
        let h = &mut self.hosts[i - 1];
        assert!(h.agent.is_none(), "agent of host {i} already runs");
        let log = fs::OpenOptions::new().create(true).append(true).open(&h.log_path).expect("log file");
        let ready_before = fs::read_to_string(&h.log_path).unwrap_or_default().matches("xnet ready").count();
        let mut cmd = h.ns.command(xnet_bin().to_str().expect("utf-8 path"));
        cmd.args(["run", "--config"]).arg(&h.config_path).args(extra_args);
        cmd.env("RUST_LOG", "info").env_remove("NOTIFY_SOCKET").envs(env.iter().copied());
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log);
        let mut child = cmd.spawn().expect("spawn xnet");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = fs::read_to_string(&h.log_path).unwrap_or_default();
            if text.matches("xnet ready").count() > ready_before {
                break;
            }
            if let Some(status) = child.try_wait().expect("wait") {
                panic!("xnet on host {i} exited ({status}) before it was ready:\n{text}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("xnet on host {i} not ready after 30 s:\n{text}");
            }
            // Often enough that the bench's start-up figures are not a poll interval late.
            std::thread::sleep(Duration::from_millis(5));
        }
        h.agent = Some(child);
        self.apply_container_mtu(i);
        self.wire_into(i);
    }

    /// What Docker does with subnet.env: the containers of host `i` get the agent's `XNET_MTU`.
    pub fn apply_container_mtu(&self, i: usize) {
        let h = self.host(i);
        let env =
            fs::read_to_string(&h.subnet_file).unwrap_or_else(|e| panic!("subnet.env of host {i}: {e}"));
        let mtu = env
            .lines()
            .find_map(|l| l.strip_prefix("XNET_MTU="))
            .unwrap_or_else(|| panic!("no XNET_MTU in subnet.env of host {i}:\n{env}"))
            .parse()
            .expect("XNET_MTU is a number");
        self.set_container_mtu(i, mtu);
    }

    /// Sets the MTU of host `i`'s bridge, container interfaces and their host-side peers.
    pub fn set_container_mtu(&self, i: usize, mtu: u32) {
        let h = self.host(i);
        let mtu = mtu.to_string();
        for (j, c) in h.containers.iter().enumerate() {
            h.ns.ip(&["link", "set", &format!("vc{}", j + 1), "mtu", &mtu]);
            c.ns.ip(&["link", "set", "eth0", "mtu", &mtu]);
        }
        // Without the lab's bridge (CNI labs) the pods' plugin sets the MTU.
        if self.spec.container_bridge {
            h.ns.ip(&["link", "set", "docker0", "mtu", &mtu]);
        }
    }

    /// Host `i`'s route index as the programs see it: whether CONFIG switches it on, and the
    /// subnet numbers (entries of ROUTE_INDEX) that hold a route.
    pub fn route_index(&self, i: usize) -> (bool, Vec<u32>) {
        use aya::maps::{Array, Map, MapData};
        use xnet_common::maps::{DatapathConfig, ROUTE_INDEX_LEN, RemoteSubnet};
        let pin_dir = &self.host(i).pin_dir;
        let config = MapData::from_pin(pin_dir.join("CONFIG")).expect("pinned CONFIG");
        let config: Array<MapData, DatapathConfig> = Array::try_from(Map::Array(config)).expect("array");
        let on = config.get(&0, 0).expect("CONFIG[0]").route_index_on();
        let index = MapData::from_pin(pin_dir.join("ROUTE_INDEX")).expect("pinned ROUTE_INDEX");
        let index: Array<MapData, RemoteSubnet> = Array::try_from(Map::Array(index)).expect("array");
        let used = (0..ROUTE_INDEX_LEN).filter(|n| index.get(n, 0).is_ok_and(|r| !r.is_empty())).collect();
        (on, used)
    }

    /// The process id of host `i`'s agent, if it runs.
    pub fn agent_pid(&self, i: usize) -> Option<u32> {
        self.host(i).agent.as_ref().map(Child::id)
    }

    /// Runs `xnet run` with host `i`'s config in its namespace, to its end (a start that must be
    /// refused), with `env` added to its environment.
    pub fn run_agent_to_end(&self, i: usize, env: &[(&str, &str)]) -> std::process::Output {
        let h = self.host(i);
        let mut cmd = h.ns.command(xnet_bin().to_str().expect("utf-8 path"));
        cmd.args(["run", "--config"]).arg(&h.config_path).envs(env.iter().copied());
        cmd.output().expect("run xnet")
    }

    /// Whether host `i`'s agent was started and not stopped since.
    pub fn is_running(&self, i: usize) -> bool {
        self.hosts[i - 1].agent.is_some()
    }

    /// Stops host `i`'s agent with SIGTERM and returns its exit status.
    pub fn stop_agent(&mut self, i: usize) -> ExitStatus {
        let child = self.hosts[i - 1].agent.take().expect("agent running");
        let status = stop_child(child);
        self.wire_into(i);
        status
    }

    /// Kills host `i`'s agent with SIGKILL (a crash: no teardown, the pinned datapath stays) and
    /// reaps it.
    pub fn kill_agent(&mut self, i: usize) -> ExitStatus {
        let mut child = self.hosts[i - 1].agent.take().expect("agent running");
        child.kill().expect("SIGKILL the agent");
        child.wait().expect("wait")
    }

    /// Cuts host `i` off from etcd, both ways, with firewall rules inside its namespace only (a
    /// route alone would still let an established watch receive): connections stall as on a real
    /// partition. The rules go with the namespace.
    pub fn cut_off_from_etcd(&self, i: usize) {
        self.etcd_rules(i, "-I");
    }

    /// Undoes [`Lab::cut_off_from_etcd`].
    pub fn reconnect_to_etcd(&self, i: usize) {
        self.etcd_rules(i, "-D");
    }

    fn etcd_rules(&self, i: usize, action: &str) {
        let hosts = self.etcd.iter().map(|e| {
            let rest = e.endpoint.split_once("://").map_or(e.endpoint.as_str(), |(_, r)| r);
            rest.split(':').next().unwrap_or(rest).to_string()
        });
        for member in hosts {
            for (chain, side) in [("INPUT", "-s"), ("OUTPUT", "-d")] {
                run_ok(
                    self.host(i)
                        .ns
                        .command("iptables")
                        .args(["-w", action, chain, side, &member, "-j", "DROP"]),
                );
            }
        }
    }

    /// Deletes container `c` of host `h` (its bridge port and its namespace), as `docker rm`
    /// would. Only a host's last container: the others keep their names and ports.
    pub fn delete_container(&mut self, (h, c): (usize, usize)) {
        let host = &mut self.hosts[h - 1];
        assert_eq!(c, host.containers.len(), "only the last container of host {h} can be deleted");
        host.ns.ip(&["link", "del", &format!("vc{c}")]);
        // Its namespace goes with it (Netns::drop).
        host.containers.pop();
    }

    /// Runs `xnet args...` to completion inside host `i`'s namespace (the agent's own view of the
    /// host), e.g. a second `run` or `stats`.
    pub fn xnet(&self, i: usize, args: &[&str]) -> std::process::Output {
        self.host(i)
            .ns
            .command(xnet_bin().to_str().expect("utf-8 path"))
            .args(args)
            .output()
            .expect("run xnet")
    }

    /// `GET path` from `addr` inside host `i`'s namespace; the response body.
    pub fn http_get(&self, i: usize, addr: &str, path: &str) -> String {
        let (addr, path) = (addr.to_string(), path.to_string());
        self.host(i)
            .ns
            .spawn(move || {
                let mut conn = TcpStream::connect(&addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
                conn.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
                write!(conn, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                    .expect("send");
                let mut resp = String::new();
                conn.read_to_string(&mut resp).expect("read response");
                let (head, body) = resp.split_once("\r\n\r\n").expect("HTTP response");
                assert!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
                body.to_string()
            })
            .join()
            .expect("http thread")
    }

    /// The agent log of host `i`.
    pub fn log(&self, i: usize) -> String {
        fs::read_to_string(&self.host(i).log_path).unwrap_or_default()
    }

    /// Pings `to` once from container `from` (host, container; 1-based). True if answered.
    pub fn ping(&self, from: (usize, usize), to: Ipv4Addr) -> bool {
        self.container(from)
            .ns
            .command("ping")
            .args(["-c", "1", "-W", "2", "-q", &to.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub fn container(&self, (h, c): (usize, usize)) -> &Container {
        &self.host(h).containers[c - 1]
    }

    /// Every container as (host, container) pairs.
    pub fn all_containers(&self) -> Vec<(usize, usize)> {
        self.hosts.iter().flat_map(|h| (1..=h.containers.len()).map(move |c| (h.index, c))).collect()
    }

    /// Sends `bytes` bytes over one TCP connection from container `from` to container `to` and
    /// checks that exactly those bytes arrived. Returns the time the transfer took.
    pub fn tcp_transfer(&self, from: (usize, usize), to: (usize, usize), bytes: usize) -> Duration {
        let (took, _) = self.tcp_transfer_between(&self.container(from).ns, to, bytes, &format!("{from:?}"));
        took
    }

    /// Sends `bytes` over TCP from host `from`'s own network stack to container `to`; returns how
    /// long it took and the source address the container saw.
    pub fn tcp_from_host(&self, from: usize, to: (usize, usize), bytes: usize) -> (Duration, Ipv4Addr) {
        self.tcp_transfer_between(&self.host(from).ns, to, bytes, &format!("host {from}"))
    }

    /// Pings `to` from host `i`'s own network stack (3 packets, 1 s timeout each).
    pub fn ping_from_host(&self, i: usize, to: Ipv4Addr) -> bool {
        self.host(i)
            .ns
            .command("ping")
            .args(["-c", "3", "-i", "0.2", "-W", "1", "-q", &to.to_string()])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn tcp_transfer_between(
        &self,
        from_ns: &Netns,
        to: (usize, usize),
        bytes: usize,
        from: &str,
    ) -> (Duration, Ipv4Addr) {
        let port = 20000 + PORT_COUNTER.fetch_add(1, Ordering::SeqCst) % 20000;
        let dst_ip = self.container(to).ip;
        let (ready_tx, ready_rx) = mpsc::channel();
        let server = self.container(to).ns.spawn(move || {
            let listener = TcpListener::bind(("0.0.0.0", port)).expect("bind");
            ready_tx.send(()).expect("ready");
            listener.set_nonblocking(false).expect("blocking");
            let (mut conn, peer) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let mut buf = vec![0u8; 1 << 16];
            let (mut n, mut hash) = (0usize, Fnv::new());
            loop {
                match conn.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => {
                        hash.update(&buf[..k]);
                        n += k;
                    }
                    Err(e) => panic!("receiving on {dst_ip}:{port} after {n} bytes: {e}"),
                }
            }
            (n, hash.0, peer)
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("server did not start");
        let start = Instant::now();
        let client = from_ns.spawn(move || {
            let mut conn =
                TcpStream::connect_timeout(&SocketAddrV4::new(dst_ip, port).into(), Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connect to {dst_ip}:{port}: {e}"));
            conn.set_write_timeout(Some(Duration::from_secs(30))).expect("timeout");
            let mut hash = Fnv::new();
            let mut sent = 0;
            let chunk: Vec<u8> = (0..1 << 16).map(|i: usize| (i.wrapping_mul(31) ^ (i >> 8)) as u8).collect();
            while sent < bytes {
                let k = chunk.len().min(bytes - sent);
                conn.write_all(&chunk[..k]).unwrap_or_else(|e| panic!("sending to {dst_ip}:{port}: {e}"));
                hash.update(&chunk[..k]);
                sent += k;
            }
            conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
            hash.0
        });
        let sent_hash = client.join().expect("client thread panicked");
        let (received, received_hash, peer) = server.join().expect("server thread panicked");
        let took = start.elapsed();
        assert_eq!(received, bytes, "TCP {from} -> {to:?}: bytes received");
        assert_eq!(received_hash, sent_hash, "TCP {from} -> {to:?}: content differs");
        let std::net::SocketAddr::V4(peer) = peer else {
            panic!("TCP {from} -> {to:?}: an IPv6 peer {peer}")
        };
        (took, *peer.ip())
    }

    /// Counters of host `i`'s datapath.
    pub fn counters(&self, i: usize) -> Vec<CounterRow> {
        inspect::read_counters(&self.host(i).pin_dir).expect("read counters")
    }

    /// One counter of host `i`: (packets, bytes).
    pub fn counter(&self, i: usize, direction: &str, outcome: &str) -> (u64, u64) {
        self.counters(i)
            .into_iter()
            .find(|r| r.direction == direction && r.outcome == outcome)
            .map(|r| (r.packets, r.bytes))
            .unwrap_or_else(|| panic!("no counter {direction}/{outcome}"))
    }

    /// Plain routing between the hosts (flannel's host-gw, a static route per peer): the baseline
    /// with no overlay at all. For labs started without agents.
    pub fn setup_plain_routing(&self) {
        for h in &self.hosts {
            sysctl(&h.ns, "net.ipv4.ip_forward", "1");
            for p in self.hosts.iter().filter(|p| p.index != h.index) {
                h.ns.ip(&["route", "replace", &p.subnet, "via", &p.public_ip.to_string(), "dev", "eth0"]);
            }
        }
    }

    /// Makes the underlay behave like a wire between NICs: the switch segments what it sends to
    /// each host (no TSO or GSO on its ports), so frames of the underlay's MTU arrive, and each
    /// host's `eth0` runs GRO on them (a veth does GRO once it is turned on, as a NIC's driver
    /// does). A veth otherwise hands a GSO packet of up to 64 KB across whole, which no wire does.
    pub fn wire_like_nics(&self) {
        let ethtool = |ns: &Netns, args: &[&str]| {
            let status = ns
                .command("ethtool")
                .args(args)
                .status()
                .expect("run ethtool (cargo xtask setup installs it)");
            assert!(status.success(), "ethtool {args:?} in {} failed", ns.name);
        };
        for h in &self.hosts {
            ethtool(&self.switch, &["-K", &h.switch_port, "tso", "off", "gso", "off"]);
            ethtool(&h.ns, &["-K", "eth0", "gro", "on"]);
        }
    }

    /// The switch and the router stand for the hosts' NICs and the wire between them. A NIC's TSO
    /// takes a GSO packet whole and cuts it in hardware, and the receiving NIC's GRO builds packets
    /// up to its host's `gro_ipv4_max_size` again: so the lab's router and the switch's ports to it
    /// carry packets as large as their drivers take (BIG TCP), and the switch's port into each host
    /// carries what that host's `eth0` lets GRO build ([`Lab::wire_into`]): 64 KB, until an agent
    /// raises it or [`Lab::allow_big_tcp`] does.
    fn wire_takes_big_packets(&self) {
        let host_ports: Vec<String> = self.hosts.iter().map(|h| h.switch_port.clone()).collect();
        let ceiling = |l: &xnet::netlink::LinkInfo| l.tso_max.filter(|t| *t > 65_536);
        let name = self.switch.name.clone();
        let set = self
            .switch
            .spawn(move || sizes_here(|l| if host_ports.contains(&l.name) { None } else { ceiling(l) }))
            .join()
            .expect("BIG TCP thread");
        set.unwrap_or_else(|e| panic!("BIG TCP on the wire in {name}: {e}"));
        if let Some(r) = &self.router {
            let set = r.ns.spawn(move || sizes_here(ceiling)).join().expect("BIG TCP thread");
            set.unwrap_or_else(|e| panic!("BIG TCP in the router: {e}"));
        }
    }

    /// Sets the switch's port into host `i` to what host `i`'s `eth0` lets GRO build (see
    /// [`Lab::wire_takes_big_packets`]).
    pub fn wire_into(&self, i: usize) {
        let h = self.host(i);
        let (_, gro) = Lab::ipv4_gso_gro(&h.ns, "eth0");
        let port = h.switch_port.clone();
        let set = self
            .switch
            .spawn(move || sizes_here(|l| (l.name == port).then_some(gro.max(65_536))))
            .join()
            .expect("BIG TCP thread");
        set.unwrap_or_else(|e| panic!("the switch's port into host {i}: {e}"));
    }

    /// The IPv4 GSO and GRO sizes (`gso_ipv4_max_size`, `gro_ipv4_max_size`) of `link` in `ns`.
    pub fn ipv4_gso_gro(ns: &Netns, link: &str) -> (u32, u32) {
        let name = link.to_string();
        let read = ns.spawn(move || -> Result<(u32, u32), String> {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let netlink = xnet::netlink::Netlink::requests_only().map_err(|e| e.to_string())?;
                let link = netlink.link(&name).await.map_err(|e| e.to_string())?.ok_or("no such link")?;
                Ok((link.gso_ipv4_max.unwrap_or(0), link.gro_ipv4_max.unwrap_or(0)))
            })
        });
        let sizes = read.join().expect("netlink thread");
        sizes.unwrap_or_else(|e| panic!("GSO sizes of {link} in {}: {e}", ns.name))
    }

    /// Lets GSO and GRO packets of up to `bytes` (BIG TCP: IPv4 packets above 64 KB) through every
    /// veth and bridge of the lab: the containers', the hosts', the switch's and the router's
    /// (`gso_ipv4_max_size` and `gro_ipv4_max_size`, set over rtnetlink: the iproute2 6.1 here
    /// cannot). Other devices are left as they are (the kernel's vxlan devices, and the tunnels'
    /// fallback devices a loaded module puts in every namespace, take no more than 64 KB). Links
    /// created after the call keep the default.
    pub fn allow_big_tcp(&self, bytes: u32) {
        let mut spaces = vec![&self.switch];
        spaces.extend(self.router.iter().map(|r| &r.ns));
        for h in &self.hosts {
            spaces.push(&h.ns);
            spaces.extend(h.containers.iter().map(|c| &c.ns));
        }
        for ns in spaces {
            let name = ns.name.clone();
            let set = ns.spawn(move || sizes_here(|_| Some(bytes))).join().expect("BIG TCP thread");
            set.unwrap_or_else(|e| panic!("BIG TCP of {bytes} bytes in {name}: {e}"));
        }
    }

    /// One veth pair straight from container `a` to container `b` (`floor0` in each, MTU
    /// [`UNDERLAY_MTU`]), with a /32 route each way, so their traffic crosses no host at all: no
    /// bridge, no routing, no second veth, no tunnel. What two containers cost each other on this
    /// kernel with nothing in between, the floor under every way of joining them. For labs started
    /// without agents.
    pub fn setup_direct_veth(&self, a: (usize, usize), b: (usize, usize)) {
        let (ca, cb) = (self.container(a), self.container(b));
        let mtu = UNDERLAY_MTU.to_string();
        ca.ns.ip(&[
            "link",
            "add",
            "floor0",
            "mtu",
            &mtu,
            "type",
            "veth",
            "peer",
            "name",
            "floor0",
            "netns",
            &cb.ns.name,
        ]);
        for (from, to) in [(ca, cb), (cb, ca)] {
            from.ns.ip(&["link", "set", "floor0", "mtu", &mtu, "up"]);
            let (dst, src) = (format!("{}/32", to.ip), from.ip.to_string());
            from.ns.ip(&["route", "replace", &dst, "dev", "floor0", "src", &src]);
        }
    }

    /// Joins containers `a` and `b` through the lab's switch with no host in between: a veth from
    /// each container straight to a port of the switch's bridge (`floorsw` in the container), at
    /// `mtu`, and a route to the other container over it: the underlay alone, with none of the
    /// hosts' work. For labs started without agents.
    pub fn setup_underlay_only(&self, a: (usize, usize), b: (usize, usize), mtu: u32) {
        let mtu = mtu.to_string();
        for (n, (from, to)) in [(a, b), (b, a)].into_iter().enumerate() {
            let (from, to) = (self.container(from), self.container(to));
            let port = format!("floor{n}");
            self.cable_to_switch(&from.ns, "floorsw", &port);
            self.switch.ip(&["link", "set", &port, "master", "br0", "mtu", &mtu, "up"]);
            from.ns.ip(&["link", "set", "floorsw", "mtu", &mtu, "up"]);
            let (dst, src) = (format!("{}/32", to.ip), from.ip.to_string());
            from.ns.ip(&["route", "replace", &dst, "dev", "floorsw", "src", &src]);
        }
    }

    /// flannel's udp backend design on every host, through `xnet-udp-relay` (a re-implementation
    /// that lives next to the bench binaries): a TUN device `flannel0` holding the overlay network,
    /// a userspace relay per host, container MTU 1472. For labs started without agents.
    pub fn setup_udp_relay(&mut self) {
        let relay_bin = sibling_bin("xnet-udp-relay");
        let mtu = (UNDERLAY_MTU - xnet_common::wire::UDP_ENCAP_LEN as u32).to_string();
        for i in 1..=self.hosts.len() {
            let h = self.host(i);
            sysctl(&h.ns, "net.ipv4.ip_forward", "1");
            let mut cmd = h.ns.command(relay_bin.to_str().expect("utf-8 path"));
            cmd.args(["--tun", "flannel0", "--local", &h.public_ip.to_string()]);
            for p in self.hosts.iter().filter(|p| p.index != h.index) {
                cmd.arg("--peer").arg(format!("{}={}", p.subnet, p.public_ip));
            }
            let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("start relay");
            let mut ready = [0u8; 6];
            child.stdout.take().expect("stdout").read_exact(&mut ready).expect("relay ready");
            assert_eq!(&ready, b"ready\n");
            let tun_addr = format!("{}/16", h.subnet.replace("/24", ""));
            h.ns.ip(&["addr", "add", &tun_addr, "dev", "flannel0"]);
            h.ns.ip(&["link", "set", "flannel0", "mtu", &mtu, "up"]);
            self.set_container_mtu(i, mtu.parse().expect("number"));
            self.hosts[i - 1].relay = Some(child);
        }
    }

    /// The kernel's vxlan device set up the way flannel's vxlan backend does it (flannel.1: VNI,
    /// port, nolearning; per peer a permanent neighbour entry, an fdb entry and an onlink route), on
    /// every host. For labs started without agents.
    pub fn setup_kernel_vxlan(&self, vni: u32, port: u16) {
        for h in &self.hosts {
            self.setup_kernel_vxlan_on(h.index, vni, port);
        }
    }

    /// [`Lab::setup_kernel_vxlan`] on host `i` only, with every other host as a peer (whose VTEP MAC
    /// is xnet's default, so xnet hosts and kernel hosts agree).
    pub fn setup_kernel_vxlan_on(&self, i: usize, vni: u32, port: u16) {
        let h = self.host(i);
        let mtu = (UNDERLAY_MTU - VXLAN_OVERHEAD).to_string();
        sysctl(&h.ns, "net.ipv4.ip_forward", "1");
        h.ns.ip(&[
            "link",
            "add",
            "flannel.1",
            "type",
            "vxlan",
            "id",
            &vni.to_string(),
            "local",
            &h.public_ip.to_string(),
            "dev",
            "eth0",
            "dstport",
            &port.to_string(),
            "nolearning",
        ]);
        let mac = xnet::mac::Mac::from_ipv4(h.public_ip).to_string();
        h.ns.ip(&["link", "set", "flannel.1", "address", &mac, "mtu", &mtu, "up"]);
        let vtep_ip = h.subnet.replace("/24", "");
        h.ns.ip(&["addr", "add", &format!("{vtep_ip}/32"), "dev", "flannel.1"]);
        for p in self.hosts.iter().filter(|p| p.index != h.index) {
            let pmac = xnet::mac::Mac::from_ipv4(p.public_ip).to_string();
            let pvtep = p.subnet.replace("/24", "");
            h.ns.ip(&["neigh", "replace", &pvtep, "lladdr", &pmac, "dev", "flannel.1", "nud", "permanent"]);
            run_ok(Command::new("bridge").args([
                "-n",
                &h.ns.name,
                "fdb",
                "append",
                &pmac,
                "dev",
                "flannel.1",
                "dst",
                &p.public_ip.to_string(),
            ]));
            h.ns.ip(&["route", "replace", &p.subnet, "via", &pvtep, "dev", "flannel.1", "onlink"]);
        }
    }

    /// TCP throughput from container `from` to container `to` with iperf3 (`streams` parallel
    /// streams for `seconds`), in bit/s as the receiver counted it; client and server on CPUs of
    /// their own where there are two ([`Placement::Apart`]).
    pub fn iperf3(&self, from: (usize, usize), to: (usize, usize), seconds: u32, streams: u32) -> f64 {
        self.iperf3_placed(from, to, seconds, streams, Placement::Apart)
    }

    /// [`Lab::iperf3`] with the client and server placed as `placement` says.
    pub fn iperf3_placed(
        &self,
        from: (usize, usize),
        to: (usize, usize),
        seconds: u32,
        streams: u32,
        placement: Placement,
    ) -> f64 {
        self.iperf3_between(from, to, seconds, streams, placement, |v| {
            v["end"]["sum_received"]["bits_per_second"].as_f64()
        })
    }

    /// [`Lab::iperf3`] (pinned), and each second's bit/s as well, as the client sent them.
    pub fn iperf3_by_second(
        &self,
        from: (usize, usize),
        to: (usize, usize),
        seconds: u32,
        streams: u32,
    ) -> (f64, Vec<f64>) {
        self.iperf3_between(from, to, seconds, streams, Placement::Apart, |v| {
            let whole = v["end"]["sum_received"]["bits_per_second"].as_f64()?;
            let each: Option<Vec<f64>> =
                v["intervals"].as_array()?.iter().map(|i| i["sum"]["bits_per_second"].as_f64()).collect();
            Some((whole, each?))
        })
    }

    /// TCP from container `from` to container `to` ([`Lab::iperf3_run`]), `result` read out of the
    /// client's JSON.
    fn iperf3_between<T>(
        &self,
        from: (usize, usize),
        to: (usize, usize),
        seconds: u32,
        streams: u32,
        placement: Placement,
        result: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> T {
        let args = ["-t", &seconds.to_string(), "-P", &streams.to_string()].map(str::to_string);
        self.iperf3_run(&self.container(from).ns, &format!("{from:?}"), to, &args, placement, result)
    }

    /// TCP throughput with one stream for `seconds` from host `from`'s own network stack (through
    /// xnet0) to container `to`, in bit/s as the receiver counted it.
    pub fn iperf3_from_host(
        &self,
        from: usize,
        to: (usize, usize),
        seconds: u32,
        placement: Placement,
    ) -> f64 {
        let args = ["-t", &seconds.to_string(), "-P", "1"].map(str::to_string);
        let client = &self.host(from).ns;
        self.iperf3_run(client, &format!("host {from}"), to, &args, placement, |v| {
            v["end"]["sum_received"]["bits_per_second"].as_f64()
        })
    }

    /// 64-byte UDP datagrams from container `from` to container `to` as fast as iperf3 sends them
    /// for `seconds`: datagrams per second that arrived.
    pub fn udp_rate(&self, from: (usize, usize), to: (usize, usize), seconds: u32) -> f64 {
        let args = ["-u", "-l", "64", "-b", "0", "-t", &seconds.to_string()].map(str::to_string);
        self.iperf3_run(&self.container(from).ns, &format!("{from:?}"), to, &args, Placement::Apart, |v| {
            let sum = &v["end"]["sum"];
            Some((sum["packets"].as_f64()? - sum["lost_packets"].as_f64()?) / sum["seconds"].as_f64()?)
        })
    }

    /// An iperf3 server in container `to` and a client in the namespace `client` (named `from` in
    /// messages) with `client_args`; `result`
    /// reads the figure out of the client's JSON. The client is retried while the server starts
    /// (iperf3 reports a refused connection in its JSON, with exit status 0).
    ///
    /// With [`Placement::Apart`] on a machine with two or more CPUs, the client runs on CPU 0 and
    /// the server on CPU 1 (`iperf3 -A 0,1`). Left to the scheduler, the two sometimes share a CPU
    /// for a whole run: on a 2-CPU machine that cost plain routing 14% and xnet 16% of one
    /// stream's throughput, the kernel's vxlan nothing, so unpinned runs compare placements as
    /// much as datapaths.
    fn iperf3_run<T>(
        &self,
        client: &Netns,
        from: &str,
        to: (usize, usize),
        client_args: &[String],
        placement: Placement,
        result: impl Fn(&serde_json::Value) -> Option<T>,
    ) -> T {
        let pinned = placement == Placement::Apart && iperf3_pinned();
        let port = (20000 + PORT_COUNTER.fetch_add(1, Ordering::SeqCst) % 20000).to_string();
        let mut server = self
            .container(to)
            .ns
            .command("iperf3")
            .args(["-s", "-1", "-p", &port])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start iperf3 server (cargo xtask bench installs iperf3)");
        let dst = self.container(to).ip.to_string();
        let mut last_error = String::new();
        let mut figure = None;
        for _ in 0..50 {
            let o = client
                .command("iperf3")
                .args(["-c", &dst, "-p", &port, "-J"])
                .args(if pinned { &["-A", "0,1"][..] } else { &[] })
                .args(client_args)
                .output()
                .expect("run iperf3 client");
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            if let Some(x) = result(&v) {
                figure = Some(x);
                break;
            }
            last_error = format!("{} {}", v["error"], String::from_utf8_lossy(&o.stderr));
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = server.kill();
        let _ = server.wait();
        figure.unwrap_or_else(|| panic!("iperf3 {from} -> {to:?} gave no result: {last_error}"))
    }

    /// Request/response latency: `count` 64-byte UDP ping-pongs between two containers, one at a
    /// time; round-trip times in microseconds, sorted.
    pub fn udp_ping_pong(&self, from: (usize, usize), to: (usize, usize), count: usize) -> Vec<f64> {
        let port = 20000 + PORT_COUNTER.fetch_add(1, Ordering::SeqCst) % 20000;
        let dst = SocketAddrV4::new(self.container(to).ip, port);
        let (ready_tx, ready_rx) = mpsc::channel();
        let server = self.container(to).ns.spawn(move || {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", port)).expect("bind");
            sock.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            ready_tx.send(()).expect("ready");
            let mut buf = [0u8; 64];
            for _ in 0..count {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else { break };
                let _ = sock.send_to(&buf[..n], peer);
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("ping-pong server");
        let client = self.container(from).ns.spawn(move || {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", 0)).expect("bind");
            sock.connect(dst).expect("connect");
            sock.set_read_timeout(Some(Duration::from_secs(1))).expect("timeout");
            let mut rtts = Vec::with_capacity(count);
            let mut buf = [0u8; 64];
            for i in 0..count {
                let msg = [(i % 251) as u8; 64];
                let start = Instant::now();
                sock.send(&msg).expect("send");
                if sock.recv(&mut buf).is_ok() {
                    rtts.push(start.elapsed().as_secs_f64() * 1e6);
                }
            }
            rtts
        });
        let mut rtts = client.join().expect("ping-pong client");
        let _ = server.join();
        rtts.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        rtts
    }

    /// The names of the BPF programs host `i`'s agent holds loaded (its open program descriptors,
    /// as `/proc/<pid>/fdinfo` lists them), sorted; empty without an agent.
    pub fn agent_programs(&self, i: usize) -> Vec<String> {
        let Some(pid) = self.agent_pid(i) else { return Vec::new() };
        let ids: BTreeSet<u32> = fs::read_dir(format!("/proc/{pid}/fdinfo"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| fs::read_to_string(e.path()).ok())
            .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("prog_id:")?.trim().parse().ok()))
            .collect();
        let mut names: Vec<String> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .filter(|p| ids.contains(&p.id()))
            .map(|p| p.name_as_str().unwrap_or("?").to_string())
            .collect();
        names.sort();
        names
    }

    /// The BPF programs attached to host `i`'s interfaces (`eth0`, `docker0` and the containers'
    /// ports `vc<n>`), as "iface/hook:name" (asked from the kernel: TCX queries and the XDP program
    /// id of the link), in interface order.
    pub fn attached_programs(&self, i: usize) -> Vec<String> {
        use aya::programs::{SchedClassifier, TcAttachType};
        let ns = &self.host(i).ns;
        let links = run_ok(Command::new("ip").args(["-n", &ns.name, "-j", "link", "show"]));
        let links: serde_json::Value = serde_json::from_slice(&links.stdout).expect("ip -j link");
        let mut out: Vec<String> = Vec::new();
        let names: Vec<String> = links
            .as_array()
            .expect("array")
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .filter(|n| n != "lo")
            .collect();
        for link in links.as_array().expect("array") {
            if let Some(id) = link["xdp"]["prog"]["id"].as_u64() {
                let name = aya::programs::loaded_programs()
                    .filter_map(Result::ok)
                    .find(|p| p.id() as u64 == id)
                    .and_then(|p| p.name_as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("id {id}"));
                out.push(format!("{}/xdp:{name}", link["ifname"].as_str().unwrap_or("?")));
            }
        }
        let tcx = ns
            .spawn(move || {
                let mut out = Vec::new();
                for iface in &names {
                    for (hook, t) in
                        [("tcx-ingress", TcAttachType::Ingress), ("tcx-egress", TcAttachType::Egress)]
                    {
                        let (_, progs) = SchedClassifier::query_tcx(iface, t).expect("query tcx");
                        for p in progs {
                            out.push(format!("{iface}/{hook}:{}", p.name_as_str().unwrap_or("?")));
                        }
                    }
                }
                out
            })
            .join()
            .expect("tcx query thread");
        out.extend(tcx);
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(r) = &mut self.router {
            r.frr.take();
            r.bird.take();
        }
        for h in &mut self.hosts {
            h.frr.take();
            h.bird.take();
            if let Some(child) = h.agent.take() {
                stop_child(child);
            }
            if let Some(child) = h.relay.take() {
                stop_child(child);
            }
            if h.pin_dir.exists()
                && let Some(bin) = xnet_bin().to_str()
            {
                // In the host's namespace: the machine's own xnet0 and BIG TCP record are not the lab's.
                let _ =
                    h.ns.command(bin)
                        .arg("cleanup")
                        .arg("--pin-dir")
                        .arg(&h.pin_dir)
                        .arg("--subnet-file")
                        .arg(&h.subnet_file)
                        .output();
            }
        }
        // Namespaces go with the fields (Netns::drop); their interfaces and attachments with them.
        self.hosts.clear();
        self.router.take();
        self.etcd.clear();
        let _ = fs::remove_dir_all(&self.pin_root);
        if std::env::var_os("XNET_LAB_KEEP_LOGS").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A binary of this workspace built next to the running one (the bench's helpers).
fn sibling_bin(name: &str) -> PathBuf {
    near_exe(name).unwrap_or_else(|exe| {
        panic!("cannot find {name} near {}; build it: cargo build -p xnet-lab --bins", exe.display())
    })
}

fn sysctl(ns: &Netns, key: &str, value: &str) {
    run_ok(ns.command("sysctl").args(["-q", "-w", &format!("{key}={value}")]));
}

fn is_bpffs(path: &str) -> bool {
    let c = std::ffi::CString::new(path).expect("path");
    // SAFETY: statfs is plain data (integers); all zeros is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated and `st` a writable statfs, both alive for the call.
    (unsafe { libc::statfs(c.as_ptr(), &raw mut st) } == 0) && st.f_type == libc::BPF_FS_MAGIC
}

/// FNV-1a, to compare what was sent with what arrived.
pub(crate) struct Fnv(pub(crate) u64);
impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf29ce484222325)
    }
    pub(crate) fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 = (self.0 ^ *b as u64).wrapping_mul(0x100000001b3);
        }
    }
}

/// Raw frames seen on an interface (AF_PACKET, both directions) while the capture runs.
pub struct Capture {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Vec<Vec<u8>>>,
}

impl Capture {
    /// Starts capturing on `iface` inside `ns`; returns once the socket is bound.
    pub fn start(ns: &Netns, iface: &str) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let iface = iface.to_string();
        let stop2 = stop.clone();
        let handle = ns.spawn(move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2) call; the fd is owned right away.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
            assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
            // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            let cname = std::ffi::CString::new(iface.clone()).expect("iface");
            // SAFETY: NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
            assert!(ifindex != 0, "no interface {iface} to capture on");
            // SAFETY: sockaddr_ll is plain data; zero is a valid starting value.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: valid fd and a sockaddr_ll of the size passed.
            let rc = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    (&raw const sll).cast::<libc::sockaddr>(),
                    size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind AF_PACKET: {}", std::io::Error::last_os_error());
            let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
            // SAFETY: valid fd; option value is a timeval of the size passed.
            unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&raw const tv).cast::<libc::c_void>(),
                    size_of::<libc::timeval>() as u32,
                )
            };
            ready_tx.send(()).expect("ready");
            let mut frames = Vec::new();
            let mut buf = vec![0u8; 1 << 17];
            while !stop2.load(Ordering::SeqCst) {
                // SAFETY: buf is valid for writes of its length.
                let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    frames.push(buf[..n as usize].to_vec());
                }
            }
            // Frames that arrived before the stop but were not read yet still count.
            loop {
                // SAFETY: as above; MSG_DONTWAIT returns at once when the queue is empty.
                let n = unsafe {
                    libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT)
                };
                if n <= 0 {
                    break;
                }
                frames.push(buf[..n as usize].to_vec());
            }
            frames
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("capture did not start");
        Capture { stop, handle }
    }

    /// Stops the capture and returns the frames.
    pub fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().expect("capture thread panicked")
    }
}

/// Sets the IPv4 GSO and GRO sizes of the veths and bridges of the calling thread's network
/// namespace (veths first) to what `size` gives each (`None`: left as it is).
fn sizes_here(size: impl Fn(&xnet::netlink::LinkInfo) -> Option<u32>) -> Result<(), String> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let netlink = xnet::netlink::Netlink::requests_only().map_err(|e| e.to_string())?;
        let mut links = netlink.links().await.map_err(|e| e.to_string())?;
        links.retain(|l| matches!(l.kind.as_deref(), Some("veth" | "bridge")));
        links.sort_by_key(|l| l.kind.as_deref() == Some("bridge"));
        for link in links {
            let Some(bytes) = size(&link) else { continue };
            let set = netlink.set_ipv4_gso_gro(link.index, &link.name, (bytes, bytes)).await;
            set.map_err(|e| e.to_string())?;
        }
        Ok(())
    })
}
