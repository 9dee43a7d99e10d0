//! Per-packet cost of two builds of the programs, side by side in one run: both objects loaded
//! into one delivery namespace, set up alike, their rows measured in turns with the harness.
//!
//! `progcost_compare BEFORE.o AFTER.o [RUNS]` (as root; the objects as build.rs leaves them in
//! `target/debug/build/xnet-userspace-*/out/xnet`). Prints per program the instructions after the
//! verifier's rewrites and the instructions it processed; the floors under tc decapsulation with
//! delivery; and per row the net ns of each object (raw minus the empty program's). The rows take
//! turns in 200 rounds, the objects' order alternating, so a disturbance of the machine weighs on
//! both alike. With `XNET_PIN_DIR=DIR` the programs are pinned there instead of measured, for
//! `bpftool prog dump xlated pinned DIR/after_xnet_tc_ingress`; remove them afterwards.

use std::net::Ipv4Addr;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, LpmTrie, lpm_trie::Key},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use xnet::{
    cidr,
    clock::unix_now,
    config::{PeerConfig, Tunnel},
    datapath::{
        Program,
        sync::{self, Mirror, Op, Scope},
    },
    mac::Mac,
    plan::Plan,
    store::Overlay,
};
use xnet_common::maps::{
    Backend, Capacity, DatapathConfig, LocalPort, Peer, PeerSlot, RemoteSubnet, RouteEntry, Store,
};
use xnet_lab::progcost::{
    BRIDGE_MAC, CONTAINER_MAC, ContainerLookup, NullProgram, container_frame, in_delivery_netns,
    trimmed_mean, tunnelled_frame,
};

const PEERS: [(u8, Backend); 4] =
    [(2, Backend::Vxlan), (3, Backend::Udp), (4, Backend::Gre), (5, Backend::Direct)];

/// The map writes that set up host 198.18.0.1 as `progcost::Bench` does (route index on).
fn setup_ops() -> Vec<Op> {
    let local = Ipv4Addr::new(198, 18, 0, 1);
    let facts = xnet_lab::fixture::host_facts(local, "198.18.0.0/24");
    let overlay = Overlay {
        network: cidr::parse("10.244.0.0/16").unwrap(),
        subnet: cidr::parse("10.244.1.0/24").unwrap(),
        tunnel: Tunnel { kind: Backend::Vxlan, vni: 1, ..Tunnel::default() },
    };
    let peers: Vec<PeerConfig> = PEERS
        .iter()
        .map(|&(n, b)| {
            let ip = Ipv4Addr::new(198, 18, 0, n);
            PeerConfig {
                subnet: cidr::network(Ipv4Addr::new(10, 244, n, 0), 24).unwrap(),
                public_ip: ip,
                vtep_mac: Mac::from_ipv4(ip),
                backend: Some(b),
                protocol: None,
            }
        })
        .collect();
    let plan = Plan::new(facts, overlay, None, &peers).unwrap();
    let wanted = plan.wanted(Store::File, &peers);
    let config = plan.datapath_config(BRIDGE_MAC, &wanted);
    sync::diff(&Mirror::default(), &wanted, &config, &Scope::All, unix_now(), Capacity::default()).unwrap()
}

fn load(bytes: &[u8], ops: &[Op], port: u32) -> Ebpf {
    let mut ebpf = EbpfLoader::new().load(bytes).expect("load object");
    for p in Program::ALL {
        let prog = ebpf.program_mut(p.name()).unwrap();
        match p {
            Program::XdpIngress => {
                let x: &mut Xdp = prog.try_into().unwrap();
                x.load().unwrap()
            }
            _ => {
                let c: &mut SchedClassifier = prog.try_into().unwrap();
                c.load().unwrap()
            }
        }
    }
    for op in ops {
        match op {
            Op::Config(c) => {
                let mut m: Array<_, DatapathConfig> =
                    Array::try_from(ebpf.map_mut("CONFIG").unwrap()).unwrap();
                m.set(0, c.with_outer_templates(), 0).unwrap();
            }
            Op::PutPeer(ip, p) => {
                let mut m: HashMap<_, [u8; 4], Peer> =
                    HashMap::try_from(ebpf.map_mut("PEERS").unwrap()).unwrap();
                m.insert(ip, p, 0).unwrap();
            }
            Op::PutSlot(i, s) => {
                let mut m: Array<_, PeerSlot> = Array::try_from(ebpf.map_mut("PEER_SLOTS").unwrap()).unwrap();
                m.set(*i, s, 0).unwrap();
            }
            Op::PutRoute(n, r) => {
                let mut m: LpmTrie<_, [u8; 4], RouteEntry> =
                    LpmTrie::try_from(ebpf.map_mut("REMOTE_SUBNETS").unwrap()).unwrap();
                m.insert(&Key::new(u32::from(n.prefix()), n.network().octets()), r, 0).unwrap();
            }
            Op::PutIndex(i, r) => {
                let mut m: Array<_, RemoteSubnet> =
                    Array::try_from(ebpf.map_mut("ROUTE_INDEX").unwrap()).unwrap();
                m.set(*i, r, 0).unwrap();
            }
            other => panic!("unexpected op {other:?}"),
        }
    }
    let mut lp: HashMap<_, [u8; 6], LocalPort> =
        HashMap::try_from(ebpf.map_mut("LOCAL_PORTS").unwrap()).unwrap();
    lp.insert(CONTAINER_MAC, LocalPort::new(port), 0).unwrap();
    ebpf
}

fn skb(ifindex: u32) -> [u8; 192] {
    let mut skb = [0u8; 192];
    skb[36..40].copy_from_slice(&ifindex.to_ne_bytes());
    skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    skb
}

fn samples(ebpf: &mut Ebpf, program: Program, input: &[u8], n: usize, ifindex: u32) -> Vec<f64> {
    let mut out = vec![0u8; input.len() + 128];
    let ctx = skb(ifindex);
    (0..n)
        .map(|_| {
            let opts = TestRunOptions {
                data_in: Some(input),
                data_out: Some(&mut out),
                ctx_in: (program != Program::XdpIngress).then_some(&ctx[..]),
                ..TestRunOptions::new()
            };
            let p = ebpf.program_mut(program.name()).unwrap();
            let r = match program {
                Program::XdpIngress => {
                    let x: &mut Xdp = p.try_into().unwrap();
                    x.test_run(opts)
                }
                _ => {
                    let c: &mut SchedClassifier = p.try_into().unwrap();
                    c.test_run(opts)
                }
            }
            .unwrap();
            r.duration.as_nanos() as f64
        })
        .collect()
}

/// The peer of [`PEERS`] that sends with `backend`.
fn peer_of(backend: Backend) -> u8 {
    PEERS.iter().find(|(_, b)| *b == backend).map_or(2, |(n, _)| *n)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: progcost_compare BEFORE.o AFTER.o [RUNS (default 10000)]";
    let (Some(before), Some(after)) = (args.get(1), args.get(2)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let read = |path: &String| std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    let (before, after) = (read(before), read(after));
    let runs: usize = args.get(3).map_or(10_000, |r| r.parse().unwrap_or_else(|_| panic!("{usage}")));
    in_delivery_netns(move |underlay, port| {
        let ops = setup_ops();
        let mut objs = [load(&before, &ops, port), load(&after, &ops, port)];
        for (name, ebpf) in ["before", "after"].iter().zip(&mut objs) {
            for p in Program::ALL {
                let info = match p {
                    Program::XdpIngress => {
                        let x: &mut Xdp = ebpf.program_mut(p.name()).unwrap().try_into().unwrap();
                        x.info().unwrap()
                    }
                    _ => {
                        let c: &mut SchedClassifier = ebpf.program_mut(p.name()).unwrap().try_into().unwrap();
                        c.info().unwrap()
                    }
                };
                println!(
                    "{name:6} {:18} xlated {:5} insns, jited {:5} bytes, verifier processed {:6}",
                    p.name(),
                    info.size_translated().unwrap_or(0) / 8,
                    info.size_jitted(),
                    info.verified_instruction_count().unwrap_or(0)
                );
            }
        }
        // With XNET_PIN_DIR set: pin the programs there (for `bpftool prog dump xlated pinned`)
        // and stop; whoever set it removes the pins.
        if let Ok(dir) = std::env::var("XNET_PIN_DIR") {
            for (name, ebpf) in ["before", "after"].iter().zip(&mut objs) {
                for p in Program::ALL {
                    let path = format!("{dir}/{name}_{}", p.name());
                    ebpf.program_mut(p.name()).unwrap().pin(&path).unwrap();
                }
            }
            return;
        }
        let mut rows: Vec<(Program, String, Vec<u8>)> = Vec::new();
        for (n, b) in PEERS {
            rows.push((Program::TcEgress, format!("encap {}", b.name()), container_frame([10, 244, n, 7])));
        }
        rows.push((Program::TcEgress, "same-host (pass)".into(), container_frame([10, 244, 1, 9])));
        for (n, b) in [(2u8, Backend::Vxlan), (3, Backend::Udp), (4, Backend::Gre)] {
            rows.push((
                Program::TcIngress,
                format!("tc decap {} + delivery", b.name()),
                tunnelled_frame(n, b),
            ));
            rows.push((Program::XdpIngress, format!("xdp decap {}", b.name()), tunnelled_frame(n, b)));
        }
        let nulls: Vec<NullProgram> = rows.iter().map(|(p, ..)| NullProgram::like(*p).unwrap()).collect();
        // Warm up, then 200 rounds: each row runs one object, the harness, the other in turn.
        for ((p, _, input), null) in rows.iter().zip(&nulls) {
            for ebpf in &mut objs {
                samples(ebpf, *p, input, 1000, underlay);
            }
            null.samples(input, 1000, Some(underlay));
        }
        let rounds = 200;
        let slice = runs.div_ceil(rounds);
        let mut got = vec![(Vec::new(), Vec::new(), Vec::new()); rows.len()];
        for round in 0..rounds {
            for (((p, _, input), null), (a, h, b)) in rows.iter().zip(&nulls).zip(&mut got) {
                // Which object goes first alternates between rounds.
                let (first, second) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
                let s1 = samples(&mut objs[first], *p, input, slice, underlay);
                h.extend(null.samples(input, slice, Some(underlay)));
                let s2 = samples(&mut objs[second], *p, input, slice, underlay);
                if first == 0 {
                    a.extend(s1);
                    b.extend(s2);
                } else {
                    a.extend(s2);
                    b.extend(s1);
                }
            }
        }
        // The floors, measured in the same run: the helpers alone on each tunnel's frame, and on
        // the vxlan frame with the container found by a hash lookup or by an array read.
        let floors = [
            ("helpers only, vxlan frame", NullProgram::decap_helpers(port).unwrap(), Backend::Vxlan),
            ("helpers only, udp frame", NullProgram::decap_helpers(port).unwrap(), Backend::Udp),
            ("helpers only, gre frame", NullProgram::decap_helpers(port).unwrap(), Backend::Gre),
            (
                "helpers + hash lookup",
                NullProgram::decap_helpers_and_lookup(port, ContainerLookup::Hash).unwrap(),
                Backend::Vxlan,
            ),
            (
                "helpers + array read",
                NullProgram::decap_helpers_and_lookup(port, ContainerLookup::Array).unwrap(),
                Backend::Vxlan,
            ),
        ];
        let tc_null = NullProgram::like(Program::TcIngress).unwrap();
        let frames: Vec<Vec<u8>> = floors.iter().map(|(_, _, b)| tunnelled_frame(peer_of(*b), *b)).collect();
        let mut floor_got = vec![(Vec::new(), Vec::new()); floors.len()];
        for _ in 0..rounds {
            for (((_, f, _), frame), (a, h)) in floors.iter().zip(&frames).zip(&mut floor_got) {
                a.extend(f.samples(frame, slice, Some(underlay)));
                h.extend(tc_null.samples(frame, slice, Some(underlay)));
            }
        }
        println!("floor (adjust_room(-50) + redirect_peer)      net ns");
        for ((what, ..), (a, h)) in floors.iter().zip(floor_got) {
            let h = trimmed_mean(h);
            println!("{what:34} {:8.1} (harness {h:.1})", trimmed_mean(a) - h);
        }
        println!("{:34} {:>8} {:>8} {:>8} {:>8}", "row", "before", "after", "delta", "harness");
        for ((_, what, _), (a, h, b)) in rows.iter().zip(got) {
            let (a, h, b) = (trimmed_mean(a), trimmed_mean(h), trimmed_mean(b));
            println!("{what:34} {:8.1} {:8.1} {:8.1} {:8.1}", a - h, b - h, b - a, h);
        }
    });
}
