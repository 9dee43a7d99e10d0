//! Per-packet cost of the programs, measured by the kernel through BPF_PROG_TEST_RUN: many single
//! runs (with `repeat > 1` the kernel would rerun a program on the packet it already changed:
//! encapsulation would grow it, decapsulation turn it into a plain packet), summed up by
//! [`trimmed_mean`].

use std::{cell::RefCell, collections::BTreeMap, net::Ipv4Addr};

use aya::programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, TestRunResult, Xdp};
use xnet::{
    cidr,
    clock::{monotonic_coarse_ns, unix_now},
    config::{PeerConfig, Tunnel},
    datapath::{
        Datapath, Program,
        sync::{RouteIndexSpec, Scope, Wanted},
    },
    mac::Mac,
    plan::Plan,
    store::Overlay,
};
use xnet_common::{
    maps::{Backend, DatapathConfig, Endpoint, Store},
    wire::{InnerInfo, UdpHdr, VxlanLocal, VxlanRemote, udp_outer, vxlan_outer},
};

/// Runs `program` of `dp` once on `input` through BPF_PROG_TEST_RUN, with the output packet
/// written to `out`.
pub fn test_run(
    dp: &mut Datapath,
    program: Program,
    input: &[u8],
    out: &mut [u8],
) -> Result<TestRunResult, ProgramError> {
    test_run_on(dp, program, input, out, None)
}

/// A `struct __sk_buff` for BPF_PROG_TEST_RUN's context: `ingress_ifindex` (byte 36) and `ifindex`
/// (byte 40) set to `ifindex` if given; everything else must be zero.
fn skb_arriving_on(ifindex: Option<u32>) -> [u8; 192] {
    let mut skb = [0u8; 192];
    if let Some(i) = ifindex {
        skb[36..40].copy_from_slice(&i.to_ne_bytes());
        skb[40..44].copy_from_slice(&i.to_ne_bytes());
    }
    skb
}

/// [`test_run`] with the packet arriving on interface `ifindex` (of the calling thread's network
/// namespace) for tc programs: `skb->dev` and `ingress_ifindex` are set from it.
pub fn test_run_on(
    dp: &mut Datapath,
    program: Program,
    input: &[u8],
    out: &mut [u8],
    ifindex: Option<u32>,
) -> Result<TestRunResult, ProgramError> {
    let skb = skb_arriving_on(ifindex);
    let ctx_in = (ifindex.is_some() && program != Program::XdpIngress).then_some(&skb[..]);
    let opts = TestRunOptions { data_in: Some(input), data_out: Some(out), ctx_in, ..TestRunOptions::new() };
    let p = dp.program_mut(program).expect("the programs are loaded");
    match program {
        Program::XdpIngress => {
            let p: &mut Xdp = p.try_into().expect("XDP");
            p.test_run(opts)
        }
        Program::TcEgress | Program::TcIngress => {
            let p: &mut SchedClassifier = p.try_into().expect("classifier");
            p.test_run(opts)
        }
    }
}

/// The peers of [`Bench`]: 198.18.0.`n` owning 10.244.`n`.0/24, with this backend.
const PEERS: [(u8, Backend); 4] =
    [(2, Backend::Vxlan), (3, Backend::Udp), (4, Backend::Gre), (5, Backend::Direct)];

/// The peer at `ip` (VTEP MAC 2:0 and its address) owning `subnet`, sent to with `backend`.
fn peer(subnet: cidr::Ipv4Network, ip: Ipv4Addr, backend: Backend) -> PeerConfig {
    PeerConfig { subnet, public_ip: ip, vtep_mac: Mac::from_ipv4(ip), backend: Some(backend), protocol: None }
}

/// A route index shape that no route of [`Bench`] fits (hosts with /25 subnets): the agent then
/// looks every route up in the LPM trie.
fn trie_only(network: cidr::Ipv4Network) -> RouteIndexSpec {
    RouteIndexSpec { network, subnet_len: 25 }
}

/// The datapath loaded without pins, set up by the agent's own planning and map writes as host
/// 198.18.0.1 (10.244.1.0/24 of 10.244.0.0/16, VNI 1) with peers .2 (vxlan), .3 (udp), .4 (gre)
/// and .5 (direct) owning 10.244.2-5.0/24. As with the agent, the route index is switched on
/// (every route is a /24 of the network); see [`Bench::use_route_index`].
pub struct Bench {
    /// Behind a `RefCell` because running a program needs it mutably, while the benchmark's
    /// samplers share one bench; the borrow lasts one call.
    dp: RefCell<Datapath>,
    plan: Plan,
    wanted: Wanted,
    config: DatapathConfig,
    /// The interface tc test runs arrive on, if set.
    ifindex: Option<u32>,
}

fn bytes<T>(v: &T) -> &[u8] {
    // SAFETY: only used on #[repr(C)] header structs of bytes (no padding, all bytes initialised).
    unsafe { std::slice::from_raw_parts(std::ptr::from_ref(v).cast::<u8>(), size_of::<T>()) }
}

impl Bench {
    pub fn new() -> Bench {
        let dp = Datapath::load_unpinned().unwrap_or_else(|e| panic!("load the programs: {e} ({e:?})"));
        let local = Ipv4Addr::new(198, 18, 0, 1);
        let facts = crate::fixture::host_facts(local, "198.18.0.0/24");
        let overlay = Overlay {
            network: cidr::parse("10.244.0.0/16").expect("network"),
            subnet: cidr::parse("10.244.1.0/24").expect("subnet"),
            tunnel: Tunnel { kind: Backend::Vxlan, vni: 1, ..Tunnel::default() },
        };
        let peers: Vec<PeerConfig> = PEERS
            .iter()
            .map(|&(n, b)| {
                let subnet = cidr::network(Ipv4Addr::new(10, 244, n, 0), 24).expect("subnet");
                peer(subnet, Ipv4Addr::new(198, 18, 0, n), b)
            })
            .collect();
        let plan = Plan::new(facts, overlay, None, &peers).expect("plan");
        let wanted = plan.wanted(Store::File, &peers);
        let config = plan.datapath_config(BRIDGE_MAC, &wanted);
        let mut bench = Bench { dp: RefCell::new(dp), plan, wanted, config, ifindex: None };
        bench.sync(Scope::All);
        bench
    }

    /// Writes what is wanted as the agent does.
    fn sync(&mut self, scope: Scope) {
        self.dp.get_mut().sync(&self.wanted, &self.config, &scope, unix_now()).expect("sync the maps");
    }

    /// Adds `n` more /32 routes (172.16.0.0 + `from` onwards, all via the vxlan peer), for lookup
    /// scaling. They are not subnets of the network, so the agent switches the route index off:
    /// every lookup walks the LPM trie.
    pub fn add_routes(&mut self, from: u32, n: u32) {
        let via = Ipv4Addr::new(198, 18, 0, 2);
        for i in from..from + n {
            let subnet = cidr::network(Ipv4Addr::from(0xac10_0000u32 + i), 32).expect("a /32");
            self.plan.set_peer(&mut self.wanted, &peer(subnet, via, Backend::Vxlan));
        }
        let scope = self.wanted.take_changes();
        self.sync(scope);
    }

    /// Switches the route index on (the agent's shape for these routes: every route is a /24 of
    /// 10.244.0.0/16) or off (a shape no route fits: every lookup walks the LPM trie). Panics if
    /// the index does not end up as asked (on, with routes from [`Bench::add_routes`]).
    pub fn use_route_index(&mut self, on: bool) {
        let spec = if on { self.plan.route_index() } else { trie_only(self.plan.overlay.network) };
        let mut wanted = Wanted::new(Store::File, spec);
        for (net, route) in self.wanted.routes() {
            wanted.set(*net, *route, *self.wanted.peer(&route.peer_ip()).expect("every route has a peer"));
        }
        wanted.take_changes();
        self.wanted = wanted;
        self.sync(Scope::All);
        let index_on = self.dp.get_mut().config().route_index_on();
        assert_eq!(index_on, on, "route index switched on");
    }

    /// Makes tc test runs arrive on interface `ifindex`.
    pub fn arrive_on(&mut self, ifindex: u32) {
        self.ifindex = Some(ifindex);
    }

    /// Adds a container MAC -> bridge port entry to LOCAL_PORTS.
    pub fn local_port(&mut self, mac: [u8; 6], ifindex: u32) {
        self.dp.get_mut().maps_mut().put_local_port(mac, ifindex).expect("write LOCAL_PORTS");
    }

    /// Kernel-measured nanoseconds of one run of `program` on `input`: [`trimmed_mean`] of `runs`.
    pub fn cost(&self, program: Program, input: &[u8], runs: usize) -> f64 {
        trimmed_mean(self.samples(program, input, runs))
    }

    /// Kernel-measured nanoseconds of each of `runs` single runs of `program` on `input`.
    pub fn samples(&self, program: Program, input: &[u8], runs: usize) -> Vec<f64> {
        let mut out = vec![0u8; input.len() + 128];
        let mut dp = self.dp.borrow_mut();
        (0..runs)
            .map(|_| {
                let result = test_run_on(&mut dp, program, input, &mut out, self.ifindex).expect("test run");
                result.duration.as_nanos() as f64
            })
            .collect()
    }
}

/// The mean of the middle 80% of `samples`. The kernel's clock here advances in 10 ns steps, so a
/// single run reads as a multiple of 10 and a median is one too; the mean of many runs, which
/// start at random points between ticks, resolves below a step, and trimming the ends drops runs
/// hit by an interrupt.
pub fn trimmed_mean(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let cut = samples.len() / 10;
    let middle = &samples[cut..samples.len() - cut];
    middle.iter().sum::<f64>() / middle.len() as f64
}

impl Default for Bench {
    fn default() -> Self {
        Self::new()
    }
}

/// A 64-byte-payload UDP packet from container 10.244.1.2 to `dst`, as it enters the host.
pub fn container_frame(dst: [u8; 4]) -> Vec<u8> {
    let mut f = vec![2, 0x42, 10, 244, 1, 1, 2, 0x42, 10, 244, 1, 2, 0x08, 0x00];
    f.extend(inner_ip([10, 244, 1, 2], dst));
    f
}

fn inner_ip(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let payload = [0u8; 64];
    let udp = UdpHdr {
        src_port: 4000u16.to_be_bytes(),
        dst_port: 5000u16.to_be_bytes(),
        len: (8 + 64u16).to_be_bytes(),
        checksum: [0, 0],
    };
    let ip = xnet_common::wire::outer_ipv4(src, dst, 17, 8 + payload.len(), 0);
    [bytes(&ip), bytes(&udp), &payload[..]].concat()
}

/// What peer 198.18.0.`n` sends to us for container 10.244.1.5, in `backend`'s wire format.
pub fn tunnelled_frame(n: u8, backend: Backend) -> Vec<u8> {
    let inner = inner_ip([10, 244, n, 7], [10, 244, 1, 5]);
    let info = InnerInfo { ip_len: inner.len(), tos: 0, flow_hash: 7 };
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, n, 0x08, 0x00];
    let peer = [198, 18, 0, n];
    match backend {
        Backend::Vxlan => {
            let local = VxlanLocal { ip: peer, vtep_mac: [2, 0, 198, 18, 0, n], port: 8472, vni: 1 };
            let remote = VxlanRemote { ip: [198, 18, 0, 1], vtep_mac: [2, 0, 198, 18, 0, 1] };
            f.extend_from_slice(bytes(&vxlan_outer(&local, &remote, &info)));
        }
        Backend::Udp => f.extend_from_slice(bytes(&udp_outer(peer, [198, 18, 0, 1], 8285, &info))),
        Backend::Gre => {
            let (outer, len) = xnet_common::wire::gre_outer(peer, [198, 18, 0, 1], None, &info);
            f.extend_from_slice(&bytes(&outer)[..len]);
        }
        Backend::Direct => {}
    }
    f.extend(inner);
    f
}

/// A program of raw instructions, loaded through the bpf syscall directly. Above all the
/// two-instruction one (`r0 = verdict; exit`, [`NullProgram::like`]): what BPF_PROG_TEST_RUN costs
/// around any program (timer reads, context set-up), so the programs' own cost can be told apart
/// from the harness's; also the helper-only floors ([`NullProgram::encap_helpers`]).
pub struct NullProgram {
    fd: std::os::fd::OwnedFd,
    xdp: bool,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_PROG_TYPE_XDP: u32 = 6;

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD; the kernel wants the rest zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    padding: [u64; 16],
}

/// The leading fields of `union bpf_attr` for BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    padding: [u64; 6],
}

impl NullProgram {
    /// A null program of the type of `program`, returning "pass".
    pub fn like(program: Program) -> std::io::Result<Self> {
        let (prog_type, verdict) = if program == Program::XdpIngress {
            (BPF_PROG_TYPE_XDP, 2)
        } else {
            (BPF_PROG_TYPE_SCHED_CLS, 0)
        };
        Self::raw(prog_type == BPF_PROG_TYPE_XDP, &[mov(0, verdict), EXIT])
    }

    /// A tc program that only calls the helpers every tunnelled encapsulation needs: it makes room
    /// for VXLAN's 50 bytes the way xnet does (`bpf_skb_adjust_room` with the same flags) and
    /// redirects to the underlay (`bpf_redirect_neigh`). The floor under any encapsulation's cost.
    pub fn encap_helpers() -> std::io::Result<Self> {
        // BPF_F_ADJ_ROOM_FIXED_GSO | ENCAP_L3_IPV4 | ENCAP_L4_UDP | ENCAP_L2_ETH | ENCAP_L2(14).
        let flags = 1u64 | 1 << 1 | 1 << 4 | 1 << 6 | 14 << 56;
        let mut insns = vec![mov(2, 50), mov(3, BPF_ADJ_ROOM_MAC)];
        insns.extend(lddw(4, flags));
        insns.extend([call(BPF_FUNC_SKB_ADJUST_ROOM), mov(1, 1), mov(2, 0), mov(3, 0), mov(4, 0)]);
        insns.extend([call(BPF_FUNC_REDIRECT_NEIGH), mov(0, 0), EXIT]);
        Self::raw(false, &insns)
    }

    /// A tc program that only calls the helpers a decapsulation delivering into a container needs:
    /// it removes VXLAN's 50 bytes (`bpf_skb_adjust_room` with xnet's flags) and redirects into
    /// the container behind `port` (`bpf_redirect_peer`). The floor under tc decapsulation.
    pub fn decap_helpers(port: u32) -> std::io::Result<Self> {
        // BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4.
        let flags = 1u64 | 1 << 7;
        let mut insns = vec![mov(2, -50), mov(3, BPF_ADJ_ROOM_MAC)];
        insns.extend(lddw(4, flags));
        insns.extend([call(BPF_FUNC_SKB_ADJUST_ROOM), mov(1, port as i32), mov(2, 0)]);
        insns.extend([call(BPF_FUNC_REDIRECT_PEER), mov(0, 0), EXIT]);
        Self::raw(false, &insns)
    }

    /// [`NullProgram::decap_helpers`] plus the one map lookup no delivering decapsulation can do
    /// without: which veth the inner destination sits behind, found by `lookup` (for container
    /// 10.244.1.5, and found). The floor under tc decapsulation with delivery.
    pub fn decap_helpers_and_lookup(port: u32, lookup: ContainerLookup) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        let (map_type, key, value_len, entries) = match lookup {
            ContainerLookup::Hash => (BPF_MAP_TYPE_HASH, u32::from_ne_bytes([10, 244, 1, 5]), 24, 1024),
            ContainerLookup::Array => (BPF_MAP_TYPE_ARRAY, 5, 32, 256),
        };
        let map = map_with(map_type, key, &vec![0u8; value_len], entries)?;
        // BPF_F_ADJ_ROOM_FIXED_GSO | BPF_F_ADJ_ROOM_DECAP_L3_IPV4.
        let flags = 1u64 | 1 << 7;
        let mut insns = vec![insn(0xbf, 6, 1, 0, 0), mov(2, -50), mov(3, BPF_ADJ_ROOM_MAC)];
        insns.extend(lddw(4, flags));
        insns.push(call(BPF_FUNC_SKB_ADJUST_ROOM));
        // *(u32 *)(r10 - 4) = key; r2 = r10 - 4; r1 = map; call bpf_map_lookup_elem.
        let key = key as i32;
        insns.extend([insn(0x62, 10, 0, -4, key), insn(0xbf, 2, 10, 0, 0), insn(0x07, 2, 0, 0, -4)]);
        insns.extend([insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()), 0]);
        insns.extend([call(BPF_FUNC_MAP_LOOKUP_ELEM), mov(1, port as i32), mov(2, 0)]);
        insns.extend([call(BPF_FUNC_REDIRECT_PEER), mov(0, 0), EXIT]);
        // The loaded program holds its own reference to the map.
        Self::raw(false, &insns)
    }

    /// A program of raw instructions (encoded as in `struct bpf_insn`), XDP or tc.
    pub fn raw(xdp: bool, insns: &[u64]) -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        let prog_type = if xdp { BPF_PROG_TYPE_XDP } else { BPF_PROG_TYPE_SCHED_CLS };
        let license = c"GPL";
        let attr = ProgLoadAttr {
            prog_type,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: attr is a valid, zero-padded bpf_attr prefix for BPF_PROG_LOAD; the instruction and
        // license buffers outlive the call.
        let fd = unsafe {
            libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &raw const attr, size_of::<ProgLoadAttr>())
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this new file descriptor; nothing else owns it.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self { fd, xdp: prog_type == BPF_PROG_TYPE_XDP })
    }

    /// Kernel-measured nanoseconds of one run on `input`: [`trimmed_mean`] of `runs`.
    pub fn cost(&self, input: &[u8], runs: usize, ifindex: Option<u32>) -> f64 {
        trimmed_mean(self.samples(input, runs, ifindex))
    }

    /// Kernel-measured nanoseconds of each of `runs` single runs on `input`; a tc program's packet
    /// arrives on `ifindex` if set (as in [`test_run_on`]).
    pub fn samples(&self, input: &[u8], runs: usize, ifindex: Option<u32>) -> Vec<f64> {
        use std::os::fd::AsRawFd;
        let mut out = vec![0u8; input.len() + 128];
        let skb = skb_arriving_on(ifindex);
        let ctx = ifindex.is_some() && !self.xdp;
        let mut samples = Vec::with_capacity(runs);
        for _ in 0..runs {
            let mut attr = TestRunAttr {
                prog_fd: self.fd.as_raw_fd() as u32,
                data_size_in: input.len() as u32,
                data_size_out: out.len() as u32,
                data_in: input.as_ptr() as u64,
                data_out: out.as_mut_ptr() as u64,
                repeat: 1,
                ctx_size_in: if ctx { skb.len() as u32 } else { 0 },
                ctx_in: if ctx { skb.as_ptr() as u64 } else { 0 },
                ..Default::default()
            };
            // SAFETY: attr is a valid bpf_attr prefix; the buffers it points to are alive and sized
            // as stated.
            let ret = unsafe {
                libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &raw mut attr, size_of::<TestRunAttr>())
            };
            assert_eq!(ret, 0, "test run of the null program: {}", std::io::Error::last_os_error());
            samples.push(attr.duration as f64);
        }
        samples
    }
}

const BPF_ADJ_ROOM_MAC: i32 = 1;
const BPF_FUNC_SKB_ADJUST_ROOM: i32 = 50;
const BPF_FUNC_REDIRECT_NEIGH: i32 = 152;
const BPF_FUNC_REDIRECT_PEER: i32 = 155;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;

/// How [`NullProgram::decap_helpers_and_lookup`] finds the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerLookup {
    /// A hash map by container address (as ENDPOINTS was until 2026-12-01).
    Hash,
    /// An array by the address's offset in the subnet (as ENDPOINTS is), which the kernel inlines.
    Array,
}

/// A new BPF map of `map_type` (4-byte keys, `value.len()`-byte values, room for `entries`)
/// holding `key`.
fn map_with(map_type: u32, key: u32, value: &[u8], entries: u32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, then zeros.
    let mut create = [0u32; 32];
    create[..4].copy_from_slice(&[map_type, 4, value.len() as u32, entries]);
    // SAFETY: a zero-padded bpf_attr for BPF_MAP_CREATE, alive for the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, create.as_ptr(), size_of_val(&create)) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this new file descriptor; nothing else owns it.
    let map = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    // BPF_MAP_UPDATE_ELEM: map_fd (u32, padded to 8), key pointer, value pointer, flags.
    let update = [map.as_raw_fd() as u64, (&raw const key) as u64, value.as_ptr() as u64, 0u64, 0, 0, 0, 0];
    // SAFETY: a zero-padded bpf_attr for BPF_MAP_UPDATE_ELEM; key and value outlive the call.
    let ret =
        unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_UPDATE_ELEM, update.as_ptr(), size_of_val(&update)) };
    if ret < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(map)
}
const EXIT: u64 = 0x95;

/// One `struct bpf_insn`: opcode, registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    code as u64
        | (dst as u64) << 8
        | (src as u64) << 12
        | (off as u16 as u64) << 16
        | (imm as u32 as u64) << 32
}

/// `dst = imm` (BPF_ALU64 | BPF_MOV | BPF_K).
fn mov(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm)
}

/// `call helper` (BPF_JMP | BPF_CALL).
fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}

/// `dst = imm64` (BPF_LD | BPF_DW | BPF_IMM: two instruction slots).
fn lddw(dst: u8, v: u64) -> [u64; 2] {
    [insn(0x18, dst, 0, 0, v as u32 as i32), insn(0, 0, 0, 0, (v >> 32) as u32 as i32)]
}

/// The container that [`tunnelled_frame`]s are for, as the delivery namespace knows it.
pub const CONTAINER_IP: &str = "10.244.1.5";
pub const CONTAINER_MAC: [u8; 6] = [2, 0x42, 10, 244, 1, 5];
pub const BRIDGE_MAC: [u8; 6] = [2, 0x42, 10, 244, 1, 1];

/// Runs `f` on a thread inside a throwaway network namespace where decapsulated packets can be
/// delivered: a bridge-like interface `xb0` (10.244.1.1/24) with a permanent neighbour entry for
/// container 10.244.1.5, forwarding on, and `xb1` as the underlay. `f` gets the ifindex of `xb1`
/// (where tunnelled packets arrive) and of `xb0` (the container's port, for LOCAL_PORTS). The
/// namespace is removed afterwards, also when `f` panics.
pub fn in_delivery_netns<T: Send + 'static>(f: impl FnOnce(u32, u32) -> T + Send + 'static) -> T {
    let ns =
        crate::netns::Netns::create(&format!("xd{}-{}", std::process::id(), NS_COUNTER.fetch_add(1, SeqCst)));
    ns.ip(&["link", "add", "xb0", "type", "veth", "peer", "name", "xb1"]);
    let mac = Mac(BRIDGE_MAC).to_string();
    ns.ip(&["link", "set", "xb0", "address", &mac, "up"]);
    ns.ip(&["link", "set", "xb1", "up"]);
    ns.ip(&["addr", "add", "10.244.1.1/24", "dev", "xb0"]);
    let container_mac = Mac(CONTAINER_MAC).to_string();
    ns.ip(&["neigh", "replace", CONTAINER_IP, "lladdr", &container_mac, "dev", "xb0", "nud", "permanent"]);
    crate::netns::run_ok(ns.command("sysctl").args(["-q", "-w", "net.ipv4.conf.all.forwarding=1"]));
    crate::netns::run_ok(ns.command("sysctl").args(["-q", "-w", "net.ipv4.conf.xb1.forwarding=1"]));
    let result = ns
        .spawn(move || {
            let index = |name: &str| {
                let c = std::ffi::CString::new(name).expect("name");
                // SAFETY: a NUL-terminated interface name.
                unsafe { libc::if_nametoindex(c.as_ptr()) }
            };
            f(index("xb1"), index("xb0"))
        })
        .join();
    drop(ns);
    result.unwrap_or_else(|e| std::panic::resume_unwind(e))
}

static NS_COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
use std::sync::atomic::Ordering::SeqCst;

impl Bench {
    /// Where tc test runs arrive, if set by [`Bench::arrive_on`].
    pub fn arrival(&self) -> Option<u32> {
        self.ifindex
    }

    /// ENDPOINTS, as (container IP, entry).
    pub fn endpoints(&self) -> Vec<([u8; 4], Endpoint)> {
        self.dp.borrow().maps().endpoints()
    }

    /// What the agent's one-second tick does with `ports` as the bridge ports it found (container
    /// MAC -> ifindex): LOCAL_PORTS made to hold exactly those, and the stale ENDPOINTS entries
    /// removed.
    pub fn expire_endpoints(&mut self, ports: &BTreeMap<[u8; 6], u32>) {
        self.dp.get_mut().sync_local_ports(ports, monotonic_coarse_ns()).expect("sync LOCAL_PORTS");
    }

    /// Writes the ENDPOINTS entry of `endpoint`'s address.
    pub fn put_endpoint(&mut self, endpoint: &Endpoint) {
        self.dp.get_mut().maps_mut().put_endpoint(endpoint).expect("write ENDPOINTS");
    }

    /// Makes every ENDPOINTS entry look resolved long ago.
    pub fn age_endpoints(&mut self) {
        let maps = self.dp.get_mut().maps_mut();
        for (ip, e) in maps.endpoints() {
            maps.put_endpoint(&Endpoint::new(ip, e.ifindex(), e.dmac(), e.smac(), 0))
                .expect("write ENDPOINTS");
        }
    }

    /// Runs `program` once on `input`; (verdict, output).
    pub fn run(&self, program: Program, input: &[u8]) -> (u32, Vec<u8>) {
        let mut out = vec![0u8; input.len() + 128];
        let r =
            test_run_on(&mut self.dp.borrow_mut(), program, input, &mut out, self.ifindex).expect("test run");
        out.truncate(r.data_size_out as usize);
        (r.return_value, out)
    }
}
