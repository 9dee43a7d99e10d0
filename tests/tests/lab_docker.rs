//! Real Docker on the lab, from the first boot: the agents start on hosts with no container bridge
//! (etcd store), then a real `dockerd` per host starts with the values of that host's subnet.env
//! (`--bip=$XNET_SUBNET --mtu=$XNET_MTU`) and creates docker0; containers on different hosts ping
//! each other and exchange a 20 MB file with matching checksums; then dockerd is restarted (docker0
//! kept, as dockerd leaves it) and, on the other host, stopped with docker0 deleted and started
//! again (docker0 re-created): traffic works again each time without touching xnet.
//!
//! Needs dockerd, containerd, runc, docker-init, iptables and busybox-static (Debian: docker.io,
//! busybox-static, iptables). Set XNET_LAB_KEEP_LOGS=1 to keep the agents' and daemons' logs.

use std::{
    net::Ipv4Addr,
    process::Command,
    time::{Duration, Instant},
};

use xnet_lab::{
    docker::{self, Dockerd},
    lab::{Lab, LabSpec, wait_for},
};

/// The 20 MB file of the acceptance test, in MiB.
const FILE_MIB: u32 = 20;

/// Named steps and how long each took, printed at the end (and as they finish).
struct Steps {
    start: Instant,
    last: Instant,
    done: Vec<(String, Duration)>,
}

impl Steps {
    fn new() -> Steps {
        let now = Instant::now();
        Steps { start: now, last: now, done: Vec::new() }
    }

    fn mark(&mut self, what: &str) {
        let took = self.last.elapsed();
        self.last = Instant::now();
        eprintln!("[{:>6.2} s] {what}: {took:.2?}", self.start.elapsed().as_secs_f64());
        self.done.push((what.to_string(), took));
    }

    fn report(&self) {
        eprintln!("--- steps");
        for (what, took) in &self.done {
            eprintln!("{:>8.2} s  {what}", took.as_secs_f64());
        }
        eprintln!("{:>8.2} s  total", self.start.elapsed().as_secs_f64());
    }
}

/// The value of `key` in host `i`'s subnet.env.
fn env_value(lab: &Lab, i: usize, key: &str) -> String {
    docker::read_env_file(&lab.host(i).subnet_file)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no {key} in subnet.env of host {i}"))
}

/// docker0 of host `i`: (ifindex, "address/prefix" list, mtu), or None when it does not exist.
fn docker0(lab: &Lab, i: usize) -> Option<(u64, Vec<String>, u64)> {
    let out = Command::new("ip")
        .args(["-n", &lab.host(i).ns.name, "-j", "addr", "show", "dev", "docker0"])
        .output()
        .expect("run ip");
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j addr");
    let link = &v[0];
    let addrs = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect();
    Some((link["ifindex"].as_u64()?, addrs, link["mtu"].as_u64().unwrap_or(0)))
}

/// Whether the agent's egress program is attached to host `i`'s docker0.
fn attached_to_docker0(lab: &Lab, i: usize) -> bool {
    lab.attached_programs(i).iter().any(|p| p.starts_with("docker0/"))
}

/// Pings `ip` from container `name` until one answer comes (at most `limit`); how long it took.
fn first_ping(d: &Dockerd, lab: &Lab, name: &str, ip: Ipv4Addr, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let out =
            d.exec_within(name, &["ping", "-c", "1", "-W", "1", &ip.to_string()], Duration::from_secs(10));
        if out.is_some_and(|o| o.status.success()) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{name} (daemon {}) -> {ip}: no answer within {limit:?}\n--- agent logs:\n{}\n{}",
            d.name,
            docker::tail(&lab.log(1), 30),
            docker::tail(&lab.log(2), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `ping -c 3` from container `name` to `ip`, which must all be answered; ping's output.
fn ping3(d: &Dockerd, name: &str, ip: Ipv4Addr) -> String {
    let out = d.docker(&["exec", name, "ping", "-c", "3", "-i", "0.2", "-W", "2", &ip.to_string()]);
    assert!(out.contains("3 packets received"), "{name} -> {ip}:\n{out}");
    out
}

/// Sends a `FILE_MIB` MiB random file from container `from` (on daemon `a`) to container `to` (on
/// daemon `b`, at `to_ip`) with busybox nc and compares the sha256 sums; how long the transfer
/// took (making the file and the sums not included).
fn send_file(a: &Dockerd, from: &str, b: &Dockerd, to: &str, to_ip: Ipv4Addr) -> Duration {
    let count = format!("count={FILE_MIB}");
    a.docker(&["exec", from, "dd", "if=/dev/urandom", "of=/tmp/out", "bs=1M", &count]);
    let sent = a.docker(&["exec", from, "sha256sum", "/tmp/out"]);
    let _ = b.docker_within(&["exec", to, "rm", "-f", "/tmp/in"], Duration::from_secs(10));
    // busybox nc gives up when its standard input ends, so the receiving side hands the socket to
    // `cat` (-e) instead of reading its own stdin.
    let mut server = b
        .command()
        .args(["exec", to, "nc", "-l", "-p", "5000", "-e", "sh", "-c", "cat > /tmp/in"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker exec nc -l");
    wait_for(Duration::from_secs(15), "nc listens", || {
        b.docker_within(&["exec", to, "netstat", "-ltn"], Duration::from_secs(10))
            .is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(":5000 "))
    });
    let start = Instant::now();
    let script = format!("nc {to_ip} 5000 < /tmp/out");
    let client = a
        .exec_within(from, &["sh", "-c", &script], Duration::from_secs(60))
        .expect("nc client: not done within 60 s");
    assert!(client.status.success(), "nc client: {}", String::from_utf8_lossy(&client.stderr));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = server.try_wait().expect("wait nc server") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = server.kill();
            panic!("nc server in {to} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = start.elapsed();
    assert!(status.success(), "nc server in {to}: {status}");
    let received = b.docker(&["exec", to, "sha256sum", "/tmp/in"]);
    let size = b.docker(&["exec", to, "wc", "-c", "/tmp/in"]);
    let sum = |s: &str| s.split_whitespace().next().unwrap_or("").to_string();
    assert_eq!(sum(&received), sum(&sent), "{from} -> {to}: sha256 differs (received {size})");
    eprintln!(
        "{from} -> {to} ({to_ip}): {FILE_MIB} MiB in {took:.2?} ({:.0} Mbit/s), sha256 {} on both sides",
        f64::from(FILE_MIB) * 8.0 * 1.048_576 / took.as_secs_f64(),
        sum(&sent)
    );
    took
}

/// Packets that dockerd's MASQUERADE rule for host `i`'s subnet matched (the first packet of each
/// connection it would rewrite).
fn masqueraded(lab: &Lab, i: usize) -> u64 {
    let out = lab
        .host(i)
        .ns
        .command("iptables")
        .args(["-t", "nat", "-L", "POSTROUTING", "-v", "-n", "-x"])
        .output()
        .expect("run iptables");
    let text = String::from_utf8_lossy(&out.stdout);
    let subnet = format!("10.244.{i}.0/24");
    let rule = text
        .lines()
        .find(|l| l.contains("MASQUERADE") && l.contains(&subnet))
        .unwrap_or_else(|| panic!("host {i}: no MASQUERADE rule for {subnet} from dockerd:\n{text}"));
    eprintln!("host {i} nat POSTROUTING: {}", rule.split_whitespace().collect::<Vec<_>>().join(" "));
    rule.split_whitespace().next().and_then(|n| n.parse().ok()).expect("packet count")
}

/// Whether process `pid` is alive (and not a zombie).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
}

#[test]
fn docker_on_xnet_from_first_boot_and_across_dockerd_restarts() {
    let mut steps = Steps::new();
    let lab = Lab::start(LabSpec {
        hosts: 2,
        containers_per_host: 0,
        etcd: true,
        container_bridge: false,
        ..LabSpec::default()
    });
    steps.mark("lab, etcd and both agents ready (no docker0 on either host)");
    let agents: Vec<u32> = (1..=2).map(|i| lab.agent_pid(i).expect("agent runs")).collect();
    for i in 1..=2 {
        assert!(docker0(&lab, i).is_none(), "host {i} has a docker0 before dockerd started");
        eprintln!("--- host {i}: subnet.env\n{}", std::fs::read_to_string(&lab.host(i).subnet_file).unwrap());
        assert_eq!(env_value(&lab, i, "XNET_SUBNET"), format!("10.244.{i}.1/24"));
    }

    // dockerd with the subnet file's values, as packaging/systemd/docker.service.d/xnet.conf does.
    let mut daemons: Vec<Dockerd> = Vec::new();
    for i in 1..=2 {
        let args = [
            format!("--bip={}", env_value(&lab, i, "XNET_SUBNET")),
            format!("--mtu={}", env_value(&lab, i, "XNET_MTU")),
        ];
        let root = lab.dir.join(format!("docker-h{i}"));
        daemons.push(Dockerd::start(&lab.host(i).ns, root, &format!("{}-h{i}", lab.id), &args));
        steps.mark(&format!("dockerd on host {i} up ({})", daemons[i - 1].storage_driver.unwrap_or("?")));
    }
    for i in 1..=2 {
        let (_, addrs, _) = docker0(&lab, i).expect("dockerd created docker0");
        assert_eq!(addrs, [env_value(&lab, i, "XNET_SUBNET")], "docker0 of host {i} holds --bip");
        wait_for(Duration::from_secs(10), &format!("agent {i} attaches to the new docker0"), || {
            attached_to_docker0(&lab, i)
        });
    }
    steps.mark("both agents attached to the new docker0");
    for args in [&["-br", "link"][..], &["route"][..]] {
        let out = Command::new("ip").args(["-n", &lab.host(1).ns.name]).args(args).output().expect("ip");
        eprintln!("--- host 1: ip {}\n{}", args.join(" "), String::from_utf8_lossy(&out.stdout).trim_end());
    }
    for d in &daemons {
        d.import_busybox();
    }
    steps.mark("busybox image imported on both daemons");

    let (d1, d2) = (&daemons[0], &daemons[1]);
    d1.run_detached("c1", &[], &["sleep", "3600"]);
    d2.run_detached("c2", &[], &["sleep", "3600"]);
    let (ip1, ip2) = (d1.container_ip("c1"), d2.container_ip("c2"));
    eprintln!("c1 on host 1: {ip1}, c2 on host 2: {ip2}");
    assert_eq!(ip1.octets()[..3], [10, 244, 1], "c1 is in host 1's subnet");
    assert_eq!(ip2.octets()[..3], [10, 244, 2], "c2 is in host 2's subnet");
    steps.mark("containers c1 (host 1) and c2 (host 2) running");
    let (_, _, mtu) = docker0(&lab, 1).unwrap();
    let inside = d1.docker(&["exec", "c1", "ip", "-o", "link", "show", "eth0"]);
    eprintln!("host 1 docker0 mtu {mtu}; in c1: {inside}");
    assert!(
        inside.contains(&format!("mtu {}", env_value(&lab, 1, "XNET_MTU"))),
        "c1's MTU is XNET_MTU: {inside}"
    );

    let first = first_ping(d1, &lab, "c1", ip2, Duration::from_secs(15));
    eprintln!("first answer c1 -> c2 after {first:.2?}");
    eprintln!("{}", ping3(d1, "c1", ip2));
    ping3(d2, "c2", ip1);
    let run = d1.docker(&["run", "--rm", docker::BUSYBOX_IMAGE, "ping", "-c", "3", &ip2.to_string()]);
    eprintln!("--- host 1: docker run --rm {} ping -c 3 {ip2}\n{run}", docker::BUSYBOX_IMAGE);
    assert!(run.contains("3 packets received"), "{run}");
    steps.mark("ping across hosts, both ways (docker exec, docker run)");
    send_file(d1, "c1", d2, "c2", ip2);
    steps.mark(&format!("{FILE_MIB} MB file c1 -> c2, checksums match"));
    let (enc_pkts, enc_bytes) = lab.counter(1, "egress", "encap_vxlan");
    let (dec_pkts, dec_bytes) = lab.counter(2, "ingress", "decap_vxlan");
    eprintln!("host 1 egress encap_vxlan: {enc_pkts} packets, {enc_bytes} bytes");
    eprintln!("host 2 ingress decap_vxlan: {dec_pkts} packets, {dec_bytes} bytes");
    assert!(enc_pkts > 0 && enc_bytes > u64::from(FILE_MIB) << 20, "host 1 encapsulated the transfer");
    assert!(dec_pkts > 0 && dec_bytes > u64::from(FILE_MIB) << 20, "host 2 decapsulated the transfer");
    // dockerd's own rule (`-s <bip subnet> ! -o docker0 -j MASQUERADE`, --ip-masq is on by default)
    // would hide the containers' addresses if overlay traffic went through the host's stack.
    for i in 1..=2 {
        assert_eq!(masqueraded(&lab, i), 0, "host {i}: dockerd's MASQUERADE rule saw overlay traffic");
    }

    // dockerd restarted on host 2, as `systemctl restart docker` does; xnet is not touched.
    let before = docker0(&lab, 2).expect("docker0");
    let encap_before = lab.counter(2, "egress", "encap_vxlan").1;
    let (status, took) = daemons[1].stop();
    let after_stop = docker0(&lab, 2);
    eprintln!(
        "dockerd on host 2 stopped ({status}) in {took:.2?}; docker0 {}",
        match &after_stop {
            Some((idx, addrs, _)) if *idx == before.0 => format!("stays (ifindex {idx}, {addrs:?})"),
            Some((idx, _, _)) => format!("was re-created (ifindex {} -> {idx})", before.0),
            None => "is gone".to_string(),
        }
    );
    steps.mark("dockerd on host 2 stopped");
    daemons[1].start_again();
    steps.mark("dockerd on host 2 started again");
    let after_start = docker0(&lab, 2).expect("docker0 after the restart");
    eprintln!(
        "docker0 on host 2 after the restart: ifindex {} -> {}, {:?}",
        before.0, after_start.0, after_start.1
    );
    let (d1, d2) = (&daemons[0], &daemons[1]);
    let c2_state = d2.docker(&["inspect", "-f", "{{.State.Status}}", "c2"]);
    eprintln!("c2 after the restart: {c2_state}");
    d2.run_detached("c3", &[], &["sleep", "3600"]);
    let ip3 = d2.container_ip("c3");
    eprintln!("c3 on host 2: {ip3}");
    wait_for(Duration::from_secs(10), "agent 2 attached to docker0 after the restart", || {
        attached_to_docker0(&lab, 2)
    });
    let first = first_ping(d1, &lab, "c1", ip3, Duration::from_secs(15));
    eprintln!("first answer c1 -> c3 after {first:.2?}");
    ping3(d2, "c3", ip1);
    send_file(d2, "c3", d1, "c1", ip1);
    let encap_after = lab.counter(2, "egress", "encap_vxlan").1;
    assert!(encap_after - encap_before > u64::from(FILE_MIB) << 20, "host 2 encapsulated c3's file");
    steps.mark("after the restart: ping and file c3 -> c1");

    // dockerd on host 1 stopped, docker0 deleted (as a reboot or `ip link del docker0` leaves the
    // host), dockerd started again: it creates a new docker0, which the agent must take up.
    let before = docker0(&lab, 1).expect("docker0");
    daemons[0].stop();
    lab.host(1).ns.ip(&["link", "del", "docker0"]);
    daemons[0].start_again();
    let after = docker0(&lab, 1).expect("dockerd re-created docker0");
    eprintln!("host 1: docker0 deleted while dockerd was stopped; ifindex {} -> {}", before.0, after.0);
    assert_ne!(before.0, after.0);
    wait_for(Duration::from_secs(10), "agent 1 attaches to the re-created docker0", || {
        attached_to_docker0(&lab, 1)
    });
    let (d1, d2) = (&daemons[0], &daemons[1]);
    d1.run_detached("c4", &[], &["sleep", "3600"]);
    let ip4 = d1.container_ip("c4");
    let first = first_ping(d1, &lab, "c4", ip3, Duration::from_secs(15));
    eprintln!("first answer c4 -> c3 after {first:.2?}");
    ping3(d2, "c3", ip4);
    send_file(d1, "c4", d2, "c3", ip3);
    steps.mark("docker0 re-created on host 1: ping and file c4 -> c3");

    for (i, pid) in agents.iter().enumerate() {
        assert_eq!(lab.agent_pid(i + 1), Some(*pid), "agent {} was not restarted", i + 1);
        assert!(alive(*pid), "agent {} (pid {pid}) still runs\n{}", i + 1, lab.log(i + 1));
    }
    eprintln!("agents untouched: pids {agents:?} still running");
    for i in 1..=2 {
        let log = lab.log(i);
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains("container interface") || l.contains("awaiting")).collect();
        eprintln!("--- agent {i}, container interface lines:\n{}", lines.join("\n"));
    }
    drop(daemons);
    steps.mark("daemons removed");
    steps.report();
}
