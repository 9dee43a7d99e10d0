//! `cargo xtask bench`: container-to-container TCP throughput across two lab hosts, one stream
//! (iperf3), for plain routing (host-gw, the limit), the kernel's vxlan set up as flannel does, and
//! xnet's VXLAN datapath. Modes alternate run by run on fresh labs; medians and spread are reported
//! as ratios against the references measured in the same run. Results go to target/bench/.

use std::{fmt::Write as _, time::Instant};

use clap::Parser;
use xnet_tests::lab::{Lab, LabSpec};

#[derive(Parser)]
struct Args {
    /// Runs per mode.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// Only these modes (keys as in bench.json: plain, kernel_vxlan, xnet_vxlan, ...).
    #[arg(long, value_delimiter = ',')]
    modes: Vec<String>,
    /// Where to write bench.md and bench.json.
    #[arg(long, default_value = "target/bench")]
    out: std::path::PathBuf,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    KernelVxlan,
    /// xnet with this backend.
    Xnet(&'static str),
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Plain,
        Mode::KernelVxlan,
        Mode::Xnet("vxlan"),
        Mode::Xnet("udp"),
        Mode::Xnet("gre"),
        Mode::Xnet("direct"),
    ];
    fn name(self) -> String {
        match self {
            Mode::Plain => "plain routing (host-gw)".into(),
            Mode::KernelVxlan => "kernel vxlan (flannel-style)".into(),
            Mode::Xnet(b) => format!("xnet {b}"),
        }
    }
    fn key(self) -> String {
        match self {
            Mode::Plain => "plain".into(),
            Mode::KernelVxlan => "kernel_vxlan".into(),
            Mode::Xnet(b) => format!("xnet_{b}"),
        }
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// One run of one mode.
#[derive(Clone, Copy, Default)]
struct Sample {
    tcp1: f64,
    tcp4: f64,
    udp_pps: f64,
    rtt_p50: f64,
    rtt_p99: f64,
    cpu_s_per_gb: f64,
}

/// Busy CPU time of the whole machine so far, in seconds (/proc/stat: user, nice, system, irq,
/// softirq, steal). Both lab hosts share the machine, so this is what a transfer costs in all.
fn busy_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu: Vec<f64> = stat
        .lines()
        .next()
        .expect("cpu line")
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let ticks = cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6] + cpu.get(7).copied().unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn measure(lab: &Lab, seconds: u32) -> Sample {
    let (a, b) = ((1, 1), (2, 1));
    let cpu0 = busy_cpu_seconds();
    let tcp1 = lab.iperf3(a, b, seconds, 1);
    let cpu = busy_cpu_seconds() - cpu0;
    let gb = tcp1 * seconds as f64 / 8.0 / 1e9;
    let tcp4 = lab.iperf3(a, b, seconds, 4);
    let udp_pps = lab.udp_rate(a, b, seconds);
    let rtts = lab.udp_ping_pong(a, b, 5000);
    Sample {
        tcp1,
        tcp4,
        udp_pps,
        rtt_p50: rtts[rtts.len() / 2],
        rtt_p99: rtts[rtts.len() * 99 / 100],
        cpu_s_per_gb: cpu / gb,
    }
}

fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let mut results: Vec<(Mode, Vec<Sample>)> = Mode::ALL
        .iter()
        .filter(|m| args.modes.is_empty() || args.modes.contains(&m.key()))
        .map(|m| (*m, Vec::new()))
        .collect();
    for run in 1..=args.runs {
        for (mode, samples) in results.iter_mut() {
            let backend = if let Mode::Xnet(b) = mode { b } else { "vxlan" };
            let spec = LabSpec {
                hosts: 2,
                containers_per_host: 1,
                start_agents: matches!(mode, Mode::Xnet(_)),
                backend,
                ..LabSpec::default()
            };
            let lab = Lab::start(spec);
            match mode {
                Mode::Plain => {
                    // The limit: no overlay, and the full underlay MTU.
                    lab.setup_plain_routing();
                    for i in 1..=2 {
                        lab.set_container_mtu(i, xnet_tests::lab::UNDERLAY_MTU);
                    }
                }
                Mode::KernelVxlan => lab.setup_kernel_vxlan(1, 8472),
                Mode::Xnet(_) => {}
            }
            assert!(lab.ping((1, 1), lab.container((2, 1)).ip), "{}: no connectivity", mode.name());
            let s = measure(&lab, args.seconds);
            eprintln!(
                "[{:>6.1}s] run {run}/{}: {:<30} tcp {:>6.2} / x4 {:>6.2} Gbit/s, udp64 {:>5.0} kpps, rtt p50 {:>5.1} p99 {:>5.1} us, {:.2} cpu-s/GB",
                started.elapsed().as_secs_f64(),
                args.runs,
                mode.name(),
                s.tcp1 / 1e9,
                s.tcp4 / 1e9,
                s.udp_pps / 1e3,
                s.rtt_p50,
                s.rtt_p99,
                s.cpu_s_per_gb
            );
            samples.push(s);
        }
    }
    let med = |samples: &[Sample], f: fn(&Sample) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        median(&mut v)
    };
    let of =
        |mode: Mode, f: fn(&Sample) -> f64| med(&results.iter().find(|r| r.0 == mode).expect("mode").1, f);
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Container to container across two lab hosts, medians of {} runs (iperf3 {} s; UDP ping-pong 5000 x 64 B).\n\
         Container MTU: 1500 for plain routing, 1450 for the kernel's vxlan, and for xnet what the agent\n\
         computes for the backend (vxlan 1450, udp 1472, gre 1476, direct 1500). Ratios are against plain routing.\n",
        args.runs, args.seconds
    );
    let _ = writeln!(
        md,
        "| mode | TCP 1 stream, Gbit/s | TCP 4 streams | UDP 64 B, kpps delivered | RTT p50 / p99, us | CPU s per GB (1 stream) |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    let plain = |f: fn(&Sample) -> f64| of(Mode::Plain, f);
    for (m, samples) in &results {
        let v = |f: fn(&Sample) -> f64| med(samples, f);
        let spread = {
            let t: Vec<f64> = samples.iter().map(|s| s.tcp1).collect();
            (t.iter().cloned().fold(f64::MAX, f64::min), t.iter().cloned().fold(0.0, f64::max))
        };
        let _ = writeln!(
            md,
            "| {} | {:.2} ({:.2}..{:.2}) {:.2}x | {:.2} {:.2}x | {:.0} {:.2}x | {:.1} / {:.1} ({:.2}x) | {:.2} |",
            m.name(),
            v(|s| s.tcp1) / 1e9,
            spread.0 / 1e9,
            spread.1 / 1e9,
            v(|s| s.tcp1) / plain(|s| s.tcp1),
            v(|s| s.tcp4) / 1e9,
            v(|s| s.tcp4) / plain(|s| s.tcp4),
            v(|s| s.udp_pps) / 1e3,
            v(|s| s.udp_pps) / plain(|s| s.udp_pps),
            v(|s| s.rtt_p50),
            v(|s| s.rtt_p99),
            v(|s| s.rtt_p50) / plain(|s| s.rtt_p50),
            v(|s| s.cpu_s_per_gb),
        );
    }
    let kernel = of(Mode::KernelVxlan, |s| s.tcp1);
    let _ = writeln!(
        md,
        "\nxnet vxlan vs the kernel's vxlan, TCP 1 stream: {:.2}x\n",
        of(Mode::Xnet("vxlan"), |s| s.tcp1) / kernel
    );
    // Per-packet cost of the programs (BPF_PROG_TEST_RUN), and egress cost as the LPM map grows.
    use xnet_common::maps::Backend;
    use xnet_tests::progcost::{Bench, container_frame, tunnelled_frame};
    let mut bench = Bench::new();
    let runs = 2001;
    let _ = writeln!(
        md,
        "Per-packet cost, BPF_PROG_TEST_RUN (median of {runs} single runs, kernel-measured ns)\n"
    );
    let _ = writeln!(md, "| program | packet | ns |");
    let _ = writeln!(md, "|---|---|---:|");
    for (n, backend) in [(2u8, Backend::Vxlan), (3, Backend::Udp), (4, Backend::Gre), (5, Backend::Direct)] {
        let ns = bench.cost(xnet::programs::TC_EGRESS, &container_frame([10, 244, n, 7]), runs);
        let _ = writeln!(md, "| tc egress | encap {} | {ns:.0} |", backend.name());
    }
    let ns = bench.cost(xnet::programs::TC_EGRESS, &container_frame([10, 244, 1, 9]), runs);
    let _ = writeln!(md, "| tc egress | same-host (pass) | {ns:.0} |");
    for (n, backend) in [(2u8, Backend::Vxlan), (3, Backend::Udp), (4, Backend::Gre)] {
        for program in [xnet::programs::TC_INGRESS, xnet::programs::XDP_INGRESS] {
            let ns = bench.cost(program, &tunnelled_frame(n, backend), runs);
            let _ = writeln!(md, "| {program} | decap {} | {ns:.0} |", backend.name());
        }
    }
    let _ = writeln!(md, "\nEgress (vxlan encap) cost as REMOTE_SUBNETS grows\n");
    let _ = writeln!(md, "| remote subnets | ns | vs 10 |");
    let _ = writeln!(md, "|---:|---:|---:|");
    let mut present = 4u32;
    let mut base = 0.0;
    for size in [10u32, 10_000, 100_000, 1_000_000] {
        bench.add_routes(present - 4, size - present);
        present = size;
        let ns = bench.cost(xnet::programs::TC_EGRESS, &container_frame([10, 244, 2, 7]), runs);
        if size == 10 {
            base = ns;
        }
        let _ = writeln!(md, "| {size} | {ns:.0} | {:.2}x |", ns / base);
        eprintln!("[{:>5.1}s] lookup with {size} subnets: {ns:.0} ns", started.elapsed().as_secs_f64());
    }
    println!("{md}");
    std::fs::create_dir_all(&args.out).expect("bench output dir");
    std::fs::write(args.out.join("bench.md"), &md).expect("write bench.md");
    let json = serde_json::json!({
        "seconds": args.seconds,
        "runs": args.runs,
        "modes": results
            .iter()
            .map(|(m, samples)| {
                let runs: Vec<serde_json::Value> = samples
                    .iter()
                    .map(|s| serde_json::json!({
                        "tcp_1_stream_bps": s.tcp1, "tcp_4_streams_bps": s.tcp4, "udp_64b_pps": s.udp_pps,
                        "rtt_p50_us": s.rtt_p50, "rtt_p99_us": s.rtt_p99, "cpu_seconds_per_gb": s.cpu_s_per_gb,
                    }))
                    .collect();
                (m.key(), serde_json::Value::from(runs))
            })
            .collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(args.out.join("bench.json"), serde_json::to_string_pretty(&json).expect("json"))
        .expect("write bench.json");
}
