//! The differential run: mutated frames (fixed seed, xnet-common's `mutate`) through the kernel
//! programs with BPF_PROG_TEST_RUN (tc ingress, XDP ingress, tc egress) and through the host
//! decisions (`xnet_common::decap::classify`, `xnet_common::egress::classify` over the same bytes,
//! with lookups answered from what the agent wrote to the maps), comparing for every run the
//! verdict, the one counter that moved (by one packet of the frame's length; every other counter
//! still) and the output bytes where the decision fixes them.
//!
//! The kernel's answer is not the bare decision: the programs go on after it (encapsulation,
//! delivery) and BPF_PROG_TEST_RUN refuses some frames. [`Bench::predict_ingress`],
//! [`Bench::predict_egress`] and [`refused`] say exactly how, with the reasons.
//!
//! The frames take turns over four hosts ([`SETUPS`]) that between them judge every tunnel format
//! and only some of them, reach peers with every backend (`direct` ones among them), key GRE or
//! not, and accept untunnelled traffic to containers from `direct` peers only or from anyone.
//!
//! `XNET_DIFF_FRAMES` sets the number of frames (default 100,000; each runs through all three
//! programs).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use xnet::{
    cidr::{self, Ipv4Network},
    clock::unix_now,
    config::{PeerConfig, Tunnel},
    datapath::{self, Program, sync::Scope},
    mac::Mac,
    plan::{HostFacts, Plan},
    store::Overlay,
};
use xnet_common::{
    csum,
    decap::{self, DecapDecision},
    egress::{self, EgressDecision},
    icmp::{self, QUOTED_LEN},
    maps::{Backend, DatapathConfig, Formats, RemoteSubnet, Store},
    mutate::{
        Hints, Rng,
        frames::{BRIDGE, FRAME_DICTIONARY, FRAME_FIELDS, GRE_KEY, LOCAL_IP, egress_seeds, ingress_seeds},
        mutate,
    },
    stats::{Direction, Outcome, index},
    wire::{ETH_LEN, GRE_ENCAP_LEN, GRE_KEYED_ENCAP_LEN, UDP_ENCAP_LEN, VXLAN_ENCAP_LEN, mac_bytes},
};
use xnet_lab::fixture::host_facts;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const PEER_VTEP: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];

/// One host the frames run on: its own backend (and, for `direct`, its fallback), the backends of
/// the peers 198.18.0.2 to .5 (each owning 10.244.`n`.0/24, as `mutate::frames` addresses its
/// seeds), its GRE key, and whether untunnelled traffic to containers is open to anyone
/// (`untunnelled = "any"`); and the tunnel formats it must judge (those of its own backend, its
/// fallback when it is `direct`, and its peers').
struct Setup {
    name: &'static str,
    own: Backend,
    fallback: Backend,
    peers: [Backend; 4],
    gre_key: Option<u32>,
    untunnelled_open: bool,
    /// `[backend] untunnelled_from`: networks whose untunnelled traffic may reach containers too.
    untunnelled_from: &'static [&'static str],
    formats: Formats,
}

const SETUPS: [Setup; 4] = [
    // Every format in use (as in datapath_programs.rs); a direct peer.
    Setup {
        name: "all formats",
        own: Backend::Vxlan,
        fallback: Backend::Vxlan,
        peers: [Backend::Vxlan, Backend::Udp, Backend::Gre, Backend::Direct],
        gre_key: None,
        untunnelled_open: false,
        untunnelled_from: &[],
        formats: Formats::ALL,
    },
    Setup {
        name: "all formats, GRE keyed, untunnelled open",
        own: Backend::Vxlan,
        fallback: Backend::Vxlan,
        peers: [Backend::Vxlan, Backend::Udp, Backend::Gre, Backend::Direct],
        gre_key: Some(GRE_KEY),
        untunnelled_open: true,
        untunnelled_from: &[],
        formats: Formats::ALL,
    },
    // GRE alone: VXLAN and udp frames are someone else's.
    Setup {
        name: "gre only",
        own: Backend::Gre,
        fallback: Backend::Vxlan,
        peers: [Backend::Gre, Backend::Direct, Backend::Gre, Backend::Direct],
        gre_key: None,
        untunnelled_open: false,
        untunnelled_from: &[],
        formats: Formats { vxlan: false, udp: false, gre: true },
    },
    // A direct host whose fallback is udp, GRE keyed but not in use: udp alone; untunnelled
    // traffic let in from 198.18.0.8/29 too (the stranger of the seeds, 198.18.0.9).
    Setup {
        name: "direct, udp fallback",
        own: Backend::Direct,
        fallback: Backend::Udp,
        peers: [Backend::Direct, Backend::Udp, Backend::Direct, Backend::Udp],
        gre_key: Some(GRE_KEY),
        untunnelled_open: false,
        untunnelled_from: &["198.18.0.8/29"],
        formats: Formats { vxlan: false, udp: true, gre: false },
    },
];

fn frames() -> usize {
    std::env::var("XNET_DIFF_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000)
}

fn net(s: &str) -> Ipv4Network {
    cidr::parse(s).unwrap()
}

/// What the kernel must answer for one run.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Expected {
    verdict: u32,
    outcome: Outcome,
    output: Output,
    /// Another answer that is as right, chosen by something the frame does not fix: an ICMP answer
    /// held back by the rate limit (which runs on the kernel's clock).
    or: Option<Box<Expected>>,
}

impl Expected {
    fn new(verdict: u32, outcome: Outcome, output: Output) -> Self {
        Expected { verdict, outcome, output, or: None }
    }

    /// This answer, or `other` when the kernel's verdict is `other`'s.
    fn the_one_for(self, verdict: u32) -> Expected {
        match self.or {
            Some(other) if self.verdict != verdict && other.verdict == verdict => *other,
            _ => self,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Output {
    /// The frame untouched.
    Same,
    /// Exactly these bytes.
    Exact(Vec<u8>),
    /// `overhead` bytes of outer headers inserted after the Ethernet header, the rest as it was;
    /// for flannel's udp framing, with the inner TTL decremented (checksum patched).
    Encapsulated { overhead: usize, ttl_decremented: bool },
    /// Dropped: whatever the program left in the buffer is not delivered anywhere.
    Unchecked,
}

/// BPF_PROG_TEST_RUN's own checks of its input, before any program runs (net/bpf/test_run.c;
/// measured on kernel 6.18, and datapath_programs.rs meets the IPv4 case too): an XDP or skb frame
/// needs at least an Ethernet header, and an skb whose EtherType is IPv4 or IPv6 needs that IP
/// header's fixed part after it (20 or 40 bytes); EINVAL otherwise. What it refuses no program
/// sees, and no counter moves. Anything else refused, or any of these run, is a mismatch.
fn refused(program: Program, frame: &[u8]) -> bool {
    if frame.len() < ETH_LEN {
        return true;
    }
    let l3_min = match (program, [frame[12], frame[13]]) {
        (Program::XdpIngress, _) => 0,
        (_, [0x08, 0x00]) => 20,
        (_, [0x86, 0xdd]) => 40,
        _ => 0,
    };
    frame.len() < ETH_LEN + l3_min
}

/// The programs loaded without pins and configured as the agent does for host 198.18.0.1
/// (10.244.1.0/24 of 10.244.0.0/16) as a [`Setup`] says; with the map contents the host decisions
/// are answered from, and the counters expected so far.
struct Bench {
    name: &'static str,
    dp: datapath::Datapath,
    config: DatapathConfig,
    routes: BTreeMap<Ipv4Network, RemoteSubnet>,
    peers: BTreeSet<[u8; 4]>,
    local_ports: BTreeMap<[u8; 6], u32>,
    untunnelled_from: Vec<Ipv4Network>,
    /// Runs the decision dropped as untunnelled (146) that UNTUNNELLED_FROM let in.
    let_in: std::cell::Cell<u64>,
    counters: BTreeMap<u32, (u64, u64)>,
}

impl Bench {
    fn new(setup: &Setup) -> Self {
        let mut dp = datapath::Datapath::load_unpinned()
            .unwrap_or_else(|e| panic!("the kernel refused the programs: {e} ({e:?})"));
        let peers: Vec<PeerConfig> = (2..)
            .zip(setup.peers)
            .map(|(n, b)| PeerConfig {
                subnet: net(&format!("10.244.{n}.0/24")),
                public_ip: Ipv4Addr::new(198, 18, 0, n),
                vtep_mac: Mac(PEER_VTEP),
                backend: Some(b),
                protocol: None,
            })
            .collect();
        let facts = HostFacts {
            untunnelled_open: setup.untunnelled_open,
            ..host_facts(LOCAL_IP.into(), "198.18.0.0/24")
        };
        let tunnel = Tunnel {
            kind: setup.own,
            vni: xnet_common::mutate::frames::VNI,
            vxlan_port: xnet_common::mutate::frames::VXLAN_PORT,
            udp_port: xnet_common::mutate::frames::UDP_PORT,
            gre_key: setup.gre_key,
            fallback: setup.fallback,
        };
        let overlay = Overlay { network: net("10.244.0.0/16"), subnet: net("10.244.1.0/24"), tunnel };
        let plan = Plan::new(facts, overlay, None, &peers).expect("plan");
        let wanted = plan.wanted(Store::File, &peers);
        let config = plan.datapath_config(BRIDGE, &wanted);
        dp.sync(&wanted, &config, &Scope::All, unix_now()).expect("sync the maps");
        let untunnelled_from: Vec<Ipv4Network> = setup.untunnelled_from.iter().map(|n| net(n)).collect();
        dp.set_untunnelled_from(&untunnelled_from.iter().copied().collect()).expect("UNTUNNELLED_FROM");
        let mirror = dp.maps().mirror().expect("read the maps back");
        assert_eq!(mirror.routes.len(), 4, "{:?}", mirror.routes);
        // The agent's CONFIG judges the formats and opens untunnelled traffic as the setup says.
        assert_eq!(
            (mirror.config.formats(), mirror.config.untunnelled_open()),
            (setup.formats, setup.untunnelled_open),
            "{}",
            setup.name
        );
        assert!(!mirror.index.is_empty(), "the route index is on, as the agent has it");
        let local_ports = dp.maps().local_ports().expect("LOCAL_PORTS");
        // With no container behind a bridge port, tc ingress hands every decapsulated packet to
        // the stack (deliver::to_container finds no endpoint): its verdict is TC_ACT_OK.
        assert!(local_ports.is_empty() && dp.maps().endpoints().is_empty());
        let counters = Self::read_counters(&dp);
        Bench {
            name: setup.name,
            dp,
            config: mirror.config,
            routes: mirror.routes.iter().map(|(net, e)| (*net, *e.route())).collect(),
            peers: mirror.peers.keys().copied().collect(),
            local_ports,
            untunnelled_from,
            let_in: Default::default(),
            counters,
        }
    }

    /// The longest-prefix route holding `addr` (what REMOTE_SUBNETS answers, and ROUTE_INDEX for
    /// the subnets it covers: the agent keeps them equal).
    fn route(&self, addr: &[u8; 4]) -> Option<&RemoteSubnet> {
        let a = Ipv4Addr::from(*addr);
        self.routes.iter().filter(|(n, _)| n.contains(a)).max_by_key(|(n, _)| n.prefix()).map(|(_, r)| r)
    }

    /// tc and XDP ingress: the decision, then what the programs do with it.
    fn predict_ingress(&self, program: Program, f: &[u8]) -> Expected {
        let (pass, shot) = match program {
            Program::XdpIngress => (XDP_PASS, XDP_DROP),
            _ => (TC_ACT_OK, TC_ACT_SHOT),
        };
        let decision =
            decap::classify(f, &self.config, |src| self.peers.contains(src), |src| self.route(src));
        match decision {
            DecapDecision::Pass => Expected::new(pass, Outcome::Passed, Output::Same),
            // The programs let in what the decision drops as untunnelled when its source lies in
            // UNTUNNELLED_FROM (the frame's IPv4 source: the decision read the whole header).
            DecapDecision::Drop(Outcome::DropUntunnelledNotDirectPeer)
                if self
                    .untunnelled_from
                    .iter()
                    .any(|n| n.contains(Ipv4Addr::new(f[26], f[27], f[28], f[29]))) =>
            {
                self.let_in.set(self.let_in.get() + 1);
                Expected::new(pass, Outcome::Passed, Output::Same)
            }
            DecapDecision::Drop(reason) => Expected::new(shot, reason, Output::Unchecked),
            // Both programs remove the tunnel's bytes after the outer Ethernet header (the decision
            // vouched that the inner IPv4 header is there, so the helpers cannot fail); tc then
            // hands the packet to the stack (no endpoint: see `Bench::new`), XDP always does.
            DecapDecision::Decap(tunnel) => {
                let mut out = f[..ETH_LEN].to_vec();
                out.extend_from_slice(&f[ETH_LEN + tunnel.strip_len()..]);
                Expected::new(pass, tunnel.outcome(), Output::Exact(out))
            }
        }
    }

    /// tc egress: the decision, then encapsulation by the route's backend.
    fn predict_egress(&self, f: &[u8]) -> Expected {
        let gateway = self.config.gateway_mac_word();
        let decision = egress::classify(
            f,
            |dst| self.route(dst).copied(),
            |mac| mac != gateway && self.local_ports.contains_key(&mac_bytes(mac)),
            |src| self.config.is_local(src),
        );
        let (route, _tos) = match decision {
            EgressDecision::Pass => return Expected::new(TC_ACT_OK, Outcome::Passed, Output::Same),
            EgressDecision::Drop(reason) => return Expected::new(TC_ACT_SHOT, reason, Output::Unchecked),
            EgressDecision::Encapsulate { route, tos } => (route, tos),
        };
        let shot = |outcome| Expected::new(TC_ACT_SHOT, outcome, Output::Unchecked);
        let (overhead, sent) = match route.backend().expect("the agent writes known backends") {
            Backend::Vxlan => (VXLAN_ENCAP_LEN, Outcome::EncapVxlan),
            Backend::Udp => (UDP_ENCAP_LEN, Outcome::EncapUdp),
            Backend::Gre if self.config.gre_key().is_some() => (GRE_KEYED_ENCAP_LEN, Outcome::EncapGre),
            Backend::Gre => (GRE_ENCAP_LEN, Outcome::EncapGre),
            Backend::Direct => (0, Outcome::Direct),
        };
        // icmp::too_big: the IP packet plus the outer headers must fit the underlay MTU
        // (BPF_PROG_TEST_RUN's skbs are never GSO). Else, when the packet may be answered, the
        // frame becomes ICMP "fragmentation needed" with the overlay MTU, from the container
        // subnet's gateway, MACs swapped, redirected back where it came from; unless the rate
        // limit holds the answer back.
        if (f.len() - ETH_LEN + overhead) as u32 > self.config.underlay_mtu() {
            let quoted: [u8; QUOTED_LEN] = f[ETH_LEN..ETH_LEN + QUOTED_LEN].try_into().unwrap();
            if !icmp::answerable(&quoted) {
                return shot(Outcome::DropTooBig);
            }
            let subnet = u32::from_be_bytes(self.config.local_subnet());
            let mtu = (self.config.underlay_mtu() - overhead as u32) as u16;
            let mut answer = f[6..12].to_vec();
            answer.extend_from_slice(&f[..6]);
            answer.extend_from_slice(&f[12..ETH_LEN]);
            answer.extend_from_slice(&icmp::frag_needed(&quoted, (subnet | 1).to_be_bytes(), mtu));
            let mut answered =
                Expected::new(TC_ACT_REDIRECT, Outcome::DropTooBigAnswered, Output::Exact(answer));
            answered.or = Some(Box::new(shot(Outcome::DropTooBigRateLimited)));
            return answered;
        }
        // flannel's udp framing decrements the inner TTL first, and drops what would reach zero.
        let ttl_decremented = sent == Outcome::EncapUdp;
        if ttl_decremented && f[ETH_LEN + 8] <= 1 {
            return shot(Outcome::DropTtlExceeded);
        }
        // Then bpf_skb_adjust_room (which cannot refuse an IPv4 skb of these sizes) and
        // bpf_redirect_neigh, which in BPF_PROG_TEST_RUN only records the target: redirected.
        // The direct backend leaves the frame as it is (the kernel fills in the MACs on the way
        // out).
        let output =
            if overhead == 0 { Output::Same } else { Output::Encapsulated { overhead, ttl_decremented } };
        Expected::new(TC_ACT_REDIRECT, sent, output)
    }

    /// Runs `program` on `f`; `None` when BPF_PROG_TEST_RUN refused the frame.
    fn run(&mut self, program: Program, f: &[u8]) -> Option<(u32, Vec<u8>)> {
        let mut out = vec![0u8; f.len() + 256];
        let result = xnet_lab::progcost::test_run(&mut self.dp, program, f, &mut out).ok()?;
        out.truncate(result.data_size_out as usize);
        Some((result.return_value, out))
    }

    /// The kernel's counters, all of them.
    fn read_counters(dp: &datapath::Datapath) -> BTreeMap<u32, (u64, u64)> {
        let mut counters = BTreeMap::new();
        for d in Direction::ALL {
            for o in Outcome::ALL {
                let c = dp.maps().counter(index(d, o)).unwrap();
                counters.insert(index(d, o), (c.packets(), c.bytes()));
            }
        }
        counters
    }

    fn resync(&mut self) {
        self.counters = Self::read_counters(&self.dp);
    }

    /// Whether the kernel's counter `i` is where the expected ones say.
    fn counter_is_expected(&self, i: u32) -> Option<((u64, u64), (u64, u64))> {
        let c = self.dp.maps().counter(i).unwrap();
        let got = (c.packets(), c.bytes());
        let want = self.counters[&i];
        (got != want).then_some((got, want))
    }
}

/// Whether `out` is `input` with `overhead` bytes inserted after its Ethernet header (flannel's
/// udp framing: and the inner TTL decremented with its checksum).
fn encapsulated(input: &[u8], out: &[u8], overhead: usize, ttl_decremented: bool) -> bool {
    if out.len() != input.len() + overhead || out[..ETH_LEN] != input[..ETH_LEN] {
        return false;
    }
    let (inner_in, inner_out) = (&input[ETH_LEN..], &out[ETH_LEN + overhead..]);
    if !ttl_decremented {
        return inner_in == inner_out;
    }
    let word = u32::from_le_bytes(inner_in[8..12].try_into().unwrap());
    inner_out[8..12] == csum::decrement_ttl_word(word).to_le_bytes()
        && inner_in[..8] == inner_out[..8]
        && inner_in[12..] == inner_out[12..]
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn kernel_and_host_decisions_agree_on_mutated_frames() {
    let mut benches = SETUPS.each_ref().map(Bench::new);
    let mut seeds = ingress_seeds();
    seeds.extend(egress_seeds());
    let hints = Hints { dictionary: FRAME_DICTIONARY, fields: FRAME_FIELDS, max_len: 1600 };
    let mut rng = Rng::new(0xd1ff);
    let programs = [Program::TcIngress, Program::XdpIngress, Program::TcEgress];
    let (mut runs, mut refusals, mut mismatches) = (0u64, 0u64, 0u64);
    let mut examples = Vec::new();
    // (host, program, outcome) -> runs.
    let mut seen: BTreeMap<(&str, &str, String), u64> = BTreeMap::new();
    let started = std::time::Instant::now();
    let total = frames();
    for case in 0..total {
        let mut f = rng.pick(&seeds).clone();
        mutate(&mut rng, &mut f, &hints);
        if rng.chance(60) {
            xnet_common::mutate::fix_ipv4_checksum(&mut f, ETH_LEN);
        }
        let bench = &mut benches[case % SETUPS.len()];
        for program in programs {
            let expected = if refused(program, &f) {
                None
            } else if program == Program::TcEgress {
                Some(bench.predict_egress(&f))
            } else {
                Some(bench.predict_ingress(program, &f))
            };
            let got = bench.run(program, &f);
            runs += 1;
            let direction = if program == Program::TcEgress { Direction::Egress } else { Direction::Ingress };
            let problem = match (&expected, &got) {
                (None, None) => {
                    refusals += 1;
                    None
                }
                (None, Some(_)) => Some("ran a frame BPF_PROG_TEST_RUN should refuse".to_string()),
                (Some(_), None) => Some("BPF_PROG_TEST_RUN refused the frame".to_string()),
                (Some(want), Some((verdict, out))) => {
                    let want = want.clone().the_one_for(*verdict);
                    *seen.entry((bench.name, program.name(), format!("{:?}", want.outcome))).or_default() +=
                        1;
                    let i = index(direction, want.outcome);
                    let c = bench.counters.get_mut(&i).unwrap();
                    *c = (c.0 + 1, c.1 + f.len() as u64);
                    let output_ok = match &want.output {
                        Output::Same => *out == f,
                        Output::Exact(bytes) => out == bytes,
                        Output::Encapsulated { overhead, ttl_decremented } => {
                            encapsulated(&f, out, *overhead, *ttl_decremented)
                        }
                        Output::Unchecked => true,
                    };
                    if *verdict != want.verdict {
                        Some(format!("verdict {verdict}, expected {want:?}"))
                    } else if let Some((got, wanted)) = bench.counter_is_expected(i) {
                        Some(format!("counter {:?} at {got:?}, expected {wanted:?} ({want:?})", want.outcome))
                    } else if !output_ok {
                        Some(format!("output {} for {want:?}", hex(out)))
                    } else {
                        None
                    }
                }
            };
            if let Some(problem) = problem {
                // Take the kernel's counters as they are, so that one mismatch is counted once.
                bench.resync();
                mismatches += 1;
                if examples.len() < 10 {
                    examples.push(format!(
                        "frame {case} ({}, {}): {problem}\n  input {}",
                        bench.name,
                        program.name(),
                        hex(&f)
                    ));
                }
            }
        }
        // Every other counter stayed where it was: the whole table, now and then.
        if case % 1000 == 999 || case + 1 == total {
            for bench in &mut benches {
                let keys: Vec<u32> = bench.counters.keys().copied().collect();
                for i in keys {
                    if let Some((got, wanted)) = bench.counter_is_expected(i) {
                        mismatches += 1;
                        bench.resync();
                        if examples.len() < 10 {
                            examples.push(format!(
                                "before frame {case} ({}): counter {i} at {got:?}, expected {wanted:?}",
                                bench.name
                            ));
                        }
                    }
                }
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "differential: {total} frames, {runs} program runs ({refusals} refused by BPF_PROG_TEST_RUN as \
         predicted) in {:.1} s; {mismatches} mismatches ({:.6}% of runs)",
        elapsed.as_secs_f64(),
        100.0 * mismatches as f64 / runs as f64
    );
    for ((host, program, outcome), n) in &seen {
        eprintln!("  {host:<42} {program:<18} {outcome:<30} {n}");
    }
    assert!(mismatches == 0, "{mismatches} mismatches, the first ones:\n{}", examples.join("\n"));
    // The frames reached every decision worth comparing (else the run proves little), and each
    // host judged what its setup says: no format it does not use decapsulated, no untunnelled drop
    // where untunnelled traffic is open.
    for bench in &benches {
        eprintln!("  {:<42} let in by untunnelled_from: {}", bench.name, bench.let_in.get());
    }
    let count = |host: &str, program: &str, outcome: Outcome| {
        seen.get(&(host, program, format!("{outcome:?}"))).copied().unwrap_or(0)
    };
    let anywhere =
        |program: &str, outcome: Outcome| SETUPS.iter().map(|s| count(s.name, program, outcome)).sum::<u64>();
    if total >= 10_000 {
        for (program, outcome) in [
            ("xnet_tc_ingress", Outcome::DecapVxlan),
            ("xnet_tc_ingress", Outcome::DecapUdp),
            ("xnet_tc_ingress", Outcome::DecapGre),
            ("xnet_tc_ingress", Outcome::DropUntunnelledNotDirectPeer),
            ("xnet_xdp_ingress", Outcome::DecapVxlan),
            ("xnet_xdp_ingress", Outcome::DecapUdp),
            ("xnet_xdp_ingress", Outcome::DecapGre),
            ("xnet_xdp_ingress", Outcome::DropBadOuterChecksum),
            ("xnet_xdp_ingress", Outcome::DropTruncated),
            ("xnet_xdp_ingress", Outcome::DropBadVni),
            ("xnet_xdp_ingress", Outcome::DropBadGreKey),
            ("xnet_xdp_ingress", Outcome::DropInnerSourceNotPeer),
            ("xnet_xdp_ingress", Outcome::DropUntunnelledNotDirectPeer),
            ("xnet_tc_egress", Outcome::EncapVxlan),
            ("xnet_tc_egress", Outcome::EncapUdp),
            ("xnet_tc_egress", Outcome::EncapGre),
            ("xnet_tc_egress", Outcome::Direct),
            ("xnet_tc_egress", Outcome::DropTooBig),
            ("xnet_tc_egress", Outcome::DropTooBigAnswered),
            ("xnet_tc_egress", Outcome::DropTtlExceeded),
            ("xnet_tc_egress", Outcome::DropSourceNotLocal),
        ] {
            assert!(anywhere(program, outcome) > 0, "no frame gave {program} {outcome:?}");
        }
        for setup in &SETUPS {
            let formats = setup.formats;
            for program in ["xnet_tc_ingress", "xnet_xdp_ingress"] {
                for (used, outcome) in [
                    (formats.vxlan, Outcome::DecapVxlan),
                    (formats.udp, Outcome::DecapUdp),
                    (formats.gre, Outcome::DecapGre),
                ] {
                    let n = count(setup.name, program, outcome);
                    assert_eq!(n > 0, used, "{}: {program} {outcome:?} {n} times", setup.name);
                }
                let n = count(setup.name, program, Outcome::DropUntunnelledNotDirectPeer);
                // (146 still occurs where untunnelled_from lets some in: from other sources.)
                assert_eq!(
                    n > 0,
                    !setup.untunnelled_open,
                    "{}: {program} dropped {n} untunnelled",
                    setup.name
                );
            }
        }
        // And UNTUNNELLED_FROM let some in exactly where it lists networks.
        for (setup, bench) in SETUPS.iter().zip(&benches) {
            let let_in = bench.let_in.get();
            assert_eq!(let_in > 0, !setup.untunnelled_from.is_empty(), "{}: {let_in} let in", setup.name);
        }
    }
}
