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

fn main() {
    let args = Args::parse();
    let started = Instant::now();
    let mut results: Vec<(Mode, Vec<f64>)> = Mode::ALL.iter().map(|m| (*m, Vec::new())).collect();
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
            let bps = lab.iperf3((1, 1), (2, 1), args.seconds, 1);
            eprintln!(
                "[{:>5.1}s] run {run}/{}: {:<30} {:>7.2} Gbit/s",
                started.elapsed().as_secs_f64(),
                args.runs,
                mode.name(),
                bps / 1e9
            );
            samples.push(bps);
        }
    }
    let medians: Vec<(Mode, f64, f64, f64)> = results
        .iter()
        .map(|(m, s)| {
            let mut s = s.clone();
            let (lo, hi) =
                (s.iter().cloned().fold(f64::MAX, f64::min), s.iter().cloned().fold(0.0, f64::max));
            (*m, median(&mut s), lo, hi)
        })
        .collect();
    let of = |mode: Mode| medians.iter().find(|r| r.0 == mode).expect("mode").1;
    let (plain, kernel) = (of(Mode::Plain), of(Mode::KernelVxlan));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "TCP, one stream (iperf3 {} s), container to container across two lab hosts, median of {} runs.\n\
         Container MTU: 1500 for plain routing, 1450 for the kernel's vxlan, and for xnet what the agent\n\
         computes for the backend (vxlan 1450, udp 1472, gre 1476, direct 1500).\n",
        args.seconds, args.runs
    );
    let _ = writeln!(md, "| mode | Gbit/s (median) | min..max | vs plain routing | vs kernel vxlan |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for (m, med, lo, hi) in &medians {
        let _ = writeln!(
            md,
            "| {} | {:.2} | {:.2}..{:.2} | {:.2}x | {:.2}x |",
            m.name(),
            med / 1e9,
            lo / 1e9,
            hi / 1e9,
            med / plain,
            med / kernel
        );
    }
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
        "metric": "tcp_one_stream_bits_per_second",
        "seconds": args.seconds,
        "runs": args.runs,
        "modes": results.iter().map(|(m, s)| (m.key().to_string(), serde_json::json!(s))).collect::<serde_json::Map<_, _>>(),
    });
    std::fs::write(args.out.join("bench.json"), serde_json::to_string_pretty(&json).expect("json"))
        .expect("write bench.json");
}
