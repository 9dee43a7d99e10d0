//! The eBPF programs run by the kernel on crafted packets (BPF_PROG_TEST_RUN): a table of
//! {input, expected verdict, expected output bytes, expected counter change} per program.
//! Expected packets are built with etherparse, independently of xnet's own header code; each case
//! carries the scapy line that builds the same input. The programs are loaded, and their maps
//! planned and written, by the agent's own code (`xnet::plan`, `xnet::datapath`), so the map writes
//! under test are the agent's.

use std::collections::{BTreeMap, BTreeSet};

use aya::programs::Xdp;
use etherparse::{EtherType, Ethernet2Header, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, UdpHeader};
use xnet::{
    cidr::{self, Ipv4Network},
    clock::unix_now,
    config::{PeerConfig, Tunnel},
    datapath::{
        self, Program,
        sync::{Op, RouteIndexSpec, Scope, Wanted},
    },
    mac::Mac,
    plan::Plan,
    store::Overlay,
};
use xnet_common::{
    icmp::TokenBucket,
    maps::{
        Backend, DatapathConfig, DatapathParams, Endpoint, Formats, Peer, PeerSlot, RemoteSubnet, RouteEntry,
        RouteInfo, SlotState, Store,
    },
    stats::{Direction, Outcome, index},
};
use xnet_lab::fixture::host_facts;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;

const LOCAL_IP: [u8; 4] = [198, 18, 0, 1];
const PEER_IP: [u8; 4] = [198, 18, 0, 2];
const STRANGER_IP: [u8; 4] = [198, 18, 0, 9];
const LOCAL_VTEP: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x01];
const PEER_VTEP: [u8; 6] = [0x02, 0x00, 0xc6, 0x12, 0x00, 0x02];
const CONTAINER_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x02];
const BRIDGE_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x01];
const UNDERLAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
const PEER_UNDERLAY_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x02];
/// A VNI whose three bytes differ, so a byte-order mistake shows.
const VNI: u32 = 0x12_34_56;
const PORT: u16 = 8472;
const UDP_PORT: u16 = 8285;
const UNDERLAY_MTU: u32 = 1500;
/// The peers 198.18.0.`n`, each owning 10.244.`n`.0/24 and sent to with this backend.
const BACKENDS: [(u8, Backend); 4] =
    [(2, Backend::Vxlan), (3, Backend::Udp), (4, Backend::Gre), (5, Backend::Direct)];

fn net(s: &str) -> Ipv4Network {
    cidr::parse(s).unwrap()
}

/// A peer at `ip` owning `subnet`, asking for `backend`; every peer's VTEP MAC is [`PEER_VTEP`].
fn peer(subnet: &str, ip: [u8; 4], backend: Backend) -> PeerConfig {
    PeerConfig {
        subnet: net(subnet),
        public_ip: ip.into(),
        vtep_mac: Mac(PEER_VTEP),
        backend: Some(backend),
        protocol: None,
    }
}

/// What the agent plans for host 198.18.0.1 (10.244.1.0/24 of 10.244.0.0/16, its underlay on
/// 198.18.0.0/24, so the direct peer is on its segment) with `peers`; GRE keyed with `gre_key`.
fn plan(gre_key: Option<u32>, peers: &[PeerConfig]) -> Plan {
    plan_for(Backend::Vxlan, gre_key, peers)
}

/// Like [`plan`], for a host whose own backend is `kind`.
fn plan_for(kind: Backend, gre_key: Option<u32>, peers: &[PeerConfig]) -> Plan {
    // The fixture's VTEP MAC, from the public IP, is LOCAL_VTEP; its underlay MTU UNDERLAY_MTU.
    let facts = host_facts(LOCAL_IP.into(), "198.18.0.0/24");
    let tunnel =
        Tunnel { kind, vni: VNI, vxlan_port: PORT, udp_port: UDP_PORT, gre_key, fallback: Backend::Vxlan };
    let overlay = Overlay { network: net("10.244.0.0/16"), subnet: net("10.244.1.0/24"), tunnel };
    Plan::new(facts, overlay, None, peers).expect("plan")
}

/// A route index shape none of the fixture's routes fits (hosts with /25 subnets): the agent then
/// switches the index off and every lookup walks the LPM trie.
fn trie_only() -> RouteIndexSpec {
    RouteIndexSpec { network: net("10.244.0.0/16"), subnet_len: 25 }
}

/// Where egress looks routes up inside the overlay network.
#[derive(Clone, Copy, Debug)]
enum Lookup {
    /// ROUTE_INDEX, as the agent has it when every route is one subnet of the network.
    Index,
    /// The LPM trie alone.
    Trie,
}

struct Datapath {
    dp: datapath::Datapath,
    plan: Plan,
    wanted: Wanted,
}

impl Datapath {
    /// The programs loaded without pins; `configured`: set up as the agent does ([`Datapath::with`]).
    fn new(configured: bool) -> Self {
        Self::with(configured, None)
    }

    /// Like [`Datapath::new`], with GRE keyed when `gre_key` is set. Remote subnets: 10.244.2.0/24
    /// via vxlan, .3 via udp, .4 via gre, .5 direct (peers 198.18.0.2 to .5). CONFIG, the routes,
    /// the peers, the peer slots and the route index are planned and written by the agent's own
    /// code; its sync switches the route index on (every route is a /24 of the network).
    fn with(configured: bool, gre_key: Option<u32>) -> Self {
        Self::with_lookup(configured, gre_key, Lookup::Index)
    }

    /// Like [`Datapath::with`], with routes looked up as `lookup` says.
    fn with_lookup(configured: bool, gre_key: Option<u32>, lookup: Lookup) -> Self {
        let dp = datapath::Datapath::load_unpinned()
            .unwrap_or_else(|e| panic!("the kernel refused the programs: {e} ({e:?})"));
        let peers: Vec<PeerConfig> =
            BACKENDS.iter().map(|&(n, b)| peer(&format!("10.244.{n}.0/24"), [198, 18, 0, n], b)).collect();
        let plan = plan(gre_key, &peers);
        let wanted = match lookup {
            Lookup::Index => plan.wanted(Store::File, &peers),
            Lookup::Trie => {
                let mut wanted = Wanted::new(Store::File, trie_only());
                for p in &peers {
                    plan.set_peer(&mut wanted, p);
                }
                wanted.take_changes();
                wanted
            }
        };
        let mut this = Datapath { dp, plan, wanted };
        if !configured {
            return this;
        }
        this.sync(Scope::All);
        // CONFIG as this test expects it, whatever the planning does. (The bytes these settings
        // become are xnet-common's unit tests' business; the packets below check them too.)
        let expected = DatapathConfig::new(&DatapathParams {
            underlay_ifindex: 1,
            underlay_mtu: UNDERLAY_MTU,
            local_ip: LOCAL_IP,
            local_subnet: [10, 244, 1, 0],
            local_netmask: [255, 255, 255, 0],
            vni: VNI,
            vxlan_port: PORT,
            vtep_mac: LOCAL_VTEP,
            udp_port: UDP_PORT,
            gre_key,
            local_ip_on_host: true,
            untunnelled_open: false,
            formats: Formats::ALL,
        })
        .with_gateway_mac(BRIDGE_MAC);
        let expected = match lookup {
            Lookup::Index => expected.with_route_index([10, 244, 0, 0], [255, 255, 0, 0], 8),
            Lookup::Trie => expected,
        };
        assert_eq!(this.dp.maps().config().unwrap(), expected.with_outer_templates(), "CONFIG as written");
        let routes = this.dp.maps().routes().unwrap();
        assert_eq!(routes.len(), 4, "{routes:?}");
        for (n, backend) in BACKENDS {
            let route = routes[&net(&format!("10.244.{n}.0/24"))];
            let want = RemoteSubnet::new([198, 18, 0, n], PEER_VTEP, backend);
            assert_eq!(route, want, "route to 10.244.{n}.0/24");
        }
        this
    }

    /// A host whose own backend is `kind`, with `peers` (nothing GRE-keyed), set up as the agent
    /// does.
    fn host(kind: Backend, peers: &[PeerConfig]) -> Self {
        let dp = datapath::Datapath::load_unpinned()
            .unwrap_or_else(|e| panic!("the kernel refused the programs: {e} ({e:?})"));
        let plan = plan_for(kind, None, peers);
        let wanted = plan.wanted(Store::File, peers);
        let mut this = Datapath { dp, plan, wanted };
        this.sync(Scope::All);
        this
    }

    /// Writes what is wanted and CONFIG (planned for it, as the agent does) with the agent's sync,
    /// comparing the keys in `scope`.
    fn sync(&mut self, scope: Scope) {
        let config = self.plan.datapath_config(BRIDGE_MAC, &self.wanted);
        self.dp.sync(&self.wanted, &config, &scope, unix_now()).expect("sync the maps");
    }

    /// Adds `peers` as the agent does when their leases appear: planned, then synced by the keys
    /// that changed.
    fn add_peers(&mut self, peers: &[PeerConfig]) {
        for p in peers {
            self.plan.set_peer(&mut self.wanted, p);
        }
        let scope = self.wanted.take_changes();
        self.sync(scope);
    }

    /// One map write of the agent's vocabulary, outside its sync: for states the agent never
    /// leaves the maps in.
    fn write(&mut self, op: Op) {
        self.dp.maps_mut().write(&op).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    }

    fn counters(&self) -> BTreeMap<(u32, u32), (u64, u64)> {
        let mut out = BTreeMap::new();
        for d in Direction::ALL {
            for o in Outcome::ALL {
                let c = self.dp.maps().counter(index(d, o)).unwrap();
                out.insert((d as u32, o as u32), (c.packets(), c.bytes()));
            }
        }
        out
    }

    /// Runs `program` on `input`; returns (verdict, output bytes).
    fn run(&mut self, program: Program, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 256];
        let result =
            xnet_lab::progcost::test_run(&mut self.dp, program, input, &mut out).unwrap_or_else(|e| {
                panic!("BPF_PROG_TEST_RUN of {} on {} bytes: {e:?}", program.name(), input.len())
            });
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs the XDP program on `input` with only its first `linear` bytes in the first buffer (the
    /// rest in further ones, as a NIC that splits headers leaves them; the kernel takes the first
    /// buffer's end from `xdp_md.data_end`); returns (verdict, output bytes).
    fn run_xdp_split(&mut self, input: &[u8], linear: u32) -> (u32, Vec<u8>) {
        use aya::programs::{TestRun, TestRunOptions};
        let mut md = [0u8; 24];
        md[4..8].copy_from_slice(&linear.to_ne_bytes());
        let mut out = vec![0u8; input.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(input),
            data_out: Some(&mut out),
            ctx_in: Some(&md[..]),
            ..TestRunOptions::new()
        };
        let p: &mut Xdp = self.dp.program_mut(Program::XdpIngress).expect("loaded").try_into().unwrap();
        let result =
            p.test_run(opts).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN, {linear} bytes linear: {e:?}"));
        out.truncate(result.data_size_out as usize);
        (result.return_value, out)
    }

    /// Runs `program` on `input` and checks the verdict, and that exactly `counted` moved by one
    /// packet of the input's length.
    fn check(
        &mut self,
        case: &str,
        program: Program,
        input: &[u8],
        verdict: u32,
        counted: (Direction, Outcome),
    ) -> Vec<u8> {
        self.check_run(case, program.name(), input, verdict, counted, |dp| dp.run(program, input))
    }

    /// [`Datapath::check`] for a frame split across XDP buffers after `linear` bytes.
    fn check_xdp_split(
        &mut self,
        case: &str,
        input: &[u8],
        linear: u32,
        verdict: u32,
        counted: (Direction, Outcome),
    ) -> Vec<u8> {
        self.check_run(case, Program::XdpIngress.name(), input, verdict, counted, |dp| {
            dp.run_xdp_split(input, linear)
        })
    }

    fn check_run(
        &mut self,
        case: &str,
        program: &str,
        input: &[u8],
        verdict: u32,
        counted: (Direction, Outcome),
        run: impl FnOnce(&mut Self) -> (u32, Vec<u8>),
    ) -> Vec<u8> {
        let before = self.counters();
        let (got, out) = run(self);
        assert_eq!(got, verdict, "{case}: verdict of {program}");
        let after = self.counters();
        for (key, (p1, b1)) in &after {
            let (p0, b0) = before[key];
            let expected =
                if *key == (counted.0 as u32, counted.1 as u32) { (1, input.len() as u64) } else { (0, 0) };
            assert_eq!(
                (p1 - p0, b1 - b0),
                expected,
                "{case}: counter {key:?} delta (expected {counted:?} to move)"
            );
        }
        out
    }
}

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: IpNumber, tos: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = Ipv4Header::new(payload.len() as u16, 64, proto, src, dst).unwrap();
    h.dscp = Ipv4Dscp::try_new(tos >> 2).unwrap();
    h.ecn = Ipv4Ecn::try_new(tos & 3).unwrap();
    h.dont_fragment = true;
    h.identification = 0x1c46;
    h.header_checksum = h.calc_header_checksum();
    let mut v = h.to_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Ethernet2Header { source: src, destination: dst, ether_type: EtherType(ethertype) }
        .to_bytes()
        .to_vec();
    v.extend_from_slice(payload);
    v
}

/// An ICMP echo request of `len` payload bytes from container 10.244.1.2 to `dst`.
fn container_ping(dst: [u8; 4], tos: u8, len: usize) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend((0..len).map(|i| i as u8));
    ethernet(BRIDGE_MAC, CONTAINER_MAC, 0x0800, &ipv4([10, 244, 1, 2], dst, IpNumber::ICMP, tos, &icmp))
}

/// A VXLAN frame as a peer sends it: outer headers with DF, TTL 64, UDP checksum 0.
fn vxlan(
    src: [u8; 4],
    dport: u16,
    vni: u32,
    sport: u16,
    inner_ethertype: u16,
    inner_ip: &[u8],
    outer_tos: u8,
) -> Vec<u8> {
    let mut payload = vec![0x08, 0, 0, 0];
    payload.extend_from_slice(&(vni << 8).to_be_bytes());
    payload.extend(ethernet(LOCAL_VTEP, PEER_VTEP, inner_ethertype, inner_ip));
    let udp = UdpHeader {
        source_port: sport,
        destination_port: dport,
        length: (8 + payload.len()) as u16,
        checksum: 0,
    };
    let mut l4 = udp.to_bytes().to_vec();
    l4.extend(payload);
    let mut ip = Ipv4Header::new(l4.len() as u16, 64, IpNumber::UDP, src, LOCAL_IP).unwrap();
    ip.dont_fragment = true;
    ip.dscp = Ipv4Dscp::try_new(outer_tos >> 2).unwrap();
    ip.ecn = Ipv4Ecn::try_new(outer_tos & 3).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    let mut l3 = ip.to_bytes().to_vec();
    l3.extend(l4);
    ethernet(UNDERLAY_MAC, PEER_UNDERLAY_MAC, 0x0800, &l3)
}

/// An ICMP echo reply from 10.244.2.7 (a container of the vxlan peer 198.18.0.2) to the local
/// container 10.244.1.5.
fn inner_to_local() -> Vec<u8> {
    inner_from([10, 244, 2, 7])
}

/// An ICMP echo reply from `src` to the local container 10.244.1.5.
fn inner_from(src: [u8; 4]) -> Vec<u8> {
    let mut icmp = vec![0, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend(0..32u8);
    ipv4(src, [10, 244, 1, 5], IpNumber::ICMP, 0, &icmp)
}

/// `frame` (Ethernet, then IPv4) with its outer addresses at `src` and `dst`, the header checksum
/// recomputed.
fn readdressed(frame: &[u8], src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let mut ip = Ipv4Header::from_slice(&f[14..34]).unwrap().0;
    ip.source = src;
    ip.destination = dst;
    ip.header_checksum = ip.calc_header_checksum();
    f[14..34].copy_from_slice(&ip.to_bytes());
    f
}

/// Byte offset of the outer UDP source port in an encapsulated frame.
const SPORT: std::ops::Range<usize> = 34..36;

#[test]
fn egress_encapsulates_remote_traffic_byte_for_byte() {
    let mut dp = Datapath::new(true);
    // scapy: Ether(dst=BRIDGE_MAC, src=CONTAINER_MAC)/IP(src="10.244.1.2", dst="10.244.2.7", tos=0xb8,
    //        flags="DF", id=0x1c46)/ICMP(id=0x1234, seq=1)/Raw(bytes(range(56)))
    let input = container_ping([10, 244, 2, 7], 0xb8, 56);
    let out = dp.check(
        "remote ping",
        Program::TcEgress,
        &input,
        TC_ACT_REDIRECT,
        (Direction::Egress, Outcome::EncapVxlan),
    );
    // The source port comes from a flow hash (the skb's own when the kernel computed one; this test
    // packet has none, so xnet's hash of the inner addresses): take it from the output, check its
    // range and origin, and check every other byte against the independently built packet.
    let sport = u16::from_be_bytes([out[SPORT.start], out[SPORT.start + 1]]);
    assert!(sport >= 49152, "UDP source port {sport} in 49152..=65535");
    let word = u32::from_le_bytes;
    let hash = xnet_common::wire::flow_hash(word([10, 244, 1, 2]), word([10, 244, 2, 7]), 1, 0);
    assert_eq!(sport, xnet_common::wire::udp_src_port(hash), "source port from the inner flow");
    // scapy: Ether(dst=BRIDGE_MAC, src=CONTAINER_MAC)/IP(src="198.18.0.1", dst="198.18.0.2", tos=0xb8,
    //        flags="DF", id=0, ttl=64)/UDP(sport=sport, dport=8472, chksum=0)/VXLAN(vni=0x123456, flags=8)
    //        /Ether(dst=PEER_VTEP, src=LOCAL_VTEP)/input[14:]
    let mut expected = vxlan(LOCAL_IP, PORT, VNI, sport, 0x0800, &input[14..], 0xb8);
    // vxlan() builds peer->local frames; turn it into local->peer: outer addresses and inner MACs.
    expected[26..30].copy_from_slice(&LOCAL_IP);
    expected[30..34].copy_from_slice(&PEER_IP);
    let mut ip = Ipv4Header::from_slice(&expected[14..34]).unwrap().0;
    ip.identification = 0;
    ip.header_checksum = ip.calc_header_checksum();
    expected[14..34].copy_from_slice(&ip.to_bytes());
    expected[..12].copy_from_slice(&input[..12]);
    expected[50..56].copy_from_slice(&PEER_VTEP);
    expected[56..62].copy_from_slice(&LOCAL_VTEP);
    assert_eq!(out.len(), input.len() + 50);
    assert_eq!(hex(&out), hex(&expected), "encapsulated frame");

    // Same flow, same port; different flows spread over ports.
    let (_, again) = dp.run(Program::TcEgress, &input);
    assert_eq!(again[SPORT], out[SPORT], "one flow keeps its source port");
    let ports: BTreeSet<_> = (1..=16u8)
        .map(|host| dp.run(Program::TcEgress, &container_ping([10, 244, 2, host], 0, 8)).1[SPORT].to_vec())
        .collect();
    assert!(ports.len() > 1, "16 flows all got one source port: {ports:?}");
}

/// The source port the program picks for `frame` (a container frame for the vxlan peer).
fn vxlan_source_port(dp: &mut Datapath, frame: &[u8]) -> u16 {
    let (verdict, out) = dp.run(Program::TcEgress, frame);
    assert_eq!(verdict, TC_ACT_REDIRECT, "encapsulated");
    u16::from_be_bytes([out[SPORT.start], out[SPORT.start + 1]])
}

#[test]
fn egress_source_port_follows_the_inner_ports_except_in_fragments() {
    let mut dp = Datapath::new(true);
    let word = u32::from_le_bytes;
    let (src, dst) = ([10, 244, 1, 2], [10, 244, 2, 7]);
    let expect = |proto: u8, ports: [u8; 4]| {
        xnet_common::wire::udp_src_port(xnet_common::wire::flow_hash(
            word(src),
            word(dst),
            proto,
            word(ports),
        ))
    };
    // scapy: Ether(dst=BRIDGE_MAC, src=CONTAINER_MAC)/IP(src="10.244.1.2", dst="10.244.2.7", flags="DF",
    //        id=0x1c46)/UDP(sport=sp, dport=5000)/Raw(bytes(32)); the same with TCP(sport=sp, dport=80)
    let mut seen = BTreeSet::new();
    for sp in [40000u16, 40001, 40002, 51234] {
        let udp = UdpHeader { source_port: sp, destination_port: 5000, length: 40, checksum: 0 };
        let mut l4 = udp.to_bytes().to_vec();
        l4.extend([0u8; 32]);
        let frame = ethernet(BRIDGE_MAC, CONTAINER_MAC, 0x0800, &ipv4(src, dst, IpNumber::UDP, 0, &l4));
        let ports = [(sp >> 8) as u8, sp as u8, (5000u16 >> 8) as u8, 5000u16 as u8];
        let port = vxlan_source_port(&mut dp, &frame);
        assert_eq!(port, expect(17, ports), "UDP from port {sp}: the hash covers the ports");
        seen.insert(port);

        let mut tcp = vec![(sp >> 8) as u8, sp as u8, 0, 80];
        tcp.extend([0u8; 16]);
        let frame = ethernet(BRIDGE_MAC, CONTAINER_MAC, 0x0800, &ipv4(src, dst, IpNumber::TCP, 0, &tcp));
        assert_eq!(vxlan_source_port(&mut dp, &frame), expect(6, [(sp >> 8) as u8, sp as u8, 0, 80]), "TCP");
    }
    assert_eq!(seen.len(), 4, "four UDP flows, four source ports: {seen:?}");

    // A fragment (MF set) hashes without ports: its "ports" may be any payload bytes, and every
    // fragment of a datagram must take the same path.
    let mut fragment =
        ethernet(BRIDGE_MAC, CONTAINER_MAC, 0x0800, &ipv4(src, dst, IpNumber::UDP, 0, &[7u8; 40]));
    fragment[20] = 0x20; // flags: MF, offset 0
    let csum = {
        let mut h = Ipv4Header::from_slice(&fragment[14..34]).unwrap().0;
        h.header_checksum = h.calc_header_checksum();
        h.header_checksum
    };
    fragment[24..26].copy_from_slice(&csum.to_be_bytes());
    assert_eq!(vxlan_source_port(&mut dp, &fragment), expect(17, [0; 4]), "fragment: no ports");
    // A UDP header cut short (the IP header and two bytes): the addresses alone.
    let short = ethernet(BRIDGE_MAC, CONTAINER_MAC, 0x0800, &ipv4(src, dst, IpNumber::UDP, 0, &[1, 2]));
    assert_eq!(vxlan_source_port(&mut dp, &short), expect(17, [0; 4]), "no room for ports");
}

#[test]
fn egress_passes_what_is_not_for_a_remote_subnet() {
    let mut dp = Datapath::new(true);
    // scapy: Ether()/IP(src="10.244.1.2", dst="10.244.1.3")/ICMP()
    let local = container_ping([10, 244, 1, 3], 0, 8);
    let out = dp.check(
        "same-host ping",
        Program::TcEgress,
        &local,
        TC_ACT_OK,
        (Direction::Egress, Outcome::Passed),
    );
    assert_eq!(out, local, "same-host traffic untouched");
    // scapy: Ether()/IP(dst="198.19.0.9")/ICMP() -- outside the overlay
    let outside = container_ping([198, 19, 0, 9], 0, 8);
    assert_eq!(
        dp.check(
            "other traffic",
            Program::TcEgress,
            &outside,
            TC_ACT_OK,
            (Direction::Egress, Outcome::Passed)
        ),
        outside
    );
    // scapy: Ether()/ARP()
    let arp = ethernet(BRIDGE_MAC, CONTAINER_MAC, 0x0806, &[0u8; 28]);
    assert_eq!(
        dp.check("arp", Program::TcEgress, &arp, TC_ACT_OK, (Direction::Egress, Outcome::Passed)),
        arp
    );
    // A frame for a remote subnet but addressed to another container on this host (a router
    // container, say) is the bridge's to forward: untouched.
    // scapy: Ether(dst="02:42:0a:f4:01:03")/IP(src="10.244.1.2", dst="10.244.2.7")/ICMP()
    const ROUTER_MAC: [u8; 6] = [0x02, 0x42, 0x0a, 0xf4, 0x01, 0x03];
    dp.dp.maps_mut().put_local_port(ROUTER_MAC, 9).unwrap();
    let mut via_router = container_ping([10, 244, 2, 7], 0, 8);
    via_router[..6].copy_from_slice(&ROUTER_MAC);
    let out = dp.check(
        "remote destination via a local container",
        Program::TcEgress,
        &via_router,
        TC_ACT_OK,
        (Direction::Egress, Outcome::Passed),
    );
    assert_eq!(out, via_router);
    // The same frame to the gateway is encapsulated.
    let (verdict, _) = dp.run(Program::TcEgress, &container_ping([10, 244, 2, 7], 0, 8));
    assert_eq!(verdict, TC_ACT_REDIRECT);
}

/// `frame` (Ethernet, then IPv4) without DF, its header checksum recomputed.
fn without_df(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let mut ip = Ipv4Header::from_slice(&f[14..34]).unwrap().0;
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    f[14..34].copy_from_slice(&ip.to_bytes());
    f
}

/// The answer a router gives to `frame` (a container's, too big for the next hop): ICMP
/// "fragmentation needed" with `mtu`, from the gateway 10.244.1.1 back to the frame's source and
/// MAC, quoting its IPv4 header and 8 bytes. Built with etherparse.
fn frag_needed(frame: &[u8], mtu: u16) -> Vec<u8> {
    use etherparse::{Icmpv4Header, Icmpv4Type, icmpv4::DestUnreachableHeader};
    let quoted = &frame[14..14 + 28];
    let icmp = Icmpv4Header::with_checksum(
        Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu }),
        quoted,
    );
    let mut l4 = icmp.to_bytes().to_vec();
    l4.extend_from_slice(quoted);
    let sender: [u8; 4] = frame[26..30].try_into().unwrap();
    let mut ip = Ipv4Header::new(l4.len() as u16, 64, IpNumber::ICMP, [10, 244, 1, 1], sender).unwrap();
    // Internetwork control, fragments allowed: as Linux sends its ICMP errors.
    ip.dscp = Ipv4Dscp::try_new(0xc0 >> 2).unwrap();
    ip.dont_fragment = false;
    ip.header_checksum = ip.calc_header_checksum();
    let mut l3 = ip.to_bytes().to_vec();
    l3.extend(l4);
    let (dst, src): ([u8; 6], [u8; 6]) = (frame[6..12].try_into().unwrap(), frame[..6].try_into().unwrap());
    ethernet(dst, src, 0x0800, &l3)
}

#[test]
fn egress_answers_what_would_not_fit_the_underlay_with_frag_needed() {
    let mut dp = Datapath::new(true);
    // A 1501-byte IP packet with DF, not GSO, to a container of each peer: over the 1500 MTU once
    // encapsulated (even unencapsulated, for the direct peer). The answer names the MTU left inside
    // that peer's tunnel.
    // scapy: Ether(dst=BRIDGE_MAC, src=CONTAINER_MAC)/IP(src="10.244.1.2", dst="10.244.2.7",
    //        flags="DF", id=0x1c46)/ICMP(id=0x1234, seq=1)/Raw(bytes(range(256))*6)[:1473]
    for (n, mtu) in [(2, 1450), (3, 1472), (4, 1476), (5, 1500)] {
        let big = container_ping([10, 244, n, 7], 0, 1501 - 28);
        let out = dp.check(
            &format!("too big for 10.244.{n}.0/24"),
            Program::TcEgress,
            &big,
            TC_ACT_REDIRECT,
            (Direction::Egress, Outcome::DropTooBigAnswered),
        );
        assert_eq!(hex(&out), hex(&frag_needed(&big, mtu)), "the answer to a packet for 10.244.{n}.7");
        // What a sender's kernel reads in it.
        let answer = etherparse::SlicedPacket::from_ethernet(&out).expect("the answer parses");
        let Some(etherparse::TransportSlice::Icmpv4(icmp)) = answer.transport else {
            panic!("the answer is not ICMP: {answer:?}")
        };
        assert_eq!((icmp.type_u8(), icmp.code_u8()), (3, 4));
        assert_eq!(u16::from_be_bytes(icmp.bytes5to8()[2..4].try_into().unwrap()), mtu, "next-hop MTU");
        assert_eq!(icmp.icmp_type().calc_checksum(icmp.payload()), icmp.checksum(), "ICMP checksum");
    }
    // 1450 bytes fit the vxlan tunnel exactly.
    let fits = container_ping([10, 244, 2, 7], 0, 1450 - 20 - 8);
    dp.check("fits", Program::TcEgress, &fits, TC_ACT_REDIRECT, (Direction::Egress, Outcome::EncapVxlan));
}

#[test]
fn egress_drops_what_would_not_fit_without_df_or_over_the_icmp_rate() {
    let mut dp = Datapath::new(true);
    let big = container_ping([10, 244, 2, 7], 0, 1500 - 28);
    // Without DF a router would fragment: xnet does not, and drops it.
    dp.check(
        "too big without DF",
        Program::TcEgress,
        &without_df(&big),
        TC_ACT_SHOT,
        (Direction::Egress, Outcome::DropTooBig),
    );
    // An ICMP error itself is never answered.
    let mut error = big.clone();
    error[34] = 3;
    dp.check(
        "an ICMP error",
        Program::TcEgress,
        &error,
        TC_ACT_SHOT,
        (Direction::Egress, Outcome::DropTooBig),
    );
    // Every CPU's bucket empty, its clock far ahead: no credit for an answer.
    dp.dp.maps_mut().set_icmp_limit(TokenBucket::new(0, u64::MAX / 2)).unwrap();
    dp.check(
        "over the rate limit",
        Program::TcEgress,
        &big,
        TC_ACT_SHOT,
        (Direction::Egress, Outcome::DropTooBigRateLimited),
    );
    // Full again.
    dp.dp.maps_mut().set_icmp_limit(TokenBucket::default()).unwrap();
    dp.check(
        "answered",
        Program::TcEgress,
        &big,
        TC_ACT_REDIRECT,
        (Direction::Egress, Outcome::DropTooBigAnswered),
    );
}

#[test]
fn egress_without_config_drops_overlay_traffic_instead_of_leaking_it() {
    let mut dp = Datapath::new(false);
    // A vxlan route synced with an all-zero CONFIG, in the trie (the index is off in an all-zero
    // CONFIG): the packet would be encapsulated if CONFIG were there.
    let mut wanted = Wanted::new(Store::File, trie_only());
    let route = RemoteSubnet::new(PEER_IP, PEER_VTEP, Backend::Vxlan);
    wanted.set(net("10.244.2.0/24"), route, Peer::new(PEER_VTEP, Backend::Vxlan));
    dp.dp.sync(&wanted, &DatapathConfig::default(), &Scope::All, unix_now()).unwrap();
    assert_eq!(dp.dp.maps().config().unwrap(), DatapathConfig::default(), "no CONFIG written");
    assert_eq!(dp.dp.maps().route(&net("10.244.2.0/24")), Some(route));
    let input = container_ping([10, 244, 2, 7], 0, 8);
    dp.check(
        "no config",
        Program::TcEgress,
        &input,
        TC_ACT_SHOT,
        (Direction::Egress, Outcome::DropNotConfigured),
    );
}

/// Both decapsulation programs, with their verdicts for pass and drop.
const DECAP: [(Program, u32, u32); 2] =
    [(Program::TcIngress, TC_ACT_OK, TC_ACT_SHOT), (Program::XdpIngress, XDP_PASS, XDP_DROP)];

#[test]
fn decap_delivers_vxlan_from_a_known_peer() {
    let mut dp = Datapath::new(true);
    let inner = inner_to_local();
    // scapy: Ether(dst=UNDERLAY_MAC, src=PEER_UNDERLAY_MAC)/IP(src="198.18.0.2", dst="198.18.0.1", flags="DF")
    //        /UDP(sport=51000, dport=8472, chksum=0)/VXLAN(vni=0x123456)/Ether(dst=LOCAL_VTEP, src=PEER_VTEP)
    //        /IP(src="10.244.2.7", dst="10.244.1.5")/ICMP(type=0)
    let input = vxlan(PEER_IP, PORT, VNI, 51000, 0x0800, &inner, 0);
    // What the stack gets: the outer Ethernet addresses (this host's), then the inner packet.
    let expected = ethernet(UNDERLAY_MAC, PEER_UNDERLAY_MAC, 0x0800, &inner);
    for (program, pass, _) in DECAP {
        let out = dp.check("good vxlan", program, &input, pass, (Direction::Ingress, Outcome::DecapVxlan));
        assert_eq!(hex(&out), hex(&expected), "{}: decapsulated frame", program.name());
    }
}

#[test]
fn xdp_decap_handles_multi_buffer_jumbo_frames() {
    let mut dp = Datapath::new(true);
    // A 9000-byte frame does not fit one page: BPF_PROG_TEST_RUN hands a frags-aware XDP program the
    // rest in further buffers (and refuses it to a program that is not).
    let mut icmp = vec![0, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend((0..8900u32).map(|i| (i * 7) as u8));
    let inner = ipv4([10, 244, 2, 7], [10, 244, 1, 5], IpNumber::ICMP, 0, &icmp);
    // scapy: Ether()/IP(src="198.18.0.2", dst="198.18.0.1")/UDP(dport=8472)/VXLAN(vni=0x123456)/Ether()
    //        /IP(src="10.244.2.7", dst="10.244.1.5")/ICMP()/Raw(8900 bytes)
    let input = vxlan(PEER_IP, PORT, VNI, 51000, 0x0800, &inner, 0);
    assert!(input.len() > 4096 + 50);
    let expected = ethernet(UNDERLAY_MAC, PEER_UNDERLAY_MAC, 0x0800, &inner);
    let out = dp.check(
        "jumbo vxlan",
        Program::XdpIngress,
        &input,
        XDP_PASS,
        (Direction::Ingress, Outcome::DecapVxlan),
    );
    assert_eq!(out.len(), expected.len(), "the whole frame comes out, every buffer");
    assert_eq!(hex(&out), hex(&expected), "decapsulated jumbo frame");
}

#[test]
fn xdp_attaches_to_a_jumbo_mtu_interface() {
    // A veth refuses XDP programs that cannot take multi-buffer frames once its MTU exceeds a page;
    // xnet's can, so XDP ingress works on jumbo-frame underlays.
    let ns = xnet_lab::netns::Netns::create(&format!("xj{}", std::process::id()));
    ns.ip(&["link", "add", "j0", "mtu", "9000", "type", "veth", "peer", "name", "j1", "mtu", "9000"]);
    ns.ip(&["link", "set", "j0", "up"]);
    ns.ip(&["link", "set", "j1", "up"]);
    let attached = ns
        .spawn(|| {
            let mut dp = datapath::Datapath::load_unpinned().expect("load the programs");
            let xdp: &mut Xdp = dp.program_mut(Program::XdpIngress).expect("loaded").try_into().unwrap();
            xdp.attach("j0", aya::programs::XdpMode::default()).map(|_| ()).map_err(|e| format!("{e:?}"))
        })
        .join()
        .expect("attach thread");
    assert_eq!(attached, Ok(()), "XDP on a 9000-byte-MTU veth");
}

#[test]
fn decap_drops_and_passes_by_the_rules() {
    let mut dp = Datapath::new(true);
    let inner = inner_to_local();
    let good = vxlan(PEER_IP, PORT, VNI, 51000, 0x0800, &inner, 0);
    let mut not_local = inner.clone();
    not_local[16..20].copy_from_slice(&[10, 244, 3, 5]);
    let mut fragment = good.clone();
    fragment[20] = 0x20; // MF, DF cleared
    let mut ip = Ipv4Header::from_slice(&fragment[14..34]).unwrap().0;
    ip.header_checksum = ip.calc_header_checksum();
    fragment[14..34].copy_from_slice(&ip.to_bytes());
    let mut tcp = good.clone();
    tcp[23] = 6;
    let mut bad_checksum = good.clone();
    bad_checksum[22] = 63; // outer TTL changed, checksum left as it was
    let drop = |o| Some(o);
    let cases: Vec<(&str, Vec<u8>, Option<Outcome>)> = vec![
        // scapy: ...IP(src="198.18.0.9")/UDP(dport=8472)/VXLAN(vni=0x123456)/...
        (
            "unknown peer",
            vxlan(STRANGER_IP, PORT, VNI, 51000, 0x0800, &inner, 0),
            drop(Outcome::DropUnknownPeer),
        ),
        // scapy: ...VXLAN(vni=0x123457)/...
        ("wrong VNI", vxlan(PEER_IP, PORT, VNI + 1, 51000, 0x0800, &inner, 0), drop(Outcome::DropBadVni)),
        // scapy: ...UDP(dport=4789)/... -- not our port: not ours
        ("wrong port", vxlan(PEER_IP, 4789, VNI, 51000, 0x0800, &inner, 0), None),
        // scapy: ...VXLAN()/Ether(type=0x0806)/ARP()
        (
            "inner ARP",
            vxlan(PEER_IP, PORT, VNI, 51000, 0x0806, &[0u8; 28], 0),
            drop(Outcome::DropBadInnerProtocol),
        ),
        // scapy: .../IP(src="10.244.2.7", dst="10.244.3.5")/ICMP()
        (
            "inner not local",
            vxlan(PEER_IP, PORT, VNI, 51000, 0x0800, &not_local, 0),
            drop(Outcome::DropInnerNotLocal),
        ),
        ("outer fragment", fragment, drop(Outcome::DropOuterFragment)),
        // scapy: ...IP(src="198.18.0.2", ttl=63, chksum=<that of ttl=64>)/UDP(dport=8472)/VXLAN()/...
        ("bad outer checksum", bad_checksum, drop(Outcome::DropBadOuterChecksum)),
        ("outer TCP", tcp, None),
        // Truncated at every header boundary: before the UDP port is known the packet is not
        // provably ours (the kernel judges it); after, it is ours and truncated.
        // Cuts inside the outer IPv4 header: this kernel's BPF_PROG_TEST_RUN refuses such an skb
        // (EINVAL below 34 bytes), so these run through XDP only; see the loop below.
        ("cut 1 byte into outer IP", good[..15].to_vec(), None),
        ("cut inside outer IP", good[..24].to_vec(), None),
        ("cut after outer IP", good[..34].to_vec(), None),
        ("cut inside UDP", good[..38].to_vec(), None),
        ("cut after UDP", good[..42].to_vec(), drop(Outcome::DropTruncated)),
        ("cut inside VXLAN", good[..46].to_vec(), drop(Outcome::DropTruncated)),
        ("cut after VXLAN", good[..50].to_vec(), drop(Outcome::DropTruncated)),
        ("cut after inner Ethernet", good[..64].to_vec(), drop(Outcome::DropTruncated)),
        ("cut inside inner IP", good[..74].to_vec(), drop(Outcome::DropTruncated)),
    ];
    for (case, input, outcome) in cases {
        for (program, pass, shot) in DECAP {
            if input.len() < 34 && program == Program::TcIngress {
                continue;
            }
            match outcome {
                Some(reason) => {
                    dp.check(case, program, &input, shot, (Direction::Ingress, reason));
                }
                None => {
                    let out = dp.check(case, program, &input, pass, (Direction::Ingress, Outcome::Passed));
                    let program = program.name();
                    assert_eq!(out, input, "{case}: {program} must leave what is not ours untouched");
                }
            }
        }
    }
}

/// An outer IPv4 header as the peer at 198.18.0.`n` receives it from us (DF, ID 0, TTL 64).
fn outer_ip(n: u8, proto: IpNumber, tos: u8, payload_len: usize) -> Vec<u8> {
    let mut ip = Ipv4Header::new(payload_len as u16, 64, proto, LOCAL_IP, [198, 18, 0, n]).unwrap();
    ip.dont_fragment = true;
    ip.dscp = Ipv4Dscp::try_new(tos >> 2).unwrap();
    ip.ecn = Ipv4Ecn::try_new(tos & 3).unwrap();
    ip.header_checksum = ip.calc_header_checksum();
    ip.to_bytes().to_vec()
}

/// `inner` (an IPv4 packet) with its TTL one lower and the header checksum recomputed.
fn ttl_decremented(inner: &[u8]) -> Vec<u8> {
    let (mut ip, rest) = Ipv4Header::from_slice(inner).unwrap();
    ip.time_to_live -= 1;
    ip.header_checksum = ip.calc_header_checksum();
    let mut v = ip.to_bytes().to_vec();
    v.extend_from_slice(rest);
    v
}

#[test]
fn egress_udp_is_flannels_framing_byte_for_byte() {
    let mut dp = Datapath::new(true);
    // scapy: Ether(dst=BRIDGE_MAC, src=CONTAINER_MAC)/IP(src="10.244.1.2", dst="10.244.3.7", tos=0x20,
    //        flags="DF", id=0x1c46)/ICMP(id=0x1234, seq=1)/Raw(bytes(range(40)))
    let input = container_ping([10, 244, 3, 7], 0x20, 40);
    let out =
        dp.check("udp", Program::TcEgress, &input, TC_ACT_REDIRECT, (Direction::Egress, Outcome::EncapUdp));
    // scapy: Ether(...)/IP(src="198.18.0.1", dst="198.18.0.3", tos=0x20, flags="DF", id=0)
    //        /UDP(sport=8285, dport=8285, chksum=0)/<input IP with ttl 63>
    let inner = ttl_decremented(&input[14..]);
    let mut expected = input[..14].to_vec();
    expected.extend(outer_ip(3, IpNumber::UDP, 0x20, 8 + inner.len()));
    expected.extend(
        UdpHeader {
            source_port: 8285,
            destination_port: 8285,
            length: (8 + inner.len()) as u16,
            checksum: 0,
        }
        .to_bytes(),
    );
    expected.extend(&inner);
    assert_eq!(hex(&out), hex(&expected), "flannel udp frame");

    // An inner TTL of 1 would reach 0: dropped, as flannel does.
    let mut dying = input.clone();
    let (mut ip, _) = Ipv4Header::from_slice(&dying[14..]).unwrap();
    ip.time_to_live = 1;
    ip.header_checksum = ip.calc_header_checksum();
    dying[14..34].copy_from_slice(&ip.to_bytes());
    dp.check("ttl 1", Program::TcEgress, &dying, TC_ACT_SHOT, (Direction::Egress, Outcome::DropTtlExceeded));
}

#[test]
fn egress_gre_byte_for_byte_with_and_without_key() {
    // scapy: Ether(...)/IP(src="10.244.1.2", dst="10.244.4.7", flags="DF", id=0x1c46)/ICMP()/Raw(...)
    let input = container_ping([10, 244, 4, 7], 0, 24);
    for key in [None, Some(0xdead_beef_u32)] {
        let mut dp = Datapath::with(true, key);
        let out = dp.check(
            "gre",
            Program::TcEgress,
            &input,
            TC_ACT_REDIRECT,
            (Direction::Egress, Outcome::EncapGre),
        );
        // scapy: Ether(...)/IP(src="198.18.0.1", dst="198.18.0.4", flags="DF", id=0, proto=47)
        //        /GRE(proto=0x0800[, key_present=1, key=0xdeadbeef])/<input IP>
        let gre: Vec<u8> = match key {
            None => vec![0x00, 0x00, 0x08, 0x00],
            Some(k) => [vec![0x20, 0x00, 0x08, 0x00], k.to_be_bytes().to_vec()].concat(),
        };
        let mut expected = input[..14].to_vec();
        expected.extend(outer_ip(4, IpNumber::GRE, 0, gre.len() + input.len() - 14));
        expected.extend(&gre);
        expected.extend(&input[14..]);
        assert_eq!(hex(&out), hex(&expected), "GRE frame, key {key:?}");
    }
}

#[test]
fn egress_direct_leaves_the_packet_as_it_is() {
    let mut dp = Datapath::new(true);
    let input = container_ping([10, 244, 5, 7], 0, 8);
    let out =
        dp.check("direct", Program::TcEgress, &input, TC_ACT_REDIRECT, (Direction::Egress, Outcome::Direct));
    assert_eq!(out, input, "direct routing sends the packet unchanged (the kernel sets the MACs)");
    let big = without_df(&container_ping([10, 244, 5, 7], 0, 1501 - 28));
    dp.check(
        "direct too big",
        Program::TcEgress,
        &big,
        TC_ACT_SHOT,
        (Direction::Egress, Outcome::DropTooBig),
    );
}

/// A frame from the peer 198.18.0.`n` carrying `l4` (proto `proto`) to us.
fn from_peer(n: u8, proto: IpNumber, l4: &[u8]) -> Vec<u8> {
    let mut ip = Ipv4Header::new(l4.len() as u16, 64, proto, [198, 18, 0, n], LOCAL_IP).unwrap();
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    let mut l3 = ip.to_bytes().to_vec();
    l3.extend_from_slice(l4);
    ethernet(UNDERLAY_MAC, PEER_UNDERLAY_MAC, 0x0800, &l3)
}

#[test]
fn decap_udp_and_gre_from_known_peers() {
    // Each peer sends from its own subnet: 198.18.0.3 (udp) owns 10.244.3.0/24, 198.18.0.4 (gre)
    // 10.244.4.0/24.
    let from_3 = inner_from([10, 244, 3, 7]);
    let inner = inner_from([10, 244, 4, 7]);
    let udp = [
        UdpHeader {
            source_port: 8285,
            destination_port: 8285,
            length: (8 + from_3.len()) as u16,
            checksum: 0,
        }
        .to_bytes()
        .to_vec(),
        from_3.clone(),
    ]
    .concat();
    let gre = [vec![0x00, 0x00, 0x08, 0x00], inner.clone()].concat();
    let gre_keyed = [vec![0x20, 0x00, 0x08, 0x00], 7u32.to_be_bytes().to_vec(), inner.clone()].concat();
    // scapy: ...IP(src="198.18.0.3")/UDP(sport=8285, dport=8285)/IP(src="10.244.3.7", dst="10.244.1.5")/ICMP()
    // scapy: ...IP(src="198.18.0.4", proto=47)/GRE(proto=0x0800)/IP(src="10.244.4.7", ...)/ICMP()
    // scapy: ...IP(src="198.18.0.4", proto=47)/GRE(proto=0x0800, key_present=1, key=7)/IP(src="10.244.4.7", ...)/ICMP()
    let cases = [
        (None, from_peer(3, IpNumber::UDP, &udp), Outcome::DecapUdp, &from_3),
        (None, from_peer(4, IpNumber::GRE, &gre), Outcome::DecapGre, &inner),
        (Some(7), from_peer(4, IpNumber::GRE, &gre_keyed), Outcome::DecapGre, &inner),
    ];
    for (key, input, outcome, inner) in cases {
        let expected = ethernet(UNDERLAY_MAC, PEER_UNDERLAY_MAC, 0x0800, inner);
        let mut dp = Datapath::with(true, key);
        for (program, pass, _) in DECAP {
            let out = dp.check("decap", program, &input, pass, (Direction::Ingress, outcome));
            assert_eq!(hex(&out), hex(&expected), "{}: {outcome:?} decapsulated", program.name());
        }
    }
}

#[test]
fn decap_gre_drops_by_the_rules() {
    // From the gre peer 198.18.0.4, a container of its subnet.
    let inner = inner_from([10, 244, 4, 7]);
    let plain = from_peer(4, IpNumber::GRE, &[vec![0x00, 0x00, 0x08, 0x00], inner.clone()].concat());
    let keyed = |k: u32| {
        from_peer(
            4,
            IpNumber::GRE,
            &[vec![0x20, 0x00, 0x08, 0x00], k.to_be_bytes().to_vec(), inner.clone()].concat(),
        )
    };
    let with_flags = |f: [u8; 2]| {
        from_peer(4, IpNumber::GRE, &[vec![f[0], f[1], 0x08, 0x00], vec![0; 4], inner.clone()].concat())
    };
    let ethernet_in_gre =
        from_peer(4, IpNumber::GRE, &[vec![0x00, 0x00, 0x65, 0x58], inner.clone()].concat());
    let stranger = {
        let mut f = plain.clone();
        f[26..30].copy_from_slice(&STRANGER_IP);
        let mut ip = Ipv4Header::from_slice(&f[14..34]).unwrap().0;
        ip.header_checksum = ip.calc_header_checksum();
        f[14..34].copy_from_slice(&ip.to_bytes());
        f
    };
    let drop = |o| Some(o);
    // (GRE key configured, case, input, drop reason or None for "not ours")
    type Case = (Option<u32>, &'static str, Vec<u8>, Option<Outcome>);
    let cases: Vec<Case> = vec![
        (Some(7), "wrong key", keyed(8), drop(Outcome::DropBadGreKey)),
        (Some(7), "key missing", plain.clone(), drop(Outcome::DropBadGreKey)),
        (None, "unexpected key", keyed(7), drop(Outcome::DropBadGreKey)),
        (None, "checksum flag", with_flags([0x80, 0x00]), drop(Outcome::DropBadGreHeader)),
        (None, "sequence flag", with_flags([0x10, 0x00]), drop(Outcome::DropBadGreHeader)),
        (None, "version 1", with_flags([0x00, 0x01]), drop(Outcome::DropBadGreHeader)),
        (None, "unknown peer", stranger, drop(Outcome::DropUnknownPeer)),
        (None, "cut inside GRE", plain[..36].to_vec(), None),
        (None, "cut after GRE", plain[..38].to_vec(), drop(Outcome::DropTruncated)),
        (Some(7), "cut inside key", keyed(7)[..40].to_vec(), drop(Outcome::DropTruncated)),
        // Ethernet over GRE (0x6558) is someone else's: untouched.
        (None, "TEB payload", ethernet_in_gre, None),
    ];
    for (key, case, input, outcome) in cases {
        let mut dp = Datapath::with(true, key);
        for (program, pass, shot) in DECAP {
            match outcome {
                Some(reason) => {
                    dp.check(case, program, &input, shot, (Direction::Ingress, reason));
                }
                None => {
                    let out = dp.check(case, program, &input, pass, (Direction::Ingress, Outcome::Passed));
                    assert_eq!(out, input, "{case}: untouched");
                }
            }
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.chunks(16)
        .map(|c| c.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `f` with a bench whose tc runs arrive on the underlay of a namespace where decapsulated
/// packets can be delivered, and whose LOCAL_PORTS knows the container's MAC behind `port`.
fn with_delivery_bench(f: impl FnOnce(xnet_lab::progcost::Bench, u32) + Send + 'static) {
    use xnet_lab::progcost::{Bench, CONTAINER_MAC, in_delivery_netns};
    in_delivery_netns(|underlay, port| {
        let mut bench = Bench::new();
        bench.arrive_on(underlay);
        bench.local_port(CONTAINER_MAC, port);
        f(bench, port)
    });
}

#[test]
fn decap_delivers_into_the_container_and_remembers_where_it_is() {
    use xnet_lab::progcost::{BRIDGE_MAC as BR, CONTAINER_MAC as CMAC, tunnelled_frame};
    with_delivery_bench(|mut bench, port| {
        let input = tunnelled_frame(2, Backend::Vxlan);
        let inner = &input[14 + 50..];
        let (verdict, out) = bench.run(Program::TcIngress, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT, "straight into the container");
        // The inner packet with the container's and the bridge's MACs, its TTL one lower and the
        // header checksum still right.
        let mut ip = Ipv4Header::from_slice(inner).unwrap().0;
        ip.time_to_live -= 1;
        ip.header_checksum = ip.calc_header_checksum();
        let mut expected = ethernet(CMAC, BR, 0x0800, &ip.to_bytes());
        expected.extend_from_slice(&inner[20..]);
        assert_eq!(hex(&out), hex(&expected));
        let endpoints = bench.endpoints();
        assert_eq!(endpoints.len(), 1, "{endpoints:?}");
        assert_eq!(
            (endpoints[0].0, endpoints[0].1.ifindex(), endpoints[0].1.dmac()),
            ([10, 244, 1, 5], port, CMAC)
        );

        // Remembered: delivered without asking the kernel's tables, even once they forgot.
        let ns_ip = |args: &[&str]| xnet_lab::netns::run_ok(std::process::Command::new("ip").args(args));
        ns_ip(&["neigh", "del", "10.244.1.5", "dev", "xb0"]);
        assert_eq!(bench.run(Program::TcIngress, &input).0, TC_ACT_REDIRECT, "from ENDPOINTS");
        // The agent's tick keeps a young one whose container is still behind its port.
        let ports = BTreeMap::from([(CMAC, port)]);
        bench.expire_endpoints(&ports);
        assert_eq!(bench.endpoints().len(), 1, "young and in place: kept");
        // An entry older than its lifetime is not used, agent or no agent: the program asks the
        // kernel again. No neighbour now (the container is gone), so the stack gets the packet,
        // and the program removes the dead entry.
        bench.age_endpoints();
        let (verdict, out) = bench.run(Program::TcIngress, &input);
        assert_eq!(verdict, TC_ACT_OK, "an aged entry is not used; the kernel no longer knows the container");
        assert_eq!(&out[14..], inner, "handed to the stack decapsulated and otherwise untouched");
        assert!(bench.endpoints().is_empty(), "the aged entry of a container that is gone: removed");
        // The container back: resolved and remembered afresh.
        let cmac = CMAC.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        ns_ip(&["neigh", "replace", "10.244.1.5", "lladdr", &cmac, "dev", "xb0", "nud", "permanent"]);
        assert_eq!(bench.run(Program::TcIngress, &input).0, TC_ACT_REDIRECT, "resolved again");
        let fresh = bench.endpoints();
        assert_eq!(fresh.len(), 1, "{fresh:?}");
        assert!(!fresh[0].1.is_stale(xnet::clock::monotonic_coarse_ns()), "a fresh timestamp");
        // The agent's tick removes an old entry too.
        bench.age_endpoints();
        bench.expire_endpoints(&ports);
        assert!(bench.endpoints().is_empty(), "old: removed by the agent");
    });
}

#[test]
fn decap_never_delivers_by_an_entry_left_for_another_address() {
    use xnet_lab::progcost::{BRIDGE_MAC as BR, CONTAINER_MAC as CMAC, tunnelled_frame};
    with_delivery_bench(|mut bench, port| {
        // ENDPOINTS entry 5 as a /24 subnet 10.244.9.0 left it (this host's subnet changed; the
        // pinned array stayed): young, but for 10.244.9.5, with another port and MACs.
        let other = Endpoint::new(
            [10, 244, 9, 5],
            port + 1000,
            [2, 0, 0, 0, 9, 5],
            [2, 0, 0, 0, 9, 1],
            xnet::clock::monotonic_coarse_ns(),
        );
        bench.put_endpoint(&other);
        assert_eq!(bench.endpoints(), vec![([10, 244, 9, 5], other)]);
        let input = tunnelled_frame(2, Backend::Vxlan);
        let (verdict, out) = bench.run(Program::TcIngress, &input);
        assert_eq!(verdict, TC_ACT_REDIRECT, "into the container");
        assert_eq!(&out[..12], [CMAC, BR].concat(), "with the MACs the kernel knows, not the other entry's");
        let now = bench.endpoints();
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(
            (now[0].0, now[0].1.ifindex(), now[0].1.dmac()),
            ([10, 244, 1, 5], port, CMAC),
            "the entry now answers for 10.244.1.5"
        );
    });
}

/// The REMOTE_SUBNETS write of `route` for `subnet`, as the agent makes it for a static-file route.
fn put_route(subnet: &str, route: RemoteSubnet) -> Op {
    let subnet = net(subnet);
    Op::PutRoute(subnet, RouteEntry::new(subnet.prefix(), route, RouteInfo::new(Store::File, 1)))
}

#[test]
fn a_route_withdrawn_mid_flight_never_sends_to_0_0_0_0() {
    let mut dp = Datapath::new(true);
    let input = container_ping([10, 244, 2, 7], 0, 8);
    // A ROUTE_INDEX entry as a packet may see it while the agent zeroes it: the backend still
    // there, the peer address already 0.0.0.0. Dropped, never encapsulated to 0.0.0.0.
    let torn = RemoteSubnet::new([0; 4], PEER_VTEP, Backend::Vxlan);
    dp.write(Op::PutIndex(2, torn));
    dp.check(
        "torn index entry",
        Program::TcEgress,
        &input,
        TC_ACT_SHOT,
        (Direction::Egress, Outcome::DropRouteWithdrawn),
    );
    // The direct backend too (it would ask the kernel for the neighbour 0.0.0.0).
    dp.write(Op::PutIndex(5, RemoteSubnet::new([0; 4], PEER_VTEP, Backend::Direct)));
    dp.check(
        "torn direct entry",
        Program::TcEgress,
        &container_ping([10, 244, 5, 7], 0, 8),
        TC_ACT_SHOT,
        (Direction::Egress, Outcome::DropRouteWithdrawn),
    );
    // The entry all zero, as the agent leaves it: no route, the packet is not overlay traffic.
    dp.write(Op::PutIndex(2, RemoteSubnet::default()));
    let out = dp.check("removed", Program::TcEgress, &input, TC_ACT_OK, (Direction::Egress, Outcome::Passed));
    assert_eq!(out, input, "untouched");
    // The same in the LPM trie (the index switched off).
    let mut dp = Datapath::with_lookup(true, None, Lookup::Trie);
    dp.write(put_route("10.244.2.0/24", torn));
    dp.check(
        "torn trie entry",
        Program::TcEgress,
        &input,
        TC_ACT_SHOT,
        (Direction::Egress, Outcome::DropRouteWithdrawn),
    );
}

#[test]
fn peers_sharing_a_slot_are_checked_in_full() {
    use xnet_common::maps::peer_slot;
    let mut dp = Datapath::new(true);
    // Two addresses that hash to the same PEER_SLOTS entry, and a stranger hashing there too.
    // Addresses from 198.0.0.0/8 (the datapath checks nothing else about them).
    let slot_of = |n: u32| peer_slot(&(0xc600_0000u32 + n).to_be_bytes());
    let a = 0x100u32;
    let mut same = (a + 1..1 << 24).filter(|n| slot_of(*n) == slot_of(a));
    let (b, stranger) = (same.next().expect("a colliding address"), same.next().expect("another"));
    let [a, b, stranger] = [a, b, stranger].map(|n| (0xc600_0000u32 + n).to_be_bytes());
    // Both become peers as the agent adds them (vxlan, owning 10.244.8.0/24 and 10.244.9.0/24).
    dp.add_peers(&[peer("10.244.8.0/24", a, Backend::Vxlan), peer("10.244.9.0/24", b, Backend::Vxlan)]);
    let written = dp.dp.maps().mirror().unwrap();
    let vxlan_peer = Peer::new(PEER_VTEP, Backend::Vxlan);
    assert_eq!(
        (written.peers.get(&a), written.peers.get(&b)),
        (Some(&vxlan_peer), Some(&vxlan_peer)),
        "PEERS"
    );
    assert_eq!(written.slots[&peer_slot(&a)].state(), SlotState::Shared, "{:?}", written.slots);
    assert_eq!(
        written.slots[&peer_slot(&[198, 18, 0, 2])],
        PeerSlot::peer([198, 18, 0, 2]),
        "{:?}",
        written.slots
    );
    let inner = inner_to_local();
    for (who, src, subnet) in [("first of a shared slot", a, 8), ("second of a shared slot", b, 9)] {
        // Each from a container of its own subnet.
        // scapy: Ether()/IP(src=who, dst="198.18.0.1")/UDP(dport=8472)/VXLAN(vni=0x123456)/Ether()
        //        /IP(src="10.244.<subnet>.7", dst="10.244.1.5")/ICMP()
        let input = vxlan(src, PORT, VNI, 51000, 0x0800, &inner_from([10, 244, subnet, 7]), 0);
        dp.check(who, Program::XdpIngress, &input, XDP_PASS, (Direction::Ingress, Outcome::DecapVxlan));
    }
    let input = vxlan(stranger, PORT, VNI, 51000, 0x0800, &inner, 0);
    dp.check(
        "stranger in a shared slot",
        Program::XdpIngress,
        &input,
        XDP_DROP,
        (Direction::Ingress, Outcome::DropUnknownPeer),
    );
    // A stranger hashing to a slot that holds exactly one peer.
    let lone = (0u32..1 << 24)
        .map(|n| (0xc600_0000u32 + n).to_be_bytes())
        .find(|ip| peer_slot(ip) == peer_slot(&[198, 18, 0, 2]) && *ip != [198, 18, 0, 2])
        .expect("an address sharing peer 198.18.0.2's slot");
    let input = vxlan(lone, PORT, VNI, 51000, 0x0800, &inner, 0);
    dp.check(
        "stranger in a peer's slot",
        Program::XdpIngress,
        &input,
        XDP_DROP,
        (Direction::Ingress, Outcome::DropUnknownPeer),
    );
}

#[test]
fn the_route_index_answers_for_the_network_while_switched_on() {
    let mut dp = Datapath::new(true);
    let index_only = container_ping([10, 244, 7, 9], 0, 8); // in ROUTE_INDEX only
    let trie_only = container_ping([10, 244, 2, 7], 0, 8); // in REMOTE_SUBNETS only
    let via_index = RemoteSubnet::new(PEER_IP, PEER_VTEP, Backend::Vxlan);
    // The agent's sync switched the index on for /24 subnets of 10.244.0.0/16 (CONFIG checked in
    // the fixture): entry n is 10.244.n.0/24, filled from the routes.
    let written = dp.dp.maps().mirror().unwrap();
    let from_routes: BTreeMap<u32, RemoteSubnet> = BACKENDS
        .iter()
        .map(|&(n, _)| (u32::from(n), *written.routes[&net(&format!("10.244.{n}.0/24"))].route()))
        .collect();
    assert_eq!(written.index, from_routes, "ROUTE_INDEX");
    // A state the agent never leaves, to show which map answers: 10.244.7.0/24 in the index only,
    // 10.244.2.0/24 in the trie only.
    dp.write(Op::PutIndex(7, via_index));
    dp.write(Op::PutIndex(2, RemoteSubnet::default()));
    let set_flag = |dp: &mut Datapath, on: bool| {
        let cfg = dp.dp.maps().config().unwrap();
        let switched = if on {
            cfg.with_route_index(cfg.index_net(), cfg.index_netmask(), cfg.index_shift())
        } else {
            cfg.without_route_index()
        };
        assert_eq!(switched.route_index_on(), on);
        dp.write(Op::Config(Box::new(switched)));
    };
    // Off: the trie decides.
    set_flag(&mut dp, false);
    dp.check(
        "index off, trie route",
        Program::TcEgress,
        &trie_only,
        TC_ACT_REDIRECT,
        (Direction::Egress, Outcome::EncapVxlan),
    );
    dp.check(
        "index off, index entry",
        Program::TcEgress,
        &index_only,
        TC_ACT_OK,
        (Direction::Egress, Outcome::Passed),
    );
    // On: inside the network the index alone decides.
    set_flag(&mut dp, true);
    let out = dp.check(
        "index on",
        Program::TcEgress,
        &index_only,
        TC_ACT_REDIRECT,
        (Direction::Egress, Outcome::EncapVxlan),
    );
    assert_eq!(out[30..34], PEER_IP, "sent to the peer the index names");
    dp.check(
        "index on, not in it",
        Program::TcEgress,
        &trie_only,
        TC_ACT_OK,
        (Direction::Egress, Outcome::Passed),
    );
    // Outside the network the trie still answers.
    dp.write(put_route("172.16.0.0/24", via_index));
    let outside = container_ping([172, 16, 0, 9], 0, 8);
    dp.check(
        "index on, outside the network",
        Program::TcEgress,
        &outside,
        TC_ACT_REDIRECT,
        (Direction::Egress, Outcome::EncapVxlan),
    );
}

#[test]
fn the_trie_answers_as_the_index_does() {
    // The other tests run with the route index switched on, as the agent has it when every route
    // is a /24 of the network. The same routes in the LPM trie alone (switched off by a shape no
    // route fits) must give the same verdicts, counters and bytes.
    let mut by_index = Datapath::new(true);
    let mut by_trie = Datapath::with_lookup(true, None, Lookup::Trie);
    let (passed, redirect) = ((TC_ACT_OK, Outcome::Passed), TC_ACT_REDIRECT);
    let cases = [
        ([10, 244, 2, 7], (redirect, Outcome::EncapVxlan)),
        ([10, 244, 3, 7], (redirect, Outcome::EncapUdp)),
        ([10, 244, 4, 7], (redirect, Outcome::EncapGre)),
        ([10, 244, 5, 7], (redirect, Outcome::Direct)),
        ([10, 244, 1, 3], passed),
        ([10, 244, 7, 9], passed),
        ([198, 19, 0, 9], passed),
    ];
    for (dst, (verdict, outcome)) in cases {
        // scapy: Ether(dst=BRIDGE_MAC, src=CONTAINER_MAC)/IP(src="10.244.1.2", dst=dst, tos=0xb8,
        //        flags="DF", id=0x1c46)/ICMP(id=0x1234, seq=1)/Raw(bytes(range(56)))
        let input = container_ping(dst, 0xb8, 56);
        let case = format!("to {dst:?}");
        let counted = (Direction::Egress, outcome);
        let trie = by_trie.check(&format!("{case} (trie)"), Program::TcEgress, &input, verdict, counted);
        let index = by_index.check(&format!("{case} (index)"), Program::TcEgress, &input, verdict, counted);
        assert_eq!(hex(&trie), hex(&index), "{case}: the same frame either way");
    }
}

#[test]
fn decap_requires_the_inner_source_to_be_the_senders() {
    // Peers: 198.18.0.2 owns 10.244.2.0/24 (vxlan), .3 10.244.3.0/24 (udp), .4 10.244.4.0/24 (gre);
    // this host 10.244.1.0/24. The owner is looked up as egress looks up a destination: the same
    // verdicts with the route index on and with the LPM trie alone.
    let udp_from_3 = |inner: &[u8]| {
        let udp = UdpHeader {
            source_port: UDP_PORT,
            destination_port: UDP_PORT,
            length: (8 + inner.len()) as u16,
            checksum: 0,
        };
        from_peer(3, IpNumber::UDP, &[udp.to_bytes().to_vec(), inner.to_vec()].concat())
    };
    let gre_from_4 =
        |inner: &[u8]| from_peer(4, IpNumber::GRE, &[vec![0x00, 0x00, 0x08, 0x00], inner.to_vec()].concat());
    let vxlan_from_2 = |inner: &[u8]| vxlan(PEER_IP, PORT, VNI, 51000, 0x0800, inner, 0);
    let not_peer = Some(Outcome::DropInnerSourceNotPeer);
    type Case = (&'static str, Vec<u8>, Option<Outcome>);
    let cases: Vec<Case> = vec![
        // scapy: Ether()/IP(src="198.18.0.2", dst="198.18.0.1")/UDP(dport=8472)/VXLAN(vni=0x123456)/Ether()
        //        /IP(src="10.244.3.7", dst="10.244.1.5")/ICMP(type=0)
        ("vxlan, another peer's container", vxlan_from_2(&inner_from([10, 244, 3, 7])), not_peer),
        // scapy: ... /IP(src="10.244.1.9", dst="10.244.1.5")/ICMP(type=0)
        ("vxlan, this host's container", vxlan_from_2(&inner_from([10, 244, 1, 9])), not_peer),
        // scapy: ... /IP(src="192.168.0.1", dst="10.244.1.5")/ICMP(type=0)
        ("vxlan, outside the network", vxlan_from_2(&inner_from([192, 168, 0, 1])), not_peer),
        // scapy: ... /IP(src="10.244.7.9", dst="10.244.1.5")/ICMP(type=0) -- inside, but nobody's
        ("vxlan, a subnet nobody owns", vxlan_from_2(&inner_from([10, 244, 7, 9])), not_peer),
        // scapy: ... /IP(src="10.244.2.200", dst="10.244.1.5")/ICMP(type=0)
        ("vxlan, its own container", vxlan_from_2(&inner_from([10, 244, 2, 200])), Some(Outcome::DecapVxlan)),
        // scapy: Ether()/IP(src="198.18.0.3", dst="198.18.0.1")/UDP(sport=8285, dport=8285)
        //        /IP(src="10.244.2.7", dst="10.244.1.5")/ICMP(type=0)
        ("udp, another peer's container", udp_from_3(&inner_from([10, 244, 2, 7])), not_peer),
        // scapy: ... /IP(src="10.244.1.9", dst="10.244.1.5")/ICMP(type=0)
        ("udp, this host's container", udp_from_3(&inner_from([10, 244, 1, 9])), not_peer),
        // scapy: Ether()/IP(src="198.18.0.4", dst="198.18.0.1", proto=47)/GRE(proto=0x0800)
        //        /IP(src="10.244.3.7", dst="10.244.1.5")/ICMP(type=0)
        ("gre, another peer's container", gre_from_4(&inner_from([10, 244, 3, 7])), not_peer),
        // scapy: ... /IP(src="8.8.8.8", dst="10.244.1.5")/ICMP(type=0)
        ("gre, outside the network", gre_from_4(&inner_from([8, 8, 8, 8])), not_peer),
        // The direct peer 198.18.0.5 owns 10.244.5.0/24, but sends unencapsulated: in a tunnel, its
        // containers are still its own.
        // scapy: Ether()/IP(src="198.18.0.5", dst="198.18.0.1")/UDP(dport=8472)/VXLAN(vni=0x123456)/Ether()
        //        /IP(src="10.244.5.7", dst="10.244.1.5")/ICMP(type=0)
        (
            "vxlan from the direct peer, its container",
            vxlan([198, 18, 0, 5], PORT, VNI, 51000, 0x0800, &inner_from([10, 244, 5, 7]), 0),
            Some(Outcome::DecapVxlan),
        ),
    ];
    for lookup in [Lookup::Index, Lookup::Trie] {
        let mut dp = Datapath::with_lookup(true, None, lookup);
        for (case, input, outcome) in &cases {
            let case = format!("{case} ({lookup:?})");
            for (program, pass, shot) in DECAP {
                match outcome {
                    Some(Outcome::DropInnerSourceNotPeer) => {
                        dp.check(
                            &case,
                            program,
                            input,
                            shot,
                            (Direction::Ingress, Outcome::DropInnerSourceNotPeer),
                        );
                    }
                    Some(delivered) => {
                        let out = dp.check(&case, program, input, pass, (Direction::Ingress, *delivered));
                        let strip = if *delivered == Outcome::DecapVxlan { 50 } else { 0 };
                        assert_eq!(hex(&out[14..]), hex(&input[14 + strip..]), "{case}: decapsulated");
                    }
                    None => unreachable!(),
                }
            }
        }
    }
}

#[test]
fn decap_requires_the_outer_destination_to_be_this_host() {
    let mut dp = Datapath::new(true);
    const ELSEWHERE: [u8; 4] = [198, 18, 0, 7];
    let inner = inner_to_local();
    let good = vxlan(PEER_IP, PORT, VNI, 51000, 0x0800, &inner, 0);
    let gre =
        from_peer(4, IpNumber::GRE, &[vec![0x00, 0x00, 0x08, 0x00], inner_from([10, 244, 4, 7])].concat());
    let udp = {
        let inner = inner_from([10, 244, 3, 7]);
        let h = UdpHeader {
            source_port: UDP_PORT,
            destination_port: UDP_PORT,
            length: (8 + inner.len()) as u16,
            checksum: 0,
        };
        from_peer(3, IpNumber::UDP, &[h.to_bytes().to_vec(), inner].concat())
    };
    let not_local = Some(Outcome::DropOuterNotLocal);
    let cases: Vec<(&str, Vec<u8>, Option<Outcome>)> = vec![
        // scapy: Ether()/IP(src="198.18.0.2", dst="198.18.0.7")/UDP(dport=8472)/VXLAN(vni=0x123456)/Ether()
        //        /IP(src="10.244.2.7", dst="10.244.1.5")/ICMP(type=0)
        ("vxlan to another host", readdressed(&good, PEER_IP, ELSEWHERE), not_local),
        // scapy: Ether()/IP(src="198.18.0.3", dst="198.18.0.7")/UDP(sport=8285, dport=8285)/IP(...)/ICMP()
        ("udp to another host", readdressed(&udp, [198, 18, 0, 3], ELSEWHERE), not_local),
        // scapy: Ether()/IP(src="198.18.0.4", dst="198.18.0.7", proto=47)/GRE(proto=0x0800)/IP(...)/ICMP()
        ("gre to another host", readdressed(&gre, [198, 18, 0, 4], ELSEWHERE), not_local),
        // From a stranger too: the destination is judged first.
        // scapy: Ether()/IP(src="198.18.0.9", dst="198.18.0.7")/UDP(dport=8472)/VXLAN(vni=0x123456)/...
        ("stranger's vxlan to another host", readdressed(&good, STRANGER_IP, ELSEWHERE), not_local),
        // scapy: Ether()/IP(src="198.18.0.2", dst="255.255.255.255")/UDP(dport=8472)/VXLAN(vni=0x123456)/...
        ("vxlan to broadcast", readdressed(&good, PEER_IP, [255, 255, 255, 255]), not_local),
        // Not a tunnel packet of ours (another port): the kernel's, whatever its destination.
        // scapy: Ether()/IP(src="198.18.0.2", dst="198.18.0.7")/UDP(dport=4789)/VXLAN(vni=0x123456)/...
        (
            "other port to another host",
            readdressed(&vxlan(PEER_IP, 4789, VNI, 51000, 0x0800, &inner, 0), PEER_IP, ELSEWHERE),
            None,
        ),
    ];
    for (case, input, outcome) in cases {
        for (program, pass, shot) in DECAP {
            match outcome {
                Some(reason) => {
                    dp.check(case, program, &input, shot, (Direction::Ingress, reason));
                }
                None => {
                    let out = dp.check(case, program, &input, pass, (Direction::Ingress, Outcome::Passed));
                    assert_eq!(out, input, "{case}: untouched");
                }
            }
        }
    }
}

#[test]
fn egress_drops_overlay_traffic_from_a_foreign_source() {
    let mut dp = Datapath::new(true);
    let from = |src: [u8; 4], dst: [u8; 4]| {
        let mut f = container_ping(dst, 0, 8);
        let mut ip = Ipv4Header::from_slice(&f[14..34]).unwrap().0;
        ip.source = src;
        ip.header_checksum = ip.calc_header_checksum();
        f[14..34].copy_from_slice(&ip.to_bytes());
        f
    };
    let counted = (Direction::Egress, Outcome::DropSourceNotLocal);
    // scapy: Ether(dst=BRIDGE_MAC, src=CONTAINER_MAC)/IP(src="10.244.2.9", dst="10.244.2.7")/ICMP()
    //        -- posing as a container of the peer it sends to
    dp.check(
        "another host's source",
        Program::TcEgress,
        &from([10, 244, 2, 9], [10, 244, 2, 7]),
        TC_ACT_SHOT,
        counted,
    );
    // scapy: ... IP(src="10.244.3.9", dst="10.244.4.7")/ICMP() -- gre peer, udp peer's source
    dp.check(
        "a third host's source",
        Program::TcEgress,
        &from([10, 244, 3, 9], [10, 244, 4, 7]),
        TC_ACT_SHOT,
        counted,
    );
    // scapy: ... IP(src="192.168.1.2", dst="10.244.3.7")/ICMP()
    dp.check(
        "outside the network",
        Program::TcEgress,
        &from([192, 168, 1, 2], [10, 244, 3, 7]),
        TC_ACT_SHOT,
        counted,
    );
    // scapy: ... IP(src="0.0.0.0", dst="10.244.5.7")/ICMP() -- the direct backend too
    dp.check("unspecified", Program::TcEgress, &from([0, 0, 0, 0], [10, 244, 5, 7]), TC_ACT_SHOT, counted);
    // Only overlay traffic is judged: a foreign source to this host's subnet is the kernel's.
    // scapy: ... IP(src="192.168.1.2", dst="10.244.1.3")/ICMP()
    let same_host = from([192, 168, 1, 2], [10, 244, 1, 3]);
    let out = dp.check(
        "foreign source, same host",
        Program::TcEgress,
        &same_host,
        TC_ACT_OK,
        (Direction::Egress, Outcome::Passed),
    );
    assert_eq!(out, same_host);
    // The host's own traffic leaves from its subnet's network address (xnet0): sent.
    // scapy: ... IP(src="10.244.1.0", dst="10.244.2.7")/ICMP()
    dp.check(
        "the host, from the network address",
        Program::TcEgress,
        &from([10, 244, 1, 0], [10, 244, 2, 7]),
        TC_ACT_REDIRECT,
        (Direction::Egress, Outcome::EncapVxlan),
    );
    // scapy: ... IP(src="10.244.1.255", dst="10.244.3.7")/ICMP()
    dp.check(
        "the subnet's last address",
        Program::TcEgress,
        &from([10, 244, 1, 255], [10, 244, 3, 7]),
        TC_ACT_REDIRECT,
        (Direction::Egress, Outcome::EncapUdp),
    );
}

/// An ICMP echo request from `src` to `dst`, unencapsulated, as it arrives on the underlay.
fn untunnelled(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, 0, 1];
    icmp.extend(0..32u8);
    ethernet(UNDERLAY_MAC, PEER_UNDERLAY_MAC, 0x0800, &ipv4(src, dst, IpNumber::ICMP, 0, &icmp))
}

#[test]
fn decap_drops_untunnelled_traffic_to_containers_unless_from_a_direct_peer() {
    let not_direct = Some(Outcome::DropUntunnelledNotDirectPeer);
    // (case, source, destination, drop reason or None for "passed untouched")
    type Case = (&'static str, [u8; 4], [u8; 4], Option<Outcome>);
    let cases: [Case; 9] = [
        // scapy: Ether()/IP(src="10.244.5.7", dst="10.244.1.5")/ICMP() -- the direct peer's container
        ("direct peer's container", [10, 244, 5, 7], [10, 244, 1, 5], None),
        // scapy: Ether()/IP(src="10.244.5.0", dst="10.244.1.5")/ICMP() -- the direct peer's host, from
        // its overlay address
        ("direct peer's host", [10, 244, 5, 0], [10, 244, 1, 5], None),
        // scapy: Ether()/IP(src="198.18.0.9", dst="10.244.1.5")/ICMP()
        ("stranger to a container", STRANGER_IP, [10, 244, 1, 5], not_direct),
        // scapy: Ether()/IP(src="198.18.0.9", dst="10.244.1.1")/ICMP() -- the bridge address
        ("stranger to the bridge address", STRANGER_IP, [10, 244, 1, 1], not_direct),
        // scapy: Ether()/IP(src="198.18.0.5", dst="10.244.1.5")/ICMP() -- the direct peer's public IP
        ("direct peer's public address", [198, 18, 0, 5], [10, 244, 1, 5], not_direct),
        // scapy: Ether()/IP(src="10.244.2.7", dst="10.244.1.5")/ICMP() -- a vxlan peer's container,
        // unencapsulated
        ("tunnel peer's container", [10, 244, 2, 7], [10, 244, 1, 5], not_direct),
        // scapy: Ether()/IP(src="10.244.1.9", dst="10.244.1.5")/ICMP() -- "a local container"
        ("this host's subnet", [10, 244, 1, 9], [10, 244, 1, 5], not_direct),
        // scapy: Ether()/IP(src="198.18.0.9", dst="198.18.0.1")/ICMP() -- the host itself
        ("stranger to the host", STRANGER_IP, LOCAL_IP, None),
        // scapy: Ether()/IP(src="198.18.0.9", dst="10.244.2.7")/ICMP() -- not this host's containers
        ("stranger to another host's container", STRANGER_IP, [10, 244, 2, 7], None),
    ];
    for lookup in [Lookup::Index, Lookup::Trie] {
        let mut dp = Datapath::with_lookup(true, None, lookup);
        for (case, src, dst, outcome) in cases {
            let case = format!("{case} ({lookup:?})");
            let input = untunnelled(src, dst);
            for (program, pass, shot) in DECAP {
                match outcome {
                    Some(reason) => {
                        dp.check(&case, program, &input, shot, (Direction::Ingress, reason));
                    }
                    None => {
                        let out =
                            dp.check(&case, program, &input, pass, (Direction::Ingress, Outcome::Passed));
                        assert_eq!(out, input, "{case}: {} leaves it untouched", program.name());
                    }
                }
            }
        }
    }
}

#[test]
fn decap_lets_untunnelled_traffic_in_from_the_networks_the_config_allows() {
    // `[backend] untunnelled_from = ["198.18.0.8/29"]`: a router at 198.18.0.9 reaches containers.
    let allowed: BTreeSet<Ipv4Network> = [net("198.18.0.8/29")].into();
    // scapy: Ether()/IP(src="198.18.0.9", dst="10.244.1.5")/ICMP()
    let from_router = untunnelled(STRANGER_IP, [10, 244, 1, 5]);
    // scapy: Ether()/IP(src="198.18.0.17", dst="10.244.1.5")/ICMP() -- just outside the network
    let from_outside = untunnelled([198, 18, 0, 17], [10, 244, 1, 5]);
    // scapy: Ether()/IP(src="10.244.2.7", dst="10.244.1.5")/ICMP() -- a vxlan peer's container
    let from_tunnel_peer = untunnelled([10, 244, 2, 7], [10, 244, 1, 5]);
    let dropped = (Direction::Ingress, Outcome::DropUntunnelledNotDirectPeer);
    let mut dp = Datapath::new(true);
    for (program, _, shot) in DECAP {
        dp.check("router, nothing allowed yet", program, &from_router, shot, dropped);
    }
    dp.dp.set_untunnelled_from(&allowed).expect("write UNTUNNELLED_FROM");
    assert_eq!(dp.dp.maps().untunnelled_from().unwrap(), allowed);
    for (program, pass, shot) in DECAP {
        let out =
            dp.check("router, allowed", program, &from_router, pass, (Direction::Ingress, Outcome::Passed));
        assert_eq!(out, from_router, "{}: passed untouched", program.name());
        dp.check("outside the allowed network", program, &from_outside, shot, dropped);
        dp.check("a tunnel peer's container, untunnelled", program, &from_tunnel_peer, shot, dropped);
    }
    // Taken out of the config again: dropped again.
    dp.dp.set_untunnelled_from(&BTreeSet::new()).expect("empty UNTUNNELLED_FROM");
    assert!(dp.dp.maps().untunnelled_from().unwrap().is_empty());
    for (program, _, shot) in DECAP {
        dp.check("router, no longer allowed", program, &from_router, shot, dropped);
    }
}

#[test]
fn decap_leaves_formats_this_host_does_not_use_untouched() {
    let inner = inner_to_local();
    let vxlan_from = |src| vxlan(src, PORT, VNI, 51000, 0x0800, &inner, 0);
    let udp_from = |n: u8| {
        let l4 = [
            UdpHeader {
                source_port: 8285,
                destination_port: 8285,
                length: (8 + inner.len()) as u16,
                checksum: 0,
            }
            .to_bytes()
            .to_vec(),
            inner.clone(),
        ]
        .concat();
        from_peer(n, IpNumber::UDP, &l4)
    };
    let gre_from =
        |n: u8| from_peer(n, IpNumber::GRE, &[vec![0x00, 0x00, 0x08, 0x00], inner.clone()].concat());
    let stranger = STRANGER_IP[3];
    let passed = None;
    let drop = |o| Some(o);
    // A gre host whose peers are a gre peer and a direct one (on its segment): GRE only.
    let gre_peers = [
        peer("10.244.4.0/24", [198, 18, 0, 4], Backend::Gre),
        peer("10.244.5.0/24", [198, 18, 0, 5], Backend::Direct),
    ];
    // A vxlan host with one vxlan peer: VXLAN only.
    let vxlan_peers = [peer("10.244.2.0/24", PEER_IP, Backend::Vxlan)];
    // (host, its peers, case, input, outcome or None for "passed untouched")
    type Case<'a> = (Backend, &'a [PeerConfig], &'static str, Vec<u8>, Option<Outcome>);
    let cases: Vec<Case<'_>> = vec![
        // scapy: ...IP(src="198.18.0.9", dst="198.18.0.1")/UDP(dport=8472)/VXLAN(vni=0x123456)/...
        (Backend::Gre, &gre_peers, "vxlan from a stranger", vxlan_from(STRANGER_IP), passed),
        (Backend::Gre, &gre_peers, "vxlan from a known address", vxlan_from(PEER_IP), passed),
        // scapy: ...IP(src="198.18.0.9", dst="198.18.0.1")/UDP(sport=8285, dport=8285)/IP(...)/ICMP()
        (Backend::Gre, &gre_peers, "udp from a stranger", udp_from(stranger), passed),
        // scapy: ...IP(src="198.18.0.9", dst="198.18.0.1", proto=47)/GRE(proto=0x0800)/IP(...)/ICMP()
        (Backend::Gre, &gre_peers, "gre from a stranger", gre_from(stranger), drop(Outcome::DropUnknownPeer)),
        (Backend::Vxlan, &vxlan_peers, "gre from a stranger", gre_from(stranger), passed),
        (Backend::Vxlan, &vxlan_peers, "udp from a stranger", udp_from(stranger), passed),
        (
            Backend::Vxlan,
            &vxlan_peers,
            "vxlan from a stranger",
            vxlan_from(STRANGER_IP),
            drop(Outcome::DropUnknownPeer),
        ),
        (Backend::Vxlan, &vxlan_peers, "vxlan from the peer", vxlan_from(PEER_IP), Some(Outcome::DecapVxlan)),
    ];
    for (kind, peers, case, input, outcome) in cases {
        let mut dp = Datapath::host(kind, peers);
        let case = format!("{} host: {case}", kind.name());
        for (program, pass, shot) in DECAP {
            match outcome {
                Some(o) if o.is_drop() => {
                    dp.check(&case, program, &input, shot, (Direction::Ingress, o));
                }
                Some(o) => {
                    dp.check(&case, program, &input, pass, (Direction::Ingress, o));
                }
                None => {
                    let out = dp.check(&case, program, &input, pass, (Direction::Ingress, Outcome::Passed));
                    assert_eq!(out, input, "{case}: {} leaves it untouched", program.name());
                }
            }
        }
    }
    // A peer with another backend that appears later switches its format on with the CONFIG the
    // agent writes in the same sync.
    let mut dp = Datapath::host(Backend::Vxlan, &vxlan_peers);
    let udp = udp_from(3);
    for (program, pass, _) in DECAP {
        let out = dp.check("udp before its peer", program, &udp, pass, (Direction::Ingress, Outcome::Passed));
        assert_eq!(out, udp, "untouched");
    }
    dp.add_peers(&[peer("10.244.3.0/24", [198, 18, 0, 3], Backend::Udp)]);
    assert!(dp.dp.maps().config().unwrap().formats().udp, "udp switched on");
    // The inner source (10.244.2.7) is the vxlan peer's, not the udp peer's.
    for (program, _, shot) in DECAP {
        dp.check(
            "udp after its peer",
            program,
            &udp,
            shot,
            (Direction::Ingress, Outcome::DropInnerSourceNotPeer),
        );
    }
}

#[test]
fn xdp_judges_headers_beyond_the_first_buffer_without_decapsulating() {
    // BPF_PROG_TEST_RUN builds a multi-buffer XDP frame with a first buffer as short as asked, as a
    // NIC that splits headers from payload leaves it. (It gives tc programs linear skbs only, so the
    // tc side's bpf_skb_pull_data is covered by `xnet_common::packet::headers_to_pull`'s tests and
    // the lab's real traffic, where the headers are linear already.)
    let mut dp = Datapath::new(true);
    let input = vxlan(PEER_IP, PORT, VNI, 51000, 0x0800, &inner_to_local(), 0);
    // A known peer's tunnel packet with its UDP header beyond the first 40 bytes: cannot be
    // stripped there, and is never passed on undecided.
    dp.check_xdp_split(
        "split vxlan",
        &input,
        40,
        XDP_DROP,
        (Direction::Ingress, Outcome::DropHeadersNotLinear),
    );
    // A stranger's: judged from the copy as any other.
    let stranger = readdressed(&input, STRANGER_IP, LOCAL_IP);
    dp.check_xdp_split(
        "split vxlan from a stranger",
        &stranger,
        40,
        XDP_DROP,
        (Direction::Ingress, Outcome::DropUnknownPeer),
    );
    // Not a tunnel packet (another UDP port): untouched.
    let mut other = input.clone();
    other[36..38].copy_from_slice(&53u16.to_be_bytes());
    dp.check_xdp_split("split DNS", &other, 40, XDP_PASS, (Direction::Ingress, Outcome::Passed));
    // The headers all in the first buffer (the rest after them): decapsulated.
    let out = dp.check_xdp_split(
        "headers linear",
        &input,
        xnet_common::decap::HEADERS_LEN as u32,
        XDP_PASS,
        (Direction::Ingress, Outcome::DecapVxlan),
    );
    assert_eq!(hex(&out), hex(&ethernet(UNDERLAY_MAC, PEER_UNDERLAY_MAC, 0x0800, &inner_to_local())));
}
