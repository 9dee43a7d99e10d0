//! `cargo xtask demo`: simulated hosts with containers on this machine, real xnet agents, every
//! container pinging every container on the other hosts, every host (its own network stack)
//! pinging them too, a TCP transfer, the counters. Exits non-zero if anything failed; the lab is
//! torn down in every case.

use std::{process::Command, time::Instant};

use clap::Parser;
use xnet_lab::{
    lab::{Lab, LabSpec, METRICS_ADDR, xnet_bin},
    netns::Netns,
};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 3)]
    hosts: usize,
    #[arg(long, default_value_t = 2)]
    containers: usize,
    /// vxlan, udp (flannel's framing), gre or direct.
    #[arg(long, default_value = "vxlan", value_parser = ["vxlan", "udp", "gre", "direct"])]
    backend: String,
    /// Where routes come from: each host's config file, or a real etcd (flannel's schema) that the
    /// demo starts on the underlay.
    #[arg(long, default_value = "file", value_parser = ["file", "etcd"])]
    store: String,
}

fn main() {
    let args = Args::parse();
    assert!((2..=50).contains(&args.hosts), "--hosts must be between 2 and 50");
    assert!((1..=50).contains(&args.containers), "--containers must be between 1 and 50");
    println!(
        "xnet demo: {} hosts with {} containers each, backend {} between the hosts\n",
        args.hosts, args.containers, args.backend
    );
    let lab = Lab::start(LabSpec {
        hosts: args.hosts,
        containers_per_host: args.containers,
        metrics: true,
        backend: args.backend.clone().leak(),
        etcd: args.store == "etcd",
        ..LabSpec::default()
    });
    if let Some(etcd) = lab.etcd.first() {
        let config = etcd.get(xnet_lab::lab::ETCD_CONFIG_KEY).unwrap_or_default();
        println!("--- etcd at {}: {} = {config}", etcd.endpoint, xnet_lab::lab::ETCD_CONFIG_KEY);
        let leases = etcd.etcdctl(&["get", "/coreos.com/network/subnets/", "--prefix"]).unwrap_or_default();
        println!("leases, written by the agents (no peer is written by hand):\n{leases}");
    }
    for h in &lab.hosts {
        println!(
            "--- host {} (namespace {}, eth0 {}, docker0 {}), config {}:",
            h.index,
            h.ns.name,
            h.public_ip,
            h.bridge_ip,
            h.config_path.display()
        );
        println!("{}", lab.config_text(h.index));
    }

    let mut failures = 0;
    let mut pairs = 0;
    println!("--- ping every container from every container on the other hosts");
    for from in lab.all_containers() {
        let mut line = format!("{:<12} ->", lab.container(from).ip.to_string());
        for to in lab.all_containers() {
            if to.0 == from.0 {
                continue;
            }
            pairs += 1;
            let ok = lab.ping(from, lab.container(to).ip);
            failures += usize::from(!ok);
            line += &format!(" {} {}", lab.container(to).ip, if ok { "ok" } else { "FAILED" });
        }
        println!("{line}");
    }
    println!("{} of {pairs} pairs answered\n", pairs - failures);

    // Each host's own network stack reaches the overlay through the agent's host device (xnet0),
    // with the host's overlay address as the source.
    let (mut host_pairs, mut host_failures) = (0, 0);
    println!("--- ping every container on the other hosts from every host's own network stack (xnet0)");
    for h in &lab.hosts {
        let from = host_overlay_address(&h.ns).unwrap_or_else(|| format!("host {}", h.index));
        let mut line = format!("{from:<12} ->");
        for to in lab.all_containers() {
            if to.0 == h.index {
                continue;
            }
            host_pairs += 1;
            let ok = lab.ping_from_host(h.index, lab.container(to).ip);
            host_failures += usize::from(!ok);
            line += &format!(" {} {}", lab.container(to).ip, if ok { "ok" } else { "FAILED" });
        }
        println!("{line}");
    }
    println!("{} of {host_pairs} host-to-container pairs answered\n", host_pairs - host_failures);
    failures += host_failures;

    println!("--- TCP across hosts");
    for (from, to, mb) in [((1, 1), (2, 1), 64), ((2, 1), (1, 1), 64)] {
        let (a, b) = (lab.container(from).ip, lab.container(to).ip);
        let started = Instant::now();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lab.tcp_transfer(from, to, mb << 20)));
        match result {
            Ok(took) => println!(
                "{a} -> {b}: {mb} MiB in {:.2} s ({:.0} Mbit/s), content verified",
                took.as_secs_f64(),
                (mb as f64 * 8.0 * 1.048576) / took.as_secs_f64()
            ),
            Err(_) => {
                failures += 1;
                println!("{a} -> {b}: FAILED after {:.1} s", started.elapsed().as_secs_f64());
            }
        }
    }

    for h in &lab.hosts {
        println!("\n--- host {}: xnet stats --pin-dir {}", h.index, h.pin_dir.display());
        let out = Command::new(xnet_bin()).arg("stats").arg("--pin-dir").arg(&h.pin_dir).output();
        match out {
            Ok(o) => print!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            Err(e) => {
                failures += 1;
                println!("cannot run xnet stats: {e}");
            }
        }
    }
    let h1 = lab.host(1);
    for cmd in ["routes", "status"] {
        println!("\n--- host 1: xnet {cmd} --pin-dir {}", h1.pin_dir.display());
        match Command::new(xnet_bin()).arg(cmd).arg("--pin-dir").arg(&h1.pin_dir).output() {
            Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
            Ok(o) => {
                failures += 1;
                println!("FAILED: {}", String::from_utf8_lossy(&o.stderr));
            }
            Err(e) => {
                failures += 1;
                println!("cannot run xnet {cmd}: {e}");
            }
        }
    }
    println!("\n--- host 1: curl http://{METRICS_ADDR}/metrics (non-zero packet counters and gauges)");
    let metrics = lab.http_get(1, METRICS_ADDR, "/metrics");
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let zero_counter = is_zero_counter(line);
        if !zero_counter && !line.starts_with("xnet_bytes_total") {
            println!("{line}");
        }
    }
    drop(lab);
    if failures > 0 {
        eprintln!("\ndemo FAILED: {failures} check(s) failed");
        std::process::exit(1);
    }
    println!("\ndemo passed: every pair connected, hosts included; lab removed");
}

/// The address the agent gave the host device `xnet0` in namespace `ns` (the host's overlay
/// address, the source of what the host sends into the overlay), if it has one.
fn host_overlay_address(ns: &Netns) -> Option<String> {
    let out = ns.command("ip").args(["-4", "-o", "addr", "show", "dev", "xnet0"]).output();
    let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    // "5: xnet0    inet 10.244.1.0/32 scope global xnet0 ..."
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
}

fn is_zero_counter(line: &str) -> bool {
    line.starts_with("xnet_packets_total") && line.ends_with(" 0")
}
