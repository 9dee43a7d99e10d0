//! `cargo xtask bench`: xnet against plain routing and the other overlays, on the lab (two simulated
//! hosts, one container each), every mode in the same run and alternated run by run on fresh labs.
//!
//! - Traffic, container to container: TCP with 1 stream (iperf3's client and server pinned apart,
//!   and left to the scheduler) and 4 streams, 64-byte UDP packets delivered, UDP ping-pong
//!   latency, CPU time per GB moved. And host to remote container (a host's own network stack
//!   through the agent's host device `xnet0`): TCP with 1 stream and its CPU time, against
//!   container to container over the same backend. Rounds take every mode once, each round in a
//!   rotated order; every figure is reported as the median with its spread over the runs.
//! - Per-packet cost of every program through BPF_PROG_TEST_RUN, raw and net of the harness.
//! - Scale: lookup cost as the LPM map grows to its capacity (65,536 subnets); the agent loading
//!   100,000 peers; 1000 leases written to etcd reaching the maps; with 10,000 leases in etcd, the
//!   agents' peak memory and one new lease reaching every other host's maps (`xnet-scale` runs
//!   this last part alone).
//!
//! Results go to target/bench/: bench.md, bench.json and bench.svg. Ratios are against references
//! measured in the same run; bench.md ends with the project's targets, each met or not.

use std::{
    fmt::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Parser;
use serde_json::{Value, json};
use xnet::datapath::Program;
use xnet_common::maps::Backend;
use xnet_lab::{
    lab::{Lab, LabSpec, Placement, UNDERLAY_MTU, VXLAN_OVERHEAD},
    progcost::{Bench, ContainerLookup, NullProgram, container_frame, trimmed_mean, tunnelled_frame},
    scale,
    stats::{self, Summary, round_order},
    targets::{Goal, Measured, Target},
};

#[derive(Parser)]
struct Args {
    /// Runs per mode (rounds, each taking every mode once) of the TCP figures.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// In how many of the rounds (the first ones) the 64-byte UDP rate and the ping-pong latency
    /// are measured too (at most --runs).
    #[arg(long, default_value_t = 3)]
    udp_runs: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// How many 4-stream runs, back to back in one lab, each of plain routing (with and without BIG
    /// TCP) and xnet's backends gets after the rounds: their spread without the machine's drift
    /// over the whole bench (0 leaves them out).
    #[arg(long, default_value_t = 10)]
    back_to_back: usize,
    /// A short version: one run of 1 s per mode, fewer samples elsewhere (about a minute).
    #[arg(long)]
    quick: bool,
    /// Only these traffic modes (keys as in bench.json: plain, plain_mtu1450, floor_veth_pair,
    /// underlay_only_mtu1450, kernel_vxlan, udp_relay, xnet_vxlan, xnet_vxlan_host, xnet_udp,
    /// xnet_gre, xnet_direct, xnet_routes_direct, plain_wire, kernel_vxlan_wire,
    /// xnet_vxlan_wire, plain_big_tcp, xnet_vxlan_64k, floor_veth_pair_big_tcp); plain is always
    /// measured.
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Where to write bench.md, bench.json and bench.svg.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    /// Plain routing with the container MTU that VXLAN leaves (1450): what any VXLAN overlay would
    /// reach if its tunnel cost nothing.
    PlainVxlanMtu,
    KernelVxlan,
    /// No overlay and no host in between: one veth pair straight from container to container
    /// (MTU 1500). What the two containers cost each other on this kernel with nothing in their
    /// way: no datapath joining them through their hosts can beat it, so it bounds every ratio.
    Floor,
    /// No host in between, but the lab's underlay: a veth from each container straight to the
    /// switch's bridge, at the MTU a VXLAN overlay leaves (1450). The underlay alone, to which an
    /// overlay adds its hosts' work (not a strict bound: with several streams the work spreads
    /// over the CPUs differently, and an overlay has measured above it).
    UnderlayOnly,
    /// flannel's udp backend design: TUN device plus a userspace relay (re-implemented).
    UdpRelay,
    /// xnet with this backend.
    Xnet(&'static str),
    /// xnet with this backend, host to remote container: the client in host 1's own network
    /// namespace (through the agent's host device `xnet0`), the server in the container on host 2.
    /// TCP with 1 stream only (and its CPU time), compared with [`Mode::Xnet`] of the same backend.
    XnetFromHost(&'static str),
    /// xnet with the direct backend and the routes store: the peers learned from FRR (zebra +
    /// ospfd) in every host, none listed in the files.
    XnetRoutes,
    /// Plain routing, the kernel's vxlan and xnet with this backend on an underlay that behaves
    /// like a wire between NICs ([`Lab::wire_like_nics`]): frames of the underlay's MTU, GRO where
    /// they arrive. The lab's veth otherwise carries 64 KB GSO packets whole.
    PlainWire,
    KernelVxlanWire,
    XnetWire(&'static str),
    /// Plain routing with BIG TCP allowed by hand on every link of the lab ([`LARGEST_GSO`] bytes,
    /// [`Lab::allow_big_tcp`]): TCP then sends GSO packets above 64 KB, as it does through xnet,
    /// whose agent raises the links of its path by default (`big_tcp = "auto"`). The kernel's
    /// vxlan devices take no more than 64 KB, so it has no such mode.
    PlainBig,
    /// xnet with this backend and `big_tcp = "off"`: the links keep the kernel's 64 KB, as plain
    /// routing's do.
    XnetSmall(&'static str),
    /// [`Mode::Floor`] with BIG TCP at the largest size a veth takes ([`LARGEST_GSO`] bytes): what
    /// no datapath could reach on this machine whatever packets it carries.
    FloorBig,
}

/// The largest GSO and GRO size the kernel lets a veth carry (its `tso_max_size`: 512 KiB less 8),
/// which xnet's agent sets on the lab's links by default (`big_tcp = "auto"` takes the underlay
/// driver's limit): plain routing's BIG TCP mode gets the same, like for like.
const LARGEST_GSO: u32 = xnet::config::MAX_GSO_BYTES;

impl Mode {
    const ALL: [Mode; 18] = [
        Mode::Plain,
        Mode::PlainVxlanMtu,
        Mode::Floor,
        Mode::UnderlayOnly,
        Mode::KernelVxlan,
        Mode::UdpRelay,
        Mode::Xnet("vxlan"),
        Mode::XnetFromHost("vxlan"),
        Mode::Xnet("udp"),
        Mode::Xnet("gre"),
        Mode::Xnet("direct"),
        Mode::XnetRoutes,
        Mode::PlainWire,
        Mode::KernelVxlanWire,
        Mode::XnetWire("vxlan"),
        Mode::PlainBig,
        Mode::XnetSmall("vxlan"),
        Mode::FloorBig,
    ];
    fn name(self) -> String {
        match self {
            Mode::Plain => "plain routing (host-gw)".into(),
            Mode::PlainVxlanMtu => format!("plain routing, MTU {}", UNDERLAY_MTU - VXLAN_OVERHEAD),
            Mode::KernelVxlan => "kernel vxlan (flannel-style)".into(),
            Mode::Floor => "no hosts: one veth pair between the containers (the floor)".into(),
            Mode::UnderlayOnly => format!(
                "no hosts: each container's veth straight to the switch, MTU {} (the underlay alone)",
                UNDERLAY_MTU - VXLAN_OVERHEAD
            ),
            Mode::UdpRelay => "TUN + userspace UDP relay (flannel udp design, re-implemented)".into(),
            Mode::Xnet(b) => format!("xnet {b}"),
            Mode::XnetFromHost(b) => format!("xnet {b}, host to remote container (TCP 1 stream only)"),
            Mode::XnetRoutes => "xnet direct, routes from a routing daemon (FRR, OSPF)".into(),
            Mode::PlainWire => "plain routing, wire like NICs' (MTU frames, GRO)".into(),
            Mode::KernelVxlanWire => "kernel vxlan, wire like NICs'".into(),
            Mode::XnetWire(b) => format!("xnet {b}, wire like NICs'"),
            Mode::PlainBig => format!("plain routing, BIG TCP ({LARGEST_GSO} bytes on every link)"),
            Mode::XnetSmall(b) => format!("xnet {b}, big_tcp = \"off\" (64 KB on every link)"),
            Mode::FloorBig => format!("the floor, BIG TCP ({LARGEST_GSO} bytes, the largest a veth takes)"),
        }
    }
    fn short(self) -> String {
        match self {
            Mode::Plain => "plain".into(),
            Mode::PlainVxlanMtu => "plain 1450".into(),
            Mode::KernelVxlan => "kernel vxlan".into(),
            Mode::Floor => "one veth".into(),
            Mode::UnderlayOnly => "underlay only".into(),
            Mode::UdpRelay => "udp relay".into(),
            Mode::Xnet(b) => format!("xnet {b}"),
            Mode::XnetFromHost(b) => format!("xnet {b} host"),
            Mode::XnetRoutes => "xnet routes".into(),
            Mode::PlainWire => "plain wire".into(),
            Mode::KernelVxlanWire => "kvxlan wire".into(),
            Mode::XnetWire(b) => format!("xnet {b} wire"),
            Mode::PlainBig => "plain big".into(),
            Mode::XnetSmall(b) => format!("xnet {b} 64k"),
            Mode::FloorBig => "one veth big".into(),
        }
    }
    fn key(self) -> String {
        match self {
            Mode::Plain => "plain".into(),
            Mode::PlainVxlanMtu => "plain_mtu1450".into(),
            Mode::KernelVxlan => "kernel_vxlan".into(),
            Mode::Floor => "floor_veth_pair".into(),
            Mode::UnderlayOnly => "underlay_only_mtu1450".into(),
            Mode::UdpRelay => "udp_relay".into(),
            Mode::Xnet(b) => format!("xnet_{b}"),
            Mode::XnetFromHost(b) => format!("xnet_{b}_host"),
            Mode::XnetRoutes => "xnet_routes_direct".into(),
            Mode::PlainWire => "plain_wire".into(),
            Mode::KernelVxlanWire => "kernel_vxlan_wire".into(),
            Mode::XnetWire(b) => format!("xnet_{b}_wire"),
            Mode::PlainBig => "plain_big_tcp".into(),
            Mode::XnetSmall(b) => format!("xnet_{b}_64k"),
            Mode::FloorBig => "floor_veth_pair_big_tcp".into(),
        }
    }
    /// Whether only TCP with 1 stream (pinned and unpinned, and its CPU time) is measured; the
    /// other figures of its [`Sample`]s are NaN.
    fn tcp1_only(self) -> bool {
        matches!(self, Mode::XnetFromHost(_))
    }
}

/// One run of one mode; NaN where the mode (or the round) does not measure a figure.
#[derive(Clone, Copy)]
struct Sample {
    /// iperf3's client and server pinned apart (see [`Placement::Apart`]).
    tcp1: f64,
    /// iperf3's client and server left to the scheduler.
    tcp1_unpinned: f64,
    tcp4: f64,
    udp_pps: f64,
    rtt_p50: f64,
    rtt_p99: f64,
    cpu_s_per_gb: f64,
    /// Where the time went during the pinned 1-stream and the 4-stream runs: per CPU, the share of
    /// the wall time it was busy, and the share spent in softirq (network receive and transmit
    /// work, whoever's).
    tcp1_cpus: CpuShares,
    tcp4_cpus: CpuShares,
}

/// Per CPU (0 and 1): busy share of the wall time, and softirq share.
#[derive(Clone, Copy)]
struct CpuShares {
    busy: [f64; 2],
    softirq: [f64; 2],
}

impl CpuShares {
    const NOT_MEASURED: CpuShares = CpuShares { busy: [f64::NAN; 2], softirq: [f64::NAN; 2] };

    /// Runs `f`, and measures the shares over it.
    fn over<T>(f: impl FnOnce() -> T) -> (T, CpuShares) {
        let (t0, before) = (Instant::now(), per_cpu_seconds());
        let out = f();
        let (wall, after) = (t0.elapsed().as_secs_f64(), per_cpu_seconds());
        let mut shares = CpuShares::NOT_MEASURED;
        for cpu in 0..2.min(before.len()).min(after.len()) {
            shares.busy[cpu] = (after[cpu].0 - before[cpu].0) / wall;
            shares.softirq[cpu] = (after[cpu].1 - before[cpu].1) / wall;
        }
        (out, shares)
    }
}

/// Per CPU, seconds busy (user, nice, system, irq, softirq; see [`busy_cpu_seconds`]) and seconds
/// in softirq, from /proc/stat.
fn per_cpu_seconds() -> Vec<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<f64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let busy = v[0] + v[1] + v[2] + v[5] + v[6];
            (busy / hz, v[6] / hz)
        })
        .collect()
}

impl Sample {
    const NOT_MEASURED: Sample = Sample {
        tcp1: f64::NAN,
        tcp1_unpinned: f64::NAN,
        tcp4: f64::NAN,
        udp_pps: f64::NAN,
        rtt_p50: f64::NAN,
        rtt_p99: f64::NAN,
        cpu_s_per_gb: f64::NAN,
        tcp1_cpus: CpuShares::NOT_MEASURED,
        tcp4_cpus: CpuShares::NOT_MEASURED,
    };
}

type Metric = fn(&Sample) -> f64;

const METRICS: [(&str, Metric); 15] = [
    ("tcp_1_stream_bps", |s| s.tcp1),
    ("tcp_1_stream_unpinned_bps", |s| s.tcp1_unpinned),
    ("tcp_4_streams_bps", |s| s.tcp4),
    ("udp_64b_pps", |s| s.udp_pps),
    ("rtt_p50_us", |s| s.rtt_p50),
    ("rtt_p99_us", |s| s.rtt_p99),
    ("cpu_seconds_per_gb", |s| s.cpu_s_per_gb),
    ("tcp_1_stream_cpu0_busy", |s| s.tcp1_cpus.busy[0]),
    ("tcp_1_stream_cpu0_softirq", |s| s.tcp1_cpus.softirq[0]),
    ("tcp_1_stream_cpu1_busy", |s| s.tcp1_cpus.busy[1]),
    ("tcp_1_stream_cpu1_softirq", |s| s.tcp1_cpus.softirq[1]),
    ("tcp_4_streams_cpu0_busy", |s| s.tcp4_cpus.busy[0]),
    ("tcp_4_streams_cpu0_softirq", |s| s.tcp4_cpus.softirq[0]),
    ("tcp_4_streams_cpu1_busy", |s| s.tcp4_cpus.busy[1]),
    ("tcp_4_streams_cpu1_softirq", |s| s.tcp4_cpus.softirq[1]),
];

/// Step counter with elapsed time and an estimate of what is left, on stderr.
struct Progress {
    started: Instant,
    done: usize,
    total: usize,
}

impl Progress {
    fn step(&mut self, what: &str) {
        self.done += 1;
        let elapsed = self.started.elapsed().as_secs_f64();
        let left = elapsed / self.done as f64 * (self.total - self.done) as f64;
        eprintln!("[{elapsed:>6.1}s, {:>2}/{} done, ~{left:.0}s left] {what}", self.done, self.total);
    }
}

/// Busy CPU time of the whole machine so far, in seconds (/proc/stat: user, nice, system, irq,
/// softirq; not steal, the time the hypervisor ran someone else). Both lab hosts share the
/// machine, so this is what a transfer costs in all.
fn busy_cpu_seconds() -> f64 {
    per_cpu_seconds().iter().map(|(busy, _)| busy).sum()
}

/// Container to container. With `udp` false, the 64-byte UDP rate and the ping-pong are left out
/// (NaN).
fn measure(lab: &Lab, seconds: u32, pings: usize, udp: bool) -> Sample {
    let (a, b) = ((1, 1), (2, 1));
    let cpu0 = busy_cpu_seconds();
    let (tcp1, tcp1_cpus) = CpuShares::over(|| lab.iperf3(a, b, seconds, 1));
    let cpu = busy_cpu_seconds() - cpu0;
    let gb = tcp1 * seconds as f64 / 8.0 / 1e9;
    let tcp1_unpinned = lab.iperf3_placed(a, b, seconds, 1, Placement::Scheduler);
    let (tcp4, tcp4_cpus) = CpuShares::over(|| lab.iperf3(a, b, seconds, 4));
    let mut sample = Sample {
        tcp1,
        tcp1_unpinned,
        tcp4,
        cpu_s_per_gb: cpu / gb,
        tcp1_cpus,
        tcp4_cpus,
        ..Sample::NOT_MEASURED
    };
    if udp {
        sample.udp_pps = lab.udp_rate(a, b, seconds);
        let rtts = lab.udp_ping_pong(a, b, pings);
        sample.rtt_p50 = rtts[rtts.len() / 2];
        sample.rtt_p99 = rtts[rtts.len() * 99 / 100];
    }
    sample
}

/// Host to remote container: TCP with 1 stream from host 1's own network stack to the container on
/// host 2 (pinned and unpinned), and the CPU time the pinned run cost.
fn measure_from_host(lab: &Lab, seconds: u32) -> Sample {
    let cpu0 = busy_cpu_seconds();
    let tcp1 = lab.iperf3_from_host(1, (2, 1), seconds, Placement::Apart);
    let cpu = busy_cpu_seconds() - cpu0;
    let gb = tcp1 * seconds as f64 / 8.0 / 1e9;
    let tcp1_unpinned = lab.iperf3_from_host(1, (2, 1), seconds, Placement::Scheduler);
    Sample { tcp1, tcp1_unpinned, cpu_s_per_gb: cpu / gb, ..Sample::NOT_MEASURED }
}

fn run_mode(mode: Mode, seconds: u32, pings: usize, udp: bool) -> Sample {
    let lab = lab_for(mode);
    if mode.tcp1_only() { measure_from_host(&lab, seconds) } else { measure(&lab, seconds, pings, udp) }
}

/// A fresh lab joined as `mode` says, its containers (or host 1 and container 2, for
/// [`Mode::XnetFromHost`]) shown to reach each other.
fn lab_for(mode: Mode) -> Lab {
    let backend = match mode {
        Mode::Xnet(b) | Mode::XnetFromHost(b) | Mode::XnetWire(b) | Mode::XnetSmall(b) => b,
        Mode::XnetRoutes => "direct",
        _ => "vxlan",
    };
    let routes = (mode == Mode::XnetRoutes).then_some(xnet_lab::lab::RoutesSpec {
        protocols: "[\"ospf\"]",
        behind_router: "fabric",
        routers: false,
        untunnelled_any: false,
    });
    let spec = LabSpec {
        hosts: 2,
        containers_per_host: 1,
        start_agents: matches!(
            mode,
            Mode::Xnet(_) | Mode::XnetFromHost(_) | Mode::XnetRoutes | Mode::XnetWire(_)
        ),
        backend,
        routes,
        ..LabSpec::default()
    };
    let mut lab = Lab::start(spec);
    match mode {
        Mode::Plain | Mode::PlainVxlanMtu | Mode::PlainWire | Mode::PlainBig => {
            lab.setup_plain_routing();
            let mtu = if mode == Mode::PlainVxlanMtu { UNDERLAY_MTU - VXLAN_OVERHEAD } else { UNDERLAY_MTU };
            for i in 1..=2 {
                lab.set_container_mtu(i, mtu);
            }
        }
        Mode::KernelVxlan | Mode::KernelVxlanWire => lab.setup_kernel_vxlan(1, 8472),
        Mode::Floor | Mode::FloorBig => lab.setup_direct_veth((1, 1), (2, 1)),
        Mode::UnderlayOnly => lab.setup_underlay_only((1, 1), (2, 1), UNDERLAY_MTU - VXLAN_OVERHEAD),
        Mode::UdpRelay => lab.setup_udp_relay(),
        Mode::Xnet(_) | Mode::XnetWire(_) => {}
        Mode::XnetSmall(_) => {
            for i in 1..=2 {
                let config = format!("big_tcp = \"off\"\n{}", lab.config_text(i));
                std::fs::write(&lab.host(i).config_path, config).expect("write config");
                lab.start_agent(i, &[]);
            }
        }
        Mode::XnetRoutes => {
            for i in 1..=2 {
                lab.start_frr(i);
            }
            xnet_lab::lab::wait_for(Duration::from_secs(90), "the hosts learn each other over OSPF", || {
                (1..=2).all(|i| lab.routes(i).len() == 1)
            });
        }
        Mode::XnetFromHost(_) => {
            assert!(lab.ping_from_host(1, lab.container((2, 1)).ip), "{}: no connectivity", mode.name());
            return lab;
        }
    }
    if matches!(mode, Mode::PlainWire | Mode::KernelVxlanWire | Mode::XnetWire(_)) {
        lab.wire_like_nics();
    }
    if mode == Mode::PlainBig {
        lab.allow_big_tcp(LARGEST_GSO);
    }
    if mode == Mode::FloorBig {
        lab.allow_big_tcp(LARGEST_GSO);
    }
    assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "{}: no connectivity", mode.name());
    lab
}

/// The modes whose 4 streams also run back to back in one lab: the 4-stream target's denominator
/// and numerators, and plain routing with the packet size xnet's agent gives its links.
const BACK_TO_BACK_MODES: [Mode; 6] = [
    Mode::Plain,
    Mode::PlainBig,
    Mode::Xnet("vxlan"),
    Mode::Xnet("udp"),
    Mode::Xnet("gre"),
    Mode::Xnet("direct"),
];

/// One of the 4-stream runs of [`back_to_back`].
struct BackToBack {
    bps: f64,
    /// Each second's bit/s, as the client sent them.
    by_second: Vec<f64>,
    cpus: CpuShares,
}

/// `runs` 4-stream runs (pinned) of `seconds` each, one right after the other in one lab of `mode`.
fn back_to_back(mode: Mode, runs: usize, seconds: u32) -> Vec<BackToBack> {
    let lab = lab_for(mode);
    (0..runs)
        .map(|_| {
            let ((bps, by_second), cpus) =
                CpuShares::over(|| lab.iperf3_by_second((1, 1), (2, 1), seconds, 4));
            BackToBack { bps, by_second, cpus }
        })
        .collect()
}

/// A run below this share of its mode's median is a low run in [`back_to_back_table`].
const LOW_RUN: f64 = 0.85;

/// The back-to-back runs: per mode, the spread without the machine's drift over the bench, the low
/// runs with where the CPU time went in them, and the slowest and fastest second of any run.
fn back_to_back_table(all: &[(Mode, Vec<BackToBack>)], seconds: u32) -> String {
    let Some(runs) = all.first().map(|(_, r)| r.len()) else { return String::new() };
    let mut md = format!(
        "\nTCP 4 streams, back to back: after the rounds, each of these modes got one fresh lab and {runs} runs of \
         {seconds} s (pinned as above) one right after the other, so that their spread is the kernel's and the \
         datapath's alone, without the machine's drift over the whole bench. A low run is one below {:.0}% of the \
         mode's median. CPU 0 runs the client, CPU 1 the server: each one's busy share of the wall time, and in \
         brackets its softirq share (the packets' way through the links, whichever CPU it runs on).\n\n\
         | mode | TCP 4 streams, Gbit/s | low runs | CPU 0 / CPU 1, other runs (median) | CPU 0 / CPU 1, low runs \
         | one second, Gbit/s: slowest..fastest |\n|---|---:|---:|---|---|---:|\n",
        LOW_RUN * 100.0
    );
    for (mode, runs) in all {
        let Some(s) = Summary::of(&runs.iter().map(|r| r.bps).collect::<Vec<_>>()) else { continue };
        let (low, other): (Vec<&BackToBack>, Vec<&BackToBack>) =
            runs.iter().partition(|r| r.bps < LOW_RUN * s.median);
        let split = |c: &CpuShares| {
            let pct = |x: f64| x * 100.0;
            format!(
                "{:.0}% ({:.0}%) / {:.0}% ({:.0}%)",
                pct(c.busy[0]),
                pct(c.softirq[0]),
                pct(c.busy[1]),
                pct(c.softirq[1])
            )
        };
        let median_of =
            |f: fn(&CpuShares) -> f64| stats::median(&other.iter().map(|r| f(&r.cpus)).collect::<Vec<_>>());
        let others = CpuShares {
            busy: [median_of(|c| c.busy[0]), median_of(|c| c.busy[1])],
            softirq: [median_of(|c| c.softirq[0]), median_of(|c| c.softirq[1])],
        };
        let each_second: Vec<f64> = runs.iter().flat_map(|r| r.by_second.iter().copied()).collect();
        let slowest = each_second.iter().copied().fold(f64::INFINITY, f64::min);
        let fastest = each_second.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let _ = writeln!(
            md,
            "| {} | {} | {} of {} | {} | {} | {:.1}..{:.1} |",
            mode.name(),
            s.scaled(1e-9).describe(2),
            low.len(),
            runs.len(),
            split(&others),
            if low.is_empty() {
                "-".to_string()
            } else {
                low.iter().map(|r| split(&r.cpus)).collect::<Vec<_>>().join(", ")
            },
            slowest / 1e9,
            fastest / 1e9,
        );
    }
    md
}

/// One row of the per-packet table.
struct Cost {
    program: &'static str,
    packet: String,
    raw: f64,
    harness: f64,
    /// Net cost (raw less harness) in each of the 20 rounds, see [`rotated`].
    net_by_round: Summary,
}

impl Cost {
    fn new(program: &'static str, packet: String, m: RowMeans) -> Cost {
        Cost { program, packet, raw: m.raw, harness: m.harness, net_by_round: m.net_by_round }
    }
}

/// Every program on every kind of packet, in a namespace where decapsulated packets can be
/// delivered (so tc decap includes finding the container and rewriting for it, as in real traffic).
fn per_packet_costs(runs: usize) -> Vec<Cost> {
    xnet_lab::progcost::in_delivery_netns(move |underlay, port| {
        let mut bench = Bench::new();
        bench.arrive_on(underlay);
        bench.local_port(xnet_lab::progcost::CONTAINER_MAC, port);
        bench.use_route_index(false);
        let trie = costs_of(&bench, runs, true);
        // As the agent runs it when every route is one subnet of the network's subnet length.
        bench.use_route_index(true);
        let mut costs = costs_of(&bench, runs, false);
        costs.extend(trie);
        costs
    })
}

/// With `trie_only`, the encapsulations alone, labelled as looked up in the LPM trie.
fn costs_of(bench: &Bench, runs: usize, trie_only: bool) -> Vec<Cost> {
    let mut inputs: Vec<(Program, String, Vec<u8>)> = Vec::new();
    if trie_only {
        for (n, backend) in
            [(2u8, Backend::Vxlan), (3, Backend::Udp), (4, Backend::Gre), (5, Backend::Direct)]
        {
            let what = format!("encap {} (route from the LPM trie)", backend.name());
            inputs.push((Program::TcEgress, what, container_frame([10, 244, n, 7])));
        }
        return measure_costs(bench, runs, inputs);
    }
    for (n, backend) in [(2u8, Backend::Vxlan), (3, Backend::Udp), (4, Backend::Gre), (5, Backend::Direct)] {
        inputs.push((
            Program::TcEgress,
            format!("encap {} (route from the index)", backend.name()),
            container_frame([10, 244, n, 7]),
        ));
    }
    inputs.push((Program::TcEgress, "same-host (pass)".into(), container_frame([10, 244, 1, 9])));
    for (n, backend) in [(2u8, Backend::Vxlan), (3, Backend::Udp), (4, Backend::Gre)] {
        for program in [Program::TcIngress, Program::XdpIngress] {
            let what = if program == Program::TcIngress {
                " + delivery into the container"
            } else {
                " (to the stack)"
            };
            inputs.push((program, format!("decap {}{what}", backend.name()), tunnelled_frame(n, backend)));
        }
    }
    measure_costs(bench, runs, inputs)
}

fn measure_costs(bench: &Bench, runs: usize, inputs: Vec<(Program, String, Vec<u8>)>) -> Vec<Cost> {
    let nulls: Vec<NullProgram> = inputs
        .iter()
        .map(|(program, ..)| NullProgram::like(*program).expect("load the null program"))
        .collect();
    let rows = inputs
        .iter()
        .zip(&nulls)
        .map(|((program, _, input), null)| -> (Sampler<'_>, Sampler<'_>) {
            (
                Box::new(move |n| bench.samples(*program, input, n)),
                Box::new(move |n| null.samples(input, n, bench.arrival())),
            )
        })
        .collect();
    let means = rotated(runs, rows);
    inputs
        .into_iter()
        .zip(means)
        .map(|((program, packet, _), m)| Cost::new(program.name(), packet, m))
        .collect()
}

/// Where one row's samples come from: `n` kernel-measured single runs.
type Sampler<'a> = Box<dyn FnMut(usize) -> Vec<f64> + 'a>;

/// Untimed runs of every program before measuring: caches, branch predictors and the JIT image warm.
const WARM_UP_RUNS: usize = 1000;

/// One row's cost: trimmed means of all its samples, and its net cost round by round.
struct RowMeans {
    raw: f64,
    harness: f64,
    net_by_round: Summary,
}

/// Trimmed means of `runs` samples of each row's program and of its harness. Everything first runs
/// [`WARM_UP_RUNS`] times untimed; then the rows take turns in 20 rounds, program and harness
/// alternating within each row's turn. A disturbance of the machine (another guest, the kernel
/// still tearing down the traffic labs' namespaces, a frequency change) so weighs on every row and
/// its harness alike, instead of on whichever row happened to run at the time. The net cost of each
/// round (trimmed means of its slice) gives the row's spread.
fn rotated(runs: usize, mut rows: Vec<(Sampler<'_>, Sampler<'_>)>) -> Vec<RowMeans> {
    for (program, harness) in &mut rows {
        program(WARM_UP_RUNS);
        harness(WARM_UP_RUNS);
    }
    let slice = runs.div_ceil(20);
    let mut samples = vec![(Vec::with_capacity(runs), Vec::with_capacity(runs)); rows.len()];
    let mut net_by_round = vec![Vec::with_capacity(20); rows.len()];
    for _ in 0..20 {
        for (((program, harness), (a, b)), net) in rows.iter_mut().zip(&mut samples).zip(&mut net_by_round) {
            let (p, h) = (program(slice), harness(slice));
            net.push(trimmed_mean(p.clone()) - trimmed_mean(h.clone()));
            a.extend(p);
            b.extend(h);
        }
    }
    samples
        .into_iter()
        .zip(net_by_round)
        .map(|((a, b), net)| RowMeans {
            raw: trimmed_mean(a),
            harness: trimmed_mean(b),
            net_by_round: Summary::of(&net).expect("20 rounds"),
        })
        .collect()
}

/// What the unavoidable parts alone cost, net of the harness: the floor under every tunnelled
/// encapsulation (room for 50 bytes, redirect to the underlay) and under a tc decapsulation that
/// delivers into the container (remove 50 bytes, redirect into its veth; and with the one lookup
/// that finds the veth, as a hash lookup and as the array read ENDPOINTS makes).
fn helper_floors(runs: usize) -> Vec<Cost> {
    xnet_lab::progcost::in_delivery_netns(move |underlay, port| {
        let null = NullProgram::like(Program::TcEgress).expect("load the null program");
        let floors = [
            (
                "kernel helpers only",
                "bpf_skb_adjust_room(+50, VXLAN flags) + bpf_redirect_neigh",
                NullProgram::encap_helpers().expect("load the encapsulation's helper floor"),
                container_frame([10, 244, 2, 7]),
            ),
            (
                "kernel helpers only",
                "bpf_skb_adjust_room(-50) + bpf_redirect_peer",
                NullProgram::decap_helpers(port).expect("load the decapsulation's helper floor"),
                tunnelled_frame(2, Backend::Vxlan),
            ),
            (
                "helpers and one lookup",
                "bpf_skb_adjust_room(-50) + a hash lookup of the container + bpf_redirect_peer",
                NullProgram::decap_helpers_and_lookup(port, ContainerLookup::Hash)
                    .expect("load the delivering decapsulation's floor"),
                tunnelled_frame(2, Backend::Vxlan),
            ),
            (
                "helpers and one lookup",
                "bpf_skb_adjust_room(-50) + an array read of the container (as ENDPOINTS) + bpf_redirect_peer",
                NullProgram::decap_helpers_and_lookup(port, ContainerLookup::Array)
                    .expect("load the delivering decapsulation's floor"),
                tunnelled_frame(2, Backend::Vxlan),
            ),
        ];
        let rows = floors
            .iter()
            .map(|(_, _, floor, input)| -> (Sampler<'_>, Sampler<'_>) {
                (
                    Box::new(move |n| floor.samples(input, n, Some(underlay))),
                    Box::new(|n| null.samples(input, n, Some(underlay))),
                )
            })
            .collect();
        let means = rotated(runs, rows);
        floors
            .iter()
            .zip(means)
            .map(|((program, packet, ..), m)| Cost::new(program, packet.to_string(), m))
            .collect()
    })
}

/// Lookup (vxlan encap) cost as REMOTE_SUBNETS grows: (subnets, raw ns).
fn lookup_scaling(bench: &mut Bench, runs: usize) -> Vec<(u32, f64)> {
    let mut present = 4u32;
    let mut out = Vec::new();
    // Up to the map's capacity (REMOTE_SUBNETS_MAX): the sync refuses more, whole.
    for size in [10u32, 1_000, 10_000, xnet_common::maps::REMOTE_SUBNETS_MAX] {
        bench.add_routes(present - 4, size - present);
        present = size;
        out.push((size, bench.cost(Program::TcEgress, &container_frame([10, 244, 2, 7]), runs)));
    }
    out
}

/// Issue 17's scale targets: the agent with 100,000 static peers ready within this (seconds) and
/// at most this peak RSS (MiB), which also bounds the agents with [`ETCD_LEASES`] leases in etcd;
/// one new lease in every other host's maps within [`NEW_LEASE_TARGET_MS`].
const SCALE_READY_TARGET_S: f64 = 0.4;
const SCALE_RSS_TARGET_MIB: f64 = 40.0;
const NEW_LEASE_TARGET_MS: f64 = 100.0;
/// Starts of the agent with 100,000 static peers the scale step times (each in a lab of its own).
const SCALE_STARTS: usize = 5;
/// Leases in etcd for the etcd scale step, and new ones timed after them.
const ETCD_LEASES: u32 = 10_000;
const ETCD_NEW_LEASES: u32 = 5;

/// Writes `leases` flannel leases to the lab's etcd (batched in transactions, as fast as etcd takes
/// them) and returns the seconds until host 1's REMOTE_SUBNETS holds them all.
fn leases_to_maps(leases: u32) -> f64 {
    let lab = Lab::start(LabSpec {
        hosts: 2,
        containers_per_host: 1,
        etcd: true,
        network: "10.0.0.0/8",
        ..LabSpec::default()
    });
    let before = scale::remote_subnets(&lab, 1);
    let endpoint = lab.etcd[0].endpoint.clone();
    let started = Instant::now();
    // The etcd client runs in the switch namespace, where etcd listens.
    lab.switch
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let mut client = etcd_client::Client::connect([endpoint], None).await.expect("connect to etcd");
                let keys: Vec<u32> = (0..leases).collect();
                for chunk in keys.chunks(100) {
                    let ops: Vec<etcd_client::TxnOp> = chunk
                        .iter()
                        .map(|p| {
                            let subnet = std::net::Ipv4Addr::from(0x0a00_0000u32 + p * 256);
                            let ip = std::net::Ipv4Addr::from(0x6440_0001u32 + p);
                            let mac = xnet::mac::Mac::from_ipv4(ip);
                            let key = format!("/coreos.com/network/subnets/{subnet}-24");
                            let value = format!(
                                r#"{{"PublicIP":"{ip}","BackendType":"vxlan","BackendData":{{"VtepMAC":"{mac}"}}}}"#
                            );
                            etcd_client::TxnOp::put(key, value, None)
                        })
                        .collect();
                    client.txn(etcd_client::Txn::new().and_then(ops)).await.expect("etcd txn");
                }
            })
        })
        .join()
        .expect("etcd writer");
    let deadline = started + Duration::from_secs(60);
    while scale::remote_subnets(&lab, 1) < before + leases as usize {
        assert!(Instant::now() < deadline, "the leases did not all reach the map within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    started.elapsed().as_secs_f64()
}

fn machine() -> Value {
    let cmd = |c: &str, args: &[&str]| {
        std::process::Command::new(c)
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']));
    json!({
        "date": cmd("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        "kernel": cmd("uname", &["-r"]),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model.unwrap_or("unknown"),
        // Network namespaces start with the host's choice; iperf3 uses the default.
        "tcp_congestion_control": std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    })
}

/// One bar of the chart: a mode's median over plain routing's, and its runs' range over the same.
type Bar = Option<(f64, f64, f64)>;

/// The chart's series: label, colour, and the figure (TCP and UDP: higher is better; latency is
/// turned into plain's p50 over the mode's, so that higher is better there too).
const SERIES: [(&str, plotters::style::RGBColor, Metric, bool); 5] = [
    ("TCP, 1 stream, pinned", plotters::style::BLUE, |s| s.tcp1, false),
    ("TCP, 1 stream, unpinned", plotters::style::RGBColor(120, 120, 255), |s| s.tcp1_unpinned, false),
    ("TCP, 4 streams", plotters::style::CYAN, |s| s.tcp4, false),
    ("UDP 64 B packets", plotters::style::GREEN, |s| s.udp_pps, false),
    ("latency (p50)", plotters::style::RED, |s| s.rtt_p50, true),
];

/// A mode's bars against plain routing, one per [`SERIES`]; `None` where the mode does not
/// measure the figure.
fn bars(samples: &[Sample], plain: &[Sample]) -> Vec<Bar> {
    SERIES
        .iter()
        .map(|(_, _, f, inverted)| {
            let m = summary(samples, *f)?;
            let p = summary(plain, *f)?.median;
            Some(if *inverted {
                (p / m.median, p / m.max, p / m.min)
            } else {
                (m.median / p, m.min / p, m.max / p)
            })
        })
        .collect()
}

/// Each mode against plain routing, one bar per [`SERIES`] with a whisker over the range of its
/// runs (1.0 = plain routing's median).
fn chart(path: &std::path::Path, rows: &[(Mode, Vec<Bar>)]) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1300, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = rows.iter().flat_map(|(_, r)| r.iter().flatten().map(|b| b.2)).fold(1.2, f64::max) * 1.3;
    let n = rows.len();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "xnet against plain routing (1.0 = plain routing; higher is better; whiskers: range of the runs)",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..n as f64, 0.0..top)?;
    let names: Vec<String> = rows.iter().map(|(m, _)| m.short()).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                names.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc("ratio to plain routing")
        .draw()?;
    let width = 0.8 / SERIES.len() as f64;
    for (k, (label, color, ..)) in SERIES.into_iter().enumerate() {
        let x0 = move |i: usize| i as f64 + 0.1 + k as f64 * width;
        // A mode that does not measure a figure has no bar for it.
        let measured = move || rows.iter().enumerate().filter_map(move |(i, (_, r))| r[k].map(|b| (i, b)));
        chart
            .draw_series(measured().map(|(i, (median, ..))| {
                Rectangle::new([(x0(i), 0.0), (x0(i) + width * 0.9, median)], color.filled())
            }))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart.draw_series(measured().filter(|(_, (_, lo, hi))| hi > lo).map(|(i, (_, lo, hi))| {
            let mid = x0(i) + width * 0.45;
            PathElement::new(vec![(mid, lo), (mid, hi)], BLACK.stroke_width(1))
        }))?;
    }
    chart.draw_series(LineSeries::new([(0.0, 1.0), (n as f64, 1.0)], BLACK.stroke_width(1)))?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A figure over a mode's runs; `None` if no run measured it.
fn summary(samples: &[Sample], f: Metric) -> Option<Summary> {
    Summary::of(&samples.iter().map(f).collect::<Vec<_>>())
}

/// The summary of `mode`'s runs by `f`, if the mode ran and measured it.
fn summary_of(results: &[(Mode, Vec<Sample>)], mode: Mode, f: Metric) -> Option<Summary> {
    results.iter().find(|r| r.0 == mode).and_then(|r| summary(&r.1, f))
}

/// The ratio of `num`'s median to `den`'s by `f`, as a table cell ("not measured" when either
/// mode did not run).
fn ratio_cell(results: &[(Mode, Vec<Sample>)], num: Mode, den: Mode, f: Metric) -> String {
    match (summary_of(results, num, f), summary_of(results, den, f)) {
        (Some(n), Some(d)) => format!("{:.2}x", n.median / d.median),
        _ => "not measured".into(),
    }
}

/// A table cell: the median with its range and spread, then `ratio` (against plain routing)
/// when given; `-` when not measured.
fn cell(s: Option<Summary>, scale: f64, decimals: usize, ratio: Option<f64>) -> String {
    let Some(s) = s else { return "-".into() };
    let mut c = s.scaled(scale).describe(decimals);
    if let Some(r) = ratio {
        let _ = write!(c, " {r:.2}x");
    }
    c
}

/// The traffic targets: TCP ratios between modes, from the same run.
fn traffic_targets(results: &[(Mode, Vec<Sample>)]) -> Vec<Target> {
    let of = |mode: Mode, f: Metric| summary_of(results, mode, f);
    let ratio =
        |what: String, goal: Goal, max_spread: Option<f64>, num: Mode, den: Mode, f: Metric, unit: &str| {
            let (scale, decimals) = if unit == "Gbit/s" { (1e-9, 2) } else { (1.0, 2) };
            let measured = match (of(num, f), of(den, f)) {
                (Some(n), Some(d)) => {
                    Some(Measured::ratio((&num.short(), &n), (&den.short(), &d), scale, decimals, unit))
                }
                _ => None,
            };
            Target { what, goal, unit: "x", max_spread, measured }
        };
    let tcp1: Metric = |s| s.tcp1;
    let tcp1_unpinned: Metric = |s| s.tcp1_unpinned;
    let vxlan = Mode::Xnet("vxlan");
    let mut targets = vec![
        ratio(
            "TCP 1 stream, unpinned: xnet vxlan over kernel vxlan".into(),
            Goal::AtLeast(1.4),
            None,
            vxlan,
            Mode::KernelVxlan,
            tcp1_unpinned,
            "Gbit/s",
        ),
        ratio(
            "TCP 1 stream, pinned: xnet vxlan over plain routing at MTU 1450".into(),
            Goal::AtLeast(1.15),
            None,
            vxlan,
            Mode::PlainVxlanMtu,
            tcp1,
            "Gbit/s",
        ),
        ratio(
            "TCP 1 stream, unpinned: xnet vxlan over plain routing at MTU 1450".into(),
            Goal::AtLeast(1.15),
            None,
            vxlan,
            Mode::PlainVxlanMtu,
            tcp1_unpinned,
            "Gbit/s",
        ),
    ];
    for backend in ["vxlan", "udp", "gre", "direct"] {
        targets.push(ratio(
            format!("TCP 4 streams: xnet {backend} over plain routing"),
            Goal::AtLeast(1.0),
            Some(0.15),
            Mode::Xnet(backend),
            Mode::Plain,
            |s| s.tcp4,
            "Gbit/s",
        ));
    }
    targets.push(ratio(
        "CPU seconds per GB moved (TCP 1 stream, pinned): xnet vxlan over plain routing".into(),
        Goal::AtMost(0.7),
        None,
        vxlan,
        Mode::Plain,
        |s| s.cpu_s_per_gb,
        "s/GB",
    ));
    targets.push(ratio(
        "TCP 1 stream, pinned: host to remote container over container to container (xnet vxlan)".into(),
        Goal::AtLeast(0.9),
        None,
        Mode::XnetFromHost("vxlan"),
        vxlan,
        tcp1,
        "Gbit/s",
    ));
    targets
}

/// What no datapath could reach on this machine, from [`Mode::Floor`], and what the underlay alone
/// gives, from [`Mode::UnderlayOnly`]: for every ratio target, the ratio that two containers joined
/// by nothing but one veth pair, and by nothing but the lab's switch, give against the same
/// denominator. A target above the first cannot be met by any way of joining containers through
/// hosts.
fn floor_bounds(results: &[(Mode, Vec<Sample>)]) -> String {
    let rows: [(&str, Mode, Metric, &str); 5] = [
        ("TCP 1 stream, unpinned, over kernel vxlan", Mode::KernelVxlan, |s| s.tcp1_unpinned, ">= 1.4x"),
        ("TCP 1 stream, pinned, over plain routing at MTU 1450", Mode::PlainVxlanMtu, |s| s.tcp1, ">= 1.15x"),
        (
            "TCP 1 stream, unpinned, over plain routing at MTU 1450",
            Mode::PlainVxlanMtu,
            |s| s.tcp1_unpinned,
            ">= 1.15x",
        ),
        ("TCP 4 streams over plain routing", Mode::Plain, |s| s.tcp4, ">= 1.0x"),
        ("CPU seconds per GB over plain routing", Mode::Plain, |s| s.cpu_s_per_gb, "<= 0.7x"),
    ];
    let mut md = String::new();
    if [Mode::Floor, Mode::UnderlayOnly, Mode::FloorBig]
        .iter()
        .all(|&m| summary_of(results, m, |s| s.tcp1).is_none())
    {
        return md;
    }
    let _ = writeln!(
        md,
        "\nThe floor and the underlay alone, in the same run. The floor: one veth pair between the two \
         containers, no host in between (no bridge, no routing, no tunnel); no datapath that joins containers \
         through their hosts can do better, so a target beyond the floor's own ratio cannot be met on this \
         machine. The underlay alone: each container's veth straight to the lab's switch at MTU {}, no host in \
         between; what an overlay adds its hosts' work to (with one stream; with several the work spreads over \
         the CPUs differently and an overlay can come out ahead). Both carry the kernel's 64 KB packets: they \
         bound xnet with `big_tcp = \"off\"`, not xnet as it runs by default, with BIG TCP. The floor with BIG \
         TCP at {LARGEST_GSO} bytes, the largest a veth takes, bounds that too.\n",
        UNDERLAY_MTU - VXLAN_OVERHEAD
    );
    let _ = writeln!(
        md,
        "| ratio | the floor (one veth pair) | the underlay alone (MTU {}) | the floor, BIG TCP ({LARGEST_GSO} bytes) | the target |",
        UNDERLAY_MTU - VXLAN_OVERHEAD
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (what, den, f, goal) in rows {
        let [floor, underlay, floor_big] =
            [Mode::Floor, Mode::UnderlayOnly, Mode::FloorBig].map(|m| ratio_cell(results, m, den, f));
        let _ = writeln!(md, "| {what} | {floor} | {underlay} | {floor_big} | {goal} |");
    }
    md
}

/// What BIG TCP changes, in the same run: xnet (which raises the links of its path by default)
/// against plain routing given BIG TCP by hand, and xnet with `big_tcp = "off"` against the
/// others at 64 KB (ratios of medians: TCP throughput pinned, unpinned and with 4 streams, and CPU
/// seconds per GB). Empty when those modes were not run.
fn big_tcp_table(results: &[(Mode, Vec<Sample>)]) -> String {
    let (xnet, small) = (Mode::Xnet("vxlan"), Mode::XnetSmall("vxlan"));
    let mut md = String::new();
    if [small, Mode::PlainBig].iter().all(|&m| summary_of(results, m, |s| s.tcp1).is_none()) {
        return md;
    }
    let _ = writeln!(
        md,
        "\nBIG TCP, in the same run. xnet's agent raises every link of its path to {LARGEST_GSO} bytes by default \
         on this lab (`big_tcp = \"auto\"`: the underlay's driver limit, a veth's here); plain routing, BIG TCP: the same size set by hand on every link of the lab; \
         xnet 64 KB: `big_tcp = \"off\"`. The kernel's vxlan devices take no more than 64 KB.\n"
    );
    let _ = writeln!(md, "| ratio | TCP 1 stream | unpinned | 4 streams | CPU s/GB |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    let rows = [
        ("xnet vxlan over plain routing, BIG TCP", xnet, Mode::PlainBig),
        ("xnet vxlan over xnet vxlan 64 KB", xnet, small),
        ("xnet vxlan 64 KB over plain routing", small, Mode::Plain),
        ("xnet vxlan 64 KB over plain routing at MTU 1450", small, Mode::PlainVxlanMtu),
        ("xnet vxlan 64 KB over kernel vxlan", small, Mode::KernelVxlan),
        ("plain routing, BIG TCP over plain routing", Mode::PlainBig, Mode::Plain),
    ];
    let metrics: [Metric; 4] = [|s| s.tcp1, |s| s.tcp1_unpinned, |s| s.tcp4, |s| s.cpu_s_per_gb];
    for (what, num, den) in rows {
        let cells = metrics.map(|f| ratio_cell(results, num, den, f));
        let _ = writeln!(md, "| {what} | {} | {} | {} | {} |", cells[0], cells[1], cells[2], cells[3]);
    }
    md
}

/// Where the CPU time went during the pinned TCP runs, per mode: medians over the rounds.
fn cpu_table(results: &[(Mode, Vec<Sample>)]) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\nWhere the time went during the pinned TCP runs (iperf3's client on CPU 0, its server on CPU 1): each \
         CPU's busy share of the run's wall time, and in brackets its softirq share (network work, for whichever \
         socket or device), medians over the rounds.\n"
    );
    let _ = writeln!(md, "| mode | 1 stream: CPU 0 | CPU 1 | 4 streams: CPU 0 | CPU 1 |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (m, samples) in results.iter().filter(|(m, _)| !m.tcp1_only()) {
        let pct =
            |f: Metric| summary(samples, f).map_or("-".to_string(), |s| format!("{:.0}%", s.median * 100.0));
        let _ = writeln!(
            md,
            "| {} | {} ({}) | {} ({}) | {} ({}) | {} ({}) |",
            m.name(),
            pct(|s| s.tcp1_cpus.busy[0]),
            pct(|s| s.tcp1_cpus.softirq[0]),
            pct(|s| s.tcp1_cpus.busy[1]),
            pct(|s| s.tcp1_cpus.softirq[1]),
            pct(|s| s.tcp4_cpus.busy[0]),
            pct(|s| s.tcp4_cpus.softirq[0]),
            pct(|s| s.tcp4_cpus.busy[1]),
            pct(|s| s.tcp4_cpus.softirq[1]),
        );
    }
    md
}

/// The per-packet target: tc decapsulation (vxlan) with delivery into the container, net of the
/// harness.
fn decap_target(costs: &[Cost], prog_runs: usize) -> Target {
    let measured = costs
        .iter()
        .find(|c| c.program == "xnet_tc_ingress" && c.packet.starts_with("decap vxlan"))
        .map(|c| {
            let net = c.raw - c.harness;
            let r = &c.net_by_round;
            Measured {
                value: net,
                range: Some((r.min, r.max)),
                spread: Some((r.max - r.min) / net),
                detail: format!(
                    "{:.0} ns less the harness's {:.0}, means of the middle 80% of {prog_runs} runs; in brackets \
                     the lowest and highest of the 20 rounds alone",
                    c.raw, c.harness
                ),
            }
        });
    Target {
        what: "tc decapsulation (vxlan) with delivery into the container, net".into(),
        goal: Goal::AtMost(85.0),
        unit: "ns",
        max_spread: None,
        measured,
    }
}

fn main() {
    let mut args = Args::parse();
    let pings = if args.quick { 1000 } else { 5000 };
    let prog_runs = if args.quick { 1000 } else { 10_000 };
    if args.quick {
        args.runs = 1;
        args.seconds = 1;
        args.back_to_back = args.back_to_back.min(2);
    }
    if args.runs == 0 {
        eprintln!("xnet-bench: --runs 0 measures nothing; give at least 1 (the default is 5)");
        std::process::exit(2);
    }
    args.udp_runs = args.udp_runs.clamp(1, args.runs);
    let modes: Vec<Mode> = Mode::ALL
        .into_iter()
        .filter(|m| *m == Mode::Plain || args.modes.is_empty() || args.modes.contains(&m.key()))
        .collect();
    let back_to_back_modes: Vec<Mode> =
        BACK_TO_BACK_MODES.into_iter().filter(|m| args.back_to_back > 0 && modes.contains(m)).collect();
    let mut progress = Progress {
        started: Instant::now(),
        done: 0,
        total: args.runs * modes.len() + back_to_back_modes.len() + 5,
    };
    eprintln!(
        "xnet bench: {} modes x {} rounds of {} s per figure (UDP and latency in the first {}), modes in rotated \
         order; then {} runs of 4 streams back to back for {} modes, per-packet costs and scale; results in {}",
        modes.len(),
        args.runs,
        args.seconds,
        args.udp_runs,
        args.back_to_back,
        back_to_back_modes.len(),
        args.out.display()
    );

    let mut results: Vec<(Mode, Vec<Sample>)> = modes.iter().map(|m| (*m, Vec::new())).collect();
    for round in 0..args.runs {
        let run = round + 1;
        for i in round_order(results.len(), round) {
            let (mode, samples) = &mut results[i];
            let s = run_mode(*mode, args.seconds, pings, round < args.udp_runs);
            let mut line = format!(
                "run {run}/{}: {:<14} tcp {:>6.2} unpinned {:>6.2}",
                args.runs,
                mode.short(),
                s.tcp1 / 1e9,
                s.tcp1_unpinned / 1e9,
            );
            if !mode.tcp1_only() {
                let _ = write!(line, " / x4 {:>6.2}", s.tcp4 / 1e9);
            }
            let _ = write!(line, " Gbit/s");
            if !s.udp_pps.is_nan() {
                let _ = write!(
                    line,
                    ", udp64 {:>4.0} kpps, rtt p50 {:>5.1} p99 {:>5.1} us",
                    s.udp_pps / 1e3,
                    s.rtt_p50,
                    s.rtt_p99
                );
            }
            let _ = write!(line, ", {:.2} cpu-s/GB", s.cpu_s_per_gb);
            progress.step(&line);
            samples.push(s);
        }
    }

    let mut back_to_backs = Vec::new();
    for mode in back_to_back_modes {
        let runs = back_to_back(mode, args.back_to_back, args.seconds);
        let each: Vec<String> = runs.iter().map(|r| format!("{:.1}", r.bps / 1e9)).collect();
        progress.step(&format!("{:<14} x4 back to back: {} Gbit/s", mode.short(), each.join(" ")));
        back_to_backs.push((mode, runs));
    }

    let mut costs = per_packet_costs(prog_runs);
    costs.extend(helper_floors(prog_runs));
    let mut bench = Bench::new();
    progress.step("per-packet cost of every program (BPF_PROG_TEST_RUN)");
    let lookups = lookup_scaling(&mut bench, prog_runs);
    drop(bench);
    progress.step("lookup cost with 10 to 65,536 remote subnets");
    // Past the maps' default capacity (65,536): the config raises it with [capacity].
    let peers = 100_000;
    let starts: Vec<(f64, f64)> = (0..SCALE_STARTS).map(|_| scale::static_peers(peers)).collect();
    let ready = Summary::of(&starts.iter().map(|s| s.0).collect::<Vec<_>>()).expect("starts");
    let rss = Summary::of(&starts.iter().map(|s| s.1).collect::<Vec<_>>()).expect("starts");
    let (load_s, load_mib) = (ready.median, rss.median);
    progress.step(&format!(
        "agent with {peers} peers, {SCALE_STARTS} starts: ready in {} s, peak RSS {} MiB",
        ready.describe(3),
        rss.describe(1)
    ));
    let leases = 1000;
    let lease_s = leases_to_maps(leases);
    progress.step(&format!("{leases} etcd leases in the maps after {:.0} ms", lease_s * 1e3));
    let etcd = scale::etcd_leases(ETCD_LEASES, ETCD_NEW_LEASES);
    let new_lease_ms = scale::median_ms(&etcd.new_lease_seconds);
    progress.step(&format!(
        "{ETCD_LEASES} etcd leases: agents' peak RSS {:.0} MiB, a new lease in every host's maps after {new_lease_ms:.0} ms",
        etcd.peak_rss_mib
    ));
    let scale_figures = xnet_lab::targets::ScaleFigures {
        static_peers: peers,
        static_ready_s: ready,
        static_peak_rss_mib: rss,
        etcd_leases: Some(xnet_lab::targets::EtcdAtScale {
            leases: ETCD_LEASES,
            agent_peak_rss_mib: etcd.peak_rss_mib,
            one_lease_to_every_map_s: new_lease_ms / 1e3,
        }),
    };

    // Report.
    let plain_samples =
        &results.iter().find(|r| r.0 == Mode::Plain).expect("plain routing is always measured").1;
    let plain = |f: Metric| summary(plain_samples, f).map_or(f64::NAN, |s| s.median);
    let machine = machine();
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Run {}, kernel {}, {} CPUs ({}). Two lab hosts (network namespaces joined by a veth underlay, MTU {UNDERLAY_MTU}), \
         one container each. {} round(s), each taking every mode once on a fresh lab, each round in a rotated order; \
         iperf3 {} s (TCP congestion control {}); the 64-byte UDP rate and a UDP ping-pong ({pings} x 64 B) in the \
         first {} round(s). Every figure is the median of its runs, then in brackets the lowest..highest run and the \
         spread, (highest - lowest) / median.\n\
         TCP 1 stream \"pinned\": {}; \"unpinned\": both left to the scheduler. TCP 4 streams pinned as the 1 stream; \
         CPU time per GB over the pinned 1-stream run.\n\
         Container MTU: plain routing {UNDERLAY_MTU}; kernel vxlan {}; the TUN relay 1472; xnet what the agent computes \
         (vxlan 1450, udp 1472, gre 1476, direct 1500). Ratios are of medians, against plain routing in the same run (RTT: below 1.00x is quicker).\n",
        machine["date"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        machine["cpus"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        args.runs,
        args.seconds,
        machine["tcp_congestion_control"].as_str().unwrap_or("?"),
        args.udp_runs,
        if xnet_lab::lab::iperf3_pinned() {
            "iperf3's client on CPU 0, its server on CPU 1"
        } else {
            "(one CPU: nothing to pin to, the same as unpinned)"
        },
        UNDERLAY_MTU - VXLAN_OVERHEAD,
    );
    if modes.iter().any(|m| m.tcp1_only()) {
        let _ = writeln!(
            md,
            "Host to remote container: the iperf3 client in host 1's own network namespace, through the agent's host \
             device xnet0 (the host's overlay address, the overlay MTU), the server in the container on host 2; \
             TCP 1 stream only (- = not measured).\n"
        );
    }
    let _ = writeln!(
        md,
        "| mode | TCP 1 stream, pinned, Gbit/s | TCP 1 stream, unpinned, Gbit/s | TCP 4 streams, Gbit/s | \
         UDP 64 B, kpps delivered | RTT p50, us | RTT p99, us | CPU s per GB |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut chart_rows = Vec::new();
    for (m, samples) in &results {
        let s = |f: Metric| summary(samples, f);
        let vs_plain = |f: Metric| s(f).map(|x| x.median / plain(f));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            m.name(),
            cell(s(|s| s.tcp1), 1e-9, 2, vs_plain(|s| s.tcp1)),
            cell(s(|s| s.tcp1_unpinned), 1e-9, 2, vs_plain(|s| s.tcp1_unpinned)),
            cell(s(|s| s.tcp4), 1e-9, 2, vs_plain(|s| s.tcp4)),
            cell(s(|s| s.udp_pps), 1e-3, 0, vs_plain(|s| s.udp_pps)),
            cell(s(|s| s.rtt_p50), 1.0, 1, vs_plain(|s| s.rtt_p50)),
            cell(s(|s| s.rtt_p99), 1.0, 1, None),
            cell(s(|s| s.cpu_s_per_gb), 1.0, 2, None),
        );
        chart_rows.push((*m, bars(samples, plain_samples)));
    }
    let mut targets = traffic_targets(&results);
    targets.push(decap_target(&costs, prog_runs));
    targets.extend(scale_figures.targets());
    let _ = writeln!(
        md,
        "\nTargets, from this run. A ratio is of the two medians; in brackets the lowest and highest ratio any run \
         of the one and any run of the other give, and the larger of the two figures' spreads.\n"
    );
    let _ = write!(md, "{}", xnet_lab::targets::markdown(&targets));
    let _ = write!(md, "{}", back_to_back_table(&back_to_backs, args.seconds));
    let _ = write!(md, "{}", floor_bounds(&results));
    let _ = write!(md, "{}", cpu_table(&results));
    let _ = write!(md, "{}", big_tcp_table(&results));
    let _ = writeln!(
        md,
        "\nPer-packet cost, BPF_PROG_TEST_RUN (kernel-measured ns, mean of the middle 80% of {prog_runs} \
         single runs). The kernel reruns a program on the packet it already changed when asked to repeat, so \
         each run is single; its clock advances in 10 ns steps, which the mean of many runs resolves. \
         After {WARM_UP_RUNS} untimed runs of each, the rows take turns in 20 rounds; \"net\" subtracts what the \
         same run of a two-instruction program costs (the harness), measured alternately with each row. \
         \"Net by round\": the lowest and highest net cost of the 20 rounds alone. \
         The last rows are programs that do only what an encapsulation, and a tc decapsulation that \
         delivers into the container, cannot do without (kernel helpers; finding the container): the \
         floor under each.\n"
    );
    let _ = writeln!(md, "| program | packet | ns | harness | net ns | net by round |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
    for c in &costs {
        let _ = writeln!(
            md,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0}..{:.0} |",
            c.program,
            c.packet,
            c.raw,
            c.harness,
            c.raw - c.harness,
            c.net_by_round.min,
            c.net_by_round.max,
        );
    }
    let _ = writeln!(md, "\nEgress (vxlan encap) cost as REMOTE_SUBNETS grows\n");
    let _ = writeln!(md, "| remote subnets | ns | vs 10 |");
    let _ = writeln!(md, "|---:|---:|---:|");
    for (size, ns) in &lookups {
        let _ = writeln!(md, "| {size} | {ns:.0} | {:.2}x |", ns / lookups[0].1);
    }
    let _ = writeln!(
        md,
        "\nScale: the agent with {peers} static peers was ready {} s after it started (median of {SCALE_STARTS} starts; target {SCALE_READY_TARGET_S} s), \
         peak RSS {} MiB (target {SCALE_RSS_TARGET_MIB}); \
         {leases} leases written to etcd were all in another host's map {:.0} ms after the first write; \
         with {ETCD_LEASES} leases in etcd the agents' peak RSS was {:.0} MiB (target {SCALE_RSS_TARGET_MIB}) and one new \
         lease was in every other host's maps after {new_lease_ms:.0} ms (median of {ETCD_NEW_LEASES}; target {NEW_LEASE_TARGET_MS} ms).",
        ready.describe(3),
        rss.describe(1),
        lease_s * 1e3,
        etcd.peak_rss_mib,
    );
    println!("{md}");

    std::fs::create_dir_all(&args.out).expect("bench output dir");
    std::fs::write(args.out.join("bench.md"), &md).expect("write bench.md");
    let json = json!({
        "machine": machine,
        "seconds": args.seconds,
        "runs": args.runs,
        "udp_runs": args.udp_runs,
        "modes": results
            .iter()
            .map(|(m, samples)| {
                // Only the figures the mode (and the round) measures.
                let runs: Vec<Value> = samples
                    .iter()
                    .map(|s| {
                        METRICS
                            .iter()
                            .filter(|(_, f)| !f(s).is_nan())
                            .map(|(k, f)| (k.to_string(), json!(f(s))))
                            .collect::<serde_json::Map<_, _>>()
                            .into()
                    })
                    .collect();
                // Median, lowest, highest and relative spread of every figure measured.
                let summaries: serde_json::Map<_, _> = METRICS
                    .iter()
                    .filter_map(|(k, f)| {
                        let s = summary(samples, *f)?;
                        Some((
                            k.to_string(),
                            json!({
                                "median": s.median, "min": s.min, "max": s.max,
                                "relative_spread": s.relative_spread(), "runs": s.runs,
                            }),
                        ))
                    })
                    .collect();
                (m.key(), json!({ "name": m.name(), "runs": runs, "summary": summaries }))
            })
            .collect::<serde_json::Map<_, _>>(),
        "tcp_4_streams_back_to_back": back_to_backs
            .iter()
            .map(|(m, runs)| {
                let runs: Vec<Value> = runs
                    .iter()
                    .map(|r| json!({
                        "bps": r.bps, "bps_by_second": r.by_second,
                        "cpu0_busy": r.cpus.busy[0], "cpu1_busy": r.cpus.busy[1],
                        "cpu0_softirq": r.cpus.softirq[0], "cpu1_softirq": r.cpus.softirq[1],
                    }))
                    .collect();
                (m.key(), json!({ "name": m.name(), "runs": runs }))
            })
            .collect::<serde_json::Map<_, _>>(),
        "targets": targets.iter().map(Target::to_json).collect::<Vec<_>>(),
        "per_packet_ns": costs
            .iter()
            .map(|c| json!({
                "program": c.program, "packet": c.packet, "raw": c.raw, "harness": c.harness, "net": c.raw - c.harness,
                "net_by_round": { "min": c.net_by_round.min, "max": c.net_by_round.max, "median": c.net_by_round.median },
            }))
            .collect::<Vec<_>>(),
        "lookup_ns_by_subnets": lookups.iter().map(|(s, ns)| json!({ "subnets": s, "ns": ns })).collect::<Vec<_>>(),
        "scale": {
            "agent_peers": peers, "agent_ready_seconds": load_s, "agent_peak_rss_mib": load_mib,
            "agent_ready_seconds_by_start": starts.iter().map(|s| s.0).collect::<Vec<_>>(),
            "agent_peak_rss_mib_by_start": starts.iter().map(|s| s.1).collect::<Vec<_>>(),
            "etcd_leases": leases, "etcd_leases_to_maps_seconds": lease_s,
            "agent_ready_target_seconds": SCALE_READY_TARGET_S, "peak_rss_target_mib": SCALE_RSS_TARGET_MIB,
            "etcd_scale_leases": ETCD_LEASES, "etcd_scale_load_seconds": etcd.load_seconds,
            "etcd_scale_restart_seconds": etcd.restart_seconds, "etcd_scale_peak_rss_mib": etcd.peak_rss_mib,
            "etcd_new_lease_to_every_host_ms": etcd.new_lease_seconds.iter().map(|t| t * 1e3).collect::<Vec<_>>(),
            "etcd_new_lease_median_ms": new_lease_ms, "etcd_new_lease_target_ms": NEW_LEASE_TARGET_MS,
        },
    });
    std::fs::write(args.out.join("bench.json"), serde_json::to_string_pretty(&json).expect("json"))
        .expect("write bench.json");
    let svg = args.out.join("bench.svg");
    chart(&svg, &chart_rows).unwrap_or_else(|e| panic!("cannot draw {}: {e}", svg.display()));
    eprintln!("wrote bench.md, bench.json and bench.svg under {}", args.out.display());
}
